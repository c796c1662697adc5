"""D4RL-protocol collection (dtrl.data.collect.collect_d4rl), the dataset cache and the export formats.

One tiny collection (InvertedPendulum-v5, 8k agent steps, 50-step episodes) is
shared by the module: it learns enough in seconds for the protocol's ordering
to show, and its 50-step limit is reached often, so truncations appear.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from dtrl.collect.d4rl import collect_d4rl
from dtrl.collect.recorder import record_vector, uniform_batch_policy
from dtrl.data.cache import CACHE_ENV_VAR, default_cache_dir
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.readers import open_dataset as load_dataset
from dtrl.data.readers import read_d4rl, read_minari
from dtrl.data.writers import write_d4rl, write_minari
from dtrl.errors import DtrlError

ENV = "InvertedPendulum-v5"
LIMIT = 50
SETTINGS = dict(
    transitions=1000, agent_steps=8192, max_episode_steps=LIMIT, snapshots=4, eval_episodes=5, ref_episodes=10
)
ARRAYS = ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts", "final_observations")


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, EpisodeDataset], list[str]]:
    import torch

    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("cache")
    lines: list[str] = []
    paths = collect_d4rl(ENV, cache_dir=cache, seed=0, log=lines.append, **SETTINGS)
    return cache, {kind: EpisodeDataset.load(path) for kind, path in paths.items()}, lines


def assert_same(a: EpisodeDataset, b: EpisodeDataset) -> None:
    for key in ARRAYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


def test_names_reference_scores_and_return_order(collected):
    cache, ds, _ = collected
    assert sorted(p.stem for p in cache.glob("*.npz")) == sorted(f"invertedpendulum-{k}" for k in ds)
    ref = ds["medium"].ref_scores
    assert set(ref) == {"random", "expert"} and all(d.ref_scores == ref for d in ds.values())
    mean = {k: d.episode_returns.mean() for k, d in ds.items()}
    assert ref["random"] < mean["medium"] < ref["expert"]
    assert mean["random"] < mean["medium"] < mean["expert"]
    assert abs(mean["random"] - ref["random"]) < 0.5 * ref["random"] + 2
    for kind in ("random", "medium", "expert"):
        assert len(ds[kind]) >= SETTINGS["transitions"]
    meta = ds["medium"].metadata
    assert meta["kind"] == "medium" and meta["protocol"]["seed"] == 0
    assert 0 < meta["medium_steps"] < meta["expert_steps"] == meta["protocol"]["agent_steps"] >= 8192


def test_medium_replay_holds_every_training_episode_until_the_medium_snapshot(collected):
    _, ds, _ = collected
    replay, medium_steps = ds["medium-replay"], ds["medium"].metadata["medium_steps"]
    n_envs = ds["medium"].metadata["protocol"]["n_envs"]
    # All transitions collected by then, less the episodes still running at that step (< one per env).
    assert medium_steps - n_envs * LIMIT < len(replay) <= medium_steps
    # It is the early, low-return data: below the medium policy's own return.
    assert replay.episode_returns.mean() < ds["medium"].episode_returns.mean()


def test_medium_expert_is_medium_then_expert(collected):
    _, ds, _ = collected
    both, medium, expert = ds["medium-expert"], ds["medium"], ds["expert"]
    assert both.num_episodes == medium.num_episodes + expert.num_episodes
    for key in ("observations", "actions", "rewards", "terminations", "truncations", "final_observations"):
        np.testing.assert_array_equal(
            getattr(both, key), np.concatenate([getattr(medium, key), getattr(expert, key)]), err_msg=key
        )


def test_episodes_are_truncated_at_the_step_limit_apart_from_terminations(collected):
    _, ds, _ = collected
    for kind, d in ds.items():
        ends = np.flatnonzero(d.terminations | d.truncations)
        np.testing.assert_array_equal(ends, d.episode_starts[1:] - 1, err_msg=kind)
        lengths = d.episode_lengths
        last = d.episode_starts[1:] - 1
        assert (lengths <= LIMIT).all()
        assert d.terminations[last[lengths < LIMIT]].all(), "an early end is a termination"
        # At the limit it is a truncation, unless the pole fell on that very step (SB3 then keeps termination only).
        assert (d.truncations[last] | d.terminations[last])[lengths == LIMIT].all()
        assert not d.truncations[last[lengths < LIMIT]].any(), kind
        assert d.final_observations.shape == (d.num_episodes, 4)
    assert ds["expert"].truncations.sum() > 0, "the expert reaches the step limit"


def test_rerun_reuses_the_agent_and_remakes_identical_data(collected, tmp_path):
    cache, ds, first_lines = collected
    assert any("training return" in line for line in first_lines)
    (cache / "invertedpendulum-medium.npz").unlink()
    lines: list[str] = []
    collect_d4rl(ENV, ["medium", "expert"], cache_dir=cache, seed=0, log=lines.append, **SETTINGS)
    assert not any("training return" in line for line in lines), "the cached agent is reused, not retrained"
    assert any("invertedpendulum-expert: already in the cache" in line for line in lines)
    assert_same(EpisodeDataset.load(cache / "invertedpendulum-medium.npz"), ds["medium"])
    with pytest.raises(DtrlError, match="other settings"):
        collect_d4rl(ENV, ["expert"], cache_dir=cache, seed=1, **SETTINGS)


def test_medium_expert_alone_uses_or_remakes_its_parts(collected, tmp_path):
    """--kinds medium-expert needs medium and expert without asking for them: cached or not."""
    cache, ds, _ = collected
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (copy / "invertedpendulum-medium-expert.npz").unlink()
    (copy / "invertedpendulum-expert.npz").unlink()
    paths = collect_d4rl(ENV, ["medium-expert"], cache_dir=copy, seed=0, **SETTINGS)
    assert list(paths) == ["medium-expert"]
    assert_same(EpisodeDataset.load(paths["medium-expert"]), ds["medium-expert"])


def test_minari_round_trip(collected, tmp_path, monkeypatch):
    import minari

    _, ds, _ = collected
    original = ds["medium"]
    where = write_minari(original, tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    opened = minari.load_dataset("dtrl/invertedpendulum/medium-v0")
    assert opened.total_episodes == original.num_episodes and opened.total_steps == len(original)
    first = next(opened.iterate_episodes())
    np.testing.assert_array_equal(first.observations[:-1], original.episode(0).observations)
    np.testing.assert_array_equal(first.observations[-1], original.final_observations[0])
    assert opened.recover_environment().spec.max_episode_steps == LIMIT
    back = read_minari(where)
    for key in ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts"):
        np.testing.assert_array_equal(getattr(back, key), getattr(original, key), err_msg=key)
    assert back.ref_scores == pytest.approx(original.ref_scores)
    with pytest.raises(DtrlError, match="already exists"):
        write_minari(original, tmp_path)


def test_d4rl_export_is_read_back_by_read_d4rl(collected, tmp_path):
    import h5py

    _, ds, _ = collected
    original = ds["medium-replay"]
    path = write_d4rl(original, tmp_path / "replay.hdf5")
    back = read_d4rl(path)
    for key in ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts"):
        np.testing.assert_array_equal(getattr(back, key), getattr(original, key), err_msg=key)
    assert back.ref_scores == pytest.approx(original.ref_scores)
    with h5py.File(path) as f:
        nxt = f["next_observations"][()]
    np.testing.assert_array_equal(
        nxt[:-1][~(original.terminations | original.truncations)[:-1]],
        original.observations[1:][~(original.terminations | original.truncations)[:-1]],
    )
    np.testing.assert_array_equal(nxt[original.episode_starts[1:] - 1], original.final_observations)


def test_cached_datasets_load_by_name(collected, monkeypatch, tmp_path):
    cache, ds, _ = collected
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    assert default_cache_dir() == cache
    assert_same(load_dataset("invertedpendulum-expert"), ds["expert"])
    with pytest.raises(DtrlError, match="dtrl data list"):
        load_dataset("invertedpendulum-nothing")
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert default_cache_dir() == tmp_path / "dtrl" / "datasets"


def test_cli_list_info_and_export(collected, tmp_path):
    cache, ds, _ = collected
    env = {**os.environ, CACHE_ENV_VAR: str(cache)}

    def dtrl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dtrl", *args], capture_output=True, text=True, env=env, timeout=120
        )

    listed = dtrl("data", "list")
    assert listed.returncode == 0 and "invertedpendulum-medium-replay" in listed.stdout.replace("\n", "")
    info = dtrl("data", "info", "invertedpendulum-medium")
    assert info.returncode == 0, info.stderr
    assert "ref_scores" in info.stdout and "collect_d4rl" in info.stdout and "medium at" in info.stdout
    out = tmp_path / "m.hdf5"
    exported = dtrl("data", "export", "invertedpendulum-medium", "--format", "d4rl", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert len(read_d4rl(out)) == len(ds["medium"])
    bad = dtrl("data", "export", "invertedpendulum-medium", "--format", "parquet", "--out", str(out))
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown export format")


def test_record_vector_budget_and_seed():
    import gymnasium as gym

    space = gym.make("Hopper-v5").action_space

    def run(seed: int, **budget: int):
        return record_vector(uniform_batch_policy(space, seed), "Hopper-v5", seed=seed, n_envs=4, **budget)

    a, b = run(0, num_transitions=300), run(0, num_transitions=300)
    da, db = a.dataset(), b.dataset()
    assert_same(da, db)
    assert len(da) >= 300 and da.num_episodes == len(a.final_observations)
    assert len(run(0, num_episodes=6).episodes) == 6
    assert not np.array_equal(run(1, num_transitions=300).dataset().observations[:10], da.observations[:10])
    with pytest.raises(DtrlError, match="exactly one"):
        record_vector(uniform_batch_policy(space), "Hopper-v5")
