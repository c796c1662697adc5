"""The policy API: return conditioning, the sliding window, batching, env checks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from dtrl.checkpoint import PolicySpec
from dtrl.config import ModelConfig
from dtrl.data.normalizer import Normalizer
from dtrl.data.spaces import space_to_dict
from dtrl.errors import DtrlError
from dtrl.evaluate import evaluate, evaluate_random
from dtrl.models import DecisionTransformer
from dtrl.policy import DecisionTransformerPolicy


def _policy(cfg: ModelConfig, seed: int = 0) -> DecisionTransformerPolicy:
    torch.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    norm = Normalizer(
        np.array([0.1, -0.2, 0.3], np.float32),
        np.array([0.5, 2.0, 4.0], np.float32),
        np.array([-2.0], np.float32),
        np.array([2.0], np.float32),
    )
    spec = PolicySpec(
        cfg, 100.0, norm.to_dict(), space_to_dict(env.observation_space), space_to_dict(env.action_space), "Pendulum-v1"
    )
    return DecisionTransformerPolicy(DecisionTransformer(cfg), spec, "cpu")


def test_act_matches_a_full_recompute_past_the_context(tiny_model_config: ModelConfig):
    """Each action equals the model run on the last K steps of the full history, rtg decremented."""
    policy = _policy(tiny_model_config)
    K, target, scale = tiny_model_config.context_length, -300.0, 100.0
    rng = np.random.default_rng(0)
    policy.reset(target_return=target)
    hist = {"r": [], "s": [], "a": []}
    rtg, reward = target, 0.0
    for t in range(3 * K):
        obs = rng.normal(size=3).astype(np.float32)
        action = policy.act(obs, reward)
        rtg -= reward if t else 0.0
        hist["r"].append(rtg / scale)
        hist["s"].append(policy.normalizer.states(obs[None])[0])
        lo = max(0, t + 1 - K)
        a_in = hist["a"][lo:t] + [np.zeros(1, np.float32)]
        with torch.no_grad():
            pred = policy.model(
                torch.tensor([hist["r"][lo:]], dtype=torch.float32),
                torch.tensor(np.array([hist["s"][lo:]])),
                torch.tensor(np.array([a_in])),
                torch.arange(lo, t + 1)[None],
            )[0, -1]
        hist["a"].append(pred.numpy())
        np.testing.assert_allclose(action, np.clip(pred.numpy() * 2.0, -2, 2), rtol=1e-5, atol=1e-6)
        reward = float(rng.normal())


def test_batched_rows_equal_single_policies(tiny_model_config: ModelConfig):
    batched, single = _policy(tiny_model_config), _policy(tiny_model_config)
    targets = [-100.0, -900.0]
    batched.reset(targets, num_envs=2)
    obs = np.random.default_rng(1).normal(size=(12, 2, 3)).astype(np.float32)
    out = np.array([batched.act(obs[t], np.array([1.0, -2.0]) * (t > 0)) for t in range(12)])
    for i, target in enumerate(targets):
        single.reset(target)
        ref = np.array([single.act(obs[t, i], [1.0, -2.0][i] * (t > 0)) for t in range(12)])
        np.testing.assert_allclose(out[:, i], ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[:, 0], out[:, 1]), "different targets should condition differently"


def test_errors(tiny_model_config: ModelConfig):
    policy = _policy(tiny_model_config)
    with pytest.raises(DtrlError, match="reset"):
        policy.act(np.zeros(3))
    with pytest.raises(DtrlError, match="observations of size 4 but the policy expects 3"):
        evaluate(policy, "CartPole-v1", [1.0], episodes=1)
    with pytest.raises(DtrlError, match="unknown environment id 'Hopper-v99'"):
        evaluate(policy, "Hopper-v99", [1.0], episodes=1)


def test_evaluate_runs_episodes_in_parallel_with_paired_seeds(tiny_model_config: ModelConfig):
    policy = _policy(tiny_model_config)
    results = evaluate(policy, "Pendulum-v1", [-200.0, -200.0], episodes=3, seed=5)
    assert [len(r.returns) for r in results] == [3, 3]
    np.testing.assert_allclose(results[0].returns, results[1].returns, rtol=1e-4)  # same targets, same seeds
    assert (results[0].lengths == 200).all()
    rnd = evaluate_random("Pendulum-v1", episodes=3, seed=5)
    assert rnd.target_return is None and rnd.returns.shape == (3,) and rnd.mean < 0


def test_action_space_mismatch_is_rejected():
    from dtrl.envs import check_fits

    obs = gym.spaces.Box(-1, 1, (3,))
    spec_obs = space_to_dict(obs)
    with pytest.raises(DtrlError, match="continuous actions of shape \\(1,\\)"):
        check_fits(
            obs, gym.spaces.Box(-1, 1, (2,)), spec_obs, space_to_dict(gym.spaces.Box(-1, 1, (1,))), "X-v0", "Y-v0"
        )
    with pytest.raises(DtrlError, match="outputs 4 discrete actions"):
        check_fits(obs, gym.spaces.Discrete(2), spec_obs, space_to_dict(gym.spaces.Discrete(4)), "X-v0", None)
