"""The failure matrix: hostile inputs and failing machines, end to end through Snakemake.

Every row checks what a user meets: the exit status, one line naming the file (and record)
and what to do, no partial output, and, once the cause is fixed, a rerun whose results equal
a clean run's. README "When things go wrong" is built from this module.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import plain_prepare
from conftest import fastq_text, flip_a_stored_bit, read_fasta, run_cli, unaligned_bam
from virnucpro.runner import exit_status
from workflow_helpers import (DEMO_MODELS, STOP_FREE_CODONS, assert_same_file, assert_same_results,
                              error_lines, job_process, snakemake, start_snakemake, write_config)

pytestmark = pytest.mark.slow
CHUNK = 500
IS_ROOT = os.geteuid() == 0


def clean_text(n: int = 8, seed: int = 7) -> str:
    """Reads of 150-1,290 bp (one to three chunks), each with an open first frame."""
    rng = random.Random(seed)
    return "".join(f">read{i} sample read {i}\n"
                   f"{''.join(rng.choices(STOP_FREE_CODONS, k=rng.randint(50, 430)))}\n"
                   for i in range(n))


CLEAN = clean_text()


def records(text: str) -> list[tuple[str, str]]:
    return [(block.split("\n", 1)[0], block.split("\n", 1)[1].replace("\n", ""))
            for block in text.split(">")[1:]]


def with_sequences(text: str, change) -> str:
    return "".join(f">{header}\n{change(seq)}\n" for header, seq in records(text))


def fastq(text: str) -> str:
    """The reads of a FASTA text as 4-line FASTQ."""
    return fastq_text(records(text))


def mate_files() -> tuple[str, str, str]:
    """R1 and R2 (FASTQ) of paired reads named as Illumina names them (the same ID, 1:N:0 and
    2:N:0 in the description), and the FASTA of the mates interleaved as ID/1, ID/2: the
    reads the pair must give the results of."""
    ids = [header.split()[0] for header, _ in records(CLEAN)]
    one = [seq for _, seq in records(CLEAN)]
    two = [seq for _, seq in records(clean_text(seed=8))]
    return (fastq("".join(f">{i} 1:N:0:ACGT\n{s}\n" for i, s in zip(ids, one))),
            fastq("".join(f">{i} 2:N:0:ACGT\n{s}\n" for i, s in zip(ids, two))),
            "".join(f">{i}/1\n{s}\n>{i}/2\n{t}\n" for i, s, t in zip(ids, one, two)))


MATES = mate_files()
INTERLEAVED = "interleaved_mates"  # the sample of MATES[2], which paired samples must equal


def with_line(text: str, number: int, change) -> str:
    lines = text.split("\n")
    lines[number - 1] = change(lines[number - 1])
    return "\n".join(lines)


def step_statuses(outdir: Path, since: float = 0.0) -> dict[str, int | None]:
    """Each step log under outdir/logs written since `since` (a time.time()), by its path
    within logs/ ('prepare/s.log'), with the exit status the step recorded in it (None: it
    did not finish). Per-job facts come from these files, never from Snakemake's terminal
    report, whose lines interleave when jobs run in parallel."""
    logs = outdir / "logs"
    return {str(path.relative_to(logs)): exit_status(path) for path in sorted(logs.rglob("*.log"))
            if path.stat().st_mtime >= since} if logs.is_dir() else {}


def failed_steps(outdir: Path, since: float = 0.0) -> dict[str, int]:
    """The steps that finished with a non-zero status since `since`."""
    return {log: status for log, status in step_statuses(outdir, since).items()
            if status not in (0, None)}


def run_config(work: Path, samples: dict[str, str], **extra) -> Path:
    settings = {"samples": samples, "outdir": "out", "chunk_size": CHUNK, "shard_size": 40,
                "models": DEMO_MODELS, "embed": {"device": "cpu"}}
    settings.update(extra)
    return write_config(work / "config.yaml", **settings)


def leftovers(outdir: Path) -> list[str]:
    """Temporary files or directories of unfinished atomic writes."""
    return sorted(str(p.relative_to(outdir)) for p in outdir.rglob("*")
                  if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """The clean sample, run once: what every fixed rerun must reproduce."""
    work = tmp_path_factory.mktemp("clean")
    (work / "clean.fa").write_text(CLEAN)
    proc = snakemake(work, "--configfile", run_config(work, {"clean": "clean.fa"}))
    assert proc.returncode == 0, proc.stdout
    return work / "out" / "clean"


# --------------------------------------------------------------------------- hostile inputs

REJECTED = {
    # row: (file name, content, exit status, what the one line says)
    "empty file": ("empty.fa", b"", 65, "empty.fa: file is empty; give a FASTA or FASTQ file"),
    "only headers": ("headers.fa", b">a\n>b\n", 65,
                     "headers.fa: record 'a' (#1): has an empty sequence; remove the record"),
    "GenBank": ("genome.gb", b"LOCUS       X 10 bp    DNA\nORIGIN\n//\n", 65,
                "genome.gb: not a FASTA or FASTQ file: looks like GenBank; give nucleotide "
                "reads in FASTA or FASTQ format (plain or gzip)"),
    "binary": ("binary.fa", bytes(range(256)) * 4, 65,
               "binary.fa: not a FASTA or FASTQ file: is binary, not FASTA or FASTQ text"),
    "gzip of garbage": ("garbage.fa.gz", gzip.compress(bytes(range(256)) * 4), 65,
                        "garbage.fa.gz: not a FASTA or FASTQ file: is binary, not FASTA or "
                        "FASTQ text"),
    "truncated gzip": ("truncated.fa.gz", gzip.compress(CLEAN.encode())[:200], 65,
                       "truncated.fa.gz: cannot be decompressed"),
    "protein, not DNA": ("protein.fa", b">p1\nMKVLHHSEQW\n", 65,
                         "protein.fa: record 'p1' (#1): has 'L' at position 4, which is not a "
                         "nucleotide code"),
    "duplicate ID within a sample": (
        "dup.fa", (CLEAN + CLEAN.split(">")[1].join([">", ""])).encode(), 65,
        "dup.fa: record 'read0' (#9): duplicate record ID (first seen at record #1); record "
        "IDs must be unique within a sample; rename one of them"),
    "FASTQ quality line shorter than the sequence": (
        "quality.fq", with_line(fastq(CLEAN), 12, lambda quality: quality[:-1]).encode(), 65,
        f"quality.fq: record 'read2' (#3): has {len(records(CLEAN)[2][1])} bases but "
        f"{len(records(CLEAN)[2][1]) - 1} quality scores; the record is corrupt (its quality "
        "line must be as long as its sequence); re-create the file"),
    "truncated FASTQ": (
        "truncated.fq", "\n".join(fastq(CLEAN).split("\n")[:30]).encode(), 65,
        "truncated.fq: record 'read7' (#8): the file ends inside this record (it has 2 of its "
        "4 lines); the file is truncated; re-create or download it again"),
    "paired files that do not pair (R2 lacks a mate)": (
        "unpaired_R2.fq", MATES[1].split("@read7")[0].encode(), 65,
        "unpaired_R1.fq: has 8 records, its mate file unpaired_R2.fq has 7; the two files must "
        "hold the same reads in the same order: give both files of one run, or re-pair them "
        "(e.g. with 'seqkit pair')"),
}
# Rejected rows of paired samples: their R1 file (good), with the row's file as R2. Fixed,
# such a sample gives the results of the interleaved mates.
PAIRED_ROWS = {"paired files that do not pair (R2 lacks a mate)": "unpaired_R1.fq"}
# Rows that only the sample's prepare job finds (it reads the whole file): pre-flight finds the
# others before any job, in the first MB of each file (all of these small files).
PREPARE_ONLY = {"duplicate ID within a sample"}


def sample_files(row: str) -> list[str]:
    """The reads files of a rejected row's sample, as the config lists them."""
    name = REJECTED[row][0]
    return [PAIRED_ROWS[row], name] if row in PAIRED_ROWS else [name]

ODD_HEADERS = ["sp|P0{i}|vírus_{i} description with spaces", "read\u00df{i}\twith\ttabs",
               "r{i}|x|y", "ünïcode_{i}"]


def odd_ids_text() -> tuple[str, list[str]]:
    headers = [ODD_HEADERS[i % 4].format(i=i) for i in range(len(records(CLEAN)))]
    text = "".join(f">{h}\n{seq}\n" for h, (_, seq) in zip(headers, records(CLEAN)))
    return text, [h.split()[0] for h in headers]


def soft_masked(seq: str) -> str:
    return "".join(c.lower() if (i // 37) % 2 else c for i, c in enumerate(seq))


def with_iupac(seq: str, rng=random.Random(3)) -> str:
    return "".join(rng.choice("RYSWKMBDHVN") if rng.random() < 0.01 else c for c in seq)


def genome(path: Path, length: int = 10_000_000) -> None:
    rng = random.Random(11)
    with open(path, "w") as out:
        out.write(">chromosome_1 a 10-Mbp genome in one record\n")
        for _ in range(length // 1_000_000):
            seq = "".join(rng.choices("ACGT", k=1_000_000))
            out.write("\n".join(seq[i:i + 80] for i in range(0, len(seq), 80)) + "\n")


def million_reads(path: Path, n: int = 1_000_000) -> None:
    """Mostly 1-2 bp reads (no codon: no frame), every 1,000th read an open frame."""
    rng = random.Random(5)
    with open(path, "w") as out:
        for i in range(n):
            seq = ("".join(rng.choices(STOP_FREE_CODONS, k=60)) if i % 1000 == 0
                   else "ACGT"[i % 4] * (1 + i % 2))
            out.write(f">m{i}\n{seq}\n")


ACCEPTED = {
    # row: (sample file, content); compared with the clean run unless checked otherwise
    "Windows line endings": ("crlf.fa", CLEAN.replace("\n", "\r\n")),
    "lowercase": ("lower.fa", with_sequences(CLEAN, str.lower)),
    "soft-masked": ("masked.fa", with_sequences(CLEAN, soft_masked)),
    "duplicate IDs across samples": ("again.fa", CLEAN),
    "sample path with spaces": ("dir with spaces/my reads.fa", CLEAN),
    "gzip": ("clean.fa.gz", None),
    "FASTQ": ("reads.fq", fastq(CLEAN)),
    "FASTQ, gzip": ("reads.fq.gz", None),
    "FASTQ with Windows line endings": ("crlf.fq", fastq(CLEAN).replace("\n", "\r\n")),
    "IDs with spaces, tabs, '|' and non-ASCII": ("odd ids.fa", odd_ids_text()[0]),
    "IUPAC codes": ("iupac.fa", with_sequences(CLEAN, with_iupac)),
    "U instead of T": ("rna.fa", with_sequences(CLEAN, lambda seq: seq.replace("T", "U"))),
    "reads shorter than a codon": ("tiny.fa", ">t1\nA\n>t2\nAC\n>t3\nACG\n>t4\nATGGCC\n"),
    "10-Mbp single record": ("genome.fa", None),
    "1,000,000 tiny reads": ("million.fa", None),
}
SAME_AS_CLEAN = ["Windows line endings", "lowercase", "soft-masked",
                 "duplicate IDs across samples", "sample path with spaces", "gzip", "FASTQ",
                 "FASTQ, gzip", "FASTQ with Windows line endings"]
# Accepted paired samples: (R1, R2); compared with the interleaved mates' results.
PAIRED = {"paired reads (R1 FASTQ, R2 gzipped FASTQ)": ("mates_R1.fq", "mates_R2.fq.gz")}
# An unaligned BAM (conftest.unaligned_bam, as Picard FastqToSam writes one) of the paired
# FASTQ row's pairs, whose results it must give. (Single-read BAMs, CRAM and the BAM errors:
# tests/test_bam.py, through the package and the CLI.)
BAM_ROW, BAM_FILE = "unaligned BAM of paired reads", "mates.bam"


def sample_name(row: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", row.lower()).strip("_")


@dataclass
class InputRuns:
    work: Path
    preflight: subprocess.CompletedProcess  # every row at once: stopped by pre-flight
    preflight_wrote: list[str]  # what that run left in the working directory's out/
    first: subprocess.CompletedProcess  # then the rows pre-flight passes, --keep-going
    existed: dict[str, list[str]]  # PREPARE_ONLY sample -> what it left in out/{sample}
    logs: dict[str, str]  # PREPARE_ONLY sample -> its prepare log
    fixed: subprocess.CompletedProcess  # after replacing every rejected file with clean reads


@pytest.fixture(scope="module")
def input_runs(tmp_path_factory) -> InputRuns:
    work = tmp_path_factory.mktemp("inputs")
    samples = {}
    for row, (name, content, _, _) in REJECTED.items():
        (work / name).write_bytes(content)
        files = sample_files(row)
        samples[sample_name(row)] = files if len(files) > 1 else name
    for r1 in PAIRED_ROWS.values():
        (work / r1).write_text(MATES[0])
    for row, (r1, r2) in PAIRED.items():
        (work / r1).write_text(MATES[0])
        (work / r2).write_bytes(gzip.compress(MATES[1].encode()))
        samples[sample_name(row)] = [r1, r2]
    (work / "mates.fa").write_text(MATES[2])
    samples[INTERLEAVED] = "mates.fa"
    (work / "bam sources").mkdir()
    sources = [work / "bam sources" / f"R{mate}.fq" for mate in (1, 2)]
    for source, text in zip(sources, MATES):
        source.write_text(text)
    unaligned_bam(work / BAM_FILE, *sources)
    samples[sample_name(BAM_ROW)] = BAM_FILE
    for row, (name, content) in ACCEPTED.items():
        path = work / name
        path.parent.mkdir(exist_ok=True)
        if row == "gzip":
            path.write_bytes(gzip.compress(CLEAN.encode()))
        elif row == "FASTQ, gzip":
            path.write_bytes(gzip.compress(fastq(CLEAN).encode()))
        elif row == "10-Mbp single record":
            genome(path)
        elif row == "1,000,000 tiny reads":
            million_reads(path)
        else:
            path.write_text(content, newline="")
        samples[sample_name(row)] = name
    # Every row at once: pre-flight stops the run before any job.
    everything = run_config(work, samples, shard_size=100_000).rename(work / "everything.yaml")
    preflight = snakemake(work, "--keep-going", "--configfile", everything)
    wrote = sorted(p.name for p in (work / "out").glob("*"))
    # The rows pre-flight cannot see with all the others: each rejected by its prepare job.
    found_first = {sample_name(row) for row in REJECTED if row not in PREPARE_ONLY}
    config = run_config(work, {s: f for s, f in samples.items() if s not in found_first},
                        shard_size=100_000)
    first = snakemake(work, "--keep-going", "--configfile", config)
    existed = {row: sorted(p.name for p in (work / "out" / sample_name(row)).glob("*"))
               for row in PREPARE_ONLY}
    logs = {row: (work / "out" / "logs" / "prepare" / f"{sample_name(row)}.log").read_text()
            for row in PREPARE_ONLY}
    for row, (name, _, _, _) in REJECTED.items():
        good = MATES[1] if row in PAIRED_ROWS else CLEAN
        (work / name).write_bytes(gzip.compress(good.encode()) if name.endswith(".gz")
                                  else good.encode())
    fixed = snakemake(work, "--configfile", everything)
    return InputRuns(work, preflight, wrote, first, existed, logs, fixed)


@pytest.mark.parametrize("row", REJECTED)
def test_rejected_input(input_runs, clean_run, row):
    name, _, status, message = REJECTED[row]
    sample = sample_name(row)
    if row in PREPARE_ONLY:
        assert input_runs.first.returncode == 1
        log = input_runs.logs[row].splitlines()
        assert log[1:] == [f"virnucpro: exit status {status}"], log
        assert log[0].startswith(f"virnucpro: error: {message}"), log
        assert log[0] in error_lines(input_runs.first.stdout)  # also shown on the terminal
        # ... and last, by the workflow's onerror handler, after Snakemake's report of it.
        said = [line for line in input_runs.first.stdout.splitlines()
                if line.startswith("virnucpro: ")]
        assert said[-1] == log[0], said
        assert input_runs.existed[row] == []  # no partial output
    else:
        # Before any job: one line per rejected file, all at once; nothing written.
        lines = error_lines(input_runs.preflight.stdout)
        assert len(lines) == len(REJECTED) - len(PREPARE_ONLY), lines
        assert [line for line in lines if line.startswith(f"virnucpro: error: {message}")], lines
        assert input_runs.preflight.returncode == status
        assert input_runs.preflight_wrote == []
    # Fixed (the file replaced by good reads) and rerun: the results of a clean run.
    assert input_runs.fixed.returncode == 0, input_runs.fixed.stdout[-3000:]
    assert_same_results(input_runs.work / "out" / sample, input_runs.work / "out" / INTERLEAVED
                        if row in PAIRED_ROWS else clean_run)


@pytest.mark.parametrize("row", SAME_AS_CLEAN)
def test_accepted_input_gives_the_clean_results(input_runs, clean_run, row):
    assert_same_results(input_runs.work / "out" / sample_name(row), clean_run)


@pytest.mark.parametrize("row", PAIRED)
def test_paired_reads_give_the_results_of_the_interleaved_mates(input_runs, row):
    sample = input_runs.work / "out" / sample_name(row)
    assert_same_results(sample, input_runs.work / "out" / INTERLEAVED)
    ids = [h for h, _ in records(MATES[2])]
    assert [r[0] for r in summary_rows(sample)] == ids
    assert ids[:2] == ["read0/1", "read0/2"] and len(ids) == 2 * len(records(CLEAN))
    stats = json.loads((sample / "prepare" / "stats.json").read_text())
    assert (stats["input"], stats["input2"], stats["paired"]) == (*PAIRED[row], True)


def fastq_file_records(path: Path) -> list[bytes]:
    """Each 4-line record of a FASTQ file (plain or gzip) as in the file, with LF line ends."""
    data = path.read_bytes()
    lines = (gzip.decompress(data) if path.suffix == ".gz" else data).replace(
        b"\r\n", b"\n").splitlines(keepends=True)
    return [b"".join(lines[i:i + 4]) for i in range(0, len(lines), 4)]


def virus_reads(sample_dir: Path) -> dict[str, bytes]:
    """The sample's virus reads files, by name, decompressed."""
    return {p.name: gzip.decompress(p.read_bytes()) for p in sample_dir.glob("virus_*")}


@pytest.mark.parametrize("row", ["FASTQ", "FASTQ, gzip", "FASTQ with Windows line endings"])
def test_virus_reads_of_fastq_are_its_records(input_runs, row):
    """virus_reads.fq.gz: each read called virus as its FASTQ record, byte for byte (CRLF line
    ends as LF), in input order; the calls of the clean run (the same reads)."""
    sample = input_runs.work / "out" / sample_name(row)
    calls = [r[-1] for r in summary_rows(sample)]
    assert calls.count("virus") >= 2
    expected = b"".join(record for record, call in zip(
        fastq_file_records(input_runs.work / ACCEPTED[row][0]), calls, strict=True)
        if call == "virus")
    assert virus_reads(sample) == {"virus_reads.fq.gz": expected}


@pytest.mark.parametrize("row", PAIRED)
def test_virus_pairs_are_both_mates_of_the_virus_pairs(input_runs, row):
    """Paired FASTQ (R2 gzipped): virus_R1.fq.gz and virus_R2.fq.gz hold the R1 and R2
    records of every pair pairs.tsv calls virus, as in the files; the interleaved mates
    (FASTA, one sample) give virus_reads.fa.gz: the mates called virus each."""
    sample = input_runs.work / "out" / sample_name(row)
    pairs = [line.split("\t") for line in (sample / "pairs.tsv").read_text().splitlines()[1:]]
    calls = [pair[-1] for pair in pairs]
    assert "virus" in calls  # (the demo models call every pair here: the selection itself
    # is tested with a threshold in test_workflow_report.py)
    assert virus_reads(sample) == {
        f"virus_R{mate}.fq.gz": b"".join(
            record for record, call in zip(fastq_file_records(input_runs.work / name), calls,
                                           strict=True) if call == "virus")
        for mate, name in enumerate(PAIRED[row], 1)}
    interleaved = input_runs.work / "out" / INTERLEAVED
    mates = [r[-1] for r in summary_rows(interleaved)]
    assert virus_reads(interleaved) == {"virus_reads.fa.gz": "".join(
        f">{header}\n{seq}\n" for (header, seq), call in zip(records(MATES[2]), mates)
        if call == "virus").encode()}


def summary_rows(sample_dir: Path) -> list[list[str]]:
    return [line.split("\t") for line in (sample_dir / "summary.tsv").read_text(
        encoding="utf-8").splitlines()[1:]]


def prepared_frames(sample_dir: Path) -> list[tuple[str, str, str]]:
    shards = sorted((sample_dir / "prepare" / "shards").glob("*.fna"))
    nucleotides = [r for path in shards for r in read_fasta(path)]
    proteins = [r for path in shards for r in read_fasta(path.with_suffix(".faa"))]
    return [(i, n, p) for (i, n), (_, p) in zip(nucleotides, proteins, strict=True)]


def test_odd_ids_are_kept_to_the_first_whitespace(input_runs, clean_run):
    sample = input_runs.work / "out" / sample_name("IDs with spaces, tabs, '|' and non-ASCII")
    ids = odd_ids_text()[1]
    rows, clean = summary_rows(sample), summary_rows(clean_run)
    assert [r[0] for r in rows] == ids
    assert [r[1:] for r in rows] == [r[1:] for r in clean]
    frames = (sample / "prediction_results.txt").read_text(encoding="utf-8").splitlines()[1:]
    clean_frames = (clean_run / "prediction_results.txt").read_text().splitlines()[1:]
    assert [f.split("\t", 1)[1] for f in frames] == [f.split("\t", 1)[1] for f in clean_frames]
    assert {f.split("_chunk_")[0] for f in frames} == set(ids)


@pytest.mark.parametrize("row", ["IUPAC codes", "U instead of T"])
def test_ambiguous_codons_are_skipped_as_the_original(input_runs, row):
    """Codons with IUPAC letters or U translate to nothing (the original's rule; the property
    test in test_prepare.py covers random sequences)."""
    name, content = ACCEPTED[row]
    sample = input_runs.work / "out" / sample_name(row)
    expected = list(plain_prepare.prepare(str(input_runs.work / name), CHUNK))
    assert prepared_frames(sample) == expected
    assert [r[0] for r in summary_rows(sample)] == [h.split()[0] for h, _ in records(content)]
    log = (input_runs.work / "out" / "logs" / "prepare" / f"{sample.name}.log").read_text()
    assert ("bases are U: codons containing U are skipped" in log) == (row == "U instead of T")


def test_reads_shorter_than_a_codon_are_reported_without_frames(input_runs):
    rows = summary_rows(input_runs.work / "out" / sample_name("reads shorter than a codon"))
    assert [(r[0], r[1], r[3], r[-1]) for r in rows[:2]] == [
        ("t1", "1", "0", "no_coding_frame"), ("t2", "2", "0", "no_coding_frame")]
    assert [r[0] for r in rows] == ["t1", "t2", "t3", "t4"] and rows[3][3] != "0"


def peak_memory_mb(work: Path, log: str) -> float:
    """The peak memory a finished step logged (virnucpro.runner.run_step)."""
    text = (work / "out" / "logs" / log).read_text()
    return float(re.search(r"peak memory (\d+) MB", text).group(1))


def test_a_genome_in_one_record_streams(input_runs):
    sample = sample_name("10-Mbp single record")
    reads = (input_runs.work / "out" / sample / "prepare" / "reads.tsv").read_text().splitlines()
    assert reads[1].split("\t")[1:4] == ["chromosome_1", "10000000", str(10_000_000 // CHUNK)]
    assert len(summary_rows(input_runs.work / "out" / sample)) == 1
    # The record is 10 MB of text; prepare must not hold many copies of it.
    assert peak_memory_mb(input_runs.work, f"prepare/{sample}.log") < 300  # measured: 193


def test_a_million_tiny_reads(input_runs):
    sample = sample_name("1,000,000 tiny reads")
    rows = summary_rows(input_runs.work / "out" / sample)
    assert len(rows) == 1_000_000 and rows[0][0] == "m0" and rows[-1][0] == "m999999"
    assert sum(r[-1] == "no_coding_frame" for r in rows) == 999_000
    for rule in ("prepare", "aggregate"):
        assert peak_memory_mb(input_runs.work, f"{rule}/{sample}.log") < 400, rule  # 156, 222


def test_an_unaligned_bam_gives_the_results_of_its_reads_as_fastq(input_runs):
    """Both tables of the original, summary.tsv, pairs.tsv and counts.json byte for byte."""
    (row, _), = PAIRED.items()
    sample, same = (input_runs.work / "out" / sample_name(r) for r in (BAM_ROW, row))
    assert_same_results(sample, same)
    for table in ("pairs.tsv", "counts.json"):
        assert_same_file(sample / table, same / table)
    stats = json.loads((sample / "prepare" / "stats.json").read_text())
    assert (stats["input"], stats["input2"], stats["paired"]) == (BAM_FILE, None, True)


def test_the_virus_reads_of_a_bam_are_named_as_samtools_fastq_names_them(input_runs):
    """A paired BAM's virus reads as delivered: both mates of every pair called virus,
    R1's in virus_R1.fq.gz and R2's in virus_R2.fq.gz, each record as `samtools fastq`
    writes it (NAME/1, NAME/2: a BAM holds no FASTQ description; the qualities kept)."""
    sample = input_runs.work / "out" / sample_name(BAM_ROW)
    calls = [line.split("\t")[-1] for line in (sample / "pairs.tsv").read_text().splitlines()[1:]]
    assert "virus" in calls
    for mate, text in enumerate(MATES[:2], 1):
        lines = text.splitlines()
        expected = "".join(f"@{lines[i][1:].split()[0]}/{mate}\n{lines[i + 1]}\n+\n{lines[i + 3]}\n"
                           for i, call in zip(range(0, len(lines), 4), calls, strict=True)
                           if call == "virus")
        assert gzip.decompress((sample / f"virus_R{mate}.fq.gz").read_bytes()).decode() == \
            expected
    assert not (sample / "virus_reads.fa.gz").exists()


# --------------------------------------------------------------------------- broken models

def break_model(work: Path, kind: str, fault: str) -> str:
    """A broken copy of a demo model in work/broken/{kind}-{fault}/; returns its path."""
    from virnucpro.demo_models import write_demo_classifier

    where = work / "broken" / f"{kind}-{fault}"
    where.mkdir(parents=True)
    good = work / DEMO_MODELS[kind]
    if kind == "esm":
        path = where / "esm2_demo_t2_d32.pt"
        if fault == "truncated":
            path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        elif fault == "bits flipped":  # a bad copy: the archive's checksums say so
            shutil.copy(good, path)
            flip_a_stored_bit(path)
        elif fault == "wrong architecture":  # a classifier where ESM-2 belongs
            shutil.copy(work / DEMO_MODELS["classifier"], path)
    elif kind == "dnabert":
        path = where / "DNABERT-S"
        if fault != "missing":
            shutil.copytree(good, path)
        if fault == "truncated":
            weights = path / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:5000])
        elif fault == "wrong architecture":  # a config that does not match the weights
            config = json.loads((path / "config.json").read_text())
            config["hidden_size"] *= 2
            (path / "config.json").write_text(json.dumps(config))
        elif fault == "NaN weights":  # damage no file check can see: the numbers show it
            from safetensors.torch import load_file, save_file

            state = load_file(path / "model.safetensors")
            name = next(k for k in state if state[k].dim() == 2 and "embeddings" not in k)
            state[name].view(-1)[0] = float("nan")
            save_file(state, path / "model.safetensors")
    else:
        path = where / "500_model.pth"
        if fault == "truncated":
            path.write_bytes(good.read_bytes()[:3000])
        elif fault == "wrong architecture":  # the published models' width, not the demo's
            write_demo_classifier(path, input_dim=3328)
    return str(path.relative_to(work))


MODEL_ROWS = {
    # (model, fault): (exit status of the failing job, or None when pre-flight stops
    # Snakemake before any job; message)
    ("esm", "missing"): (66, "cannot download ESM-2 model file 'esm2_demo_t2_d32'"),
    ("esm", "truncated"): (None, "esm2_demo_t2_d32.pt: cannot read the file"),
    ("esm", "wrong architecture"): (66, "esm2_demo_t2_d32.pt: refused: the file holds a pickled "
                                        "object (__main__.MLPClassifier) that is not allowed"),
    ("esm", "bits flipped"): (None, "esm2_demo_t2_d32.pt: the file is damaged (the CRC-32 "
                                    "checksum of its entry"),
    ("dnabert", "missing"): (66, "cannot download zhihan1996/DNABERT-S"),
    ("dnabert", "truncated"): (None, "model.safetensors: cannot read the weights"),
    ("dnabert", "wrong architecture"): (66, "DNABERT-S: weights do not fit config.json"),
    ("dnabert", "NaN weights"): (66, "model.safetensors: the model computed NaN or infinite "
                                     "values for frame"),
    ("classifier", "missing"): (None, "500_model.pth: classifier not found; download the "
                                      "published 500_model.pth"),
    ("classifier", "truncated"): (None, "500_model.pth: not a PyTorch zip archive"),
    ("classifier", "wrong architecture"): (66, "classifier expects 3328 features, embeddings "
                                               "have 64"),
}


@pytest.fixture(scope="module")
def finished_copy(clean_run, tmp_path_factory) -> Path:
    """A copy of the finished clean run's working directory, for rows to damage."""
    work = tmp_path_factory.mktemp("models") / "work"
    shutil.copytree(clean_run.parent.parent, work, symlinks=True)
    return work


@pytest.mark.parametrize("kind,fault", MODEL_ROWS, ids=[" ".join(r) for r in MODEL_ROWS])
def test_broken_model(finished_copy, clean_run, kind, fault):
    work = finished_copy
    status, message = MODEL_ROWS[(kind, fault)]
    broken = break_model(work, kind, fault)
    config = run_config(work, {"clean": "clean.fa"}, models={**DEMO_MODELS, kind: broken})
    since = time.time()
    proc = snakemake(work, "--configfile", config, env={"HF_HUB_OFFLINE": "1"})
    lines = [line for line in error_lines(proc.stdout) if message in line]
    assert len(lines) == 1 and broken in lines[0], proc.stdout[-3000:]
    if status is None:  # pre-flight: no job started, so no log was touched
        assert proc.returncode == 66, proc.stdout[-3000:]
        assert error_lines(proc.stdout) == lines
        assert step_statuses(work / "out", since) == {}
    else:
        assert proc.returncode == 1, proc.stdout[-3000:]
        failed = failed_steps(work / "out", since)
        assert list(failed.values()) == [status], failed
        (log,) = failed
        assert lines[0] in (work / "out" / "logs" / log).read_text().splitlines()
    assert leftovers(work / "out") == []
    # Fixed (the configured model restored) and rerun: the results of a clean run.
    proc = snakemake(work, "--configfile", run_config(work, {"clean": "clean.fa"}))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert_same_results(work / "out" / "clean", clean_run)


# --------------------------------------------------------------------------- failing machines

READS = 1500  # about 2,100 frames: 3 shards of up to 1,000


def reads_config(work: Path, fasta: Path, outdir: Path | str = "out", keep: bool = False
                 ) -> Path:
    """Shards of 1,000 frames, progress saved every 100 (so interruptions leave some); the
    default run (each shard embedded and scored in one job), or one keeping feature files."""
    return run_config(work, {"s": str(fasta)}, outdir=str(outdir), shard_size=1000,
                      keep_features=keep, checkpoint={"frames": 100, "window_frames": 100})


def _reads_run(tmp_path_factory, keep: bool) -> tuple[Path, Path]:
    from workflow_helpers import orf_reads

    work = tmp_path_factory.mktemp(f"reads-clean-keep-{keep}")
    orf_reads(work / "reads.fa", READS)
    proc = snakemake(work, "--configfile", reads_config(work, work / "reads.fa", keep=keep))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert len(list((work / "out" / "s" / "scores").glob("*.tsv"))) == 3
    assert len(list((work / "out" / "s" / "features").glob("*.pt"))) == (3 if keep else 0)
    return work / "reads.fa", work / "out" / "s"


@pytest.fixture(scope="module")
def reads_reference(tmp_path_factory) -> tuple[Path, Path]:
    """(reads FASTA, its results from an undisturbed default run)."""
    return _reads_run(tmp_path_factory, keep=False)


@pytest.fixture(scope="module")
def kept_reference(tmp_path_factory) -> tuple[Path, Path]:
    """(reads FASTA, its results from an undisturbed run that keeps its feature files)."""
    return _reads_run(tmp_path_factory, keep=True)


def finished_run_copy(reference, tmp_path: Path, keep: bool = False) -> Path:
    """A working directory holding a copy of a finished reference run (mtimes kept)."""
    fasta, clean = reference
    work = tmp_path / "work"
    shutil.copytree(clean.parent.parent, work, symlinks=True)
    reads_config(work, fasta, keep=keep)
    return work


def mount_tmpfs(path: Path, options: str) -> None:
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


@pytest.fixture
def mounts(tmp_path):
    yield tmp_path
    for mount in tmp_path.iterdir():
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("stage", ["prepare", "embed_classify", "embed"])
def test_disk_full(reads_reference, kept_reference, mounts, stage):
    """The output file system fills up during prepare (a 64 KB disk, then enlarged) or during
    embedding (another file takes the space left after prepare, then is deleted), in the
    default run (embed_classify) and in one that keeps its feature files (embed)."""
    keep = stage == "embed"
    fasta, clean = kept_reference if keep else reads_reference
    disk = mounts / "disk"
    mount_tmpfs(disk, "size=64k" if stage == "prepare" else "size=64m")
    config = reads_config(mounts, fasta, disk / "out", keep=keep)
    filler = disk / "someone else's file"
    if stage != "prepare":
        assert snakemake(mounts, "--until", "prepare", "--configfile", config).returncode == 0
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(bytes(free - 96 * 1024))  # room for logs, not for results
    since = time.time()
    proc = snakemake(mounts, "--configfile", config)
    assert proc.returncode == 1, proc.stdout[-3000:]
    (log, status), = failed_steps(disk / "out", since).items()
    assert (log.split("/")[0], status) == (stage, 74)
    (line,) = error_lines(proc.stdout)
    assert re.fullmatch(rf"virnucpro: error: {re.escape(str(disk / 'out' / 's'))}/\S+: No space "
                        r"left on device \(disk or quota full\); free space there or set outdir "
                        r"to a larger file system, then rerun \(finished results are kept\)", line)
    assert leftovers(disk / "out") == []
    if stage != "prepare":
        filler.unlink()
    else:
        remount(disk, "size=64m")
    proc = snakemake(mounts, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert_same_results(disk / "out" / "s", clean)


def test_unwritable_output_directory(reads_reference, mounts):
    fasta, clean = reads_reference
    disk = mounts / "readonly"
    mount_tmpfs(disk, "size=64m,ro")
    config = reads_config(mounts, fasta, disk / "out")
    proc = snakemake(mounts, "--configfile", config)
    assert proc.returncode == 73, proc.stdout[-3000:]
    assert error_lines(proc.stdout) == [
        f"virnucpro: error: {disk / 'out'}: Read-only file system; make the output directory "
        "writable or set outdir elsewhere, then rerun"]
    assert step_statuses(disk / "out") == {}  # refused before any job started
    remount(disk, "rw")
    proc = snakemake(mounts, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert_same_results(disk / "out" / "s", clean)


@pytest.mark.parametrize("damage", ["deleted", "sentinel deleted", "truncated"])
def test_prepared_shard_damaged_before_embedding(reads_reference, tmp_path, damage):
    """A damaged shard is named, never dropped: a shard that lost its `.done` is still one
    of the shards prepare wrote."""
    fasta, clean = reads_reference
    config = reads_config(tmp_path, fasta)
    assert snakemake(tmp_path, "--until", "prepare", "--configfile", config).returncode == 0
    shard = tmp_path / "out" / "s" / "prepare" / "shards" / "shard_000001.faa"
    if damage == "sentinel deleted":
        shard = shard.with_suffix(".done")
    if damage.endswith("deleted"):
        shard.unlink()
        problem = "is missing"
    else:
        size = shard.stat().st_size
        os.truncate(shard, size // 2)
        problem = f"has {size // 2} bytes, {size} when prepare wrote it"
    for dry_run in (["-n"], []):  # a dry run tells the same
        proc = snakemake(tmp_path, *dry_run, "--configfile", config)
        assert proc.returncode == 1, proc.stdout[-3000:]
        assert error_lines(proc.stdout) == [
            f"virnucpro: error: out/s/prepare/shards/{shard.name}: {problem}, so the "
            "prepared sample is damaged; delete out/s/prepare and rerun to prepare the sample "
            "again"]
    shutil.rmtree(tmp_path / "out" / "s" / "prepare")
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert_same_results(tmp_path / "out" / "s", clean)


INTERMEDIATES = {
    "prepared shards": "prepare/shards/*.f*",
    "a shard's sentinel": "prepare/shards/shard_000001.done",
    "a shard's files": "prepare/shards/shard_000001.*",
    "the shards directory": "prepare/shards",
    "feature files": "features/*.pt",
    "the reads": None,
}


@pytest.mark.parametrize("deleted", list(INTERMEDIATES))
def test_intermediates_deleted_after_the_run_change_nothing(reads_reference, kept_reference,
                                                             tmp_path, deleted):
    """Once a sample is scored, its prepared shards, their sentinels, its features and its
    reads are only intermediates: removing them (to save space) loses no result, a rerun has
    nothing to do, and the sample still has every shard prepare wrote."""
    keep = deleted == "feature files"
    reference = kept_reference if keep else reads_reference
    work = finished_run_copy(reference, tmp_path, keep)
    sample = work / "out" / "s"
    results = {path: path.stat().st_mtime_ns for path in sample.glob("*") if path.is_file()}
    with contextlib.ExitStack() as restore:
        if INTERMEDIATES[deleted] is None:  # the reference's reads: put back afterwards
            fasta = reference[0]
            fasta.rename(fasta.with_name("moved-away.fa"))
            restore.callback(fasta.with_name("moved-away.fa").rename, fasta)
        else:
            for path in sample.glob(INTERMEDIATES[deleted]):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        proc = snakemake(work, "--configfile", work / "config.yaml")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout, proc.stdout[-3000:]
    assert {path: path.stat().st_mtime_ns for path in results} == results  # not rewritten
    assert_same_results(sample, reference[1], intermediates=False)
    status = run_cli("status", work / "out", check=True).stdout
    assert status.startswith("s: 3 shards of 2,231 distinct frames (2,231 frames): 3 embedded, "
                             "3 scored, 0 frames saved"), status


def test_finished_features_truncated(kept_reference, tmp_path):
    work = finished_run_copy(kept_reference, tmp_path, keep=True)
    features = work / "out" / "s" / "features" / "shard_000002.pt"
    os.truncate(features, features.stat().st_size // 2)
    since = time.time()
    proc = snakemake(work, "--configfile", work / "config.yaml")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert failed_steps(work / "out", since) == {"classify/s/shard_000002.log": 75}
    (line,) = error_lines(proc.stdout)
    assert line in (work / "out" / "logs" / "classify" / "s" / "shard_000002.log").read_text()
    assert re.fullmatch(r"virnucpro: error: out/s/features/shard_000002.pt: "
                        r"corrupted feature file: "
                        r"not a torch zip container \(truncated or overwritten\?\); moved aside "
                        r"as shard_000002.pt.corrupted-\S+ and listed in failed_checkpoints.txt: "
                        r"rerun to compute it again", line), line
    registry = (work / "out" / "failed_checkpoints.txt").read_text().splitlines()
    assert len(registry) == 1 and registry[0].startswith(str(features.relative_to(work)) + "|")
    assert len(list(features.parent.glob("shard_000002.pt.corrupted-*"))) == 1  # kept aside
    proc = snakemake(work, "--configfile", work / "config.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert_same_results(work / "out" / "s", kept_reference[1])


# ---------------------------------------------------------------------- concurrent runs and signals

def catches_sigterm(job: psutil.Process) -> bool:
    """Whether the job has a SIGTERM handler, i.e. virnucpro's runner is in charge
    (Python's default catches only SIGINT)."""
    status = Path(f"/proc/{job.pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def freeze_when_running(job: psutil.Process, timeout: float = 60) -> None:
    """Suspend the job once the runner's signal handlers are in place (polled while it is
    suspended, so the check cannot race the job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.suspend()
        if catches_sigterm(job):
            return
        job.resume()
        time.sleep(0.01)
    raise AssertionError(f"{job.cmdline()} never installed its signal handlers")


@pytest.mark.parametrize("where", ["same working directory", "another working directory"])
def test_second_run_on_the_same_output_directory_is_refused(reads_reference, tmp_path, where):
    fasta, clean = reads_reference
    first_work, second_work = tmp_path / "first", tmp_path / ("first" if where.startswith(
        "same") else "second")
    first_work.mkdir(), second_work.mkdir(exist_ok=True)
    outdir = tmp_path / "first" / "out"
    config = reads_config(first_work, fasta, outdir)
    first = start_snakemake(first_work, "--configfile", config)
    job = job_process(first, "embed")
    assert job is not None, first.communicate()[0][-3000:]
    job.suspend()  # the first run is certainly busy while the second starts
    try:
        second = snakemake(second_work, "--configfile", reads_config(second_work, fasta, outdir))
        dry = snakemake(second_work, "-n", "--configfile", config)
    finally:
        job.resume()
    out = first.communicate(timeout=600)[0]
    assert first.returncode == 0, out[-3000:]
    if where.startswith("same"):  # Snakemake's own lock
        assert second.returncode == 1 and "LockException" in second.stdout, second.stdout[-3000:]
        assert "Directory cannot be locked" in second.stdout
    else:  # ours, on the output directory
        assert second.returncode == 75, second.stdout[-3000:]
        (line,) = error_lines(second.stdout)
        assert re.fullmatch(rf"virnucpro: error: {re.escape(str(outdir))}: another workflow run "
                            r"is using this output directory \(\{.*\"pid\": "
                            rf"{first.pid}.*\}}\); wait for it to finish, or set a different "
                            r"outdir", line), line
    # Exit status 75 is the onstart hook's: no job of the second run had started.
    assert dry.returncode == 0 and "embed" in dry.stdout  # a dry run is always allowed
    assert_same_results(outdir / "s", clean)


def interrupted_line(sig: signal.Signals) -> str:
    return (f"virnucpro: interrupted by {sig.name}: nothing unfinished was published (saved "
            "checkpoints are kept); rerun the same command to continue")


# Stages of the default run, and the two of a run that keeps its feature files; the rule
# embed_classify runs the embed script.
STAGES = {False: ["demo_models", "prepare", "prepare_summary", "embed_classify", "aggregate",
                  "sample_report"], True: ["embed", "classify"]}
SCRIPTS = {"embed_classify": "embed"}


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep_features"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_in_every_stage(reads_reference, kept_reference, tmp_path, sig, keep):
    """Ctrl-C (SIGINT to the foreground process group) or SIGTERM to the whole run (a batch
    system, `timeout`, `kill -- -PGID`) while a job of each stage runs; after each, the same
    command is run again (no --unlock needed), the last run finishes, and the results equal
    an undisturbed run's."""
    fasta, clean = kept_reference if keep else reads_reference
    config = reads_config(tmp_path, fasta, keep=keep)
    for stage in STAGES[keep]:
        # --forcerun: the stage runs even if an earlier interrupted run got past it.
        run = start_snakemake(tmp_path, "--forcerun", stage, "--configfile", config)
        job = job_process(run, SCRIPTS.get(stage, stage))
        assert job is not None, f"no {stage} job ran: {run.communicate()[0][-3000:]}"
        job.suspend()  # wherever it is: starting, importing, or at work
        tree = psutil.Process(run.pid).children(recursive=True)
        os.killpg(run.pid, sig)
        time.sleep(0.2)
        with contextlib.suppress(psutil.NoSuchProcess):  # Snakemake may have killed it
            job.resume()
        out = run.communicate(timeout=300)[0]
        # The job may have finished its work just before the signal: what matters is that
        # the run stops, publishes nothing unfinished and leaves nothing running.
        assert run.returncode != 0, f"{stage}: {out[-3000:]}"
        assert "LockException" not in out
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert leftovers(tmp_path / "out") == [], stage
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert_same_results(tmp_path / "out" / "s", clean)


def test_sigterm_to_snakemake_finishes_running_jobs(reads_reference, tmp_path):
    """`kill PID` of Snakemake alone: it lets running jobs finish, starts no new ones, and
    the rerun continues from there."""
    fasta, clean = reads_reference
    config = reads_config(tmp_path, fasta)
    since = time.time()
    run = start_snakemake(tmp_path, "--configfile", config)
    job = job_process(run, "embed")
    assert job is not None
    os.kill(run.pid, signal.SIGTERM)
    out = run.communicate(timeout=300)[0]
    assert "Will exit after finishing currently running jobs" in out, out[-3000:]
    assert run.returncode != 0
    statuses = step_statuses(tmp_path / "out", since)
    assert failed_steps(tmp_path / "out", since) == {}, statuses  # the running job finished
    assert [s for log, s in statuses.items() if log.startswith("embed_classify/")] == [0]
    done = sorted(p.name for p in (tmp_path / "out" / "s" / "scores").glob("*.tsv"))
    assert 1 <= len(done) < 3
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert_same_results(tmp_path / "out" / "s", clean)


def sigterm_an_embedding_job(work: Path, config: Path) -> tuple[Path, str]:
    """Run the workflow and send SIGTERM to its first embedding job once it saved some work;
    return the job's partial directory and Snakemake's output."""
    run = start_snakemake(work, "--configfile", config)
    job = job_process(run, "embed")
    assert job is not None
    partial = next((work / "out" / "s" / "scores").glob("*.tsv.partial"), None)
    while partial is None or not list(partial.glob("batch_*.done")):  # some work is saved
        time.sleep(0.005)
        partial = next((work / "out" / "s" / "scores").glob("*.tsv.partial"), None)
    freeze_when_running(job)
    job.send_signal(signal.SIGTERM)
    job.resume()
    out = run.communicate(timeout=300)[0]
    assert run.returncode == 1
    return partial, out


def test_sigterm_to_an_embedding_job(reads_reference, tmp_path):
    """SIGTERM to the job alone, as a scheduler's time limit or `scancel` sends it: the job
    saves what it embedded, says so in one line and exits 143; the rerun resumes from there."""
    fasta, clean = reads_reference
    config = reads_config(tmp_path, fasta)
    partial, out = sigterm_an_embedding_job(tmp_path, config)
    shard = partial.name[:-len(".tsv.partial")]
    assert failed_steps(tmp_path / "out") == {f"embed_classify/s/{shard}.log":
                                              128 + signal.SIGTERM}
    log = (tmp_path / "out" / "logs" / "embed_classify" / "s" / f"{shard}.log").read_text()
    assert interrupted_line(signal.SIGTERM) in log.splitlines()
    assert interrupted_line(signal.SIGTERM) in out  # also shown on the terminal
    assert list(partial.glob("batch_*.done"))  # the saved work is kept ...
    # what interrupted runs leave (temporary names of atomic writes), and a file of the user's
    sample = tmp_path / "out" / "s"
    orphans = [sample / ".summary.tsv.k2j4h5g6.tmp", sample / ".prepare.q1w2e3r4.tmp" / "reads.tsv",
               sample / "scores" / ".shard_000009.tsv.rows.tmp",
               sample / "scores" / f".{partial.name}.zxcv_678.tmp" / "fingerprint.json"]
    for orphan in orphans:
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_text("left by a killed run\n")
    (sample / "my notes.tmp").write_text("not ours\n")
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "resuming after" in (tmp_path / "out" / "logs" / "embed_classify" / "s" /
                                f"{shard}.log").read_text()
    assert_same_results(tmp_path / "out" / "s", clean)  # ... and used
    assert leftovers(tmp_path / "out") == ["s/my notes.tmp"]  # the orphans went, nothing else



def test_batches_left_by_an_interrupted_removal_are_never_reused(reads_reference, tmp_path):
    """A kill while a partial directory was being removed could leave saved batches without
    their fingerprint.json (reproduced here from a job stopped with saved batches). Each
    batch carries its job's fingerprint: a later run with another classifier sets them
    aside (moved, in the registry) and embeds the shard afresh, with the results of a clean
    run of that classifier (never the old classifier's scores)."""
    from virnucpro.demo_models import CLASSIFIER_SHAPE, write_demo_classifier

    fasta, _ = reads_reference
    work, clean = tmp_path / "work", tmp_path / "clean"
    work.mkdir()
    partial, _ = sigterm_an_embedding_job(work, reads_config(work, fasta))
    (partial / "fingerprint.json").unlink()
    other = tmp_path / "other-classifier.pth"
    write_demo_classifier(other, seed=1, **CLASSIFIER_SHAPE)
    models = {**DEMO_MODELS, "classifier": str(other)}
    for directory in (work, clean):
        directory.mkdir(exist_ok=True)
        config = run_config(directory, {"s": str(fasta)}, shard_size=1000, models=models,
                            checkpoint={"frames": 100, "window_frames": 100})
        proc = snakemake(directory, "--configfile", config)
        assert proc.returncode == 0, proc.stdout[-3000:]
    assert not partial.exists()
    assert len(list(partial.parent.glob(f"{partial.name}.stale-*"))) == 1
    assert f"{partial.relative_to(work)}|saved batches that do not carry this job's " \
        "fingerprint" in (work / "out" / "failed_checkpoints.txt").read_text()
    assert_same_results(work / "out" / "s", clean / "out" / "s", intermediates=False)
