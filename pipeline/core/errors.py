"""The one exception a stage raises for bad input or a fault the user can fix: the CLI prints
it as one line and exits 1. A full disk is one of them, wherever it strikes (a file we
write, HDF5 under Keras, MLflow's sqlite store): `full_disk` recognises it by what each says."""

from __future__ import annotations

import errno
import logging
import re
from pathlib import Path


class PipelineError(Exception):
    """A problem the user can fix (a bad param, file or URL); its message says what to do."""


class DiskFull(PipelineError):
    """A write stopped by a full disk; made by `full_disk`, which names the file."""


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how HDF5 (through h5py) and sqlite (through SQLAlchemy and MLflow) word a full disk
FULL_DISK_WORDS = ("No space left on device", "Disk quota exceeded", "database or disk is full")
SQLITE_FULL = "database or disk is full"
_HDF5_FILENAME = re.compile(r"filename = '([^']+)'")


def _chain(exc: BaseException | None):
    """`exc` and the exceptions it was raised from or while handling, each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception behind it, says the disk (or the quota) is full."""
    for link in _chain(exc):
        if isinstance(link, DiskFull):
            return True
        if isinstance(link, OSError) and link.errno in FULL_DISK_ERRNOS:
            return True
        if any(words in str(link) for words in FULL_DISK_WORDS):
            return True
    return False


def full_disk_path(exc: BaseException, store: str = "") -> str:
    """The file a full disk stopped: the copy's target, the file named, the HDF5 file named,
    `store` for sqlite's "database or disk is full"; else the working directory."""
    for link in _chain(exc):
        if isinstance(link, OSError) and (link.filename2 or link.filename):
            return str(link.filename2 or link.filename)
        if match := _HDF5_FILENAME.search(str(link)):
            return match.group(1)
        if store and SQLITE_FULL in str(link):
            return store
    return str(Path.cwd())


def full_disk(path: Path | str) -> DiskFull:
    """The one line for a full disk: what could not be written, and what to do."""
    return DiskFull(f"{path}: no space left on device; free space on that disk and run again")


class HideFullDiskLogs(logging.Filter):
    """Drops a log record that says the disk is full (MLflow logs sqlite's with a traceback):
    the stage says it once, as its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(words in record.getMessage() for words in FULL_DISK_WORDS)
