"""The dataset cache: where ``dtrl data collect`` writes datasets, so training finds them by name.

The cache is ``$DTRL_DATA_DIR`` when set, else the user's data directory
(``$XDG_DATA_HOME/dtrl/datasets``, ``~/.local/share/dtrl/datasets`` on Linux,
``~/Library/Application Support/dtrl/datasets`` on macOS,
``%LOCALAPPDATA%\\dtrl\\datasets`` on Windows): the same places platformdirs
would pick, without the dependency. A dataset named ``hopper-medium-replay``
is the file ``hopper-medium-replay.npz`` in it; behaviour agents live under
``agents/`` so an interrupted collection resumes from them.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from dtrl.data.episodes import NATIVE_SUFFIX

CACHE_ENV_VAR = "DTRL_DATA_DIR"
# Cache names are plain file stems: no separators, so a name never escapes the cache.
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


def default_cache_dir() -> Path:
    """The cache directory: ``$DTRL_DATA_DIR``, else the platform's per-user data directory."""
    if override := os.environ.get(CACHE_ENV_VAR):
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "dtrl" / "datasets"


def dataset_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where the dataset called ``name`` lives in the cache (whether or not it exists)."""
    return (cache_dir or default_cache_dir()) / f"{name}{NATIVE_SUFFIX}"


def cached_dataset(name: str, cache_dir: Path | None = None) -> Path | None:
    """The cached file of dataset ``name``, or None when ``name`` is not a cache name or not cached."""
    if not _NAME.match(name) or name.endswith(NATIVE_SUFFIX):
        return None
    path = dataset_path(name, cache_dir)
    return path if path.is_file() else None


def list_cached(cache_dir: Path | None = None) -> list[Path]:
    """The cached datasets' files, sorted by name."""
    root = cache_dir or default_cache_dir()
    return sorted(p for p in root.glob(f"*{NATIVE_SUFFIX}") if not p.name.startswith("."))
