"""Random length-K segments of an episode dataset, gathered in one vectorised step.

Everything a batch needs is precomputed once per dataset: normalised states,
actions mapped to the model's space, returns-to-go (once per episode, divided
by the reward scale), timesteps within the episode and the end of each
transition's episode. A batch is then a handful of index operations on device
tensors, with no per-sample Python. For datasets larger than memory (an
on-disk store, :mod:`dtrl.data.store`) the sampler instead reads only each
batch's rows from the memory-mapped arrays and transforms them per batch; the
batches are identical to the in-memory ones.

Sampling follows the paper's code: an episode is drawn with probability
proportional to its length and a start step uniformly within it, which is the
same as drawing the start uniformly over all transitions. A segment that would
run past the end of its episode is shorter than K and is left-padded, with
``mask`` False on the padding. With ``in_episode=True`` (the paper's Atari code)
such a segment is moved back to end where its episode ends, so it holds K real
steps; only an episode shorter than K still gives a padded segment (the Atari
code would instead reach into the episode before).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from dtrl.envs.atari import stack_frames
from dtrl.data.episodes import EpisodeDataset, returns_to_go
from dtrl.errors import DtrlError


@dataclass
class Normalizer:
    """State statistics and the action box: the data transforms a policy must repeat at inference."""

    state_mean: np.ndarray
    state_std: np.ndarray
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None

    @classmethod
    def from_dataset(cls, dataset: EpisodeDataset) -> "Normalizer":
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
        return (flat - self.state_mean) / self.state_std

    def actions_to_model(self, actions: np.ndarray) -> np.ndarray:
        """Env actions -> [-1, 1] (bounded boxes); unbounded or discrete actions pass through."""
        if self.action_low is None:
            return actions
        a = actions.reshape(actions.shape[0], -1).astype(np.float32)
        span = self.action_high - self.action_low
        span = np.where(span > 0, span, 1.0)  # a dimension with low == high (a constant action) maps to -1, not NaN
        return np.clip(2.0 * (a - self.action_low) / span - 1.0, -1.0, 1.0)

    def actions_to_env(self, actions: np.ndarray) -> np.ndarray:
        if self.action_low is None:
            return actions
        return self.action_low + (actions + 1.0) * 0.5 * (self.action_high - self.action_low)

    def to_dict(self) -> dict[str, list[float] | None]:
        return {
            "state_mean": self.state_mean.tolist(),
            "state_std": self.state_std.tolist(),
            "action_low": None if self.action_low is None else self.action_low.tolist(),
            "action_high": None if self.action_high is None else self.action_high.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        def arr(key: str) -> np.ndarray | None:
            return None if d.get(key) is None else np.asarray(d[key], dtype=np.float32)

        return cls(arr("state_mean"), arr("state_std"), arr("action_low"), arr("action_high"))


@dataclass
class Batch:
    returns_to_go: torch.Tensor  # (B, K) float, divided by the reward scale
    states: torch.Tensor  # (B, K, obs) float, normalised; uint8 pixels for image datasets
    actions: torch.Tensor  # (B, K, act) float in model space, or (B, K) long
    timesteps: torch.Tensor  # (B, K) long
    mask: torch.Tensor  # (B, K) bool, False on left padding


def will_read(arrays: tuple[np.ndarray, ...], starts: np.ndarray, length: int) -> None:
    """Ask the OS to read rows ``starts[i] : starts[i] + length`` of memory-mapped arrays now.

    The reads of a whole batch are then in flight at once, and a page fault
    finds its page in the cache instead of reading around it: Linux reads
    ``read_ahead_kb`` (often megabytes) around every missing page of a
    mapping, which for random segments is mostly wasted I/O.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for array in arrays:
        if not isinstance(array, np.memmap) or array.filename is None:
            continue
        row = array.strides[0]
        fd = os.open(array.filename, os.O_RDONLY)
        try:
            for start in starts.tolist():
                os.posix_fadvise(fd, array.offset + start * row, length * row, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


class SegmentSampler:
    def __init__(
        self,
        dataset: EpisodeDataset,
        context_length: int,
        reward_scale: float,
        normalizer: Normalizer | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        from_disk: bool | None = None,
        in_episode: bool = False,
    ) -> None:
        """``from_disk`` (default: whether the dataset is an on-disk store) reads rows per batch
        instead of copying the whole dataset to the device first; ``in_episode`` keeps segments
        inside their episodes (see the module docstring)."""
        self.context_length = context_length
        self.in_episode = in_episode
        self.device = torch.device(device)
        self.normalizer = normalizer or Normalizer.from_dataset(dataset)
        self.from_disk = dataset.on_disk if from_disk is None else from_disk
        self.frame_stack = dataset.frame_stack
        if self.frame_stack and self.from_disk:
            raise DtrlError("image datasets are sampled from memory only: load the dataset's .npz, not a store")
        n = len(dataset)
        starts = dataset.episode_starts
        lengths = np.diff(starts)
        discrete = isinstance(dataset.action_space, gym.spaces.Discrete)
        self.num_transitions = n
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._offsets = torch.arange(context_length, device="cpu" if self.from_disk else self.device)
        if self.from_disk:
            self._dataset, self._starts, self._discrete = dataset, starts, discrete
            self._returns_to_go = dataset.transition_returns()
            self._reward_scale = reward_scale
            self._state_mean = torch.from_numpy(self.normalizer.state_mean).to(self.device)
            self._state_std = torch.from_numpy(self.normalizer.state_std).to(self.device)
            return

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        if self.frame_stack:  # one uint8 frame per step, stacked per batch: never expanded to float
            self.frames = put(dataset.observations)
        else:
            self.states = put(self.normalizer.states(dataset.observations))
        actions = dataset.actions.astype(np.int64) if discrete else self.normalizer.actions_to_model(dataset.actions)
        self.actions = put(actions if discrete else actions.astype(np.float32).reshape(n, -1))
        rtg = returns_to_go(dataset.rewards, starts) / reward_scale
        self.returns_to_go = put(rtg.astype(np.float32))
        self.timesteps = put(np.arange(n, dtype=np.int64) - np.repeat(starts[:-1], lengths))
        self.episode_end = put(np.repeat(starts[1:], lengths))

    def sample(self, batch_size: int) -> Batch:
        return self.segments(torch.randint(0, self.num_transitions, (batch_size,), generator=self.generator))

    def segments(self, start: torch.Tensor) -> Batch:
        """The segments of up to K steps from transitions ``start`` (B,) on, cut at their episode's end
        and then left-padded: what :meth:`sample` draws, at chosen places (validation's chunks)."""
        K = self.context_length
        if self.from_disk:
            episode = np.searchsorted(self._starts, start.numpy(), side="right") - 1
            end = torch.from_numpy(self._starts[episode + 1])
            if self.in_episode:
                start = torch.maximum(torch.minimum(start, end - K), torch.from_numpy(self._starts[episode]))
        else:
            start = start.to(self.device)
            end = self.episode_end[start]
            if self.in_episode:
                start = torch.maximum(torch.minimum(start, end - K), start - self.timesteps[start])
        length = torch.clamp(end - start, max=K)  # (B,)
        pad = K - length
        mask = self._offsets[None, :] >= pad[:, None]  # (B, K)
        index = (start[:, None] + self._offsets[None, :] - pad[:, None]).clamp(min=0)
        index = torch.where(mask, index, start[:, None])  # padding reads a valid row, then is zeroed
        if self.from_disk:
            returns, states, actions, timesteps = self._read_rows(index, episode)
            mask = mask.to(self.device)
        else:
            returns, actions = self.returns_to_go[index], self.actions[index]
            states = self._stacked(index) if self.frame_stack else self.states[index]
            timesteps = self.timesteps[index]
        m = mask.unsqueeze(-1)
        return Batch(
            returns_to_go=returns * mask,
            states=states * m,
            actions=actions * (mask if actions.ndim == 2 else m),
            timesteps=timesteps * mask,
            mask=mask,
        )

    def _stacked(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K, frame_stack · H · W) uint8 observations of the steps ``index``."""
        stacked = stack_frames(self.frames, index, self.timesteps[index], self.frame_stack)
        return stacked.reshape(*index.shape, -1)

    def _read_rows(self, index: torch.Tensor, episode: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Read and transform only the rows of one batch, exactly as the in-memory mode precomputes them.

        Observations travel in their stored dtype (uint8 frames: a quarter of
        float32) and are normalised on the device.
        """
        B, K = index.shape
        rows = index.numpy().reshape(-1)
        data = self._dataset
        will_read((data.observations, data.actions, self._returns_to_go), index[:, 0].numpy(), K)
        obs = torch.from_numpy(np.ascontiguousarray(data.observations[rows]).reshape(B * K, -1)).to(self.device)
        states = obs.float().sub_(self._state_mean).div_(self._state_std).reshape(B, K, -1)
        if self._discrete:
            actions = data.actions[rows].astype(np.int64).reshape(B, K)
        else:
            actions = self.normalizer.actions_to_model(data.actions[rows]).astype(np.float32).reshape(B, K, -1)
        returns = (self._returns_to_go[rows] / self._reward_scale).astype(np.float32).reshape(B, K)
        timesteps = index - torch.from_numpy(self._starts[episode])[:, None]
        returns_t, actions_t = (torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in (returns, actions))
        return returns_t, states, actions_t, timesteps.to(self.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
