"""The tables of ``benchmarks/results/atari.md``, read from the result files of ``benchmarks/atari.py``.

    python benchmarks/atari_report.py [--games breakout qbert pong seaquest] [--suffix ""]

Reads ``results/atari_<game><suffix>.json`` for each game and prints Markdown: the
data each agent produced, then DT against BC per seed with the paper's numbers beside
them. Every number comes from those files (the paper's from
``../shared/reference/decision-transformer-facts.md``, copied into ``PAPER`` below).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
GAMES = ("breakout", "qbert", "pong", "seaquest")
#: The paper's Table 1 (gamer-normalised, mean ± std over 3 seeds; 500k DQN-replay transitions, full budget).
PAPER = {
    "breakout": ("267.5 ± 97.5", "138.9 ± 61.7"),
    "qbert": ("15.4 ± 11.4", "17.3 ± 14.7"),
    "pong": ("106.1 ± 8.1", "85.2 ± 20.0"),
    "seaquest": ("2.5 ± 0.4", "2.1 ± 0.3"),
}


def data_row(game: str, result: dict) -> str:
    """What the behaviour agent saw and what the paper-style subset kept."""
    d = result["dataset"]
    agent = d["agent"]
    return (
        f"| {game.capitalize()} | {agent['agent_steps']:,} | {agent['wall_time_s']:.0f} s | "
        f"{agent['episodes']} ({agent['return_mean']:.1f} / {agent['return_last_100']:.1f} / {agent['return_max']:.0f}) | "
        f"{d['episodes']}, {d['transitions']:,} | {d['return_mean']:.1f} / {d['return_max']:.0f} | "
        f"{d['gamer_normalised_mean']:.2f} | {d['observations_nbytes'] / 1e6:.0f} MB | {d['npz_bytes'] / 1e6:.1f} MB |"
    )


def scores(result: dict, method: str, mode: str) -> np.ndarray:
    """Gamer-normalised mean return of each seed's run."""
    return np.array([r[mode]["gamer_normalised"] for r in result["runs"] if r["method"] == method])


def result_rows(game: str, result: dict) -> list[str]:
    """Per-seed returns of DT and BC (sampled actions, as the paper), and their gamer-normalised means."""
    rows = []
    for method in ("DT", "BC"):
        runs = sorted((r for r in result["runs"] if r["method"] == method), key=lambda r: r["seed"])
        per_seed = " / ".join(f"{r['sampled']['return_mean']:.1f}" for r in runs)
        s, a = scores(result, method, "sampled"), scores(result, method, "argmax")
        paper = PAPER[game][0 if method == "DT" else 1]
        rows.append(
            f"| {game.capitalize()} | {method} | {len(runs)} | {per_seed} | **{s.mean():.2f} ± {s.std():.2f}** | "
            f"{a.mean():.2f} | {paper} |"
        )
    dt, bc = (scores(result, m, "sampled") for m in ("DT", "BC"))
    rand = result["random"]
    rows.append(
        f"| {game.capitalize()} | uniformly random | — | {rand['return_mean']:.1f} | {rand['gamer_normalised']:.2f} | — | 0 |"
    )
    diff = paired_differences(result)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
    rows.append(
        f"| {game.capitalize()} | DT − BC | | above on {int(np.sum(dt > bc))} of {len(dt)} seeds; per paired episode "
        f"{diff.mean():+.1f} ± {half:.1f} (95% CI, {len(diff)} pairs) | | | |"
    )
    return rows


def paired_differences(result: dict) -> np.ndarray:
    """DT's return minus BC's on the same evaluation episode (same training seed, same env seed)."""
    by_key = {(r["method"], r["seed"]): np.asarray(r["sampled"]["returns"]) for r in result["runs"]}
    return np.concatenate([by_key["DT", seed] - by_key["BC", seed] for method, seed in by_key if method == "DT"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--games", nargs="+", default=list(GAMES), choices=GAMES)
    p.add_argument("--suffix", default="_mingpt", help="results/atari_<game><suffix>.json")
    args = p.parse_args()
    results = {g: json.loads((RESULTS / f"atari_{g}{args.suffix}.json").read_text()) for g in args.games}
    print(
        "| game | agent steps | agent wall time | training episodes (return mean / last 100 / max) | "
        "subset: episodes, transitions | subset return mean / max | subset gamer-normalised | frames in RAM | `.npz` on disk |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for game, result in results.items():
        print(data_row(game, result))
    print()
    print(
        "| game | policy | seeds | return per seed (sampled actions, 10 episodes each) | "
        "gamer-normalised, mean ± std over seeds | most likely action | paper (500k transitions, full budget) |"
    )
    print("|---|---|---|---|---|---|---|")
    for game, result in results.items():
        print("\n".join(result_rows(game, result)))
    print()
    for game, result in results.items():
        walls = [r["train_and_eval_wall_s"] for r in result["runs"] if "train_and_eval_wall_s" in r]
        reused = sum(r.get("reused", "train_and_eval_wall_s" not in r) for r in result["runs"])
        span = f"training + evaluation {min(walls):.0f}-{max(walls):.0f} s per run, " if walls else ""
        if reused:
            span += f"{reused} of {len(result['runs'])} runs reused from another call of the same command (`--reuse-runs`), "
        print(
            f"* {game.capitalize()}: `{result['command']}` ({result['date']}; {span}{result['total_wall_s']:.0f} s "
            f"in all; load average {result.get('load_average_1_5_15min')})"
        )


if __name__ == "__main__":
    main()
