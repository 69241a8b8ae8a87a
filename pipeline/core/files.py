"""Files: atomic writes (an interrupted stage never leaves a half file for DVC to cache; a
full disk is one error naming the file), outputs replaced all or none (a stage that fails
part-way leaves its last good outputs: dvc.yaml keeps them, `persist`) and content hashes."""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import PipelineError, full_disk, is_disk_full
from pipeline.core.paths import CHECKPOINTS_DIR

CHUNK = 1 << 16  # reads and downloads: a broken transfer keeps most of what arrived
_held: set[Path] = set()  # the lock files this process holds (exclusive)
# (target, its previous version or None) for each output replaced inside all_or_none
_replaced: contextvars.ContextVar[list | None] = contextvars.ContextVar("replaced", default=None)


@contextlib.contextmanager
def atomic_path(target: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success.
    `suffix` is for writers that insist on an extension (Keras: `.keras`, `.weights.h5`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _honour_umask(tmp_path, 0o666)
        _keep(target)
        os.replace(tmp_path, target)
    except Exception as exc:
        _raise_full_disk(exc, target)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory; swap it in for `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _honour_umask(tmp, 0o777)
        _keep(target)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as exc:
        _raise_full_disk(exc, target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _honour_umask(path: Path, mode: int) -> None:
    """Give a temporary file or folder the mode a plain open() or mkdir() would have: mkstemp
    and mkdtemp make them owner-only, which breaks a group's shared project or DVC cache."""
    umask = os.umask(0)  # the only way to read it; set straight back
    os.umask(umask)
    if path.exists():
        os.chmod(path, mode & ~umask)


def _raise_full_disk(exc: Exception, target: Path) -> None:
    """A full disk while writing `target` (in our code, Keras', h5py's, matplotlib's) is one
    error naming `target`; the temporary file or folder goes as for any failure."""
    if is_disk_full(exc) and not isinstance(exc, PipelineError):
        raise full_disk(target) from None


@contextlib.contextmanager
def all_or_none() -> Iterator[None]:
    """Outputs that change together (a stage's model, reports and figures): if the block
    fails, each file or folder that atomic_path or atomic_dir replaced in it is put back as
    it was, and each new one removed. The old versions wait beside their targets as
    `.NAME.previous` (a hard link, or the folder renamed: no copy, no disk space). Inside
    another all_or_none, the outer one decides."""
    if _replaced.get() is not None:
        yield
        return
    replaced: list[tuple[Path, Path | None]] = []
    token = _replaced.set(replaced)
    try:
        yield
    except BaseException:
        for target, previous in reversed(replaced):
            _remove(target)
            if previous is not None:
                os.replace(previous, target)
        raise
    finally:
        _replaced.reset(token)
        for _, previous in replaced:
            if previous is not None:
                _remove(previous)


def _keep(target: Path) -> None:
    """Inside all_or_none, before `target` is first replaced: keep what it was."""
    replaced = _replaced.get()
    if replaced is None or any(done == target for done, _ in replaced):
        return
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.previous")
        _remove(previous)
        if target.is_dir():
            os.replace(target, previous)
        else:
            try:
                os.link(target, previous)
            except OSError:  # a file system without hard links
                shutil.copy2(target, previous)
    replaced.append((target, previous))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def training_lock(name: str) -> contextlib.AbstractContextManager:
    """One training of model `name` at a time: a second one (a hand-run stage beside `dvc
    repro`) would resume from, then delete, the first one's epoch backups."""
    return exclusive(CHECKPOINTS_DIR / f"{name}.lock", f"{name} is already training")


@contextlib.contextmanager
def exclusive(lock: Path, busy: str) -> Iterator[None]:
    """Hold the lock file `lock`, with this process's PID in it; held by another process,
    PipelineError: `busy`, its PID and what to do. The kernel's lock (flock), released when
    the process ends however it ends; by hand, as filelock is no dependency of ours (only of
    DVC's and Ray's) and records no holder. Taken again in the same process: held already."""
    if lock in _held:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            pid = file.read().strip() or "unknown"
            raise PipelineError(
                f"{busy} (PID {pid}, lock {lock}); wait for it to end or stop it "
                f"(kill {pid}), then run again"
            ) from None
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        _held.add(lock)
        try:
            yield
        finally:
            _held.discard(lock)
            file.truncate(0)


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_metrics(path: Path | str) -> dict:
    """The scores of one run from its metrics file, reports/metrics/NAME.json, which holds
    them under the key NAME (pipeline/training/run_record.py writes it)."""
    path = Path(path)
    return json.loads(path.read_text())[path.stem]
