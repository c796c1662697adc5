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
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from dtrl.io import append_line
from dtrl.tracking import package_versions
from dtrl.train import train
from dtrl.train.finetune import finetune
from dtrl.train.stacked import train_stacked
from gym_protocol import (
    BUDGETS,
    CSV_FILE,
    EVAL_SEED,
    METHODS,
    ODT_ONLINE,
    PAPER_DATASETS,
    RUNS_LOG,
    STACKABLE,
    Budget,
    _settings,
    append_rows,
    cell_key,
    dt_overrides,
    read_rows,
    upgrade_csv,
)  # fmt: skip
from gym_report import report


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
