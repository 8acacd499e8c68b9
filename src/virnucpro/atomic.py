"""Atomic file and directory publication.

A result becomes visible under its final name only once it is complete: it is
written under a temporary name in the same directory, flushed and fsynced, then
renamed with os.replace (atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NoReturn


def _raise_naming(exc: BaseException, path: Path) -> NoReturn:
    """Re-raise `exc`; an OSError from write() or flush() names no file, so it is raised
    again naming the result being written.

    torch.save turns the OSError of a full disk into a RuntimeError ("unexpected pos"),
    keeping the OSError as its context: that OSError is the error to report.
    """
    cause = exc if isinstance(exc, OSError) else exc.__context__
    if isinstance(cause, OSError) and cause.filename is None and cause.errno is not None:
        raise OSError(cause.errno, cause.strerror, str(path)) from exc
    raise exc


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask is process-wide, and files are written from threads.
_UMASK = _read_umask()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path`; on success publish it as `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_naming(exc, path)
    fsync_dir(path.parent)


def write_sentinel(path: str | os.PathLike, text: str = "") -> None:
    """Write a `.done` sentinel; call it only after the result it vouches for is published."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name; publish it as `path` on success.

    On any failure the temporary directory is removed, so a failed step leaves
    no partial output behind. `path` must not exist (Snakemake removes declared
    outputs before a job runs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_naming(exc, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def scratch_directory(result: str | os.PathLike) -> Iterator[Path]:
    """A private working directory beside `result`, for the files a step needs only while
    it makes that result; removed when the block ends, however it ends.

    It is named as `result`'s unfinished atomic writes are (`.NAME.XXXX.tmp`), so what a
    killed step leaves behind is recognisable as an orphan and sits on the results' file
    system, not in a /tmp that may be small or node-local. An OSError that names no file
    (a full disk while writing) is raised naming `result`.
    """
    result = Path(result)
    tmp = Path(tempfile.mkdtemp(prefix=f".{result.name}.", suffix=".tmp", dir=result.parent))
    try:
        yield tmp
    except BaseException as exc:
        _raise_naming(exc, result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
