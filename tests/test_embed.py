"""Embedding engine: every frame once, in input order, whatever the batching, windows or OOM."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import run_cli
from virnucpro.demo_models import write_demo_models
from virnucpro.embed import EmbeddingEngine, EmbeddingError, plan_batches, resolve_device
from virnucpro.precision import resolve_precision
from virnucpro.errors import InputError, UsageError
from virnucpro.features import read_features
from virnucpro.shards import ShardFrames, in_windows, read_frames

AMINO = "ACDEFGHIKLMNPQRSTVWY"
TOLERANCE = 1e-5


def _frames(count: int = 40, seed: int = 3) -> tuple[list[str], list[str]]:
    """Frames of mixed lengths, one protein beyond ESM-2's 1022-residue cut."""
    rng = random.Random(seed)
    nucleotides, proteins = [], []
    for i in range(count):
        residues = 1100 if i == 17 else rng.choice([1, 2, 5, 20, 49, 50, 50, 50, 120, 166])
        proteins.append("".join(rng.choices(AMINO, k=residues)))
        nucleotides.append("".join(rng.choices("ACGT", k=3 * min(residues, 166) + 1)))
    return nucleotides, proteins


NUCLEOTIDES, PROTEINS = _frames()


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    return write_demo_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def engine(demo_models) -> EmbeddingEngine:
    return EmbeddingEngine.from_config(demo_models["esm"], demo_models["dnabert"], device="cpu")


@pytest.fixture(scope="module")
def one_by_one(engine) -> torch.Tensor:
    """The reference: every frame embedded alone (the original's DNABERT loop, no padding)."""
    rows = [torch.cat([engine.dnabert.forward_mean(*engine.dnabert.tokenize([nucleotide]))[0],
                       engine.esm.forward_mean(*engine.esm.tokenize([protein]))[0]])
            for nucleotide, protein in zip(NUCLEOTIDES, PROTEINS)]
    return torch.stack(rows)


class CountingEngine(EmbeddingEngine):
    """Records the frames of every batch that ran, and fails batches over `oom_above` frames."""

    def __init__(self, *args, oom_above: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.oom_above = oom_above
        self.ran: dict[str, list[int]] = {"esm": [], "dnabert": []}

    def forward_batch(self, model, inputs, float32=False):
        frames = inputs[0].shape[0]
        if self.oom_above is not None and frames > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.ran[model].append(frames)
        return super().forward_batch(model, inputs, float32)


def _engine_like(engine: EmbeddingEngine, **kwargs) -> CountingEngine:
    return CountingEngine(engine.esm, engine.dnabert, **kwargs)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == torch.float32
    return (a - b).abs().max().item()


def test_plan_batches_covers_each_frame_once_within_budget():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 300, size=500)
    counts[7] = 5000  # longer than the budget: a batch of its own
    batches = plan_batches(counts, budget=1000)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for batch in batches:
        width = counts[batch].max()
        assert len(batch) * width <= 1000 or len(batch) == 1
        assert counts[batch[0]] == width  # longest first within a batch
    assert batches[0].tolist() == [7]
    # Frames of similar length together: a batch holding a quarter of the budget stops before
    # a frame shorter than 95% of its longest.
    for batch in batches:
        width = counts[batch[0]]
        assert all(c >= 0.95 * width or i * width < 250 for i, c in enumerate(counts[batch]))
    assert any(len(batch) * counts[batch[0]] < 750 for batch in batches[:-1])  # cut short


def test_batched_windows_equal_frames_embedded_alone(engine, one_by_one):
    counting = _engine_like(engine, esm_tokens=300, dnabert_tokens=200)
    features = counting.embed(NUCLEOTIDES, PROTEINS, window_frames=7)
    assert _max_diff(features, one_by_one) <= TOLERANCE
    # Several batches per window, and every frame ran exactly once per model.
    assert len(counting.ran["esm"]) > 6 and len(counting.ran["dnabert"]) > 6
    assert sum(counting.ran["esm"]) == sum(counting.ran["dnabert"]) == len(PROTEINS)
    assert features.shape == (len(PROTEINS), engine.embed_dim)


def _shard_files(directory: Path) -> ShardFrames:
    _write_fasta(directory / "s.fna", [(f"f{i}", n) for i, n in enumerate(NUCLEOTIDES)])
    _write_fasta(directory / "s.faa", [(f"f{i}", p) for i, p in enumerate(PROTEINS)])
    return ShardFrames(directory / "s.fna", directory / "s.faa")


def test_embed_windows_resumes_from_a_window(engine, one_by_one, tmp_path):
    frames = _shard_files(tmp_path)
    windows = list(engine.embed_windows(frames.windows(6, skip=24)))
    assert [window.start for window, _ in windows] == [24, 30, 36]
    assert [len(rows) for _, rows in windows] == [6, 6, 4]
    assert windows[0][0].ids == [f"f{i}" for i in range(24, 30)]
    resumed = torch.cat([rows for _, rows in windows])
    assert _max_diff(resumed, one_by_one[24:]) <= TOLERANCE
    assert list(engine.embed_windows(frames.windows(6, skip=40))) == []


def test_shard_frames_are_streamed_and_scanned(tmp_path):
    frames = _shard_files(tmp_path)
    count, digest = frames.scan()
    assert count == len(PROTEINS) and len(digest) == 16
    assert [len(w) for w in frames.windows(16)] == [16, 16, 8]
    assert read_frames(tmp_path / "s.fna", tmp_path / "s.faa") == (
        [f"f{i}" for i in range(len(PROTEINS))], NUCLEOTIDES, PROTEINS)


def test_out_of_memory_splits_batches_without_losing_frames(engine, one_by_one, caplog):
    counting = _engine_like(engine, esm_tokens=100_000, dnabert_tokens=100_000, oom_above=3)
    with caplog.at_level(logging.WARNING, logger="virnucpro"):
        features = counting.embed(NUCLEOTIDES, PROTEINS, window_frames=16)
    assert _max_diff(features, one_by_one) <= TOLERANCE
    for model in ("esm", "dnabert"):
        assert max(counting.ran[model]) <= 3
        assert sum(counting.ran[model]) == len(PROTEINS)
    assert "out of GPU memory" in caplog.text


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "virnucpro-loader"]


def test_out_of_memory_on_a_single_frame_is_an_error(engine):
    with pytest.raises(EmbeddingError, match="single frame"):
        _engine_like(engine, oom_above=0).embed(NUCLEOTIDES[:3], PROTEINS[:3])
    assert _loader_threads() == []


def test_loader_exception_reaches_the_caller_and_the_thread_is_joined(engine):
    proteins = PROTEINS[:10] + ["MKJL"]  # J is not in the ESM-2 alphabet
    with pytest.raises(ValueError, match="not in the ESM-2 alphabet"):
        engine.embed(NUCLEOTIDES[:11], proteins, window_frames=5)
    assert _loader_threads() == []


def test_closing_the_window_generator_joins_the_loader(engine):
    windows = engine.embed_windows(in_windows(NUCLEOTIDES, PROTEINS, window_frames=4))
    window, rows = next(windows)
    assert window.start == 0 and len(rows) == 4
    assert len(_loader_threads()) == 1
    windows.close()
    assert _loader_threads() == []


def test_bfloat16_stays_close_to_float32(demo_models, one_by_one):
    low = EmbeddingEngine.from_config(demo_models["esm"], demo_models["dnabert"], device="cpu",
                                      dtype="bfloat16")
    assert low.settings()["dtype"] == "bfloat16"
    features = low.embed(NUCLEOTIDES, PROTEINS)
    assert features.dtype == torch.float32
    assert _max_diff(features, one_by_one) < 0.1


def _write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path


def test_read_frames_requires_the_same_ids_in_the_same_order(tmp_path):
    nucleotide = _write_fasta(tmp_path / "s.fna", [("a", "ACGT"), ("b", "ACGTA"), ("c", "AC")])
    protein = _write_fasta(tmp_path / "s.faa", [("a", "M"), ("c", "MK"), ("b", "K")])
    with pytest.raises(InputError) as error:
        read_frames(nucleotide, protein)
    message = str(error.value)
    assert "s.fna" in message and "s.faa" in message and "'b' (#2)" in message
    short = _write_fasta(tmp_path / "short.faa", [("a", "M"), ("b", "MK")])
    with pytest.raises(InputError, match=r"short.faa has no record #3.*"):
        read_frames(nucleotide, short)
    matching = _write_fasta(tmp_path / "ok.faa", [("a", "M"), ("b", "MK"), ("c", "K")])
    assert read_frames(nucleotide, matching) == (["a", "b", "c"], ["ACGT", "ACGTA", "AC"],
                                                 ["M", "MK", "K"])


def _tree_hashes(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_demo_model_files_follow_the_umask(tmp_path):
    """A process's umask decides its files' modes (a group shares models and results)."""
    subprocess.run([sys.executable, "-m", "virnucpro.cli", "-q", "make-demo-models",
                    str(tmp_path)], check=True, preexec_fn=lambda: os.umask(0o027))
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in tmp_path.rglob("*") if p.is_file()}
    assert modes["dnabert2_demo/model.safetensors"] == 0o640  # safetensors alone gives 0600
    assert set(modes.values()) == {0o640}, modes


def test_demo_models_are_deterministic_and_idempotent(demo_models, tmp_path):
    first = demo_models["manifest"].parent
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    write_demo_models(first)  # complete: kept as is
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == before
    write_demo_models(tmp_path)
    assert _tree_hashes(tmp_path) == _tree_hashes(first)
    (tmp_path / "dnabert2_demo" / "model.safetensors").write_bytes(b"damaged")
    write_demo_models(tmp_path)  # incomplete: rewritten, identically
    assert _tree_hashes(tmp_path) == _tree_hashes(first)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_usage_error():
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(UsageError, match="not one of"):
        resolve_device("gpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")).name == "float32"
    assert resolve_precision("auto", torch.device("cuda")).name == "float16"
    assert resolve_precision("float16", torch.device("cpu")).dtype == torch.float16
    assert resolve_precision("float16", torch.device("cpu")).rescored
    with pytest.raises(UsageError, match="not one of auto, float32, bfloat16, float16"):
        resolve_precision("mixed", torch.device("cpu"))


def test_cli_embeds_a_prepared_shard(reference, demo_models, engine, tmp_path):
    models = tmp_path / "models"
    run_cli("make-demo-models", models, check=True)  # the same files from another process
    assert _tree_hashes(models) == _tree_hashes(demo_models["manifest"].parent)
    prepared = tmp_path / "prepared"
    run_cli("prepare", reference / "prepare" / "test_fixed_500bp.fa", "--chunk-size", "500",
            "--outdir", prepared, "--shard-size", "3", check=True)
    shard = prepared / "shards" / "shard_000000"
    out = tmp_path / "shard_000000.pt"
    run_cli("embed", "--nucleotide", f"{shard}.fna", "--protein", f"{shard}.faa",
            "--esm-model", models / demo_models["esm"].name,
            "--dnabert-model", models / demo_models["dnabert"].name,
            "--out", out, "--device", "cpu", "--esm-tokens", "200", check=True)
    features = read_features(out)
    index_ids = [line.split("\t")[0] for line in
                 Path(f"{shard}.index.tsv").read_text().splitlines()[1:]]
    assert features.version == "1.0" and features.ids == index_ids and len(index_ids) == 3
    ids, nucleotides, proteins = read_frames(f"{shard}.fna", f"{shard}.faa")
    assert _max_diff(features.data, engine.embed(nucleotides, proteins)) <= TOLERANCE
    assert features.meta["models"] == engine.identities()
    assert features.meta["settings"] == engine.settings()
    assert out.with_suffix(".done").read_text() == "3\n"  # shard_000000.done, as the workflow
    assert not Path(f"{out}.partial").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_embed_reports_a_mismatched_shard(demo_models, tmp_path):
    nucleotide = _write_fasta(tmp_path / "s.fna", [("a", "ACGT"), ("b", "ACGTA")])
    protein = _write_fasta(tmp_path / "s.faa", [("b", "M"), ("a", "K")])
    proc = run_cli("embed", "--nucleotide", nucleotide, "--protein", protein,
                   "--esm-model", demo_models["esm"], "--dnabert-model", demo_models["dnabert"],
                   "--out", tmp_path / "out.pt", "--device", "cpu")
    assert proc.returncode == 65
    assert "virnucpro: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.pt").exists()


class HostReads(TorchDispatchMode):
    """Records the ops that read a tensor's value back to the host (what stalls a GPU's
    host: .item(), bool(), data-dependent shapes), in the thread it is entered in."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_compute_thread_reads_no_value_from_the_device(engine, one_by_one):
    """Masks and counts are built by the loader: the thread that runs the models never asks
    a tensor for a value (on a GPU each such read waits for the device to be idle)."""
    counting = _engine_like(engine, esm_tokens=300, dnabert_tokens=200)  # padded batches
    with HostReads() as reads:
        features = counting.embed(NUCLEOTIDES, PROTEINS, window_frames=16)
    assert reads.seen == []
    assert _max_diff(features, one_by_one) <= TOLERANCE
    with HostReads() as reads:  # the check sees a read when there is one
        bool(torch.ones(2).any())
    assert reads.seen == ["aten._local_scalar_dense.default"]


def _embed_cli(models: dict[str, Path], shard: Path, out: Path, compile: str,
               env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "virnucpro.cli", "embed", "--nucleotide", f"{shard}.fna",
         "--protein", f"{shard}.faa", "--esm-model", str(models["esm"]), "--dnabert-model",
         str(models["dnabert"]), "--out", str(out), "--device", "cpu", "--compile", compile],
        capture_output=True, text=True, env={**os.environ, **env})


@pytest.mark.slow
def test_compiled_layers_and_the_fallback_where_compiling_fails(demo_models, tmp_path):
    """--compile true compiles the layers (here on the CPU, with the C++ compiler): the
    features agree with uncompiled ones. Where compiling fails (no C++ compiler), one line
    says so and the job runs uncompiled: the uncompiled features, exit status 0."""
    shard = tmp_path / "s"
    _write_fasta(Path(f"{shard}.fna"), [(f"f{i}", n) for i, n in enumerate(NUCLEOTIDES)])
    _write_fasta(Path(f"{shard}.faa"), [(f"f{i}", p) for i, p in enumerate(PROTEINS)])
    fresh = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing compiled before
    runs = {"false": {}, "true": fresh, "failing": {**fresh, "CXX": "/nonexistent/g++"}}
    features = {}
    for name, env in runs.items():
        proc = _embed_cli(demo_models, shard, tmp_path / f"{name}.pt",
                          "false" if name == "false" else "true", env)
        assert proc.returncode == 0, proc.stderr
        failed = [line for line in proc.stderr.splitlines()
                  if "compiling the models failed" in line]
        assert len(failed) == (name == "failing"), proc.stderr
        table = read_features(tmp_path / f"{name}.pt")
        assert table.meta["settings"]["compile"] == (name != "false")
        features[name] = table.data
    assert torch.equal(features["failing"], features["false"])
    assert _max_diff(features["true"], features["false"]) <= 1e-4
