"""Hostile input, round two (docs/bad-inputs.md rows 51-): configs, the command line, resume,
the Python API and degenerate data. Output paths and run files: tests/quality/test_hostile_outputs.py.

Each case is one line (``error: ...``, exit code 2, no traceback) or works as it should.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from test_reliability import assert_cli_error, cli, copy_run, one_line_error, run

from conftest import pendulum_spec, tiny_overrides
from dtrl.checkpoint import latest_checkpoint
from dtrl.config import ModelConfig, load_config
from dtrl.data import Episode, EpisodeDataset
from dtrl.models import build_model
from dtrl.policy import DecisionTransformerPolicy


# --------------------------------------------------------------------------- configs and the command line
def test_negative_seeds(capsys: pytest.CaptureFixture[str], run20: Path, pendulum_path: Path, tmp_path: Path) -> None:
    with one_line_error(r"^seed=-1 must be an integer >= 0"):
        load_config(None, ["seed=-1"])
    assert_cli_error(cli(capsys, "eval", run20, "-r", "1", "--seed", "-1"), "'--seed'", "greater than or equal to 0")
    assert_cli_error(cli(capsys, "calibrate", run20, "--seed", "-1"), "'--seed'")
    assert_cli_error(
        cli(capsys, "train", *tiny_overrides(pendulum_path, tmp_path / "s"), "--seeds", "-1,0"),
        "seed -1 is out of range: seeds are integers in [0, 4,294,967,295]",
    )
    assert not (tmp_path / "s").exists()


def test_unknown_device(capsys: pytest.CaptureFixture[str], run20: Path) -> None:
    with one_line_error(r"^device='gpu' must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'$"):
        load_config(None, ["device=gpu"])
    assert_cli_error(
        cli(capsys, "eval", run20, "-r", "1", "--device", "gpu"), "device 'gpu' is not a device: choose 'auto', 'cpu'"
    )


def test_a_model_too_large_for_memory_stops_before_training(
    capsys: pytest.CaptureFixture[str], pendulum_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "big"
    result = cli(capsys, "train", *tiny_overrides(pendulum_path, out), "model.context_length=100000", "model.n_embd=64")
    assert_cli_error(result, "model.context_length=100000", "GiB", "lower the context length")
    assert not out.exists()


def test_config_path_that_is_a_directory_or_a_pipe(pendulum_path: Path, tmp_path: Path) -> None:
    with one_line_error(r"config file .* is a directory: give a YAML file"):
        load_config(tmp_path)
    read, write = os.pipe()  # what `dtrl train -c <(...)` passes: /dev/fd/N
    os.write(write, b"steps: 7\n")
    os.close(write)
    try:
        assert load_config(f"/dev/fd/{read}").steps == 7
    finally:
        os.close(read)


def test_dtrl_data_dir_is_dtrls_own_variable_not_an_override(pendulum_path: Path, tmp_path: Path) -> None:
    config = load_config(
        None, tiny_overrides(pendulum_path, tmp_path / "run"), environ={"DTRL_DATA_DIR": str(tmp_path)}
    )
    assert config.steps == 40
    with one_line_error(r"environment variable DTRL_DATA_DIRS: unknown config key 'data_dirs'"):
        load_config(None, [], environ={"DTRL_DATA_DIRS": "x"})


def test_misspelt_option_is_named_with_the_closest(capsys: pytest.CaptureFixture[str], run20: Path) -> None:
    assert_cli_error(
        cli(capsys, "eval", run20, "-r", "1", "--episdoes", "3"),
        "no such option '--episdoes' for dtrl eval (did you mean --episodes?)",
    )
    assert_cli_error(cli(capsys, "calibrate", run20, "--episdoes", "3"), "No such option: --episdoes", "--episodes")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_target_returns(capsys: pytest.CaptureFixture[str], run20: Path, value: str) -> None:
    assert_cli_error(
        cli(capsys, "eval", run20, "-r", value),
        f"--target-return {float(value)}: target returns must be finite numbers",
    )
    assert_cli_error(cli(capsys, "eval", run20, "-r", "1", value), "target returns must be finite numbers")
    assert_cli_error(
        cli(capsys, "finetune", run20, "--target-return", value),
        f"target-return={float(value)} must be a finite number",
    )


# --------------------------------------------------------------------------- resume
def run20_data(out: Path) -> str:
    return yaml.safe_load((out / "config.yaml").read_text())["dataset"]


def test_resume_applies_more_steps_and_refuses_what_would_change_the_learning(
    capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path
) -> None:
    out = copy_run(run20, tmp_path)
    saved = (out / "config.yaml").read_bytes()
    base = tiny_overrides(run20_data(out), out, steps=20) + ["checkpoint_every=10", "eval_episodes=1"]
    assert_cli_error(
        cli(capsys, "train", "--resume", *base, "learning_rate=0.5"),
        "cannot resume",
        "learning_rate (0.001 -> 0.5)",
        "would change what the run learns",
    )
    assert (out / "config.yaml").read_bytes() == saved
    grown = tmp_path / "grown.yaml"  # a YAML whose steps grew is applied
    grown.write_text(yaml.safe_dump({**yaml.safe_load(saved), "out_dir": str(out), "steps": 30}))
    code, _, err = cli(capsys, "train", "--resume", "-c", grown)
    assert code == 0, err
    assert (
        latest_checkpoint(out).name == "step_00000030"
        and yaml.safe_load((out / "config.yaml").read_text())["steps"] == 30
    )


# --------------------------------------------------------------------------- the Python API
@pytest.fixture
def policy(tiny_model_config: ModelConfig) -> DecisionTransformerPolicy:
    return DecisionTransformerPolicy(build_model(tiny_model_config), pendulum_spec(tiny_model_config))


def test_act_checks_the_observation_shape(policy: DecisionTransformerPolicy) -> None:
    policy.reset(-100.0)
    with one_line_error(r"got an observation of shape \(1,\), but the policy expects 3 numbers"):
        policy.act(np.zeros(1))
    policy.reset([-100.0, -200.0])
    with one_line_error(
        r"got an observation of shape \(2, 2\), but the policy expects 3 numbers for each of 2 environments"
    ):
        policy.act(np.zeros((2, 2)))
    assert policy.act(np.zeros((2, 3))).shape == (2, 1)


@pytest.mark.parametrize("where", ["observation", "reward", "target"])
def test_nan_inputs_are_refused_not_turned_into_nan_actions(policy: DecisionTransformerPolicy, where: str) -> None:
    obs = np.zeros(3, np.float32)
    if where == "target":
        with one_line_error(r"target_return must be finite, got nan"):
            policy.reset(math.nan)
        return
    policy.reset(-100.0)
    policy.act(obs)
    with one_line_error(r"holds NaN or Inf|reward must be finite"):
        policy.act(
            np.array([0.0, math.nan, 0.0]) if where == "observation" else obs, math.nan if where == "reward" else 0.0
        )


# --------------------------------------------------------------------------- degenerate data
def _episodes(count: int, n: int = 30, seed: int = 0, discrete: int | None = None) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ends = np.zeros(n, bool)
        ends[-1] = True
        actions = rng.integers(0, discrete, n) if discrete else rng.uniform(-2, 2, (n, 2)).astype(np.float32)
        out.append(
            Episode(
                rng.normal(size=(n, 3)).astype(np.float32),
                actions,
                rng.normal(size=n).astype(np.float32),
                ends,
                np.zeros(n, bool),
            )
        )
    return out


def _train_finite(dataset: EpisodeDataset, tmp_path: Path) -> None:
    data = dataset.save(tmp_path / "data.npz")
    result = run(data, tmp_path / "run", "steps=10", "checkpoint_every=10", "eval_episodes=1")
    assert result.losses and all(math.isfinite(loss) for _, loss in result.losses)


def test_a_constant_action_dimension_trains(tmp_path: Path) -> None:
    episodes = _episodes(4)
    for e in episodes:
        e.actions[:, 1] = 1.5  # outside [-1, 1], so the inferred box is [min, max]: low == high on this dimension
    dataset = EpisodeDataset.from_episodes(episodes, name="constant-action")
    assert dataset.action_space.low[1] == dataset.action_space.high[1]
    _train_finite(dataset, tmp_path)


def test_a_constant_state_dimension_and_a_single_episode_train(tmp_path: Path) -> None:
    episodes = _episodes(1)
    episodes[0].observations[:, 1] = 5.0
    _train_finite(EpisodeDataset.from_episodes(episodes, name="one-episode"), tmp_path)


def test_discrete_actions_outside_the_space_are_refused_at_load(tmp_path: Path) -> None:
    with one_line_error(
        r"action 4 \(at transition \d+\) lies outside the action space Discrete\(3\) \(actions 0 to 2\)"
    ):
        EpisodeDataset.from_episodes(_episodes(3, discrete=5), action_space=gym.spaces.Discrete(3), name="d")


def test_export_of_weights_from_another_shape(capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    out = copy_run(run20, tmp_path)
    other = build_model(ModelConfig(observation_dim=3, action_dim=1, context_length=5, n_layer=2, n_head=2, n_embd=32))
    ckpt = out / "checkpoints" / "step_00000020"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, ckpt / "model.safetensors")
    assert_cli_error(
        cli(capsys, "export", out, "--out", tmp_path / "x"), "do not match its config.json", "another model shape"
    )


def test_python_m_dtrl_reports_a_misspelt_option_in_one_line(run20: Path) -> None:
    """The real command (a subprocess), as a user types it."""
    proc = subprocess.run(
        [sys.executable, "-m", "dtrl", "eval", str(run20), "-r", "1", "--episdoes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: no such option '--episdoes' for dtrl eval (did you mean --episodes?)"
    ]
