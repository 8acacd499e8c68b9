"""Build many text records at once with numpy instead of one f-string per record.

Prepare writes several lines per read for hundreds of millions of reads; doing
that record by record in Python would dominate the stage. A `Field` is one
column of a block of records: for row r, the bytes
source[start[r] : start[r] + length[r]] (optionally wrapped into lines).
`Rows` concatenates the fields of every row into one bytes object with a single
gather, whose index is built from span boundaries with one cumulative sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Field:
    source: np.ndarray  # uint8
    start: np.ndarray  # int64 per row, or a scalar for a constant
    length: np.ndarray
    wrap: int = 0  # > 0: break into lines of this width, each ending in a newline

    def take(self, rows: np.ndarray) -> Field:
        """The rows `rows` of this field (a constant field is the same in every row)."""
        if np.ndim(self.start) == 0:
            return self
        return Field(self.source, self.start[rows], self.length[rows], self.wrap)

    def wrapped(self, width: int = 60) -> Field:
        return Field(self.source, self.start, self.length, width)

    def spans(self, rows: int, newline_at: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(spans per row, span starts, span lengths), spans in row order."""
        start = np.broadcast_to(self.start, rows)
        length = np.broadcast_to(self.length, rows)
        if not self.wrap:
            return np.ones(rows, dtype=np.int64), start, length
        lines = -(-length // self.wrap)
        line = ramp(lines)
        line_start = np.repeat(start, lines) + line * self.wrap
        line_len = np.minimum(np.repeat(start + length, lines) - line_start, self.wrap)
        starts = np.empty(2 * len(line), dtype=np.int64)
        lengths = np.empty(2 * len(line), dtype=np.int64)
        starts[0::2], lengths[0::2] = line_start, line_len
        starts[1::2], lengths[1::2] = newline_at, 1
        return 2 * lines, starts, lengths


def ramp(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for every count c, concatenated."""
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)


def gather_spans(source: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """source[start[0]:start[0]+length[0]] + source[start[1]:...] + ..., one gather."""
    keep = length > 0
    start, length = start[keep], length[keep]
    total = int(length.sum())
    if total == 0:
        return np.zeros(0, dtype=source.dtype)
    dtype = np.int32 if len(source) < 2**31 - 1 else np.int64
    step = np.ones(total, dtype=dtype)
    first = np.cumsum(length) - length
    step[0] = start[0]
    step[first[1:]] = start[1:] - (start[:-1] + length[:-1]) + 1
    return source[np.cumsum(step, dtype=dtype)]


def const(text: bytes) -> Field:
    return Field(np.frombuffer(text, dtype=np.uint8), np.int64(0), np.int64(len(text)))


def from_list(items: list[bytes]) -> Field:
    """One row per item."""
    length = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    return Field(np.frombuffer(b"".join(items), dtype=np.uint8), np.cumsum(length) - length, length)


def from_buffer(buffer: bytes | np.ndarray, ends: np.ndarray) -> Field:
    """Rows are consecutive pieces of `buffer` ending at `ends`."""
    length = np.diff(ends, prepend=0)
    source = np.frombuffer(buffer, dtype=np.uint8) if isinstance(buffer, bytes) else buffer
    return Field(source, ends - length, length)


_POWERS = 10 ** np.arange(19, dtype=np.int64)


def decimal(values: np.ndarray) -> Field:
    """Non-negative integers as decimal text, one row each."""
    values = np.asarray(values, dtype=np.int64)
    ndigits = 1 + (values[:, None] >= _POWERS[1:]).sum(axis=1)
    power = np.repeat(ndigits - 1, ndigits) - ramp(ndigits)
    digits = (np.repeat(values, ndigits) // _POWERS[power]) % 10 + ord("0")
    return Field(digits.astype(np.uint8), np.cumsum(ndigits) - ndigits, ndigits)


class Rows:
    """Text of consecutive records and where each record ends."""

    def __init__(self, fields: list[Field], rows: int) -> None:
        self.ends = np.zeros(rows, dtype=np.int64)
        if rows == 0:
            self.text = b""
            return
        sources = [f.source for f in fields] + [np.frombuffer(b"\n", dtype=np.uint8)]
        base = np.cumsum([0] + [len(s) for s in sources[:-1]])
        newline_at = int(base[-1])
        parts = [f.spans(rows, newline_at - int(b)) for f, b in zip(fields, base)]
        counts = np.stack([p[0] for p in parts], axis=1)  # spans per (row, field)
        before = np.cumsum(counts, axis=None).reshape(counts.shape) - counts
        total = int(counts.sum())
        starts = np.empty(total, dtype=np.int64)
        lengths = np.empty(total, dtype=np.int64)
        row_bytes = np.zeros(rows, dtype=np.int64)
        for j, (count, start, length) in enumerate(parts):
            at = np.repeat(before[:, j], count) + ramp(count)
            starts[at] = start + base[j]
            lengths[at] = length
            row_bytes += np.add.reduceat(length, np.cumsum(count) - count) if len(length) else 0
        self.text = gather_spans(np.concatenate(sources), starts, lengths).tobytes()
        self.ends = np.cumsum(row_bytes)

    def __len__(self) -> int:
        return len(self.ends)

    def slice(self, first: int, stop: int) -> bytes:
        """The text of records first..stop-1."""
        begin = int(self.ends[first - 1]) if first else 0
        return self.text[begin:int(self.ends[stop - 1])] if stop > first else b""
