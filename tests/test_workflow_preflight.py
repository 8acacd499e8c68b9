"""Pre-flight and the config check through real Snakemake processes: before any job, in
dry runs and real runs, one line per problem and a non-zero exit, nothing started; and the
dry run's line for a sample whose prepare has not run. These lines come before any job, so
the process's output and exit status are what is checked."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from virnucpro.models.published import ADDRESSES
from conftest import fastq_text, read_fasta, unaligned_bam
from workflow_helpers import DEMO_MODELS, job_counts, orf_reads, snakemake, write_config

pytestmark = pytest.mark.slow


def lines(output: str, kind: str = "error") -> list[str]:
    prefix = "virnucpro: error: " if kind == "error" else "virnucpro: sample "
    return [line for line in output.splitlines() if line.startswith(prefix)]


def assert_nothing_started(work: Path) -> None:
    """No job ran: no output directory, so no job log (the run lock is taken by a job's
    start, the outdir made by the first job)."""
    assert not (work / "out").exists()
    assert not (work / "out" / "logs").exists()


@pytest.fixture
def two_samples(tmp_path) -> Path:
    orf_reads(tmp_path / "a.fa", 20)
    return write_config(tmp_path / "c.yaml", samples={"a": "a.fa", "b": "b.fq.gz"}, outdir="out",
                        models=DEMO_MODELS, embed={"device": "cpu"})


@pytest.mark.parametrize("dry", [True, False], ids=["dry run", "real run"])
def test_missing_reads_of_one_sample_stop_the_run_before_any_job(tmp_path, two_samples, dry):
    proc = snakemake(tmp_path, *(["-n"] if dry else []), "--configfile", two_samples)
    assert proc.returncode == 66, proc.stdout[-3000:]
    assert lines(proc.stdout) == [
        "virnucpro: error: b.fq.gz: reads file of sample 'b' does not exist; check its path in "
        "your config or sample sheet (a relative path is relative to the working directory)"]
    assert "Traceback" not in proc.stdout and "MissingInputException" not in proc.stdout
    assert_nothing_started(tmp_path)


def test_a_missing_classifier_fails_the_dry_run_of_a_fresh_outdir(tmp_path):
    orf_reads(tmp_path / "a.fa", 20)
    config = write_config(tmp_path / "c.yaml", samples={"a": "a.fa"}, outdir="out",
                          models={**DEMO_MODELS, "classifier": "models/500_model.pth"})
    proc = snakemake(tmp_path, "-n", "--configfile", config)
    assert proc.returncode == 66, proc.stdout[-3000:]
    assert lines(proc.stdout) == [
        "virnucpro: error: models/500_model.pth: classifier not found; download the published "
        f"500_model.pth from {ADDRESSES['VirNucPro']}500_model.pth there, or set "
        "models.classifier in your config"]
    assert_nothing_started(tmp_path)


def test_a_garbage_classifier_stops_the_run_before_any_job(tmp_path):
    orf_reads(tmp_path / "a.fa", 20)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "500_model.pth").write_text("<html>rate limited</html>\n")
    config = write_config(tmp_path / "c.yaml", samples={"a": "a.fa"}, outdir="out",
                          models={**DEMO_MODELS, "classifier": "models/500_model.pth"})
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == 66, proc.stdout[-3000:]
    assert lines(proc.stdout) == [
        "virnucpro: error: models/500_model.pth: not a PyTorch zip archive (File is not a zip "
        "file); only files written by torch.save (torch >= 1.6) or .safetensors files are read"]
    assert_nothing_started(tmp_path)


def demo_classifier(work: Path) -> Path:
    """The demo classifier, made as the workflow makes it."""
    from virnucpro.demo_models import write_demo_models

    return write_demo_models(work / "resources" / "demo-models")["classifier"]


@pytest.mark.parametrize("form", ["published name", "trained, with its sidecar"])
def test_a_classifier_for_300_bp_chunks_with_chunk_size_500(tmp_path, form):
    from virnucpro.models.classifier import load_classifier, save_classifier

    orf_reads(tmp_path / "a.fa", 20)
    (tmp_path / "models").mkdir()
    if form == "published name":
        name, source = "models/300_model.pth", "as its name says"
        shutil.copy(demo_classifier(tmp_path), tmp_path / name)
    else:
        name, source = "models/model.safetensors", "model.safetensors.json says chunk_size 300"
        save_classifier(load_classifier(demo_classifier(tmp_path)), tmp_path / name,
                        {"chunk_size": 300})
    config = write_config(tmp_path / "c.yaml", samples={"a": "a.fa"}, outdir="out",
                          chunk_size=500, models={**DEMO_MODELS, "classifier": name})
    proc = snakemake(tmp_path, "-n", "--configfile", config)
    assert proc.returncode == 66, proc.stdout[-3000:]
    assert lines(proc.stdout) == [
        f"virnucpro: error: {name}: the classifier is for 300-bp chunks ({source}), the "
        "config's chunk_size is 500; set chunk_size: 300, or use a classifier for 500-bp chunks "
        "(the published 500_model.pth)"]
    assert_nothing_started(tmp_path)
    # With chunk_size 300 the same classifier is taken.
    proc = snakemake(tmp_path, "-n", "--configfile", config, "--config", "chunk_size=300")
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_every_problem_is_listed_at_once(tmp_path):
    orf_reads(tmp_path / "a.fa", 20)
    (tmp_path / "c.fa").mkdir()
    (tmp_path / "d.fq.gz").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)))
    (tmp_path / "e.fq.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "f_R1.fa").write_text(">r1\nACGT\n>r2\nACGT\n")
    (tmp_path / "f_R2.fa").write_text(">r1\nACGT\n")
    (tmp_path / "a.fq").write_text(fastq_text(read_fasta(tmp_path / "a.fa")))
    bam = unaligned_bam(tmp_path / "g.bam", tmp_path / "a.fq").read_bytes()
    (tmp_path / "g.bam").write_bytes(bam[:len(bam) // 2])  # a download cut short
    unaligned_bam(tmp_path / "h.bam", tmp_path / "a.fq")
    (tmp_path / "esm2_t36_3B_UR50D.pt").write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / "DNABERT-S").mkdir()
    (tmp_path / "DNABERT-S" / "config.json").write_text("{}")
    config = write_config(tmp_path / "c.yaml",
                          samples={"a": "a.fa", "b": ["b_R1.fq", "b_R2.fq"], "c": "c.fa",
                                   "d": "d.fq.gz", "e": "e.fq.gz", "f": ["f_R1.fa", "f_R2.fa"],
                                   "g": "g.bam", "h": ["h.bam", "a.fq"]},
                          outdir="out", models={"esm": "esm2_t36_3B_UR50D.pt",
                                                "dnabert": "DNABERT-S",
                                                "classifier": "500_model.pth"})
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == 66, proc.stdout[-3000:]
    missing = "check its path in your config or sample sheet (a relative path is relative to " \
              "the working directory)"
    assert lines(proc.stdout) == [
        f"virnucpro: error: b_R1.fq: reads file of sample 'b' does not exist; {missing}",
        f"virnucpro: error: b_R2.fq: reads file of sample 'b' does not exist; {missing}",
        "virnucpro: error: c.fa: reads file of sample 'c' is a directory; give the path of a "
        "FASTA, FASTQ, BAM or CRAM file",
        "virnucpro: error: d.fq.gz: not a FASTA or FASTQ file: is binary, not FASTA or FASTQ "
        "text; give nucleotide reads in FASTA or FASTQ format (plain or gzip), or as BAM or "
        "CRAM",
        "virnucpro: error: e.fq.gz: is empty: a gzip file of no text; give a FASTA or FASTQ "
        "file with at least one record",
        "virnucpro: error: f_R1.fa: has 2 records, its mate file f_R2.fa has 1; the two files "
        "must hold the same reads in the same order: give both files of one run, or re-pair "
        "them (e.g. with 'seqkit pair')",
        "virnucpro: error: g.bam: is truncated (BAM files end with an end-of-file block, this "
        "one does not); the file is corrupt or truncated; re-create it or download it again",
        "virnucpro: error: h.bam: a BAM file holds both mates of paired reads, so it is given "
        "alone, without an R2 file (a.fq); give the BAM file as the sample's only reads file",
        "virnucpro: error: esm2_t36_3B_UR50D.pt: cannot read the file (File is not a zip "
        "file); it is truncated or not a PyTorch file: download it again",
        "virnucpro: error: DNABERT-S: no model weights (model.safetensors or "
        "pytorch_model.bin); point to a complete DNABERT-2/DNABERT-S model directory",
        "virnucpro: error: DNABERT-S: no tokenizer.json; point to a complete DNABERT-2/"
        "DNABERT-S model directory",
        "virnucpro: error: 500_model.pth: classifier not found; download the published "
        f"500_model.pth from {ADDRESSES['VirNucPro']}500_model.pth there, or set "
        "models.classifier in your config"]
    assert_nothing_started(tmp_path)


def test_models_the_download_rules_fetch_are_a_note_not_an_error(tmp_path):
    orf_reads(tmp_path / "a.fa", 20)
    shutil.copy(demo_classifier(tmp_path), tmp_path / "500_model.pth")
    config = write_config(tmp_path / "c.yaml", samples={"a": "a.fa"}, outdir="out",
                          models={"esm": "hub/esm2_t36_3B_UR50D.pt", "dnabert": "DNABERT-S",
                                  "classifier": "500_model.pth"})
    proc = snakemake(tmp_path, "-n", "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert lines(proc.stdout) == []
    notes = [line for line in proc.stdout.splitlines() if "not here yet" in line]
    assert notes == [
        "virnucpro: hub/esm2_t36_3B_UR50D.pt: not here yet; rule download_esm makes it before "
        "the first job that needs it",
        "virnucpro: DNABERT-S: not here yet; rule download_dnabert makes it before the first "
        "job that needs it"]


# --------------------------------------------------------------------------- the config


@pytest.mark.parametrize("override, line", [
    (["chunk_szie=300"], "config: unknown key 'chunk_szie'; did you mean chunk_size?"),
    (["chunk_size=400"], "config: chunk_size: 400 is not one of 300, 500"),
    (["shard_size=many"], "config: shard_size: 'many' is not of type 'integer'"),
    (["embed={dtpye: bfloat16}"], "config: unknown key 'embed.dtpye'; did you mean embed.dtype?"),
    (["embed={dtype: fp16}"], "config: embed.dtype: 'fp16' is not one of auto, float32, "
                              "bfloat16, float16"),
])
def test_a_config_problem_is_one_line_naming_its_key(tmp_path, override, line):
    orf_reads(tmp_path / "a.fa", 20)
    config = write_config(tmp_path / "c.yaml", samples={"a": "a.fa"}, outdir="out",
                          models=DEMO_MODELS)
    proc = snakemake(tmp_path, "-n", "--configfile", config, "--config", *override)
    assert proc.returncode == 64, proc.stdout[-3000:]
    assert lines(proc.stdout) == [f"virnucpro: error: {line}"]
    assert "schema" not in proc.stdout and "Traceback" not in proc.stdout
    assert len(proc.stdout.splitlines()) <= 2, proc.stdout  # the profile's line, and this one
    assert_nothing_started(tmp_path)


def test_a_mistyped_key_in_the_config_file(tmp_path):
    orf_reads(tmp_path / "a.fa", 20)
    (tmp_path / "c.yaml").write_text("samples: {a: a.fa}\noutdir: out\nchunk_szie: 300\n"
                                     "checkpoint: {frame: 100, seconds: 0}\n")
    proc = snakemake(tmp_path, "-n", "--configfile", tmp_path / "c.yaml")
    assert proc.returncode == 64, proc.stdout[-3000:]
    assert lines(proc.stdout) == [
        "virnucpro: error: config: unknown key 'chunk_szie'; did you mean chunk_size?",
        "virnucpro: error: config: unknown key 'checkpoint.frame'; did you mean "
        "checkpoint.frames?",
        "virnucpro: error: config: checkpoint.seconds: 0 is less than or equal to the minimum "
        "of 0"]


# --------------------------------------------------------------------------- the dry run


def test_the_dry_run_says_what_it_cannot_list_before_prepare(tmp_path):
    orf_reads(tmp_path / "big.fa", 30_000, codons=60)  # 5.6 MB
    (tmp_path / "big.fa.gz").write_bytes(gzip.compress((tmp_path / "big.fa").read_bytes()))
    (tmp_path / "big.fa").unlink()
    orf_reads(tmp_path / "small.fa", 50)
    config = write_config(tmp_path / "c.yaml", samples={"big": "big.fa.gz", "small": "small.fa"},
                          outdir="out", shard_size=10_000, models=DEMO_MODELS,
                          embed={"device": "cpu"})
    dry = snakemake(tmp_path, "-n", "--configfile", config)
    assert dry.returncode == 0, dry.stdout[-3000:]
    said = lines(dry.stdout, "sample")
    assert said == [
        "virnucpro: sample big: prepare has not run yet; its embedding jobs appear after it: "
        "~30,000 reads, ~39,000 frames (~39,000 distinct), ~4 shards (estimated from the first "
        "1 MB)",
        "virnucpro: sample small: prepare has not run yet; its embedding jobs appear after it: "
        "50 reads, 75 frames (75 distinct), 1 shard (counted in full)"]
    assert "embed_classify" not in job_counts(dry.stdout)
    # The estimate is close to what prepare makes.
    assert snakemake(tmp_path, "out/prepare_summary.tsv", "--configfile", config).returncode == 0
    stats = json.loads((tmp_path / "out" / "big" / "prepare" / "stats.json").read_text())
    assert abs(stats["reads"] - 30_000) < 1500 and abs(stats["frames"] - 39_000) < 2000
    assert stats["shards"] == 4
    # Once prepared, the dry run lists the embedding jobs and says nothing of the sample.
    dry = snakemake(tmp_path, "-n", "--configfile", config)
    assert lines(dry.stdout, "sample") == []
    assert job_counts(dry.stdout)["embed_classify"] == 4 + 1


def test_a_real_run_says_nothing_of_unprepared_samples(tmp_path):
    orf_reads(tmp_path / "a.fa", 20)
    (tmp_path / "a.fq").write_text(fastq_text(read_fasta(tmp_path / "a.fa")))
    config = write_config(tmp_path / "c.yaml", samples={"a": "a.fq"}, outdir="out",
                          models=DEMO_MODELS, embed={"device": "cpu"})
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert lines(proc.stdout, "sample") == []
    assert (tmp_path / "out" / "a" / "summary.tsv").exists()
    assert [p.name for p in (tmp_path / "out" / "a").glob("virus*")] == ["virus_reads.fq.gz"]
    # Reads deleted once the sample is prepared are no longer needed: nothing to do (the
    # virus reads are named by the format prepare recorded).
    (tmp_path / "a.fq").unlink()
    dry = snakemake(tmp_path, "-n", "--configfile", config)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout, dry.stdout[-3000:]


def test_the_test_config_dry_runs_from_the_repository_root():
    """.test/config.yaml (the catalogue's test configuration) plans a run as written, from
    where its paths point (the repository's root), and writes nothing."""
    from workflow_helpers import ROOT

    results = ROOT / ".test" / "results"
    assert not results.exists()
    proc = snakemake(ROOT, "-n", "--configfile", ROOT / ".test" / "config.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert lines(proc.stdout, "error") == []
    assert [line.split(":")[1] for line in lines(proc.stdout, "sample")] == [
        " sample fixed_500bp", " sample no_frames", " sample with_orfs"]
    assert not results.exists()
