"""The normalised score, one formula for D4RL's tasks and Atari's gamer-normalised score alike, and
the env family that keys the reference tables (``Hopper-v5`` -> ``hopper``, ``ALE/Breakout-v5`` ->
``breakout``)."""

from __future__ import annotations

import numpy as np

# D4RL's reference returns (random, expert) for its gym locomotion tasks, from
# d4rl/infos.py. They were measured on the mujoco-py -v2 envs; on gymnasium's
# -v5 envs the normalised score is indicative, not identical.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}


def env_family(env_id: str) -> str:
    """The task or game an env id names, without namespace or version: ``ALE/Breakout-v5`` -> ``breakout``."""
    return env_id.split("/")[-1].split("-")[0].lower()


def normalized_score(value: float | np.ndarray, ref: dict[str, float]) -> float | np.ndarray:
    """D4RL normalisation: 100 · (R − random) / (expert − random)."""
    return 100.0 * (value - ref["random"]) / (ref["expert"] - ref["random"])
