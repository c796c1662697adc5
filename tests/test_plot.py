"""`dtrl plot` and `dtrl calibrate`: valid PNGs from run directories, seeds grouped."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner, Result

from conftest import tiny_overrides
from dtrl import cli
from dtrl.calibrate import calibration_targets
from dtrl.config import load_config
from dtrl.errors import DtrlError
from dtrl.plot import group_runs, plot_runs, read_metrics
from dtrl.train import train


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def fake_run(root: Path, name: str, seed: int, lr: float = 1e-3, final_loss: float = 0.1) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "out_dir": str(run), "learning_rate": lr}))
    rows = [{"step": s, "train/loss": 1.0 / s + final_loss + 0.01 * seed} for s in range(10, 101, 10)]
    rows.append({"step": 100, "eval/return_mean@-200": -300.0 - seed, "eval/return_mean@-900": -700.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 11')  # torn last line
    return run


def test_seeds_are_grouped_and_curves_drawn(tmp_path: Path):
    runs = [fake_run(tmp_path, f"hopper-s{i}", seed=i) for i in range(3)] + [fake_run(tmp_path, "big-lr", 0, lr=1e-2)]
    groups = group_runs(runs)
    assert groups == {"hopper (3 seeds)": runs[:3], "big-lr": runs[3:]}
    steps, losses = read_metrics(runs[0])["train/loss"]
    assert steps.tolist() == list(range(10, 101, 10)) and losses[0] == pytest.approx(0.2)
    written = plot_runs(runs, tmp_path / "plots")
    assert [p.name for p in written] == ["learning_curves.png"]  # no calibration.json: no calibration figure
    width, height = png_size(written[0])
    assert width > 1000 and height > 300


def test_calibration_figure(tmp_path: Path):
    run = fake_run(tmp_path, "run", 0)
    results = [
        {"target_return": t, "return_mean": min(t, 3000.0), "return_std": 50.0} for t in (0, 1000, 2000, 3000, 4000)
    ]
    report = {"env_id": "Hopper-v5", "dataset_best_return": 3100.0, "episodes": 5, "results": results}
    (run / "calibration.json").write_text(json.dumps(report))
    written = plot_runs([run], tmp_path / "plots")
    assert [p.name for p in written] == ["learning_curves.png", "calibration.png"]
    width, height = png_size(written[1])
    assert width > 500 and height > 400


def test_calibration_targets():
    assert calibration_targets(3000.0, -10.0, 4) == pytest.approx([0, 1200, 2400, 3600])
    assert calibration_targets(-150.0, -1500.0, 3) == pytest.approx([-1500, -810, -120])  # negative returns
    with pytest.raises(DtrlError, match="at least 2"):
        calibration_targets(1.0, 0.0, 1)


def test_plot_errors(tmp_path: Path):
    with pytest.raises(DtrlError, match="no run directory"):
        plot_runs([tmp_path / "missing"], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DtrlError, match="has no metrics.jsonl"):
        plot_runs([tmp_path / "empty"], tmp_path)


def test_calibrate_then_plot_from_the_command_line(pendulum_path: Path, tmp_path: Path):
    def dtrl(*args: object) -> Result:
        result = CliRunner().invoke(cli.app, list(map(str, args)), env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return result

    run = tmp_path / "run"
    train(load_config(None, [*tiny_overrides(pendulum_path, run, steps=20), "eval_episodes=1"], environ={}))
    dtrl("calibrate", run, "--points", "3", "--episodes", "2")
    report = json.loads((run / "calibration.json").read_text())
    targets = [r["target_return"] for r in report["results"]]
    best = report["dataset_best_return"]
    assert len(targets) == 3 and best < 0 and targets[-1] == pytest.approx(best + 0.2 * abs(best))
    assert all(len(r["returns"]) == 2 and np.isfinite(r["return_mean"]) for r in report["results"])
    result = dtrl("plot", run, "--out", tmp_path / "plots")
    for name in ("learning_curves.png", "calibration.png"):
        assert png_size(tmp_path / "plots" / name)[0] > 400 and name in result.output
