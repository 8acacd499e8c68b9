"""Exclusive GPU leases for concurrent jobs on one machine.

Snakemake counts `resources: gpu=1` against `--resources gpu=N` but does not
tell a job *which* GPU it got, so jobs would all land on device 0. Each job
therefore takes an exclusive lease on one device: an fcntl lock on a
per-device file, held for the job's lifetime and released by the kernel when
the process ends, however it ends (SIGKILL included). The job then sets
CUDA_VISIBLE_DEVICES to that device before CUDA starts.

Devices: CUDA_VISIBLE_DEVICES when set (under SLURM that is what the scheduler
assigned to this job), else one per /dev/nvidiaN. Locks live in
$VIRNUCPRO_GPU_LOCK_DIR (default /tmp/virnucpro-gpu-locks), shared by every
workflow on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("virnucpro")

DEFAULT_LOCK_DIR = "/tmp/virnucpro-gpu-locks"


def visible_devices(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs this job may use, without initialising CUDA."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    return sorted((m.group(1) for p in Path("/dev").glob("nvidia*")
                   if (m := re.fullmatch(r"nvidia(\d+)", p.name))), key=int)


@contextlib.contextmanager
def gpu_lease(devices: list[str] | None = None, lock_dir: str | os.PathLike | None = None,
              poll_s: float = 0.2) -> Iterator[str | None]:
    """Hold one device exclusively; yields its ID (None when there is no GPU).

    Sets CUDA_VISIBLE_DEVICES to the leased device while the lease is held, and puts back
    what it was afterwards (a caller that goes on must not stay pinned to a device it no
    longer holds). Waits while all devices are leased (more jobs than GPUs started outside
    Snakemake's accounting).
    """
    devices = visible_devices() if devices is None else devices
    if not devices:
        yield None
        return
    directory = Path(lock_dir or os.environ.get("VIRNUCPRO_GPU_LOCK_DIR", DEFAULT_LOCK_DIR))
    directory.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for device in devices:
            handle = open(directory / f"gpu{device}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            before = os.environ.get("CUDA_VISIBLE_DEVICES")
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                os.environ["CUDA_VISIBLE_DEVICES"] = device
                slurm = os.environ.get("SLURM_JOB_ID")
                log.info("GPU lease: device %s (pid %d%s)", device, os.getpid(),
                         f", SLURM job {slurm}" if slurm else "")
                yield device
            finally:
                if before is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = before
                handle.close()  # releases the lock
            return
        if not waited:
            log.info("GPU lease: all of %s busy, waiting", ",".join(devices))
            waited = True
        time.sleep(poll_s)
