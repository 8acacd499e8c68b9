"""Small random-init models in the published models' file formats, for demos and tests.

The real ESM-2 3B and DNABERT-S weights cannot be fetched here; these models go through the
very same loading and embedding code. Their features mean nothing biologically.

Layout of the directory:
    esm2_demo_t2_d32.pt   fair-esm checkpoint format (the name must start with 'esm2')
    dnabert2_demo/        DNABERT-S directory format (config.json, model.safetensors,
                          tokenizer.json with a BPE vocabulary trained on random DNA)
    models.json           what they are, and the sha256 of every file; written last
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from virnucpro.atomic import atomic_open
from virnucpro.models.dnabert2 import write_demo_dnabert2
from virnucpro.models.esm2 import write_demo_esm2

MANIFEST = "models.json"
ESM_SHAPE = {"layers": 2, "embed_dim": 32, "heads": 4}
DNABERT_SHAPE = {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64, "vocab_size": 256}
ESM_FILE = f"esm2_demo_t{ESM_SHAPE['layers']}_d{ESM_SHAPE['embed_dim']}.pt"
DNABERT_DIR = "dnabert2_demo"


def _describe(seed: int) -> dict[str, Any]:
    return {"description": "random-init demo models in the ESM-2 and DNABERT-S file formats; "
                           "not the published weights, so their features mean nothing",
            "seed": seed,
            "esm": {"path": ESM_FILE, **ESM_SHAPE},
            "dnabert": {"path": DNABERT_DIR, **DNABERT_SHAPE},
            "feature_dim": DNABERT_SHAPE["hidden"] + ESM_SHAPE["embed_dim"]}


def _file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every model file, by path relative to `directory`."""
    files = [directory / ESM_FILE, *sorted((directory / DNABERT_DIR).iterdir())]
    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in files if path.is_file()}


def _is_complete(directory: Path, described: dict[str, Any]) -> bool:
    """True when models.json describes these models and every file it lists is intact."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return ({k: v for k, v in manifest.items() if k != "files"} == described
                and manifest["files"] == _file_hashes(directory))
    except (OSError, ValueError, KeyError):
        return False


def write_demo_models(directory: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write (or keep, when already complete) the demo models; return their paths.

    Keys: 'esm' (checkpoint file), 'dnabert' (model directory), 'manifest' (models.json).
    The same seed gives byte-identical files.
    """
    directory = Path(directory)
    paths = {"esm": directory / ESM_FILE, "dnabert": directory / DNABERT_DIR,
             "manifest": directory / MANIFEST}
    described = _describe(seed)
    if _is_complete(directory, described):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    write_demo_esm2(paths["esm"], seed=seed, **ESM_SHAPE)
    write_demo_dnabert2(paths["dnabert"], seed=seed, **DNABERT_SHAPE)
    with atomic_open(paths["manifest"], "w") as handle:
        json.dump({**described, "files": _file_hashes(directory)}, handle, indent=2)
        handle.write("\n")
    return paths
