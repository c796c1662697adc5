"""Share a trained policy: a policy directory with a model card, TorchScript, ONNX or transformers.

``policy`` copies ``config.json`` + ``model.safetensors`` (what :func:`dtrl.load`
reads) and writes a ``README.md`` model card: dataset, score, commands.
``torchscript`` and ``onnx`` write one self-contained graph,
:class:`WindowPolicy`, that needs neither dtrl nor Python's torch on the other
side (ONNX): it takes the last K steps in the environment's own units, with
the state normalisation, return scaling and action mapping built in, and
returns the action for the newest step. ``transformers`` writes a
``DecisionTransformerModel.save_pretrained`` directory (:mod:`dtrl.hf`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dtrl import __version__
from dtrl.checkpoint import PolicySpec, load_policy_files, write_policy
from dtrl.data.normalizer import env_actions, model_actions, normalized_states
from dtrl.errors import DtrlError
from dtrl.hf import STATE_STATS_FILE, export_transformers
from dtrl.io import atomic_write
from dtrl.models import DecisionTransformer
from dtrl.outputs import check_output, staged_directory
from dtrl.policy import model_with_weights
from dtrl.runfiles import CONFIG_FILE, EXPORTED_CONFIG_FILE, RUN_CONFIG_FILE, WEIGHTS_FILE
from dtrl.runs import final_evaluation, run_dir_of, training_config

FORMATS = ("policy", "torchscript", "onnx", "transformers")
TORCHSCRIPT_FILE = "policy.torchscript.pt"
ONNX_FILE = "policy.onnx"
INPUT_NAMES = ["returns_to_go", "observations", "actions", "timesteps", "mask"]


class WindowPolicy(nn.Module):
    """The action for the newest of K steps, from raw env-unit inputs (one fixed-shape graph).

    Inputs, each with the window's K steps oldest first and a batch dimension:
    ``returns_to_go`` (B, K) float, the return still to collect at each step;
    ``observations`` (B, K, obs_dim) float; ``actions`` (B, K, act_dim) float, or
    (B, K) int64 for discrete actions, the actions taken (the newest row is
    ignored); ``timesteps`` (B, K) int64, the step within the episode; ``mask``
    (B, K) bool, False on left padding while fewer than K steps exist.
    Output: (B, act_dim) actions, or (B,) int64 discrete actions.
    """

    def __init__(self, model: DecisionTransformer, spec: PolicySpec) -> None:
        super().__init__()
        self.model = model.eval()
        norm, space = spec.normalizer, spec.action_space
        self.reward_scale = float(spec.reward_scale)
        self.discrete = spec.model.discrete
        self.bounded = norm.get("action_low") is not None
        self.action_start = int(space.get("start", 0)) if self.discrete else 0
        K = spec.model.context_length  # the policy acts on the newest eval_context_length steps (Online DT's padding)
        self.register_buffer("recent", torch.arange(K) >= K - (spec.model.eval_context_length or K))
        self.register_buffer("state_mean", torch.tensor(norm["state_mean"], dtype=torch.float32))
        self.register_buffer("state_std", torch.tensor(norm["state_std"], dtype=torch.float32))
        # unbounded boxes and discrete actions pass through, as in dtrl.data.normalizer.Normalizer
        self.register_buffer("action_low", torch.tensor(norm["action_low"] if self.bounded else [0.0]))
        self.register_buffer("action_high", torch.tensor(norm["action_high"] if self.bounded else [0.0]))

    def forward(
        self,
        returns_to_go: torch.Tensor,
        observations: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        states = normalized_states(observations.flatten(2), self.state_mean, self.state_std)
        if self.discrete:
            past = (actions - self.action_start).clamp(min=0)
            taken = torch.cat([past[:, :-1], torch.zeros_like(past[:, -1:])], dim=1)
        else:
            past = actions.flatten(2)
            if self.bounded:
                past = model_actions(past, self.action_low, self.action_high)
            taken = torch.cat([past[:, :-1], torch.zeros_like(past[:, -1:])], dim=1)
        mask = mask & self.recent
        pred = self.model(returns_to_go / self.reward_scale, states, taken, timesteps, mask)[:, -1]
        if self.discrete:
            return pred.argmax(dim=-1) + self.action_start
        if self.bounded:
            pred = env_actions(pred, self.action_low, self.action_high)
            return torch.minimum(torch.maximum(pred, self.action_low), self.action_high)
        return pred


def load_window_policy(path: str | Path) -> tuple[WindowPolicy, PolicySpec, Path]:
    spec, weights, directory = load_policy_files(path)
    model = model_with_weights(spec, weights, directory)
    return WindowPolicy(model, spec).eval().requires_grad_(False), spec, directory


def example_inputs(spec: PolicySpec, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Zero inputs of the shapes :class:`WindowPolicy` takes: a full window of K real steps."""
    K, cfg = spec.model.context_length, spec.model
    actions = torch.zeros(batch, K, dtype=torch.long) if cfg.discrete else torch.zeros(batch, K, cfg.action_dim)
    return (
        torch.zeros(batch, K),
        torch.zeros(batch, K, cfg.observation_dim),
        actions,
        torch.arange(K).repeat(batch, 1),
        torch.ones(batch, K, dtype=torch.bool),
    )


def export_torchscript(window: WindowPolicy, spec: PolicySpec, out: Path) -> Path:
    """Trace the window policy; the batch size stays free."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # unpacking q, k, v: a fixed 3, safe
        traced = torch.jit.trace(window, example_inputs(spec, batch=2), check_trace=False)
    path = out / TORCHSCRIPT_FILE
    atomic_write(path, lambda f: torch.jit.save(traced, f))
    return path


def export_onnx(window: WindowPolicy, spec: PolicySpec, out: Path) -> Path:
    """Export with a dynamic batch size; run it with onnxruntime (the ``export`` extra).

    The TorchScript-based exporter takes well under a second where the
    torch.export one takes tens of seconds for the same graph and needs
    onnxscript; it stays available in every torch that dtrl supports.
    """
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            window,
            example_inputs(spec, batch=2),
            buffer,
            input_names=INPUT_NAMES,
            output_names=["action"],
            dynamic_axes={name: {0: "batch"} for name in [*INPUT_NAMES, "action"]},
            dynamo=False,
        )
    path = out / ONNX_FILE
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def _score_lines(evaluation: list[dict[str, Any]] | None, step: int) -> list[str]:
    if not evaluation:
        return ["No evaluation is recorded for this checkpoint: run `dtrl eval` on it."]
    lines = [
        f"Evaluated in the simulator at the end of training (step {step}):",
        "",
        "| target return | return (mean ± std) | normalised score | episodes |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in evaluation:
        norm = f"{r['normalized_mean']:.1f} ± {r['normalized_std']:.1f}" if "normalized_mean" in r else "-"
        lines.append(
            f"| {r['target_return']:g} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | {norm} | {r['episodes']} |"
        )
    return lines


def model_card(spec: PolicySpec, source: Path, fmt: str, files: list[str], command: str, params: int) -> str:
    """A README.md that says what the policy is, how well it does and how to use and reproduce it."""
    run = run_dir_of(source)
    evaluation = final_evaluation(run, source) if run is not None else None
    cfg = spec.model
    env = spec.env_id or "ENV_ID"
    target = evaluation[-1]["target_return"] if evaluation else 1000
    usage = {
        "policy": [
            "```python",
            "import gymnasium as gym",
            "import dtrl",
            "",
            'policy = dtrl.load("PATH/TO/THIS/DIRECTORY")',
            f'env = gym.make("{env}")',
            "obs, _ = env.reset(seed=0)",
            f"policy.reset(target_return={target:g})",
            "reward, done = 0.0, False",
            "while not done:",
            "    action = policy.act(obs, reward)",
            "    obs, reward, terminated, truncated, _ = env.step(action)",
            "    done = terminated or truncated",
            "```",
            "",
            f"or `dtrl eval PATH/TO/THIS/DIRECTORY --env {env} --target-return {target:g}`.",
        ],
        "torchscript": [
            f'`torch.jit.load("{TORCHSCRIPT_FILE}")(returns_to_go, observations, actions, timesteps, mask)`',
            "returns the action for the newest of the last K steps; see below for the inputs.",
        ],
        "onnx": [
            f'`onnxruntime.InferenceSession("{ONNX_FILE}").run(None, {{name: array, ...}})` with the inputs',
            f"{', '.join(INPUT_NAMES)} returns the action for the newest of the last K steps; see below.",
        ],
        "transformers": [
            '`transformers.DecisionTransformerModel.from_pretrained("PATH/TO/THIS/DIRECTORY")` loads it; drive it as',
            f"the transformers tutorial's `get_action` does, with K = {cfg.context_length} steps, states normalised by",
            f"`state_mean` and `state_std` from `{STATE_STATS_FILE}` and returns-to-go divided by its `reward_scale`",
            f"({spec.reward_scale:g}). `predict_state` and `predict_return` are zeros: dtrl trains the action head only.",
            f"`dtrl eval PATH/TO/THIS/DIRECTORY --env {env} --target-return {target:g}` runs it in dtrl.",
        ],
    }[fmt]
    if fmt in ("torchscript", "onnx"):
        usage += [
            "",
            f"Inputs, K = {cfg.context_length} steps oldest first, left-padded with `mask` False while fewer exist:",
            "`returns_to_go` (B, K) float32, the return still to collect, in the env's reward units;",
            f"`observations` (B, K, {cfg.observation_dim}) float32, raw; `actions` "
            + ("(B, K) int64" if cfg.discrete else f"(B, K, {cfg.action_dim}) float32")
            + ", the actions taken, newest row ignored;",
            "`timesteps` (B, K) int64, the step within the episode; `mask` (B, K) bool.",
            "Normalisation and return scaling are inside the graph.",
        ]
    config = training_config(source)
    training = ["No training configuration was found beside this policy."]
    if config is not None:
        training = [
            f"The resolved training configuration is `{EXPORTED_CONFIG_FILE}` in this directory; to train it again:",
            "",
            "```bash",
            f"dtrl train -c {EXPORTED_CONFIG_FILE} out_dir=runs/reproduced",
            "```",
        ]
        if config.dataset != "quickstart":
            training.append("(`dataset` in it is a path on the machine that trained it.)")
    lines = [
        f"{CARD_TITLE}: {spec.dataset or 'policy'}" + (f" on {spec.env_id}" if spec.env_id else ""),
        "",
        f"A return-conditioned Decision Transformer policy, exported by dtrl {__version__} as `{fmt}`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| dataset | {spec.dataset or 'unknown'} |",
        f"| environment | {spec.env_id or 'unknown'} |",
        f"| training steps | {spec.step} |",
        f"| model | n_layer {cfg.n_layer}, n_head {cfg.n_head}, width {cfg.n_embd}, K = {cfg.context_length}, "
        f"{params:,} parameters |",
        f"| files | {', '.join(f'`{f}`' for f in files)} |",
        "",
        "## Score",
        "",
        *_score_lines(evaluation, spec.step),
        "",
        "## Use",
        "",
        *usage,
        "",
        "## Reproduce",
        "",
        *training,
        "",
        f"Exported with `{command}`.",
        "",
    ]
    return "\n".join(lines)


CARD_TITLE = "# Decision Transformer"
"""How every model card begins: marks a directory that `dtrl export` made."""


def export(source: str | Path, fmt: str, out: str | Path, command: str, force: bool = False) -> list[Path]:
    """Write ``fmt`` of the policy at ``source`` (run, checkpoint or policy dir) into ``out``, with a model card.

    ``out`` must be new, empty or an earlier export unless ``force``; every file appears at once (staged)."""
    if fmt not in FORMATS:
        raise DtrlError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    window, spec, directory = load_window_policy(source)
    if out.resolve() == directory.resolve():
        raise DtrlError(f"--out {out} is the policy being exported: choose another directory")
    check_output(out, "--out", directory=True, force=force)
    if not force and out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise DtrlError(
            f"--out {out} is a directory with files that dtrl export did not write: choose another path, "
            "or pass --force to write into it"
        )
    with staged_directory(out) as stage:
        names = [p.name for p in _write_export(window, spec, directory, fmt, stage, command)]
    return [out / name for name in names]


def _is_export(path: Path) -> bool:
    card = path / "README.md"
    return card.is_file() and card.read_bytes().startswith(CARD_TITLE.encode())


def _write_export(
    window: WindowPolicy, spec: PolicySpec, directory: Path, fmt: str, out: Path, command: str
) -> list[Path]:
    if fmt == "policy":
        write_policy(out, spec, window.model.state_dict())
        written = [out / CONFIG_FILE, out / WEIGHTS_FILE]
    elif fmt == "torchscript":
        written = [export_torchscript(window, spec, out)]
    elif fmt == "onnx":
        written = [export_onnx(window, spec, out)]
    else:
        written = export_transformers(window.model, spec, out)
    run = run_dir_of(directory)
    config_file = run / RUN_CONFIG_FILE if run is not None else directory / EXPORTED_CONFIG_FILE
    if config_file.is_file():  # a run's config, or the copy beside a policy exported before
        config_text = config_file.read_bytes()
        atomic_write(out / EXPORTED_CONFIG_FILE, lambda f: f.write(config_text))
        written.append(out / EXPORTED_CONFIG_FILE)
    files = [p.name for p in written] + ["README.md"]
    card = model_card(spec, directory, fmt, files, command, window.model.num_parameters()).encode()
    atomic_write(out / "README.md", lambda f: f.write(card))
    return [*written, out / "README.md"]
