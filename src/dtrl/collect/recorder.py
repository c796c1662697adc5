"""Record episodes: roll a policy out in one env or many at once and keep whole episodes.

One rollout loop serves both: :func:`record_vector` steps ``n_envs`` envs with one batched policy
call per step, and :func:`record_episodes` is that loop with one env for a policy of one observation.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.data.episodes import Episode, EpisodeDataset
from dtrl.envs import make_env
from dtrl.errors import DtrlError
from dtrl.tracking import package_versions

PolicyFn = Callable[[np.ndarray], Any]
#: Maps a batch of observations (B, *obs_shape) to a batch of actions.
BatchPolicyFn = Callable[[np.ndarray], np.ndarray]
#: The packages whose versions a collected dataset records (with Python's).
VERSIONED_PACKAGES = ("dtrl", "gymnasium", "mujoco", "stable-baselines3", "torch", "numpy")
#: ``progress(stage, done, total)``: what a long collection is doing, for a progress bar.
Progress = Callable[[str, int, int], None]


def record_episodes(
    policy_fn: PolicyFn,
    env_id: str,
    num_transitions: int | None = None,
    num_episodes: int | None = None,
    seed: int = 0,
    *,
    max_episode_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    obs_dtype: Any = np.float32,
    action_dtype: Any = None,
) -> list[Episode]:
    """Roll ``policy_fn`` out in ``env_id`` and record whole episodes.

    Exactly one of ``num_transitions`` and ``num_episodes`` is given. With
    ``num_transitions`` episodes are recorded until at least that many
    transitions have been collected; the last episode is always finished (never
    cut at the budget), so every episode ends by termination or by the env's
    time limit.

    ``policy_fn`` maps one observation to one action; whether it is
    deterministic or samples is up to it (see :func:`random_policy` and
    :meth:`Snapshot.policy`). The env is reset with ``seed`` once, and later
    resets continue its random stream, so the same seed and the same policy
    give identical arrays. ``terminations[t]`` and ``truncations[t]`` are the
    env's own ``terminated`` / ``truncated`` flags (a time-limit cut is a
    truncation, never a termination). ``max_episode_steps`` overrides the env's
    registered time limit.

    Observations are stored as ``obs_dtype`` (float32 by default, halving the
    size of MuJoCo's float64 observations); actions keep the action space's
    dtype unless ``action_dtype`` is given.
    """
    return _rollout(
        lambda batch: [policy_fn(obs) for obs in batch],
        env_id,
        "record_episodes",
        num_transitions,
        num_episodes,
        [seed],
        max_episode_steps,
        env_kwargs,
        obs_dtype,
        action_dtype,
    ).episodes


def random_policy(action_space: gym.Space, seed: int = 0) -> PolicyFn:
    """A uniformly random policy over ``action_space`` with its own seeded stream."""
    space = copy.deepcopy(action_space)
    space.seed(seed)
    return lambda obs: space.sample()


def episode_returns(episodes: Sequence[Episode]) -> np.ndarray:
    return np.array([e.total_return for e in episodes], dtype=np.float64)


def evaluate_policy(policy_fn: PolicyFn, env_id: str, num_episodes: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
    """Undiscounted returns of ``num_episodes`` episodes of ``policy_fn``."""
    return episode_returns(record_episodes(policy_fn, env_id, num_episodes=num_episodes, seed=seed, **kwargs))


def return_stats(returns: np.ndarray) -> dict[str, float]:
    return {
        "min": round(float(np.min(returns)), 2),
        "mean": round(float(np.mean(returns)), 2),
        "std": round(float(np.std(returns)), 2),
        "max": round(float(np.max(returns)), 2),
    }


@dataclass
class Recording:
    """Whole episodes plus the observation that followed each one's last action (Minari keeps it)."""

    episodes: list[Episode]
    final_observations: list[np.ndarray]

    def dataset(self, **kwargs: Any) -> EpisodeDataset:
        return EpisodeDataset.from_episodes(
            self.episodes, final_observations=np.asarray(self.final_observations, dtype=np.float32), **kwargs
        )


def uniform_batch_policy(action_space: gym.Space, seed: int = 0) -> BatchPolicyFn:
    """Uniformly random actions for a batch of observations, from a generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    if isinstance(action_space, gym.spaces.Discrete):
        return lambda obs: rng.integers(action_space.start, action_space.start + action_space.n, len(obs))
    if not isinstance(action_space, gym.spaces.Box) or not np.isfinite(action_space.low).all():
        raise DtrlError(f"uniform random actions need a bounded Box or a Discrete action space, not {action_space}")
    low, high = action_space.low, action_space.high
    return lambda obs: rng.uniform(low, high, (len(obs), *low.shape)).astype(action_space.dtype)


def record_vector(
    policy: BatchPolicyFn,
    env_id: str,
    *,
    num_transitions: int | None = None,
    num_episodes: int | None = None,
    seed: int = 0,
    n_envs: int = 16,
    max_episode_steps: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Recording:
    """Roll ``policy`` out in ``n_envs`` envs at once (one policy call per step) and record whole episodes.

    The budget works as in :func:`record_episodes`: no new episode starts once
    the finished and running episodes hold ``num_transitions`` steps (or
    ``num_episodes`` episodes have started), and running ones are finished.
    Episodes are kept in the order they end; env ``i`` is reset with the
    ``i``-th seed drawn from ``seed`` and continues its own stream, so a seed
    gives identical data. ``on_progress`` receives the steps taken so far.
    """
    n = min(n_envs, int(num_episodes)) if num_episodes is not None and num_episodes > 0 else n_envs
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]
    return _rollout(
        policy,
        env_id,
        "record_vector",
        num_transitions,
        num_episodes,
        seeds,
        max_episode_steps,
        on_progress=on_progress,
    )


def _rollout(
    policy: BatchPolicyFn,
    env_id: str,
    who: str,
    num_transitions: int | None,
    num_episodes: int | None,
    seeds: Sequence[int],
    max_episode_steps: int | None,
    env_kwargs: dict[str, Any] | None = None,
    obs_dtype: Any = np.float32,
    action_dtype: Any = None,
    on_progress: Callable[[int], None] | None = None,
) -> Recording:
    """The one rollout loop: env ``i`` reset with ``seeds[i]``, one policy call per step for all envs."""
    if (num_transitions is None) == (num_episodes is None):
        raise DtrlError(f"{who} needs exactly one of num_transitions and num_episodes")
    given = num_transitions if num_transitions is not None else num_episodes
    assert given is not None
    budget = int(given)
    if budget < 1:
        raise DtrlError(f"{who} needs a positive budget, got {budget}")
    n = len(seeds)
    envs = [make_env(env_id, max_episode_steps, **(env_kwargs or {})) for _ in range(n)]
    act_dtype = action_dtype or envs[0].action_space.dtype or np.float32
    rec = Recording([], [])
    try:
        obs = [np.asarray(env.reset(seed=int(s))[0]) for env, s in zip(envs, seeds)]
        steps: list[list[tuple[np.ndarray, Any, float, bool, bool]]] = [[] for _ in range(n)]
        active = list(range(n))
        started, finished_steps = n, 0
        while active:
            actions = policy(np.stack([obs[i] for i in active]))
            still = []
            for i, action in zip(active, actions):
                next_obs, reward, terminated, truncated, _ = envs[i].step(action)
                steps[i].append((obs[i], action, float(reward), bool(terminated), bool(truncated)))
                obs[i] = np.asarray(next_obs)
                if not (terminated or truncated):
                    still.append(i)
                    continue
                o, a, r, te, tr = zip(*steps[i])
                rec.episodes.append(
                    Episode(
                        np.asarray(o, dtype=obs_dtype),
                        np.asarray(a, dtype=act_dtype),
                        np.asarray(r, dtype=np.float32),
                        np.asarray(te, dtype=bool),
                        np.asarray(tr, dtype=bool),
                    )
                )
                rec.final_observations.append(obs[i].astype(np.float32))
                finished_steps += len(steps[i])
                steps[i] = []
                running = sum(len(s) for s in steps)
                more = finished_steps + running < budget if num_transitions is not None else started < budget
                if more:
                    obs[i] = np.asarray(envs[i].reset()[0])
                    started += 1
                    still.append(i)
            active = still
            if on_progress is not None:
                on_progress(finished_steps + sum(len(s) for s in steps))
    finally:
        for env in envs:
            env.close()
    return rec


def versions(*extra: str) -> dict[str, str | None]:
    """The Python and package versions a collected dataset records in its metadata."""
    return {"python": platform.python_version(), **package_versions((*VERSIONED_PACKAGES, *extra))}
