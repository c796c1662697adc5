"""The recipe of the shipped quickstart dataset (``dtrl/assets/quickstart.npz``): one behaviour agent,
snapshots of it spread over its learning curve, and random episodes."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.collect.agents import DEFAULT_HYPERPARAMS, Snapshot, train_behaviour_agent
from dtrl.collect.recorder import (
    episode_returns,
    evaluate_policy,
    random_policy,
    record_episodes,
    return_stats,
    versions,
)
from dtrl.data.episodes import Episode, EpisodeDataset
from dtrl.data.readers import QUICKSTART_PATH
from dtrl.envs import make_env

#: How the shipped quickstart dataset is made. ``fraction`` picks the snapshot
#: whose deterministic return is closest to that fraction of the best
#: snapshot's, among those taken before the first snapshot that reached
#: ``learned_fraction`` of the best (1.0 picks the best itself);
#: ``transitions`` is the budget recorded from each source.
LEARNING_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The quickstart's learning-phase sources: one snapshot nearest each fraction of the best's return, so
returns cover the range from random to the best evenly (issue 18: a two-mode dataset left the high
target at the edge of its support)."""
QUICKSTART_RECIPE: dict[str, Any] = {
    "env_id": "Hopper-v5",
    "algo": "ppo",
    "n_envs": 4,
    "total_timesteps": 300_000,
    "snapshot_every": 10_000,
    "eval_episodes_per_snapshot": 5,
    "learned_fraction": 0.95,
    "sources": [
        {"name": "random", "transitions": 4_000},
        # Deterministic actions plus a little noise: a snapshot's returns stay near its own level (sampled
        # actions spread one snapshot over most of the range), and longer episodes get more budget.
        *(
            {
                "name": f"learning-{round(100 * f)}",
                "fraction": f,
                "transitions": round(1_500 + 9_000 * f),
                "deterministic": True,
                "noise_std": 0.1,
            }
            for f in LEARNING_FRACTIONS
        ),
        # The best policy at three noise levels: its own returns, and graded falls from them. A third of
        # the data and more: with 24k / 8k / 5k the sweep levelled off below 2,500 on some training seeds.
        {"name": "best", "fraction": 1.0, "transitions": 32_000, "deterministic": True, "noise_std": 0.1},
        {"name": "best-noise-0.2", "fraction": 1.0, "transitions": 16_000, "deterministic": True, "noise_std": 0.2},
        {"name": "best-noise-0.3", "fraction": 1.0, "transitions": 8_000, "deterministic": True, "noise_std": 0.3},
    ],  # fmt: skip
    "random_ref_episodes": 100,
    "expert_ref_episodes": 20,
}


def make_quickstart_dataset(
    out_path: str | Path = QUICKSTART_PATH,
    seed: int = 0,
    *,
    recipe: dict[str, Any] | None = None,
    num_threads: int | None = 1,
    log: Callable[[str], None] | None = print,
) -> EpisodeDataset:
    """Build the mixed-quality quickstart dataset and save it compressed at ``out_path``.

    Trains the behaviour agent of ``recipe`` (default :data:`QUICKSTART_RECIPE`:
    PPO on Hopper-v5 for 300k steps, a snapshot every 10k), evaluates every
    snapshot deterministically, picks snapshots from the learning phase by
    their return relative to the best, plus the best one, and records
    episodes from each (each source's mean or sampled actions, plus Gaussian
    noise) and uniformly random episodes. ``ref_scores`` holds the random policy's mean return
    (``random_ref_episodes`` episodes) and the best snapshot's deterministic
    mean return (``expert_ref_episodes`` episodes). Everything derives from
    ``seed``; ``num_threads`` pins torch's thread count (1 makes runs
    reproducible on one machine and keeps a shared CPU free).
    """
    import torch

    r = {**QUICKSTART_RECIPE, **(recipe or {})}
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    say = log or (lambda s: None)
    env_id = r["env_id"]
    # One independent seed per use, all derived from `seed`.
    seeds = iter(int(s) for s in np.random.SeedSequence(seed).generate_state(64))
    t0 = time.perf_counter()

    # 1. Behaviour agent.
    total = int(r["total_timesteps"])
    every = int(r["snapshot_every"])
    snapshots = train_behaviour_agent(
        env_id,
        total,
        list(range(every, total + 1, every)),
        algo=r["algo"],
        seed=next(seeds),
        n_envs=int(r["n_envs"]),
        hyperparams=r.get("hyperparams"),
        log=say,
    )
    t_train = time.perf_counter() - t0

    # 2. Evaluate every snapshot (deterministic), pick the sources.
    eval_seed = next(seeds)
    for snap in snapshots:
        snap.eval_return = float(
            evaluate_policy(
                snap.policy(deterministic=True), env_id, int(r["eval_episodes_per_snapshot"]), eval_seed
            ).mean()
        )
        say(f"snapshot {snap.timesteps}: deterministic return {snap.eval_return:.1f}")
    best = max(snapshots, key=lambda s: s.eval_return)
    # Lower-quality sources come from the learning phase: the snapshots taken before the
    # first one within `learned_fraction` of the best. A late snapshot whose return dipped
    # (PPO's returns oscillate once learned) is a near-expert that falls now and then, not
    # a medium policy.
    learned = next(s for s in snapshots if s.eval_return >= r["learned_fraction"] * best.eval_return)
    candidates = [s for s in snapshots if s.timesteps < learned.timesteps] or [snapshots[0]]
    t_eval = time.perf_counter() - t0 - t_train

    # 3. Record.
    env = make_env(env_id)
    obs_space = gym.spaces.Box(
        env.observation_space.low.astype(np.float32),
        env.observation_space.high.astype(np.float32),
        dtype=np.float32,
    )
    action_space = env.action_space
    env.close()
    episodes: list[Episode] = []
    sources: list[dict[str, Any]] = []
    used: set[tuple[int, float]] = set()
    for src in r["sources"]:
        snap = None if src["name"] == "random" else _pick_snapshot(src["fraction"], best, candidates)
        seed_of_source = next(seeds)
        if snap is not None and (snap.timesteps, float(src.get("noise_std", 0.0))) in used:
            say(f"source {src['name']}: snapshot {snap.timesteps} already recorded at this noise, skipped")
            continue  # PPO can jump past a fraction: one policy is never recorded twice under two names
        if snap is not None:
            used.add((snap.timesteps, float(src.get("noise_std", 0.0))))
        eps, info = _record_source(src, r["algo"], snap, env_id, action_space, seed_of_source)
        info["first_episode"] = len(episodes)
        sources.append(info)
        episodes.extend(eps)
        say(
            f"source {src['name']}: {info['episodes']} episodes, {info['transitions']} transitions, returns {info['returns']}"
        )
    t_record = time.perf_counter() - t0 - t_train - t_eval

    # 4. Reference scores.
    random_ref = evaluate_policy(
        random_policy(action_space, next(seeds)), env_id, int(r["random_ref_episodes"]), next(seeds)
    )
    expert_ref = evaluate_policy(best.policy(deterministic=True), env_id, int(r["expert_ref_episodes"]), next(seeds))
    ref_scores = {"random": float(random_ref.mean()), "expert": float(expert_ref.mean())}
    say(f"reference scores: {ref_scores}")
    wall = time.perf_counter() - t0

    algo_params = {**DEFAULT_HYPERPARAMS[r["algo"]], **(r.get("hyperparams") or {})}
    metadata = {
        "made_by": "dtrl.collect.quickstart.make_quickstart_dataset",
        "command": f"python scripts/make_quickstart_dataset.py --seed {seed}",
        "seed": seed,
        "recipe": {k: v for k, v in r.items() if k != "sources"},
        "algorithm": {
            "name": r["algo"].upper(),
            "library": "stable-baselines3",
            "policy": "MlpPolicy",
            "n_envs": int(r["n_envs"]),
            "vec_normalize": r["algo"] == "ppo",
            "hyperparams": algo_params,
            "training_timesteps": snapshots[-1].timesteps,
        },
        "snapshot_returns": [
            {
                "timesteps": s.timesteps,
                "deterministic_return": round(s.eval_return, 2),
                "training_return": None if s.train_return is None else round(s.train_return, 2),
            }
            for s in snapshots
        ],
        "sources": sources,
        "ref_scores_detail": {
            "random": {"policy": "uniform random", "episodes": len(random_ref), **return_stats(random_ref)},
            "expert": {
                "policy": f"best snapshot ({best.timesteps} steps), deterministic",
                "episodes": len(expert_ref),
                **return_stats(expert_ref),
            },
        },
        "wall_time_s": {
            "train": round(t_train, 1),
            "evaluate_snapshots": round(t_eval, 1),
            "record": round(t_record, 1),
            "total": round(wall, 1),
        },
        "num_threads": num_threads,
        "versions": versions(),
        "platform": platform.platform(),
    }
    dataset = EpisodeDataset.from_episodes(
        episodes,
        observation_space=obs_space,
        action_space=action_space,
        name=f"quickstart-{env_id.lower()}-mixed",
        env_id=env_id,
        ref_scores=ref_scores,
        metadata=metadata,
    )
    path = dataset.save(out_path, compress=True)
    say(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB) in {wall:.0f}s: {dataset.summary()}")
    return dataset


def _pick_snapshot(fraction: float, best: Snapshot, candidates: list[Snapshot]) -> Snapshot:
    """The best snapshot (``fraction`` 1), or the learning-phase one nearest ``fraction`` of its return."""
    if fraction >= 1.0:
        return best
    return min(candidates, key=lambda s: abs(s.eval_return - fraction * best.eval_return))


def _record_source(
    src: dict[str, Any], algo: str, snap: Snapshot | None, env_id: str, action_space: gym.Space, seed: int
) -> tuple[list[Episode], dict[str, Any]]:
    """Record one source of the quickstart recipe: uniform random actions (``snap`` None) or a snapshot's."""
    if snap is None:
        policy = random_policy(action_space, seed)
    else:
        deterministic = bool(src.get("deterministic", False))
        policy = snap.policy(deterministic=deterministic, noise_std=float(src.get("noise_std", 0.0)), seed=seed)
    eps = record_episodes(policy, env_id, num_transitions=int(src["transitions"]), seed=seed)
    info = {
        "name": src["name"],
        "policy": "uniform random"
        if snap is None
        else f"{algo} snapshot, {'mean' if deterministic else 'sampled'} actions",
        "snapshot_timesteps": None if snap is None else snap.timesteps,
        "snapshot_deterministic_return": None if snap is None else round(snap.eval_return, 2),
        "noise_std": float(src.get("noise_std", 0.0)),
        "seed": seed,
        "episodes": len(eps),
        "transitions": int(sum(len(e) for e in eps)),
        "returns": return_stats(episode_returns(eps)),
    }
    return eps, info
