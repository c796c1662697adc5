"""The fast KV-cached decoder (dtrl.models.fast_decode) computes what the module-by-module cache computes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import pendulum_spec
from dtrl.config import ModelConfig
from dtrl.models import DecisionTransformer
from dtrl.models.decoding import DecodingCache, FastDecodingCache, new_cache
from dtrl.policy import DecisionTransformerPolicy

STEPS = 17  # past the context length (5) more than three times over


def _model(cfg: ModelConfig, seed: int = 0, scale: float = 10.0) -> DecisionTransformer:
    torch.manual_seed(seed)
    model = DecisionTransformer(cfg).eval()
    with torch.no_grad():  # larger weights than GPT-2's initial ones: sharp attention, so a wrong mask shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:  # initialised at 0 and 1
                p.add_(0.2 * torch.randn_like(p))
            else:
                p.mul_(scale)
    return model


def _episode(model: DecisionTransformer, cache, steps: int = STEPS, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Drive ``cache.step`` like the policy does: returns-to-go fall by the rewards, actions feed back."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    rtg = torch.tensor(rng.normal(size=batch) * 3, dtype=torch.float32)
    previous, out = None, []
    with torch.inference_mode():
        for t in range(steps):
            states = torch.tensor(rng.normal(size=(batch, cfg.observation_dim)), dtype=torch.float32)
            pred = cache.step(rtg, states, torch.full((batch,), t, dtype=torch.long), previous)
            previous = pred.argmax(-1) if cfg.discrete else pred.float()
            out.append(pred.clone().numpy())
            rtg = rtg - torch.tensor(rng.normal(size=batch), dtype=torch.float32) / 10
    return np.stack(out)


CASES = {
    "paper-like": {},
    "no-returns": {"condition_on_return": False},
    "one-head": {"n_head": 1},
    "one-layer": {"n_layer": 1},
    "gelu": {"activation": "gelu"},
    "gelu_exact-eps": {"activation": "gelu_exact", "layer_norm_epsilon": 1e-3},  # transformers' gelu and epsilon
    "short-time-table": {"max_episode_length": 8},  # timesteps past the table reuse its last row
    "untanhed": {"action_tanh": False},
    "context-2": {"context_length": 2},
}


@pytest.mark.parametrize("use_numpy", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("case", CASES)
def test_fast_cache_equals_the_module_cache_over_a_whole_episode(tiny_model_config: ModelConfig, case, use_numpy):
    cfg = dataclasses.replace(tiny_model_config, **{"n_layer": 3, "action_dim": 2, **CASES[case]})
    model = _model(cfg)
    reference = _episode(model, new_cache(model, 2, fast=False))
    fast = FastDecodingCache(model, 2, torch.device("cpu"), use_numpy=use_numpy)
    assert (fast._numpy is not None) == use_numpy
    np.testing.assert_allclose(_episode(model, fast), reference, rtol=0, atol=1e-5)


def test_discrete_actions_decode_alike(tiny_model_config: ModelConfig):
    cfg = dataclasses.replace(tiny_model_config, n_layer=3, action_dim=4, discrete=True)
    model = _model(cfg)
    fast = new_cache(model, 2)
    assert isinstance(fast, FastDecodingCache) and fast._numpy is None  # an embedding table: the torch path
    np.testing.assert_allclose(_episode(model, fast), _episode(model, new_cache(model, 2, fast=False)), atol=1e-5)


def test_paper_gym_configuration_single_episode():
    """The benchmark's shape (3 layers, 128 wide, K=20, Hopper's 11/3): one env, three windows long."""
    cfg = ModelConfig(observation_dim=11, action_dim=3, context_length=20)
    model = _model(cfg, scale=3.0)  # wide: larger weights would grow the rounding past 1e-5
    a = _episode(model, new_cache(model, 1), steps=65, batch=1)
    np.testing.assert_allclose(a, _episode(model, new_cache(model, 1, fast=False), steps=65, batch=1), atol=1e-5)


def test_which_cache_a_model_gets(tiny_model_config: ModelConfig):
    model = _model(tiny_model_config)
    assert isinstance(new_cache(model, 1), FastDecodingCache)
    assert isinstance(new_cache(model, 1, fast=False), DecodingCache)
    model.train()  # dropout would act in the module path: the fast one is for evaluation only
    assert isinstance(new_cache(model, 1), DecodingCache)


@pytest.mark.parametrize("batched", [True, False])
def test_fast_policy_acts_like_the_module_cache_policy(tiny_model_config: ModelConfig, monkeypatch, batched):
    """``DecisionTransformerPolicy(kv_cache=True)`` uses the fast cache; its actions over a whole episode
    equal those of the same policy on the module-by-module cache."""
    cfg = dataclasses.replace(tiny_model_config, n_layer=3)
    policy = DecisionTransformerPolicy(_model(cfg), pendulum_spec(cfg), kv_cache=True)
    rng = np.random.default_rng(5)
    n = 2 if batched else 1
    obs, rewards = rng.normal(size=(STEPS, n, 3)).astype(np.float32), rng.normal(size=(STEPS, n))

    def rollout() -> np.ndarray:
        policy.reset(np.array([-300.0, -50.0]) if batched else -300.0, num_envs=n if batched else None)
        acts = []
        for t in range(STEPS):
            reward = (rewards[t - 1] if batched else rewards[t - 1, 0]) if t else 0.0
            acts.append(policy.act(obs[t] if batched else obs[t, 0], reward))
        return np.stack(acts)

    fast = rollout()
    assert isinstance(policy._cache, FastDecodingCache)
    monkeypatch.setattr("dtrl.policy.new_cache", lambda *a, **k: new_cache(*a, **k, fast=False))
    reference = rollout()
    assert isinstance(policy._cache, DecodingCache)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-5)
