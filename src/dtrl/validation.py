"""Judging a policy without a simulator: a held-out split of whole episodes and the action error on them.

With ``val_fraction`` set, that fraction of the run's episodes (at least one, chosen with its
``seed``) never reaches training; their indices are written to ``val_episodes.json`` in the run
directory and read back on resume. ``val/loss`` is the error of the return-conditioned
prediction of the logged actions on them: each episode is cut into consecutive K-step
segments, as training samples them (the last one left-padded), so every step is predicted once
from the returns-to-go, states and actions before it, and the loss is the training loss's
(MSE in the model's [-1, 1] action units, cross-entropy for discrete actions; a stochastic policy
is scored by its mean action's MSE). ``dtrl eval RUN --dataset D`` reports the same number on
any dataset's episodes, for runs whose environment is not installed or does not exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from dtrl.data.episodes import EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler
from dtrl.envs import check_fits
from dtrl.errors import DtrlError
from dtrl.io import write_json
from dtrl.runfiles import VAL_FILE

if TYPE_CHECKING:
    from dtrl.policy import DecisionTransformerPolicy

BATCH = 256
"""Segments per forward pass when computing the action error."""


def split_episodes(num_episodes: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted indices of the held-out episodes: ``round(fraction * num_episodes)``, at least one."""
    held_out = max(1, int(round(fraction * num_episodes)))
    if held_out >= num_episodes:
        raise DtrlError(
            f"val_fraction={fraction} holds out {held_out} of the dataset's {num_episodes} episodes, "
            "leaving none to train on: lower val_fraction or use more episodes"
        )
    return np.sort(np.random.default_rng(seed).choice(num_episodes, held_out, replace=False))


def validation_split(run_dir: Path, num_episodes: int, fraction: float, seed: int, resume: bool) -> np.ndarray:
    """The run's held-out episodes: those saved in its ``val_episodes.json`` on resume, else a new seeded split (saved)."""
    path = run_dir / VAL_FILE
    if resume and path.is_file():
        try:
            saved = json.loads(path.read_text())
            episodes, total = np.asarray(saved["episodes"], dtype=np.int64), int(saved["num_episodes"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DtrlError(
                f"{path} is not a valid validation split ({e}): restore it, or start the run afresh"
            ) from None
        if total != num_episodes:
            raise DtrlError(
                f"{path} splits {total} episodes but the dataset now has {num_episodes}: "
                "resume with the dataset and top_fraction the run was started with"
            )
        return episodes
    episodes = split_episodes(num_episodes, fraction, seed)
    record = {"val_fraction": fraction, "seed": seed, "num_episodes": num_episodes, "episodes": episodes.tolist()}
    write_json(path, record, indent=None)
    return episodes


def hold_out(dataset: EpisodeDataset, held_out: np.ndarray) -> tuple[EpisodeDataset, EpisodeDataset]:
    """(training episodes, held-out episodes) of ``dataset``."""
    train = np.setdiff1d(np.arange(dataset.num_episodes), held_out)
    return dataset.select(train), dataset.select(held_out, name=f"{dataset.name}-val")


class ActionError:
    """The action error of a model on a dataset's episodes, every step once (see the module docstring)."""

    def __init__(
        self,
        dataset: EpisodeDataset,
        context_length: int,
        reward_scale: float,
        normalizer: Normalizer,
        device: torch.device | str = "cpu",
    ) -> None:
        self.sampler = SegmentSampler(dataset, context_length, reward_scale, normalizer, device)
        self.starts = torch.from_numpy(
            np.concatenate(
                [
                    np.arange(a, b, context_length)
                    for a, b in zip(dataset.episode_starts[:-1], dataset.episode_starts[1:])
                ]
            )
        )
        self.episodes, self.steps = dataset.num_episodes, len(dataset)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        """The mean loss over every logged action; the model is left in the mode it was in."""
        training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for chunk in self.starts.split(BATCH):
                b = self.sampler.segments(chunk)
                pred = model(b.returns_to_go, b.states, b.actions, b.timesteps, b.mask)
                pred, target = pred[b.mask].float(), b.actions[b.mask]
                loss = F.cross_entropy if model.config.discrete else F.mse_loss
                total += float(loss(pred, target, reduction="sum"))
                count += target.numel()
        finally:
            model.train(training)
        return total / count


def offline_report(policy: DecisionTransformerPolicy, dataset: EpisodeDataset) -> dict[str, Any]:
    """``dtrl eval --dataset``: the policy's action error on every step of the dataset's episodes."""
    spec = policy.spec
    check_fits(
        dataset.observation_space,
        dataset.action_space,
        spec.observation_space,
        spec.action_space,
        dataset.name,
        spec.env_id,
    )
    error = ActionError(dataset, spec.model.context_length, spec.reward_scale, policy.normalizer, policy.device)
    return {
        "dataset": dataset.name,
        "episodes": error.episodes,
        "steps": error.steps,
        "loss": "cross-entropy" if spec.model.discrete else "MSE, model action units",
        "action_error": error(policy.model),
    }
