"""Writers for other tools' formats: D4RL's HDF5 layout and Minari datasets (through minari's own API)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.data.episodes import EpisodeDataset
from dtrl.errors import DtrlError
from dtrl.io import atomic_write


def write_d4rl(dataset: EpisodeDataset, path: str | os.PathLike) -> Path:
    """Write D4RL's flat layout (observations, actions, rewards, terminals, timeouts) atomically.

    ``next_observations`` is included when the final observations were
    recorded; reference scores go into the root attributes ``ref_min_score`` /
    ``ref_max_score`` (Minari's names, which :func:`~dtrl.data.readers.read_d4rl` reads).
    """
    import h5py

    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "observations": np.asarray(dataset.observations),
        "actions": np.asarray(dataset.actions),
        "rewards": np.asarray(dataset.rewards, dtype=np.float32),
        "terminals": np.asarray(dataset.terminations, dtype=bool),
        "timeouts": np.asarray(dataset.truncations, dtype=bool),
    }
    if dataset.final_observations is not None:
        nxt = np.empty_like(arrays["observations"])
        nxt[:-1] = arrays["observations"][1:]
        nxt[dataset.episode_starts[1:] - 1] = dataset.final_observations
        arrays["next_observations"] = nxt

    def write(f: Any) -> None:
        with h5py.File(f, "w") as h5:
            for key, value in arrays.items():
                h5.create_dataset(key, data=value)
            if "random" in dataset.ref_scores and "expert" in dataset.ref_scores:
                h5.attrs["ref_min_score"] = float(dataset.ref_scores["random"])
                h5.attrs["ref_max_score"] = float(dataset.ref_scores["expert"])
            if dataset.env_id:
                h5.attrs["env_id"] = dataset.env_id

    atomic_write(path, write)
    return path


def _env_spec(dataset: EpisodeDataset) -> Any:
    """The env's spec with the time limit the data was recorded under, so Minari recovers that env."""
    if not dataset.env_id:
        return None
    import gymnasium as gym

    spec = gym.spec(dataset.env_id)
    limit = dataset.metadata.get("protocol", {}).get("max_episode_steps")
    return dataclasses.replace(spec, max_episode_steps=limit) if limit else spec


def minari_id(dataset: EpisodeDataset) -> str:
    """``dtrl/<family>/<kind>-v0`` for collected datasets, else ``dtrl/<name>-v0``."""
    meta = dataset.metadata
    if meta.get("family") and meta.get("kind"):
        return f"dtrl/{meta['family']}/{meta['kind']}-v0"
    return f"dtrl/{dataset.name.replace('/', '-')}-v0"


def write_minari(dataset: EpisodeDataset, root: str | os.PathLike | None = None) -> Path:
    """Write a Minari dataset with ``minari.create_dataset_from_buffers``; returns its directory.

    ``root`` is the Minari datasets root to write under (default: Minari's own,
    ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``), so
    ``minari.load_dataset(id)`` opens it with that root. A write that fails
    leaves no partial dataset.
    """
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.storage import get_dataset_path

    if dataset.final_observations is None:
        raise DtrlError(
            f"dataset {dataset.name!r} has no final observations, which Minari needs (T + 1 observations "
            "per episode): export a dataset made by `dtrl data collect`, or a Minari dataset read by dtrl"
        )
    dataset_id = minari_id(dataset)
    saved = os.environ.get("MINARI_DATASETS_PATH")
    if root is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        target = get_dataset_path(dataset_id)
        if target.exists():
            raise DtrlError(
                f"Minari dataset {dataset_id} already exists at {target}: delete it or choose another --out"
            )
        buffers = [
            EpisodeBuffer(
                id=i,
                observations=np.concatenate([ep.observations, dataset.final_observations[i][None]]),
                actions=ep.actions,
                rewards=ep.rewards,
                terminations=ep.terminations,
                truncations=ep.truncations,
                infos={},
            )
            for i, ep in enumerate(dataset)
        ]
        ref = dataset.ref_scores
        has_ref = "random" in ref and "expert" in ref
        try:
            with warnings.catch_warnings():  # Minari nags about author, email and permalink, which dtrl cannot know
                warnings.simplefilter("ignore", UserWarning)
                minari.create_dataset_from_buffers(
                    dataset_id,
                    buffers,
                    env=_env_spec(dataset),
                    author="dtrl",
                    algorithm_name=str(dataset.metadata.get("made_by", "dtrl")),
                    ref_min_score=float(ref["random"]) if has_ref else None,
                    ref_max_score=float(ref["expert"]) if has_ref else None,
                    observation_space=dataset.observation_space,
                    action_space=dataset.action_space,
                    description=f"{dataset.name}: written by dtrl data export",
                )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    finally:
        if saved is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved
    return target
