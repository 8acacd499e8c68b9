"""Exclusive GPU leases for concurrent jobs on one machine, fitted to the scheduler.

Snakemake counts `resources: gpu=1` against `--resources gpu=N` but does not tell a job
*which* GPU it got, so jobs would all land on device 0. Each job therefore takes an exclusive
lease on one device: an fcntl lock on a per-device file, held for the job's lifetime and
released by the kernel when the process ends, however it ends (SIGKILL included). The job then
sets CUDA_VISIBLE_DEVICES to that device before CUDA starts.

Which file a device locks is its identity on the machine, not the job's number for it: under
SLURM the two differ (see `job_devices`). Locks live in $VIRNUCPRO_GPU_LOCK_DIR (default
/tmp/virnucpro-gpu-locks), shared by every workflow of every user on the machine, so the
directory and its files are made usable by all (see `lock_directory`, `_open_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from virnucpro.errors import EXIT_CANTCREAT, VirNucProError

log = logging.getLogger("virnucpro")

DEFAULT_LOCK_DIR = "/tmp/virnucpro-gpu-locks"
LOCK_DIR_MODE = 0o1777  # as /tmp: every user creates lock files there, none removes another's
LOCK_FILE_MODE = 0o666  # every user can open every lock file (the lock needs no write access)
PARENT_DIR_MODE = 0o755  # missing parents of the lock directory: every user can reach it


class LeaseError(VirNucProError):
    """No GPU can be leased: this user cannot create or open the lock files."""

    exit_code = EXIT_CANTCREAT


@dataclass(frozen=True)
class Device:
    """A GPU this job may use: `visible` is the job's ID for it (what CUDA_VISIBLE_DEVICES is
    set to), `lock` its identity on the machine, which names its lock file; None when the
    scheduler shares the device between jobs by design and it is used unlocked."""

    visible: str
    lock: str | None


def _ids(listed: str | None) -> list[str]:
    """A comma-separated device list as SLURM and CUDA write them; "-1" means none."""
    return [d.strip() for d in (listed or "").split(",") if d.strip() and d.strip() != "-1"]


def visible_devices(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, in its own numbering, without initialising CUDA:
    CUDA_VISIBLE_DEVICES when set, else one per /dev/nvidiaN."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return _ids(environ["CUDA_VISIBLE_DEVICES"])
    return sorted((m.group(1) for p in Path("/dev").glob("nvidia*")
                   if (m := re.fullmatch(r"nvidia(\d+)", p.name))), key=int)


def job_devices(environ: Mapping[str, str] | None = None) -> list[Device]:
    """The devices this job may lease, each with the identity its lock is keyed on.

    Under SLURM, a job given GPUs (SLURM_STEP_GPUS inside an srun step, else SLURM_JOB_GPUS)
    sees them in a numbering that depends on the node: with the cgroup device constraint
    (ConstrainDevices=yes) CUDA_VISIBLE_DEVICES counts the job's own devices from 0, so jobs
    given GPUs 2 and 3 both see "0"; without it, it holds the node's IDs. SLURM_*_GPUS hold the
    node's IDs either way, in the order of CUDA_VISIBLE_DEVICES (or GPU_DEVICE_ORDINAL, the same
    list, where only that is set): SLURM writes both lists in one pass over the allocation, so
    the i-th visible device is the i-th in SLURM_*_GPUS. The lock is keyed on that node ID.

    Why still a lock where SLURM has already given the job its GPUs: Snakemake itself may run
    inside one allocation of several GPUs (`sbatch --gpus=4 --wrap "snakemake --resources
    gpu=4"`), and its jobs must still spread over them, where no lock would put them all on
    the first. Keyed on SLURM's node IDs, the locks of different allocations never meet, as
    SLURM gives a GPU to one job at a time: jobs SLURM gave different GPUs never wait for each
    other, whichever numbering the node uses. Keyed on the visible ID (as before), every job
    of a constrained node locked "0" and they ran one at a time. The exception is a GPU SLURM
    shares between jobs by design (shards, MPS): it is used as given, unlocked, since a lock
    would make the jobs SLURM meant to share it take turns.

    A visible list that does not pair with SLURM's (the job script narrowed
    CUDA_VISIBLE_DEVICES) is keyed on the visible IDs, as without a scheduler: at worst a job
    waits for another that SLURM gave the same number, never shares a device with it.
    """
    environ = os.environ if environ is None else environ
    assigned = _ids(environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS"))
    if assigned:
        if "CUDA_VISIBLE_DEVICES" in environ:
            visible = _ids(environ["CUDA_VISIBLE_DEVICES"])
        else:
            visible = _ids(environ.get("GPU_DEVICE_ORDINAL")) or assigned
        if "SLURM_SHARDS_ON_NODE" in environ or "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" in environ:
            return [Device(device, None) for device in visible]
        if len(visible) == len(assigned):
            return [Device(device, node) for device, node in zip(visible, assigned)]
        log.warning("GPU lease: CUDA_VISIBLE_DEVICES=%s does not pair with SLURM's GPUs %s; "
                    "locking the visible IDs", ",".join(visible), ",".join(assigned))
        return [Device(device, device) for device in visible]
    return [Device(device, device) for device in visible_devices(environ)]


def lock_directory(path: Path) -> Path:
    """`path`, created if missing so that every user of the machine can lease through it.

    A user's umask must not decide who else may use the GPUs: the directory is made mode 1777
    whatever the umask (any user creates lock files in it, as in /tmp, and none can remove
    another's), missing parents 0755. An existing directory is left as it is: its owner chose
    its mode, and a user cannot change another's (the error message says what to do).
    """
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, LOCK_DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another job, which sets its mode
        except OSError as exc:
            raise LeaseError(f"{directory}: cannot create the GPU lock directory "
                             f"({exc.strerror}); set VIRNUCPRO_GPU_LOCK_DIR to a directory "
                             "that every user of this machine's GPUs can write") from None
        os.chmod(directory, LOCK_DIR_MODE if directory == path else PARENT_DIR_MODE)
    return path


def _open_lock(path: Path) -> int:
    """A read-only descriptor of the lock file `path`, which is created (mode 0666, whatever
    the umask) if missing. flock needs no write access, so any user can lock a file another
    made; an existing file is opened without O_CREAT, which the kernel refuses on another
    user's file in a sticky world-writable directory where fs.protected_regular is set. A
    symbolic link in its place (anyone can make one there) is refused, never followed."""
    while True:
        with contextlib.suppress(FileNotFoundError):
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, LOCK_FILE_MODE)
        except FileExistsError:
            continue  # made meanwhile by another job
        os.fchmod(fd, LOCK_FILE_MODE)
        return fd


def _lock_path(directory: Path, device: Device) -> Path:
    """The device's lock file; IDs such as MIG UUIDs may hold characters a name cannot."""
    return directory / f"gpu{re.sub(r'[^A-Za-z0-9._-]', '_', str(device.lock))}.lock"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _acquire(devices: list[Device], directory: Path, poll_s: float) -> tuple[int, Device]:
    """Lock the first free device; wait while every usable one is leased.

    A device whose lock file is leased, or cannot be opened or locked by this user, is
    skipped (logged once) and the next tried. When none can be used at all, waiting would be
    forever: LeaseError, after a second look (another job may be between creating a file or
    directory and opening its mode).
    """
    told: set[tuple[Path, str]] = set()
    waited = False
    unusable_rounds = 0
    while True:
        unusable = []
        for device in devices:
            path = _lock_path(directory, device)
            try:
                fd = _open_lock(path)
            except OSError as exc:
                unusable.append(f"{path.name}: {exc.strerror}")
                _skip(told, device, path, exc.strerror)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                _skip(told, device, path, "leased by another job")
                continue
            except OSError as exc:
                os.close(fd)
                unusable.append(f"{path.name}: {exc.strerror}")
                _skip(told, device, path, exc.strerror)
                continue
            return fd, device
        unusable_rounds = unusable_rounds + 1 if len(unusable) == len(devices) else 0
        if unusable_rounds == 2:
            raise LeaseError(
                f"{directory}: cannot lease a GPU: user {_user()} cannot use any of its lock "
                f"files ({'; '.join(unusable)}); they must be usable by every user of this "
                f"machine's GPUs: ask their owner (or root) to run 'chmod 1777 {directory}' "
                f"and 'chmod 666 {directory}/gpu*.lock', or set VIRNUCPRO_GPU_LOCK_DIR to a "
                "directory that every such user can write")
        if unusable_rounds == 0 and not waited:
            log.info("GPU lease: all of %s busy, waiting",
                     ",".join(device.visible for device in devices))
            waited = True
        time.sleep(poll_s)


def _skip(told: set[tuple[Path, str]], device: Device, path: Path, reason: str) -> None:
    if (path, reason) not in told:
        told.add((path, reason))
        log.info("GPU lease: skipping device %s (%s: %s)", device.visible, path, reason)


@contextlib.contextmanager
def gpu_lease(devices: list[str] | None = None, lock_dir: str | os.PathLike | None = None,
              poll_s: float = 0.2) -> Iterator[str | None]:
    """Hold one device exclusively; yields its ID (None when there is no GPU).

    `devices`: the visible IDs to choose from, each locked on itself; None: this job's
    devices as the environment and the scheduler give them (`job_devices`). Sets
    CUDA_VISIBLE_DEVICES to the leased device while the lease is held, and puts back what it
    was afterwards (a caller that goes on must not stay pinned to a device it no longer
    holds). Waits while all devices are leased (more jobs than GPUs started outside
    Snakemake's accounting).
    """
    candidates = job_devices() if devices is None else [Device(d, d) for d in devices]
    if not candidates:
        yield None
        return
    shared = [device for device in candidates if device.lock is None]
    fd = None
    if shared:
        device, how = shared[0], "shared by SLURM, unlocked"
    else:
        directory = lock_directory(
            Path(lock_dir or os.environ.get("VIRNUCPRO_GPU_LOCK_DIR", DEFAULT_LOCK_DIR)))
        fd, device = _acquire(candidates, directory, poll_s)
        how = f"lock {_lock_path(directory, device)}"
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = device.visible
        slurm = os.environ.get("SLURM_JOB_ID")
        log.info("GPU lease: device %s (%s, pid %d%s)", device.visible, how, os.getpid(),
                 f", SLURM job {slurm}" if slurm else "")
        yield device.visible
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
        if fd is not None:
            os.close(fd)  # releases the lock
