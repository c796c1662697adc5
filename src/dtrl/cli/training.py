"""``dtrl train | eval | finetune``: train a policy and measure it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from dtrl.cli.app import FORCE_HELP, app
from dtrl.cli.display import console, eval_progress, progress_bar, results_table, train_with_progress
from dtrl.config import FinetuneConfig
from dtrl.errors import DtrlError


@app.command(
    epilog="Examples:\n\n  dtrl train -c configs/hopper.yaml\n\n"
    "  dtrl train dataset=quickstart steps=2000 model.n_layer=2 out_dir=runs/small\n\n"
    "  dtrl train -c configs/hopper.yaml --resume\n\n"
    "  dtrl train -c configs/hopper.yaml out_dir=runs/hopper --seeds 0,1,2   (one process, runs/hopper/seed_N)\n\n"
    "  torchrun --nproc-per-node 4 -m dtrl train -c configs/hopper.yaml   (data-parallel, docs/scaling.md)"
)
def train(
    overrides: list[str] | None = typer.Argument(
        None, help="Config overrides key=value (e.g. model.n_layer=2 steps=500)."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file; overrides win over it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in out_dir from its newest checkpoint."),
    seeds: str | None = typer.Option(
        None,
        "--seeds",
        help="Train these seeds (e.g. 0,1,2) stacked in one process with torch.func.vmap; "
        "seed N's run goes to OUT_DIR/seed_N (docs/performance.md).",
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
        console.print(
            f"final val/loss {result.val_losses[-1][1]:.4f}; lowest at step {best.get('step')} "
            f"({best.get('val_loss', float('nan')):.4f}), marked in checkpoints/best.json"
        )
    console.print(f"checkpoint: {result.checkpoint}")
    if result.eval_results:
        console.print(results_table("evaluation", result.eval_results))


def _train_stacked(cfg, seeds: str, resume: bool, overrides: dict) -> None:
    """``dtrl train --seeds``: every seed's run in one process, then each one's checkpoint and evaluation."""
    from functools import partial

    from dtrl.train.stacked import parse_seeds, train_stacked

    results = train_with_progress(cfg, resume, overrides, train=partial(train_stacked, seeds=parse_seeds(seeds)))
    for result in results:
        if result.losses:
            console.print(
                f"{result.run_dir.name}: final train/loss {result.losses[-1][1]:.4f} "
                f"(first logged {result.losses[0][1]:.4f})"
            )
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
    env: str | None = typer.Option(None, "--env", help="Gymnasium id (default: the env the policy was trained for)."),
    target_return: list[float] | None = typer.Option(
        None, "--target-return", "-r", help="Target return(s); several may follow one flag."
    ),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Episodes per target, run in parallel."),
    seed: int = typer.Option(0, "--seed", min=0, help="Episode i of every target starts from seed + i."),
    device: str = typer.Option("auto", "--device", envvar="DTRL_DEVICE", help="auto, cpu, cuda or cuda:N."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the results as JSON here."),
    video: Path | None = typer.Option(
        None, "--video", help="Also record episode 0 of each target as an MP4 into this directory."
    ),
    kv_cache: bool = typer.Option(
        False,
        "--kv-cache",
        help="Decode incrementally with a key/value cache (faster; sliding-window attention past K).",
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="Without --target-return: report the action error on this dataset's episodes "
        "(no simulator). For a transformers directory: its state statistics, unless --state-stats.",
    ),
    state_stats: Path | None = typer.Option(
        None, "--state-stats", help="A transformers directory's state statistics: JSON with state_mean and state_std."
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Evaluate a policy in the simulator at one or more target returns, or on a dataset's logged actions."""
    from dtrl.evaluate import evaluate
    from dtrl.hf import is_transformers_dir
    from dtrl.io import write_json
    from dtrl.outputs import check_output

    targets = _target_returns(ctx, target_return)
    if output:
        check_output(output, "--output", force=force)
    if video:
        check_output(video, "--video", directory=True, force=force)

    needs_data = not targets or (state_stats is None and is_transformers_dir(checkpoint))
    data = _open_dataset(dataset) if needs_data else None
    policy = load_policy(checkpoint, device, kv_cache, state_stats, data)
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


def _target_returns(ctx: typer.Context, given: list[float] | None) -> list[float]:
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


def _open_dataset(source: str | None):
    from dtrl.data.readers import open_dataset

    return open_dataset(source) if source else None


def load_policy(checkpoint: Path, device: str, kv_cache: bool = False, state_stats: Path | None = None, data=None):
    """dtrl.load; a transformers directory's state statistics from --state-stats, else from the dataset."""
    from dtrl.hf import dataset_state_stats, is_transformers_dir
    from dtrl.policy import load

    if state_stats is None and data is not None and is_transformers_dir(checkpoint):
        return load(checkpoint, device, kv_cache, dataset_state_stats(data))
    return load(checkpoint, device, kv_cache, state_stats)


def _offline_eval(policy, data, output: Path | None) -> None:
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
    checkpoint: Path = typer.Argument(
        ..., help="Run directory or checkpoint of a model trained with model.stochastic_policy=true."
    ),
    env: str | None = typer.Option(None, "--env", help="Gymnasium id (default: the env the policy was trained for)."),
    steps: int = typer.Option(_FT.steps, "--steps", min=1, help="Online budget: environment steps to collect."),
    out_dir: Path = typer.Option(Path(_FT.out_dir), "--out-dir", help="Where the fine-tuned run is written."),
    target_return: float | None = typer.Option(
        None,
        "--target-return",
        help="Return the rollouts are conditioned on (default: twice a positive --eval-target, 0 for a negative one).",
    ),
    eval_target: float | None = typer.Option(
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
        _FT.continue_optimizer,
        "--continue-optimizer",
        help="Continue the checkpoint's optimiser, step count and learning-rate schedule, as ODT (then --learning-rate is unused).",
    ),
    eval_episodes: int = typer.Option(_FT.eval_episodes, "--eval-episodes", min=1),
    eval_every: int = typer.Option(_FT.eval_every, "--eval-every", min=0, help="Also evaluate every N env steps."),
    seed: int = typer.Option(_FT.seed, "--seed", min=0, help="Seeds rollouts, action sampling and dropout."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Offline data that seeds the replay buffer (default: the run's training dataset)."
    ),
    device: str = typer.Option(_FT.device, "--device", envvar="DTRL_DEVICE", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Fine-tune a stochastic-policy DT online in the simulator (Online Decision Transformer)."""
    # Every option named after a FinetuneConfig field sets it (defaults come from the config too);
    # the fields without an option keep their defaults.
    options = {name: value for name, value in locals().items() if name in FinetuneConfig.__dataclass_fields__}
    config = FinetuneConfig(**{**options, "env": env or "", "out_dir": str(out_dir)})
    config.validate()
    from dtrl.runs import training_dataset
    from dtrl.train.finetune import finetune as run_finetune

    data = training_dataset(checkpoint, dataset)
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
        table.add_row(
            name, f"{r.mean:.1f} ± {r.std:.1f}", f"{norm[0]:.1f} ± {norm[1]:.1f}" if norm else "-", str(len(r.returns))
        )
    console.print(table)
    console.print(f"checkpoint: {result.checkpoint}", soft_wrap=True, highlight=False)
