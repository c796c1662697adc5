"""The Decision Transformer: causality, padding, shapes."""

from __future__ import annotations

import torch

from dtrl.config import ModelConfig
from dtrl.models import DecisionTransformer


def _inputs(cfg: ModelConfig, B: int = 3, T: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rtg = torch.randn(B, T, generator=g)
    states = torch.randn(B, T, cfg.observation_dim, generator=g)
    if cfg.discrete:
        actions = torch.randint(0, cfg.action_dim, (B, T), generator=g)
    else:
        actions = torch.rand(B, T, cfg.action_dim, generator=g) * 2 - 1
    timesteps = torch.arange(T).repeat(B, 1) + torch.randint(0, 50, (B, 1), generator=g)
    return rtg, states, actions, timesteps


def test_paper_defaults():
    cfg = ModelConfig()
    assert (cfg.context_length, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.dropout) == (20, 128, 3, 1, 0.1)
    assert cfg.activation == "relu" and cfg.max_episode_length == 1000


def test_causality_every_token(tiny_model_config: ModelConfig):
    """Changing any token of step > t (or a_t itself) never changes the prediction at steps <= t."""
    model = DecisionTransformer(tiny_model_config).eval()
    rtg, states, actions, timesteps = _inputs(tiny_model_config)
    base = model(rtg, states, actions, timesteps)
    T = rtg.shape[1]
    for t in range(T):
        for which in ("rtg", "state", "action"):
            r, s, a = rtg.clone(), states.clone(), actions.clone()
            # the action of step t and everything of later steps lies after token s_t
            if which == "rtg" and t + 1 < T:
                r[:, t + 1 :] += 5.0
            elif which == "state" and t + 1 < T:
                s[:, t + 1 :] += 5.0
            elif which == "action":
                a[:, t:] = -a[:, t:]
            out = model(r, s, a, timesteps)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
    # and the prediction does depend on earlier tokens (the test can fail)
    s = states.clone()
    s[:, 0] += 5.0
    assert not torch.allclose(model(rtg, s, actions, timesteps)[:, -1], base[:, -1])


def test_left_padding_matches_unpadded(tiny_model_config: ModelConfig):
    """A left-padded segment predicts exactly what the same steps predict without padding."""
    model = DecisionTransformer(tiny_model_config).eval()
    rtg, states, actions, timesteps = _inputs(tiny_model_config, B=1, T=3)
    short = model(rtg, states, actions, timesteps)
    pad = 2
    junk = torch.randn(1, pad)
    padded = model(
        torch.cat([junk, rtg], 1),
        torch.cat([torch.randn(1, pad, 3) * 100, states], 1),
        torch.cat([torch.randn(1, pad, 1), actions], 1),
        torch.cat([torch.zeros(1, pad, dtype=torch.long), timesteps], 1),
        mask=torch.tensor([[False] * pad + [True] * 3]),
    )
    torch.testing.assert_close(padded[:, pad:], short, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(padded).all()


def test_continuous_head_is_bounded_and_discrete_gives_logits(tiny_model_config: ModelConfig):
    model = DecisionTransformer(tiny_model_config).eval()
    out = model(*_inputs(tiny_model_config))
    assert out.shape == (3, 5, 1) and out.abs().max() <= 1.0
    cfg = ModelConfig(observation_dim=4, action_dim=6, discrete=True, context_length=5, n_layer=1, n_embd=16)
    logits = DecisionTransformer(cfg)(*_inputs(cfg))
    assert logits.shape == (3, 5, 6)
    assert logits.abs().max() > 0


def test_behaviour_cloning_variant_ignores_returns(tiny_model_config: ModelConfig):
    from dataclasses import replace

    cfg = replace(tiny_model_config, condition_on_return=False)
    model = DecisionTransformer(cfg).eval()
    assert model.embed_return is None
    rtg, states, actions, timesteps = _inputs(cfg)
    base = model(rtg, states, actions, timesteps)
    torch.testing.assert_close(model(rtg * 10 + 3, states, actions, timesteps), base)
    a = actions.clone()
    a[:, 2:] = -a[:, 2:]
    torch.testing.assert_close(model(rtg, states, a, timesteps)[:, :3], base[:, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(model(rtg, states, a, timesteps)[:, 3:], base[:, 3:])


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_model_config: ModelConfig):
    """Recomputation replays dropout's RNG, so only memory changes, not the numbers."""
    grads, saved = [], []
    for recompute in (False, True):
        cfg = ModelConfig(**{**tiny_model_config.__dict__, "dropout": 0.2, "activation_checkpointing": recompute})
        torch.manual_seed(0)
        model = DecisionTransformer(cfg).train()
        torch.manual_seed(1)
        rtg, states, actions, timesteps = _inputs(cfg)
        kept: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, kept=kept: kept.append(t.numel()) or t, lambda t: t):
            out = model(rtg, states, actions, timesteps)
        out.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        saved.append(sum(kept))
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    assert saved[1] < 0.7 * saved[0], f"checkpointing kept {saved[1]} of {saved[0]} saved activations"
