"""The paper's Atari model (kzl/decision-transformer atari/mingpt/model_atari.py) as options of dtrl's DT.

``MinGPTAtari`` below is a reference written from that file's description: the Nature CNN
(ending in tanh), ``ret_emb = Linear(1, d) + tanh``, ``action_embeddings = Embedding + tanh``,
tokens ``(R, s, a)`` per step, ``global_pos_emb`` gathered at the segment's first timestep
plus ``pos_emb`` per token position, dropout, pre-LN blocks with separate key/query/value
projections and an exact-GELU MLP, a final LayerNorm and a bias-free head, logits read at the
state tokens. It leaves out two things the paper's model holds but never uses: ``tok_emb``
(vocab × d) and the last row of ``pos_emb`` (``block_size + 1`` rows for ``3K`` tokens).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_atari import frame_dataset
from torch import nn

from dtrl.config import ModelConfig, load_config
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.sampler import SegmentSampler
from dtrl.models import DecisionTransformer
from dtrl.policy import DecisionTransformerPolicy
from dtrl.train import train

ROOT = Path(__file__).resolve().parents[2]
MINGPT = dict(
    timestep_embedding="segment", position_embedding="learned", embedding_tanh=True, embedding_layernorm=False,
    action_head_bias=False, activation="gelu_exact", init="mingpt",
)  # fmt: skip


class RefAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.key, self.query, self.value, self.proj = (nn.Linear(d, d) for _ in range(4))
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        k, q, v = (
            f(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for f in (self.key, self.query, self.value)
        )
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.ln1, self.ln2, self.attn = nn.LayerNorm(d), nn.LayerNorm(d), RefAttention(d, n_head)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class MinGPTAtari(nn.Module):
    def __init__(self, vocab: int, K: int, n_layer: int, n_head: int, d: int, max_timestep: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, 3 * K, d))
        self.global_pos_emb = nn.Parameter(torch.zeros(1, max_timestep + 1, d))
        self.blocks = nn.Sequential(*(RefBlock(d, n_head) for _ in range(n_layer)))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.state_encoder = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, d), nn.Tanh(),
        )  # fmt: skip
        self.ret_emb = nn.Sequential(nn.Linear(1, d), nn.Tanh())
        self.action_embeddings = nn.Sequential(nn.Embedding(vocab, d), nn.Tanh())
        self.d = d

    def forward(self, states, actions, rtgs, timesteps):  # (B,T,4·84·84) in [0,1], (B,T) long, (B,T,1), (B,1,1)
        B, T = actions.shape
        s = self.state_encoder(states.reshape(-1, 4, 84, 84)).reshape(B, T, self.d)
        tokens = torch.zeros(B, 3 * T, self.d)
        tokens[:, ::3], tokens[:, 1::3], tokens[:, 2::3] = self.ret_emb(rtgs), s, self.action_embeddings(actions)
        glob = torch.gather(self.global_pos_emb.repeat(B, 1, 1), 1, timesteps.repeat_interleave(self.d, dim=-1))
        x = tokens + glob + self.pos_emb[:, : 3 * T]
        return self.head(self.ln_f(self.blocks(x)))[:, 1::3]


def dtrl_mingpt(K: int, n_layer: int, n_head: int, d: int, vocab: int, max_len: int) -> DecisionTransformer:
    cfg = ModelConfig(
        observation_dim=4 * 84 * 84, observation_shape=[4, 84, 84], action_dim=vocab, discrete=True, action_tanh=False,
        context_length=K, max_episode_length=max_len, n_layer=n_layer, n_head=n_head, n_embd=d, dropout=0.0, **MINGPT,
    )  # fmt: skip
    return DecisionTransformer(cfg)


def load_reference(model: DecisionTransformer, ref: MinGPTAtari) -> None:
    """Copy the reference's weights into dtrl's model (fused q, k, v in that order)."""
    w = {"embed_timestep.weight": ref.global_pos_emb[0], "embed_position.weight": ref.pos_emb[0],
         "embed_return.weight": ref.ret_emb[0].weight, "embed_return.bias": ref.ret_emb[0].bias,
         "embed_action.weight": ref.action_embeddings[0].weight, "action_head.weight": ref.head.weight,
         "transformer.ln_f.weight": ref.ln_f.weight, "transformer.ln_f.bias": ref.ln_f.bias}  # fmt: skip
    for i, j in ((0, 0), (2, 2), (4, 4)):
        w[f"embed_state.convs.{i}.weight"], w[f"embed_state.convs.{i}.bias"] = (
            ref.state_encoder[j].weight,
            ref.state_encoder[j].bias,
        )
    w["embed_state.linear.weight"], w["embed_state.linear.bias"] = (
        ref.state_encoder[7].weight,
        ref.state_encoder[7].bias,
    )
    for i, b in enumerate(ref.blocks):
        p = f"transformer.blocks.{i}."
        w[p + "attn.qkv.weight"] = torch.cat([b.attn.query.weight, b.attn.key.weight, b.attn.value.weight])
        w[p + "attn.qkv.bias"] = torch.cat([b.attn.query.bias, b.attn.key.bias, b.attn.value.bias])
        for name, module in (
            ("ln_1", b.ln1),
            ("ln_2", b.ln2),
            ("attn.proj", b.attn.proj),
            ("mlp.fc", b.mlp[0]),
            ("mlp.proj", b.mlp[2]),
        ):
            w[p + name + ".weight"], w[p + name + ".bias"] = module.weight, module.bias
    model.load_state_dict({k: v.detach().clone() for k, v in w.items()}, strict=True)


def test_parameter_count_is_the_papers_model_without_its_unused_tables():
    # the paper's Breakout run: 6 layers, 8 heads, width 128, K = 30, 4 actions; timesteps up to 999
    ours = dtrl_mingpt(K=30, n_layer=6, n_head=8, d=128, vocab=4, max_len=1000).num_parameters()
    reference = sum(p.numel() for p in MinGPTAtari(4, 30, 6, 8, 128, 999).parameters())
    assert ours == reference == 1_810_208
    papers_gpt = reference + 4 * 128 + 128  # + tok_emb (vocab × d) + pos_emb's unused row (block_size + 1)
    assert papers_gpt == 1_810_848


def test_output_on_a_fixed_input_equals_the_reference():
    torch.manual_seed(0)
    ref = MinGPTAtari(vocab=5, K=3, n_layer=2, n_head=4, d=32, max_timestep=49).eval()
    with torch.no_grad():  # minGPT starts both position tables at zero: make them matter here
        ref.pos_emb.normal_(0, 0.5)
        ref.global_pos_emb.normal_(0, 0.5)
    model = dtrl_mingpt(K=3, n_layer=2, n_head=4, d=32, vocab=5, max_len=50).eval()
    load_reference(model, ref)
    g = torch.Generator().manual_seed(1)
    states = torch.randint(0, 256, (2, 3, 4 * 84 * 84), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 5, (2, 3), generator=g)
    rtg = torch.tensor([[3.0, 2.0, 2.0], [-1.0, 0.5, 7.0]])
    start = torch.tensor([0, 17])
    timesteps = start[:, None] + torch.arange(3)
    with torch.no_grad():
        expected = ref(states.float() / 255.0, actions, rtg[..., None], start[:, None, None])
        got = model(rtg, states, actions, timesteps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # a left-padded window (an exported policy's input) gives what the unpadded one gives

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :2]], 1)

    mask = torch.tensor([[False, True, True]] * 2)
    padded = model(pad(rtg), pad(states), pad(actions), pad(timesteps), mask)
    torch.testing.assert_close(padded[:, 1:], model(rtg[:, :2], states[:, :2], actions[:, :2], timesteps[:, :2]))
    assert not model.supports_kv_cache  # the window's embeddings change as it slides: recompute, the paper's way


def test_initialisation_is_mingpts():
    torch.manual_seed(0)
    model = dtrl_mingpt(K=30, n_layer=6, n_head=8, d=128, vocab=4, max_len=1000)
    assert not model.embed_position.weight.any() and not model.embed_timestep.weight.any()  # zeros, as minGPT
    for block in model.transformer.blocks:  # N(0, 0.02) everywhere, no GPT-2 residual scaling
        assert block.attn.proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    conv = model.embed_state.convs[0].weight  # built after minGPT's init: nn.Conv2d's default U(±1/sqrt(fan_in))
    assert conv.abs().max() <= 1 / math.sqrt(4 * 8 * 8) and conv.std() > 0.03
    assert model.embed_return.weight.std() > 0.3  # nn.Linear(1, d)'s default U(±1)
    gpt2 = DecisionTransformer(dataclasses.replace(model.config, init="gpt2"))
    assert gpt2.transformer.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(12), rel=0.05)


def vector_dataset(lengths: list[int]) -> EpisodeDataset:
    """Observation = the transition's global index."""
    n = sum(lengths)
    ends = np.cumsum(lengths) - 1
    terminations = np.zeros(n, bool)
    terminations[ends] = True
    return EpisodeDataset.from_arrays(
        observations=np.arange(n, dtype=np.float32)[:, None], actions=np.zeros((n, 1), np.float32),
        rewards=np.ones(n, np.float32), terminations=terminations, truncations=np.zeros(n, bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (1,), np.float32),
    )  # fmt: skip


def test_in_episode_segments_end_where_their_episode_ends():
    lengths, K = [5, 12, 3, 9], 4
    data = vector_dataset(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    normalizer = Normalizer(
        np.zeros(1, np.float32), np.ones(1, np.float32), np.full(1, -1, np.float32), np.ones(1, np.float32)
    )
    batch = SegmentSampler(data, K, 1.0, normalizer, seed=3, in_episode=True).sample(400)
    drawn = torch.randint(0, len(data), (400,), generator=torch.Generator().manual_seed(3)).numpy()
    for row, draw in enumerate(drawn):  # the paper's rule: a segment that would cross its episode's end ends there
        episode = np.searchsorted(starts, draw, side="right") - 1
        first = max(min(draw, starts[episode + 1] - K), starts[episode])
        real = batch.states[row][batch.mask[row]][:, 0].numpy()
        np.testing.assert_array_equal(real, np.arange(first, min(first + K, starts[episode + 1])))
        assert batch.mask[row].all() == (lengths[episode] >= K)  # only the 3-step episode pads
    padded = SegmentSampler(data, K, 1.0, normalizer, seed=3).sample(400)  # the gym code: cut and left-padded
    long_episode = np.isin(np.searchsorted(starts, drawn, side="right") - 1, [0, 1, 3])
    assert (~padded.mask.all(1)).numpy()[long_episode].any()


def test_the_atari_configs_train_the_mingpt_model(tmp_path: Path):
    config = load_config(ROOT / "configs" / "atari_breakout.yaml")
    for key, value in MINGPT.items():
        assert getattr(config.model, key) == value, key
    assert config.in_episode_segments and config.weight_decay_matrices_only
    data = frame_dataset([40, 35], side=36).save(tmp_path / "frames.npz")
    overrides = [f"dataset={data}", "env=''", f"out_dir={tmp_path / 'run'}", "steps=3", "batch_size=4",
                 "model.n_layer=1", "model.context_length=5", "checkpoint_every=3", "log_every=1", "warmup_steps=1"]  # fmt: skip
    result = train(load_config(ROOT / "configs" / "atari_breakout.yaml", overrides))
    assert len(result.losses) == 3 and all(math.isfinite(loss) for _, loss in result.losses)
    model = DecisionTransformerPolicy.load(result.checkpoint, device="cpu").model
    assert model.embed_ln is None and model.action_head.bias is None and model.embed_position.num_embeddings == 15
    assert model.transformer.blocks[0].mlp.act.approximate == "none"  # exact GELU, minGPT's F.gelu
