"""A lean incremental decoder: the KV-cached step without ``nn.Module`` calls or per-step allocations of state.

:class:`FastDecodingCache` computes what :meth:`~dtrl.models.decoding.DecodingCache.step`
computes (the same tokens, the same
sliding-window attention; equal up to float rounding, tested at 1e-5) with fewer and
cheaper operations, which is what one action of a small model costs on a CPU:

* every weight is read once, when the cache is made (at ``policy.reset``), as the
  matrix each product wants; the three input embeddings are one matrix, and each
  modality's bias is folded into a copy of the timestep table, so a step's tokens are
  one gather and one matrix product;
* keys are stored transposed and values as they are, in ring buffers laid out by step:
  step ``t``'s tokens ``a_{t-1}, R_t, s_t`` go to the slots of group ``t mod K``, so a
  step writes one contiguous block and overwrites exactly the step that left the
  window; the attention mask (causal within the step, the one stale action token of
  the oldest step hidden) depends only on ``t`` mod K and on whether the window has
  filled, so all 2K masks are precomputed as additive biases;
* the last block runs its attention output and MLP for the state token only, the one
  whose hidden state predicts the action (the other new tokens need just their keys
  and values there);
* residual additions, biases and activations are in place on the step's own tensors.

On the CPU in float32 with vector observations and continuous actions (the gym
setting) the step's matrix products run in NumPy on the same buffers (LayerNorm and
softmax stay torch's, on the arrays' memory): a small model's step is some sixty tiny
operations, and NumPy's calls and its BLAS's products of a few rows are several times
cheaper than torch's (on the benchmark's AMD CPU, MKL's ``addmm`` of 3 x 128 by
128 x 384 took about 3x as long as NumPy's ``dot``). Elsewhere (CUDA, bf16, discrete
actions, pixels) the same algorithm runs as torch operations.

The weights are those of the model when the cache is made: a model trained further
needs a new cache (the policy makes one at every ``reset``). Made only for a model in
eval mode whose blocks all use attention, with a context of more than one step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dtrl.errors import DtrlError

if TYPE_CHECKING:
    from dtrl.models.decision_transformer import DecisionTransformer


class _Layer:
    """One block's weights, laid out for ``addmm`` (``x @ W + b``), and its ring caches."""

    def __init__(self, block: nn.Module, batch_heads: int, head_dim: int, capacity: int) -> None:
        attn, mlp = block.attn, block.mlp
        self.ln_1 = (block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
        self.ln_2 = (block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        self.qkv_w, self.qkv_b = attn.qkv.weight.t(), attn.qkv.bias
        self.proj_w, self.proj_b = attn.proj.weight.t(), attn.proj.bias
        self.fc_w, self.fc_b = mlp.fc.weight.t(), mlp.fc.bias
        self.out_w, self.out_b = mlp.proj.weight.t(), mlp.proj.bias
        self.activation = "relu" if isinstance(mlp.act, nn.ReLU) else mlp.act.approximate  # or GELU's "tanh", "none"
        w = attn.qkv.weight
        self.keys_t = torch.zeros(batch_heads, head_dim, capacity, device=w.device, dtype=w.dtype)  # K transposed
        self.values = torch.zeros(batch_heads, capacity, head_dim, device=w.device, dtype=w.dtype)


class FastDecodingCache:
    """Ring key/value caches and pre-laid-out weights for ``batch`` episodes that advance in lockstep.

    Made by :func:`dtrl.models.decoding.new_cache`; :meth:`step` is used exactly like
    :meth:`~dtrl.models.decoding.DecodingCache.step`.
    """

    @staticmethod
    def supports(model: DecisionTransformer) -> bool:
        return model.supports_kv_cache and not model.training and model.config.context_length > 1

    @torch.no_grad()
    def __init__(
        self, model: DecisionTransformer, batch: int, device: torch.device, use_numpy: bool | None = None
    ) -> None:
        """``use_numpy``: run the step in NumPy (default: where it can, float32 vector inputs on the CPU)."""
        if not self.supports(model):
            raise DtrlError(
                "the fast decoder needs a model in eval mode whose blocks all use attention "
                "and a context of more than one step (model.context_length > 1)"
            )
        cfg = model.config
        self.model = model
        self.n = n = 3 if cfg.condition_on_return else 2
        self.context_length = K = cfg.context_length
        self.batch = batch
        self.n_embd = C = cfg.n_embd
        self.n_head = H = cfg.n_head
        self.head_dim = D = C // H
        capacity = n * K
        self.scale = 1.0 / math.sqrt(D)
        self.max_time = cfg.max_episode_length - 1
        weight = model.embed_ln.weight
        self.dtype, self.device = weight.dtype, weight.device  # the model's (``device`` is the caller's wish)
        self.layers = [_Layer(block, batch * H, D, capacity) for block in model.transformer.blocks]
        self.embed_ln = (model.embed_ln.weight, model.embed_ln.bias, model.embed_ln.eps)
        self.ln_f = (model.transformer.ln_f.weight, model.transformer.ln_f.bias, model.transformer.ln_f.eps)
        self.head_w, self.head_b = model.action_head.weight.t(), model.action_head.bias
        self.tanh = not cfg.discrete and cfg.action_tanh

        # Token embeddings. Per token type (action, [return,] state), the timestep table plus that
        # type's bias, stacked: row type * T + t. Linear embeddings of vector inputs become one matrix.
        table = model.embed_timestep.weight
        T = table.shape[0]
        kinds = [model.embed_action] + ([model.embed_return] if cfg.condition_on_return else []) + [model.embed_state]
        self.fused_inputs = all(isinstance(m, nn.Linear) for m in kinds)
        if self.fused_inputs:  # continuous actions, vector states
            self.time_tables = torch.cat([table + m.bias for m in kinds])
            widths = [m.in_features for m in kinds]
            self.input_w = torch.cat([m.weight.t() for m in kinds]).contiguous()  # (sum of widths, C)
            self.input_cols = [sum(widths[:i]) for i in range(n + 1)]
            self.inputs = torch.zeros(batch, n, self.input_cols[-1], device=self.device, dtype=self.dtype)
        else:  # discrete actions or pixels: the model's own embedding modules
            self.time_tables = torch.cat([table] * n)
        self.offsets = torch.arange(n, device=self.device) * T
        self.index = torch.zeros(batch, n, dtype=torch.long, device=self.device)

        # Masks over the ring (additive: 0 visible, -inf hidden), one per step t < K (the window filling,
        # later groups still empty) and one per t mod K after. Group g holds step t = g (mod K): slots
        # n g .. n g + n - 1 = a_{t-1}, [R_t,] s_t. Each new token sees the earlier groups in the window,
        # and its own group up to itself; the action token of the step that just left the window
        # (a_{t-K}, slot n ((t + 1) mod K)) is hidden, and so is a_{-1}, which does not exist.
        masks = torch.zeros(2 * K, n, capacity, dtype=torch.bool)
        for m in range(2 * K):
            full, g = m >= K, m % K
            masks[m, :, : n * K if full else n * g] = True
            masks[m, :, n * g : n * g + n] = torch.ones(n, n, dtype=torch.bool).tril()
            # a_{t-K}, the action token of the step that just left the window, or (window filling) a_{-1},
            # which does not exist: slot 0 stays empty until step K
            masks[m, :, n * ((g + 1) % K) if full else 0] = False
        hidden = torch.zeros(2 * K, n, capacity, dtype=self.dtype).masked_fill(~masks, float("-inf"))
        self.masks = hidden.to(self.device)
        self.step_count = 0
        numpy_ok = self.device.type == "cpu" and self.dtype == torch.float32 and self.fused_inputs
        if use_numpy and not numpy_ok:
            raise DtrlError("the NumPy decoder needs float32 weights on the CPU, vector states and continuous actions")
        self._numpy = _NumpyStep(self) if numpy_ok and use_numpy is not False else None

    # ---------------------------------------------------------------------------------------------
    def _tokens(
        self,
        returns_to_go: torch.Tensor,
        states: torch.Tensor,
        time: torch.Tensor,
        previous_actions: torch.Tensor | None,
    ) -> torch.Tensor:
        """This step's new tokens after the embedding LayerNorm, (B * new, C)."""
        B, n, first = self.batch, self.n, self.step_count == 0
        index = self.index
        if first:
            torch.add(time[:, None], self.offsets, out=index)
        else:
            index[:, 1:] = time[:, None] + self.offsets[1:]  # index[:, 0] holds the previous step's time
        rows = index[:, 1:] if first else index
        new = n - 1 if first else n
        bias = self.time_tables.index_select(0, rows.reshape(-1))  # (B * new, C)
        if self.fused_inputs:
            cols, x = self.input_cols, self.inputs
            if not first:
                x[:, 0, : cols[1]] = previous_actions
            if n == 3:
                x[:, 1, cols[1]] = returns_to_go
            x[:, n - 1, cols[n - 1] :] = states
            x = x[:, 1:] if first else x
            tokens = torch.addmm(bias, x.reshape(B * new, -1), self.input_w)
        else:
            m, dtype = self.model, self.dtype
            per_type = []
            if not first:
                per_type.append(m.embed_action(previous_actions if m.config.discrete else previous_actions.to(dtype)))
            if n == 3:
                per_type.append(m.embed_return(returns_to_go.unsqueeze(-1).to(dtype)))
            per_type.append(m.embed_state(states).to(dtype))
            tokens = torch.stack(per_type, 1).reshape(B * new, -1).add_(bias)
        index[:, 0] = time  # the next step's action token carries this step's time
        w, b, eps = self.embed_ln
        return F.layer_norm(tokens, (self.n_embd,), w, b, eps)

    def step(
        self,
        returns_to_go: torch.Tensor,
        states: torch.Tensor,
        timesteps: torch.Tensor,
        previous_actions: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`~dtrl.models.decoding.DecodingCache.step`'s contract: the next action (B, act), or logits (B, act)."""
        if self.step_count > 0 and previous_actions is None:
            raise DtrlError("step() after the first needs previous_actions: the actions just taken")
        if self._numpy is not None:
            pred = self._numpy.step(returns_to_go, states, timesteps, previous_actions)
        else:
            with torch.no_grad():
                pred = self._torch_step(returns_to_go, states, timesteps, previous_actions)
        self.step_count += 1
        return pred

    def _torch_step(
        self,
        returns_to_go: torch.Tensor,
        states: torch.Tensor,
        timesteps: torch.Tensor,
        previous_actions: torch.Tensor | None,
    ) -> torch.Tensor:
        t, K, n, B, H, D, C = (
            self.step_count,
            self.context_length,
            self.n,
            self.batch,
            self.n_head,
            self.head_dim,
            self.n_embd,
        )
        if states.dtype != self.dtype and states.is_floating_point():
            states = states.to(self.dtype)
        x = self._tokens(returns_to_go, states, timesteps.clamp(max=self.max_time), previous_actions)
        new = n - 1 if t == 0 else n
        lo = n * (t % K) + n - new  # ring slots of this step's tokens: lo .. n (t mod K) + n - 1
        hi = lo + new
        mask = self.masks[t if t < K else K + t % K, n - new :]  # (new, capacity)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            w, b, eps = layer.ln_1
            qkv = torch.addmm(layer.qkv_b, F.layer_norm(x, (C,), w, b, eps), layer.qkv_w).view(B, new, 3, H, D)
            layer.keys_t.view(B, H, D, -1)[..., lo:hi] = qkv[:, :, 1].permute(0, 2, 3, 1)
            layer.values.view(B, H, -1, D)[:, :, lo:hi] = qkv[:, :, 2].transpose(1, 2)
            if i == last:  # only the state token's output is read: the rest of the block for it alone
                x = x.view(B, new, C)[:, -1]
                q, q_mask, rows = qkv[:, -1:, 0], mask[-1:], 1
            else:
                q, q_mask, rows = qkv[:, :, 0], mask, new
            q = q.transpose(1, 2).reshape(B * H, rows, D)
            scores = torch.baddbmm(q_mask, q, layer.keys_t, alpha=self.scale)
            y = torch.bmm(torch.softmax(scores, -1), layer.values)  # (B H, rows, D)
            y = y.view(B, H, rows, D).transpose(1, 2).reshape(B * rows, C)
            x = torch.addmm(x, y, layer.proj_w).add_(layer.proj_b)  # x is (B * rows, C)
            w, b, eps = layer.ln_2
            h = torch.addmm(layer.fc_b, F.layer_norm(x, (C,), w, b, eps), layer.fc_w)
            h = h.relu_() if layer.activation == "relu" else F.gelu(h, approximate=layer.activation)
            x = x.addmm_(h, layer.out_w).add_(layer.out_b)
        w, b, eps = self.ln_f
        pred = torch.addmm(self.head_b, F.layer_norm(x, (C,), w, b, eps), self.head_w)
        return pred.tanh_() if self.tanh else pred


class _NumpyStep:
    """:meth:`FastDecodingCache.step` in NumPy (float32, CPU), on the cache's own ring buffers and masks."""

    def __init__(self, c: FastDecodingCache) -> None:
        self.c = c
        B, H, D, C = c.batch, c.n_head, c.head_dim, c.n_embd

        def ln(p: tuple) -> tuple:  # LayerNorm and softmax stay torch's, on the arrays' memory: cheaper there
            return (C,), p[0].detach(), p[1].detach(), p[2]

        def mat(w: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(_np(w))

        def scaled_queries(w: torch.Tensor) -> torch.Tensor:  # attention's 1/sqrt(D) folded into q's weights
            w = w.detach().clone()
            w[..., :C] *= c.scale
            return w

        self.layers = [
            (
                ln(L.ln_1),
                mat(scaled_queries(L.qkv_w)),
                _np(scaled_queries(L.qkv_b)),
                L.keys_t.numpy().reshape(B, H, D, -1),
                L.values.numpy().reshape(B, H, -1, D),
                mat(L.proj_w),
                _np(L.proj_b),
                ln(L.ln_2),
                mat(L.fc_w),
                _np(L.fc_b),
                L.activation,
                mat(L.out_w),
                _np(L.out_b),
            )
            for L in c.layers
        ]
        self.embed_ln, self.ln_f = ln(c.embed_ln), ln(c.ln_f)
        self.head_w, self.head_b = mat(c.head_w), _np(c.head_b)
        self.time_tables, self.input_w = _np(c.time_tables), _np(c.input_w)
        self.inputs, self.index, self.offsets = c.inputs.numpy(), c.index.numpy(), _np(c.offsets)
        self.masks = _np(c.masks)

    def step(
        self,
        returns_to_go: torch.Tensor,
        states: torch.Tensor,
        timesteps: torch.Tensor,
        previous_actions: torch.Tensor | None,
    ) -> torch.Tensor:
        c = self.c
        t, K, n, B, H, D, C = c.step_count, c.context_length, c.n, c.batch, c.n_head, c.head_dim, c.n_embd
        first = t == 0  # no action token yet
        new = n - 1 if first else n
        time = np.minimum(_np(timesteps), c.max_time)
        index, x, cols = self.index, self.inputs, c.input_cols
        index[:, 1:] = time[:, None] + self.offsets[1:]  # index[:, 0]: the previous step's time
        if not first:
            x[:, 0, : cols[1]] = _np(previous_actions)
        if n == 3:
            x[:, 1, cols[1]] = _np(returns_to_go)
        x[:, n - 1, cols[n - 1] :] = _np(states)
        rows = index[:, 1:] if first else index
        h = np.dot((x[:, 1:] if first else x).reshape(B * new, -1), self.input_w)
        h += self.time_tables[rows.reshape(-1)]
        index[:, 0] = time
        x = _layer_norm(h, self.embed_ln)

        lo = n * (t % K) + n - new  # as in FastDecodingCache._torch_step
        hi = lo + new
        mask = self.masks[t if t < K else K + t % K, n - new :]
        last = len(self.layers) - 1
        for i, (
            ln_1,
            qkv_w,
            qkv_b,
            keys_t,
            values,
            proj_w,
            proj_b,
            ln_2,
            fc_w,
            fc_b,
            activation,
            out_w,
            out_b,
        ) in enumerate(self.layers):
            qkv = np.dot(_layer_norm(x, ln_1), qkv_w)
            qkv += qkv_b
            qkv = qkv.reshape(B, new, 3, H, D)
            keys_t[..., lo:hi] = qkv[:, :, 1].transpose(0, 2, 3, 1)
            values[:, :, lo:hi] = qkv[:, :, 2].transpose(0, 2, 1, 3)
            if i == last:  # the state token alone
                x, q, q_mask, q_rows = x.reshape(B, new, C)[:, -1], qkv[:, -1:, 0], mask[-1:], 1
            else:
                q, q_mask, q_rows = qkv[:, :, 0], mask, new
            scores = q.transpose(0, 2, 1, 3) @ keys_t  # (B, H, rows, capacity), already scaled
            scores += q_mask
            weights = torch.softmax(torch.from_numpy(scores), -1).numpy()
            y = (weights @ values).transpose(0, 2, 1, 3).reshape(B * q_rows, C)
            y = np.dot(y, proj_w)
            y += proj_b
            x = x + y
            h = np.dot(_layer_norm(x, ln_2), fc_w)
            h += fc_b
            if activation == "relu":
                h = np.maximum(h, 0.0, out=h)
            else:
                h = _gelu_tanh(h) if activation == "tanh" else F.gelu(torch.from_numpy(h)).numpy()
            y = np.dot(h, out_w)
            y += out_b
            x += y
        pred = np.dot(_layer_norm(x, self.ln_f), self.head_w)
        pred += self.head_b
        if c.tanh:
            np.tanh(pred, out=pred)
        return torch.from_numpy(pred)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy() if t.requires_grad else t.numpy()


def _layer_norm(x: np.ndarray, params: tuple) -> np.ndarray:
    return torch.layer_norm(torch.from_numpy(x), *params).numpy()


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (torch's ``approximate="tanh"``)."""
    inner = x * x
    inner *= 0.044715 * x
    inner += x
    inner *= math.sqrt(2.0 / math.pi)
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= 0.5 * x
    return inner
