"""The prepare stage through real Snakemake runs: DAG, outputs, config handling, errors."""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from conftest import fastq_text, read_fasta, run_cli
from workflow_helpers import (DEMO_MODELS, ROOT, error_lines, job_counts, snakemake,
                              write_config)

pytestmark = pytest.mark.slow
SAMPLES = ["test_with_orfs", "test_fixed_500bp", "test_sequences_small"]


@pytest.fixture
def config(tmp_path, reference):
    return write_config(tmp_path / "config.yaml",
                        samples={s: str(reference / "prepare" / f"{s}.fa") for s in SAMPLES},
                        outdir="out", chunk_size=500, shard_size=3, models=DEMO_MODELS)


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
    (["--config", "chunk_size=400"], "chunk_size: 400 is not one of 300, 500"),
    (["--config", "shard_size=many"], "shard_size: 'many' is not of type 'integer'"),
    (["--config", "colour=blue"], "unknown key 'colour'; the keys are samples, outdir, "
                                  "chunk_size, shard_size, u_as_t, dedup, virus_threshold, "
                                  "keep_features, features_dtype, models, embed, checkpoint, "
                                  "train (see config/README.md)"),
])
def test_invalid_config_is_refused_before_anything_runs(tmp_path, config, override, message):
    proc = snakemake(tmp_path, "-n", "--configfile", config, *override)
    assert proc.returncode == 64
    assert [line for line in proc.stdout.splitlines() if "error" in line] == \
        [f"virnucpro: error: config: {message}"]
    assert not (tmp_path / "out").exists()


def test_user_configfile_replaces_the_demo_config_and_later_files_override(tmp_path, reference):
    models = reference / "end-to-end" / "models"  # not the demo's: no "demo" in the output
    first = write_config(tmp_path / "a.yaml",
                         samples={"mine": str(reference / "prepare" / "test_with_orfs.fa")},
                         outdir="out-a", models={"esm": str(models / "esm2_t36_tiny_UR50D.pt"),
                                                 "dnabert": str(models / "dnabert"),
                                                 "classifier": str(models / "classifier.pth")})
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


def test_bad_input_is_refused_before_any_job_with_one_line_and_no_output(tmp_path):
    # A corrupt record near the start of the reads is known before the work: the pre-flight
    # check refuses it (deep records fail the prepare job, see test_failure_matrix).
    fastq = tmp_path / "reads.fq"
    fastq.write_text("@r1\nACGT\n+\nIII\n")
    cfg = write_config(tmp_path / "c.yaml", samples={"bad": str(fastq)}, outdir="out",
                       models=DEMO_MODELS)
    proc = snakemake(tmp_path, "--configfile", cfg)
    assert proc.returncode != 0
    assert error_lines(proc.stdout) == [
        f"virnucpro: error: {fastq}: record 'r1' (#1): has 4 bases but 3 quality scores; the "
        "record is corrupt (its quality line must be as long as its sequence); re-create the file"]
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "out").exists()


def test_lint_is_clean():
    proc = snakemake(ROOT, "--lint")
    assert proc.returncode == 0, proc.stdout
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout


def sample_runs(tmp_path, reference, sheet: str) -> dict[str, Path]:
    """The same samples, a single FASTA and paired FASTQ files given by relative paths,
    configured as a YAML map and as the sample sheet `sheet`; prepared in two working
    directories. Returns each run's outdir."""
    records = read_fasta(reference / "prepare" / "test_fixed_500bp.fa")
    single = str(reference / "prepare" / "test_with_orfs.fa")
    outdirs = {}
    for form in ("map", "sheet"):
        work = tmp_path / form
        (work / "reads").mkdir(parents=True)
        (work / "reads" / "R1.fq").write_text(fastq_text([(f"{i} 1:N:0", s) for i, s in records]))
        (work / "reads" / "R2.fq.gz").write_bytes(gzip.compress(fastq_text(
            [(f"{i} 2:N:0", s[::-1]) for i, s in records]).encode()))
        if form == "map":
            samples = {"orfs": single, "pe": ["reads/R1.fq", "reads/R2.fq.gz"]}
        else:
            (work / "config").mkdir()
            (work / "config" / "samples.tsv").write_text(sheet.format(single=single))
            samples = "config/samples.tsv"
        config = write_config(work / "c.yaml", samples=samples, outdir="out", shard_size=5,
                              models=DEMO_MODELS)
        proc = snakemake(work, "out/prepare_summary.tsv", "--configfile", config)
        assert proc.returncode == 0, proc.stdout[-3000:]
        outdirs[form] = work / "out"
    return outdirs


SHEET = ("\ufeffsample\treads1\treads2\n"  # with the byte order mark spreadsheets write
         "# samples of the test\n"
         "orfs\t{single}\t\n"
         "\n"
         "pe\treads/R1.fq\treads/R2.fq.gz\n")


def without_timing(path: Path) -> list[list[str]]:
    """A TSV's rows without the 'seconds' column (the only one a rerun changes)."""
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    drop = rows[0].index("seconds")
    return [row[:drop] + row[drop + 1:] for row in rows]


def test_sample_sheet_run_equals_the_yaml_map_run(tmp_path, reference):
    runs = sample_runs(tmp_path, reference, SHEET)
    for sample in ("orfs", "pe"):
        prepared = [runs[form] / sample / "prepare" for form in ("map", "sheet")]
        files = sorted(p.relative_to(prepared[0]) for p in prepared[0].rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(prepared[1]) for p in prepared[1].rglob("*")
                               if p.is_file())
        for name in files:
            if name.name == "stats.json":
                stats = [json.loads((d / name).read_text()) for d in prepared]
                assert [{k: v for k, v in st.items() if k != "seconds"} for st in stats] == \
                    [{k: v for k, v in stats[0].items() if k != "seconds"}] * 2
            else:
                assert (prepared[0] / name).read_bytes() == (prepared[1] / name).read_bytes()
    assert without_timing(runs["map"] / "prepare_summary.tsv") == \
        without_timing(runs["sheet"] / "prepare_summary.tsv")
    stats = json.loads((runs["sheet"] / "pe" / "prepare" / "stats.json").read_text())
    assert (stats["input"], stats["input2"], stats["paired"]) == \
        ("reads/R1.fq", "reads/R2.fq.gz", True)
    reads = (runs["sheet"] / "pe" / "prepare" / "reads.tsv").read_text().splitlines()
    assert len(reads) == 1 + 2 * len(read_fasta(reference / "prepare" / "test_fixed_500bp.fa"))


BAD_SHEETS = {
    # case: (sheet, exit status, the one line after "virnucpro: error: config/samples.tsv: ")
    "missing column": ("sample\treads2\na\tr.fa\n", 64,
                       "has no column 'reads1'; its first line must name the columns sample, "
                       "reads1 and optionally reads2, separated by tabs"),
    "unknown column": ("sample\treads1\tcondition\na\tr.fa\tx\n", 64,
                       "unknown column 'condition'; its first line must name the columns sample, "
                       "reads1 and optionally reads2, separated by tabs"),
    "empty reads1": ("sample\treads1\treads2\na\tr.fa\t\nb\t\tr2.fq\n", 64,
                     "line 3, column reads1: is empty; give the path of the sample's reads "
                     "(FASTA or FASTQ, plain or gzip, paired reads: R1; or a BAM or CRAM, which "
                     "holds both mates of paired reads)"),
    "duplicate sample name": ("sample\treads1\na\tr.fa\nb\tr.fa\na\tq.fa\n", 64,
                              "line 4: sample 'a' is listed twice (first on line 2); give each "
                              "sample one line (paired reads: R1 in reads1, R2 in reads2)"),
    "invalid sample name": ("sample\treads1\nmy sample\tr.fa\n", 64,
                            "line 2, column sample: 'my sample' is not valid; give a sample name "
                            "of letters, digits, '.', '_' and '-', starting with a letter or "
                            "digit (outputs go to {outdir}/{sample}/)"),
    "braces in a path": ("sample\treads1\na\tdata/{x}.fa\n", 64,
                         "line 2, column reads1: 'data/{x}.fa' has braces; '{' and '}' are "
                         "wildcards in Snakemake paths; rename it (or the directory) without "
                         "braces"),
    "no samples": ("sample\treads1\treads2\n", 64,
                   "lists no samples; add a line per sample below the header"),
    "sheet missing": (None, 66, "sample sheet not found; check 'samples' in your config (a "
                                "relative path is relative to the working directory)"),
}


@pytest.mark.parametrize("case", BAD_SHEETS)
def test_bad_sample_sheet_stops_snakemake_before_any_job(tmp_path, case):
    sheet, status, message = BAD_SHEETS[case]
    (tmp_path / "config").mkdir()
    if sheet is not None:
        (tmp_path / "config" / "samples.tsv").write_text(sheet)
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    config = write_config(tmp_path / "c.yaml", samples="config/samples.tsv", outdir="out")
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == status, proc.stdout[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "error" in line.lower()]
    assert lines == [f"virnucpro: error: config/samples.tsv: {message}"], proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout and "schema" not in proc.stdout
    assert not (tmp_path / "out").exists()  # no job ran
