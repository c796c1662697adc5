"""``dtrl plot``: learning curves and return calibration as PNG files.

Reads only what runs write (``metrics.jsonl``, ``config.yaml``,
``calibration.json``), so figures can be redrawn at any time without torch or
the simulator. Runs whose configs differ only in ``seed`` (and ``out_dir``)
are one group: drawn as the mean over seeds with a band of ± one standard
deviation, each seed as a faint line.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.errors import DtrlError
from dtrl.io import atomic_write, checked, read_json, read_jsonl, read_yaml
from dtrl.runfiles import CALIBRATION_FILE, METRICS_FILE, RUN_CONFIG_FILE, RUN_CONFIG_FIX

CURVES_PNG = "learning_curves.png"
CALIBRATION_PNG = "calibration.png"
_SEED_KEYS = ("seed", "out_dir")
LOSS_KEYS = ("train/loss", "val/loss")
"""Drawn in one panel, "loss": the held-out episodes' loss beside the training loss."""


def _panel(key: str) -> str:
    return "loss" if key in LOSS_KEYS else key.split("@")[0]


def read_metrics(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every logged scalar of a run as (steps, values), in step order."""
    path = run / METRICS_FILE
    if not path.is_file():
        raise DtrlError(f"{run} has no {METRICS_FILE}: give run directories written by `dtrl train`")
    series: dict[str, list[tuple[int, float]]] = {}
    for row in read_jsonl(path, "give run directories written by `dtrl train`"):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    out = {}
    for key, points in series.items():
        steps, values = np.array(sorted(points)).T
        out[key] = (steps, values)
    return out


def group_runs(runs: list[Path]) -> dict[str, list[Path]]:
    """Runs with equal configs apart from the seed, labelled by their common name."""
    groups: dict[str, list[Path]] = {}
    for run in runs:
        config_file = run / RUN_CONFIG_FILE
        config = read_yaml(config_file, RUN_CONFIG_FIX) if config_file.exists() else {"run": str(run)}
        key = json.dumps({k: v for k, v in config.items() if k not in _SEED_KEYS}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    labelled = {}
    for members in groups.values():
        name = os.path.commonprefix([r.resolve().name for r in members]).rstrip("-_ .") or members[0].name
        name = re.sub(r"[-_.]?(seed|s)$", "", name) or name
        labelled[f"{name} ({len(members)} seeds)" if len(members) > 1 else name] = members
    return labelled


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def plot_seeds(ax: Any, curves: list[tuple[np.ndarray, np.ndarray]], label: str, color: Any) -> None:
    """Mean ± std over seeds on the steps of the shortest run; each seed as a faint line."""
    marker = "o" if max(len(s) for s, _ in curves) < 3 else None
    if len(curves) == 1:
        steps, values = curves[0]
        ax.plot(steps, values, color=color, label=label, marker=marker)
        return
    end = min(s[-1] for s, _ in curves)
    grid = min((s[s <= end] for s, _ in curves), key=len)
    stack = np.stack([np.interp(grid, s, v) for s, v in curves])
    for steps, values in curves:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
    mean, std = stack.mean(axis=0), stack.std(axis=0)
    ax.plot(grid, mean, color=color, label=f"{label}: mean ± std", marker=marker)
    ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2)


def plot_learning_curves(groups: dict[str, list[Path]], out: Path) -> Path:
    """The training (and validation) loss, then one panel per evaluation metric with a line per target return."""
    import matplotlib.pyplot as plt

    metrics = {label: [read_metrics(r) for r in runs] for label, runs in groups.items()}
    keys = {k for runs in metrics.values() for m in runs for k in m if k in LOSS_KEYS or k.startswith("eval/")}
    if not keys:
        raise DtrlError("the runs logged no train/loss or eval/ metrics yet: train for at least log_every steps")
    panels = sorted({_panel(k) for k in keys}, key=lambda k: (k != "loss", k))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes[0], panels):
        series = sorted(
            (k for k in keys if _panel(k) == panel), key=lambda k: float(k.split("@")[1]) if "@" in k else k
        )
        i = 0
        for label, runs in metrics.items():
            for key in series:
                curves = [m[key] for m in runs if key in m]
                if curves:
                    name = f"{label}, target {key.split('@')[1]}" if "@" in key else label
                    name = f"{name}, {key}" if panel == "loss" else name
                    plot_seeds(ax, curves, name, colors[i % len(colors)])
                    i += 1
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if panel == "loss":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / CURVES_PNG)


def plot_calibration(runs: list[Path], out: Path) -> Path | None:
    """Achieved vs target return for each run with a ``calibration.json``, with y = x and the dataset's best."""
    import matplotlib.pyplot as plt

    reports = [(r, read_calibration(r / CALIBRATION_FILE)) for r in runs if (r / CALIBRATION_FILE).exists()]
    if not reports:
        return None
    fig, ax = plt.subplots(figsize=(6, 5))
    lo = hi = 0.0
    for run, report in reports:
        targets, means, stds = report["arrays"]
        ax.errorbar(
            targets, means, yerr=stds, marker="o", capsize=3, label=f"{run.name} (± std, {report['episodes']} episodes)"
        )
        lo, hi = min(lo, targets.min(), (means - stds).min()), max(hi, targets.max(), (means + stds).max())
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="achieved = target")
    best = reports[0][1]["dataset_best_return"]
    ax.axhline(best, color="tab:red", linestyle=":", linewidth=1.2, label=f"best return in dataset ({best:.0f})")
    ax.axvline(best, color="tab:red", linestyle=":", linewidth=1.2)
    ax.set_xlabel("target return")
    ax.set_ylabel("achieved return")
    ax.set_title(f"return calibration: {reports[0][1]['env_id']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / CALIBRATION_PNG)


def read_calibration(path: Path) -> dict[str, Any]:
    """A ``calibration.json``, checked, with its (targets, means, stds) as arrays under "arrays"."""
    fix = "run `dtrl calibrate` on the run again, or delete the file"

    def arrays(report: dict[str, Any]) -> dict[str, Any]:
        columns = [
            np.array([float(r[k]) for r in report["results"]]) for k in ("target_return", "return_mean", "return_std")
        ]
        if not len(columns[0]) or not all(np.isfinite(c).all() for c in columns):
            raise ValueError("its results are empty or not finite")
        float(report["dataset_best_return"]), int(report["episodes"]), str(report["env_id"])
        return {**report, "arrays": columns}

    return checked(path, read_json(path, fix), arrays, "a calibration report written by dtrl calibrate", fix)


def plot_runs(runs: list[Path], out: Path) -> list[Path]:
    """Write the learning curves (and the calibration figure, when a run has one) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    missing = [str(r) for r in runs if not r.is_dir()]
    if missing:
        raise DtrlError(f"no run directory at {', '.join(missing)}: give directories written by `dtrl train`")
    written = [plot_learning_curves(group_runs(runs), out)]
    calibration = plot_calibration(runs, out)
    return written + ([calibration] if calibration else [])
