"""The user-facing surface: config from env vars, help with examples, progress, W&B, run info, videos."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from conftest import tiny_overrides
from dtrl import __version__, cli
from dtrl.checkpoint import PolicySpec, write_policy
from dtrl.config import ModelConfig, load_config
from dtrl.data.normalizer import Normalizer
from dtrl.data.spaces import space_to_dict
from dtrl.errors import DtrlError
from dtrl.models import DecisionTransformer
from dtrl.train import train


def test_env_vars_sit_between_the_file_and_the_overrides(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("steps: 500\ndevice: cuda\nmodel:\n  n_embd: 64\n")
    environ = {"DTRL_DEVICE": "cpu", "DTRL_STEPS": "700", "DTRL_MODEL__N_LAYER": "2", "HOME": "/root"}
    c = load_config(config, ["steps=900"], environ=environ)
    assert (c.device, c.steps, c.model.n_layer, c.model.n_embd) == ("cpu", 900, 2, 64)
    with pytest.raises(DtrlError, match="environment variable DTRL_STEPZ: unknown config key 'stepz'"):
        load_config(None, [], environ={"DTRL_STEPZ": "1"})
    with pytest.raises(DtrlError, match="DTRL_STEPS: config key steps expects int"):
        load_config(None, [], environ={"DTRL_STEPS": "many"})


def _commands(command: typer.core.TyperCommand, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if hasattr(command, "commands"):  # a group (typer bundles its own click)
        return [p for name, sub in command.commands.items() for p in _commands(sub, (*path, name))]
    return [path]


def test_every_command_has_help_with_examples():
    commands = _commands(typer.main.get_command(cli.app))
    assert {"train", "eval", "calibrate", "plot", "export", "quickstart"} <= {c[0] for c in commands}
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(cli.app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "Example" in result.output, command


def test_eval_progress_shows_in_a_terminal(monkeypatch: pytest.MonkeyPatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli.display, "console", Console(file=screen, force_terminal=True, width=120))
    with cli.eval_progress("Pendulum-v1", 4) as on_step:
        for step in range(1, 51):
            on_step(step)
    assert "eval (4 episodes)" in screen.getvalue() and "env step 50" in screen.getvalue()


def test_run_info_and_a_clear_error_without_wandb(pendulum_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(DtrlError, match="wandb=true but wandb is not installed: pip install wandb"):
        train(load_config(None, [*tiny_overrides(pendulum_path, tmp_path / "run", steps=1), "wandb=true"], environ={}))
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["dtrl"] == __version__ and info["packages"]["torch"] and info["python"]


def test_wandb_logs_offline(pendulum_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [*tiny_overrides(pendulum_path, tmp_path / "run", steps=10), "wandb=true", "eval_episodes=1"]
    train(load_config(None, overrides, environ={}))
    assert any((tmp_path / "run" / "wandb").glob("offline-run-*"))


@pytest.fixture
def inverted_pendulum_policy(tmp_path: Path) -> Path:
    """An untrained policy for InvertedPendulum-v5: it falls within a few dozen steps, so videos are short."""
    env = gym.make("InvertedPendulum-v5")
    model_config = ModelConfig(observation_dim=4, action_dim=1, context_length=5, n_layer=1, n_head=1, n_embd=16)
    low, high = env.action_space.low, env.action_space.high
    spec = PolicySpec(
        model=model_config,
        reward_scale=10.0,
        normalizer=Normalizer(np.zeros(4, np.float32), np.ones(4, np.float32), low, high).to_dict(),
        observation_space=space_to_dict(env.observation_space),
        action_space=space_to_dict(env.action_space),
        env_id="InvertedPendulum-v5",
    )
    directory = tmp_path / "policy"
    directory.mkdir()
    write_policy(directory, spec, DecisionTransformer(model_config).state_dict())
    return directory


def _dtrl(*args: object, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtrl", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def test_eval_records_a_video_per_target(inverted_pendulum_policy: Path, tmp_path: Path):
    pytest.importorskip("moviepy")
    proc = _dtrl(
        "eval", inverted_pendulum_policy, "-r", "5", "50", "-n", "1", "--device", "cpu", "--video", tmp_path / "v"
    )
    assert proc.returncode == 0, proc.stderr
    for target in ("5", "50"):
        video = tmp_path / "v" / f"target_{target}-episode-0.mp4"
        assert video.read_bytes()[4:8] == b"ftyp" and f"video: {video}" in proc.stdout


def test_video_without_a_renderer_is_one_clear_line(inverted_pendulum_policy: Path, tmp_path: Path):
    """GLFW needs a display: with none, asking for it fails at the first frame."""
    pytest.importorskip("moviepy")
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        pytest.skip("a display is available: GLFW would render")
    proc = _dtrl("eval", inverted_pendulum_policy, "-r", "5", "-n", "1", "--video", tmp_path / "v", MUJOCO_GL="glfw")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # GLFW warns on stderr too
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("error: cannot render InvertedPendulum-v5 off-screen") and "MUJOCO_GL=egl" in errors[0]


def test_halfcheetah_makes_no_mujoco_deprecation_noise(capfd: pytest.CaptureFixture[str]) -> None:
    """gymnasium's HalfCheetah XML triggers a MuJoCo deprecation line per env; dtrl drops only that line."""
    import mujoco

    from dtrl.envs import check_env_id, make_vector_env

    check_env_id("HalfCheetah-v5")
    make_vector_env("HalfCheetah-v5", 2).close()
    mujoco.get_mju_user_warning()("some other MuJoCo warning")
    err = capfd.readouterr().err
    assert "settotalmass" not in err
    assert "WARNING: some other MuJoCo warning" in err
