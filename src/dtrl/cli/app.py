"""The ``dtrl`` Typer apps and their global options. The command modules add their commands to these."""

from __future__ import annotations

import typer

from dtrl import __version__
from dtrl.cli.display import console

app = typer.Typer(
    help="Decision Transformers: train on offline RL datasets and evaluate in the simulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
data_app = typer.Typer(
    help="Collect, inspect, convert and export offline datasets.",
    no_args_is_help=True,
    epilog="Examples:\n\n  dtrl data info quickstart\n\n  dtrl data convert hopper-medium-v2.hdf5 data/hopper.npz --env Hopper-v5",
)
app.add_typer(data_app, name="data")

_debug = {"on": False}
FORCE_HELP = (
    "Write even into a checkpoint, a run directory's top level or over an existing file that this command did not make."
)


def _version(value: bool) -> None:
    if value:
        console.print(f"dtrl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _debug["on"] = debug
