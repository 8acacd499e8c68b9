"""The published models fetched and verified (virnucpro.models.published and .download).

The real addresses cannot be reached here, so the fetch runs against a local HTTP server
(a real socket, real HTTP, range requests and a redirect as the hub answers) serving small
models made here in the published files' formats, with the addresses substituted; the real
addresses are checked against what the messages and the README show."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import flip_a_stored_bit, run_cli
from virnucpro.demo_models import FEATURE_DIM, write_demo_classifier, write_demo_dnabert2, \
    write_demo_esm2
from virnucpro.errors import ModelError, Problems
from virnucpro.models.classifier import load_classifier
from virnucpro.models.dnabert2 import load_dnabert2
from virnucpro.models.download import download_dnabert_s, download_esm2, fetch_published
from virnucpro.models.esm2 import load_esm2, model_file
from virnucpro.models.published import ADDRESSES, CATALOGUE, verify
from virnucpro.preflight import check
from workflow_helpers import ROOT

SERVED = {  # the path of each published file on the local server, by its source
    "fair-esm": "esm/", "DNABERT-S": "hub/", "VirNucPro": "github/"}


class Server(ThreadingHTTPServer):
    """Serves files under `root` with range requests (unless `ranges` is off), answers
    /hub/NAME with a redirect to /cdn/NAME (as the Hugging Face hub does), cuts the body of
    a path in `cut` after that many bytes once, and records each request."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.ranges = True
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []

    @property
    def addresses(self) -> dict[str, str]:
        return {source: f"http://127.0.0.1:{self.server_port}/{path}"
                for source, path in SERVED.items()}


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/hub/"):
            self.send_response(302)
            self.send_header("Location", "/cdn/" + self.path.removeprefix("/hub/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(asked[1]) if asked and self.server.ranges else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:start + self.server.cut.pop(self.path, len(data))])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    """Small models in the published files' formats, where the local server serves them:
    a fair-esm ESM-2 file, DNABERT-S's config, torch-format weights and tokenizer, and two
    classifiers saved as the original saves them (the whole module)."""
    root = tmp_path_factory.mktemp("served")
    write_demo_esm2(root / "esm" / "esm2_t36_3B_UR50D.pt")
    made = write_demo_dnabert2(tmp_path_factory.mktemp("dnabert"))
    (root / "cdn").mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(made / name, root / "cdn" / name)
    torch.save(load_file(made / "model.safetensors"), root / "cdn" / "pytorch_model.bin")
    (root / "github").mkdir()
    for seed, size in enumerate((300, 500)):
        write_demo_classifier(root / "github" / f"{size}_model.pth", FEATURE_DIM, seed=seed)
    served = {"esm2_t36_3B_UR50D.pt": root / "esm" / "esm2_t36_3B_UR50D.pt",
              **{f"DNABERT-S/{name}": root / "cdn" / name
                 for name in ("config.json", "pytorch_model.bin", "tokenizer.json")},
              **{f"{size}_model.pth": root / "github" / f"{size}_model.pth"
                 for size in (300, 500)}}
    assert sorted(served) == sorted(file.path for file in CATALOGUE)
    return served


@pytest.fixture(scope="module")
def server(published) -> Server:
    root = next(iter(published.values())).parent.parent
    server = Server(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fetched(server, tmp_path_factory) -> Path:
    """Every published model fetched from the local server into one directory."""
    directory = tmp_path_factory.mktemp("fetched") / "models"
    assert fetch_published(directory, (300, 500), server.addresses) == [
        file.path for file in CATALOGUE]
    return directory


def copy_of(fetched: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fetched, tmp_path / "models"))


def test_fetch_writes_the_files_and_a_manifest_of_their_sha256(fetched, published, server):
    manifest = json.loads((fetched / "manifest.json").read_text())
    assert manifest["written_by"] == "virnucpro models fetch" and manifest["pending"] == []
    assert sorted(manifest["files"]) == sorted(published)
    for name, source in published.items():
        assert (fetched / name).read_bytes() == source.read_bytes()
        entry = manifest["files"][name]
        file = next(file for file in CATALOGUE if file.path == name)
        assert entry == {"size": source.stat().st_size,
                         "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                         "url": file.address(server.addresses)}
    assert not list(fetched.rglob("*.partial"))  # no download left behind
    assert verify(fetched) == 6


def test_the_fetched_directory_is_what_the_loaders_and_preflight_read(fetched, tmp_path):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    models = {"esm": str(fetched / "esm2_t36_3B_UR50D.pt"), "dnabert": str(fetched / "DNABERT-S"),
              "classifier": str(fetched / "500_model.pth")}
    assert check({"s": [str(tmp_path / "r.fa")]}, {}, models, 500, {}) == []
    assert load_esm2(models["esm"]).embed_dim == 32
    assert load_dnabert2(models["dnabert"]).weights_path.name == "pytorch_model.bin"
    assert load_classifier(models["classifier"]).input_dim == FEATURE_DIM


def test_fetch_shows_progress_with_the_total(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="virnucpro")
    fetch_published(tmp_path / "models", (500,), server.addresses)
    done = [record.getMessage() for record in caplog.records if " done after " in
            record.getMessage()]
    assert [line.split(" done after ")[0] for line in done] == [
        "esm2_t36_3B_UR50D.pt", "config.json", "pytorch_model.bin", "tokenizer.json",
        "500_model.pth"]
    assert all(re.search(r": [\d.]+ of [\d.]+ MB \(100%\), [\d.,]+ MB/s$", line) for line in done)


def test_a_broken_download_is_resumed_where_it_stopped(server, published, tmp_path):
    directory = tmp_path / "models"
    esm_path = "/esm/esm2_t36_3B_UR50D.pt"
    server.cut[esm_path] = 5000  # the connection drops after 5,000 bytes
    with pytest.raises(Problems) as stopped:
        fetch_published(directory, (500,), server.addresses)
    assert stopped.value.exit_code == 66
    address = server.addresses["fair-esm"] + "esm2_t36_3B_UR50D.pt"
    size = published["esm2_t36_3B_UR50D.pt"].stat().st_size
    assert stopped.value.lines() == [
        f"cannot download esm2_t36_3B_UR50D.pt from {address} (HTTPException: the connection "
        f"closed after 5,000 of {size:,} bytes); run the same command again where the address "
        "can be reached (what was downloaded is kept and resumed)"]
    assert not (directory / "esm2_t36_3B_UR50D.pt").exists()  # no partial file by that name
    assert (directory / ".esm2_t36_3B_UR50D.pt.partial").stat().st_size == 5000
    with pytest.raises(Problems) as unfinished:  # a copy of it now is not a set of models
        verify(directory)
    assert unfinished.value.lines() == [
        f"{directory}/manifest.json: the fetch did not finish (esm2_t36_3B_UR50D.pt not "
        f"fetched); run virnucpro models fetch {directory} again, then copy the directory "
        "again"]
    server.requests.clear()
    fetch_published(directory, (500,), server.addresses)
    assert server.requests == [(esm_path, "bytes=5000-")]  # the rest of it, nothing else
    assert (directory / "esm2_t36_3B_UR50D.pt").read_bytes() == \
        published["esm2_t36_3B_UR50D.pt"].read_bytes()
    assert verify(directory) == 5


def test_a_server_that_ignores_ranges_sends_the_file_anew(server, published, tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / ".500_model.pth.partial").write_bytes(b"stale bytes of an earlier download")
    server.ranges = False
    try:
        fetch_published(directory, (500,), server.addresses)
    finally:
        server.ranges = True
    assert (directory / "500_model.pth").read_bytes() == published["500_model.pth"].read_bytes()
    assert verify(directory) == 5


def test_a_file_the_manifest_vouches_for_is_not_fetched_again(fetched, server, tmp_path):
    directory = copy_of(fetched, tmp_path)
    (directory / "300_model.pth").write_bytes(b"not what was fetched")
    server.requests.clear()
    fetch_published(directory, (300, 500), server.addresses)
    assert server.requests == [("/github/300_model.pth", None)]
    assert verify(directory) == 6


def test_verify_gives_one_line_per_damaged_file(fetched, tmp_path):
    directory = copy_of(fetched, tmp_path)
    (directory / "notes.txt").write_text("a file the manifest does not list")
    sound = run_cli("models", "verify", directory)
    assert sound.returncode == 0, sound.stderr
    assert sound.stdout == f"6 files as {directory}/manifest.json records them (size and " \
                           "SHA-256)\n"
    flip_a_stored_bit(directory / "500_model.pth")  # same size, other bytes
    weights = directory / "DNABERT-S" / "pytorch_model.bin"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:size // 2])  # a copy cut short
    (directory / "DNABERT-S" / "tokenizer.json").unlink()
    tokenizer_size = (fetched / "DNABERT-S" / "tokenizer.json").stat().st_size
    again = f"copy it again from the machine that fetched it, or fetch it again: virnucpro " \
            f"models fetch {directory}"
    proc = run_cli("models", "verify", directory)
    assert proc.returncode == 66 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"virnucpro: error: {directory}/500_model.pth: its SHA-256 is not the one manifest.json "
        f"records; its bytes changed since it was fetched (a bad copy or disk); {again}",
        f"virnucpro: error: {weights}: {size // 2:,} bytes, manifest.json says {size:,}: the "
        f"copy is incomplete or another file; {again}",
        f"virnucpro: error: {directory}/DNABERT-S/tokenizer.json: not there, though "
        f"manifest.json lists it ({tokenizer_size:,} bytes); {again}"]


def test_verify_without_a_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{broken")
    proc = run_cli("models", "verify", tmp_path)
    assert proc.returncode == 66
    assert proc.stderr.splitlines() == [
        f"virnucpro: error: {tmp_path}/manifest.json: unreadable manifest (Expecting property "
        "name enclosed in double quotes: line 1 column 2 (char 1)); copy it again with the "
        f"models, or fetch them again: virnucpro models fetch {tmp_path}"]
    (tmp_path / "manifest.json").write_text('{"files": {}}')  # another program's
    proc = run_cli("models", "verify", tmp_path)
    assert proc.returncode == 66
    assert proc.stderr.splitlines() == [
        f"virnucpro: error: {tmp_path}: no manifest.json written by `virnucpro models fetch`; "
        f"fetch the models into it (virnucpro models fetch {tmp_path}), then copy the whole "
        "directory"]


def test_preflight_finds_a_corrupted_copy_before_any_job(fetched, tmp_path, monkeypatch):
    """A model in a fetched directory is checked against its manifest: the size always, the
    SHA-256 once per version of the file (remembered in the user's cache, as the zip
    checksums are), and a changed file is read again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    directory = copy_of(fetched, tmp_path)
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    samples = {"s": [str(tmp_path / "r.fa")]}
    models = {"esm": str(directory / "esm2_t36_3B_UR50D.pt"),
              "dnabert": str(directory / "DNABERT-S"),
              "classifier": str(directory / "500_model.pth")}
    assert check(samples, {}, models, 500, {}) == []
    remembered = json.loads((tmp_path / "cache" / "virnucpro" / "verified-models.json")
                            .read_text())
    manifest = json.loads((directory / "manifest.json").read_text())["files"]
    for name in ("esm2_t36_3B_UR50D.pt", "DNABERT-S/config.json", "DNABERT-S/pytorch_model.bin",
                 "DNABERT-S/tokenizer.json", "500_model.pth"):
        tests = remembered[str((directory / name).resolve())]
        assert f"sha256 {manifest[name]['sha256']}" in tests
    assert str((directory / "300_model.pth").resolve()) not in remembered  # not configured
    flip_a_stored_bit(directory / "500_model.pth")
    esm = directory / "esm2_t36_3B_UR50D.pt"
    esm.write_bytes(esm.read_bytes()[:-10])
    again = f"copy it again from the machine that fetched it, or fetch it again: virnucpro " \
            f"models fetch {directory}"
    with pytest.raises(Problems) as found:
        check(samples, {}, models, 500, {})
    assert found.value.exit_code == 66
    assert found.value.lines() == [
        f"{esm}: {manifest['esm2_t36_3B_UR50D.pt']['size'] - 10:,} bytes, manifest.json says "
        f"{manifest['esm2_t36_3B_UR50D.pt']['size']:,}: the copy is incomplete or another "
        f"file; {again}",
        f"{directory}/500_model.pth: its SHA-256 is not the one manifest.json records; its "
        f"bytes changed since it was fetched (a bad copy or disk); {again}"]


# --------------------------------------------------------------------------- the addresses


def test_the_published_addresses():
    """The addresses found for the published files (README, "Getting the published models")."""
    assert {file.path: file.address() for file in CATALOGUE} == {
        "esm2_t36_3B_UR50D.pt":
            "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t36_3B_UR50D.pt",
        "DNABERT-S/config.json":
            "https://huggingface.co/zhihan1996/DNABERT-S/resolve/main/config.json",
        "DNABERT-S/pytorch_model.bin":
            "https://huggingface.co/zhihan1996/DNABERT-S/resolve/main/pytorch_model.bin",
        "DNABERT-S/tokenizer.json":
            "https://huggingface.co/zhihan1996/DNABERT-S/resolve/main/tokenizer.json",
        "300_model.pth": "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/"
                         "0f93f2755a7ea1acd3ff1bcf182892f960ef3326/300_model.pth",
        "500_model.pth": "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/"
                         "0f93f2755a7ea1acd3ff1bcf182892f960ef3326/500_model.pth"}
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Getting the published models"):]
    section = section[:section.index("\n## ", 1)]
    assert all(file.address() in section for file in CATALOGUE)


def test_messages_name_the_published_addresses(tmp_path, monkeypatch):
    """Each message about a missing model names the address the table gives."""
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    with pytest.raises(Problems) as missing:
        check({"s": [str(tmp_path / "r.fa")]}, {},
              {"esm": str(tmp_path / "esm2_t36_3B_UR50D.pt"), "dnabert": str(tmp_path / "D"),
               "classifier": str(tmp_path / "300_model.pth")}, 300, {})
    assert missing.value.lines() == [
        f"{tmp_path}/esm2_t36_3B_UR50D.pt: ESM-2 model file not found; download "
        f"{ADDRESSES['fair-esm']}esm2_t36_3B_UR50D.pt there, or set models.esm in your config",
        f"{tmp_path}/D: DNABERT-S directory not found; download DNABERT-S "
        "(https://huggingface.co/zhihan1996/DNABERT-S) there, or set models.dnabert in your "
        "config",
        f"{tmp_path}/300_model.pth: classifier not found; download the published "
        f"300_model.pth from {ADDRESSES['VirNucPro']}300_model.pth there, or set "
        "models.classifier in your config"]
    with pytest.raises(ModelError, match=re.escape(
            f"download {ADDRESSES['fair-esm']}esm2_t33_650M_UR50D.pt and put it there")):
        model_file(tmp_path / "esm2_t33_650M_UR50D.pt")
    with pytest.raises(ModelError, match=re.escape("https://huggingface.co/zhihan1996/DNABERT-S")):
        load_dnabert2(tmp_path / "D")
    # The download rules, refused at once: a proxy nothing listens on (urllib honours it).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(ModelError) as esm:
        download_esm2(tmp_path / "esm2_t36_3B_UR50D.pt")
    assert esm.value.one_line().startswith(
        f"cannot download ESM-2 model file 'esm2_t36_3B_UR50D' from "
        f"{ADDRESSES['fair-esm']}esm2_t36_3B_UR50D.pt (URLError: ")
    with pytest.raises(ModelError) as dnabert:
        download_dnabert_s(tmp_path / "DNABERT-S")
    assert dnabert.value.one_line().startswith(
        f"cannot download zhihan1996/DNABERT-S from {ADDRESSES['DNABERT-S']}config.json "
        "(URLError: ")
    assert not list(tmp_path.glob("*esm2*")) and not (tmp_path / "DNABERT-S").exists()
