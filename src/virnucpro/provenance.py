"""A run's provenance, written once per run ({outdir}/provenance.json) and shown by every report
page: the virnucpro version, the date, each model with the SHA-256 of its files, the settings,
and whether demo models (random weights) were used. Multi-GB models are hashed here once,
not in every sample's job.

Demo models are recognised by their hashes: a model is a demo model when the SHA-256 of one of
its files is listed by a demo manifest (the models.json that `write_demo_models` writes last,
with the hash of every file it wrote, and whose description is the demo models'). The manifests
consulted are those beside any of the run's models (in a model file's directory, or beside a
model directory) and the one in each demo directory the caller names (the workflow's
resources/demo-models). Names and paths do not matter, so a renamed or moved demo model is
still recognised while such a manifest exists; a real model never matches, since a manifest
lists the hashes of random weights.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from virnucpro import __version__
from virnucpro.atomic import atomic_open
from virnucpro.demo_models import manifest_hashes
from virnucpro.hashing import file_sha256

MODEL_ROLES = {"esm": "ESM-2 (protein embedding)", "dnabert": "DNABERT-S (DNA embedding)",
               "classifier": "VirNucPro classifier"}


def model_files(path: str | os.PathLike) -> list[Path]:
    """A model's files: the file itself, or a model directory's regular files (not hidden,
    not in subdirectories), by name."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def describe_model(path: str | os.PathLike, demo_hashes: set[str]) -> dict[str, Any]:
    """The model's path, the SHA-256 of each of its files (by name) and whether it is a demo
    model (a file's hash in `demo_hashes`)."""
    files = {p.name: file_sha256(p) for p in model_files(path)}
    return {"path": os.fspath(path), "files": files,
            "demo": not demo_hashes.isdisjoint(files.values())}


def write_provenance(models: dict[str, str | os.PathLike], settings: dict[str, Any],
                     out: str | os.PathLike, demo_dirs: Iterable[str | os.PathLike] = ()
                     ) -> dict[str, Any]:
    """Write provenance.json for models {role: path} (roles as MODEL_ROLES) and the run's
    settings; `demo_dirs`: directories whose demo manifest is consulted besides those beside
    the models. Returns what was written."""
    manifests = {Path(path).parent for path in models.values()} | set(map(Path, demo_dirs))
    demo_hashes = set().union(*map(manifest_hashes, manifests))
    described = {role: describe_model(path, demo_hashes) for role, path in models.items()}
    record = {"virnucpro_version": __version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "demo_models": any(model["demo"] for model in described.values()),
              "models": described, "settings": settings}
    with atomic_open(out, "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    return record
