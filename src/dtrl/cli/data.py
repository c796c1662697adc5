"""``dtrl data collect | export | list | info | convert``.

Heavy imports happen inside the commands so ``dtrl --help`` stays fast.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dtrl.cli.app import FORCE_HELP, data_app
from dtrl.cli.display import console, progress_bar
from dtrl.errors import DtrlError

EXPORT_FORMATS = ("d4rl", "minari", "npz")


def info_rows(dataset: Any) -> list[tuple[str, str]]:
    """What ``dtrl data info`` prints: the summary, reference scores and, for collected datasets, provenance."""
    from dtrl.envs.scores import normalized_score

    rows = [(k, f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in dataset.summary().items()]
    ref = dataset.ref_scores
    if "random" in ref and "expert" in ref:
        rows.append(("ref_scores", f"random {ref['random']:.2f}, expert {ref['expert']:.2f}"))
        rows.append(("normalised_score_mean", f"{normalized_score(float(dataset.episode_returns.mean()), ref):.1f}"))
    else:
        rows.append(("ref_scores", "none recorded (dtrl eval falls back to D4RL's for hopper, halfcheetah, walker2d)"))
    meta = dataset.metadata
    protocol = meta.get("protocol")
    if protocol:
        rows += [
            ("made_by", f"{meta.get('made_by')} ({meta.get('kind')})"),
            ("command", str(meta.get("command"))),
            (
                "behaviour_agent",
                f"{meta['algorithm']['name']} ({meta['algorithm']['library']}), "
                f"{protocol['agent_steps']} steps, seed {protocol['seed']}, {protocol['n_envs']} envs",
            ),
            ("snapshots", f"expert at {meta.get('expert_steps')} steps, medium at {meta.get('medium_steps')} steps"),
            ("versions", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())),
            ("wall_time_s", str(meta.get("wall_time_s"))),
        ]
    elif meta.get("made_by") or meta.get("source"):
        rows.append(("provenance", str(meta.get("made_by") or meta.get("source"))))
    return rows


@data_app.command(
    "collect",
    epilog="Examples:\n\n  dtrl data collect Hopper-v5\n\n"
    "  dtrl data collect Walker2d-v5 --kinds medium,medium-replay --transitions 200000 --seed 1\n\n"
    "  dtrl data collect ALE/Breakout-v5 --transitions 500000\n\n"
    "  dtrl data collect dtrl/KeyToDoor-v0 --kinds random --episodes 1000",
)
def collect(
    env_id: str = typer.Argument(
        ..., help="Gymnasium id, e.g. Hopper-v5, Walker2d-v5, HalfCheetah-v5, ALE/Breakout-v5."
    ),
    kinds: str = typer.Option(
        "random,medium,medium-replay,expert,medium-expert", "--kinds", help="Comma-separated dataset kinds."
    ),
    transitions: int | None = typer.Option(
        None, "--transitions", min=1, help="Transitions per recorded dataset [default: 1,000,000; Atari: 500,000]."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Everything derives from it: agent, rollouts, reference scores."),
    agent_steps: int | None = typer.Option(
        None,
        "--agent-steps",
        min=1,
        help="Env steps to train the behaviour agent [default: 1,000,000; Atari: 10,000,000].",
    ),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        "--out",
        help="Where datasets and agents go (default: $DTRL_DATA_DIR or the user data dir).",
    ),
    max_episode_steps: int = typer.Option(1000, "--max-episode-steps", min=1, help="Episodes are truncated here."),
    ref_episodes: int = typer.Option(100, "--ref-episodes", min=1, help="Episodes per reference score."),
    episodes: int | None = typer.Option(
        None,
        "--episodes",
        min=1,
        help="With --kinds random: record this many uniformly random episodes, no behaviour "
        "agent (dataset <family>-random-<N>ep; e.g. dtrl/KeyToDoor-v0).",
    ),
) -> None:
    """Make D4RL-style datasets (random, medium, medium-replay, expert, medium-expert) with a PPO behaviour agent;
    for an ALE game (ALE/Breakout-v5), a DQN-replay-style dataset: every transition a PPO agent trained on,
    sampled to the paper's 1% subset (--kinds, --max-episode-steps and --ref-episodes do not apply)."""
    from rich.progress import TaskID

    from dtrl.collect.atari import collect_atari
    from dtrl.collect.d4rl import collect_d4rl, collect_random
    from dtrl.data.cache import default_cache_dir
    from dtrl.envs.atari import is_atari
    from dtrl.envs.scores import env_family

    root = cache_dir or default_cache_dir()
    if episodes is not None:
        if kinds != "random":
            raise DtrlError(f"--episodes records random episodes only: pass --kinds random (got --kinds {kinds})")
        path = collect_random(
            env_id,
            episodes,
            seed=seed,
            cache_dir=root,
            max_episode_steps=max_episode_steps,
            command=shlex.join(["dtrl", *sys.argv[1:]]),
            log=lambda line: console.print(line, soft_wrap=True, highlight=False, markup=False),
        )
        console.print(f"{path.stem}: {path}", soft_wrap=True, highlight=False)
        return
    tasks: dict[str, TaskID] = {}
    with progress_bar("collect", None) as bar:
        bar.remove_task(bar.task_ids[0])

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, info="")
            bar.update(tasks[stage], completed=done, total=total)

        def log(line: str) -> None:
            bar.console.print(line, soft_wrap=True, highlight=False, markup=False)

        if is_atari(env_id):
            paths = {
                f"{env_family(env_id)}-replay": collect_atari(
                    env_id,
                    transitions=transitions or 500_000,
                    seed=seed,
                    agent_steps=agent_steps or 10_000_000,
                    cache_dir=root,
                    command=shlex.join(["dtrl", *sys.argv[1:]]),
                    progress=progress,
                    log=log,
                )
            }
        else:
            paths = collect_d4rl(
                env_id,
                [k.strip() for k in kinds.split(",") if k.strip()],
                transitions=transitions or 1_000_000,
                seed=seed,
                agent_steps=agent_steps or 1_000_000,
                cache_dir=root,
                max_episode_steps=max_episode_steps,
                ref_episodes=ref_episodes,
                command=shlex.join(["dtrl", *sys.argv[1:]]),
                progress=progress,
                log=log,
            )
    for name, path in paths.items():
        console.print(f"{name}: {path}", soft_wrap=True, highlight=False)


@data_app.command(
    "export",
    epilog="Examples:\n\n  dtrl data export hopper-medium --format d4rl --out hopper-medium.hdf5\n\n"
    "  dtrl data export hopper-medium --format minari   (then minari.load_dataset('dtrl/hopper/medium-v0'))",
)
def export(
    source: str = typer.Argument(..., help="A cached dataset name (e.g. hopper-medium) or any dataset dtrl reads."),
    format: str = typer.Option(..., "--format", "-f", help="d4rl (HDF5), minari, or npz (dtrl's native format)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output file (d4rl, npz) or Minari datasets root (default: Minari's own, ~/.minari/datasets).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing file at --out."),
) -> None:
    """Export a dataset as a D4RL HDF5 file, a Minari dataset or a dtrl .npz."""
    from dtrl.data.readers import open_dataset
    from dtrl.data.writers import write_d4rl, write_minari

    if format not in EXPORT_FORMATS:
        raise DtrlError(f"unknown export format {format!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    if format != "minari" and out is None:
        raise DtrlError(f"--format {format} writes a file: give its path with --out PATH")
    if out is not None:
        out = check_dataset_output(out, "--out", source, force, native=format == "npz", directory=format == "minari")
    dataset = open_dataset(source)
    if format == "minari":
        written = write_minari(dataset, out)
    else:
        assert out is not None  # refused above for the file formats
        written = write_d4rl(dataset, out) if format == "d4rl" else dataset.save(out)
    console.print(
        f"wrote {written} ({dataset.num_episodes} episodes, {len(dataset)} transitions)",
        soft_wrap=True,
        highlight=False,
    )


def check_dataset_output(
    output: Path, option: str, source: str, force: bool, native: bool = False, directory: bool = False
) -> Path:
    """Where a dataset command writes, checked before the data is read: never its own source, and an
    existing file only with --force. ``native``: the path gets .npz, as EpisodeDataset.save gives it."""
    from dtrl.data.cache import cached_dataset
    from dtrl.data.episodes import NATIVE_SUFFIX
    from dtrl.outputs import check_output

    path = Path(output)
    if native and path.suffix != NATIVE_SUFFIX:
        path = path.with_name(path.name + NATIVE_SUFFIX)
    read = cached_dataset(source) or Path(source)
    sources = [read] if read.exists() else []
    return check_output(path, option, directory=directory, force=force, sources=sources, replace_files=directory)


@data_app.command("list", epilog="Examples:\n\n  dtrl data list\n\n  DTRL_DATA_DIR=/data/dtrl dtrl data list")
def list_(
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Default: $DTRL_DATA_DIR or the user data dir."),
) -> None:
    """List the datasets in the cache (usable by name: dtrl train dataset=NAME)."""
    import numpy as np

    from dtrl.data.cache import default_cache_dir, list_cached
    from dtrl.data.episodes import EpisodeDataset

    root = cache_dir or default_cache_dir()
    paths = list_cached(root)
    if not paths:
        console.print(f"no datasets in {root}: make some with `dtrl data collect Hopper-v5`", soft_wrap=True)
        return
    table = Table(title=str(root))
    table.add_column("name", no_wrap=True, min_width=max(len(p.stem) for p in paths))  # the name is what users type
    for col in ("episodes", "transitions", "return mean", "return max"):
        table.add_column(col, justify="right")
    for path in paths:
        ds = EpisodeDataset.load(path)
        returns = ds.episode_returns
        table.add_row(
            path.stem, str(ds.num_episodes), str(len(ds)), f"{np.mean(returns):.1f}", f"{np.max(returns):.1f}"
        )
    console.print(table)


@data_app.command(
    "info", epilog="Examples:\n\n  dtrl data info quickstart\n\n  dtrl data info data/hopper-medium-v2.hdf5"
)
def data_info(
    source: str = typer.Argument(
        ..., help="A cached dataset name, .npz, .hdf5 (D4RL) file, Minari dataset dir or id, or 'quickstart'."
    ),
) -> None:
    """Print a dataset's summary statistics, reference scores and provenance."""
    from dtrl.data.readers import open_dataset

    table = Table(title=source, show_header=False)
    for k, v in info_rows(open_dataset(source)):
        table.add_row(k, v)
    console.print(table)


@data_app.command(
    "convert",
    epilog="Examples:\n\n  dtrl data convert hopper-medium-v2.hdf5 data/hopper-medium.npz --env Hopper-v5\n\n"
    "  dtrl data convert mujoco/hopper/medium-v0 data/hopper-store --store",
)
def data_convert(
    source: str = typer.Argument(..., help="A .hdf5 (D4RL) file, Minari dataset dir or id, or a .npz."),
    output: Path = typer.Argument(..., help="Output path of the native .npz dataset (a directory with --store)."),
    env: str | None = typer.Option(None, "--env", help="Record this gymnasium id as the dataset's env."),
    store: bool = typer.Option(
        False, "--store", help="Write an on-disk store (memory-mapped in training, for data larger than RAM)."
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Convert a dataset to dtrl's native format (fast to load)."""
    from dtrl.data.readers import open_dataset
    from dtrl.data.store import write_store

    output = check_dataset_output(output, "OUTPUT", source, force, native=not store, directory=store)
    dataset = open_dataset(source)
    if env:
        dataset.env_id = env
    written = write_store(dataset, output) if store else dataset.save(output)
    console.print(f"wrote {written} ({dataset.num_episodes} episodes, {len(dataset)} transitions)")
