"""MkDocs hook: the CLI reference is every dtrl command's ``--help``, generated at build time.

Generated rather than written, so the page cannot drift from the code; the help is
rendered exactly as a terminal shows it (options, defaults, examples).
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- dtrl-cli-reference -->"


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path, groups first, in the order ``dtrl --help`` lists them."""
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from typer.main import get_command
    from typer.testing import CliRunner

    from dtrl.cli import app

    runner = CliRunner()
    sections = []
    for path in _commands(get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
        if result.exit_code != 0:
            raise RuntimeError(f"dtrl {' '.join(path)} --help failed: {result.output}")
        text = "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())
        sections.append(f"## {' '.join(('dtrl', *path))}\n\n```text\n{text}\n```\n")
    return markdown.replace(MARKER, "\n".join(sections))
