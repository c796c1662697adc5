"""The fast paths give the plain paths' numbers: KV-cached decoding and the tuned training step."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import pendulum_spec
from dtrl.checkpoint import PolicySpec
from dtrl.config import ModelConfig, TrainConfig
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler
from dtrl.data.spaces import space_to_dict
from dtrl.models import DecisionTransformer
from dtrl.policy import DecisionTransformerPolicy
from dtrl.train.step import CompiledForward, build_optimizer, train_step

STEPS = 17  # past the context length (5) more than three times over


def _rollout(policy: DecisionTransformerPolicy, obs: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Actions for a fixed stream of observations (T, B, 3) and rewards (T, B)."""
    policy.reset(np.array([-300.0, -50.0]), num_envs=obs.shape[1])
    return np.stack([policy.act(obs[t], rewards[t - 1] if t else 0.0) for t in range(len(obs))])


def _pair(cfg: ModelConfig) -> tuple[DecisionTransformerPolicy, DecisionTransformerPolicy]:
    torch.manual_seed(0)
    model = DecisionTransformer(cfg)
    spec = pendulum_spec(cfg)
    return DecisionTransformerPolicy(model, spec, kv_cache=True), DecisionTransformerPolicy(model, spec)


def _stream(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(STEPS, 2, 3)).astype(np.float32), rng.normal(size=(STEPS, 2))


def sliding_window_mask(steps: int, n: int, K: int) -> torch.Tensor:
    """Full-recompute mask of what the cache computes: each token attends, causally, to the K steps'
    tokens that were in the window when it entered (an action token enters one step after its own)."""
    q = torch.arange(n * steps)
    entered = q // n + (q % n == n - 1).long()
    start = n * (entered - K + 1)
    return ((q[None, :] <= q[:, None]) & (q[None, :] >= start[:, None]))[None, None]


@pytest.mark.parametrize("condition_on_return", [True, False])
def test_kv_cache_equals_a_full_recompute_over_a_whole_episode(tiny_model_config: ModelConfig, condition_on_return):
    """Every action of a 17-step episode (K=5) equals one forward pass over the whole history with
    the sliding-window mask; the cache evicts, batches and embeds timesteps exactly."""
    cfg = dataclasses.replace(tiny_model_config, condition_on_return=condition_on_return)
    cached, _ = _pair(cfg)
    obs, rewards = _stream()
    actions = _rollout(cached, obs, rewards)

    model, n, K = cached.model, 3 if condition_on_return else 2, cfg.context_length
    rtg = (np.array([-300.0, -50.0]) - np.concatenate([np.zeros((1, 2)), np.cumsum(rewards[:-1], 0)])) / 100.0
    states = torch.tensor(cached.normalizer.states(obs.reshape(-1, 3)).reshape(STEPS, 2, 3)).transpose(0, 1)
    model_actions = torch.tensor(actions / 2.0, dtype=torch.float32).transpose(0, 1)  # back to [-1, 1]
    time = model.embed_timestep(torch.arange(STEPS))[None]
    with torch.no_grad():
        per_step = [model.embed_state(states) + time, model.embed_action(model_actions) + time]
        if condition_on_return:
            returns = torch.tensor(rtg.T, dtype=torch.float32)
            per_step.insert(0, model.embed_return(returns.unsqueeze(-1)) + time)
        x = model.embed_ln(torch.stack(per_step, dim=2).reshape(2, n * STEPS, -1))
        h = model.transformer(x, sliding_window_mask(STEPS, n, K))
        reference = torch.tanh(model.action_head(h[:, n - 2 :: n])).transpose(0, 1).numpy() * 2.0
    np.testing.assert_allclose(actions, reference, rtol=1e-4, atol=1e-5)


def test_kv_cache_equals_the_window_policy_before_the_window_fills(tiny_model_config: ModelConfig):
    cached, window = _pair(tiny_model_config)
    obs, rewards = _stream(1)
    K = tiny_model_config.context_length
    a, b = _rollout(cached, obs, rewards), _rollout(window, obs, rewards)
    np.testing.assert_allclose(a[:K], b[:K], rtol=1e-4, atol=1e-5)


def test_one_layer_kv_cache_equals_the_window_policy_over_a_whole_episode(tiny_model_config: ModelConfig):
    """With one layer, keys and values depend on their own token only: the cache is the paper's policy."""
    cached, window = _pair(dataclasses.replace(tiny_model_config, n_layer=1))
    obs, rewards = _stream(2)
    np.testing.assert_allclose(_rollout(cached, obs, rewards), _rollout(window, obs, rewards), rtol=1e-4, atol=1e-5)


def test_context_length_one_kv_cache_equals_the_window_policy(tiny_model_config: ModelConfig):
    """K = 1: each action sees only its own step's tokens; the cache never feeds the previous action."""
    cached, window = _pair(dataclasses.replace(tiny_model_config, context_length=1))
    obs, rewards = _stream(3)
    np.testing.assert_allclose(_rollout(cached, obs, rewards), _rollout(window, obs, rewards), rtol=1e-4, atol=1e-5)


def test_discrete_actions_decode_the_same_with_the_cache(tiny_model_config: ModelConfig):
    cfg = dataclasses.replace(tiny_model_config, n_layer=1, observation_dim=4, action_dim=2, discrete=True)
    env = gym.make("CartPole-v1")
    spec = PolicySpec(
        cfg,
        1.0,
        Normalizer(np.zeros(4, np.float32), np.ones(4, np.float32)).to_dict(),
        space_to_dict(env.observation_space),
        space_to_dict(env.action_space),
        "CartPole-v1",
    )
    torch.manual_seed(0)
    model = DecisionTransformer(cfg)
    rng = np.random.default_rng(4)
    obs, rewards = rng.normal(size=(STEPS, 2, 4)).astype(np.float32), np.ones((STEPS, 2))
    cached = _rollout(DecisionTransformerPolicy(model, spec, kv_cache=True), obs, rewards)
    np.testing.assert_array_equal(cached, _rollout(DecisionTransformerPolicy(model, spec), obs, rewards))


def test_models_without_a_cache_fall_back_to_full_recompute(tiny_model_config: ModelConfig):
    cached, window = _pair(dataclasses.replace(tiny_model_config, token_mixer="conv"))
    assert not cached.kv_cache
    obs, rewards = _stream(3)
    np.testing.assert_array_equal(_rollout(cached, obs, rewards), _rollout(window, obs, rewards))


# ---------------------------------------------------------------------------------------- training
def _train_steps(
    dataset, cfg: ModelConfig, steps: int = 25, fused: bool = False, **config
) -> tuple[list[float], DecisionTransformer]:
    """``steps`` gradient steps of the paper's recipe; ``fused=False`` is the original optimizer loop."""
    train_cfg = TrainConfig(batch_size=16, learning_rate=1e-3, warmup_steps=5, **config)
    torch.manual_seed(0)
    model = DecisionTransformer(dataclasses.replace(cfg, dropout=0.1))
    model.train()
    optimizer, scheduler = build_optimizer(model, train_cfg, fused=fused)
    sampler = SegmentSampler(dataset, cfg.context_length, 100.0, seed=0)
    forward = CompiledForward(model, torch.device("cpu")) if train_cfg.compile else model
    losses = []
    for _ in range(steps):
        losses.append(
            train_step(model, optimizer, scheduler, sampler.sample(train_cfg.batch_size), train_cfg, forward)[0]
        )
    return losses, model


def test_fused_optimizer_trains_like_the_plain_path(pendulum_dataset, tiny_model_config: ModelConfig):
    assert build_optimizer(DecisionTransformer(tiny_model_config), TrainConfig())[0].defaults["fused"]
    plain_losses, plain = _train_steps(pendulum_dataset, tiny_model_config)
    fast_losses, fast = _train_steps(pendulum_dataset, tiny_model_config, fused=True)
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-5)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_stays_close_to_fp32(pendulum_dataset, tiny_model_config: ModelConfig):
    fp32, _ = _train_steps(pendulum_dataset, tiny_model_config, steps=10)
    bf16, _ = _train_steps(pendulum_dataset, tiny_model_config, steps=10, precision="bf16")
    assert fp32 != bf16, "autocast should change the arithmetic"
    np.testing.assert_allclose(bf16, fp32, rtol=0.05)


def test_failed_compilation_falls_back_to_eager(pendulum_dataset, tiny_model_config: ModelConfig, monkeypatch, caplog):
    def broken_compile(module, **_):
        def fail(*args):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, _ = _train_steps(pendulum_dataset, tiny_model_config, steps=5)
    fallback, _ = _train_steps(pendulum_dataset, tiny_model_config, steps=5, compile=True)
    assert fallback == eager
    assert "torch.compile failed (no compiler here)" in caplog.text
