"""DQN-replay-style Atari datasets: a PPO agent's every training transition, then the paper's 1% subset.

``dtrl data collect ALE/<Game>-v5`` lands here. The D4RL protocol for MuJoCo
lives in :mod:`dtrl.collect.d4rl`, whose cache layout and helpers this reuses.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.collect.agents import import_sb3
from dtrl.collect.recorder import Progress, versions
from dtrl.data.episodes import NATIVE_SUFFIX
from dtrl.errors import DtrlError
from dtrl.io import read_state, write_json

#: PPO for Atari as in the rl-baselines3-zoo (8 envs, 128-step rollouts, 4 epochs, batch 256, clip 0.1,
#: entropy 0.01), trained on clipped rewards. PPO rather than DQN-replay's DQN: with vector envs it
#: collects several times more steps per second on a CPU, and its training steps are what is recorded.
ATARI_PPO_HYPERPARAMS: dict[str, Any] = {
    "n_steps": 128,
    "n_epochs": 4,
    "batch_size": 256,
    "learning_rate": 2.5e-4,
    "clip_range": 0.1,
    "ent_coef": 0.01,
    "vf_coef": 0.5,
}
ATARI_N_ENVS = 8
#: DQN-replay keeps 50 checkpoints per run; the agent's training steps are split into as many.
ATARI_CHECKPOINTS = 50


def _atari_replay_callback(n_envs: int, write: Callable[[list[dict[str, np.ndarray]]], None]) -> Any:
    """An SB3 callback recording every training step: the newest frame the action was taken on, the
    action and the raw reward; whole episodes are handed to ``write`` when ``flush`` is called."""
    from stable_baselines3.common.callbacks import BaseCallback

    class AtariReplay(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.open: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(n_envs)]
            self.done: list[dict[str, np.ndarray]] = []
            self.returns: list[float] = []

        def _on_step(self) -> bool:
            frames = np.asarray(self.model._last_obs)[:, -1]  # (n_envs, 84, 84): the obs before this step
            for i, (action, done, info) in enumerate(
                zip(self.locals["actions"], self.locals["dones"], self.locals["infos"])
            ):
                self.open[i].append((frames[i].copy(), int(action), float(info["raw_reward"])))
                if done:
                    f, a, r = zip(*self.open[i])
                    terminal = np.zeros(len(f), dtype=np.uint8)
                    terminal[-1] = 1
                    self.done.append(
                        {
                            "observation": np.stack(f),
                            "action": np.asarray(a),
                            "reward": np.asarray(r),
                            "terminal": terminal,
                        }
                    )
                    self.returns.append(float(np.sum(r)))
                    self.open[i] = []
            return True

        def flush(self) -> None:
            write(self.done)
            self.done = []

    return AtariReplay()


def collect_atari(
    env_id: str,
    *,
    transitions: int = 500_000,
    seed: int = 0,
    agent_steps: int = 10_000_000,
    cache_dir: Path,
    checkpoints: int = ATARI_CHECKPOINTS,
    n_envs: int = ATARI_N_ENVS,
    hyperparams: dict[str, Any] | None = None,
    num_threads: int | None = 1,
    command: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Make a DQN-replay-style dataset for an ALE game in ``cache_dir``, named ``<game>-replay``.

    A PPO agent is trained for ``agent_steps`` env steps on DQN-replay's
    environment (:func:`dtrl.envs.atari.make_env`: sticky actions, 84×84 grayscale,
    4 stacked frames; clipped rewards for learning). Every transition it trains
    on is written, in order, as a Dopamine replay checkpoint under
    ``agents/.../replay_logs``, each checkpoint holding the episodes that ended
    in its share of training, with raw rewards (about ``checkpoints`` shares of
    whole PPO rollouts, as :func:`collect_d4rl` splits its snapshots: a run of
    fewer than 2 × ``checkpoints`` rollouts gets one per rollout). The
    dataset is then the paper's subset of that replay
    (:func:`dtrl.data.dqn_replay.read_dqn_replay`, whole checkpoints) with
    ``transitions`` steps, one uint8 frame per step. An existing replay is
    reused (an error if it was made with other PPO ``hyperparams``); an interrupted one is recorded again.
    """
    import torch

    from dtrl.data.dqn_replay import checkpoint_numbers, read_dqn_replay, write_checkpoint
    from dtrl.envs import atari, make_env
    from dtrl.envs.scores import env_family

    if min(transitions, agent_steps, checkpoints, n_envs) < 1:
        raise DtrlError("transitions, agent steps, checkpoints and envs must be positive")
    game = env_family(env_id)
    atari.gamer_reference(env_id)  # an unknown game fails here, before any training
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    say = log or (lambda s: None)
    params = {**ATARI_PPO_HYPERPARAMS, **(hyperparams or {})}
    rollout = n_envs * int(params["n_steps"])
    every = rollout * max(1, -(-agent_steps // rollout) // checkpoints)
    agent_steps = every * -(-agent_steps // every)
    agent_dir = cache_dir / "agents" / f"{env_id.replace('/', '_')}-ppo-seed{seed}-{agent_steps}"
    replay_dir = agent_dir / "replay_logs"
    summary_path = agent_dir / "summary.json"
    summary = read_state(summary_path)
    if summary and summary["hyperparams"] != params:
        raise DtrlError(
            f"{agent_dir} holds an agent trained with other hyperparameters: delete it or pass another --cache-dir"
        )
    if not summary:
        import_sb3()
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import DummyVecEnv

        for stale in replay_dir.glob("*_ckpt.*.gz"):  # an interrupted recording's, which this one may not overwrite
            stale.unlink()
        venv = DummyVecEnv([lambda: make_env(env_id, clip_reward=True) for _ in range(n_envs)])
        model = PPO("CnnPolicy", venv, seed=seed, device="cpu", verbose=0, **params)  # seeds the envs too
        written = [0]

        def write(episodes: list[dict[str, np.ndarray]]) -> None:
            if episodes:  # a share in which no episode ended adds no checkpoint
                write_checkpoint(
                    replay_dir,
                    written[0],
                    *(
                        np.concatenate([e[k] for e in episodes])
                        for k in ("observation", "action", "reward", "terminal")
                    ),
                )
                written[0] += 1

        capture = _atari_replay_callback(n_envs, write)
        t0 = time.perf_counter()
        try:
            while model.num_timesteps < agent_steps:
                model.learn(every, callback=capture, reset_num_timesteps=False)
                capture.flush()
                if progress:
                    progress("train agent", model.num_timesteps, agent_steps)
                recent = capture.returns[-100:]
                say(
                    f"[ppo {env_id}] {model.num_timesteps} steps, return of the last {len(recent)} episodes "
                    f"{np.mean(recent) if recent else float('nan'):.1f}, {time.perf_counter() - t0:.0f}s"
                )
        finally:
            venv.close()
        returns = np.asarray(capture.returns)
        summary = {
            "agent_steps": model.num_timesteps,
            "hyperparams": params,
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "episodes": len(returns),
            "checkpoints": written[0],
            "return_mean": float(returns.mean()) if len(returns) else None,
            "return_last_100": float(returns[-100:].mean()) if len(returns) else None,
            "return_max": float(returns.max()) if len(returns) else None,
        }
        write_json(summary_path, summary, indent=1)
    if not checkpoint_numbers(replay_dir):
        raise DtrlError(f"the agent finished no episode in {agent_steps} steps: raise --agent-steps")
    t1 = time.perf_counter()
    dataset = read_dqn_replay(
        replay_dir, transitions, buffer_capacity=None, seed=seed, env_id=env_id, name=f"{game}-replay"
    )
    dataset.metadata.update(
        {
            "made_by": "dtrl.collect.atari.collect_atari",
            "command": command,
            "kind": "replay",
            "algorithm": {
                "name": "PPO",
                "library": "stable-baselines3",
                "policy": "CnnPolicy",
                "hyperparams": params,
                "n_envs": n_envs,
                "seed": seed,
            },
            "agent_dir": str(agent_dir),
            "agent": summary,
            "subset_wall_time_s": round(time.perf_counter() - t1, 1),
            "versions": versions("ale-py"),
            "platform": platform.platform(),
            "num_threads": num_threads,
        }
    )
    path = cache_dir / f"{game}-replay{NATIVE_SUFFIX}"
    dataset.save(path, compress=True)  # frames compress ~30x
    s = dataset.summary()
    say(
        f"{game}-replay: {s['episodes']} episodes, {s['transitions']} transitions, "
        f"return mean {s['return_mean']:.1f} max {s['return_max']:.1f} -> {path}"
    )
    return path
