"""Incremental decoding: key/value caches that predict the next action from only the new step's tokens.

The model knows nothing of its caches: :func:`new_cache` picks one for a model, and each cache's
``step`` predicts what :meth:`DecisionTransformer.forward` predicts at the last position.
:class:`DecodingCache` runs the model module by module; :class:`~dtrl.models.fast_decode.FastDecodingCache`
computes the same with far fewer operations per step.
"""

from __future__ import annotations

import torch

from dtrl.errors import DtrlError
from dtrl.models.decision_transformer import DecisionTransformer
from dtrl.models.fast_decode import FastDecodingCache
from dtrl.models.transformer import KVCache


def new_cache(
    model: DecisionTransformer, batch: int, device: torch.device | str = "cpu", fast: bool | None = None
) -> DecodingCache | FastDecodingCache:
    """An empty key/value cache for ``batch`` episodes that advance in lockstep.

    ``fast`` (default: when the model is in eval mode and K > 1) gives a
    :class:`~dtrl.models.fast_decode.FastDecodingCache`: the same computation with far
    fewer operations per step, reading the weights as they are now; ``fast=False`` the
    module-by-module :class:`DecodingCache`. Both have the same ``step``.
    """
    if not model.supports_kv_cache:
        raise DtrlError(
            "this model has no key/value cache (it needs model.token_mixer='attention', the gym DT's "
            "embeddings and the full context): use the full-recompute policy (kv_cache=False)"
        )
    if fast or (fast is None and FastDecodingCache.supports(model)):
        return FastDecodingCache(model, batch, torch.device(device))
    return DecodingCache(model, batch, torch.device(device))


class DecodingCache:
    """Per-layer key/value caches plus the bookkeeping of which token sits in which slot.

    Token ``i`` of the interleaved sequence (``R_t, s_t, a_t`` at ``n t``,
    ``n t + 1``, ``n t + 2`` for n = 3 tokens per step) lives in slot
    ``i mod nK``. While the episode is shorter than K steps this is exactly the
    full causal computation; afterwards every new token attends to the
    current window's cached keys, whose deeper-layer values were computed
    when those tokens arrived (sliding-window attention, as in Mistral) rather
    than recomputed within the new window.
    """

    def __init__(self, model: DecisionTransformer, batch: int, device: torch.device) -> None:
        cfg = model.config
        self.tokens_per_step = 3 if cfg.condition_on_return else 2
        self.context_length = cfg.context_length
        capacity = self.tokens_per_step * cfg.context_length
        dtype = next(model.parameters()).dtype
        head_dim = cfg.n_embd // cfg.n_head
        self.layers = [KVCache(batch, cfg.n_head, head_dim, capacity, device, dtype) for _ in range(cfg.n_layer)]
        self.slot_token = torch.full((capacity,), -1, dtype=torch.long, device=device)  # -1: empty
        self.step_count = 0
        self.previous_time: torch.Tensor | None = None
        self.model = model

    def advance(self, new_tokens: int) -> torch.Tensor:
        """Claim slots for this step's tokens; return the (1, 1, new, capacity) attention mask."""
        n, t = self.tokens_per_step, self.step_count
        last = n * t + n - 2  # index of s_t, the last new token
        index = torch.arange(last - new_tokens + 1, last + 1, device=self.slot_token.device)
        slots = index % self.slot_token.numel()
        self.slot_token[slots] = index
        for layer in self.layers:
            layer.slots = slots
        window_start = max(n * (t - self.context_length + 1), 0)  # empty slots hold -1
        key = self.slot_token[None, :]
        self.step_count += 1
        return ((key >= window_start) & (key <= index[:, None]))[None, None]

    def step(
        self,
        returns_to_go: torch.Tensor,
        states: torch.Tensor,
        timesteps: torch.Tensor,
        previous_actions: torch.Tensor | None,
    ) -> torch.Tensor:
        """Predict the action of the next step, feeding only its new tokens through the network.

        Shapes: returns_to_go (B,), states (B, obs), timesteps (B,) int,
        previous_actions (B, act) float or (B,) int: the actions taken at the
        previous step, None at the first. Each step adds ``a_{t-1}, R_t, s_t``;
        the oldest step's keys and values leave the window once it holds K
        steps. Returns (B, act) like :meth:`DecisionTransformer.forward` at the last position.
        """
        m = self.model
        cfg = m.config
        time = m.embed_timestep(timesteps.clamp(max=cfg.max_episode_length - 1))
        tokens = []
        dtype = states.dtype if states.is_floating_point() else time.dtype  # uint8 pixels: the model's dtype
        if self.step_count > 0:
            if previous_actions is None:
                raise DtrlError("step() after the first needs previous_actions: the actions just taken")
            if cfg.context_length > 1:  # with K = 1 no query may see a_{t-1}: feeding it would give an all-masked row
                a = previous_actions if cfg.discrete else previous_actions.to(dtype)
                tokens.append(m.embed_action(a) + self.previous_time)
        if cfg.condition_on_return:
            tokens.append(m.embed_return(returns_to_go.unsqueeze(-1).to(dtype)) + time)
        tokens.append(m.embed_state(states) + time)
        x = m.embed_ln(torch.stack(tokens, dim=1))
        h = m.transformer(x, self.advance(len(tokens)), self.layers)
        self.previous_time = time
        pred = m.action_head(h[:, -1])
        if not cfg.discrete and cfg.action_tanh:
            pred = torch.tanh(pred)
        return pred
