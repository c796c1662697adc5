"""User-facing errors.

A :class:`DtrlError` is a problem with the user's input (a file, a config, an
argument, an environment id). The CLI prints its message as one line and exits
non-zero without a traceback; programming errors keep their tracebacks.
"""

from __future__ import annotations

import errno
import os

# Write failures that are the user's to fix (space, quota, permissions), not dtrl bugs.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


class DtrlError(Exception):
    """Bad input: the message names the problem and how to fix it."""


class DiskError(DtrlError):
    """A write failed for want of space or permission; the writer kept nothing partial."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str) -> None:
        super().__init__(f"cannot write {path}: {reason}: {fix}")
        self.path, self.reason, self.fix = path, reason, fix


def write_error(path: str | os.PathLike, error: OSError) -> DiskError | None:
    """The one-line error for a write that failed on a full disk or a read-only place; None for other failures."""
    reason = error.strerror or os.strerror(error.errno or 0)
    if error.errno in _FULL:
        return DiskError(
            path, reason, "free disk space or choose another location, then run again (nothing partial was kept)"
        )
    if error.errno in _DENIED:
        return DiskError(path, reason, "choose a writable location or fix its permissions")
    return None
