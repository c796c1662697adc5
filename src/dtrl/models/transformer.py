"""A causal GPT-style transformer on ``scaled_dot_product_attention``.

Pre-LayerNorm blocks as in GPT-2, with no positional embedding of its own: the
Decision Transformer adds a learned *timestep* embedding to each token instead
(the paper's code deletes GPT-2's position table for the same reason).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dtrl.models.mixers import CausalConvMixer


class KVCache:
    """One attention layer's keys and values for the most recent tokens, in a ring of ``capacity`` slots.

    Attention ignores the order of its keys (the Decision Transformer adds
    timestep embeddings to its tokens and attention has no positions of its
    own), so new tokens simply overwrite the oldest slots; the caller's mask
    says which slots a query may see. All rows of the batch advance together.
    """

    def __init__(
        self, batch: int, n_head: int, head_dim: int, capacity: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.keys = torch.zeros(batch, n_head, capacity, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.slots: torch.Tensor | None = None  # where the next write goes, set per step by the owner

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values (B, H, T, D); return the whole cache to attend over."""
        self.keys.index_copy_(2, self.slots, k.to(self.keys.dtype))
        self.values.index_copy_(2, self.slots, v.to(self.values.dtype))
        return self.keys, self.values


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        """``attn_mask``: bool (B, 1, T, T), True where a query may attend; None means plain causal.

        With a ``cache``, ``x`` holds only the new tokens: their keys and values are
        written into the cache first and ``attn_mask`` (1, 1, T, capacity) says
        which cache slots each new token may attend to.
        """
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.write(k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, n_embd: int, ratio: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, ratio * n_embd)
        self.act = (
            nn.ReLU() if activation == "relu" else nn.GELU(approximate="none" if activation == "gelu_exact" else "tanh")
        )
        self.proj = nn.Linear(ratio * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm block; the token mixer is causal self-attention (``token_mixer="attention"``) or a causal
    convolution (``"conv"``, :class:`~dtrl.models.mixers.CausalConvMixer`)."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        mlp_ratio: int,
        activation: str,
        dropout: float,
        token_mixer: str = "attention",
        conv_kernel_size: int = 6,
        tokens_per_step: int = 3,
        layer_norm_epsilon: float = 1e-5,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
        self.uses_attention = token_mixer == "attention"
        if self.uses_attention:
            self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        else:
            self.conv = CausalConvMixer(n_embd, conv_kernel_size, tokens_per_step, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
        self.mlp = MLP(n_embd, mlp_ratio, activation, dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + (self.attn(h, attn_mask, cache) if self.uses_attention else self.conv(h, attn_mask))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of causal blocks followed by a final LayerNorm."""

    def __init__(
        self,
        n_layer: int,
        n_embd: int,
        n_head: int,
        mlp_ratio: int,
        activation: str,
        dropout: float,
        activation_checkpointing: bool = False,
        token_mixer: str = "attention",
        conv_kernel_size: int = 6,
        tokens_per_step: int = 3,
        layer_norm_epsilon: float = 1e-5,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(
                n_embd,
                n_head,
                mlp_ratio,
                activation,
                dropout,
                token_mixer,
                conv_kernel_size,
                tokens_per_step,
                layer_norm_epsilon,
            )
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
        self.activation_checkpointing = activation_checkpointing

    @property
    def supports_kv_cache(self) -> bool:
        """Incremental decoding needs attention in every block (a convolution mixer has no key/value cache)."""
        return all(block.uses_attention for block in self.blocks)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache: list[KVCache] | None = None
    ) -> torch.Tensor:
        """``cache``: one :class:`KVCache` per block for incremental decoding (``x``: the new tokens only)."""
        if cache is not None:
            for block, layer_cache in zip(self.blocks, cache):
                x = block(x, attn_mask, layer_cache)
            return self.ln_f(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # keeps only each block's input; the RNG state is replayed, so dropout masks match
            x = checkpoint(block, x, attn_mask, use_reentrant=False) if recompute else block(x, attn_mask)
        return self.ln_f(x)


def causal_padding_mask(token_mask: torch.Tensor) -> torch.Tensor:
    """Combine causality with a key padding mask: (B, T) bool -> (B, 1, T, T) bool.

    Every token may attend to itself, so a padded query never faces an all-masked
    row (which would give NaN); real tokens never attend to padding.
    """
    # index comparisons rather than bool tril/eye, which onnxruntime cannot run in exported graphs
    position = torch.arange(token_mask.shape[1], device=token_mask.device)
    causal = position[:, None] >= position[None, :]
    eye = position[:, None] == position[None, :]
    return (causal & (token_mask[:, None, :] | eye))[:, None]


def init_gpt2_weights(module: nn.Module, n_layer: int, scale_residual: bool = True) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layer)
    (``scale_residual=False``: unscaled, as minGPT)."""
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            residual = scale_residual and name.endswith(".proj") and "blocks" in name
            std = 0.02 / math.sqrt(2 * n_layer) if residual else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
