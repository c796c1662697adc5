"""Files written whole or not at all, and files read defensively.

Every file dtrl writes goes through here: a temp file beside the target, fsynced, renamed into
place, so a reader (or a crash) never sees half a file, and a full disk or an unwritable place is a
one-line :class:`~dtrl.errors.DiskError`. The readers turn a missing, corrupt or truncated file into
one line naming it and what to do, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dtrl.errors import DtrlError, write_error

log = logging.getLogger(__name__)
T = TypeVar("T")

UMASK = os.umask(0o022)
os.umask(UMASK)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename.

    A reader never sees a half-written file: either the old one or the new one.
    A full disk or an unwritable place is a one-line :class:`DtrlError`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) or e from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and (error := write_error(path, e)) is not None:
            raise error from None
        raise


def write_json(path: Path, value: Any, indent: int | None = 2) -> None:
    """``value`` as JSON, written atomically."""
    text = json.dumps(value, indent=indent).encode()
    atomic_write(path, lambda f: f.write(text))


def atomic_save(path: Path, save: Callable[[str], None]) -> None:
    """Run ``save(tmp_path)`` for writers that take a path (SB3), then rename into place: a crash
    leaves no torn file."""
    tmp = path.with_name(f".{path.name}.tmp")
    save(str(tmp))
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_line(path: Path, line: str) -> None:
    """Append one line to a log whole or not at all: a write cut short (disk full) is truncated away."""
    data = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(path, e) or e from None
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError as e:
            os.ftruncate(fd, end)
            raise write_error(path, e) or e from None
    finally:
        os.close(fd)


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
                log.warning(
                    "%s: skipped its last line, which is half-written (a crash mid-write or a run still writing)", path
                )
                continue
            raise DtrlError(f"{path} line {n} is not JSON: the file is corrupt; delete that line") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("step"), (int, float))
            or isinstance(row.get("step"), bool)
        ):
            raise DtrlError(
                f"{path} line {n} is not a metrics row with a numeric step: the file is corrupt; delete that line"
            )
        rows.append(row)
    return rows


def read_state(path: Path) -> dict[str, Any]:
    """A JSON state file dtrl keeps for itself (a collector's timings, its evaluations so far); ``{}``
    before the first write."""
    return json.loads(path.read_text()) if path.is_file() else {}
