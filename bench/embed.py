"""Embedding throughput: the project's engine against the original's way of calling the models.

Frames come from random 150-bp reads through the project's own prepare (~50 residues and
~151 nt a frame, as real short reads give). Models are random-init (speed does not depend on
the weights).

CPU mode (default), one process, the same frames for both sides, repeats interleaved so that
machine noise hits both alike (the best of the repeats is reported):
  (a) ESM-2: our engine vs fair-esm's own model with the original's batching
      (FastaBatchedDataset.get_batch_indices(2048) + the alphabet's batch converter, forward
      with repr_layers, mean over 1..len) on the same checkpoint (esm2_t6_8M shape), fp32;
      our engine in bf16 is reported beside it, with its distance from fp32.
  (b) DNABERT-2: our batched engine vs the original's loop (tokenise one sequence, forward,
      mean) on the same DNABERT-2-shaped model.
GPU mode (--gpu): ESM-2 3B and DNABERT-S architectures built on the GPU in bf16; ESM tokens/s,
model FLOP utilisation, DNABERT frames/s, both together, peak memory.

    .venv/bin/python bench/embed.py [--frames 2000] [--repeats 3]
    PYTHONPATH=src python bench/embed.py --gpu [--frames 60000] [--esm-tokens N] [--load]
    .venv/bin/python bench/embed.py --gpu --dry

Results: printed, and saved to bench/results/embed.json (embed_gpu.json with --gpu).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from virnucpro.defaults import WINDOW_FRAMES  # noqa: E402
from virnucpro.embed import DEFAULT_BUDGETS, EmbeddingEngine, store_in_16_bits  # noqa: E402
from virnucpro.shards import read_frames  # noqa: E402
from virnucpro.demo_models import (random_esm2, write_demo_dnabert2,  # noqa: E402
                                   write_demo_esm2)
from virnucpro.models.dnabert2 import load_dnabert2  # noqa: E402
from virnucpro.models.esm2 import MAX_RESIDUES, load_esm2, read_model_file  # noqa: E402
from virnucpro.prepare import write_flat  # noqa: E402

H100_BF16_DENSE_FLOPS = 989e12
ESM_8M_SHAPE = {"layers": 6, "embed_dim": 320, "heads": 20}
# DNABERT-S's width (ALiBi, fused Wqkv, gated GLU, 4096 BPE vocabulary) with fewer layers, which
# changes the time per frame but not the ratio between batched and one at a time.
DNABERT_CPU_SHAPE = {"hidden": 768, "layers": 2, "heads": 12, "intermediate": 3072,
                     "vocab_size": 4096}
DNABERT_S_SHAPE = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072,
                   "vocab_size": 4096}
ESM_3B_SHAPE = {"layers": 36, "embed_dim": 2560, "heads": 40}
TINY_DNABERT = {"hidden": 32, "layers": 1, "heads": 4, "intermediate": 64, "vocab_size": 256}


# --------------------------------------------------------------------------- inputs


def random_reads(path: Path, count: int, seed: int = 0, description: str = "") -> None:
    """A FASTA of `count` random 150-bp reads, read0, read1, ... (each header followed by
    `description`, when given); about 0.55 stop-free frames per read."""
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(count):
            out.write(f">read{i}{description}\n{''.join(rng.choices('ACGT', k=150))}\n")


def prepared_frames(count: int, workdir: Path, seed: int = 0
                    ) -> tuple[list[str], list[str], list[str]]:
    """The first `count` frames of random 150-bp reads, through the project's prepare:
    (IDs, nucleotide sequences, protein sequences)."""
    reads = workdir / "reads.fa"
    random_reads(reads, count * 2 + 1000, seed)
    write_flat(reads, 300, workdir / "prepared")
    ids, nucleotides, proteins = read_frames(workdir / "prepared" / "nucleotide.fa",
                                             workdir / "prepared" / "protein.faa")
    if len(proteins) < count:
        raise SystemExit(f"only {len(proteins)} frames from the reads; need {count}")
    return ids[:count], nucleotides[:count], proteins[:count]


def make_frames(count: int, workdir: Path, seed: int = 0) -> tuple[list[str], list[str], int]:
    """`count` frames of random 150-bp reads, through the project's prepare; and the number
    of reads they came from (for reads/s)."""
    ids, nucleotides, proteins = prepared_frames(count, workdir, seed)
    last_read = int(ids[-1].split("_chunk_")[0].removeprefix("read"))
    return nucleotides, proteins, last_read + 1


def esm_tokens(proteins: list[str]) -> int:
    return sum(min(len(p), MAX_RESIDUES) + 2 for p in proteins)


class OnlyEngine(EmbeddingEngine):
    """The engine with one model's batches computed and the other's answered with zeros.

    Times one model through the real pipeline (loader thread, batching, staging).
    """

    def __init__(self, *args, only: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.only = only

    def forward_batch(self, model, inputs, float32=False):
        if model == self.only:
            return super().forward_batch(model, inputs, float32)
        width = self.esm.embed_dim if model == "esm" else self.dnabert.hidden_size
        return torch.zeros(inputs[0].shape[0], width, device=self.device)


def timed(func: Callable[[], object], sync: bool = False) -> tuple[float, object]:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = func()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def interleaved(runs: dict[str, Callable[[], object]], repeats: int
                ) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Seconds of each run, repeats interleaved; and each run's last result."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            elapsed, results[name] = timed(run)
            seconds[name].append(round(elapsed, 3))
    return seconds, results


# --------------------------------------------------------------------------- baselines


def fair_esm_original(checkpoint: Path, proteins: list[str]) -> Callable[[], torch.Tensor]:
    """The original VirNucPro's ESM extraction (fair-esm's extract.py logic) on a checkpoint."""
    import esm
    from esm.data import FastaBatchedDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, alphabet = esm.pretrained.load_model_and_alphabet_core(
            checkpoint.stem, read_model_file(checkpoint), None)
    model.eval()
    dataset = FastaBatchedDataset([f"frame{i}" for i in range(len(proteins))], proteins)
    batches = dataset.get_batch_indices(2048, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches,
                                         collate_fn=alphabet.get_batch_converter(MAX_RESIDUES))
    layer = model.num_layers

    def run() -> torch.Tensor:
        means = {}
        with torch.no_grad():
            for labels, strs, toks in loader:
                representation = model(toks, repr_layers=[layer])["representations"][layer]
                for i, label in enumerate(labels):
                    length = min(MAX_RESIDUES, len(strs[i]))
                    means[label] = representation[i, 1:length + 1].mean(0).clone()
        return torch.stack([means[f"frame{i}"] for i in range(len(proteins))])

    return run


def dnabert_one_at_a_time(encoder, nucleotides: list[str]) -> Callable[[], torch.Tensor]:
    """The original's DNABERT-S loop: one sequence per forward pass, mean over all tokens."""
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return torch.stack([encoder.model(encoder.tokenize([seq])[0].to(encoder.device))[0]
                                .float().mean(0) for seq in nucleotides])
    return run


# --------------------------------------------------------------------------- CPU mode


def _ratio(slow: list[float], fast: list[float]) -> float:
    return round(min(slow) / min(fast), 2)


def cpu_esm(workdir: Path, proteins: list[str], nucleotides: list[str], repeats: int) -> dict:
    checkpoint = write_demo_esm2(workdir / "esm2_t6_8M_UR50D.pt", seed=1, **ESM_8M_SHAPE)
    tiny = write_demo_dnabert2(workdir / "tiny_dnabert", **TINY_DNABERT)
    engines = {dtype: OnlyEngine(load_esm2(checkpoint, dtype=dtype),
                                 load_dnabert2(tiny, dtype=dtype), only="esm")
               for dtype in (torch.float32, torch.bfloat16)}
    fair = fair_esm_original(checkpoint, proteins)
    runs = {"fair_esm": fair,
            "ours_fp32": lambda: engines[torch.float32].embed(nucleotides, proteins),
            "ours_bf16": lambda: engines[torch.bfloat16].embed(nucleotides, proteins)}
    seconds, results = interleaved(runs, repeats)
    columns = slice(TINY_DNABERT["hidden"], None)
    ours, low, theirs = (results[name][:, columns] if name != "fair_esm" else results[name]
                         for name in ("ours_fp32", "ours_bf16", "fair_esm"))
    tokens = esm_tokens(proteins)
    return {
        "model": "esm2_t6_8M shape (6 layers, 320 dim, 20 heads), random init, one checkpoint",
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": {name: round(tokens / min(s)) for name, s in seconds.items()},
        "speedup_fp32": _ratio(seconds["fair_esm"], seconds["ours_fp32"]),
        "speedup_bf16": _ratio(seconds["fair_esm"], seconds["ours_bf16"]),
        "max_abs_diff_fp32_vs_fair_esm": float((ours - theirs).abs().max()),
        "max_abs_diff_bf16_vs_fp32": float((low - ours).abs().max()),
        "min_cosine_bf16_vs_fp32": float(torch.cosine_similarity(low, ours).min()),
        "budget_tokens": engines[torch.float32].budgets.esm,
    }


def cpu_dnabert(workdir: Path, proteins: list[str], nucleotides: list[str],
                repeats: int) -> dict:
    directory = write_demo_dnabert2(workdir / "dnabert", **DNABERT_CPU_SHAPE)
    tiny_esm = write_demo_esm2(workdir / "esm2_tiny.pt", layers=1, embed_dim=32, heads=4)
    engines = {dtype: OnlyEngine(load_esm2(tiny_esm, dtype=dtype),
                                 load_dnabert2(directory, dtype=dtype), only="dnabert")
               for dtype in (torch.float32, torch.bfloat16)}
    runs = {"one_at_a_time": dnabert_one_at_a_time(engines[torch.float32].dnabert, nucleotides),
            "ours_batched_fp32": lambda: engines[torch.float32].embed(nucleotides, proteins),
            "ours_batched_bf16": lambda: engines[torch.bfloat16].embed(nucleotides, proteins)}
    seconds, results = interleaved(runs, repeats)
    columns = slice(0, DNABERT_CPU_SHAPE["hidden"])
    ours, low = (results[name][:, columns] for name in ("ours_batched_fp32", "ours_batched_bf16"))
    frames = len(nucleotides)
    return {
        "model": "DNABERT-2 architecture, random init: " + ", ".join(
            f"{k} {v}" for k, v in DNABERT_CPU_SHAPE.items()),
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": {name: round(frames / min(s), 1) for name, s in seconds.items()},
        "speedup_fp32": _ratio(seconds["one_at_a_time"], seconds["ours_batched_fp32"]),
        "speedup_bf16": _ratio(seconds["one_at_a_time"], seconds["ours_batched_bf16"]),
        "max_abs_diff_batched_vs_one_at_a_time":
            float((ours - results["one_at_a_time"]).abs().max()),
        "min_cosine_bf16_vs_fp32": float(torch.cosine_similarity(low, ours).min()),
        "budget_tokens": engines[torch.float32].budgets.dnabert,
    }


def cpu_mode(args: argparse.Namespace, workdir: Path) -> dict:
    nucleotides, proteins, _ = make_frames(args.frames, workdir)
    return {"mode": "cpu", "frames": len(proteins),
            "mean_residues": round(statistics.mean(map(len, proteins)), 1),
            "mean_nucleotides": round(statistics.mean(map(len, nucleotides)), 1),
            "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
            "esm": cpu_esm(workdir, proteins, nucleotides, args.repeats),
            "dnabert": cpu_dnabert(workdir, proteins, nucleotides, args.repeats),
            "padding": padding(workdir, args.padding_frames)}


# --------------------------------------------------------------------------- padding

PADDING_TARGET = 0.95


SENSE_CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
                if a + b + c not in ("TAA", "TAG", "TGA")]


def long_read_frames(count: int, chunk: int, workdir: Path, seed: int = 1
                     ) -> tuple[list[str], list[str]]:
    """`count` frames of 300- or 500-bp chunks of reads of 1,000-5,000 bp, through the
    project's prepare. Each read is an open reading frame of random codons (random DNA has
    a stop codon every ~21 codons, so its 500-bp chunks would hardly ever give a frame);
    each read's last chunk is shorter: what the batches must absorb."""
    rng = random.Random(seed)
    reads = workdir / f"long-{chunk}.fa"
    with open(reads, "w") as out:
        for i in range(count // 3):
            codons = rng.choices(SENSE_CODONS, k=rng.randint(333, 1666))
            out.write(f">long{i}\n{''.join(codons)}\n")
    write_flat(reads, chunk, workdir / f"long-{chunk}")
    _, nucleotides, proteins = read_frames(workdir / f"long-{chunk}" / "nucleotide.fa",
                                           workdir / f"long-{chunk}" / "protein.faa")
    return nucleotides[:count], proteins[:count]


def padding(workdir: Path, frames: int) -> dict:
    """Real tokens / padded tokens (frames x longest, batch by batch) as the engine counts
    them (`EmbeddingEngine.work`), for each model, with each device's default budgets and the
    default windows: frames of 150-bp reads, and of 300- and 500-bp chunks of longer reads.
    The models are tiny (the counts do not depend on them); DNABERT's tokenizer is a 4,096-
    token BPE as DNABERT-S's."""
    esm = write_demo_esm2(workdir / "esm2_padding.pt", layers=1, embed_dim=32, heads=4)
    dnabert = write_demo_dnabert2(workdir / "padding_dnabert", hidden=32, layers=1, heads=4,
                                  intermediate=64, vocab_size=4096)
    (workdir / "padding-150").mkdir()
    inputs = {"150bp_reads": make_frames(frames, workdir / "padding-150", seed=3)[:2],
              "300bp_chunks": long_read_frames(frames, 300, workdir),
              "500bp_chunks": long_read_frames(frames, 500, workdir)}
    result: dict = {"frames": frames, "window_frames": WINDOW_FRAMES, "target": PADDING_TARGET}
    for device, budgets in DEFAULT_BUDGETS.items():
        for name, (nucleotides, proteins) in inputs.items():
            engine = EmbeddingEngine(load_esm2(esm), load_dnabert2(dnabert),
                                     esm_tokens=budgets.esm, dnabert_tokens=budgets.dnabert)
            engine.embed(nucleotides, proteins)
            counted = engine.work.summary()["tokens"]
            result[f"{device}_budgets_{name}"] = {
                model: counted[model]["pass"]["padding_efficiency"] for model in counted}
    result["met"] = all(value >= PADDING_TARGET for key, figures in result.items()
                        if isinstance(figures, dict) for value in figures.values())
    print(f"padding efficiency (real/padded, target >= {PADDING_TARGET}): " + "; ".join(
        f"{key}: " + ", ".join(f"{m} {v:.3f}" for m, v in figures.items())
        for key, figures in result.items() if isinstance(figures, dict)))
    return result


# --------------------------------------------------------------------------- GPU mode


def timed_load(workdir: Path, device: torch.device, shape: dict) -> dict:
    """A checkpoint of `shape` in the published fp16 format, written here, loaded by
    `load_esm2` onto the device in bf16: the load time a job pays."""
    from scale import write_3b_checkpoint

    path = workdir / "esm2_t36_3B_UR50D.pt"
    write_3b_checkpoint(path, shape)
    seconds, encoder = timed(lambda: load_esm2(path, device, torch.bfloat16),
                             sync=device.type == "cuda")
    del encoder
    return {"checkpoint_gb": round(path.stat().st_size / 1e9, 2), "esm_load_s": round(seconds, 1)}


def gpu_mode(args: argparse.Namespace, workdir: Path) -> dict:
    """Speed of the real engine in bf16: ESM-2 alone, DNABERT-S alone, both (as a job runs).
    --dry: the same code with tiny shapes on the CPU, so the script is known to work."""
    device = torch.device("cpu" if args.dry else "cuda")
    esm_shape = {"layers": 2, "embed_dim": 32, "heads": 4} if args.dry else ESM_3B_SHAPE
    dnabert_shape = TINY_DNABERT if args.dry else DNABERT_S_SHAPE
    sync = device.type == "cuda"
    nucleotides, proteins, reads = make_frames(args.frames, workdir)
    load_s, esm = timed(lambda: random_esm2(**esm_shape, device=device, dtype=torch.bfloat16),
                        sync=sync)
    directory = write_demo_dnabert2(workdir / "dnabert_s", **dnabert_shape)
    dnabert_load_s, dnabert = timed(lambda: load_dnabert2(directory, device, torch.bfloat16),
                                    sync=sync)
    params = sum(p.numel() for p in esm.parameters())
    budgets = {"esm_tokens": args.esm_tokens, "dnabert_tokens": args.dnabert_tokens}
    engines = {only: OnlyEngine(esm, dnabert, only=only, **budgets) for only in ("esm", "dnabert")}
    engines["both"] = EmbeddingEngine(esm, dnabert, **budgets)
    warm = min(2000, len(proteins))
    for engine in engines.values():  # CUDA context, kernels, allocator pools
        engine.embed(nucleotides[:warm], proteins[:warm])
    if sync:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = {name: round(timed(lambda e=engine: e.embed(nucleotides, proteins), sync=sync)[0], 3)
               for name, engine in engines.items()}
    tokens, frames = esm_tokens(proteins), len(proteins)
    esm_rate = tokens / seconds["esm"]
    result = {
        "mode": "gpu-dry" if args.dry else "gpu", "dtype": "bfloat16",
        "device": "cpu" if args.dry else torch.cuda.get_device_name(device),
        "frames": frames, "reads": reads, "esm_tokens": tokens,
        "mean_residues": round(statistics.mean(map(len, proteins)), 1),
        "esm_model": f"ESM-2 architecture {esm_shape}, random init", "esm_params": params,
        "dnabert_model": f"DNABERT-2 architecture {dnabert_shape}, random init",
        "seconds": seconds,
        "esm_tokens_per_s": round(esm_rate),
        "esm_frames_per_s": round(frames / seconds["esm"], 1),
        "mfu_vs_989_tflops": round(2 * params * esm_rate / H100_BF16_DENSE_FLOPS, 3),
        "dnabert_frames_per_s": round(frames / seconds["dnabert"], 1),
        "both_frames_per_s": round(frames / seconds["both"], 1),
        "reads_per_s_150bp": round(reads / seconds["both"], 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if sync else None,
        "esm_build_s": round(load_s, 1), "dnabert_load_s": round(dnabert_load_s, 1),
        "budgets": {"esm": engines["both"].budgets.esm,
                    "dnabert": engines["both"].budgets.dnabert},
    }
    result.update(default_speed(args, device, esm_shape, directory, nucleotides, proteins,
                                seconds["both"]))
    if args.load:
        del esm, engines
        result.update(timed_load(workdir, device, esm_shape))
    return result


def default_speed(args: argparse.Namespace, device: torch.device, esm_shape: dict,
                  dnabert_dir: Path, nucleotides: list[str], proteins: list[str],
                  bfloat16_s: float) -> dict:
    """The default GPU precision (float16: 16-bit weights and activations, compiled layers
    on CUDA) and its float32 pass (what each rescored frame costs), both models together,
    against bfloat16's time: with the rescored fraction of bench/agreement.py, what the
    default costs (time = float16 + fraction x float32)."""
    sync = device.type == "cuda"
    esm = random_esm2(**esm_shape, device=device, dtype=torch.float32)
    dnabert = load_dnabert2(dnabert_dir, device, torch.float32)
    kept = store_in_16_bits(esm, dnabert, torch.float16)
    budgets = {"esm_tokens": args.esm_tokens, "dnabert_tokens": args.dnabert_tokens}
    engine = EmbeddingEngine(esm, dnabert, compile=sync, float32_weights=kept, **budgets)
    warm = min(500, len(proteins))
    engine.embed(nucleotides[:warm], proteins[:warm])
    engine.embed(nucleotides[:warm], proteins[:warm], float32=True)
    float16_s = timed(lambda: engine.embed(nucleotides, proteins), sync=sync)[0]
    subset = min(len(proteins), max(warm, len(proteins) // 10))  # float32 is slow on a GPU
    exact_s = timed(lambda: engine.embed(nucleotides[:subset], proteins[:subset], float32=True),
                    sync=sync)[0]
    float32_s = exact_s * len(proteins) / subset
    return {"default_precision": engine.precision.name, "compiled": engine._compiled,
            "both_float16_s": round(float16_s, 3), "both_float32_s_estimated": round(float32_s, 3),
            "float16_vs_bfloat16": round(bfloat16_s / float16_s, 3),
            "float32_vs_bfloat16": round(bfloat16_s / float32_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="GPU mode (needs CUDA)")
    parser.add_argument("--dry", action="store_true",
                        help="with --gpu: tiny shapes on the CPU (checks the script)")
    parser.add_argument("--load", action="store_true",
                        help="with --gpu: also write a published-format checkpoint and time "
                             "its load onto the device")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames to embed (default 2000 on CPU, 60000 on GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="CPU mode: interleaved repeats")
    parser.add_argument("--padding-frames", type=int, default=20_000,
                        help="CPU mode: frames of each kind for the padding efficiency")
    parser.add_argument("--padding", action="store_true",
                        help="the padding efficiency alone (saved to padding.json)")
    parser.add_argument("--esm-tokens", type=int, default=None,
                        help="GPU mode: ESM-2 token budget (default: the engine's)")
    parser.add_argument("--dnabert-tokens", type=int, default=None,
                        help="GPU mode: DNABERT token budget (default: the engine's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    if args.gpu and not args.dry and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device (--gpu --dry checks the script on the CPU)")
    args.frames = args.frames or (300 if args.dry else 60_000 if args.gpu else 2_000)
    with tempfile.TemporaryDirectory() as tmp:
        if args.padding:
            result = padding(Path(tmp), args.padding_frames)
        else:
            result = (gpu_mode if args.gpu else cpu_mode)(args, Path(tmp))
    result.update(torch=torch.__version__, machine=platform.processor() or platform.machine(),
                  date=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(json.dumps(result, indent=2))
    out = args.out or HERE / "results" / ("padding.json" if args.padding else
                                          "embed_gpu.json" if args.gpu else "embed.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
