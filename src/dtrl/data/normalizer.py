"""State and action normalisation: the data transforms a policy must repeat at inference.

The arithmetic is written once, with operators and ``.clip`` only, so it runs on NumPy arrays and
torch tensors alike: the sampler, the policy and the exported graph
(:class:`dtrl.export.WindowPolicy`) all normalise through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import gymnasium as gym
import numpy as np

from dtrl.data.episodes import EpisodeDataset

Array = TypeVar("Array")  # np.ndarray or torch.Tensor


def normalized_states(states: Array, mean: Array, std: Array) -> Array:
    """Flat states standardised by the training data's statistics."""
    return (states - mean) / std


def model_actions(actions: Array, low: Array, high: Array) -> Array:
    """Env actions of a bounded box -> [-1, 1]; a dimension with low == high (a constant action) maps
    to -1, not NaN."""
    span = high - low
    span = span * (span > 0) + (span <= 0)
    return (2.0 * (actions - low) / span - 1.0).clip(-1.0, 1.0)


def env_actions(actions: Array, low: Array, high: Array) -> Array:
    """Model actions in [-1, 1] -> the env's box."""
    return low + (actions + 1.0) * 0.5 * (high - low)


@dataclass
class Normalizer:
    """State statistics and the action box: the data transforms a policy must repeat at inference."""

    state_mean: np.ndarray
    state_std: np.ndarray
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None

    @classmethod
    def from_dataset(cls, dataset: EpisodeDataset) -> Normalizer:
        if dataset.frame_stack:  # uint8 pixels pass unchanged: the model's encoder scales them
            mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
        else:
            mean, std = dataset.state_statistics()
        low = high = None
        space = dataset.action_space
        if isinstance(space, gym.spaces.Box) and np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)):
            low, high = space.low.astype(np.float32).reshape(-1), space.high.astype(np.float32).reshape(-1)
        return cls(mean, std, low, high)

    def states(self, obs: np.ndarray) -> np.ndarray:
        flat = obs.reshape(obs.shape[0], -1).astype(np.float32)
        return normalized_states(flat, self.state_mean, self.state_std)

    def actions_to_model(self, actions: np.ndarray) -> np.ndarray:
        """Env actions -> [-1, 1] (bounded boxes); unbounded or discrete actions pass through."""
        if self.action_low is None:
            return actions
        a = actions.reshape(actions.shape[0], -1).astype(np.float32)
        return model_actions(a, self.action_low, self.action_high)

    def actions_to_env(self, actions: np.ndarray) -> np.ndarray:
        if self.action_low is None:
            return actions
        return env_actions(actions, self.action_low, self.action_high)

    def to_dict(self) -> dict[str, list[float] | None]:
        return {
            "state_mean": self.state_mean.tolist(),
            "state_std": self.state_std.tolist(),
            "action_low": None if self.action_low is None else self.action_low.tolist(),
            "action_high": None if self.action_high is None else self.action_high.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        def arr(key: str) -> np.ndarray | None:
            return None if d.get(key) is None else np.asarray(d[key], dtype=np.float32)

        return cls(arr("state_mean"), arr("state_std"), arr("action_low"), arr("action_high"))
