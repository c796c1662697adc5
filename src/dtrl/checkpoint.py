"""Checkpoints and policy directories, written atomically.

A policy directory holds ``config.json`` (the model config, normalisation
statistics, spaces, env id and reference scores) and ``model.safetensors``.
A training checkpoint is a policy directory plus ``train_state.pt`` (optimizer,
scheduler, step and every RNG state), so any checkpoint can be evaluated or
shared as it is.

Checkpoints are built in a hidden temporary directory, fsynced, and renamed
into ``checkpoints/step_NNNNNNNN``; only then is the ``latest`` pointer
replaced. A crash at any moment leaves either the previous or the new
checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from dtrl import __version__
from dtrl.config import ModelConfig
from dtrl.errors import DiskError, DtrlError, write_error
from dtrl.fields import from_dict, to_dict
from dtrl.io import atomic_write, fsync_dir, write_json
from dtrl.runfiles import BEST_FILE, CHECKPOINT_DIR, CONFIG_FILE, LATEST_FILE, TRAIN_STATE_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)


@dataclass
class PolicySpec:
    """Everything besides the weights that a policy needs at inference (``config.json``)."""

    model: ModelConfig
    reward_scale: float
    normalizer: dict[str, Any]
    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    env_id: str | None = None
    ref_scores: dict[str, float] = field(default_factory=dict)
    dataset: str = ""
    step: int = 0

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["model"] = to_dict(self.model)
        return {"format": "dtrl-policy", "dtrl_version": __version__, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PolicySpec:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["model"] = from_dict(ModelConfig, d["model"], prefix="model.")
        return cls(**d)


def write_policy(directory: Path, spec: PolicySpec, state_dict: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing directory."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(directory / WEIGHTS_FILE, lambda f: f.write(safetensors_bytes(tensors, metadata={"format": "pt"})))
    write_json(directory / CONFIG_FILE, spec.to_json())


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where a run's checkpoint of ``step`` lives: ``checkpoints/step_00000123``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    spec: PolicySpec,
    state_dict: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step_N`` atomically, point ``latest`` at it, prune old ones."""
    final = checkpoint_path(run_dir, step)
    root = final.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    except OSError as e:
        raise write_error(root, e) or e from None
    try:
        write_policy(tmp, spec, state_dict)
        atomic_write(tmp / TRAIN_STATE_FILE, lambda f: torch.save(train_state, f))
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, DiskError):  # name the checkpoint, not a file in its hidden temp directory
            raise DiskError(final, e.reason, e.fix) from None
        if isinstance(e, OSError) and (error := write_error(final, e)) is not None:
            raise error from None
        raise
    atomic_write(root / LATEST_FILE, lambda f: f.write(final.name.encode()))
    prune_checkpoints(run_dir, keep)
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints; the best one (``best.json``) outlives them."""
    best = read_best(run_dir)
    for old in sorted(p for p in (Path(run_dir) / CHECKPOINT_DIR).glob("step_*") if p.is_dir())[:-keep]:
        if best is None or old.name != best["checkpoint"]:
            shutil.rmtree(old, ignore_errors=True)


def read_best(run_dir: Path) -> dict[str, Any] | None:
    """``checkpoints/best.json`` (checkpoint name, step, val_loss), or None if the run has none."""
    path = Path(run_dir) / CHECKPOINT_DIR / BEST_FILE
    try:
        best = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        best = None
    if (
        isinstance(best, dict)
        and isinstance(best.get("checkpoint"), str)
        and isinstance(best.get("val_loss"), (int, float))
    ):
        return best
    log.warning("%s is corrupt: ignored (the next validated checkpoint rewrites it)", path)
    return None


def mark_best(run_dir: Path, checkpoint: Path, step: int, val_loss: float) -> bool:
    """Point ``best.json`` at ``checkpoint`` if its val/loss is the lowest so far; return whether it is."""
    best = read_best(run_dir)
    if best is not None and best["val_loss"] <= val_loss and (checkpoint.parent / best["checkpoint"]).is_dir():
        return False
    write_json(checkpoint.parent / BEST_FILE, {"checkpoint": checkpoint.name, "step": step, "val_loss": val_loss})
    return True


def _complete(path: Path, files: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE, TRAIN_STATE_FILE)) -> bool:
    return all((path / f).is_file() for f in files)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None if it has none."""
    root = Path(run_dir) / CHECKPOINT_DIR
    pointer = root / LATEST_FILE
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""  # no pointer, or a corrupt one: the newest complete checkpoint
    if name.startswith("step_") and "\0" not in name and "/" not in name and _complete(root / name):
        return root / name
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints that hold every file (what a resume may load), oldest first."""
    return sorted(p for p in (Path(run_dir) / CHECKPOINT_DIR).glob("step_*") if p.is_dir() and _complete(p))


def resolve_policy_dir(path: str | os.PathLike) -> Path:
    """Accept a policy directory, a checkpoint, or a run directory (its latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise DtrlError(f"no checkpoint at {path}: give a run directory, a checkpoint or a policy directory")
    if (path / CONFIG_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    # inference needs no train state: the newest checkpoint with a config and weights will do
    policies = sorted(
        p for p in (path / CHECKPOINT_DIR).glob("step_*") if p.is_dir() and _complete(p, (CONFIG_FILE, WEIGHTS_FILE))
    )
    if policies:
        return policies[-1]
    steps = sorted(p for p in (path / CHECKPOINT_DIR).glob("step_*") if p.is_dir())
    if steps:
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (steps[-1] / f).is_file()]
        raise DtrlError(
            f"{path}'s newest checkpoint {steps[-1].name} lacks {' and '.join(missing)}: it is incomplete; "
            "restore it or point at another checkpoint"
        )
    raise DtrlError(
        f"{path} holds no checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}): train first or point at a checkpoint directory"
    )


def load_policy_files(path: str | os.PathLike) -> tuple[PolicySpec, dict[str, torch.Tensor], Path]:
    """Read and check ``config.json`` and ``model.safetensors``."""
    directory = resolve_policy_dir(path)
    try:
        spec = PolicySpec.from_json(json.loads((directory / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DtrlError(f"{directory / CONFIG_FILE} is not a valid dtrl policy config ({e}): re-export it") from None
    try:
        weights = load_file(directory / WEIGHTS_FILE)
    except FileNotFoundError:
        raise DtrlError(f"{directory} has no {WEIGHTS_FILE}: the checkpoint is incomplete") from None
    except (SafetensorError, OSError) as e:
        raise DtrlError(
            f"{directory / WEIGHTS_FILE} is corrupt or truncated ({e}): use an earlier checkpoint"
        ) from None
    return spec, weights, directory


def load_train_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / TRAIN_STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        first = (str(e).splitlines() or ["empty file"])[0].split(". ")[0]
        raise DtrlError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {first}): delete {checkpoint.name} "
            "to resume from the checkpoint before it"
        ) from None


def remove_partial_writes(run_dir: Path) -> list[str]:
    """Delete what killed writes leave behind, so resumed runs do not pile up dead copies of the model.

    That is hidden temp files and checkpoint directories, and ``step_*``
    directories an interrupted prune left incomplete: none can ever be loaded.
    """
    run_dir, root = Path(run_dir), Path(run_dir) / CHECKPOINT_DIR
    stale = [*run_dir.glob(".*.tmp"), *root.glob(".*.tmp"), *root.glob(".tmp-step_*")]
    stale += [p for p in root.glob("step_*") if p.is_dir() and not _complete(p)]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return sorted(p.name for p in stale)
