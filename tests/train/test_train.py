"""Training, checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from dtrl.checkpoint import latest_checkpoint, load_policy_files, write_policy
from dtrl.config import TrainConfig, load_config
from dtrl.errors import DtrlError
from dtrl.policy import load
from dtrl.runfiles import CHECKPOINT_DIR, LATEST_FILE, TRAIN_STATE_FILE, WEIGHTS_FILE
from dtrl.train import train


def _train(data: Path, out: Path, *extra: str, resume: bool = False):
    cfg = load_config(None, tiny_overrides(data, out) + list(extra))
    return train(cfg, resume=resume, overrides={"steps": cfg.steps} if resume else None)


def test_tiny_training_lowers_the_loss(pendulum_path: Path, tmp_path: Path):
    result = _train(pendulum_path, tmp_path / "run", "steps=120", "checkpoint_every=120")
    first, last = result.losses[0][1], result.losses[-1][1]
    assert last < 0.7 * first, f"loss went {first:.4f} -> {last:.4f}"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/learning_rate", "train/steps_per_second"} <= set(lines[0])
    assert any(k.startswith("eval/return_mean@") for k in lines[-1])
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "eval.json").is_file()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_checkpoint_round_trip_is_bit_exact(pendulum_path: Path, tmp_path: Path):
    result = _train(pendulum_path, tmp_path / "run", "steps=20")
    spec, weights, _ = load_policy_files(result.checkpoint)
    write_policy(tmp_path / "copy", spec, weights)
    spec2, weights2, _ = load_policy_files(tmp_path / "copy")
    assert spec2 == spec
    assert weights.keys() == weights2.keys()
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)
    assert (tmp_path / "copy" / WEIGHTS_FILE).read_bytes() == (result.checkpoint / WEIGHTS_FILE).read_bytes()
    # the policy carries the dataset's normalisation stats
    policy = load(tmp_path / "copy", device="cpu")
    assert policy.normalizer.state_mean.shape == (3,) and policy.spec.env_id == "Pendulum-v1"


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(pendulum_path: Path, tmp_path: Path):
    full = _train(pendulum_path, tmp_path / "full", "steps=40")
    _train(pendulum_path, tmp_path / "split", "steps=20")
    resumed = _train(pendulum_path, tmp_path / "split", "steps=40", resume=True)
    _, a, _ = load_policy_files(full.checkpoint)
    _, b, _ = load_policy_files(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert full.losses[-1] == resumed.losses[-1]


def test_torn_checkpoints_are_never_loaded(pendulum_path: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = _train(pendulum_path, run, "steps=20")
    root = run / CHECKPOINT_DIR
    # a crash mid-write leaves a temp dir, or a step dir without all its files
    (root / ".tmp-step_00000040-x").mkdir()
    torn = root / "step_00000060"
    torn.mkdir()
    (torn / WEIGHTS_FILE).write_bytes(b"half")
    (root / LATEST_FILE).write_text("step_00000060")
    assert latest_checkpoint(run) == result.checkpoint
    assert (result.checkpoint / TRAIN_STATE_FILE).read_bytes() != b""


def test_existing_run_needs_resume(pendulum_path: Path, tmp_path: Path):
    _train(pendulum_path, tmp_path / "run", "steps=20")
    with pytest.raises(DtrlError, match="--resume"):
        _train(pendulum_path, tmp_path / "run", "steps=20")


def test_corrupt_weights_give_a_clear_error(pendulum_path: Path, tmp_path: Path):
    result = _train(pendulum_path, tmp_path / "run", "steps=20")
    w = result.checkpoint / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(DtrlError, match="corrupt or truncated"):
        load(result.checkpoint, device="cpu")


def test_weights_from_another_model_shape_are_rejected(pendulum_path: Path, tmp_path: Path):
    result = _train(pendulum_path, tmp_path / "run", "steps=20")
    cfg = json.loads((result.checkpoint / "config.json").read_text())
    cfg["model"]["n_embd"] = 32
    (result.checkpoint / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DtrlError, match="another model shape"):
        load(result.checkpoint, device="cpu")


def test_learning_rate_warms_up_then_stays_or_follows_a_cosine_to_a_tenth():
    from dtrl.train.step import learning_rate_factor

    flat = TrainConfig(steps=100, warmup_steps=10)
    cosine = TrainConfig(steps=100, warmup_steps=10, lr_decay="cosine")
    for config in (flat, cosine):
        assert [learning_rate_factor(s, config) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert all(learning_rate_factor(s, flat) == 1.0 for s in range(10, 200))
    decay = [learning_rate_factor(s, cosine) for s in range(10, 101)]
    assert decay[0] == 1.0 and all(a >= b for a, b in zip(decay, decay[1:]))
    assert decay[45] == pytest.approx(0.5) and decay[-1] == learning_rate_factor(500, cosine) == 0.1
    assert learning_rate_factor(7, TrainConfig(warmup_steps=0, lr_decay="none")) == 1.0
    with pytest.raises(DtrlError, match="lr_decay='linear': choose"):
        TrainConfig(lr_decay="linear").validate()


def test_weight_decay_matrices_only_spares_biases_norms_and_embeddings(tiny_model_config):
    import dataclasses

    from dtrl.models import DecisionTransformer
    from dtrl.train.step import build_optimizer

    model = DecisionTransformer(dataclasses.replace(tiny_model_config, stochastic_policy=True))
    names = {id(p): n for n, p in model.named_parameters()}
    everything, _ = build_optimizer(model, TrainConfig(weight_decay=0.1))
    assert [len(g["params"]) for g in everything.param_groups] == [len(names) - 1, 1]  # the temperature alone
    minGPT, _ = build_optimizer(model, TrainConfig(weight_decay=0.1, weight_decay_matrices_only=True))
    decayed, spared = ({names[id(p)] for p in g["params"]} for g in minGPT.param_groups)
    assert minGPT.param_groups[0]["weight_decay"] == 0.1 and minGPT.param_groups[1]["weight_decay"] == 0.0
    assert decayed | spared == set(names.values()) and not decayed & spared
    assert "embed_state.weight" in decayed and "action_head.weight" in decayed
    assert {"embed_timestep.weight", "embed_ln.weight", "embed_state.bias", "log_temperature"} <= spared
    assert all(n.endswith("weight") and "ln" not in n for n in decayed)
