"""GPU leases: concurrent jobs never share a device (real Snakemake scheduling,
real fcntl locks, fake device lists), and a killed job's lease is released."""

import os
import signal
import subprocess
import sys
import time

import pytest

from virnucpro.gpu import gpu_lease, visible_devices

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
