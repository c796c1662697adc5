"""Return calibration: how closely the achieved return follows the target.

A Decision Transformer is asked for a return. Sweeping the target from 0 to
1.2x the best return in its dataset and recording what it achieves shows where
conditioning works and where it saturates (figure 4 of the paper).
``calibration.json`` holds the sweep; ``dtrl plot`` draws it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.data.episodes import EpisodeDataset
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult, evaluate
from dtrl.io import write_json
from dtrl.policy import DecisionTransformerPolicy
from dtrl.runfiles import CALIBRATION_FILE

__all__ = ["CALIBRATION_FILE", "calibrate", "calibration_report", "calibration_targets", "write_calibration"]


def calibration_targets(best: float, worst: float, points: int) -> list[float]:
    """``points`` targets from 0 to 1.2x the best return; from the worst return when returns are negative."""
    if points < 2:
        raise DtrlError(f"--points {points}: a calibration sweep needs at least 2 targets")
    low = 0.0 if best > 0 else worst
    return [float(x) for x in np.linspace(low, best + 0.2 * abs(best), points)]


def calibrate(
    policy: DecisionTransformerPolicy,
    env_id: str,
    dataset: EpisodeDataset,
    points: int = 10,
    episodes: int = 10,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate at ``points`` targets across the dataset's range of returns, all episodes at once."""
    best, worst = float(dataset.episode_returns.max()), float(dataset.episode_returns.min())
    targets = calibration_targets(best, worst, points)
    results = evaluate(policy, env_id, targets, episodes, seed, on_step)
    return calibration_report(results, env_id, dataset, policy.spec.step, episodes, seed)


def calibration_report(
    results: list[EvalResult], env_id: str, dataset: EpisodeDataset, step: int | None, episodes: int, seed: int
) -> dict[str, Any]:
    """What ``calibration.json`` holds: the sweep and the dataset's range of returns."""
    return {
        "env_id": env_id,
        "dataset": dataset.name,
        "dataset_best_return": float(dataset.episode_returns.max()),
        "dataset_worst_return": float(dataset.episode_returns.min()),
        "step": step,
        "episodes": episodes,
        "seed": seed,
        "results": [r.to_dict() for r in results],
    }


def write_calibration(report: dict[str, Any], path: Path) -> None:
    write_json(path, report)
