"""The Decision Transformer (Chen et al. 2021).

A trajectory of K steps becomes 3K tokens ``(R_1, s_1, a_1, ..., R_K, s_K, a_K)``.
Each modality has its own embedding, every token of step t gets the learned
embedding of timestep t added, and the interleaved sequence goes through a
LayerNorm and a causal transformer. The hidden state at token ``s_t`` predicts
``a_t``: it has seen every return-to-go and state up to t and every action
before t, never ``a_t`` itself. With ``condition_on_return=False`` the return
tokens are left out and the same network becomes a behaviour-cloning baseline.
``token_mixer="conv"`` swaps attention for Decision ConvFormer's causal
convolution (:mod:`dtrl.models.mixers`); ``stochastic_policy`` adds the Online
DT's Gaussian head and learned entropy temperature (:mod:`dtrl.models.gaussian`).

The embedding options reproduce two other published models on the same network:
Online DT's code embeds no timestep (``timestep_embedding="none"``); the paper's
Atari model (minGPT) adds one embedding of the window's first timestep plus a
learned per-position embedding to every token, puts tanh on the modality
embeddings and has no embedding LayerNorm (``timestep_embedding="segment"``,
``position_embedding="learned"``, ``embedding_tanh``, ``embedding_layernorm=False``).
"""

from __future__ import annotations

import torch
from torch import nn

from dtrl.config import ModelConfig
from dtrl.errors import DtrlError
from dtrl.models.encoders import NatureCNN
from dtrl.models.gaussian import bounded_log_std, init_log_temperature
from dtrl.models.transformer import Transformer, causal_padding_mask, init_gpt2_weights


class DecisionTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.observation_dim <= 0 or config.action_dim <= 0:
            raise ValueError("ModelConfig.observation_dim and action_dim must be set from the dataset")
        if config.stochastic_policy and (config.discrete or not config.action_tanh):
            raise DtrlError(
                "model.stochastic_policy=true needs continuous actions in a bounded box: "
                "leave it false for discrete or unbounded action spaces"
            )
        self.config = config
        d = config.n_embd
        no_time = config.timestep_embedding == "none"
        self.embed_timestep = None if no_time else nn.Embedding(config.max_episode_length, d)
        self.embed_return = nn.Linear(1, d) if config.condition_on_return else None
        self.embed_state: nn.Module = (
            NatureCNN(config.observation_shape, d) if config.observation_shape else nn.Linear(config.observation_dim, d)
        )
        if config.discrete:
            self.embed_action: nn.Module = nn.Embedding(config.action_dim, d)
        else:
            self.embed_action = nn.Linear(config.action_dim, d)
        self.embed_ln = nn.LayerNorm(d) if config.embedding_layernorm else None
        self.embed_dropout = nn.Dropout(config.dropout)
        self.transformer = Transformer(
            config.n_layer,
            d,
            config.n_head,
            config.mlp_ratio,
            config.activation,
            config.dropout,
            config.activation_checkpointing,
            config.token_mixer,
            config.conv_kernel_size,
            3 if config.condition_on_return else 2,
            config.layer_norm_epsilon,
        )
        self.action_head = nn.Linear(d, config.action_dim, bias=config.action_head_bias)
        if config.stochastic_policy:  # the action head then predicts the Gaussian's mean
            self.action_log_std = nn.Linear(d, config.action_dim)
            self.log_temperature = init_log_temperature(config.init_temperature)
        tokens_per_step = 3 if config.condition_on_return else 2
        if config.position_embedding == "learned":
            self.embed_position = nn.Embedding(tokens_per_step * config.context_length, d)
        self._init_weights()

    def _init_weights(self) -> None:
        """``model.init``: GPT-2's initialisation, or the paper's Atari code's, or Online DT's code's."""
        config = self.config
        init_gpt2_weights(self, config.n_layer, scale_residual=config.init == "gpt2")
        if config.init == "mingpt":  # minGPT builds the CNN and the return embedding after its init
            _default_init(self.embed_state, self.embed_return)
        elif config.init == "odt":  # ODT: its GPT-2 copy's init in the transformer only, orthogonal heads
            _default_init(self.embed_state, self.embed_return, self.embed_action, self.embed_timestep)
            if config.stochastic_policy:
                for head in (self.action_head, self.action_log_std):
                    nn.init.orthogonal_(head.weight)
                    nn.init.zeros_(head.bias)
            else:
                _default_init(self.action_head)
        if config.position_embedding == "learned":
            nn.init.zeros_(self.embed_position.weight)  # minGPT's pos_emb and global_pos_emb start at zero
        if config.timestep_embedding == "segment":
            nn.init.zeros_(self.embed_timestep.weight)

    def forward(
        self,
        returns_to_go: torch.Tensor,
        states: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
        distribution: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predict the action at every step.

        Shapes: returns_to_go (B, T) already divided by the reward scale; states
        (B, T, obs) normalised; actions (B, T, act) in [-1, 1], or (B, T) integer
        ids when discrete; timesteps (B, T) int; mask (B, T) bool with False on
        left padding (None: no padding). Returns (B, T, act): tanh-squashed
        actions for continuous control, logits for discrete. A stochastic policy
        predicts the tanh of its Gaussian's mean, or with ``distribution=True``
        the pre-squash mean and log standard deviation, each (B, T, act).
        """
        B, T = timesteps.shape
        cfg = self.config
        per_step_time = cfg.timestep_embedding == "step"
        time = self._timestep(timesteps) if per_step_time else 0.0
        dtype = states.dtype if states.is_floating_point() else self.action_head.weight.dtype  # uint8 pixels
        if not cfg.discrete:
            actions = actions.to(dtype)
        squash = torch.tanh if cfg.embedding_tanh else _identity
        state = self.embed_state(states)
        if not cfg.observation_shape:  # the CNN ends in tanh already
            state = squash(state)
        per_step = [state + time, squash(self.embed_action(actions)) + time]
        if cfg.condition_on_return:
            per_step.insert(0, squash(self.embed_return(returns_to_go.unsqueeze(-1).to(dtype))) + time)
        n = len(per_step)
        tokens = torch.stack(per_step, dim=2).reshape(B, n * T, -1)
        if cfg.timestep_embedding == "segment" or cfg.position_embedding == "learned":
            tokens = tokens + self._window_embeddings(timesteps, mask, n)
        x = self.embed_dropout(tokens if self.embed_ln is None else self.embed_ln(tokens))
        attn_mask = None if mask is None else causal_padding_mask(mask.repeat_interleave(n, dim=1))
        h = self.transformer(x, attn_mask)
        h_state = h[:, n - 2 :: n]  # hidden state at each s_t token
        pred = self.action_head(h_state)
        if distribution:
            return pred, bounded_log_std(self.action_log_std(h_state))
        if not self.config.discrete and self.config.action_tanh:
            pred = torch.tanh(pred)
        return pred

    def _timestep(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.embed_timestep(timesteps.clamp(max=self.config.max_episode_length - 1))

    def _window_embeddings(self, timesteps: torch.Tensor, mask: torch.Tensor | None, n: int) -> torch.Tensor:
        """minGPT's per-window embeddings, (B, n·T, d): the first real step's timestep ('segment') plus each
        token's position counted from the first real token ('learned'). Padding is on the left."""
        B, T = timesteps.shape
        pad = torch.zeros(B, dtype=torch.long, device=timesteps.device) if mask is None else (~mask).sum(1)
        out = 0.0
        if self.config.timestep_embedding == "segment":
            out = self._timestep(timesteps.gather(1, pad[:, None]))  # (B, 1, d)
        if self.config.position_embedding == "learned":
            position = torch.arange(n * T, device=timesteps.device)[None, :] - n * pad[:, None]
            out = out + self.embed_position(position.clamp(min=0))
        return out

    @property
    def supports_kv_cache(self) -> bool:
        """Incremental decoding covers attention blocks over the gym DT's embeddings and head, at the full context."""
        c = self.config
        gym_embeddings = (
            c.timestep_embedding, c.position_embedding, c.embedding_tanh, c.embedding_layernorm, c.action_head_bias
        ) == ("step", "none", False, True, True)  # fmt: skip
        return self.transformer.supports_kv_cache and gym_embeddings and c.eval_context_length in (0, c.context_length)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _default_init(*modules: nn.Module | None) -> None:
    """Back to PyTorch's own initialisation of each layer (``reset_parameters``)."""
    for module in modules:
        for m in module.modules() if module is not None else ():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
                m.reset_parameters()
