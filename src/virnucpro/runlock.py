"""One workflow run per output directory.

Snakemake's own lock lives in the working directory's .snakemake/, so two runs started from
different directories with the same `outdir` would both run, interleaving jobs over the same
files. The workflow's onstart hook therefore takes an exclusive `fcntl.flock` on
`{outdir}/.virnucpro.lock` and holds it for the life of the Snakemake process; the kernel
releases it however that process ends (no stale lock after a SIGKILL). Dry runs take no lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO

from virnucpro.errors import VirNucProError, storage_error

LOCK_NAME = ".virnucpro.lock"
EXIT_BUSY = 75  # EX_TEMPFAIL: try again once the other run has finished

_held: list[IO] = []  # open lock files of this process: closing one would release its lock


class OutdirBusy(VirNucProError):
    exit_code = EXIT_BUSY


def claim_outdir(outdir: str | os.PathLike) -> None:
    """Hold `outdir`'s run lock until this process exits, or raise OutdirBusy / StorageError."""
    path = Path(outdir) / LOCK_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:
        raise storage_error(exc) or exc from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutdirBusy(f"{outdir}: another workflow run is using this output directory "
                         f"({holder}); wait for it to finish, or set a different outdir") from None
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd(),
             "started": dt.datetime.now().isoformat(timespec="seconds")}
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(owner) + "\n")
    handle.flush()
    _held.append(handle)
