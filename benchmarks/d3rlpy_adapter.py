"""d3rlpy's CQL, IQL and Decision Transformer on dtrl's episodes, evaluated by dtrl's protocol
(``pip install -e ".[bench]"``).

``to_mdp_dataset`` hands d3rlpy the very same episodes a Decision Transformer
trains on: every dtrl episode boundary becomes a d3rlpy boundary (a terminal
where the MDP ended, a timeout otherwise) and nothing else does. ``make_algo``
builds CQL / IQL with the hyperparameters of d3rlpy's own D4RL reproduction
scripts (``reproductions/offline/cql.py`` and ``iql.py``, d3rlpy 2.x);
``make_dt`` builds d3rlpy's DT with the recipe of a dtrl ``TrainConfig`` (the
fidelity check: one recipe, two implementations). ``train_and_evaluate`` trains
for a number of gradient steps and evaluates at evenly spaced points with
:func:`dtrl.evaluate.rollout` (the deterministic action; the DT through one
d3rlpy stateful wrapper per episode), the same episodes and seeds every dtrl
method gets. d3rlpy is only imported here, never by ``dtrl`` itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dtrl.config import TrainConfig
from dtrl.data.episodes import EpisodeDataset
from dtrl.envs import reference_scores
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult, rollout
from dtrl.train.step import learning_rate_factor

PEERS = ("cql", "iql", "dt-d3rlpy")


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


def make_dt(dataset: EpisodeDataset, config: TrainConfig, device: str) -> Any:
    """d3rlpy's DecisionTransformer with ``config``'s recipe: K, depth, width, heads, activation, dropout,
    batch, AdamW (learning rate, weight decay on every parameter, gradient clip), dtrl's warm-up and decay
    (``learning_rate_factor``, the same function), returns-to-go divided by ``reward_scale``, standardised
    states, a linear state embedding and a learned timestep embedding, as dtrl's gym DT."""
    d3rlpy = _d3rlpy()
    model = config.model
    if model.kind != "transformer" or model.token_mixer != "attention" or model.stochastic_policy:
        raise DtrlError("d3rlpy's DT mirrors dtrl's plain DT only (attention, deterministic head)")

    @dataclasses.dataclass()
    class DtrlSchedule(d3rlpy.optimizers.LRSchedulerFactory):
        def create(self, optim: Any) -> Any:
            return torch.optim.lr_scheduler.LambdaLR(optim, lambda step: learning_rate_factor(step, config))

        @staticmethod
        def get_type() -> str:
            return "dtrl"

    return d3rlpy.algos.DecisionTransformerConfig(
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        context_size=model.context_length,
        max_timestep=model.max_episode_length + 1,  # d3rlpy counts timesteps from 1
        num_heads=model.n_head,
        num_layers=model.n_layer,
        attn_dropout=model.dropout,
        resid_dropout=model.dropout,
        embed_dropout=model.dropout,
        activation_type=model.activation,
        encoder_factory=d3rlpy.models.VectorEncoderFactory([model.n_embd], exclude_last_activation=True),
        optim_factory=d3rlpy.optimizers.AdamWFactory(
            weight_decay=config.weight_decay,
            betas=tuple(config.betas),
            clip_grad_norm=config.grad_clip or None,
            lr_scheduler_factory=DtrlSchedule(),
        ),
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(1.0 / config.reward_scale),
        action_scaler=_action_scaler(dataset),
    ).create(device="cuda:0" if device.startswith("cuda") else False)


def _dt_actor(algo: Any, target: float, count: int, act_shape: tuple[int, ...]) -> Any:
    """A batched ``act(obs, reward)`` over one d3rlpy stateful wrapper per parallel episode."""
    wrappers = [algo.as_stateful_wrapper(target_return=target) for _ in range(count)]
    first = [True]

    def act(obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        rewards = np.zeros(count) if first[0] else reward  # the wrapper's first call gets no reward yet
        first[0] = False
        flat = obs.reshape(count, -1).astype(np.float32)
        return np.stack([w.predict(o, float(r)) for w, o, r in zip(wrappers, flat, rewards)]).reshape(count, *act_shape)

    return act


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
    final_episodes: int = 0,
    dt_config: TrainConfig | None = None,
    target: float = 0.0,
) -> tuple[list[tuple[int, EvalResult]], float]:
    """Train ``method`` for ``steps`` gradient steps, evaluating ``eval_points`` times (the last at the end) on
    ``episodes`` episodes (the last time ``final_episodes``, when given): the curve and the seconds spent training
    alone. ``dt-d3rlpy`` takes its recipe from ``dt_config`` and acts conditioned on ``target``."""
    d3rlpy = _d3rlpy()
    d3rlpy.seed(seed)
    if method == "dt-d3rlpy":
        if dt_config is None:
            raise DtrlError("dt-d3rlpy needs the dtrl config whose recipe it mirrors")
        algo = make_dt(dataset, dt_config, device)
    else:
        algo = make_algo(method, dataset, steps, device)
    ref = reference_scores(env_id, dataset.ref_scores)
    per_epoch = steps // eval_points
    if per_epoch * eval_points != steps:
        raise DtrlError(f"steps={steps} must be a multiple of the {eval_points} evaluation points")
    curve: list[tuple[int, EvalResult]] = []
    act_shape = dataset.action_space.shape
    evaluating = [0.0]

    def act(obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        return algo.predict(obs.reshape(len(obs), -1).astype(np.float32)).reshape(len(obs), *act_shape)

    def evaluate_at(step: int) -> None:
        tick = time.perf_counter()
        count = final_episodes if final_episodes and step == steps else episodes
        actor = _dt_actor(algo, target, count, act_shape) if method == "dt-d3rlpy" else act
        returns, lengths = rollout(env_id, eval_seed + np.arange(count), actor)
        result = EvalResult(None, returns, lengths, ref)
        curve.append((step, result))
        if on_eval:
            on_eval(step, result)
        evaluating[0] += time.perf_counter() - tick

    options = {"n_steps": steps, "n_steps_per_epoch": per_epoch, "show_progress": False,
               "logger_adapter": d3rlpy.logging.NoopAdapterFactory()}  # fmt: skip
    start = time.perf_counter()
    if method == "dt-d3rlpy":  # transformers have no fitter: evaluate from the per-step callback
        algo.fit(to_mdp_dataset(dataset), **options, save_interval=steps + 1,
                 callback=lambda _algo, _epoch, step: evaluate_at(step) if step % per_epoch == 0 else None)  # fmt: skip
    else:
        for epoch, _ in algo.fitter(to_mdp_dataset(dataset), **options):
            evaluate_at(epoch * per_epoch)
    return curve, time.perf_counter() - start - evaluating[0]
