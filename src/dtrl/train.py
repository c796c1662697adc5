"""Train a Decision Transformer on an offline dataset.

``train(config)`` loads the data, builds the model, and runs the paper's
recipe: AdamW (or Online DT's LAMB), linear warm-up, gradient clipping, MSE (continuous) or
cross-entropy (discrete) on the predicted actions of real (unpadded) steps.
The run directory receives the resolved config, ``metrics.jsonl``, TensorBoard
events and atomic checkpoints; ``resume=True`` continues bit-exactly from the
newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from dtrl import distributed
from dtrl.runfiles import CHECKPOINT_DIR, CONFIG_FILE, EVAL_FILE, METRICS_FILE, RUN_CONFIG_FILE, TRAIN_STATE_FILE
from dtrl.checkpoint import (
    PolicySpec,
    latest_checkpoint,
    load_policy_files,
    load_train_state,
    mark_best,
    remove_partial_writes,
    save_checkpoint,
)
from dtrl.config import ModelConfig, TrainConfig, read_saved_config, resumed_config, to_dict
from dtrl.data.episodes import EpisodeDataset, space_to_dict
from dtrl.io import append_line, atomic_write, write_json
from dtrl.data.readers import open_dataset
from dtrl.data.sampler import Batch, Normalizer, SegmentSampler
from dtrl.distributed import Dist
from dtrl.envs import check_env_id
from dtrl.errors import DiskError, DtrlError, write_error
from dtrl.evaluate import EvalResult, evaluate
from dtrl.models import DecisionTransformer, build_model
from dtrl.models.gaussian import TEMPERATURE, network_parameters, stochastic_action_loss, temperature
from dtrl.models.mlp_bc import loss_mask
from dtrl.optimizers import WithTemperatureOptimizer, lamb, temperature_adam
from dtrl.policy import DecisionTransformerPolicy, pick_device
from dtrl.tracking import start_wandb, write_run_info
from dtrl.validation import ActionError, hold_out, validation_split

log = logging.getLogger(__name__)


def model_config_for(dataset: EpisodeDataset, model: ModelConfig, normalizer: Normalizer) -> ModelConfig:
    """Fill the data-dependent fields of the model config from the dataset's spaces."""
    space = dataset.action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    return ModelConfig(
        **{
            **to_dict(model),
            "observation_dim": int(np.prod(dataset.observation_shape)),
            "observation_shape": list(dataset.observation_shape) if dataset.frame_stack else [],
            "action_dim": int(space.n) if discrete else int(np.prod(space.shape)),
            "discrete": discrete,
            "action_tanh": not discrete and normalizer.action_low is not None,
            "max_episode_length": max(model.max_episode_length, int(dataset.episode_lengths.max())),
        }
    )


def action_loss(model: torch.nn.Module, batch: Batch, dist: Dist = Dist()) -> torch.Tensor:
    """Loss on the actions of real steps only: MSE, or cross-entropy for discrete actions.

    Under DDP the loss must be the mean over the valid steps of all ranks'
    batches together, and ranks hold different numbers of valid steps: each
    rank's sum is scaled by world size / global count, so DDP's gradient
    average is exactly the union batch's gradient. The returned value is the
    union batch's loss on every rank, so logs and the divergence check agree.
    A stochastic policy (Online DT) has its own loss: NLL − α·entropy plus the
    temperature's (:func:`dtrl.models.gaussian.stochastic_action_loss`).
    """
    if distributed.unwrap(model).config.stochastic_policy:
        return stochastic_action_loss(model, batch, dist)
    pred = model(batch.returns_to_go, batch.states, batch.actions, batch.timesteps, batch.mask)
    loss_fn = F.cross_entropy if distributed.unwrap(model).config.discrete else F.mse_loss
    scored = loss_mask(distributed.unwrap(model).config, batch.mask)
    pred, target = pred[scored].float(), batch.actions[scored]
    if not dist.enabled:
        return loss_fn(pred, target)
    total = loss_fn(pred, target, reduction="sum")
    sums = torch.stack([total.detach().double(), total.new_tensor(target.numel(), dtype=torch.float64)])
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
    (:class:`~dtrl.optimizers.WithTemperatureOptimizer`), outside the schedule.
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
    (:mod:`dtrl.stacked`) passes its own, which return one loss and one norm
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
            except Exception as e:  # noqa: BLE001 (inductor raises many kinds; eager is always correct)
                log.warning("torch.compile failed (%s): training in eager mode", str(e).splitlines()[0][:200])
                self.compiled = None
        return self.eager(*args)

    def __getattr__(self, name: str) -> Any:  # .config and the like, which the loss functions read
        return getattr(distributed.unwrap(self.eager), name)


def rng_state(sampler: SegmentSampler, device: torch.device) -> dict[str, Any]:
    """This process's random streams: the sampler's draws and torch's (dropout)."""
    state = {"sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_checkpoint(
    ckpt: Path,
    model: DecisionTransformer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: SegmentSampler,
    device: torch.device,
    dist: Dist,
    seed: int,
) -> int:
    """Load a checkpoint's weights, optimizer and this rank's random streams; return its step.

    The streams are saved per rank. When the number of processes changed, they
    no longer map onto ranks: every rank is then re-seeded from (seed, rank, step).
    """
    _, weights, _ = load_policy_files(ckpt)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise DtrlError(
            f"checkpoint {ckpt} does not fit the model built from this config and dataset "
            f"({' '.join(str(e).split())[:200]}): resume with the dataset and model settings it was trained with"
        ) from None
    state = load_train_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    step = int(state["step"])
    saved_world = int(state.get("world_size", 1))
    if saved_world == dist.world_size:
        rng = state if dist.rank == 0 else state["other_ranks"][dist.rank - 1]
        sampler.load_state_dict(rng["sampler"])
        torch.set_rng_state(rng["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in rng:
            torch.cuda.set_rng_state(rng["cuda_rng"], device)
    else:
        seed = distributed.resume_seed(seed, dist.rank, step)
        sampler.generator.manual_seed(seed)
        torch.manual_seed(seed)
        if dist.is_main:
            log.warning(
                "resuming a %d-process run on %d processes: sampler and dropout streams re-seeded "
                "from (seed, rank, step=%d), so batches differ from an uninterrupted run",
                saved_world,
                dist.world_size,
                step,
            )
    return step


def batch_statistics(batch: Batch) -> str:
    """Ranges of a batch's real (unpadded) inputs and their NaN/Inf count: tells bad data from a diverging model."""
    parts = [f"{int(batch.mask.sum())} real steps"]
    for name in ("returns_to_go", "states", "actions"):
        values = getattr(batch, name)[batch.mask]
        if not values.is_floating_point():
            continue  # discrete actions are indices
        finite = torch.isfinite(values)
        good = values[finite].float()
        text = f"{name} in [{good.min().item():.4g}, {good.max().item():.4g}]" if good.numel() else f"{name} all non-finite"
        if bad := int((~finite).sum()):
            text += f" with {bad} NaN/Inf"
        parts.append(text)
    return ", ".join(parts)


def last_good_checkpoint(run_dir: Path) -> str:
    """Where a stopped run stands, for its error message."""
    ckpt = latest_checkpoint(run_dir)
    return f"the last good checkpoint {ckpt} is intact" if ckpt else "no checkpoint was written yet"


def drop_metrics_after(path: Path, step: int) -> None:
    """Keep the metrics of steps up to ``step`` only: a run (re)starting there would log the rest again,
    and a killed run may have logged past its last checkpoint or left half a line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass  # cut off by a kill
    text = "".join(kept).encode()
    atomic_write(path, lambda f: f.write(text))


class MetricsLogger:
    """Namespaced scalars to ``metrics.jsonl``, TensorBoard and, when asked for, Weights & Biases."""

    def __init__(
        self, run_dir: Path, enabled: bool = True, wandb_config: dict[str, Any] | None = None, start_step: int = 0
    ) -> None:
        """``enabled=False`` (DDP ranks other than 0) writes nothing; ``wandb_config`` starts a W&B run.
        Metrics logged after ``start_step`` by an earlier, interrupted process are dropped, so the
        curve of a resumed run is that of an uninterrupted one."""
        self.path = run_dir / METRICS_FILE
        self.tb = None
        self.wandb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            drop_metrics_after(self.path, start_step)
            self.wandb = start_wandb(run_dir, wandb_config) if wandb_config is not None else None
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.tb is None:
            return
        append_line(self.path, json.dumps({"step": step, **metrics}))
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_results: list[EvalResult] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class RunData:
    """What a run needs from its dataset: the episodes, the evaluation env, the normalisation,
    the model config filled in from the data's spaces, the checkpoints' policy spec, the
    returns to evaluate at and the held-out episodes (``val_fraction``; None without)."""

    dataset: EpisodeDataset
    env_id: str
    normalizer: Normalizer
    model_config: ModelConfig
    spec: PolicySpec
    targets: list[float]
    validation: EpisodeDataset | None = None

    @classmethod
    def load(cls, config: TrainConfig, resume: bool = False) -> "RunData":
        """``resume``: reuse the run's saved validation split rather than draw it. The split is drawn
        from every episode; ``top_fraction`` then keeps the best of the rest."""
        every = open_dataset(config.dataset)
        validation = None
        if config.val_fraction:
            held_out = validation_split(Path(config.out_dir), every.num_episodes, config.val_fraction, config.seed, resume)
            every, validation = hold_out(every, held_out)
        dataset = every.top_episodes(config.top_fraction)
        env_id = config.env or dataset.env_id
        if env_id:
            check_env_id(env_id)
        normalizer = Normalizer.from_dataset(every)  # the paper's %BC: statistics of all training episodes, not the top ones
        model_config = model_config_for(dataset, config.model, normalizer)
        spec = PolicySpec(
            model=model_config,
            reward_scale=config.reward_scale,
            normalizer=normalizer.to_dict(),
            observation_space=space_to_dict(dataset.observation_space),
            action_space=space_to_dict(dataset.action_space),
            env_id=env_id or None,
            ref_scores=dataset.ref_scores,
            dataset=dataset.name,
        )
        targets = config.target_returns or [float(dataset.episode_returns.max())]
        return cls(dataset, env_id, normalizer, model_config, spec, targets, validation)


def evaluate_and_log(
    model: DecisionTransformer,
    spec: PolicySpec,
    device: torch.device,
    config: TrainConfig,
    data: RunData,
    logger: MetricsLogger,
    step: int,
) -> list[EvalResult]:
    """Evaluate ``model`` in the run's env at its targets, log the returns at ``step``, leave it in train mode."""
    policy = DecisionTransformerPolicy(model, spec, device)  # the paper's protocol: the last K steps recomputed
    if config.eval_sample_actions and policy.has_distribution:
        policy.sample_actions(config.seed)
    results = evaluate(
        policy, data.env_id, data.targets, config.eval_episodes, seed=config.seed,
        max_episode_steps=config.eval_max_episode_steps or None,
    )
    model.train()
    metrics = {}
    for r in results:
        metrics[f"eval/return_mean@{r.target_return:g}"] = r.mean
        if r.normalized:
            metrics[f"eval/normalized_score@{r.target_return:g}"] = r.normalized[0]
    logger.log(step, metrics)
    return results


def write_eval_report(run_dir: Path, results: list[EvalResult]) -> None:
    """The final evaluation, ``eval.json``."""
    write_json(run_dir / EVAL_FILE, [r.to_dict() for r in results])


def prepare_run(config: TrainConfig, resume: bool, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Create the run directory, or on resume reload its config. ``overrides``: on resume, the keys given
    explicitly (config file, environment, command line), applied where safe and refused otherwise
    (:func:`dtrl.config.resumed_config`)."""
    run_dir = Path(config.out_dir)
    saved = run_dir / RUN_CONFIG_FILE
    # checkpoints whose train_state.pt is gone still hold a policy: neither resumed nor written over
    policies = any((run_dir / CHECKPOINT_DIR).glob(f"step_*/{CONFIG_FILE}"))
    if resume:
        if not saved.is_file():
            raise DtrlError(f"cannot resume: {run_dir} has no {RUN_CONFIG_FILE}; start the run without --resume")
        if policies and latest_checkpoint(run_dir) is None:
            raise DtrlError(
                f"cannot resume {run_dir}: none of its checkpoints has {TRAIN_STATE_FILE} (the optimizer and "
                "sampler state); evaluate or export them as they are, or train into a new out_dir"
            )
        config = resumed_config(read_saved_config(saved), overrides or {}, run_dir)
        config.out_dir = str(run_dir)
    else:
        config.validate()
        if policies:  # every complete checkpoint holds a config.json too
            raise DtrlError(
                f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another out_dir"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(run_dir, e) or DtrlError(
            f"cannot create run directory {run_dir} ({e.strerror}): choose another out_dir"
        ) from None
    if resume and (removed := remove_partial_writes(run_dir)):
        log.info("removed what interrupted writes left in %s: %s", run_dir, ", ".join(removed))
    atomic_write(saved, lambda f: f.write(yaml.safe_dump(to_dict(config), sort_keys=False).encode()))
    write_run_info(run_dir)
    return config


def train(
    config: TrainConfig,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    on_step: Callable[[int, float | None], None] | None = None,
) -> TrainResult:
    """Run (or continue) training; ``on_step(step, loss_or_None)`` drives progress displays.

    Started by torchrun with several processes, this is data-parallel training
    (see :mod:`dtrl.distributed`); ``on_step`` is then called on rank 0 only.
    """
    with distributed.process_group() as dist:
        return _train(config, resume, overrides, on_step, dist)


def _train(
    config: TrainConfig,
    resume: bool,
    overrides: dict[str, Any] | None,
    on_step: Callable[[int, float | None], None] | None,
    dist: Dist,
) -> TrainResult:
    config = dist.share(lambda: prepare_run(config, resume, overrides))
    run_dir = Path(config.out_dir)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = dist.device(pick_device(config.device))
    torch.manual_seed(config.seed)

    data = RunData.load(config, resume)  # every rank draws the same split: it is seeded
    env_id, model_config, spec = data.env_id, data.model_config, data.spec
    rank_seed = distributed.rank_seed(config.seed, dist.rank)
    sampler = SegmentSampler(
        data.dataset, model_config.context_length, config.reward_scale, data.normalizer, device, rank_seed,
        in_episode=config.in_episode_segments,
    )
    model = build_model(model_config).to(device)
    if dist.rank:
        torch.manual_seed(rank_seed)  # after the (shared) initialisation: a dropout stream of its own
    optimizer, scheduler = build_optimizer(model, config)

    step = 0
    if resume and (ckpt := dist.share(lambda: latest_checkpoint(run_dir))) is not None:
        step = restore_checkpoint(ckpt, model, optimizer, scheduler, sampler, device, dist, config.seed)

    val_error = None
    if data.validation is not None and dist.is_main:
        val_error = ActionError(data.validation, model_config.context_length, config.reward_scale, data.normalizer, device)

    def checkpoint(val_loss: float | None = None) -> Path:
        """Written by rank 0, with every rank's random streams (rank 0's at the top level); with a
        validation split, marked in best.json when its val/loss (``val_loss``, or computed) is the lowest."""
        spec.step = step
        streams = dist.gather(rng_state(sampler, device))

        def save() -> Path:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                **streams[0],
                "world_size": dist.world_size,
                "other_ranks": streams[1:],
            }
            path = save_checkpoint(run_dir, step, spec, model.state_dict(), state, config.keep_checkpoints)
            if val_error is not None:
                mark_best(run_dir, path, step, val_loss if val_loss is not None else val_error(model))
            return path

        return dist.share(save)

    def run_eval() -> list[EvalResult]:
        spec.step = step
        return evaluate_and_log(model, spec, device, config, data, logger, step)

    logger = MetricsLogger(
        run_dir, enabled=dist.is_main, wandb_config=to_dict(config) if config.wandb else None, start_step=step
    )
    result = TrainResult(run_dir, run_dir)
    forward: Any = dist.wrap(model, device)
    if config.compile:
        forward = CompiledForward(forward, device)
    model.train()
    window: list[float] = []
    tick = time.perf_counter()
    try:
        while step < config.steps:
            batch = sampler.sample(config.batch_size)
            try:
                value, grad_norm = train_step(model, optimizer, scheduler, batch, config, forward, dist)
            except Diverged as e:
                where = f" (rank {dist.rank})" if dist.enabled else ""
                raise DtrlError(
                    f"training diverged at step {step + 1}: loss={e.loss}, grad_norm={e.grad_norm}; "
                    f"batch{where}: {batch_statistics(batch)}; {last_good_checkpoint(run_dir)}: "
                    "lower learning_rate or check the data"
                ) from None
            step += 1
            window.append(value)
            val_loss = None
            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                mean_loss = float(np.mean(window))
                if val_error is not None:
                    val_loss = val_error(model)
                    result.val_losses.append((step, val_loss))
                    now_after_val = time.perf_counter()
                logger.log(
                    step,
                    {
                        "train/loss": mean_loss,
                        "train/learning_rate": scheduler.get_last_lr()[0],
                        "train/grad_norm": float(grad_norm),
                        "train/steps_per_second": len(window) / (now - tick),
                        **({"train/temperature": temperature(model).item()} if model_config.stochastic_policy else {}),
                        **({"val/loss": val_loss} if val_loss is not None else {}),
                    },
                )
                result.losses.append((step, mean_loss))
                window, tick = [], now_after_val if val_loss is not None else now  # steps/s counts training only
            if on_step and dist.is_main:
                on_step(step, value)
            if step % config.checkpoint_every == 0 or step == config.steps:
                result.checkpoint = checkpoint(val_loss)
            if env_id and config.eval_every and step % config.eval_every == 0 and step != config.steps:
                if dist.is_main:
                    run_eval()
                dist.barrier()
        if result.checkpoint == run_dir:  # resumed a finished run: nothing new was written
            result.checkpoint = dist.share(lambda: latest_checkpoint(run_dir)) or checkpoint()
        if env_id and config.eval_episodes and dist.is_main:
            result.eval_results = run_eval()
            write_eval_report(run_dir, result.eval_results)
    except DiskError as e:  # the writer kept nothing partial: say where the run stands
        raise DiskError(
            e.path,
            e.reason,
            f"training stopped at step {step}, {last_good_checkpoint(run_dir)}: "
            "free disk space or fix permissions, then continue with --resume",
        ) from None
    finally:
        logger.close()
    return result
