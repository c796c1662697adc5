"""Token mixers other than attention: Decision ConvFormer's causal convolution (Kim et al. 2023).

A transformer block mixes information across tokens (the *token mixer*) and then
within each token (the MLP). Decision ConvFormer keeps the block and replaces
self-attention by a local filter: a depthwise 1-D convolution over the last
``kernel_size`` tokens, with separate filters for the outputs at return, state
and action tokens. Left zero-padding makes it causal: the output at token ``i``
depends on tokens ``i - kernel_size + 1 .. i`` only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConvMixer(nn.Module):
    """Causal depthwise convolution over the token sequence, one filter bank per token type."""

    def __init__(self, n_embd: int, kernel_size: int, tokens_per_step: int, dropout: float) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.convs = nn.ModuleList(
            nn.Conv1d(n_embd, n_embd, kernel_size, groups=n_embd) for _ in range(tokens_per_step)
        )
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` (B, T, C) with T a multiple of the tokens per step; ``attn_mask`` as for attention.

        Padded tokens (left padding, where the mask's last row is False) are zeroed
        first, so a real token never mixes in padding: a padded window is the same
        as the start of an episode.
        """
        if attn_mask is not None:
            x = x * attn_mask[:, 0, -1, :, None].to(x.dtype)  # the last query sees every real key
        padded = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # (B, C, k - 1 + T)
        n = len(self.convs)
        kind = torch.arange(x.shape[1], device=x.device) % n  # token type: return, state, action
        out = torch.zeros_like(x)
        for i, conv in enumerate(self.convs):
            out = torch.where((kind == i)[None, :, None], conv(padded).transpose(1, 2), out)
        return self.resid_dropout(out)
