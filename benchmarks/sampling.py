"""Segment sampling rate: in memory vs a memory-mapped store (warm and cold page cache) vs HDF5 chunks.

    python benchmarks/sampling.py [--workdir /tmp/dtrl-sampling] [--seconds 2] [--only gym|atari]

Two synthetic datasets: "gym" (1M transitions, 17 float32 observations, the
size of a D4RL locomotion dataset) and "atari" (20k transitions of 4x84x84
uint8 frames, the DQN-replay layout; 0.56 GB). For each, batches of 64
segments of K=20 are drawn with

* memory:        SegmentSampler's default for in-memory data (normalised
                 float32 copies of every array, built once);
* gather-ram:    the per-batch gather mode (from_disk=True) on arrays in RAM;
* store-warm:    the gather mode on the memory-mapped store, file pages cached;
* store-cold:    the same right after the store's pages were dropped from the
                 page cache (posix_fadvise DONTNEED), timed over the first few
                 batches only, which touch a small part of the file.

An observations-only comparison reads the same segments' rows from the
memory map (plain page faults, and with the sampler's ``will_read`` hints,
which the store-* sampler rows include) and from an HDF5 dataset chunked
along time (one slice per segment, as h5py's fancy indexing needs sorted
unique indices), warm and cold.
Results: benchmarks/results/sampling.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import drop_page_cache, save
from dtrl.data import Episode, EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler, will_read
from dtrl.data.store import StoreWriter, open_store

SEED = 0
BATCH, K = 64, 20
DATASETS: dict[str, dict[str, Any]] = {
    "gym": {"obs": (17,), "dtype": np.float32, "actions": 6, "transitions": 1_000_000, "episode": 1000, "chunk": 1024},
    "atari": {"obs": (4, 84, 84), "dtype": np.uint8, "actions": 0, "transitions": 20_000, "episode": 2000, "chunk": 32},
}


def episodes(spec: dict[str, Any], rng: np.random.Generator) -> Iterator[Episode]:
    for _ in range(spec["transitions"] // spec["episode"]):
        n = spec["episode"]
        if spec["dtype"] == np.uint8:
            obs = rng.integers(0, 256, (n, *spec["obs"]), dtype=np.uint8)
            actions = rng.integers(0, 18, n)
        else:
            obs = rng.normal(size=(n, *spec["obs"])).astype(np.float32)
            actions = rng.uniform(-1, 1, (n, spec["actions"])).astype(np.float32)
        term = np.zeros(n, bool)
        term[-1] = True
        yield Episode(obs, actions, rng.normal(size=n).astype(np.float32), term, np.zeros(n, bool))


def spaces(spec: dict[str, Any]) -> tuple[gym.Space, gym.Space]:
    obs = (
        gym.spaces.Box(0, 255, spec["obs"], np.uint8)
        if spec["dtype"] == np.uint8
        else gym.spaces.Box(-np.inf, np.inf, spec["obs"], np.float32)
    )
    act = gym.spaces.Discrete(18) if not spec["actions"] else gym.spaces.Box(-1, 1, (spec["actions"],), np.float32)
    return obs, act


def timed(fn: Callable[[], Any], seconds: float, max_calls: int | None = None) -> dict[str, float]:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and (max_calls is None or calls < max_calls):
        fn()
        calls += 1
    elapsed = time.perf_counter() - start
    return {"batches": calls, "seconds": round(elapsed, 3), "segments_per_second": round(calls * BATCH / elapsed, 1)}


def segment_starts(n: int, episode: int, rng: np.random.Generator) -> np.ndarray:
    """B segment starts that stay inside their episode (the obs-only comparison needs no padding)."""
    start = rng.integers(0, n, BATCH)
    return np.minimum(start, (start // episode + 1) * episode - K)


def bench(name: str, spec: dict[str, Any], workdir: Path, seconds: float) -> dict[str, Any]:
    """Every measurement opens its own memory map: pages mapped by a live map cannot be evicted."""
    rng = np.random.default_rng(SEED)
    store_path, h5_path = workdir / f"{name}-store", workdir / f"{name}.h5"
    obs_space, act_space = spaces(spec)
    t0 = time.perf_counter()
    with StoreWriter(store_path, obs_space, act_space, name=name) as writer:
        for ep in episodes(spec, rng):
            writer.add(ep)
    write_seconds = time.perf_counter() - t0
    store = open_store(store_path)
    normalizer = Normalizer.from_dataset(store)
    with h5py.File(h5_path, "w") as f:
        data = f.create_dataset(
            "observations", store.observations.shape, store.observations.dtype, chunks=(spec["chunk"], *spec["obs"])
        )
        for a in range(0, len(store), 10_000):
            data[a : a + 10_000] = store.observations[a : a + 10_000]
    in_memory = EpisodeDataset(
        **{
            k: np.array(getattr(store, k))
            for k in ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts")
        },
        observation_space=obs_space,
        action_space=act_space,
    )
    del store
    row_bytes = int(np.prod(spec["obs"])) * np.dtype(spec["dtype"]).itemsize
    store_bytes = sum(f.stat().st_size for f in store_path.iterdir())
    cold_batches = max(1, int(0.25 * store_bytes / (BATCH * K * row_bytes)))
    out: dict[str, Any] = {
        "transitions": len(in_memory),
        "observation": f"{spec['obs']} {np.dtype(spec['dtype']).name}",
        "store_bytes": store_bytes,
        "store_write_seconds": round(write_seconds, 2),
        "cold_batches": cold_batches,
        "sampler": {},
        "observations_only": {},
    }

    # full SegmentSampler batches
    t0 = time.perf_counter()
    memory = SegmentSampler(in_memory, K, 1.0, normalizer, seed=SEED)
    out["memory_sampler_setup_seconds"] = round(time.perf_counter() - t0, 2)
    tensors = (memory.states, memory.actions, memory.returns_to_go, memory.timesteps, memory.episode_end)
    out["memory_sampler_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
    out["sampler"]["memory"] = timed(partial(memory.sample, BATCH), seconds)
    del memory, tensors
    gather = SegmentSampler(in_memory, K, 1.0, normalizer, seed=SEED, from_disk=True)
    out["sampler"]["gather-ram"] = timed(partial(gather.sample, BATCH), seconds)
    del gather, in_memory

    def sampler() -> SegmentSampler:
        return SegmentSampler(open_store(store_path), K, 1.0, normalizer, seed=SEED)

    def observations() -> np.ndarray:
        return open_store(store_path).observations

    def read_h5(h5: h5py.Dataset) -> None:
        for s in segment_starts(len(h5), spec["episode"], rng):
            h5[s : s + K]

    def read_memmap(mm: np.ndarray, prefetch: bool) -> None:
        start = segment_starts(len(mm), spec["episode"], rng)
        if prefetch:
            will_read((mm,), start, K)
        np.asarray(mm[(start[:, None] + np.arange(K)).reshape(-1)])

    for cache in ("warm", "cold"):
        if cache == "warm":
            np.asarray(observations()).sum()  # read every page once
            with open(h5_path, "rb") as f:
                while f.read(1 << 24):
                    pass
            budget: dict[str, Any] = {"seconds": seconds}
        else:
            drop_page_cache(store_path, h5_path)
            budget = {"seconds": 60.0, "max_calls": cold_batches}
        s = sampler()
        out["sampler"][f"store-{cache}"] = timed(partial(s.sample, BATCH), **budget)
        del s
        for label, prefetch in (("memmap", False), ("memmap-prefetch", True)):
            if cache == "cold":
                drop_page_cache(store_path)
            mm = observations()
            out["observations_only"][f"{label}-{cache}"] = timed(partial(read_memmap, mm, prefetch), **budget)
            del mm
        with h5py.File(h5_path, "r") as f:
            h5 = f["observations"]
            out["observations_only"][f"hdf5-chunked-{cache}"] = timed(partial(read_h5, h5), **budget)
    for group in ("sampler", "observations_only"):
        for r in out[group].values():
            r["observation_MB_per_second"] = round(r["segments_per_second"] * K * row_bytes / 1e6, 1)
    shutil.rmtree(store_path)
    h5_path.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dtrl-sampling"))
    parser.add_argument("--seconds", type=float, default=2.0, help="time per warm measurement")
    parser.add_argument("--only", choices=sorted(DATASETS), help="run one dataset")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    names = [args.only] if args.only else list(DATASETS)
    results = {name: bench(name, DATASETS[name], args.workdir, args.seconds) for name in names}
    save("sampling", {"seed": SEED, "batch_size": BATCH, "context_length": K, "torch_threads": 1, "datasets": results})


if __name__ == "__main__":
    main()
