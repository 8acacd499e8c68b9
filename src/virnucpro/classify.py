"""Classify shard features with the MLP, and aggregate scores per frame, chunk and read.

Data flow: one scores file per shard (frame_id, read_index, chunk, score1,
score2), then one streaming pass per sample over reads.tsv and the scores files
(both in input order) writes:

- prediction_results.txt: the original's per-frame table (Sequence_ID,
  Prediction, score1 = P(others), score2 = P(virus)); scores printed as the
  original prints numpy float32 values. Frames in input order (the original's
  order depended on os.listdir).
- prediction_results_highestscore.csv (tab-separated, as the original): per
  chunk, Modified_ID = Sequence_ID minus its last 2 characters, Is_Virus =
  max(score2) >= max(score1) over the chunk's frames; rows sorted by
  Modified_ID as pandas' groupby sorts them (merged across shards, streaming).
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

import numpy as np
import torch

from virnucpro import layout
from virnucpro.atomic import atomic_directory, atomic_open
from virnucpro.calls import Evidence, SampleTally
from virnucpro.features import FeatureFileError, read_trusted
from virnucpro.defaults import WINDOW_FRAMES
from virnucpro.errors import InputError, ModelError
from virnucpro.models.classifier import MLPClassifier
from virnucpro.prepare import index_rows
from virnucpro.reads import pair_id

log = logging.getLogger("virnucpro")

SCORES_HEADER = "frame_id\tread_index\tchunk\tscore1\tscore2\n"
PREDICTION_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
HIGHEST_HEADER = "Modified_ID\tIs_Virus\n"
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
    order, each frame matched with its row of the shard index; return the frame count."""
    scored = ((frame_id, s1, s2) for ids, scores in parts
              for frame_id, s1, s2 in zip(ids, _float32_text(scores[:, 0].numpy()),
                                          _float32_text(scores[:, 1].numpy())))
    scored, checked = itertools.tee(scored)  # in lockstep: tee holds one frame at most
    count = 0
    with atomic_open(out, "w") as handle:
        handle.write(SCORES_HEADER)
        for row, (_, s1, s2) in zip(index_rows(index, (f for f, _, _ in checked), source),
                                    scored):
            handle.write(f"{row[0]}\t{row[1]}\t{row[2]}\t{s1}\t{s2}\n")
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
    return write_scores(out, index, parts, features)


@dataclass
class FrameScore:
    frame_id: str
    read_index: int
    chunk: int
    score1: str
    score2: str

    @property
    def is_virus(self) -> bool:
        # torch.max picks the first maximum: a tie is "others", as in the original.
        return float(self.score2) > float(self.score1)


def _frames(score_files: list[str | os.PathLike]) -> Iterator[FrameScore]:
    for path in score_files:
        with open(path) as handle:
            next(handle)
            for line in handle:
                f, r, c, s1, s2 = line.rstrip("\n").split("\t")
                yield FrameScore(f, int(r), int(c), s1, s2)


def _chunk_maxima(frames: Iterable[FrameScore], key: Callable[[FrameScore], Hashable]
                  ) -> dict[Hashable, tuple[float, float]]:
    """(max score1, max score2) over the frames of each chunk, chunks named by `key`."""
    best: dict[Hashable, tuple[float, float]] = {}
    for frame in frames:
        name, s1, s2 = key(frame), float(frame.score1), float(frame.score2)
        b1, b2 = best.get(name, (s1, s2))
        best[name] = (max(b1, s1), max(b2, s2))
    return best


def _chunk_rows(score_files: list[str | os.PathLike]
                ) -> Iterator[Iterator[tuple[str, float, float]]]:
    """(Modified_ID, max score1, max score2) per chunk and shard, each shard sorted."""
    for path in score_files:
        maxima = _chunk_maxima(_frames([path]), lambda frame: frame.frame_id[:-2])
        yield iter(sorted((key, s1, s2) for key, (s1, s2) in maxima.items()))


def _highest_score_rows(score_files: list[str | os.PathLike]) -> Iterator[str]:
    """Sorted across shards by a k-way merge; a chunk split over two shards is combined."""
    for key, group in itertools.groupby(heapq.merge(*_chunk_rows(score_files)), key=itemgetter(0)):
        rows = list(group)
        yield f"{key}\t{max(r[2] for r in rows) >= max(r[1] for r in rows)}\n"


def _read_rows(reads_tsv: str | os.PathLike, score_files: list[str | os.PathLike]
               ) -> Iterator[tuple[list[str], list[FrameScore]]]:
    """Each read's reads.tsv fields with its frames (both streams are in input order)."""
    frames = _frames(score_files)
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


def aggregate(reads_tsv: str | os.PathLike, score_files: list[str | os.PathLike],
              outdir: str | os.PathLike, threshold: float | None = None,
              paired: bool = False) -> dict:
    """Write the per-sample result files (pairs.tsv too when `paired`) in one pass; return
    counts.json's content. `threshold` is virus_threshold (None: the original's rule)."""
    outdir = Path(outdir)
    tally = SampleTally(paired, threshold, SUMMARY_COLUMNS)
    with contextlib.ExitStack() as files:
        prediction, summary = (files.enter_context(atomic_open(outdir / name, "w"))
                               for name in ("prediction_results.txt", "summary.tsv"))
        pairs = files.enter_context(atomic_open(outdir / PAIRS_FILE, "w")) if paired else None
        prediction.write(PREDICTION_HEADER)
        summary.write("\t".join(SUMMARY_COLUMNS) + "\n")
        if pairs:
            pairs.write("\t".join(PAIRS_COLUMNS) + "\n")
        for fields, frames in _read_rows(reads_tsv, score_files):
            for f in frames:
                prediction.write(f"{f.frame_id}\t{'virus' if f.is_virus else 'others'}\t"
                                 f"{f.score1}\t{f.score2}\n")
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
    with atomic_open(outdir / "prediction_results_highestscore.csv", "w") as highest:
        highest.write(HIGHEST_HEADER)
        highest.writelines(_highest_score_rows(score_files))
    counts = tally.as_dict()
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
