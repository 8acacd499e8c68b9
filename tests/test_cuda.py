"""The engine on a real GPU: staging on the side stream, a real out-of-memory split, bf16
against CPU float32, no host sync per batch, float16 (the default) closer to float32 than
bfloat16 with its attention in fused kernels, and compiled layers. Skipped without CUDA
(marker `cuda`); bench/gpu_check.sh runs them on a lent GPU.

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


def _gpu(models, dtype: str = "bfloat16", **options) -> EmbeddingEngine:
    return EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cuda", dtype, **options)


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


def test_float16_on_the_gpu_is_closer_to_float32_than_bfloat16(models, cpu_fp32):
    half = _gpu(models, "float16")
    assert half.settings()["dtype"] == "float16" and half.compile  # the GPU defaults
    assert {p.dtype for p in half.esm.parameters()} == {torch.float16}
    error = {name: (_gpu(models, name).embed(NUCLEOTIDES, PROTEINS) - cpu_fp32).abs().max().item()
             for name in ("bfloat16", "float16")}
    assert error["float16"] < error["bfloat16"] / 3, error
    # The float32 pass is float32's (no TF32), from the 16-bit weights.
    exact = half.embed(NUCLEOTIDES, PROTEINS, float32=True)
    assert (exact - cpu_fp32).abs().max().item() < 1e-3


def test_float16_attention_runs_in_fused_kernels(models):
    """Only the flash, memory-efficient and cuDNN kernels allowed, SDPA raises where it would
    fall back to the unfused math: padded batches (ESM-2's key mask, DNABERT's ALiBi bias)
    run, and give what the kernels SDPA picks unrestricted give."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    engine = _gpu(models, "float16", esm_tokens=2000, dnabert_tokens=4000, compile=False)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                      SDPBackend.CUDNN_ATTENTION]):
        fused = engine.embed(NUCLEOTIDES[:200], PROTEINS[:200])
    assert torch.equal(fused, engine.embed(NUCLEOTIDES[:200], PROTEINS[:200]))


def test_a_float16_scoring_job_waits_once_per_window(models, tmp_path):
    """Scores on the device, rescoring queued on the compute stream: one host wait per
    window, and one at the end for the last rescoring group."""
    from virnucpro.models.classifier import load_classifier
    from virnucpro.resume import CheckpointSettings, ScoreRows, embed_shard_resumable
    from virnucpro.shards import ShardFrames

    engine = _gpu(models, "float16", esm_tokens=600, dnabert_tokens=1200)
    engine.embed(NUCLEOTIDES[:100], PROTEINS[:100])  # warm: compilation, kernels, pools
    frames = 600
    (tmp_path / "s.fna").write_text("".join(f">f{i}\n{n}\n" for i, n in enumerate(NUCLEOTIDES)))
    (tmp_path / "s.faa").write_text("".join(f">f{i}\n{p}\n" for i, p in enumerate(PROTEINS)))
    index = tmp_path / "s.index.tsv"
    index.write_text("frame_id\tread_index\tchunk\tframe\n"
                     + "".join(f"f{i}\t{i}\t0\tF1\n" for i in range(frames)))
    result = ScoreRows(tmp_path / "s.tsv", index, load_classifier(models["classifier"]))
    windows = 6
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            embed_shard_resumable(ShardFrames(tmp_path / "s.fna", tmp_path / "s.faa"), result,
                                  engine, CheckpointSettings(window_frames=frames // windows))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in seen if "synchroniz" in str(w.message)]
    assert len(syncs) <= windows + 1, [str(w.message) for w in syncs]
    assert engine.work.frames(float32_pass=True) > 0  # the first and last chunks at least


def test_compiled_layers_agree_with_uncompiled_ones(models):
    compiled = _gpu(models, "float16", compile=True)
    plain = _gpu(models, "float16", compile=False)
    a = compiled.embed(NUCLEOTIDES, PROTEINS)
    b = plain.embed(NUCLEOTIDES, PROTEINS)
    assert compiled._compiled  # it compiled, and ran so
    assert torch.nn.functional.cosine_similarity(a, b, dim=1).min().item() > 0.999


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
