"""Online fine-tuning of a Decision Transformer: the Online Decision Transformer (Zheng et al. 2022).

A DT with a stochastic policy (``model.stochastic_policy=true``) is pre-trained
offline as usual, then fine-tuned in the simulator. Each iteration

1. rolls out a few episodes, sampling actions from the policy while it is
   conditioned on an optimistic online target return;
2. adds them, whole, to a first-in-first-out replay buffer of trajectories that
   starts with the best offline trajectories;
3. takes gradient steps on length-K segments of the buffer with the offline
   loss (NLL − α·entropy, learned temperature).

Hindsight return relabelling: a trajectory enters the buffer with the rewards it
actually earned, and its returns-to-go are recomputed from them, so the model
learns which return its own behaviour achieves rather than the target it was
asked for. The offline model and the fine-tuned one are evaluated with the mean
action on the same evaluation seeds; rollouts use seeds drawn away from those.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import yaml

from dtrl.checkpoint import (
    PolicySpec,
    latest_checkpoint,
    load_policy_files,
    load_train_state,
    save_checkpoint,
)
from dtrl.config import FinetuneConfig, TrainConfig
from dtrl.data.episodes import Episode, EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler
from dtrl.data.spaces import space_from_dict
from dtrl.envs import check_env_id
from dtrl.errors import DtrlError
from dtrl.evaluate import EpisodeRecorder, EvalResult, evaluate, rollout
from dtrl.io import atomic_write, write_json
from dtrl.models import DecisionTransformer
from dtrl.models.gaussian import temperature
from dtrl.policy import DecisionTransformerPolicy, pick_device
from dtrl.runfiles import FINETUNE_CONFIG_FILE, FINETUNE_REPORT_FILE, TRAIN_STATE_FILE
from dtrl.runs import training_config
from dtrl.tracking import write_run_info
from dtrl.train.logger import MetricsLogger
from dtrl.train.step import Diverged, build_optimizer, stochastic_action_loss, train_step

ROLLOUT_SEED_BASE = 1_000_000
"""Rollout episodes are seeded from here up, well away from evaluation seeds (0, 1, ...)."""


class TrajectoryBuffer:
    """Whole trajectories, first in first out, with returns-to-go relabelled from the rewards earned."""

    def __init__(self, capacity: int, offline: Sequence[Episode] = ()) -> None:
        """Start from the ``capacity`` highest-return ``offline`` trajectories (ODT's initialisation)."""
        best = sorted(offline, key=lambda e: e.total_return)[-capacity:]
        self.episodes: deque[Episode] = deque(best, maxlen=capacity)

    def add(self, episodes: Sequence[Episode]) -> None:
        """Append new trajectories; the oldest drop out once the buffer is full."""
        self.episodes.extend(episodes)

    def __len__(self) -> int:
        return len(self.episodes)

    def dataset(self, observation_space: gym.Space, action_space: gym.Space) -> EpisodeDataset:
        """The buffer as a dataset: its returns-to-go come from each trajectory's own rewards."""
        return EpisodeDataset.from_episodes(list(self.episodes), observation_space, action_space, name="replay")


def collect(
    model: DecisionTransformer,
    spec: PolicySpec,
    env_id: str,
    target_return: float,
    seeds: Sequence[int],
    generator: torch.Generator,
    max_steps: int | None = None,
) -> list[Episode]:
    """One episode per seed, in parallel, with actions sampled from the stochastic policy.

    The policy (:class:`~dtrl.policy.DecisionTransformerPolicy` in sampling mode) sees the
    last K steps and a return-to-go that starts at ``target_return`` and drops by each
    reward; episodes are cut (truncated) after ``max_steps`` steps. The episodes record
    env-unit actions and the rewards earned, never the conditioning target.
    """
    check_env_id(env_id)  # a one-line error for an unknown id; registers the ALE games
    limit = gym.spec(env_id).max_episode_steps or spec.model.max_episode_length
    policy = DecisionTransformerPolicy(model, spec, next(model.parameters()).device)
    policy.sample_actions(generator=generator)
    policy.reset(target_return, num_envs=len(seeds))
    recorder = EpisodeRecorder()
    rollout(
        env_id,
        seeds,
        policy.act,
        partial(policy.check_env, env_id=env_id),
        max_episode_steps=min(limit, max_steps or limit),
        record=recorder,
    )
    return recorder.episodes()


def online_optimizer(
    model: DecisionTransformer, directory: Path, config: FinetuneConfig
) -> tuple[TrainConfig, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimisation of the online updates: a fresh AdamW at ``config.learning_rate`` with no warm-up,
    or with ``continue_optimizer`` the checkpoint's own optimizer and schedule, continued (ODT keeps its
    LAMB, temperature Adam and warm-up schedule from pre-training into fine-tuning)."""
    if not config.continue_optimizer:
        train_config = TrainConfig(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay, warmup_steps=0,
            batch_size=config.batch_size, grad_clip=config.grad_clip,
        )  # fmt: skip
        return (train_config, *build_optimizer(model, train_config))  # no warm-up: a constant learning rate
    run_config = training_config(directory)
    if run_config is None or not (directory / TRAIN_STATE_FILE).is_file():
        raise DtrlError(
            f"{directory} is not a training checkpoint (no training config or {TRAIN_STATE_FILE}), so it has no "
            "optimizer to continue: point at a run directory or checkpoint, or drop --continue-optimizer"
        )
    train_config = dataclasses.replace(
        run_config, batch_size=config.batch_size, grad_clip=config.grad_clip, precision="fp32", compile=False
    )
    optimizer, scheduler = build_optimizer(model, train_config)
    state = load_train_state(directory)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return train_config, optimizer, scheduler


@dataclass
class FinetuneResult:
    out_dir: Path
    checkpoint: Path
    offline: list[EvalResult]
    online: list[EvalResult]
    env_steps: int
    updates: int
    rollout_returns: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "offline": [r.to_dict() for r in self.offline],
            "online": [r.to_dict() for r in self.online],
            "rollout_returns": self.rollout_returns,
        }


def finetune(
    checkpoint: str | Path,
    config: FinetuneConfig,
    offline_data: EpisodeDataset,
    on_progress: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``checkpoint`` online for ``config.steps`` environment steps; write a run into ``config.out_dir``.

    ``on_progress(env_steps, last_rollout_return)`` is called after each round of rollouts.
    """
    config.validate()
    spec, weights, directory = load_policy_files(checkpoint)
    if not spec.model.stochastic_policy:
        raise DtrlError(
            f"{directory} has a deterministic action head: Online DT fine-tuning needs a policy trained with "
            "model.stochastic_policy=true"
        )
    env_id = config.env or spec.env_id
    if not env_id:
        raise DtrlError(f"{directory} records no environment: pass --env ID")
    out_dir = Path(config.out_dir)
    if latest_checkpoint(out_dir) is not None:
        raise DtrlError(f"{out_dir} already holds checkpoints: choose another --out-dir")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = DecisionTransformer(spec.model).to(device)
    model.load_state_dict(weights)
    train_config, optimizer, scheduler = online_optimizer(model, directory, config)
    spec.env_id = env_id
    eval_target = float(offline_data.episode_returns.max()) if config.eval_target is None else config.eval_target
    online_target = eval_target + abs(eval_target) if config.target_return is None else config.target_return

    def run_eval() -> list[EvalResult]:
        policy = DecisionTransformerPolicy(model, spec, device)
        return evaluate(policy, env_id, [eval_target], config.eval_episodes, seed=config.eval_seed)

    offline = run_eval()  # also checks that the env fits the checkpoint
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(directory), "dataset": offline_data.name, **asdict(config)}
    record.update(env=env_id, target_return=online_target, eval_target=eval_target)
    atomic_write(out_dir / FINETUNE_CONFIG_FILE, lambda f: f.write(yaml.safe_dump(record, sort_keys=False).encode()))
    write_run_info(out_dir)

    normalizer = Normalizer.from_dict(spec.normalizer)
    obs_space, act_space = space_from_dict(spec.observation_space), space_from_dict(spec.action_space)
    buffer = TrajectoryBuffer(config.buffer_size, list(offline_data))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    # never more episodes than steps, so seeds of different runs' rollouts never overlap
    seeds = ROLLOUT_SEED_BASE + config.seed * max(100_000, config.steps) + np.arange(config.steps)
    logger = MetricsLogger(out_dir)
    logger.log(0, {f"eval/return_mean@{eval_target:g}": offline[0].mean})
    env_steps = updates = episodes_done = 0
    rollout_returns: list[float] = []
    sampler_state = None
    next_eval = config.eval_every
    try:
        while env_steps < config.steps:
            n = config.rollouts_per_iteration
            batch_seeds = seeds[episodes_done : episodes_done + n]
            budget = max(1, (config.steps - env_steps) // n)
            new = collect(model, spec, env_id, online_target, batch_seeds, generator, max_steps=budget)
            episodes_done += n
            env_steps += sum(len(e) for e in new)
            rollout_returns += [e.total_return for e in new]
            buffer.add(new)
            data = buffer.dataset(obs_space, act_space)
            sampler = SegmentSampler(
                data, spec.model.context_length, spec.reward_scale, normalizer, device, config.seed
            )
            if sampler_state is not None:
                sampler.load_state_dict(sampler_state)
            model.train()
            tick, losses = time.perf_counter(), []
            try:  # ODT's loss, NLL − α·entropy + the temperature's: one backward pass and optimizer step train both
                for _ in range(config.updates_per_iteration):
                    batch = sampler.sample(config.batch_size)
                    loss, _ = train_step(
                        model, optimizer, scheduler, batch, train_config, loss_fn=stochastic_action_loss
                    )
                    losses.append(loss)
            except Diverged:  # raised before the optimizer step: the weights are still the last finite ones
                raise DtrlError(
                    f"fine-tuning diverged after {env_steps} environment steps: lower --learning-rate"
                ) from None
            updates += config.updates_per_iteration
            sampler_state = sampler.state_dict()
            metrics = {
                "online/rollout_return": float(np.mean([e.total_return for e in new])),
                "online/rollout_length": float(np.mean([len(e) for e in new])),
                "online/loss": float(np.mean(losses)),
                "online/temperature": temperature(model).item(),
                "online/buffer_trajectories": float(len(buffer)),
                "online/updates_per_second": config.updates_per_iteration / (time.perf_counter() - tick),
            }
            if config.eval_every and env_steps >= next_eval:
                next_eval += config.eval_every
                metrics[f"eval/return_mean@{eval_target:g}"] = run_eval()[0].mean
            logger.log(env_steps, metrics)
            if on_progress:
                on_progress(env_steps, metrics["online/rollout_return"])
        online = run_eval()
        logger.log(env_steps, {f"eval/return_mean@{eval_target:g}": online[0].mean})
        spec.step = updates
        state = {
            "step": updates, "env_steps": env_steps, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }  # fmt: skip
        ckpt = save_checkpoint(out_dir, updates, spec, model.state_dict(), state, keep=1)
    finally:
        logger.close()
    result = FinetuneResult(out_dir, ckpt, offline, online, env_steps, updates, rollout_returns)
    write_json(out_dir / FINETUNE_REPORT_FILE, result.to_dict())
    return result
