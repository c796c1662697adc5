"""The gym report's figures: learning curves per dataset and DT's return calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dtrl.plot import plot_seeds, save_figure
from gym_protocol import CALIBRATION_PNG, CURVES_PNG, LABELS, _pairs


def plot_curves(rows: list[dict[str, str]], datasets: list[str], methods: list[str], out: Path) -> Path:
    """Normalised score vs gradient steps: mean ± std over seeds, one panel per dataset."""
    fig, axes = _panels(len(datasets), 4)
    colors = dict(zip(methods, _colors()))
    for ax, name in zip(axes, datasets):
        for method in methods:
            curves = [np.array(_pairs(r["curve"])) for r in rows if r["dataset"] == name and r["method"] == method]
            if curves:
                plot_seeds(
                    ax, [(c[:, 0], c[:, 1]) for c in curves], f"{LABELS[method]}, {len(curves)} seeds", colors[method]
                )
        _label(ax, name, "gradient step", "normalised score")
    fig.tight_layout()
    return save_figure(fig, out / CURVES_PNG, dpi=110)


def plot_calibration(rows: list[dict[str, str]], datasets: list[str], out: Path) -> Path | None:
    """DT's achieved return against its target (mean ± std over seeds), y = x and the dataset's best return."""
    names = [d for d in datasets if any(r["dataset"] == d and r["calibration"] for r in rows)]
    if not names:
        return None
    fig, axes = _panels(len(names), 4.5)
    for ax, name in zip(axes, names):
        sweeps = [
            (np.array(_pairs(r["calibration"])), float(r["dataset_best_return"]))
            for r in rows
            if r["dataset"] == name and r["calibration"]
        ]
        targets = sweeps[0][0][:, 0]
        achieved = np.stack([s[:, 1] for s, _ in sweeps])
        ax.errorbar(
            targets,
            achieved.mean(axis=0),
            yerr=achieved.std(axis=0),
            marker="o",
            capsize=3,
            label=f"DT ({len(sweeps)} seeds)",
        )
        top = max(targets.max(), achieved.max())
        ax.plot([0, top], [0, top], "k--", linewidth=1, label="achieved = target")
        best = sweeps[0][1]
        ax.axvline(best, color="tab:red", linestyle=":", label=f"best return in dataset ({best:.0f})")
        ax.axhline(best, color="tab:red", linestyle=":")
        _label(ax, name, "target return", "achieved return")
    fig.tight_layout()
    return save_figure(fig, out / CALIBRATION_PNG, dpi=110)


def _panels(count: int, height: float, columns: int = 3) -> tuple[Any, list[Any]]:
    """One panel per dataset, ``columns`` to a row (an env's three datasets side by side); unused ones hidden."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-count // columns)
    cols = min(count, columns)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _label(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    """The finish every panel of the report shares: title, axis labels, light grid, small legend."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _colors() -> list[str]:
    """Matplotlib's colour cycle, repeated: one colour per method across every panel."""
    import matplotlib.pyplot as plt

    return plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3
