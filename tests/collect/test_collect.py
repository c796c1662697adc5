"""Episode recording (dtrl.data.collect) and the shipped quickstart dataset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from dtrl.collect.agents import train_behaviour_agent
from dtrl.collect.recorder import random_policy, record_episodes
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.readers import QUICKSTART_PATH
from dtrl.errors import DtrlError


def _random(env_id: str, seed: int):
    return random_policy(gym.make(env_id).action_space, seed)


def _assert_ends_only_at_last_step(episodes):
    for ep in episodes:
        ends = ep.terminations | ep.truncations
        assert ends[-1], "every recorded episode ends by termination or truncation"
        assert not ends[:-1].any(), "no step but the last ends the episode"


def test_pendulum_episodes_are_cut_by_the_time_limit():
    eps = record_episodes(_random("Pendulum-v1", 0), "Pendulum-v1", num_episodes=3, seed=0)
    assert [len(e) for e in eps] == [200, 200, 200]
    _assert_ends_only_at_last_step(eps)
    for e in eps:
        assert not e.terminations.any()
        assert e.truncations[-1]
        assert e.observations.shape == (200, 3) and e.observations.dtype == np.float32
        assert e.actions.shape == (200, 1) and e.rewards.shape == (200,)


def test_hopper_termination_and_truncation_are_recorded_apart():
    limit = 20
    eps = record_episodes(_random("Hopper-v5", 1), "Hopper-v5", num_transitions=400, seed=1, max_episode_steps=limit)
    _assert_ends_only_at_last_step(eps)
    lengths = np.array([len(e) for e in eps])
    terminated = np.array([e.terminations[-1] for e in eps])
    truncated = np.array([e.truncations[-1] for e in eps])
    assert terminated.any() and truncated.any(), "the seeded run has both kinds of ending"
    assert (lengths[truncated & ~terminated] == limit).all(), "a time-limit cut happens at the limit"
    assert (lengths <= limit).all()
    assert (lengths[lengths < limit] > 0).all() and terminated[lengths < limit].all()
    # The budget is met with whole episodes: the last one is finished, not cut.
    assert lengths.sum() >= 400 and lengths[:-1].sum() < 400


def test_recording_is_deterministic_given_the_seed():
    def run(seed):
        eps = record_episodes(_random("Hopper-v5", seed), "Hopper-v5", num_transitions=300, seed=seed)
        return EpisodeDataset.from_episodes(eps)

    a, b, c = run(3), run(3), run(4)
    for key in ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert len(a) != len(c) or not np.array_equal(a.observations, c.observations)


def test_record_episodes_needs_exactly_one_budget():
    policy = _random("Pendulum-v1", 0)
    with pytest.raises(DtrlError):
        record_episodes(policy, "Pendulum-v1", seed=0)
    with pytest.raises(DtrlError):
        record_episodes(policy, "Pendulum-v1", num_transitions=10, num_episodes=1, seed=0)
    with pytest.raises(DtrlError, match="cannot make environment"):
        record_episodes(policy, "NoSuchEnv-v0", num_episodes=1, seed=0)


def test_snapshot_policies_roll_out_reproducibly():
    pytest.importorskip("stable_baselines3")
    import torch

    torch.set_num_threads(1)
    snaps = train_behaviour_agent(
        "Pendulum-v1",
        256,
        [128, 256, 10_000],
        algo="ppo",
        seed=0,
        n_envs=2,
        hyperparams={"n_steps": 64, "batch_size": 64, "n_epochs": 1},
    )
    assert [s.timesteps for s in snaps] == [128, 256]
    assert snaps[0].obs_mean is not None and snaps[0].obs_mean.shape == (3,)
    snap = snaps[-1]
    runs = [
        record_episodes(snap.policy(deterministic=False, seed=7), "Pendulum-v1", num_episodes=1, seed=0)[0]
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].actions, runs[1].actions)
    assert np.abs(runs[0].actions).max() <= 2.0, "actions are clipped to the action space"
    det = record_episodes(snap.policy(deterministic=True), "Pendulum-v1", num_episodes=1, seed=0)[0]
    assert not np.array_equal(det.actions, runs[0].actions)


def test_shipped_quickstart_dataset():
    assert QUICKSTART_PATH.exists(), "run scripts/make_quickstart_dataset.py to build it"
    assert QUICKSTART_PATH.stat().st_size <= 6 * 2**20  # a few MB in the package
    ds = EpisodeDataset.load(QUICKSTART_PATH)
    assert ds.env_id == "Hopper-v5"
    gym.make(ds.env_id)  # the env it names exists
    assert set(ds.ref_scores) >= {"random", "expert"}
    assert ds.ref_scores["expert"] > 10 * ds.ref_scores["random"] > 0
    assert 60_000 <= len(ds) <= 100_000
    returns = ds.episode_returns
    assert returns.max() > 3 * ds.ref_scores["random"]
    assert returns.max() > 0.8 * ds.ref_scores["expert"]
    assert returns.min() < 2 * ds.ref_scores["random"]
    # Episodes end only at their last step, and only by termination or the 1000-step limit.
    ends = np.flatnonzero(ds.terminations | ds.truncations)
    np.testing.assert_array_equal(ends, ds.episode_starts[1:] - 1)
    assert ds.episode_lengths.max() <= 1000
    assert (ds.episode_lengths[ds.truncations[ds.episode_starts[1:] - 1]] == 1000).all()
    sources = ds.metadata["sources"]
    names = [s["name"] for s in sources]
    assert names[0] == "random" and names[-3:] == ["best", "best-noise-0.2", "best-noise-0.3"]
    assert all(n.startswith("learning-") for n in names[1:-3]) and len(names) >= 8
    assert len({s["snapshot_timesteps"] for s in sources[1:-3]}) == len(names) - 4  # no learning snapshot twice
    # returns cover the range from random to the best: every fifth of it holds episodes
    fifths = np.histogram(returns, bins=5, range=(0, returns.max()))[0]
    assert (fifths >= 10).all(), fifths
    assert sum(s["episodes"] for s in sources) == ds.num_episodes
    assert ds.metadata["seed"] == 0 and ds.metadata["algorithm"]["name"] == "PPO"
