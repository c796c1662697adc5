"""Optional experiment trackers, and what produced a run.

TensorBoard is always on (:class:`dtrl.train.logger.MetricsLogger`). Weights & Biases
is used only when asked for (``wandb=true``) and installed, so training never
needs an account or a network. ``run_info.json`` records the versions and the
git commit behind a run, so a result can be traced to the code that made it.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from dtrl import __version__
from dtrl.errors import DtrlError
from dtrl.io import write_json
from dtrl.runfiles import RUN_INFO_FILE

_PACKAGES = ("torch", "numpy", "gymnasium", "mujoco", "minari", "safetensors")


def start_wandb(run_dir: Path, config: dict[str, Any]) -> Any:
    """A W&B run named after the run directory; project from WANDB_PROJECT (default ``dtrl``)."""
    try:
        import wandb
    except ImportError:
        raise DtrlError("wandb=true but wandb is not installed: pip install wandb, or set wandb=false") from None
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "dtrl"), name=run_dir.name, dir=str(run_dir), config=config
    )


def git_commit(start: Path) -> str | None:
    """The commit checked out in the git work tree holding ``start``, read from ``.git`` (no git needed)."""
    for directory in (start, *start.parents):
        git = directory / ".git"
        if git.is_file():  # a linked work tree: ".git" names the real git directory
            git = (directory / git.read_text().split("gitdir:", 1)[-1].strip()).resolve()
        if not git.is_dir():
            continue
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head  # detached HEAD
        ref = head.split(":", 1)[1].strip()
        common = git / "commondir"
        roots = [git] + ([(git / common.read_text().strip()).resolve()] if common.is_file() else [])
        for root in roots:
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(f" {ref}"):
                        return line.split()[0]
        return None
    return None


def package_versions(names: Iterable[str], missing: str | None = "not installed") -> dict[str, str | None]:
    """The installed version of each package, ``missing`` for those not installed."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = missing
    return found


def run_info() -> dict[str, Any]:
    """Versions of dtrl, Python and the libraries that shape results, and dtrl's git commit."""
    return {
        "dtrl": __version__,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(_PACKAGES, missing=None),
        "command": sys.argv,
    }


def write_run_info(run_dir: Path) -> None:
    """Write ``run_info.json``: what (re)started the run most recently."""
    write_json(run_dir / RUN_INFO_FILE, run_info())
