"""Build many text records at once with numpy instead of one f-string per record.

Prepare writes several lines per read for hundreds of millions of reads; doing
that record by record in Python would dominate the stage. A `Field` is one
column of a block of records: for row r, the bytes
source[start[r] : start[r] + length[r]] (optionally wrapped into lines).
`Rows` lays the fields of every row out in one output buffer and copies all
spans of equal length with one vectorised row copy each, so no per-byte index
array is ever built (they cost more in page faults than the copying itself).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


def table(mapping: dict[int, int], default: np.ndarray | None = None) -> bytes:
    """A 256-byte translation table for bytes.translate (much faster than numpy lookups)."""
    out = np.arange(256, dtype=np.uint8) if default is None else default.copy()
    for key, value in mapping.items():
        out[key] = value
    return out.tobytes()


def translate(data: np.ndarray | bytes, lookup: bytes) -> np.ndarray:
    """Byte-wise table lookup of a uint8 array or bytes, as a uint8 array."""
    raw = data if isinstance(data, (bytes, bytearray)) else data.tobytes()
    return np.frombuffer(raw.translate(lookup), dtype=np.uint8)


def ramp(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for every count c, concatenated."""
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)


_COMMON = 256  # spans of a length shared by at least this many are copied as one group


def copy_spans(out: np.ndarray, dst: np.ndarray, source: np.ndarray, start: np.ndarray,
               length: np.ndarray, step: int = 1) -> None:
    """out[dst[i] : dst[i]+length[i]] = source[start[i] :: step][:length[i]] for all i.

    Each copy moves many equal-width rows between window views of `source`
    and `out` in one fancy-indexed assignment. Spans of a common length are
    grouped by length; the rest are cut into power-of-two pieces (at most one
    per bit of the length), so the number of numpy calls stays small whatever
    the mix of lengths. Destinations must not overlap. `step` may be negative
    (read backwards from start).
    """
    keep = length > 0
    dst, start, length = dst[keep], start[keep], length[keep]
    if not len(length):
        return
    common = np.bincount(length)[length] >= _COMMON if length.max() < 2**20 else \
        np.zeros(len(length), dtype=bool)
    if common.any():
        order = np.flatnonzero(common)
        key = length[order]
        key = key.astype(np.uint16) if key.max() < 2**16 else key
        order = order[np.argsort(key, kind="stable")]
        ordered = length[order]
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(ordered)) + 1, [len(order)]])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            rows = order[a:b]
            width = int(ordered[a])
            _copy_rows(out, dst[rows], source, start[rows], width, step)
    rare = np.flatnonzero(~common)
    if len(rare):
        dst, start, length = dst[rare], start[rare], length[rare]
        for bit in range(int(length.max()).bit_length()):
            rows = np.flatnonzero((length >> bit) & 1)
            if len(rows):
                offset = (length[rows] >> (bit + 1)) << (bit + 1)
                _copy_rows(out, dst[rows] + offset, source, start[rows] + offset * step, 1 << bit,
                           step)


def _copy_rows(out: np.ndarray, dst: np.ndarray, source: np.ndarray, start: np.ndarray,
               width: int, step: int) -> None:
    """out[dst[i] : dst[i] + width] = source[start[i] :: step][:width], all i at once.

    Rows of a window view (no copy) are selected by fancy indexing. numpy's
    sliding_window_view does the same with far more per-call overhead.
    """
    reach = abs(step) * (width - 1)
    first = reach if step < 0 else 0  # window r reads source[first + r :: step]
    windows = np.ndarray((len(source) - reach, width), dtype=np.uint8, buffer=source,
                         offset=first, strides=(1, step))
    target = np.ndarray((len(out) - width + 1, width), dtype=np.uint8, buffer=out, strides=(1, 1))
    target[dst] = windows[start - first]


def gather_spans(source: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """source[start[0]:start[0]+length[0]] + source[start[1]:...] + ..."""
    out = np.empty(int(length.sum()), dtype=np.uint8)
    copy_spans(out, np.cumsum(length) - length, source, start, length)
    return out


_SLOT = 16  # gather_in_slots: slot widths are multiples of this
_SLOT_WIDTHS = 32  # ... and at most this many distinct ones (one row copy each)


def gather_in_slots(source: np.ndarray, start: np.ndarray, length: np.ndarray,
                    padding: int) -> tuple[np.ndarray, np.ndarray]:
    """The spans in order, each in a slot of its length rounded up to a multiple of 16
    (the rest of a slot holds the bytes that follow the span in `source`), plus
    `padding` bytes (unset) at the end; returns the buffer and each span's start in it.

    Slots of one width are filled by one row copy, so spans of many different lengths
    (trimmed reads) cost a few numpy calls instead of copy_spans's one per length or
    per bit of a length. Spans of too many slot widths, or whose slot would reach past
    the end of `source`, are packed exactly (copy_spans) instead.
    """
    width = -(-length // _SLOT) * _SLOT
    widths = np.unique(width[width > 0])
    exact = len(widths) > _SLOT_WIDTHS or (len(start) and int((start + width).max()) > len(source))
    if exact:
        width = length
    slots = np.cumsum(width) - width
    out = np.empty(int(width.sum()) + padding, dtype=np.uint8)
    if exact:
        copy_spans(out, slots, source, start, length)
        return out, slots
    for w in widths.tolist():
        rows = np.flatnonzero(width == w)
        _copy_rows(out, slots[rows], source, start[rows], w, 1)
    return out, slots


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

    def out_length(self, rows: int) -> np.ndarray:
        length = np.broadcast_to(self.length, rows)
        return length + -(-length // self.wrap) if self.wrap else length

    def write(self, out: np.ndarray, dst: np.ndarray) -> None:
        rows = len(dst)
        start = np.broadcast_to(self.start, rows)
        length = np.broadcast_to(self.length, rows)
        if np.ndim(self.start) == 0 and self.length == 1:
            out[dst] = self.source[int(self.start)]
        elif not self.wrap:
            copy_spans(out, dst, self.source, start, length)
        else:
            _write_wrapped(out, dst, self.source, start, length, self.wrap)


def _write_wrapped(out: np.ndarray, dst: np.ndarray, source: np.ndarray, start: np.ndarray,
                   length: np.ndarray, width: int) -> None:
    """Each span as lines of `width` plus a newline each. A span's full lines are
    copied together (rows grouped by their number of full lines), then the last
    partial line, then all the newlines at once."""
    full, rest = np.divmod(length, width)
    for q in (np.flatnonzero(np.bincount(full)[1:]) + 1).tolist():
        rows = np.flatnonzero(full == q)
        src = np.ndarray((len(source) - q * width + 1, q, width), dtype=np.uint8, buffer=source,
                         strides=(1, width, 1))
        target = np.ndarray((len(out) - q * (width + 1) + 2, q, width), dtype=np.uint8, buffer=out,
                            strides=(1, width + 1, 1))
        target[dst[rows]] = src[start[rows]]
    copy_spans(out, dst + full * (width + 1), source, start + full * width, rest)
    lines = full + (rest > 0)
    line = ramp(lines)
    line_end = np.repeat(dst, lines) + line * (width + 1) + \
        np.minimum(np.repeat(length, lines) - line * width, width)
    out[line_end] = ord("\n")


def const(text: bytes) -> Field:
    return Field(np.frombuffer(text, dtype=np.uint8), np.int64(0), np.int64(len(text)))


def from_list(items: list[bytes]) -> Field:
    """One row per item."""
    length = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    return Field(np.frombuffer(b"".join(items), dtype=np.uint8), np.cumsum(length) - length, length)


def from_buffer(buffer: np.ndarray, ends: np.ndarray) -> Field:
    """Rows are consecutive pieces of `buffer` ending at `ends`."""
    length = np.diff(ends, prepend=0)
    return Field(buffer, ends - length, length)


def lookup(texts: list[bytes], keys: np.ndarray) -> Field:
    """Row r is texts[keys[r]]: a table of distinct strings, used per row."""
    return from_list(texts).take(keys)


@functools.cache
def _small_decimals() -> Field:
    return from_list([b"%d" % k for k in range(_SMALL)])


_POWERS = 10 ** np.arange(19, dtype=np.int64)
_SMALL = 10_000


def decimal(values: np.ndarray) -> Field:
    """Non-negative integers as decimal text, one row each."""
    values = np.asarray(values, dtype=np.int64)
    if not len(values) or values.max() < _SMALL:
        return _small_decimals().take(values)
    ndigits = np.searchsorted(_POWERS, values, side="right")
    ndigits[values == 0] = 1
    power = np.repeat(ndigits - 1, ndigits) - ramp(ndigits)
    digits = (np.repeat(values, ndigits) // _POWERS[power]) % 10 + ord("0")
    return Field(digits.astype(np.uint8), np.cumsum(ndigits) - ndigits, ndigits)


class Rows:
    """Text of consecutive records (a uint8 buffer) and where each record ends."""

    def __init__(self, fields: list[Field], rows: int) -> None:
        widths = np.stack([f.out_length(rows) for f in fields], axis=1) if rows else \
            np.zeros((0, len(fields)), dtype=np.int64)
        offsets = np.cumsum(widths.ravel()).reshape(widths.shape) - widths
        self.buffer = np.empty(int(widths.sum()), dtype=np.uint8)
        for j, field in enumerate(fields):
            field.write(self.buffer, offsets[:, j])
        self.ends = np.cumsum(widths.sum(axis=1))

    def __len__(self) -> int:
        return len(self.ends)

    def slice(self, first: int, stop: int) -> memoryview:
        """The text of records first..stop-1 (a view, for writing to a file)."""
        begin = int(self.ends[first - 1]) if first else 0
        end = int(self.ends[stop - 1]) if stop > first else begin
        return memoryview(self.buffer)[begin:end]
