"""State encoders for image observations.

:class:`NatureCNN` is the convolutional torso of Mnih et al. (2015)'s DQN, which
the Decision Transformer's Atari experiments use to embed each stack of frames:
three convolutions (32 8×8 stride 4, 64 4×4 stride 2, 64 3×3 stride 1) with
ReLU, then a linear layer to the embedding width and tanh, as in the paper's
code. It takes states flattened as the rest of dtrl passes them, (..., C·H·W),
in any dtype: uint8 pixels are converted and divided by 255 here, so the data
stay uint8 until this point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class NatureCNN(nn.Module):
    def __init__(self, observation_shape: Sequence[int], out_features: int) -> None:
        """``observation_shape`` is (channels, height, width), e.g. (4, 84, 84)."""
        super().__init__()
        self.observation_shape = tuple(int(s) for s in observation_shape)
        channels = self.observation_shape[0]
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *self.observation_shape)).shape[1]
        self.linear = nn.Linear(flat, out_features)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(..., C·H·W) pixels in [0, 255] -> (..., out_features)."""
        lead = states.shape[:-1]
        if states.shape[-1] != math.prod(self.observation_shape):
            raise ValueError(f"expected states of {math.prod(self.observation_shape)} values, got {states.shape[-1]}")
        dtype = self.linear.weight.dtype
        x = states.reshape(-1, *self.observation_shape).to(dtype) / 255.0
        return torch.tanh(self.linear(self.convs(x))).reshape(*lead, -1)
