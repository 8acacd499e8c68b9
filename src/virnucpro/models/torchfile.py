"""torch.load restricted to tensors (plus a few named classes), with one-line errors.

Model files come from the internet: `weights_only=True` means a file cannot run code when
it is loaded; any failure (truncated download, a different kind of file, a pickled object
that is not allowed) becomes a ModelError naming the file and what to do.

Files in torch's zip format are memory-mapped: their tensors are pages of the file (page
cache, which the kernel can reclaim), not a copy in the process's own memory, so a model
can be converted tensor by tensor onto its device without ever holding two copies.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from virnucpro.errors import ModelError, one_line
from virnucpro.models.formats import (damaged_torch_file, torch_zip_crc_problem,
                                      unreadable_torch_file)


def load_weights_only(path: Path, allowed: Sequence[type] = (), fix: str = "download it again",
                      ) -> Any:
    """torch.load(path, weights_only=True) admitting only tensors and the `allowed` classes;
    memory-mapped when the file is in torch's zip format (older files are read whole), whose
    checksums are verified first (torch does not: a flipped bit would change results)."""
    is_zip = zipfile.is_zipfile(path)
    if is_zip and (damage := torch_zip_crc_problem(path)):
        raise damaged_torch_file(path, damage)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            admitted = ", ".join(["tensors", *(f"{c.__module__}.{c.__name__}" for c in allowed)])
            raise ModelError(f"{path}: refused: the file holds a pickled object "
                             f"({refused.group(1)}) that is not allowed; only {admitted} are "
                             "loaded, so a model file cannot run code; check that this is the "
                             "right file") from None
        # torch's own text here advises weights_only=False: exactly what must not be done.
        raise ModelError(f"{path}: cannot read the file: it is damaged or not a PyTorch "
                         f"file: {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise unreadable_torch_file(path, one_line(exc), fix) from None


def place(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One weight on its device in its dtype: copied to the device first, then converted, so
    no converted copy is made in host memory on the way to a GPU (a tensor already right is
    returned as it is)."""
    return tensor.to(device).to(dtype)
