"""Train a Decision Transformer on an offline dataset.

``train(config)`` loads the data, builds the model, and runs the paper's
recipe: AdamW (or Online DT's LAMB), linear warm-up, gradient clipping, MSE (continuous) or
cross-entropy (discrete) on the predicted actions of real (unpadded) steps.
The run directory receives the resolved config, ``metrics.jsonl``, TensorBoard
events and atomic checkpoints; ``resume=True`` continues bit-exactly from the
newest complete checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dtrl import distributed
from dtrl.checkpoint import (
    latest_checkpoint,
    mark_best,
    save_checkpoint,
)
from dtrl.config import TrainConfig
from dtrl.data.sampler import SegmentSampler
from dtrl.distributed import Dist
from dtrl.errors import DiskError
from dtrl.evaluate import EvalResult
from dtrl.fields import to_dict
from dtrl.models import build_model
from dtrl.models.gaussian import temperature
from dtrl.policy import pick_device
from dtrl.runs import prepare_run
from dtrl.train.logger import MetricsLogger
from dtrl.train.run import RunData, TrainResult, evaluate_and_log, restore_checkpoint, rng_state, write_eval_report
from dtrl.train.schedule import Schedule, diverged, finished_checkpoints, last_good_checkpoint, stopped, train_metrics
from dtrl.train.step import CompiledForward, Diverged, build_optimizer, train_step
from dtrl.validation import ActionError

log = logging.getLogger(__name__)


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
        data.dataset,
        model_config.context_length,
        config.reward_scale,
        data.normalizer,
        device,
        rank_seed,
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
        val_error = ActionError(
            data.validation, model_config.context_length, config.reward_scale, data.normalizer, device
        )

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
    schedule = Schedule(config, env_id)
    window: list[float] = []
    tick = time.perf_counter()
    try:
        while step < config.steps:
            batch = sampler.sample(config.batch_size)
            try:
                value, grad_norm = train_step(model, optimizer, scheduler, batch, config, forward, dist)
            except Diverged as e:
                where = f" (rank {dist.rank})" if dist.enabled else ""
                raise diverged(step, e.loss, e.grad_norm, batch, run_dir, batch_of=f"batch{where}") from None
            step += 1
            window.append(value)
            val_loss = None
            if schedule.logs(step):
                now = time.perf_counter()
                if val_error is not None:
                    val_loss = val_error(model)
                    result.val_losses.append((step, val_loss))
                resume_tick = time.perf_counter() if val_loss is not None else now  # steps/s counts training only
                alpha = temperature(model).item() if model_config.stochastic_policy else None
                metrics = train_metrics(
                    window, scheduler.get_last_lr()[0], float(grad_norm), now - tick, alpha, val_loss
                )
                logger.log(step, metrics)
                result.losses.append((step, metrics["train/loss"]))
                window, tick = [], resume_tick
            if on_step and dist.is_main:
                on_step(step, value)
            if schedule.checkpoints(step):
                result.checkpoint = checkpoint(val_loss)
            if schedule.evaluates(step):
                if dist.is_main:
                    run_eval()
                dist.barrier()
        if result.checkpoint == run_dir:  # resumed a finished run: nothing new was written
            result.checkpoint = (dist.share(lambda: finished_checkpoints([run_dir], step)) or [checkpoint()])[0]
        if schedule.final_evaluation and dist.is_main:
            result.eval_results = run_eval()
            write_eval_report(run_dir, result.eval_results)
    except DiskError as e:  # the writer kept nothing partial: say where the run stands
        raise stopped(
            e,
            f"training stopped at step {step}, {last_good_checkpoint(run_dir)}: "
            "free disk space or fix permissions, then continue with --resume",
        ) from None
    finally:
        logger.close()
    return result
