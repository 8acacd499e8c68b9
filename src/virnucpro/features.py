"""Feature files: their format, levelled validation, and quarantine of bad ones.

A feature file holds frame IDs and one row of features per frame (DNABERT-S then ESM-2,
as the original concatenates them): the workflow's kept features, the CLI's `embed`
output, and each intra-shard checkpoint (virnucpro.checkpoint) are all in this format.
It is trusted only when its `.done` sentinel exists *and* the file validates. Validation
runs in levels, cheapest first:
  1. the file exists and is not empty;
  2. it is a zip container (torch.save's format);
  3. it loads with torch.load(weights_only=True);
  4. its structure: version not newer than ours, required keys present, IDs
     unique strings, data a finite float tensor [N, D] with N = len(IDs) and D
     as expected.
A file failing 1-3 or the structure checks is *corrupted*: it is moved aside
(never deleted) and recorded in the run's registry (layout.FAILED_REGISTRY) as
path|reason|timestamp, and the work is redone. A file of a newer major version is
*incompatible*: it is left alone and the run stops, naming both versions.

Exit statuses (virnucpro.errors): 75 corrupted (moved aside; a rerun redoes the work),
78 incompatible (needs a decision).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from virnucpro import layout
from virnucpro.atomic import atomic_open
from virnucpro.errors import EXIT_IOERR, StorageError, UntrustedFileError, one_line

log = logging.getLogger("virnucpro")


class FeatureFileError(UntrustedFileError):
    what = "feature file"


FORMAT_VERSION = "1.0"


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


def unreadable(path: Path, exc: OSError) -> StorageError:
    """The file could not be read (an I/O error, a file system gone): not its fault, so it
    stays where it is and nothing is recomputed; the run stops until the disk is fixed."""
    reason = os.strerror(exc.errno) if exc.errno else one_line(exc)
    return StorageError(f"{path}: cannot be read ({reason}); it is left where it is: check "
                        "the disk or file system, then rerun", EXIT_IOERR)


def _load(path: Path) -> Any:
    if not path.exists() or path.stat().st_size == 0:
        raise FeatureFileError(path, "corrupted", "missing or empty file")
    try:
        # zipfile.is_zipfile takes a read error for "not a zip": read the bytes it needs first
        with open(path, "rb") as handle:
            handle.read(4)
            handle.seek(-min(path.stat().st_size, 1 << 16), os.SEEK_END)
            handle.read()
    except OSError as exc:
        raise unreadable(path, exc) from None
    if not zipfile.is_zipfile(path):
        raise FeatureFileError(path, "corrupted",
                               "not a torch zip container (truncated or overwritten?)")
    try:
        # Memory-mapped: a feature file's rows are pages of the file, read as they are used.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any failure to unpickle safely means the file is unusable ...
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if isinstance(cause, OSError):  # ... unless reading it failed (torch wraps OSError)
            raise unreadable(path, cause) from None
        raise FeatureFileError(path, "corrupted", f"cannot be loaded safely ({type(exc).__name__}: "
                                                 f"{' '.join(str(exc).split())[:200]})") from None


def _as_table(path: Path, obj: Any) -> FeatureTable:
    """Normalise the current layout and the original tool's three layouts."""
    if not isinstance(obj, dict):
        raise FeatureFileError(path, "corrupted", f"holds a {type(obj).__name__}, not a dict")
    version = str(obj.get("version", "0"))
    try:
        newer = _major(version) > _major(FORMAT_VERSION)
    except ValueError:
        raise FeatureFileError(path, "corrupted", f"unreadable version {version!r}") from None
    if newer:
        raise FeatureFileError(path, "incompatible",
                              f"written in format version {version}, this virnucpro reads "
                              f"format {FORMAT_VERSION} and older; upgrade virnucpro")
    meta = {k: v for k, v in obj.items() if k not in ("ids", "data", "nucleotide", "proteins")}
    if "ids" in obj and "data" in obj:  # current, and the original merged file
        return FeatureTable(obj["ids"], obj["data"], version, meta)
    if "nucleotide" in obj and "data" in obj:  # original DNABERT-S file
        try:
            rows = torch.tensor([d["mean_representation"] for d in obj["data"]],
                                dtype=torch.float32)
        except (TypeError, KeyError, ValueError) as exc:
            raise FeatureFileError(path, "corrupted",
                                   f"malformed DNABERT-S records ({exc})") from None
        return FeatureTable(obj["nucleotide"], rows, version, meta)
    if "proteins" in obj and "data" in obj:  # original ESM file
        try:
            rows = torch.stack(list(obj["data"])) if obj["data"] else torch.zeros(0, 0)
        except (TypeError, RuntimeError) as exc:
            raise FeatureFileError(path, "corrupted", f"malformed ESM records ({exc})") from None
        return FeatureTable(obj["proteins"], rows, version, meta)
    raise FeatureFileError(path, "corrupted",
                           f"missing keys: has {sorted(obj)}, needs 'ids' and 'data'")


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
        raise FeatureFileError(path, "corrupted", "'ids' is not a list of strings")
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        raise FeatureFileError(path, "corrupted", f"duplicate ID {duplicate!r}")
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or not data.is_floating_point():
        raise FeatureFileError(path, "corrupted", "'data' is not a 2-D float tensor")
    if data.shape[0] != len(ids):
        raise FeatureFileError(path, "corrupted", f"{data.shape[0]} rows for {len(ids)} IDs")
    if expected_dim is not None and len(ids) and data.shape[1] != expected_dim:
        raise FeatureFileError(path, "corrupted",
                               f"{data.shape[1]} columns, expected {expected_dim}")
    # In blocks: the check's boolean mask of a whole 13 GB file would not be small.
    rows = max(1, VALIDATE_BYTES // max(1, data.shape[1] * data.element_size()))
    if not all(bool(torch.isfinite(block).all()) for block in data.split(rows)):
        raise FeatureFileError(path, "corrupted", "non-finite values (NaN or inf)")


def read_features(path: str | os.PathLike, expected_dim: int | None = None,
                  validate: bool = True) -> FeatureTable:
    """Load and validate a feature file; raises FeatureFileError.

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


def quarantine(path: str | os.PathLike, reason: str, registry: str | os.PathLike,
               label: str = "corrupted") -> Path:
    """Move a file or directory that cannot be used aside as NAME.LABEL-TIME (never delete
    it: it may be a user's only clue) and record it in the registry. `label` says why:
    corrupted, or stale (partial results that belong to another run)."""
    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    aside = path.with_name(f"{path.name}.{label}-{stamp.replace(':', '')}")
    for again in itertools.count(1):  # set aside twice within a second: both are kept
        if not aside.exists():
            break
        aside = aside.with_name(f"{path.name}.{label}-{stamp.replace(':', '')}-{again}")
    if path.exists():
        os.replace(path, aside)
    with open(registry, "a") as handle:
        handle.write(f"{path}|{' '.join(reason.split())}|{stamp}\n")
    log.warning("moved %s %s aside to %s: %s", label, path, aside.name, reason)
    return aside


def read_trusted(result: Path, registry: Path, validate: bool = True) -> FeatureTable:
    """read_features for a consumer of a finished result (one with a `.done`).

    A corrupted result is moved aside and its `.done` removed before the error
    propagates (exit 75), so that the next run redoes that work.
    """
    try:
        return read_features(result, validate=validate)
    except FeatureFileError as exc:
        if exc.kind != "corrupted":
            raise
        aside = quarantine(result, exc.reason, registry)
        sentinel = layout.sentinel(result)
        sentinel.unlink(missing_ok=True)
        log.warning("removed %s: its result did not validate", sentinel)
        raise FeatureFileError(result, "corrupted", f"{exc.reason}; moved aside as {aside.name} "
                               f"and listed in {Path(registry).name}: rerun to compute it again"
                               ) from None


def validate_tree(directory: str | os.PathLike) -> list[tuple[Path, str, str]]:
    """(path, "valid" | "corrupted" | "incompatible", reason) for every .pt file below."""
    results = []
    for path in sorted(Path(directory).rglob("*.pt")):
        try:
            read_features(path)
            results.append((path, "valid", ""))
        except FeatureFileError as exc:
            results.append((path, exc.kind, exc.reason))
    return results
