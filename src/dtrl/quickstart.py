"""``dtrl quickstart``: the whole pipeline on the shipped Hopper dataset, in minutes on a CPU.

Loads the small real dataset shipped with dtrl (recorded from a PPO agent's
snapshots and a random policy; see ``dtrl/assets/README.md``), trains a small
Decision Transformer, evaluates it in the MuJoCo simulator at a low and a high
target return next to a uniformly random policy on the same seeds, and prints
whether the DT beats random and whether a higher target gives a higher return.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from dtrl.checkpoint import RUN_CONFIG_FILE, latest_checkpoint
from dtrl.config import load_config
from dtrl.data.episodes import atomic_write
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult, evaluate_random
from dtrl.runfiles import RUN_CONFIG_FIX, read_yaml
from dtrl.train import QUICKSTART_DATASET, TrainResult, open_dataset

CONFIG = Path(str(files("dtrl") / "configs" / "quickstart.yaml"))


def quickstart_targets(returns: np.ndarray) -> list[float]:
    """A low target (a quarter of the dataset's best return) and a high one (the best return)."""
    best = float(returns.max())
    return [round(0.25 * best, -2), round(best, -2)]


def check_quickstart_dir(out_dir: Path) -> None:
    """Continue only a quickstart run: a directory that holds another run (or other files) is not ours to rewrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DtrlError(f"--out-dir {out_dir} is a file: choose a directory for the quickstart run")
    saved = out_dir / RUN_CONFIG_FILE
    if saved.is_file():
        dataset = read_yaml(saved, RUN_CONFIG_FIX).get("dataset")
        if dataset != QUICKSTART_DATASET:
            raise DtrlError(
                f"--out-dir {out_dir} holds another run (dataset {dataset!r}), which quickstart would resume and "
                "rewrite: choose another --out-dir"
            )
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise DtrlError(f"--out-dir {out_dir} is a directory with other files in it: choose a new or empty --out-dir")


def run(
    out_dir: Path,
    steps: int | None,
    episodes: int,
    console: Console,
    train_fn: Callable[..., TrainResult],
    table_fn: Callable[..., Table],
) -> dict:
    dataset = open_dataset(QUICKSTART_DATASET)
    s = dataset.summary()
    console.print(
        f"[bold]dataset[/] {s['name']} ({s['env_id']}): {s['episodes']} episodes, {s['transitions']} transitions, "
        f"returns {s['return_min']:.0f} / {s['return_mean']:.0f} / {s['return_max']:.0f} (min / mean / max)"
    )
    targets = quickstart_targets(dataset.episode_returns)
    overrides = [f"out_dir={out_dir}", f"eval_episodes={episodes}", f"target_returns={targets}"]
    if steps:
        overrides.append(f"steps={steps}")
    config = load_config(CONFIG, overrides)
    resume = latest_checkpoint(out_dir) is not None
    check_quickstart_dir(Path(out_dir))
    if resume:
        console.print(f"{out_dir} already holds a quickstart run: continuing it (delete the directory to start over)")
    console.print(
        f"[bold]training[/] a {config.model.n_layer}-layer DT (K={config.model.context_length}, "
        f"width {config.model.n_embd}) for {config.steps} steps, then evaluating {episodes} episodes "
        f"per target at targets {targets} in the simulator"
    )
    result = train_fn(config, resume=resume, overrides={"steps": config.steps, "eval_episodes": episodes})
    random = evaluate_random(dataset.env_id, episodes, seed=config.seed, ref_scores=dataset.ref_scores)
    console.print(table_fn(f"{dataset.env_id}: Decision Transformer vs random policy", result.eval_results, random))

    low, high = result.eval_results[0], result.eval_results[-1]
    beats_random = min(r.mean for r in result.eval_results) > random.mean
    follows_target = high.mean > low.mean
    console.print(f"DT beats the random policy at every target: {'yes' if beats_random else 'NO'}")
    console.print(
        f"higher target gives higher return: {'yes' if follows_target else 'NO'} "
        f"({low.mean:.0f} at target {low.target_return:g} -> {high.mean:.0f} at target {high.target_return:g})"
    )
    console.print(f"run directory: {result.run_dir} (policy: {result.checkpoint})")
    summary = {
        "dataset": s,
        "steps": config.steps,
        "random": random.to_dict(),
        "dt": [r.to_dict() for r in result.eval_results],
        "beats_random": beats_random,
        "higher_target_higher_return": follows_target,
    }
    text = json.dumps(summary, indent=2).encode()
    atomic_write(Path(out_dir) / "quickstart.json", lambda f: f.write(text))
    return summary
