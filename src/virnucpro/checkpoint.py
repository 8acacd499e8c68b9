"""Crash-proof results: levelled validation of feature files, quarantine of bad
ones, and intra-shard incremental checkpoints.

A result is trusted only when its `.done` sentinel exists *and* the file
validates. Validation runs in levels, cheapest first:
  1. the file exists and is not empty;
  2. it is a zip container (torch.save's format);
  3. it loads with torch.load(weights_only=True);
  4. its structure: version not newer than ours, required keys present, IDs
     unique strings, data a finite float tensor [N, D] with N = len(IDs) and D
     as expected.
A file failing 1-3 or the structure checks is *corrupted*: it is moved aside
(never deleted) and recorded in failed_checkpoints.txt as path|reason|timestamp,
and the work is redone. A file of a newer major version is *incompatible*: it
is left alone and the run stops, naming both versions.

Exit statuses (virnucpro.errors): 75 corrupted (moved aside; a rerun redoes the work),
78 incompatible (needs a decision).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from virnucpro.atomic import atomic_open, write_sentinel
from virnucpro.errors import EXIT_CORRUPTED, EXIT_INCOMPATIBLE, VirNucProError

log = logging.getLogger("virnucpro")

FORMAT_VERSION = "1.0"
FAILED_REGISTRY = "failed_checkpoints.txt"


class CheckpointError(VirNucProError):
    """A result file that cannot be trusted: `kind` is "corrupted" or "incompatible"."""

    def __init__(self, path: str | os.PathLike, kind: str, reason: str) -> None:
        super().__init__(f"{path}: {kind} checkpoint: {reason}")
        self.path = Path(path)
        self.kind = kind
        self.reason = reason
        self.exit_code = EXIT_CORRUPTED if kind == "corrupted" else EXIT_INCOMPATIBLE


def _major(version: str) -> int:
    match = re.match(r"(\d+)", str(version))
    if not match:
        raise ValueError(version)
    return int(match.group(1))


@dataclass
class FeatureTable:
    """IDs and their feature rows, from a current or an original-format file."""

    ids: list[str]
    data: torch.Tensor  # float [N, D]
    version: str  # "0" for the original tool's unversioned files
    meta: dict[str, Any]


def _load(path: Path) -> Any:
    if not path.exists() or path.stat().st_size == 0:
        raise CheckpointError(path, "corrupted", "missing or empty file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(path, "corrupted", "not a torch zip container (truncated or overwritten?)")
    try:
        # Memory-mapped: a feature file's rows are pages of the file, read as they are used.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any failure to unpickle safely means the file is unusable
        raise CheckpointError(path, "corrupted", f"cannot be loaded safely ({type(exc).__name__}: "
                                                 f"{' '.join(str(exc).split())[:200]})") from None


def _as_table(path: Path, obj: Any) -> FeatureTable:
    """Normalise the current layout and the original tool's three layouts."""
    if not isinstance(obj, dict):
        raise CheckpointError(path, "corrupted", f"holds a {type(obj).__name__}, not a dict")
    version = str(obj.get("version", "0"))
    try:
        newer = _major(version) > _major(FORMAT_VERSION)
    except ValueError:
        raise CheckpointError(path, "corrupted", f"unreadable version {version!r}") from None
    if newer:
        raise CheckpointError(path, "incompatible",
                              f"written in format version {version}, this virnucpro reads "
                              f"format {FORMAT_VERSION} and older; upgrade virnucpro")
    meta = {k: v for k, v in obj.items() if k not in ("ids", "data", "nucleotide", "proteins")}
    if "ids" in obj and "data" in obj:  # current, and the original merged file
        return FeatureTable(obj["ids"], obj["data"], version, meta)
    if "nucleotide" in obj and "data" in obj:  # original DNABERT-S file
        try:
            rows = torch.tensor([d["mean_representation"] for d in obj["data"]], dtype=torch.float32)
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(path, "corrupted", f"malformed DNABERT-S records ({exc})") from None
        return FeatureTable(obj["nucleotide"], rows, version, meta)
    if "proteins" in obj and "data" in obj:  # original ESM file
        try:
            rows = torch.stack(list(obj["data"])) if obj["data"] else torch.zeros(0, 0)
        except (TypeError, RuntimeError) as exc:
            raise CheckpointError(path, "corrupted", f"malformed ESM records ({exc})") from None
        return FeatureTable(obj["proteins"], rows, version, meta)
    raise CheckpointError(path, "corrupted", f"missing keys: has {sorted(obj)}, needs 'ids' and 'data'")


VALIDATE_BYTES = 16 << 20  # rows checked at once for non-finite values


def first_duplicate(ids: list[str]) -> str | None:
    """The first ID that occurs a second time, in one pass."""
    seen: set[str] = set()
    for frame_id in ids:
        if frame_id in seen:
            return frame_id
        seen.add(frame_id)
    return None


def _check_structure(path: Path, table: FeatureTable, expected_dim: int | None) -> None:
    ids, data = table.ids, table.data
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CheckpointError(path, "corrupted", "'ids' is not a list of strings")
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        raise CheckpointError(path, "corrupted", f"duplicate ID {duplicate!r}")
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or not data.is_floating_point():
        raise CheckpointError(path, "corrupted", "'data' is not a 2-D float tensor")
    if data.shape[0] != len(ids):
        raise CheckpointError(path, "corrupted", f"{data.shape[0]} rows for {len(ids)} IDs")
    if expected_dim is not None and len(ids) and data.shape[1] != expected_dim:
        raise CheckpointError(path, "corrupted", f"{data.shape[1]} columns, expected {expected_dim}")
    # In blocks: the check's boolean mask of a whole 13 GB file would not be small.
    rows = max(1, VALIDATE_BYTES // max(1, data.shape[1] * data.element_size()))
    if not all(bool(torch.isfinite(block).all()) for block in data.split(rows)):
        raise CheckpointError(path, "corrupted", "non-finite values (NaN or inf)")


def read_features(path: str | os.PathLike, expected_dim: int | None = None,
                  validate: bool = True) -> FeatureTable:
    """Load and validate a feature file; raises CheckpointError.

    validate=False (config checkpoint.skip_validation) skips the structure checks
    that scan the data (unique IDs, finite values); the container, the layout and
    the version are always checked, since loading needs them.
    """
    path = Path(path)
    table = _as_table(path, _load(path))
    if validate:
        _check_structure(path, table, expected_dim)
    return table


def save_features(path: str | os.PathLike, ids: list[str], data: torch.Tensor,
                  **meta: Any) -> None:
    """Write a versioned feature file atomically (temp file, fsync, rename)."""
    with atomic_open(path, "wb") as handle:
        torch.save({"version": FORMAT_VERSION, "ids": list(ids), "data": data.contiguous(), **meta},
                   handle)


def assemble_features(path: str | os.PathLike, parts: Iterable[FeatureTable], frames: int,
                      width: int, dtype: torch.dtype, **meta: Any) -> None:
    """Write one feature file of `frames` rows from consecutive parts, without holding them.

    The rows are gathered in a memory-mapped scratch file beside the result (file pages the
    kernel writes back and reclaims, not process memory), which torch.save then copies into
    the result: a job's memory stays that of one part, whatever the size of its shard.
    """
    path = Path(path)
    scratch = path.with_name(f".{path.name}.rows.tmp")
    scratch.unlink(missing_ok=True)  # one left by a killed run: start it afresh
    try:
        data = (torch.from_file(str(scratch), shared=True, size=frames * width, dtype=dtype)
                .view(frames, width) if frames else torch.empty(0, width, dtype=dtype))
        ids: list[str] = []
        for part in parts:
            data[len(ids):len(ids) + len(part.ids)] = part.data
            ids.extend(part.ids)
        if len(ids) != frames:
            raise RuntimeError(f"internal error: {len(ids)} rows assembled for {frames} frames")
        save_features(path, ids, data, **meta)
    finally:
        scratch.unlink(missing_ok=True)


def quarantine(path: str | os.PathLike, reason: str, registry: str | os.PathLike) -> Path:
    """Move a corrupted file aside (never delete it) and record it in the registry."""
    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    aside = path.with_name(f"{path.name}.corrupted-{stamp.replace(':', '')}")
    if path.exists():
        os.replace(path, aside)
    with open(registry, "a") as handle:
        handle.write(f"{path}|{' '.join(reason.split())}|{stamp}\n")
    log.warning("moved corrupted %s aside to %s: %s", path, aside.name, reason)
    return aside


def read_trusted(result: Path, sentinel: Path, registry: Path, validate: bool = True
                 ) -> FeatureTable:
    """read_features for a consumer of a finished result (one with a `.done`).

    A corrupted result is moved aside and its `.done` removed before the error
    propagates (exit 75), so that the next run redoes that work.
    """
    try:
        return read_features(result, validate=validate)
    except CheckpointError as exc:
        if exc.kind != "corrupted":
            raise
        aside = quarantine(result, exc.reason, registry)
        sentinel.unlink(missing_ok=True)
        log.warning("removed %s: its result did not validate", sentinel)
        raise CheckpointError(result, "corrupted", f"{exc.reason}; moved aside as {aside.name} "
                              f"and listed in {registry.name}: rerun to compute it again"
                              ) from None


def frames_checkpointed(directory: Path) -> int:
    """Frames in marked batches of a partial shard, from file names alone (fast)."""
    if not directory.is_dir():
        return 0
    return sum(int(m.group(2)) - int(m.group(1)) for entry in os.scandir(directory)
               if (m := _BATCH_DONE.match(entry.name)))


def validate_tree(directory: str | os.PathLike) -> list[tuple[Path, str, str]]:
    """(path, "valid" | "corrupted" | "incompatible", reason) for every .pt file below."""
    results = []
    for path in sorted(Path(directory).rglob("*.pt")):
        try:
            read_features(path)
            results.append((path, "valid", ""))
        except CheckpointError as exc:
            results.append((path, exc.kind, exc.reason))
    return results


# ---- intra-shard incremental checkpoints ------------------------------------

def checkpoint_policy(frames: int = 10_000, seconds: float = 300.0) -> tuple[int, float]:
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


class PartialShard:
    """The saved batches of one shard, in a directory that is not a declared
    output (Snakemake deletes declared outputs before rerunning a job).

    Layout: fingerprint.json (what produced the batches: model identities and
    settings, not paths), batch_START_STOP.pt and batch_START_STOP.done.
    """

    FINGERPRINT = "fingerprint.json"

    def __init__(self, directory: str | os.PathLike, fingerprint: dict[str, Any],
                 registry: str | os.PathLike, force_resume: bool = False) -> None:
        self.directory = Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.registry = Path(registry)
        self.force_resume = force_resume

    def _check_fingerprint(self) -> None:
        path = self.directory / self.FINGERPRINT
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != self.fingerprint:
                changed = sorted(k for k in set(saved) | set(self.fingerprint)
                                 if saved.get(k) != self.fingerprint.get(k))
                if not self.force_resume:
                    raise CheckpointError(
                        self.directory, "incompatible",
                        f"partial results were made with different settings ({', '.join(changed)}); "
                        f"set force_resume to keep them, or delete {self.directory} to start the shard over")
                log.warning("force_resume: keeping partial results made with different %s",
                            ", ".join(changed))
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "w") as handle:
            json.dump(self.fingerprint, handle, sort_keys=True)

    def resume(self, ids: Iterable[str]) -> list[SavedBatch]:
        """Valid saved batches from frame 0 on; everything after the first gap, unmarked or
        corrupt batch is removed (logged) and will be redone.

        Each batch is loaded (and so validated) and its IDs compared with the next of `ids`,
        the shard's frame IDs, consumed only as far as the batches reach: one batch is in
        memory at a time, whatever the shard's size.
        """
        self._check_fingerprint()
        files = sorted((int(m.group(1)), int(m.group(2)), p) for p in self.directory.iterdir()
                       if (m := _BATCH.match(p.name)))
        ids = iter(ids)
        batches: list[SavedBatch] = []
        expected = 0
        stopped = False
        for start, stop, path in files:
            sentinel = path.with_suffix(".done")
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
        except CheckpointError as exc:
            if exc.kind == "incompatible":
                raise
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
                       and (self.directory / entry.name).with_suffix(".done").exists()),
                      key=lambda batch: batch.start)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class BatchWriter:
    """Writes batches on a background thread so computation never waits on disk.

    Each batch file is atomic and gets its `.done` after it is on disk. A write
    error is re-raised in the caller at the next submit() or at close().
    close() flushes and joins; use it in a finally block (also on SIGTERM).
    """

    def __init__(self, directory: Path, max_pending: int = 2) -> None:
        self.directory = directory
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
                write_sentinel(path.with_suffix(".done"), f"{len(batch.ids)}\n")
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
