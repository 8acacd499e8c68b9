"""The engine on a real GPU: staging on the side stream, a real out-of-memory split, bf16
against CPU float32, and no host sync per batch. Skipped without CUDA (marker `cuda`);
bench/gpu_check.sh runs them on a lent GPU.

The same properties are checked on the CPU elsewhere (tests/test_embed.py: simulated OOM,
no device value read in the compute thread); these are the checks only a GPU can make.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from virnucpro.demo_models import write_demo_models
from virnucpro.embed import EmbeddingEngine
from virnucpro.shards import in_windows

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _frames(count: int, seed: int = 5) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    proteins = ["".join(rng.choices(AMINO, k=rng.randint(10, 120))) for _ in range(count)]
    nucleotides = ["".join(rng.choices("ACGT", k=3 * len(p) + 1)) for p in proteins]
    return nucleotides, proteins


NUCLEOTIDES, PROTEINS = _frames(600)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def cpu_fp32(models) -> torch.Tensor:
    engine = EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cpu", "float32")
    return engine.embed(NUCLEOTIDES, PROTEINS)


def _gpu(models, dtype: str = "bfloat16", **budgets) -> EmbeddingEngine:
    return EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cuda", dtype, **budgets)


def test_batches_are_staged_on_the_side_stream(models):
    engine = _gpu(models, esm_tokens=2000, dnabert_tokens=4000)
    assert engine._copy_stream is not None
    batches = list(engine._staged_batches(in_windows(NUCLEOTIDES[:50], PROTEINS[:50], 25)))
    staged = [b for b in batches if hasattr(b, "ready")]
    assert staged and all(b.ready is not None for b in staged)
    assert all(t.is_cuda for b in staged for t in b.inputs if t is not None)


def test_bfloat16_on_the_gpu_agrees_with_float32_on_the_cpu(models, cpu_fp32):
    features = _gpu(models).embed(NUCLEOTIDES, PROTEINS)
    assert features.device.type == "cpu" and features.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(features, cpu_fp32, dim=1)
    assert cosine.min().item() > 0.99
    exact = _gpu(models, "float32").embed(NUCLEOTIDES, PROTEINS)
    assert (exact - cpu_fp32).abs().max().item() < 1e-3


def test_a_real_out_of_memory_splits_the_batch_and_loses_nothing(models, cpu_fp32, caplog):
    engine = _gpu(models, "float32", esm_tokens=10**9, dnabert_tokens=10**9)
    free, _ = torch.cuda.mem_get_info()
    # Fill the device so that one whole window's batch cannot fit but small halves can.
    ballast = torch.empty(max(0, free - (256 << 20)), dtype=torch.uint8, device="cuda")
    try:
        long = [p * 8 for p in PROTEINS]  # ~500 residues each: a batch of 600 needs GBs
        with caplog.at_level("WARNING", logger="virnucpro"):
            features = engine.embed(NUCLEOTIDES, long, window_frames=600)
    finally:
        del ballast
        torch.cuda.empty_cache()
    assert "out of GPU memory" in caplog.text
    assert features.shape == (600, engine.embed_dim) and torch.isfinite(features).all()
    reference = _gpu(models, "float32").embed(NUCLEOTIDES, long, window_frames=600)
    assert (features - reference).abs().max().item() < 1e-4


def test_the_host_waits_once_per_window_not_per_batch(models):
    engine = _gpu(models, esm_tokens=600, dnabert_tokens=1200)  # many batches a window
    engine.embed(NUCLEOTIDES[:100], PROTEINS[:100])  # warm: kernels, allocator, pinned pool
    windows = 3
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine.embed(NUCLEOTIDES, PROTEINS, window_frames=len(PROTEINS) // windows)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in seen if "synchroniz" in str(w.message)]
    assert len(syncs) == windows, [str(w.message) for w in syncs]


def test_mixed_precision_on_the_gpu_is_closer_to_float32_than_bfloat16(models, cpu_fp32):
    mixed = _gpu(models, "mixed")
    assert mixed.settings()["matmul_dtype"] == "float16"
    error = {name: (_gpu(models, name).embed(NUCLEOTIDES, PROTEINS) - cpu_fp32).abs().max().item()
             for name in ("bfloat16", "mixed")}
    assert error["mixed"] < error["bfloat16"] / 3, error


def test_the_engine_names_the_gpu_it_ran_on_as_the_driver_does(models):
    """What the scoring jobs record for the report pages (EmbeddingEngine.hardware)."""
    import shutil
    import subprocess

    hardware = _gpu(models).hardware()
    assert hardware["device"] == "cuda" and hardware["gpu"]
    if shutil.which("nvidia-smi"):
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert hardware["gpu"] in [name.strip() for name in names]
    assert EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cpu",
                                       "float32").hardware() == {"device": "cpu", "gpu": None}
