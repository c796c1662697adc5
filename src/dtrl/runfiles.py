"""Read the files a run leaves (``config.yaml``, ``metrics.jsonl``, ``calibration.json``, ``eval.json``)
defensively: a corrupt or truncated file is one line naming it and what to do, never a traceback.

A half-written last line of ``metrics.jsonl`` is what a crash mid-write leaves;
it is skipped with a warning. Anything else that does not parse is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from dtrl.errors import DtrlError

log = logging.getLogger(__name__)
T = TypeVar("T")
RUN_CONFIG_FIX = "restore it, or train again into a new out_dir"
"""What to do about a run's damaged config.yaml."""


def _text(path: Path, label: str, fix: str) -> str:
    if not path.exists():
        raise DtrlError(f"{label}{path} does not exist: {fix}")
    if path.is_dir():
        raise DtrlError(f"{label}{path} is a directory: {fix}")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise DtrlError(f"{label}{path} is corrupt (not text): {fix}") from None
    except OSError as e:
        raise DtrlError(f"cannot read {label}{path} ({e.strerror or e}): {fix}") from None


def read_yaml(path: Path, fix: str, label: str = "", mapping_fix: str | None = None) -> dict[str, Any]:
    """A YAML file that must hold a mapping. Pipes (``-c <(...)``, ``/dev/fd/N``) are read like files."""
    try:
        data = yaml.safe_load(_text(path, label, fix)) or {}
    except yaml.YAMLError as e:
        raise DtrlError(f"{label}{path} is not valid YAML ({str(e).splitlines()[0]}): {fix}") from None
    if not isinstance(data, dict):
        raise DtrlError(f"{label}{path} holds a {type(data).__name__}, not a mapping: {mapping_fix or fix}")
    return data


def read_json(path: Path, fix: str) -> Any:
    """A JSON file; corrupt or truncated is one line naming it and ``fix``."""
    try:
        return json.loads(_text(path, "", fix))
    except json.JSONDecodeError as e:
        raise DtrlError(f"{path} is corrupt or truncated (not valid JSON: {e.msg} at line {e.lineno}): {fix}") from None


def checked(path: Path, data: Any, read: Callable[[Any], T], what: str, fix: str) -> T:
    """``read(data)``, with a missing key or a wrong type in ``data`` reported as one line about ``path``."""
    try:
        return read(data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        detail = f"no {e}" if isinstance(e, KeyError) else str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DtrlError(f"{path} is not {what} ({detail}): {fix}") from None


def read_jsonl(path: Path, fix: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log with a numeric ``step``; a half-written last line is skipped with a warning."""
    lines = _text(path, "", fix).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                log.warning("%s: skipped its last line, which is half-written (a crash mid-write or a run still writing)", path)
                continue
            raise DtrlError(f"{path} line {n} is not JSON: the file is corrupt; delete that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)) or isinstance(row.get("step"), bool):
            raise DtrlError(f"{path} line {n} is not a metrics row with a numeric step: the file is corrupt; delete that line")
        rows.append(row)
    return rows
