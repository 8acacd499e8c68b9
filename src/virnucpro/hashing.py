"""SHA-256 of files, streamed: the one digest by which model files are identified (demo
manifests, provenance, converted classifiers), so hashes written by one are found by another."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in blocks (models can be many GB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
