"""The paper's gym baselines: %BC's timestep rule and the MLP BC (kzl/decision-transformer's MLPBCModel)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_export import assert_matches
from torch import nn

import dtrl
from conftest import pendulum_spec, tiny_overrides
from dtrl.config import ModelConfig, load_config
from dtrl.data import Episode, EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler
from dtrl.errors import DtrlError
from dtrl.export import TORCHSCRIPT_FILE, export
from dtrl.models import MLPBehaviourCloning, build_model
from dtrl.train import train
from dtrl.train.run import RunData
from dtrl.train.step import action_loss


def _episodes(lengths: list[int], returns: list[float], seed: int = 0) -> EpisodeDataset:
    """Episodes of the given lengths whose rewards sum to the given returns; observations differ per episode."""
    rng = np.random.default_rng(seed)
    eps = []
    for n, ret in zip(lengths, returns):
        rewards = np.full(n, ret / n, np.float32)
        obs = rng.normal(loc=ret, size=(n, 3)).astype(np.float32)
        eps.append(Episode(obs, rng.uniform(-1, 1, (n, 1)).astype(np.float32), rewards, np.eye(n, dtype=bool)[-1],
                           np.zeros(n, bool)))  # fmt: skip
    return EpisodeDataset.from_episodes(eps, gym.spaces.Box(-np.inf, np.inf, (3,)), gym.spaces.Box(-1.0, 1.0, (1,)))


def paper_pct_traj(lengths: np.ndarray, returns: np.ndarray, pct_traj: float) -> list[int]:
    """gym/experiment.py of kzl/decision-transformer, transcribed: the indices of the kept trajectories."""
    num_timesteps = max(int(pct_traj * sum(lengths)), 1)
    sorted_inds = np.argsort(returns)  # lowest to highest
    num_trajectories = 1
    timesteps = lengths[sorted_inds[-1]]
    ind = len(lengths) - 2
    while ind >= 0 and timesteps + lengths[sorted_inds[ind]] <= num_timesteps:
        timesteps += lengths[sorted_inds[ind]]
        num_trajectories += 1
        ind -= 1
    return sorted(sorted_inds[-num_trajectories:].tolist())


def _kept(data: EpisodeDataset, fraction: float) -> list[float]:
    return sorted(data.top_episodes(fraction).episode_returns.round(3).tolist(), reverse=True)


def test_pbc_keeps_the_best_episodes_up_to_a_share_of_timesteps():
    # returns 10 > 9 > 8 > 7, lengths 3, 5, 1, 11: 20 timesteps
    data = _episodes([3, 5, 1, 11], [10.0, 9.0, 8.0, 7.0])
    assert _kept(data, 0.5) == [10, 9, 8], "10 timesteps hold 3 + 5 + 1 (3 of 4 episodes; the episode rule: 2)"
    assert _kept(data, 0.25) == [10], "5 timesteps: 3, then 9's 5 would exceed them; the rule stops there, before 8"
    assert _kept(data, 0.01) == [10], "the best episode is kept even when it alone holds more"
    assert _kept(data, 0.99) == [10, 9, 8], "19 timesteps: the last episode's 11 do not fit"
    assert data.top_episodes(1.0) is data


@pytest.mark.parametrize("seed", range(5))
def test_pbc_selection_equals_the_papers_code(seed: int):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=30)
    returns = rng.permutation(30).astype(float)  # distinct: the paper's unstable sort then decides nothing
    data = _episodes(lengths.tolist(), returns.tolist(), seed)
    for fraction in (0.05, 0.1, 0.3, 0.77):
        expected = sorted(returns[paper_pct_traj(lengths, returns, fraction)], reverse=True)
        assert _kept(data, fraction) == pytest.approx(expected)


def test_pbc_state_statistics_come_from_every_episode(tmp_path: Path):
    data = _episodes([3, 5, 1, 11], [10.0, 9.0, 8.0, 7.0])
    path = data.save(tmp_path / "four.npz")
    run = RunData.load(load_config(None, [f"dataset={path}", "top_fraction=0.25"], environ={}))
    assert run.dataset.num_episodes == 1 and len(run.dataset) == 3
    mean, std = data.state_statistics()
    np.testing.assert_array_equal(run.normalizer.state_mean, mean)
    np.testing.assert_array_equal(run.normalizer.state_std, std)
    assert not np.allclose(run.dataset.state_statistics()[0], mean), "the kept episode alone has other statistics"


# ------------------------------------------------------------------------------------------ the MLP
class PaperMLPBC(nn.Module):
    """MLPBCModel of kzl/decision-transformer (gym/decision_transformer/models/mlp_bc.py), transcribed."""

    def __init__(self, state_dim, act_dim, hidden_size, n_layer, dropout=0.1, max_length=1):
        super().__init__()
        self.state_dim, self.act_dim, self.max_length = state_dim, act_dim, max_length
        layers = [nn.Linear(max_length * state_dim, hidden_size)]
        for _ in range(n_layer - 1):
            layers.extend([nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size)])
        layers.extend([nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, act_dim), nn.Tanh()])
        self.model = nn.Sequential(*layers)

    def forward(self, states):
        states = states[:, -self.max_length :].reshape(states.shape[0], -1)
        return self.model(states).reshape(states.shape[0], 1, self.act_dim)

    def get_action(self, states):
        states = states.reshape(1, -1, self.state_dim)
        if states.shape[1] < self.max_length:
            pad = torch.zeros((1, self.max_length - states.shape[1], self.state_dim))
            states = torch.cat([pad, states], dim=1)
        return self.forward(states)[0, -1]


OBS, ACT, K, WIDTH, LAYERS = 3, 1, 4, 16, 3
MLP = ModelConfig(observation_dim=OBS, action_dim=ACT, context_length=K, n_embd=WIDTH, n_layer=LAYERS, kind="mlp")


def _pair() -> tuple[MLPBehaviourCloning, PaperMLPBC]:
    torch.manual_seed(0)
    ours = build_model(MLP).eval()
    paper = PaperMLPBC(OBS, ACT, WIDTH, LAYERS, max_length=K).eval()
    paper.load_state_dict(ours.state_dict())  # the same parameter names and shapes
    return ours, paper


def test_mlp_has_the_papers_layers_and_parameter_count():
    ours, paper = _pair()
    assert isinstance(ours, MLPBehaviourCloning)
    assert [type(m) for m in ours.model] == [type(m) for m in paper.model]
    expected = K * OBS * WIDTH + WIDTH + (LAYERS - 1) * (WIDTH * WIDTH + WIDTH) + WIDTH * ACT + ACT
    assert ours.num_parameters() == expected == sum(p.numel() for p in paper.parameters())


def test_mlp_forward_equals_the_papers_at_every_step():
    """Step t of a window is the paper's prediction from the states up to t, zero-padded to K on the left."""
    ours, paper = _pair()
    states = torch.randn(2, 7, OBS)
    pred = ours(torch.zeros(2, 7), states, torch.zeros(2, 7, ACT), torch.zeros(2, 7, dtype=torch.long))
    assert pred.shape == (2, 7, ACT)
    for b in range(2):
        for t in range(7):
            torch.testing.assert_close(pred[b, t], paper.get_action(states[b, : t + 1]))
    mask = torch.tensor([[False, False, True, True, True, True, True]] * 2)
    masked = ours(None, states, None, None, mask)[:, -1]
    torch.testing.assert_close(masked[0], paper.get_action(states[0, 2:]))


def test_mlp_policy_acts_as_the_papers_get_action_from_the_first_step():
    """Over an episode, the first K-1 steps with fewer than K states (left-padded with zeros) included."""
    ours, paper = _pair()
    spec = pendulum_spec(MLP)
    policy = dtrl.policy.DecisionTransformerPolicy(ours, spec)
    norm = Normalizer.from_dict(spec.normalizer)
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=1)
    policy.reset(-200.0)
    seen, reward = [], 0.0
    for _ in range(2 * K):
        action = policy.act(obs, reward)
        seen.append(norm.states(obs[None])[0])
        expected = paper.get_action(torch.tensor(np.array(seen))).detach().numpy()
        np.testing.assert_allclose(action, norm.actions_to_env(expected[None])[0], rtol=1e-5, atol=1e-6)
        obs, reward, *_ = env.step(action)


def test_mlp_loss_scores_only_each_segments_last_step(pendulum_dataset):
    model = build_model(MLP).eval()
    batch = SegmentSampler(pendulum_dataset, K, 100.0, seed=0).sample(32)
    pred = model(batch.returns_to_go, batch.states, batch.actions, batch.timesteps, batch.mask)
    torch.testing.assert_close(action_loss(model, batch), ((pred[:, -1] - batch.actions[:, -1]) ** 2).mean())


def test_mlp_refuses_images_and_a_stochastic_head():
    with pytest.raises(DtrlError, match="model.kind=mlp takes flat observations"):
        build_model(ModelConfig(observation_dim=4 * 84 * 84, observation_shape=[4, 84, 84], action_dim=4, kind="mlp"))
    with pytest.raises(DtrlError, match="model.stochastic_policy=false"):
        build_model(ModelConfig(observation_dim=3, action_dim=1, kind="mlp", stochastic_policy=True))
    with pytest.raises(DtrlError, match="model.kind='rnn': choose 'transformer' or 'mlp'"):
        load_config(None, ["model.kind=rnn"], environ={})


@pytest.fixture(scope="module")
def mlp_run(pendulum_path: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("mlp") / "run"
    overrides = tiny_overrides(pendulum_path, out, steps=150) + ["model.kind=mlp", "model.dropout=0", "log_every=30"]
    return train(load_config(None, overrides, environ={}))


def test_mlp_trains_through_dtrl_train(mlp_run):
    losses = [loss for _, loss in mlp_run.losses]
    assert losses[-1] < 0.5 * losses[0], losses
    assert mlp_run.eval_results and np.isfinite(mlp_run.eval_results[0].mean)


def test_mlp_checkpoint_round_trip_and_torchscript(mlp_run, tmp_path: Path):
    policy = dtrl.load(mlp_run.run_dir, "cpu")
    assert policy.spec.model.kind == "mlp" and isinstance(policy.model, MLPBehaviourCloning)
    again = dtrl.load(mlp_run.checkpoint, "cpu")
    for name, weight in policy.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[name], weight)
    export(mlp_run.run_dir, "torchscript", tmp_path, "dtrl export")
    module = torch.jit.load(str(tmp_path / TORCHSCRIPT_FILE))
    assert_matches(mlp_run.run_dir, lambda inputs: module(*map(torch.from_numpy, inputs)).numpy())
