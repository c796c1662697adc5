"""Memory used to load a dataset, over the size of its arrays (the promise: at most 1.5x).

    python benchmarks/dataset_memory.py [--transitions 1000000] [--workdir /tmp/dtrl-memory]

A synthetic D4RL-sized dataset (float32 observations of 17 and actions of 6
dimensions, float32 rewards, bool flags; 1M transitions = 98 MB of arrays) is
written as a D4RL HDF5 file, a native .npz (plain and compressed) and an
on-disk store. Each format is then loaded by ``dtrl.data.open_dataset`` in a
fresh process, which reports

* tracemalloc: the peak of Python and numpy allocations while loading;
* rss: the growth of the process's peak resident memory while loading
  (Linux: peak reset through /proc/self/clear_refs before loading), which
  also counts what HDF5 and zlib allocate outside numpy;
* sampler: the further peak growth while building the in-memory segment
  sampler (normalised float32 copies and the state statistics), for scale;
  it is training setup, not loading.

Each figure is divided by the loaded arrays' bytes. Results:
benchmarks/results/dataset_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save
from dtrl.data import EpisodeDataset, open_dataset
from dtrl.data.sampler import SegmentSampler
from dtrl.data.store import write_store

KEYS = ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset the kernel's peak-RSS mark to the current RSS; return that RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def _peak() -> int:
    return _status_kib("VmHWM") * 1024


def measure(path: Path) -> dict[str, float]:
    """In this (fresh) process: load ``path`` and report its memory figures."""
    base = _reset_peak()
    tracemalloc.start()
    dataset = open_dataset(path)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss = _peak() - base
    raw = sum(np.asarray(getattr(dataset, k)).nbytes for k in KEYS)
    base = _reset_peak()
    SegmentSampler(dataset, 20, 1000.0)
    sampler = _peak() - base
    return {
        "arrays_mb": round(raw / 1e6, 1),
        "tracemalloc_ratio": round(traced / raw, 3),
        "rss_ratio": round(rss / raw, 3),
        "sampler_setup_ratio": round(sampler / raw, 3),
        "on_disk": dataset.on_disk,
    }


def make_sources(workdir: Path, n: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    arrays = {
        "observations": rng.normal(size=(n, 17)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 6)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": (np.arange(n) % 1000) == 999,
        "timeouts": np.zeros(n, bool),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    sources = {"d4rl_hdf5": workdir / "d4rl.hdf5"}
    with h5py.File(sources["d4rl_hdf5"], "w") as f:
        for key, value in arrays.items():
            f[key] = value
    dataset: EpisodeDataset = open_dataset(sources["d4rl_hdf5"])
    sources["npz"] = dataset.save(workdir / "plain.npz")
    sources["npz_compressed"] = dataset.save(workdir / "packed.npz", compress=True)
    store = workdir / "store"
    if not store.exists():
        write_store(dataset, store)
    sources["store"] = store
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dtrl-memory"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    results = {}
    for name, path in make_sources(args.workdir / str(args.transitions), args.transitions).items():
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, check=True
        )
        results[name] = json.loads(out.stdout.splitlines()[-1])
    save("dataset_memory", {"transitions": args.transitions, "formats": results})


if __name__ == "__main__":
    main()
