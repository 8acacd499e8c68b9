"""Prepare stage: reads (FASTA, FASTQ, BAM or CRAM; one file or paired) -> chunks -> stop-free
frames -> shard files.

Two output layouts come from the same stream of prepared blocks:
- `write_flat` (the CLI's stable interface): chunked.fa, nucleotide.fa and
  protein.faa, byte for byte as the original tool writes them.
- `write_shards` (the workflow): the frames to embed split into shards of `shard_size`
  frames, each shard a nucleotide FASTA, a protein FASTA and an index, with a
  `.done` sentinel written last (the frame count, then each file's name and size, so a
  file deleted or truncated later is noticed: `damaged_shard`); plus reads.tsv (one row per
  input read) and stats.json. With `dedup` (the default), a chunk whose sequence came before
  in the sample is not embedded again (virnucpro.dedup): its frames are in the index only.

Shard index (`shard_NNNNNN.index.tsv`): a row for every frame, in input order: frame_id,
read_index (0-based position of the read in the input; paired reads: 2k and 2k+1 are the
mates of pair k), chunk (1-based), frame (F1..R3), representative (empty for a frame the
shard's FASTA files hold; for a repeated chunk's frame, the number of the embedded frame whose
scores are its own: embedded frames are numbered from 0 across the sample's shards, in order,
so frame g is record g % shard_size of shard g // shard_size). A repeated frame's row lies in
the shard that was being written when it came. Aggregation back to reads uses the index instead
of parsing IDs, which users control.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np

from virnucpro.atomic import atomic_directory, atomic_open, fsync_dir, write_sentinel
from virnucpro.dedup import DistinctFrames
from virnucpro.defaults import DEDUP
from virnucpro.errors import InputError, UsageError
from virnucpro.fasta import FastaBlock
from virnucpro import layout
from virnucpro.frames import Chunks, KeptFrames, ambiguous_chunks, chunk_layout, select_frames
from virnucpro.progress import Progress
from virnucpro.reads import DuplicateIdCheck, Reads, ReadSource, reads_reader
from virnucpro.textblock import Field, Rows, const, decimal, from_buffer, lookup

log = logging.getLogger("virnucpro")

CHUNK_SIZES = (300, 500)
FLAT_FILES = ("chunked.fa", "nucleotide.fa", "protein.faa")
SHARD_FILES = tuple(layout.SHARD_SUFFIXES.values())  # nucleotides, proteins, index
INDEX_HEADER = b"frame_id\tread_index\tchunk\tframe\trepresentative\n"
READS_HEADER = b"read_index\tread_id\tlength\tchunks\tframes\n"

_GT, _NL, _TAB = const(b">"), const(b"\n"), const(b"\t")
FRAME_TAGS = (b"F1", b"F2", b"F3", b"R1", b"R2", b"R3")


def check_chunk_size(chunk_size: int) -> None:
    if chunk_size not in CHUNK_SIZES:
        raise UsageError(f"chunk size {chunk_size} is not supported; use 300 or 500 "
                         "(the two published VirNucPro models)")


@dataclass
class PreparedBlock:
    """One block of reads with its chunks and kept frames, and their text forms."""

    reads: FastaBlock
    chunks: Chunks
    frames: KeptFrames
    read_index0: int  # 0-based index of the block's first read in the input
    # Per kept frame: -1 when it is embedded, else the number of the embedded frame it repeats
    # (virnucpro.dedup); None: every frame is embedded.
    same_as: np.ndarray | None = None

    @cached_property
    def embedded(self) -> np.ndarray:
        """Positions of the frames to embed among the kept frames."""
        if self.same_as is None:
            return np.arange(len(self.frames))
        return np.flatnonzero(self.same_as < 0)

    @cached_property
    def _read_id(self) -> Field:
        return Field(self.reads.text, self.reads.id_start, self.reads.id_length)

    @cached_property
    def _chunk_numbers(self) -> range:
        """1..the highest chunk number of the block (tables of ID suffixes are built over it)."""
        return range(1, int(self.chunks.number.max()) + 1 if len(self.chunks) else 1)

    def _chunk_suffix(self, end: bytes) -> Field:
        """'_chunk_{k}' + end for every chunk, from a table of the distinct texts."""
        return lookup([b"_chunk_%d%s" % (k, end) for k in self._chunk_numbers],
                      self.chunks.number - 1)

    def _frame_text(self, pattern: bytes) -> Field:
        """pattern % (chunk number, frame tag) for every kept frame, from a table."""
        texts = [pattern % (k, tag) for k in self._chunk_numbers for tag in FRAME_TAGS]
        return lookup(texts, (self.chunks.number[self.frames.chunk] - 1) * 6 + self.frames.frame)

    @cached_property
    def _frame_read(self) -> np.ndarray:
        return self.chunks.record[self.frames.chunk]

    @cached_property
    def _frame_read_id(self) -> Field:
        return self._read_id.take(self._frame_read)

    @cached_property
    def _frame_header(self) -> list[Field]:
        """'>' + frame ID + newline, shared by the nucleotide and protein FASTA."""
        return [_GT, self._frame_read_id, self._frame_text(b"_chunk_%d%s\n")]

    @cached_property
    def frames_per_read(self) -> np.ndarray:
        return np.bincount(self._frame_read, minlength=len(self.reads)).astype(np.int64)

    def chunked_fasta(self) -> Rows:
        seq = Field(self.reads.data, self.chunks.start, self.chunks.length).wrapped(60)
        return Rows([_GT, self._read_id.take(self.chunks.record), self._chunk_suffix(b"\n"), seq],
                    len(self.chunks))

    def _frames_fasta(self, sequences: Field) -> Rows:
        """The frames to embed as FASTA records (every frame unless deduplicated)."""
        fields = [*self._frame_header, sequences, _NL]
        if len(self.embedded) < len(self.frames):
            fields = [field.take(self.embedded) for field in fields]
        return Rows(fields, len(self.embedded))

    def nucleotide_fasta(self) -> Rows:
        return self._frames_fasta(from_buffer(self.frames.nucleotide, self.frames.nucleotide_ends))

    def protein_fasta(self) -> Rows:
        return self._frames_fasta(from_buffer(self.frames.protein, self.frames.protein_ends))

    def index_tsv(self) -> Rows:
        """A row for every kept frame (the shard index's columns, INDEX_HEADER)."""
        fields = [self._frame_read_id, self._frame_text(b"_chunk_%d%s\t"),
                  decimal(self.read_index0 + self._frame_read)]
        if self.same_as is None:
            fields.append(self._frame_text(b"\t%d\t%s\t\n"))
        else:
            number = decimal(np.maximum(self.same_as, 0))
            fields += [self._frame_text(b"\t%d\t%s\t"),
                       Field(number.source, number.start, np.where(self.same_as < 0, 0,
                                                                   number.length)), _NL]
        return Rows(fields, len(self.frames))

    def reads_tsv(self) -> Rows:
        n = len(self.reads)
        chunks = np.bincount(self.chunks.record, minlength=n)
        return Rows([decimal(self.read_index0 + np.arange(n)), _TAB, self._read_id, _TAB,
                     decimal(self.reads.lengths), _TAB, decimal(chunks), _TAB,
                     decimal(self.frames_per_read), _NL], n)


def saved_share(frames: int, distinct_frames: int) -> float:
    """The share of the frames that repeat an embedded one, so are not embedded."""
    return 1 - distinct_frames / frames if frames else 0.0


def distinct_frames_of(stats: dict) -> int:
    """The frames to embed that a stats.json records (a sample prepared before repeats were
    found has none of its own: every frame was embedded)."""
    return stats.get("distinct_frames", stats["frames"])


@dataclass
class PrepareStats:
    input: str  # the reads file; paired reads: R1
    chunk_size: int
    input2: str | None = None  # paired reads: R2
    paired: bool = False
    # FASTA or FASTQ (virnucpro.layout), of input and input2: what names the virus reads
    # files of a sample whose reads are gone (virnucpro.results.virus_reads_format).
    format: str | None = None
    format2: str | None = None
    reads: int = 0
    bases: int = 0
    chunks: int = 0
    frames: int = 0
    reads_without_frames: int = 0
    shards: int = 0
    seconds: float = 0.0
    u_as_t: bool = False
    u_bases: int = 0  # U/u bases in the sequences (read as T when u_as_t)
    drop_ambiguous: bool = False  # training data: chunks with non-ACGT letters give no frame
    ambiguous_chunks: int = 0
    dedup: bool = False  # a chunk whose sequence came before is not embedded again
    distinct_frames: int = 0  # the frames to embed: all frames, less those of repeated chunks

    def count(self, block: PreparedBlock) -> None:
        self.reads += len(block.reads)
        self.bases += int(block.reads.lengths.sum())
        self.chunks += len(block.chunks)
        self.frames += len(block.frames)
        self.distinct_frames += len(block.embedded)
        self.reads_without_frames += int((block.frames_per_read == 0).sum())

    @property
    def saved(self) -> float:
        return saved_share(self.frames, self.distinct_frames)

    @classmethod
    def of(cls, source: ReadSource, chunk_size: int, **settings: bool) -> PrepareStats:
        """Empty counts for preparing `source`, which they name (files and formats)."""
        formats = [reader.file_format() for reader in source.readers]
        return cls(source.paths[0], chunk_size, *source.paths[1:], paired=source.paired,
                   format=formats[0], format2=formats[1] if len(formats) == 2 else None,
                   **settings)


@contextlib.contextmanager
def distinct_frames(stats: PrepareStats, directory: str | os.PathLike | None = None
                    ) -> Iterator[DistinctFrames | None]:
    """What finds the repeated chunks of a stream when `stats.dedup` says to (else None), with
    its files (unlinked temporary files: nothing is left behind however the process ends) in
    `directory` (the system's temporary directory by default)."""
    if not stats.dedup:
        yield None
        return
    with DistinctFrames(directory) as distinct:
        yield distinct


def prepare_blocks(source: ReadSource, chunk_size: int, stats: PrepareStats,
                   distinct: DistinctFrames | None = None) -> Iterator[PreparedBlock]:
    """Stream the reads as prepared blocks, counting into `stats`; with `distinct`, each
    block's frames of repeated chunks are marked (PreparedBlock.same_as).

    Duplicate read IDs are detected when the stream ends (InputError), so a
    consumer must treat its output as incomplete until the iterator is exhausted.
    U is not a codon letter for the original, so codons with U are skipped (and an RNA
    read comes out nearly empty): kept by default for fidelity, with a warning;
    `stats.u_as_t` reads U as T instead.
    """
    check_chunk_size(chunk_size)
    duplicates = DuplicateIdCheck()
    progress = Progress(f"prepare {' + '.join(r.path.name for r in source.readers)}",
                        source.total_bytes)
    for block in source.blocks():
        duplicates.add(block)
        yield prepare_block(block, chunk_size, stats, distinct)
        progress.update(source.bytes_read, reads=stats.reads, frames=stats.frames)
    duplicates.check(source)
    if stats.u_bases and not stats.u_as_t:
        log.warning("%s: %d bases are U: codons containing U are skipped, as the original "
                    "does; if this is RNA, set u_as_t: true (CLI: --u-as-t) to read U as T",
                    source, stats.u_bases)
    stats.seconds = round(time.monotonic() - progress.start, 3)
    progress.close(reads=stats.reads, frames=stats.frames)


def prepare_block(block: FastaBlock, chunk_size: int, stats: PrepareStats,
                  distinct: DistinctFrames | None = None) -> PreparedBlock:
    """One block of reads with its chunks and kept frames, counted into `stats`, whose
    settings it follows (U as T, chunks with ambiguous bases dropped); with `distinct`, the
    frames of chunks whose sequence came before are marked as repeats."""
    u_positions = block.u_positions()
    if len(u_positions):
        stats.u_bases += len(u_positions)
        if stats.u_as_t:
            block = block.with_u_as_t(u_positions)
    chunks = chunk_layout(block.lengths, block.starts, chunk_size)
    frames = select_frames(block.data, block.codes, chunks)
    if stats.drop_ambiguous:
        dropped = ambiguous_chunks(block.codes[:len(block.data)], chunks)
        stats.ambiguous_chunks += int(dropped.sum())
        frames = frames.without_chunks(dropped)
    same_as = distinct.same_as(block.data, chunks, frames) if distinct else None
    prepared = PreparedBlock(block, chunks, frames, stats.reads, same_as)
    stats.count(prepared)
    return prepared


@dataclass
class Estimate:
    """What prepare will make of a sample, from the start of its reads files (`exact`:
    counted, because that start is the whole of them)."""

    reads: float
    frames: float
    distinct_frames: float  # to embed (`dedup`), at the rate of repeats within each start
    shards: int
    exact: bool


@dataclass
class HeadCounts:
    """What prepare makes of the whole records at the start of one reads file."""

    reads: int
    frames: int
    distinct_frames: int
    share: float  # of the file's bytes on disk those records come from
    whole: bool  # they are the whole file


def head_counts(path: str | os.PathLike, chunk_size: int, head_bytes: int,
                **settings: bool) -> HeadCounts | None:
    """Prepare's own code on the whole records in the first `head_bytes` of a reads file's
    text (so frames per read, and distinct frames among them, are prepare's; `settings` are
    prepare's). Reading them checks the file as prepare would (not FASTA or FASTQ, empty,
    corrupt gzip: InputError). None when its first record is longer than that."""
    head = reads_reader(path).head(head_bytes)
    if not head.blocks:
        return None
    stats = PrepareStats(os.fspath(path), chunk_size, **settings)
    with distinct_frames(stats) as distinct:
        for block in head.blocks:
            prepare_block(block, chunk_size, stats, distinct)
    return HeadCounts(stats.reads, stats.frames, stats.distinct_frames, head.share, head.whole)


def estimate(heads: Iterable[HeadCounts | None], shard_size: int) -> Estimate | None:
    """A sample's reads, frames, distinct frames and shards (of distinct frames), without
    reading it all: the counts of the start of each of its files (`head_counts`), scaled by
    the share of the file they are on disk (for gzip, that start's compression ratio). Repeats
    are those within each file's start, so the distinct frames are an upper bound: copies
    further apart in the file, or in the mate file, are not seen. None when a file has no
    whole record there."""
    total_reads = total_frames = total_distinct = 0.0
    exact = True
    for head in heads:
        if head is None:
            return None
        total_reads += head.reads / head.share
        total_frames += head.frames / head.share
        total_distinct += head.distinct_frames / head.share
        exact = exact and head.whole
    return Estimate(total_reads, total_frames, total_distinct,
                    math.ceil(total_distinct / shard_size), exact)


def write_flat(reads: Reads, chunk_size: int, outdir: str | os.PathLike,
               u_as_t: bool = False) -> PrepareStats:
    """Write chunked.fa, nucleotide.fa and protein.faa exactly as the original tool.

    `reads` is one file or the two files (R1, R2) of paired reads. The files are
    built in a staging directory and moved into `outdir` only when the whole input
    has been read and validated: on error none is left.
    """
    source = ReadSource(reads)
    stats = PrepareStats.of(source, chunk_size, u_as_t=u_as_t)
    outdir = Path(outdir)
    staging = outdir / ".prepare-staging"
    with atomic_directory(staging) as tmp:
        handles = [open(tmp / name, "wb") for name in FLAT_FILES]
        try:
            for block in prepare_blocks(source, chunk_size, stats):
                for handle, rows in zip(handles, (block.chunked_fasta(), block.nucleotide_fasta(),
                                                  block.protein_fasta())):
                    handle.write(rows.buffer)
        finally:
            for handle in handles:
                handle.close()
    for name in FLAT_FILES:
        os.replace(staging / name, outdir / name)
    shutil.rmtree(staging)
    fsync_dir(outdir)
    return stats


class ShardWriter:
    """Split a stream of frames into shards of `shard_size` frames to embed.

    Each shard is `NAME.fna` (nucleotides), `NAME.faa` (proteins) and
    `NAME.index.tsv`; `NAME.done` (holding the frame count) is written after
    all three are complete on disk. The index has a row for every frame, repeats of
    embedded frames included (PreparedBlock.same_as): each in the shard being written
    when it comes. A full shard is closed when the next frame to embed comes (or at the
    end), so the repeats that follow its last frame go to its index, and no shard is
    without a frame to embed.
    """

    def __init__(self, directory: Path, shard_size: int) -> None:
        if shard_size < 1:
            raise UsageError(f"shard_size must be at least 1, got {shard_size}")
        self.directory = directory
        self.shard_size = shard_size
        self.shards = 0
        self._handles: list[BinaryIO] = []
        self._in_shard = 0

    def add(self, block: PreparedBlock) -> None:
        sequences = (block.nucleotide_fasta(), block.protein_fasta())  # the frames to embed
        index = block.index_tsv()  # every frame
        embedded = block.embedded  # their positions among the index rows
        done = rows = 0  # frames to embed and index rows written
        while done < len(embedded) or rows < len(index):
            if self._in_shard == self.shard_size and done < len(embedded):
                self._close_shard()
            if not self._handles:
                self._open_shard()
            take = min(len(embedded) - done, self.shard_size - self._in_shard)
            stop = int(embedded[done + take]) if done + take < len(embedded) else len(index)
            for handle, text in zip(self._handles, sequences):
                handle.write(text.slice(done, done + take))
            self._handles[2].write(index.slice(rows, stop))
            done, rows = done + take, stop
            self._in_shard += take

    def _open_shard(self) -> None:
        name = layout.shard_name(self.shards)
        self._handles = [open(self.directory / f"{name}{suffix}", "wb") for suffix in SHARD_FILES]
        self._handles[2].write(INDEX_HEADER)

    def _close_shard(self) -> None:
        for handle in self._handles:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self._handles = []
        name = layout.shard_name(self.shards)
        sizes = "".join(f"{name}{suffix}\t{(self.directory / f'{name}{suffix}').stat().st_size}\n"
                        for suffix in SHARD_FILES)
        write_sentinel(self.directory / f"{name}{layout.DONE}", f"{self._in_shard}\n{sizes}")
        self.shards += 1
        self._in_shard = 0

    def close(self) -> int:
        if self._handles:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Close what is open after a failure; the files are discarded, so a failing flush
        (the disk that filled up) must not hide the original error."""
        for handle in self._handles:
            with contextlib.suppress(OSError):
                handle.close()


def index_rows(index: str | os.PathLike, frame_ids: Iterable[str],
               features: str | os.PathLike, repeats: bool = True) -> Iterator[list[str]]:
    """A shard's index rows (INDEX_HEADER's five columns), streamed: the row of each embedded
    frame checked to be the next of `frame_ids`, the frames of the result `features` made from
    this shard (the two must end together); the rows of repeated frames (a representative
    named) in their places, unless `repeats` is False."""
    mismatch = InputError(features, f"frame IDs differ from the shard index {index}",
                          "the features do not belong to this shard; delete them and rerun")
    frame_ids = iter(frame_ids)
    with open(index) as handle:
        next(handle, None)
        for line in handle:
            row = line.rstrip("\n").split("\t")
            if len(row) == 4:  # prepared before repeats were found: every frame embedded
                row.append("")
            if row[4]:
                if repeats:
                    yield row
                continue
            if next(frame_ids, None) != row[0]:
                raise mismatch
            yield row
    if next(frame_ids, None) is not None:
        raise mismatch


def damaged_shard(shards: Path, names: list[str]) -> str | None:
    """One line on the first of these finished shards whose files are missing or not the size
    their `.done` records (deleted or truncated after prepare), else None. Stat calls only."""
    for name in names:
        done = shards / f"{name}{layout.DONE}"
        lines = done.read_text().splitlines()[1:] if done.is_file() else []
        recorded = dict(line.split("\t") for line in lines)
        for suffix in [*SHARD_FILES, layout.DONE]:
            path = shards / f"{name}{suffix}"
            if not path.is_file():
                problem = "is missing"
            elif path.name in recorded and path.stat().st_size != int(recorded[path.name]):
                problem = (f"has {path.stat().st_size} bytes, {recorded[path.name]} when "
                           "prepare wrote it")
            else:
                continue
            return (f"{path}: {problem}, so the prepared sample is damaged; delete "
                    f"{shards.parent} and rerun to prepare the sample again")
    return None


def write_shards(reads: Reads, chunk_size: int, shard_size: int,
                 outdir: str | os.PathLike, u_as_t: bool = False,
                 drop_ambiguous: bool = False, dedup: bool = DEDUP) -> PrepareStats:
    """The workflow's prepare: shards plus reads.tsv and stats.json in `outdir`.

    `reads` is one file or the two files (R1, R2) of paired reads. `outdir` appears
    only when complete (built under a temporary name). With `dedup`, the shards hold each
    chunk sequence's frames once (the index names the repeats); training files are prepared
    without (`drop_ambiguous`): training weighs every frame.
    """
    source = ReadSource(reads)
    stats = PrepareStats.of(source, chunk_size, u_as_t=u_as_t, drop_ambiguous=drop_ambiguous,
                            dedup=dedup)
    with atomic_directory(outdir) as tmp:
        shards = tmp / layout.SHARDS
        shards.mkdir()
        writer = ShardWriter(shards, shard_size)
        try:
            with open(tmp / layout.READS_TABLE, "wb") as reads, \
                    distinct_frames(stats, tmp) as distinct:
                reads.write(READS_HEADER)
                for block in prepare_blocks(source, chunk_size, stats, distinct):
                    writer.add(block)
                    reads.write(block.reads_tsv().buffer)
            stats.shards = writer.close()
        finally:
            writer.abort()
        if dedup:
            log.info("%s: %d of %d frames to embed (%.1f%% repeat an earlier chunk's)",
                     source, stats.distinct_frames, stats.frames, 100 * stats.saved)
        (tmp / layout.STATS).write_text(json.dumps(asdict(stats), indent=2) + "\n")
    return stats


# The columns of a version before dedup first, where they were.
SUMMARY_COLUMNS = ("reads", "bases", "chunks", "frames", "reads_without_frames", "shards",
                   "seconds", "distinct_frames", "saved")


def write_prepare_summary(prepared: dict[str, str | os.PathLike], out: str | os.PathLike) -> None:
    """One row of prepare counts per sample, from each sample's stats.json: `saved` is the
    share of the frames not embedded (they repeat a chunk), three decimals."""
    rows = ["sample\t" + "\t".join(SUMMARY_COLUMNS)]
    for sample, directory in prepared.items():
        stats = json.loads((Path(directory) / layout.STATS).read_text())
        distinct = distinct_frames_of(stats)
        values = {**stats, "distinct_frames": distinct,
                  "saved": f"{saved_share(stats['frames'], distinct):.3f}"}
        rows.append("\t".join([sample, *(str(values[c]) for c in SUMMARY_COLUMNS)]))
    with atomic_open(out, "w") as handle:
        handle.write("\n".join(rows) + "\n")
