"""Judging a policy without the simulator: the held-out split, val/loss, the best checkpoint, dtrl eval --dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dtrl
from conftest import pendulum_spec, tiny_overrides
from dtrl.checkpoint import latest_checkpoint, mark_best, read_best, save_checkpoint
from dtrl.config import load_config
from dtrl.data import EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.errors import DtrlError
from dtrl.models import DecisionTransformer
from dtrl.plot import plot_runs
from dtrl.runfiles import BEST_FILE, CHECKPOINT_DIR, VAL_FILE
from dtrl.train import train
from dtrl.validation import ActionError, split_episodes


def val_config(data: Path, out: Path, steps: int = 40, *extra: str):
    return load_config(
        None, [*tiny_overrides(data, out, steps), "val_fraction=0.25", "eval_episodes=1", *extra], environ={}
    )


@pytest.fixture(scope="module")
def val_run(pendulum_path: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("val") / "run"
    return out, train(val_config(pendulum_path, out))


def test_split_is_seeded_whole_episodes_and_never_everything() -> None:
    a, b = split_episodes(12, 0.25, seed=0), split_episodes(12, 0.25, seed=0)
    assert np.array_equal(a, b) and len(a) == 3 and len(set(a.tolist())) == 3
    assert not np.array_equal(a, split_episodes(12, 0.25, seed=1))
    assert len(split_episodes(12, 0.01, seed=0)) == 1  # at least one
    with pytest.raises(DtrlError, match="leaving none to train on"):
        split_episodes(2, 0.9, seed=0)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_val_fraction_out_of_range_is_one_line(value: float) -> None:
    with pytest.raises(DtrlError, match=r"val_fraction=.* must lie in \[0, 1\)"):
        load_config(None, [f"val_fraction={value}"], environ={})


def test_val_loss_is_logged_beside_train_loss_and_the_held_out_episodes_are_not_trained_on(
    val_run, pendulum_dataset: EpisodeDataset
) -> None:
    out, result = val_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [r["step"] for r in rows if "val/loss" in r] == [10, 20, 30, 40]
    saved = json.loads((out / VAL_FILE).read_text())
    held_out = saved["episodes"]
    assert held_out == split_episodes(pendulum_dataset.num_episodes, 0.25, 0).tolist()
    # the checkpoint's state statistics are those of the training episodes alone
    kept = pendulum_dataset.select([i for i in range(pendulum_dataset.num_episodes) if i not in held_out])
    policy = dtrl.load(out, "cpu")
    np.testing.assert_allclose(policy.normalizer.state_mean, kept.state_statistics()[0], rtol=1e-6)
    # the last val/loss is the action error of the final checkpoint on the held-out episodes
    val = pendulum_dataset.select(held_out)
    error = ActionError(val, policy.spec.model.context_length, policy.spec.reward_scale, policy.normalizer)
    assert error(policy.model) == pytest.approx(result.val_losses[-1][1], rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [10, 20, 30, 40]


def test_best_checkpoint_is_marked_and_the_final_one_stays_the_default(val_run) -> None:
    out, result = val_run
    best = json.loads((out / CHECKPOINT_DIR / BEST_FILE).read_text())
    losses = dict(result.val_losses)
    assert best["val_loss"] == pytest.approx(min(losses[20], losses[40]))  # checkpoint_every=20
    assert (out / CHECKPOINT_DIR / best["checkpoint"]).is_dir()
    assert latest_checkpoint(out).name == "step_00000040"
    assert dtrl.load(out, "cpu").spec.step == 40


def test_resume_reuses_the_saved_split(pendulum_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(val_config(pendulum_path, out, 20))
    saved = (out / VAL_FILE).read_text()
    record = json.loads(saved)
    record["episodes"] = [0, 5, 7]  # a split the seed would not draw: resume must take the saved one
    (out / VAL_FILE).write_text(json.dumps(record))
    train(val_config(pendulum_path, out, 40), resume=True, overrides={"steps": 40})
    assert json.loads((out / VAL_FILE).read_text())["episodes"] == [0, 5, 7]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/loss" in r] == [10, 20, 30, 40]
    record["num_episodes"] = 99
    (out / VAL_FILE).write_text(json.dumps(record))
    with pytest.raises(DtrlError, match="splits 99 episodes but the dataset now has 12"):
        train(val_config(pendulum_path, out, 60), resume=True, overrides={"steps": 60})


def test_action_error_is_every_step_once_from_consecutive_k_step_segments(
    pendulum_dataset: EpisodeDataset, tiny_model_config
) -> None:
    torch.manual_seed(0)
    model = DecisionTransformer(tiny_model_config).eval()
    data = pendulum_dataset.select([0, 3])
    normalizer = Normalizer.from_dataset(pendulum_dataset)
    K, scale = tiny_model_config.context_length, 100.0
    total, count = 0.0, 0
    for episode in data:  # by hand: each chunk unpadded, one forward per chunk
        L = len(episode.rewards)
        rtg = np.cumsum(episode.rewards[::-1].astype(np.float64))[::-1] / scale
        states = normalizer.states(episode.observations)
        actions = normalizer.actions_to_model(episode.actions)
        for j in range(0, L, K):
            s = slice(j, min(j + K, L))
            with torch.no_grad():
                pred = model(
                    torch.tensor(rtg[s][None], dtype=torch.float32),
                    torch.from_numpy(states[s][None]),
                    torch.from_numpy(actions[s][None]),
                    torch.arange(s.start, s.stop)[None],
                )
            total += float(F.mse_loss(pred[0], torch.from_numpy(actions[s]), reduction="sum"))
            count += actions[s].size
    assert ActionError(data, K, scale, normalizer)(model) == pytest.approx(total / count, rel=1e-5)


def test_the_best_checkpoint_survives_pruning(tmp_path: Path, tiny_model_config) -> None:
    spec = pendulum_spec(tiny_model_config)
    weights = DecisionTransformer(tiny_model_config).state_dict()
    first = save_checkpoint(tmp_path, 1, spec, weights, {"step": 1}, keep=1)
    assert mark_best(tmp_path, first, 1, 0.5)
    for step, loss in ((2, 0.7), (3, 0.6)):
        path = save_checkpoint(tmp_path, step, spec, weights, {"step": step}, keep=1)
        assert not mark_best(tmp_path, path, step, loss)
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).glob("step_*")) == ["step_00000001", "step_00000003"]
    assert read_best(tmp_path)["checkpoint"] == "step_00000001"


def test_stacked_seeds_say_val_fraction_is_single_run(pendulum_path: Path, tmp_path: Path) -> None:
    from dtrl.train.stacked import train_stacked

    with pytest.raises(DtrlError, match="val_fraction is for single runs"):
        train_stacked(val_config(pendulum_path, tmp_path / "run"), seeds=[0, 1])


def test_plot_draws_val_loss_beside_train_loss(val_run, tmp_path: Path, monkeypatch) -> None:
    import dtrl.plot

    drawn = []
    original = dtrl.plot.plot_seeds
    monkeypatch.setattr(
        dtrl.plot,
        "plot_seeds",
        lambda ax, curves, label, color: (drawn.append((ax.get_title(), label)), original(ax, curves, label, color)),
    )
    out, _ = val_run
    plot_runs([out], tmp_path)
    assert [label.rsplit(", ", 1)[1] for _, label in drawn[:2]] == ["train/loss", "val/loss"]


def test_eval_dataset_reports_the_action_error_of_a_run_without_an_environment(
    pendulum_dataset: EpisodeDataset, tmp_path: Path
) -> None:
    data = pendulum_dataset.select(range(6))
    data.env_id = ""  # a run whose environment is unknown: no simulator can judge it
    path = data.save(tmp_path / "noenv.npz")
    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(path, out, 20), environ={}))
    report = tmp_path / "offline.json"
    proc = subprocess.run(
        [sys.executable, "-m", "dtrl", "eval", str(out), "--dataset", str(path), "-o", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "action error" in proc.stdout
    result = json.loads(report.read_text())
    policy = dtrl.load(out, "cpu")
    expected = ActionError(data, policy.spec.model.context_length, policy.spec.reward_scale, policy.normalizer)(
        policy.model
    )
    assert result["episodes"] == 6 and result["steps"] == len(data)
    assert result["action_error"] == pytest.approx(expected, rel=1e-6)
