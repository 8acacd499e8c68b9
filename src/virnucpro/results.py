"""Result files made from the per-sample results: a sample's input records called virus, as
the sequencer gave them (virus_reads.fq.gz or .fa.gz; paired: virus_R1 and virus_R2, both
mates of every pair called virus), and the run's table of counts, one row per sample
(samples_summary.tsv)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np

from virnucpro import layout
from virnucpro.atomic import atomic_open
from virnucpro.calls import CALLS, VIRUS, percent_virus
from virnucpro.errors import InputError, UsageError, VirNucProError
from virnucpro.fasta import FastaBlock, display
from virnucpro.layout import FASTA, FASTQ
from virnucpro.reads import MATE_SUFFIXES, Reads, reads_reader
from virnucpro.textblock import Field, Rows, const, gather_spans

# gzip level of the virus reads files: level 1 wrote 200,000 150-bp FASTQ reads 5.1x as fast
# as level 6 (1.2 s against 6.1 s) for a file 8.5% larger (bench/virus_reads.py).
GZIP_LEVEL = 1
_VIRUS = VIRUS.encode()
_GT, _NL = const(b">"), const(b"\n")


def virus_reads_format(reads: Sequence[str | os.PathLike],
                       prepare_dir: str | os.PathLike) -> str:
    """The format of a sample's virus reads files: FASTQ when each of its reads files is
    FASTQ, else FASTA (the mates of a pair given as FASTQ and FASTA are both written as
    FASTA, alike). Told from the files' first bytes, which the workflow reads when it plans
    the run; for a prepared sample whose reads are gone, from what prepare recorded in
    stats.json. A file that neither tells (unreadable, or not FASTA or FASTQ: pre-flight or
    prepare says so) counts as FASTA, as prepare directories from before the format was
    recorded had only FASTA virus reads."""
    formats: list[str | None] = []
    for path in reads:
        try:
            formats.append(reads_reader(path).file_format())
        except (VirNucProError, OSError):
            formats.append(None)
    if None in formats:
        try:
            stats = json.loads((Path(prepare_dir) / layout.STATS).read_text())
        except (OSError, ValueError):
            stats = {}
        recorded = [stats.get("format"), stats.get("format2")]
        formats = [told or kept for told, kept in zip(formats, recorded)]
    return FASTQ if all(told == FASTQ for told in formats) else FASTA


def _calls(calls_tsv: str | os.PathLike) -> Iterator[tuple[bytes, bytes]]:
    """(ID, call) per row of summary.tsv or pairs.tsv (first and last column), streamed; bytes,
    as IDs are compared as read."""
    with open(calls_tsv, "rb") as handle:
        next(handle, None)
        for line in handle:
            fields = line.rstrip(b"\r\n").split(b"\t")
            yield fields[0], fields[-1]


def _stale(calls_tsv: str | os.PathLike, problem: str) -> InputError:
    return InputError(calls_tsv, problem, f"{Path(calls_tsv).name} does not belong to these "
                      "reads; delete the sample's results and rerun")


def _records(block: FastaBlock, rows: np.ndarray, file_format: str) -> np.ndarray:
    """The records `rows` of a block as a virus reads file holds them: FASTQ as in the file
    (header, sequence, '+' line, qualities), FASTA as '>' + the header line and the sequence
    on one line (a FASTQ record too, when its mate is FASTA)."""
    if file_format == FASTQ:
        start, length = block.record_spans()
        return gather_spans(block.text, start[rows], length[rows])
    header = Field(block.text, block.header_start[rows],
                   block.header_end[rows] - block.header_start[rows])
    sequence = Field(block.data, block.starts[rows], block.lengths[rows])
    return Rows([_GT, header, _NL, sequence, _NL], len(rows)).buffer


def _write_called(path: str | os.PathLike, mate_suffix: bytes, calls_tsv: str | os.PathLike,
                  file_format: str, out: IO[bytes], mate: int | None = None) -> int:
    """Write the records of one reads file whose row of `calls_tsv` (summary.tsv: a row per
    read; pairs.tsv: a row per pair, named by the mates' ID without `mate_suffix`) calls
    virus. The file and the table are read in step, block by block (both in input order),
    so memory does not grow with the sample; every row must name its record. `mate` (0 or 1)
    takes one mate of each pair from a file holding both, interleaved (a paired BAM)."""
    calls = _calls(calls_tsv)
    unit = "pair" if mate_suffix else "read"
    written = row = 0
    for block in reads_reader(path):
        records = np.arange(len(block)) if mate is None else np.arange(mate, len(block), 2)
        rows = list(islice(calls, len(records)))
        ids = [block.record_id(i) for i in records.tolist()]
        expected = [rid[:-len(mate_suffix)] if mate_suffix and rid.endswith(mate_suffix) else rid
                    for rid in ids]
        named = [rid for rid, _ in rows]
        if named != expected:
            i = next(i for i, rid in enumerate(expected) if i >= len(named) or named[i] != rid)
            raise _stale(calls_tsv, f"row {row + i + 1} is not {unit} '{display(expected[i])}'")
        virus = records[[call == _VIRUS for _, call in rows]]
        out.write(_records(block, virus, file_format))
        written, row = written + len(virus), row + len(records)
    if next(calls, None) is not None:
        raise _stale(calls_tsv, f"has more rows than the sample has {unit}s")
    return written


def write_virus_reads(reads: Reads, calls_tsv: str | os.PathLike,
                      out: str | os.PathLike | Sequence[str | os.PathLike]) -> int:
    """Write the sample's input records called virus, as delivered, in input order:
    - one reads file: the records whose summary.tsv (`calls_tsv`) call is virus, to `out`;
    - paired files (R1, R2): both mates of every pair whose pairs.tsv call is virus, R1's
      records to out[0] and R2's to out[1], so the two files pair record by record.
    gzip FASTQ, each record as in the input (its 4 lines; CRLF line ends become LF), when
    every reads file is FASTQ (virus_reads_format), else gzip FASTA: '>' + the original
    header line and the sequence on one line. Each output must carry its format's suffix
    (.fq.gz, .fa.gz). Returns the records written (mates counted each)."""
    paths = [reads] if isinstance(reads, (str, os.PathLike)) else list(reads)
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    readers = [reads_reader(path) for path in paths]
    # A BAM or CRAM of paired reads holds both mates, interleaved: each output takes one.
    one_file_pairs = len(paths) == 1 and getattr(readers[0], "paired", False)
    if len(outs) != (2 if one_file_pairs else len(paths)):
        raise UsageError(f"{' and '.join(map(str, paths))} need "
                         f"{2 if one_file_pairs else len(paths)} virus reads files, not "
                         f"{len(outs)}")
    file_format = FASTQ if all(r.file_format() == FASTQ for r in readers) else FASTA
    suffix = layout.GZIP_SUFFIXES[file_format]
    for path in outs:
        if not os.fspath(path).endswith(suffix):
            raise UsageError(f"{path}: the reads ({' and '.join(map(str, paths))}) are "
                             f"{file_format.upper()}, so their virus reads file's name must end "
                             f"in {suffix}")
    suffixes = MATE_SUFFIXES if len(outs) == 2 else (b"",)
    mates = (0, 1) if one_file_pairs else (None, None)
    written = 0
    with contextlib.ExitStack() as stack:
        for path, mate_suffix, target, mate in zip(paths * len(outs) if one_file_pairs
                                                   else paths, suffixes, outs, mates):
            raw = stack.enter_context(atomic_open(target, "wb"))
            # No time in the gzip header: the same records give the same bytes.
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL,
                               mtime=0) as handle:
                written += _write_called(path, mate_suffix, calls_tsv, file_format, handle,
                                         mate)
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
