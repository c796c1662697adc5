"""Run directories: making one ready to train (or to resume), finding the run a checkpoint belongs
to, and reading what that run recorded.

Commands that take "a run, a checkpoint or a policy directory" (calibrate,
export) use this to find the training config and the final evaluation, which
live at the top of a run, not inside its checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from dtrl.checkpoint import latest_checkpoint, remove_partial_writes, resolve_policy_dir
from dtrl.config import TrainConfig, read_saved_config, resumed_config
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.readers import open_dataset
from dtrl.errors import DtrlError, write_error
from dtrl.fields import to_dict
from dtrl.io import atomic_write, checked, read_json
from dtrl.runfiles import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVAL_FILE,
    EXPORTED_CONFIG_FILE,
    RUN_CONFIG_FILE,
    TRAIN_STATE_FILE,
)
from dtrl.tracking import write_run_info

log = logging.getLogger(__name__)


def run_dir_of(path: str | Path) -> Path | None:
    """``path`` itself if it is a run directory, its run if it is a checkpoint of one, else None."""
    path = Path(path)
    if (path / RUN_CONFIG_FILE).is_file():
        return path
    if path.parent.name == CHECKPOINT_DIR and (path.parent.parent / RUN_CONFIG_FILE).is_file():
        return path.parent.parent
    return None


def read_run_config(run_dir: Path, name: str = RUN_CONFIG_FILE) -> TrainConfig:
    """The resolved config a run was trained with."""
    return read_saved_config(run_dir / name)


def training_config(path: str | Path) -> TrainConfig | None:
    """The config behind a run, one of its checkpoints or an exported policy; None if unknown."""
    run = run_dir_of(path)
    if run is not None:
        return read_run_config(run)
    if (Path(path) / EXPORTED_CONFIG_FILE).is_file():
        return read_run_config(Path(path), EXPORTED_CONFIG_FILE)
    return None


def final_evaluation(run_dir: Path, checkpoint: Path) -> list[dict[str, Any]] | None:
    """The run's ``eval.json``, if ``checkpoint`` is the run's newest (the one it evaluated)."""
    report = run_dir / EVAL_FILE
    newest = latest_checkpoint(run_dir)
    if not report.is_file() or newest is None or newest.resolve() != checkpoint.resolve():
        return None
    fix = "delete it or run the evaluation again"
    return checked(report, read_json(report, fix), _eval_rows, "an evaluation report written by dtrl train", fix)


def _eval_rows(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with the numbers a model card shows, checked (a KeyError or ValueError names what is wrong)."""
    numbers = ("target_return", "return_mean", "return_std")
    return [{**row, **{k: float(row[k]) for k in numbers}, "episodes": int(row["episodes"])} for row in data]


def training_dataset(path: str | Path, dataset: str | None = None) -> EpisodeDataset:
    """The dataset a policy was trained on: ``dataset`` if given, else the one in its training config."""
    if not dataset:
        resolve_policy_dir(path)  # a path without a checkpoint says so, rather than that its config is missing
        config = training_config(path)
        dataset = config.dataset if config is not None else None
    if not dataset:
        raise DtrlError(f"{path} records no training config, so its dataset is unknown: pass --dataset PATH")
    return open_dataset(dataset)


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
