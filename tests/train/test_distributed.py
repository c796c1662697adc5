"""DDP under torchrun: two gloo processes on CPU against one process on the union batch."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from dtrl.checkpoint import load_policy_files, load_train_state
from dtrl.config import TrainConfig, load_config
from dtrl.data import EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.readers import open_dataset
from dtrl.data.sampler import Batch, SegmentSampler
from dtrl.distributed import from_env, rank_seed, resume_seed
from dtrl.errors import DtrlError
from dtrl.models import DecisionTransformer
from dtrl.runfiles import CHECKPOINT_DIR, LATEST_FILE
from dtrl.train import train
from dtrl.train.run import model_config_for
from dtrl.train.step import action_loss, build_optimizer

STEPS = 20


def _overrides(data: Path, out: Path, steps: int = STEPS) -> list[str]:
    return tiny_overrides(data, out, steps) + ["checkpoint_every=10", "keep_checkpoints=3", "model.dropout=0"]


def _torchrun(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "dtrl", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=240, env=env)
    assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_policy_files(checkpoint)[1]


@pytest.fixture(scope="module")
def data(pendulum_dataset: EpisodeDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pendulum data without an env id, so runs skip the (here irrelevant) evaluation."""
    no_env = dataclasses.replace(pendulum_dataset, env_id=None)
    return no_env.save(tmp_path_factory.mktemp("ddp-data") / "pendulum.npz")


@pytest.fixture(scope="module")
def ddp_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "run"
    _torchrun(*_overrides(data, run))
    return run


class Reference:
    """One process doing by hand what DDP should amount to: dtrl's own model, optimizer and samplers."""

    def __init__(self, config: TrainConfig, seeds: list[int]) -> None:
        self.config = config
        dataset = open_dataset(config.dataset)
        normalizer = Normalizer.from_dataset(dataset)
        model_config = model_config_for(dataset, config.model, normalizer)
        torch.manual_seed(config.seed)
        self.model = DecisionTransformer(model_config)
        self.optimizer, self.scheduler = build_optimizer(self.model, config)
        self.samplers = [
            SegmentSampler(dataset, model_config.context_length, config.reward_scale, normalizer, "cpu", s)
            for s in seeds
        ]
        self.losses: list[float] = []

    def run(self, steps: int) -> None:
        """Each step trains on the concatenation of every sampler's batch."""
        for _ in range(steps):
            parts = [s.sample(self.config.batch_size) for s in self.samplers]
            batch = Batch(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Batch)))
            loss = action_loss(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.losses.append(loss.item())


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_union_batch(ddp_run: Path, data: Path):
    config = load_config(None, _overrides(data, ddp_run))
    ref = Reference(config, [rank_seed(config.seed, r) for r in range(2)])
    ref.run(STEPS)
    got = _weights(ddp_run / CHECKPOINT_DIR / f"step_{STEPS:08d}")
    for name, value in ref.model.state_dict().items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # the logged loss is the union batch's, not rank 0's half
    logged = [line for line in (ddp_run / "metrics.jsonl").read_text().splitlines() if '"train/loss"' in line]
    first = float(logged[0].split('"train/loss": ')[1].split(",")[0])
    assert first == pytest.approx(sum(ref.losses[:10]) / 10, rel=1e-5)
    state = load_train_state(ddp_run / CHECKPOINT_DIR / f"step_{STEPS:08d}")
    assert state["world_size"] == 2 and len(state["other_ranks"]) == 1


@pytest.mark.slow
def test_resuming_on_the_same_world_size_continues_exactly(ddp_run: Path, data: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(ddp_run, run)
    shutil.rmtree(run / CHECKPOINT_DIR / f"step_{STEPS:08d}")
    (run / CHECKPOINT_DIR / LATEST_FILE).write_text("step_00000010")
    _torchrun("--resume", f"out_dir={run}", f"steps={STEPS}")
    a, b = (
        _weights(ddp_run / CHECKPOINT_DIR / f"step_{STEPS:08d}"),
        _weights(run / CHECKPOINT_DIR / f"step_{STEPS:08d}"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a), "every rank's sampler stream must be restored"


@pytest.mark.slow
def test_a_two_process_run_resumes_on_one_process(
    ddp_run: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    run = tmp_path / "run"
    shutil.copytree(ddp_run, run)
    with caplog.at_level(logging.WARNING, logger="dtrl.train"):
        result = train(load_config(None, _overrides(data, run, 30)), resume=True, overrides={"steps": 30})
    assert "re-seeded" in caplog.text
    assert result.checkpoint.name == "step_00000030"
    # one process continues from the 2-process checkpoint with the documented re-seeded stream
    config = load_config(None, _overrides(data, run, 30))
    ref = Reference(config, [resume_seed(config.seed, 0, STEPS)])
    state = load_train_state(ddp_run / CHECKPOINT_DIR / f"step_{STEPS:08d}")
    ref.model.load_state_dict(_weights(ddp_run / CHECKPOINT_DIR / f"step_{STEPS:08d}"))
    ref.optimizer.load_state_dict(state["optimizer"])
    ref.scheduler.load_state_dict(state["scheduler"])
    ref.run(30 - STEPS)
    got = _weights(result.checkpoint)
    assert all(torch.equal(got[k], v) for k, v in ref.model.state_dict().items())


@pytest.mark.slow
def test_an_error_on_rank_zero_stops_every_rank(ddp_run: Path, data: Path):
    """prepare_run fails on rank 0 only (the run exists); rank 1 must stop with the same message, not wait."""
    done = _torchrun(*_overrides(data, ddp_run), ok=False)
    assert done.stderr.count("already holds checkpoints") == 2, done.stderr[-3000:]


def test_rank_seeds_keep_rank_zero_and_differ_elsewhere():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(7, r) for r in range(8)} | {resume_seed(7, r, 100) for r in range(8)}
    assert len(seeds) == 16
    assert rank_seed(7, 3) == rank_seed(7, 3) and resume_seed(7, 1, 5) != resume_seed(7, 1, 6)


def test_bad_torchrun_variables_are_reported(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DtrlError, match="does not fit WORLD_SIZE"):
        from_env()
