"""The stochastic policy of the Online Decision Transformer (Zheng et al. 2022).

With ``ModelConfig.stochastic_policy`` the model predicts, at every state token,
a Gaussian over pre-squash actions ``u`` (mean and a bounded log standard
deviation); actions are ``a = tanh(u)`` in the normalised box. Training
minimises, per real step,

    -log π(a_data | ·) - α · H[π(· | ·)]

with α = exp(log_temperature) learned so that the policy's entropy H tracks a
target of ``-action_dim``: the temperature loss ``α · (H - target)`` (H held
fixed) raises α while the entropy is below the target and lowers it above. The
entropy of a squashed Gaussian has no closed form; like ODT we use a one-sample
estimate ``-log π(ã)`` with ``ã`` drawn by reparameterisation. :func:`per_step_loss` is that
objective per step; :func:`dtrl.train.step.stochastic_action_loss` averages it over a batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dtrl.distributed import unwrap

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
"""Range of the predicted log standard deviation (ODT's bounds)."""
ACTION_EPS = 1e-6
"""Data actions are clamped to ``[-1 + eps, 1 - eps]`` before ``atanh``."""
TEMPERATURE = "log_temperature"
"""Name of the learned log-temperature parameter on a stochastic model."""


def target_entropy(action_dim: int) -> float:
    """The entropy the temperature steers towards: ``-action_dim`` (SAC's and ODT's heuristic)."""
    return -float(action_dim)


def bounded_log_std(raw: torch.Tensor) -> torch.Tensor:
    """Map an unbounded head output smoothly into ``[LOG_STD_MIN, LOG_STD_MAX]``."""
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)


def _log_prob_pre_squash(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log π(tanh(u)) summed over action dimensions: Gaussian density minus the tanh Jacobian."""
    gaussian = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))  # log(1 - tanh(u)^2), stable
    return (gaussian - log_det).sum(-1)


def log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log π(actions) for actions in the normalised box [-1, 1]; shape (..., act) -> (...)."""
    u = torch.atanh(actions.clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS))
    return _log_prob_pre_squash(u, mean, log_std)


def sample(mean: torch.Tensor, log_std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw actions ``tanh(mean + std · ε)`` (no gradient path needed)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return torch.tanh(mean + log_std.exp() * noise)


def entropy_estimate(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """One-sample, reparameterised estimate of the squashed Gaussian's entropy; shape (..., act) -> (...)."""
    u = mean + log_std.exp() * torch.randn_like(mean)
    return -_log_prob_pre_squash(u, mean, log_std)


def per_step_loss(
    mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor, alpha: torch.Tensor, action_dim: int
) -> torch.Tensor:
    """NLL − α·entropy plus the temperature loss α·(entropy − target); shape (..., act) -> (...).

    α is detached in the first term and the entropy in the second, so the two
    train disjoint parameters (network, temperature) in one backward pass.
    """
    nll = -log_prob(mean, log_std, actions)
    entropy = entropy_estimate(mean, log_std)
    return nll - alpha.detach() * entropy + alpha * (entropy.detach() - target_entropy(action_dim))


def network_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter but the learned temperature: what weight decay and gradient clipping act on."""
    return (p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] != TEMPERATURE)


def temperature(model: nn.Module) -> torch.Tensor:
    """α = exp(log_temperature) of a stochastic model."""
    return getattr(unwrap(model), TEMPERATURE).exp()


def init_log_temperature(init_temperature: float) -> nn.Parameter:
    """The learned log-temperature, starting at ``log(init_temperature)``."""
    return nn.Parameter(torch.tensor(math.log(init_temperature)))
