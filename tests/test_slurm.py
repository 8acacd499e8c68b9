"""The workflow through the SLURM profile on a real SLURM (controller and node
started on this machine, 4 fake GPUs), to the final outputs."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import read_fasta
from workflow_helpers import DEMO_MODELS, ROOT, SNAKEFILE, write_config

pytestmark = pytest.mark.slow
SLURM = ROOT / "tests" / "slurm"
ETC = Path("/etc/slurm")


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root (CI runs as root)")
    if (ETC / "slurm.conf").exists():
        pytest.skip("/etc/slurm/slurm.conf exists: not touching a real SLURM installation")
    # munged runs as user munge: the directory must be reachable by it (pytest's is not).
    directory = Path(tempfile.mkdtemp(prefix="virnucpro-slurm-", dir="/tmp"))
    directory.chmod(0o755)
    subprocess.run(["bash", SLURM / "start_slurm.sh", directory], check=True, timeout=600)
    # srun inside jobs reads the default location; point it at ours for the test only.
    ETC.mkdir(exist_ok=True)
    (ETC / "slurm.conf").symlink_to(directory / "slurm.conf")
    (ETC / "gres.conf").symlink_to(directory / "gres.conf")
    try:
        yield {**os.environ, "SLURM_CONF": str(directory / "slurm.conf")}
    finally:
        (ETC / "slurm.conf").unlink()
        (ETC / "gres.conf").unlink()
        subprocess.run(["bash", SLURM / "stop_slurm.sh", directory], timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def test_demo_through_the_slurm_profile(tmp_path, reference, slurm):
    fasta = reference / "prepare" / "test_fixed_500bp.fa"
    config = write_config(tmp_path / "c.yaml", samples={"s": str(fasta)}, outdir="out", shard_size=3,
                          models=DEMO_MODELS, embed={"mem_mb": 2000})
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", SNAKEFILE,
                             "--directory", tmp_path, "--configfile", config,
                             "--profile", ROOT / "profiles" / "slurm",
                             "--slurm-init-seconds-before-status-checks", "1",
                             "--slurm-keep-successful-logs"],
                            env=slurm, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # lets Snakemake cancel its SLURM jobs
        output, _ = proc.communicate()
        pytest.fail("the SLURM run did not finish in time:\n" + output[-3000:])
    wall = time.monotonic() - start
    print(f"SLURM end-to-end wall time: {wall:.0f} s")
    assert proc.returncode == 0, output[-5000:]
    out = tmp_path / "out" / "s"
    summary = (out / "summary.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[0] for row in summary] == [r for r, _ in read_fasta(fasta)]
    assert (out / "prediction_results_highestscore.csv").exists()
    # Every job went through sbatch; the embedding jobs ran as SLURM jobs with a GPU lease
    # on the device SLURM assigned (CUDA_VISIBLE_DEVICES from the scheduler).
    for shard in ("shard_000000", "shard_000001"):
        log = (tmp_path / "out" / "logs" / "embed_classify" / "s" / f"{shard}.log").read_text()
        assert "GPU lease: device" in log and ", SLURM job " in log
    assert sorted(p.name for p in (tmp_path / ".snakemake" / "slurm_logs").iterdir()) == [
        "rule_aggregate", "rule_demo_models", "rule_embed_classify", "rule_overview_report",
        "rule_prepare", "rule_prepare_summary", "rule_provenance", "rule_sample_report",
        "rule_samples_summary", "rule_virus_reads"]
