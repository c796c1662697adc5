"""An on-disk episode store for datasets larger than memory.

A store is a directory of ``.npy`` files plus ``metadata.json`` (format
``dtrl-store``). It holds the flat arrays of an :class:`EpisodeDataset` and,
precomputed as it is written, what the sampler would otherwise build over the
whole dataset in memory: every transition's return-to-go and the state
normalisation statistics. Opened with numpy memory maps, a store costs memory
for its episode offsets only; the segment sampler reads each batch's rows and
the operating system's page cache (shared by every process on a machine, e.g.
all DDP ranks) keeps whatever fits.

:class:`StoreWriter` builds a store one episode at a time, so a dataset never
has to fit in memory at any point. It writes into a hidden temporary directory
beside the target and renames it into place when complete: a reader never sees
a half-written store.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import gymnasium as gym
import numpy as np

from dtrl.data.episodes import Episode, EpisodeDataset, described_by
from dtrl.data.spaces import space_to_dict
from dtrl.errors import DtrlError
from dtrl.io import fsync_dir

STORE_FORMAT = "dtrl-store"
STORE_VERSION = 1
METADATA_FILE = "metadata.json"
# Per-transition arrays, appended episode by episode.
ROW_ARRAYS = ("observations", "actions", "rewards", "terminations", "truncations", "returns_to_go")
# A fixed .npy header size, so the header can be written before the row count is known and
# rewritten in place at the end (the .npy format allows padding the header with spaces).
_NPY_HEADER_BYTES = 256
_STATS_CHUNK_BYTES = 64 << 20


@dataclass(kw_only=True)
class StoredEpisodeDataset(EpisodeDataset):
    """An :class:`EpisodeDataset` whose arrays are memory maps of a store's files."""

    path: Path
    stored_returns_to_go: np.ndarray
    state_mean: np.ndarray
    state_std: np.ndarray

    @property
    def on_disk(self) -> bool:
        return True

    @property
    def episode_returns(self) -> np.ndarray:
        """An episode's return is the return-to-go of its first step: no pass over the rewards."""
        return np.asarray(self.stored_returns_to_go[self.episode_starts[:-1]], dtype=np.float64)

    def state_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self.state_mean, self.state_std

    def transition_returns(self) -> np.ndarray:
        return self.stored_returns_to_go


class _Moments:
    """Running per-dimension mean and sum of squared deviations (Chan et al.), in float64 chunks."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        flat = rows.reshape(len(rows), -1)
        step = max(1, _STATS_CHUNK_BYTES // (8 * max(1, flat.shape[1])))
        for i in range(0, len(flat), step):
            x = flat[i : i + step].astype(np.float64)
            n, mean = len(x), x.mean(axis=0)
            m2 = np.square(x - mean).sum(axis=0)
            if self.mean is None or self.m2 is None:
                self.count, self.mean, self.m2 = n, mean, m2
                continue
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + np.square(delta) * (self.count * n / total)
            self.count = total

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.mean is not None and self.m2 is not None
        std = np.sqrt(self.m2 / self.count)
        return self.mean.astype(np.float32), (std + 1e-6).astype(np.float32)


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A .npy version 1.0 header padded to :data:`_NPY_HEADER_BYTES`."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    length = _NPY_HEADER_BYTES - 10
    if len(text) + 1 > length:
        raise DtrlError(f"observation shape {shape[1:]} has too many dimensions for a store: flatten it")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + text.ljust(length - 1) + b"\n"


class StoreWriter:
    """Write a store episode by episode; use as a context manager (an error leaves no store).

    Each episode is checked like an :class:`EpisodeDataset` (shapes, spaces,
    NaN/Inf) before it is appended; memory use is one episode plus a chunk of
    the normalisation statistics.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        name: str | None = None,
        env_id: str | None = None,
        ref_scores: dict[str, float] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise DtrlError(f"{self.path} already exists: delete it or choose another path for the store")
        self.observation_space, self.action_space = observation_space, action_space
        self.meta = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "name": name or self.path.name,
            "env_id": env_id,
            "observation_space": space_to_dict(observation_space),
            "action_space": space_to_dict(action_space),
            "ref_scores": dict(ref_scores or {}),
            "metadata": dict(metadata or {}),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # mkdir (not mkdtemp, which makes it private) so the store gets the umask's permissions
        self._tmp = self.path.parent / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        self._tmp.mkdir()
        self._files: dict[str, BinaryIO] = {}
        self._rows: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._starts = [0]
        self._moments = _Moments()

    def add(self, episode: Episode) -> None:
        """Check one episode and append it to the store's files."""
        checked = EpisodeDataset.from_episodes(
            [episode],
            observation_space=self.observation_space,
            action_space=self.action_space,
            name=f"{self.meta['name']} (episode {len(self._starts) - 1})",
        )
        for key in ROW_ARRAYS:
            values = getattr(checked, key) if key != "returns_to_go" else checked.transition_returns()
            self._append(key, values)
        self._moments.update(checked.observations)
        self._starts.append(self._starts[-1] + len(episode))

    def _append(self, key: str, values: np.ndarray) -> None:
        if key not in self._files:
            self._rows[key] = (values.dtype, values.shape[1:])
            # kept open across add() calls and closed in close()/abort(): no context manager fits
            self._files[key] = open(self._tmp / f"{key}.npy", "wb")  # noqa: SIM115
            self._files[key].write(b"\0" * _NPY_HEADER_BYTES)
        dtype, row = self._rows[key]
        if values.shape[1:] != row or values.dtype != dtype:
            raise DtrlError(
                f"episode {len(self._starts) - 1} has {key} of {values.dtype} {values.shape[1:]}, earlier "
                f"episodes {dtype} {row}: every episode of a store needs the same dtypes and shapes"
            )
        self._files[key].write(np.ascontiguousarray(values).tobytes())

    def close(self) -> Path:
        """Finish the files, write ``metadata.json`` and move the store into place."""
        if len(self._starts) < 2:
            self.abort()
            raise DtrlError(f"no episodes were added to the store {self.path}: add at least one")
        total = self._starts[-1]
        for key, f in self._files.items():
            dtype, row = self._rows[key]
            f.seek(0)
            f.write(_npy_header(dtype, (total, *row)))
            f.flush()
            os.fsync(f.fileno())
            f.close()
        mean, std = self._moments.statistics()
        for key, values in (
            ("episode_starts", np.asarray(self._starts, dtype=np.int64)),
            ("state_mean", mean),
            ("state_std", std),
        ):
            with open(self._tmp / f"{key}.npy", "wb") as f:
                np.save(f, values)
                os.fsync(f.fileno())
        meta = {**self.meta, "num_transitions": total, "num_episodes": len(self._starts) - 1}
        with open(self._tmp / METADATA_FILE, "w") as f:
            f.write(json.dumps(meta, indent=2))
            os.fsync(f.fileno())
        fsync_dir(self._tmp)
        if self.path.exists():
            self.abort()
            raise DtrlError(f"{self.path} appeared while the store was written: delete it or choose another path")
        os.rename(self._tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        for f in self._files.values():
            f.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_store(dataset: EpisodeDataset, path: str | os.PathLike) -> Path:
    """Write a dataset as a store, episode by episode (it may itself be memory-mapped)."""
    with StoreWriter(
        path,
        dataset.observation_space,
        dataset.action_space,
        name=dataset.name,
        env_id=dataset.env_id,
        ref_scores=dataset.ref_scores,
        metadata=dataset.metadata,
    ) as writer:
        for episode in dataset:
            writer.add(episode)
    return Path(path)


def _read_metadata(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a store directory (Minari datasets also have a metadata.json: the marker decides)."""
    meta = _read_metadata(Path(path))
    return meta is not None and meta.get("format") == STORE_FORMAT


def open_store(path: str | os.PathLike) -> StoredEpisodeDataset:
    """Open a store with memory maps; nothing the size of the dataset is read."""
    path = Path(path)
    meta = _read_metadata(path)
    if meta is None or meta.get("format") != STORE_FORMAT:
        raise DtrlError(f"{path} is not a dtrl store (no {METADATA_FILE} of format {STORE_FORMAT!r}): write one first")
    if meta.get("version", 0) > STORE_VERSION:
        raise DtrlError(f"{path} is a store of version {meta.get('version')}, newer than this dtrl reads: upgrade dtrl")
    try:
        rows = {key: np.load(path / f"{key}.npy", mmap_mode="r", allow_pickle=False) for key in ROW_ARRAYS}
        small = {
            key: np.load(path / f"{key}.npy", allow_pickle=False)
            for key in ("episode_starts", "state_mean", "state_std")
        }
    except (OSError, ValueError) as e:
        raise DtrlError(f"store {path} is incomplete or corrupt ({type(e).__name__}: {e}): write it again") from None
    if len(rows["returns_to_go"]) != len(rows["observations"]):
        raise DtrlError(f"store {path} is incomplete or corrupt (returns_to_go has the wrong length): write it again")
    return StoredEpisodeDataset(
        observations=rows["observations"],
        actions=rows["actions"],
        rewards=rows["rewards"],
        terminations=rows["terminations"],
        truncations=rows["truncations"],
        episode_starts=small["episode_starts"],
        **described_by(meta),
        path=path,
        stored_returns_to_go=rows["returns_to_go"],
        state_mean=small["state_mean"],
        state_std=small["state_std"],
    )
