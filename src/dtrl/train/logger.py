"""Training metrics: namespaced scalars to ``metrics.jsonl``, TensorBoard and Weights & Biases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dtrl.io import append_line, atomic_write
from dtrl.runfiles import METRICS_FILE, TENSORBOARD_DIR
from dtrl.tracking import start_wandb


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
            self.tb = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1)

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
