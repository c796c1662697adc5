"""Hugging Face transformers' Decision Transformer, in and out of dtrl.

``transformers.DecisionTransformerModel`` (its blog tutorial, the ``decision-transformer-gym-*``
checkpoints on the Hub) is the paper's network built from GPT-2's parts, and dtrl expresses it
exactly:

* GPT-2's ``Conv1D`` layers store their weights input-major: transposed into ``nn.Linear``'s;
* its position table is read at position 0 for every token (the DT passes all-zero position ids)
  after the embedding LayerNorm: that one vector folds into the LayerNorm's bias;
* its attention scale (``scale_attn_weights``, ``scale_attn_by_inverse_layer_idx``) differs from
  SDPA's 1/sqrt(head_dim) by a factor per layer, folded into that layer's query weights;
* ``activation_function`` relu, gelu_new / gelu_pytorch_tanh / gelu_fast (tanh form) and gelu
  (erf form) are dtrl's ``model.activation`` relu, gelu and gelu_exact; ``layer_norm_epsilon`` is
  ``model.layer_norm_epsilon``;
* the action head is a Linear plus an optional tanh, as dtrl's (``action_tanh``); the state and
  return heads, which predict no action, are not read (exported as zeros).

Reading a directory written by ``save_pretrained`` needs no transformers; writing one does
(``pip install 'dtrl[transformers]'``). transformers keeps the state statistics and the return
scale outside the model: dtrl reads and writes them as ``state_stats.json`` beside it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dtrl.checkpoint import PolicySpec
from dtrl.config import ModelConfig
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.spaces import space_to_dict
from dtrl.errors import DtrlError
from dtrl.io import write_json
from dtrl.runfiles import CONFIG_FILE

MODEL_TYPE = "decision_transformer"
STATE_STATS_FILE = "state_stats.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TUTORIAL_CONTEXT_LENGTH = 20
"""K of the transformers blog tutorial (its collator's and get_action's ``max_length``)."""
TUTORIAL_REWARD_SCALE = 1000.0
"""The tutorial's return scale for the gym tasks."""
StateStats = str | os.PathLike | Mapping[str, Any]
"""Where the state statistics come from: a JSON file or a mapping (see :func:`read_state_stats`)."""
_ACTIVATIONS = {
    "relu": "relu",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu": "gelu_exact",
}
_EXPORT_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu"}


def is_transformers_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a ``save_pretrained`` Decision Transformer (its config.json says so)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return False


def read_state_stats(source: StateStats, state_dim: int) -> dict[str, Any]:
    """``state_mean`` and ``state_std`` (and optionally ``reward_scale``, ``context_length``, ``env_id``)
    from a JSON file or a mapping, checked against the model's state size."""
    if isinstance(source, Mapping):
        stats = dict(source)
    else:
        path = Path(source)
        try:
            stats = json.loads(path.read_text())
        except FileNotFoundError:
            raise DtrlError(
                f"state statistics file {path} does not exist: give a JSON file with state_mean and state_std"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DtrlError(
                f'{path} is not valid JSON ({e}): write {{"state_mean": [...], "state_std": [...]}}'
            ) from None
        if not isinstance(stats, dict):
            raise DtrlError(f'{path} holds a {type(stats).__name__}: write {{"state_mean": [...], "state_std": [...]}}')
    for key in ("state_mean", "state_std"):
        values = np.asarray(stats.get(key, []), dtype=np.float64).reshape(-1)
        if values.size != state_dim or not np.all(np.isfinite(values)):
            raise DtrlError(
                f"state statistics: {key} must be {state_dim} finite numbers (the model's state_dim), got {values.size}"
            )
        if key == "state_std" and not np.all(values > 0):
            raise DtrlError("state statistics: every state_std must be > 0")
        stats[key] = values.tolist()
    return stats


def dataset_state_stats(dataset: EpisodeDataset) -> dict[str, Any]:
    """State statistics from a dataset, as the transformers tutorial computes them (std + 1e-6), with its env."""
    mean, std = dataset.state_statistics()
    return {"state_mean": mean.tolist(), "state_std": std.tolist(), "env_id": dataset.env_id, "dataset": dataset.name}


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except (SafetensorError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
            raise DtrlError(f"{path} is corrupt or truncated ({type(e).__name__}): save the model again") from None
    raise DtrlError(
        f"{directory} has no {' or '.join(WEIGHT_FILES)}: a sharded or incomplete save_pretrained directory; "
        "save it again as one file"
    )


def model_config_from(hf: dict[str, Any], context_length: int) -> ModelConfig:
    """The dtrl model that computes what transformers' DecisionTransformerModel with config ``hf`` does."""
    if hf.get("add_cross_attention"):
        raise DtrlError(
            "this transformers model has cross-attention (add_cross_attention=true): dtrl has no such layer"
        )
    hidden = int(hf.get("hidden_size", 128))
    inner = hf.get("n_inner") or 4 * hidden
    if inner % hidden:
        raise DtrlError(
            f"n_inner={inner} is not a multiple of hidden_size={hidden}: dtrl's MLP width is model.mlp_ratio x n_embd"
        )
    activation = hf.get("activation_function", "relu")
    if activation not in _ACTIVATIONS:
        raise DtrlError(
            f"activation_function={activation!r} has no dtrl equivalent: dtrl has {', '.join(_ACTIVATIONS)}"
        )
    config = ModelConfig(
        observation_dim=int(hf.get("state_dim", 17)),
        action_dim=int(hf.get("act_dim", 4)),
        action_tanh=bool(hf.get("action_tanh", True)),
        context_length=context_length,
        max_episode_length=int(hf.get("max_ep_len", 4096)),
        n_layer=int(hf.get("n_layer", 3)),
        n_head=int(hf.get("n_head", 1)),
        n_embd=hidden,
        mlp_ratio=inner // hidden,
        activation=_ACTIVATIONS[activation],
        dropout=float(hf.get("resid_pdrop", 0.1)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
    )
    config.validate()
    return config


def attention_factor(hf: dict[str, Any], layer: int, head_dim: int) -> float:
    """transformers' attention scale for ``layer`` as a multiple of SDPA's 1/sqrt(head_dim)."""
    scale = head_dim**-0.5 if hf.get("scale_attn_weights", True) else 1.0
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        scale /= float(layer + 1)
    return scale * math.sqrt(head_dim)


def _pairs(n_layer: int) -> list[tuple[str, str, bool]]:
    """(dtrl name, transformers name, transposed) for every weight dtrl reads."""
    pairs = [(f"{m}.{p}", f"{m}.{p}", False) for m in ("embed_timestep",) for p in ("weight",)]
    pairs += [
        (f"{m}.{p}", f"{m}.{p}", False)
        for m in ("embed_return", "embed_state", "embed_action", "embed_ln")
        for p in ("weight", "bias")
    ]
    pairs += [
        ("transformer.ln_f.weight", "encoder.ln_f.weight", False),
        ("transformer.ln_f.bias", "encoder.ln_f.bias", False),
    ]
    pairs += [
        ("action_head.weight", "predict_action.0.weight", False),
        ("action_head.bias", "predict_action.0.bias", False),
    ]
    for i in range(n_layer):
        ours, theirs = f"transformer.blocks.{i}", f"encoder.h.{i}"
        for a, b in (
            ("ln_1", "ln_1"),
            ("ln_2", "ln_2"),
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("mlp.fc", "mlp.c_fc"),
            ("mlp.proj", "mlp.c_proj"),
        ):
            conv = not a.startswith("ln")  # GPT-2's Conv1D: weight (in, out)
            pairs += [
                (f"{ours}.{a}.weight", f"{theirs}.{b}.weight", conv),
                (f"{ours}.{a}.bias", f"{theirs}.{b}.bias", False),
            ]
    return pairs


def state_dict_from(
    hf_config: dict[str, Any], weights: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """transformers' weights renamed, transposed and folded into dtrl's DecisionTransformer."""
    missing = [theirs for _, theirs, _ in _pairs(config.n_layer) if theirs not in weights] + [
        k for k in ("encoder.wpe.weight",) if k not in weights
    ]
    if missing:
        raise DtrlError(
            f"the transformers weights lack {missing[0]} ({len(missing)} tensors missing): save the model again"
        )
    out = {
        ours: (weights[theirs].t() if conv else weights[theirs]).float().contiguous()
        for ours, theirs, conv in _pairs(config.n_layer)
    }
    out["embed_ln.bias"] = out["embed_ln.bias"] + weights["encoder.wpe.weight"][0].float()  # position id 0, every token
    C, D = config.n_embd, config.n_embd // config.n_head
    for i in range(config.n_layer):
        factor = attention_factor(hf_config, i, D)
        if factor != 1.0:
            for p in ("weight", "bias"):
                q = out[f"transformer.blocks.{i}.attn.qkv.{p}"].clone()
                q[:C] *= factor
                out[f"transformer.blocks.{i}.attn.qkv.{p}"] = q
    return out


def read_transformers(
    path: str | os.PathLike, state_stats: StateStats | None = None
) -> tuple[PolicySpec, dict[str, torch.Tensor], Path]:
    """A ``save_pretrained`` directory as dtrl's policy spec and weights.

    ``state_stats``: a JSON file or mapping with ``state_mean`` and ``state_std`` (optional:
    ``reward_scale``, default the tutorial's 1000; ``context_length``, default 20; ``env_id``);
    None reads ``state_stats.json`` in the directory.
    """
    directory = Path(path)
    hf = json.loads((directory / CONFIG_FILE).read_text())
    state_dim = int(hf.get("state_dim", 17))
    if state_stats is None:
        if not (directory / STATE_STATS_FILE).is_file():
            raise DtrlError(
                f"{directory} is a transformers Decision Transformer without {STATE_STATS_FILE}: pass the state "
                "statistics it was trained with (--state-stats FILE, a JSON with state_mean and state_std) or --dataset D"
            )
        state_stats = directory / STATE_STATS_FILE
    stats = read_state_stats(state_stats, state_dim)
    config = model_config_from(hf, int(stats.get("context_length") or hf.get("max_length") or TUTORIAL_CONTEXT_LENGTH))
    weights = state_dict_from(hf, _read_weights(directory), config)
    bound = 1.0 if config.action_tanh else np.inf
    spec = PolicySpec(
        model=config,
        reward_scale=float(stats.get("reward_scale", TUTORIAL_REWARD_SCALE)),
        # transformers' DT sees states normalised and actions in the env's units (no action rescaling)
        normalizer={
            "state_mean": stats["state_mean"],
            "state_std": stats["state_std"],
            "action_low": None,
            "action_high": None,
        },
        observation_space=space_to_dict(gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)),
        action_space=space_to_dict(gym.spaces.Box(-bound, bound, (config.action_dim,), np.float32)),
        env_id=stats.get("env_id") or None,
        dataset=str(stats.get("dataset", "")),
    )
    return spec, weights, directory


# ------------------------------------------------------------------------------------------ export
def unsupported(spec: PolicySpec) -> str | None:
    """Why a dtrl policy has no transformers equivalent, or None when it has one."""
    cfg, norm = spec.model, spec.normalizer
    reasons = [
        (cfg.kind != "transformer", f"model.kind={cfg.kind!r} (the paper's MLP BC, not a Decision Transformer)"),
        (
            cfg.token_mixer != "attention",
            f"model.token_mixer={cfg.token_mixer!r} (transformers' DT mixes tokens by attention only)",
        ),
        (
            cfg.stochastic_policy,
            "a Gaussian action head (model.stochastic_policy=true; transformers' DT is deterministic)",
        ),
        (cfg.discrete, "discrete actions (transformers' DT embeds and predicts continuous action vectors)"),
        (bool(cfg.observation_shape), "pixel observations (transformers' DT embeds state vectors linearly)"),
        (
            not cfg.condition_on_return,
            "no return tokens (model.condition_on_return=false; transformers' DT always has them)",
        ),
    ]
    if norm.get("action_low") is not None:
        low, high = np.asarray(norm["action_low"]), np.asarray(norm["action_high"])
        reasons.append(
            (
                not (np.all(low == -1.0) and np.all(high == 1.0)),
                "an action box other than [-1, 1] (dtrl rescales actions to it; transformers' DT has no rescaling)",
            )
        )
    return next((why for bad, why in reasons if bad), None)


def transformers_config(cfg: ModelConfig) -> dict[str, Any]:
    """The DecisionTransformerConfig arguments of the network of ``cfg``."""
    return dict(
        state_dim=cfg.observation_dim,
        act_dim=cfg.action_dim,
        hidden_size=cfg.n_embd,
        max_ep_len=cfg.max_episode_length,
        action_tanh=cfg.action_tanh,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.mlp_ratio * cfg.n_embd,
        activation_function=_EXPORT_ACTIVATIONS[cfg.activation],
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        bos_token_id=None,  # GPT-2's 50256 lies outside the DT's one-entry token table (and is never used)
        eos_token_id=None,
    )


def state_dict_to(
    state_dict: dict[str, torch.Tensor], hf_state: dict[str, torch.Tensor], n_layer: int
) -> dict[str, torch.Tensor]:
    """dtrl's weights in transformers' names and layouts; what dtrl does not have (the position table,
    the unused token table, the state and return heads) is zeros."""
    out = {k: torch.zeros_like(v) for k, v in hf_state.items()}
    for ours, theirs, conv in _pairs(n_layer):
        w = state_dict[ours].detach().cpu().float()
        out[theirs] = (w.t() if conv else w).contiguous()
    return out


def export_transformers(model: torch.nn.Module, spec: PolicySpec, out: Path) -> list[Path]:
    """Write a directory that ``DecisionTransformerModel.from_pretrained`` loads, plus state_stats.json."""
    why = unsupported(spec)
    if why is not None:
        raise DtrlError(f"this policy has no transformers equivalent: {why}; export it as policy, torchscript or onnx")
    try:
        from transformers import DecisionTransformerConfig, DecisionTransformerModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise DtrlError("exporting to transformers needs it installed: pip install 'dtrl[transformers]'") from None
    cfg = spec.model
    hf_model = DecisionTransformerModel(DecisionTransformerConfig(**transformers_config(cfg)))
    hf_model.load_state_dict(state_dict_to(model.state_dict(), hf_model.state_dict(), cfg.n_layer), strict=True)
    stats = {
        "state_mean": spec.normalizer["state_mean"],
        "state_std": spec.normalizer["state_std"],
        "reward_scale": spec.reward_scale,
        "context_length": cfg.context_length,
        "env_id": spec.env_id,
        "dataset": spec.dataset,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".tmp-transformers-"))
    try:
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # dtrl export prints the files it wrote
        try:
            hf_model.save_pretrained(tmp)  # safetensors, the default since transformers 4.35
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        written = []
        for file in sorted(tmp.iterdir()):  # each file renamed into place whole
            os.replace(file, out / file.name)
            written.append(out / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(out / STATE_STATS_FILE, stats)
    return [*written, out / STATE_STATS_FILE]
