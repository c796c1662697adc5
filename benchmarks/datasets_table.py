"""The table of D4RL-protocol datasets in ``benchmarks/datasets.md``, read from the dataset cache.

    python benchmarks/datasets_table.py [--envs hopper halfcheetah walker2d] [--cache-dir DIR]

Every number comes from a dataset's own arrays and the metadata that
``dtrl data collect`` saved with it (the command, the recording's wall time, the
reference scores, the behaviour agent's snapshots), so the table can be rebuilt
from the cache at any time. Prints Markdown; paste it into datasets.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dtrl.collect.d4rl import D4RL_KINDS
from dtrl.data.cache import dataset_path, default_cache_dir
from dtrl.data.episodes import EpisodeDataset
from dtrl.envs.scores import normalized_score

ENVS = ("hopper", "halfcheetah", "walker2d")


def dataset_row(data: EpisodeDataset, path: Path) -> str:
    """One table row: size, returns, the data's normalised score and how the recording went."""
    meta = data.metadata
    returns = data.episode_returns
    score = normalized_score(float(returns.mean()), data.ref_scores)
    truncated = int(np.count_nonzero(data.truncations))
    wall = meta.get("wall_time_s")
    wall = "0 (concatenation)" if meta.get("kind") == "medium-expert" else f"{wall:.0f}"
    if meta.get("kind") == "medium-replay":
        wall += " (the agent's training run)"
    return (
        f"| `{data.name}` | {wall} | {len(data):,} | {data.num_episodes:,} | {returns.mean():.1f} | "
        f"{returns.max():.1f} | {score:.1f} | {truncated:,} | {path.stat().st_size / 1e6:.0f} MB |"
    )


def env_summary(family: str, data: EpisodeDataset) -> str:
    """The behaviour agent and reference scores behind one env's datasets."""
    meta = data.metadata
    ref = data.ref_scores
    return (
        f"* **{family}** (`{meta.get('command')}`): PPO agent {meta['protocol']['agent_steps']:,} steps; "
        f"expert snapshot at {meta.get('expert_steps'):,}, medium at {meta.get('medium_steps'):,} steps; "
        f"reference scores random {ref['random']:.1f}, expert {ref['expert']:.1f}."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    p.add_argument("--cache-dir", type=Path, default=None, help="default: $DTRL_DATA_DIR or the user data dir")
    args = p.parse_args()
    cache = args.cache_dir or default_cache_dir()
    rows, summaries = [], []
    for family in args.envs:
        for kind in D4RL_KINDS:
            path = dataset_path(f"{family}-{kind}", cache)
            if not path.exists():
                rows.append(f"| `{path.stem}` | not collected | | | | | | | |")
                continue
            data = EpisodeDataset.load(path)
            rows.append(dataset_row(data, path))
            if kind == "medium":
                summaries.append(env_summary(family, data))
    print(
        "| dataset | recording wall time (s) | transitions | episodes | return mean | return max "
        "| normalised score of the data (mean) | truncated episodes | size (.npz) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(summaries))


if __name__ == "__main__":
    main()
