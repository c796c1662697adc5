"""Train a DT on a store larger than the process's memory limit, enforced by a cgroup.

    sudo python benchmarks/larger_than_memory.py [--data-gib 3] [--limit-gib 1] [--steps 300]

1. Streams a synthetic Atari-like dataset (4x84x84 uint8 frames, 4 discrete
   actions; the action is the quadrant holding a bright square, so the policy
   is learnable from the frame) into a store with StoreWriter, never holding
   more than one episode in memory.
2. Creates a memory cgroup (cgroup v2 ``memory.max``, or v1
   ``memory.limit_in_bytes`` where the memory controller is on v1) with a
   limit below the dataset's size. A cgroup charges page cache too, but
   reclaims clean file pages under pressure, so memory-mapped reads are
   limited by the disk, never by the limit; anonymous memory (a copy of the
   data) is not reclaimable without swap and ends in the OOM killer.
3. Control: in the cgroup, copying the observations into RAM is killed.
4. The claim: in the cgroup, ``dtrl train dataset=STORE`` runs to the end,
   its loss falls, and the cgroup's peak usage stays under the limit while
   it reads more than the limit from disk. The store's pages are dropped from
   the page cache first, so that they are read (and charged) inside the cgroup.

Needs root (to create a cgroup). Results: benchmarks/results/larger_than_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import drop_page_cache, save
from dtrl.data import Episode
from dtrl.data.store import StoreWriter

SEED = 0
FRAME = (4, 84, 84)
EPISODE = 1000


def episodes(count: int, rng: np.random.Generator) -> Iterator[Episode]:
    for _ in range(count):
        actions = rng.integers(0, 4, EPISODE)
        frames = rng.integers(0, 64, (EPISODE, *FRAME), dtype=np.uint8)
        for quadrant in range(4):
            rows, cols = (quadrant // 2) * 42 + 10, (quadrant % 2) * 42 + 10
            frames[actions == quadrant, :, rows : rows + 21, cols : cols + 21] = 255
        rewards = (rng.random(EPISODE) < 0.1).astype(np.float32)
        term = np.zeros(EPISODE, bool)
        term[-1] = True
        yield Episode(frames, actions, rewards, term, np.zeros(EPISODE, bool))


class MemoryCgroup:
    """A memory-limited cgroup (v2 if its memory controller is there, else v1) and its counters."""

    def __init__(self, limit: int) -> None:
        v2 = Path("/sys/fs/cgroup")
        controllers = v2 / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            self.version, self.path = 2, v2 / f"dtrl-bench-{os.getpid()}"
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(limit))
            (self.path / "memory.swap.max").write_text("0")
        else:
            self.version, self.path = 1, Path("/sys/fs/cgroup/memory") / f"dtrl-bench-{os.getpid()}"
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
        self.limit = limit

    def join(self) -> None:
        """Move the calling process into the cgroup (used as a child's preexec_fn)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stat(self) -> dict[str, int]:
        stat = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        if self.version == 2:
            return {
                "usage": int((self.path / "memory.current").read_text()),
                "anon": int(stat["anon"]),
                "file": int(stat["file"]),
            }
        return {
            "usage": int((self.path / "memory.usage_in_bytes").read_text()),
            "anon": int(stat["total_rss"]),
            "file": int(stat["total_cache"]),
        }

    def run(self, cmd: list[str], timeout: float) -> dict[str, Any]:
        """Run ``cmd`` inside the cgroup, sampling its memory every 0.1 s."""
        peaks = {"usage": 0, "anon": 0, "file": 0}
        blocks = resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, preexec_fn=self.join, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(proc.stdout or []))
        reader.start()
        while proc.poll() is None and time.perf_counter() - start < timeout:
            for key, value in self.stat().items():
                peaks[key] = max(peaks[key], value)
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
        reader.join()
        read = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock - blocks) * 512
        return {
            "returncode": rc,
            "seconds": round(time.perf_counter() - start, 1),
            "read_from_disk_GiB": round(read / 2**30, 2),
            "peak_cgroup_usage_MiB": round(peaks["usage"] / 2**20),
            "peak_anonymous_MiB": round(peaks["anon"] / 2**20),
            "peak_page_cache_MiB": round(peaks["file"] / 2**20),
            "output_tail": "".join(output)[-600:],
        }

    def remove(self) -> None:
        self.path.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dtrl-larger-than-memory"))
    parser.add_argument("--data-gib", type=float, default=3.0)
    parser.add_argument("--limit-gib", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the store and run directory")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    store = args.workdir / "store"
    count = max(1, round(args.data_gib * 2**30 / (EPISODE * int(np.prod(FRAME)))))
    t0 = time.perf_counter()
    with StoreWriter(
        store, gym.spaces.Box(0, 255, FRAME, np.uint8), gym.spaces.Discrete(4), name="synthetic-atari"
    ) as w:
        for ep in episodes(count, np.random.default_rng(SEED)):
            w.add(ep)
    store_bytes = sum(f.stat().st_size for f in store.iterdir())
    results: dict[str, Any] = {
        "seed": SEED,
        "store": {
            "transitions": count * EPISODE,
            "frame": "4x84x84 uint8",
            "GiB_on_disk": round(store_bytes / 2**30, 2),
            "write_seconds": round(time.perf_counter() - t0, 1),
        },
        "memory_limit_GiB": args.limit_gib,
    }
    cgroup = MemoryCgroup(int(args.limit_gib * 2**30))
    results["cgroup"] = f"v{cgroup.version} {cgroup.path}"
    try:
        drop_page_cache(store)  # the writer's cached pages belong to this (unlimited) process
        copy = f"import numpy as np; from dtrl.data.store import open_store; np.array(open_store({str(store)!r}).observations)"
        results["control_copy_into_ram"] = cgroup.run([sys.executable, "-c", copy], timeout=600)
        run_dir = args.workdir / "run"
        train = [
            sys.executable,
            "-m",
            "dtrl",
            "train",
            f"dataset={store}",
            f"out_dir={run_dir}",
            f"steps={args.steps}",
            "batch_size=32",
            "model.context_length=10",
            "model.n_layer=2",
            "model.n_head=2",
            "model.n_embd=64",
            "model.dropout=0",
            "learning_rate=3e-4",
            "warmup_steps=20",
            "reward_scale=1",
            "num_threads=1",
            f"log_every={max(1, args.steps // 8)}",
            f"checkpoint_every={args.steps}",
            f"seed={SEED}",
        ]
        results["train_command"] = " ".join(["python", *train[1:]])
        drop_page_cache(store)
        results["train"] = cgroup.run(train, timeout=3600)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        results["train"]["loss_logged"] = [(m["step"], round(m["train/loss"], 4)) for m in metrics if "train/loss" in m]
        results["train"]["steps_per_second"] = round(
            float(np.mean([m["train/steps_per_second"] for m in metrics[1:]])), 2
        )
    finally:
        cgroup.remove()
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    save("larger_than_memory", results)


if __name__ == "__main__":
    main()
