"""GPU leases: concurrent jobs never share a device (real Snakemake scheduling,
real fcntl locks, fake device lists), and a killed job's lease is released; jobs that SLURM
gave different GPUs hold their leases at once, whichever numbering the node uses; a second
user of the machine leases a free device."""

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from virnucpro.gpu import Device, gpu_lease, job_devices, visible_devices

ROOT = Path(__file__).resolve().parent.parent

JOB = """
import os, sys, time
from virnucpro.gpu import gpu_lease
with gpu_lease() as device:
    start = time.time()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == device
    time.sleep(0.4)
    open(sys.argv[1], "w").write(f"{device} {start} {time.time()}\\n")
"""

SNAKEFILE = """
rule all:
    input: expand("job{i}.txt", i=range(12))

rule job:
    output: "job{i}.txt"
    resources: gpu=1
    shell: "{python} job.py {output}"
"""


@pytest.mark.slow
def test_twelve_jobs_on_four_gpus_never_share_one(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "Snakefile").write_text(SNAKEFILE.replace("{python}", sys.executable))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2,3",
           "VIRNUCPRO_GPU_LOCK_DIR": str(tmp_path / "locks")}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "12",
                           "--resources", "gpu=4", "--directory", str(tmp_path),
                           "--snakefile", str(tmp_path / "Snakefile")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs = [line.split() for p in tmp_path.glob("job*.txt") for line in p.read_text().splitlines()]
    assert len(runs) == 12
    assert {device for device, _, _ in runs} == {"0", "1", "2", "3"}
    for device in "0123":
        spans = sorted((float(a), float(b)) for d, a, b in runs if d == device)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), device


def test_a_killed_jobs_lease_is_released(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom virnucpro.gpu import gpu_lease\n"
        "with gpu_lease(['7']):\n    print('held', flush=True)\n    time.sleep(60)\n")],
        env={**os.environ, "VIRNUCPRO_GPU_LOCK_DIR": str(tmp_path)},
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with gpu_lease(["7"], lock_dir=tmp_path, poll_s=0.01) as device:
        assert device == "7" and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    assert time.monotonic() - start < 5


def test_device_lists(monkeypatch):
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    with gpu_lease([]) as device:
        assert device is None


def test_a_device_whose_lock_file_cannot_be_used_is_skipped(tmp_path, caplog):
    """A symbolic link in a lock file's place (anyone can make one in the shared directory)
    is neither followed nor a reason to wait: the next device is leased."""
    (tmp_path / "gpu0.lock").symlink_to(tmp_path / "elsewhere")
    with caplog.at_level("INFO", logger="virnucpro"), gpu_lease(["0", "1"], lock_dir=tmp_path,
                                                                 poll_s=0.01) as device:
        assert device == "1"
    assert not (tmp_path / "elsewhere").exists()
    assert f"skipping device 0 ({tmp_path / 'gpu0.lock'}: Too many levels of symbolic links)" \
        in caplog.text


@pytest.mark.parametrize("before", [None, "0,1"], ids=["unset", "set"])
def test_the_lease_puts_cuda_visible_devices_back(tmp_path, monkeypatch, before):
    """A lease pins CUDA_VISIBLE_DEVICES only while it is held: code running after it (other
    tests, on a GPU machine) must not stay pinned to a device it no longer holds."""
    if before is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", before)
    with gpu_lease(["1"], lock_dir=tmp_path) as device:
        assert device == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before


def test_slurm_device_numberings():
    """SLURM_*_GPUS hold the node's IDs, CUDA_VISIBLE_DEVICES the job's (from 0 under the
    cgroup device constraint): the lock is keyed on the node's ID, paired by position."""
    constrained = {"SLURM_JOB_ID": "5", "SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert job_devices(constrained) == [Device("0", "2"), Device("1", "3")]
    node_ids = {"SLURM_JOB_ID": "5", "SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "3"}
    assert job_devices(node_ids) == [Device("3", "3")]
    # An srun step: its own GPUs, not the whole job's.
    step = {**constrained, "SLURM_STEP_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0"}
    assert job_devices(step) == [Device("0", "3")]
    # Only GPU_DEVICE_ORDINAL (the same list), or neither: the node's IDs are visible.
    ordinal = {"SLURM_JOB_GPUS": "2,3", "GPU_DEVICE_ORDINAL": "0,1"}
    assert job_devices(ordinal) == [Device("0", "2"), Device("1", "3")]
    assert job_devices({"SLURM_JOB_GPUS": "1"}) == [Device("1", "1")]
    # The job script narrowed CUDA_VISIBLE_DEVICES: no pairing, the visible IDs are locked.
    narrowed = {**constrained, "CUDA_VISIBLE_DEVICES": "1"}
    assert job_devices(narrowed) == [Device("1", "1")]
    assert job_devices({**constrained, "CUDA_VISIBLE_DEVICES": ""}) == []
    # A GPU SLURM shares between jobs (shards, MPS) is used unlocked.
    shard = {"SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0", "SLURM_SHARDS_ON_NODE": "2"}
    assert job_devices(shard) == [Device("0", None)]
    mps = {**node_ids, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}
    assert job_devices(mps) == [Device("3", None)]
    # No scheduler: the visible IDs, locked on themselves.
    assert job_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == [Device("2", "2"), Device("3", "3")]


def test_a_gpu_slurm_shares_is_used_without_a_lock(tmp_path, monkeypatch):
    for name, value in {"SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0",
                        "SLURM_SHARDS_ON_NODE": "1"}.items():
        monkeypatch.setenv(name, value)
    with gpu_lease(lock_dir=tmp_path / "locks") as device:
        assert device == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert not (tmp_path / "locks").exists()


SLURM_JOB = """
import json, os, sys, time
from pathlib import Path
from virnucpro.gpu import gpu_lease
me, other = Path(sys.argv[1]), Path(sys.argv[2])
with gpu_lease() as device:
    start = time.time()
    me.with_suffix(".started").touch()
    # Hold the lease until the other job holds its own: jobs queued behind each other never
    # see that, and give up here.
    deadline = time.monotonic() + 20
    while not other.with_suffix(".started").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    me.write_text(json.dumps({"device": device, "start": start, "end": time.time(),
                              "saw_other": other.with_suffix(".started").exists()}))
"""

# Two jobs on one node, as SLURM starts them: each with its own SLURM_JOB_ID and GPUs.
NODES = {
    # ConstrainDevices=yes: each job counts its own devices from 0.
    "constrained": ([{"SLURM_JOB_ID": "101", "SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "0"},
                     {"SLURM_JOB_ID": "102", "SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0"}],
                    ["0", "0"]),
    # Without the constraint: the node's IDs.
    "node-ids": ([{"SLURM_JOB_ID": "101", "SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "2"},
                  {"SLURM_JOB_ID": "102", "SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "3"}],
                 ["2", "3"]),
    # Snakemake inside one allocation of two GPUs: its two jobs spread over them.
    "one-allocation": ([{"SLURM_JOB_ID": "101", "SLURM_JOB_GPUS": "2,3",
                         "CUDA_VISIBLE_DEVICES": "0,1"}] * 2, ["0", "1"]),
}


@pytest.mark.parametrize("node", list(NODES))
def test_jobs_slurm_gave_different_gpus_hold_their_leases_at_once(tmp_path, node):
    jobs, devices = NODES[node]
    scheduler = ("SLURM_", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
                 "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    base = {k: v for k, v in os.environ.items() if not k.startswith(scheduler)}
    base["VIRNUCPRO_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    out = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [subprocess.Popen([sys.executable, "-c", SLURM_JOB, out[i], out[1 - i]],
                              env={**base, **job}, stderr=subprocess.PIPE, text=True)
             for i, job in enumerate(jobs)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        proc.stderr.close()
    runs = [json.loads(path.read_text()) for path in out]
    assert sorted(run["device"] for run in runs) == devices
    assert all(run["saw_other"] for run in runs)
    assert max(run["start"] for run in runs) < min(run["end"] for run in runs)
    # Locked on SLURM's IDs for the node's devices, not on the job's "0".
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["gpu2.lock", "gpu3.lock"]


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


SECOND_USER = """
import sys
from virnucpro.gpu import gpu_lease
from virnucpro.runner import call_reporting_errors, configure_logging

def lease():
    with gpu_lease(sys.argv[2].split(","), lock_dir=sys.argv[1], poll_s=0.01) as device:
        print(device, flush=True)

configure_logging()
sys.exit(call_reporting_errors(lease))
"""


@pytest.fixture(scope="module")
def as_nobody() -> list[str]:
    """The command prefix that runs a Python of this checkout's package as user nobody."""
    if os.geteuid() != 0:
        pytest.skip("running a process as another user needs root")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("runuser is not installed")
    # The test's interpreter may lie where nobody cannot reach (/root); the module needs only
    # the standard library, so the system's Python serves as well.
    for python in (sys.executable, "/usr/bin/python3"):
        command = [runuser, "-u", "nobody", "--", "env", f"PYTHONPATH={ROOT / 'src'}", python]
        probe = subprocess.run([*command, "-c", "import virnucpro.gpu, virnucpro.runner"],
                               cwd="/", capture_output=True)
        if probe.returncode == 0:
            return command
    pytest.skip("user nobody can run no Python interpreter that imports this checkout")


def test_a_second_user_leases_a_free_device(as_nobody):
    """Root, under umask 077, makes the lock directory and holds device 0; gpu1.lock is a
    file nobody cannot open (as an older version left them). User nobody skips both and
    leases device 2; offered device 1 alone, it is told why it cannot lease."""
    base = Path(tempfile.mkdtemp(prefix="virnucpro-gpu-test-", dir="/tmp"))
    try:
        base.chmod(0o755)
        locks = base / "locks"
        with umask(0o077):
            with gpu_lease(["1"], lock_dir=locks):
                pass
            (locks / "gpu1.lock").chmod(0o600)
            with gpu_lease(["0"], lock_dir=locks):
                free = subprocess.run([*as_nobody, "-c", SECOND_USER, locks, "0,1,2"], cwd="/",
                                      capture_output=True, text=True, timeout=120)
                unusable = subprocess.run([*as_nobody, "-c", SECOND_USER, locks, "1"], cwd="/",
                                          capture_output=True, text=True, timeout=120)
        assert free.returncode == 0, free.stderr
        assert free.stdout.split() == ["2"]
        assert f"skipping device 0 ({locks / 'gpu0.lock'}: leased by another job)" in free.stderr
        assert f"skipping device 1 ({locks / 'gpu1.lock'}: Permission denied)" in free.stderr
        assert stat.S_IMODE(locks.stat().st_mode) == 0o1777
        modes = {p.name: (stat.S_IMODE(p.stat().st_mode), p.owner()) for p in locks.iterdir()}
        assert modes == {"gpu0.lock": (0o666, "root"), "gpu1.lock": (0o600, "root"),
                         "gpu2.lock": (0o666, "nobody")}
        assert unusable.returncode == 73, unusable.stderr
        errors = [line for line in unusable.stderr.splitlines() if "error" in line]
        assert errors == [
            f"virnucpro: error: {locks}: cannot lease a GPU: user nobody cannot use any of its "
            "lock files (gpu1.lock: Permission denied); they must be usable by every user of "
            f"this machine's GPUs: ask their owner (or root) to run 'chmod 1777 {locks}' and "
            f"'chmod 666 {locks}/gpu*.lock', or set VIRNUCPRO_GPU_LOCK_DIR to a directory that "
            "every such user can write"]
    finally:
        shutil.rmtree(base)
