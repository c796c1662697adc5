"""Collect offline datasets: train a behaviour agent, roll out its snapshots, record episodes.

The recipe follows D4RL's mixed-quality datasets (``medium-replay``,
``medium-expert``): train one online agent, keep snapshots of its policy at
several points of training, roll each snapshot out (sampling from its action
distribution, so returns vary within a snapshot as well as between them), and
add episodes of a uniformly random policy. The three building blocks are
reusable on their own:

* :func:`train_behaviour_agent` trains a stable-baselines3 agent (PPO or SAC) on
  a gymnasium env and returns :class:`Snapshot` objects taken at chosen timesteps;
* :func:`record_episodes` rolls out any ``obs -> action`` callable and returns
  :class:`~dtrl.data.episodes.Episode` objects, with time-limit truncation
  recorded apart from termination;
* :func:`make_quickstart_dataset` builds the small Hopper dataset shipped as
  ``dtrl/assets/quickstart.npz`` for ``dtrl quickstart``;
* :func:`collect_d4rl` (``dtrl data collect``) makes D4RL's five gym datasets
  (random, medium, medium-replay, expert, medium-expert) for any gymnasium
  env into the dataset cache (:mod:`dtrl.data.cache`), resumably, recording
  with :func:`record_vector` (many envs, one batched policy call per step).

stable-baselines3 is an optional dependency (``pip install 'dtrl[collect]'``);
it is imported only by the functions that train or wrap an SB3 policy.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import gymnasium as gym
import numpy as np

from dtrl.errors import DtrlError
from dtrl.data.episodes import NATIVE_SUFFIX, Episode, EpisodeDataset
from dtrl.io import atomic_save, atomic_write, write_json

PolicyFn = Callable[[np.ndarray], Any]
#: Maps a batch of observations (B, *obs_shape) to a batch of actions.
BatchPolicyFn = Callable[[np.ndarray], np.ndarray]

#: The path of the shipped quickstart dataset.
QUICKSTART_PATH = Path(__file__).resolve().parent.parent / "assets" / "quickstart.npz"


# --------------------------------------------------------------------------- rollouts
def make_env(
    env_id: str, max_episode_steps: int | None = None, env_kwargs: dict[str, Any] | None = None
) -> gym.Env:
    """``gym.make`` with a one-line :class:`DtrlError` for an unknown or unusable env id."""
    try:
        return gym.make(env_id, max_episode_steps=max_episode_steps, **(env_kwargs or {}))
    except gym.error.Error as e:
        raise DtrlError(f"cannot make environment {env_id!r}: {e}") from None
    except ImportError as e:
        raise DtrlError(
            f"environment {env_id!r} needs a package that is not installed ({e}); "
            "for MuJoCo envs: pip install 'gymnasium[mujoco]'"
        ) from None


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
    if (num_transitions is None) == (num_episodes is None):
        raise DtrlError("record_episodes needs exactly one of num_transitions and num_episodes")
    budget = num_transitions if num_transitions is not None else num_episodes
    if budget is None or budget < 1:
        raise DtrlError(f"record_episodes needs a positive budget, got {budget}")

    env = make_env(env_id, max_episode_steps=max_episode_steps, env_kwargs=env_kwargs)
    if action_dtype is None:
        action_dtype = env.action_space.dtype if env.action_space.dtype is not None else np.float32
    episodes: list[Episode] = []
    collected = 0
    try:
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        while True:
            obs_l, act_l, rew_l, term_l, trunc_l = [], [], [], [], []
            while True:
                action = policy_fn(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                obs_l.append(np.asarray(obs))
                act_l.append(np.asarray(action))
                rew_l.append(float(reward))
                term_l.append(bool(terminated))
                trunc_l.append(bool(truncated))
                obs = next_obs
                if terminated or truncated:
                    break
            episodes.append(
                Episode(
                    observations=np.asarray(obs_l, dtype=obs_dtype),
                    actions=np.asarray(act_l, dtype=action_dtype),
                    rewards=np.asarray(rew_l, dtype=np.float32),
                    terminations=np.asarray(term_l, dtype=bool),
                    truncations=np.asarray(trunc_l, dtype=bool),
                )
            )
            collected += len(obs_l) if num_transitions is not None else 1
            if collected >= budget:
                return episodes
            obs, _ = env.reset()
    finally:
        env.close()


def random_policy(action_space: gym.Space, seed: int = 0) -> PolicyFn:
    """A uniformly random policy over ``action_space`` with its own seeded stream."""
    space = copy.deepcopy(action_space)
    space.seed(seed)
    return lambda obs: space.sample()


def episode_returns(episodes: Sequence[Episode]) -> np.ndarray:
    return np.array([e.total_return for e in episodes], dtype=np.float64)


def evaluate_policy(
    policy_fn: PolicyFn, env_id: str, num_episodes: int, seed: int = 0, **kwargs: Any
) -> np.ndarray:
    """Undiscounted returns of ``num_episodes`` episodes of ``policy_fn``."""
    return episode_returns(record_episodes(policy_fn, env_id, num_episodes=num_episodes, seed=seed, **kwargs))


def _stats(returns: np.ndarray) -> dict[str, float]:
    return {
        "min": round(float(np.min(returns)), 2),
        "mean": round(float(np.mean(returns)), 2),
        "std": round(float(np.std(returns)), 2),
        "max": round(float(np.max(returns)), 2),
    }


# --------------------------------------------------------------------------- behaviour agent
def _import_sb3() -> Any:
    try:
        import stable_baselines3
    except ImportError:
        raise DtrlError(
            "training a behaviour agent needs stable-baselines3, which is not installed: "
            "pip install 'dtrl[collect]'"
        ) from None
    return stable_baselines3


@dataclass
class Snapshot:
    """A frozen copy of an SB3 policy taken during training.

    ``obs_mean`` / ``obs_var`` are the ``VecNormalize`` observation statistics
    at that point (``None`` when observations were not normalised): the policy
    sees ``clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs)``.
    """

    timesteps: int
    sb3_policy: Any  # a stable_baselines3 BasePolicy, in eval mode
    action_space: gym.Space
    obs_mean: np.ndarray | None = None
    obs_var: np.ndarray | None = None
    clip_obs: float = 10.0
    epsilon: float = 1e-8
    train_return: float | None = None  # mean of the last training episodes when taken
    eval_return: float | None = None  # filled in by whoever evaluates it
    path: Path | None = None  # where it was saved, if it was

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if self.obs_mean is None:
            return obs
        z = (obs - self.obs_mean) / np.sqrt(self.obs_var + self.epsilon)
        return np.clip(z, -self.clip_obs, self.clip_obs).astype(np.float32)

    def policy(self, deterministic: bool = False, noise_std: float = 0.0, seed: int = 0) -> PolicyFn:
        """An ``obs -> action`` callable.

        ``deterministic=True`` takes the mode of the action distribution;
        otherwise actions are sampled from it with a numpy generator seeded by
        ``seed`` (not torch's global generator, so rollouts are reproducible on
        their own). ``noise_std`` adds Gaussian noise of that standard deviation
        (in units of the action range's half-width) on top. Box actions are
        clipped to the action space.
        """
        import torch
        from stable_baselines3.common.distributions import (
            CategoricalDistribution,
            DiagGaussianDistribution,
        )
        from stable_baselines3.common.policies import ActorCriticPolicy

        rng = np.random.default_rng(seed)
        policy = self.sb3_policy
        space = self.action_space
        is_box = isinstance(space, gym.spaces.Box)
        if is_box:
            low, high = space.low.astype(np.float64), space.high.astype(np.float64)
            half = np.where(np.isfinite(high - low), (high - low) / 2.0, 1.0)

        def act(obs: np.ndarray) -> Any:
            x = torch.as_tensor(self.normalize(obs)[None])
            with torch.no_grad():
                dist = policy.get_distribution(x) if isinstance(policy, ActorCriticPolicy) else None
                if isinstance(dist, DiagGaussianDistribution) and not deterministic:
                    mean = dist.distribution.mean[0].numpy().astype(np.float64)
                    std = dist.distribution.stddev[0].numpy().astype(np.float64)
                    a = mean + std * rng.standard_normal(mean.shape)
                elif isinstance(dist, CategoricalDistribution) and not deterministic:
                    p = dist.distribution.probs[0].numpy().astype(np.float64)
                    return int(rng.choice(len(p), p=p / p.sum()))
                else:
                    a, _ = policy.predict(self.normalize(obs), deterministic=True)
                    if not is_box:
                        return int(a)
                    a = np.asarray(a, dtype=np.float64)
            if noise_std > 0:
                a = a + noise_std * half * rng.standard_normal(a.shape)
            return np.clip(a, low, high).astype(space.dtype)

        return act

    def batch_policy(self, deterministic: bool = False, seed: int = 0) -> BatchPolicyFn:
        """Like :meth:`policy` for a batch of observations (one network call per batch, for vector rollouts).

        Gaussian (PPO) policies sample with a numpy generator seeded by ``seed``;
        other policies fall back to SB3's ``predict``.
        """
        import torch
        from stable_baselines3.common.distributions import DiagGaussianDistribution
        from stable_baselines3.common.policies import ActorCriticPolicy

        rng = np.random.default_rng(seed)
        policy, space = self.sb3_policy, self.action_space

        def act(obs: np.ndarray) -> np.ndarray:
            x = self.normalize(obs)
            with torch.no_grad():
                dist = policy.get_distribution(torch.as_tensor(x)) if isinstance(policy, ActorCriticPolicy) else None
                if isinstance(dist, DiagGaussianDistribution) and isinstance(space, gym.spaces.Box):
                    mean = dist.distribution.mean.numpy().astype(np.float64)
                    a = mean
                    if not deterministic:
                        a = mean + dist.distribution.stddev.numpy() * rng.standard_normal(mean.shape)
                    return np.clip(a, space.low, space.high).astype(space.dtype)
            a, _ = policy.predict(x, deterministic=deterministic)
            return np.asarray(a)

        return act


#: Hyperparameters for :func:`train_behaviour_agent`, per algorithm. PPO's are
#: SB3's defaults (the PPO paper's MuJoCo settings) spread over ``n_envs``
#: environments; SAC's are SB3's defaults.
DEFAULT_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 512, "batch_size": 64, "n_epochs": 10, "learning_rate": 3e-4,
            "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.0},
    "sac": {"learning_starts": 10_000, "batch_size": 256, "learning_rate": 3e-4},
}


def train_behaviour_agent(
    env_id: str,
    total_timesteps: int,
    snapshot_timesteps: Sequence[int],
    *,
    algo: str = "ppo",
    seed: int = 0,
    n_envs: int = 4,
    normalize: bool | None = None,
    hyperparams: dict[str, Any] | None = None,
    save_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Snapshot]:
    """Train an SB3 agent on ``env_id`` and return snapshots taken along the way.

    A snapshot is taken as soon as the training timestep count reaches each
    entry of ``snapshot_timesteps`` (the env steps taken so far, over all
    ``n_envs`` envs); a timestep beyond ``total_timesteps`` never is.
    ``normalize`` wraps the vector env in ``VecNormalize`` (observations and
    rewards; on by default for PPO, off for SAC); the snapshot keeps the
    observation statistics of its moment. ``hyperparams`` update
    :data:`DEFAULT_HYPERPARAMS`. With ``save_dir``, each snapshot is also saved
    as ``step_<N>.zip`` (SB3's format) plus ``step_<N>_vecnormalize.pkl``.
    ``log`` receives one line per snapshot.
    """
    sb3 = _import_sb3()
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    algo = algo.lower()
    algos = {"ppo": sb3.PPO, "sac": sb3.SAC}
    if algo not in algos:
        raise DtrlError(f"unknown algorithm {algo!r}: choose one of {sorted(algos)}")
    if normalize is None:
        normalize = algo == "ppo"
    params = {**DEFAULT_HYPERPARAMS[algo], **(hyperparams or {})}
    targets = sorted({int(t) for t in snapshot_timesteps if 0 < int(t) <= total_timesteps})
    if not targets:
        raise DtrlError("train_behaviour_agent needs at least one snapshot timestep in (0, total_timesteps]")
    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)

    try:
        venv = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    except gym.error.Error as e:
        raise DtrlError(f"cannot make environment {env_id!r}: {e}") from None
    if normalize:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=params.get("gamma", 0.99))
    model = algos[algo]("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **params)
    snapshots: list[Snapshot] = []
    start = time.perf_counter()

    class _SnapshotCallback(BaseCallback):
        def _on_step(self) -> bool:
            while targets and self.num_timesteps >= targets[0]:
                targets.pop(0)
                snapshots.append(self._take())
            return True

        def _take(self) -> Snapshot:
            infos = [ep["r"] for ep in model.ep_info_buffer or []]
            snap = Snapshot(
                timesteps=int(self.num_timesteps),
                sb3_policy=copy.deepcopy(model.policy).eval(),
                action_space=model.action_space,
                train_return=float(np.mean(infos)) if infos else None,
            )
            if normalize:
                snap.obs_mean = venv.obs_rms.mean.astype(np.float32).copy()
                snap.obs_var = venv.obs_rms.var.astype(np.float32).copy()
                snap.clip_obs, snap.epsilon = float(venv.clip_obs), float(venv.epsilon)
            if save_dir is not None:
                snap.path = save_dir / f"step_{snap.timesteps}.zip"
                model.save(snap.path)
                if normalize:
                    venv.save(str(save_dir / f"step_{snap.timesteps}_vecnormalize.pkl"))
            if log is not None:
                tr = "n/a" if snap.train_return is None else f"{snap.train_return:.1f}"
                log(
                    f"[{algo} {env_id}] snapshot at {snap.timesteps} steps, "
                    f"training return {tr}, {time.perf_counter() - start:.0f}s"
                )
            return snap

    model.learn(total_timesteps=total_timesteps, callback=_SnapshotCallback())
    venv.close()
    return snapshots


# --------------------------------------------------------------------------- quickstart dataset
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
            {"name": f"learning-{round(100 * f)}", "fraction": f, "transitions": round(1_500 + 9_000 * f),
             "deterministic": True, "noise_std": 0.1}
            for f in LEARNING_FRACTIONS
        ),
        # The best policy at three noise levels: its own returns, and graded falls from them.
        {"name": "best", "fraction": 1.0, "transitions": 24_000, "deterministic": True, "noise_std": 0.1},
        {"name": "best-noise-0.2", "fraction": 1.0, "transitions": 8_000, "deterministic": True, "noise_std": 0.2},
        {"name": "best-noise-0.3", "fraction": 1.0, "transitions": 5_000, "deterministic": True, "noise_std": 0.3},
    ],  # fmt: skip
    "random_ref_episodes": 100,
    "expert_ref_episodes": 20,
}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("dtrl", "gymnasium", "mujoco", "stable-baselines3", "torch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


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
            evaluate_policy(snap.policy(deterministic=True), env_id, int(r["eval_episodes_per_snapshot"]), eval_seed).mean()
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
        say(f"source {src['name']}: {info['episodes']} episodes, {info['transitions']} transitions, returns {info['returns']}")
    t_record = time.perf_counter() - t0 - t_train - t_eval

    # 4. Reference scores.
    random_ref = evaluate_policy(random_policy(action_space, next(seeds)), env_id, int(r["random_ref_episodes"]), next(seeds))
    expert_ref = evaluate_policy(best.policy(deterministic=True), env_id, int(r["expert_ref_episodes"]), next(seeds))
    ref_scores = {"random": float(random_ref.mean()), "expert": float(expert_ref.mean())}
    say(f"reference scores: {ref_scores}")
    wall = time.perf_counter() - t0

    algo_params = {**DEFAULT_HYPERPARAMS[r["algo"]], **(r.get("hyperparams") or {})}
    metadata = {
        "made_by": "dtrl.data.collect.make_quickstart_dataset",
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
            "random": {"policy": "uniform random", "episodes": len(random_ref), **_stats(random_ref)},
            "expert": {
                "policy": f"best snapshot ({best.timesteps} steps), deterministic",
                "episodes": len(expert_ref),
                **_stats(expert_ref),
            },
        },
        "wall_time_s": {
            "train": round(t_train, 1),
            "evaluate_snapshots": round(t_eval, 1),
            "record": round(t_record, 1),
            "total": round(wall, 1),
        },
        "num_threads": num_threads,
        "versions": _versions(),
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
        "policy": "uniform random" if snap is None else f"{algo} snapshot, {'mean' if deterministic else 'sampled'} actions",
        "snapshot_timesteps": None if snap is None else snap.timesteps,
        "snapshot_deterministic_return": None if snap is None else round(snap.eval_return, 2),
        "noise_std": float(src.get("noise_std", 0.0)),
        "seed": seed,
        "episodes": len(eps),
        "transitions": int(sum(len(e) for e in eps)),
        "returns": _stats(episode_returns(eps)),
    }
    return eps, info


# --------------------------------------------------------------------------- D4RL protocol
#: The dataset kinds of D4RL's gym locomotion tasks, in the order they are made.
D4RL_KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
#: PPO settings of the D4RL-protocol behaviour agent: SB3's defaults (a 2048-step rollout, batch 64,
#: 10 epochs) spread over 8 envs. PPO rather than D4RL's SAC: on one CPU thread SB3 PPO with vector
#: envs runs at about 1,000-1,600 env steps/s here against about 60 for SAC.
PROTOCOL_HYPERPARAMS: dict[str, Any] = {**DEFAULT_HYPERPARAMS["ppo"], "n_steps": 256}
PROTOCOL_N_ENVS = 8
_FINAL_OBS = "dtrl_final_observation"
# Fixed positions in the seed sequence, so that one kind made alone equals the same kind made with others.
_SEED_SLOTS = {"agent": 0, "evaluate": 1, "ref-random": 2, "ref-expert": 3, "random": 4, "medium": 5, "expert": 6}

Progress = Callable[[str, int, int], None]


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
    if (num_transitions is None) == (num_episodes is None):
        raise DtrlError("record_vector needs exactly one of num_transitions and num_episodes")
    budget = int(num_transitions if num_transitions is not None else num_episodes)  # type: ignore[arg-type]
    if budget < 1:
        raise DtrlError(f"record_vector needs a positive budget, got {budget}")
    n = min(n_envs, budget) if num_episodes is not None else n_envs
    envs = [make_env(env_id, max_episode_steps=max_episode_steps) for _ in range(n)]
    act_dtype = envs[0].action_space.dtype or np.float32
    seeds = np.random.SeedSequence(seed).generate_state(n)
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
                        np.asarray(o, dtype=np.float32), np.asarray(a, dtype=act_dtype),
                        np.asarray(r, dtype=np.float32), np.asarray(te, dtype=bool), np.asarray(tr, dtype=bool),
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
                        Episode(np.asarray(o), np.asarray(a), np.asarray(r, dtype=np.float32),
                                ends & (not truncated), ends & truncated)
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
    _import_sb3()
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
            env_id, n_envs=n_envs, seed=seed + start, wrapper_class=_FinalObservation,
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


def _read_replay(agent_dir: Path, upto: int) -> Recording:
    """The training episodes that ended by step ``upto``, in the order they ended."""
    rec = Recording([], [])
    for t in (t for t in _snapshot_steps(agent_dir) if t <= upto):
        path = agent_dir / f"replay_{t}.npz"
        with np.load(path) as z:
            if "empty" in z.files:
                continue
        chunk = EpisodeDataset.load(path)
        rec.episodes.extend(chunk)
        rec.final_observations.extend(chunk.final_observations)  # type: ignore[arg-type]
    return rec


def env_family(env_id: str) -> str:
    """``Hopper-v5`` -> ``hopper``: the prefix of the cached datasets' names."""
    return env_id.split("/")[-1].split("-")[0].lower()


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


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
        self.timings: dict[str, float] = _json(self.agent_dir / "timings.json")

    def record(self, policy: BatchPolicyFn, stage: str, seed: int, **budget: int) -> Recording:
        """Record ``num_transitions`` or ``num_episodes`` with :func:`record_vector`, reporting ``stage``."""
        progress, total = self.progress, budget.get("num_transitions") or budget["num_episodes"]
        report = (lambda done: progress(stage, min(done, total), total)) if progress and "num_transitions" in budget else None
        rec = record_vector(policy, self.env_id, seed=seed, max_episode_steps=self.max_episode_steps,
                            on_progress=report, **budget)
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
    refs = _json(agent.agent_dir / "ref_scores.json")
    if refs:
        return refs
    t0 = time.perf_counter()
    rand = agent.returns(uniform_batch_policy(expert.action_space, seed_of["ref-random"]), "reference: random",
                         seed_of["ref-random"], episodes)
    exp = agent.returns(expert.batch_policy(seed=seed_of["ref-expert"]), "reference: expert", seed_of["ref-expert"], episodes)
    refs = {
        "random": {"policy": "uniform random", "episodes": len(rand), **_stats(rand)},
        "expert": {"policy": f"final agent ({expert_steps} steps), sampled actions", "episodes": len(exp), **_stats(exp)},
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
    evals = {int(k): v for k, v in _json(path).items()}
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
        "env_id": env_id, "seed": seed, "agent_steps": agent_steps, "transitions": transitions,
        "max_episode_steps": max_episode_steps, "n_envs": n_envs, "snapshot_every": every,
        "eval_episodes": eval_episodes, "ref_episodes": ref_episodes, "hyperparams": params,
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
        env_id, agent_dir, agent_steps, every, seed=seed_of["agent"], max_episode_steps=max_episode_steps,
        n_envs=n_envs, hyperparams=params, progress=progress, log=say,
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
        medium_steps, medium_return = _medium_snapshot(agent, steps, ref_scores["expert"], seed_of["evaluate"], eval_episodes)
        say(f"medium snapshot: {medium_steps} steps, return {medium_return:.1f} "
            f"(a third of the expert: {ref_scores['expert'] / 3:.1f})")

    # 4. The datasets.
    env = make_env(env_id)
    obs_space = env.observation_space
    env.close()
    obs_space = gym.spaces.Box(obs_space.low.astype(np.float32), obs_space.high.astype(np.float32), dtype=np.float32)
    base_meta = {
        "made_by": "dtrl.data.collect.collect_d4rl",
        "command": command,
        "protocol": settings,
        "algorithm": {"name": "PPO", "library": "stable-baselines3", "policy": "MlpPolicy",
                      "vec_normalize": True, "why": "PPO with vector envs is ~20x faster than SAC on one CPU thread"},
        "agent_dir": str(agent_dir),
        "expert_steps": steps[-1],
        "medium_steps": medium_steps,
        "ref_scores_detail": refs,
        "agent_wall_time_s": agent.timings,
        "versions": _versions(),
        "platform": platform.platform(),
        "num_threads": num_threads,
    }
    made: dict[str, Recording] = {}

    def source(kind: str) -> Recording:
        if kind in made:
            return made[kind]
        if kind == "medium-replay":
            assert medium_steps is not None
            return _read_replay(agent_dir, medium_steps)
        if kind == "random":
            policy = uniform_batch_policy(expert.action_space, seed_of["random"])
        else:
            snap = expert if kind == "expert" else load_snapshot(agent_dir, medium_steps)  # type: ignore[arg-type]
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
        wall = round(time.perf_counter() - t1 + (agent.timings.get("train", 0.0) if kind == "medium-replay" else 0.0), 1)
        ds = rec.dataset(
            observation_space=obs_space, action_space=expert.action_space, name=f"{family}-{kind}", env_id=env_id,
            ref_scores=ref_scores, metadata={**base_meta, "kind": kind, "family": family, "wall_time_s": wall},
        )
        ds.save(paths[kind])
        s = ds.summary()
        say(f"{family}-{kind}: {s['episodes']} episodes, {s['transitions']} transitions, "
            f"return mean {s['return_mean']:.1f} max {s['return_max']:.1f} -> {paths[kind]}")
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
        uniform_batch_policy(action_space, seed), env_id, num_episodes=episodes, seed=seed,
        max_episode_steps=max_episode_steps,
    )
    meta = {
        "made_by": "dtrl.data.collect.collect_random", "kind": "random", "policy": "uniform random",
        "command": command, "settings": settings, "versions": _versions(), "platform": platform.platform(),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    ds = rec.dataset(observation_space=obs_space, action_space=action_space, name=name, env_id=env_id, metadata=meta)
    ds.save(path)
    s = ds.summary()
    say(f"{name}: {s['episodes']} episodes, {s['transitions']} transitions, return mean {s['return_mean']:.3f} -> {path}")
    return path


def _load_recording(path: Path) -> Recording:
    ds = EpisodeDataset.load(path)
    return Recording(list(ds), list(ds.final_observations))  # type: ignore[arg-type]
