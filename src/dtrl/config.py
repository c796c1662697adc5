"""Every hyperparameter, as documented fields of dataclasses.

``ModelConfig`` describes the network and travels inside every checkpoint;
``TrainConfig`` describes a training run and is written, resolved, into the
run directory; ``FinetuneConfig`` describes online fine-tuning (``dtrl
finetune``). Defaults are the paper's D4RL gym settings (Chen et al. 2021,
appendix A). Configs come from YAML files plus ``key=value`` overrides
(``model.n_layer=2 steps=500``); unknown keys, wrong types and out-of-range
values are rejected with a message naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dtrl.errors import DtrlError
from dtrl.fields import check_fields, check_memory, from_dict, to_dict
from dtrl.io import read_yaml
from dtrl.runfiles import RUN_CONFIG_FIX


@dataclass
class ModelConfig:
    """The Decision Transformer's shape. Sizes of the data are filled in from the dataset."""

    observation_dim: int = 0
    """Size of the flat observation vector (set from the dataset)."""
    observation_shape: list[int] = field(default_factory=list)
    """Image observations: (channels, height, width), embedded by the Nature-DQN CNN from uint8
    pixels (set from the dataset, e.g. [4, 84, 84] for stacked Atari frames); empty: a flat
    vector embedded linearly."""
    action_dim: int = 0
    """Continuous: action vector size; discrete: number of actions (set from the dataset)."""
    discrete: bool = False
    """Discrete actions: embedding input and a logits head trained with cross-entropy."""
    action_tanh: bool = True
    """Continuous actions: squash predictions with tanh into the normalised [-1, 1] box."""
    context_length: int = 20
    """K: timesteps the model sees (3K tokens)."""
    max_episode_length: int = 1000
    """Size of the learned timestep embedding; later timesteps reuse the last entry."""
    n_layer: int = 3
    n_head: int = 1
    n_embd: int = 128
    mlp_ratio: int = 4
    """Hidden width of each block's MLP, as a multiple of n_embd."""
    activation: str = "relu"
    """MLP activation: relu (the paper's gym setting), gelu (tanh approximation, GPT-2's and
    transformers' gelu_new) or gelu_exact (the erf form: PyTorch's default GELU, transformers' gelu,
    and what the paper's Atari code uses)."""
    layer_norm_epsilon: float = 1e-5
    """Epsilon of the transformer blocks' and the final LayerNorm (transformers' layer_norm_epsilon);
    the embedding LayerNorm keeps 1e-5, as in transformers' Decision Transformer."""
    dropout: float = 0.1
    condition_on_return: bool = True
    """False drops the return-to-go tokens: behaviour cloning with the same transformer (the BC baseline)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (torch.utils.checkpoint): far less
    activation memory for large models, at the cost of about one more forward pass per step."""
    token_mixer: str = "attention"
    """How blocks mix tokens: 'attention' (causal self-attention, the DT) or 'conv' (a causal
    depthwise convolution over the last conv_kernel_size tokens, as in Decision ConvFormer)."""
    conv_kernel_size: int = 6
    """token_mixer='conv': tokens each convolution sees, the current one included (Decision ConvFormer: 6)."""
    stochastic_policy: bool = False
    """Continuous actions: a tanh-squashed Gaussian head trained by likelihood with an entropy bonus
    whose temperature is learned towards a target entropy of -action_dim (Online DT); evaluation
    uses the mean action, `dtrl finetune` samples."""
    init_temperature: float = 0.1
    """stochastic_policy: the entropy temperature at initialisation (Online DT: 0.1)."""
    # --- embedding variants: Online DT's and the paper's Atari (minGPT) model; the defaults are the gym DT's
    timestep_embedding: str = "step"
    """'step': every token of step t gets the learned embedding of timestep t (the gym DT); 'none': no
    timestep embedding (Online DT's code, `--ordering 0`); 'segment': one learned embedding of the timestep
    of the window's first real step, added to all its tokens (the paper's Atari model, minGPT's
    `global_pos_emb`; it starts at zero, as there)."""
    position_embedding: str = "none"
    """'learned': a learned embedding of each token's position in the window, counted from its first real
    token, so a left-padded window and an unpadded one agree (the paper's Atari model, minGPT's `pos_emb`;
    it starts at zero, as there); 'none': no position embedding (the gym DT)."""
    embedding_tanh: bool = False
    """tanh on the return, state and action embeddings (the paper's Atari model); the CNN state encoder
    ends in tanh either way."""
    embedding_layernorm: bool = True
    """A LayerNorm over the token embeddings before the transformer (the gym DT, Online DT); the paper's
    Atari model has none."""
    action_head_bias: bool = True
    """A bias in the action head (the gym DT); the paper's Atari model's head has none."""
    init: str = "gpt2"
    """Initial weights: 'gpt2', GPT-2's for every layer (N(0, 0.02), residual projections scaled by
    1/sqrt(2 n_layer)); 'mingpt', the paper's Atari code's (unscaled residual projections, the CNN and the
    return embedding at PyTorch's defaults); 'odt', Online DT's code's (N(0, 0.02), unscaled, in the
    transformer only, as its 2021 copy of Hugging Face's GPT-2; PyTorch's defaults for the embeddings;
    orthogonal Gaussian heads)."""
    eval_context_length: int = 0
    """Steps the policy sees when it acts (evaluation, `dtrl eval`, fine-tuning rollouts, exported
    policies); 0: context_length. Online DT acts on 5 steps of a model trained at K = 20."""
    # --- the network kind (the paper's gym BC baseline)
    kind: str = "transformer"
    """'transformer' (the Decision Transformer) or 'mlp': the paper's gym BC, an MLP from the last
    context_length states to the current action, with n_layer layers of width n_embd, activation and
    dropout (returns, actions, timesteps and the transformer's other settings unused; docs/variants.md)."""

    def validate(self) -> None:
        check_fields(self)
        if self.n_embd % self.n_head:
            raise DtrlError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.eval_context_length > self.context_length:
            raise DtrlError(
                f"model.eval_context_length={self.eval_context_length} must lie in [0, "
                f"model.context_length={self.context_length}] (0: the whole context)"
            )


@dataclass
class TrainConfig:
    """A training run: data, optimisation, logging and evaluation."""

    dataset: str = ""
    """Dataset to train on: a .npz (dtrl), .hdf5 (D4RL) file, a Minari directory or id, or 'quickstart'."""
    env: str = ""
    """Gymnasium id for evaluation; empty means the dataset's recorded env."""
    out_dir: str = "runs/dt"
    """Run directory: resolved config, metrics, TensorBoard logs and checkpoints."""
    seed: int = 0
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    num_threads: int = 0
    """CPU threads for torch; 0 keeps torch's default."""
    precision: str = "fp32"
    """'fp32' (exact) or 'bf16': forward and loss under bfloat16 autocast, weights and optimizer
    in float32 (faster on GPUs and on CPUs with AMX; see docs/performance.md)."""
    compile: bool = False
    """torch.compile the model (on CUDA with CUDA graphs); falls back to eager with a warning
    when compilation fails."""
    model: ModelConfig = field(default_factory=ModelConfig)
    top_fraction: float = 1.0
    """Train on the highest-return episodes that hold this fraction of all timesteps, as the paper's
    pct_traj (0.1 with model.kind=mlp: %BC); state statistics still come from every episode."""
    val_fraction: float = 0.0
    """Hold out this fraction of whole episodes (at least one, chosen with ``seed``, listed in the run's
    val_episodes.json) for val/loss, logged every log_every steps; 0: train on every episode."""
    reward_scale: float = 1000.0
    """Returns-to-go are divided by this inside the model (1000 for gym, 1 for Atari)."""
    batch_size: int = 64
    steps: int = 100_000
    """Gradient steps."""
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    weight_decay_matrices_only: bool = False
    """Decay only the weight matrices of linear and convolution layers, sparing biases, LayerNorms and
    embeddings (minGPT; the paper's Atari code); false: every parameter (the paper's gym code)."""
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adamw"
    """'adamw' (the paper's) or 'lamb': LAMB (torch-optimizer's, configured as Online DT's code's; `pip install
    "dtrl[odt]"`) with the same learning rate, weight decay, betas and schedule."""
    temperature_learning_rate: float = 0.0
    """model.stochastic_policy: > 0 gives the learned temperature its own Adam at this constant rate, no
    warm-up and no weight decay (Online DT: 1e-4); 0: it is a parameter of the main optimizer."""
    in_episode_segments: bool = False
    """Keep every training segment inside its episode, K real steps (the paper's Atari code): one that would
    run past its episode's end ends there instead; false: it is cut there and left-padded (the gym code)."""
    warmup_steps: int = 10_000
    """Linear learning-rate warm-up from 0; then constant, or decayed by ``lr_decay``."""
    lr_decay: str = "none"
    """After the warm-up: "none" keeps the rate constant (the paper's gym runs); "cosine" lowers it
    along a half cosine to 10% at ``steps`` (the paper's Atari runs, as minGPT)."""
    grad_clip: float = 0.25
    """Clip the gradient's global norm; 0 disables."""
    log_every: int = 100
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    eval_every: int = 0
    """Evaluate in the environment every N steps (0: only at the end)."""
    eval_episodes: int = 10
    eval_max_episode_steps: int = 0
    """Cut evaluation episodes off after this many steps; 0: the environment's own limit (Atari: 27,000)."""
    eval_sample_actions: bool = False
    """Sample actions from the predicted distribution (the paper's Atari evaluation; Online DT's
    Gaussian with model.stochastic_policy) rather than take its mode; a deterministic head acts as usual."""
    target_returns: list[float] = field(default_factory=list)
    """Targets to evaluate at; empty: the best return in the dataset."""
    wandb: bool = False
    """Also log metrics to Weights & Biases (needs `pip install wandb`; WANDB_PROJECT, WANDB_MODE etc. apply)."""

    def validate(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise DtrlError(f"model={self.model!r} must be a ModelConfig (a mapping of model.KEY=VALUE)")
        self.model.validate()
        check_fields(self)
        check_memory(self)


@dataclass
class FinetuneConfig:
    """Online fine-tuning of a stochastic-policy checkpoint (`dtrl finetune`, Online DT).

    Defaults follow ODT's gym settings (buffer, updates per rollout, learning rate,
    weight decay), with a CPU-sized online budget and a fresh AdamW; ``continue_optimizer``
    continues the pre-training optimiser instead, as ODT's code does.
    """

    env: str = ""
    """Gymnasium id to fine-tune in; empty: the env the checkpoint was trained for."""
    steps: int = 10_000
    """Online budget: environment steps collected in total."""
    out_dir: str = "runs/finetune"
    target_return: float | None = None
    """Return the rollouts are conditioned on; None: the evaluation target plus its magnitude
    (twice a positive target, ODT's choice; 0 for a negative one, e.g. Pendulum)."""
    eval_target: float | None = None
    """Return the evaluation is conditioned on; None: the best return in the offline data."""
    rollouts_per_iteration: int = 1
    """Episodes collected (in parallel) before each round of updates."""
    updates_per_iteration: int = 300
    """Gradient steps after each round of rollouts."""
    buffer_size: int = 1000
    """Replay capacity in trajectories; it starts with the offline data's best trajectories."""
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 5e-4
    continue_optimizer: bool = False
    """Continue the checkpoint's optimiser (its moments, step count and learning-rate schedule, the
    temperature's own optimiser included) with the training run's optimisation settings, as Online DT's
    code does; learning_rate and weight_decay are then unused. False: a fresh AdamW at learning_rate,
    constant."""
    grad_clip: float = 0.25
    eval_episodes: int = 10
    eval_every: int = 0
    """Evaluate every N environment steps (0: only before and after fine-tuning)."""
    seed: int = 0
    """Seeds rollouts (episodes start from env seed 1,000,000 + max(100,000, steps)·seed on), action sampling and dropout."""
    eval_seed: int = 0
    """Evaluation episode i starts from seed eval_seed + i, before and after fine-tuning alike."""
    device: str = "auto"

    def validate(self) -> None:
        check_fields(self)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["model.n_layer=2", "steps=500"]`` into a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise DtrlError(f"override {item!r} is not of the form key=value (e.g. model.n_layer=2)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


ENV_PREFIX = "DTRL_"
OWN_ENV_VARS = {
    "DTRL_DATA_DIR": "the dataset cache directory (dtrl.data.cache)",
}
"""dtrl's own variables: settings of their own, never read as config overrides (docs/configuration.md)."""


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``DTRL_*`` variables: ``DTRL_DEVICE=cpu``, ``DTRL_MODEL__N_LAYER=2`` (``__`` nests).

    Lets a machine or a CI job set defaults (device, threads) once for every
    command without editing config files; values are parsed as YAML, like overrides.
    dtrl's own variables (:data:`OWN_ENV_VARS`) are not overrides.
    """
    out: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in OWN_ENV_VARS:
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        layer = parse_overrides([f"{key}={environ[name]}"])
        try:
            from_dict(TrainConfig, layer)
        except DtrlError as e:
            raise DtrlError(f"environment variable {name}: {e}; fix or unset it") from None
        out = merge(out, layer)
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> TrainConfig:
    """Config precedence: defaults < YAML file < ``DTRL_*`` environment variables < overrides."""
    cfg = from_dict(TrainConfig, config_layers(path, overrides, environ))
    cfg.validate()
    return cfg


def config_layers(
    path: str | Path | None = None, overrides: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The keys set explicitly, by the YAML file, ``DTRL_*`` variables and overrides, merged in that order:
    what ``--resume`` compares with the run's saved config."""
    data = read_yaml_file(Path(path)) if path is not None else {}
    data = merge(data, env_overrides(os.environ if environ is None else environ))
    return merge(data, parse_overrides(overrides or []))


def read_yaml_file(path: Path) -> dict[str, Any]:
    """A YAML config file as a mapping: missing, a directory, unreadable or not a mapping is one line."""
    return read_yaml(path, "give a YAML file (see configs/)", "config file ", "write KEY: VALUE lines")


def read_saved_config(path: Path) -> TrainConfig:
    """A run's resolved ``config.yaml`` (or its copy beside an exported policy), checked: one line naming the file."""
    data = read_yaml(path, RUN_CONFIG_FIX)
    try:
        config = from_dict(TrainConfig, data)
        config.validate()
    except DtrlError as e:
        raise DtrlError(f"{path} is not a valid run config ({e}): {RUN_CONFIG_FIX}") from None
    return config


RESUMABLE = (
    "steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_every",
    "eval_episodes",
    "eval_max_episode_steps",
    "eval_sample_actions",
    "target_returns",
    "env",
    "wandb",
    "num_threads",
    "device",
    "compile",
    "out_dir",
)
"""Keys a resumed run may change: how long it runs, when it logs, checkpoints and evaluates, and where it
runs; not what it learns (the data, the model, the optimisation)."""


def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"n_layer": 2}}`` -> ``{"model.n_layer": 2}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def resumed_config(saved: TrainConfig, explicit: Mapping[str, Any], where: Path) -> TrainConfig:
    """The saved config with the explicitly given keys applied where that is safe (:data:`RESUMABLE`);
    any other key that differs is refused in one line that names it."""
    new = from_dict(TrainConfig, merge(to_dict(saved), dict(explicit)))
    new.validate()
    old_flat, new_flat = flat(to_dict(saved)), flat(to_dict(new))
    changed = [k for k in new_flat if new_flat[k] != old_flat.get(k) and k not in RESUMABLE]
    if changed:
        shown = ", ".join(f"{k} ({old_flat.get(k)!r} -> {new_flat[k]!r})" for k in changed)
        raise DtrlError(
            f"cannot resume {where} with a different {shown}: that would change what the run learns; "
            f"resume with the values in {where / 'config.yaml'}, or train into a new out_dir"
        )
    return new
