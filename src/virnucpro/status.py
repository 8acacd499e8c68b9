"""Progress of a run from sentinels and file names alone (fast on many shards)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from virnucpro.checkpoint import frames_checkpointed


@dataclass
class SampleProgress:
    sample: str
    shards: int
    shards_done: int
    frames_checkpointed: int

    def line(self) -> str:
        return (f"{self.sample}: Progress: {self.shards_done}/{self.shards} shards complete, "
                f"{self.frames_checkpointed:,} frames checkpointed in partial shards")


def _names(directory: Path, suffix: str) -> set[str]:
    if not directory.is_dir():
        return set()
    return {e.name[: -len(suffix)] for e in os.scandir(directory) if e.name.endswith(suffix)}


def sample_progress(sample_dir: Path) -> SampleProgress:
    shards = _names(sample_dir / "prepare" / "shards", ".done")
    features = sample_dir / "features"
    done = _names(features, ".done") & shards
    checkpointed = sum(frames_checkpointed(features / f"{partial}.pt.partial")
                       for partial in _names(features, ".pt.partial") - done)
    return SampleProgress(sample_dir.name, len(shards), len(done), checkpointed)


def run_progress(outdir: str | os.PathLike) -> list[SampleProgress]:
    """Every sample directory under `outdir` (one whose prepare finished)."""
    outdir = Path(outdir)
    samples = sorted(p for p in outdir.iterdir() if (p / "prepare" / "stats.json").exists()) \
        if outdir.is_dir() else []
    return [sample_progress(p) for p in samples]
