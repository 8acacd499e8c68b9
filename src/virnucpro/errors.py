"""Errors that end a run with one clear line, and every exit status in one place.

Exit statuses (also in README "When things go wrong"):
  64  bad usage or configuration (EX_USAGE)
  65  bad input data (EX_DATAERR): the message names the file, the record and what to do
  66  an input file is missing or unreadable, or a model file is missing, unreadable, refused
      or of the wrong architecture (EX_NOINPUT)
  73  an output cannot be created: permission denied, read-only file system (EX_CANTCREAT)
  74  the disk is full, a quota is exceeded, or an I/O error (EX_IOERR)
  75  a result file is corrupted: moved aside, a rerun redoes its work (EX_TEMPFAIL)
  78  an incompatible result file or partial results: a decision is needed (EX_CONFIG)
  128+N  interrupted by signal N (130 Ctrl-C, 143 SIGTERM)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NOINPUT = 66
EXIT_CANTCREAT = 73
EXIT_IOERR = 74
EXIT_CORRUPTED = 75
EXIT_INCOMPATIBLE = 78


class VirNucProError(Exception):
    """An expected failure: reported as one line, never as a traceback."""

    exit_code = 1

    def one_line(self) -> str:
        return " ".join(str(self).split())

    def lines(self) -> list[str]:
        """What the user is told: one line per problem."""
        return [self.one_line()]


class InputError(VirNucProError):
    """The input data cannot be processed as given."""

    exit_code = EXIT_DATA

    def __init__(self, path: str, problem: str, hint: str, record: str | None = None,
                 record_number: int | None = None) -> None:
        where = str(path)
        if record is not None:
            where += f": record '{record}'"
            if record_number is not None:
                where += f" (#{record_number})"
        elif record_number is not None:  # a record whose ID could not be read
            where += f": record #{record_number}"
        super().__init__(f"{where}: {problem}; {hint}")
        self.path = str(path)
        self.record = record


class MissingInputError(InputError):
    exit_code = EXIT_NOINPUT


class UsageError(VirNucProError):
    exit_code = EXIT_USAGE


class Problems(VirNucProError):
    """Several problems found in one pass (pre-flight, the config), reported together, one
    line each, so that one run tells the user everything to fix. The exit status is the
    first problem's."""

    def __init__(self, problems: list[VirNucProError]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems
        self.exit_code = problems[0].exit_code

    def lines(self) -> list[str]:
        return [line for problem in self.problems for line in problem.lines()]


class ModelError(VirNucProError):
    """A model is missing, unreadable, refused or of the wrong architecture."""

    exit_code = EXIT_NOINPUT


class UntrustedFileError(VirNucProError):
    """A result file that cannot be trusted: `kind` is "corrupted" (exit 75: it is moved
    aside and a rerun redoes the work) or "incompatible" (exit 78: it needs a decision).
    Subclasses name what the file is (`what`): a feature file, a checkpoint."""

    what = "file"

    def __init__(self, path: str | os.PathLike, kind: str, reason: str) -> None:
        super().__init__(f"{path}: {kind} {self.what}: {reason}")
        self.path = Path(path)
        self.kind = kind
        self.reason = reason
        self.exit_code = EXIT_CORRUPTED if kind == "corrupted" else EXIT_INCOMPATIBLE


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut at `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class StorageError(VirNucProError):
    """The machine, not the data: a full disk, a read-only or unwritable output directory."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def storage_error(exc: OSError) -> StorageError | None:
    """The one-line report of a full or unwritable file system, or None for other errors."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in _FULL:
        return StorageError(f"{where}{os.strerror(exc.errno)} (disk or quota full); free space "
                            "there or set outdir to a larger file system, then rerun (finished "
                            "results are kept)", EXIT_IOERR)
    if exc.errno in _UNWRITABLE:
        return StorageError(f"{where}{os.strerror(exc.errno)}; make the output directory "
                            "writable or set outdir elsewhere, then rerun", EXIT_CANTCREAT)
    if exc.errno == errno.EIO:
        return StorageError(f"{where}input/output error; check the disk, then rerun", EXIT_IOERR)
    return None
