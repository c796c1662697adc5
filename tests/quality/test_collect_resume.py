"""Dataset collection survives SIGKILL: a killed `collect_d4rl` resumes and finishes with complete datasets.

A real subprocess runs the tiny InvertedPendulum collection of test_d4rl_protocol.py.
It is killed twice: while the behaviour agent trains (after its second snapshot)
and while the datasets are recorded (after the first one is in the cache). The
second run must resume the agent from its newest snapshot rather than start over;
the third must finish every kind and leave no temporary file behind. The random
kind, which does not depend on the agent, must equal an uninterrupted collection's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from dtrl.collect.d4rl import D4RL_KINDS, collect_d4rl
from dtrl.data.episodes import EpisodeDataset

ENV = "InvertedPendulum-v5"
SETTINGS = dict(transitions=1000, agent_steps=8192, max_episode_steps=50, snapshots=4, eval_episodes=5, ref_episodes=10)
SCRIPT = f"""
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from dtrl.collect.d4rl import collect_d4rl
collect_d4rl({ENV!r}, cache_dir=Path(sys.argv[1]), seed=0, log=lambda s: print(s, flush=True), **{SETTINGS!r})
"""


def start(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(cache)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240.0) -> str:
    """SIGKILL ``proc`` as soon as ``ready()``; return what it printed."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"collection ended before the kill point:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.stdout.read()


def test_collection_resumes_after_sigkill(tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def agent_snapshots() -> list[Path]:
        return list(cache.glob("**/snap_*.zip"))

    def datasets() -> list[Path]:
        return list(cache.glob("invertedpendulum-*.npz"))

    kill_when(start(cache), lambda: len(agent_snapshots()) >= 2)
    steps = sorted(int(p.stem.split("_")[1]) for p in agent_snapshots())
    assert len(steps) < SETTINGS["snapshots"], "the agent finished before the kill: nothing to resume"

    cached = len(datasets())
    out = kill_when(start(cache), lambda: len(datasets()) > cached)
    assert f"resuming the behaviour agent from its snapshot at {steps[-1]} steps" in out, out[-3000:]

    final = start(cache)
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out[-3000:]

    # the third run found the agent finished and the first datasets cached
    assert len(agent_snapshots()) == SETTINGS["snapshots"]
    assert "already in the cache" in out, out[-3000:]
    leftovers = [p for p in cache.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    for kind in D4RL_KINDS:
        ds = EpisodeDataset.load(cache / f"invertedpendulum-{kind}.npz")
        assert len(ds) >= SETTINGS["transitions"], kind
        assert np.isfinite(ds.rewards).all()

    fresh = collect_d4rl(ENV, ["random"], cache_dir=tmp_path / "fresh", seed=0, **SETTINGS)["random"]
    a, b = EpisodeDataset.load(fresh), EpisodeDataset.load(cache / "invertedpendulum-random.npz")
    for key in ("observations", "actions", "rewards", "terminations", "truncations"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
