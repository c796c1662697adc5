"""benchmarks/gym_bench.py: the d3rlpy adapter keeps the episodes, a tiny run writes CSV + report, reruns resume."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from dtrl.data import EpisodeDataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
HAS_D3RLPY = importlib.util.find_spec("d3rlpy") is not None
needs_d3rlpy = pytest.mark.skipif(not HAS_D3RLPY, reason='d3rlpy is not installed (pip install -e ".[bench]")')


def _bench():
    import gym_bench

    return gym_bench


@pytest.fixture()
def tiny_dataset(pendulum_dataset: EpisodeDataset, tmp_path: Path) -> Path:
    """Pendulum episodes with reference scores, so the normalised score is defined."""
    data = EpisodeDataset.from_episodes(
        list(pendulum_dataset)[:6],
        observation_space=pendulum_dataset.observation_space,
        action_space=pendulum_dataset.action_space,
        name="pendulum-tiny",
        env_id="Pendulum-v1",
        ref_scores={"random": -1200.0, "expert": -150.0},
    )
    return data.save(tmp_path / "pendulum-tiny.npz")


@needs_d3rlpy
def test_adapter_keeps_episodes_and_transitions(pendulum_dataset: EpisodeDataset) -> None:
    from d3rlpy_adapter import to_mdp_dataset

    # one episode ends by termination, one by truncation: both must stay boundaries
    episodes = list(pendulum_dataset)[:3]
    episodes[0].terminations[-1], episodes[0].truncations[-1] = True, False
    data = EpisodeDataset.from_episodes(episodes, observation_space=pendulum_dataset.observation_space,
                                        action_space=pendulum_dataset.action_space)  # fmt: skip
    mdp = to_mdp_dataset(data)
    assert len(mdp.episodes) == data.num_episodes
    assert sum(e.size() for e in mdp.episodes) == len(data)
    # d3rlpy learns from a truncated episode's last step only with its next observation, which it lacks
    assert mdp.transition_count == len(data) - int((~data.terminations[data.episode_starts[1:] - 1]).sum())
    for ours, theirs in zip(data, mdp.episodes):
        np.testing.assert_array_equal(theirs.observations, ours.observations)
        np.testing.assert_array_equal(theirs.actions, ours.actions)
        np.testing.assert_array_equal(theirs.rewards.reshape(-1), ours.rewards)
        assert bool(theirs.terminated) == bool(ours.terminations[-1])


def _run(bench, tiny: Path, out: Path, methods: str) -> None:
    bench.main(
        ["--budget", "cpu-reduced", "--steps", "8", "--datasets", str(tiny), "--methods", methods, "--seeds", "0",
         "--out", str(out), "--work", str(out / "runs")]
    )  # fmt: skip


def test_tiny_run_writes_csv_report_and_resumes(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    bench = _bench()
    monkeypatch.setitem(bench.BUDGETS, "cpu-reduced", bench.Budget(8, 2, 2, 3, 1, small_dt=True))
    methods = "dt,cql" if HAS_D3RLPY else "dt,bc"
    out = tmp_path / "results"
    _run(bench, tiny_dataset, out, methods)
    rows = bench.read_rows(out / bench.CSV_FILE)
    assert [(r["method"], r["dataset"], r["seed"], r["steps"]) for r in rows] == [
        (m, "pendulum-tiny", "0", "8") for m in methods.split(",")
    ]
    for r in rows:
        assert [p[0] for p in bench._pairs(r["curve"])] == [4.0, 8.0]  # evaluated at both points
        assert int(r["eval_seed"]) == bench.EVAL_SEED and int(r["episodes"]) == 2
    assert len(bench._pairs(rows[0]["calibration"])) == 3  # DT's target sweep
    report = (out / "gym.md").read_text()
    assert "Reduced budget" in report and "pendulum-tiny" in report
    assert (out / bench.CURVES_PNG).stat().st_size > 0 and (out / bench.CALIBRATION_PNG).stat().st_size > 0

    _run(bench, tiny_dataset, out, methods)  # everything is done: nothing reruns, nothing is appended
    assert len(bench.read_rows(out / bench.CSV_FILE)) == 2
    assert capsys.readouterr().out.count("skip ") == 2


def test_unknown_method_is_a_one_line_error(capsys) -> None:
    with pytest.raises(SystemExit):
        _bench().parse_args(["--methods", "dt,ppo"])
    assert "unknown method(s) ppo" in capsys.readouterr().err
