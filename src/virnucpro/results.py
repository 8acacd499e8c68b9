"""Result files made from the per-sample results: a sample's input records called virus
(virus_reads.fa.gz) and the run's table of counts, one row per sample (samples_summary.tsv)."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virnucpro.atomic import atomic_open
from virnucpro.calls import CALLS, VIRUS, percent_virus
from virnucpro.errors import InputError
from virnucpro.reads import Reads, original_reads

_WRITE_BYTES = 1 << 20  # records are gathered into blocks this big for the compressor
STALE_HINT = "summary.tsv does not belong to these reads; delete the sample's results and rerun"


def _summary_calls(summary_tsv: str | os.PathLike) -> Iterator[tuple[bytes, bytes]]:
    """(read_id, call) per row of summary.tsv, streamed (bytes, as IDs are compared as read)."""
    with open(summary_tsv, "rb") as handle:
        next(handle, None)
        for line in handle:
            fields = line.rstrip(b"\r\n").split(b"\t")
            yield fields[0], fields[-1]


def write_virus_reads(reads: Reads, summary_tsv: str | os.PathLike,
                      out: str | os.PathLike) -> int:
    """Write the input records whose summary.tsv call is virus to `out` (gzip FASTA): each as
    '>' + its original header line (description kept; FASTQ records too) and its sequence on
    one line, in input order, the mates of paired reads each as a record. Streams the reads
    and summary.tsv in step (both in prepare's order); returns the records written."""
    calls = _summary_calls(summary_tsv)
    written, block, pending = 0, [], 0
    with atomic_open(out, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as handle:
        for read in original_reads(reads):
            row = next(calls, None)
            if row is None or row[0] != read.read_id:
                raise InputError(summary_tsv, f"row {read.read_index + 1} is not read "
                                 f"'{read.read_id.decode(errors='replace')}'", STALE_HINT)
            if row[1] == VIRUS.encode():
                block.append(b">%s\n%s\n" % (read.header, read.sequence))
                written, pending = written + 1, pending + len(block[-1])
                if pending >= _WRITE_BYTES:
                    handle.write(b"".join(block))
                    block, pending = [], 0
        handle.write(b"".join(block))
        if next(calls, None) is not None:
            raise InputError(summary_tsv, "has more rows than the sample has reads", STALE_HINT)
    return written


# samples_summary.tsv: per group of reads (all reads; each mate and the pairs of a paired
# sample) its count and the same five counts and share; (column prefix, count column, the
# count's key in counts.json). A single-read sample has NA in the mate and pair columns.
_GROUPS = (("", "reads", "reads"), ("mate1_", "mate1_reads", "reads"),
           ("mate2_", "mate2_reads", "reads"), ("pairs_", "pairs", "pairs"))
_COUNTS = ("frames", *(call.replace("-", "_") for call in CALLS), "percent_virus")
SAMPLES_SUMMARY_COLUMNS = ("sample", "layout",
                           *(column for prefix, count, _ in _GROUPS
                             for column in (count, *(prefix + c for c in _COUNTS))))


def _group_cells(counts: dict[str, Any] | None, unit: str) -> list[str]:
    if counts is None:
        return ["NA"] * (1 + len(_COUNTS))
    share = percent_virus(counts)
    return [str(counts[unit]), str(counts["frames"]), *(str(counts[c]) for c in CALLS),
            "NA" if share is None else f"{share:.2f}"]


def samples_summary_rows(counts: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row (SAMPLES_SUMMARY_COLUMNS) per sample, from each sample's counts.json content."""
    rows = []
    for sample, sample_counts in counts.items():
        groups = (sample_counts, *(sample_counts.get("mates") or [None, None]),
                  sample_counts.get("pairs"))
        rows.append([sample, "paired" if sample_counts["paired"] else "single",
                     *(cell for group, (_, _, unit) in zip(groups, _GROUPS)
                       for cell in _group_cells(group, unit))])
    return rows


def write_samples_summary(counts_files: dict[str, str | os.PathLike],
                          out: str | os.PathLike) -> None:
    """samples_summary.tsv from each sample's counts.json, samples in the order given."""
    counts = {sample: json.loads(Path(path).read_text()) for sample, path in counts_files.items()}
    with atomic_open(out, "w") as handle:
        handle.write("\t".join(SAMPLES_SUMMARY_COLUMNS) + "\n")
        handle.writelines("\t".join(row) + "\n" for row in samples_summary_rows(counts))
