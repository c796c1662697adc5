"""d3rlpy's CQL and IQL on dtrl's episodes, evaluated by dtrl's protocol (``pip install -e ".[bench]"``).

``to_mdp_dataset`` hands d3rlpy the very same episodes a Decision Transformer
trains on: every dtrl episode boundary becomes a d3rlpy boundary (a terminal
where the MDP ended, a timeout otherwise) and nothing else does. ``make_algo``
builds CQL / IQL with the hyperparameters of d3rlpy's own D4RL reproduction
scripts (``reproductions/offline/cql.py`` and ``iql.py``, d3rlpy 2.x).
``train_and_evaluate`` trains for a number of gradient steps and evaluates at
evenly spaced points with :func:`dtrl.evaluate.rollout` (the deterministic
action), the same episodes and seeds every dtrl method gets. d3rlpy is only
imported here, never by ``dtrl`` itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.data.episodes import EpisodeDataset
from dtrl.envs import reference_scores
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult, rollout

PEERS = ("cql", "iql")


def _d3rlpy() -> Any:
    try:
        import d3rlpy
        import structlog
    except ImportError:
        raise DtrlError('CQL and IQL come from d3rlpy: pip install -e ".[bench]"') from None
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # d3rlpy's per-epoch info
    return d3rlpy


def to_mdp_dataset(dataset: EpisodeDataset) -> Any:
    """A d3rlpy ``MDPDataset`` holding exactly ``dataset``'s episodes and transitions."""
    d3rlpy = _d3rlpy()
    if not isinstance(dataset.action_space, gym.spaces.Box):
        raise DtrlError(f"dataset {dataset.name!r} has discrete actions: the CQL / IQL peers here are continuous")
    last = np.zeros(len(dataset), dtype=bool)
    last[dataset.episode_starts[1:] - 1] = True
    terminals = dataset.terminations & last
    return d3rlpy.dataset.MDPDataset(
        observations=dataset.observations.reshape(len(dataset), -1).astype(np.float32),
        actions=dataset.actions.astype(np.float32),
        rewards=dataset.rewards.astype(np.float32),
        terminals=terminals.astype(np.float32),
        timeouts=(last & ~terminals).astype(np.float32),
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )


def _action_scaler(dataset: EpisodeDataset) -> Any:
    """d3rlpy's policies act in [-1, 1]; a Box with other bounds gets a min-max scaler (D4RL's gym tasks need none)."""
    space = dataset.action_space
    if np.all(space.low == -1.0) and np.all(space.high == 1.0):
        return None
    return _d3rlpy().preprocessing.MinMaxActionScaler(minimum=space.low, maximum=space.high)


def make_algo(method: str, dataset: EpisodeDataset, steps: int, device: str) -> Any:
    """CQL or IQL with d3rlpy's published D4RL settings; IQL's cosine actor schedule spans ``steps``.

    CQL: 256×256 networks, actor / critic / temperature / alpha learning rates 1e-4 / 3e-4 / 1e-4 / 3e-4,
    initial alpha e, alpha threshold 10, 10 sampled actions, batch 256, conservative weight 10 on
    ``*-medium`` data and 5 elsewhere. IQL: learning rates 3e-4, batch 256, expectile 0.7, inverse
    temperature 3, max weight 100, returns scaled to 1000 (``ReturnBasedRewardScaler``).
    """
    d3rlpy = _d3rlpy()
    scaler = _action_scaler(dataset)
    if method == "cql":
        encoder = d3rlpy.models.encoders.VectorEncoderFactory([256, 256])
        config = d3rlpy.algos.CQLConfig(
            actor_learning_rate=1e-4,
            critic_learning_rate=3e-4,
            temp_learning_rate=1e-4,
            alpha_learning_rate=3e-4,
            initial_alpha=math.e,
            actor_encoder_factory=encoder,
            critic_encoder_factory=encoder,
            batch_size=256,
            n_action_samples=10,
            alpha_threshold=10,
            conservative_weight=10.0 if dataset.name.endswith("-medium") else 5.0,
            action_scaler=scaler,
        )
    elif method == "iql":
        config = d3rlpy.algos.IQLConfig(
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            actor_optim_factory=d3rlpy.optimizers.AdamFactory(
                lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=steps)
            ),
            batch_size=256,
            weight_temp=3.0,
            max_weight=100.0,
            expectile=0.7,
            reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0),
            action_scaler=scaler,
        )
    else:
        raise DtrlError(f"unknown peer {method!r}: choose from {', '.join(PEERS)}")
    return config.create(device="cuda:0" if device.startswith("cuda") else False)


def train_and_evaluate(
    method: str,
    dataset: EpisodeDataset,
    env_id: str,
    steps: int,
    eval_points: int,
    episodes: int,
    eval_seed: int,
    seed: int,
    device: str = "cpu",
    on_eval: Callable[[int, EvalResult], None] | None = None,
) -> list[tuple[int, EvalResult]]:
    """Train ``method`` for ``steps`` gradient steps, evaluating ``eval_points`` times (the last at the end)."""
    d3rlpy = _d3rlpy()
    d3rlpy.seed(seed)
    algo = make_algo(method, dataset, steps, device)
    ref = reference_scores(env_id, dataset.ref_scores)
    per_epoch = steps // eval_points
    if per_epoch * eval_points != steps:
        raise DtrlError(f"steps={steps} must be a multiple of the {eval_points} evaluation points")
    curve = []
    fitter = algo.fitter(
        to_mdp_dataset(dataset),
        n_steps=steps,
        n_steps_per_epoch=per_epoch,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=False,
    )
    act_shape = dataset.action_space.shape
    for epoch, _ in fitter:
        returns, lengths = rollout(
            env_id,
            eval_seed + np.arange(episodes),
            lambda obs, reward: algo.predict(obs.reshape(len(obs), -1).astype(np.float32)).reshape(
                len(obs), *act_shape
            ),
        )
        result = EvalResult(None, returns, lengths, ref)
        curve.append((epoch * per_epoch, result))
        if on_eval:
            on_eval(epoch * per_epoch, result)
    return curve
