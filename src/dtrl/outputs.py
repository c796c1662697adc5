"""Where commands write: checked before any work is done, never into what the command did not make.

:func:`check_output` turns every bad output path into one line: an existing
directory where a file goes (or a file where a directory goes), a path under a
file, an unwritable place, the input being read. Without ``--force`` it also
refuses a training checkpoint, the top level of a run directory, the
checkpoints of a run and, for dataset commands, any existing file: those hold
what training or another command made. :func:`staged_directory` writes a
directory's files all at once or not at all, as checkpoints are written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dtrl.errors import DtrlError
from dtrl.io import UMASK
from dtrl.runfiles import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, RUN_CONFIG_FILE, TRAIN_STATE_FILE

FORCE_HINT = "choose another path, or pass --force to overwrite it"


def is_run_dir(path: Path) -> bool:
    """A directory ``dtrl train`` made: its resolved config and its checkpoints (or metrics) at the top."""
    return (path / RUN_CONFIG_FILE).is_file() and ((path / CHECKPOINT_DIR).is_dir() or (path / METRICS_FILE).is_file())


def is_checkpoint(path: Path) -> bool:
    """A training checkpoint: a policy directory with its train state, or one inside a run's checkpoints."""
    return (path / TRAIN_STATE_FILE).is_file() or (
        path.parent.name == CHECKPOINT_DIR and (path / CONFIG_FILE).is_file()
    )


def made_by_training(path: Path, directory: bool) -> str | None:
    """Why writing ``path`` would overwrite what training made, or None when it would not."""
    path = Path(os.path.abspath(path))
    for place in [path, *path.parents] if directory else path.parents:
        if is_checkpoint(place):
            return f"is inside the training checkpoint {place}" if place != path else "is a training checkpoint"
        if place.name == CHECKPOINT_DIR and is_run_dir(place.parent):
            return f"is inside the checkpoints of the run {place.parent}"
    if directory and is_run_dir(path):
        return "is a run directory: its top level holds the run's config and checkpoints"
    if not directory and is_run_dir(path.parent):
        return f"is at the top level of the run {path.parent}, which holds what training wrote"
    return None


def check_output(
    path: str | os.PathLike,
    option: str,
    *,
    directory: bool = False,
    force: bool = False,
    sources: Sequence[str | os.PathLike] = (),
    replace_files: bool = True,
    own: str | os.PathLike | None = None,
) -> Path:
    """Check an output path before the work starts; return it. One line for each way it can be wrong.

    ``directory``: the output is a directory (else a file). ``sources``: inputs it must not be.
    ``replace_files=False``: an existing file is refused without ``force`` (datasets). ``own``: the
    command's default output, which it may always replace (``dtrl calibrate``'s RUN/calibration.json).
    """
    path = Path(path)
    where = f"{option} {path}"
    existing = next((p for p in [path, *path.parents] if p.exists() or p.is_symlink()), Path("."))
    if existing != path and not existing.is_dir():
        raise DtrlError(f"{where} lies under the file {existing}, which is not a directory: choose another path")
    if directory and path.exists() and not path.is_dir():
        raise DtrlError(f"{where} is a file, not a directory: give a directory to write into")
    if not directory and path.is_dir():
        raise DtrlError(f"{where} is an existing directory: give a file path (e.g. {path / 'out.json'})")
    parent = existing if existing != path else path.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise DtrlError(f"{where}: {existing} is not writable: choose a writable location or fix its permissions")
    for source in sources:
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise DtrlError(f"{where} is the input being read ({source}): choose another path")
    if force or (own is not None and os.path.abspath(path) == os.path.abspath(own)):
        return path
    if (reason := made_by_training(path, directory)) is not None:
        raise DtrlError(f"{where} {reason}: {FORCE_HINT}")
    if not replace_files and path.exists():
        raise DtrlError(f"{where} already exists: {FORCE_HINT}")
    return path


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield a hidden directory beside ``out`` to write into; when the block succeeds its files move into
    ``out`` (the directory itself, if ``out`` is new), else it is deleted: a reader never sees half an output."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it private; give it the usual permissions
        yield tmp
        if not out.exists():
            os.replace(tmp, out)
            return
        for item in sorted(tmp.iterdir()):
            os.replace(item, out / item.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
