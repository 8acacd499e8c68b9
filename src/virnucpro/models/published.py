"""The published models: where each file is served, and a copy checked against the manifest
of its fetch.

Compute nodes usually have no network, so the models are fetched on one machine
(`virnucpro models fetch`, virnucpro.models.download), copied, and checked where they are
used (`virnucpro models verify`, and pre-flight before any job). The fetch writes
`manifest.json` beside the files: each file's size, SHA-256 and address. A copy is then
checked offline against it.

Every address a message names comes from ADDRESSES and CATALOGUE, the one place that says
where the published files are. This module reads files only (no network, no torch), so
pre-flight can import it while Snakemake parses the workflow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from virnucpro import __version__
from virnucpro.errors import ModelError, Problems, one_line
from virnucpro.hashing import file_sha256
from virnucpro.models.formats import CONFIG_NAME, PYTORCH_BIN_NAME, TOKENIZER_NAME

# Where each project serves its files, by source. A file's address is its source's address
# followed by its name. The VirNucPro classifiers are ordinary Git blobs (the repository has
# no .gitattributes: they are not Git LFS pointers), served as they are by
# raw.githubusercontent.com, here at the commit the workflow was checked against.
DNABERT_S_REPO = "zhihan1996/DNABERT-S"  # its name on the Hugging Face hub
DNABERT_S_PAGE = f"https://huggingface.co/{DNABERT_S_REPO}"
ADDRESSES = {
    "fair-esm": "https://dl.fbaipublicfiles.com/fair-esm/models/",
    "DNABERT-S": f"{DNABERT_S_PAGE}/resolve/main/",
    "VirNucPro": "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/"
                 "0f93f2755a7ea1acd3ff1bcf182892f960ef3326/",
}
ESM_FILE = "esm2_t36_3B_UR50D.pt"
DNABERT_DIR = "DNABERT-S"
MANIFEST_NAME = "manifest.json"
WRITTEN_BY = "virnucpro models fetch"  # marks a manifest this package wrote


@dataclass(frozen=True)
class PublishedFile:
    """A published file: `path` in the models directory (its last part is its name at the
    source), `source` a key of ADDRESSES, `chunk_size` the chunk size a classifier is for
    (None for the embedding models, which every run needs)."""

    path: str
    source: str
    chunk_size: int | None = None

    def address(self, addresses: dict[str, str] = ADDRESSES) -> str:
        return addresses[self.source] + PurePosixPath(self.path).name


# What a run needs: ESM-2 3B without its contact regression (embeddings do not use it), the
# DNABERT-S files the loader reads (the hub's remote code is not run), the two classifiers.
CATALOGUE = (
    PublishedFile(ESM_FILE, "fair-esm"),
    *(PublishedFile(f"{DNABERT_DIR}/{name}", "DNABERT-S")
      for name in (CONFIG_NAME, PYTORCH_BIN_NAME, TOKENIZER_NAME)),
    *(PublishedFile(f"{size}_model.pth", "VirNucPro", size) for size in (300, 500)),
)
DNABERT_FILES = tuple(file for file in CATALOGUE if file.source == "DNABERT-S")


def catalogue(chunk_sizes: Collection[int]) -> list[PublishedFile]:
    """The published files a run for these chunk sizes needs."""
    return [file for file in CATALOGUE if file.chunk_size in (None, *chunk_sizes)]


def esm_address(name: str) -> str:
    """Where fair-esm serves the ESM-2 model file NAME.pt (any ESM-2 model, not only 3B)."""
    return f"{ADDRESSES['fair-esm']}{name}.pt"


def classifier_address(chunk_size: int) -> str:
    """Where the published classifier for `chunk_size` is served."""
    return next(file.address() for file in CATALOGUE if file.chunk_size == chunk_size)


# --------------------------------------------------------------------------- the manifest


def manifest_entry(directory: Path, file: PublishedFile, address: str) -> dict[str, Any]:
    """What the manifest records of a fetched file: its size, SHA-256 and address."""
    path = directory / file.path
    return {"size": path.stat().st_size, "sha256": file_sha256(path), "url": address}


def manifest_document(files: dict[str, dict[str, Any]], pending: list[str]) -> dict[str, Any]:
    """The manifest: the files fetched so far, and those of this fetch still `pending` (a
    fetch that stopped leaves them there; a copy of it is not a complete set of models)."""
    return {"written_by": WRITTEN_BY, "virnucpro_version": __version__,
            "files": dict(sorted(files.items())), "pending": pending}


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest `models fetch` wrote in `directory`; None when there is none, or the
    manifest.json there is another program's. A manifest that cannot be read is a problem:
    the files it vouches for would go unchecked."""
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise unreadable_manifest(path, one_line(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("written_by") != WRITTEN_BY:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str) for entry in files.values()):
        raise unreadable_manifest(path, "its 'files' are not {name: {size, sha256, url}}")
    if not isinstance(manifest.setdefault("pending", []), list):
        raise unreadable_manifest(path, "its 'pending' is not a list of names")
    return manifest


def unreadable_manifest(path: Path, reason: str) -> ModelError:
    return ModelError(f"{path}: unreadable manifest ({reason}); copy it again with the models, "
                      f"or fetch them again: virnucpro models fetch {path.parent}")


def _again(directory: Path) -> str:
    return (f"copy it again from the machine that fetched it, or fetch it again: virnucpro "
            f"models fetch {directory}")


def size_problem(directory: Path, name: str, entry: dict[str, Any]) -> ModelError | None:
    """A file the manifest lists that is not there, or not of the size it records."""
    path = directory / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ModelError(f"{path}: not there, though {MANIFEST_NAME} lists it "
                          f"({entry['size']:,} bytes); {_again(directory)}")
    if size != entry["size"]:
        return ModelError(f"{path}: {size:,} bytes, {MANIFEST_NAME} says {entry['size']:,}: the "
                          f"copy is incomplete or another file; {_again(directory)}")
    return None


def digest_problem(directory: Path, name: str, entry: dict[str, Any]) -> ModelError | None:
    """A file whose bytes are not those fetched: its SHA-256 differs from the manifest's."""
    path = directory / name
    if file_sha256(path) == entry["sha256"]:
        return None
    return ModelError(f"{path}: its SHA-256 is not the one {MANIFEST_NAME} records; its bytes "
                      f"changed since it was fetched (a bad copy or disk); {_again(directory)}")


def verify(directory: str | os.PathLike) -> int:
    """Check a models directory against its manifest, reading every byte: every file it lists
    is there, of its size and SHA-256, and the fetch finished. Files it does not list are no
    concern of it. Returns how many files were checked; raises Problems (ModelError, exit
    status 66), one line per problem."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ModelError(f"{directory}: no {MANIFEST_NAME} written by `{WRITTEN_BY}`; fetch the "
                         f"models into it (virnucpro models fetch {directory}), then copy the "
                         "whole directory")
    problems = []
    if manifest["pending"]:
        problems.append(ModelError(
            f"{directory / MANIFEST_NAME}: the fetch did not finish "
            f"({', '.join(map(str, manifest['pending']))} not fetched); run virnucpro models "
            f"fetch {directory} again, then copy the directory again"))
    for name, entry in manifest["files"].items():
        problem = size_problem(directory, name, entry) or digest_problem(directory, name, entry)
        if problem:
            problems.append(problem)
    if problems:
        raise Problems(problems)
    return len(manifest["files"])


def manifest_entries(model: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The manifest entries of a configured model (a file, or a directory and the files in
    it) when the directory that holds it has a manifest `models fetch` wrote; else none."""
    directory = model.parent
    manifest = read_manifest(directory)
    if manifest is None:
        return directory, {}
    name = model.name
    return directory, {path: entry for path, entry in manifest["files"].items()
                       if path == name or path.startswith(f"{name}/")}
