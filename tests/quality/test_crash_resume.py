"""Crash safety: real ``dtrl train`` processes SIGKILLed at random points, then resumed.

One run is killed again and again: mid-prune, at random points inside
checkpoint writes (half-written files, before fsyncs and renames, between the
checkpoint's rename and the ``latest`` pointer) and at random training steps.
After every kill, whatever checkpoint could be loaded must equal the
uninterrupted run's checkpoint of that step; after the last resume, the final
weights, optimizer state and loss curve must equal the uninterrupted run's,
bit for bit (CPU, one thread), with nothing torn left on disk.

The child process is this file run as a script: it installs the kill point,
then runs the dtrl CLI. ``CRASH_TEST_SEED=N`` draws other kill points.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS, EVERY, WRITES_PER_CHECKPOINT = 100, 10, 15
# Each checkpoint makes at least 15 write events: three files (config, weights, train
# state) and the latest pointer written atomically (first write, fsync, rename) = 12,
# plus the fsync of the temp directory, its rename and the fsync of checkpoints/.
# Pruning an old checkpoint adds an unlink per file and an rmdir.


def _install_kill_point(kind: str, n: int, log: Path) -> None:
    """SIGKILL this process at the ``n``-th event of ``kind`` ("step": a training step starts;
    "write": a write event inside a checkpoint), noting the event in ``log`` first."""
    import dtrl.checkpoint as ck
    import dtrl.train.loop as tr
    from dtrl.data.sampler import SegmentSampler

    count = [0]
    inside = [False]

    def event(what: str, detail: str) -> None:
        if what != kind:
            return
        count[0] += 1
        if count[0] == n:
            with open(log, "a") as f:
                f.write(f"{kind} #{n}: {detail}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def during_checkpoints(name: str) -> None:
        real = getattr(os, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if inside[0]:
                event("write", " ".join([name, *(Path(a).name for a in args if isinstance(a, (str, Path)))]))
            return real(*args, **kwargs)

        setattr(os, name, call)

    for name in ("fsync", "replace", "unlink", "rmdir"):
        during_checkpoints(name)

    real_save = tr.save_checkpoint

    def save_checkpoint(*args: Any, **kwargs: Any) -> Path:
        inside[0] = True
        try:
            return real_save(*args, **kwargs)
        finally:
            inside[0] = False

    tr.save_checkpoint = save_checkpoint

    real_atomic = ck.atomic_write

    def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
        class HalfThenKill:
            """The file being written: its first write stops half-way for the kill point."""

            def __init__(self, f: Any) -> None:
                self.f, self.first = f, True

            def write(self, data: bytes) -> int:
                if not self.first:
                    return self.f.write(data)
                self.first = False
                half = len(data) // 2
                self.f.write(data[:half])
                self.f.flush()
                event("write", f"half of {path.name} written")
                return half + self.f.write(data[half:])

            def __getattr__(self, name: str) -> Any:
                return getattr(self.f, name)

        real_atomic(path, lambda f: write(HalfThenKill(f)))

    ck.atomic_write = atomic_write

    real_sample = SegmentSampler.sample

    def sample(self: SegmentSampler, batch_size: int) -> Any:
        event("step", "a training step starts")
        return real_sample(self, batch_size)

    SegmentSampler.sample = sample  # type: ignore[method-assign]  # the child process's probe, on purpose


if __name__ == "__main__":  # the child: python test_crash_resume.py KIND N LOG dtrl-arguments...
    _install_kill_point(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
    from dtrl.cli import main

    sys.argv = ["dtrl", *sys.argv[4:]]
    main()


# ----------------------------------------------------------------------------- the test
import pytest
import torch

from conftest import tiny_overrides
from dtrl.checkpoint import latest_checkpoint, load_policy_files, load_train_state
from dtrl.config import load_config
from dtrl.runfiles import (
    CHECKPOINT_DIR,
    METRICS_FILE,
)
from dtrl.train import train


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_policy_files(checkpoint)[1]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _resumable_step(run_dir: Path) -> int:
    latest = latest_checkpoint(run_dir)
    return 0 if latest is None else int(latest.name.split("_")[1])


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(pendulum_path: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(pendulum_path, tmp_path / "crashed", steps=STEPS) + [
        f"checkpoint_every={EVERY}",
        "keep_checkpoints=2",
    ]
    reference_dir = tmp_path / "reference"
    reference = train(
        load_config(
            None,
            tiny_overrides(pendulum_path, reference_dir, steps=STEPS)
            + [f"checkpoint_every={EVERY}", "keep_checkpoints=100"],
        )
    )
    by_step = {int(p.name.split("_")[1]): p for p in (reference_dir / CHECKPOINT_DIR).glob("step_*")}

    run_dir, log = tmp_path / "crashed", tmp_path / "kills.log"
    rng = random.Random(int(os.environ.get("CRASH_TEST_SEED", "8")))
    # The first kill is fixed: mid-prune (checkpoint 3 deletes checkpoint 1), one file already gone.
    # The others fall at random within the next two checkpoints or 2 * EVERY steps, so that each
    # run advances at most 2 * EVERY steps and every planned kill still finds work to kill.
    plan = [
        ("write", 2 * WRITES_PER_CHECKPOINT + 17),
        ("write", rng.randint(1, 2 * WRITES_PER_CHECKPOINT)),
        ("step", rng.randint(1, 2 * EVERY)),
        ("write", rng.randint(1, 2 * WRITES_PER_CHECKPOINT)),
    ]
    trials = []
    for i, (kind, n) in enumerate(plan):
        args = [sys.executable, __file__, kind, str(n), str(log), "train", *overrides] + (["--resume"] if i else [])
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        assert proc.returncode == -signal.SIGKILL, f"kill {kind} #{n} did not happen:\n{proc.stderr[-3000:]}"
        # whatever a resume could load is exactly the uninterrupted run's checkpoint of that step
        latest = latest_checkpoint(run_dir)
        if latest is not None:
            step = _resumable_step(run_dir)
            assert _equal(_weights(latest), _weights(by_step[step])), f"checkpoint of step {step} differs after a kill"
            assert load_train_state(latest)["step"] == step
        trials.append({"kill": log.read_text().splitlines()[-1], "resumes_from_step": _resumable_step(run_dir)})

    final = subprocess.run(
        [sys.executable, "-m", "dtrl", "train", *overrides, "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert final.returncode == 0, final.stderr[-3000:]
    print(json.dumps(trials, indent=1))

    result = latest_checkpoint(run_dir)
    assert result is not None and result.name == f"step_{STEPS:08d}"
    assert _equal(_weights(result), _weights(reference.checkpoint)), "final weights differ from the uninterrupted run"
    a, b = load_train_state(result), load_train_state(reference.checkpoint)
    assert _equal(
        {f"{k}/{i}": v for k, s in a["optimizer"]["state"].items() for i, v in s.items()},
        {f"{k}/{i}": v for k, s in b["optimizer"]["state"].items() for i, v in s.items()},
    ), "optimizer state differs from the uninterrupted run"
    assert _curve(run_dir) == _curve(reference_dir), "the logged loss curve differs from the uninterrupted run"
    # nothing torn is left: no temp files or directories, every checkpoint complete
    assert not [p for p in run_dir.rglob(".*") if "tmp" in p.name]
    assert all(
        _equal(_weights(p), _weights(by_step[int(p.name[5:])])) for p in (run_dir / CHECKPOINT_DIR).glob("step_*")
    )
