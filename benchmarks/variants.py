"""Plain DT vs Decision ConvFormer vs Online DT on the same data, seeds and protocol.

    python benchmarks/variants.py [--dataset quickstart] [--seeds 0 1 2] [--steps 4000]
        [--online-steps 10000] [--workdir /tmp/dtrl-variants] [key=value ...]

Per dataset and seed, three offline runs share one config (``--config``, by
default the quickstart config, plus the reduced-budget overrides below and any
``key=value`` given) and differ in one model field only:

* ``dt``:  causal self-attention, deterministic head (the paper's DT);
* ``dc``:  ``model.token_mixer=conv`` (Decision ConvFormer's token mixer);
* ``odt``: ``model.stochastic_policy=true`` (Online DT's Gaussian head and
  learned temperature), then ``dtrl finetune`` for a fixed online budget.

Every policy is evaluated with its deterministic (mean) action at the same
target return, on the same evaluation seeds (episode i of a run with training
seed s starts from env seed s + i): the offline score of all three variants,
and the fine-tuned score of Online DT. Nothing is selected on evaluation
returns: the settings are fixed up front and the last checkpoint is reported.
``compare_dataset`` is the unit a gym benchmark calls once per dataset.
Results: benchmarks/results/variants.json and variants.md (``--render`` redraws the
Markdown from the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, save  # noqa: E402

from dtrl.config import FinetuneConfig, load_config  # noqa: E402
from dtrl.data.episodes import atomic_write  # noqa: E402
from dtrl.evaluate import EvalResult  # noqa: E402
from dtrl.finetune import finetune  # noqa: E402
from dtrl.quickstart import CONFIG as QUICKSTART_CONFIG  # noqa: E402
from dtrl.train import open_dataset, train  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "dt": [],
    "dc": ["model.token_mixer=conv"],
    "odt": ["model.stochastic_policy=true"],
}
LABELS = {
    "dt": "DT (attention)",
    "dc": "Decision ConvFormer (conv mixer, kernel 6)",
    "odt": "Online DT, offline (stochastic head)",
    "odt_online": "Online DT, after online fine-tuning",
}


def score(result: EvalResult) -> dict[str, Any]:
    """Mean return and, where reference scores are known, the D4RL-normalised score."""
    out = {"return_mean": result.mean, "return_std": result.std, "episodes": len(result.returns)}
    if result.normalized:
        out["normalized"] = result.normalized[0]
    return out


def offline_run(config: Path, overrides: list[str], variant: str, seed: int, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Train one variant for one seed; its final checkpoint and its evaluation at the (single) target."""
    cfg = load_config(config, [*overrides, *VARIANTS[variant], f"seed={seed}", f"out_dir={out_dir}"])
    tick = time.perf_counter()
    result = train(cfg)
    return result.checkpoint, {**score(result.eval_results[0]), "wall_s": time.perf_counter() - tick}


def online_run(checkpoint: Path, dataset: str, seed: int, online: FinetuneConfig, out_dir: Path) -> dict[str, Any]:
    """Fine-tune an Online DT checkpoint; the offline and fine-tuned scores on the same evaluation seeds."""
    config = FinetuneConfig(**{**online.__dict__, "seed": seed, "eval_seed": seed, "out_dir": str(out_dir)})
    tick = time.perf_counter()
    result = finetune(checkpoint, config, open_dataset(dataset))
    return {
        "offline": score(result.offline[0]),
        "online": score(result.online[0]),
        "env_steps": result.env_steps,
        "updates": result.updates,
        "rollouts": len(result.rollout_returns),
        "wall_s": time.perf_counter() - tick,
    }


def compare_dataset(
    dataset: str, seeds: list[int], config: Path, overrides: list[str], online: FinetuneConfig, workdir: Path
) -> dict[str, Any]:
    """Every variant on one dataset, every seed: per-seed scores and their mean and std over seeds."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*VARIANTS, "odt_online"]}
    for seed in seeds:
        for variant in VARIANTS:
            out = workdir / dataset / f"{variant}-s{seed}"
            checkpoint, offline = offline_run(config, [f"dataset={dataset}", *overrides], variant, seed, out)
            runs[variant].append({"seed": seed, **offline})
            print(f"{dataset} {variant} seed {seed}: {offline}", flush=True)
            if variant == "odt":
                tuned = online_run(checkpoint, dataset, seed, online, workdir / dataset / f"odt-online-s{seed}")
                runs["odt_online"].append({"seed": seed, **tuned["online"], **{k: tuned[k] for k in ("env_steps", "updates", "rollouts", "wall_s")}})
                runs["odt"][-1]["offline_rechecked"] = tuned["offline"]["return_mean"]
                print(f"{dataset} odt online seed {seed}: {tuned}", flush=True)
    summary = {}
    for name, rows in runs.items():
        key = "normalized" if all("normalized" in r for r in rows) else "return_mean"
        values = np.array([r[key] for r in rows])
        summary[name] = {"metric": key, "mean": float(values.mean()), "std": float(values.std()), "per_seed": values.tolist()}
    return {"dataset": dataset, "seeds": seeds, "runs": runs, "summary": summary}


def verdict(variant: dict[str, Any], baseline: dict[str, Any]) -> str:
    """Paired by seed: beats / trails DT on every seed, or mixed; with the mean gap."""
    diffs = np.array(variant["per_seed"]) - np.array(baseline["per_seed"])
    gap = f"mean {diffs.mean():+.1f}"
    if (diffs > 0).all():
        return f"beats DT on every seed ({gap})"
    if (diffs < 0).all():
        return f"trails DT on every seed ({gap})"
    return f"mixed: higher on {int((diffs > 0).sum())} of {len(diffs)} seeds ({gap})"


PUBLISHED = """\
Published numbers, for context only (D4RL -v2 data and the papers' full budgets, not our data):
the Decision Transformer paper reports hopper-medium 67.6 ± 1.0, hopper-medium-replay 82.7 ± 7.0 and
hopper-medium-expert 107.6 ± 1.8 (normalised, 3 seeds; `/work/shared/reference` facts sheet). The
Online DT (Zheng et al. 2022) and Decision ConvFormer (Kim et al. 2024) papers report higher hopper
scores for their methods, but we could not confirm their exact table entries from a primary source in
this session, so we do not quote them here rather than risk a wrong number."""


def markdown(report: dict[str, Any]) -> str:
    env, args = report["environment"], report["settings"]
    lines = [
        "# DT variants: attention vs convolution mixer vs Online DT (issue 12)",
        "",
        "Generated by `benchmarks/variants.py` from the JSON beside this file (`--render` redraws it from the "
        "JSON alone); do not edit by hand. \"vs DT\" compares runs of the same seed; with 3 seeds a consistent "
        "sign is a hint, not a significant difference.",
        "",
        f"* Command: `{env['command']}`",
        f"* Machine: {env['machine']}; GPU: {env['gpu']}; load average at the end (1/5/15 min): "
        f"{env['load_average_1_5_15min']} (shared with other jobs: timings are noisy)",
        f"* Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}; date {env['date']}",
        f"* Seeds: {args['seeds']}; total wall time {report['wall_s'] / 60:.1f} min",
        f"* Offline budget (reduced for 2 shared CPU cores): `{args['config'].split('/main/')[-1]}` + "
        f"`{' '.join(args['overrides'])}`",
        f"* Online budget (Online DT only): {args['online']['steps']} env steps, 1 rollout then "
        f"{args['online']['updates_per_iteration']} updates per iteration, batch {args['online']['batch_size']}, "
        f"lr {args['online']['learning_rate']}, weight decay {args['online']['weight_decay']}, replay "
        f"{args['online']['buffer_size']} trajectories, rollouts conditioned on "
        f"{args['online']['target_return'] or 'twice the evaluation target'}",
        "* Evaluation: deterministic (mean) action, target return = the single `target_returns` entry above, "
        "episode i of seed s from env seed s + i, the same for every variant; last checkpoint, no selection.",
        "",
    ]
    for data in report["datasets"]:
        summary, runs = data["summary"], data["runs"]
        metric = summary["dt"]["metric"].replace("_", " ")
        lines += [
            f"## {data['dataset']}",
            "",
            f"Score: {metric} (with the dataset's reference returns where it records them, else D4RL's), "
            f"mean ± std over seeds {data['seeds']}.",
            "",
        ]
        lines += ["| variant | score | per seed | vs DT | wall time per run |", "|---|---|---|---|---|"]
        for name in ["dt", "dc", "odt", "odt_online"]:
            s = summary[name]
            wall = np.mean([r["wall_s"] for r in runs[name]])
            vs = "—" if name == "dt" else verdict(s, summary["dt"])
            per_seed = ", ".join(f"{v:.1f}" for v in s["per_seed"])
            lines.append(f"| {LABELS[name]} | {s['mean']:.1f} ± {s['std']:.1f} | {per_seed} | {vs} | {wall:.0f} s |")
        gain = summary["odt_online"]["mean"] - summary["odt"]["mean"]
        online = runs["odt_online"]
        lines += [
            "",
            f"Online fine-tuning changed Online DT's score by {gain:+.1f} on average "
            f"({', '.join(str(r['env_steps']) for r in online)} env steps in "
            f"{', '.join(str(r['rollouts']) for r in online)} rollouts, then "
            f"{', '.join(str(r['updates']) for r in online)} updates, for seeds {data['seeds']}). "
            "The Online DT rows are the same policy before and after fine-tuning; its offline score was "
            "re-measured by `finetune` on the same seeds (`offline_rechecked` in the JSON).",
            "",
        ]
    lines += [PUBLISHED, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", default=["quickstart"], help="Datasets (names, paths or 'quickstart').")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=QUICKSTART_CONFIG)
    parser.add_argument("--steps", type=int, default=4000, help="Offline gradient steps per run.")
    parser.add_argument("--online-steps", type=int, default=10000, help="Online DT's online budget in env steps.")
    parser.add_argument("--updates-per-iteration", type=int, default=100)
    parser.add_argument("--target", type=float, default=3600.0, help="Evaluation target return.")
    parser.add_argument("--episodes", type=int, default=10, help="Evaluation episodes per run.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dtrl-variants"))
    parser.add_argument("--name", default="variants", help="Results file stem under benchmarks/results/.")
    parser.add_argument("overrides", nargs="*", help="Extra key=value overrides for every offline run.")
    parser.add_argument("--render", action="store_true", help="Only redraw results/NAME.md from results/NAME.json.")
    args = parser.parse_args()
    if args.render:
        render(RESULTS / f"{args.name}.json")
        return
    torch.set_num_threads(1)
    overrides = [
        f"steps={args.steps}",
        "model.context_length=10",
        "batch_size=32",
        f"checkpoint_every={args.steps}",
        f"eval_episodes={args.episodes}",
        f"target_returns=[{args.target}]",
        "num_threads=1",
        "device=cpu",
        *args.overrides,
    ]
    online = FinetuneConfig(
        steps=args.online_steps,
        eval_target=args.target,
        updates_per_iteration=args.updates_per_iteration,
        batch_size=32,
        eval_episodes=args.episodes,
        device="cpu",
    )
    tick = time.perf_counter()
    datasets = [compare_dataset(d, args.seeds, args.config, overrides, online, args.workdir) for d in args.dataset]
    settings = {"seeds": args.seeds, "config": str(args.config), "overrides": overrides, "online": online.__dict__}
    report = {"settings": settings, "datasets": datasets, "wall_s": time.perf_counter() - tick}
    render(save(args.name, report))


def render(results: Path) -> None:
    """Write the Markdown report beside a results JSON, from that JSON alone."""
    text = markdown(json.loads(results.read_text()))
    atomic_write(results.with_suffix(".md"), lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
