"""The DQN-replay format (Agarwal et al. 2020) and the Decision Transformer's 1% subset of it.

DQN-replay keeps, per game and run, the replay buffer of a Dopamine DQN agent at
each of its 50 iterations: ``replay_logs/$store$_<element>_ckpt.<N>.gz`` for the
elements ``observation`` (one 84×84 uint8 frame per step), ``action`` (int32),
``reward`` (float32, clipped to [-1, 1] by Dopamine) and ``terminal`` (uint8, 1 on
an episode's last step), each a ``np.save`` array inside gzip, plus
``add_count_ckpt.<N>.gz`` (how many transitions the buffer had received).

:func:`read_dqn_replay` samples the paper's subset the way its code does, up to
small details: pick a checkpoint at random, take the next ``trajectories_per_buffer``
whole episodes from where the last visit to that checkpoint stopped, and repeat until
``transitions`` steps (500k: 1% of 50M) are held; an episode cut off by the end
of a buffer is dropped. (The paper's code takes one episode more per visit, checks
the budget only between visits and drops a visit that reaches a buffer's end; dtrl
stops at the budget.) Like the paper's code it keeps every row, including the
``stack size − 1`` blank rows Dopamine writes before each new episode. Only the first ``buffer_capacity`` rows of a checkpoint
are decompressed (the paper's code loads 100k per checkpoint), so a 7 GB
checkpoint costs 0.7 GB while it is read. :func:`write_checkpoint` writes the
same files (``dtrl data collect ALE/...`` records its agent's replay with it).
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.data.episodes import EpisodeDataset
from dtrl.envs import atari
from dtrl.envs.scores import env_family
from dtrl.errors import DtrlError
from dtrl.io import atomic_write

STORE_PREFIX = "$store$_"
#: The per-transition arrays and the dtype Dopamine stores each in.
ELEMENTS: dict[str, np.dtype] = {
    "observation": np.dtype(np.uint8),
    "action": np.dtype(np.int32),
    "reward": np.dtype(np.float32),
    "terminal": np.dtype(np.uint8),
}
#: The paper's subset: 1% of 50 checkpoints × 1M transitions, 10 episodes per visit, 100k rows per checkpoint.
SUBSET_TRANSITIONS = 500_000
TRAJECTORIES_PER_BUFFER = 10
BUFFER_CAPACITY = 100_000
_CKPT = re.compile(r"^\$store\$_observation_ckpt\.(\d+)\.gz$")


def checkpoint_file(directory: Path, element: str, number: int) -> Path:
    """``$store$_<element>_ckpt.<N>.gz`` (per-transition arrays) or ``<element>_ckpt.<N>.gz`` (add_count)."""
    prefix = STORE_PREFIX if element in ELEMENTS else ""
    return directory / f"{prefix}{element}_ckpt.{number}.gz"


def checkpoint_numbers(directory: str | os.PathLike) -> list[int]:
    """The checkpoint numbers with an observation file in ``directory``, ascending."""
    path = Path(directory)
    if not path.is_dir():
        return []
    return sorted(int(m.group(1)) for p in path.iterdir() if (m := _CKPT.match(p.name)))


def is_dqn_replay(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds DQN-replay checkpoints (a ``replay_logs`` folder)."""
    return bool(checkpoint_numbers(directory))


def write_checkpoint(
    directory: str | os.PathLike,
    number: int,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    compresslevel: int = 6,
) -> None:
    """Write one checkpoint in Dopamine's layout, each file atomically."""
    directory = Path(directory)
    n = len(observations)
    arrays = {"observation": observations, "action": actions, "reward": rewards, "terminal": terminals}
    for element, values in arrays.items():
        if len(values) != n:
            raise DtrlError(f"checkpoint {number}: {len(values)} {element}s for {n} observations")
        _write_npy_gz(
            checkpoint_file(directory, element, number), np.asarray(values, dtype=ELEMENTS[element]), compresslevel
        )
    _write_npy_gz(checkpoint_file(directory, "add_count", number), np.array(n, dtype=np.int64), compresslevel)


def _write_npy_gz(path: Path, array: np.ndarray, compresslevel: int) -> None:
    def write(f: Any) -> None:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=compresslevel) as out:
            np.save(out, array, allow_pickle=False)

    atomic_write(path, write)


def _read_npy_gz(path: Path, rows: int | None = None) -> np.ndarray:
    """The array in ``path``, decompressing only its first ``rows`` rows when given."""
    try:
        with gzip.open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            if fortran or dtype.hasobject:
                raise ValueError("a Fortran-ordered or object array")
            if shape and rows is not None:
                shape = (min(shape[0], rows), *shape[1:])
            size = int(np.prod(shape)) * dtype.itemsize
            data = f.read(size)
    except FileNotFoundError:
        raise DtrlError(f"{path} is missing: a DQN-replay checkpoint needs all of {', '.join(ELEMENTS)}") from None
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DtrlError(
            f"{path} is not a readable gzipped .npy array ({type(e).__name__}: {e}): download it again"
        ) from None
    if len(data) != size:
        raise DtrlError(f"{path} is truncated ({len(data)} of {size} bytes): download it again")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def read_checkpoint(directory: str | os.PathLike, number: int, rows: int | None = None) -> dict[str, np.ndarray]:
    """One checkpoint's arrays, up to ``rows`` rows and never past the transitions it received."""
    directory = Path(directory)
    add_count = checkpoint_file(directory, "add_count", number)
    if add_count.is_file():
        received = int(_read_npy_gz(add_count))
        rows = received if rows is None else min(rows, received)
    arrays = {element: _read_npy_gz(checkpoint_file(directory, element, number), rows) for element in ELEMENTS}
    n = len(arrays["observation"])
    for element, values in arrays.items():
        if len(values) != n:
            raise DtrlError(
                f"{directory}: checkpoint {number} has {n} observations but {len(values)} {element}s: "
                "the files are from different checkpoints or truncated"
            )
    if arrays["observation"].ndim != 3:
        raise DtrlError(
            f"{directory}: checkpoint {number} holds observations of shape {arrays['observation'].shape[1:]}, "
            "not single 2-D frames"
        )
    return arrays


def read_dqn_replay(
    directory: str | os.PathLike,
    transitions: int = SUBSET_TRANSITIONS,
    *,
    trajectories_per_buffer: int = TRAJECTORIES_PER_BUFFER,
    buffer_capacity: int | None = BUFFER_CAPACITY,
    seed: int = 0,
    env_id: str | None = None,
    name: str | None = None,
) -> EpisodeDataset:
    """Sample the paper's subset of a ``replay_logs`` directory into an image dataset (one frame per step).

    Stops early, with what it holds, when every checkpoint is used up.
    ``buffer_capacity=None`` reads whole checkpoints. ``env_id`` defaults to the
    game named in the path (DQN-replay's ``<Game>/<run>/replay_logs``).
    """
    directory = Path(directory)
    numbers = checkpoint_numbers(directory)
    if not numbers:
        raise DtrlError(f"{directory} holds no DQN-replay checkpoint ($store$_observation_ckpt.N.gz)")
    if transitions < 1 or trajectories_per_buffer < 1:
        raise DtrlError("the subset needs a positive number of transitions and trajectories per buffer")
    env_id = env_id or _game_in_path(directory)
    rng = np.random.default_rng(seed)
    cursor = dict.fromkeys(numbers, 0)
    open_numbers = list(numbers)
    pieces: list[dict[str, np.ndarray]] = []
    held, visits = 0, 0
    loaded: tuple[int, dict[str, np.ndarray]] | None = None
    while held < transitions and open_numbers:
        number = int(rng.choice(open_numbers))
        if loaded is None or loaded[0] != number:
            loaded = (number, read_checkpoint(directory, number, buffer_capacity))
        arrays = loaded[1]
        ends = np.flatnonzero(arrays["terminal"][cursor[number] :]) + cursor[number] + 1
        visits += 1
        if not len(ends):  # nothing but a cut-off episode is left in this checkpoint
            open_numbers.remove(number)
            continue
        start = cursor[number]
        for end in ends[:trajectories_per_buffer]:
            pieces.append({k: v[start:end].copy() for k, v in arrays.items()})  # copies free the checkpoint
            held += int(end - start)
            start = int(end)
            if held >= transitions:
                break
        cursor[number] = start
    if not pieces:
        raise DtrlError(
            f"{directory}: no checkpoint holds a whole episode (no terminal flag in the rows read): "
            "download the checkpoints again or point at another replay_logs directory"
        )
    return _dataset(
        pieces,
        directory,
        env_id,
        name,
        {
            "transitions": transitions,
            "trajectories_per_buffer": trajectories_per_buffer,
            "buffer_capacity": buffer_capacity,
            "seed": seed,
            "visits": visits,
            "checkpoints": numbers,
        },
    )


def _dataset(
    pieces: list[dict[str, np.ndarray]], directory: Path, env_id: str | None, name: str | None, subset: dict[str, Any]
) -> EpisodeDataset:
    frames = np.concatenate([p["observation"] for p in pieces])
    actions = np.concatenate([p["action"] for p in pieces]).astype(np.int64)
    lengths = np.array([len(p["action"]) for p in pieces], dtype=np.int64)
    ends = np.zeros(len(frames), dtype=bool)
    ends[np.cumsum(lengths) - 1] = True
    game = env_family(env_id) if env_id else None
    n_actions = atari.NUM_ACTIONS.get(game or "", int(actions.max()) + 1)
    return EpisodeDataset.from_arrays(
        observations=frames,
        actions=actions,
        rewards=np.concatenate([p["reward"] for p in pieces]).astype(np.float32),
        terminations=ends,
        truncations=np.zeros(len(frames), dtype=bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        observation_space=gym.spaces.Box(0, 255, (atari.FRAME_STACK, *frames.shape[1:]), np.uint8),
        action_space=gym.spaces.Discrete(n_actions),
        name=name or f"{game or directory.name}-dqn-replay",
        env_id=env_id,
        ref_scores=atari.gamer_reference(env_id) if game in atari.GAMER_REF_SCORES else {},
        metadata={
            "source": "dqn-replay",
            "directory": str(directory),
            "frame_stack": atari.FRAME_STACK,
            "subset": subset,
        },
    )


def _game_in_path(directory: Path) -> str | None:
    """``.../Breakout/1/replay_logs`` -> ``ALE/Breakout-v5`` for the games dtrl knows."""
    for part in reversed(directory.resolve().parts):
        if part.lower() in atari.NUM_ACTIONS:
            return f"ALE/{part[0].upper()}{part[1:].lower()}-v5"
    return None
