"""Decision ConvFormer's convolution mixer and the Online Decision Transformer (stochastic head, fine-tuning)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from conftest import tiny_overrides
from dtrl.checkpoint import PolicySpec, load_policy_files, write_policy
from dtrl.config import FinetuneConfig, ModelConfig, load_config
from dtrl.data import Episode, EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import Batch, SegmentSampler
from dtrl.data.spaces import space_to_dict
from dtrl.errors import DtrlError
from dtrl.evaluate import EpisodeRecorder, rollout
from dtrl.models import DecisionTransformer
from dtrl.models.gaussian import log_prob, target_entropy, temperature
from dtrl.models.mixers import CausalConvMixer
from dtrl.policy import DecisionTransformerPolicy
from dtrl.train import train
from dtrl.train.finetune import TrajectoryBuffer, collect, finetune
from dtrl.train.step import stochastic_action_loss

REACH = "DtrlTestReach-v0"


class ReachEnv(gym.Env):
    """Ten steps; every step pays 1 - (a - 0.5)^2, so the best action is 0.5 whatever the state."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        reward = 1.0 - (float(np.asarray(action).reshape(-1)[0]) - 0.5) ** 2
        return np.array([self.t / 10], np.float32), reward, False, False, {}


if REACH not in gym.registry:
    gym.register(REACH, entry_point=ReachEnv, max_episode_steps=10)


def reach_dataset(episodes: int = 60, seed: int = 0) -> EpisodeDataset:
    """A poor behaviour policy: actions around -0.5, far from the best action 0.5."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        actions = np.clip(-0.5 + 0.15 * rng.standard_normal((10, 1)), -1, 1).astype(np.float32)
        out.append(
            Episode(
                observations=(np.arange(10, dtype=np.float32) / 10)[:, None],
                actions=actions,
                rewards=(1.0 - (actions[:, 0] - 0.5) ** 2).astype(np.float32),
                terminations=np.zeros(10, bool),
                truncations=np.arange(10) == 9,
            )
        )
    return EpisodeDataset.from_episodes(
        out, ReachEnv.observation_space, ReachEnv.action_space, name="reach-poor", env_id=REACH
    )


def stochastic_config(**kw) -> ModelConfig:
    base = dict(observation_dim=3, action_dim=2, context_length=4, n_layer=2, n_embd=16, dropout=0.0)
    return ModelConfig(**{**base, "stochastic_policy": True, **kw})


def random_batch(cfg: ModelConfig, B: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    T = cfg.context_length
    return Batch(
        returns_to_go=torch.randn(B, T, generator=g),
        states=torch.randn(B, T, cfg.observation_dim, generator=g),
        actions=torch.rand(B, T, cfg.action_dim, generator=g) * 2 - 1,
        timesteps=torch.arange(T).repeat(B, 1),
        mask=torch.ones(B, T, dtype=torch.bool),
    )


# ----------------------------------------------------------------------------- convolution mixer
def test_conv_mixer_is_causal_and_local():
    torch.manual_seed(0)
    mixer = CausalConvMixer(n_embd=8, kernel_size=3, tokens_per_step=3, dropout=0.0)
    x = torch.randn(2, 12, 8)
    base = mixer(x, None)
    for j in range(12):
        changed = x.clone()
        changed[:, j] += 1.0
        moved = (mixer(changed, None) - base).abs().amax(dim=(0, 2)) > 0
        # token j reaches tokens j .. j + kernel_size - 1 and nothing earlier or later
        assert moved.nonzero().flatten().tolist() == list(range(j, min(j + 3, 12)))


def test_conv_model_never_sees_the_future_or_padding():
    torch.manual_seed(0)
    cfg = ModelConfig(
        observation_dim=3, action_dim=2, context_length=6, n_layer=2, n_embd=16, dropout=0.0, token_mixer="conv"
    )
    model = DecisionTransformer(cfg).eval()
    batch = random_batch(cfg, B=2)
    pred = model(batch.returns_to_go, batch.states, batch.actions, batch.timesteps)
    for t in range(cfg.context_length):
        states, actions, rtg = batch.states.clone(), batch.actions.clone(), batch.returns_to_go.clone()
        states[:, t + 1 :] += 5.0
        rtg[:, t + 1 :] -= 3.0
        actions[:, t:] *= -1  # a_t itself must not inform the prediction of a_t
        again = model(rtg, states, actions, batch.timesteps)
        torch.testing.assert_close(again[:, : t + 1], pred[:, : t + 1])
    # left padding: whatever the padded steps hold, the real steps' predictions are those of the short window
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, :2] = False
    noisy = batch.states.clone()
    noisy[:, :2] = 100.0
    padded = model(batch.returns_to_go, noisy, batch.actions, batch.timesteps, mask)[:, 2:]
    short = model(batch.returns_to_go[:, 2:], batch.states[:, 2:], batch.actions[:, 2:], batch.timesteps[:, 2:])
    torch.testing.assert_close(padded, short)


def test_token_mixer_and_head_are_validated_and_round_trip(tmp_path: Path):
    with pytest.raises(DtrlError, match="model.token_mixer"):
        load_config(None, ["dataset=x", "model.token_mixer=lstm"])
    with pytest.raises(DtrlError, match="conv_kernel_size"):
        load_config(None, ["dataset=x", "model.conv_kernel_size=0"])
    with pytest.raises(DtrlError, match="stochastic_policy"):
        DecisionTransformer(ModelConfig(observation_dim=3, action_dim=4, discrete=True, stochastic_policy=True))
    default = DecisionTransformer(ModelConfig(observation_dim=3, action_dim=2, n_layer=1, n_embd=16))
    assert not any("conv" in k or "log_std" in k or "temperature" in k for k in default.state_dict())
    # a conv, stochastic model saves and loads like any other
    cfg = stochastic_config(token_mixer="conv", conv_kernel_size=4)
    model = DecisionTransformer(cfg)
    box = gym.spaces.Box(-1, 1, (2,), np.float32)
    normalizer = Normalizer(np.zeros(3, np.float32), np.ones(3, np.float32), box.low, box.high)
    spec = PolicySpec(
        cfg, 1.0, normalizer.to_dict(), space_to_dict(gym.spaces.Box(-5, 5, (3,), np.float32)), space_to_dict(box)
    )
    write_policy(tmp_path, spec, model.state_dict())
    loaded = DecisionTransformerPolicy.load(tmp_path, device="cpu")
    assert loaded.spec.model == cfg
    batch = random_batch(cfg)
    torch.testing.assert_close(
        loaded.model(batch.returns_to_go, batch.states, batch.actions, batch.timesteps),
        model.eval()(batch.returns_to_go, batch.states, batch.actions, batch.timesteps),
    )


# ----------------------------------------------------------------------------- stochastic head
def test_log_prob_is_the_tanh_squashed_gaussian():
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3), torch.randn(5, 3).clamp(-2, 1)
    actions = torch.rand(5, 3) * 1.8 - 0.9
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()]).log_prob(actions).sum(-1)
    torch.testing.assert_close(log_prob(mean, log_std, actions), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("log_std", "alpha_moves"), [(-5.0, "up"), (0.0, "down")])
def test_temperature_steers_entropy_towards_minus_action_dim(log_std: float, alpha_moves: str):
    torch.manual_seed(0)
    cfg = stochastic_config(action_dim=3)
    assert target_entropy(cfg.action_dim) == -3.0
    model = DecisionTransformer(cfg)
    with torch.no_grad():  # a fixed spread: entropy far below (-5) or above (0) the target of -3
        model.action_log_std.weight.zero_()
        model.action_log_std.bias.fill_(float(np.arctanh(2 * (log_std + 5) / 7 - 1)) if log_std > -5 else -20.0)
    before = temperature(model).item()
    loss = stochastic_action_loss(model, random_batch(cfg, B=16))
    loss.backward()
    torch.optim.SGD([model.log_temperature], lr=0.1).step()
    after = temperature(model).item()
    assert (after > before) if alpha_moves == "up" else (after < before)
    assert model.action_head.weight.grad.abs().sum() > 0  # one backward pass trains the policy too


# ----------------------------------------------------------------------------- Online DT
def test_buffer_keeps_best_offline_then_is_fifo():
    data = reach_dataset(episodes=8)
    best = sorted(e.total_return for e in data)[-3:]
    buffer = TrajectoryBuffer(3, list(data))
    assert sorted(e.total_return for e in buffer.episodes) == best
    new = [data.episode(0), data.episode(1)]
    buffer.add(new)
    assert len(buffer) == 3 and list(buffer.episodes)[-2:] == new


def stochastic_reach_policy() -> tuple[EpisodeDataset, Normalizer, PolicySpec, DecisionTransformer]:
    """An untrained Online DT (Gaussian head) for the Reach env, with the dataset it is normalised on."""
    torch.manual_seed(0)
    data = reach_dataset(episodes=4)
    cfg = ModelConfig(observation_dim=1, action_dim=1, context_length=4, n_layer=1, n_embd=16, stochastic_policy=True)
    normalizer = Normalizer.from_dataset(data)
    spec = PolicySpec(
        cfg, 10.0, normalizer.to_dict(), space_to_dict(data.observation_space), space_to_dict(data.action_space), REACH
    )
    return data, normalizer, spec, DecisionTransformer(cfg)


def test_policy_samples_the_gaussian_when_asked_and_rollouts_record_episodes():
    _, _, spec, model = stochastic_reach_policy()
    obs = np.zeros((16, 1), np.float32)

    def first_actions(policy: DecisionTransformerPolicy, seed: int | None) -> np.ndarray:
        if seed is not None:
            policy.sample_actions(seed)
        policy.reset(5.0, num_envs=16)
        return policy.act(obs)

    mean = first_actions(DecisionTransformerPolicy(model, spec), None)
    assert np.ptp(mean) == 0  # the same input gives the mean action everywhere
    sampled = first_actions(DecisionTransformerPolicy(model, spec), 3)
    assert np.ptp(sampled) > 0 and np.array_equal(sampled, first_actions(DecisionTransformerPolicy(model, spec), 3))
    # a Gaussian is sampled over the recomputed window: a KV-cache policy does the very same
    cached = DecisionTransformerPolicy(model, spec, kv_cache=True)
    np.testing.assert_array_equal(first_actions(cached, 3), sampled)
    deterministic = ModelConfig(observation_dim=1, action_dim=1, context_length=4, n_layer=1, n_embd=16)
    with pytest.raises(DtrlError, match="deterministic action head"):
        DecisionTransformerPolicy(
            DecisionTransformer(deterministic), PolicySpec(deterministic, *spec_fields(spec))
        ).sample_actions()

    # rollout's record hook: whole episodes, the returns rollout counts, cut at the first end
    policy = DecisionTransformerPolicy(model, spec)
    policy.sample_actions(1)
    policy.reset(5.0, num_envs=3)
    recorder = EpisodeRecorder()
    returns, lengths = rollout(REACH, [0, 1, 2], policy.act, max_episode_steps=6, record=recorder)
    episodes = recorder.episodes()
    assert [len(e) for e in episodes] == lengths.tolist() == [6, 6, 6]
    np.testing.assert_allclose([e.total_return for e in episodes], returns, rtol=1e-6)
    assert all(e.truncations[-1] and not e.truncations[:-1].any() for e in episodes)
    np.testing.assert_allclose(
        episodes[0].observations[:, 0], np.arange(6) / 10, rtol=1e-6
    )  # observed before each step


def spec_fields(spec: PolicySpec) -> tuple:
    return spec.reward_scale, spec.normalizer, spec.observation_space, spec.action_space, spec.env_id


def test_rollouts_are_relabelled_with_the_returns_they_achieved():
    data, normalizer, spec, model = stochastic_reach_policy()
    target = 500.0  # far above anything achievable: what the rollout was asked for, never what it got
    episodes = collect(model, spec, REACH, target, seeds=[7, 8], generator=torch.Generator().manual_seed(0))
    assert [len(e) for e in episodes] == [10, 10] and all(e.truncations[-1] for e in episodes)
    buffer = TrajectoryBuffer(10)
    buffer.add(episodes)
    sampler = SegmentSampler(buffer.dataset(data.observation_space, data.action_space), 4, 10.0, normalizer, seed=0)
    batch = sampler.sample(64)
    achieved = {i: np.cumsum(e.rewards[::-1])[::-1] / 10.0 for i, e in enumerate(episodes)}
    for b in range(64):
        real = batch.mask[b]
        steps = batch.timesteps[b][real].numpy()
        rtg = batch.returns_to_go[b][real].numpy()
        assert any(np.allclose(rtg, a[steps], atol=1e-5) for a in achieved.values())
        assert rtg.max() < 2.0 < target / 10.0


def test_finetune_refuses_deterministic_checkpoints_and_wrong_envs(pendulum_path: Path, tmp_path: Path):
    run = tmp_path / "dt"
    train(load_config(None, tiny_overrides(pendulum_path, run, steps=10)))
    proc = subprocess.run(
        [sys.executable, "-m", "dtrl", "finetune", str(run), "--steps", "10", "--out-dir", str(tmp_path / "ft")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "model.stochastic_policy=true" in proc.stderr
    stochastic = tmp_path / "odt"
    train(load_config(None, [*tiny_overrides(pendulum_path, stochastic, steps=10), "model.stochastic_policy=true"]))
    with pytest.raises(DtrlError, match="MountainCarContinuous-v0 gives observations of size 2"):
        finetune(
            stochastic,
            FinetuneConfig(env="MountainCarContinuous-v0", steps=10, out_dir=str(tmp_path / "x")),
            reach_dataset(2),
        )


def test_tiny_finetuning_run_improves_the_return(tmp_path: Path):
    torch.manual_seed(0)
    data_path = reach_dataset().save(tmp_path / "reach.npz")
    overrides = [
        f"dataset={data_path}",
        f"out_dir={tmp_path / 'pre'}",
        "steps=300",
        "batch_size=32",
        "model.n_layer=1",
        "model.n_embd=16",
        "model.context_length=4",
        "model.dropout=0.0",
        "model.stochastic_policy=true",
        "warmup_steps=10",
        "learning_rate=1e-3",
        "reward_scale=10",
        "eval_episodes=1",
        "num_threads=1",
        "checkpoint_every=300",
        "log_every=100",
    ]
    pre = train(load_config(None, overrides))
    config = FinetuneConfig(
        steps=400,
        eval_target=9.0,
        out_dir=str(tmp_path / "online"),
        rollouts_per_iteration=4,
        updates_per_iteration=30,
        batch_size=32,
        learning_rate=1e-3,
        buffer_size=100,
        eval_episodes=2,
        device="cpu",
    )
    result = finetune(pre.checkpoint, config, reach_dataset())
    assert result.env_steps == 400 and result.updates == 300
    offline, online = result.offline[0].mean, result.online[0].mean
    # offline data tops out near 3: asked for 9, the pre-trained policy falls short; fine-tuning closes much of the gap
    assert online > offline + 2.0, (offline, online)
    spec, _, _ = load_policy_files(tmp_path / "online")
    assert spec.model.stochastic_policy and (tmp_path / "online" / "finetune.json").is_file()


def test_eval_sample_actions_samples_a_stochastic_head_and_leaves_a_deterministic_one(
    pendulum_path: Path, tmp_path: Path
):
    def eval_returns(name: str, *extra: str) -> list[float]:
        train(load_config(None, [*tiny_overrides(pendulum_path, tmp_path / name, steps=10), *extra]))
        (result,) = json.loads((tmp_path / name / "eval.json").read_text())
        return result["returns"]

    odt = "model.stochastic_policy=true"
    assert eval_returns("mode", odt) != eval_returns("sampled", odt, "eval_sample_actions=true")
    assert eval_returns("dt", "eval_sample_actions=false") == eval_returns("dt-sampled", "eval_sample_actions=true")


def test_finetune_defaults_work_for_negative_returns(
    pendulum_path: Path, pendulum_dataset: EpisodeDataset, tmp_path: Path
):
    stochastic = tmp_path / "odt"
    train(load_config(None, [*tiny_overrides(pendulum_path, stochastic, steps=10), "model.stochastic_policy=true"]))
    config = FinetuneConfig(
        steps=200,
        out_dir=str(tmp_path / "online"),
        updates_per_iteration=2,
        batch_size=8,
        eval_episodes=1,
        device="cpu",
    )
    result = finetune(stochastic, config, pendulum_dataset)
    best = float(pendulum_dataset.episode_returns.max())
    assert best < 0 and result.offline[0].target_return == result.online[0].target_return == best
    record = yaml.safe_load((tmp_path / "online" / "finetune.yaml").read_text())
    assert record["eval_target"] == best and record["target_return"] == 0.0  # not 2 x a negative target
