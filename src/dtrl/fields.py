"""The type and valid range of every config field, checked in one place.

Each config dataclass (:mod:`dtrl.config`) has a table here with one entry per
field; ``validate()`` runs :func:`check_fields` over it, so a bad value gets
one line naming the key, the value and what is valid. A field without an
entry is a programming error (``tests/test_fields.py`` draws an invalid value
for every field, so a field added without a range fails there). Cross-field
rules (n_embd divisible by n_head, the memory a model needs) stay in
``validate()``. :func:`from_dict` and :func:`to_dict` turn a nested mapping into a config
dataclass, checking every key and type, and back.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from dtrl.errors import DtrlError

INT32_MAX = 2**31 - 1
"""The largest size a field may have (torch indexes with 32-bit integers in places)."""
SEED_MAX = 2**32 - 1
"""Seeds are unsigned 32-bit numbers (what gymnasium, NumPy and torch all accept)."""
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


@dataclass(frozen=True)
class Field:
    """What one field accepts. ``kind``: int, real, reals (a list of reals), bool, text, choice, device, shape."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    length: int | None = None
    """reals: the exact number of values (None: any)."""

    def describe(self) -> str:
        """What is valid, as the end of "KEY=VALUE must ...": e.g. "be > 0", "lie in [0, 1)"."""
        if self.kind == "int":
            most = "" if self.high is None else f" (at most {self.high:,})"
            return ("be a positive integer" if self.low == 1 else f"be an integer >= {self.low}") + most
        if self.kind == "reals":
            count = f"{self.length} " if self.length else ""
            return f"be a list of {count}finite numbers" + (f" in {self._interval()}" if self.low is not None else "")
        if self.kind == "real":
            if self.low is None:
                bound = "be a finite number"
            elif self.high is None:
                bound = f"be {'>' if self.low_open else '>='} {self.low:g} and finite"
            else:
                bound = f"lie in {self._interval()}"
            return bound + (" or null" if self.optional else "")
        if self.kind == "bool":
            return "be true or false"
        if self.kind == "text":
            return "be a string"
        if self.kind == "device":
            return f"be {DEVICES}"
        if self.kind == "shape":
            return "be [channels, height, width] of positive integers, or empty"
        return "be one of " + _alternatives(self.choices)

    def accepts(self, value: Any) -> bool:
        if self.optional and value is None:
            return True
        if self.kind == "int":
            return _is_int(value) and self._in_range(value)
        if self.kind == "real":
            return _is_real(value) and self._in_range(value)
        if self.kind == "reals":
            return (
                isinstance(value, (list, tuple))
                and (self.length is None or len(value) == self.length)
                and all(_is_real(v) and self._in_range(v) for v in value)
            )
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str)
        if self.kind == "device":
            return isinstance(value, str) and DEVICE_PATTERN.match(value) is not None
        if self.kind == "shape":
            return isinstance(value, (list, tuple)) and (
                not value or (len(value) == 3 and all(_is_int(v) and 0 < v <= INT32_MAX for v in value))
            )
        return isinstance(value, str) and value in self.choices

    def _interval(self) -> str:
        high = "inf)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {high}"

    def _in_range(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _alternatives(choices: tuple[str, ...]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def Int(low: int, high: int | None = None) -> Field:
    return Field("int", low, high)


def Real(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Field:
    return Field("real", low, high, low_open, high_open, optional=optional)


def Choice(*choices: str) -> Field:
    return Field("choice", choices=choices)


BOOL, TEXT, DEVICE, SHAPE = Field("bool"), Field("text"), Field("device"), Field("shape")
POSITIVE = Int(1)
COUNT = Int(0)
SEED = Int(0, SEED_MAX)

MODEL_FIELDS: dict[str, Field] = {
    "observation_dim": COUNT,
    "observation_shape": SHAPE,
    "action_dim": COUNT,
    "discrete": BOOL,
    "action_tanh": BOOL,
    "context_length": Int(1, 100_000),
    "max_episode_length": Int(1, 100_000_000),
    "n_layer": Int(1, 1024),
    "n_head": Int(1, 1024),
    "n_embd": Int(1, 65_536),
    "mlp_ratio": Int(1, 64),
    "activation": Choice("relu", "gelu", "gelu_exact"),
    "layer_norm_epsilon": Real(0, 1, low_open=True),
    "dropout": Real(0, 1, high_open=True),
    "condition_on_return": BOOL,
    "activation_checkpointing": BOOL,
    "token_mixer": Choice("attention", "conv"),
    "conv_kernel_size": Int(1, 100_000),
    "stochastic_policy": BOOL,
    "init_temperature": Real(0, low_open=True),
    "timestep_embedding": Choice("step", "none", "segment"),
    "position_embedding": Choice("none", "learned"),
    "embedding_tanh": BOOL,
    "embedding_layernorm": BOOL,
    "action_head_bias": BOOL,
    "init": Choice("gpt2", "mingpt", "odt"),
    "eval_context_length": Int(0, 100_000),
    "kind": Choice("transformer", "mlp"),
}

TRAIN_FIELDS: dict[str, Field] = {
    "dataset": TEXT,
    "env": TEXT,
    "out_dir": TEXT,
    "seed": SEED,
    "device": DEVICE,
    "num_threads": Int(0, 4096),
    "precision": Choice("fp32", "bf16"),
    "compile": BOOL,
    "model": Field("config"),
    "top_fraction": Real(0, 1, low_open=True),
    "val_fraction": Real(0, 1, high_open=True),
    "reward_scale": Real(0, low_open=True),
    "batch_size": Int(1, 10_000_000),
    "steps": POSITIVE,
    "learning_rate": Real(0, low_open=True),
    "weight_decay": Real(0),
    "weight_decay_matrices_only": BOOL,
    "betas": Field("reals", 0, 1, high_open=True, length=2),
    "optimizer": Choice("adamw", "lamb"),
    "temperature_learning_rate": Real(0),
    "in_episode_segments": BOOL,
    "warmup_steps": COUNT,
    "lr_decay": Choice("none", "cosine"),
    "grad_clip": Real(0),
    "log_every": POSITIVE,
    "checkpoint_every": POSITIVE,
    "keep_checkpoints": Int(1, 100_000),
    "eval_every": COUNT,
    "eval_episodes": Int(1, 100_000),
    "eval_max_episode_steps": COUNT,
    "eval_sample_actions": BOOL,
    "target_returns": Field("reals"),
    "wandb": BOOL,
}

FINETUNE_FIELDS: dict[str, Field] = {
    "env": TEXT,
    "steps": POSITIVE,
    "out_dir": TEXT,
    "target_return": Real(optional=True),
    "eval_target": Real(optional=True),
    "rollouts_per_iteration": Int(1, 100_000),
    "updates_per_iteration": POSITIVE,
    "buffer_size": POSITIVE,
    "batch_size": Int(1, 10_000_000),
    "learning_rate": Real(0, low_open=True),
    "weight_decay": Real(0),
    "continue_optimizer": BOOL,
    "grad_clip": Real(0),
    "eval_episodes": Int(1, 100_000),
    "eval_every": COUNT,
    "seed": SEED,
    "eval_seed": SEED,
    "device": DEVICE,
}

TABLES: dict[str, dict[str, Field]] = {
    "ModelConfig": MODEL_FIELDS,
    "TrainConfig": TRAIN_FIELDS,
    "FinetuneConfig": FINETUNE_FIELDS,
}


def key_name(obj: Any, name: str) -> str:
    """How a field is named in messages: ``model.n_layer``, ``steps``; fine-tuning's as its options, ``learning-rate``."""
    cls = type(obj).__name__
    if cls == "ModelConfig":
        return f"model.{name}"
    return name.replace("_", "-") if cls == "FinetuneConfig" else name


def check_fields(obj: Any) -> None:
    """Raise a one-line :class:`DtrlError` for the first field of config ``obj`` that its table rejects."""
    table = TABLES[type(obj).__name__]
    for f in dataclasses.fields(obj):
        spec = table[f.name]  # KeyError: a field without a range (tests/test_fields.py)
        value = getattr(obj, f.name)
        if spec.kind == "config" or spec.accepts(value):
            continue
        shown = [float(v) if _is_real(v) else v for v in value] if isinstance(value, tuple) else value
        if spec.kind == "choice":
            raise DtrlError(f"{key_name(obj, f.name)}={value!r}: choose {_alternatives(spec.choices)}")
        raise DtrlError(f"{key_name(obj, f.name)}={shown!r} must {spec.describe()}")


def check_device(device: Any) -> str:
    """``device`` if it names a device dtrl knows, else a one-line error."""
    if not DEVICE.accepts(device):
        raise DtrlError(f"device {device!r} is not a device: choose {DEVICES}")
    return device


# --------------------------------------------------------------------------- memory
def training_bytes(train: Any) -> int:
    """A lower bound on the memory one training step needs: weights, gradients, two optimizer
    moments, and the activations kept for the backward pass (attention scores included)."""
    m, batch = train.model, train.batch_size
    tokens = (3 if m.condition_on_return else 2) * m.context_length
    width, layers = m.n_embd, m.n_layer
    params = layers * (4 + 2 * m.mlp_ratio) * width * width + (m.max_episode_length + tokens) * width
    params += (m.observation_dim + 2 * m.action_dim + 1) * width
    per_layer = batch * tokens * width * (6 + 2 * m.mlp_ratio)
    if m.kind == "transformer" and m.token_mixer == "attention":
        per_layer += 2 * batch * m.n_head * tokens * tokens
    return 4 * (4 * params + layers * per_layer)


def physical_memory() -> int | None:
    """This machine's RAM in bytes, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(train: Any, available: int | None = None, where: str = "this machine's memory") -> None:
    """One line, before anything is allocated, when the model and batch cannot fit in ``available`` bytes."""
    available = physical_memory() if available is None else available
    need = training_bytes(train)
    if available and need > available:
        m = train.model
        raise DtrlError(
            f"model.context_length={m.context_length}, model.n_embd={m.n_embd}, model.n_layer={m.n_layer}, "
            f"batch_size={train.batch_size} need at least {need / 2**30:.1f} GiB but {where} is "
            f"{available / 2**30:.1f} GiB: lower the context length, width, depth or batch size"
        )


# --------------------------------------------------------------------------- dataclasses <-> dicts
# --------------------------------------------------------------------------- building
def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        section = prefix.rstrip(".")
        raise DtrlError(
            f"config section {section} must be a mapping of keys, got {data!r}: write e.g. {section}.KEY=VALUE"
            if section
            else f"the config must be a mapping of keys, got {data!r}: write KEY: VALUE lines"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; valid keys: {', '.join(names)}"
            raise DtrlError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, key)
            except DtrlError as e:
                errors.append(str(e))
        raise DtrlError(errors[0])
    if tp is type(None):
        if value is None:
            return None
    elif origin in (list, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise DtrlError(f"config key {key} expects a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple:
            if len(args) != len(value):
                raise DtrlError(f"config key {key} expects {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, key) for a, v in zip(args, value))
        return [_coerce(args[0], v, key) for v in value]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise DtrlError(f"config key {key} expects {getattr(tp, '__name__', tp)}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    if "betas" in d:
        d["betas"] = list(d["betas"])
    return d
