"""The ``dtrl`` command line.

Every command turns a :class:`DtrlError` into one line on stderr and exit code
2; ``dtrl --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dtrl import __version__
from dtrl.config import FinetuneConfig
from dtrl.data import commands as data_commands
from dtrl.errors import DtrlError

app = typer.Typer(
    help="Decision Transformers: train on offline RL datasets and evaluate in the simulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
data_app = typer.Typer(
    help="Collect, inspect, convert and export offline datasets.",
    no_args_is_help=True,
    epilog="Examples:\n\n  dtrl data info quickstart\n\n  dtrl data convert hopper-medium-v2.hdf5 data/hopper.npz --env Hopper-v5",
)
app.add_typer(data_app, name="data")
data_commands.register(data_app)  # collect, export, list
console = Console()
err_console = Console(stderr=True)
_debug = {"on": False}
FORCE_HELP = "Write even into a checkpoint, a run directory's top level or over an existing file that this command did not make."


def _version(value: bool) -> None:
    if value:
        console.print(f"dtrl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _debug["on"] = debug


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Progress]:
    """A rich progress bar with ETA; silent when stdout is not a terminal (CI logs)."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with bar:
        bar.add_task(description, total=total, info="")
        yield bar


def train_with_progress(config, resume: bool = False, overrides: dict | None = None, train=None):
    """Train with a progress bar showing the loss; prints a line per log interval when not a terminal.

    ``train``: the training function (default :func:`dtrl.train.train`; stacked seeds pass theirs)."""
    if train is None:
        from dtrl.train import train

    start = 0

    with progress_bar("train", config.steps) as bar:
        task = bar.task_ids[0]

        def on_step(step: int, loss: float | None) -> None:
            nonlocal start
            if not start:
                start = step
                bar.update(task, completed=step - 1)
            bar.update(task, completed=step, info=f"loss {loss:.4f}" if loss is not None else "")
            if not console.is_terminal and (step % config.log_every == 0 or step == config.steps):
                console.print(f"step {step}/{config.steps}  loss {loss:.4f}")

        return train(config, resume=resume, overrides=overrides, on_step=on_step)


@contextmanager
def eval_progress(env_id: str, episodes: int) -> Iterator[Callable[[int], None]]:
    """An ``on_step`` for evaluate(): env steps against the episode limit; silent when not a terminal."""
    import gymnasium as gym

    from dtrl.envs import check_env_id

    check_env_id(env_id)
    last = 0
    with progress_bar(f"eval ({episodes} episodes)", gym.spec(env_id).max_episode_steps) as bar:
        task = bar.task_ids[0]

        def on_step(step: int) -> None:
            nonlocal last
            last = step
            bar.update(task, completed=step, info=f"env step {step}")

        yield on_step
        bar.update(task, total=last, completed=last)  # every episode ended before the limit


def results_table(title: str, results, baseline=None) -> Table:
    table = Table(title=title)
    for col in ("policy", "target return", "return (mean ± std)", "normalised score", "episodes"):
        table.add_column(col, justify="right")
    rows = ([("random", baseline)] if baseline is not None else []) + [("DT", r) for r in results]
    for name, r in rows:
        norm = r.normalized
        table.add_row(
            name,
            "-" if r.target_return is None else f"{r.target_return:g}",
            f"{r.mean:.1f} ± {r.std:.1f}",
            f"{norm[0]:.1f} ± {norm[1]:.1f}" if norm else "-",
            str(len(r.returns)),
        )
    return table


# ----------------------------------------------------------------------------- commands
@app.command(
    epilog="Examples:\n\n  dtrl train -c configs/hopper.yaml\n\n"
    "  dtrl train dataset=quickstart steps=2000 model.n_layer=2 out_dir=runs/small\n\n"
    "  dtrl train -c configs/hopper.yaml --resume\n\n"
    "  dtrl train -c configs/hopper.yaml out_dir=runs/hopper --seeds 0,1,2   (one process, runs/hopper/seed_N)\n\n"
    "  torchrun --nproc-per-node 4 -m dtrl train -c configs/hopper.yaml   (data-parallel, docs/scaling.md)"
)
def train(
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value (e.g. model.n_layer=2 steps=500)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file; overrides win over it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in out_dir from its newest checkpoint."),
    seeds: Optional[str] = typer.Option(
        None, "--seeds", help="Train these seeds (e.g. 0,1,2) stacked in one process with torch.func.vmap; "
        "seed N's run goes to OUT_DIR/seed_N (docs/performance.md)."
    ),
) -> None:
    """Train a Decision Transformer from a YAML config plus key=value overrides."""
    from dtrl.config import config_layers, load_config
    from dtrl.distributed import from_env

    cfg = load_config(config, overrides)
    given = config_layers(config, overrides)  # on --resume: applied where safe, refused otherwise
    if seeds is not None:
        _train_stacked(cfg, seeds, resume, given)
        return
    if not from_env().is_main:  # under torchrun, rank 0 alone reports
        from dtrl.train import train as run_training

        run_training(cfg, resume=resume, overrides=given)
        return
    result = train_with_progress(cfg, resume=resume, overrides=given)
    if result.losses:
        console.print(f"final train/loss {result.losses[-1][1]:.4f} (first logged {result.losses[0][1]:.4f})")
    if result.val_losses:
        from dtrl.checkpoint import read_best

        best = read_best(result.run_dir) or {}
        console.print(f"final val/loss {result.val_losses[-1][1]:.4f}; lowest at step {best.get('step')} "
                      f"({best.get('val_loss', float('nan')):.4f}), marked in checkpoints/best.json")
    console.print(f"checkpoint: {result.checkpoint}")
    if result.eval_results:
        console.print(results_table("evaluation", result.eval_results))


def _train_stacked(cfg, seeds: str, resume: bool, overrides: dict) -> None:
    """``dtrl train --seeds``: every seed's run in one process, then each one's checkpoint and evaluation."""
    from functools import partial

    from dtrl.stacked import parse_seeds, train_stacked

    results = train_with_progress(cfg, resume, overrides, train=partial(train_stacked, seeds=parse_seeds(seeds)))
    for result in results:
        if result.losses:
            console.print(f"{result.run_dir.name}: final train/loss {result.losses[-1][1]:.4f} "
                          f"(first logged {result.losses[0][1]:.4f})")
        console.print(f"checkpoint: {result.checkpoint}")
        if result.eval_results:
            console.print(results_table(f"evaluation ({result.run_dir.name})", result.eval_results))


@app.command(
    name="eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Examples:\n\n  dtrl eval runs/hopper --env Hopper-v5 --target-return 3600 1800 --episodes 100\n\n"
    "  dtrl eval runs/quickstart -r 3600 -o eval.json\n\n"
    "  dtrl eval runs/quickstart -r 900 3600 --video videos   (one MP4 per target; pip install 'dtrl\\[video]')\n\n"
    "  dtrl eval hf-model --env Hopper-v5 --dataset quickstart -r 900   (a transformers save_pretrained directory)\n\n"
    "  dtrl eval runs/hopper --dataset data/hopper-expert.npz   (no simulator: the action error on its episodes)",
)
def eval_(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="Run directory, checkpoint or policy directory."),
    env: Optional[str] = typer.Option(None, "--env", help="Gymnasium id (default: the env the policy was trained for)."),
    target_return: Optional[List[float]] = typer.Option(
        None, "--target-return", "-r", help="Target return(s); several may follow one flag."
    ),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Episodes per target, run in parallel."),
    seed: int = typer.Option(0, "--seed", min=0, help="Episode i of every target starts from seed + i."),
    device: str = typer.Option("auto", "--device", envvar="DTRL_DEVICE", help="auto, cpu, cuda or cuda:N."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON here."),
    video: Optional[Path] = typer.Option(
        None, "--video", help="Also record episode 0 of each target as an MP4 into this directory."
    ),
    kv_cache: bool = typer.Option(
        False, "--kv-cache", help="Decode incrementally with a key/value cache (faster; sliding-window attention past K)."
    ),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Without --target-return: report the action error on this dataset's episodes "
        "(no simulator). For a transformers directory: its state statistics, unless --state-stats."
    ),
    state_stats: Optional[Path] = typer.Option(
        None, "--state-stats", help="A transformers directory's state statistics: JSON with state_mean and state_std."
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Evaluate a policy in the simulator at one or more target returns, or on a dataset's logged actions."""
    from dtrl.io import write_json
    from dtrl.evaluate import evaluate
    from dtrl.hf import is_transformers_dir
    from dtrl.outputs import check_output

    targets = _target_returns(ctx, target_return)
    if output:
        check_output(output, "--output", force=force)
    if video:
        check_output(video, "--video", directory=True, force=force)

    needs_data = not targets or (state_stats is None and is_transformers_dir(checkpoint))
    data = _open_dataset(dataset) if needs_data else None
    policy = _load_policy(checkpoint, device, kv_cache, state_stats, data)
    if data is not None and not targets:
        _offline_eval(policy, data, output)
        return
    env_id = env or policy.spec.env_id
    if not env_id:
        raise DtrlError("the policy records no environment: pass --env ID")
    if not targets:
        raise DtrlError("give at least one --target-return R (the return the policy should achieve)")
    if video:
        from dtrl.envs.video import require_moviepy

        require_moviepy()
    with eval_progress(env_id, episodes * len(targets)) as on_step:
        results = evaluate(policy, env_id, targets, episodes, seed, on_step)
    console.print(results_table(f"{env_id}: {episodes} episodes per target", results))
    if output:
        write_json(output, [r.to_dict() for r in results])
    if video:
        from dtrl.evaluate import record_videos

        for path in record_videos(policy, env_id, targets, video, seed):
            console.print(f"video: {path}", soft_wrap=True, highlight=False)


def _target_returns(ctx: typer.Context, given: Optional[List[float]]) -> list[float]:
    """--target-return's values and the numbers after them; a misspelt option is named as one, with the closest."""
    import difflib
    import math

    targets = list(given or [])
    for extra in ctx.args:
        try:
            targets.append(float(extra))
        except ValueError:
            if not extra.startswith("-"):
                raise DtrlError(f"unexpected argument {extra!r}: target returns must be numbers") from None
            options = [opt for param in ctx.command.params for opt in param.opts if opt.startswith("--")]
            close = difflib.get_close_matches(extra.split("=")[0], options, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; options: {', '.join(options)}"
            raise DtrlError(f"no such option {extra!r} for dtrl {ctx.info_name}{hint}") from None
    if bad := [t for t in targets if not math.isfinite(t)]:
        raise DtrlError(f"--target-return {bad[0]}: target returns must be finite numbers")
    return targets


def _open_dataset(source: Optional[str]):
    from dtrl.train import open_dataset

    return open_dataset(source) if source else None


def _load_policy(checkpoint: Path, device: str, kv_cache: bool = False, state_stats: Optional[Path] = None, data=None):
    """dtrl.load; a transformers directory's state statistics from --state-stats, else from the dataset."""
    from dtrl.hf import dataset_state_stats, is_transformers_dir
    from dtrl.policy import load

    if state_stats is None and data is not None and is_transformers_dir(checkpoint):
        return load(checkpoint, device, kv_cache, dataset_state_stats(data))
    return load(checkpoint, device, kv_cache, state_stats)


def _offline_eval(policy, data, output: Optional[Path]) -> None:
    """``dtrl eval --dataset`` without targets: the action error on the dataset's episodes."""
    from dtrl.io import write_json
    from dtrl.validation import offline_report

    report = offline_report(policy, data)
    table = Table(title=f"{data.name}: logged actions predicted from returns-to-go (no simulator)")
    for col in ("episodes", "steps", f"action error ({report['loss']})"):
        table.add_column(col, justify="right")
    table.add_row(str(report["episodes"]), str(report["steps"]), f"{report['action_error']:.4f}")
    console.print(table)
    if output:
        write_json(output, report)


_FT = FinetuneConfig()


@app.command(
    epilog="Examples:\n\n  dtrl train dataset=quickstart model.stochastic_policy=true out_dir=runs/odt\n\n"
    "  dtrl finetune runs/odt --env Hopper-v5 --steps 10000 --out-dir runs/odt-online\n\n"
    "  dtrl finetune runs/odt --steps 200000 --updates-per-iteration 300 --batch-size 256   (ODT's gym budget)",
)
def finetune(
    checkpoint: Path = typer.Argument(..., help="Run directory or checkpoint of a model trained with model.stochastic_policy=true."),
    env: Optional[str] = typer.Option(None, "--env", help="Gymnasium id (default: the env the policy was trained for)."),
    steps: int = typer.Option(_FT.steps, "--steps", min=1, help="Online budget: environment steps to collect."),
    out_dir: Path = typer.Option(Path(_FT.out_dir), "--out-dir", help="Where the fine-tuned run is written."),
    target_return: Optional[float] = typer.Option(
        None, "--target-return", help="Return the rollouts are conditioned on (default: twice a positive --eval-target, 0 for a negative one)."
    ),
    eval_target: Optional[float] = typer.Option(
        None, "--eval-target", help="Return the evaluation is conditioned on (default: the dataset's best)."
    ),
    rollouts_per_iteration: int = typer.Option(_FT.rollouts_per_iteration, "--rollouts-per-iteration", min=1),
    updates_per_iteration: int = typer.Option(
        _FT.updates_per_iteration, "--updates-per-iteration", min=1, help="Gradient steps after each round of rollouts."
    ),
    buffer_size: int = typer.Option(_FT.buffer_size, "--buffer-size", min=1, help="Replay capacity in trajectories."),
    batch_size: int = typer.Option(_FT.batch_size, "--batch-size", min=1),
    learning_rate: float = typer.Option(_FT.learning_rate, "--learning-rate"),
    continue_optimizer: bool = typer.Option(
        _FT.continue_optimizer, "--continue-optimizer",
        help="Continue the checkpoint's optimiser, step count and learning-rate schedule, as ODT (then --learning-rate is unused).",
    ),
    eval_episodes: int = typer.Option(_FT.eval_episodes, "--eval-episodes", min=1),
    eval_every: int = typer.Option(_FT.eval_every, "--eval-every", min=0, help="Also evaluate every N env steps."),
    seed: int = typer.Option(_FT.seed, "--seed", min=0, help="Seeds rollouts, action sampling and dropout."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Offline data that seeds the replay buffer (default: the run's training dataset)."
    ),
    device: str = typer.Option(_FT.device, "--device", envvar="DTRL_DEVICE", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Fine-tune a stochastic-policy DT online in the simulator (Online Decision Transformer)."""
    from dtrl.calibrate import dataset_of
    from dtrl.finetune import finetune as run_finetune

    config = FinetuneConfig(
        env=env or "",
        steps=steps,
        out_dir=str(out_dir),
        target_return=target_return,
        eval_target=eval_target,
        rollouts_per_iteration=rollouts_per_iteration,
        updates_per_iteration=updates_per_iteration,
        buffer_size=buffer_size,
        batch_size=batch_size,
        learning_rate=learning_rate,
        continue_optimizer=continue_optimizer,
        eval_episodes=eval_episodes,
        eval_every=eval_every,
        seed=seed,
        device=device,
    )
    config.validate()
    data = dataset_of(checkpoint, dataset)
    with progress_bar("online env steps", steps) as bar:
        task = bar.task_ids[0]

        def on_progress(env_steps: int, rollout_return: float) -> None:
            bar.update(task, completed=min(env_steps, steps), info=f"rollout return {rollout_return:.0f}")

        result = run_finetune(checkpoint, config, data, on_progress)
    title = f"target return {result.online[0].target_return:g}: offline vs fine-tuned ({result.env_steps} env steps)"
    table = Table(title=title)
    for col in ("policy", "return (mean ± std)", "normalised score", "episodes"):
        table.add_column(col, justify="right")
    for name, r in (("offline", result.offline[0]), ("fine-tuned", result.online[0])):
        norm = r.normalized
        table.add_row(name, f"{r.mean:.1f} ± {r.std:.1f}", f"{norm[0]:.1f} ± {norm[1]:.1f}" if norm else "-", str(len(r.returns)))
    console.print(table)
    console.print(f"checkpoint: {result.checkpoint}", soft_wrap=True, highlight=False)


@app.command(
    epilog="Examples:\n\n  dtrl quickstart\n\n  dtrl quickstart --seed 3   (writes runs/quickstart-seed3)\n\n"
    "  dtrl quickstart --steps 500 --episodes 3 --out-dir runs/qs-short"
)
def quickstart(
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", help="Where the run is written (default runs/quickstart, runs/quickstart-seedN for --seed N)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Training seed; evaluation episodes start from it too."),
    steps: int = typer.Option(0, "--steps", min=0, help="Training steps (0: the quickstart default)."),
    episodes: int = typer.Option(30, "--episodes", min=1, help="Evaluation episodes per target."),
) -> None:
    """Train a small DT on the shipped Hopper dataset and check, in the simulator, that it follows the target."""
    from dtrl.quickstart import run

    run(out_dir, steps or None, episodes, console, train_with_progress, results_table, seed=seed)


@data_app.command("info", epilog="Examples:\n\n  dtrl data info quickstart\n\n  dtrl data info data/hopper-medium-v2.hdf5")
def data_info(
    source: str = typer.Argument(..., help="A cached dataset name, .npz, .hdf5 (D4RL) file, Minari dataset dir or id, or 'quickstart'.")
) -> None:
    """Print a dataset's summary statistics, reference scores and provenance."""
    from dtrl.data.commands import info_rows
    from dtrl.train import open_dataset

    table = Table(title=source, show_header=False)
    for k, v in info_rows(open_dataset(source)):
        table.add_row(k, v)
    console.print(table)


@data_app.command(
    "convert",
    epilog="Examples:\n\n  dtrl data convert hopper-medium-v2.hdf5 data/hopper-medium.npz --env Hopper-v5\n\n"
    "  dtrl data convert mujoco/hopper/medium-v0 data/hopper-store --store",
)
def data_convert(
    source: str = typer.Argument(..., help="A .hdf5 (D4RL) file, Minari dataset dir or id, or a .npz."),
    output: Path = typer.Argument(..., help="Output path of the native .npz dataset (a directory with --store)."),
    env: Optional[str] = typer.Option(None, "--env", help="Record this gymnasium id as the dataset's env."),
    store: bool = typer.Option(
        False, "--store", help="Write an on-disk store (memory-mapped in training, for data larger than RAM)."
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Convert a dataset to dtrl's native format (fast to load)."""
    from dtrl.data.commands import check_dataset_output
    from dtrl.data.store import write_store
    from dtrl.train import open_dataset

    output = check_dataset_output(output, "OUTPUT", source, force, native=not store, directory=store)
    dataset = open_dataset(source)
    if env:
        dataset.env_id = env
    written = write_store(dataset, output) if store else dataset.save(output)
    console.print(f"wrote {written} ({dataset.num_episodes} episodes, {len(dataset)} transitions)")


@app.command(
    epilog="Examples:\n\n  dtrl calibrate runs/quickstart   (writes runs/quickstart/calibration.json)\n\n"
    "  dtrl calibrate runs/hopper --points 12 --episodes 20\n\n"
    "  dtrl calibrate exported/policy --dataset data/hopper-medium.npz -o calibration.json",
)
def calibrate(
    checkpoint: Path = typer.Argument(..., help="Run directory, checkpoint or policy directory."),
    points: int = typer.Option(10, "--points", "-p", min=2, help="Targets from 0 to 1.2x the dataset's best return."),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Episodes per target, all run in parallel."),
    env: Optional[str] = typer.Option(None, "--env", help="Gymnasium id (default: the env the policy was trained for)."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="The training dataset (default: the one in the run's config.yaml)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Episode i of every target starts from seed + i."),
    device: str = typer.Option("auto", "--device", envvar="DTRL_DEVICE", help="auto, cpu, cuda or cuda:N."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Default: CHECKPOINT/calibration.json."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Sweep target returns and record the achieved return: calibration.json, drawn by `dtrl plot`."""
    from dtrl.runfiles import CALIBRATION_FILE
    from dtrl.calibrate import calibrate as run_calibration, dataset_of, write_calibration
    from dtrl.outputs import check_output

    default = Path(checkpoint) / CALIBRATION_FILE
    path = check_output(output or default, "--output", force=force, own=default)
    data = dataset_of(checkpoint, dataset)
    policy = _load_policy(checkpoint, device, data=data)
    env_id = env or policy.spec.env_id
    if not env_id:
        raise DtrlError("the policy records no environment: pass --env ID")
    with eval_progress(env_id, points * episodes) as on_step:
        report = run_calibration(policy, env_id, data, points, episodes, seed, on_step)
    table = Table(title=f"{env_id}: return calibration")
    for col in ("target return", f"achieved (mean ± std, {episodes} episodes)"):
        table.add_column(col, justify="right")
    for r in report["results"]:
        table.add_row(f"{r['target_return']:.0f}", f"{r['return_mean']:.1f} ± {r['return_std']:.1f}")
    console.print(table)
    write_calibration(report, path)
    console.print(f"best return in the dataset: {report['dataset_best_return']:.1f}; wrote {path}", soft_wrap=True)


@app.command(
    epilog="Examples:\n\n  dtrl plot runs/quickstart --out plots\n\n"
    "  dtrl plot runs/hopper-s0 runs/hopper-s1 runs/hopper-s2 --out plots   (seeds: mean ± std)",
)
def plot(
    runs: List[Path] = typer.Argument(..., help="Run directories; runs differing only in seed are averaged."),
    out: Path = typer.Option(Path("plots"), "--out", help="Directory for the PNG files."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Draw learning curves (and return calibration, where calibration.json exists) as PNGs."""
    from dtrl.outputs import check_output
    from dtrl.plot import plot_runs

    check_output(out, "--out", directory=True, force=force)
    for path in plot_runs(list(runs), out):
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)


class ExportFormat(str, Enum):
    """Checked by the command line before torch is imported (dtrl.export.FORMATS)."""

    policy = "policy"
    torchscript = "torchscript"
    onnx = "onnx"
    transformers = "transformers"


@app.command(
    epilog="Examples:\n\n  dtrl export runs/quickstart --format policy --out shared/hopper-dt\n\n"
    "  dtrl export runs/quickstart --format torchscript --out exported\n\n"
    "  dtrl export runs/quickstart --format onnx --out exported   (run it with onnxruntime)\n\n"
    "  dtrl export runs/quickstart --format transformers --out hf-dt   (DecisionTransformerModel.from_pretrained)",
)
def export(
    checkpoint: Path = typer.Argument(..., help="Run directory, checkpoint or policy directory."),
    format: ExportFormat = typer.Option(ExportFormat.policy, "--format", "-f", help="What to write."),
    out: Path = typer.Option(..., "--out", help="Directory to write into (created if missing)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Export a policy to share: a policy directory, TorchScript, ONNX or transformers, each with a model card."""
    from dtrl.export import export as run_export

    command = " ".join(["dtrl", *sys.argv[1:]])
    for path in run_export(checkpoint, format.value, out, command, force):
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except DtrlError as e:
        if _debug["on"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except typer.TyperException as e:  # a bad command line (click's usage errors): one line as well
        if type(e).__name__ != "NoArgsIsHelpError":  # that one has shown the help already
            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            message = " ".join(e.format_message().split()) + hint
            err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted: the newest checkpoint is intact; continue with --resume")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
