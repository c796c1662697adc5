"""Key-to-Door: the env's rules, seeding, registration, random datasets and the success rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import dtrl  # noqa: F401  (registers dtrl/KeyToDoor-v0)
from dtrl.collect.d4rl import collect_random
from dtrl.data.episodes import EpisodeDataset
from dtrl.envs import success_return
from dtrl.envs.key_to_door import ENV_ID, MOVES, KeyToDoorEnv
from dtrl.errors import DtrlError
from dtrl.evaluate import evaluate_random

SIZE = KeyToDoorEnv().size


def toward(obs: np.ndarray) -> int:
    """The move that brings the agent closer to the visible object (0 when none is visible)."""
    if not obs[4]:
        return 0
    delta = obs[2:4] - obs[:2]
    return int(np.argmax(MOVES @ delta))


def avoiding_key(obs: np.ndarray) -> int:
    """A move that does not land on the visible key (a wall bump keeps the agent in place)."""
    for action, move in enumerate(MOVES):
        if not obs[4] or not (np.clip(obs[:2] + move, 0, SIZE - 1) == obs[2:4]).all():
            return action
    raise AssertionError("unreachable: at most one neighbour is the key")


def play(env: gym.Env, seed: int, phase1, phase3) -> tuple[list[np.ndarray], list[float], list[dict]]:
    """Run one episode: ``phase1`` picks actions in the key room, ``phase3`` in the door room, 2 (down) between."""
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    done = False
    while not done:
        phase = info["phase"]
        action = phase1(obs) if phase == 1 else phase3(obs) if phase == 3 else 2
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        done = terminated
    return observations, rewards, infos


def test_registered_with_documented_spaces():
    env = gym.make(ENV_ID)
    assert env.observation_space.shape == (8,) and env.observation_space.dtype == np.float32
    assert env.action_space == gym.spaces.Discrete(4)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info == {"phase": 1, "has_key": False}
    assert obs[4] == 1.0 and obs[5:].tolist() == [1.0, 0.0, 0.0]  # the key is visible, phase 1


@pytest.mark.parametrize("seed", range(5))
def test_reward_with_key_and_none_without(seed):
    env = KeyToDoorEnv()
    _, rewards, infos = play(env, seed, toward, toward)
    assert infos[-1]["has_key"] and rewards[-1] == 1.0 and sum(rewards) == 1.0
    assert len(rewards) < env.max_steps  # reaching the door ends the episode early

    _, rewards, infos = play(env, seed, avoiding_key, toward)
    assert not infos[-1]["has_key"] and sum(rewards) == 0.0
    assert len(rewards) < env.max_steps  # the door still ends it, without reward


def test_phase_transitions_and_fixed_horizon():
    env = KeyToDoorEnv(size=SIZE, key_steps=5, wait_steps=3, door_steps=4)
    observations, rewards, infos = play(env, 3, toward, avoiding_key)  # never enters the door
    assert len(rewards) == 12 and sum(rewards) == 0.0
    phases = [info["phase"] for info in infos[:-1]]
    assert phases == [1] * 5 + [2] * 3 + [3] * 4
    flags = np.array([o[5:] for o in observations[:-1]])
    assert (flags.argmax(1) + 1).tolist() == phases
    assert infos[5]["has_key"]  # picked up in phase 1 ...
    assert not any(o[4] for o in observations[5:8])  # ... and nothing is visible in the empty room
    assert all(o[4] for o in observations[8:12])  # the door is


def test_holding_the_key_is_not_observed_after_phase_one():
    env = KeyToDoorEnv()
    with_key, r_with, _ = play(env, 1, toward, toward)
    without, r_without, _ = play(env, 1, avoiding_key, toward)
    # the layout of phases 2 and 3 does not depend on the actions, and the key leaves no trace in them
    k = env.key_steps
    np.testing.assert_array_equal(np.stack(with_key[k:]), np.stack(without[k:]))
    assert r_with[-1] == 1.0 and r_without[-1] == 0.0


def test_seeding_is_deterministic():
    def trace(seed: int) -> np.ndarray:
        env = gym.make(ENV_ID)
        obs, _ = env.reset(seed=seed)
        out, done, t = [obs], False, 0
        while not done:
            obs, _, done, _, _ = env.step(t % 4)
            out.append(obs)
            t += 1
        return np.stack(out)

    np.testing.assert_array_equal(trace(7), trace(7))
    assert not np.array_equal(trace(7)[0], trace(8)[0]) or not np.array_equal(trace(7), trace(8))


def test_invalid_action_and_config():
    env = KeyToDoorEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="invalid action"):
        env.step(4)
    with pytest.raises(ValueError, match="size"):
        KeyToDoorEnv(size=1)


def test_random_evaluation_reports_the_success_rate():
    result = evaluate_random(ENV_ID, episodes=16, seed=0)
    assert result.success_rate == pytest.approx(result.mean)
    assert result.lengths.max() <= KeyToDoorEnv().max_steps
    assert result.to_dict()["success_rate"] == result.success_rate
    assert success_return(ENV_ID) == 1.0 and success_return("Pendulum-v1") is None  # others report no success rate


def test_collect_random_tiny(tmp_path: Path):
    path = collect_random(ENV_ID, 6, seed=1, cache_dir=tmp_path)
    assert path.name == "keytodoor-random-6ep.npz"
    ds = EpisodeDataset.load(path)
    assert ds.num_episodes == 6 and ds.env_id == ENV_ID
    assert ds.action_space == gym.spaces.Discrete(4) and ds.observations.shape[1] == 8
    assert ds.terminations.sum() == 6 and not ds.truncations.any()
    assert set(np.unique(ds.episode_returns)) <= {0.0, 1.0}
    assert ds.metadata["settings"]["episodes"] == 6
    again = collect_random(ENV_ID, 6, seed=1, cache_dir=tmp_path / "other")
    np.testing.assert_array_equal(EpisodeDataset.load(again).actions, ds.actions)  # same seed, same data
    assert collect_random(ENV_ID, 6, seed=1, cache_dir=tmp_path) == path  # kept
    path.with_name("keytodoor-random-6ep.npz").unlink()
    collect_random(ENV_ID, 6, seed=2, cache_dir=tmp_path)
    with pytest.raises(DtrlError, match="other settings"):
        collect_random(ENV_ID, 6, seed=1, cache_dir=tmp_path)


def test_cli_collects_random_episodes(tmp_path: Path):
    from typer.testing import CliRunner

    from dtrl.cli import app

    def collect(kinds: str) -> Any:
        args = ["data", "collect", ENV_ID, "--kinds", kinds, "--episodes", "3", "--cache-dir", str(tmp_path)]
        return CliRunner().invoke(app, args)

    result = collect("random")
    assert result.exit_code == 0, result.output
    assert EpisodeDataset.load(tmp_path / "keytodoor-random-3ep.npz").num_episodes == 3
    result = collect("medium")
    assert isinstance(result.exception, DtrlError) and "--episodes records random episodes only" in str(
        result.exception
    )
