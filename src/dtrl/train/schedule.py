"""The schedule single-seed and stacked training share: when a step logs, checkpoints and
evaluates, the metrics it logs, and the errors that stop a run (divergence, a full disk)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtrl.checkpoint import checkpoint_path, latest_checkpoint
from dtrl.config import TrainConfig
from dtrl.data.sampler import Batch
from dtrl.errors import DiskError, DtrlError


def finished_checkpoints(run_dirs: Sequence[Path], step: int) -> list[Path] | None:
    """The checkpoints of ``step`` that a resumed, already finished run left, one per run directory
    (None unless every one has it): such a run trains no step and writes nothing, so they are its result."""
    found = [latest_checkpoint(d) for d in run_dirs]
    finished = [path for d, path in zip(run_dirs, found) if path is not None and path == checkpoint_path(d, step)]
    return finished if len(finished) == len(run_dirs) else None


class Schedule:
    """Which of a step's chores are due. The last step always logs and checkpoints; it evaluates
    only in the final evaluation, not also as an ``eval_every`` one."""

    def __init__(self, config: TrainConfig, env_id: str | None) -> None:
        self.config, self.env_id = config, env_id

    def logs(self, step: int) -> bool:
        return step % self.config.log_every == 0 or step == self.config.steps

    def checkpoints(self, step: int) -> bool:
        return step % self.config.checkpoint_every == 0 or step == self.config.steps

    def evaluates(self, step: int) -> bool:
        c = self.config
        return bool(self.env_id) and bool(c.eval_every) and step % c.eval_every == 0 and step != c.steps

    @property
    def final_evaluation(self) -> bool:
        return bool(self.env_id) and bool(self.config.eval_episodes)


def train_metrics(
    losses: list[float],
    learning_rate: float,
    grad_norm: float,
    seconds: float,
    temperature: float | None = None,
    val_loss: float | None = None,
) -> dict[str, float]:
    """A log interval's training metrics; steps/s counts training steps only (not validation)."""
    return {
        "train/loss": float(np.mean(losses)),
        "train/learning_rate": learning_rate,
        "train/grad_norm": grad_norm,
        "train/steps_per_second": len(losses) / seconds,
        **({"train/temperature": temperature} if temperature is not None else {}),
        **({"val/loss": val_loss} if val_loss is not None else {}),
    }


def batch_statistics(batch: Batch) -> str:
    """Ranges of a batch's real (unpadded) inputs and their NaN/Inf count: tells bad data from a diverging model."""
    parts = [f"{int(batch.mask.sum())} real steps"]
    for name in ("returns_to_go", "states", "actions"):
        values = getattr(batch, name)[batch.mask]
        if not values.is_floating_point():
            continue  # discrete actions are indices
        finite = torch.isfinite(values)
        good = values[finite].float()
        text = (
            f"{name} in [{good.min().item():.4g}, {good.max().item():.4g}]"
            if good.numel()
            else f"{name} all non-finite"
        )
        if bad := int((~finite).sum()):
            text += f" with {bad} NaN/Inf"
        parts.append(text)
    return ", ".join(parts)


def last_good_checkpoint(run_dir: Path) -> str:
    """Where a stopped run stands, for its error message."""
    ckpt = latest_checkpoint(run_dir)
    return f"the last good checkpoint {ckpt} is intact" if ckpt else "no checkpoint was written yet"


def diverged(
    step: int, loss: Any, grad_norm: Any, batch: Batch, run_dir: Path, who: str = "", batch_of: str = "batch"
) -> DtrlError:
    """The error for step ``step + 1``, whose loss or gradient norm was not finite: what the batch held
    and where the run stands. ``who`` and ``batch_of`` name the seed of a stack."""
    return DtrlError(
        f"training diverged at step {step + 1}{who}: loss={loss}, grad_norm={grad_norm}; "
        f"{batch_of}: {batch_statistics(batch)}; {last_good_checkpoint(run_dir)}: "
        "lower learning_rate or check the data"
    )


def stopped(error: DiskError, fix: str) -> DiskError:
    """A write that failed mid-run, with what to do about the run (the writer kept nothing partial)."""
    return DiskError(error.path, error.reason, fix)
