"""A sample's reads: one file, or two paired files, as one stream of blocks.

A file is FASTA or FASTQ (virnucpro.fasta), or BAM or CRAM (virnucpro.bam), told by its
content (`reads_reader`). A BAM or CRAM holds paired reads itself, both mates of each pair,
and gives them as the interleaved mates described below: it is never given with an R2.

Paired files (R1, R2) are read in lockstep, block by block, so memory does not grow with
the input: record i of R1 pairs with record i of R2. Each mate is a read of its own, and
the mates are interleaved (pair 1 mate 1, pair 1 mate 2, pair 2 mate 1, ...), so reads
2k and 2k+1 of the stream are the mates of pair k. A mate's ID is its record ID with one
trailing "/1" (R1) or "/2" (R2) stripped, which must be the same for both mates, plus
"/1" or "/2": mates that already carry the suffix keep their IDs, mates that share one
ID (Illumina's "1:N:0" / "2:N:0" in the description) become ID/1 and ID/2.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Union

import numpy as np

from virnucpro.bam import BamReader, alignment_format
from virnucpro.errors import InputError, UsageError
from virnucpro.fasta import (CODE_PADDING, DEFAULT_BLOCK_BYTES, NEWLINE_CODE, FastaBlock,
                             ReadsReader, display)
from virnucpro.textblock import Field, Rows, copy_spans, gather_spans, lookup

#: One reads file, or the two files (R1, R2) of paired reads.
Reads = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

MATE_SUFFIXES = (b"/1", b"/2")
PAIRING_HINT = ("the two files must hold the same reads in the same order: give both files of "
                "one run, or re-pair them (e.g. with 'seqkit pair')")


def reads_reader(path: str | os.PathLike, block_bytes: int = DEFAULT_BLOCK_BYTES
                 ) -> ReadsReader:
    """The reader of a reads file, by its content: BAM or CRAM, else FASTA or FASTQ."""
    kind = alignment_format(path)
    return BamReader(path, kind, block_bytes) if kind else ReadsReader(path, block_bytes)


def alignment_with_mate_file(paths: Sequence[str | os.PathLike]) -> UsageError | None:
    """A BAM or CRAM given as one of two paired files: it holds both mates of its pairs."""
    if len(paths) == 2:
        for path, other in (paths, paths[::-1]):
            kind = alignment_format(path)
            if kind:
                return UsageError(f"{path}: a {kind} file holds both mates of paired reads, so "
                                  f"it is given alone, without an R2 file ({other}); give the "
                                  f"{kind} file as the sample's only reads file")
    return None


class ReadSource:
    """The reads of one sample, from one file or two paired files, as FastaBlocks."""

    def __init__(self, reads: Reads, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        paths = [reads] if isinstance(reads, (str, os.PathLike)) else list(reads)
        if not 1 <= len(paths) <= 2:
            raise UsageError(f"a sample has one reads file or two (R1, R2), not {len(paths)}")
        self.readers = [reads_reader(path, block_bytes) for path in paths]
        self.paths = [os.fspath(path) for path in paths]  # as given (stats.json, messages)
        if len(paths) == 2 and os.path.samefile(*self.paths):
            raise UsageError(f"{self.paths[0]}: given as both R1 and R2; give the two files "
                             "of the paired reads")
        if problem := alignment_with_mate_file(paths):
            raise problem
        # Mates: from two files, or interleaved in one (a paired BAM).
        self.paired = len(paths) == 2 or self.readers[0].paired

    @property
    def total_bytes(self) -> int:
        return sum(reader.total_bytes for reader in self.readers)

    @property
    def bytes_read(self) -> int:
        return sum(reader.bytes_read for reader in self.readers)

    def __str__(self) -> str:
        return " + ".join(self.paths)

    def blocks(self) -> Iterator[FastaBlock]:
        """The reads in order (mates interleaved); each iteration reads the files again."""
        return self._paired_blocks() if len(self.readers) == 2 else iter(self.readers[0])

    def where(self, block: FastaBlock, i: int) -> tuple[str, int]:
        """The file and 1-based record number that read i of `block` comes from."""
        if len(self.readers) == 1:
            return self.paths[0], block.first_number + i
        return self.paths[i % 2], block.first_number + i // 2

    def _paired_blocks(self) -> Iterator[FastaBlock]:
        """Align the two files' blocks (they hold different numbers of records): pair the
        records both have, keep the rest of the longer block for the next round."""
        streams = [iter(reader) for reader in self.readers]
        pending: list[FastaBlock | None] = [None, None]
        while True:
            pending = [block if block is not None else next(stream, None)
                       for block, stream in zip(pending, streams)]
            if any(block is None for block in pending):
                break
            n = min(map(len, pending))
            yield self._interleave(*(block.take(0, n) for block in pending))
            pending = [block.take(n, len(block)) if n < len(block) else None for block in pending]
        for mate, block in enumerate(pending):
            if block is not None:
                other = self.paths[1 - mate]
                raise InputError(self.paths[mate], f"has no mate: {other} ends after "
                                 f"{block.first_number - 1} records", PAIRING_HINT,
                                 display(block.record_id(0)), block.first_number)

    def _interleave(self, one: FastaBlock, two: FastaBlock) -> FastaBlock:
        """One block of the mates of pairs one[i], two[i] (same count), read after read,
        with the mates' IDs (ID/1, ID/2); the headers and sequences are kept as they are."""
        base_length = self._paired_id_lengths(one, two)
        header_text, header_start, header_length = _interleave_spans(
            *((b.text, b.header_start, b.header_end - b.header_start) for b in (one, two)))
        # Each ID lies at the same offset within its header as before.
        id_offset = np.stack([b.id_start - b.header_start for b in (one, two)], 1).ravel()
        base = Field(header_text, header_start + id_offset, np.stack(base_length, 1).ravel())
        names = Rows([base, lookup(list(MATE_SUFFIXES), np.tile([0, 1], len(one)))], 2 * len(one))
        name_length = base.length + 2
        data, starts, lengths = _interleave_spans(
            *((b.data, b.starts, b.lengths) for b in (one, two)), padding=CODE_PADDING)
        codes, _, _ = _interleave_spans(*((b.codes, b.starts, b.lengths) for b in (one, two)),
                                        padding=CODE_PADDING)
        codes[len(codes) - CODE_PADDING:] = NEWLINE_CODE  # as a FASTA block's padding
        return FastaBlock(np.concatenate([header_text, names.buffer]),
                          len(header_text) + names.ends - name_length, name_length,
                          header_start, header_start + header_length,
                          data[:len(data) - CODE_PADDING], codes, starts, lengths,
                          one.first_number)

    def _paired_id_lengths(self, one: FastaBlock, two: FastaBlock) -> list[np.ndarray]:
        """The lengths of the mates' IDs without their mate suffixes, checked to be the same
        ID: the first pair whose IDs differ beyond the suffix is an error."""
        lengths = [_without_suffix(one, MATE_SUFFIXES[0]), _without_suffix(two, MATE_SUFFIXES[1])]
        differs = lengths[0] != lengths[1]
        compared = np.flatnonzero(~differs & (lengths[0] > 0))
        if len(compared):
            length = lengths[0][compared]
            left, right = (gather_spans(b.text, b.id_start[compared], length) for b in (one, two))
            mismatches = np.add.reduceat(left != right, np.cumsum(length) - length, dtype=np.int64)
            differs[compared] = mismatches > 0
        if differs.any():
            i = int(np.argmax(differs))
            number = one.first_number + i
            raise InputError(self.paths[1], f"is not the mate of record "
                             f"'{display(one.record_id(i))}' (#{number}) of {self.paths[0]}: "
                             "their IDs differ beyond the /1 /2 suffix", PAIRING_HINT,
                             display(two.record_id(i)), number)
        return lengths


def _without_suffix(block: FastaBlock, suffix: bytes) -> np.ndarray:
    """Each ID's length without one trailing `suffix` ("/1" or "/2"), where it has one."""
    end = block.id_start + block.id_length
    has = (block.id_length >= 2) & (block.text[end - 2] == suffix[0]) & \
        (block.text[end - 1] == suffix[1])
    return block.id_length - 2 * has


def _interleave_spans(first: tuple[np.ndarray, np.ndarray, np.ndarray],
                      second: tuple[np.ndarray, np.ndarray, np.ndarray], padding: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spans (source, start, length) of two blocks copied into one buffer alternately:
    first[0], second[0], first[1], ...; returns the buffer (plus `padding` bytes, unset)
    and each span's start and length in it."""
    lengths = np.stack([first[2], second[2]], 1).ravel()
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()) + padding, dtype=np.uint8)
    for mate, (source, start, length) in enumerate((first, second)):
        copy_spans(out, starts[mate::2], source, start, length)
    return out, starts, lengths


def pair_id(mate_id: str) -> str:
    """The pair's ID from a mate's (ID/1 or ID/2 -> ID): pairs.tsv names pairs by it."""
    return mate_id[:-len(MATE_SUFFIXES[0])]


class DuplicateIdCheck:
    """Detect duplicate read IDs in a stream using 8 bytes per read.

    IDs are hashed as they stream by; at the end the hashes are sorted and any
    repeated hash is confirmed against the real IDs in a second pass over the
    input (so a hash collision is never reported as a duplicate). For paired reads
    the IDs checked are the mates' (ID/1, ID/2): an R1 name ends in /1 and an R2
    name in /2, so both copies of a duplicate lie in the same file.
    """

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []

    def add(self, block: FastaBlock) -> None:
        self._hashes.append(block.id_hashes())

    def check(self, source: ReadSource) -> None:
        if not self._hashes:
            return
        hashes = np.concatenate(self._hashes)
        self._hashes = [hashes]  # the blocks' arrays freed, and sorted in place: 8 bytes a read
        hashes.sort()
        repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        if not len(repeated):
            return
        first_seen: dict[bytes, int] = {}
        for block in source.blocks():
            for i in np.flatnonzero(np.isin(block.id_hashes(), repeated)).tolist():
                rid = block.record_id(i)
                path, number = source.where(block, i)
                if rid in first_seen:
                    raise InputError(path, f"duplicate record ID (first seen at record "
                                     f"#{first_seen[rid]})", "record IDs must be unique within "
                                     "a sample; rename one of them", display(rid), number)
                first_seen[rid] = number
