"""Classify shard features with the MLP, and aggregate scores per frame, chunk and read.

Data flow: one scores file per shard (frame_id, read_index, chunk, score1,
score2, representative: a row for every frame of the shard's index; a frame that repeats an
embedded one, named by its number, has no scores of its own), then one streaming pass per
sample over reads.tsv and the scores files (both in input order) writes, each repeated frame
with the scores of its representative (`EmbeddedScores`), so every file is what it would be
had every frame been embedded:

- prediction_results.txt: the original's per-frame table (Sequence_ID,
  Prediction, score1 = P(others), score2 = P(virus)); scores printed as the
  original prints numpy float32 values. Frames in input order (the original's
  order depended on os.listdir).
- prediction_results_highestscore.csv (tab-separated, as the original): per
  chunk, Modified_ID = Sequence_ID minus its last 2 characters, Is_Virus =
  max(score2) >= max(score1) over the chunk's frames; rows sorted by
  Modified_ID as pandas' groupby sorts them (Python's string order: by code point), the
  frames of a Modified_ID combined wherever they lie (a chunk split over two shards is
  gathered with its read). Sorted on disk (`SortedChunks`): memory does not grow with the
  sample.
- summary.tsv: one row per input read, in input order, none missing (see
  SUMMARY_COLUMNS; the calls follow virnucpro.calls, with `virus_threshold`).
- pairs.tsv (paired samples): one row per pair (PAIRS_COLUMNS).
- counts.json: the sample's counts and score distributions (virnucpro.calls.SampleTally).
The original's two tables never depend on `virus_threshold`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from virnucpro import layout
from virnucpro.atomic import atomic_directory, atomic_open, scratch_directory
from virnucpro.calls import Evidence, SampleTally
from virnucpro.features import FeatureFileError, read_trusted
from virnucpro.defaults import WINDOW_FRAMES
from virnucpro.errors import InputError, ModelError
from virnucpro.models.classifier import MLPClassifier, classifier_identity
from virnucpro.prepare import index_rows
from virnucpro.reads import pair_id

log = logging.getLogger("virnucpro")

SCORES_HEADER = "frame_id\tread_index\tchunk\tscore1\tscore2\trepresentative\n"
PREDICTION_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
HIGHEST_FILE = "prediction_results_highestscore.csv"
HIGHEST_HEADER = "Modified_ID\tIs_Virus\n"
SORT_BLOCK_ROWS = 100_000
"""Chunk rows sorted in memory at a time (about 20 MB) before they go to a run file."""
MERGE_FAN_IN = 256
"""Run files merged at a time: the files open at once while sorting (well under the usual
limit of 1,024 a process). 25.6 million chunks (a 10-million-pair short-read sample has
about 20 million) are merged in one pass; more take a pass that merges the runs into fewer."""
SUMMARY_COLUMNS = ("read_id", "length", "chunks", "frames", "best_virus_score", "read_score",
                   "virus_chunks", "call")
"""summary.tsv, one row per read:
- best_virus_score: max P(virus) over the read's frames;
- read_score: mean over the read's chunks with frames of the chunk's max P(virus);
- virus_chunks: chunks called virus by the chunk rule (virnucpro.calls: by default the
  original's, max score2 >= max score1; with virus_threshold t, max score2 >= t);
- call: no_coding_frame when the read has no stop-free frame, else virus when at
  least half of its scored chunks are virus chunks (for a one-chunk read: its chunk's
  call), else non-virus."""
PAIRS_FILE = "pairs.tsv"
PAIRS_COLUMNS = ("pair_id", "mate1_call", "mate2_call", "scored_chunks", "virus_chunks",
                 "best_virus_score", "pair_score", "call")
"""pairs.tsv, one row per pair of a paired sample, in input order:
- pair_id: the mates' ID without /1, /2; mate1_call, mate2_call: the mates' calls in summary.tsv;
- scored_chunks, virus_chunks: both mates' chunks with a stop-free frame, and the virus
  chunks among them;
- best_virus_score: max P(virus) over both mates' frames; pair_score: mean over the scored
  chunks of the chunk's max P(virus);
- call: no_coding_frame when neither mate has a stop-free frame, else virus when at least
  half of the scored chunks are virus chunks, else non-virus."""


def _float32_text(values: np.ndarray) -> list[str]:
    """As the original prints scores: str() of numpy float32 (shortest round-trip)."""
    return [str(v) for v in values.astype(np.float32)]


def score_rows(classifier: MLPClassifier, features: torch.Tensor) -> torch.Tensor:
    """[P(others), P(virus)] per feature row, float32 [n, 2].

    Both ways of scoring a shard (inside its embedding job, on the engine's device, or from
    its kept feature file) score the same blocks of rows, the embedding windows, with the
    classifier's `predict_proba`: on the CPU they give the same bits. Finite features that
    score NaN or inf are the classifier's fault (damaged weights load without complaint):
    ModelError (`classifier_fault`), before any score is saved. Non-finite features are the
    caller's to judge (a 16-bit overflow is rescored in float32).
    """
    scores = classifier.predict_proba(features.float())
    if not bool(torch.isfinite(scores).all()):
        row = int((~torch.isfinite(scores).all(dim=1) & torch.isfinite(features).all(dim=1))
                  .to(torch.int8).argmax())
        if bool(torch.isfinite(features[row]).all()) and not bool(
                torch.isfinite(scores[row]).all()):
            raise classifier_fault(classifier)
    return scores


def classifier_fault(classifier: MLPClassifier) -> ModelError:
    """The classifier scored finite features NaN or inf: its weights are damaged (they load
    without complaint)."""
    return ModelError(f"{classifier.source or 'the classifier'}: the classifier computed NaN or "
                      "infinite scores from finite features; its weights are damaged: download "
                      "or convert it again (nothing was published)")


def write_scores(out: str | os.PathLike, index: str | os.PathLike,
                 parts: Iterable[tuple[list[str], torch.Tensor]], source: str | os.PathLike
                 ) -> int:
    """Write a shard's scores file atomically from (frame IDs, scores [n, 2]) parts in shard
    order, each frame matched with its row of the shard index; return the frame count.

    Every row of the index gets a row: a frame that repeats an embedded one (which may lie in
    another shard) gets no scores here but the number of that frame, its representative;
    aggregation, which reads the sample's scores in order, gives it that frame's scores."""
    scored = ((frame_id, s1, s2) for ids, scores in parts
              for frame_id, s1, s2 in zip(ids, _float32_text(scores[:, 0].numpy()),
                                          _float32_text(scores[:, 1].numpy())))
    scored, checked = itertools.tee(scored)  # in lockstep: tee holds one frame at most
    count = 0
    with atomic_open(out, "w") as handle:
        handle.write(SCORES_HEADER)
        for row in index_rows(index, (f for f, _, _ in checked), source):
            _, s1, s2 = next(scored) if not row[4] else ("", "", "")
            handle.write(f"{row[0]}\t{row[1]}\t{row[2]}\t{s1}\t{s2}\t{row[4]}\n")
            count += 1
    return count


def score_shard(features: str | os.PathLike, index: str | os.PathLike, classifier: MLPClassifier,
                out: str | os.PathLike, registry: str | os.PathLike, validate: bool = True,
                derived: Sequence[str | os.PathLike] = ()) -> int:
    """Score one shard's kept feature file; write its scores file atomically; return the frame
    count. The file is memory-mapped and scored a window at a time, as its embedding job
    would have scored it (`score_rows`), so memory does not grow with the shard.

    A corrupted feature file is moved aside and its `.done` removed (exit 75): the
    next run embeds the shard again. The sample's results in `derived` were built from
    that file, so they are withdrawn too; otherwise Snakemake, seeing them present, would
    not rerun anything (it does not rebuild missing intermediates of finished results).
    """
    features = Path(features)
    try:
        table = read_trusted(features, Path(registry), validate=validate)
    except FeatureFileError as exc:
        if exc.kind == "corrupted":
            for path in map(Path, derived):
                if path.exists():
                    path.unlink()
                    log.warning("withdrew %s: it was built from %s", path, features)
        raise
    # A width that differs from the classifier's is the classifier's fault (exit 66), not a
    # damaged feature file: the features are kept.
    classifier.expected_input(table.data.shape[1])
    window = int(table.meta.get("window_frames") or WINDOW_FRAMES)
    parts = ((table.ids[start:start + window],
              score_rows(classifier, table.data[start:start + window]))
             for start in range(0, len(table.ids), window))
    # How the scores were made, as an embedding job that scores records it (ScoreRows):
    # what computed the features is the feature file's record.
    about = {"frames": len(table.ids), "features": os.fspath(features),
             **{key: table.meta.get(key) for key in ("models", "settings", "hardware")},
             "classifier": classifier_identity(classifier)}
    with atomic_open(layout.scores_sidecar(out), "w") as handle:
        json.dump(about, handle, indent=2)
    return write_scores(out, index, parts, features)


RUN_KEYS = ("device", "gpu", "precision")
RUN_COUNTS = ("shards", "frames", "rescored_in_float32")


def embedding_runs(score_files: Iterable[str | os.PathLike]) -> list[dict]:
    """How a sample's shards were embedded, from their scores' sidecars: one entry per
    device, GPU model and precision (RUN_KEYS), with its shards, frames and frames rescored
    in float32 (RUN_COUNTS). The report pages show it: `embed.device: auto` and
    `embed.dtype: auto` do not say what ran. A shard without a record (scored by an older
    virnucpro) counts under device None."""
    shards = []
    for path in score_files:
        sidecar = layout.scores_sidecar(path)
        about = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        hardware, settings = about.get("hardware") or {}, about.get("settings") or {}
        shards.append({"device": hardware.get("device"), "gpu": hardware.get("gpu"),
                       "precision": settings.get("dtype"), "shards": 1,
                       "frames": about.get("frames") or 0,
                       "rescored_in_float32": about.get("rescored_in_float32") or 0})
    return merge_runs(shards)


def merge_runs(runs: Iterable[dict]) -> list[dict]:
    """Entries of `embedding_runs` summed per device, GPU model and precision, in the order
    first met (a sample's shards; the samples of a run, for its overview)."""
    merged: dict[tuple, dict] = {}
    for run in runs:
        entry = merged.setdefault(tuple(run[key] for key in RUN_KEYS),
                                  {**run, **dict.fromkeys(RUN_COUNTS, 0)})
        for count in RUN_COUNTS:
            entry[count] += run[count]
    return list(merged.values())


@dataclass(slots=True)
class FrameScore:
    frame_id: str
    read_index: int
    chunk: int
    score1: str  # as the scores file prints it (and the original's tables)
    score2: str
    others: float  # score1 and score2 as numbers, parsed once
    virus: float

    @property
    def is_virus(self) -> bool:
        # torch.max picks the first maximum: a tie is "others", as in the original.
        return self.virus > self.others


class EmbeddedScores:
    """The score texts of a sample's embedded frames by number (the order of the scores files),
    kept in a file in `scratch` as they stream by (32 bytes a frame, on disk: memory does not
    grow with the sample), so that a frame repeating one of them gets its scores, text for
    text, however far apart the two are. The representative always comes first."""

    WIDTH = 16  # bytes of a score's text (str() of a float32 takes at most 13)
    BLOCK = 1 << 16  # frames written to the file at a time

    def __init__(self, scratch: Path) -> None:
        self.path = scratch / "embedded_scores"
        self.count = 0  # embedded frames seen
        self._written = 0  # of which in the file
        self._pending: list[tuple[str, str]] = []
        self._table = np.zeros((0, 2), dtype=f"S{self.WIDTH}")

    def add(self, score1: str, score2: str) -> None:
        self._pending.append((score1, score2))
        self.count += 1
        if len(self._pending) == self.BLOCK:
            self._write()

    def _write(self) -> None:
        texts = np.array(self._pending, dtype="S")  # ASCII, as the scores files hold them
        if texts.dtype.itemsize > self.WIDTH:
            raise InputError(self.path, f"a score has more than {self.WIDTH} characters",
                             "the scores are not virnucpro's; delete them and rerun")
        if self._written + len(texts) > len(self._table):
            rows = max(2 * len(self._table), self._written + len(texts))
            with open(self.path, "ab") as handle:
                handle.truncate(rows * 2 * self.WIDTH)
            self._table = np.memmap(self.path, dtype=f"S{self.WIDTH}", mode="r+",
                                    shape=(rows, 2))
        self._table[self._written:self._written + len(texts)] = texts
        self._written += len(texts)
        self._pending = []

    def get(self, number: int, source: str | os.PathLike) -> tuple[str, str]:
        """The scores of embedded frame `number`, which a frame of `source` repeats."""
        if not 0 <= number < self.count:
            raise InputError(source, f"a frame repeats embedded frame {number}, but only "
                             f"{self.count} came before it", "the scores are stale; delete "
                             "them and rerun")
        if number >= self._written:
            return self._pending[number - self._written]
        score1, score2 = self._table[number]
        return score1.decode(), score2.decode()


def _frames(score_files: list[str | os.PathLike], embedded: EmbeddedScores
            ) -> Iterator[FrameScore]:
    """Every frame's scores, in order; a repeated frame's are its representative's."""
    for path in score_files:
        with open(path) as handle:
            next(handle)
            for line in handle:
                # Scores files written before repeats were found have no sixth column.
                f, r, c, s1, s2, *representative = line.rstrip("\n").split("\t")
                if any(representative):
                    s1, s2 = embedded.get(int(representative[0]), path)
                else:
                    embedded.add(s1, s2)
                yield FrameScore(f, int(r), int(c), s1, s2, float(s1), float(s2))


def _chunk_maxima(frames: Iterable[FrameScore], key: Callable[[FrameScore], Hashable]
                  ) -> dict[Hashable, tuple[float, float]]:
    """(max score1, max score2) over the frames of each chunk, chunks named by `key`."""
    best: dict[Hashable, tuple[float, float]] = {}
    for frame in frames:
        name, s1, s2 = key(frame), frame.others, frame.virus
        b1, b2 = best.get(name, (s1, s2))
        best[name] = (s1 if s1 > b1 else b1, s2 if s2 > b2 else b2)  # max(), without a call
    return best


ChunkRow = tuple[str, float, float]  # (Modified_ID, max score1, max score2)
_BY_ID = itemgetter(0)


class SortedChunks:
    """The chunk rows of prediction_results_highestscore.csv, sorted by Modified_ID in memory
    that does not grow with the sample: an external merge sort. Rows are sorted in blocks of
    SORT_BLOCK_ROWS, each block written to a run file in `scratch`; the runs are merged,
    MERGE_FAN_IN at a time, from disk. The sort key is the Modified_ID alone, compared as
    Python compares strings (by code point), which is how pandas' groupby sorts them: rows
    with the same Modified_ID come out together, whichever block they were in."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.block: list[ChunkRow] = []
        self.runs: list[Path] = []
        self._named = 0

    def add(self, rows: Iterable[ChunkRow]) -> None:
        self.block.extend(rows)
        if len(self.block) >= SORT_BLOCK_ROWS:
            self.runs.append(self._write_run(sorted(self.block, key=_BY_ID)))
            self.block = []

    @staticmethod
    def _open(path: Path, mode: str) -> TextIO:
        # Any str round-trips (surrogatepass), and only "\n" ends a row.
        return open(path, mode, encoding="utf-8", errors="surrogatepass", newline="\n")

    def _write_run(self, rows: Iterable[ChunkRow]) -> Path:
        path = self.scratch / f"run_{self._named:06d}.tsv"
        self._named += 1
        with self._open(path, "w") as handle:
            # repr() of a float reads back as the same float.
            handle.writelines(f"{key}\t{s1!r}\t{s2!r}\n" for key, s1, s2 in rows)
        return path

    @staticmethod
    def _rows(handle: TextIO) -> Iterator[ChunkRow]:
        for line in handle:
            key, s1, s2 = line[:-1].rsplit("\t", 2)
            yield key, float(s1), float(s2)

    def _merge(self, runs: list[Path], extra: Iterable[ChunkRow] = ()) -> Iterator[ChunkRow]:
        with contextlib.ExitStack() as files:
            yield from heapq.merge(*(self._rows(files.enter_context(self._open(run, "r")))
                                     for run in runs), extra, key=_BY_ID)

    def merged(self) -> Iterator[ChunkRow]:
        """Every row added, sorted; each pass over the runs before the last merges them
        MERGE_FAN_IN at a time into fewer runs (and deletes what it merged)."""
        runs = self.runs
        while len(runs) > MERGE_FAN_IN:
            merged = []
            for start in range(0, len(runs), MERGE_FAN_IN):
                group = runs[start:start + MERGE_FAN_IN]
                merged.append(self._write_run(self._merge(group)))
                for run in group:
                    run.unlink()
            runs = merged
        yield from self._merge(runs, sorted(self.block, key=_BY_ID))


def _highest_score_rows(chunks: Iterable[ChunkRow]) -> Iterator[str]:
    """From sorted chunk rows: one row per Modified_ID, its rows combined."""
    for key, group in itertools.groupby(chunks, key=_BY_ID):
        rows = list(group)
        yield f"{key}\t{max(r[2] for r in rows) >= max(r[1] for r in rows)}\n"


def _read_rows(reads_tsv: str | os.PathLike, score_files: list[str | os.PathLike],
               embedded: EmbeddedScores) -> Iterator[tuple[list[str], list[FrameScore]]]:
    """Each read's reads.tsv fields with its frames (both streams are in input order)."""
    frames = _frames(score_files, embedded)
    pending = next(frames, None)
    with open(reads_tsv) as handle:
        next(handle)
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            index = int(fields[0])
            mine = []
            while pending is not None and pending.read_index == index:
                mine.append(pending)
                pending = next(frames, None)
            if len(mine) != int(fields[4]):
                raise InputError(reads_tsv, f"read #{index + 1} has {fields[4]} frames but "
                                 f"{len(mine)} scores",
                                 "the scores are stale; delete them and rerun", fields[1])
            yield fields, mine
    if pending is not None:
        raise InputError(reads_tsv, f"a score for read index {pending.read_index} has no read",
                         "the scores are stale; delete them and rerun")


def _score_text(value: float | None) -> str:
    return "NA" if value is None else f"{value:.6g}"


def _modified_id(frame: FrameScore) -> str:
    """The original's chunk name: the frame ID minus its last 2 characters (F1, ..., R3)."""
    return frame.frame_id[:-2]


def _evidence(frames: list[FrameScore], threshold: float | None) -> Evidence:
    return Evidence.of_chunks(_chunk_maxima(frames, lambda frame: frame.chunk).values(),
                              threshold)


def _summary_fields(fields: list[str], frames: int, evidence: Evidence) -> list[str]:
    """A summary.tsv row (SUMMARY_COLUMNS) from the read's reads.tsv fields."""
    return [fields[1], fields[2], fields[3], str(frames), _score_text(evidence.best),
            _score_text(evidence.score), str(evidence.virus_chunks), evidence.call]


def _pair_fields(mate1: list[str], mate2: list[str], evidence: Evidence,
                 reads_tsv: str | os.PathLike) -> list[str]:
    """A pairs.tsv row (PAIRS_COLUMNS) from the mates' summary rows and their evidence together."""
    name = pair_id(mate1[0])
    if pair_id(mate2[0]) != name:
        raise InputError(reads_tsv, f"reads '{mate1[0]}' and '{mate2[0]}' are not mates",
                         "the sample is not prepared as paired reads; delete its results and rerun")
    return [name, mate1[-1], mate2[-1], str(evidence.scored_chunks), str(evidence.virus_chunks),
            _score_text(evidence.best), _score_text(evidence.score), evidence.call]


def _write_read_tables(reads_tsv: str | os.PathLike, score_files: list[str | os.PathLike],
                       outdir: Path, threshold: float | None, paired: bool, tally: SampleTally,
                       chunks: SortedChunks, embedded: EmbeddedScores) -> None:
    """prediction_results.txt, summary.tsv (and pairs.tsv when `paired`), written read by read
    as the reads and their frames stream by (a repeated frame with the scores of its
    representative, from `embedded`); each read also goes to `tally` (counts.json) and its
    chunks to `chunks` (the per-chunk table, sorted once all are in)."""
    with contextlib.ExitStack() as files:
        prediction, summary = (files.enter_context(atomic_open(outdir / name, "w"))
                               for name in ("prediction_results.txt", "summary.tsv"))
        pairs = files.enter_context(atomic_open(outdir / PAIRS_FILE, "w")) if paired else None
        prediction.write(PREDICTION_HEADER)
        summary.write("\t".join(SUMMARY_COLUMNS) + "\n")
        if pairs:
            pairs.write("\t".join(PAIRS_COLUMNS) + "\n")
        for fields, frames in _read_rows(reads_tsv, score_files, embedded):
            for f in frames:
                prediction.write(f"{f.frame_id}\t{'virus' if f.is_virus else 'others'}\t"
                                 f"{f.score1}\t{f.score2}\n")
            chunks.add((key, s1, s2)
                       for key, (s1, s2) in _chunk_maxima(frames, _modified_id).items())
            index, evidence = int(fields[0]), _evidence(frames, threshold)
            row = _summary_fields(fields, len(frames), evidence)
            summary.write("\t".join(row) + "\n")
            tally.add_read(index, int(fields[2]), len(frames), evidence, row)
            if not pairs:
                continue
            if index % 2 == 0:  # mate 1; its mate is the next read
                mate1 = (row, len(frames), evidence)
            else:
                together = mate1[2] + evidence
                pairs.write("\t".join(_pair_fields(mate1[0], row, together, reads_tsv)) + "\n")
                tally.add_pair(mate1[1] + len(frames), together)


def aggregate(reads_tsv: str | os.PathLike, score_files: list[str | os.PathLike],
              outdir: str | os.PathLike, threshold: float | None = None,
              paired: bool = False) -> dict:
    """Write the per-sample result files (pairs.tsv too when `paired`) in one pass over the
    reads and their scores; return counts.json's content. `threshold` is virus_threshold
    (None: the original's rule). Memory does not grow with the sample: rows are written as
    they come, except the per-chunk table's, which are sorted on disk in a scratch directory
    beside the results (removed however the step ends), where the embedded frames' scores are
    kept too, for the frames that repeat them. counts.json counts the frames and, of them, the
    distinct frames (those embedded)."""
    outdir = Path(outdir)
    tally = SampleTally(paired, threshold, SUMMARY_COLUMNS)
    with scratch_directory(outdir / HIGHEST_FILE) as scratch:
        chunks, embedded = SortedChunks(scratch), EmbeddedScores(scratch)
        _write_read_tables(reads_tsv, score_files, outdir, threshold, paired, tally, chunks,
                           embedded)
        with atomic_open(outdir / HIGHEST_FILE, "w") as highest:
            highest.write(HIGHEST_HEADER)
            highest.writelines(_highest_score_rows(chunks.merged()))
    counts = {**tally.as_dict(), "distinct_frames": embedded.count,
              "embedding": embedding_runs(score_files)}
    with atomic_open(outdir / "counts.json", "w") as handle:
        json.dump(counts, handle, indent=2)
    return counts


def classify_run(features: list[str | os.PathLike], prepared: str | os.PathLike,
                 model: str | os.PathLike, outdir: str | os.PathLike,
                 threshold: float | None = None) -> dict:
    """The classification stage alone: score each shard's features (shard_N.pt is
    matched with prepared/shards/shard_N.index.tsv), then aggregate per sample (as paired
    reads when the sample was prepared from two files).

    Every prepared shard needs its feature file (a sample's results cover all its reads):
    what is missing is named before anything is read or written. The scores directory
    appears only once every shard is scored.
    """
    from virnucpro.models.classifier import load_classifier

    outdir, prepared = Path(outdir), Path(prepared)
    features = {Path(path).stem: Path(path) for path in features}
    shards = layout.prepared_shards(prepared)
    if not (prepared / layout.READS_TABLE).is_file() or not shards:
        raise InputError(prepared, "is not a prepared sample (no reads.tsv and shards/)",
                         "give --prepared the directory `virnucpro prepare --shard-size N` wrote")
    unknown = sorted(set(features) - set(shards))
    if unknown:
        raise InputError(features[unknown[0]], f"{prepared} has no shard {unknown[0]}",
                         "give --prepared the prepare directory these features came from")
    missing = [name for name in shards if name not in features]
    if missing:
        raise InputError(prepared, f"no feature file given for {len(missing)} of its "
                         f"{len(shards)} shards ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''})",
                         "embed every shard and pass all the feature files")
    classifier = load_classifier(model)
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_directory(outdir / layout.SCORES) as scores:
        for name in shards:
            score_shard(features[name], layout.shard_file(prepared, name, "index"), classifier,
                        scores / layout.scores_file(outdir, name).name, layout.registry(outdir))
    paired = json.loads((prepared / layout.STATS).read_text()).get("paired", False)
    return aggregate(prepared / layout.READS_TABLE,
                     [layout.scores_file(outdir, name) for name in shards], outdir, threshold,
                     paired)
