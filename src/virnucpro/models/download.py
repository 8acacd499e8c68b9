"""Fetch the published models over HTTP(S) when the network allows; say where to put them
when not.

`virnucpro models fetch` fetches every published model into one directory and writes its
manifest (virnucpro.models.published); the workflow's download rules fetch one model where
the config says. Both stream each file to disk (a 5.7 GB model never sits in memory) under a
hidden name beside it, resume it there after a broken connection (an HTTP range request),
and publish it under its own name only when it is whole, so a file of that name is never a
partial download.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, build_opener

from virnucpro import __version__
from virnucpro.atomic import atomic_open, fsync_dir
from virnucpro.errors import ModelError, Problems, one_line
from virnucpro.models.published import (ADDRESSES, DNABERT_FILES, DNABERT_S_REPO, MANIFEST_NAME,
                                        catalogue, digest_problem, esm_address,
                                        manifest_document, manifest_entry, read_manifest,
                                        size_problem)
from virnucpro.progress import Progress

log = logging.getLogger("virnucpro")

BLOCK = 1 << 20  # bytes read and written at a time
TIMEOUT_S = 60  # a connection that sends nothing for this long is broken
# What a failed download raises (URLError and HTTPError are OSErrors too; the OSErrors of
# the local disk are not among these and are reported as such).
NETWORK_ERRORS = (URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


def fetch_file(url: str, dest: str | os.PathLike, what: str, fix: str) -> None:
    """Download `url` to `dest`, resuming an earlier partial download, with progress (done and
    total bytes, rate, ETA). A failure names `what`, the address and why, then `fix`."""
    dest = Path(dest)
    # Downloaded under a hidden sibling until whole, kept when the download stops so that
    # the next one resumes it.
    partial = dest.with_name(f".{dest.name}.partial")
    log.info("%s -> %s", url, dest)
    try:
        _download(url, partial, dest.name)
    except NETWORK_ERRORS as exc:
        raise ModelError(f"cannot download {what} from {url} ({type(exc).__name__}: "
                         f"{one_line(exc, 120)}); {fix}") from None
    os.replace(partial, dest)
    fsync_dir(dest.parent)


def _download(url: str, partial: Path, label: str) -> None:
    have = partial.stat().st_size if partial.is_file() else 0
    headers = {"User-Agent": f"virnucpro/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        # An opener per download: the proxy settings (https_proxy, no_proxy) of now.
        response = build_opener().open(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        # No bytes after the partial file's: the file served changed. Start over.
        partial.unlink()
        return _download(url, partial, label)
    with response:
        start, total = _extent(response, have)
        if start:
            log.info("%s: resuming after %.1f MB", label, start / 1e6)
        partial.parent.mkdir(parents=True, exist_ok=True)
        progress = Progress(label, None if total is None else total - start)
        done = start
        with open(partial, "ab" if start else "wb") as out:
            try:
                while block := response.read(BLOCK):
                    out.write(block)
                    done += len(block)
                    progress.update(done - start)
                out.flush()
                os.fsync(out.fileno())
            finally:
                progress.close()
    if total is not None and done != total:
        raise http.client.HTTPException(f"the connection closed after {done:,} of {total:,} "
                                        "bytes")


def _extent(response: http.client.HTTPResponse, have: int) -> tuple[int, int | None]:
    """Where the body starts in the file (0, or `have` when the server sends the rest) and
    the file's whole size (None when the server does not say)."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if not match or int(match[1]) != have:
            raise http.client.HTTPException(
                f"asked for the bytes from {have}, got {response.headers.get('Content-Range')}")
        return have, None if match[2] == "*" else int(match[2])
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None  # the whole file, anew


def fetch_published(directory: str | os.PathLike, chunk_sizes: Collection[int],
                    addresses: dict[str, str] = ADDRESSES) -> list[str]:
    """Fetch the published models a run for `chunk_sizes` needs into `directory`, from
    `addresses` (virnucpro.models.published.ADDRESSES: where each source serves its files),
    and write its manifest: each file's size, SHA-256 and address. The manifest is rewritten
    after each file, with the files still to fetch, so a fetch that stops keeps what it
    fetched and resumes the rest. A file the manifest already lists, from the same address,
    of its size and SHA-256, is not fetched again. A file that cannot be downloaded does not
    stop the others; each is one line of the Problems raised at the end. Returns the files'
    paths in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        earlier = read_manifest(directory)
    except ModelError as unreadable:  # its files are fetched again
        log.warning("%s; writing a new one", unreadable.one_line())
        earlier = None
    files = {name: entry for name, entry in (earlier or {"files": {}})["files"].items()
             if (directory / name).is_file()}
    wanted = catalogue(chunk_sizes)
    pending = [file.path for file in wanted]
    _write_manifest(directory, files, pending)
    failed = []
    for file in wanted:
        address = file.address(addresses)
        entry = files.get(file.path)
        if entry and entry.get("url") == address and not (
                size_problem(directory, file.path, entry)
                or digest_problem(directory, file.path, entry)):
            log.info("%s: fetched before, size and SHA-256 as recorded", directory / file.path)
        else:
            try:
                fetch_file(address, directory / file.path, file.path,
                           "run the same command again where the address can be reached "
                           "(what was downloaded is kept and resumed)")
            except ModelError as problem:  # one source down: the others' files still come
                failed.append(problem)
                continue
            files[file.path] = manifest_entry(directory, file, address)
        pending.remove(file.path)
        _write_manifest(directory, files, pending)
    if failed:
        raise Problems(failed)
    return [file.path for file in wanted]


def _write_manifest(directory: Path, files: dict, pending: list[str]) -> None:
    with atomic_open(directory / MANIFEST_NAME, "w") as handle:
        json.dump(manifest_document(files, pending), handle, indent=2)
        handle.write("\n")


def download_esm2(dest: str | os.PathLike) -> None:
    """Download the fair-esm ESM-2 model file named like `dest` (e.g. .../esm2_t36_3B_UR50D.pt);
    the contact regression is not needed for embeddings."""
    dest = Path(dest)
    name = dest.stem
    fetch_file(esm_address(name), dest, f"ESM-2 model file {name!r}",
               f"copy {name}.pt to {dest} on this machine, or set models.esm in your config to "
               "a local .pt file")


def download_dnabert_s(dest: str | os.PathLike) -> None:
    """Download the DNABERT-S files the loader reads (config, weights, tokenizer) into the
    directory `dest`."""
    for file in DNABERT_FILES:
        fetch_file(file.address(), Path(dest) / PurePosixPath(file.path).name, DNABERT_S_REPO,
                   "copy the model directory (config.json, model.safetensors or "
                   f"pytorch_model.bin, tokenizer.json) to {dest}, or set models.dnabert in "
                   "your config to that directory")
