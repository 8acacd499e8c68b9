"""Streaming FASTA input: plain or gzip, any line width, CRLF, validated.

Records are read in blocks of many records so the per-record work can be
vectorised; memory is bounded by the block size (and by the longest record),
never by the file size.

Parsing follows Biopython's FASTA parser, which the original tool used: the
record ID is the header up to the first whitespace, sequence lines are joined
with spaces and carriage returns removed.
"""

from __future__ import annotations

import gzip
import os
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from virnucpro.errors import InputError, MissingInputError

#: IUPAC nucleotide codes (and U), either case. Anything else is rejected.
NUCLEOTIDE_CODES = b"ACGTURYSWKMBDHVN"
_VALID = np.zeros(256, dtype=bool)
_VALID[np.frombuffer(NUCLEOTIDE_CODES + NUCLEOTIDE_CODES.lower(), dtype=np.uint8)] = True
_VALID_IN_SEQUENCE = _VALID.copy()  # line breaks and spaces separate, they are not bases
_VALID_IN_SEQUENCE[[ord("\n"), ord(" ")]] = True

GZIP_MAGIC = b"\x1f\x8b"
_NEWLINE, _GT, _SPACE = ord("\n"), ord(">"), ord(" ")
DEFAULT_BLOCK_BYTES = 1 << 21


@dataclass
class FastaBlock:
    """Consecutive records: IDs and where each sequence lies in `data`.

    `data` may be the raw block text itself (records with single-line
    sequences, the common case for reads: no copy) or the sequences with line
    breaks removed; either way record i is data[starts[i] : starts[i] + lengths[i]].
    """

    ids: list[bytes]
    data: np.ndarray  # uint8
    starts: np.ndarray  # int64, one per record
    lengths: np.ndarray  # int64, one per record
    first_number: int  # 1-based number of ids[0] in the file

    def sequence(self, i: int) -> bytes:
        return self.data[self.starts[i]: self.starts[i] + self.lengths[i]].tobytes()


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
                number += len(block.ids)
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
        is_newline = arr == _NEWLINE
        newlines = np.flatnonzero(is_newline)
        marks = np.flatnonzero(arr == _GT)
        starts = marks[(marks == 0) | (arr[marks - 1] == _NEWLINE)]
        header_end = newlines[np.searchsorted(newlines, starts)]
        record_end = np.append(starts[1:], len(arr))
        ids = self._ids(text, starts, header_end, number)

        # Sequence region of each record: after its header line, up to the next record.
        region = np.zeros(len(arr) + 1, dtype=np.int8)
        region[header_end + 1] += 1
        region[record_end] -= 1
        in_sequence = np.cumsum(region[:-1], dtype=np.int8).view(bool)
        self._validate(arr, in_sequence, ids, header_end + 1, number)
        spaces = in_sequence & (arr == _SPACE)
        if len(newlines) == 2 * len(starts) and not spaces.any():
            # One sequence line per record: sequences are spans of the text itself.
            seq_starts = header_end + 1
            lengths = record_end - 1 - seq_starts
            data = arr
        else:
            keep = in_sequence & ~is_newline & ~spaces
            lengths = np.add.reduceat(keep, np.minimum(header_end + 1, len(arr) - 1), dtype=np.int64)
            lengths = np.where(header_end + 1 < record_end, lengths, 0)
            data = arr[keep]
            seq_starts = np.cumsum(lengths) - lengths
        empty = np.flatnonzero(lengths == 0)
        if len(empty):
            i = int(empty[0])
            raise self._error("has an empty sequence", "remove the record or add its sequence",
                              ids[i], number + i)
        return FastaBlock(ids, data, seq_starts, lengths, number)

    def _ids(self, text: bytes, starts: np.ndarray, header_end: np.ndarray, number: int
             ) -> list[bytes]:
        ids = []
        for i, (s, e) in enumerate(zip(starts.tolist(), header_end.tolist())):
            fields = text[s + 1:e].split(None, 1)
            if not fields:
                raise self._error("header line has no record ID", "give every record an ID after '>'",
                                  number=number + i)
            ids.append(fields[0])
        return ids

    def _validate(self, arr: np.ndarray, in_sequence: np.ndarray, ids: list[bytes],
                  seq_starts: np.ndarray, number: int) -> None:
        bad = in_sequence & ~_VALID_IN_SEQUENCE[arr]
        if not bad.any():
            return
        pos = int(np.argmax(bad))
        i = int(np.searchsorted(seq_starts, pos, side="right")) - 1
        column = pos - seq_starts[i] + 1 - int(np.count_nonzero(
            (arr[seq_starts[i]:pos] == _NEWLINE) | (arr[seq_starts[i]:pos] == _SPACE)))
        char = chr(arr[pos]) if 32 < arr[pos] < 127 else f"byte 0x{arr[pos]:02x}"
        raise self._error(
            f"has {char!r} at position {column}, which is not a nucleotide code",
            "give nucleotide sequences (IUPAC: ACGTURYSWKMBDHVN); is this a protein FASTA?",
            ids[i], number + i)


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
        self._hashes = array("q")

    def add(self, ids: list[bytes]) -> None:
        self._hashes.extend(map(hash, ids))

    def check(self, path: str | os.PathLike) -> None:
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        if len(hashes) < 2:
            return
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        if not repeated:
            return
        first_seen: dict[bytes, int] = {}
        for block in FastaReader(path):
            for i, rid in enumerate(block.ids):
                if hash(rid) not in repeated:
                    continue
                number = block.first_number + i
                if rid in first_seen:
                    raise InputError(path, f"duplicate record ID (first seen at record #{first_seen[rid]})",
                                     "record IDs must be unique within a sample; rename one of them",
                                     display(rid), number)
                first_seen[rid] = number
