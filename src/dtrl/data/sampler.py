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

from dtrl.data.episodes import EpisodeDataset, returns_to_go
from dtrl.data.normalizer import Normalizer, normalized_states
from dtrl.envs.atari import stack_frames
from dtrl.errors import DtrlError


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
        states = normalized_states(obs.float(), self._state_mean, self._state_std).reshape(B, K, -1)
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
