"""Resumable embedding of one shard: a kill loses at most one checkpoint interval.

The shard's frames are streamed from its files (`ShardFrames`) and embedded in fixed windows
of `window_frames` frames (deterministic batching: a window gives the same numbers whether or
not the run was interrupted). Each window's features become the job's *rows*: the features
themselves (`FeatureRows`, a feature file), or the classifier's scores (`ScoreRows`, a scores
table: the features never leave memory). Rows are accumulated and saved as batch files every
`checkpoint_frames` frames or `checkpoint_seconds`, whichever comes first, by a background
writer, into `<out>.partial/` (not a Snakemake output, so a rerun does not delete it). A
restarted job checks the saved batches against the shard, embeds only the frames after them,
builds the result from the batches atomically, writes the `.done` sentinel last, and removes
the partial directory. Nothing is held for the whole shard but its frame IDs at the very end.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from virnucpro import layout
from virnucpro.atomic import atomic_open, write_sentinel
from virnucpro.checkpoint import Accumulator, PartialShard, SavedBatch, checkpoint_policy
from virnucpro.classify import score_rows, write_scores
from virnucpro.features import assemble_features
from virnucpro.defaults import CHECKPOINT_FRAMES, CHECKPOINT_SECONDS, WINDOW_FRAMES
from virnucpro.embed import EmbeddingEngine
from virnucpro.shards import FrameWindow, ShardFrames
from virnucpro.errors import ModelError, UsageError
from virnucpro.models.classifier import MLPClassifier, classifier_identity

log = logging.getLogger("virnucpro")


@dataclass(frozen=True)
class CheckpointSettings:
    frames: int = CHECKPOINT_FRAMES
    seconds: float = CHECKPOINT_SECONDS
    window_frames: int = WINDOW_FRAMES
    force_resume: bool = False

    def resolved(self) -> CheckpointSettings:
        """Environment overrides (VIRNUCPRO_CHECKPOINT_FRAMES / _SECONDS) applied, and
        windows no larger than the interval (a batch is saved only after whole windows)."""
        frames, seconds = checkpoint_policy(self.frames, self.seconds)
        return CheckpointSettings(frames, seconds, min(self.window_frames, frames),
                                  self.force_resume)


class ShardResult(Protocol):
    """What an embedding job makes of its shard's features."""

    out: Path
    index: Path | None  # given, the job's windows hold whole chunks (see ShardFrames.windows)

    def identity(self) -> dict[str, Any]:
        """What, beyond the models, determines the saved rows (part of the fingerprint)."""

    def rows(self, window: FrameWindow, features: torch.Tensor, engine: EmbeddingEngine
             ) -> torch.Tensor:
        """The rows to save for a window's features [n, D]."""

    def publish(self, frames: int, batches: list[SavedBatch], engine: EmbeddingEngine,
                window_frames: int) -> None:
        """Build the result from every saved batch, in order (atomically, sentinel last)."""


@dataclass
class FeatureRows:
    """The result is the shard's feature file, rows in `dtype` (float16 halves the file)."""

    out: Path
    dtype: torch.dtype = torch.float32
    index = None

    def identity(self) -> dict[str, Any]:
        return {"rows": "features", "dtype": str(self.dtype).removeprefix("torch.")}

    def rows(self, window: FrameWindow, features: torch.Tensor, engine: EmbeddingEngine
             ) -> torch.Tensor:
        refuse_nonfinite(window, features, engine)
        rows = features.to(self.dtype)
        if not bool(torch.isfinite(rows).all()):
            raise UsageError(f"{self.out}: features_dtype {str(self.dtype)[6:]} cannot hold "
                             "these features (values beyond its range); set features_dtype: "
                             "float32")
        return rows

    def publish(self, frames: int, batches: list[SavedBatch], engine: EmbeddingEngine,
                window_frames: int) -> None:
        # Checked when resumed or written by this job: only the container is checked again.
        parts = (batch.load(validate=False) for batch in batches)
        assemble_features(self.out, parts, frames, engine.embed_dim, self.dtype,
                          models=engine.identities(), settings=engine.settings(),
                          hardware=engine.hardware(), window_frames=window_frames)
        write_sentinel(layout.sentinel(self.out), f"{frames}\n")


# How far mixed precision may move a frame's margin P(virus) - P(others) from float32's, by
# its matrix multiplications' dtype, with room to spare: frames, and chunks (max P(virus) -
# max P(others) over their frames), within it of the decision boundary are embedded again in
# float32. Measured (bench/agreement.py --cpu, bench/precision.py; README "Precision"): the
# largest shift with bfloat16 matrix multiplications was 0.042 on random models of the
# published shapes (100 frames) and 0.029 on the reference models (917 frames); with float16,
# 0.0048 on the reference models, 6 times less.
RESCORE_MARGINS = {torch.bfloat16: 0.06, torch.float16: 0.01}


def rescore_positions(scores: torch.Tensor, window: FrameWindow, margin: float
                      ) -> np.ndarray:
    """Positions in the window whose calls mixed precision could have changed.

    - frames whose margin is within `margin` of 0 (or not a number: a 16-bit overflow);
    - in a chunk whose margin is within `margin` of 0, the frames that could hold its
      largest P(virus) or its largest P(others) (within `margin` of them): the chunk's call
      compares those two;
    - every frame of the shard's first and last chunks, which may continue in another shard
      (so their chunk margin is not known here).
    """
    frame_margin = (scores[:, 1] - scores[:, 0]).numpy()
    need = ~(np.abs(frame_margin) > margin)  # NaN compares False: rescored too
    keys = window.chunks if window.chunks is not None else list(range(len(window)))
    starts = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    for number, (start, stop) in enumerate(zip(starts, [*starts[1:], len(keys)])):
        chunk = scores[start:stop].numpy()
        best = chunk.max(axis=0)  # max P(others), max P(virus)
        if (number == 0 and window.start == 0) or (stop == len(keys) and window.final):
            need[start:stop] = True
        elif not abs(best[1] - best[0]) > margin:
            need[start:stop] |= ~(chunk < best - margin).all(axis=1)
    return np.flatnonzero(need)


@dataclass
class ScoreRows:
    """The result is the shard's scores table; the classifier scores each window as it is
    embedded, so features are never written (12 bytes a frame are saved instead of 13 KB).

    With mixed precision, frames near a decision boundary (`rescore_positions`) are embedded
    again in float32 and scored from those features: frame, chunk and read calls are
    float32's. Rows are [P(others), P(virus), 1 if rescored else 0].
    """

    out: Path
    index: Path
    classifier: MLPClassifier

    def identity(self) -> dict[str, Any]:
        return {"rows": "scores", "classifier": classifier_identity(self.classifier),
                "rescore_margins": {str(k).removeprefix("torch."): v
                                    for k, v in RESCORE_MARGINS.items()}}

    def rows(self, window: FrameWindow, features: torch.Tensor, engine: EmbeddingEngine
             ) -> torch.Tensor:
        scores = score_rows(self.classifier, features)
        rescored = torch.zeros(len(scores), 1)
        if engine.precision.autocast:
            need = rescore_positions(scores, window, rescore_margin(engine))
            if len(need):
                exact = engine.embed([window.nucleotides[i] for i in need],
                                     [window.proteins[i] for i in need], exact=True)
                scores = scores.clone()  # the classifier's output is an inference tensor
                scores[torch.from_numpy(need)] = score_rows(self.classifier, exact)
                rescored[torch.from_numpy(need)] = 1.0
                if not bool(torch.isfinite(scores).all()):  # NaN features, even in float32
                    features = features.clone()
                    features[torch.from_numpy(need)] = exact
        # With mixed precision every non-finite score was rescored: computed in float32.
        refuse_nonfinite(window, features, engine, scores,
                         "float32" if engine.precision.autocast else None)
        return torch.cat([scores, rescored], dim=1)

    def publish(self, frames: int, batches: list[SavedBatch], engine: EmbeddingEngine,
                window_frames: int) -> None:
        rescored = sum(int(batch.load(validate=False).data[:, 2].sum()) for batch in batches)
        about = {"frames": frames, "models": engine.identities(), "settings": engine.settings(),
                 "hardware": engine.hardware(), "classifier": classifier_identity(self.classifier),
                 "rescored_in_float32": rescored,
                 "rescore_margin": rescore_margin(engine) if engine.precision.autocast else None}
        with atomic_open(layout.scores_sidecar(self.out), "w") as handle:
            json.dump(about, handle, indent=2)
        parts = ((t.ids, t.data[:, :2]) for t in (batch.load(validate=False) for batch in batches))
        write_scores(self.out, self.index, parts, layout.partial_dir(self.out))
        if rescored:
            log.info("%s: %d of %d frames rescored in float32 (near a decision boundary)",
                     self.out.name, rescored, frames)


def refuse_nonfinite(window: FrameWindow, features: torch.Tensor, engine: EmbeddingEngine,
                     scores: torch.Tensor | None = None, computed_in: str | None = None) -> None:
    """Stop the job (ModelError, exit 66) before a window's rows are saved when an embedding
    model computed NaN or inf for a frame (for a scoring job: one whose score is not finite).
    Saved, such numbers would reach the results as 'nan' scores, or make a sound feature
    file look corrupted at every rerun; a damaged weight loads without complaint, so this is
    where it shows. Names the model; 16-bit precisions can overflow where float32 does not
    (`computed_in`: the precision the rows were computed in, the engine's by default)."""
    bad = ~torch.isfinite(scores if scores is not None else features).all(dim=1)
    if not bool(bad.any()):
        return
    row = int(bad.to(torch.int8).argmax())
    source = engine.nonfinite_model(features[row:row + 1])
    if source is None:  # finite features: score_rows has named the classifier already
        return
    precision = computed_in or engine.precision.name
    hint = "" if precision == "float32" else \
        f" (in {precision} precision: if it does not happen with embed.dtype: float32, use that)"
    raise ModelError(f"{source}: the model computed NaN or infinite values for frame "
                     f"{window.ids[row]}{hint}; its weights are damaged or it is not the model "
                     "it should be: download it again (nothing was published)")


def rescore_margin(engine: EmbeddingEngine) -> float:
    """The margin for this engine's matrix multiplications (see RESCORE_MARGINS)."""
    return RESCORE_MARGINS[engine.precision.matmul_dtype(engine.device)]


def _fingerprint(engine: EmbeddingEngine, result: ShardResult, frames: int, ids_sha256: str,
                 window_frames: int) -> dict:
    """What determines the saved numbers: models, settings, rows, windows, and the frames."""
    return {"models": engine.identities(), "settings": engine.settings(),
            "rows": result.identity(), "window_frames": window_frames, "frames": frames,
            "frame_ids_sha256": ids_sha256}


def embed_shard_resumable(frames: ShardFrames, result: ShardResult, engine: EmbeddingEngine,
                          settings: CheckpointSettings = CheckpointSettings(),
                          registry: str | os.PathLike | None = None,
                          scanned: tuple[int, str] | None = None) -> int:
    """Embed one shard with incremental checkpoints; return the frames embedded now.

    `scanned` is `frames.scan()` when the caller already checked the shard (before loading
    the models, say); otherwise it is scanned here.
    """
    settings = settings.resolved()
    total, ids_sha256 = scanned or frames.scan()
    partial = PartialShard(layout.partial_dir(result.out),
                           _fingerprint(engine, result, total, ids_sha256, settings.window_frames),
                           registry or layout.registry(result.out.parent), settings.force_resume)
    saved = partial.resume(frame_id for frame_id, _, _ in frames.records())
    start = saved[-1].stop if saved else 0
    if start:
        log.info("%s: resuming after %d of %d frames saved in %d batches", result.out.name,
                 start, total, len(saved))
    accumulator = Accumulator(start, settings.frames, settings.seconds)
    # A signal reaches us as an exception (virnucpro.runner): `finally` flushes the writer,
    # and closing the windows stops and joins the engine's loader thread (left running, a
    # thread inside torch at interpreter exit aborts the process, losing its exit status).
    writer = partial.writer()
    windows = engine.embed_windows(frames.windows(settings.window_frames, skip=start,
                                                  index=result.index), total=total - start)
    try:
        for window, features in windows:
            log.debug("embedded frames up to %d of %d", window.start + len(window), total)
            for batch in accumulator.add(window.ids, result.rows(window, features, engine)):
                writer.submit(batch)
        for batch in accumulator.finish():
            writer.submit(batch)
    finally:
        windows.close()
        writer.close()
    result.publish(total, partial.batches(), engine, settings.window_frames)
    partial.clear()
    return total - start
