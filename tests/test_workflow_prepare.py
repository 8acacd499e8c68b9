"""The prepare stage through real Snakemake runs: DAG, outputs, config handling, errors."""

import json
import shutil

import pytest

from conftest import read_fasta, run_cli
from workflow_helpers import ROOT, job_counts, snakemake, write_config

pytestmark = pytest.mark.slow
SAMPLES = ["test_with_orfs", "test_fixed_500bp", "test_sequences_small"]


@pytest.fixture
def config(tmp_path, reference):
    return write_config(tmp_path / "config.yaml",
                        samples={s: str(reference / "prepare" / f"{s}.fa") for s in SAMPLES},
                        outdir="out", chunk_size=500, shard_size=3)


def test_dry_run_lists_one_prepare_job_per_sample(tmp_path, config):
    proc = snakemake(tmp_path, "-n", "--configfile", config)
    assert proc.returncode == 0, proc.stdout
    jobs = job_counts(proc.stdout)
    assert jobs["prepare"] == 3 and jobs["prepare_summary"] == 1


def test_run_writes_shards_equal_to_the_cli_output(tmp_path, config, reference):
    proc = snakemake(tmp_path, "out/prepare_summary.tsv", "--configfile", config)
    assert proc.returncode == 0, proc.stdout
    out = tmp_path / "out"
    for sample in SAMPLES:
        prep = out / sample / "prepare"
        flat = tmp_path / "flat" / sample
        run_cli("prepare", reference / "prepare" / f"{sample}.fa", "--chunk-size", "500",
                "--outdir", flat, check=True)
        shards = sorted((prep / "shards").glob("shard_*.fna"))
        assert all(s.with_suffix(".done").exists() for s in shards)
        assert [r for s in shards for r in read_fasta(s)] == read_fasta(flat / "nucleotide.fa")
        assert [r for s in shards for r in read_fasta(s.with_suffix(".faa"))] == \
            read_fasta(flat / "protein.faa")
        stats = json.loads((prep / "stats.json").read_text())
        assert stats["shards"] == len(shards)
        assert (out / "logs" / "prepare" / f"{sample}.log").exists()
        assert (out / "benchmarks" / "prepare" / f"{sample}.tsv").exists()
    summary = (out / "prepare_summary.tsv").read_text().splitlines()
    assert summary[0].split("\t")[:5] == ["sample", "reads", "bases", "chunks", "frames"]
    rows = {line.split("\t")[0]: line.split("\t") for line in summary[1:]}
    assert rows["test_sequences_small"][5] == "11"  # every read without a stop-free frame
    # A second run has nothing to do.
    again = snakemake(tmp_path, "-n", "out/prepare_summary.tsv", "--configfile", config)
    assert "Nothing to be done" in again.stdout


@pytest.mark.parametrize("override, message", [
    (["--config", "chunk_size=400"], "400 is not one of [300, 500]"),
    (["--config", "shard_size=many"], "'many' is not of type 'integer'"),
    (["--config", "colour=blue"], "Additional properties are not allowed ('colour' was unexpected)"),
])
def test_invalid_config_is_refused_before_anything_runs(tmp_path, config, override, message):
    proc = snakemake(tmp_path, "-n", "--configfile", config, *override)
    assert proc.returncode != 0
    assert message in proc.stdout
    assert not (tmp_path / "out").exists()


def test_user_configfile_replaces_the_demo_config_and_later_files_override(tmp_path, reference):
    first = write_config(tmp_path / "a.yaml", samples={"mine": str(reference / "prepare" / "test_with_orfs.fa")},
                         outdir="out-a")
    second = write_config(tmp_path / "b.yaml", outdir="out-b", chunk_size=300)
    proc = snakemake(tmp_path, "-n", "--configfile", first, second)
    assert proc.returncode == 0, proc.stdout
    assert "out-b/mine/prepare" in proc.stdout
    assert "demo" not in proc.stdout and "out-a" not in proc.stdout


def test_shipped_config_runs_the_bundled_demo_dry(tmp_path):
    # The shipped config and demo data, in a fresh working directory.
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copytree(ROOT / "resources", tmp_path / "resources")
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode == 0, proc.stdout
    assert "results/demo/prepare" in proc.stdout


def test_bad_input_fails_the_job_with_one_line_and_no_output(tmp_path):
    fastq = tmp_path / "reads.fq"
    fastq.write_text("@r1\nACGT\n+\nIIII\n")
    cfg = write_config(tmp_path / "c.yaml", samples={"bad": str(fastq)}, outdir="out")
    proc = snakemake(tmp_path, "--configfile", cfg)
    assert proc.returncode != 0
    log = (tmp_path / "out" / "logs" / "prepare" / "bad.log").read_text()
    errors = [line for line in log.splitlines() if "error" in line]
    assert errors == [f"virnucpro: error: {fastq}: not a FASTA file: looks like FASTQ; give nucleotide "
                      "reads in FASTA format (convert FASTQ with e.g. 'seqtk seq -a')"]
    assert "Traceback" not in log
    assert not (tmp_path / "out" / "bad" / "prepare").exists()


def test_lint_is_clean():
    proc = snakemake(ROOT, "--lint")
    assert proc.returncode == 0, proc.stdout
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout
