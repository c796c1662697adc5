"""D4RL's protocol for any gymnasium env (``dtrl data collect``): random, medium, medium-replay, expert
and medium-expert datasets from one PPO agent, made resumably into the dataset cache."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.collect.agents import Snapshot
from dtrl.collect.protocol_agent import (
    PROTOCOL_HYPERPARAMS,
    PROTOCOL_N_ENVS,
    load_snapshot,
    read_replay,
    train_protocol_agent,
)
from dtrl.collect.recorder import (
    BatchPolicyFn,
    Progress,
    Recording,
    episode_returns,
    record_vector,
    return_stats,
    uniform_batch_policy,
    versions,
)
from dtrl.data.episodes import NATIVE_SUFFIX, EpisodeDataset
from dtrl.envs import make_env
from dtrl.envs.scores import env_family
from dtrl.errors import DtrlError
from dtrl.io import read_state, write_json

#: The dataset kinds of D4RL's gym locomotion tasks, in the order they are made.
D4RL_KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
# Fixed positions in the seed sequence, so that one kind made alone equals the same kind made with others.
_SEED_SLOTS = {"agent": 0, "evaluate": 1, "ref-random": 2, "ref-expert": 3, "random": 4, "medium": 5, "expert": 6}


def _check_cached(paths: Iterable[Path], settings: dict[str, Any]) -> None:
    """A cached dataset made with other protocol settings is an error, never silently mixed with new ones."""
    for path in paths:
        if path.is_file():
            made_with = EpisodeDataset.load(path).metadata.get("protocol") or {}
            if differ := [k for k in settings if made_with.get(k) != settings[k]]:
                raise DtrlError(
                    f"{path} exists but was made with other settings ({', '.join(differ)} differ): "
                    "delete it, or pass another --cache-dir"
                )


@dataclass
class _AgentRecorder:
    """What the stages of :func:`collect_d4rl` share: the env, the agent's directory, progress and timings."""

    env_id: str
    agent_dir: Path
    max_episode_steps: int
    progress: Progress | None

    def __post_init__(self) -> None:
        self.timings: dict[str, float] = read_state(self.agent_dir / "timings.json")

    def record(self, policy: BatchPolicyFn, stage: str, seed: int, **budget: int) -> Recording:
        """Record ``num_transitions`` or ``num_episodes`` with :func:`record_vector`, reporting ``stage``."""
        progress, total = self.progress, budget.get("num_transitions") or budget["num_episodes"]
        report = (
            (lambda done: progress(stage, min(done, total), total))
            if progress and "num_transitions" in budget
            else None
        )
        rec = record_vector(
            policy, self.env_id, seed=seed, max_episode_steps=self.max_episode_steps, on_progress=report, **budget
        )
        if progress and "num_episodes" in budget:
            progress(stage, total, total)
        return rec

    def returns(self, policy: BatchPolicyFn, stage: str, seed: int, episodes: int) -> np.ndarray:
        return episode_returns(self.record(policy, stage, seed, num_episodes=episodes).episodes)

    def add_time(self, stage: str, since: float) -> None:
        """Add the wall time since ``since`` to ``stage`` in the agent's timings.json."""
        self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - since, 1)
        write_json(self.agent_dir / "timings.json", self.timings, indent=1)


def _reference_scores(
    agent: _AgentRecorder, expert: Snapshot, expert_steps: int, seed_of: dict[str, int], episodes: int
) -> dict[str, dict[str, Any]]:
    """Returns of uniform random actions and of the expert over ``episodes`` episodes, cached in the agent's dir."""
    refs = read_state(agent.agent_dir / "ref_scores.json")
    if refs:
        return refs
    t0 = time.perf_counter()
    rand = agent.returns(
        uniform_batch_policy(expert.action_space, seed_of["ref-random"]),
        "reference: random",
        seed_of["ref-random"],
        episodes,
    )
    exp = agent.returns(
        expert.batch_policy(seed=seed_of["ref-expert"]), "reference: expert", seed_of["ref-expert"], episodes
    )
    refs = {
        "random": {"policy": "uniform random", "episodes": len(rand), **return_stats(rand)},
        "expert": {
            "policy": f"final agent ({expert_steps} steps), sampled actions",
            "episodes": len(exp),
            **return_stats(exp),
        },
    }
    write_json(agent.agent_dir / "ref_scores.json", refs, indent=1)
    agent.add_time("reference_scores", t0)
    return refs


def _medium_snapshot(
    agent: _AgentRecorder, steps: list[int], expert_return: float, seed: int, episodes: int
) -> tuple[int, float]:
    """The medium policy: the snapshot whose return is closest to a third of the expert's, among those of
    the learning phase. Snapshots are evaluated in training order (cached) until one reaches two thirds."""
    path = agent.agent_dir / "evaluations.json"
    evals = {int(k): v for k, v in read_state(path).items()}
    progress, t0 = agent.progress, time.perf_counter()
    for t in steps:
        if t not in evals:
            policy = load_snapshot(agent.agent_dir, t).batch_policy(seed=seed)
            evals[t] = float(agent.returns(policy, "evaluate snapshots", seed, episodes).mean())
            write_json(path, {str(k): v for k, v in sorted(evals.items())}, indent=1)
        if progress:
            progress("evaluate snapshots", steps.index(t) + 1, len(steps))
        if evals[t] >= 2 / 3 * expert_return:
            break
    if progress:  # the learning phase ended here: the bar is complete
        progress("evaluate snapshots", len(evals), len(evals))
    agent.add_time("evaluate_snapshots", t0)
    learning = [t for t in evals if evals[t] < 2 / 3 * expert_return] or sorted(evals)[:1]
    medium = min(learning, key=lambda t: (abs(evals[t] - expert_return / 3), t))
    return medium, evals[medium]


def collect_d4rl(
    env_id: str,
    kinds: Sequence[str] = D4RL_KINDS,
    *,
    transitions: int = 1_000_000,
    seed: int = 0,
    agent_steps: int = 1_000_000,
    cache_dir: Path,
    max_episode_steps: int = 1000,
    snapshots: int = 50,
    eval_episodes: int = 10,
    ref_episodes: int = 100,
    n_envs: int = PROTOCOL_N_ENVS,
    hyperparams: dict[str, Any] | None = None,
    num_threads: int | None = 1,
    command: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Make D4RL-style datasets for ``env_id`` in ``cache_dir``, named ``<family>-<kind>``; returns name -> path.

    One PPO behaviour agent is trained for ``agent_steps`` (rounded up to whole
    rollouts) with ``snapshots`` snapshots. **expert** records the final agent,
    **medium** the snapshot whose return is closest to a third of the expert's
    (among those before the first that reaches two thirds: PPO's return can dip
    late, and a dipped expert is not a medium policy), **medium-replay** holds
    every training episode that ended by the medium snapshot, **medium-expert**
    is medium followed by expert, **random** takes uniform random actions.
    Policies sample their actions, as D4RL's did. ``ref_scores`` are the mean
    returns of the random policy and the expert over ``ref_episodes`` episodes.

    Resumable: the agent's snapshots, evaluations and finished datasets stay in
    the cache and are reused; a dataset already there with other settings is an
    error rather than silently mixed.
    """
    import torch

    unknown = [k for k in kinds if k not in D4RL_KINDS]
    if unknown or not kinds:
        raise DtrlError(f"unknown dataset kind(s) {unknown or kinds}: choose from {', '.join(D4RL_KINDS)}")
    if min(transitions, agent_steps, snapshots, eval_episodes, ref_episodes) < 1:
        raise DtrlError("transitions, agent steps, snapshots and episode counts must be positive")
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    from dtrl.envs import check_env_id

    check_env_id(env_id)
    say = log or (lambda s: None)
    params = {**PROTOCOL_HYPERPARAMS, **(hyperparams or {})}
    rollout = n_envs * int(params["n_steps"])
    every = rollout * max(1, -(-agent_steps // rollout) // snapshots)
    agent_steps = every * -(-agent_steps // every)
    family = env_family(env_id)
    settings = {
        "env_id": env_id,
        "seed": seed,
        "agent_steps": agent_steps,
        "transitions": transitions,
        "max_episode_steps": max_episode_steps,
        "n_envs": n_envs,
        "snapshot_every": every,
        "eval_episodes": eval_episodes,
        "ref_episodes": ref_episodes,
        "hyperparams": params,
    }
    # medium-expert is made from medium and expert, which may be cached without being asked for
    needed = {*kinds, *(("medium", "expert") if "medium-expert" in kinds else ())}
    part_paths = {k: cache_dir / f"{family}-{k}{NATIVE_SUFFIX}" for k in needed}
    paths = {k: part_paths[k] for k in kinds}
    _check_cached(part_paths.values(), settings)
    todo = [k for k in kinds if not paths[k].is_file()]
    for kind in kinds:
        if kind not in todo:
            say(f"{family}-{kind}: already in the cache, kept")
    if not todo:
        return paths
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(len(_SEED_SLOTS))]
    seed_of = {k: seeds[i] for k, i in _SEED_SLOTS.items()}
    agent_dir = cache_dir / "agents" / f"{env_id.replace('/', '_')}-ppo-seed{seed}-{agent_steps}"
    agent = _AgentRecorder(env_id, agent_dir, max_episode_steps, progress)

    # 1. The behaviour agent.
    t0 = time.perf_counter()
    steps = train_protocol_agent(
        env_id,
        agent_dir,
        agent_steps,
        every,
        seed=seed_of["agent"],
        max_episode_steps=max_episode_steps,
        n_envs=n_envs,
        hyperparams=params,
        progress=progress,
        log=say,
    )
    if "train" not in agent.timings:
        agent.add_time("train", t0)
    expert = load_snapshot(agent_dir, steps[-1])

    # 2. Reference scores.
    refs = _reference_scores(agent, expert, steps[-1], seed_of, ref_episodes)
    ref_scores = {k: float(refs[k]["mean"]) for k in ("random", "expert")}
    say(f"reference scores: random {ref_scores['random']:.1f}, expert {ref_scores['expert']:.1f}")

    # 3. The medium snapshot.
    medium_steps: int | None = None
    if {"medium", "medium-replay", "medium-expert"} & set(todo):
        medium_steps, medium_return = _medium_snapshot(
            agent, steps, ref_scores["expert"], seed_of["evaluate"], eval_episodes
        )
        say(
            f"medium snapshot: {medium_steps} steps, return {medium_return:.1f} "
            f"(a third of the expert: {ref_scores['expert'] / 3:.1f})"
        )

    # 4. The datasets.
    env = make_env(env_id)
    obs_space = env.observation_space
    env.close()
    obs_space = gym.spaces.Box(obs_space.low.astype(np.float32), obs_space.high.astype(np.float32), dtype=np.float32)
    base_meta = {
        "made_by": "dtrl.collect.d4rl.collect_d4rl",
        "command": command,
        "protocol": settings,
        "algorithm": {
            "name": "PPO",
            "library": "stable-baselines3",
            "policy": "MlpPolicy",
            "vec_normalize": True,
            "why": "PPO with vector envs is ~20x faster than SAC on one CPU thread",
        },
        "agent_dir": str(agent_dir),
        "expert_steps": steps[-1],
        "medium_steps": medium_steps,
        "ref_scores_detail": refs,
        "agent_wall_time_s": agent.timings,
        "versions": versions(),
        "platform": platform.platform(),
        "num_threads": num_threads,
    }
    made: dict[str, Recording] = {}

    def source(kind: str) -> Recording:
        if kind in made:
            return made[kind]
        if kind == "medium-replay":
            assert medium_steps is not None
            return read_replay(agent_dir, medium_steps)
        if kind == "random":
            policy = uniform_batch_policy(expert.action_space, seed_of["random"])
        else:
            assert kind == "expert" or medium_steps is not None
            snap = expert if kind == "expert" else load_snapshot(agent_dir, medium_steps)
            policy = snap.batch_policy(seed=seed_of[kind])
        return agent.record(policy, f"record {family}-{kind}", seed_of[kind], num_transitions=transitions)

    for kind in todo:
        t1 = time.perf_counter()
        if kind == "medium-expert":
            parts = [
                made.get(k) or (_load_recording(part_paths[k]) if part_paths[k].is_file() else source(k))
                for k in ("medium", "expert")
            ]
            rec = Recording([e for p in parts for e in p.episodes], [o for p in parts for o in p.final_observations])
        else:
            rec = made[kind] = source(kind)
        wall = round(
            time.perf_counter() - t1 + (agent.timings.get("train", 0.0) if kind == "medium-replay" else 0.0), 1
        )
        ds = rec.dataset(
            observation_space=obs_space,
            action_space=expert.action_space,
            name=f"{family}-{kind}",
            env_id=env_id,
            ref_scores=ref_scores,
            metadata={**base_meta, "kind": kind, "family": family, "wall_time_s": wall},
        )
        ds.save(paths[kind])
        s = ds.summary()
        say(
            f"{family}-{kind}: {s['episodes']} episodes, {s['transitions']} transitions, "
            f"return mean {s['return_mean']:.1f} max {s['return_max']:.1f} -> {paths[kind]}"
        )
    return paths


def collect_random(
    env_id: str,
    episodes: int,
    *,
    seed: int = 0,
    cache_dir: Path,
    max_episode_steps: int | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Record ``episodes`` episodes of the uniformly random policy as ``<family>-random-<episodes>ep`` in
    ``cache_dir`` and return its path: no behaviour agent, so no reference scores (Key-to-Door's data).

    A dataset already there is kept when it was made with the same settings, else it is an error.
    """
    from dtrl.envs import check_env_id

    if episodes < 1:
        raise DtrlError(f"--episodes={episodes} must be a positive integer")
    check_env_id(env_id)
    family = env_family(env_id)
    name = f"{family}-random-{episodes}ep"
    path = cache_dir / f"{name}{NATIVE_SUFFIX}"
    settings = {"env_id": env_id, "seed": seed, "episodes": episodes, "max_episode_steps": max_episode_steps}
    say = log or (lambda s: None)
    if path.is_file():
        made_with = EpisodeDataset.load(path).metadata.get("settings") or {}
        if made_with != settings:
            raise DtrlError(f"{path} exists but was made with other settings: delete it, or pass another --cache-dir")
        say(f"{name}: already in the cache, kept")
        return path
    env = make_env(env_id, max_episode_steps=max_episode_steps)
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    t0 = time.perf_counter()
    rec = record_vector(
        uniform_batch_policy(action_space, seed),
        env_id,
        num_episodes=episodes,
        seed=seed,
        max_episode_steps=max_episode_steps,
    )
    meta = {
        "made_by": "dtrl.collect.d4rl.collect_random",
        "kind": "random",
        "policy": "uniform random",
        "command": command,
        "settings": settings,
        "versions": versions(),
        "platform": platform.platform(),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    ds = rec.dataset(observation_space=obs_space, action_space=action_space, name=name, env_id=env_id, metadata=meta)
    ds.save(path)
    s = ds.summary()
    say(
        f"{name}: {s['episodes']} episodes, {s['transitions']} transitions, return mean {s['return_mean']:.3f} -> {path}"
    )
    return path


def _load_recording(path: Path) -> Recording:
    ds = EpisodeDataset.load(path)
    assert ds.final_observations is not None  # recordings are saved with them
    return Recording(list(ds), list(ds.final_observations))
