"""Run a step with logging and one-line error reporting (CLI and Snakemake scripts)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from virnucpro.errors import VirNucProError

log = logging.getLogger("virnucpro")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def configure_logging(level: int = logging.INFO, log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def call_reporting_errors(func: Callable[..., Any], *args: Any) -> int:
    """Call func; an expected failure becomes one error line and its exit status."""
    try:
        func(*args)
    except Exception as exc:
        if not isinstance(exc, VirNucProError):
            log.exception("unexpected error (a bug: please report it with this log)")
            return 1
        line = f"virnucpro: error: {exc.one_line()}"
        log.debug("%s", line)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.stream.write(line + "\n")
                handler.flush()
        print(line, file=sys.stderr)
        return exc.exit_code
    return 0


def run_step(log_file: str, func: Callable[..., Any], *args: Any) -> NoReturn:
    """Entry point of a Snakemake script: log to the rule's log, exit with the step's status."""
    configure_logging(log_file=log_file)
    sys.exit(call_reporting_errors(func, *args))
