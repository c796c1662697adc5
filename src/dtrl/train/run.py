"""What one training run holds besides its loop: the data it was set up from, its resumable
random streams and checkpoint, and its evaluations."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dtrl import distributed
from dtrl.checkpoint import (
    PolicySpec,
    load_policy_files,
    load_train_state,
)
from dtrl.config import ModelConfig, TrainConfig
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.readers import open_dataset
from dtrl.data.sampler import SegmentSampler
from dtrl.data.spaces import space_to_dict
from dtrl.distributed import Dist
from dtrl.envs import check_env_id
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult, evaluate
from dtrl.fields import to_dict
from dtrl.io import write_json
from dtrl.models import DecisionTransformer
from dtrl.policy import DecisionTransformerPolicy
from dtrl.runfiles import EVAL_FILE
from dtrl.train.logger import MetricsLogger
from dtrl.validation import hold_out, validation_split

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_results: list[EvalResult] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class RunData:
    """What a run needs from its dataset: the episodes, the evaluation env, the normalisation,
    the model config filled in from the data's spaces, the checkpoints' policy spec, the
    returns to evaluate at and the held-out episodes (``val_fraction``; None without)."""

    dataset: EpisodeDataset
    env_id: str
    normalizer: Normalizer
    model_config: ModelConfig
    spec: PolicySpec
    targets: list[float]
    validation: EpisodeDataset | None = None

    @classmethod
    def load(cls, config: TrainConfig, resume: bool = False) -> RunData:
        """``resume``: reuse the run's saved validation split rather than draw it. The split is drawn
        from every episode; ``top_fraction`` then keeps the best of the rest."""
        every = open_dataset(config.dataset)
        validation = None
        if config.val_fraction:
            held_out = validation_split(
                Path(config.out_dir), every.num_episodes, config.val_fraction, config.seed, resume
            )
            every, validation = hold_out(every, held_out)
        dataset = every.top_episodes(config.top_fraction)
        env_id = config.env or dataset.env_id
        if env_id:
            check_env_id(env_id)
        normalizer = Normalizer.from_dataset(
            every
        )  # the paper's %BC: statistics of all training episodes, not the top ones
        model_config = model_config_for(dataset, config.model, normalizer)
        spec = PolicySpec(
            model=model_config,
            reward_scale=config.reward_scale,
            normalizer=normalizer.to_dict(),
            observation_space=space_to_dict(dataset.observation_space),
            action_space=space_to_dict(dataset.action_space),
            env_id=env_id or None,
            ref_scores=dataset.ref_scores,
            dataset=dataset.name,
        )
        targets = config.target_returns or [float(dataset.episode_returns.max())]
        return cls(dataset, env_id, normalizer, model_config, spec, targets, validation)


def model_config_for(dataset: EpisodeDataset, model: ModelConfig, normalizer: Normalizer) -> ModelConfig:
    """Fill the data-dependent fields of the model config from the dataset's spaces."""
    space = dataset.action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    return ModelConfig(
        **{
            **to_dict(model),
            "observation_dim": int(np.prod(dataset.observation_shape)),
            "observation_shape": list(dataset.observation_shape) if dataset.frame_stack else [],
            "action_dim": int(space.n) if discrete else int(np.prod(space.shape)),
            "discrete": discrete,
            "action_tanh": not discrete and normalizer.action_low is not None,
            "max_episode_length": max(model.max_episode_length, int(dataset.episode_lengths.max())),
        }
    )


def rng_state(sampler: SegmentSampler, device: torch.device) -> dict[str, Any]:
    """This process's random streams: the sampler's draws and torch's (dropout)."""
    state = {"sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_checkpoint(
    ckpt: Path,
    model: DecisionTransformer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: SegmentSampler,
    device: torch.device,
    dist: Dist,
    seed: int,
) -> int:
    """Load a checkpoint's weights, optimizer and this rank's random streams; return its step.

    The streams are saved per rank. When the number of processes changed, they
    no longer map onto ranks: every rank is then re-seeded from (seed, rank, step).
    """
    _, weights, _ = load_policy_files(ckpt)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise DtrlError(
            f"checkpoint {ckpt} does not fit the model built from this config and dataset "
            f"({' '.join(str(e).split())[:200]}): resume with the dataset and model settings it was trained with"
        ) from None
    state = load_train_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    step = int(state["step"])
    saved_world = int(state.get("world_size", 1))
    if saved_world == dist.world_size:
        rng = state if dist.rank == 0 else state["other_ranks"][dist.rank - 1]
        sampler.load_state_dict(rng["sampler"])
        torch.set_rng_state(rng["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in rng:
            torch.cuda.set_rng_state(rng["cuda_rng"], device)
    else:
        seed = distributed.resume_seed(seed, dist.rank, step)
        sampler.generator.manual_seed(seed)
        torch.manual_seed(seed)
        if dist.is_main:
            log.warning(
                "resuming a %d-process run on %d processes: sampler and dropout streams re-seeded "
                "from (seed, rank, step=%d), so batches differ from an uninterrupted run",
                saved_world,
                dist.world_size,
                step,
            )
    return step


def evaluate_and_log(
    model: DecisionTransformer,
    spec: PolicySpec,
    device: torch.device,
    config: TrainConfig,
    data: RunData,
    logger: MetricsLogger,
    step: int,
) -> list[EvalResult]:
    """Evaluate ``model`` in the run's env at its targets, log the returns at ``step``, leave it in train mode."""
    policy = DecisionTransformerPolicy(model, spec, device)  # the paper's protocol: the last K steps recomputed
    if config.eval_sample_actions and policy.has_distribution:
        policy.sample_actions(config.seed)
    results = evaluate(
        policy,
        data.env_id,
        data.targets,
        config.eval_episodes,
        seed=config.seed,
        max_episode_steps=config.eval_max_episode_steps or None,
    )
    model.train()
    metrics = {}
    for r in results:
        metrics[f"eval/return_mean@{r.target_return:g}"] = r.mean
        if r.normalized:
            metrics[f"eval/normalized_score@{r.target_return:g}"] = r.normalized[0]
    logger.log(step, metrics)
    return results


def write_eval_report(run_dir: Path, results: list[EvalResult]) -> None:
    """The final evaluation, ``eval.json``."""
    write_json(run_dir / EVAL_FILE, [r.to_dict() for r in results])
