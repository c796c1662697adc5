"""Readers that turn D4RL HDF5 files and Minari datasets into an :class:`EpisodeDataset`, and
:func:`open_dataset`, the one way to open a dataset by path, id or name.

Every reader checks what it reads and turns the libraries' low-level failures
(h5py's ``OSError``, Minari's ``FileNotFoundError`` / ``ValueError``) into a
one-line :class:`DtrlError` that says what is wrong and how to fix it.
``h5py`` and ``minari`` are imported inside the readers so that importing
``dtrl.data`` (and so the CLI) stays fast for users who never read them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.data.cache import cached_dataset
from dtrl.data.dqn_replay import is_dqn_replay, read_dqn_replay
from dtrl.data.episodes import NATIVE_SUFFIX, Episode, EpisodeDataset
from dtrl.data.spaces import infer_box
from dtrl.data.store import is_store, open_store
from dtrl.errors import DtrlError

QUICKSTART_DATASET = "quickstart"
#: The dataset ``dataset=quickstart`` names, shipped in the package (made by :mod:`dtrl.collect.quickstart`).
QUICKSTART_PATH = Path(__file__).resolve().parent.parent / "assets" / "quickstart.npz"
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
D4RL_SUFFIXES = (".hdf5", ".h5")
# A Minari id is "namespace/.../name-vN": word characters and dashes split by '/'.
_MINARI_ID = re.compile(r"^[\w-]+(?:/[\w-]+)+$")
_FORMATS_HINT = (
    "give a .npz (dtrl), .hdf5 (D4RL) file, a dtrl store, DQN-replay or Minari dataset directory, a Minari id, "
    "or the name of a cached dataset (`dtrl data list`; make one with `dtrl data collect`)"
)


def _one_line(e: BaseException) -> str:
    """The exception as ``Type: message`` on one line, for embedding in a DtrlError."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


# --------------------------------------------------------------------------- D4RL
def read_d4rl(path: str | os.PathLike, env_id: str | None = None, name: str | None = None) -> EpisodeDataset:
    """Read a D4RL-layout HDF5 file (flat per-transition arrays) into episodes.

    Episodes end at every step flagged in ``terminals`` or ``timeouts``; steps
    after the last flag (a collection cut short) form a final episode, marked
    truncated at its last step. Files older than ``timeouts`` are read with no
    time-limit ends.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DtrlError(f"D4RL file {path} {what}: give the path of a D4RL .hdf5 file")
    try:
        with h5py.File(path, "r") as f:
            present = sorted(f.keys())
            required = D4RL_KEYS[:-1]  # "timeouts" is optional in old files
            missing = [k for k in required if not isinstance(f.get(k), h5py.Dataset)]
            if missing:
                shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "")
                raise DtrlError(
                    f"{path} is not a D4RL dataset: it lacks {', '.join(missing)} "
                    f"(it has: {shown or 'no keys'}); a D4RL file needs {', '.join(required)} "
                    "and optionally timeouts (Minari datasets: give their directory)"
                )
            arrays = {k: np.asarray(f[k][()]) for k in D4RL_KEYS if isinstance(f.get(k), h5py.Dataset)}
            attrs = dict(f.attrs)
    except OSError as e:
        raise DtrlError(
            f"{path} is not a readable HDF5 file ({_one_line(e)}); it may be truncated "
            "or corrupt: download or export it again"
        ) from None

    for key, value in arrays.items():
        if value.ndim == 0:
            raise DtrlError(
                f"{path}: {key!r} is a single value, not one entry per transition: the file is not in D4RL layout"
            )
    n = len(arrays["observations"])
    if "timeouts" not in arrays:
        arrays["timeouts"] = np.zeros(n, dtype=bool)
    for key, value in arrays.items():
        if len(value) != n:
            raise DtrlError(
                f"{path}: {key!r} has {len(value)} entries but 'observations' has {n}: "
                "every D4RL key needs one entry per transition; the file is inconsistent, "
                "export it again"
            )
    arrays = _check_d4rl_ranks(path, arrays)

    terminals = arrays["terminals"].astype(bool)
    truncations = arrays["timeouts"].astype(bool)  # astype copies: the mark below is ours
    ends = np.flatnonzero(terminals | truncations) + 1
    if n and (ends.size == 0 or ends[-1] != n):
        ends = np.append(ends, n)
        truncations[n - 1] = True
    observations, actions = arrays["observations"], arrays["actions"]
    obs_dtype = observations.dtype if observations.dtype.kind == "f" else np.float32
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=observations.shape[1:], dtype=obs_dtype)
    try:
        return EpisodeDataset.from_arrays(
            observations=observations,
            actions=actions,
            rewards=arrays["rewards"],
            terminations=terminals,
            truncations=truncations,
            episode_starts=np.concatenate([[0], ends]),
            observation_space=obs_space,
            action_space=infer_box(actions),
            name=name or path.stem,
            env_id=env_id,
            ref_scores=_ref_scores(attrs),
            metadata={"source": "d4rl", "file": path.name},
        )
    except DtrlError as e:  # NaN, Inf, empty file: say which file
        raise DtrlError(f"{path}: {e}") from None


def _check_d4rl_ranks(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reject arrays of the wrong rank; accept (N, 1) scalars, as some converters write them."""
    out = dict(arrays)
    for key, value in arrays.items():
        if value.dtype.kind not in "biuf":
            raise DtrlError(
                f"{path}: {key!r} has dtype {value.dtype}, not numbers: a D4RL file holds numeric "
                "arrays (float observations, actions and rewards, bool terminals): export it again"
            )
    for key in ("rewards", "terminals", "timeouts"):
        value = arrays[key]
        if value.ndim == 2 and value.shape[1] == 1:
            out[key] = value[:, 0]
        elif value.ndim != 1:
            raise DtrlError(
                f"{path}: {key!r} has shape {value.shape} but must hold one scalar per "
                f"transition, shape ({len(value)},): the file is not in D4RL layout"
            )
    for key in ("observations", "actions"):
        if arrays[key].ndim != 2:
            raise DtrlError(
                f"{path}: {key!r} has shape {arrays[key].shape} but must be "
                f"(transitions, {key[:3]}_dim): the file is not in D4RL layout"
            )
    if arrays["actions"].dtype.kind != "f":
        raise DtrlError(
            f"{path}: 'actions' are {arrays['actions'].dtype} but D4RL actions are "
            "continuous floats: convert the file or use the Minari format for discrete actions"
        )
    return out


def _ref_scores(attrs: Mapping[str, Any]) -> dict[str, float]:
    """Reference returns under Minari's names (D4RL root attributes may use them too)."""
    names = {"random": "ref_min_score", "expert": "ref_max_score"}
    return {k: float(attrs[a]) for k, a in names.items() if attrs.get(a) is not None}


# --------------------------------------------------------------------------- Minari
def read_minari(dataset: str | os.PathLike, name: str | None = None) -> EpisodeDataset:
    """Read a Minari dataset given by a local dataset id or by its directory.

    Never downloads: a missing id is an error that says how to fetch it. Minari
    stores T + 1 observations per episode (the final one follows the last
    action); dtrl keeps the T on which an action was taken.
    """
    import minari

    source = str(dataset)
    try:
        if isinstance(dataset, os.PathLike) or os.path.exists(source):
            data = minari.MinariDataset(_minari_data_dir(Path(source)))
        else:
            data = minari.load_dataset(source, download=False)
    except FileNotFoundError:
        raise DtrlError(
            f"Minari dataset {source!r} is not available locally (looked under "
            f"{os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')}): run "
            f"`minari download {source}` or give the dataset's directory"
        ) from None
    except ImportError as e:
        raise DtrlError(
            f"reading Minari dataset {source} needs a missing package ({_one_line(e)}): "
            "install it (Minari's arrow and parquet formats need pyarrow)"
        ) from None
    except (ValueError, KeyError, OSError, AssertionError) as e:
        # minari validates metadata with bare asserts (e.g. a missing env_spec)
        detail = _one_line(e) if str(e) else "its metadata.json fails Minari's checks"
        raise DtrlError(
            f"cannot open Minari dataset {source} ({detail}): check that it is a "
            f"complete Minari dataset that Minari {minari.__version__} supports"
        ) from None

    for role, space in (("observation", data.observation_space), ("action", data.action_space)):
        if not isinstance(space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise DtrlError(
                f"Minari dataset {data.id} has a {type(space).__name__} {role} space, but dtrl "
                "reads Box and Discrete spaces only: flatten the dataset first "
                "(e.g. gymnasium.spaces.flatten each step into a new Minari dataset)"
            )
    try:
        episodes = [
            Episode(
                observations=np.asarray(ep.observations)[:-1],
                actions=np.asarray(ep.actions),
                rewards=np.asarray(ep.rewards),
                terminations=np.asarray(ep.terminations, dtype=bool),
                truncations=np.asarray(ep.truncations, dtype=bool),
            )
            for ep in data.iterate_episodes()
        ]
    except (OSError, KeyError) as e:
        raise DtrlError(
            f"cannot read the episodes of Minari dataset {data.id} ({_one_line(e)}); its "
            "data may be truncated or corrupt: download or create it again"
        ) from None

    return EpisodeDataset.from_episodes(
        episodes,
        observation_space=data.observation_space,
        action_space=data.action_space,
        name=name or data.id,
        env_id=data.env_spec.id if data.env_spec is not None else None,
        ref_scores=_ref_scores(data.storage.metadata),
        metadata={"source": "minari", "dataset_id": data.id},
    )


def _minari_data_dir(path: Path) -> Path:
    """The folder holding ``metadata.json``: a dataset's ``data/`` subfolder, or the path itself."""
    for candidate in (path / "data", path):
        if (candidate / "metadata.json").is_file():
            return candidate
    what = "is not a Minari dataset directory" if path.exists() else "does not exist"
    raise DtrlError(
        f"{path} {what} (no metadata.json in it or in its data/ folder): give a "
        "Minari dataset's folder, e.g. ~/.minari/datasets/NAMESPACE/NAME-v0, or its id"
    )


# --------------------------------------------------------------------------- dispatch
def open_dataset(source: str | os.PathLike, env_id: str | None = None) -> EpisodeDataset:
    """Open any dataset dtrl understands, choosing the reader from what ``source`` is.

    ``quickstart`` is the small Hopper dataset shipped with dtrl.
    ``.npz`` is dtrl's own format, ``.hdf5`` / ``.h5`` a D4RL file, a directory
    marked as a dtrl store (:mod:`dtrl.data.store`) is opened memory-mapped, a DQN-replay
    ``replay_logs`` directory gives the paper's 1% subset (:mod:`dtrl.data.dqn_replay`), and
    any other directory or a ``namespace/name-vN`` string is a Minari dataset; a plain name such as
    ``hopper-medium-replay`` is a dataset in dtrl's cache (:mod:`dtrl.data.cache`). ``env_id``, when given,
    overrides the environment recorded with the data (D4RL files record none).
    """
    if not source:
        raise DtrlError("no dataset given: set dataset=PATH (a .npz, .hdf5, Minari id) or dataset=quickstart")
    path = Path(QUICKSTART_PATH if source == QUICKSTART_DATASET else source)
    suffix = path.suffix.lower()
    if suffix == NATIVE_SUFFIX:
        dataset = EpisodeDataset.load(path)
    elif suffix in D4RL_SUFFIXES:
        dataset = read_d4rl(path)
    elif path.is_dir() and is_store(path):
        dataset = open_store(path)
    elif path.is_dir() and is_dqn_replay(path):
        dataset = read_dqn_replay(path, env_id=env_id)
    elif path.is_dir() or (not path.exists() and isinstance(source, str) and _MINARI_ID.match(source)):
        dataset = read_minari(source)
    elif not path.exists() and isinstance(source, str) and (cached := cached_dataset(source)) is not None:
        dataset = EpisodeDataset.load(cached)
    elif path.exists():
        raise DtrlError(f"dtrl cannot read {path} (suffix {suffix or 'none'!r}): {_FORMATS_HINT}")
    else:
        raise DtrlError(f"no dataset at {source}: {_FORMATS_HINT}")
    if env_id is not None:
        dataset.env_id = env_id
    return dataset
