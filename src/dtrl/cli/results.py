"""``dtrl calibrate | plot | export``: what a trained policy did, drawn, and the policy shared."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from dtrl.cli.app import FORCE_HELP, app
from dtrl.cli.display import console, eval_progress
from dtrl.cli.training import load_policy
from dtrl.errors import DtrlError


@app.command(
    epilog="Examples:\n\n  dtrl calibrate runs/quickstart   (writes runs/quickstart/calibration.json)\n\n"
    "  dtrl calibrate runs/hopper --points 12 --episodes 20\n\n"
    "  dtrl calibrate exported/policy --dataset data/hopper-medium.npz -o calibration.json",
)
def calibrate(
    checkpoint: Path = typer.Argument(..., help="Run directory, checkpoint or policy directory."),
    points: int = typer.Option(10, "--points", "-p", min=2, help="Targets from 0 to 1.2x the dataset's best return."),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Episodes per target, all run in parallel."),
    env: str | None = typer.Option(None, "--env", help="Gymnasium id (default: the env the policy was trained for)."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="The training dataset (default: the one in the run's config.yaml)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Episode i of every target starts from seed + i."),
    device: str = typer.Option("auto", "--device", envvar="DTRL_DEVICE", help="auto, cpu, cuda or cuda:N."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Default: CHECKPOINT/calibration.json."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Sweep target returns and record the achieved return: calibration.json, drawn by `dtrl plot`."""
    from dtrl.calibrate import calibrate as run_calibration
    from dtrl.calibrate import write_calibration
    from dtrl.outputs import check_output
    from dtrl.runfiles import CALIBRATION_FILE
    from dtrl.runs import training_dataset

    default = Path(checkpoint) / CALIBRATION_FILE
    path = check_output(output or default, "--output", force=force, own=default)
    data = training_dataset(checkpoint, dataset)
    policy = load_policy(checkpoint, device, data=data)
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
    runs: list[Path] = typer.Argument(..., help="Run directories; runs differing only in seed are averaged."),
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
