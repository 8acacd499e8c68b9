"""Streaming read input: FASTA or FASTQ, plain or gzip, validated.

The format is told from the content, never from the file name: gzip by its magic
bytes, then FASTA by a first non-blank byte '>' and FASTQ by '@'. Records are read
in blocks of many records so the per-record work can be vectorised; memory is
bounded by the block size (and by the longest record), never by the file size.
Both formats give the same FastaBlocks, so everything downstream is the same.

FASTA parsing follows Biopython's FASTA parser, which the original tool used: the
record ID is the header up to the first whitespace, sequence lines are joined
with spaces and carriage returns removed; any line width, CRLF or LF.

FASTQ records are the standard four lines (`@` header, sequence, `+` line,
qualities), CRLF or LF; the ID follows the same rule as FASTA. Qualities are not
used, but their length must equal the sequence's. Wrapped (multi-line) FASTQ is
refused with a message saying how to unwrap it: its '@' and '+' lines cannot be
told from quality lines without guessing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import itertools
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from virnucpro.errors import InputError, MissingInputError
from virnucpro.layout import FASTA, FASTQ
from virnucpro.textblock import (copy_spans, gather_in_slots, gather_spans, ramp, table,
                                 translate)

#: IUPAC nucleotide codes (and U), either case. Anything else is rejected.
NUCLEOTIDE_CODES = b"ACGTURYSWKMBDHVN"

# One byte-wise classification serves parsing, validation and translation:
# 0-3 = A, C, G, T (either case), 4 = another IUPAC code, 5 = line break,
# 6 = '>', 7 = space, 8 = anything else (invalid inside a sequence).
BASE_CODES = {**{c: i for i, c in enumerate(b"ACGT")}, **{c: i for i, c in enumerate(b"acgt")}}
OTHER_CODE, NEWLINE_CODE, GT_CODE, SPACE_CODE, INVALID_CODE = 4, 5, 6, 7, 8
CLASSES = table({**{c: OTHER_CODE for c in NUCLEOTIDE_CODES + NUCLEOTIDE_CODES.lower()},
                 **BASE_CODES, ord("\n"): NEWLINE_CODE, ord(">"): GT_CODE, ord(" "): SPACE_CODE},
                np.full(256, INVALID_CODE, dtype=np.uint8))
_OTHER_WHITESPACE = (b"\t", b"\x0b", b"\x0c")  # also end a record ID (Biopython splits on them)

CODE_PADDING = 3  # codes extend past the data so every codon start has three bytes

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
DEFAULT_BLOCK_BYTES = 1 << 21
_HEAD_STEP = 1 << 14  # compressed bytes inflated at a time when reading a file's head


@dataclass
class FastaBlock:
    """Consecutive records: where each ID, header and sequence lies.

    Record i's ID is text[id_start[i] : id_start[i] + id_length[i]], its header line
    (without '>' or '@', description included) text[header_start[i] : header_end[i]],
    and its sequence data[starts[i] : starts[i] + lengths[i]]. `data` is the block
    text itself when every FASTA record has a single sequence line (the common case
    for reads: no copy), else the sequences alone (FASTA with line breaks removed;
    FASTQ without its other lines).
    """

    text: np.ndarray  # uint8
    id_start: np.ndarray
    id_length: np.ndarray
    header_start: np.ndarray
    header_end: np.ndarray
    data: np.ndarray  # uint8
    codes: np.ndarray  # CLASSES of `data`, byte for byte (0-3 = ACGT), plus CODE_PADDING bytes
    starts: np.ndarray  # int64, one per record
    lengths: np.ndarray  # int64, one per record
    first_number: int  # 1-based number of the first record in the file

    def __len__(self) -> int:
        return len(self.starts)

    def record_id(self, i: int) -> bytes:
        return self.text[self.id_start[i]: self.id_start[i] + self.id_length[i]].tobytes()

    @property
    def ids(self) -> list[bytes]:
        return [self.record_id(i) for i in range(len(self))]

    def header(self, i: int) -> bytes:
        return self.text[self.header_start[i]: self.header_end[i]].tobytes()

    def sequence(self, i: int) -> bytes:
        return self.data[self.starts[i]: self.starts[i] + self.lengths[i]].tobytes()

    def record_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each record lies in `text` (start, length): from its '>' or '@' to the next
        record's, so a FASTQ record is its four lines as in the file (carriage returns were
        dropped when it was read), to write it back out as it came. Only for a block as
        read: after take(), the last row would reach to the end of the text."""
        start = self.header_start - 1
        return start, np.append(start[1:], len(self.text)) - start

    def take(self, first: int, stop: int) -> FastaBlock:
        """Records first..stop-1 (views of the same buffers): pairing aligns two files
        whose blocks hold different numbers of records."""
        rows = slice(first, stop)
        return dataclasses.replace(
            self, id_start=self.id_start[rows], id_length=self.id_length[rows],
            header_start=self.header_start[rows], header_end=self.header_end[rows],
            starts=self.starts[rows], lengths=self.lengths[rows],
            first_number=self.first_number + first)

    def id_hashes(self) -> np.ndarray:
        return hash_spans(self.text, self.id_start, self.id_length)

    def u_positions(self) -> np.ndarray:
        """Positions in `data` of U/u bases (RNA), headers excluded."""
        candidates = np.flatnonzero((self.data | 0x20) == ord("u"))
        if not len(candidates):
            return candidates
        record = np.searchsorted(self.starts, candidates, side="right") - 1
        inside = (record >= 0) & (candidates < self.starts[record] + self.lengths[record])
        return candidates[inside]

    def with_u_as_t(self, positions: np.ndarray) -> FastaBlock:
        """This block with the U/u at `positions` read as T/t (case kept)."""
        data, codes = self.data.copy(), self.codes.copy()
        data[positions] -= ord("U") - ord("T")  # 'U' -> 'T', 'u' -> 't'
        codes[positions] = BASE_CODES[ord("T")]
        return dataclasses.replace(self, data=data, codes=codes)


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mixed(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every bit of the result depends on every bit of the input."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(30))
        values *= _MIX[1]
        values ^= values >> np.uint64(27)
        values *= _MIX[2]
        return values ^ (values >> np.uint64(31))


@functools.cache
def _word_keys(count: int) -> np.ndarray:
    """`count` fixed odd 64-bit multipliers, one per 8-byte word of a span."""
    return _mixed(np.arange(1, count + 1, dtype=np.uint64) * _MIX[0]) | np.uint64(1)


def hash_spans(data: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each span data[start:start+length] (for duplicate detection; equal
    hashes are confirmed against the bytes, so it need not be cryptographic): the spans are
    laid out in 8-byte words, zero-padded, each word mixed and multiplied by a key of its place,
    the products summed per span, mixed with the length. A word at a time, not a byte: five
    times the speed of a polynomial over the bytes (what prepare pays per chunk with dedup)."""
    width = (length + 7) // 8 * 8
    slots = np.cumsum(width) - width
    padded = np.zeros(int(width.sum()), dtype=np.uint8)
    copy_spans(padded, slots, data, start, length)
    words = width // 8
    keys = _word_keys(1 << max(10, int(words.max(initial=0)).bit_length()))
    with np.errstate(over="ignore"):
        mixed = padded.view(np.uint64) * _MIX[0]
        mixed ^= mixed >> np.uint64(31)  # differences in high bytes reach the low bits
        mixed *= keys[ramp(words)]
        sums = np.zeros(len(start), dtype=np.uint64)
        spans = words > 0
        if spans.any():
            sums[spans] = np.add.reduceat(mixed, slots[spans] // 8)
        return _mixed(sums ^ length.astype(np.uint64) * _MIX[0])


def display(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


#: Every format a reads file may have (BAM and CRAM: virnucpro.bam).
READS_FORMATS = "FASTA, FASTQ, BAM or CRAM"
FORMAT_HINT = "give nucleotide reads in FASTA or FASTQ format (plain or gzip), or as BAM or CRAM"
FASTQ_LINES_HINT = ("a FASTQ record is exactly 4 lines (header, sequence, '+', qualities); "
                    "wrapped FASTQ is not supported: unwrap it with e.g. 'seqtk seq', or "
                    "re-create the file")


class ReadsReader:
    """Iterate a FASTA or FASTQ file as FastaBlocks; `bytes_read` tracks progress on disk."""

    def __init__(self, path: str | os.PathLike, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.path = Path(path)
        self.block_bytes = block_bytes
        self._piece_bytes = block_bytes  # read at a time; FASTQ: twice (see __iter__)
        self.bytes_read = 0
        # Whether the file holds both mates of paired reads, interleaved (a paired BAM,
        # virnucpro.bam); a FASTA or FASTQ file holds one read per record.
        self.paired = False
        if not self.path.exists():
            raise MissingInputError(self.path, "input file does not exist",
                                    "check the path in your config or command line")
        if self.path.is_dir():
            raise MissingInputError(self.path, "is a directory, not a FASTA or FASTQ file",
                                    "give the path of a FASTA or FASTQ file")
        self.total_bytes = self.path.stat().st_size
        if self.total_bytes == 0:
            raise InputError(self.path, "file is empty",
                             "give a FASTA or FASTQ file with at least one record")

    def _error(self, problem: str, hint: str, record: bytes | None = None,
               number: int | None = None) -> InputError:
        return InputError(self.path, problem, hint,
                          None if record is None else display(record), number)

    def _open(self) -> tuple[BinaryIO, BinaryIO]:
        raw = open(self.path, "rb")
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            return raw, gzip.GzipFile(fileobj=raw, mode="rb")
        raw.seek(0)
        return raw, raw

    def _corrupt_gzip(self, exc: Exception) -> InputError:
        return self._error(f"cannot be decompressed ({exc})",
                           "the gzip file is corrupt or truncated; re-create it")

    def _pieces(self) -> Iterator[bytes]:
        raw, stream = self._open()
        with raw:
            while True:
                try:
                    data = stream.read(self._piece_bytes)
                except (OSError, EOFError, zlib.error) as exc:
                    raise self._corrupt_gzip(exc) from None
                self.bytes_read = raw.tell()
                if not data:
                    return
                yield data

    def _no_records(self, text: bytes) -> InputError:
        """A file without a record: of blank lines, or (a plain file of no bytes is refused
        when opened) a gzip file of no text."""
        return self._error("contains no records (only blank lines)" if text else
                           "is empty: a gzip file of no text",
                           "give a FASTA or FASTQ file with at least one record")

    def _first_text(self, pieces: Iterator[bytes]) -> bytes:
        """The first piece with text in it, without the blank lines before the text."""
        text = b""
        for text in pieces:
            first = self._records_start(text)
            if first:
                return first
        raise self._no_records(text)

    def file_format(self) -> str:
        """FASTA or FASTQ, told as reading the file tells it (its first non-blank byte), from
        the first few KB: the workflow names a sample's outputs by it when it plans the run.
        Raises as reading would for a file that is neither (or empty, or only blank lines)."""
        self._piece_bytes = _HEAD_STEP
        with contextlib.closing(self._pieces()) as pieces:
            return FASTQ if self._is_fastq(self._first_text(pieces)) else FASTA

    def __iter__(self) -> Iterator[FastaBlock]:
        self._piece_bytes = self.block_bytes
        pieces = self._pieces()
        first = self._first_text(pieces)
        if self._is_fastq(first):
            # A quality byte per base: reading twice as much gives blocks of as many reads
            # as FASTA's, so the per-block costs downstream stay the same.
            self._piece_bytes = 2 * self.block_bytes
            yield from self._fastq_blocks(itertools.chain([first], pieces))
        else:
            yield from self._fasta_blocks(itertools.chain([first], pieces))

    def head(self, limit: int) -> Head:
        """The whole records within the first `limit` bytes of the file's text, and the share
        of the file on disk they come from: a sample to estimate the whole file's counts
        from without reading it. A gzip file is inflated only that far, and the share is the
        compressed bytes that text took, so an estimate follows the file's own compression.
        No record when the first one is longer than `limit`."""
        text, used, whole = self._text_head(limit)
        records = self._records_start(text)
        if not records:
            raise self._no_records(text)
        fastq = self._is_fastq(records)
        if not whole:
            end = _last_record_end(records, fastq)
            used = round(used * (len(text) - len(records) + end) / len(text))
            records = records[:end]
        if not records:
            return Head([], 0.0, False)
        blocks = (self._fastq_blocks if fastq else self._fasta_blocks)(iter([records]))
        return Head(list(blocks), 1.0 if whole else used / self.total_bytes, whole)

    def _text_head(self, limit: int) -> tuple[bytes, int, bool]:
        """About `limit` bytes of the file's text (at least that much, unless the file has
        less), the bytes of the file they took, and whether that is the whole file."""
        with open(self.path, "rb") as raw:
            if raw.read(2) != GZIP_MAGIC:
                raw.seek(0)
                text = raw.read(limit)
                return text, len(text), not raw.read(1)
            raw.seek(0)
            inflate = zlib.decompressobj(wbits=31)
            pieces, size, used, ended = [], 0, 0, False
            try:
                while size < limit and (data := raw.read(_HEAD_STEP)):
                    used += len(data)
                    while data:
                        if ended:  # the next member of a multi-member file (bgzip, cat)
                            inflate, ended = zlib.decompressobj(wbits=31), False
                        pieces.append(inflate.decompress(data))
                        size += len(pieces[-1])
                        if not inflate.eof:
                            break
                        ended, data = True, inflate.unused_data
            except zlib.error as exc:
                raise self._corrupt_gzip(exc) from None
            whole = not raw.read(1)
            if whole and not ended:  # cut short: as gzip.GzipFile says it reading it all
                raise self._corrupt_gzip(EOFError("Compressed file ended before the "
                                                  "end-of-stream marker was reached"))
            return b"".join(pieces), used, whole

    def _records_start(self, data: bytes) -> bytes:
        """The start of a file's text without what may precede its first record: a UTF-8
        byte order mark (Windows editors write one; accepted) and blank lines. Line breaks
        of carriage returns alone (classic Mac OS) would make the whole file one line: they
        are refused, saying how to convert them."""
        data = data.removeprefix(UTF8_BOM).lstrip(b"\r\n")
        head = data[:1 << 16]
        if head.count(b"\r") > 1 and b"\n" not in head:
            raise self._error("has line breaks of carriage returns alone (CR, classic Mac OS "
                              "line endings)", "convert them to LF, e.g. with "
                              f"\"tr '\\r' '\\n' < {self.path} > converted.fa\"")
        return data

    def _is_fastq(self, data: bytes) -> bool:
        """FASTQ or FASTA, from the first non-blank byte; anything else is refused."""
        if data.startswith((b">", b"@")):
            return data.startswith(b"@")
        first = data.split(b"\n", 1)[0][:40]
        if data.startswith(b"LOCUS"):
            kind = "looks like GenBank"
        elif b"\x00" in data[:4096] or not _is_text(data[:4096]):
            kind = "is binary, not FASTA or FASTQ text"
        else:
            kind = ("does not start with a FASTA ('>') or FASTQ ('@') header; first line: "
                    f"{display(first)!r}")
        raise self._error(f"not a FASTA or FASTQ file: {kind}", FORMAT_HINT)

    def _fasta_blocks(self, pieces: Iterator[bytes]) -> Iterator[FastaBlock]:
        """Blocks of whole FASTA records: each cut before a line that starts with '>'."""
        number = 1
        pending: list[bytes] = []
        for data in pieces:
            cut = data.rfind(b"\n>")
            if cut < 0:
                if pending and pending[-1].endswith(b"\n") and data.startswith(b">"):
                    cut = -1
                else:
                    pending.append(data)
                    continue
            pending.append(data[: cut + 1])
            block = self._parse_fasta(b"".join(pending), number)
            if block is not None:
                number += len(block)
                yield block
            pending = [data[cut + 1:]]
        tail = b"".join(pending)
        if tail.strip():
            block = self._parse_fasta(tail, number)
            if block is not None:
                yield block

    def _parse_fasta(self, text: bytes, number: int) -> FastaBlock | None:
        """Parse whole FASTA records (text starts with '>') with array operations."""
        if b"\r" in text:
            text = text.replace(b"\r", b"")
        if not text.strip():
            return None
        if not text.endswith(b"\n"):
            text += b"\n"
        arr = np.frombuffer(text, dtype=np.uint8)
        codes = translate(text + b"\n" * CODE_PADDING, CLASSES)
        text_codes = codes[:len(arr)]
        # line breaks, '>', spaces
        special = np.flatnonzero((text_codes - np.uint8(NEWLINE_CODE)) < 3)
        kind = codes[special]
        newlines = special[kind == NEWLINE_CODE]
        marks = special[kind == GT_CODE]
        at_line_start = (marks == 0) | (arr[marks - 1] == ord("\n"))
        starts = marks[at_line_start]
        header_end = newlines[np.searchsorted(newlines, starts)]
        record_end = np.append(starts[1:], len(arr))
        seq_start = header_end + 1
        spaces = special[kind == SPACE_CODE]
        id_start, id_length = self._id_spans(text, starts, header_end, spaces, number)

        # Invalid letters in sequences: all invalid bytes minus those in headers. A '>' is
        # one too unless it starts a line: inside a sequence line it is not a base (kept, it
        # would become part of codons; dropped, the sequence would silently lose a letter).
        # The '>'s are few and already found: those within lines are judged alone, which
        # spares a pass over the block (prepare's CPU time: -1%, measured).
        inner = marks[~at_line_start]
        gt_in_sequence = (inner >= seq_start[np.searchsorted(starts, inner, side="right") - 1]
                          ).any()
        is_invalid = text_codes == INVALID_CODE
        header_codes = gather_spans(text_codes, starts, seq_start - starts)
        if gt_in_sequence or (np.count_nonzero(is_invalid)
                              > np.count_nonzero(header_codes == INVALID_CODE)):
            is_invalid |= text_codes == GT_CODE
            bounds = np.stack([starts, np.minimum(seq_start, len(arr) - 1)], 1).ravel()
            invalid = np.add.reduceat(is_invalid, bounds, dtype=np.int64)[1::2]
            invalid[seq_start >= record_end] = 0
            i = int(np.argmax(invalid > 0))
            in_record = text_codes[seq_start[i]:record_end[i]]
            pos = seq_start[i] + int(np.argmax((in_record == INVALID_CODE)
                                               | (in_record == GT_CODE)))
            self._invalid_letter(arr, pos, seq_start[i], _span(arr, id_start[i], id_length[i]),
                                 number + i)
        record_of_space = np.searchsorted(starts, spaces, side="right") - 1
        spaces_in_sequence = (spaces >= seq_start[record_of_space]).any() if len(spaces) else False
        if len(newlines) == 2 * len(starts) and not spaces_in_sequence:
            # One sequence line per record: sequences are spans of the text itself.
            data, lengths = arr, record_end - 1 - seq_start
        else:
            spans = np.stack([seq_start - starts, record_end - seq_start], 1).ravel()
            in_sequence = np.repeat(np.tile(np.array([False, True]), len(starts)), spans)
            keep = in_sequence & (text_codes < NEWLINE_CODE)
            lengths = np.add.reduceat(keep, np.minimum(seq_start, len(arr) - 1), dtype=np.int64)
            lengths[seq_start >= record_end] = 0
            data = arr[keep]
            codes = np.concatenate([text_codes[keep], codes[len(arr):]])
            seq_start = np.cumsum(lengths) - lengths
        self._check_not_empty(lengths, arr, id_start, id_length, number)
        return FastaBlock(arr, id_start, id_length, starts + 1, header_end, data, codes, seq_start,
                          lengths, number)

    def _check_not_empty(self, lengths: np.ndarray, arr: np.ndarray, id_start: np.ndarray,
                         id_length: np.ndarray, number: int) -> None:
        empty = np.flatnonzero(lengths == 0)
        if len(empty):
            i = int(empty[0])
            raise self._error("has an empty sequence", "remove the record or add its sequence",
                              _span(arr, id_start[i], id_length[i]), number + i)

    def _fastq_blocks(self, pieces: Iterator[bytes]) -> Iterator[FastaBlock]:
        """Blocks of whole FASTQ records: each cut after a multiple of 4 lines.

        Line breaks at the end of a piece stay pending: they may be blank lines that
        end the file, which are allowed, while blank lines within it are not. The line
        breaks are found once, for cutting and parsing.
        """
        number = 1
        pending: list[bytes] = []  # text not yet parsed, with its line breaks' positions
        pending_breaks: list[np.ndarray] = []
        pending_bytes = lines = 0
        for data in pieces:
            breaks = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
            body = len(data.rstrip(b"\r\n"))
            whole = (lines + int(np.searchsorted(breaks, body))) // 4 * 4
            pending.append(data)
            pending_breaks.append(breaks + pending_bytes)
            pending_bytes += len(data)
            lines += len(breaks)
            if not whole:
                continue
            text, breaks = b"".join(pending), np.concatenate(pending_breaks)
            cut = int(breaks[whole - 1]) + 1
            block = self._parse_fastq(text[:cut], number, breaks[:whole])
            number += len(block)
            yield block
            pending, pending_breaks = [text[cut:]], [breaks[whole:] - cut]
            pending_bytes, lines = len(text) - cut, lines - whole
        tail = b"".join(pending)
        text = tail.rstrip(b"\r\n") + b"\n"
        if text == b"\n":
            return
        short = -text.count(b"\n") % 4  # lines the last record lacks
        if short and tail.count(b"\n", len(text) - 1) > short:  # its last lines are empty
            text += b"\n" * short
        cut = _line_end_before(text, len(text), text.count(b"\n") % 4) + 1
        if cut:
            block = self._parse_fastq(text[:cut], number)
            number += len(block)
            yield block
        if cut < len(text):
            self._truncated(text[cut:], number)

    def _parse_fastq(self, text: bytes, number: int, breaks: np.ndarray | None = None
                     ) -> FastaBlock:
        """Parse whole 4-line records (text ends with a line break, at positions `breaks`
        if known) with array operations."""
        if b"\r" in text:
            text, breaks = text.replace(b"\r", b""), None
        arr = np.frombuffer(text, dtype=np.uint8)
        if breaks is None:
            breaks = np.flatnonzero(arr == ord("\n"))
        ends = breaks.reshape(-1, 4)  # line ends of each record
        begins = np.empty_like(ends)
        begins.ravel()[1:] = ends.ravel()[:-1] + 1
        begins[0, 0] = 0
        heads, seq_start, plus = begins[:, 0], begins[:, 1], begins[:, 2]
        misplaced = (arr[heads] != ord("@")) | (arr[plus] != ord("+"))
        if misplaced.any():
            i = int(np.argmax(misplaced))
            self._not_four_lines([text[b:e] for b, e in zip(begins[i], ends[i])], number + i)
        lengths = ends[:, 1] - seq_start
        qualities = ends[:, 3] - begins[:, 3]
        if (lengths != qualities).any():
            i = int(np.argmax(lengths != qualities))
            raise self._error(f"has {lengths[i]} bases but {qualities[i]} quality scores",
                              "the record is corrupt (its quality line must be as long as its "
                              "sequence); re-create the file",
                              _fastq_id(text[heads[i]:ends[i, 0]]), number + i)
        spaces = np.flatnonzero(arr == ord(" "))
        id_start, id_length = self._id_spans(text, heads, ends[:, 0], spaces, number)
        padded, starts = gather_in_slots(arr, seq_start, lengths, CODE_PADDING)
        padded[len(padded) - CODE_PADDING:] = ord("\n")
        data = padded[:len(padded) - CODE_PADDING]
        codes = translate(padded, CLASSES)
        worst = np.maximum.reduceat(codes, np.stack([starts, starts + lengths], 1).ravel())[::2]
        invalid = (worst > OTHER_CODE) & (lengths > 0)
        if invalid.any():
            i = int(np.argmax(invalid))
            pos = starts[i] + int(np.argmax(codes[starts[i]:starts[i] + lengths[i]] > OTHER_CODE))
            self._invalid_letter(data, pos, starts[i], _span(arr, id_start[i], id_length[i]),
                                 number + i)
        self._check_not_empty(lengths, arr, id_start, id_length, number)
        return FastaBlock(arr, id_start, id_length, heads + 1, ends[:, 0], data, codes, starts,
                          lengths, number)

    def _not_four_lines(self, lines: list[bytes], number: int) -> None:
        """The record does not have its '@' header and '+' line where 4-line FASTQ has them."""
        if not lines[0].startswith(b"@"):
            raise self._error(f"should start with a FASTQ header ('@'), found "
                              f"{display(lines[0][:40])!r}",
                              "the record before it may be cut short, or there is a blank "
                              "line; " + FASTQ_LINES_HINT, number=number)
        raise self._error(f"its third line is {display(lines[2][:40])!r}, not the '+' line",
                          FASTQ_LINES_HINT, _fastq_id(lines[0]), number)

    def _truncated(self, partial: bytes, number: int) -> None:
        """The file ends inside a record (fewer than its 4 lines)."""
        lines = partial.replace(b"\r", b"").split(b"\n")[:-1]
        if not lines[0].startswith(b"@"):
            self._not_four_lines(lines, number)
        raise self._error(f"the file ends inside this record (it has {len(lines)} of its 4 lines)",
                          "the file is truncated; re-create or download it again",
                          _fastq_id(lines[0]), number)

    def _id_spans(self, text: bytes, starts: np.ndarray, header_end: np.ndarray,
                  spaces: np.ndarray, number: int) -> tuple[np.ndarray, np.ndarray]:
        """The ID is the header up to its first whitespace (Biopython's record.id)."""
        id_start = starts + 1
        if any(w in text for w in _OTHER_WHITESPACE):  # rare: find IDs the slow, general way
            id_end = id_start.copy()
            for i, (s, e) in enumerate(zip(starts.tolist(), header_end.tolist())):
                header = text[s + 1:e]
                fields = header.split(None, 1)
                id_start[i] = s + 1 + (header.find(fields[0]) if fields else 0)
                id_end[i] = id_start[i] + (len(fields[0]) if fields else 0)
        else:
            leading = np.flatnonzero(np.frombuffer(text, dtype=np.uint8)[id_start] == ord(" "))
            for i in leading.tolist():  # rare: '>  id'; skip the leading spaces
                header = text[id_start[i]:header_end[i]]
                id_start[i] += len(header) - len(header.lstrip(b" "))
            boundary = np.append(spaces, len(text))
            id_end = np.minimum(boundary[np.searchsorted(boundary, id_start)], header_end)
        id_length = id_end - id_start
        missing = np.flatnonzero(id_length <= 0)
        if len(missing):
            i = int(missing[0])
            raise self._error("header line has no record ID",
                              f"give every record an ID after '{chr(text[starts[i]])}'",
                              number=number + i)
        self._check_utf8_ids(text, id_start, id_length, number)
        return id_start, id_length

    def _check_utf8_ids(self, text: bytes, id_start: np.ndarray, id_length: np.ndarray,
                        number: int) -> None:
        """IDs go into every result table, which are UTF-8 text: one that is not (a Latin-1
        name, say) is refused here, naming its record, rather than by a later stage. One
        decode of the block's IDs end to end; the record is found only on failure. A block
        all ASCII (the usual one: a scan 6x faster than gathering its IDs) has ASCII IDs."""
        if text.isascii():
            return
        ids = gather_spans(np.frombuffer(text, dtype=np.uint8), id_start, id_length).tobytes()
        try:
            ids.decode("utf-8")
        except UnicodeDecodeError as exc:
            i = int(np.searchsorted(np.cumsum(id_length), exc.start, side="right"))
            raw = text[id_start[i]:id_start[i] + id_length[i]]
            raise self._error(f"its ID is not UTF-8 text (byte 0x{ids[exc.start]:02x})",
                              "rename the record with UTF-8 (or ASCII) characters: IDs are "
                              "written to the result tables, which are UTF-8 text", raw,
                              number + i) from None

    def _invalid_letter(self, arr: np.ndarray, pos: int, seq_start: int, record: bytes,
                        number: int) -> None:
        before = arr[seq_start:pos]
        breaks = int(np.count_nonzero((before == ord("\n")) | (before == ord(" "))))
        column = len(before) - breaks + 1
        char = chr(arr[pos]) if 32 < arr[pos] < 127 else f"byte 0x{arr[pos]:02x}"
        if char in ">@":
            raise self._error(
                f"has {char!r} inside a sequence line, at position {column}",
                f"a header starts with {char!r} at the beginning of a line: a line break is "
                "probably missing before it; repair or re-create the file", record, number)
        raise self._error(
            f"has {char!r} at position {column}, which is not a nucleotide code",
            "give nucleotide sequences (IUPAC: ACGTURYSWKMBDHVN); is this a protein FASTA?",
            record, number)


def fasta_records(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """(ID, sequence) of each record of a FASTA file the pipeline wrote (a shard's nucleotide
    or protein file, any alphabet), streamed line by line: the ID by the reads' rule (the
    header up to its first whitespace), the sequence its lines joined. Bytes are read and
    decoded strictly, so a byte that is not UTF-8 is named with its record, not found as
    "not a text file"."""
    path = Path(path)
    record_id: bytes | None = None
    parts: list[bytes] = []
    number = 0

    def record() -> tuple[str, str]:
        try:
            return record_id.decode(), b"".join(parts).decode()
        except UnicodeDecodeError as exc:
            raise InputError(path, f"holds bytes that are not UTF-8 text ({exc.reason})",
                             "prepare the sample again", display(record_id), number) from None

    try:
        with open(path, "rb") as handle:
            for line in handle:
                line = line.rstrip()
                if line.startswith(b">"):
                    if record_id is not None:
                        yield record()
                    record_id, parts, number = (line[1:].split(None, 1) or [b""])[0], [], number + 1
                elif line:
                    if record_id is None:
                        raise InputError(path, "sequence text before the first '>' header",
                                         "pass a FASTA file")
                    parts.append(line)
    except FileNotFoundError:
        raise MissingInputError(path, "file not found", "run prepare first") from None
    if record_id is not None:
        yield record()


class Head(NamedTuple):
    """The first records of a file (ReadsReader.head)."""

    blocks: list[FastaBlock]
    share: float  # of the file's bytes on disk they come from
    whole: bool  # they are the whole file


def _last_record_end(text: bytes, fastq: bool) -> int:
    """Where the last whole record of the start of a file ends (0: none is whole)."""
    if not fastq:
        return text.rfind(b"\n>") + 1
    return _line_end_before(text, len(text), text.count(b"\n") % 4) + 1


def _line_end_before(text: bytes, end: int, lines: int) -> int:
    """Where the line break lies that is followed by `lines` more line breaks before `end`
    (-1 if there is none): the end of the last whole FASTQ record."""
    for _ in range(lines + 1):
        end = text.rfind(b"\n", 0, end)
        if end < 0:
            break
    return end


def _fastq_id(header: bytes) -> bytes:
    """The record ID of a FASTQ header line, for messages about a record that did not parse."""
    fields = header[1:].split(None, 1)
    return fields[0] if fields else b""


def _span(arr: np.ndarray, start: int, length: int) -> bytes:
    return arr[start:start + length].tobytes()


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(data) - 4  # a multi-byte character cut at the end
    return True


