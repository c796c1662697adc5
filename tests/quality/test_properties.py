"""Property-based tests (hypothesis): the segment sampler and the readers, for arbitrary shapes.

Sampler: for any episode lengths and context length K, every segment is a
slice of one episode, left-padded only where the episode ends, with the
right returns-to-go, timesteps and mask, and the per-batch (on-disk) mode
gives the same batches as the in-memory one. Readers: random episodes survive
the native format, D4RL HDF5 and the on-disk store bit for bit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtrl.data import EpisodeDataset, read_d4rl
from dtrl.data import open_dataset as load_dataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler
from dtrl.data.store import open_store, write_store

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ARRAYS = ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts")

lengths_st = st.lists(st.integers(1, 25), min_size=1, max_size=6)


def make_dataset(lengths: list[int], seed: int, obs_dim: int = 2, discrete: bool = False) -> EpisodeDataset:
    """Random episodes; observation column 0 holds the transition's global index, to locate rows."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    obs[:, 0] = np.arange(n)
    ends = np.cumsum(lengths) - 1
    terminations = np.zeros(n, bool)
    truncations = np.zeros(n, bool)
    cut = rng.random(len(lengths)) < 0.5  # each episode ends by termination or by time limit
    terminations[ends[~cut]] = True
    truncations[ends[cut]] = True
    actions = rng.integers(0, 4, size=n) if discrete else rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return EpisodeDataset.from_arrays(
        observations=obs,
        actions=actions,
        rewards=rng.uniform(-10, 10, n).astype(np.float32),
        terminations=terminations,
        truncations=truncations,
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        action_space=gym.spaces.Discrete(4) if discrete else gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
    )


# --------------------------------------------------------------------------- sampler
@PROPERTY_SETTINGS
@given(lengths=lengths_st, K=st.integers(1, 12), seed=st.integers(0, 2**16), discrete=st.booleans())
def test_segments_are_padded_episode_slices(lengths: list[int], K: int, seed: int, discrete: bool) -> None:
    ds = make_dataset(lengths, seed, discrete=discrete)
    identity = Normalizer(np.zeros(2, np.float32), np.ones(2, np.float32))  # states are the observations
    scale = 7.0
    sampler = SegmentSampler(ds, K, scale, identity, seed=seed)
    b = sampler.sample(32)
    starts = ds.episode_starts
    rewards = ds.rewards.astype(np.float64)
    for i in range(32):
        mask = b.mask[i].numpy()
        pad = int((~mask).sum())
        assert mask[pad:].all() and pad < K, "padding is on the left only and the last position is real"
        rows = b.states[i, pad:, 0].numpy().astype(np.int64)
        episode = int(np.searchsorted(starts, rows[0], side="right") - 1)
        begin, end = starts[episode], starts[episode + 1]
        assert np.array_equal(rows, np.arange(rows[0], rows[0] + K - pad)), "consecutive transitions"
        assert rows[-1] < end, "a segment never crosses into the next episode"
        assert pad == 0 or rows[-1] == end - 1, "only a segment cut by its episode's end is padded"
        np.testing.assert_array_equal(b.states[i, pad:].numpy(), ds.observations[rows])
        np.testing.assert_array_equal(b.actions[i, pad:].numpy(), ds.actions[rows])
        np.testing.assert_array_equal(b.timesteps[i, pad:].numpy(), rows - begin)
        expected = [rewards[r:end].sum() / scale for r in rows]
        np.testing.assert_allclose(b.returns_to_go[i, pad:].numpy(), expected, rtol=1e-5, atol=1e-4)
        for padded in (b.states, b.actions, b.returns_to_go, b.timesteps):
            assert not padded[i, :pad].any(), "padding is zero"


@PROPERTY_SETTINGS
@given(lengths=lengths_st, K=st.integers(1, 12), seed=st.integers(0, 2**16), discrete=st.booleans())
def test_per_batch_mode_equals_in_memory_mode(lengths: list[int], K: int, seed: int, discrete: bool) -> None:
    ds = make_dataset(lengths, seed, discrete=discrete)
    a = SegmentSampler(ds, K, 3.0, seed=seed).sample(16)
    b = SegmentSampler(ds, K, 3.0, seed=seed, from_disk=True).sample(16)
    for name in ("returns_to_go", "states", "actions", "timesteps", "mask"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.allclose(x.double(), y.double(), rtol=1e-6, atol=1e-6), name


# --------------------------------------------------------------------------- readers
def assert_same(a: EpisodeDataset, b: EpisodeDataset) -> None:
    for key in ARRAYS:
        x, y = np.asarray(getattr(a, key)), np.asarray(getattr(b, key))
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), key
    assert a.observation_space == b.observation_space and a.action_space == b.action_space


@PROPERTY_SETTINGS
@given(
    lengths=lengths_st,
    seed=st.integers(0, 2**16),
    obs_dim=st.integers(1, 5),
    discrete=st.booleans(),
    compress=st.booleans(),
)
def test_native_and_store_round_trips(
    lengths: list[int], seed: int, obs_dim: int, discrete: bool, compress: bool
) -> None:
    ds = make_dataset(lengths, seed, obs_dim, discrete)
    ds.env_id, ds.ref_scores = "Pendulum-v1", {"random": -1.0, "expert": 2.5}
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_dataset(ds.save(Path(tmp) / "ds", compress=compress))
        assert_same(ds, loaded)
        assert (loaded.env_id, loaded.ref_scores) == (ds.env_id, ds.ref_scores)
        assert_same(ds, open_store(write_store(ds, Path(tmp) / "store")))


@PROPERTY_SETTINGS
@given(
    lengths=lengths_st,
    seed=st.integers(0, 2**16),
    with_timeouts=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_d4rl_round_trip(lengths: list[int], seed: int, with_timeouts: bool, dtype: type) -> None:
    """Episodes written in D4RL's flat layout come back as the same episodes; without a
    ``timeouts`` key (old files) time-limit ends read as terminations, and a last episode
    with no flag at all as truncated."""
    ds = make_dataset(lengths, seed)
    episodes = list(ds)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.hdf5"
        with h5py.File(path, "w") as f:
            f["observations"] = ds.observations.astype(dtype)
            f["actions"] = ds.actions.astype(dtype)
            f["rewards"] = ds.rewards
            if with_timeouts:
                f["terminals"], f["timeouts"] = ds.terminations, ds.truncations
            else:
                f["terminals"] = ds.terminations | ds.truncations
        read = read_d4rl(path)
    assert np.array_equal(read.episode_starts, ds.episode_starts)
    assert read.observations.dtype == dtype and np.array_equal(read.observations, ds.observations.astype(dtype))
    assert np.array_equal(read.rewards, ds.rewards)
    for mine, theirs in zip(read, episodes):
        np.testing.assert_array_equal(mine.actions, theirs.actions.astype(dtype))
        if with_timeouts:
            assert np.array_equal(mine.terminations, theirs.terminations)
            assert np.array_equal(mine.truncations, theirs.truncations)
        else:
            assert np.array_equal(mine.terminations, theirs.terminations | theirs.truncations)
            assert not mine.truncations.any()
