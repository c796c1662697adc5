"""The D4RL protocol's behaviour agent: PPO trained with a snapshot, and the training episodes that
ended since the previous snapshot (its replay), every ``snapshot_every`` steps, so that
medium-replay is the agent's own experience up to the medium snapshot.

stable-baselines3 is an optional dependency (``pip install 'dtrl[collect]'``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.collect.agents import DEFAULT_HYPERPARAMS, Snapshot, import_sb3
from dtrl.collect.recorder import Progress, Recording
from dtrl.data.episodes import Episode, EpisodeDataset
from dtrl.errors import DtrlError
from dtrl.io import atomic_save, atomic_write

PROTOCOL_HYPERPARAMS: dict[str, Any] = {**DEFAULT_HYPERPARAMS["ppo"], "n_steps": 256}
PROTOCOL_N_ENVS = 8
_FINAL_OBS = "dtrl_final_observation"


class _FinalObservation(gym.Wrapper):
    """Puts the raw observation that ends an episode into ``info`` (VecNormalize rewrites SB3's own copy)."""

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info = {**info, _FINAL_OBS: np.array(obs, dtype=np.float32)}
        return obs, reward, terminated, truncated, info


def _replay_callback(venv: Any) -> Any:
    """An SB3 callback that rebuilds every env's whole episodes from PPO's training steps (raw obs and rewards)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class ReplayCapture(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.open: list[list[tuple[np.ndarray, np.ndarray, float]]] = [[] for _ in range(venv.num_envs)]
            self.done = Recording([], [])

        def _on_training_start(self) -> None:
            self.prev = np.array(venv.get_original_obs(), dtype=np.float32)

        def _on_step(self) -> bool:
            actions = np.asarray(self.locals["clipped_actions"], dtype=np.float32)
            rewards = venv.get_original_reward()
            for i, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"])):
                self.open[i].append((self.prev[i], actions[i], float(rewards[i])))
                if done:
                    o, a, r = zip(*self.open[i])
                    truncated = bool(info.get("TimeLimit.truncated", False))
                    ends = np.zeros(len(o), dtype=bool)
                    ends[-1] = True
                    self.done.episodes.append(
                        Episode(
                            np.asarray(o),
                            np.asarray(a),
                            np.asarray(r, dtype=np.float32),
                            ends & (not truncated),
                            ends & truncated,
                        )
                    )
                    self.done.final_observations.append(info[_FINAL_OBS])
                    self.open[i] = []
            self.prev = np.array(venv.get_original_obs(), dtype=np.float32)
            return True

        def take(self) -> Recording:
            out, self.done = self.done, Recording([], [])
            return out

    return ReplayCapture()


def _snapshot_steps(agent_dir: Path) -> list[int]:
    """Timesteps of the finished snapshots in ``agent_dir`` (the policy zip is written last, so it marks one)."""
    return sorted(int(p.stem.split("_")[1]) for p in agent_dir.glob("snap_*.zip"))


def train_protocol_agent(
    env_id: str,
    agent_dir: Path,
    agent_steps: int,
    snapshot_every: int,
    *,
    seed: int,
    max_episode_steps: int,
    n_envs: int = PROTOCOL_N_ENVS,
    hyperparams: dict[str, Any] | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> list[int]:
    """Train (or resume) the behaviour agent and keep a snapshot plus its training episodes every ``snapshot_every`` steps.

    ``agent_dir`` receives ``snap_<t>.zip`` (the PPO model), ``snap_<t>_vecnormalize.pkl``
    and ``replay_<t>.npz`` (the training episodes that ended in the chunk up to
    ``t``). An interrupted run resumes from its newest snapshot; episodes
    running at the interruption are lost, and the resumed part is seeded from
    ``seed`` and the step, so it is reproducible but not identical to an
    uninterrupted run. Returns the snapshot timesteps.
    """
    import_sb3()
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    params = {**PROTOCOL_HYPERPARAMS, **(hyperparams or {})}
    targets = list(range(snapshot_every, agent_steps + 1, snapshot_every))
    done = _snapshot_steps(agent_dir)
    start = done[-1] if done else 0
    if start >= targets[-1]:
        return done
    agent_dir.mkdir(parents=True, exist_ok=True)
    try:
        venv = make_vec_env(
            env_id,
            n_envs=n_envs,
            seed=seed + start,
            wrapper_class=_FinalObservation,
            env_kwargs={"max_episode_steps": max_episode_steps},
        )
    except gym.error.Error as e:
        raise DtrlError(f"cannot make environment {env_id!r}: {e}") from None
    if start:
        venv = VecNormalize.load(str(agent_dir / f"snap_{start}_vecnormalize.pkl"), venv)
        model = PPO.load(agent_dir / f"snap_{start}.zip", env=venv, device="cpu")
        model.set_random_seed(seed + start)
        if log:
            log(f"resuming the behaviour agent from its snapshot at {start} steps")
    else:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=params.get("gamma", 0.99))
        model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **params)
    capture = _replay_callback(venv)
    t0 = time.perf_counter()
    for target in (t for t in targets if t > start):
        model.learn(target - model.num_timesteps, callback=capture, reset_num_timesteps=False)
        replay = capture.take()
        replay_path = agent_dir / f"replay_{target}.npz"
        if replay.episodes:
            replay.dataset(name=f"replay-{target}").save(replay_path)
        else:  # no episode ended in this chunk: an empty marker keeps the chunk list complete
            atomic_write(replay_path, lambda f: np.savez(f, empty=np.zeros(0)))
        atomic_save(agent_dir / f"snap_{target}_vecnormalize.pkl", venv.save)
        atomic_save(agent_dir / f"snap_{target}.zip", model.save)
        rets = [ep["r"] for ep in model.ep_info_buffer or []]
        if progress:
            progress("train agent", model.num_timesteps, targets[-1])
        if log:
            mean = f"{np.mean(rets):.1f}" if rets else "n/a"
            log(f"[ppo {env_id}] {model.num_timesteps} steps, training return {mean}, {time.perf_counter() - t0:.0f}s")
    venv.close()
    return _snapshot_steps(agent_dir)


def load_snapshot(agent_dir: Path, timesteps: int) -> Snapshot:
    """A saved protocol snapshot as a :class:`Snapshot` (policy plus its observation statistics)."""
    import pickle

    from stable_baselines3 import PPO

    model = PPO.load(agent_dir / f"snap_{timesteps}.zip", device="cpu")
    with open(agent_dir / f"snap_{timesteps}_vecnormalize.pkl", "rb") as f:
        norm = pickle.load(f)
    return Snapshot(
        timesteps=timesteps,
        sb3_policy=model.policy.eval(),
        action_space=model.action_space,
        obs_mean=norm.obs_rms.mean.astype(np.float32),
        obs_var=norm.obs_rms.var.astype(np.float32),
        clip_obs=float(norm.clip_obs),
        epsilon=float(norm.epsilon),
        path=agent_dir / f"snap_{timesteps}.zip",
    )


def read_replay(agent_dir: Path, upto: int) -> Recording:
    """The training episodes that ended by step ``upto``, in the order they ended."""
    rec = Recording([], [])
    for t in (t for t in _snapshot_steps(agent_dir) if t <= upto):
        path = agent_dir / f"replay_{t}.npz"
        with np.load(path) as z:
            if "empty" in z.files:
                continue
        chunk = EpisodeDataset.load(path)
        rec.episodes.extend(chunk)
        assert chunk.final_observations is not None  # a replay chunk is saved with them
        rec.final_observations.extend(chunk.final_observations)
    return rec
