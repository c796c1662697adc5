"""The dtrl command as a user runs it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import tiny_overrides


def dtrl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtrl", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained_run(
    pendulum_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = dtrl("train", *tiny_overrides(pendulum_path, out, steps=100), "checkpoint_every=50")
    return out, proc


def test_train_end_to_end_lowers_the_loss(trained_run):
    out, proc = trained_run
    assert proc.returncode == 0, proc.stderr
    losses = [
        json.loads(x)["train/loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in x
    ]
    assert len(losses) == 10 and losses[-1] < 0.7 * losses[0]
    assert "checkpoint:" in proc.stdout


def test_eval_reports_every_target(trained_run, tmp_path: Path):
    out, _ = trained_run
    report = tmp_path / "eval.json"
    proc = dtrl("eval", out, "--env", "Pendulum-v1", "--target-return", "-200", "-900", "--episodes", "2", "-o", report)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(report.read_text())
    assert [r["target_return"] for r in results] == [-200.0, -900.0]
    assert all(len(r["returns"]) == 2 and r["return_mean"] < 0 for r in results)


def test_version_and_help():
    assert dtrl("--version").stdout.startswith("dtrl ")
    for cmd in ("train", "eval", "quickstart", "data"):
        assert dtrl(cmd, "--help").returncode == 0


def test_data_info_and_convert(tmp_path: Path):
    src = Path(__file__).resolve().parents[3] / "shared" / "data" / "door-human-v0.hdf5"
    if not src.is_file():
        pytest.skip("shared D4RL file not present")
    proc = dtrl("data", "convert", src, tmp_path / "door.npz")
    assert proc.returncode == 0, proc.stderr
    info = dtrl("data", "info", tmp_path / "door.npz")
    assert info.returncode == 0 and "6729" in info.stdout and "50" in info.stdout


# ------------------------------------------------------------------ bad input
def test_missing_dataset_file(tmp_path: Path):
    assert_user_error(dtrl("train", f"dataset={tmp_path / 'nope.hdf5'}", f"out_dir={tmp_path / 'r'}"), "nope.hdf5")


def test_corrupt_hdf5(tmp_path: Path):
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    assert_user_error(dtrl("train", f"dataset={bad}", f"out_dir={tmp_path / 'r'}"), "bad.hdf5")


def test_wrong_shapes_and_nans(tmp_path: Path):
    f = tmp_path / "shapes.hdf5"
    with h5py.File(f, "w") as h:
        h["observations"] = np.zeros((10, 3), np.float32)
        h["actions"] = np.zeros((9, 1), np.float32)
        h["rewards"] = np.zeros(10, np.float32)
        h["terminals"] = np.zeros(10, bool)
    assert_user_error(dtrl("data", "info", f), "actions")
    g = tmp_path / "nan.hdf5"
    with h5py.File(g, "w") as h:
        obs = np.zeros((10, 3), np.float32)
        obs[4, 1] = np.nan
        h["observations"] = obs
        h["actions"] = np.zeros((10, 1), np.float32)
        h["rewards"] = np.zeros(10, np.float32)
        h["terminals"] = np.zeros(10, bool)
    assert_user_error(dtrl("data", "info", g), "NaN")


def test_unknown_env_id(trained_run):
    out, _ = trained_run
    assert_user_error(dtrl("eval", out, "--env", "Hopper-v99", "-r", "1"), "unknown environment id 'Hopper-v99'")


def test_a_missing_checkpoint_is_named_by_every_command(tmp_path: Path):
    for command in (["calibrate"], ["finetune"]):
        assert_user_error(dtrl(*command, tmp_path / "nothing"), "no checkpoint at", "give a run directory")


def test_checkpoint_that_does_not_fit_the_env(trained_run):
    out, _ = trained_run
    assert_user_error(dtrl("eval", out, "--env", "CartPole-v1", "-r", "1"), "observations of size 4", "expects 3")
    assert_user_error(dtrl("eval", out, "--env", "InvertedPendulum-v5", "-r", "1"), "size 4")


def test_bad_config_and_missing_checkpoint(tmp_path: Path):
    assert_user_error(dtrl("train", "model.n_layerz=2"), "did you mean model.n_layer")
    assert_user_error(dtrl("eval", tmp_path / "nothing", "-r", "1"), "no checkpoint")


def test_debug_shows_the_traceback(tmp_path: Path):
    proc = dtrl("--debug", "eval", tmp_path / "nothing", "-r", "1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
