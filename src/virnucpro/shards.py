"""A prepared shard's frames, streamed: IDs, nucleotide and protein sequences, in windows.

A shard is two FASTA files written by prepare (NAME.fna, NAME.faa: the same frames in the same
order, those to embed) and its index (NAME.index.tsv: each frame's read and chunk, and the
frames that repeat an embedded one, which are not embedded). `ShardFrames` reads both
FASTA files in step with the package's FASTA record reader (virnucpro.fasta.fasta_records: the
reads' rules for IDs), checks that they match record for record, and hands out windows of
consecutive frames (`FrameWindow`), so an embedding job holds a few windows, never its shard.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from virnucpro.errors import InputError
from virnucpro.fasta import fasta_records
from virnucpro.prepare import index_rows


@dataclass(frozen=True)
class FrameWindow:
    """Consecutive frames of a shard: `start` is the index of the first in the shard, `final`
    says no frame follows; `chunks` (when the shard's index was given) names each frame's
    chunk as (read index, chunk number)."""

    start: int
    ids: list[str]
    nucleotides: list[str]
    proteins: list[str]
    final: bool = False
    chunks: list[tuple[str, str]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def joined(cls, windows: Sequence[FrameWindow]) -> FrameWindow:
        """Consecutive windows as one."""
        if len(windows) == 1:
            return windows[0]
        chunks = (None if windows[0].chunks is None
                  else [chunk for window in windows for chunk in window.chunks or []])
        return cls(windows[0].start, [i for w in windows for i in w.ids],
                   [n for w in windows for n in w.nucleotides],
                   [p for w in windows for p in w.proteins], windows[-1].final, chunks)


class ShardFrames:
    """A shard's frames, streamed from its nucleotide and protein FASTA files.

    Nothing is held beyond the window being read, so a job's memory does not grow with its
    shard. The two files must list the same IDs in the same order (prepare writes them so);
    any difference, or an empty sequence, is an InputError naming the file and the record.
    """

    HINT = ("a shard's nucleotide and protein files must list the same frames in the same "
            "order: run prepare again")

    def __init__(self, nucleotide_fasta: str | os.PathLike, protein_fasta: str | os.PathLike
                 ) -> None:
        self.nucleotide_fasta, self.protein_fasta = Path(nucleotide_fasta), Path(protein_fasta)

    def records(self) -> Iterator[tuple[str, str, str]]:
        """(ID, nucleotides, protein) of every frame, in file order, checked as they come."""
        nucleotides = fasta_records(self.nucleotide_fasta)
        proteins = fasta_records(self.protein_fasta)
        for number, (nucleotide, protein) in enumerate(
                itertools.zip_longest(nucleotides, proteins), 1):
            if nucleotide is None or protein is None:
                self._unmatched(number, nucleotide, protein)
            (frame_id, nucleotide_seq), (protein_id, protein_seq) = nucleotide, protein
            if frame_id != protein_id:
                raise InputError(str(self.nucleotide_fasta), f"record #{number} of "
                                 f"{self.protein_fasta} is '{protein_id}' instead", self.HINT,
                                 frame_id, number)
            for path, seq in ((self.nucleotide_fasta, nucleotide_seq),
                              (self.protein_fasta, protein_seq)):
                if not seq:
                    raise InputError(str(path), "empty sequence", "every frame needs a "
                                     "sequence: run prepare again", frame_id, number)
            yield frame_id, nucleotide_seq, protein_seq

    def _unmatched(self, number: int, nucleotide: tuple[str, str] | None,
                   protein: tuple[str, str] | None) -> NoReturn:
        longer, shorter = ((self.nucleotide_fasta, self.protein_fasta) if protein is None
                           else (self.protein_fasta, self.nucleotide_fasta))
        extra = nucleotide if protein is None else protein
        raise InputError(str(longer), f"{shorter} has no record #{number} to match it",
                         self.HINT, extra[0], number)

    def scan(self) -> tuple[int, str]:
        """Check both files from end to end without keeping them: (frames, sha256 of the IDs).

        Run before the models load, so a damaged shard fails in seconds; the digest lets saved
        partial results be matched to exactly these frames.
        """
        digest = hashlib.sha256()
        count = 0
        for frame_id, _, _ in self.records():
            digest.update(frame_id.encode() + b"\n")
            count += 1
        return count, digest.hexdigest()[:16]

    def windows(self, window_frames: int, skip: int = 0,
                index: str | os.PathLike | None = None) -> Iterator[FrameWindow]:
        """Windows of `window_frames` frames from frame `skip` on (a resumed job skips the
        frames it saved, which end on a window unless force_resume changed the windows).

        With the shard's `index`, each frame's chunk comes with it and a window is extended
        to the end of its last chunk (at most 5 frames more), so that no chunk spans two
        windows: a scoring job can then judge whole chunks. Deterministic either way.
        """
        if window_frames < 1:
            raise ValueError(f"window_frames must be at least 1, not {window_frames}")
        records: Iterator[tuple] = self.records()
        if index is not None:  # in lockstep: tee holds one frame at most
            records, checked = itertools.tee(records)
            rows = index_rows(index, (frame[0] for frame in checked), self.nucleotide_fasta,
                              repeats=False)
            records = ((*frame, (row[1], row[2])) for row, frame in zip(rows, records))
        records = itertools.islice(records, skip, None)
        start, pending = skip, next(records, None)
        while pending is not None:
            block = [pending, *itertools.islice(records, window_frames - 1)]
            pending = next(records, None)
            while index is not None and pending is not None and pending[3] == block[-1][3]:
                block.append(pending)
                pending = next(records, None)
            columns = [list(column) for column in zip(*block)]
            yield FrameWindow(start, *columns[:3], final=pending is None,
                              chunks=columns[3] if index is not None else None)
            start += len(block)


def read_frames(nucleotide_fasta: str | os.PathLike, protein_fasta: str | os.PathLike
                ) -> tuple[list[str], list[str], list[str]]:
    """A whole shard in memory: (IDs, nucleotide sequences, protein sequences). For tests and
    benchmarks; jobs stream windows with `ShardFrames.windows`."""
    records = list(ShardFrames(nucleotide_fasta, protein_fasta).records())
    if not records:
        return [], [], []
    ids, nucleotides, proteins = (list(column) for column in zip(*records))
    return ids, nucleotides, proteins


def in_windows(nucleotides: Sequence[str], proteins: Sequence[str], window_frames: int
               ) -> Iterator[FrameWindow]:
    """Frames held in memory, as windows (frame IDs are their positions)."""
    if len(nucleotides) != len(proteins):
        raise ValueError(f"{len(nucleotides)} nucleotide but {len(proteins)} protein sequences")
    if window_frames < 1:
        raise ValueError(f"window_frames must be at least 1, not {window_frames}")
    for start in range(0, len(nucleotides), window_frames):
        stop = min(start + window_frames, len(nucleotides))
        yield FrameWindow(start, [str(i) for i in range(start, stop)],
                          list(nucleotides[start:stop]), list(proteins[start:stop]))
