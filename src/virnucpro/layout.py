"""The on-disk layout: the name and place of every file one stage hands to the next.

One module owns it, so the rules, the scripts, the CLI and the stages cannot drift apart
(geNomad keeps every output path in one module the same way). Two directories matter:

- a *prepare directory* (`virnucpro prepare --shard-size`, the workflow's `{sample}/prepare`):
  reads.tsv, stats.json and shards/, where each shard NAME has NAME.fna (nucleotides),
  NAME.faa (proteins), NAME.index.tsv (frame -> chunk -> read) and NAME.done;
- a *sample directory* (the workflow's `{outdir}/{sample}`): prepare/, features/ (kept
  feature files), scores/ (per-shard scores) and the sample's aggregated results, among
  them its virus reads, named by the sample's layout and format (`virus_reads_names`).

Two conventions hold for every result: it is trusted once its `.done` sentinel exists
(`sentinel`), written after it; an unfinished one keeps its intra-shard checkpoints in
RESULT.partial/ (`partial_dir`). Files found corrupted are moved aside and listed in the
run's registry (`FAILED_REGISTRY`).

The `*_PATTERN`s are the same paths below the output directory, with Snakemake's
{sample} and {shard} wildcards, for the rules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PREPARE = "prepare"
SHARDS = "shards"
FEATURES = "features"
SCORES = "scores"
READS_TABLE = "reads.tsv"
STATS = "stats.json"
SUMMARY = "summary.tsv"
FAILED_REGISTRY = "failed_checkpoints.txt"
DONE = ".done"
PARTIAL = ".partial"
SHARD_PREFIX = "shard_"
# A prepared shard's files, by what they hold (the `.done` is written after all three).
SHARD_SUFFIXES = {"nucleotide": ".fna", "protein": ".faa", "index": ".index.tsv"}

# A reads file's format, as prepare records it (stats.json) and the virus reads are named by.
FASTA, FASTQ = "fasta", "fastq"
# The reads called virus, as delivered: a single-read sample's in one file, a paired sample's
# both mates of the pairs called virus in two (R1, R2); gzip FASTQ or FASTA as the input.
VIRUS_READS = "virus_reads"
VIRUS_MATES = ("virus_R1", "virus_R2")
GZIP_SUFFIXES = {FASTA: ".fa.gz", FASTQ: ".fq.gz"}

SHARD_PATTERN = f"{{sample}}/{PREPARE}/{SHARDS}/{{shard}}"  # + a suffix
FEATURES_PATTERN = f"{{sample}}/{FEATURES}/{{shard}}.pt"
SCORES_PATTERN = f"{{sample}}/{SCORES}/{{shard}}.tsv"


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:06d}"


def virus_reads_names(paired: bool, file_format: str) -> list[str]:
    """The names of a sample's virus reads files (one; paired: R1's and R2's) in a format."""
    stems = VIRUS_MATES if paired else (VIRUS_READS,)
    return [stem + GZIP_SUFFIXES[file_format] for stem in stems]


def sentinel(result: str | os.PathLike) -> Path:
    """The `.done` beside a result (features/shard_000000.pt -> features/shard_000000.done)."""
    return Path(result).with_suffix(DONE)


def partial_dir(result: str | os.PathLike) -> Path:
    """Where an unfinished result keeps its intra-shard checkpoints (not a Snakemake output,
    so a rerun after a kill resumes from them)."""
    result = Path(result)
    return result.with_name(result.name + PARTIAL)


def scores_sidecar(scores: str | os.PathLike) -> Path:
    """How a scores file was made (precision, frames rescored), beside it."""
    return Path(scores).with_suffix(".json")


def names_with(directory: str | os.PathLike, suffix: str) -> set[str]:
    """Names of the files in `directory` ending in `suffix`, without it (one scandir: fast
    on many shards); empty when the directory does not exist."""
    if not os.path.isdir(directory):
        return set()
    return {e.name[: -len(suffix)] for e in os.scandir(directory) if e.name.endswith(suffix)}


def prepared_shards(prepare_dir: str | os.PathLike) -> list[str]:
    """The shards prepare wrote, in order, as its stats.json counts them; none before it ran.

    The count, not the files: a prepare directory is published whole (stats.json in it), so
    the count is what prepare made, while its files may be deleted later (intermediates of
    a finished sample). A shard whose files or `.done` went missing is still a shard of the
    sample: never silently dropped from the run, named as damaged where it is still needed.
    """
    try:
        stats = json.loads((Path(prepare_dir) / STATS).read_text())
    except FileNotFoundError:
        return []
    return [shard_name(i) for i in range(stats["shards"])]


def shard_file(prepare_dir: str | os.PathLike, name: str, kind: str) -> Path:
    """A prepared shard's file: `kind` is nucleotide, protein or index."""
    return Path(prepare_dir) / SHARDS / f"{name}{SHARD_SUFFIXES[kind]}"


def prepare_dir(sample_dir: str | os.PathLike) -> Path:
    return Path(sample_dir) / PREPARE


def features_file(sample_dir: str | os.PathLike, name: str) -> Path:
    return Path(sample_dir) / FEATURES / f"{name}.pt"


def scores_file(sample_dir: str | os.PathLike, name: str) -> Path:
    return Path(sample_dir) / SCORES / f"{name}.tsv"


def registry(outdir: str | os.PathLike) -> Path:
    return Path(outdir) / FAILED_REGISTRY
