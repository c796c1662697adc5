"""One gradient step: the losses (deterministic and Online DT's stochastic one, each the union
batch's mean under DDP), the optimizer and its schedule, and the divergence check."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from dtrl import distributed
from dtrl.config import TrainConfig
from dtrl.data.sampler import Batch
from dtrl.distributed import Dist
from dtrl.errors import DtrlError
from dtrl.models.gaussian import TEMPERATURE, network_parameters, per_step_loss, temperature
from dtrl.models.mlp_bc import loss_mask
from dtrl.train.optimizers import WithTemperatureOptimizer, lamb, temperature_adam

log = logging.getLogger(__name__)


def action_loss(model: torch.nn.Module, batch: Batch, dist: Dist = Dist()) -> torch.Tensor:
    """Loss on the actions of real steps only: MSE, or cross-entropy for discrete actions.

    Under DDP the loss is the mean over the valid steps of all ranks' batches together
    (:func:`union_mean`). A stochastic policy (Online DT) has its own loss: NLL − α·entropy plus
    the temperature's (:func:`stochastic_action_loss`).
    """
    if distributed.unwrap(model).config.stochastic_policy:
        return stochastic_action_loss(model, batch, dist)
    pred = model(batch.returns_to_go, batch.states, batch.actions, batch.timesteps, batch.mask)
    loss_fn = F.cross_entropy if distributed.unwrap(model).config.discrete else F.mse_loss
    scored = loss_mask(distributed.unwrap(model).config, batch.mask)
    pred, target = pred[scored].float(), batch.actions[scored]
    if not dist.enabled:
        return loss_fn(pred, target)
    return union_mean(loss_fn(pred, target, reduction="sum"), target.numel(), dist)


def stochastic_action_loss(model: torch.nn.Module, batch: Batch, dist: Dist = Dist()) -> torch.Tensor:
    """:func:`per_step_loss` averaged over real steps.

    Under DDP the per-step mean is the union batch's (:func:`union_mean`), as in :func:`action_loss`.
    """
    net = distributed.unwrap(model)
    mean, log_std = model(
        batch.returns_to_go, batch.states, batch.actions, batch.timesteps, batch.mask, distribution=True
    )
    mean, log_std = mean[batch.mask].float(), log_std[batch.mask].float()
    per_step = per_step_loss(mean, log_std, batch.actions[batch.mask], temperature(net), net.config.action_dim)
    if not dist.enabled:
        return per_step.mean()
    return union_mean(per_step.sum(), per_step.numel(), dist)


def union_mean(total: torch.Tensor, count: int, dist: Dist) -> torch.Tensor:
    """``total / count`` over the union of all ranks' batches, with the gradient DDP needs.

    Ranks hold different numbers of valid steps, so each rank's ``total`` (a sum over its
    ``count`` steps) is scaled by world size / global count: DDP's gradient average is then
    exactly the union batch's gradient. The value is the union batch's mean on every rank, so
    logs and the divergence check agree.
    """
    sums = torch.stack([total.detach().double(), total.new_tensor(count, dtype=torch.float64)])
    global_sum, global_count = dist.all_reduce_sum(sums).tolist()
    share = total * (dist.world_size / global_count)
    return share + (global_sum / global_count - share.detach())


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, fused: bool | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (or LAMB, ``optimizer=lamb``) with the learning rate of :func:`learning_rate_factor`.

    Parameters without weight decay (a stochastic policy's learned temperature; with
    ``weight_decay_matrices_only`` also biases, LayerNorms and embeddings) form a second group.
    With ``temperature_learning_rate`` the temperature has its own Adam instead
    (:class:`~dtrl.train.optimizers.WithTemperatureOptimizer`), outside the schedule.
    """
    network = list(network_parameters(model))
    spared = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == TEMPERATURE]
    own_temperature = bool(spared) and config.temperature_learning_rate > 0
    temperature_params, spared = (spared, []) if own_temperature else ([], spared)
    if config.weight_decay_matrices_only:
        matrices = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
        spared = [p for p in network if id(p) not in matrices] + spared
        network = [p for p in network if id(p) in matrices]
    params: list[dict[str, Any]] = [{"params": network}]
    if spared:
        params.append({"params": spared, "weight_decay": 0.0})
    if config.optimizer == "lamb":
        optimizer: torch.optim.Optimizer = lamb(params, config.learning_rate, config.weight_decay, config.betas)
    else:
        if fused is None:  # one kernel for every parameter's update where the device has one: same maths, fewer passes
            fused = next(model.parameters()).device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, weight_decay=config.weight_decay, betas=config.betas, fused=fused
        )
    if own_temperature:
        optimizer = WithTemperatureOptimizer(optimizer, temperature_adam(temperature_params, config))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    return optimizer, scheduler


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """The multiple of ``learning_rate`` used by gradient step ``step`` (from 0): a linear warm-up,
    then 1, or with ``lr_decay=cosine`` a half cosine that stops at 0.1 (minGPT's schedule)."""
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.lr_decay == "none":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    return max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))


def autocast(config: TrainConfig, device: torch.device) -> torch.autocast:
    """bfloat16 autocast for ``precision=bf16``; a disabled context (exact float32) otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


class Diverged(DtrlError):
    """A step's loss or gradient norm was not finite. Raised before the optimizer step, so the
    weights are still the last finite ones; the caller adds where it happened (step, batch, checkpoint)."""

    def __init__(self, loss: Any, grad_norm: Any) -> None:
        super().__init__(f"training diverged: loss={loss}, grad_norm={grad_norm}")
        self.loss, self.grad_norm = loss, grad_norm


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm of the network's parameters (not a learned temperature); return the norm."""
    return torch.nn.utils.clip_grad_norm_(network_parameters(model), max_norm)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: Batch,
    config: TrainConfig,
    forward: Callable[..., Any] | None = None,
    dist: Dist = Dist(),
    loss_fn: Callable[[Any, Batch, Dist], torch.Tensor] | None = None,
    clip_fn: Callable[[torch.nn.Module, float], torch.Tensor] | None = None,
) -> tuple[Any, torch.Tensor]:
    """One gradient step of the paper's recipe on ``batch``; returns (loss value(s), gradient norm(s)).

    Forward and loss under ``config.precision``'s autocast, backward, the
    divergence check (between backward and the optimizer step, so a NaN never
    reaches the weights: :class:`Diverged`), gradient clipping to
    ``config.grad_clip`` (0: none), optimizer and learning-rate schedule step.
    The one place this sequence lives: training, the benchmarks and the tests
    all call it, so they measure and check the same arithmetic.

    ``forward`` is what computes the loss (a DDP or compiled wrapper of
    ``model``; default ``model``). ``loss_fn(forward, batch, dist)`` defaults to
    :func:`action_loss` and ``clip_fn(model, max_norm)`` to
    :func:`clip_gradients`; stacked multi-seed training
    (:mod:`dtrl.train.stacked`) passes its own, which return one loss and one norm
    per seed: the loss value is then a list and the backward pass takes every
    seed's loss at once (each seed's parameters get only its own gradient).
    """
    with autocast(config, batch.mask.device):
        loss = (loss_fn or action_loss)(forward or model, batch, dist)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(torch.ones_like(loss))  # what loss.backward() does for a scalar; per-seed losses at once
    grad_norm = (clip_fn or clip_gradients)(model, config.grad_clip if config.grad_clip > 0 else math.inf)
    value = loss.tolist()
    finite = all(map(math.isfinite, value)) if isinstance(value, list) else math.isfinite(value)
    if not finite or not bool(torch.isfinite(grad_norm).all()):
        raise Diverged(value, grad_norm.tolist())
    optimizer.step()
    scheduler.step()
    return value, grad_norm


class CompiledForward:
    """``torch.compile`` of the training forward (CUDA graphs on GPU) that falls back to eager
    with a warning if compilation fails, so ``compile=true`` never stops a run."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.eager = module
        self.compiled: Callable[..., torch.Tensor] | None = torch.compile(
            module, mode="reduce-overhead" if device.type == "cuda" else None
        )

    def __call__(self, *args: Any) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as e:
                log.warning("torch.compile failed (%s): training in eager mode", str(e).splitlines()[0][:200])
                self.compiled = None
        return self.eager(*args)

    def __getattr__(self, name: str) -> Any:  # .config and the like, which the loss functions read
        return getattr(distributed.unwrap(self.eager), name)
