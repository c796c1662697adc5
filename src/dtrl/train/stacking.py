"""The mechanics of stacking seeds: N models' parameters stacked along a first dimension, a vmapped
forward and loss, per-seed gradient clipping and optimizer states split and joined per seed.
:mod:`dtrl.train.stacked` trains with them; its docstring says what stacking keeps exact."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from dtrl.config import TrainConfig
from dtrl.data.sampler import Batch
from dtrl.distributed import Dist
from dtrl.errors import DtrlError
from dtrl.models.gaussian import network_parameters, per_step_loss
from dtrl.models.mlp_bc import loss_mask
from dtrl.train.step import train_step


def stack_models(models: Sequence[nn.Module]) -> nn.Module:
    """A copy of ``models[0]`` whose parameters and buffers are all models' stacked along a new first dimension.

    It keeps a single model's parameter names, so :func:`dtrl.train.step.build_optimizer`,
    ``network_parameters`` and state dicts work on it unchanged; slice ``i`` of
    every tensor is model ``i``. Run it with :func:`stacked_forward`.
    """
    params, buffers = stack_module_state(list(models))
    stacked = copy.deepcopy(models[0])
    for name, value in {**params, **buffers}.items():
        owner, _, leaf = name.rpartition(".")
        tensor = nn.Parameter(value.detach()) if name in params else value
        setattr(stacked.get_submodule(owner), leaf, tensor)
    return stacked


def seed_state_dict(stacked: nn.Module, index: int) -> dict[str, torch.Tensor]:
    """Model ``index``'s weights as a single model's state dict (copies, not views into the stack)."""
    return {k: v[index].clone() for k, v in stacked.state_dict().items()}


def load_seed_state_dicts(stacked: nn.Module, states: Sequence[dict[str, torch.Tensor]]) -> None:
    stacked.load_state_dict({k: torch.stack([s[k] for s in states]) for k in states[0]})


def seed_optimizer_state(state: dict[str, Any], index: int) -> dict[str, Any]:
    """Seed ``index``'s share of the stacked AdamW's state dict, in a single model's format.

    AdamW's moments are elementwise, so they are slices; the step count is
    shared. A plain run can load the result (``dtrl train --resume`` on one
    seed's directory continues that seed alone).
    """
    per_param = {
        k: {name: t.clone() if name == "step" else t[index].clone() for name, t in entry.items()}
        for k, entry in state["state"].items()
    }
    return {"state": per_param, "param_groups": copy.deepcopy(state["param_groups"])}


def stack_optimizer_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of :func:`seed_optimizer_state`: per-seed AdamW states -> the stacked AdamW's."""
    first = states[0]
    per_param = {
        k: {
            name: t if name == "step" else torch.stack([s["state"][k][name] for s in states])
            for name, t in entry.items()
        }
        for k, entry in first["state"].items()
    }
    return {"state": per_param, "param_groups": first["param_groups"]}


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """N batches -> one whose tensors have a leading seed dimension."""
    fields = [f.name for f in dataclasses.fields(Batch)]
    return Batch(**{name: torch.stack([getattr(b, name) for b in batches]) for name in fields})


def seed_batch(batch: Batch, index: int) -> Batch:
    fields = [f.name for f in dataclasses.fields(Batch)]
    return Batch(**{name: getattr(batch, name)[index] for name in fields})


def stacked_forward(stacked: nn.Module, batch: Batch, **kwargs: Any) -> Any:
    """Every seed's model on its own slice of a stacked batch: the model's forward, vmapped over seeds.

    ``kwargs`` go to the model's forward (``distribution=True``). Attention is
    restricted to the math kernel, which vmap batches (see the module docstring).
    """
    state = {**dict(stacked.named_parameters()), **dict(stacked.named_buffers())}

    def one(state: dict[str, torch.Tensor], *inputs: torch.Tensor) -> Any:
        return functional_call(stacked, state, inputs, kwargs)

    inputs = (batch.returns_to_go, batch.states, batch.actions, batch.timesteps, batch.mask)
    with sdpa_kernel(SDPBackend.MATH):
        return vmap(one, randomness="different")(state, *inputs)


def stacked_action_loss(stacked: nn.Module, batch: Batch, dist: Dist = Dist()) -> torch.Tensor:
    """Each seed's :func:`dtrl.train.step.action_loss` on its slice of a stacked batch: an (N,) vector.

    Means over real steps are written as masked sums, which vmap and stacking
    allow, instead of boolean indexing; the values are the same up to rounding.
    """
    if dist.enabled:
        raise DtrlError("stacked seeds train in one process: start dtrl train --seeds without torchrun")
    config = stacked.config
    mask = loss_mask(config, batch.mask)
    if config.stochastic_policy:
        per_step = _stochastic_per_step(stacked, batch)
    else:
        pred = stacked_forward(stacked, batch).float()
        if config.discrete:
            flat = F.cross_entropy(pred.flatten(0, 2), batch.actions.flatten(), reduction="none")
            per_step = flat.view(mask.shape)
        else:
            per_step = (pred - batch.actions).square().mean(-1)
    return torch.where(mask, per_step, 0.0).sum((1, 2)) / mask.sum((1, 2))


def _stochastic_per_step(stacked: nn.Module, batch: Batch) -> torch.Tensor:
    """Online DT's per-step loss (:func:`dtrl.models.gaussian.per_step_loss`), each seed with its own temperature."""
    mean, log_std = stacked_forward(stacked, batch, distribution=True)
    alpha = stacked.log_temperature.exp().view(-1, 1, 1)
    return per_step_loss(mean.float(), log_std.float(), batch.actions, alpha, stacked.config.action_dim)


def clip_per_seed(stacked: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip each seed's gradient to ``max_norm`` by its own global norm; return the (N,) norms before clipping.

    The same arithmetic as ``torch.nn.utils.clip_grad_norm_`` on one model,
    per slice: a diverging or large-gradient seed never shrinks the others' steps.
    """
    grads = [p.grad for p in network_parameters(stacked) if p.grad is not None]
    per_param = torch.stack([torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1) for g in grads])
    norms = torch.linalg.vector_norm(per_param, dim=0)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))
    return norms


def stacked_train_step(
    stacked: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: Batch,
    config: TrainConfig,
) -> tuple[list[float], torch.Tensor]:
    """:func:`dtrl.train.step.train_step` for a stack: per-seed losses and per-seed clipping."""
    return train_step(stacked, optimizer, scheduler, batch, config, loss_fn=stacked_action_loss, clip_fn=clip_per_seed)
