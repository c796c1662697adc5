"""Several seeds of one run trained together in one process (``dtrl train --seeds 0,1,2``).

A paper-sized Decision Transformer (3 layers, width 128, batch 64) is far too
small to fill a GPU: one run spends most of its step launching kernels. Seeds
of the same configuration have the same architecture, so N of them can share
every kernel: their parameters are stacked along a new first dimension
(:func:`torch.func.stack_module_state`), the forward pass is one
:func:`torch.func.functional_call` vmapped over that dimension, one backward
pass gives every seed its own gradient, and one fused AdamW steps them all.

What is the same as N separate ``dtrl train seed=S`` runs, and what is not:

* initial weights and batches: seed S's model is initialised after
  ``torch.manual_seed(S)`` and its sampler seeded with S, exactly as a single
  run does;
* AdamW and weight decay act elementwise, and every seed shares the learning
  rate schedule and step count: stacking them is exact;
* gradient clipping is per seed: each seed's norm over its own slices of the
  stacked gradients, as if clipped alone (:func:`clip_per_seed`);
* the loss is a masked mean per seed instead of a boolean-indexed one (vmap
  cannot batch data-dependent shapes): the same value up to float rounding;
* attention runs on PyTorch's math kernel inside vmap: the fused CPU kernel has
  no batching rule, and vmap would fall back to a Python loop over seeds;
* dropout: ``vmap(randomness="different")`` gives each seed its own masks, but
  from one shared random stream, so they are not the masks a separate run
  would draw. With dropout 0 a stacked seed equals a separate run up to float
  rounding (``tests/train/test_stacked.py``); with dropout it is an equally valid
  sample of the same training, not a bit-exact copy.

Every seed writes an ordinary run directory ``OUT_DIR/seed_S`` (its
``config.yaml`` says ``seed: S``): metrics, TensorBoard events, evaluations and
checkpoints that ``dtrl eval``, ``dtrl.load`` and ``dtrl calibrate`` read as
they read any run. ``resume=True`` continues the stack from the newest step
that every seed has a complete checkpoint of, bit-exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtrl import distributed
from dtrl.checkpoint import (
    checkpoint_path,
    complete_checkpoints,
    load_policy_files,
    load_train_state,
    prune_checkpoints,
    save_checkpoint,
)
from dtrl.config import TrainConfig
from dtrl.data.sampler import Batch, SegmentSampler
from dtrl.errors import DiskError, DtrlError
from dtrl.evaluate import EvalResult
from dtrl.fields import SEED_MAX, to_dict
from dtrl.models import build_model
from dtrl.policy import pick_device
from dtrl.runs import prepare_run
from dtrl.train.logger import MetricsLogger
from dtrl.train.run import RunData, TrainResult, evaluate_and_log, rng_state, write_eval_report
from dtrl.train.schedule import Schedule, diverged, finished_checkpoints, stopped, train_metrics
from dtrl.train.stacking import (
    load_seed_state_dicts,
    seed_batch,
    seed_optimizer_state,
    seed_state_dict,
    stack_batches,
    stack_models,
    stack_optimizer_states,
    stacked_train_step,
)
from dtrl.train.step import Diverged, build_optimizer

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- seeds and run dirs
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``, with a clear error for anything else."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DtrlError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    return check_seeds(seeds)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise DtrlError("no seeds given: e.g. --seeds 0,1,2")
    if bad := [s for s in seeds if not 0 <= s <= SEED_MAX]:
        raise DtrlError(f"seed {bad[0]} is out of range: seeds are integers in [0, {SEED_MAX:,}]")
    if len(set(seeds)) != len(seeds):
        raise DtrlError(f"seeds {seeds} repeat one: every seed gets its own run directory")
    return seeds


def seed_run_dir(out_dir: str | Path, seed: int) -> Path:
    """Where seed ``seed`` of a stack writes its run."""
    return Path(out_dir) / f"seed_{seed}"


def seed_config(config: TrainConfig, seed: int) -> TrainConfig:
    return dataclasses.replace(config, seed=seed, out_dir=str(seed_run_dir(config.out_dir, seed)))


def _shared_settings(config: TrainConfig) -> dict[str, Any]:
    """A seed's config without what differs between the seeds of one stack."""
    return {k: v for k, v in to_dict(config).items() if k not in ("seed", "out_dir")}


def dropout_seed(seeds: Sequence[int]) -> int:
    """The seed of the stack's one shared dropout stream, derived from all its seeds."""
    return int(np.random.SeedSequence([s % 2**64 for s in seeds]).generate_state(1, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- checkpoints
def _complete_steps(run_dir: Path) -> set[int]:
    """The steps of a run's complete checkpoints (what a resume may load)."""
    return {int(path.name.split("_")[1]) for path in complete_checkpoints(run_dir)}


def common_checkpoint_step(run_dirs: Sequence[Path]) -> int | None:
    """The newest step every run has a complete checkpoint of (a kill between seeds' saves leaves some ahead)."""
    common = set.intersection(*(_complete_steps(d) for d in run_dirs))
    return max(common) if common else None


# ----------------------------------------------------------------------------- training
@dataclasses.dataclass
class _Seed:
    """One seed's run: its config, sampler, logger and the losses of the current log interval."""

    config: TrainConfig
    sampler: SegmentSampler
    logger: MetricsLogger | None = None
    window: list[float] = dataclasses.field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir)


class StackedRun:
    """The state of a stacked training run; :func:`train_stacked` drives it."""

    def __init__(self, config: TrainConfig, seeds: list[int], resume: bool, overrides: dict[str, Any] | None) -> None:
        _check_supported(config)  # before any run directory is made
        per_seed = {k: v for k, v in (overrides or {}).items() if k not in ("seed", "out_dir")}
        configs = [prepare_run(seed_config(config, s), resume, per_seed) for s in seeds]
        for c in configs[1:]:
            if _shared_settings(c) != _shared_settings(configs[0]):
                raise DtrlError(
                    f"{c.out_dir} was trained with other settings than {configs[0].out_dir}: "
                    "the seeds of one stack must share every setting but the seed"
                )
        self.config = config = configs[0]
        self.seeds = seeds
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = pick_device(config.device)
        self.data = RunData.load(config)
        model_config = self.data.model_config
        self.runs = [
            _Seed(
                c,
                SegmentSampler(
                    self.data.dataset,
                    model_config.context_length,
                    config.reward_scale,
                    self.data.normalizer,
                    self.device,
                    c.seed,
                    in_episode=config.in_episode_segments,
                ),
            )
            for c in configs
        ]
        models = []
        for seed in seeds:  # each initialised as `dtrl train seed=S` initialises it
            torch.manual_seed(seed)
            models.append(build_model(model_config))
        self.stacked = stack_models(models).to(self.device).train()
        self.single = models[0].to(self.device)  # a plain model to evaluate each seed's weights in
        torch.manual_seed(dropout_seed(seeds))
        self.optimizer, self.scheduler = build_optimizer(self.stacked, config)
        self.step = self.restore() if resume else 0

    def restore(self) -> int:
        """Load every seed's checkpoint of the newest step they all have; return that step."""
        run_dirs = [r.run_dir for r in self.runs]
        step = common_checkpoint_step(run_dirs)
        if step is None:
            if any(_complete_steps(d) for d in run_dirs):
                raise DtrlError(
                    f"the seeds in {self.config.out_dir} share no checkpoint step: resume them one by one "
                    "with dtrl train --resume, or start the stack again in a new out_dir"
                )
            return 0
        checkpoints = [checkpoint_path(d, step) for d in run_dirs]
        try:
            load_seed_state_dicts(self.stacked, [load_policy_files(c)[1] for c in checkpoints])
        except RuntimeError as e:
            raise DtrlError(
                f"checkpoints in {self.config.out_dir} do not fit the model built from this config and dataset "
                f"({' '.join(str(e).split())[:200]}): resume with the settings they were trained with"
            ) from None
        states = [load_train_state(c) for c in checkpoints]
        self.optimizer.load_state_dict(stack_optimizer_states([s["optimizer"] for s in states]))
        self.scheduler.load_state_dict(states[0]["scheduler"])
        for run, state in zip(self.runs, states):
            run.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(states[0]["torch_rng"])  # the shared dropout stream, saved with every seed
        if self.device.type == "cuda" and "cuda_rng" in states[0]:
            torch.cuda.set_rng_state(states[0]["cuda_rng"], self.device)
        return step

    def checkpoint(self) -> list[Path]:
        """Every seed's checkpoint of this step; older ones are pruned only once all are written,
        so a kill between two seeds' saves still leaves a step they all share."""
        optimizer, scheduler = self.optimizer.state_dict(), self.scheduler.state_dict()
        spec = dataclasses.replace(self.data.spec, step=self.step)
        paths = []
        for i, run in enumerate(self.runs):
            state = {
                "step": self.step,
                "optimizer": seed_optimizer_state(optimizer, i),
                "scheduler": scheduler,
                **rng_state(run.sampler, self.device),
                "world_size": 1,
                "other_ranks": [],
                "stacked_seeds": self.seeds,
            }
            weights = seed_state_dict(self.stacked, i)
            paths.append(
                save_checkpoint(run.run_dir, self.step, spec, weights, state, self.config.keep_checkpoints + 1)
            )
        for run in self.runs:
            prune_checkpoints(run.run_dir, self.config.keep_checkpoints)
        return paths

    def evaluate(self, index: int) -> list[EvalResult]:
        """Seed ``index``'s current weights evaluated in a plain model, logged to its run."""
        run = self.runs[index]
        self.single.load_state_dict(seed_state_dict(self.stacked, index))
        spec = dataclasses.replace(self.data.spec, step=self.step)
        return evaluate_and_log(self.single, spec, self.device, run.config, self.data, run.logger, self.step)

    def diverged(self, error: Diverged, batch: Batch) -> DtrlError:
        """The error for a step where some seed's loss or gradient norm was not finite."""
        bad = [
            i
            for i, (loss, norm) in enumerate(zip(error.loss, error.grad_norm))
            if not (math.isfinite(loss) and math.isfinite(norm))
        ]
        i = bad[0]
        return diverged(
            self.step,
            error.loss[i],
            error.grad_norm[i],
            seed_batch(batch, i),
            self.runs[i].run_dir,
            who=f" for seed {', '.join(str(self.seeds[j]) for j in bad)}",
            batch_of=f"batch of seed {self.seeds[i]}",
        )


def _check_supported(config: TrainConfig) -> None:
    if distributed.from_env().enabled:
        raise DtrlError("stacked seeds train in one process: start dtrl train --seeds without torchrun")
    if config.model.activation_checkpointing:
        raise DtrlError(
            "model.activation_checkpointing does not work inside torch.func.vmap: "
            "set it to false for stacked seeds, or train the seeds one by one"
        )
    if config.val_fraction:
        raise DtrlError("val_fraction is for single runs: train without --seeds, or set val_fraction=0")
    if config.optimizer != "adamw" or config.temperature_learning_rate > 0:
        raise DtrlError(
            "stacked seeds share one elementwise AdamW: LAMB's per-tensor trust ratio and a separate temperature "
            "optimizer would mix the seeds; set optimizer=adamw temperature_learning_rate=0, or train the seeds one by one"
        )
    if config.compile:
        log.warning("compile=true is not used for stacked seeds: the vmapped step runs eagerly")
    if config.wandb:
        log.warning("wandb=true is not used for stacked seeds: each seed logs to its metrics.jsonl and TensorBoard")


def train_stacked(
    config: TrainConfig,
    seeds: Sequence[int],
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    on_step: Callable[[int, float | None], None] | None = None,
) -> list[TrainResult]:
    """Train ``config`` once per seed, all seeds stacked in this process; one result per seed.

    Seed S's run lands in ``config.out_dir/seed_S`` (:func:`seed_run_dir`).
    ``on_step(step, mean loss over seeds)`` drives progress displays.
    """
    run = StackedRun(config, check_seeds(seeds), resume, overrides)
    config = run.config
    results = [TrainResult(r.run_dir, r.run_dir) for r in run.runs]
    for r in run.runs:
        r.logger = MetricsLogger(r.run_dir, start_step=run.step)
    schedule = Schedule(config, run.data.env_id)
    tick = time.perf_counter()
    try:
        while run.step < config.steps:
            batch = stack_batches([r.sampler.sample(config.batch_size) for r in run.runs])
            try:
                losses, norms = stacked_train_step(run.stacked, run.optimizer, run.scheduler, batch, config)
            except Diverged as e:
                raise run.diverged(e, batch) from None
            run.step += 1
            for r, loss in zip(run.runs, losses):
                r.window.append(loss)
            if schedule.logs(run.step):
                now = time.perf_counter()
                _log_training(run, results, norms, now - tick)
                tick = now
            if on_step:
                on_step(run.step, float(np.mean(losses)))
            if schedule.checkpoints(run.step):
                for result, path in zip(results, run.checkpoint()):
                    result.checkpoint = path
            if schedule.evaluates(run.step):
                for i in range(len(run.runs)):
                    run.evaluate(i)
        if results[0].checkpoint == results[0].run_dir:  # resumed a finished stack: nothing new was written
            paths = finished_checkpoints([r.run_dir for r in run.runs], run.step) or run.checkpoint()
            for result, path in zip(results, paths):
                result.checkpoint = path
        if schedule.final_evaluation:
            for i, result in enumerate(results):
                result.eval_results = run.evaluate(i)
                write_eval_report(result.run_dir, result.eval_results)
    except DiskError as e:
        raise stopped(
            e,
            f"training stopped at step {run.step}; continue the stack with --resume once disk space or "
            "permissions are fixed (it restarts from the newest step every seed has a checkpoint of)",
        ) from None
    finally:
        for r in run.runs:
            if r.logger is not None:
                r.logger.close()
    return results


def _log_training(run: StackedRun, results: list[TrainResult], norms: torch.Tensor, seconds: float) -> None:
    """Each seed's training metrics of the last interval, in its own run; steps/s is the stack's."""
    norms_list = norms.tolist()
    temperatures = run.stacked.log_temperature.exp().tolist() if run.data.model_config.stochastic_policy else None
    for i, (r, result) in enumerate(zip(run.runs, results)):
        alpha = temperatures[i] if temperatures is not None else None
        metrics = train_metrics(r.window, run.scheduler.get_last_lr()[0], norms_list[i], seconds, alpha)
        r.logger.log(run.step, metrics)
        result.losses.append((run.step, metrics["train/loss"]))
        r.window = []
