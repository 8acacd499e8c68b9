"""Errors that end a run with one clear line and a documented exit status.

Exit statuses (also in README "When things go wrong"):
  65  bad input data (EX_DATAERR): the message names the file, the record and what to do
  66  an input file is missing or unreadable (EX_NOINPUT)
  64  bad usage or configuration (EX_USAGE)
  66  also: a model file is missing, unreadable, refused or of the wrong architecture
"""

from __future__ import annotations

EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NOINPUT = 66


class VirNucProError(Exception):
    """An expected failure: reported as one line, never as a traceback."""

    exit_code = 1

    def one_line(self) -> str:
        return " ".join(str(self).split())


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
        super().__init__(f"{where}: {problem}; {hint}")
        self.path = str(path)
        self.record = record


class MissingInputError(InputError):
    exit_code = EXIT_NOINPUT


class UsageError(VirNucProError):
    exit_code = EXIT_USAGE


class ModelError(VirNucProError):
    """A model is missing, unreadable, refused or of the wrong architecture."""

    exit_code = EXIT_NOINPUT


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut at `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
