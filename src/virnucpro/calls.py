"""The decision rule, from a chunk's scores to the calls of reads and pairs, and the tallies of
a sample's calls that aggregation collects read by read, in memory that does not grow with
the sample.

A chunk is scored through its stop-free frames: each has P(others) (score1) and P(virus)
(score2). With S1 = max P(others) and S2 = max P(virus) over the chunk's frames, the chunk is
a *virus chunk*
- by default (`virus_threshold` null) when S2 >= S1: the original's Is_Virus
  (prediction_results_highestscore.csv);
- with a threshold t when S2 >= t.
A read is `no_coding_frame` without a stop-free frame, else `virus` when at least half of its
scored chunks (those with a frame) are virus chunks, else `non-virus`; a read of one chunk is
called as its chunk. A pair (paired reads) is called the same way over both mates' scored
chunks together, and is `no_coding_frame` when neither mate has a stop-free frame.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

VIRUS, NON_VIRUS, NO_CODING_FRAME = "virus", "non-virus", "no_coding_frame"
CALLS = (VIRUS, NON_VIRUS, NO_CODING_FRAME)

HISTOGRAM_BINS = 50  # of the best virus score over [0, 1]: bins of 0.02
LENGTH_SAMPLE = 2000  # reads kept (a uniform random sample) for the score-vs-length plot
TOP_READS = 20  # highest-scoring reads listed by the report


def chunk_is_virus(best_others: float, best_virus: float, threshold: float | None) -> bool:
    """The chunk rule: S2 >= S1 by default (the original's), S2 >= t with a threshold."""
    return best_virus >= (best_others if threshold is None else threshold)


def majority_call(virus_chunks: int, scored_chunks: int) -> str:
    """The call of a read (or pair) from its virus chunks among its scored chunks."""
    if not scored_chunks:
        return NO_CODING_FRAME
    return VIRUS if 2 * virus_chunks >= scored_chunks else NON_VIRUS


def describe_rule(threshold: float | None) -> str:
    """The chunk rule in words, for the report pages."""
    if threshold is None:
        return ("a chunk is a virus chunk when its best P(virus) is at least its best P(others), "
                "over its stop-free frames (the original VirNucPro rule, as virus_threshold is "
                "not set; such a chunk's best P(virus) is at least 0.5)")
    return (f"a chunk is a virus chunk when its best P(virus), over its stop-free frames, is at "
            f"least {threshold:g} (virus_threshold)")


class Evidence:
    """What a read's (or a pair's) call is made from: its scored chunks; and that call."""

    __slots__ = ("scored_chunks", "virus_chunks", "best", "score_sum", "call")

    def __init__(self, scored_chunks: int = 0, virus_chunks: int = 0,
                 best: float | None = None, score_sum: float = 0.0) -> None:
        self.scored_chunks = scored_chunks
        self.virus_chunks = virus_chunks
        self.best = best  # max P(virus) over the frames; None without a frame
        self.score_sum = score_sum  # the sum over scored chunks of the chunk's max P(virus)
        self.call = majority_call(virus_chunks, scored_chunks)  # made once: read many times

    @classmethod
    def of_chunks(cls, maxima: Iterable[tuple[float, float]], threshold: float | None
                  ) -> Evidence:
        """From (max P(others), max P(virus)) of each scored chunk, in chunk order."""
        scored = virus = 0
        best, total = None, 0.0
        for s1, s2 in maxima:
            scored += 1
            virus += chunk_is_virus(s1, s2, threshold)
            best = s2 if best is None or s2 > best else best
            total += s2
        return cls(scored, virus, best, total)

    def __add__(self, other: Evidence) -> Evidence:
        """The two mates of a pair together."""
        bests = [b for b in (self.best, other.best) if b is not None]
        return Evidence(self.scored_chunks + other.scored_chunks,
                        self.virus_chunks + other.virus_chunks, max(bests, default=None),
                        self.score_sum + other.score_sum)

    @property
    def score(self) -> float | None:
        """The mean over scored chunks of the chunk's max P(virus) (summary's read_score)."""
        return self.score_sum / self.scored_chunks if self.scored_chunks else None


def percent_virus(counts: Mapping[str, Any]) -> float | None:
    """Virus calls in percent of the classified (virus + non-virus); None when none is: reads
    without a stop-free frame are not classified, so they do not dilute the share."""
    classified = counts[VIRUS] + counts[NON_VIRUS]
    return 100 * counts[VIRUS] / classified if classified else None


class Tally:
    """Counts of reads (or pairs) and their frames by call; `unit` names the count."""

    def __init__(self, unit: str = "reads") -> None:
        self.counts = {unit: 0, "frames": 0, **dict.fromkeys(CALLS, 0)}
        self.unit = unit

    def add(self, call: str, frames: int) -> None:
        self.counts[self.unit] += 1
        self.counts["frames"] += frames
        self.counts[call] += 1


class ScoreDistributions:
    """The report's view of the reads with a stop-free frame, in fixed memory: a histogram of
    their best virus scores by call, a uniform random sample of (length, score, call) (seeded:
    the same sample every run) and the highest-scoring reads (ties: the earlier read), as
    their rows named by `columns`."""

    def __init__(self, columns: Sequence[str], seed: int = 0) -> None:
        self.columns = tuple(columns)
        self.histogram = {VIRUS: [0] * HISTOGRAM_BINS, NON_VIRUS: [0] * HISTOGRAM_BINS}
        self.sample: list[list] = []
        self.scored = 0
        self._top: list[tuple[float, int, list[str]]] = []  # a min-heap
        self._rng = random.Random(seed)

    def add(self, index: int, length: int, evidence: Evidence, row: list[str]) -> None:
        """One read (its row); reads without a frame are not scored, so not added."""
        if evidence.best is None:
            return
        best, call = evidence.best, evidence.call
        self.histogram[call][min(int(best * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
        # Reservoir sampling (Algorithm R): each read is kept with probability K / reads seen.
        slot = self.scored if self.scored < LENGTH_SAMPLE else \
            int(self._rng.random() * (self.scored + 1))
        if slot < LENGTH_SAMPLE:
            point = [length, round(best, 6), call]
            if slot == len(self.sample):
                self.sample.append(point)
            else:
                self.sample[slot] = point
        self.scored += 1
        if len(self._top) < TOP_READS:
            heapq.heappush(self._top, (best, -index, row))
        elif best > self._top[0][0]:  # a tie keeps the earlier read (reads come in order)
            heapq.heapreplace(self._top, (best, -index, row))

    def as_dict(self) -> dict[str, Any]:
        return {"best_virus_score_histogram": {"bins": HISTOGRAM_BINS, **self.histogram},
                "length_and_score": {"scored_reads": self.scored, "sample": self.sample},
                "top_reads": [dict(zip(self.columns, row)) for *_, row in
                              sorted(self._top, key=lambda e: e[:2], reverse=True)]}


class SampleTally:
    """Everything counts.json holds about a sample, collected read by read (and pair by pair)."""

    def __init__(self, paired: bool, threshold: float | None, columns: Sequence[str]) -> None:
        """`columns` name the fields of the rows given to add_read (summary.tsv's)."""
        self.reads = Tally()
        self.mates = [Tally(), Tally()] if paired else []
        self.pairs = Tally("pairs") if paired else None
        self.scores = ScoreDistributions(columns)
        self.threshold = threshold

    def add_read(self, index: int, length: int, frames: int, evidence: Evidence,
                 row: list[str]) -> None:
        self.reads.add(evidence.call, frames)
        if self.mates:
            self.mates[index % 2].add(evidence.call, frames)  # reads 2k, 2k+1: pair k
        self.scores.add(index, length, evidence, row)

    def add_pair(self, frames: int, evidence: Evidence) -> None:
        self.pairs.add(evidence.call, frames)

    def as_dict(self) -> dict[str, Any]:
        """counts.json: the read counts at the top level, per mate and pair when paired."""
        paired = {"mates": [m.counts for m in self.mates], "pairs": self.pairs.counts} \
            if self.pairs else {}
        return {**self.reads.counts, "paired": bool(self.pairs),
                "virus_threshold": self.threshold, **paired, **self.scores.as_dict()}
