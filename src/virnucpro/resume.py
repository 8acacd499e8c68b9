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

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from virnucpro.atomic import write_sentinel
from virnucpro.checkpoint import (FAILED_REGISTRY, Accumulator, BatchWriter, PartialShard,
                                  SavedBatch, assemble_features, checkpoint_policy)
from virnucpro.classify import score_rows, write_scores
from virnucpro.embed import DEFAULT_WINDOW_FRAMES, EmbeddingEngine, ShardFrames
from virnucpro.models.classifier import MLPClassifier, classifier_identity

log = logging.getLogger("virnucpro")


@dataclass(frozen=True)
class CheckpointSettings:
    frames: int = 10_000
    seconds: float = 300.0
    window_frames: int = DEFAULT_WINDOW_FRAMES
    force_resume: bool = False

    def resolved(self) -> CheckpointSettings:
        """Environment overrides (VIRNUCPRO_CHECKPOINT_FRAMES / _SECONDS) applied, and
        windows no larger than the interval (a batch is saved only after whole windows)."""
        frames, seconds = checkpoint_policy(self.frames, self.seconds)
        return CheckpointSettings(frames, seconds, min(self.window_frames, frames), self.force_resume)


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


class ShardResult(Protocol):
    """What an embedding job makes of its shard's features."""

    out: Path

    def identity(self) -> dict[str, Any]:
        """What, beyond the models, determines the saved rows (part of the fingerprint)."""

    def rows(self, features: torch.Tensor) -> torch.Tensor:
        """The rows to save for a window's features [n, D]."""

    def publish(self, frames: int, batches: list[SavedBatch], engine: EmbeddingEngine,
                window_frames: int) -> None:
        """Build the result from every saved batch, in order (atomically, sentinel last)."""


@dataclass
class FeatureRows:
    """The result is the shard's feature file, rows in `dtype` (float16 halves the file)."""

    out: Path
    done: Path
    dtype: torch.dtype = torch.float32

    def identity(self) -> dict[str, Any]:
        return {"rows": "features", "dtype": str(self.dtype).removeprefix("torch.")}

    def rows(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.dtype)

    def publish(self, frames: int, batches: list[SavedBatch], engine: EmbeddingEngine,
                window_frames: int) -> None:
        # Checked when resumed or written by this job: only the container is checked again.
        parts = (batch.load(validate=False) for batch in batches)
        assemble_features(self.out, parts, frames, engine.embed_dim, self.dtype,
                          models=engine.identities(), settings=engine.settings(),
                          window_frames=window_frames)
        write_sentinel(self.done, f"{frames}\n")


@dataclass
class ScoreRows:
    """The result is the shard's scores table; the classifier scores each window as it is
    embedded, so features are never written (8 bytes a frame are saved instead of 13 KB)."""

    out: Path
    index: Path
    classifier: MLPClassifier

    def identity(self) -> dict[str, Any]:
        return {"rows": "scores", "classifier": classifier_identity(self.classifier)}

    def rows(self, features: torch.Tensor) -> torch.Tensor:
        return score_rows(self.classifier, features)

    def publish(self, frames: int, batches: list[SavedBatch], engine: EmbeddingEngine,
                window_frames: int) -> None:
        parts = ((t.ids, t.data) for t in (batch.load(validate=False) for batch in batches))
        write_scores(self.out, self.index, parts, partial_dir(self.out))


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
    partial = PartialShard(partial_dir(result.out),
                           _fingerprint(engine, result, total, ids_sha256, settings.window_frames),
                           registry or result.out.parent / FAILED_REGISTRY, settings.force_resume)
    saved = partial.resume(frame_id for frame_id, _, _ in frames.records())
    start = saved[-1].stop if saved else 0
    if start:
        log.info("%s: resuming after %d of %d frames saved in %d batches", result.out.name,
                 start, total, len(saved))
    accumulator = Accumulator(start, settings.frames, settings.seconds)
    # A signal reaches us as an exception (virnucpro.runner): `finally` flushes the writer.
    writer = BatchWriter(partial.directory)
    try:
        windows = engine.embed_windows(frames.windows(settings.window_frames, skip=start),
                                       total=total - start)
        for window, features in windows:
            log.debug("embedded frames up to %d of %d", window.start + len(window), total)
            for batch in accumulator.add(window.ids, result.rows(features)):
                writer.submit(batch)
        for batch in accumulator.finish():
            writer.submit(batch)
    finally:
        writer.close()
    result.publish(total, partial.batches(), engine, settings.window_frames)
    partial.clear()
    return total - start
