"""Fetch the published models when the network allows; say where to put them when not."""

from __future__ import annotations

import os
from pathlib import Path

from virnucpro.errors import ModelError

ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"


def download_esm2(dest: str | os.PathLike) -> None:
    """Download the fair-esm ESM-2 model file named like `dest` (e.g. .../esm2_t36_3B_UR50D.pt);
    the contact regression is not needed for embeddings."""
    import torch.hub

    dest = Path(dest)
    name = dest.stem
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(ESM_URL.format(name=name), str(dest), progress=False)
    except Exception as exc:  # no network, proxy, HTTP error: all end the same way
        dest.unlink(missing_ok=True)
        raise ModelError(
            f"cannot download ESM-2 model file {name!r} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); copy {name}.pt to {dest} on this machine, "
            "or set models.esm in your config to a local .pt file") from None


DNABERT_S_REPO = "zhihan1996/DNABERT-S"


def download_dnabert_s(dest: str | os.PathLike) -> None:
    """Download the DNABERT-S model directory from the Hugging Face hub to `dest`."""
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(DNABERT_S_REPO, local_dir=str(dest))
    except Exception as exc:  # no network, proxy, HTTP error: all end the same way
        raise ModelError(
            f"cannot download {DNABERT_S_REPO} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); copy the model directory (config.json, "
            f"model.safetensors or pytorch_model.bin, tokenizer.json) to {dest}, or set "
            "models.dnabert in your config to that directory") from None
