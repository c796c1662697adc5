"""Stacked multi-seed training (dtrl.stacked): N seeds in one process train as N separate runs would."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from dtrl.checkpoint import latest_checkpoint, load_policy_files, load_train_state
from dtrl.config import ModelConfig, TrainConfig, load_config
from dtrl.data import Episode, EpisodeDataset
from dtrl.data.sampler import SegmentSampler
from dtrl.errors import DtrlError
from dtrl.models import DecisionTransformer, build_model
from dtrl.policy import load
from dtrl.runfiles import CHECKPOINT_DIR
from dtrl.train import train
from dtrl.train.stacked import parse_seeds, train_stacked
from dtrl.train.stacking import (
    seed_optimizer_state,
    stack_batches,
    stack_models,
    stack_optimizer_states,
    stacked_forward,
    stacked_train_step,
)
from dtrl.train.step import build_optimizer, train_step

SEEDS = [0, 1, 2]
CLIP = 0.05  # far below these models' gradient norms: every step clips, by a different factor per seed


def _discrete_dataset() -> EpisodeDataset:
    """Random CartPole-shaped episodes: enough to exercise the cross-entropy path."""
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(0)
    episodes = []
    for n in rng.integers(8, 30, size=10):
        episodes.append(
            Episode(
                rng.normal(size=(n, 4)).astype(np.float32),
                rng.integers(0, 2, size=n),
                rng.normal(size=n).astype(np.float32),
                np.zeros(n, bool),
                np.eye(n, dtype=bool)[-1],
            )
        )
    return EpisodeDataset.from_episodes(episodes, env.observation_space, env.action_space, name="cartpole-random")


def _separate_run(dataset, cfg: ModelConfig, config: TrainConfig, seed: int, steps: int):
    """One seed trained alone, as dtrl train does it: losses, gradient norms and the model."""
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    sampler = SegmentSampler(dataset, cfg.context_length, 100.0, seed=seed)
    optimizer, scheduler = build_optimizer(model, config)
    losses, norms = [], []
    for _ in range(steps):
        loss, norm = train_step(model, optimizer, scheduler, sampler.sample(config.batch_size), config)
        losses.append(loss)
        norms.append(float(norm))
    return losses, norms, model


def _stacked_run(dataset, cfg: ModelConfig, config: TrainConfig, steps: int):
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(build_model(cfg))
    stacked = stack_models(models).train()
    samplers = [SegmentSampler(dataset, cfg.context_length, 100.0, seed=seed) for seed in SEEDS]
    optimizer, scheduler = build_optimizer(stacked, config)
    losses, norms = [], []
    for _ in range(steps):
        batch = stack_batches([s.sample(config.batch_size) for s in samplers])
        loss, norm = stacked_train_step(stacked, optimizer, scheduler, batch, config)
        losses.append(loss)
        norms.append(norm.tolist())
    return np.array(losses), np.array(norms), stacked


@pytest.mark.parametrize("head", ["continuous", "discrete", "stochastic", "mlp"])
def test_stacked_seeds_train_like_separate_runs(
    pendulum_dataset, tiny_model_config: ModelConfig, head: str, monkeypatch
):
    """Same init, same batches, dropout 0: after 8 steps every seed's weights equal its separate run's,
    with per-seed gradient clipping active at every step (a global clip would scale all seeds alike).
    The stochastic head (Online DT) trains its own temperature per seed; its entropy estimate's noise is zeroed.
    The MLP BC baseline (model.kind=mlp) stacks like the transformer."""
    discrete = head == "discrete"
    dataset = _discrete_dataset() if discrete else pendulum_dataset
    cfg = tiny_model_config
    if discrete:
        cfg = dataclasses.replace(cfg, observation_dim=4, action_dim=2, discrete=True)
    if head == "stochastic":
        cfg = dataclasses.replace(cfg, stochastic_policy=True)
        monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    if head == "mlp":
        cfg = dataclasses.replace(cfg, kind="mlp")
    config = TrainConfig(batch_size=8, learning_rate=1e-3, warmup_steps=3, grad_clip=CLIP)
    steps = 8
    losses, norms, stacked = _stacked_run(dataset, cfg, config, steps)
    assert (norms > CLIP).all(), "clipping should trigger at every step"
    assert not np.allclose(norms[:, 0], norms[:, 1]), "seeds should need different clipping factors"
    for i, seed in enumerate(SEEDS):
        alone_losses, alone_norms, alone = _separate_run(dataset, cfg, config, seed, steps)
        np.testing.assert_allclose(losses[:, i], alone_losses, rtol=1e-5)
        np.testing.assert_allclose(norms[:, i], alone_norms, rtol=1e-5)
        for name, weight in alone.state_dict().items():
            torch.testing.assert_close(stacked.state_dict()[name][i], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_dropout_masks_differ_between_seeds(tiny_model_config: ModelConfig, pendulum_dataset):
    """vmap(randomness="different"): identical models on identical batches still draw their own dropout masks."""
    torch.manual_seed(0)
    model = DecisionTransformer(dataclasses.replace(tiny_model_config, dropout=0.5))
    stacked = stack_models([model, model]).train()
    batch = SegmentSampler(pendulum_dataset, tiny_model_config.context_length, 100.0).sample(4)
    out = stacked_forward(stacked, stack_batches([batch, batch]))
    assert not torch.allclose(out[0], out[1])
    stacked.eval()
    out = stacked_forward(stacked, stack_batches([batch, batch]))
    torch.testing.assert_close(out[0], out[1])


def test_optimizer_state_splits_into_single_model_states(tiny_model_config: ModelConfig, pendulum_dataset):
    _, _, stacked = _stacked_run(pendulum_dataset, tiny_model_config, TrainConfig(batch_size=4), 2)
    optimizer, _ = build_optimizer(stacked, TrainConfig())
    stacked.zero_grad()
    sum(p.sum() for p in stacked.parameters()).backward()
    optimizer.step()
    state = optimizer.state_dict()
    parts = [seed_optimizer_state(state, i) for i in range(len(SEEDS))]
    single, _ = build_optimizer(DecisionTransformer(tiny_model_config), TrainConfig())
    single.load_state_dict(parts[1])  # a plain run accepts a seed's share
    rebuilt = stack_optimizer_states(parts)
    for k, entry in state["state"].items():
        for name, value in entry.items():
            assert torch.equal(rebuilt["state"][k][name], value)


# ----------------------------------------------------------------------------- the whole run
def _config(data: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(None, tiny_overrides(data, out, steps=20) + ["checkpoint_every=10", "model.dropout=0", *extra])


def test_train_stacked_writes_one_ordinary_run_per_seed(pendulum_path: Path, tmp_path: Path):
    """Each seed's run equals `dtrl train seed=S` (dropout 0), and loads like any run."""
    results = train_stacked(_config(pendulum_path, tmp_path / "stack", "grad_clip=0.05"), [0, 3])
    assert [r.run_dir.name for r in results] == ["seed_0", "seed_3"]
    for result, seed in zip(results, [0, 3]):
        alone = train(_config(pendulum_path, tmp_path / f"alone{seed}", "grad_clip=0.05", f"seed={seed}"))
        stacked_weights, alone_weights = load_policy_files(result.checkpoint)[1], load_policy_files(alone.checkpoint)[1]
        for name, weight in alone_weights.items():
            torch.testing.assert_close(stacked_weights[name], weight, rtol=1e-5, atol=1e-6, msg=name)
        np.testing.assert_allclose([v for _, v in result.losses], [v for _, v in alone.losses], rtol=1e-5)
        assert load_train_state(result.checkpoint)["stacked_seeds"] == [0, 3]
        assert json.loads((result.run_dir / "eval.json").read_text())
        assert (result.run_dir / "config.yaml").read_text().count(f"seed: {seed}") == 1
        assert load(result.run_dir, device="cpu").spec.step == 20


def test_resume_after_a_kill_between_seeds_saves_is_bit_exact(pendulum_path: Path, tmp_path: Path):
    """A stack stopped where one seed has a newer checkpoint than another resumes from the step they share
    and ends with exactly the uninterrupted stack's weights, dropout streams included."""
    config = _config(pendulum_path, tmp_path / "full", "model.dropout=0.1", "steps=30", "eval_episodes=1")
    full = train_stacked(config, SEEDS)
    split = dataclasses.replace(config, out_dir=str(tmp_path / "split"), steps=20)
    train_stacked(split, SEEDS)
    shutil.rmtree(tmp_path / "split" / "seed_1" / CHECKPOINT_DIR / "step_00000020")  # killed before seed 1 saved
    resumed = train_stacked(split, SEEDS, resume=True, overrides={"steps": 30})
    for a, b in zip(full, resumed):
        wa, wb = load_policy_files(a.checkpoint)[1], load_policy_files(b.checkpoint)[1]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # one seed's directory is an ordinary run: a plain resume continues it alone
    alone = load_config(None, tiny_overrides(pendulum_path, tmp_path / "split" / "seed_2"))
    assert train(alone, resume=True, overrides={"steps": 32}).checkpoint == latest_checkpoint(
        tmp_path / "split" / "seed_2"
    )


def test_a_diverging_seed_stops_the_stack_naming_it(pendulum_path: Path, tmp_path: Path, monkeypatch):
    import dtrl.train.stacked as stacked_module

    real, calls = stacked_module.stack_batches, [0]

    def stack_with_nan(batches):
        batch = real(batches)
        calls[0] += 1
        if calls[0] == 13:
            batch.states[1, 0, -1, 0] = float("nan")  # seed 3's batch; the last position is always real
        return batch

    monkeypatch.setattr(stacked_module, "stack_batches", stack_with_nan)
    with pytest.raises(
        DtrlError, match=r"diverged at step 13 for seed 3: loss=nan.*batch of seed 3: .* with 1 NaN/Inf"
    ):
        train_stacked(_config(pendulum_path, tmp_path / "nan"), [0, 3, 5])
    assert latest_checkpoint(tmp_path / "nan" / "seed_3").name == "step_00000010"


def test_bad_seeds_and_unsupported_settings(pendulum_path: Path, tmp_path: Path):
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for text in ("", "0,a", "1,1"):
        with pytest.raises(DtrlError):
            parse_seeds(text)
    with pytest.raises(DtrlError, match="activation_checkpointing"):
        train_stacked(_config(pendulum_path, tmp_path / "ckpt", "model.activation_checkpointing=true"), [0, 1])


def test_cli_trains_stacked_seeds(pendulum_path: Path, tmp_path: Path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "dtrl", "train", *tiny_overrides(pendulum_path, out, steps=10), "--seeds", "4,5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("checkpoint:") == 2
    assert latest_checkpoint(out / "seed_4") is not None and latest_checkpoint(out / "seed_5") is not None
