"""The on-disk episode store: round trip, disk-mode sampling, atomic writes, memory use."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from dtrl.checkpoint import load_policy_files
from dtrl.config import load_config
from dtrl.data import Episode, EpisodeDataset
from dtrl.data import open_dataset as load_dataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler
from dtrl.data.store import StoredEpisodeDataset, StoreWriter, is_store, open_store, write_store
from dtrl.errors import DtrlError
from dtrl.train import train


def _episodes(lengths: list[int], obs_dim: int = 3, discrete: int = 0, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        actions = rng.integers(0, discrete, n) if discrete else rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        term = np.zeros(n, bool)
        term[-1] = True
        # discrete: Atari-like uint8 frames
        if discrete:
            obs = rng.integers(0, 256, (n, obs_dim), dtype=np.uint8)
        else:
            obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
        out.append(Episode(obs, actions, rng.normal(size=n).astype(np.float32), term, np.zeros(n, bool)))
    return out


def test_a_store_round_trips_through_load_dataset(pendulum_dataset: EpisodeDataset, tmp_path: Path):
    path = write_store(pendulum_dataset, tmp_path / "pendulum")
    store = load_dataset(path)
    assert isinstance(store, StoredEpisodeDataset) and store.on_disk
    assert isinstance(store.observations, np.memmap)
    for key in ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts"):
        assert np.array_equal(getattr(store, key), getattr(pendulum_dataset, key)), key
    assert (store.env_id, store.name) == (pendulum_dataset.env_id, pendulum_dataset.name)
    np.testing.assert_allclose(store.episode_returns, pendulum_dataset.episode_returns, rtol=1e-12)
    for a, b in zip(store.state_statistics(), pendulum_dataset.state_statistics()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("discrete", [0, 4])
def test_disk_batches_equal_in_memory_batches(tmp_path: Path, discrete: int):
    dataset = EpisodeDataset.from_episodes(_episodes([3, 9, 25, 40], discrete=discrete))
    store = open_store(write_store(dataset, tmp_path / "store"))
    normalizer = Normalizer.from_dataset(dataset)
    memory = SegmentSampler(dataset, 6, 10.0, normalizer, seed=5)
    disk = SegmentSampler(store, 6, 10.0, normalizer, seed=5)
    assert disk.from_disk and not memory.from_disk
    for _ in range(4):
        a, b = memory.sample(128), disk.sample(128)
        for field in ("returns_to_go", "states", "actions", "timesteps", "mask"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_disk_sampling_copies_nothing_the_size_of_the_dataset(tmp_path: Path):
    """Heap allocations (numpy reports them to tracemalloc; memory-mapped pages are not heap)."""
    dataset = EpisodeDataset.from_episodes(_episodes([5000] * 10, obs_dim=128))  # 25.6 MB of observations
    path = write_store(dataset, tmp_path / "store")
    size = dataset.observations.nbytes
    del dataset
    peaks = {}
    for from_disk in (True, False):
        tracemalloc.start()
        sampler = SegmentSampler(open_store(path), 20, 1.0, from_disk=from_disk)
        for _ in range(3):
            sampler.sample(16)
        peaks[from_disk] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[True] < 0.1 * size < size < peaks[False], peaks


def test_an_interrupted_write_leaves_no_store(tmp_path: Path):
    good, bad = _episodes([5, 5])
    bad.observations[2, 0] = np.nan
    space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    with (
        pytest.raises(DtrlError, match="NaN"),
        StoreWriter(tmp_path / "store", space, gym.spaces.Box(-1, 1, (2,), np.float32)) as writer,
    ):
        writer.add(good)
        writer.add(bad)
    assert list(tmp_path.iterdir()) == []
    write_store(EpisodeDataset.from_episodes([good]), tmp_path / "store")
    with pytest.raises(DtrlError, match="already exists"):
        write_store(EpisodeDataset.from_episodes([good]), tmp_path / "store")


def test_corrupt_stores_and_minari_directories_are_told_apart(pendulum_dataset: EpisodeDataset, tmp_path: Path):
    path = write_store(pendulum_dataset, tmp_path / "store")
    obs = path / "observations.npy"
    obs.write_bytes(obs.read_bytes()[:1000])
    with pytest.raises(DtrlError, match="incomplete or corrupt"):
        load_dataset(path)
    # a metadata.json without the store marker belongs to a Minari dataset
    minari_dir = tmp_path / "minari-like"
    minari_dir.mkdir()
    (minari_dir / "metadata.json").write_text(json.dumps({"dataset_id": "x/y-v0"}))
    assert is_store(path) and not is_store(minari_dir)
    with pytest.raises(DtrlError, match="not a dtrl store"):
        open_store(minari_dir)


def test_training_from_a_store_matches_training_from_the_npz(pendulum_path: Path, tmp_path: Path):
    store = write_store(EpisodeDataset.load(pendulum_path), tmp_path / "store")
    results = [
        train(load_config(None, tiny_overrides(data, tmp_path / name, steps=20) + ["eval_episodes=1"]))
        for name, data in (("npz", pendulum_path), ("store", store))
    ]
    a, b = (load_policy_files(r.checkpoint)[1] for r in results)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_the_cli_converts_to_a_store(pendulum_path: Path, tmp_path: Path):
    from test_cli import assert_user_error, dtrl

    done = dtrl("data", "convert", pendulum_path, tmp_path / "store", "--store")
    assert done.returncode == 0, done.stderr
    assert is_store(tmp_path / "store") and len(open_store(tmp_path / "store")) == len(
        EpisodeDataset.load(pendulum_path)
    )
    assert_user_error(dtrl("data", "convert", pendulum_path, tmp_path / "store", "--store"), "already exists")
