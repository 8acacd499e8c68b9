"""Streaming FASTA input: plain or gzip, any line width, CRLF, validated.

Records are read in blocks of many records so the per-record work can be
vectorised; memory is bounded by the block size (and by the longest record),
never by the file size.

Parsing follows Biopython's FASTA parser, which the original tool used: the
record ID is the header up to the first whitespace, sequence lines are joined
with spaces and carriage returns removed.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from virnucpro.errors import InputError, MissingInputError
from virnucpro.textblock import gather_spans, ramp, table, translate

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
DEFAULT_BLOCK_BYTES = 1 << 21


@dataclass
class FastaBlock:
    """Consecutive records: where each ID and each sequence lies.

    Record i's ID is text[id_start[i] : id_start[i] + id_length[i]] and its
    sequence data[starts[i] : starts[i] + lengths[i]]. `data` is the block text
    itself when every record has a single sequence line (the common case for
    reads: no copy), else the sequences with line breaks removed.
    """

    text: np.ndarray  # uint8
    id_start: np.ndarray
    id_length: np.ndarray
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

    def sequence(self, i: int) -> bytes:
        return self.data[self.starts[i]: self.starts[i] + self.lengths[i]].tobytes()

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


def hash_spans(data: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each span (for duplicate detection; collisions are
    confirmed against the real bytes, so it need not be cryptographic)."""
    values = gather_spans(data, start, length).astype(np.uint64)
    powers = np.cumprod(np.full(int(length.max()), 0x100000001B3, dtype=np.uint64))
    first = np.cumsum(length) - length
    with np.errstate(over="ignore"):
        h = np.add.reduceat(values * powers[ramp(length)], first)
        h ^= length.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
    return h


def display(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


class FastaReader:
    """Iterate a FASTA file as FastaBlocks; `bytes_read` tracks progress on disk."""

    def __init__(self, path: str | os.PathLike, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.path = Path(path)
        self.block_bytes = block_bytes
        self.bytes_read = 0
        if not self.path.exists():
            raise MissingInputError(self.path, "input file does not exist",
                                    "check the path in your config or command line")
        if self.path.is_dir():
            raise MissingInputError(self.path, "is a directory, not a FASTA file",
                                    "give the path of a FASTA file")
        self.total_bytes = self.path.stat().st_size
        if self.total_bytes == 0:
            raise InputError(self.path, "file is empty", "give a FASTA file with at least one record")

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

    def _pieces(self) -> Iterator[bytes]:
        raw, stream = self._open()
        with raw:
            while True:
                try:
                    data = stream.read(self.block_bytes)
                except (OSError, EOFError, zlib.error) as exc:
                    raise self._error(f"cannot be decompressed ({exc})",
                                      "the gzip file is corrupt or truncated; re-create it") from None
                self.bytes_read = raw.tell()
                if not data:
                    return
                yield data

    def __iter__(self) -> Iterator[FastaBlock]:
        number = 1
        pending: list[bytes] = []
        started = False
        for data in self._pieces():
            if not started:
                data = data.lstrip(b"\r\n")
                if not data:
                    continue
                self._check_fasta_start(data)
                started = True
            cut = data.rfind(b"\n>")
            if cut < 0:
                if pending and pending[-1].endswith(b"\n") and data.startswith(b">"):
                    cut = -1
                else:
                    pending.append(data)
                    continue
            pending.append(data[: cut + 1])
            block = self._parse(b"".join(pending), number)
            if block is not None:
                number += len(block)
                yield block
            pending = [data[cut + 1:]]
        if not started:
            raise self._error("contains no FASTA records (only blank lines)",
                              "give a FASTA file with at least one record")
        tail = b"".join(pending)
        if tail.strip():
            block = self._parse(tail, number)
            if block is not None:
                yield block

    def _check_fasta_start(self, data: bytes) -> None:
        if data.startswith(b">"):
            return
        first = data.split(b"\n", 1)[0][:40]
        if data.startswith(b"@"):
            kind = "looks like FASTQ"
        elif data.startswith(b"LOCUS"):
            kind = "looks like GenBank"
        elif b"\x00" in data[:4096] or not _is_text(data[:4096]):
            kind = "is binary, not FASTA text"
        else:
            kind = f"does not start with a FASTA header ('>'); first line: {display(first)!r}"
        raise self._error(f"not a FASTA file: {kind}", "give nucleotide reads in FASTA format (convert FASTQ with e.g. 'seqtk seq -a')")

    def _parse(self, text: bytes, number: int) -> FastaBlock | None:
        """Parse whole records (text starts with '>') with array operations."""
        if b"\r" in text:
            text = text.replace(b"\r", b"")
        if not text.strip():
            return None
        if not text.endswith(b"\n"):
            text += b"\n"
        arr = np.frombuffer(text, dtype=np.uint8)
        codes = translate(text + b"\n" * CODE_PADDING, CLASSES)
        text_codes = codes[:len(arr)]
        special = np.flatnonzero((text_codes - np.uint8(NEWLINE_CODE)) < 3)  # line breaks, '>', spaces
        kind = codes[special]
        newlines = special[kind == NEWLINE_CODE]
        marks = special[kind == GT_CODE]
        starts = marks[(marks == 0) | (arr[marks - 1] == ord("\n"))]
        header_end = newlines[np.searchsorted(newlines, starts)]
        record_end = np.append(starts[1:], len(arr))
        seq_start = header_end + 1
        spaces = special[kind == SPACE_CODE]
        id_start, id_length = self._id_spans(text, starts, header_end, spaces, number)

        # Invalid letters in sequences: all invalid bytes minus those in headers.
        is_invalid = text_codes == INVALID_CODE
        header_codes = gather_spans(text_codes, starts, seq_start - starts)
        if np.count_nonzero(is_invalid) > np.count_nonzero(header_codes == INVALID_CODE):
            bounds = np.stack([starts, np.minimum(seq_start, len(arr) - 1)], 1).ravel()
            invalid = np.add.reduceat(is_invalid, bounds, dtype=np.int64)[1::2]
            invalid[seq_start >= record_end] = 0
            i = int(np.argmax(invalid > 0))
            pos = seq_start[i] + int(np.argmax(text_codes[seq_start[i]:record_end[i]] == INVALID_CODE))
            self._invalid_letter(arr, pos, seq_start[i], _span(arr, id_start[i], id_length[i]),
                                 number + i)
        record_of_space = np.searchsorted(starts, spaces, side="right") - 1
        spaces_in_sequence = (spaces >= seq_start[record_of_space]).any() if len(spaces) else False
        if len(newlines) == 2 * len(starts) and not spaces_in_sequence:
            # One sequence line per record: sequences are spans of the text itself.
            data, lengths = arr, record_end - 1 - seq_start
        else:
            in_sequence = np.repeat(np.tile(np.array([False, True]), len(starts)),
                                    np.stack([seq_start - starts, record_end - seq_start], 1).ravel())
            keep = in_sequence & (text_codes < NEWLINE_CODE)
            lengths = np.add.reduceat(keep, np.minimum(seq_start, len(arr) - 1), dtype=np.int64)
            lengths[seq_start >= record_end] = 0
            data = arr[keep]
            codes = np.concatenate([text_codes[keep], codes[len(arr):]])
            seq_start = np.cumsum(lengths) - lengths
        empty = np.flatnonzero(lengths == 0)
        if len(empty):
            i = int(empty[0])
            raise self._error("has an empty sequence", "remove the record or add its sequence",
                              _span(arr, id_start[i], id_length[i]), number + i)
        return FastaBlock(arr, id_start, id_length, data, codes, seq_start, lengths, number)

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
            raise self._error("header line has no record ID", "give every record an ID after '>'",
                              number=number + int(missing[0]))
        return id_start, id_length

    def _invalid_letter(self, arr: np.ndarray, pos: int, seq_start: int, record: bytes,
                        number: int) -> None:
        before = arr[seq_start:pos]
        column = len(before) - int(np.count_nonzero((before == ord("\n")) | (before == ord(" ")))) + 1
        char = chr(arr[pos]) if 32 < arr[pos] < 127 else f"byte 0x{arr[pos]:02x}"
        raise self._error(
            f"has {char!r} at position {column}, which is not a nucleotide code",
            "give nucleotide sequences (IUPAC: ACGTURYSWKMBDHVN); is this a protein FASTA?",
            record, number)


def _span(arr: np.ndarray, start: int, length: int) -> bytes:
    return arr[start:start + length].tobytes()


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(data) - 4  # a multi-byte character cut at the end
    return True


class DuplicateIdCheck:
    """Detect duplicate record IDs in a stream using 8 bytes per record.

    IDs are hashed as they stream by; at the end the hashes are sorted and any
    repeated hash is confirmed against the real IDs in a second pass over the
    file (so a hash collision is never reported as a duplicate).
    """

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []

    def add(self, block: FastaBlock) -> None:
        self._hashes.append(block.id_hashes())

    def check(self, path: str | os.PathLike) -> None:
        if not self._hashes:
            return
        hashes = np.sort(np.concatenate(self._hashes))
        repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        if not len(repeated):
            return
        first_seen: dict[bytes, int] = {}
        for block in FastaReader(path):
            for i in np.flatnonzero(np.isin(block.id_hashes(), repeated)).tolist():
                rid, number = block.record_id(i), block.first_number + i
                if rid in first_seen:
                    raise InputError(path, f"duplicate record ID (first seen at record #{first_seen[rid]})",
                                     "record IDs must be unique within a sample; rename one of them",
                                     display(rid), number)
                first_seen[rid] = number
