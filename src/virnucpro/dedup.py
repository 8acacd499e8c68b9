"""Distinct chunks of a sample: each chunk sequence is embedded once.

Sequencing libraries repeat themselves (PCR and optical duplicates, amplicons, identical mates,
repeated stretches of long reads), and embedding is nearly all of a run's cost. A chunk's
stop-free frames, and every decision made on them (the frames' scores, the chunk's call, the
rescoring of frames near a decision boundary, which looks at the chunk's frames together), are
a function of the chunk's sequence alone. So a chunk whose sequence (its exact bytes, case
included) was seen before in the sample is not embedded again: its frames take the scores of
the first chunk with that sequence, frame for frame, and every result is what it would be
without this. Whole chunks are compared, not single frames: a frame shared by two different
chunks sits in different chunk contexts, and such frames are rare, as a frame spans nearly its
whole chunk.

Memory: `SeenHashes`, a table of 64-bit hashes in sorted numpy runs, 16 bytes a distinct chunk
(no Python object per chunk), whose large runs are moved to disk and memory-mapped, so the
memory it holds is bounded however large the sample. Each distinct chunk's bytes go to a store
on disk, and a hash found again is confirmed against those bytes before a chunk is taken for a
duplicate: a collision (equal hashes, different sequences) is never merged, it is simply
embedded as a distinct chunk. The files are unlinked temporary files: nothing is left behind
however the process ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from virnucpro.fasta import hash_spans
from virnucpro.frames import Chunks, KeptFrames
from virnucpro.textblock import copy_spans, gather_spans

#: (data, start, length) -> a uint64 hash of each span data[start:start+length].
HashSpans = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

MERGED_RUN_KEYS = 1 << 22
"""Runs of SeenHashes are merged up to this many keys (64 MB): beyond it, merging would copy
ever larger arrays (and need their size again while it does), and a lookup in one more run
costs a binary search. A run that large is not merged again: it is moved to disk."""

_RECORD_HEADER = 16  # a stored chunk: its value and length (two int64), then its bytes


class SeenHashes:
    """A map of distinct uint64 keys to int64 values, 16 bytes a key, for lookups of whole
    arrays of keys at a time: sorted runs, each added array one run, runs of similar sizes
    merged (as a log-structured merge tree does), so an addition costs a sort of what it adds
    and a merge now and then, and a lookup a binary search per run. A run of more than
    MERGED_RUN_KEYS keys is written to an unlinked temporary file in `directory` and
    memory-mapped: the kernel keeps what lookups read of it in its page cache, which it
    reclaims, so the memory the table holds stays below a few such runs."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = directory
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, their values)

    def __len__(self) -> int:
        return sum(len(keys) for keys, _ in self._runs)

    @property
    def runs(self) -> int:
        return len(self._runs)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 where a key is absent."""
        found = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_values in self._runs:
            at = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
            hit = run_keys[at] == keys
            found[hit] = run_values[at[hit]]
        return found

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add keys that are absent, each once, with their values."""
        if not len(keys):
            return
        order = np.argsort(keys)
        self._runs.append((keys[order], values[order].astype(np.int64)))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= MERGED_RUN_KEYS and \
                len(self._runs[-1][0]) >= len(self._runs[-2][0]) // 2:
            newer = self._runs.pop()
            self._runs[-1] = _merge(self._runs[-1], newer)
        if len(self._runs[-1][0]) > MERGED_RUN_KEYS:
            self._runs[-1] = self._on_disk(*self._runs[-1])

    def _on_disk(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A run as memory maps of a file (which the maps keep until they go)."""
        with tempfile.TemporaryFile(dir=self.directory) as handle:
            handle.write(keys.tobytes())
            handle.write(values.tobytes())
            handle.flush()
            return (np.memmap(handle, dtype=np.uint64, mode="r", shape=keys.shape),
                    np.memmap(handle, dtype=np.int64, mode="r", offset=keys.nbytes,
                              shape=values.shape))

    @property
    def in_memory(self) -> int:
        """Bytes of the runs held in memory (not memory-mapped)."""
        return sum(keys.nbytes + values.nbytes for keys, values in self._runs
                   if not isinstance(keys, np.memmap))


def _merge(older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs with no key in common, as one: each newer key's place found by binary
    search, the older keys filling the rest."""
    (old_keys, old_values), (new_keys, new_values) = older, newer
    at = np.searchsorted(old_keys, new_keys) + np.arange(len(new_keys))
    keys = np.empty(len(old_keys) + len(new_keys), dtype=np.uint64)
    values = np.empty(len(keys), dtype=np.int64)
    rest = np.ones(len(keys), dtype=bool)
    rest[at] = False
    keys[at], values[at] = new_keys, new_values
    keys[rest], values[rest] = old_keys, old_values
    return keys, values


@dataclass
class Found:
    """What `DistinctChunks.find` knows of a block of chunks."""

    keys: np.ndarray  # each chunk's hash
    first: np.ndarray  # the first chunk of the block with the same sequence (itself if none)
    earlier: np.ndarray  # the value of an earlier block's chunk with that sequence, else -1
    new: np.ndarray  # chunks whose sequence is to be remembered (its hash is not yet known)

    @property
    def distinct(self) -> np.ndarray:
        """Chunks whose sequence is met for the first time in the sample."""
        return (self.first == np.arange(len(self.first))) & (self.earlier < 0)


class DistinctChunks:
    """The chunk sequences of a stream of blocks, each remembered with a value the caller
    gives it (the number of its first frame), so that a later chunk of the same sequence is
    found with that value.

    Every remembered sequence is kept in a store (16 bytes of header, then its bytes), an
    unlinked temporary file in `directory` (the system's temporary directory by default), to
    confirm a hash found again; `hash_spans` hashes the chunks (any function will do: equality
    is always confirmed on the bytes). A context manager: the store is closed at its end."""

    def __init__(self, directory: str | os.PathLike | None = None,
                 hash_spans: HashSpans = hash_spans) -> None:
        self.seen = SeenHashes(directory)
        self.hash_spans = hash_spans
        self._store = tempfile.TemporaryFile(dir=directory)
        self._stored = 0

    def __enter__(self) -> DistinctChunks:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._store.close()

    def find(self, data: np.ndarray, start: np.ndarray, length: np.ndarray) -> Found:
        """For chunks data[start:start+length] (in stream order): which repeat a sequence of
        this block or of an earlier one."""
        n = len(start)
        keys = self.hash_spans(data, start, length) if n else np.zeros(0, dtype=np.uint64)
        position = np.arange(n)
        # In this block: each chunk against the first chunk of its hash.
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        group_starts = np.concatenate([[True], ordered[1:] != ordered[:-1]]) if n else \
            np.zeros(0, dtype=bool)
        leader = np.empty(n, dtype=np.int64)
        leader[order] = order[np.maximum.accumulate(np.where(group_starts, position, 0))]
        first = position.copy()
        later = np.flatnonzero(leader != position)
        same = _equal_spans(data, start[later], data, start[leader[later]], length[later],
                            length[leader[later]])
        first[later[same]] = leader[later[same]]
        # Earlier blocks: a chunk that is first of its sequence here, against the store.
        own = np.flatnonzero(first == position)
        stored = self.seen.get(keys[own])
        earlier = np.full(n, -1, dtype=np.int64)
        hit = stored >= 0
        if hit.any():
            earlier[own[hit]] = self._confirmed(stored[hit], data, start[own[hit]],
                                                length[own[hit]])
        earlier = earlier[first]
        # Remembered: the first chunk of each hash not known yet (a hash known already belongs
        # to another sequence when its chunk was not confirmed: that chunk stays unremembered).
        unknown = own[~hit]
        _, firsts = np.unique(keys[unknown], return_index=True)
        return Found(keys, first, earlier, np.sort(unknown[firsts]))

    def _confirmed(self, offsets: np.ndarray, data: np.ndarray, start: np.ndarray,
                   length: np.ndarray) -> np.ndarray:
        """The values stored at `offsets` where the stored chunk has the same bytes as the
        chunk data[start:start+length], else -1 (equal hashes of different sequences)."""
        self._store.flush()
        stored = np.memmap(self._store, dtype=np.uint8, mode="r", shape=(self._stored,))
        header = gather_spans(stored, offsets, np.full(len(offsets), _RECORD_HEADER))
        values, stored_length = header.view(np.int64).reshape(-1, 2).T
        same = _equal_spans(stored, offsets + _RECORD_HEADER, data, start, stored_length, length)
        return np.where(same, values, -1)

    def remember(self, found: Found, data: np.ndarray, start: np.ndarray, length: np.ndarray,
                 values: np.ndarray) -> None:
        """Remember the chunks `found.new` (of the chunks `find` was given) with their values
        (one for each of those chunks)."""
        new = found.new
        if not len(new):
            return
        length = length[new]
        size = _RECORD_HEADER + length
        at = np.cumsum(size) - size
        records = np.empty(int(size.sum()), dtype=np.uint8)
        header = np.stack([np.asarray(values, dtype=np.int64), length], 1).astype(np.int64)
        copy_spans(records, at, header.view(np.uint8).ravel(),
                   np.arange(len(new)) * _RECORD_HEADER, np.full(len(new), _RECORD_HEADER))
        copy_spans(records, at + _RECORD_HEADER, data, start[new], length)
        self._store.write(records.tobytes())
        self.seen.add(found.keys[new], self._stored + at)
        self._stored += len(records)


def _equal_spans(a: np.ndarray, a_start: np.ndarray, b: np.ndarray, b_start: np.ndarray,
                 a_length: np.ndarray, b_length: np.ndarray) -> np.ndarray:
    """Per pair: a[a_start:a_start+a_length] == b[b_start:b_start+b_length], byte for byte."""
    same = a_length == b_length
    rows = np.flatnonzero(same & (a_length > 0))
    if len(rows):
        length = a_length[rows]
        differ = gather_spans(a, a_start[rows], length) != gather_spans(b, b_start[rows], length)
        same[rows] = np.add.reduceat(differ, np.cumsum(length) - length, dtype=np.int64) == 0
    return same


class DistinctFrames:
    """The frames to embed of a sample, block by block: those of the first chunk of each
    sequence. Embedded frames are numbered from 0 in stream order (shard by shard, as prepare
    writes them); every other frame is the repeat of one of them, the frame at the same place
    in the first chunk of its sequence. Its files are in `directory` (DistinctChunks); a
    context manager."""

    def __init__(self, directory: str | os.PathLike | None = None,
                 hash_spans: HashSpans = hash_spans) -> None:
        self.chunks = DistinctChunks(directory, hash_spans)
        self.embedded = 0  # frames to embed so far

    def __enter__(self) -> DistinctFrames:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.chunks.__exit__(kind, error, traceback)

    def same_as(self, data: np.ndarray, chunks: Chunks, frames: KeptFrames) -> np.ndarray:
        """For each of a block's kept frames (chunks of `data`): -1 when it is to be embedded,
        else the number of the embedded frame whose scores are its own."""
        per_chunk = np.bincount(frames.chunk, minlength=len(chunks))
        scored = np.flatnonzero(per_chunk)  # chunks without a frame are never embedded
        start, length = chunks.start[scored], chunks.length[scored]
        found = self.chunks.find(data, start, length)
        counts = per_chunk[scored]
        embedded = np.where(found.distinct, counts, 0)
        first_frame = self.embedded + np.cumsum(embedded) - embedded
        self.chunks.remember(found, data, start, length, first_frame[found.new])
        self.embedded += int(embedded.sum())
        repeat = np.where(found.distinct, -1, np.where(found.earlier >= 0, found.earlier,
                                                       first_frame[found.first]))
        chunk_repeat = np.full(len(chunks), -1, dtype=np.int64)
        chunk_repeat[scored] = repeat
        of_frame = chunk_repeat[frames.chunk]
        rank = np.arange(len(frames)) - np.searchsorted(frames.chunk, frames.chunk)
        return np.where(of_frame >= 0, of_frame + rank, -1)
