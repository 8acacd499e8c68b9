"""Small random-init models in the published models' file formats, for demos and tests.

The real ESM-2 3B and DNABERT-S weights cannot be fetched here; these models go through the
very same loading and embedding code. Their features mean nothing biologically.

Layout of the directory:
    esm2_demo_t2_d32.pt   fair-esm checkpoint format (the name must start with 'esm2')
    dnabert2_demo/        DNABERT-S directory format (config.json, model.safetensors,
                          tokenizer.json with a BPE vocabulary trained on random DNA)
    classifier.pth        the published classifiers' format: a whole pickled MLPClassifier
                          module, its class named __main__.MLPClassifier; it takes the demo
                          embeddings (DNABERT-S width + ESM-2 width features)
    models.json           what they are, and the sha256 of every file; written last

The manifest's hashes are how a run knows it used demo models (virnucpro.provenance): a model
file whose SHA-256 a demo manifest lists has random weights.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from virnucpro.atomic import atomic_open
from virnucpro.hashing import file_sha256
from virnucpro.models.classifier import MLPClassifier
from virnucpro.models.dnabert2 import write_demo_dnabert2
from virnucpro.models.esm2 import write_demo_esm2

MANIFEST = "models.json"
ESM_SHAPE = {"layers": 2, "embed_dim": 32, "heads": 4}
DNABERT_SHAPE = {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64, "vocab_size": 256}
ESM_FILE = f"esm2_demo_t{ESM_SHAPE['layers']}_d{ESM_SHAPE['embed_dim']}.pt"
DNABERT_DIR = "dnabert2_demo"
FEATURE_DIM = DNABERT_SHAPE["hidden"] + ESM_SHAPE["embed_dim"]  # DNABERT-S then ESM-2 features
CLASSIFIER_FILE = "classifier.pth"
CLASSIFIER_SHAPE = {"input_dim": FEATURE_DIM, "hidden_dim": 512}


class _MainScriptPickler(pickle._Pickler):
    """Names MLPClassifier `__main__.MLPClassifier`, as the original's training script did.

    That script ran as a program, so its class lived in `__main__`. The pure-Python pickler is
    used because only it lets one global be written under another name.
    """

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is not MLPClassifier:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + b"__main__\nMLPClassifier\n")
        self.memoize(obj)


class _AsMainScript:
    """The `pickle_module` torch.save is given: only its Pickler (and name) are used."""

    Pickler = _MainScriptPickler


def write_demo_classifier(path: str | os.PathLike, input_dim: int, seed: int = 0,
                          hidden_dim: int = 512) -> Path:
    """Write a random-init classifier as the original saves one: torch.save of the whole module.

    Batch norm's affine weights and running statistics are randomised too, so every number
    matters. The same arguments give the same file.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPClassifier(input_dim, hidden_dim)
        with torch.no_grad():
            model.bn1.weight.uniform_(0.5, 1.5)
            model.bn1.bias.normal_(0.0, 0.1)
            model.bn1.running_mean.normal_(0.0, 0.1)
            model.bn1.running_var.uniform_(0.5, 1.5)
            model.bn1.num_batches_tracked.fill_(1000)
    path = Path(path)
    with atomic_open(path) as handle:
        torch.save(model, handle, pickle_module=_AsMainScript)
    return path


DESCRIPTION = ("random-init demo models in the ESM-2, DNABERT-S and VirNucPro classifier file "
               "formats; not the published weights, so their features and scores mean nothing")


def _describe(seed: int) -> dict[str, Any]:
    return {"description": DESCRIPTION,
            "seed": seed,
            "esm": {"path": ESM_FILE, **ESM_SHAPE},
            "dnabert": {"path": DNABERT_DIR, **DNABERT_SHAPE},
            "classifier": {"path": CLASSIFIER_FILE, **CLASSIFIER_SHAPE},
            "feature_dim": FEATURE_DIM}


def _file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every model file, by path relative to `directory`."""
    files = [directory / ESM_FILE, *sorted((directory / DNABERT_DIR).iterdir()),
             directory / CLASSIFIER_FILE]
    return {path.relative_to(directory).as_posix(): file_sha256(path)
            for path in files if path.is_file()}


def manifest_hashes(directory: str | os.PathLike) -> set[str]:
    """The SHA-256 of every file the demo manifest in `directory` lists; empty without one.
    A models.json of any other kind (not our description) lists nothing."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
        if manifest["description"] != DESCRIPTION:
            return set()
        return {str(digest) for digest in manifest["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


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

    Keys: 'esm' (checkpoint file), 'dnabert' (model directory), 'classifier' (.pth file),
    'manifest' (models.json).
    The same seed gives byte-identical files.
    """
    directory = Path(directory)
    paths = {"esm": directory / ESM_FILE, "dnabert": directory / DNABERT_DIR,
             "classifier": directory / CLASSIFIER_FILE, "manifest": directory / MANIFEST}
    described = _describe(seed)
    if _is_complete(directory, described):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    write_demo_esm2(paths["esm"], seed=seed, **ESM_SHAPE)
    write_demo_dnabert2(paths["dnabert"], seed=seed, **DNABERT_SHAPE)
    write_demo_classifier(paths["classifier"], seed=seed, **CLASSIFIER_SHAPE)
    with atomic_open(paths["manifest"], "w") as handle:
        json.dump({**described, "files": _file_hashes(directory)}, handle, indent=2)
        handle.write("\n")
    return paths
