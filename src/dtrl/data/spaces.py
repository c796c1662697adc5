"""Gymnasium spaces as JSON (how datasets and checkpoints record them), and a space for data that
recorded none."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.errors import DtrlError


# --------------------------------------------------------------------------- spaces
def space_to_dict(space: gym.Space) -> dict[str, Any]:
    """A JSON-friendly description of a Box or Discrete space."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": space.low.tolist(),
            "high": space.high.tolist(),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    raise DtrlError(
        f"unsupported space {space}: dtrl handles Box and Discrete spaces; "
        "flatten dict or tuple observations first (gymnasium.wrappers.FlattenObservation)"
    )


def space_from_dict(d: dict[str, Any]) -> gym.Space:
    if d["type"] == "box":
        return gym.spaces.Box(
            low=np.asarray(d["low"], dtype=d["dtype"]),
            high=np.asarray(d["high"], dtype=d["dtype"]),
            shape=tuple(d["shape"]),
            dtype=np.dtype(d["dtype"]),
        )
    if d["type"] == "discrete":
        return gym.spaces.Discrete(d["n"], start=d.get("start", 0))
    raise DtrlError(f"unknown space type {d['type']!r} in dataset metadata")


def infer_box(values: np.ndarray, unit_if_within: bool = True) -> gym.spaces.Box:
    """A Box space for data with no recorded space.

    Actions that lie in [-1, 1] (D4RL's convention) get exactly that box;
    anything else gets the data's own per-dimension range.
    """
    shape = values.shape[1:]
    dtype = values.dtype if values.dtype.kind == "f" else np.float32
    if unit_if_within and values.size and values.min() >= -1.0 and values.max() <= 1.0:  # no |x| copy
        return gym.spaces.Box(-1.0, 1.0, shape=shape, dtype=dtype)
    if not values.size:
        return gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=dtype)
    return gym.spaces.Box(values.min(axis=0), values.max(axis=0), shape=shape, dtype=dtype)
