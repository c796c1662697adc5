"""The paper's gym behaviour-cloning baseline: an MLP from the last K states to the current action.

As ``MLPBCModel`` of the Decision Transformer paper's code (kzl/decision-transformer,
``gym/decision_transformer/models/mlp_bc.py``): the states ``s_{t-K+1} .. s_t``, oldest
first, are flattened into one vector of ``K · obs`` numbers (zeros stand in for steps
before the first), then ``n_layer`` linear layers of width ``n_embd``, each but the first
after an activation and dropout, and an output layer after one more activation and
dropout, squashed by tanh for a bounded action box. Returns-to-go, past actions and
timesteps are not inputs. The parameter names are those of ``MLPBCModel``
(``model.0.weight`` ...), so its state dict loads unchanged.

It takes the Decision Transformer's inputs and predicts at every step of the window,
each from the states of the window up to that step, so dtrl's policy, evaluation,
export and stacked seeds use it as they use the transformer; training, as the paper's
``ActTrainer``, scores only each segment's last step (:func:`loss_mask`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dtrl.config import ModelConfig
from dtrl.errors import DtrlError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class MLPBehaviourCloning(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.observation_dim <= 0 or config.action_dim <= 0:
            raise ValueError("ModelConfig.observation_dim and action_dim must be set from the dataset")
        if config.observation_shape:
            raise DtrlError("model.kind=mlp takes flat observations, not images: use model.kind=transformer")
        if config.stochastic_policy:
            raise DtrlError("model.kind=mlp has a deterministic head: set model.stochastic_policy=false")
        self.config = config
        K, d, act = config.context_length, config.n_embd, ACTIVATIONS[config.activation]
        layers: list[nn.Module] = [nn.Linear(K * config.observation_dim, d)]
        for _ in range(config.n_layer - 1):
            layers += [act(), nn.Dropout(config.dropout), nn.Linear(d, d)]
        layers += [act(), nn.Dropout(config.dropout), nn.Linear(d, config.action_dim)]
        if not config.discrete and config.action_tanh:
            layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)

    def forward(
        self,
        returns_to_go: torch.Tensor,
        states: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The DT's inputs and outputs (see :meth:`DecisionTransformer.forward`); only ``states`` and ``mask`` are read.

        Step t's prediction sees the window's states t-K+1 .. t, with zeros for steps
        before the window or on padding (mask False): the paper's ``get_action``.
        """
        if mask is not None:
            states = states * mask.unsqueeze(-1).to(states.dtype)
        K = self.config.context_length
        padded = F.pad(states, (0, 0, K - 1, 0))  # (B, T + K - 1, obs): zeros before the first step
        windows = padded.unfold(1, K, 1).transpose(2, 3)  # (B, T, K, obs), oldest first
        return self.model(windows.flatten(2))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def loss_mask(config: ModelConfig, mask: torch.Tensor) -> torch.Tensor:
    """The steps whose actions the loss scores: every real step, or for the MLP each segment's last
    (the paper's ``ActTrainer``: the action of the newest of K states). ``mask``: (..., K) bool."""
    if config.kind != "mlp":
        return mask
    last = torch.zeros_like(mask)
    last[..., -1] = mask[..., -1]
    return last
