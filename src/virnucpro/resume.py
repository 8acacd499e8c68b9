"""Resumable embedding of one shard: a kill loses at most one checkpoint interval.

The shard's frames are embedded in fixed windows of `window_frames` frames
(deterministic batching: a window gives the same numbers whether or not the run
was interrupted). Finished windows are accumulated and saved as batch files
every `checkpoint_frames` frames or `checkpoint_seconds`, whichever comes first,
by a background writer, into `<out>.partial/` (not a Snakemake output, so a
rerun does not delete it). A restarted job loads the valid batches, embeds only
the frames after them, assembles the final feature file atomically, writes the
`.done` sentinel last, and removes the partial directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from virnucpro.atomic import write_sentinel
from virnucpro.checkpoint import (FAILED_REGISTRY, Accumulator, BatchWriter, PartialShard,
                                  checkpoint_policy, save_features)
from virnucpro.embed import EmbeddingEngine, read_frames

log = logging.getLogger("virnucpro")


@dataclass(frozen=True)
class CheckpointSettings:
    frames: int = 10_000
    seconds: float = 300.0
    window_frames: int = 4096
    force_resume: bool = False

    def resolved(self) -> CheckpointSettings:
        """Environment overrides (VIRNUCPRO_CHECKPOINT_FRAMES / _SECONDS) applied, and
        windows no larger than the interval (a batch is saved only after whole windows)."""
        frames, seconds = checkpoint_policy(self.frames, self.seconds)
        return CheckpointSettings(frames, seconds, min(self.window_frames, frames), self.force_resume)


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _fingerprint(engine: EmbeddingEngine, ids: list[str], window_frames: int) -> dict:
    """What determines the saved numbers: models, settings, windows, and the frames."""
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return {"models": engine.identities(), "settings": engine.settings(),
            "window_frames": window_frames, "frames": len(ids), "frame_ids_sha256": digest}


def embed_shard_resumable(nucleotide_fasta: str | os.PathLike, protein_fasta: str | os.PathLike,
                          out: str | os.PathLike, done: str | os.PathLike, engine: EmbeddingEngine,
                          settings: CheckpointSettings = CheckpointSettings(),
                          registry: str | os.PathLike | None = None) -> int:
    """Embed one shard with incremental checkpoints; return the frames embedded now."""
    out, done = Path(out), Path(done)
    settings = settings.resolved()
    ids, nucleotides, proteins = read_frames(nucleotide_fasta, protein_fasta)
    partial = PartialShard(partial_dir(out), _fingerprint(engine, ids, settings.window_frames),
                           registry or out.parent / FAILED_REGISTRY, settings.force_resume)
    saved = partial.resume(ids)
    start = saved[-1].stop if saved else 0
    if start:
        log.info("%s: resuming after %d of %d frames saved in %d batches", out.name, start,
                 len(ids), len(saved))
    accumulator = Accumulator(ids, start, settings.frames, settings.seconds)
    data = torch.empty(len(ids), engine.embed_dim)  # filled in place: one copy of the shard
    for batch in saved:
        data[batch.start:batch.stop] = batch.data
    # A signal reaches us as an exception (virnucpro.runner): `finally` flushes the writer.
    writer = BatchWriter(partial.directory)
    try:
        first_window = -(-start // settings.window_frames)  # saved batches end on windows
        windows = engine.embed_windows(nucleotides, proteins, settings.window_frames,
                                       first_window)
        embedded = start
        for _, rows in windows:
            embedded += len(rows)
            log.debug("embedded frames up to %d of %d", embedded, len(ids))
            for batch in accumulator.add(rows):
                writer.submit(batch)
                data[batch.start:batch.stop] = batch.data
        for batch in accumulator.finish():
            writer.submit(batch)
            data[batch.start:batch.stop] = batch.data
    finally:
        writer.close()
    save_features(out, ids, data, models=engine.identities(), settings=engine.settings())
    write_sentinel(done, f"{len(ids)}\n")
    partial.clear()
    return len(ids) - start
