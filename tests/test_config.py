"""Configs: paper defaults, YAML + overrides, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtrl.config import TrainConfig, load_config
from dtrl.errors import DtrlError


def test_defaults_are_the_papers_gym_settings():
    c = TrainConfig()
    assert (c.learning_rate, c.weight_decay, c.warmup_steps, c.grad_clip, c.batch_size, c.steps) == (
        1e-4,
        1e-4,
        10_000,
        0.25,
        64,
        100_000,
    )
    assert c.reward_scale == 1000.0 and c.model.context_length == 20


def test_yaml_then_overrides(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 500\nmodel:\n  n_layer: 2\n  n_embd: 64\ntarget_returns: [3600, 1800]\n")
    c = load_config(f, ["model.n_layer=4", "learning_rate=3e-4"])
    assert c.steps == 500 and c.model.n_layer == 4 and c.model.n_embd == 64
    assert c.learning_rate == pytest.approx(3e-4) and c.target_returns == [3600.0, 1800.0]


@pytest.mark.parametrize(
    "override, message",
    [
        (["stepz=5"], "unknown config key 'stepz' \\(did you mean steps\\?\\)"),
        (["model.n_layers=2"], "unknown config key 'model.n_layers'"),
        (["steps=abc"], "config key steps expects int"),
        (["model.dropout=1.5"], "model.dropout=1.5 must lie in"),
        (["batch_size=0"], "batch_size=0 must be a positive integer"),
        (["model.n_embd=130", "model.n_head=4"], "divisible"),
        (["learning_rate=-1"], "learning_rate=-1.0 must be > 0"),
        (["steps"], "not of the form key=value"),
    ],
)
def test_bad_configs_name_the_key(override, message):
    with pytest.raises(DtrlError, match=message):
        load_config(None, override)


def test_missing_and_invalid_yaml(tmp_path: Path):
    with pytest.raises(DtrlError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(DtrlError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1]
    paths = sorted((root / "configs").glob("*.yaml")) + [root / "src" / "dtrl" / "configs" / "quickstart.yaml"]
    assert len(paths) >= 4
    for path in paths:
        load_config(path)
