"""Reliability: bad input (docs/bad-inputs.md), numerical guards, full disks, memory, determinism.

Each bad input must give one line naming the problem and the fix; through the
CLI, ``error: ...`` and exit code 2 with no traceback. CLI cases call
``dtrl.cli.main`` in this process (no interpreter start-up per case);
tests/cli/test_cli.py runs the real command.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import dtrl.train.step as train_module
from conftest import run, tiny_overrides
from dtrl.checkpoint import latest_checkpoint, load_policy_files
from dtrl.config import load_config
from dtrl.data import Episode, EpisodeDataset
from dtrl.data import open_dataset as load_dataset
from dtrl.data.sampler import SegmentSampler
from dtrl.errors import DiskError, DtrlError
from dtrl.io import append_line
from dtrl.runfiles import CHECKPOINT_DIR, LATEST_FILE, METRICS_FILE, TRAIN_STATE_FILE
from dtrl.train import TrainResult, train

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --------------------------------------------------------------------------- helpers
def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``dtrl ARGS`` through the CLI's entry point in this process: (exit code, stdout, stderr)."""
    from dtrl.cli import main

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["dtrl", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_cli_error(result: tuple[int, str, str], *fragments: str) -> None:
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@contextmanager
def one_line_error(match: str) -> Iterator[pytest.ExceptionInfo[DtrlError]]:
    """``pytest.raises(DtrlError, match=...)`` that also checks the message is a single line."""
    with pytest.raises(DtrlError, match=match) as info:
        yield info
    assert "\n" not in str(info.value), str(info.value)


def write_h5(path: Path, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
    return path


def d4rl(n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    terminals = np.zeros(n, bool)
    terminals[n // 2] = True
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
    }


def episodes(lengths: list[int], obs_dim: int = 3, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ends = np.zeros(n, bool)
        ends[-1] = True
        out.append(
            Episode(
                rng.normal(size=(n, obs_dim)).astype(np.float32),
                rng.uniform(-1, 1, (n, 1)).astype(np.float32),
                rng.normal(size=n).astype(np.float32),
                ends,
                np.zeros(n, bool),
            )
        )
    return out


def file_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def leftovers(run_dir: Path) -> list[str]:
    """Temp files and directories of interrupted writes."""
    return sorted(p.name for p in run_dir.rglob("*") if p.name.startswith(".") and ("tmp" in p.name))


@pytest.fixture(scope="module")
def run20(pendulum_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 20-step run with one checkpoint; copy it before changing it."""
    out = tmp_path_factory.mktemp("run20") / "run"
    run(pendulum_path, out, "steps=20")
    return out


@pytest.fixture(scope="module")
def reference40(pendulum_path: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """An uninterrupted 40-step run: what every interrupted-and-resumed run must reproduce."""
    return run(pendulum_path, tmp_path_factory.mktemp("ref") / "run", "steps=40")


def copy_run(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "run"))


def same_weights(a: Path, b: Path) -> bool:
    _, wa, _ = load_policy_files(a)
    _, wb, _ = load_policy_files(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- bad datasets
def test_inf_rewards(tmp_path: Path) -> None:
    arrays = d4rl()
    arrays["rewards"][7] = np.inf
    with one_line_error(r"inf\.hdf5: .*rewards contain NaN or Inf \(first at transition 7\)"):
        load_dataset(write_h5(tmp_path / "inf.hdf5", **arrays))


def test_empty_dataset(tmp_path: Path) -> None:
    arrays = {k: v[:0] for k, v in d4rl().items()}
    with one_line_error(r"empty\.hdf5: .* is empty: it needs at least one episode"):
        load_dataset(write_h5(tmp_path / "empty.hdf5", **arrays))


def test_wrong_dtypes(tmp_path: Path) -> None:
    arrays = d4rl()
    arrays["observations"] = np.array([[b"a", b"b", b"c"]] * 10)
    with one_line_error(r"'observations' has dtype \|S1, not numbers"):
        load_dataset(write_h5(tmp_path / "text.hdf5", **arrays))
    arrays = d4rl()
    arrays["actions"] = np.zeros((10, 1), np.int64)
    with one_line_error(r"'actions' are int64 but D4RL actions are continuous floats"):
        load_dataset(write_h5(tmp_path / "int.hdf5", **arrays))
    # the native format: rewards saved as text
    ds = EpisodeDataset.from_episodes(episodes([4, 6]))
    with np.load(ds.save(tmp_path / "ok.npz")) as z:
        fields = {k: z[k] for k in z.files}
    fields["rewards"] = fields["rewards"].astype(str)
    np.savez(tmp_path / "text.npz", **fields)
    with one_line_error(r"rewards have dtype <U\d+, not numbers"):
        load_dataset(tmp_path / "text.npz")


def test_truncated_and_foreign_npz(tmp_path: Path) -> None:
    path = EpisodeDataset.from_episodes(episodes([50, 50])).save(tmp_path / "ds.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with one_line_error(r"ds\.npz is not a readable dtrl dataset .*truncated or corrupt: recreate it"):
        load_dataset(path)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with one_line_error(r"other\.npz is not a readable dtrl dataset"):
        load_dataset(tmp_path / "other.npz")


def test_invalid_episode_boundaries() -> None:
    eps = episodes([5, 5])
    cat = {
        k: np.concatenate([getattr(e, k) for e in eps])
        for k in ("observations", "actions", "rewards", "terminations", "truncations")
    }
    with one_line_error(r"invalid episode boundaries: offsets must rise from 0 to 10 with no empty episode"):
        EpisodeDataset.from_arrays(**cat, episode_starts=np.array([0, 5, 5, 10]))


def test_episodes_shorter_than_the_context_train(tmp_path: Path) -> None:
    """Not an error: segments of short episodes are left-padded and masked, so they train."""
    data = EpisodeDataset.from_episodes(episodes([1, 2, 3, 4] * 5), name="short").save(tmp_path / "short.npz")
    result = run(data, tmp_path / "run", "steps=10", "checkpoint_every=10", "model.context_length=8")
    assert all(np.isfinite(loss) for _, loss in result.losses)
    assert latest_checkpoint(tmp_path / "run") is not None


# --------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize(
    "override, message",
    [
        (["top_fraction=0"], r"top_fraction=0.0 must lie in \(0, 1\]"),
        (["model.activation=tanh"], r"model.activation='tanh': choose 'relu', 'gelu' or 'gelu_exact'"),
        (["betas=[0.9]"], r"config key betas expects 2 values, got 1"),
        (["model=3"], r"config section model must be a mapping of keys, got 3: write e.g. model.KEY=VALUE"),
        (["grad_clip=-1"], r"grad_clip=-1.0 must be >= 0"),
        (["model.action_tanh=maybe"], r"config key model.action_tanh expects bool, got 'maybe'"),
    ],
)
def test_more_bad_configs(override: list[str], message: str) -> None:
    with one_line_error(message):
        load_config(None, override)


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- steps: 3\n")
    with one_line_error(r"list\.yaml holds a list, not a mapping: write KEY: VALUE lines"):
        load_config(path)


def test_no_dataset_and_resume_without_run(tmp_path: Path) -> None:
    with one_line_error(r"no dataset given: set dataset=PATH"):
        train(load_config(None, [f"out_dir={tmp_path / 'a'}"]))
    with one_line_error(r"cannot resume: .* has no config.yaml; start the run without --resume"):
        train(load_config(None, [f"out_dir={tmp_path / 'b'}"]), resume=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(pendulum_path: Path, tmp_path: Path) -> None:
    with one_line_error(r"device 'cuda' requested but CUDA is not available: use device=cpu"):
        run(pendulum_path, tmp_path / "run", "device=cuda")


# --------------------------------------------------------------------------- bad command lines
def test_bad_command_lines(capsys: pytest.CaptureFixture[str], run20: Path) -> None:
    assert_cli_error(cli(capsys, "trian"), "No such command 'trian'. Did you mean 'train'?", "--help")
    assert_cli_error(
        cli(capsys, "eval", run20, "--episodes", "0", "-r", "1"), "'--episodes'", "greater than or equal to 1"
    )
    assert_cli_error(cli(capsys, "eval"), "Missing argument 'checkpoint'", "eval --help")
    assert_cli_error(
        cli(capsys, "eval", run20, "-r", "1", "lots"), "unexpected argument 'lots': target returns must be numbers"
    )
    assert_cli_error(cli(capsys, "eval", run20), "give at least one --target-return R")
    assert_cli_error(cli(capsys, "train", "steps"), "'steps' is not of the form key=value")


def test_dtrl_without_arguments_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys)
    assert code == 2 and "Usage" in out and "error" not in err


# --------------------------------------------------------------------------- bad checkpoints
def test_truncated_train_state_on_resume(run20: Path, tmp_path: Path, pendulum_path: Path) -> None:
    out = copy_run(run20, tmp_path)
    state = latest_checkpoint(out) / TRAIN_STATE_FILE
    state.write_bytes(state.read_bytes()[:200])
    with one_line_error(
        r"train_state\.pt is corrupt or truncated .*: delete step_00000020 to resume from the checkpoint before it"
    ):
        run(pendulum_path, out, "steps=40", resume=True)


def test_resume_with_another_dataset_shape(run20: Path, tmp_path: Path, pendulum_path: Path) -> None:
    out = copy_run(run20, tmp_path)
    other = EpisodeDataset.from_episodes(episodes([30, 30], obs_dim=5)).save(tmp_path / "five.npz")
    with one_line_error(
        r"cannot resume .* with a different dataset \('.*pendulum.npz' -> '.*five.npz'\): that would change"
    ):
        run(pendulum_path, out, "steps=40", resume=True, dataset=str(other))
    saved = out / "config.yaml"  # the dataset file replaced in place by one of another shape
    saved.write_text(saved.read_text().replace(str(pendulum_path), str(other)))
    with one_line_error(
        r"does not fit the model built from this config and dataset .*size mismatch.*: resume with the dataset"
    ):
        run(other, out, "steps=40", resume=True)


def test_corrupt_policy_config_and_empty_run(capsys: pytest.CaptureFixture[str], run20: Path, tmp_path: Path) -> None:
    out = copy_run(run20, tmp_path)
    config = latest_checkpoint(out) / "config.json"
    config.write_text(config.read_text()[:50])
    assert_cli_error(
        cli(capsys, "eval", out, "-r", "1"), "config.json is not a valid dtrl policy config", "re-export it"
    )
    (tmp_path / "empty").mkdir()
    assert_cli_error(cli(capsys, "eval", tmp_path / "empty", "-r", "1"), "holds no checkpoint", "train first")


# --------------------------------------------------------------------------- bad environments
def test_training_with_an_unknown_env_id(pendulum_path: Path, tmp_path: Path) -> None:
    with one_line_error(r"unknown environment id 'Pendulum-v99'.*similar: Pendulum-v1"):
        run(pendulum_path, tmp_path / "run", "env=Pendulum-v99")


# --------------------------------------------------------------------------- numerical guards
def _inject_nan_batch(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    real = SegmentSampler.sample
    calls = [0]

    def sample(self: SegmentSampler, batch_size: int) -> Any:
        batch = real(self, batch_size)
        calls[0] += 1
        if calls[0] == at_call:
            batch.states[0, -1, 0] = float("nan")  # the last position is always a real step
        return batch

    monkeypatch.setattr(SegmentSampler, "sample", sample)


def _inject_inf_gradient(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    real = train_module.action_loss
    calls = [0]

    def action_loss(*args: Any) -> torch.Tensor:
        loss = real(*args)
        calls[0] += 1
        if calls[0] == at_call:
            loss.register_hook(lambda grad: grad * float("inf"))  # finite loss, infinite gradients
        return loss

    monkeypatch.setattr(train_module, "action_loss", action_loss)


@pytest.mark.parametrize(
    "inject, expected",
    [
        (
            _inject_nan_batch,
            r"loss=nan, grad_norm=nan; batch: \d+ real steps, returns_to_go in \[.*\], states in \[.*\] with 1 NaN/Inf, actions in \[.*\]",
        ),
        (
            _inject_inf_gradient,
            r"loss=[\d.]+, grad_norm=(nan|inf); batch: \d+ real steps, returns_to_go in \[.*\], states in \[-?\d.*\], actions in \[.*\]",
        ),
    ],
    ids=["nan-in-data", "inf-gradient"],
)
def test_divergence_stops_with_step_and_batch_statistics(
    run20: Path,
    tmp_path: Path,
    pendulum_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inject: Callable[[pytest.MonkeyPatch, int], None],
    expected: str,
) -> None:
    out = copy_run(run20, tmp_path)
    good = latest_checkpoint(out)
    before = file_hashes(good)
    inject(monkeypatch, 5)
    with one_line_error(
        rf"training diverged at step 25: {expected}; the last good checkpoint .*step_00000020 is intact: lower learning_rate"
    ):
        run(pendulum_path, out, "steps=40", resume=True)
    monkeypatch.undo()
    assert latest_checkpoint(out) == good and file_hashes(good) == before
    assert sorted(p.name for p in (out / CHECKPOINT_DIR).iterdir()) == [LATEST_FILE, good.name]
    resumed = run(pendulum_path, out, "steps=21", resume=True)  # the kept checkpoint still resumes
    assert resumed.losses[-1][0] == 21


# --------------------------------------------------------------------------- full disk, unwritable places
def test_disk_full_while_checkpointing_keeps_the_last_good_one(
    pendulum_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference40: TrainResult
) -> None:
    out = tmp_path / "run"
    real_save = torch.save
    saves = [0]

    def save(obj: Any, f: Any) -> None:  # the second checkpoint's train state hits a full disk half-way
        saves[0] += 1
        if saves[0] < 2:
            return real_save(obj, f)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        raise ENOSPC

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(DiskError) as e:
        run(pendulum_path, out, "steps=40")
    message = str(e.value)
    assert "\n" not in message and "No space left on device" in message
    assert "training stopped at step 40, the last good checkpoint" in message and "step_00000020 is intact" in message
    assert message.endswith("free disk space or fix permissions, then continue with --resume")
    assert leftovers(out) == []
    assert latest_checkpoint(out).name == "step_00000020"
    assert sorted(p.name for p in (out / CHECKPOINT_DIR).iterdir()) == [LATEST_FILE, "step_00000020"]
    monkeypatch.undo()  # space freed
    resumed = run(pendulum_path, out, "steps=40", resume=True)
    assert same_weights(resumed.checkpoint, reference40.checkpoint)


def test_disk_full_while_logging_or_converting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pendulum_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "metrics.jsonl"
    append_line(log, '{"step": 1}')
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        real_write(fd, data[:3])
        raise ENOSPC

    with monkeypatch.context() as m:
        m.setattr(os, "write", write)
        with pytest.raises(DiskError, match="metrics.jsonl: No space left on device: free disk space"):
            append_line(log, '{"step": 2}')
    assert log.read_text() == '{"step": 1}\n', "a torn line was left behind"

    target = tmp_path / "converted.npz"
    target.write_bytes(b"the previous version")

    def savez(f: Any, **arrays: Any) -> None:
        f.write(b"half a dataset")
        raise ENOSPC

    monkeypatch.setattr(np, "savez", savez)
    assert_cli_error(
        cli(capsys, "data", "convert", pendulum_path, target, "--force"), "converted.npz: No space left on device"
    )
    assert target.read_bytes() == b"the previous version" and leftovers(tmp_path) == []


def test_unwritable_output_directory(pendulum_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    with one_line_error(r"cannot create run directory .*file/run \(Not a directory\): choose another out_dir"):
        run(pendulum_path, tmp_path / "file" / "run")

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("dtrl.io.tempfile.mkstemp", mkstemp)
    with one_line_error(
        r"cannot write .*config\.yaml: Permission denied: choose a writable location or fix its permissions"
    ):
        run(pendulum_path, tmp_path / "run")


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user (root writes anywhere)"
)
def test_read_only_output_directory(capsys: pytest.CaptureFixture[str], pendulum_path: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert_cli_error(cli(capsys, "train", *tiny_overrides(pendulum_path, locked / "run")), "Permission denied")
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------- memory
def test_dataset_loading_memory_within_1_5x_the_arrays(tmp_path: Path) -> None:
    """Peak Python/numpy allocation while loading, over the loaded arrays' bytes (benchmarks/dataset_memory.py
    measures process RSS as well)."""
    rng = np.random.default_rng(0)
    n = 100_000
    arrays = {
        "observations": rng.normal(size=(n, 17)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 6)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": (np.arange(n) % 1000) == 999,
        "timeouts": np.zeros(n, bool),
    }
    source = write_h5(tmp_path / "d4rl.hdf5", **arrays)
    del arrays
    dataset = load_dataset(source)
    paths = [source, dataset.save(tmp_path / "plain.npz"), dataset.save(tmp_path / "packed.npz", compress=True)]
    raw = sum(
        getattr(dataset, k).nbytes
        for k in ("observations", "actions", "rewards", "terminations", "truncations", "episode_starts")
    )
    del dataset
    for path in paths:
        tracemalloc.start()
        try:
            loaded = load_dataset(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(loaded) == n
        assert peak <= 1.5 * raw, f"{path.name}: loading peaked at {peak / raw:.2f}x the arrays"
        del loaded


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_curve_and_eval_returns(pendulum_path: Path, tmp_path: Path) -> None:
    def curve_and_returns(out: Path, seed: int) -> tuple[list[float], list[list[float]]]:
        run(pendulum_path, out, f"seed={seed}", "steps=30", "eval_every=20", "checkpoint_every=30")
        rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
        curve = [r["train/loss"] for r in rows if "train/loss" in r]
        evals = [v for r in rows for k, v in r.items() if k.startswith("eval/return_mean")]
        returns = [r["returns"] for r in json.loads((out / "eval.json").read_text())]
        return curve + evals, returns

    a = curve_and_returns(tmp_path / "a", seed=3)
    assert a == curve_and_returns(tmp_path / "b", seed=3)
    assert a[0] != curve_and_returns(tmp_path / "c", seed=4)[0], "another seed should give another curve"
    assert same_weights(latest_checkpoint(tmp_path / "a"), latest_checkpoint(tmp_path / "b"))

    # what reproducing needs is on disk: the resolved config, and versions, commit and command
    saved = load_config(tmp_path / "a" / "config.yaml")
    assert saved == load_config(
        None,
        tiny_overrides(pendulum_path, tmp_path / "a") + ["seed=3", "steps=30", "eval_every=20", "checkpoint_every=30"],
    )
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert {"dtrl", "python", "git_commit", "command"} <= set(info)
    assert {"torch", "numpy", "gymnasium"} <= {k for k, v in info["packages"].items() if v}
