"""Segment sampling: returns-to-go, padding, masks, timesteps, length-proportional draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtrl.data import Episode, EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler, returns_to_go


def _dataset(lengths: list[int], seed: int = 0) -> EpisodeDataset:
    rng = np.random.default_rng(seed)
    eps = []
    for n in lengths:
        term = np.zeros(n, bool)
        term[-1] = True
        eps.append(
            Episode(
                rng.normal(size=(n, 3)).astype(np.float32),
                rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
                rng.normal(size=n).astype(np.float32),
                term,
                np.zeros(n, bool),
            )
        )
    return EpisodeDataset.from_episodes(eps)


def test_returns_to_go_match_reference_loop():
    ds = _dataset([7, 1, 12])
    got = returns_to_go(ds.rewards, ds.episode_starts)
    for ep, (a, b) in zip(ds, zip(ds.episode_starts[:-1], ds.episode_starts[1:])):
        ref = [sum(float(r) for r in ep.rewards[t:]) for t in range(len(ep))]
        np.testing.assert_allclose(got[a:b], ref, rtol=1e-6, atol=1e-6)


def test_segments_are_dataset_slices_with_left_padding():
    ds = _dataset([3, 9, 25])
    K, scale = 6, 10.0
    sampler = SegmentSampler(ds, K, reward_scale=scale, seed=1)
    norm = sampler.normalizer
    rtg = returns_to_go(ds.rewards, ds.episode_starts)
    b = sampler.sample(256)
    starts = ds.episode_starts
    for i in range(256):
        mask = b.mask[i].numpy()
        pad = int((~mask).sum())
        assert mask[pad:].all() and not mask[:pad].any(), "padding must be on the left only"
        ts = b.timesteps[i, pad:].numpy()
        assert np.all(np.diff(ts) == 1), "timesteps are consecutive within the episode"
        # locate the segment in the flat data from its first state
        first = b.states[i, pad].numpy()
        g = int(np.argmin(np.abs(norm.states(ds.observations) - first).sum(1)))
        e = int(np.searchsorted(starts, g, side="right") - 1)
        assert ts[0] == g - starts[e]
        idx = np.arange(g, g + K - pad)
        assert idx[-1] < starts[e + 1], "a segment never crosses into the next episode"
        assert pad == 0 or idx[-1] == starts[e + 1] - 1, "only segments cut by the episode end are padded"
        np.testing.assert_allclose(b.states[i, pad:].numpy(), norm.states(ds.observations[idx]), atol=1e-6)
        np.testing.assert_allclose(b.actions[i, pad:].numpy(), ds.actions[idx], atol=1e-6)
        np.testing.assert_allclose(b.returns_to_go[i, pad:].numpy(), rtg[idx] / scale, rtol=1e-5, atol=1e-6)
        assert (b.states[i, :pad] == 0).all() and (b.returns_to_go[i, :pad] == 0).all()


def test_episodes_drawn_in_proportion_to_length():
    ds = _dataset([10, 30, 60])
    # identify each segment's episode by its first (unique, random) state
    sampler = SegmentSampler(ds, 4, 1.0, seed=0)
    states = sampler.states.numpy()
    lookup = {states[i].tobytes(): int(np.searchsorted(ds.episode_starts, i, side="right") - 1) for i in range(len(ds))}
    counts = np.zeros(3)
    for _ in range(40):
        b = sampler.sample(500)
        pad = (~b.mask).sum(1)
        for i in range(500):
            counts[lookup[b.states[i, pad[i]].numpy().tobytes()]] += 1
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.3, 0.6], atol=0.02)


def test_normalizer_maps_actions_to_unit_box_and_back():
    import gymnasium as gym

    ds = _dataset([5])
    ds.action_space = gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)
    n = Normalizer.from_dataset(ds)
    a = np.array([[-2.0, 2.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(n.actions_to_model(a), [[-1, 1], [0, 0.5]])
    np.testing.assert_allclose(n.actions_to_env(n.actions_to_model(a)), a)
    np.testing.assert_allclose(n.state_mean, ds.observations.mean(0), atol=1e-6)
    assert Normalizer.from_dict(n.to_dict()).to_dict() == n.to_dict()


def test_sampler_is_reproducible_and_resumable():
    ds = _dataset([20, 20])
    a, b = SegmentSampler(ds, 5, 1.0, seed=3), SegmentSampler(ds, 5, 1.0, seed=3)
    a.sample(8)
    state = a.state_dict()
    x = a.sample(8)
    b.load_state_dict(state)
    y = b.sample(8)
    assert torch.equal(x.states, y.states) and torch.equal(x.mask, y.mask)


@pytest.mark.parametrize("K", [1, 4])
def test_discrete_actions_and_short_episodes(K: int):
    eps = [
        Episode(
            np.ones((n, 2), np.float32),
            np.arange(n) % 3,
            np.ones(n, np.float32),
            np.eye(n, dtype=bool)[-1],
            np.zeros(n, bool),
        )
        for n in (1, 2, 5)
    ]
    ds = EpisodeDataset.from_episodes(eps)
    b = SegmentSampler(ds, K, 1.0, seed=0).sample(32)
    assert b.actions.dtype == torch.long and b.actions.shape == (32, K)
    assert b.mask[:, -1].all(), "the last position is always a real step"
