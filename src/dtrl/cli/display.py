"""What the commands show: the shared console, progress bars and the results table. Silent
progress when stdout is not a terminal, so CI logs stay readable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Progress]:
    """A rich progress bar with ETA; silent when stdout is not a terminal (CI logs)."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with bar:
        bar.add_task(description, total=total, info="")
        yield bar


def train_with_progress(config, resume: bool = False, overrides: dict | None = None, train=None):
    """Train with a progress bar showing the loss; prints a line per log interval when not a terminal.

    ``train``: the training function (default :func:`dtrl.train.train`; stacked seeds pass theirs)."""
    if train is None:
        from dtrl.train import train

    start = 0

    with progress_bar("train", config.steps) as bar:
        task = bar.task_ids[0]

        def on_step(step: int, loss: float | None) -> None:
            nonlocal start
            if not start:
                start = step
                bar.update(task, completed=step - 1)
            bar.update(task, completed=step, info=f"loss {loss:.4f}" if loss is not None else "")
            if not console.is_terminal and (step % config.log_every == 0 or step == config.steps):
                console.print(f"step {step}/{config.steps}  loss {loss:.4f}")

        return train(config, resume=resume, overrides=overrides, on_step=on_step)


@contextmanager
def eval_progress(env_id: str, episodes: int) -> Iterator[Callable[[int], None]]:
    """An ``on_step`` for evaluate(): env steps against the episode limit; silent when not a terminal."""
    import gymnasium as gym

    from dtrl.envs import check_env_id

    check_env_id(env_id)
    last = 0
    with progress_bar(f"eval ({episodes} episodes)", gym.spec(env_id).max_episode_steps) as bar:
        task = bar.task_ids[0]

        def on_step(step: int) -> None:
            nonlocal last
            last = step
            bar.update(task, completed=step, info=f"env step {step}")

        yield on_step
        bar.update(task, total=last, completed=last)  # every episode ended before the limit


def results_table(title: str, results, baseline=None) -> Table:
    table = Table(title=title)
    for col in ("policy", "target return", "return (mean ± std)", "normalised score", "episodes"):
        table.add_column(col, justify="right")
    rows = ([("random", baseline)] if baseline is not None else []) + [("DT", r) for r in results]
    for name, r in rows:
        norm = r.normalized
        table.add_row(
            name,
            "-" if r.target_return is None else f"{r.target_return:g}",
            f"{r.mean:.1f} ± {r.std:.1f}",
            f"{norm[0]:.1f} ± {norm[1]:.1f}" if norm else "-",
            str(len(r.returns)),
        )
    return table
