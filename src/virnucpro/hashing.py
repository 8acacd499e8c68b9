"""SHA-256 of files, streamed: the one digest by which files are identified (demo manifests,
provenance, converted classifiers, model identities, training data), so a hash written by
one is found by another."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from functools import lru_cache


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in blocks (models can be many GB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def short_sha256(path: str | os.PathLike) -> str:
    """The first 16 hex digits of file_sha256, as model identities carry them; computed once
    per version of the file (its size and modification time), since a job asks for each
    identity more than once and a 3B model takes seconds to hash."""
    stat = os.stat(path)
    return _short(os.fspath(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _short(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)[:16]


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """One digest of several files, in order: the SHA-256 of their SHA-256 digests."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()
