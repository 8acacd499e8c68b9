"""Intra-shard checkpoints: an unfinished shard's progress, saved batch by batch.

An embedding job saves its rows every N frames or T seconds (`checkpoint_policy`) as
batch files in RESULT.partial/ (layout.partial_dir), each a feature file
(virnucpro.features) with its own `.done`, written on a background thread
(`BatchWriter`). A rerun resumes from the valid batches (`PartialShard.resume`), so a
kill loses at most one interval; virnucpro.resume builds the shard's result from them.

Saved batches describe themselves: each `.done` carries the digest of the fingerprint of
the job that wrote it (models, settings, the shard's frames), so no file that can go
missing (fingerprint.json, say, lost to a kill while the directory was being removed)
can make one run's batches pass for another's. Batches of another fingerprint are set
aside, never reused; a partial directory is renamed away before it is removed, so an
interrupted removal leaves nothing under the partial name.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from virnucpro import layout
from virnucpro.atomic import atomic_open, fsync_dir, write_sentinel
from virnucpro.defaults import CHECKPOINT_FRAMES, CHECKPOINT_SECONDS
from virnucpro.errors import UntrustedFileError
from virnucpro.features import FeatureTable, quarantine, read_features, save_features

log = logging.getLogger("virnucpro")



class CheckpointError(UntrustedFileError):
    what = "checkpoint"


def checkpoint_policy(frames: int = CHECKPOINT_FRAMES, seconds: float = CHECKPOINT_SECONDS
                      ) -> tuple[int, float]:
    """Save every `frames` frames or `seconds`, whichever first; environment wins."""
    env_frames = os.environ.get("VIRNUCPRO_CHECKPOINT_FRAMES")
    env_seconds = os.environ.get("VIRNUCPRO_CHECKPOINT_SECONDS")
    return (int(env_frames) if env_frames else frames,
            float(env_seconds) if env_seconds else seconds)


@dataclass
class Batch:
    start: int  # index of the first frame in the shard
    ids: list[str]
    data: torch.Tensor

    @property
    def stop(self) -> int:
        return self.start + len(self.ids)

    @property
    def name(self) -> str:
        return f"batch_{self.start:012d}_{self.stop:012d}"


@dataclass(frozen=True)
class SavedBatch:
    """A batch found valid on resume; its rows are read again only when the result is built."""

    start: int
    stop: int
    path: Path

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self, validate: bool = True) -> FeatureTable:
        return read_features(self.path, validate=validate)


_BATCH = re.compile(r"batch_(\d{12})_(\d{12})\.pt$")
_BATCH_DONE = re.compile(r"batch_(\d{12})_(\d{12})\.done$")


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of a fingerprint's canonical JSON."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Fingerprint keys that describe the shard's frames rather than how they are embedded:
# partial results that differ only in these were made for other reads or prepare settings
# (frames that can never match again), so they are set aside, not a decision to make.
FRAME_KEYS = frozenset({"frames", "frame_ids_sha256"})


class PartialShard:
    """The saved batches of one shard, in a directory that is not a declared
    output (Snakemake deletes declared outputs before rerunning a job).

    Layout: fingerprint.json (what produced the batches: model identities and
    settings, not paths; read to say what changed), batch_START_STOP.pt and
    batch_START_STOP.done, whose text is "FRAMES DIGEST": the batch's frame count and the
    digest of the fingerprint of the job that wrote it (`fingerprint_digest`).
    """

    FINGERPRINT = "fingerprint.json"

    def __init__(self, directory: str | os.PathLike, fingerprint: dict[str, Any],
                 registry: str | os.PathLike, force_resume: bool = False) -> None:
        self.directory = Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.digest = fingerprint_digest(self.fingerprint)
        self.registry = Path(registry)
        self.force_resume = force_resume

    def writer(self) -> BatchWriter:
        """A writer of this job's batches (their `.done` carry its digest)."""
        return BatchWriter(self.directory, self.digest)

    def _claim(self) -> None:
        """Make the directory this job's: partial results of other frames, or batches
        that do not carry this job's digest, are set aside (logged, in the registry); those
        of other models or settings on the same frames need a decision (exit 78) unless
        force_resume. Then fingerprint.json says whose the directory is."""
        path = self.directory / self.FINGERPRINT
        # Without a saved batch there is nothing to keep or decide on (a job that failed
        # before its first batch, say a model computing NaN): the directory is simply taken.
        saved = _read_json(path) if path.is_file() and self._saved_batches() else None
        changed = sorted(k for k in set(saved or {}) | set(self.fingerprint)
                         if (saved or {}).get(k) != self.fingerprint.get(k)) if saved else []
        if changed and set(changed) <= FRAME_KEYS:
            self._set_aside("made for other frames of this shard (its reads or the prepare "
                            "settings changed)")
        elif changed and not self.force_resume:
            raise CheckpointError(
                self.directory, "incompatible",
                "partial results were made with different settings "
                f"({', '.join(changed)}); set force_resume to keep them, or delete "
                f"{self.directory} to start the shard over")
        elif changed:
            log.warning("force_resume: keeping partial results made with different %s",
                        ", ".join(changed))
        elif not self.force_resume and self._foreign_batches():
            self._set_aside("saved batches that do not carry this job's fingerprint (left by "
                            "a run of other settings whose partial results were not fully "
                            "removed, or by an older virnucpro)")
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "w") as handle:
            json.dump(self.fingerprint, handle, sort_keys=True)

    def _saved_batches(self) -> list[Path]:
        """The `.done` of every marked batch here."""
        if not self.directory.is_dir():
            return []
        return [Path(entry.path) for entry in os.scandir(self.directory)
                if _BATCH_DONE.match(entry.name)]

    def _foreign_batches(self) -> bool:
        """Whether a marked batch here was written by a job of another fingerprint."""
        return any(_sentinel_digest(done) != self.digest for done in self._saved_batches())

    def _set_aside(self, reason: str) -> None:
        """Move the whole directory aside (never delete work a user may want to inspect)."""
        quarantine(self.directory, reason, self.registry, label="stale")

    def resume(self, ids: Iterable[str]) -> list[SavedBatch]:
        """Valid saved batches from frame 0 on; everything after the first gap, unmarked or
        corrupt batch is removed (logged) and will be redone.

        Each batch is loaded (and so validated) and its IDs compared with the next of `ids`,
        the shard's frame IDs, consumed only as far as the batches reach: one batch is in
        memory at a time, whatever the shard's size.
        """
        self._claim()
        files = sorted((int(m.group(1)), int(m.group(2)), p) for p in self.directory.iterdir()
                       if (m := _BATCH.match(p.name)))
        ids = iter(ids)
        batches: list[SavedBatch] = []
        expected = 0
        stopped = False
        for start, stop, path in files:
            sentinel = layout.sentinel(path)
            if not stopped:
                problem = self._check_batch(path, sentinel, start, stop, expected, ids)
                if problem is None:
                    batches.append(SavedBatch(start, stop, path))
                    expected = stop
                    continue
                stopped = True
                log.warning("resume of %s stops at %s: %s", self.directory, path.name, problem)
            if sentinel.exists():
                sentinel.unlink()
            if path.exists():
                path.unlink()
        return batches

    def _check_batch(self, path: Path, sentinel: Path, start: int, stop: int, expected: int,
                     ids: Iterator[str]) -> str | None:
        """Why the batch cannot be used (a corrupt file is quarantined), or None."""
        if start != expected:
            return f"gap before frame {start} (expected a batch starting at {expected})"
        if not sentinel.exists():
            return "no .done sentinel (interrupted while writing)"
        try:
            table = read_features(path)
        except UntrustedFileError as exc:
            if exc.kind == "incompatible":
                raise CheckpointError(path, exc.kind, exc.reason) from None
            quarantine(path, exc.reason, self.registry)
            return exc.reason
        if table.ids != list(itertools.islice(ids, stop - start)):
            quarantine(path, "frame IDs do not match the shard", self.registry)
            return "frame IDs do not match the shard"
        return None

    def batches(self) -> list[SavedBatch]:
        """The marked batches, in frame order (after a job wrote or resumed them all)."""
        return sorted((SavedBatch(int(m.group(1)), int(m.group(2)), self.directory / m.group(0))
                       for entry in os.scandir(self.directory)
                       if (m := _BATCH.match(entry.name))
                       and layout.sentinel(self.directory / entry.name).exists()),
                      key=lambda batch: batch.start)

    def clear(self) -> None:
        """Remove the directory once its result is published: renamed first to a hidden
        temporary name (atomic), then deleted, so a kill during the removal can leave only
        an orphan that the next run removes (`virnucpro.orphans`), never batches under the
        partial name."""
        if not self.directory.exists():
            return
        doomed = tempfile.mkdtemp(prefix=f".{self.directory.name}.", suffix=".tmp",
                                  dir=self.directory.parent)
        os.replace(self.directory, doomed)  # onto the empty directory: allowed by rename(2)
        fsync_dir(self.directory.parent)
        shutil.rmtree(doomed, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file; None when it is not one (then it describes nothing)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _sentinel_digest(path: Path) -> str | None:
    """The fingerprint digest a batch's `.done` carries (None: none, or unreadable)."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    return fields[1] if len(fields) == 2 else None


class BatchWriter:
    """Writes batches on a background thread so computation never waits on disk.

    Each batch file is atomic and gets its `.done` after it is on disk. A write
    error is re-raised in the caller at the next submit() or at close().
    close() flushes and joins; use it in a finally block (also on SIGTERM).
    """

    def __init__(self, directory: Path, digest: str, max_pending: int = 2) -> None:
        self.directory = directory
        self.digest = digest
        self._queue: queue.Queue[Batch | None] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                path = self.directory / f"{batch.name}.pt"
                save_features(path, batch.ids, batch.data)
                write_sentinel(layout.sentinel(path), f"{len(batch.ids)} {self.digest}\n")
            except BaseException as exc:  # surfaced to the caller
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, batch: Batch) -> None:
        self._raise()
        self._queue.put(batch)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()


class Accumulator:
    """Collects consecutive rows and cuts them into batches every N frames or T seconds,
    whichever comes first."""

    def __init__(self, start: int, frames: int, seconds: float) -> None:
        self.start = start
        self.frames = frames
        self.seconds = seconds
        self._ids: list[str] = []
        self._parts: list[torch.Tensor] = []
        self._since = time.monotonic()

    def add(self, ids: list[str], data: torch.Tensor) -> Iterator[Batch]:
        self._ids.extend(ids)
        self._parts.append(data)
        if len(self._ids) >= self.frames or time.monotonic() - self._since >= self.seconds:
            yield self._cut()

    def finish(self) -> Iterator[Batch]:
        if self._ids:
            yield self._cut()

    def _cut(self) -> Batch:
        batch = Batch(self.start, self._ids, torch.cat(self._parts))
        self.start = batch.stop
        self._ids, self._parts, self._since = [], [], time.monotonic()
        return batch


def frames_checkpointed(directory: Path) -> int:
    """Frames in marked batches of a partial shard, from file names alone (fast)."""
    if not directory.is_dir():
        return 0
    return sum(int(m.group(2)) - int(m.group(1)) for entry in os.scandir(directory)
               if (m := _BATCH_DONE.match(entry.name)))
