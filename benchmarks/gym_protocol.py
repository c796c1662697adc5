"""The gym benchmark's protocol: methods, what each changes in DT's config, budgets, and the CSV of cells.

Shared by the runner (``gym_bench.py``) and the report (``gym_report.py``); imports neither.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtrl.io import append_line, atomic_write

METHODS = ("dt", "bc", "pbc", "tbc", "dt-d3rlpy", "cql", "iql", "dc", "odt")
DT_FAMILY = ("dt", "bc", "pbc", "tbc", "dc", "odt")
"""The methods dtrl trains (CQL, IQL and the fidelity peer ``dt-d3rlpy`` are d3rlpy's)."""
STACKABLE = ("dt", "bc", "pbc", "tbc", "dc")
"""The ones ``--stack-seeds`` stacks: ``odt`` trains with LAMB, whose per-tensor trust ratio a stack cannot share."""
ODT_ONLINE = "odt-online"
"""The row an ``odt`` cell adds for the fine-tuned policy (a stage, not a method to ask for)."""
STAGES = (*METHODS, ODT_ONLINE)
VARIANTS = ("dc", "odt", ODT_ONLINE)
EXTRA_BASELINES = ("tbc", "dt-d3rlpy")
"""Baselines of dtrl's own and the fidelity peer, not in the paper's gym table."""
LABELS = {
    "dt": "DT", "bc": "BC (MLP)", "pbc": "%BC (MLP)", "tbc": "BC (transformer, no returns)", "cql": "CQL (d3rlpy)",
    "iql": "IQL (d3rlpy)", "dc": "Decision ConvFormer", "odt": "ODT offline", ODT_ONLINE: "ODT online",
    "dt-d3rlpy": "DT (d3rlpy)",
}  # fmt: skip
ODT_SETTINGS = [
    "model.stochastic_policy=true", "model.timestep_embedding=none", "model.eval_context_length=5",
    "optimizer=lamb", "weight_decay=5e-4", "temperature_learning_rate=1e-4", "model.init=odt",
]  # fmt: skip
ODT_STAGES = ("odt", ODT_ONLINE)
VARIANT_SETTING = {
    "dc": ["model.token_mixer=conv"], "odt": ODT_SETTINGS,
    "bc": ["model.kind=mlp", "grad_clip=0"], "pbc": ["model.kind=mlp", "grad_clip=0"],
    "tbc": ["model.condition_on_return=false"],
}  # fmt: skip
"""What each variant and baseline changes in DT's config. DC: its token mixer. Online DT: what defines ODT's
code (configs/odt_hopper.yaml) beyond the network's size and the budget: the stochastic head, no timestep
embedding, 5 steps when acting, LAMB with weight decay 5e-4, the temperature's own Adam, ODT's initialisation
(and, online, the optimiser carried on from pre-training). The MLP BC: the MLP, trained without gradient
clipping as the paper's ``ActTrainer`` (%BC adds ``top_fraction``). The transformer BC: no return token."""
PAPER_DATASETS = [
    f"{env}-{kind}"
    for env in ("hopper", "halfcheetah", "walker2d")
    for kind in ("medium", "medium-replay", "medium-expert")
]
EVAL_SEED = 1_000_000
COLUMNS = [
    "method", "dataset", "env_id", "seed", "budget", "steps", "eval_seed", "episodes", "target_return",
    "return_mean", "return_std", "score_mean", "score_std", "curve", "calibration", "dataset_best_return",
    "train_eval_s", "online_steps", "settings", "device", "train_s",
]  # fmt: skip
MISSING = "—"
CSV_FILE = "gym.csv"
RUNS_LOG = "gym_runs.jsonl"
NOTES_FILE = "gym_notes.md"
CURVES_PNG = "gym_learning_curves.png"
CALIBRATION_PNG = "gym_calibration.png"
# The DT paper's D4RL table (DT mean ± std over 3 seeds; CQL and BC as quoted there): other data, other simulator.
PUBLISHED = {
    "halfcheetah-medium-expert": (86.8, 1.3, 62.4, 59.9),
    "hopper-medium-expert": (107.6, 1.8, 111.0, 79.6),
    "walker2d-medium-expert": (108.1, 0.2, 98.7, 36.6),
    "halfcheetah-medium": (42.6, 0.1, 44.4, 43.1),
    "hopper-medium": (67.6, 1.0, 58.0, 63.9),
    "walker2d-medium": (74.0, 1.4, 79.2, 77.3),
    "halfcheetah-medium-replay": (36.6, 0.8, 46.2, 4.3),
    "hopper-medium-replay": (82.7, 7.0, 48.6, 27.6),
    "walker2d-medium-replay": (66.6, 3.0, 26.7, 36.9),
}
# Decision ConvFormer (Kim et al. 2024, ICLR: "DC") and Online DT (Zheng et al. 2022, ICML: offline
# score, then after 200k online steps) on D4RL -v2. None prints "n/a": an entry we could not confirm
# from a primary source (the papers' tables) is left out rather than guessed; fill in from the papers.
PUBLISHED_VARIANTS: dict[str, dict[str, float | None]] = {
    name: {"dc": None, "odt": None, ODT_ONLINE: None} for name in PAPER_DATASETS
}


@dataclass(frozen=True)
class Budget:
    """Steps and evaluation effort of one protocol, and the DT family's size for it."""

    steps: int
    eval_points: int
    episodes: int
    """Evaluation episodes at each point of the learning curve."""
    calibration_points: int
    calibration_episodes: int
    dt_settings: tuple[str, ...] = ()
    """The DT family's overrides of dtrl's paper defaults at this budget (empty: the paper's config)."""
    warmup_fraction: float = 0.0
    """Warm-up as a share of the steps (0: the paper's 10,000 steps)."""
    final_episodes: int = 0
    """Episodes of the last evaluation, the reported score (0: ``episodes``)."""
    online_steps: int = 5_000
    """Online DT: environment steps collected online (``--online-steps`` overrides)."""
    online_updates: int = 20
    """Online DT: gradient steps after each rollout (ODT: 300)."""
    online_batch_size: int = 64
    """Online DT: segments per online gradient step (ODT: 256)."""

    def episodes_at(self, point: int) -> int:
        """Evaluation episodes at curve point ``point`` (1-based; the last is the final score)."""
        return (self.final_episodes or self.episodes) if point == self.eval_points else self.episodes


SMALL_DT = ("model.n_layer=2", "model.n_embd=64", "learning_rate=1e-3")
BUDGETS = {
    "full": Budget(
        100_000, 10, 100, 10, 10, online_steps=200_000, online_updates=300, online_batch_size=256
    ),
    "cpu-reduced": Budget(
        200, 2, 10, 6, 5, SMALL_DT, warmup_fraction=0.1, online_steps=5_000, online_updates=20, online_batch_size=64
    ),
    "cpu": Budget(
        15_000, 10, 10, 8, 10, (*SMALL_DT, "lr_decay=cosine"), warmup_fraction=0.1, final_episodes=50,
        online_steps=5_000, online_updates=20, online_batch_size=64,
    ),
}  # fmt: skip
"""``cpu``: issue 17's 2-core recipe, chosen from learning curves on training seeds 100+ (gym_recipe.md)."""


def dt_overrides(method: str, budget: Budget, steps: int, pbc_fraction: float) -> list[str]:
    """The DT family's config on top of dtrl's paper defaults: BC is the MLP (or the transformer without
    returns), the variants change one model setting each, the budget sizes the network."""
    out = list(VARIANT_SETTING.get(method, []))
    if method == "pbc":
        out.append(f"top_fraction={pbc_fraction}")
    out += budget.dt_settings
    if budget.warmup_fraction:
        out.append(f"warmup_steps={max(1, round(steps * budget.warmup_fraction))}")
    return out


# --------------------------------------------------------------------------- the CSV
def read_rows(path: Path) -> list[dict[str, str]]:
    """The finished cells (a line cut short by a kill is ignored)."""
    if not path.is_file():
        return []
    return [row for row in csv.DictReader(io.StringIO(path.read_text())) if row.get("device")]


def _online_steps(row: dict[str, str]) -> int:
    return int(row.get("online_steps") or 0)  # rows written before Online DT joined have no such column


def _settings(method: str) -> str:
    """The settings an ``odt`` row records (its method settings changed once: rows of others are redone)."""
    return " ".join(ODT_SETTINGS) if method in ODT_STAGES else ""


def cell_key(row: dict[str, str]) -> tuple[str, str, int, str, int, int, str]:
    """What makes a row's cell: an ``odt`` cell is done once its online row is written, with today's settings."""
    return (row["method"], row["dataset"], int(row["seed"]), row["budget"], int(row["steps"]), _online_steps(row),
            row.get("settings") or "")  # fmt: skip


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A finished cell's rows as one atomic append; the header is written with the first."""
    if not path.is_file():
        header = ",".join(COLUMNS) + "\n"
        atomic_write(path, lambda f: f.write(header.encode()))
    buffer = io.StringIO()
    csv.DictWriter(buffer, COLUMNS, lineterminator="\n").writerows(rows)
    append_line(path, buffer.getvalue())


def upgrade_csv(path: Path) -> None:
    """Rewrite a CSV written before a column was added with today's header (new columns empty)."""
    if not path.is_file() or path.read_text().split("\n", 1)[0] == ",".join(COLUMNS):
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(read_rows(path))
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def _pairs(text: str) -> list[list[float]]:
    return [[float(x) for x in item.split(":")] for item in text.split()]
