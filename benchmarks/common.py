"""What every benchmark records next to its numbers: command, machine, versions, date."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from dtrl.io import atomic_write
from dtrl.tracking import package_versions

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """The context a reader needs to judge a number, including how busy the machine was."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{_cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "versions": {"python": platform.python_version(), **package_versions(("torch", "numpy", "dtrl"))},
    }


def drop_page_cache(*paths: Path) -> None:
    """Evict these files' clean pages (a directory: its .npy files), leaving the rest of the machine's cache."""
    for path in paths:
        for f in [path] if path.is_file() else sorted(path.glob("*.npy")):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def save(name: str, results: dict[str, Any], echo: bool = True) -> Path:
    """Write ``results/NAME.json`` (environment + results; a ``results["environment"]`` replaces
    the plain one) atomically, and print it unless ``echo`` is false."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    text = json.dumps({"environment": environment(), **results}, indent=2)
    atomic_write(path, lambda f: f.write((text + "\n").encode()))
    if echo:
        print(text)
    return path
