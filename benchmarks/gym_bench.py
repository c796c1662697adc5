"""The paper's gym experiment: DT against BC, %BC, CQL and IQL, and the DT variants Decision
ConvFormer and Online DT, on the same episodes.

    python benchmarks/gym_bench.py --budget cpu-reduced --datasets hopper-medium,hopper-medium-replay \\
        --methods dt,bc,pbc,tbc,cql,iql,dc,odt --seeds 0,1,2    # run (resumable), then write the report
    python benchmarks/gym_bench.py --report                        # redraw report + plots from the CSV

Methods. ``dt``: the Decision Transformer with dtrl's paper defaults. ``bc``: the paper's gym BC,
an MLP from the last K states to the action (``model.kind=mlp grad_clip=0``, its ``MLPBCModel`` and
``ActTrainer``). ``pbc``: %BC,
that MLP on the best episodes holding ``--pbc-fraction`` (10%) of the timesteps (``top_fraction``, the
paper's ``pct_traj``). ``tbc``: BC with DT's transformer trained without return tokens
(``model.condition_on_return=false``; the paper's Atari BC), which isolates what the returns add.
``cql`` / ``iql``: d3rlpy with its published D4RL settings, fed the very same episodes
(``d3rlpy_adapter.py``; ``pip install -e ".[bench]"``). ``dt-d3rlpy``, the fidelity peer (not run by
default): d3rlpy's DecisionTransformer given ``dt``'s recipe at the budget, conditioned on the same target. The variants (docs/variants.md) differ from
``dt`` in what defines them: ``dc``, Decision ConvFormer, is ``model.token_mixer=conv``; ``odt``, Online
DT, is ``dt``'s network and budget with ODT's method settings (``ODT_SETTINGS``: stochastic head, no timestep
embedding, 5-step acting context, LAMB, the temperature's own Adam), then fine-tuned online by
``dtrl.finetune`` for ``--online-steps`` environment steps, continuing its optimiser as ODT does. An ``odt`` cell writes two rows:
``odt`` (the offline policy, scored like every other method) and ``odt-online`` (the same policy after
fine-tuning, evaluated on the same seeds at the same target; its ``curve`` is in environment steps).

Protocol, identical for every method: the same number of gradient steps; evaluation at
``eval_points`` evenly spaced steps (the last at the end of training, which is the reported
score; no checkpoint is picked) over the same episodes, started from env seeds
``EVAL_SEED + i``, far from the training seeds; the D4RL-normalised score with the dataset's
reference returns. DT is conditioned on the best return in its dataset, and at the end also
swept across targets (the calibration figure). The DT family's own end-of-chunk check
(``eval_episodes=1`` on the training seed) is not used.

Budgets. ``full``: the paper's (100k steps, DT at the paper's config, 100 evaluation
episodes; Online DT then 200k online environment steps with ODT's 300 updates of batch 256 per
rollout). ``cpu-reduced``: few steps and a smaller DT (2 layers, width 64, learning rate
1e-3, warm-up 10% of the steps) for 2 shared CPU cores, and 5,000 online steps with 20 updates of
batch 64 per rollout; its numbers are a demonstration of the harness, never the paper's protocol,
and the report says so. ``cpu``: issue 17's recipe for 2 CPU cores (the small DT with a cosine decay,
15k steps, 10 curve points of 10 episodes, the final score on 50), chosen from learning curves on
training seeds 100 and up; each row also records its training time alone (``train_s``).

Every finished (method, dataset, seed, budget, steps[, online steps]) cell is one line (two for
``odt``) appended atomically to ``results/gym.csv``; a rerun skips finished cells, so a killed run
continues where it stopped (a cell cut short restarts from its beginning). A CSV written before the
``online_steps`` column existed is rewritten with it (empty) on the next run. ``--shard I/N`` runs every N-th cell, so N
processes can share one GPU. ``--stack-seeds`` trains the missing seeds of each (method, dataset) of ``STACKABLE`` together
in one process (``dtrl.train.stacked.train_stacked``: one run directory per seed, the same chunks, evaluations and rows as
separate runs; ``train_eval_s`` is the stack's time divided by its seeds; ``--shard`` then deals out whole stacks; the
runs log names the stacked methods). With dropout 0 a stacked seed equals a separate run up to float rounding; with
dropout (the default 0.1) its masks come from a stream shared by the stack, so it is an equally valid sample, not a
copy. ``--report`` writes ``results/gym.md`` and the PNGs from the CSV.
(Not ``benchmarks/gym.py``: that name would shadow the ``gym`` package d3rlpy imports.)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dtrl
from common import RESULTS, environment
from dtrl.calibrate import calibrate
from dtrl.config import FinetuneConfig, load_config
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.readers import open_dataset
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult, evaluate
from dtrl.io import append_line, atomic_write
from dtrl.plot import plot_seeds, save_figure
from dtrl.tracking import package_versions
from dtrl.train import train
from dtrl.train.finetune import finetune
from dtrl.train.stacked import train_stacked

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


# --------------------------------------------------------------------------- running
def _score(result: EvalResult) -> tuple[float, float]:
    if result.normalized is None:
        raise DtrlError("no reference scores for the normalised score: give datasets with ref_scores or a D4RL env")
    return result.normalized


def _curve_text(curve: list[tuple[int, EvalResult]]) -> str:
    return " ".join(f"{step}:{_score(r)[0]:.3f}" for step, r in curve)


def run_dt_family(
    method: str, name: str, dataset: EpisodeDataset, seeds: list[int], budget: Budget, steps: int, target: float,
    run_dir: Path, device: str, threads: int, pbc_fraction: float, stacked: bool = False,
) -> dict[int, tuple[list[tuple[int, EvalResult]], str, Path, float]]:  # fmt: skip
    """Train in ``eval_points`` chunks (bit-exact resumes), evaluating each seed's policy at ``target`` after
    each one: per seed its curve, DT's calibration sweep, its run directory and its training seconds (checkpoints
    included, evaluation not). One seed trains in ``run_dir``;
    ``stacked``, all ``seeds`` train together in one process (``dtrl.train.stacked``), seed S in ``run_dir/seed_S``."""
    if len(seeds) != 1 and not stacked:
        raise ValueError(f"seeds {seeds}: several seeds train only stacked")
    chunk = steps // budget.eval_points
    config = load_config(
        None,
        [
            f"dataset={name}", f"out_dir={run_dir}", f"seed={seeds[0]}", f"steps={chunk}", f"device={device}",
            f"num_threads={threads}", "eval_episodes=1", f"checkpoint_every={chunk}", f"log_every={min(100, chunk)}",
            *dt_overrides(method, budget, steps, pbc_fraction),
        ],
    )  # fmt: skip
    curves: dict[int, list[tuple[int, EvalResult]]] = {seed: [] for seed in seeds}
    training = 0.0
    for k in range(1, budget.eval_points + 1):
        overrides = {"steps": k * chunk}
        tick = time.perf_counter()
        if stacked:
            results = train_stacked(config, seeds, resume=k > 1, overrides=overrides)
        else:
            results = [train(config, resume=k > 1, overrides=overrides)]
        training += time.perf_counter() - tick
        policies = {seed: dtrl.load(result.checkpoint, device=device) for seed, result in zip(seeds, results)}
        for seed, policy in policies.items():
            env_id = policy.spec.env_id or dataset.env_id
            episodes = budget.episodes_at(k)
            curves[seed].append((k * chunk, evaluate(policy, env_id, [target], episodes, seed=EVAL_SEED)[0]))
    out = {}
    for seed, result in zip(seeds, results):
        calibration = ""
        if method == "dt":
            report = calibrate(
                policies[seed], env_id, dataset, budget.calibration_points, budget.calibration_episodes, EVAL_SEED
            )
            calibration = " ".join(
                f"{r['target_return']:.1f}:{r['return_mean']:.1f}:{r['return_std']:.1f}" for r in report["results"]
            )
        out[seed] = (curves[seed], calibration, Path(result.run_dir), training / len(seeds))
    return out


def run_online(
    checkpoint: Path, dataset: EpisodeDataset, seed: int, budget: Budget, online_steps: int, target: float,
    out_dir: Path, device: str,
) -> tuple[list[tuple[int, EvalResult]], float]:  # fmt: skip
    """Fine-tune an Online DT run's last checkpoint: its evaluation before and after (same seeds and
    target as every method) keyed by environment steps, and the wall time."""
    config = FinetuneConfig(
        steps=online_steps, out_dir=str(out_dir), eval_target=target, updates_per_iteration=budget.online_updates,
        batch_size=budget.online_batch_size, eval_episodes=budget.episodes_at(budget.eval_points), seed=seed,
        eval_seed=EVAL_SEED,
        device=device, continue_optimizer=True,
    )  # fmt: skip
    shutil.rmtree(out_dir, ignore_errors=True)
    tick = time.perf_counter()
    result = finetune(checkpoint, config, dataset)
    return [(0, result.offline[0]), (result.env_steps, result.online[0])], time.perf_counter() - tick


def run_cells(
    method: str, name: str, seeds: list[int], budget_name: str, steps: int, work: Path, device: str, threads: int,
    pbc_fraction: float, online_steps: int = 0, stacked: bool = False,
) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
    """Train and evaluate (method, dataset) for ``seeds``, yielding each seed's CSV row (``odt``: its offline and
    online rows) as soon as it is done. One seed, unless ``stacked``: the DT family's seeds then train together
    in one process (``dtrl.train.stacked``); each seed's row is the one a separate run writes, its ``train_eval_s``
    the stack's training and evaluation time divided by its seeds."""
    budget = BUDGETS[budget_name]
    if steps % budget.eval_points:
        raise DtrlError(f"--steps {steps} must be a multiple of the {budget.eval_points} evaluation points")
    if stacked and method not in STACKABLE:
        raise ValueError(f"{method} does not stack: only {', '.join(STACKABLE)} stack seeds")
    dataset = open_dataset(name)
    env_id = dataset.env_id
    if not env_id:
        raise DtrlError(f"dataset {name!r} records no env id: the benchmark evaluates in its environment")
    online = (online_steps or budget.online_steps) if method == "odt" else 0

    def row(stage: str, seed: int, curve: list[tuple[int, EvalResult]], seconds: float, target: float,
            calibration: str = "", training: float | None = None) -> dict[str, Any]:  # fmt: skip
        final = curve[-1][1]
        score = _score(final)
        return {
            "method": stage, "dataset": dataset.name, "env_id": env_id, "seed": seed, "budget": budget_name,
            "steps": steps, "eval_seed": EVAL_SEED, "episodes": len(final.returns), "target_return": f"{target:.1f}",
            "return_mean": f"{final.mean:.2f}", "return_std": f"{final.std:.2f}", "score_mean": f"{score[0]:.3f}",
            "score_std": f"{score[1]:.3f}", "curve": _curve_text(curve), "calibration": calibration,
            "dataset_best_return": f"{dataset.episode_returns.max():.1f}", "train_eval_s": f"{seconds:.1f}",
            "online_steps": online or "", "settings": _settings(method), "device": device,
            "train_s": "" if training is None else f"{training:.1f}",
        }  # fmt: skip

    tick = time.perf_counter()
    target = float(dataset.episode_returns.max())  # the DT family's: the best return in the data
    if method in ("cql", "iql", "dt-d3rlpy"):
        from d3rlpy_adapter import train_and_evaluate

        (seed,) = seeds
        recipe = None
        if method == "dt-d3rlpy":  # the fidelity peer: dt's recipe at this budget, in d3rlpy
            recipe = load_config(None, [f"dataset={name}", f"steps={steps}", *dt_overrides("dt", budget, steps, 0.0)])
        curve, training = train_and_evaluate(
            method, dataset, env_id, steps, budget.eval_points, budget.episodes, EVAL_SEED, seed, device,
            final_episodes=budget.episodes_at(budget.eval_points), dt_config=recipe, target=target,
        )  # fmt: skip
        peer_target = target if method == "dt-d3rlpy" else float("nan")
        yield [row(method, seed, curve, time.perf_counter() - tick, peer_target, training=training)]
        return
    tag = "_".join(map(str, seeds))
    run_dir = work / f"{method}-{Path(name).stem}-s{tag}-{budget_name}-{steps}{'-stacked' if stacked else ''}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a cell cut short restarts from its beginning
    trained = run_dt_family(
        method, name, dataset, seeds, budget, steps, target, run_dir, device, threads, pbc_fraction, stacked
    )
    seconds = (time.perf_counter() - tick) / len(seeds)
    for seed, (curve, calibration, seed_dir, training) in trained.items():
        rows = [row(method, seed, curve, seconds, target, calibration, training)]
        if method == "odt":
            online_dir = seed_dir.with_name(f"{seed_dir.name}-online-{online}")
            online_curve, online_seconds = run_online(
                seed_dir, dataset, seed, budget, online, target, online_dir, device
            )
            rows.append(row(ODT_ONLINE, seed, online_curve, online_seconds, target))
        yield rows


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


def run(args: argparse.Namespace) -> None:
    """Every missing cell of methods × datasets × seeds, methods outermost in the order given
    (cheap methods first: a run stopped by a deadline leaves whole methods missing, not datasets)."""
    budget = BUDGETS[args.budget]
    steps = args.steps or budget.steps
    online = args.online_steps or budget.online_steps
    if args.threads:
        torch.set_num_threads(args.threads)
    csv_path = args.out / CSV_FILE
    upgrade_csv(csv_path)
    done = {cell_key(r) for r in read_rows(csv_path)}
    stacks = [m for m in args.methods if m in STACKABLE] if args.stack_seeds else []
    # what one process trains: a cell, or with --stack-seeds all seeds of a DT-family (method, dataset)
    groups = [
        (m, d, seeds) for m in args.methods for d in args.datasets
        for seeds in ([args.seeds] if m in stacks else [[s] for s in args.seeds])
    ]  # fmt: skip
    index, count = args.shard
    mine = groups[index::count]
    args.out.mkdir(parents=True, exist_ok=True)
    context = environment()
    context["versions"].update(package_versions(("gymnasium", "mujoco", "d3rlpy")))
    record = {**context, "budget": args.budget, "steps": steps, "cells": sum(len(g[2]) for g in mine)}
    if stacks:
        record["stacked"] = stacks  # these methods' seeds trained together (dtrl.train.stacked)
    if "odt" in args.methods:
        record["online_steps"] = online
    append_line(args.out / RUNS_LOG, json.dumps(record))
    labels = {name: open_dataset(name).name for name in args.datasets}  # the name rows record
    for method, name, seeds in mine:
        label = labels[name]
        stage, online_key = (ODT_ONLINE, online) if method == "odt" else (method, 0)  # odt: done once fine-tuned
        todo = []
        for seed in seeds:
            if (stage, label, seed, args.budget, steps, online_key, _settings(method)) in done:
                print(f"skip {method} {label} seed {seed} (done)", flush=True)
            else:
                todo.append(seed)
        if not todo:
            continue
        for rows in run_cells(
            method, name, todo, args.budget, steps, args.work, args.device, args.threads, args.pbc_fraction, online,
            stacked=method in stacks,
        ):  # fmt: skip
            append_rows(csv_path, rows)
            for row in rows:
                print(
                    f"{row['method']} {label} seed {row['seed']}: score {row['score_mean']} ({row['train_eval_s']} s)",
                    flush=True,
                )


# --------------------------------------------------------------------------- report
def _pairs(text: str) -> list[list[float]]:
    return [[float(x) for x in item.split(":")] for item in text.split()]


def summarise(rows: list[dict[str, str]]) -> dict[tuple[str, str], np.ndarray]:
    """Final normalised scores per (dataset, method), one per seed."""
    out: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        out.setdefault((r["dataset"], r["method"]), []).append(float(r["score_mean"]))
    return {k: np.array(v) for k, v in out.items()}


def _cell(values: np.ndarray | None) -> str:
    return MISSING if values is None else f"{values.mean():.1f} ± {values.std():.1f} (n={len(values)})"


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


def targets_met(
    scores: dict[tuple[str, str], np.ndarray], rows: list[dict[str, str]], datasets: list[str]
) -> list[str]:
    """Issue 6's targets, checked on what ran (a missing cell is said to be missing)."""
    lines = []
    for name in [d for d in datasets if d.endswith("medium-replay")]:
        dt, bc = scores.get((name, "dt")), scores.get((name, "bc"))
        if dt is None or bc is None:
            lines.append(f"* DT above BC on {name}: not run")
        else:
            lines.append(
                f"* DT above BC on {name}: {'yes' if dt.mean() > bc.mean() else '**no**'} ({dt.mean():.1f} vs {bc.mean():.1f})"
            )
    averages = {m: _average(scores, datasets, m) for m in ("dt", "cql")}
    if None in averages.values():
        lines.append("* DT's average ≥ CQL's: not every dataset has both")
    else:
        verdict = "yes" if averages["dt"] >= averages["cql"] else "**no**"
        lines.append(
            f"* DT's average ≥ CQL's on these datasets: {verdict} ({averages['dt']:.1f} vs {averages['cql']:.1f})"
        )
    for name in datasets:
        sweeps = [np.array(_pairs(r["calibration"])) for r in rows if r["dataset"] == name and r["calibration"]]
        if not sweeps:
            continue
        best = float(next(r["dataset_best_return"] for r in rows if r["dataset"] == name))
        mean = np.mean([s[:, 1] for s in sweeps], axis=0)
        below = sweeps[0][:, 0] <= best
        rising = float(np.corrcoef(sweeps[0][below, 0], mean[below])[0, 1]) if below.sum() > 2 else float("nan")
        lines.append(
            f"* {name}, achieved return against target up to the dataset's best ({best:.0f}): "
            f"{mean[below][0]:.0f} at target {sweeps[0][0, 0]:.0f}, {mean[below][-1]:.0f} at target "
            f"{sweeps[0][below][-1, 0]:.0f} (change {mean[below][-1] - mean[below][0]:+.0f}; correlation {rising:.2f})"
        )
    return lines


def paired_verdict(variant: dict[int, float], baseline: dict[int, float], versus: str = "DT") -> str:
    """``variant`` against ``baseline`` on the seeds both ran: beats / trails on every seed, or mixed."""
    seeds = sorted(set(variant) & set(baseline))
    if not seeds:
        return f"no seed in common with {versus}"
    diffs = np.array([variant[s] - baseline[s] for s in seeds])
    gap = f"mean {diffs.mean():+.1f}, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    if (diffs > 0).all():
        return f"beats {versus} on every seed ({gap})"
    if (diffs < 0).all():
        return f"trails {versus} on every seed ({gap})"
    return f"mixed: higher than {versus} on {int((diffs > 0).sum())} of {len(seeds)} seeds ({gap})"


def variants_against_dt(rows: list[dict[str, str]], datasets: list[str]) -> list[str]:
    """Per dataset, where each variant beats or trails the plain DT (paired by seed), and what fine-tuning did."""
    seeds: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        seeds.setdefault((r["dataset"], r["method"]), {})[int(r["seed"])] = float(r["score_mean"])
    lines = []
    for name in datasets:
        dt = seeds.get((name, "dt"))
        parts = []
        for variant in VARIANTS:
            scores = seeds.get((name, variant))
            verdict = "not run" if scores is None else "DT not run" if dt is None else paired_verdict(scores, dt)
            parts.append(f"{LABELS[variant]} {verdict}")
        if (name, "odt") in seeds and (name, ODT_ONLINE) in seeds:
            tuned = paired_verdict(seeds[(name, ODT_ONLINE)], seeds[(name, "odt")], "offline")
            parts.append(f"fine-tuning vs ODT offline: {tuned}")
        lines.append(f"* {name}: " + "; ".join(parts) + ".")
    return lines


def _average(scores: dict[tuple[str, str], np.ndarray], datasets: list[str], method: str) -> float | None:
    if not all((d, method) in scores for d in datasets):
        return None
    return float(np.mean([scores[(d, method)].mean() for d in datasets]))


def _published(value: float | None) -> str:
    return "n/a" if value is None else f"{value}"


def report(out: Path) -> Path:
    """``gym.md`` and the PNGs from the CSV: tables, published context, status, targets, provenance."""
    every = read_rows(out / CSV_FILE)
    if not every:
        raise DtrlError(f"{out / CSV_FILE} holds no finished cells yet: run the benchmark first")
    budgets = sorted({(r["budget"], int(r["steps"])) for r in every})
    full_budget = ("full", BUDGETS["full"].steps)
    shown = (
        full_budget
        if full_budget in budgets
        else max(budgets, key=lambda b: sum((r["budget"], int(r["steps"])) == b for r in every))
    )
    rows = [r for r in every if (r["budget"], int(r["steps"])) == shown]
    # Online DT rows of one online budget only: the most common, then the largest
    online_budgets = sorted({_online_steps(r) for r in rows if r["method"] in ODT_STAGES})
    online = max(online_budgets, key=lambda n: (sum(_online_steps(r) == n for r in rows), n)) if online_budgets else 0
    rows = [r for r in rows if r["method"] not in ODT_STAGES or _online_steps(r) == online]
    # Online DT rows of today's settings replace those of the earlier, non-faithful Online DT; alone, those are marked
    earlier = [r for r in rows if r["method"] in ODT_STAGES and (r.get("settings") or "") != _settings("odt")]
    earlier_shown = len(earlier) == sum(r["method"] in ODT_STAGES for r in rows)
    if not earlier_shown:
        rows = [r for r in rows if r not in earlier]
    datasets = [d for d in PAPER_DATASETS if any(r["dataset"] == d for r in rows)]
    datasets += sorted({r["dataset"] for r in rows} - set(datasets))
    methods = [m for m in STAGES if any(r["method"] == m for r in rows)]
    scores = summarise(rows)
    curves = plot_curves(rows, datasets, [m for m in methods if m != ODT_ONLINE], out)
    calibration_png = plot_calibration(rows, datasets, out)
    seeds = sorted({int(r["seed"]) for r in rows})
    lines = [
        "# Gym benchmark: DT against BC, %BC, CQL and IQL, and the DT variants, on the same episodes",
        "",
        "Generated by `python benchmarks/gym_bench.py --report` from `gym.csv` (one row per method, dataset and seed; "
        "Online DT adds a row for its fine-tuned policy); do not edit by hand (notes come from `gym_notes.md`).",
        "",
    ]
    if earlier and earlier_shown:
        lines += [
            "> **ODT offline / ODT online: measured with the earlier (non-faithful) Online DT, rerun pending.** "
            "Those rows trained with AdamW for every parameter under the warm-up, a timestep embedding, K steps when "
            "acting, GPT-2's initialisation and a fresh AdamW at fine-tuning, not today's ODT settings (Protocol "
            "below); rerun them with "
            "`--methods odt` (rows of today's settings then replace them).",
            "",
        ]
    if shown != full_budget:
        lines += [
            f"> **Reduced budget — not the paper's protocol.** Shown: `{shown[0]}`, {shown[1]:,} gradient steps per run. "
            "These numbers demonstrate the harness; the full protocol is `--budget full` (100k steps, 100 episodes) on a GPU.",
            "",
        ]
    full_scores = summarise([r for r in every if (r["budget"], int(r["steps"])) == full_budget])
    paper_methods = [m for m in STAGES if m not in VARIANTS + EXTRA_BASELINES]
    done = [(d, m) for d in PAPER_DATASETS for m in paper_methods if len(full_scores.get((d, m), [])) >= 3]
    variants_done = [(d, m) for d in PAPER_DATASETS for m in VARIANTS if len(full_scores.get((d, m), [])) >= 3]
    not_run = [LABELS[m] for m in STAGES if m not in methods]
    also = [(b, n) for b, n in budgets if (b, n) != shown]
    other_online = sorted({_online_steps(r) for r in every if r["method"] in ODT_STAGES} - {online})
    lines += [
        "## Status",
        "",
        f"* Shown: {len(rows)} rows; datasets: {', '.join(datasets)}; methods: {', '.join(methods)}; seeds: {', '.join(map(str, seeds))}"
        + (f"; Online DT fine-tuned for {online:,} environment steps." if online else "."),
        *([f"* Not run at this budget: {', '.join(not_run)}."] if not_run else []),
        f"* Full protocol (9 datasets × 5 methods × ≥ 3 seeds at `--budget full`): {len(done)} of 45 (dataset, method) pairs done; "
        f"variants (DC, ODT offline, ODT online): {len(variants_done)} of 27.",
        *[f"* Also in the CSV, not shown: `{b}` at {n:,} steps" for b, n in also],
        *[f"* Also in the CSV, not shown: Online DT fine-tuned for {n:,} environment steps" for n in other_online],
        *([f"* Also in the CSV, not shown: {len(earlier)} rows of the earlier (non-faithful) Online DT"] if earlier and not earlier_shown else []),
        "",
        "## Normalised score at the end of training (mean ± std over seeds)",
        "",
        "0 = uniformly random policy, 100 = the dataset's expert (the reference returns recorded with each dataset). "
        f"{MISSING}: not run on that dataset. ODT offline / online: the same Online DT policy before and after online "
        "fine-tuning, evaluated on the same seeds at the same target.",
        "",
        "| dataset | " + " | ".join(LABELS[m] for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]  # fmt: skip
    for name in datasets:
        lines.append(f"| {name} | " + " | ".join(_cell(scores.get((name, m))) for m in methods) + " |")
    averages = [_average(scores, datasets, m) for m in methods]
    lines.append("| **average** | " + " | ".join(MISSING if a is None else f"**{a:.1f}**" for a in averages) + " |")
    lines += [
        "",
        "## Published numbers, for context only",
        "",
        "**Different data (D4RL -v2, SAC behaviour agents, mujoco-py), a different simulator version and the papers' "
        "own configs and budgets: not comparable with the numbers above.**",
        "",
        "The DT paper's D4RL table (DT: mean ± std over 3 seeds; CQL and BC as the paper quotes them).",
        "",
        "| dataset | DT (paper) | CQL (paper) | BC (paper) |",
        "|---|---|---|---|",
        *[f"| {d} | {PUBLISHED[d][0]} ± {PUBLISHED[d][1]} | {PUBLISHED[d][2]} | {PUBLISHED[d][3]} |" for d in datasets if d in PUBLISHED],
        "",
        "The variants' papers: Decision ConvFormer (Kim et al. 2024, ICLR; offline) and Online DT (Zheng et al. 2022, "
        "ICML; offline score, then after 200k online environment steps). n/a: an entry we could not confirm from the "
        "paper's own table, left out rather than guessed.",
        "",
        "| dataset | DC (paper) | ODT offline (paper) | ODT online, 200k steps (paper) |",
        "|---|---|---|---|",
        *[f"| {d} | " + " | ".join(_published(PUBLISHED_VARIANTS[d][m]) for m in VARIANTS) + " |" for d in datasets if d in PUBLISHED_VARIANTS],
    ]  # fmt: skip
    if not any(d in PUBLISHED for d in datasets):  # no paper dataset shown: the tables would be empty
        lines = lines[: lines.index("## Published numbers, for context only") + 2] + [
            "None of the datasets shown is one of the papers'."
        ]
    lines += [
        "",
        "## Targets, on what ran",
        "",
        "Issue 6 (the DT paper's claims):",
        "",
        *targets_met(scores, rows, datasets),
        "",
        "Issue 12 (the variants against the plain DT, paired by seed; with 3 seeds a consistent sign is a hint, "
        "not a significant difference):",
        "",
        *variants_against_dt(rows, datasets),
        "",
    ]
    lines += ["## Figures", "", f"![learning curves]({curves.name})", ""]
    if calibration_png:
        lines += [f"![return calibration]({calibration_png.name})", ""]
    lines += [
        "## Protocol",
        "",
        f"* Evaluation: episodes started from env seeds {EVAL_SEED} + i for every method and seed (training seeds: "
        f"{', '.join(map(str, seeds))}); the score at the last step is reported, no checkpoint is picked.",
        "* DT: dtrl's transformer, conditioned on the best return in its dataset. BC and %BC: the paper's MLP on the "
        "last K states (`model.kind=mlp grad_clip=0`; %BC adds `top_fraction`, the best episodes holding that share of the "
        "timesteps); BC (transformer, no returns): DT's network without return tokens "
        "(`model.condition_on_return=false`). CQL and IQL: d3rlpy with the settings of its D4RL "
        "reproduction scripts (`benchmarks/d3rlpy_adapter.py`), deterministic actions.",
        "* Variants: DT's config, size and target with what defines each changed — Decision ConvFormer "
        "`model.token_mixer=conv`; Online DT ODT's method settings, `" + " ".join(ODT_SETTINGS) + "` (evaluated "
        "with its mean action on its last 5 steps). Online DT is then fine-tuned by `dtrl.finetune` (rollouts sample "
        "actions conditioned on twice the target, hindsight-relabelled replay of 1000 trajectories starting from the "
        "dataset's best, the pre-training optimiser and schedule continued, as ODT) and evaluated again on the same "
        "seeds; the learning-curve figure shows its offline training only.",
        "* Budgets: " + "; ".join(f"`{n}`: {b.steps:,} steps, {b.eval_points} evaluation points of {b.episodes} episodes "
                                  f"(the last {b.episodes_at(b.eval_points)})"
                                  + (f", DT family `{' '.join(b.dt_settings)}`" if b.dt_settings else ", DT at the paper's config")
                                  + (f", warm-up {b.warmup_fraction:.0%} of the steps" if b.warmup_fraction else "")
                                  + f", Online DT {b.online_steps:,} online steps with {b.online_updates} updates of batch "
                                  f"{b.online_batch_size} per rollout"
                                  for n, b in BUDGETS.items()) + ".",
        "",
        "## Wall time per cell (training + evaluation, seconds; ODT online: the fine-tuning alone)",
        "",
        "| dataset | " + " | ".join(LABELS[m] for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]  # fmt: skip
    for name in datasets:
        cells = [[float(r["train_eval_s"]) for r in rows if r["dataset"] == name and r["method"] == m] for m in methods]
        lines.append(f"| {name} | " + " | ".join(f"{np.mean(c):.0f}" if c else MISSING for c in cells) + " |")
    lines += ["", "## Runs (command, machine, versions, load)", ""]
    log = out / RUNS_LOG
    for entry in [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []:
        lines.append(
            f"* {entry['date']}: `{entry['command']}` — {entry['machine']}, GPU {entry['gpu']}, load "
            f"{entry['load_average_1_5_15min']}, {', '.join(f'{k} {v}' for k, v in entry['versions'].items())}"
        )
    notes = out / NOTES_FILE
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    text = "\n".join(lines) + "\n"
    path = out / "gym.md"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


# --------------------------------------------------------------------------- command line
def _shard(text: str) -> tuple[int, int]:
    index, count = (int(x) for x in text.split("/"))
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: give I/N with 0 <= I < N")
    return index, count


def _methods(text: str) -> list[str]:
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in METHODS]:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    return methods


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu-reduced")
    p.add_argument("--steps", type=int, default=0, help="gradient steps per run (default: the budget's)")
    p.add_argument("--datasets", type=lambda s: [d for d in s.split(",") if d], default=PAPER_DATASETS)
    p.add_argument(
        "--methods", type=_methods, default=[m for m in METHODS if m != "dt-d3rlpy"],
        help="default: all but the fidelity peer dt-d3rlpy",
    )  # fmt: skip
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument(
        "--pbc-fraction",
        type=float,
        default=0.1,
        help="%%BC keeps the best episodes holding this fraction of the timesteps",
    )
    p.add_argument(
        "--online-steps", type=int, default=0,
        help="Online DT's online budget in environment steps (default: the budget's, cpu-reduced 5000, full 200000)",
    )  # fmt: skip
    p.add_argument("--shard", type=_shard, default=(0, 1), help="I/N: run every N-th cell (stack), from the I-th")
    p.add_argument(
        "--stack-seeds", action="store_true",
        help=f"train the missing seeds of each (method, dataset) of {', '.join(STACKABLE)} together in one process (dtrl.train.stacked)",
    )  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where gym.csv, gym.md and the PNGs go")
    p.add_argument("--work", type=Path, default=Path("runs/gym"), help="run directories of the DT family")
    p.add_argument("--report", action="store_true", help="only write the report from the CSV")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if not args.report:
            run(args)
        print(report(args.out))
    except DtrlError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
