"""``dtrl quickstart``: the target sweep, the verdict's rule, the chart, --seed and the files it leaves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dtrl.cli import app
from dtrl.cli.quickstart import RISE_IN_ERRORS, quickstart_targets, standard_error, sweep_chart, sweep_verdict
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult


def result(target: float, returns: list[float]) -> EvalResult:
    r = np.asarray(returns, dtype=np.float64)
    return EvalResult(target, r, np.full(len(r), 100))


def test_targets_sweep_from_a_quarter_of_the_best_to_the_best() -> None:
    assert quickstart_targets(np.array([10.0, 3412.0, 900.0])) == [900.0, 1400.0, 2100.0, 3400.0]
    assert len(quickstart_targets(np.array([4000.0]), points=6)) == 6


def test_a_clear_rise_follows_the_target() -> None:
    sweep = [result(900, [1000, 1010, 990]), result(1800, [1900, 1950, 1850]), result(3600, [3000, 3100, 2900])]
    verdict = sweep_verdict(sweep)
    assert verdict.follows and "1000 at target 900 -> 3000 at target 3600" in verdict.reason


def test_a_rise_within_the_noise_is_not_called_following() -> None:
    low, high = result(900, [500, 1500, 1000, 100]), result(3600, [400, 2000, 1200, 300])
    rise, noise = high.mean - low.mean, np.hypot(standard_error(low.returns), standard_error(high.returns))
    assert 0 < rise <= RISE_IN_ERRORS * noise  # higher, but not by more than its noise
    verdict = sweep_verdict([low, high])
    assert not verdict.follows and "within" in verdict.reason


def test_a_step_that_falls_by_more_than_its_error_is_not_following() -> None:
    sweep = [
        result(900, [1000, 1001]),
        result(1800, [2500, 2501]),
        result(2700, [1500, 1501]),
        result(3600, [3000, 3001]),
    ]
    verdict = sweep_verdict(sweep)
    assert not verdict.follows and "falls from 2500 to 1500" in verdict.reason


def test_one_episode_per_target_is_never_a_verdict() -> None:
    assert not sweep_verdict([result(900, [10.0]), result(3600, [3000.0])]).follows


def test_the_chart_draws_one_bar_per_target_on_the_datasets_scale() -> None:
    chart = sweep_chart([result(900, [1000.0, 1000.0]), result(3600, [2000.0, 2000.0])], best=4000.0, width=8).plain
    lines = chart.splitlines()
    assert lines[1].split()[:2] == ["900", "██"] and lines[2].split()[:2] == ["3600", "████"]
    assert "dataset best 4000" in lines[-1]


@pytest.mark.slow
def test_quickstart_end_to_end_writes_its_verdict_sweep_and_figures(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "qs"
    args = ["quickstart", "--steps", "20", "--episodes", "2", "--seed", "3", "--out-dir", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "the achieved return follows the target:" in res.output and "achieved return per target" in res.output
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["seed"] == 3 and len(summary["dt"]) == 4 and isinstance(summary["follows_target"], bool)
    assert (out / "calibration.png").stat().st_size > 0 and (out / "learning_curves.png").is_file()
    calibration = json.loads((out / "calibration.json").read_text())
    assert [r["target_return"] for r in calibration["results"]] == [r["target_return"] for r in summary["dt"]]
    # another seed never continues this run
    res = runner.invoke(app, ["quickstart", "--steps", "20", "--episodes", "2", "--seed", "4", "--out-dir", str(out)])
    assert isinstance(res.exception, DtrlError) and "holds a quickstart run with seed 3, not 4" in str(res.exception)
