"""Shared fixtures: small datasets generated on the spot (no network, seconds to build).

The folders mirror the package (envs/, data/, models/, collect/, train/, export/, cli/);
cross-cutting suites (reliability, crash-resume, hostile input, properties, docs, fast
paths) sit in quality/, benchmarks/ tests the scripts of the repository's benchmarks/.
The folders have no __init__.py: pytest imports each test file under its basename
(rootdir-based "prepend" import mode), so every test file name must be unique across
folders, and this directory is on sys.path, which is what ``from conftest import ...`` needs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from dtrl.checkpoint import PolicySpec
from dtrl.config import ModelConfig, load_config
from dtrl.data import Episode, EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.spaces import space_to_dict

if TYPE_CHECKING:
    from dtrl.train import TrainResult

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Some test files import helpers from test files in other folders (train/test_odt_faithful.py
# from models/test_variants.py, data/test_store.py from cli/test_cli.py, ...). pytest puts a
# folder on sys.path only when it collects a file there; putting every folder there up front
# makes those imports work whichever files a run selects.
for _folder in sorted(p for p in Path(__file__).resolve().parent.iterdir() if p.is_dir() and p.name[0] not in "._"):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))


def controller_episodes(num_episodes: int, seed: int = 0) -> list[Episode]:
    """Pendulum-v1 episodes of a noisy energy-pumping controller: learnable actions, varied returns."""
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(num_episodes):
        obs, _ = env.reset(seed=seed + i)
        gain = rng.uniform(0.0, 1.0)  # episode quality varies with the controller's gain
        rows: dict[str, list] = {k: [] for k in ("o", "a", "r", "te", "tr")}
        done = False
        while not done:
            cos, sin, vel = obs
            theta = np.arctan2(sin, cos)
            action = np.clip([gain * (-8.0 * theta - 1.5 * vel) + rng.normal(0, 0.2)], -2.0, 2.0).astype(np.float32)
            rows["o"].append(obs)
            rows["a"].append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rows["r"].append(reward)
            rows["te"].append(terminated)
            rows["tr"].append(truncated)
            done = terminated or truncated
        episodes.append(
            Episode(
                np.array(rows["o"], dtype=np.float32),
                np.array(rows["a"], dtype=np.float32),
                np.array(rows["r"], dtype=np.float32),
                np.array(rows["te"]),
                np.array(rows["tr"]),
            )
        )
    return episodes


@pytest.fixture(scope="session")
def pendulum_dataset() -> EpisodeDataset:
    env = gym.make("Pendulum-v1")
    return EpisodeDataset.from_episodes(
        controller_episodes(12),
        observation_space=env.observation_space,
        action_space=env.action_space,
        name="pendulum-controller",
        env_id="Pendulum-v1",
    )


@pytest.fixture(scope="session")
def pendulum_path(pendulum_dataset: EpisodeDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pendulum_dataset.save(tmp_path_factory.mktemp("data") / "pendulum.npz")


@pytest.fixture(scope="module")
def run20(pendulum_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 20-step run with checkpoints at steps 10 and 20, one per test module; copy it
    before changing it."""
    out = tmp_path_factory.mktemp("run20") / "run"
    run(pendulum_path, out, "steps=20", "checkpoint_every=10", "eval_episodes=1")
    return out


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    return ModelConfig(observation_dim=3, action_dim=1, context_length=5, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def pendulum_spec(cfg: ModelConfig) -> PolicySpec:
    """A policy spec for Pendulum-v1 with fixed, non-trivial normalisation: policies built without training."""
    env = gym.make("Pendulum-v1")
    norm = Normalizer(
        np.array([0.1, -0.2, 0.3], np.float32),
        np.array([0.5, 2.0, 4.0], np.float32),
        np.array([-2.0], np.float32),
        np.array([2.0], np.float32),
    )
    return PolicySpec(
        cfg, 100.0, norm.to_dict(), space_to_dict(env.observation_space), space_to_dict(env.action_space), "Pendulum-v1"
    )


def tiny_overrides(data: Path, out: Path, steps: int = 40) -> list[str]:
    """A training run small enough for a test: seconds on one core."""
    return [
        f"dataset={data}",
        f"out_dir={out}",
        f"steps={steps}",
        "batch_size=16",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=16",
        "model.context_length=5",
        "warmup_steps=5",
        "learning_rate=1e-3",
        "log_every=10",
        "checkpoint_every=20",
        "eval_episodes=2",
        "reward_scale=100",
        "num_threads=1",
    ]


def run(data: Path, out: Path, *extra: str, resume: bool = False, **overrides: Any) -> TrainResult:
    """A tiny in-process training run (the settings of :func:`tiny_overrides` plus ``extra``)."""
    from dtrl.train import train

    cfg = load_config(None, tiny_overrides(data, out) + list(extra))
    return train(cfg, resume=resume, overrides={"steps": cfg.steps, **overrides} if resume else None)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)
