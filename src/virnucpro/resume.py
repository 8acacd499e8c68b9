"""Resumable embedding of one shard: a kill loses at most one checkpoint interval.

This module orchestrates; the engine (virnucpro.embed) computes, and the precision policy,
the rescoring included, is virnucpro.precision's. The shard's frames are streamed from its
files (`ShardFrames`) and embedded in fixed windows of `window_frames` frames (deterministic
batching: a window gives the same numbers whether or not the run was interrupted). Each
window's features become the job's *rows*: the features themselves (`FeatureRows`, a feature
file), or the classifier's scores (`ScoreRows`, a scores table: the features never leave the
device). A scoring job in float16 finishes its rows a group of windows at a time (the float32
rescoring's groups, `precision.Rescorer`): saved batches end where groups end, so a resumed
job rescores with the same batches as an uninterrupted one. Rows are accumulated and saved as
batch files every `checkpoint_frames` frames or `checkpoint_seconds`, whichever comes first,
by a background writer, into `<out>.partial/` (not a Snakemake output, so a rerun does not
delete it). A restarted job checks the saved batches against the shard, embeds only the
frames after them, builds the result from the batches atomically, writes the `.done` sentinel
last, and removes the partial directory. Nothing is held for the whole shard but its frame IDs
at the very end.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from virnucpro import layout
from virnucpro.atomic import atomic_open, write_sentinel
from virnucpro.checkpoint import Accumulator, PartialShard, SavedBatch, checkpoint_policy
from virnucpro.classify import classifier_fault, write_scores
from virnucpro.defaults import CHECKPOINT_FRAMES, CHECKPOINT_SECONDS, WINDOW_FRAMES
from virnucpro.embed import EmbeddingEngine
from virnucpro.errors import ModelError, UsageError
from virnucpro.features import assemble_features
from virnucpro.models.classifier import MLPClassifier, classifier_identity
from virnucpro.precision import (RESCORE_GROUP_WINDOWS, RESCORE_MARGINS, Rescorer, dtype_name,
                                 rescore_margin)
from virnucpro.shards import FrameWindow, ShardFrames

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

    def head(self, engine: EmbeddingEngine) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What the engine makes of a window's features on its device (None: the features)."""

    def finish(self, outputs: Iterable[tuple[FrameWindow, torch.Tensor]],
               engine: EmbeddingEngine, head: Callable[[torch.Tensor], torch.Tensor] | None
               ) -> Iterator[tuple[FrameWindow, torch.Tensor]]:
        """The rows to save, from the engine's windows (`head`'s rows), checked; each item is
        saved whole (a resumed job starts after one)."""

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

    def head(self, engine: EmbeddingEngine) -> None:
        return None

    def finish(self, outputs: Iterable[tuple[FrameWindow, torch.Tensor]],
               engine: EmbeddingEngine, head: None) -> Iterator[tuple[FrameWindow, torch.Tensor]]:
        for window, features in outputs:
            yield window, self.rows(window, features, engine)

    def rows(self, window: FrameWindow, features: torch.Tensor, engine: EmbeddingEngine
             ) -> torch.Tensor:
        """The features as saved (kept as computed: a classify job cannot rescore them)."""
        bad = ~torch.isfinite(features).all(dim=1)
        if bool(bad.any()):
            row = int(bad.to(torch.int8).argmax())
            raise nonfinite_error(window.ids[row], engine.nonfinite_model(features[row:row + 1]),
                                  engine.precision.name)
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
                          hardware=engine.hardware(), window_frames=window_frames,
                          work=engine.work.summary())
        write_sentinel(layout.sentinel(self.out), f"{frames}\n")
        log.info("%s: %s", self.out.name, engine.work.line())


@dataclass
class ScoreRows:
    """The result is the shard's scores table; the classifier scores each window on the
    engine's device as it is embedded, so features are never written (12 bytes a frame are
    saved instead of 13 KB).

    With a rescored precision (float16), frames near a decision boundary are embedded again
    in float32 and scored from those features (virnucpro.precision.Rescorer): frame, chunk
    and read calls are float32's. Rows are [P(others), P(virus), 1 if rescored else 0].
    """

    out: Path
    index: Path
    classifier: MLPClassifier

    def identity(self) -> dict[str, Any]:
        return {"rows": "scores", "classifier": classifier_identity(self.classifier),
                "rescore_margins": {dtype_name(k): v for k, v in RESCORE_MARGINS.items()},
                "rescore_group_windows": RESCORE_GROUP_WINDOWS}

    def head(self, engine: EmbeddingEngine) -> Callable[[torch.Tensor], torch.Tensor]:
        """[P(others), P(virus), DNABERT not finite, ESM-2 not finite] per row, on the device."""
        classifier = (self.classifier if engine.device.type == "cpu"
                      else copy.deepcopy(self.classifier).to(engine.device))

        def scores(features: torch.Tensor) -> torch.Tensor:
            return torch.cat([classifier.predict_proba(features),
                              engine.nonfinite_columns(features)], dim=1)
        return scores

    def finish(self, outputs: Iterable[tuple[FrameWindow, torch.Tensor]],
               engine: EmbeddingEngine, head: Callable[[torch.Tensor], torch.Tensor]
               ) -> Iterator[tuple[FrameWindow, torch.Tensor]]:
        margin = rescore_margin(engine.precision)
        finished = (Rescorer(engine, head, margin)(outputs) if margin is not None
                    else ((window, rows, torch.zeros(len(rows), 1)) for window, rows in outputs))
        for window, rows, rescored in finished:
            bad = ~torch.isfinite(rows[:, :2]).all(dim=1)
            if bool(bad.any()):  # with rescoring, computed in float32 too
                row = int(bad.to(torch.int8).argmax())
                flags = rows[row, 2:].tolist()
                if not any(flags):
                    raise classifier_fault(self.classifier)
                model = engine.model_file("dnabert" if flags[0] else "esm")
                raise nonfinite_error(window.ids[row], model, "float32" if rescored[row]
                                      else engine.precision.name)
            yield window, torch.cat([rows[:, :2], rescored], dim=1)

    def publish(self, frames: int, batches: list[SavedBatch], engine: EmbeddingEngine,
                window_frames: int) -> None:
        rescored = sum(int(batch.load(validate=False).data[:, 2].sum()) for batch in batches)
        about = {"frames": frames, "models": engine.identities(), "settings": engine.settings(),
                 "hardware": engine.hardware(), "classifier": classifier_identity(self.classifier),
                 "rescored_in_float32": rescored,
                 "rescore_margin": rescore_margin(engine.precision),
                 "work": engine.work.summary()}
        with atomic_open(layout.scores_sidecar(self.out), "w") as handle:
            json.dump(about, handle, indent=2)
        parts = ((t.ids, t.data[:, :2]) for t in (batch.load(validate=False) for batch in batches))
        write_scores(self.out, self.index, parts, layout.partial_dir(self.out))
        if rescored:
            log.info("%s: %d of %d frames rescored in float32 (near a decision boundary)",
                     self.out.name, rescored, frames)
        log.info("%s: %s", self.out.name, engine.work.line())


def nonfinite_error(frame_id: str, source: str | None, computed_in: str) -> ModelError:
    """A model computed NaN or inf for a frame: the job stops (exit 66) before the window's
    rows are saved. Saved, such numbers would reach the results as 'nan' scores, or make a
    sound feature file look corrupted at every rerun; a damaged weight loads without
    complaint, so this is where it shows. Names the model; 16-bit precisions can overflow
    where float32 does not (`computed_in`: the precision the rows were computed in)."""
    hint = "" if computed_in == "float32" else \
        f" (in {computed_in} precision: if it does not happen with embed.dtype: float32, use that)"
    return ModelError(f"{source}: the model computed NaN or infinite values for frame "
                      f"{frame_id}{hint}; its weights are damaged or it is not the model it "
                      "should be: download it again (nothing was published)")


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
    head = result.head(engine)
    windows = engine.embed_windows(frames.windows(settings.window_frames, skip=start,
                                                  index=result.index), total=total - start,
                                   head=head)
    try:
        for window, rows in result.finish(windows, engine, head):
            log.debug("embedded frames up to %d of %d", window.start + len(window), total)
            for batch in accumulator.add(window.ids, rows):
                writer.submit(batch)
        for batch in accumulator.finish():
            writer.submit(batch)
    finally:
        windows.close()
        writer.close()
    result.publish(total, partial.batches(), engine, settings.window_frames)
    partial.clear()
    return total - start
