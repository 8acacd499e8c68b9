"""The workflow through the SLURM profile on a real SLURM (controller and node
started on this machine, 4 fake GPUs), to the final outputs: the profile as a cluster user
edits it, with the embedding jobs as a job array on a GPU model and node feature."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import read_fasta
from workflow_helpers import DEMO_MODELS, ROOT, SNAKEFILE, interruptible, write_config

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


# The commented-out settings of profiles/slurm/config.yaml a user uncomments, and what this
# test cluster takes for the values shown there (start_slurm.sh: partition debug, GPUs of
# GRES type fake on a node with the feature fakegpu).
UNCOMMENTED = ("# set-resources:", "# slurm-array-jobs:")
TEST_CLUSTER = {"slurm_partition: gpu": "slurm_partition: debug", "gpu_model: a100":
                "gpu_model: fake", "constraint: a100|h100": "constraint: fakegpu"}


def edited_profile(directory: Path) -> Path:
    """profiles/slurm as README "Running on a SLURM cluster" says to edit it: its
    set-resources block and job-array line uncommented, with this cluster's values."""
    lines, block = [], False
    for line in (ROOT / "profiles" / "slurm" / "config.yaml").read_text().splitlines():
        block = line.startswith(UNCOMMENTED) or (block and line.startswith("#   "))
        lines.append(line[2:] if block else line)
    text = "\n".join(lines) + "\n"
    for shipped, ours in TEST_CLUSTER.items():
        assert text.count(shipped) == 2, shipped  # embed_classify and embed
        text = text.replace(shipped, ours)
    directory.mkdir()
    (directory / "config.yaml").write_text(text)
    return directory


def slurm_jobs(env: dict[str, str]) -> list[dict[str, str]]:
    """Every job SLURM ran, as slurmctld records it (`scontrol show job`, one line each)."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], env=env, capture_output=True,
                         text=True, check=True).stdout
    return [dict(field.split("=", 1) for field in line.split() if "=" in field)
            for line in out.splitlines() if line.strip()]


def test_demo_through_the_slurm_profile(tmp_path, reference, slurm):
    fasta = reference / "prepare" / "test_fixed_500bp.fa"
    config = write_config(tmp_path / "c.yaml", samples={"s": str(fasta)}, outdir="out",
                          shard_size=3, models=DEMO_MODELS, embed={"mem_mb": 2000})
    profile = edited_profile(tmp_path / "profile")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", SNAKEFILE,
                             "--directory", tmp_path, "--configfile", config,
                             "--profile", profile,
                             "--slurm-init-seconds-before-status-checks", "1",
                             "--slurm-keep-successful-logs"],
                            env=slurm, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=interruptible)
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
    # Every job but the local rules' went through sbatch (SLURM's records name each job's
    # rule: the plugin's --comment); the local rules ran here.
    jobs = slurm_jobs(slurm)
    cluster = ["rule_aggregate", "rule_embed_classify", "rule_prepare", "rule_provenance",
               "rule_virus_reads"]
    assert sorted({job["Comment"].split("_wildcards_")[0] for job in jobs}) == cluster
    assert sorted(p.name for p in (tmp_path / ".snakemake" / "slurm_logs").iterdir()) == cluster
    for local in ("demo_models.log", "prepare_summary.log", "sample_report/s.log",
                  "samples_summary.log", "overview_report.log"):
        assert (tmp_path / "out" / "logs" / local).exists(), local
    # The two embedding jobs were the two tasks of one job array, on the GPU model and node
    # feature the profile asks for; each ran with a GPU lease on the device SLURM assigned
    # (CUDA_VISIBLE_DEVICES from the scheduler), its log naming its SLURM job.
    embedding = [job for job in jobs if job["Comment"].startswith("rule_embed_classify")]
    assert len({job["ArrayJobId"] for job in embedding}) == 1
    assert sorted(job["ArrayTaskId"] for job in embedding) == ["1", "2"]
    assert all(job["Features"] == "fakegpu" and job["TresPerJob"].endswith("gpu:fake:1")
               for job in embedding), embedding
    ran_in = set()
    for shard in ("shard_000000", "shard_000001"):
        log = (tmp_path / "out" / "logs" / "embed_classify" / "s" / f"{shard}.log").read_text()
        assert "GPU lease: device" in log
        ran_in.add(re.search(r", SLURM job (\d+)\)", log)[1])
    assert ran_in == {job["JobId"] for job in embedding}
