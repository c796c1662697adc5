"""Exported policies act exactly like the PyTorch policy they came from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import dtrl
from conftest import tiny_overrides
from dtrl.config import load_config
from dtrl.errors import DtrlError
from dtrl.export import INPUT_NAMES, ONNX_FILE, TORCHSCRIPT_FILE, export
from dtrl.train import train

TARGET = -300.0


@pytest.fixture(scope="module")
def run(pendulum_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    train(load_config(None, tiny_overrides(pendulum_path, out, steps=20), environ={}))
    return out


def windows_and_actions(policy: dtrl.policy.DecisionTransformerPolicy, steps: int = 12):
    """Roll the PyTorch policy in Pendulum; yield each step's K-window (env units, left-padded) and its action."""
    K = policy.spec.model.context_length
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=3)
    policy.reset(TARGET)
    rtg, reward = TARGET, 0.0
    history: list[tuple[float, np.ndarray, np.ndarray]] = []
    for t in range(steps):
        action = policy.act(obs, reward)
        rtg -= reward if t else 0.0
        history.append((rtg, obs, np.zeros(1, np.float32)))
        window = history[-K:]
        pad = K - len(window)
        R = np.zeros((1, K), np.float32)
        S = np.zeros((1, K, 3), np.float32)
        A = np.zeros((1, K, 1), np.float32)
        T = np.zeros((1, K), np.int64)
        M = np.zeros((1, K), bool)
        R[0, pad:] = [w[0] for w in window]
        S[0, pad:] = [w[1] for w in window]
        A[0, pad:] = [w[2] for w in window]
        T[0, pad:] = np.arange(t - len(window) + 1, t + 1)
        M[0, pad:] = True
        yield (R, S, A, T, M), action
        history[-1] = (rtg, obs, action)
        obs, reward, *_ = env.step(action)


def assert_matches(run: Path, act: Callable[[tuple[np.ndarray, ...]], np.ndarray]) -> None:
    policy = dtrl.load(run, "cpu")
    rows, expected = [], []
    for inputs, action in windows_and_actions(policy):
        np.testing.assert_allclose(act(inputs)[0], action, atol=1e-5)
        rows.append(inputs)
        expected.append(action)
    batch = tuple(np.concatenate(parts) for parts in zip(*rows[-3:]))  # a batch of 3 windows in one call
    np.testing.assert_allclose(act(batch), np.stack(expected[-3:]), atol=1e-5)


def test_policy_directory_with_model_card(run: Path, tmp_path: Path):
    out = tmp_path / "shared"
    written = export(run, "policy", out, "dtrl export run --format policy --out shared")
    assert {p.name for p in written} == {"config.json", "model.safetensors", "train_config.yaml", "README.md"}
    card = (out / "README.md").read_text()
    assert "pendulum-controller" in card and "Pendulum-v1" in card
    assert "| target return |" in card and "dtrl export run --format policy --out shared" in card
    assert "dtrl train -c train_config.yaml" in card
    original, exported = dtrl.load(run, "cpu"), dtrl.load(out, "cpu")
    obs = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], np.float32)
    original.reset([TARGET, TARGET])
    exported.reset([TARGET, TARGET])
    np.testing.assert_array_equal(original.act(obs), exported.act(obs))


def test_torchscript_matches_the_pytorch_policy(run: Path, tmp_path: Path):
    export(run, "torchscript", tmp_path, "dtrl export")
    module = torch.jit.load(str(tmp_path / TORCHSCRIPT_FILE))
    assert_matches(run, lambda inputs: module(*map(torch.from_numpy, inputs)).numpy())


def test_onnx_matches_the_pytorch_policy(run: Path, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    export(run, "onnx", tmp_path, "dtrl export")
    onnx.checker.check_model(str(tmp_path / ONNX_FILE))
    session = ort.InferenceSession(str(tmp_path / ONNX_FILE))
    assert_matches(run, lambda inputs: session.run(None, dict(zip(INPUT_NAMES, inputs)))[0])


def test_bad_format_and_out_dir(run: Path):
    with pytest.raises(DtrlError, match="unknown export format 'tflite'"):
        export(run, "tflite", run / "x", "")
    with pytest.raises(DtrlError, match="is the policy being exported"):
        export(run, "policy", dtrl.checkpoint.latest_checkpoint(run), "")
