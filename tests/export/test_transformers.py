"""transformers' DecisionTransformerModel and dtrl act alike: dtrl runs theirs, theirs runs dtrl's.

The reference is transformers' own forward, driven as its blog tutorial's evaluation loop and
``get_action`` drive it (left-padded window of the last K steps, attention mask over the real
ones, returns-to-go divided by the scale). No network: the models are random, saved locally.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import dtrl
from dtrl.checkpoint import PolicySpec, write_policy
from dtrl.config import ModelConfig
from dtrl.data.spaces import space_to_dict
from dtrl.errors import DtrlError
from dtrl.export import export
from dtrl.hf import STATE_STATS_FILE
from dtrl.models import build_model

transformers = pytest.importorskip("transformers")

STATE_DIM, ACT_DIM, K, STEPS, SCALE = 11, 3, 5, 30, 1000.0
TARGET = 3600.0


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random, biases and LayerNorms included, so no mistake hides behind a zero or a one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def synthetic_episode(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hopper-like observations and rewards (the actions do not feed back: both sides see the same ones)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(STEPS, STATE_DIM)).astype(np.float32) * 2 + 1, rng.uniform(0, 4, STEPS)


def tutorial_actions(model, mean: np.ndarray, std: np.ndarray, context: int, scale: float = SCALE) -> np.ndarray:
    """The transformers tutorial's evaluation loop and get_action, on the synthetic episode."""
    observations, rewards = synthetic_episode()
    model.eval()
    state_mean, state_std = torch.from_numpy(mean), torch.from_numpy(std)
    target_return = torch.tensor(TARGET / scale).float().reshape(1, 1)
    states = torch.from_numpy(observations[0]).reshape(1, STATE_DIM).float()
    actions = torch.zeros((0, ACT_DIM)).float()
    timesteps = torch.tensor(0).reshape(1, 1).long()
    out = []
    for t in range(STEPS):
        actions = torch.cat([actions, torch.zeros((1, ACT_DIM))], dim=0)
        s = ((states - state_mean) / state_std).reshape(1, -1, STATE_DIM)[:, -context:]
        a = actions.reshape(1, -1, ACT_DIM)[:, -context:]
        r = target_return.reshape(1, -1, 1)[:, -context:]
        ts = timesteps.reshape(1, -1)[:, -context:]
        padding = context - s.shape[1]
        mask = torch.cat([torch.zeros(padding), torch.ones(s.shape[1])]).to(dtype=torch.long).reshape(1, -1)
        s = torch.cat([torch.zeros((1, padding, STATE_DIM)), s], dim=1).float()
        a = torch.cat([torch.zeros((1, padding, ACT_DIM)), a], dim=1).float()
        r = torch.cat([torch.zeros((1, padding, 1)), r], dim=1).float()
        ts = torch.cat([torch.zeros((1, padding), dtype=torch.long), ts], dim=1)
        with torch.no_grad():
            _, action_preds, _ = model(
                states=s, actions=a, returns_to_go=r, timesteps=ts, attention_mask=mask, return_dict=False
            )
        action = action_preds[0, -1]
        actions[-1] = action
        out.append(action.numpy().copy())
        if t + 1 < STEPS:
            states = torch.cat([states, torch.from_numpy(observations[t + 1]).reshape(1, STATE_DIM)], dim=0)
            pred_return = target_return[0, -1] - (rewards[t] / scale)
            target_return = torch.cat([target_return, pred_return.reshape(1, 1)], dim=1)
            timesteps = torch.cat([timesteps, torch.ones((1, 1)).long() * (t + 1)], dim=1)
    return np.array(out)


def dtrl_actions(policy: dtrl.policy.DecisionTransformerPolicy, steps: int = STEPS) -> np.ndarray:
    observations, rewards = synthetic_episode()
    policy.reset(TARGET)
    out, reward = [], 0.0
    for t in range(steps):
        out.append(policy.act(observations[t], reward))
        reward = rewards[t]
    return np.array(out)


def save_transformers(model, directory: Path, safetensors: bool) -> None:
    """save_pretrained; the older pytorch_model.bin as transformers 4.x's safe_serialization=False wrote it."""
    model.save_pretrained(directory)
    if not safetensors:
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")


HF_VARIANTS = {
    "default": {},
    "gelu_new-eps-invscale": dict(
        activation_function="gelu_new", layer_norm_epsilon=1e-3, scale_attn_by_inverse_layer_idx=True
    ),
    "gelu-unscaled-untanh": dict(activation_function="gelu", scale_attn_weights=False, action_tanh=False, n_inner=64),
}


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_transformers_model_acts_the_same_in_dtrl(tmp_path: Path, variant: str, safetensors: bool) -> None:
    config = transformers.DecisionTransformerConfig(
        state_dim=STATE_DIM,
        act_dim=ACT_DIM,
        hidden_size=32,
        n_layer=2,
        n_head=2,
        max_ep_len=100,
        **HF_VARIANTS[variant],
    )
    torch.manual_seed(0)
    hf_model = transformers.DecisionTransformerModel(config)
    perturb(hf_model, 1)
    directory = tmp_path / "hf"
    save_transformers(hf_model, directory, safetensors)
    rng = np.random.default_rng(2)
    mean, std = rng.normal(size=STATE_DIM).astype(np.float32), rng.uniform(0.5, 2, STATE_DIM).astype(np.float32)
    stats = {"state_mean": mean.tolist(), "state_std": std.tolist(), "context_length": K}
    expected = tutorial_actions(hf_model, mean, std, K)

    # the recompute path (dtrl's default) is transformers' computation over the whole episode, window sliding past K
    policy = dtrl.load(directory, "cpu", state_stats=stats)
    np.testing.assert_allclose(dtrl_actions(policy), expected, atol=1e-5)
    # the key/value cache is the same computation while the window fills (then sliding-window attention)
    cached = dtrl.load(directory, "cpu", kv_cache=True, state_stats=stats)
    np.testing.assert_allclose(dtrl_actions(cached, K), expected[:K], atol=1e-5)
    # state_stats.json beside the weights is read without being asked
    (directory / STATE_STATS_FILE).write_text(json.dumps(stats))
    np.testing.assert_allclose(dtrl_actions(dtrl.load(directory, "cpu")), expected, atol=1e-5)


def test_transformers_directory_without_state_statistics_says_what_to_pass(tmp_path: Path) -> None:
    transformers.DecisionTransformerModel(
        transformers.DecisionTransformerConfig(state_dim=3, act_dim=1)
    ).save_pretrained(tmp_path)
    with pytest.raises(DtrlError, match="--state-stats FILE"):
        dtrl.load(tmp_path, "cpu")
    with pytest.raises(DtrlError, match="state_mean must be 3 finite numbers"):
        dtrl.load(tmp_path, "cpu", state_stats={"state_mean": [0.0], "state_std": [1.0, 1.0, 1.0]})


def dtrl_policy_dir(directory: Path, cfg: ModelConfig, bounded: bool = False) -> PolicySpec:
    torch.manual_seed(0)
    model = build_model(cfg)
    perturb(model, 3)
    rng = np.random.default_rng(4)
    box = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    spec = PolicySpec(
        cfg,
        SCALE,
        {
            "state_mean": rng.normal(size=STATE_DIM).tolist(),
            "state_std": rng.uniform(0.5, 2, STATE_DIM).tolist(),
            "action_low": [-1.0] * ACT_DIM if bounded else None,
            "action_high": [1.0] * ACT_DIM if bounded else None,
        },
        space_to_dict(gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)),
        space_to_dict(box),
        "Hopper-v5",
    )
    directory.mkdir()
    write_policy(directory, spec, model.state_dict())
    return spec


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_exact"])
def test_exported_dtrl_model_acts_the_same_in_transformers(tmp_path: Path, activation: str) -> None:
    cfg = ModelConfig(
        observation_dim=STATE_DIM,
        action_dim=ACT_DIM,
        context_length=K,
        max_episode_length=100,
        n_layer=2,
        n_head=2,
        n_embd=32,
        activation=activation,
        layer_norm_epsilon=1e-4 if activation == "gelu" else 1e-5,
    )
    spec = dtrl_policy_dir(tmp_path / "policy", cfg, bounded=activation == "relu")
    written = export(tmp_path / "policy", "transformers", tmp_path / "hf", "dtrl export")
    assert {p.name for p in written} >= {"config.json", "model.safetensors", STATE_STATS_FILE, "README.md"}
    hf_model = transformers.DecisionTransformerModel.from_pretrained(tmp_path / "hf")
    stats = json.loads((tmp_path / "hf" / STATE_STATS_FILE).read_text())
    assert stats["context_length"] == K and stats["reward_scale"] == SCALE
    mean, std = (np.asarray(stats[k], np.float32) for k in ("state_mean", "state_std"))
    expected = dtrl_actions(dtrl.load(tmp_path / "policy", "cpu"))
    np.testing.assert_allclose(tutorial_actions(hf_model, mean, std, stats["context_length"]), expected, atol=1e-5)
    # and back: the exported directory is a dtrl policy too, with its statistics beside it
    np.testing.assert_allclose(dtrl_actions(dtrl.load(tmp_path / "hf", "cpu")), expected, atol=1e-5)
    assert spec.model.activation == activation


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(token_mixer="conv"), "token_mixer='conv'"),
        (dict(stochastic_policy=True), "Gaussian action head"),
        (dict(condition_on_return=False), "no return tokens"),
        (dict(kind="mlp"), "model.kind='mlp'"),
    ],
)
def test_export_says_in_one_line_what_transformers_cannot_express(tmp_path: Path, change: dict, reason: str) -> None:
    cfg = ModelConfig(observation_dim=STATE_DIM, action_dim=ACT_DIM, context_length=K, n_layer=1, n_embd=16, **change)
    dtrl_policy_dir(tmp_path / "policy", cfg, bounded=True)
    with pytest.raises(DtrlError, match=f"no transformers equivalent: .*{reason}") as e:
        export(tmp_path / "policy", "transformers", tmp_path / "hf", "dtrl export")
    assert "\n" not in str(e.value)


def test_dtrl_eval_runs_a_transformers_directory_from_the_command_line(tmp_path: Path) -> None:
    hf_model = transformers.DecisionTransformerModel(
        transformers.DecisionTransformerConfig(state_dim=3, act_dim=1, hidden_size=16, n_layer=1)
    )
    hf_model.save_pretrained(tmp_path / "hf")
    (tmp_path / "stats.json").write_text(json.dumps({"state_mean": [0.0, 0.0, 0.0], "state_std": [1.0, 1.0, 2.0]}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dtrl",
            "eval",
            str(tmp_path / "hf"),
            "--env",
            "Pendulum-v1",
            "--state-stats",
            str(tmp_path / "stats.json"),
            "-r",
            "-200",
            "--episodes",
            "2",
            "-o",
            str(tmp_path / "eval.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [result] = json.loads((tmp_path / "eval.json").read_text())
    assert result["episodes"] == 2 and result["target_return"] == -200


def test_tutorial_example_saves_a_model_dtrl_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "transformers_tutorial.py"), str(tmp_path / "hf"), "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    policy = dtrl.load(tmp_path / "hf", "cpu", state_stats={"state_mean": [0.0] * 11, "state_std": [1.0] * 11})
    assert policy.spec.model.context_length == 20 and policy.spec.model.n_embd == 64
