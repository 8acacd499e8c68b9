"""Model files told apart by their bytes, without importing torch, and the messages for
files that are not what they should be.

Pre-flight (virnucpro.preflight) checks every model file before a run starts, while
Snakemake parses the workflow, where importing torch would add seconds to every command; the
loaders find the same faults when they read the files. Both word them here, so a user meets
one message for one fault wherever it is found. These checks read a file's structure (a zip
archive's directory, a safetensors header), never its weights: a damaged weight or a file of
the wrong architecture is found only when a job loads it.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

from virnucpro.errors import ModelError, one_line

# A DNABERT-S (Hugging Face) model directory holds these.
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_BIN_NAME = "pytorch_model.bin"
TOKENIZER_NAME = "tokenizer.json"
CONFIG_NAME = "config.json"

# torch.save's legacy (pre-1.6, not zip) format opens with a pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a classifier file: `model.safetensors` -> `model.safetensors.json`."""
    return Path(f"{path}.json")


def esm_is_name(location: str | os.PathLike) -> bool:
    """Whether models.esm (or --esm-model) names a fair-esm model rather than a file."""
    text = os.fspath(location)
    return not (isinstance(location, Path) or text.endswith(".pt") or "/" in text)


def esm_model_location(location: str | os.PathLike) -> Path:
    """Where an ESM-2 model file is: a path as given, or for a fair-esm model name the file
    fair-esm downloads to, $TORCH_HOME/hub/checkpoints/NAME.pt (torch.hub.get_dir()'s rule,
    here without importing torch, for the workflow's rules)."""
    if not esm_is_name(location):
        return Path(location).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    torch_home = os.path.expanduser(os.environ.get("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(torch_home) / "hub" / "checkpoints" / f"{os.fspath(location)}.pt"


# --------------------------------------------------------------------------- messages


def unreadable_torch_file(path: str | os.PathLike, reason: str, fix: str) -> ModelError:
    return ModelError(f"{path}: cannot read the file ({reason}); it is truncated or not a "
                      f"PyTorch file: {fix}")


def not_a_torch_archive(path: str | os.PathLike, reason: str) -> ModelError:
    """The classifier reader takes torch's zip format only (its safe unpickler reads the
    archive's entries)."""
    return ModelError(f"{path}: not a PyTorch zip archive ({reason}); only files written by "
                      "torch.save (torch >= 1.6) or .safetensors files are read")


def unreadable_classifier(path: str | os.PathLike, reason: str) -> ModelError:
    return ModelError(f"{path}: cannot read the classifier ({reason}); the file is damaged "
                      "or not a .safetensors file")


def unreadable_weights(path: str | os.PathLike, reason: str) -> ModelError:
    return ModelError(f"{path}: cannot read the weights ({reason}); the file is truncated or "
                      "not a safetensors file: download it again")


def damaged_torch_file(path: str | os.PathLike, reason: str) -> ModelError:
    """Bytes that changed after the file was written (a bad copy, download or disk), found by
    the checksums torch's zip format keeps: loading would not notice, and a flipped bit in a
    weight changes results silently."""
    return ModelError(f"{path}: the file is damaged ({reason}); its bytes changed since it "
                      "was written (a bad copy, download or disk): download it again")


def unreadable_sidecar(sidecar: str | os.PathLike, reason: str) -> ModelError:
    return ModelError(f"{sidecar}: unreadable classifier description ({reason}); delete it or "
                      "convert the model again")


def unreadable_dnabert_config(path: str | os.PathLike, reason: str) -> ModelError:
    return ModelError(f"{path}: unreadable config ({reason}); download the model directory "
                      "again")


def missing_dnabert_file(model_dir: str | os.PathLike, name: str) -> ModelError:
    """A DNABERT-S directory without its config, weights (`name` None) or tokenizer."""
    what = name or f"model weights ({SAFETENSORS_NAME} or {PYTORCH_BIN_NAME})"
    complete = "" if name == CONFIG_NAME else "complete "
    return ModelError(f"{model_dir}: no {what}; point to a {complete}DNABERT-2/DNABERT-S model "
                      "directory")


def esm_name_problem(path: Path) -> ModelError | None:
    """fair-esm tells an ESM-2 model file's architecture by its file name."""
    if path.stem.startswith("esm2"):
        return None
    return ModelError(f"{path}: not an ESM-2 model file: the file name must start with 'esm2' "
                      "(e.g. esm2_t36_3B_UR50D.pt), as fair-esm tells the architecture by name")


# --------------------------------------------------------------------------- checks


def torch_zip_problem(path: Path) -> str | None:
    """Why `path` is not a torch.save zip archive (one data.pkl in a top folder), or None.
    Reads the archive's directory, which sits at the end: a truncated file has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return one_line(exc)
    if sum(name.endswith("/data.pkl") and name.count("/") == 1 for name in names) != 1:
        return "no single data.pkl in the zip archive"
    return None


def torch_zip_crc_problem(path: Path) -> str | None:
    """Why the entries of a zip archive do not match the CRC-32 checksums it stores for them,
    or None. Reads every byte (about 2.5 GB/s from the page cache: 2-3 s for ESM-2 3B); torch
    itself never checks them when it loads a file."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        return one_line(exc)
    return f"the CRC-32 checksum of its entry {bad} does not match" if bad else None


def torch_file_problem(path: Path) -> str | None:
    """Why `path` is neither a torch zip archive nor a legacy torch file, or None."""
    problem = torch_zip_problem(path)
    if problem is None:
        return None
    try:
        with open(path, "rb") as handle:
            legacy = handle.read(2 + len(_LEGACY_TORCH_MAGIC))[2:] == _LEGACY_TORCH_MAGIC
    except OSError as exc:
        return one_line(exc)
    return None if legacy else problem


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (an 8-byte header length, a JSON header, the
    tensors' bytes the header places), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8).ljust(8, b"\0"))
            if size < 8 or not 0 < length <= min(size - 8, _MAX_SAFETENSORS_HEADER):
                return f"no safetensors header in its {size} bytes"
            header = json.loads(handle.read(length))
        end = max((entry["data_offsets"][1] for name, entry in header.items()
                   if name != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        return f"malformed safetensors header ({one_line(exc)})"
    if 8 + length + end > size:
        return f"it has {size} bytes, its header places tensors up to byte {8 + length + end}"
    return None


def dnabert_problems(model_dir: Path) -> list[ModelError]:
    """What is missing or unreadable in a DNABERT-S directory: its config (JSON), weights
    (safetensors or torch) and tokenizer."""
    problems = []
    config = model_dir / CONFIG_NAME
    if not config.is_file():
        problems.append(missing_dnabert_file(model_dir, CONFIG_NAME))
    else:
        try:
            json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            problems.append(unreadable_dnabert_config(config, one_line(exc)))
    weights = dnabert_weights(model_dir)
    if weights is None:
        problems.append(missing_dnabert_file(model_dir, None))
    elif weights.name == SAFETENSORS_NAME:
        problem = safetensors_problem(weights)
        if problem:
            problems.append(unreadable_weights(weights, problem))
    else:
        problem = torch_file_problem(weights)
        if problem:
            problems.append(unreadable_torch_file(weights, problem, "download it again"))
    if not (model_dir / TOKENIZER_NAME).is_file():
        problems.append(missing_dnabert_file(model_dir, TOKENIZER_NAME))
    return problems


def dnabert_weights(model_dir: Path) -> Path | None:
    """The weights file of a DNABERT-S directory (safetensors preferred), or None."""
    for name in (SAFETENSORS_NAME, PYTORCH_BIN_NAME):
        if (model_dir / name).is_file():
            return model_dir / name
    return None
