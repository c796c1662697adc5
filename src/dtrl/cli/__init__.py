"""The ``dtrl`` command line.

Every command turns a :class:`DtrlError` into one line on stderr and exit code
2; ``dtrl --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

# Each module adds its commands to the app; `dtrl --help` lists them in this order.
# isort: off
from dtrl.cli import training, quickstart, results, data  # noqa: F401 (imported for the commands they register)

# isort: on
from dtrl.cli.app import _debug, app
from dtrl.cli.display import console, err_console, eval_progress, progress_bar, results_table, train_with_progress
from dtrl.errors import DtrlError

__all__ = ["app", "console", "eval_progress", "main", "progress_bar", "results_table", "train_with_progress"]


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except DtrlError as e:
        if _debug["on"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except typer.TyperException as e:  # a bad command line (click's usage errors): one line as well
        if type(e).__name__ != "NoArgsIsHelpError":  # that one has shown the help already
            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            message = " ".join(e.format_message().split()) + hint
            err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted: the newest checkpoint is intact; continue with --resume")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
