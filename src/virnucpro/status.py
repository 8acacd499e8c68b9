"""Progress of a run from sentinels and file names alone (fast on many shards).

Per sample: the prepared shards, with the sample's frames and the distinct frames among them
(those the shards hold, to embed: stats.json); how many shards are embedded (a kept feature
file with its `.done`, or scores, which the default embedding job writes directly), how many
scored, the frames saved in the partial results of unfinished shards, and whether the results
were aggregated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from virnucpro import layout
from virnucpro.checkpoint import frames_checkpointed
from virnucpro.errors import MissingInputError, UsageError
from virnucpro.prepare import distinct_frames_of


@dataclass
class SampleProgress:
    sample: str
    shards: int
    frames: int
    distinct_frames: int
    embedded: int
    scored: int
    frames_saved: int
    aggregated: bool

    @property
    def complete(self) -> bool:
        return self.aggregated and self.scored == self.shards

    def line(self) -> str:
        state = "complete" if self.complete else (
            "results aggregated" if self.aggregated else "results not aggregated yet")
        return (f"{self.sample}: {self.shards} shards of {self.distinct_frames:,} distinct "
                f"frames ({self.frames:,} frames): {self.embedded} embedded, {self.scored} "
                f"scored, {self.frames_saved:,} frames saved in unfinished shards; {state}")


def sample_progress(sample_dir: Path) -> SampleProgress:
    stats = json.loads((layout.prepare_dir(sample_dir) / layout.STATS).read_text())
    shards = set(layout.prepared_shards(layout.prepare_dir(sample_dir)))
    features, scores = sample_dir / layout.FEATURES, sample_dir / layout.SCORES
    scored = layout.names_with(scores, ".tsv") & shards
    embedded = (layout.names_with(features, layout.DONE) & shards) | scored
    saved = sum(frames_checkpointed(layout.partial_dir(directory / f"{shard}{suffix}"))
                for directory, suffix, finished in ((features, ".pt", embedded),
                                                    (scores, ".tsv", scored))
                for shard in layout.names_with(directory, f"{suffix}{layout.PARTIAL}") - finished)
    return SampleProgress(sample_dir.name, len(shards), stats["frames"],
                          distinct_frames_of(stats), len(embedded), len(scored), saved,
                          (sample_dir / layout.SUMMARY).is_file())


def run_progress(outdir: str | os.PathLike) -> list[SampleProgress]:
    """Every sample directory under `outdir` (one whose prepare finished)."""
    outdir = Path(outdir)
    if not outdir.exists():
        raise MissingInputError(outdir, "does not exist", "give the workflow's outdir (the "
                                "config's `outdir`, `results` by default)")
    if not outdir.is_dir():
        raise UsageError(f"{outdir}: is not a directory; give the workflow's outdir")
    samples = sorted(p for p in outdir.iterdir() if (layout.prepare_dir(p) / layout.STATS).exists())
    return [sample_progress(p) for p in samples]
