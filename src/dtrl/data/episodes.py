"""Typed episode data and an episode dataset stored as flat arrays.

An :class:`Episode` holds one trajectory as D4RL and Minari define it:
``observations[t]`` is the observation on which ``actions[t]`` was taken,
``rewards[t]`` the reward that followed, and ``terminations[t]`` /
``truncations[t]`` whether the episode ended there (by the MDP, or by a time
limit). An :class:`EpisodeDataset` keeps all episodes concatenated in flat
arrays plus episode offsets, so that a million transitions cost a handful of
arrays rather than a million Python objects, and the segment sampler can index
it without copying.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.data.spaces import infer_box, space_from_dict, space_to_dict
from dtrl.errors import DtrlError
from dtrl.io import atomic_write

NATIVE_FORMAT_VERSION = 1
NATIVE_SUFFIX = ".npz"
PER_STEP_ARRAYS = ("observations", "actions", "rewards", "terminations", "truncations")
# Elements per chunk of the NaN/Inf check: its temporaries stay at a megabyte, not a fraction of the data.
_FINITE_CHUNK = 1 << 20


def described_by(meta: dict[str, Any]) -> dict[str, Any]:
    """A dataset's descriptive fields (spaces, name, env id, scores) from its saved metadata."""
    return {
        "observation_space": space_from_dict(meta["observation_space"]),
        "action_space": space_from_dict(meta["action_space"]),
        "name": meta["name"],
        "env_id": meta["env_id"],
        "ref_scores": meta.get("ref_scores", {}),
        "metadata": meta.get("metadata", {}),
    }


# --------------------------------------------------------------------------- episode
@dataclass
class Episode:
    """One trajectory; every array has the episode length as its first dimension."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.observations)
        for name in ("actions", "rewards", "terminations", "truncations"):
            if len(getattr(self, name)) != n:
                raise DtrlError(
                    f"episode has {n} observations but {len(getattr(self, name))} {name}: "
                    "every per-step array must have one entry per step"
                )

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def total_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


# --------------------------------------------------------------------------- dataset
@dataclass
class EpisodeDataset:
    """Episodes concatenated into flat arrays, split by ``episode_starts``.

    ``episode_starts`` has one entry per episode plus a final entry equal to the
    number of transitions, so episode ``i`` spans
    ``episode_starts[i]:episode_starts[i + 1]``.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    episode_starts: np.ndarray
    observation_space: gym.Space
    action_space: gym.Space
    name: str = "dataset"
    env_id: str | None = None
    # Reference returns for normalised scores: {"random": float, "expert": float}.
    ref_scores: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # The observation after each episode's last action, (episodes, *obs_shape), when recorded:
    # Minari stores T + 1 observations per episode, so exporting to Minari needs them.
    final_observations: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ---- construction
    @classmethod
    def from_episodes(
        cls,
        episodes: Sequence[Episode],
        observation_space: gym.Space | None = None,
        action_space: gym.Space | None = None,
        **kwargs: Any,
    ) -> EpisodeDataset:
        if not episodes:
            raise DtrlError("the dataset has no episodes: record or select at least one episode")
        lengths = np.array([len(e) for e in episodes], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        cat = {
            k: np.concatenate([getattr(e, k) for e in episodes])
            for k in ("observations", "actions", "rewards", "terminations", "truncations")
        }
        return cls.from_arrays(
            episode_starts=starts,
            observation_space=observation_space,
            action_space=action_space,
            **cat,
            **kwargs,
        )

    @classmethod
    def from_arrays(
        cls,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminations: np.ndarray,
        truncations: np.ndarray,
        episode_starts: np.ndarray,
        observation_space: gym.Space | None = None,
        action_space: gym.Space | None = None,
        **kwargs: Any,
    ) -> EpisodeDataset:
        """Build a dataset, inferring Box spaces from the data where none is given."""
        observations = np.asarray(observations)
        actions = np.asarray(actions)
        per_step = (observations, actions, np.asarray(rewards), np.asarray(terminations), np.asarray(truncations))
        _check_dtypes(f"dataset {kwargs.get('name', 'dataset')!r}", dict(zip(PER_STEP_ARRAYS, per_step)))
        if observation_space is None:
            observation_space = infer_box(observations, unit_if_within=False)
            observation_space = gym.spaces.Box(
                -np.inf, np.inf, shape=observations.shape[1:], dtype=observation_space.dtype
            )
        if action_space is None:
            if actions.dtype.kind in "iu" and actions.ndim == 1:
                action_space = gym.spaces.Discrete(int(actions.max()) + 1 if actions.size else 1)
            else:
                action_space = infer_box(actions)
        return cls(
            observations=observations,
            actions=actions,
            rewards=np.asarray(rewards, dtype=np.float32).reshape(-1),
            terminations=np.asarray(terminations, dtype=bool).reshape(-1),
            truncations=np.asarray(truncations, dtype=bool).reshape(-1),
            episode_starts=np.asarray(episode_starts, dtype=np.int64),
            observation_space=observation_space,
            action_space=action_space,
            **kwargs,
        )

    def validate(self) -> None:
        """Reject inconsistent or non-finite data with a message that says what is wrong."""
        n = len(self.observations)
        where = f"dataset {self.name!r}"
        if n == 0 or len(self.episode_starts) < 2:
            raise DtrlError(f"{where} is empty: it needs at least one episode with one step")
        _check_dtypes(where, {key: getattr(self, key) for key in PER_STEP_ARRAYS})
        for key in ("actions", "rewards", "terminations", "truncations"):
            if len(getattr(self, key)) != n:
                raise DtrlError(
                    f"{where} has {n} observations but {len(getattr(self, key))} {key}: "
                    "every per-step array needs one entry per transition"
                )
        starts = self.episode_starts
        if starts[0] != 0 or starts[-1] != n or np.any(np.diff(starts) <= 0):
            raise DtrlError(
                f"{where} has invalid episode boundaries: offsets must rise from 0 to {n} with no empty episode"
            )
        box = isinstance(self.observation_space, gym.spaces.Box)
        if box and self.observation_shape != tuple(self.observation_space.shape):
            stacked = f" (stacks of {self.frame_stack} frames)" if self.frame_stack else ""
            raise DtrlError(
                f"{where}: observations have shape {self.observation_shape}{stacked} per step "
                f"but the observation space is {self.observation_space.shape}"
            )
        if isinstance(self.action_space, gym.spaces.Discrete):
            if self.actions.ndim != 1 or self.actions.dtype.kind not in "iu":
                raise DtrlError(
                    f"{where}: a discrete action space needs integer actions of shape (N,), "
                    f"got {self.actions.dtype} {self.actions.shape}"
                )
            space = self.action_space
            low, high = int(self.actions.min()), int(self.actions.max())
            if low < space.start or high >= space.start + space.n:
                bad = low if low < space.start else high
                raise DtrlError(
                    f"{where}: action {bad} (at transition {int(np.flatnonzero(self.actions == bad)[0])}) lies outside "
                    f"the action space {space} (actions {space.start} to {space.start + space.n - 1}): "
                    "fix the actions or the recorded space"
                )
        elif tuple(self.actions.shape[1:]) != tuple(self.action_space.shape):
            raise DtrlError(
                f"{where}: actions have shape {self.actions.shape[1:]} per step but the "
                f"action space is {self.action_space.shape}"
            )
        if self.final_observations is not None and self.final_observations.shape != (
            self.num_episodes,
            *self.observations.shape[1:],
        ):
            raise DtrlError(
                f"{where}: final_observations have shape {self.final_observations.shape} but the "
                f"dataset has {self.num_episodes} episodes of observations {self.observations.shape[1:]}: "
                "record one final observation per episode or none"
            )
        if self.on_disk:
            return  # a store's values were checked episode by episode as it was written
        for key in ("observations", "actions", "rewards"):
            arr = getattr(self, key)
            if arr.dtype.kind == "f" and (bad := _first_non_finite(arr)) is not None:
                raise DtrlError(
                    f"{where}: {key} contain NaN or Inf (first at transition {bad}); "
                    "clean or drop those transitions before training"
                )

    # ---- access
    def __len__(self) -> int:
        return int(self.episode_starts[-1])

    @property
    def on_disk(self) -> bool:
        """Whether the arrays are memory-mapped from an on-disk store rather than held in memory."""
        return False

    @property
    def frame_stack(self) -> int:
        """Image datasets that keep one frame per step (Atari): frames per observation, rebuilt by
        :func:`dtrl.envs.atari.stack_frames` from the episode's previous steps; 0 for every other dataset."""
        return int(self.metadata.get("frame_stack", 0))

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """The shape of one observation as the environment gives it (a stack of frames for Atari)."""
        per_step = tuple(self.observations.shape[1:])
        return (self.frame_stack, *per_step) if self.frame_stack else per_step

    def state_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and standard deviation (+1e-6) of the flattened observations, as float32."""
        obs = self.observations.reshape(len(self), -1).astype(np.float64)
        return obs.mean(axis=0).astype(np.float32), (obs.std(axis=0) + 1e-6).astype(np.float32)

    def transition_returns(self) -> np.ndarray:
        """The undiscounted return-to-go of every transition (float64)."""
        return returns_to_go(self.rewards, self.episode_starts)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts) - 1

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_starts)

    @property
    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode (float64 sums)."""
        cum = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        return cum[self.episode_starts[1:]] - cum[self.episode_starts[:-1]]

    def episode(self, i: int) -> Episode:
        a, b = self.episode_starts[i], self.episode_starts[i + 1]
        return Episode(
            self.observations[a:b],
            self.actions[a:b],
            self.rewards[a:b],
            self.terminations[a:b],
            self.truncations[a:b],
        )

    def __iter__(self) -> Iterator[Episode]:
        return (self.episode(i) for i in range(self.num_episodes))

    def select(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> EpisodeDataset:
        """A new dataset holding the chosen episodes (e.g. the top 10% for %BC)."""
        return EpisodeDataset.from_episodes(
            [self.episode(int(i)) for i in indices],
            observation_space=self.observation_space,
            action_space=self.action_space,
            name=name or self.name,
            env_id=self.env_id,
            ref_scores=dict(self.ref_scores),
            metadata=dict(self.metadata),
        )

    def top_episodes(self, fraction: float) -> EpisodeDataset:
        """The highest-return episodes that hold ``fraction`` of all timesteps, for %BC.

        The paper's ``pct_traj`` rule (kzl/decision-transformer, gym/experiment.py): the best
        episode always, then the next best while the kept timesteps stay within
        ``max(int(fraction * timesteps), 1)``, stopping at the first that would not fit.
        Equal returns keep dataset order (the paper's unstable sort leaves them unspecified).
        """
        if fraction >= 1.0:
            return self
        budget = max(int(fraction * len(self)), 1)
        order = np.argsort(-self.episode_returns, kind="stable")
        held = np.cumsum(self.episode_lengths[order])
        keep = max(1, int(np.searchsorted(held, budget, side="right")))
        return self.select(np.sort(order[:keep]), name=f"{self.name}-top{fraction:g}")

    def summary(self) -> dict[str, Any]:
        """The figures a user checks first: size, returns, spaces."""
        returns = self.episode_returns
        lengths = self.episode_lengths
        return {
            "name": self.name,
            "env_id": self.env_id,
            "episodes": self.num_episodes,
            "transitions": len(self),
            "episode_length_min": int(lengths.min()),
            "episode_length_max": int(lengths.max()),
            "return_min": float(returns.min()),
            "return_mean": float(returns.mean()),
            "return_max": float(returns.max()),
            "terminations": int(self.terminations.sum()),
            "truncations": int(self.truncations.sum()),
            "observation_space": str(self.observation_space),
            "action_space": str(self.action_space),
        }

    # ---- native format
    def save(self, path: str | os.PathLike, compress: bool = False) -> Path:
        """Write the native ``.npz`` format atomically (a temp file renamed into place)."""
        path = Path(path)
        if path.suffix != NATIVE_SUFFIX:
            path = path.with_name(path.name + NATIVE_SUFFIX)
        meta = {
            "format": "dtrl-episodes",
            "version": NATIVE_FORMAT_VERSION,
            "name": self.name,
            "env_id": self.env_id,
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "ref_scores": self.ref_scores,
            "metadata": self.metadata,
        }
        arrays = {
            "observations": self.observations,
            "actions": self.actions,
            "rewards": self.rewards,
            "terminations": self.terminations,
            "truncations": self.truncations,
            "episode_starts": self.episode_starts,
            "meta_json": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }
        if self.final_observations is not None:
            arrays["final_observations"] = self.final_observations
        atomic_write(path, lambda f: (np.savez_compressed if compress else np.savez)(f, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EpisodeDataset:
        """Read a dataset written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta_json"]).decode())
                arrays = {k: z[k] for k in z.files if k != "meta_json"}
        except FileNotFoundError:
            raise DtrlError(f"dataset file {path} does not exist: check the path") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DtrlError(
                f"{path} is not a readable dtrl dataset ({type(e).__name__}: {e}); "
                "it may be truncated or corrupt: recreate it"
            ) from None
        if meta.get("format") != "dtrl-episodes" or meta.get("version", 0) > NATIVE_FORMAT_VERSION:
            raise DtrlError(
                f"{path} is not a dtrl dataset of a version this dtrl reads "
                f"(format {meta.get('format')!r} v{meta.get('version')}): upgrade dtrl"
            )
        return cls(
            **arrays,
            **described_by(meta),
        )


def _check_dtypes(where: str, arrays: dict[str, np.ndarray]) -> None:
    """Per-step arrays must hold numbers or booleans; strings or objects would fail deep inside training."""
    for key, values in arrays.items():
        if values.dtype.kind not in "biuf":
            raise DtrlError(
                f"{where}: {key} have dtype {values.dtype}, not numbers: store every per-step array "
                "as numbers or booleans (e.g. float32 observations and rewards, bool flags)"
            )


def _first_non_finite(values: np.ndarray) -> int | None:
    """The first row holding NaN or Inf, checked chunk by chunk so the check never copies the array."""
    flat = values.reshape(len(values), -1)
    step = max(1, _FINITE_CHUNK // max(1, flat.shape[1]))
    for i in range(0, len(flat), step):
        finite = np.isfinite(flat[i : i + step]).all(axis=1)
        if not finite.all():
            return i + int(np.argmin(finite))
    return None


def returns_to_go(rewards: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go of every transition, computed per episode in float64."""
    out = np.empty(len(rewards), dtype=np.float64)
    for a, b in zip(episode_starts[:-1], episode_starts[1:]):
        out[a:b] = np.cumsum(rewards[a:b][::-1], dtype=np.float64)[::-1]
    return out
