"""Hostile input, round two: output paths (never overwrite what the command did not make) and run files
read defensively. Every refused command leaves the files it would have overwritten byte-identical."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_reliability import assert_cli_error, cli, copy_run

from dtrl.errors import DtrlError
from dtrl.plot import plot_runs


def tree(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_export_refuses_a_checkpoint_and_a_run_directory(
    capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path
) -> None:
    out = copy_run(run20, tmp_path)
    before = tree(out)
    assert_cli_error(
        cli(capsys, "export", out / "checkpoints" / "step_00000010", "--out", out / "checkpoints" / "step_00000020"),
        "is a training checkpoint",
        "--force",
    )
    assert_cli_error(cli(capsys, "export", out, "--out", out), "is a run directory", "--force")
    assert tree(out) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("mine")
    assert_cli_error(cli(capsys, "export", out, "--out", tmp_path / "notes"), "files that dtrl export did not write")
    code, _, err = cli(capsys, "export", out, "--out", tmp_path / "shared")
    assert code == 0, err
    code, _, err = cli(
        capsys, "export", out, "--format", "torchscript", "--out", tmp_path / "shared"
    )  # an earlier export
    assert code == 0 and (tmp_path / "shared" / "policy.torchscript.pt").is_file(), err
    assert not list(tmp_path.glob(".shared*"))  # staged: nothing left behind


@pytest.mark.parametrize("command", ["eval", "calibrate", "plot", "export"])
def test_output_paths_that_are_directories_or_under_a_file(
    capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path, command: str
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    option = {"eval": "--output", "calibrate": "--output", "plot": "--out", "export": "--out"}[command]
    extra = ["-r", "1"] if command == "eval" else []
    assert_cli_error(
        cli(capsys, command, run20, *extra, option, a_file / "x"), "lies under the file", "not a directory"
    )
    if command in ("eval", "calibrate"):
        assert_cli_error(
            cli(capsys, command, run20, *extra, option, tmp_path), "is an existing directory: give a file path"
        )
    else:
        assert_cli_error(cli(capsys, command, run20, *extra, option, a_file), "is a file, not a directory")
    assert a_file.read_text() == "keep"


def test_eval_output_at_a_runs_top_level_needs_force(
    capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path
) -> None:
    out = copy_run(run20, tmp_path)
    before = (out / "eval.json").read_bytes()
    assert_cli_error(
        cli(capsys, "eval", out, "-r", "-200", "-n", "1", "-o", out / "eval.json"), "top level of the run", "--force"
    )
    assert (out / "eval.json").read_bytes() == before
    code, _, err = cli(capsys, "eval", out, "-r", "-200", "-n", "1", "-o", out / "eval.json", "--force")
    assert code == 0 and json.loads((out / "eval.json").read_text())[0]["target_return"] == -200.0, err


def test_dataset_commands_never_overwrite_their_source_or_a_dataset(
    capsys: pytest.CaptureFixture[str], pendulum_path: Path, tmp_path: Path
) -> None:
    source = tmp_path / "x.npz"
    source.write_bytes(pendulum_path.read_bytes())
    assert_cli_error(
        cli(capsys, "data", "export", source, "--format", "d4rl", "--out", source), "is the input being read"
    )
    existing = tmp_path / "y.npz"
    existing.write_bytes(b"someone's data")
    assert_cli_error(cli(capsys, "data", "convert", source, existing), "already exists", "--force")
    assert existing.read_bytes() == b"someone's data" and source.read_bytes() == pendulum_path.read_bytes()
    code, _, err = cli(capsys, "data", "convert", source, existing, "--force")
    assert code == 0 and existing.read_bytes() != b"someone's data", err


def test_quickstart_refuses_another_runs_directory(
    capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path
) -> None:
    out = copy_run(run20, tmp_path)
    before = tree(out)
    assert_cli_error(cli(capsys, "quickstart", "--out-dir", out), "holds another run", "choose another --out-dir")
    assert tree(out) == before


# --------------------------------------------------------------------------- run files
def test_corrupt_run_files_are_one_line(capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path) -> None:
    out = copy_run(run20, tmp_path)
    (out / "config.yaml").write_text("steps: [1, 2\n")
    assert_cli_error(cli(capsys, "plot", out, "--out", tmp_path / "p"), "config.yaml is not valid YAML", "restore it")
    out = copy_run(run20, tmp_path / "b")
    (out / "calibration.json").write_text('{"results": [{"target_return": 1')
    assert_cli_error(cli(capsys, "plot", out, "--out", tmp_path / "p"), "calibration.json is corrupt or truncated")
    (out / "calibration.json").write_text('{"results": []}')
    assert_cli_error(cli(capsys, "plot", out, "--out", tmp_path / "p"), "calibration.json is not a calibration report")
    (out / "calibration.json").unlink()
    (out / "eval.json").write_text("[{")
    assert_cli_error(
        cli(capsys, "export", out, "--out", tmp_path / "e"), "eval.json is corrupt or truncated", "delete it"
    )


def test_metrics_half_written_last_line_is_skipped_a_corrupt_one_is_not(
    run20: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = copy_run(run20, tmp_path)
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines) + '\n{"step": 30, "train/lo')
    assert plot_runs([out], tmp_path / "plots")
    assert "half-written" in caplog.text
    metrics.write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n")
    with pytest.raises(DtrlError, match=r"metrics.jsonl line 2 is not JSON: the file is corrupt; delete that line"):
        plot_runs([out], tmp_path / "plots")


def test_checkpoints_without_train_state_still_evaluate_and_a_corrupt_pointer_is_ignored(
    capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path
) -> None:
    out = copy_run(run20, tmp_path)
    (out / "checkpoints" / "latest").write_bytes(b"\xff\x00garbage")
    code, _, err = cli(capsys, "eval", out, "-r", "-200", "-n", "1")
    assert code == 0, err
    for step in (out / "checkpoints").glob("step_*"):
        (step / "train_state.pt").unlink()
    code, _, err = cli(capsys, "eval", out, "-r", "-200", "-n", "1")
    assert code == 0, err
    before = tree(out / "checkpoints")
    code, _, err = cli(capsys, "train", f"out_dir={out}", "--resume")  # would start over onto the old step_N
    assert code != 0 and "none of its checkpoints has train_state.pt" in err and "\n" not in err.strip()
    code, _, err = cli(capsys, "train", f"out_dir={out}", "steps=2")  # nor does a new run write over them
    assert code != 0 and "already holds checkpoints" in err
    assert tree(out / "checkpoints") == before
