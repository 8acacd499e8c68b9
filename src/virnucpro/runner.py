"""Run a step with logging and one-line error reporting (CLI and Snakemake scripts)."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from virnucpro.errors import VirNucProError, storage_error
from virnucpro.heap import keep_flat

log = logging.getLogger("virnucpro")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def share_package(src: str) -> None:
    """Put `src` (the repository's src/ directory) first on the PYTHONPATH of every process
    started from here on: the workflow's scripts then import this package whether or not it is
    installed in their environment (a conda env from envs/ has only its dependencies), with no
    path juggling in each script."""
    paths = [src, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p != src)]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, paths))


def configure_logging(level: int = logging.INFO, log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler's time limit, Snakemake stopping a job).

    Raised in the main thread so every `finally` runs: temporary files are removed and the
    checkpoint writer flushes what it has, then the step exits with 128 + the signal number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def call_reporting_errors(func: Callable[..., Any], *args: Any, flat_heap: bool = True) -> int:
    """Call func; an expected failure or an interruption becomes one line and an exit status.

    `flat_heap`: with heap.keep_flat, as every step but prepare. Prepare's large buffers are
    the same few sizes block after block, which glibc's adaptive threshold serves from the heap
    and reuses, while a fixed one maps each anew and the kernel zeroes its pages every time:
    +1.9 s of system time per million reads, 1.55x its CPU time (measured), for a peak a few MB
    lower."""
    if flat_heap:
        keep_flat()
    previous = {sig: signal.signal(sig, _raise_interrupted)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        func(*args)
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        _report(f"virnucpro: interrupted by {name}: nothing unfinished was published (saved "
                 "checkpoints are kept); rerun the same command to continue")
        return 128 + stop.signum
    except Exception as exc:
        if isinstance(exc, OSError):
            exc = storage_error(exc) or exc
        if not isinstance(exc, VirNucProError):
            log.exception("unexpected error (a bug: please report it with this log)")
            return 1
        _report_error(exc)
        return exc.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def result_or_exit(func: Callable[..., Any], *args: Any) -> Any:
    """func(*args) while Snakemake plans the run: an expected failure becomes its one line
    and an exit with its status, before any job starts (a traceback would bury the line)."""
    try:
        return func(*args)
    except VirNucProError as exc:
        _report_error(exc)
        raise SystemExit(exc.exit_code) from None


def _report_error(exc: VirNucProError) -> None:
    for line in exc.lines():
        _report(f"virnucpro: error: {line}")


def report_note(line: str) -> None:
    """A line the user should read that is not an error (a model a rule will fetch, what a
    dry run cannot list yet), as `virnucpro: LINE` on stderr."""
    _report(f"virnucpro: {line}")


def _report(line: str) -> None:
    """One line to stderr (Snakemake shows it) and to the log file, without log decoration."""
    log.debug("%s", line)
    _write_to_logs(line)
    print(line, file=sys.stderr)


def _write_to_logs(line: str) -> None:
    """A line in the log files as it is, without log decoration."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            with contextlib.suppress(OSError):  # the log may sit on the disk that is full
                handler.stream.write(line + "\n")
                handler.flush()


STATUS_PREFIX = "virnucpro: exit status "


def run_step(log_file: str, func: Callable[..., Any], *args: Any, flat_heap: bool = True
             ) -> NoReturn:
    """Entry point of a Snakemake script: log to the rule's log, exit with the step's status
    (`flat_heap`: see call_reporting_errors).

    A finished step logs its peak memory: Snakemake's benchmark samples memory too rarely
    to see a step that lasts a few seconds. The log's last line is the step's exit-status
    record, `virnucpro: exit status N`: the job's outcome in a file of its own, for people,
    schedulers and tests alike (Snakemake's terminal report interleaves parallel jobs).
    """
    configure_logging(log_file=log_file)
    status = call_reporting_errors(func, *args, flat_heap=flat_heap)
    if status == 0:
        log.info("peak memory %.0f MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    _write_to_logs(f"{STATUS_PREFIX}{status}")
    sys.exit(status)


def exit_status(log_file: str | os.PathLike) -> int | None:
    """A finished step's exit status from its log's record; None if it did not finish (it
    was killed, or the log is not a step's)."""
    try:
        lines = Path(log_file).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    last = lines[-1] if lines else ""
    return int(last[len(STATUS_PREFIX):]) if last.startswith(STATUS_PREFIX) else None


def failed_step_lines(log_dir: str | os.PathLike, since: float) -> list[str]:
    """Why each step failed, from the logs under `log_dir` written since `since` (a run's
    start) whose exit-status record is not 0: their `virnucpro: error:` (or interrupted)
    lines, each once, or for a step that failed without one (a bug: its traceback is in the
    log) a line naming the log. A failed run's output ends with these: Snakemake reports each
    failed job with its script's CalledProcessError, around which the line is easy to miss."""
    lines = []
    for path in sorted(Path(log_dir).rglob("*.log")):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < since or not (status := exit_status(path)):
                continue
            said = [line for line in path.read_text(errors="replace").splitlines()
                    if line.startswith(("virnucpro: error: ", "virnucpro: interrupted"))]
            lines += said or [f"virnucpro: {path}: the step failed (exit status {status}); "
                              "its log says why"]
    return list(dict.fromkeys(lines))
