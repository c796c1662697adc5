"""Return-conditioned evaluation in the real simulator, all episodes in parallel.

Every (target return, episode) pair is one environment of a single vector env,
so one batched model call per step serves every target. Episode ``i`` of every
target uses seed ``seed + i``: targets are compared on the same start states.
:func:`record_videos` replays episode 0 of each target (the same start state) into an MP4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from dtrl.data.episodes import PER_STEP_ARRAYS, Episode
from dtrl.envs import check_env_id, make_env, make_vector_env, reference_scores, success_return
from dtrl.envs.scores import normalized_score
from dtrl.envs.video import make_render_env, require_moviepy
from dtrl.policy import DecisionTransformerPolicy


@dataclass
class EvalResult:
    target_return: float | None  # None: a baseline without return conditioning (e.g. random)
    returns: np.ndarray
    lengths: np.ndarray
    ref_scores: dict[str, float] = field(default_factory=dict)
    success_return: float | None = None  # envs with a success return (Key-to-Door): success rate reported

    @property
    def success_rate(self) -> float | None:
        """Fraction of episodes whose return reached the env's success return, when it has one."""
        return None if self.success_return is None else float((self.returns >= self.success_return).mean())

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())

    @property
    def normalized(self) -> tuple[float, float] | None:
        """Mean and std of the D4RL-normalised score, when reference scores are known."""
        if not self.ref_scores:
            return None
        scores = normalized_score(self.returns, self.ref_scores)
        return float(scores.mean()), float(scores.std())

    def to_dict(self) -> dict:
        d = {
            "target_return": self.target_return,
            "return_mean": self.mean,
            "return_std": self.std,
            "length_mean": float(self.lengths.mean()),
            "episodes": len(self.returns),
            "returns": self.returns.tolist(),
        }
        if self.normalized:
            d["normalized_mean"], d["normalized_std"] = self.normalized
        if self.success_rate is not None:
            d["success_rate"] = self.success_rate
        return d


class EpisodeRecorder:
    """A :func:`rollout` hook that keeps every transition; :meth:`episodes` cuts them into episodes.

    Each episode holds what was observed before each step, the env-unit actions taken and the
    rewards, terminations and truncations the env returned, up to and including its first end.
    """

    def __init__(self) -> None:
        self.steps: dict[str, list[np.ndarray]] = {k: [] for k in PER_STEP_ARRAYS}

    def __call__(self, *transition: np.ndarray) -> None:
        """One step of every env: observations, actions, rewards, terminated, truncated (batched)."""
        for name, value in zip(self.steps, transition, strict=True):
            self.steps[name].append(np.array(value))

    def episodes(self) -> list[Episode]:
        stacked = {k: np.stack(v, axis=1) for k, v in self.steps.items()}  # (n, T, ...)
        ended = stacked["terminations"] | stacked["truncations"]
        lengths = np.where(ended.any(axis=1), ended.argmax(axis=1) + 1, ended.shape[1])
        return [Episode(**{k: v[i, :length] for k, v in stacked.items()}) for i, length in enumerate(lengths)]


def rollout(
    env_id: str,
    seeds: Sequence[int],
    act: Callable[[np.ndarray, np.ndarray], np.ndarray],
    check: Callable[[gym.vector.VectorEnv], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    max_episode_steps: int | None = None,
    record: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run one episode per seed, in parallel, to its end: returns and lengths.

    ``act(observations, last_rewards)`` maps the batch of observations (and the
    rewards the previous actions earned) to a batch of actions. Environments
    that finish early keep stepping until all are done, but nothing they do
    after their end is counted. ``record(observations, actions, rewards,
    terminated, truncated)`` sees every batched transition (an
    :class:`EpisodeRecorder` turns them into episodes).
    """
    envs = make_vector_env(env_id, len(seeds), max_episode_steps)
    try:
        if check is not None:
            check(envs)
        obs, _ = envs.reset(seed=[int(s) for s in seeds])
        n = len(seeds)
        returns = np.zeros(n)
        lengths = np.zeros(n, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        reward = np.zeros(n)
        step = 0
        while not done.all():
            action = act(obs, reward)
            next_obs, reward, terminated, truncated, _ = envs.step(action)
            if record is not None:
                record(obs, action, reward, terminated, truncated)
            obs = next_obs
            returns += np.where(done, 0.0, reward)
            lengths += ~done
            done |= terminated | truncated
            step += 1
            if on_step:
                on_step(step)
        return returns, lengths
    finally:
        envs.close()


def evaluate(
    policy: DecisionTransformerPolicy,
    env_id: str,
    target_returns: Sequence[float],
    episodes: int = 10,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
    max_episode_steps: int | None = None,
) -> list[EvalResult]:
    """Return statistics per target over ``episodes`` episodes each, all run at once."""
    targets = np.repeat(np.asarray(target_returns, dtype=np.float64), episodes)
    seeds = seed + np.tile(np.arange(episodes), len(target_returns))
    policy.reset(targets, num_envs=len(targets))
    returns, lengths = rollout(
        env_id, seeds, policy.act, lambda envs: policy.check_env(envs, env_id), on_step, max_episode_steps
    )
    ref = reference_scores(env_id, policy.spec.ref_scores)
    chunks = [slice(j * episodes, (j + 1) * episodes) for j in range(len(target_returns))]
    success = success_return(env_id)
    return [EvalResult(float(t), returns[c], lengths[c], ref, success) for t, c in zip(target_returns, chunks)]


def evaluate_random(
    env_id: str,
    episodes: int = 10,
    seed: int = 0,
    ref_scores: dict[str, float] | None = None,
    max_episode_steps: int | None = None,
) -> EvalResult:
    """The uniformly random policy on the same seeds: the floor every method must beat."""
    check_env_id(env_id)
    with make_env(env_id) as env:
        actions = gym.vector.utils.batch_space(env.action_space, episodes)
    actions.seed(seed)
    returns, lengths = rollout(
        env_id, seed + np.arange(episodes), lambda obs, reward: actions.sample(), max_episode_steps=max_episode_steps
    )
    return EvalResult(None, returns, lengths, reference_scores(env_id, ref_scores), success_return(env_id))


def record_videos(
    policy: DecisionTransformerPolicy, env_id: str, targets: Sequence[float], out_dir: Path, seed: int = 0
) -> list[Path]:
    """Record one episode per target into ``out_dir/target_<R>-episode-0.mp4``."""
    require_moviepy()
    from gymnasium.wrappers import RecordVideo

    out_dir = Path(out_dir)
    env = make_render_env(env_id)
    policy.check_env(env, env_id)
    written = []
    try:
        for target in targets:
            prefix = f"target_{target:g}"
            recorder = RecordVideo(
                env, str(out_dir), name_prefix=prefix, episode_trigger=lambda _: True, disable_logger=True
            )
            obs, _ = recorder.reset(seed=seed)
            policy.reset(target)
            reward, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = recorder.step(policy.act(obs, reward))
                done = terminated or truncated
            recorder.stop_recording()
            written.append(out_dir / f"{prefix}-episode-0.mp4")
    finally:
        env.close()
    return written
