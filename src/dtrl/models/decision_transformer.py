"""The Decision Transformer (Chen et al. 2021).

A trajectory of K steps becomes 3K tokens ``(R_1, s_1, a_1, ..., R_K, s_K, a_K)``.
Each modality has its own embedding, every token of step t gets the learned
embedding of timestep t added, and the interleaved sequence goes through a
LayerNorm and a causal transformer. The hidden state at token ``s_t`` predicts
``a_t``: it has seen every return-to-go and state up to t and every action
before t, never ``a_t`` itself. With ``condition_on_return=False`` the return
tokens are left out and the same network becomes a behaviour-cloning baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from dtrl.config import ModelConfig
from dtrl.models.transformer import Transformer, causal_padding_mask, init_gpt2_weights


class DecisionTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.observation_dim <= 0 or config.action_dim <= 0:
            raise ValueError("ModelConfig.observation_dim and action_dim must be set from the dataset")
        self.config = config
        d = config.n_embd
        self.embed_timestep = nn.Embedding(config.max_episode_length, d)
        self.embed_return = nn.Linear(1, d) if config.condition_on_return else None
        self.embed_state = nn.Linear(config.observation_dim, d)
        if config.discrete:
            self.embed_action: nn.Module = nn.Embedding(config.action_dim, d)
        else:
            self.embed_action = nn.Linear(config.action_dim, d)
        self.embed_ln = nn.LayerNorm(d)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.transformer = Transformer(
            config.n_layer,
            d,
            config.n_head,
            config.mlp_ratio,
            config.activation,
            config.dropout,
            config.activation_checkpointing,
        )
        self.action_head = nn.Linear(d, config.action_dim)
        init_gpt2_weights(self, config.n_layer)

    def forward(
        self,
        returns_to_go: torch.Tensor,
        states: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the action at every step.

        Shapes: returns_to_go (B, T) already divided by the reward scale; states
        (B, T, obs) normalised; actions (B, T, act) in [-1, 1], or (B, T) integer
        ids when discrete; timesteps (B, T) int; mask (B, T) bool with False on
        left padding (None: no padding). Returns (B, T, act): tanh-squashed
        actions for continuous control, logits for discrete.
        """
        B, T = timesteps.shape
        time = self.embed_timestep(timesteps.clamp(max=self.config.max_episode_length - 1))
        if not self.config.discrete:
            actions = actions.to(states.dtype)
        per_step = [self.embed_state(states) + time, self.embed_action(actions) + time]
        if self.config.condition_on_return:
            per_step.insert(0, self.embed_return(returns_to_go.unsqueeze(-1).to(states.dtype)) + time)
        n = len(per_step)
        tokens = torch.stack(per_step, dim=2).reshape(B, n * T, -1)
        x = self.embed_dropout(self.embed_ln(tokens))
        attn_mask = None if mask is None else causal_padding_mask(mask.repeat_interleave(n, dim=1))
        h = self.transformer(x, attn_mask)
        pred = self.action_head(h[:, n - 2 :: n])  # hidden state at each s_t token
        if not self.config.discrete and self.config.action_tanh:
            pred = torch.tanh(pred)
        return pred

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
