"""``dtrl quickstart``: the whole pipeline on the shipped Hopper dataset, in minutes on a CPU.

Loads the small real dataset shipped with dtrl (recorded from a PPO agent's
learning-phase snapshots and a random policy; see ``dtrl/assets/README.md``),
trains a small Decision Transformer, evaluates it in the MuJoCo simulator at a
sweep of targets from a quarter of the dataset's best return up to the best,
next to a uniformly random policy on the same seeds, and says whether the DT
beats random and whether the achieved return follows the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import typer
from rich.columns import Columns
from rich.text import Text

from dtrl.calibrate import calibration_report, write_calibration
from dtrl.checkpoint import latest_checkpoint
from dtrl.cli.app import app
from dtrl.cli.display import console, results_table, train_with_progress
from dtrl.config import load_config
from dtrl.data.readers import QUICKSTART_DATASET, open_dataset
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult, evaluate_random
from dtrl.io import read_yaml, write_json
from dtrl.plot import plot_runs
from dtrl.runfiles import CALIBRATION_FILE, QUICKSTART_FILE, RUN_CONFIG_FILE, RUN_CONFIG_FIX

CONFIG = Path(str(files("dtrl") / "configs" / "quickstart.yaml"))
TARGET_POINTS = 4
"""Targets in the sweep, from a quarter of the dataset's best return up to the best at equal ratios:
the achieved return flattens towards the best, so even steps would put the top two on the plateau."""
RISE_IN_ERRORS = 2.0
"""The highest target's mean must exceed the lowest's by this many standard errors of their difference."""


def quickstart_targets(returns: np.ndarray, points: int = TARGET_POINTS) -> list[float]:
    """``points`` targets from a quarter of the dataset's best return to the best at equal ratios, rounded to 100."""
    best = float(returns.max())
    return [float(round(t, -2)) for t in np.geomspace(0.25 * best, best, points)]


def standard_error(returns: np.ndarray) -> float:
    """The standard error of a target's mean return (sample std over sqrt(episodes))."""
    n = len(returns)
    return float(np.std(returns, ddof=1) / np.sqrt(n)) if n > 1 else float("inf")


def first_fall(returns: Sequence[np.ndarray]) -> int | None:
    """The first step ``i -> i + 1`` up the sweep whose mean falls by more than the step's standard
    error (sqrt of the two means' squared errors summed), or None; ``returns``: each target's episodes."""
    for i, (a, b) in enumerate(zip(returns, returns[1:])):
        if np.mean(b) - np.mean(a) < -np.hypot(standard_error(a), standard_error(b)):
            return i
    return None


@dataclass
class Verdict:
    """Whether a sweep follows the target, and why, in one line."""

    follows: bool
    reason: str


def sweep_verdict(results: Sequence[EvalResult]) -> Verdict:
    """Follows the target when the highest target's mean exceeds the lowest's by more than
    ``RISE_IN_ERRORS`` standard errors of the difference and no step up the sweep falls
    (:func:`first_fall`)."""
    low, high = results[0], results[-1]
    rise = high.mean - low.mean
    noise = float(np.hypot(standard_error(low.returns), standard_error(high.returns)))
    fall = first_fall([r.returns for r in results])
    sweep = f"{low.mean:.0f} at target {low.target_return:g} -> {high.mean:.0f} at target {high.target_return:g}"
    if rise <= RISE_IN_ERRORS * noise:
        return Verdict(
            False, f"{sweep}: a rise of {rise:.0f} is within {RISE_IN_ERRORS:g} standard errors ({noise:.0f})"
        )
    if fall is not None:
        a, b = results[fall], results[fall + 1]
        return Verdict(False, f"{sweep}, but it falls from {a.mean:.0f} to {b.mean:.0f} between targets "
                              f"{a.target_return:g} and {b.target_return:g} by more than its standard error")  # fmt: skip
    return Verdict(True, f"{sweep}: up {rise / noise:.1f} standard errors; no step falls by more than its error")


def sweep_chart(results: Sequence[EvalResult], best: float, width: int = 24) -> Text:
    """Achieved return per target as horizontal bars on one scale (the dataset's best return)."""
    text = Text("achieved return per target\n", style="bold")
    scale = max(best, *(r.mean for r in results), 1e-9)
    for r in results:
        cells = max(r.mean, 0.0) / scale * width
        bar = "█" * int(cells) + ("▌" if cells - int(cells) >= 0.5 else "")
        text.append(f"{r.target_return:>6.0f} ")
        text.append(f"{bar:<{width + 1}}", style="cyan")
        text.append(f" {r.mean:.0f}\n")
    text.append(f"{'':>6} {'':<{width + 1}} (dataset best {best:.0f})", style="dim")
    return text


def default_out_dir(seed: int) -> Path:
    return Path("runs/quickstart") if seed == 0 else Path(f"runs/quickstart-seed{seed}")


def check_quickstart_dir(out_dir: Path, seed: int) -> None:
    """Continue only a quickstart run of this seed: a directory that holds another run (or other files) is not
    ours to rewrite, and a run of another seed would mix its results with this one's."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DtrlError(f"--out-dir {out_dir} is a file: choose a directory for the quickstart run")
    saved = out_dir / RUN_CONFIG_FILE
    if saved.is_file():
        config = read_yaml(saved, RUN_CONFIG_FIX)
        dataset = config.get("dataset")
        if dataset != QUICKSTART_DATASET:
            raise DtrlError(
                f"--out-dir {out_dir} holds another run (dataset {dataset!r}), which quickstart would resume and "
                "rewrite: choose another --out-dir"
            )
        if config.get("seed", 0) != seed:
            raise DtrlError(
                f"{out_dir} holds a quickstart run with seed {config.get('seed', 0)}, not {seed}: "
                f"pass --out-dir for a new directory, or --seed {config.get('seed', 0)} to continue it"
            )
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise DtrlError(f"--out-dir {out_dir} is a directory with other files in it: choose a new or empty --out-dir")


def run(
    out_dir: Path | None,
    steps: int | None,
    episodes: int,
    seed: int = 0,
) -> dict:
    """Train on the shipped dataset (or continue that run), sweep the targets, print the verdict, draw the figures."""
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(seed)
    dataset = open_dataset(QUICKSTART_DATASET)
    s = dataset.summary()
    console.print(
        f"[bold]dataset[/] {s['name']} ({s['env_id']}): {s['episodes']} episodes, {s['transitions']} transitions, "
        f"returns {s['return_min']:.0f} / {s['return_mean']:.0f} / {s['return_max']:.0f} (min / mean / max)"
    )
    targets = quickstart_targets(dataset.episode_returns)
    overrides = [f"out_dir={out_dir}", f"seed={seed}", f"eval_episodes={episodes}", f"target_returns={targets}"]
    if steps:
        overrides.append(f"steps={steps}")
    config = load_config(CONFIG, overrides)
    check_quickstart_dir(out_dir, seed)
    resume = latest_checkpoint(out_dir) is not None
    if resume:
        console.print(f"{out_dir} already holds a quickstart run: continuing it (delete the directory to start over)")
    console.print(
        f"[bold]training[/] a {config.model.n_layer}-layer DT (K={config.model.context_length}, "
        f"width {config.model.n_embd}, seed {seed}) for {config.steps} steps, then evaluating {episodes} "
        f"episodes per target at targets {targets} in the simulator"
    )
    result = train_with_progress(config, resume=resume, overrides={"steps": config.steps, "eval_episodes": episodes})
    random = evaluate_random(dataset.env_id, episodes, seed=config.seed, ref_scores=dataset.ref_scores)
    best = float(dataset.episode_returns.max())
    table = results_table(f"{dataset.env_id}: Decision Transformer vs random policy", result.eval_results, random)
    console.print(Columns([table, sweep_chart(result.eval_results, best)], padding=(0, 4)))

    beats_random = min(r.mean for r in result.eval_results) > random.mean
    verdict = sweep_verdict(result.eval_results)
    console.print(f"DT beats the random policy at every target: {'yes' if beats_random else 'NO'}")
    console.print(f"the achieved return follows the target: {'yes' if verdict.follows else 'NO'} ({verdict.reason})")

    run_dir = Path(result.run_dir)
    report = calibration_report(result.eval_results, dataset.env_id, dataset, config.steps, episodes, config.seed)
    write_calibration(report, run_dir / CALIBRATION_FILE)
    figures = plot_runs([run_dir], run_dir)
    console.print(f"run directory: {run_dir} (policy: {result.checkpoint})")
    console.print(f"figures: {', '.join(str(f) for f in figures)}")
    summary = {
        "dataset": s,
        "seed": seed,
        "steps": config.steps,
        "random": random.to_dict(),
        "dt": [r.to_dict() for r in result.eval_results],
        "beats_random": beats_random,
        "follows_target": verdict.follows,
        "verdict": verdict.reason,
    }
    write_json(run_dir / QUICKSTART_FILE, summary)
    return summary


@app.command(
    epilog="Examples:\n\n  dtrl quickstart\n\n  dtrl quickstart --seed 3   (writes runs/quickstart-seed3)\n\n"
    "  dtrl quickstart --steps 500 --episodes 3 --out-dir runs/qs-short"
)
def quickstart(
    out_dir: Path | None = typer.Option(
        None,
        "--out-dir",
        help="Where the run is written (default runs/quickstart, runs/quickstart-seedN for --seed N).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Training seed; evaluation episodes start from it too."),
    steps: int = typer.Option(0, "--steps", min=0, help="Training steps (0: the quickstart default)."),
    episodes: int = typer.Option(30, "--episodes", min=1, help="Evaluation episodes per target."),
) -> None:
    """Train a small DT on the shipped Hopper dataset and check, in the simulator, that it follows the target."""
    run(out_dir, steps or None, episodes, seed=seed)
