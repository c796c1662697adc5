"""Dataset readers: a real D4RL file, synthetic D4RL and Minari data, and bad input."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from dtrl.data import EpisodeDataset, read_d4rl, read_minari
from dtrl.data import open_dataset as load_dataset
from dtrl.errors import DtrlError

DOOR = Path(__file__).resolve().parents[3] / "shared" / "data" / "door-human-v0.hdf5"


def raises_one_line(match: str) -> Any:
    """``pytest.raises(DtrlError)`` that also checks the message is a single line."""

    class _Check:
        def __enter__(self) -> None:
            self._cm = pytest.raises(DtrlError, match=match)
            self._info = self._cm.__enter__()

        def __exit__(self, *exc: Any) -> bool:
            handled = self._cm.__exit__(*exc)
            assert "\n" not in str(self._info.value)
            return bool(handled)

    return _Check()


# --------------------------------------------------------------------------- real D4RL file
@pytest.mark.skipif(not DOOR.is_file(), reason=f"shared D4RL test file {DOOR} is absent")
def test_door_human_v0_facts() -> None:
    mtime = DOOR.stat().st_mtime_ns
    ds = load_dataset(DOOR, env_id="AdroitHandDoor-v1")
    assert DOOR.stat().st_mtime_ns == mtime  # read only

    assert ds.name == "door-human-v0" and ds.env_id == "AdroitHandDoor-v1"
    assert len(ds) == 6729
    assert ds.observations.shape == (6729, 39) and ds.observation_space.shape == (39,)
    assert ds.actions.shape == (6729, 28)
    assert np.abs(ds.actions).max() <= 1.0
    assert isinstance(ds.action_space, gym.spaces.Box)
    assert (ds.action_space.low == -1).all() and (ds.action_space.high == 1).all()
    assert ds.num_episodes == 50
    assert ds.episode_lengths.min() == 23 and ds.episode_lengths.max() == 200
    assert ds.terminations.sum() == 25 and ds.truncations.sum() == 25
    assert ds.episode_returns.min() == pytest.approx(-51.03, abs=0.01)
    assert ds.episode_returns.max() == pytest.approx(1136.84, abs=0.01)
    assert ds.rewards.sum(dtype=np.float64) == pytest.approx(19891.4, abs=0.1)
    assert ds.episode_starts[-1] == 6729
    # every episode ends on exactly one flag, and nowhere else
    ends = ds.episode_starts[1:] - 1
    flags = ds.terminations | ds.truncations
    assert flags[ends].all() and flags.sum() == ds.num_episodes


# --------------------------------------------------------------------------- synthetic D4RL
def write_d4rl(path: Path, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def d4rl_arrays(n: int, seed: int = 0, flag_p: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, 5)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": rng.random(n) < flag_p,
        "timeouts": rng.random(n) < flag_p,
    }


def reference_split(terminals: np.ndarray, timeouts: np.ndarray) -> list[tuple[int, int]]:
    """The obvious per-step loop the vectorised reader must agree with."""
    spans, start = [], 0
    for t in range(len(terminals)):
        if terminals[t] or timeouts[t]:
            spans.append((start, t + 1))
            start = t + 1
    if start < len(terminals):
        spans.append((start, len(terminals)))
    return spans


@pytest.mark.parametrize("with_timeouts", [True, False])
@pytest.mark.parametrize("trailing", [0, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_d4rl_split_matches_reference_loop(tmp_path: Path, with_timeouts: bool, trailing: int, seed: int) -> None:
    arrays = d4rl_arrays(300, seed)
    if trailing:  # a flag, then `trailing` unflagged steps: a collection cut short
        arrays["terminals"][-trailing:] = arrays["timeouts"][-trailing:] = False
        arrays["terminals"][-trailing - 1] = True
    else:
        arrays["terminals"][-1] = True
    if not with_timeouts:
        del arrays["timeouts"]
    ds = read_d4rl(write_d4rl(tmp_path / "synthetic.hdf5", **arrays))

    timeouts = arrays.get("timeouts", np.zeros(300, dtype=bool))
    spans = reference_split(arrays["terminals"], timeouts)
    assert list(zip(ds.episode_starts[:-1].tolist(), ds.episode_starts[1:].tolist())) == spans
    assert ds.name == "synthetic" and ds.env_id is None
    np.testing.assert_array_equal(ds.terminations, arrays["terminals"])
    expected_truncations = timeouts.copy()
    if trailing:
        assert ds.episode_lengths[-1] == trailing
        expected_truncations[-1] = True
    np.testing.assert_array_equal(ds.truncations, expected_truncations)
    for key in ("observations", "actions", "rewards"):
        np.testing.assert_array_equal(getattr(ds, key), arrays[key])
    for i, (a, b) in enumerate(spans):
        np.testing.assert_array_equal(ds.episode(i).observations, arrays["observations"][a:b])


def test_d4rl_no_flags_is_one_truncated_episode_and_ref_scores(tmp_path: Path) -> None:
    arrays = d4rl_arrays(20, flag_p=0.0)
    path = write_d4rl(tmp_path / "flat.h5", **arrays)
    with h5py.File(path, "a") as f:
        f.attrs["ref_min_score"] = -3.0
        f.attrs["ref_max_score"] = 7.5
    ds = load_dataset(path)
    assert ds.num_episodes == 1 and ds.truncations.sum() == 1 and ds.truncations[-1]
    assert ds.ref_scores == {"random": -3.0, "expert": 7.5}


def test_d4rl_accepts_column_rewards(tmp_path: Path) -> None:
    arrays = d4rl_arrays(30)
    expected = arrays["rewards"].copy()
    arrays["rewards"] = arrays["rewards"][:, None]
    ds = read_d4rl(write_d4rl(tmp_path / "col.hdf5", **arrays), name="col", env_id="X-v0")
    np.testing.assert_array_equal(ds.rewards, expected)
    assert ds.name == "col" and ds.env_id == "X-v0"


# --------------------------------------------------------------------------- Minari
def make_minari(dataset_id: str, env_id: str, episodes: int = 4, steps: int = 15) -> None:
    """Record random-action episodes and store them through Minari's own API.

    ``minari.DataCollector`` needs jax (``minari[create]``), so the episodes are
    collected by hand into Minari's ``EpisodeBuffer`` and written with
    ``create_dataset_from_buffers``: the same storage code path.
    """
    env = gym.make(env_id, max_episode_steps=steps)
    buffers = []
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, term, trunc, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(term)
            truncs.append(trunc)
            done = term or trunc
        buffers.append(
            EpisodeBuffer(
                observations=observations,
                actions=actions,
                rewards=rewards,
                terminations=terms,
                truncations=truncs,
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari nags about author, description, ...
        minari.create_dataset_from_buffers(dataset_id, buffers, env=env, ref_min_score=-2.0, ref_max_score=9.0)


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def assert_matches_minari(ds: EpisodeDataset, dataset_id: str) -> None:
    ref = minari.load_dataset(dataset_id)
    episodes = list(ref.iterate_episodes())
    assert ds.num_episodes == len(episodes)
    assert len(ds) == ref.total_steps
    np.testing.assert_array_equal(ds.episode_lengths, [len(e) for e in episodes])
    np.testing.assert_array_equal(ds.observations, np.concatenate([e.observations[:-1] for e in episodes]))
    np.testing.assert_array_equal(ds.actions, np.concatenate([e.actions for e in episodes]))
    np.testing.assert_array_equal(ds.rewards, np.concatenate([e.rewards for e in episodes]).astype(np.float32))
    for key in ("terminations", "truncations"):
        np.testing.assert_array_equal(getattr(ds, key), np.concatenate([getattr(e, key) for e in episodes]))
    assert ds.observation_space == ref.observation_space
    assert ds.action_space == ref.action_space
    assert ds.env_id == ref.env_spec.id
    assert ds.ref_scores == {"random": -2.0, "expert": 9.0}


@pytest.mark.parametrize(
    ("env_id", "action_type"),
    [("CartPole-v1", gym.spaces.Discrete), ("Pendulum-v1", gym.spaces.Box)],
)
def test_minari_by_id_and_path(minari_root: Path, env_id: str, action_type: type) -> None:
    dataset_id = f"dtrltest/{env_id.split('-')[0].lower()}/random-v0"
    make_minari(dataset_id, env_id)

    by_id = read_minari(dataset_id)
    assert isinstance(by_id.action_space, action_type)
    assert by_id.name == dataset_id
    assert_matches_minari(by_id, dataset_id)

    folder = minari_root / dataset_id
    for source in (folder, folder / "data", str(folder)):
        by_path = load_dataset(source)
        assert_matches_minari(by_path, dataset_id)
        np.testing.assert_array_equal(by_path.observations, by_id.observations)

    via_dispatch = load_dataset(dataset_id, env_id="Other-v0")
    assert via_dispatch.env_id == "Other-v0"
    assert read_minari(folder, name="mine").name == "mine"


def test_minari_dict_space_is_rejected(minari_root: Path) -> None:
    space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,)), "b": gym.spaces.Box(-1, 1, (1,))})
    buffer = EpisodeBuffer(
        observations={"a": [np.zeros(2, np.float32)] * 4, "b": [np.zeros(1, np.float32)] * 4},
        actions=[np.zeros(1, np.float32)] * 3,
        rewards=[0.0] * 3,
        terminations=[False, False, True],
        truncations=[False] * 3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            "dtrltest/dict-v0",
            [buffer],
            observation_space=space,
            action_space=gym.spaces.Box(-1, 1, (1,)),
        )
    with raises_one_line("Dict observation space.*flatten"):
        read_minari("dtrltest/dict-v0")


def test_minari_unknown_id(minari_root: Path) -> None:
    with raises_one_line(r"not available locally.*minari download nobody/nothing-v0"):
        read_minari("nobody/nothing-v0")
    with raises_one_line(r"minari download nobody/nothing-v0"):
        load_dataset("nobody/nothing-v0")
    assert not (minari_root / "nobody").exists()  # nothing was downloaded


def test_minari_path_that_is_no_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with raises_one_line("is not a Minari dataset directory"):
        load_dataset(tmp_path / "empty")
    with raises_one_line("does not exist"):
        read_minari(tmp_path / "absent")


def test_minari_malformed_metadata(minari_root: Path) -> None:
    """minari checks metadata with bare asserts; the user still gets a one-line error."""
    make_minari("dtrltest/badmeta-v0", "Pendulum-v1")
    meta_path = minari_root / "dtrltest" / "badmeta-v0" / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["observation_space"] = 5  # minari asserts a serialised space is a string
    meta_path.write_text(json.dumps(meta))
    with raises_one_line("cannot open Minari dataset dtrltest/badmeta-v0"):
        read_minari("dtrltest/badmeta-v0")


# --------------------------------------------------------------------------- native round trip
@pytest.mark.parametrize("compress", [False, True])
def test_native_round_trip_is_bit_exact(tmp_path: Path, compress: bool) -> None:
    arrays = d4rl_arrays(200, seed=3)
    original = read_d4rl(write_d4rl(tmp_path / "src.hdf5", **arrays), env_id="Door-v0")
    original.ref_scores = {"random": -1.5, "expert": 3.25}
    path = original.save(tmp_path / "ds", compress=compress)
    assert path.suffix == ".npz"

    loaded = load_dataset(path)
    for key in ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts"):
        a, b = getattr(original, key), getattr(loaded, key)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), key
    assert loaded.observation_space == original.observation_space
    assert loaded.action_space == original.action_space
    assert (loaded.name, loaded.env_id) == (original.name, original.env_id)
    assert loaded.ref_scores == original.ref_scores and loaded.metadata == original.metadata
    assert load_dataset(str(path), env_id="New-v1").env_id == "New-v1"


# --------------------------------------------------------------------------- bad input
def test_missing_files(tmp_path: Path) -> None:
    with raises_one_line("does not exist"):
        load_dataset(tmp_path / "nope.hdf5")
    with raises_one_line("does not exist"):
        load_dataset(tmp_path / "nope.npz")
    with raises_one_line("is a directory"):
        read_d4rl(tmp_path)
    with raises_one_line(r"no dataset at .*give a \.npz \(dtrl\), \.hdf5 \(D4RL\) file"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "data.csv").write_text("a,b\n")
    with raises_one_line(r"cannot read .*data\.csv.*give a \.npz"):
        load_dataset(tmp_path / "data.csv")


def test_garbage_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "garbage.hdf5"
    path.write_bytes(os.urandom(4096))
    with raises_one_line("not a readable HDF5 file.*truncated or corrupt"):
        load_dataset(path)


def test_truncated_hdf5(tmp_path: Path) -> None:
    path = write_d4rl(tmp_path / "cut.hdf5", **d4rl_arrays(2000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with raises_one_line("not a readable HDF5 file.*truncated or corrupt"):
        read_d4rl(path)


def test_missing_key_names_what_is_there(tmp_path: Path) -> None:
    arrays = d4rl_arrays(10)
    del arrays["rewards"]
    with raises_one_line(r"lacks rewards \(it has: actions, observations, terminals, timeouts\)"):
        read_d4rl(write_d4rl(tmp_path / "norew.hdf5", **arrays))


def test_mismatched_lengths(tmp_path: Path) -> None:
    arrays = d4rl_arrays(10)
    arrays["actions"] = arrays["actions"][:9]
    with raises_one_line(r"'actions' has 9 entries but 'observations' has 10"):
        read_d4rl(write_d4rl(tmp_path / "short.hdf5", **arrays))


def test_wrong_rank(tmp_path: Path) -> None:
    arrays = d4rl_arrays(10)
    arrays["rewards"] = np.zeros((10, 2), np.float32)
    with raises_one_line(r"'rewards' has shape \(10, 2\) but must hold one scalar"):
        read_d4rl(write_d4rl(tmp_path / "rank.hdf5", **arrays))


def test_nan_observations(tmp_path: Path) -> None:
    arrays = d4rl_arrays(10)
    arrays["observations"][4, 2] = np.nan
    with raises_one_line(r"nan\.hdf5: .*observations contain NaN or Inf \(first at transition 4\)"):
        load_dataset(write_d4rl(tmp_path / "nan.hdf5", **arrays))
