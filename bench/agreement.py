"""16-bit precisions against float32 on random models of the published shapes.

The same random weights (ESM-2 3B: 36 layers, 2560 wide; DNABERT-S: 12 layers, 768 wide) run
in float32 and in the chosen 16-bit precisions (no rescoring) on frames of random 150-bp reads
through the project's prepare:
  bfloat16    weights and activations in bfloat16;
  mixed       the engine's mixed precision on this device (float32 weights, residual stream,
              layer norms and attention; matrix multiplications in float16 on a GPU, in
              bfloat16 on a CPU);
  mixed-fp16  the engine's mixed precision as a GPU runs it, on any device: float16 autocast,
              each float16 matrix multiplication computed as a tensor core does (inputs in
              float16, products summed in float32, the output rounded to float16: Fp16TensorCores).
A random MLP of the published shape (3,328 -> 512 -> 2), its batch norm fitted to the float32
features so that calls split both ways (~40% virus), scores them. Reported per precision:
per-row cosine of the features, the fraction of identical frame calls, and how far it moves the
decision margin P(virus) - P(others): what the float32 rescoring of near-boundary frames must
cover. Then, for the mixed precisions, the scoring job's own rule (resume.rescore_positions,
frames grouped in their chunks) at the package's margin (resume.RESCORE_MARGINS) and at 1.5x
the largest shift measured: the frames it rescores, and the frame and chunk calls after it.

    PYTHONPATH=src python3 bench/agreement.py --out DIR/agreement.json [--frames 8000]
    .venv/bin/python bench/agreement.py --cpu --frames 100   # the published shapes, slowly
    .venv/bin/python bench/agreement.py --cpu --precisions mixed-fp16 --frames 1000 \
        --out bench/results/agreement_cpu_fp16.json   # float16 tensor cores emulated, hours
    .venv/bin/python bench/agreement.py --dry      # tiny shapes on the CPU (make test)
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from embed import DNABERT_S_SHAPE, TINY_DNABERT, prepared_frames  # noqa: E402
from virnucpro.embed import EmbeddingEngine  # noqa: E402
from virnucpro.shards import FrameWindow  # noqa: E402
from virnucpro.models.classifier import MLPClassifier  # noqa: E402
from virnucpro.demo_models import random_esm2, write_demo_dnabert2  # noqa: E402
from virnucpro.models.dnabert2 import load_dnabert2  # noqa: E402
from virnucpro.resume import RESCORE_MARGINS, rescore_margin, rescore_positions  # noqa: E402

ESM_3B = {"layers": 36, "embed_dim": 2560, "heads": 40}
TINY_ESM = {"layers": 2, "embed_dim": 32, "heads": 4}
PRECISIONS = ("bfloat16", "mixed", "mixed-fp16")
SAFETY = 1.5  # a rescoring margin must be at least this many times the largest shift
SLICE = 200  # frames embedded at a time by every precision in turn (and cached, with --cache)

aten = torch.ops.aten


class Fp16TensorCores(TorchDispatchMode):
    """Float16 matrix multiplications computed as a GPU's tensor cores compute them.

    A tensor core takes float16 inputs, multiplies them exactly (an 11-bit by 11-bit product
    fits float32's 24 bits) and sums the products in float32; the output is rounded to float16
    (a bias is added in float32 first, as cuBLAS's epilogue does). So each matrix
    multiplication that sees a float16 operand runs here in float32 on the float16 values and
    has its output rounded to float16: the same numbers up to the summation order, on a CPU
    whose own float16 kernels neither run fast nor promise float32 sums. Everything else runs
    as it is (elementwise float16 work computes in float32 and rounds, on either device).

    Ops whose float16 handling a CPU's autocast does differently from a GPU's (layer norm and
    softmax: float32 on a GPU; fused attention) are refused rather than run unlike a GPU: the
    engine's mixed precision gives them float32 inputs, and a change that does not is to be
    emulated here before its figures mean anything.
    """

    EMULATED = frozenset({aten.linear.default, aten.mm.default, aten.addmm.default,
                          aten.bmm.default, aten.baddbmm.default, aten.matmul.default})
    REFUSED = frozenset({aten.layer_norm.default, aten.native_layer_norm.default,
                         aten.softmax.int, aten._softmax.default,
                         aten.scaled_dot_product_attention.default,
                         aten._scaled_dot_product_flash_attention_for_cpu.default,
                         aten.einsum.default})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not any(isinstance(leaf, torch.Tensor) and leaf.dtype == torch.float16
                   for leaf in tree_leaves((args, kwargs))):
            return func(*args, **kwargs)
        if func in self.EMULATED:
            args, kwargs = tree_map_only(torch.Tensor, _float16_as_float32, (args, kwargs))
            return func(*args, **kwargs).to(torch.float16)
        if func in self.REFUSED:
            raise RuntimeError(f"{func} on float16 is not emulated as a GPU runs it")
        return func(*args, **kwargs)


def _float16_as_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype == torch.float16 else tensor


class Fp16MixedEngine(EmbeddingEngine):
    """The engine's mixed precision as a GPU runs it (float32 weights, float16 autocast), on
    any device: float16 matrix multiplications emulated by Fp16TensorCores. Build it over
    float32 models, with mixed=False: the autocast is this class's."""

    def forward_batch(self, model, inputs):
        with torch.autocast(self.device.type, torch.float16), Fp16TensorCores():
            return super().forward_batch(model, inputs)


def calibrated_classifier(features: torch.Tensor, seed: int = 0) -> MLPClassifier:
    """A random MLP of the published shape whose batch norm standardises these features'
    hidden layer, so that its calls are not all the same."""
    torch.manual_seed(seed)
    model = MLPClassifier(features.shape[1]).eval()
    with torch.no_grad():
        hidden = model.hidden_layer(features)
        model.bn1.running_mean.copy_(hidden.mean(0))
        model.bn1.running_var.copy_(hidden.var(0) + 1e-6)
    return model


def agreement(low: torch.Tensor, exact: torch.Tensor, classifier: MLPClassifier) -> dict:
    cosine = torch.nn.functional.cosine_similarity(low, exact, dim=1)
    p_low, p_exact = classifier.predict_proba(low), classifier.predict_proba(exact)
    calls_low, calls_exact = p_low[:, 1] > p_low[:, 0], p_exact[:, 1] > p_exact[:, 0]
    margin_exact = p_exact[:, 1] - p_exact[:, 0]
    shift = ((p_low[:, 1] - p_low[:, 0]) - margin_exact).abs()
    quantiles = torch.tensor([0.5, 0.99, 0.999, 1.0])
    return {
        "cosine": {"min": round(cosine.min().item(), 6), "mean": round(cosine.mean().item(), 6)},
        "identical_calls": round((calls_low == calls_exact).float().mean().item(), 6),
        "differing_calls": int((calls_low != calls_exact).sum()),
        "virus_fraction_fp32": round(calls_exact.float().mean().item(), 4),
        "margin_shift_quantiles": dict(zip(("p50", "p99", "p99.9", "max"),
                                           (round(v, 6) for v in
                                            torch.quantile(shift, quantiles).tolist()))),
        "frames_within_margin_of_max_shift": round(
            (margin_exact.abs() <= shift.max()).float().mean().item(), 6),
        "max_score_diff": round((p_low - p_exact).abs().max().item(), 6),
    }


def build_engines(precisions: list[str], device: torch.device, esm_shape: dict,
                  dnabert_shape: dict, workdir: Path) -> dict[str, EmbeddingEngine]:
    """float32 and the chosen precisions, over the same random weights (a bfloat16 copy only
    when bfloat16 is chosen: the 3B model's float32 weights alone are 11 GB)."""
    esm32 = random_esm2(**esm_shape, device=device, dtype=torch.float32, seed=1)
    directory = write_demo_dnabert2(workdir / "dnabert", seed=2, **dnabert_shape)
    dnabert32 = load_dnabert2(directory, device, torch.float32)
    engines = {"float32": EmbeddingEngine(esm32, dnabert32)}
    if "bfloat16" in precisions:
        engines["bfloat16"] = EmbeddingEngine(copy.deepcopy(esm32).to(torch.bfloat16),
                                              load_dnabert2(directory, device, torch.bfloat16))
    if "mixed" in precisions:
        engines["mixed"] = EmbeddingEngine(esm32, dnabert32, mixed=True)
    if "mixed-fp16" in precisions:
        engines["mixed-fp16"] = Fp16MixedEngine(esm32, dnabert32)
    return engines


def embed_all(engines: dict[str, EmbeddingEngine], nucleotides: list[str], proteins: list[str],
              cache: Path | None, setup: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Each engine's features of the frames, SLICE frames at a time, every precision in turn
    (so that an interrupted run has done as many frames in each). With `cache`, each slice's
    features are kept there under a digest of what determines them (the frames, the shapes,
    the precision) and taken from there by a later run: a run of hours resumes, and a
    smaller --frames reports on the slices done."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in engines}
    seconds, cached = dict.fromkeys(engines, 0.0), 0
    for first in range(0, len(proteins), SLICE):
        rows = slice(first, first + SLICE)
        for name, engine in engines.items():
            key = json.dumps([setup, name, nucleotides[rows], proteins[rows]]).encode()
            path = cache and cache / f"{name}-{hashlib.sha256(key).hexdigest()[:16]}.pt"
            if path and path.exists():
                parts[name].append(torch.load(path))
                cached += 1
                continue
            begin = time.perf_counter()
            parts[name].append(engine.embed(nucleotides[rows], proteins[rows]))
            seconds[name] += time.perf_counter() - begin
            if path:
                torch.save(parts[name][-1], path.with_suffix(".tmp"))
                path.with_suffix(".tmp").replace(path)
    return ({name: torch.cat(features) for name, features in parts.items()},
            {"embed_s": {name: round(value, 2) for name, value in seconds.items()},
             "slices_from_cache": cached})


def run(device: torch.device, frames: int, dry: bool, workdir: Path,
        precisions: list[str], cache: Path | None = None) -> dict:
    esm_shape, dnabert_shape = (TINY_ESM, TINY_DNABERT) if dry else (ESM_3B, DNABERT_S_SHAPE)
    ids, nucleotides, proteins = prepared_frames(frames, workdir)
    start = time.perf_counter()
    engines = build_engines(precisions, device, esm_shape, dnabert_shape, workdir)
    built = time.perf_counter() - start
    features, timing = embed_all(engines, nucleotides, proteins, cache,
                                 {"esm": esm_shape, "dnabert": dnabert_shape, "device": str(device),
                                  "torch": torch.__version__})
    classifier = calibrated_classifier(features["float32"])
    chunks = [frame_id[:-2] for frame_id in ids]  # '{read}_chunk_{k}' + strand + frame
    result = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
              "dry": dry, "esm_shape": esm_shape, "dnabert_shape": dnabert_shape,
              "frames": frames, "chunks": len(set(chunks)),
              "reads": int(ids[-1].split("_chunk_")[0].removeprefix("read")) + 1,
              "float32_matmul_precision": torch.get_float32_matmul_precision(),
              "build_s": round(built, 1), **timing,
              **{name: agreement(features[name], features["float32"], classifier)
                 for name in precisions}}
    margins = {"mixed": rescore_margin(engines["mixed"]) if "mixed" in engines else None,
               "mixed-fp16": RESCORE_MARGINS[torch.float16]}
    for name in ("mixed", "mixed-fp16"):
        if name in precisions:
            result[f"{name}_rescored"] = rescoring(features, name, classifier, chunks,
                                                   margins[name],
                                                   result[name]["margin_shift_quantiles"]["max"])
    return result


def rescoring(features: dict[str, torch.Tensor], name: str, classifier: MLPClassifier,
              chunks: list[str], margin: float, max_shift: float) -> dict:
    """The scoring job's rule on one precision's scores at the package's margin; whether that
    margin is SAFETY x the largest shift measured, and the rule at that (rounded up to 3
    decimals)."""
    needed = math.ceil(SAFETY * max_shift * 1000) / 1000
    return {**after_rescoring(features, name, classifier, chunks, margin),
            "max_shift": max_shift, f"margin_is_{SAFETY}x_max_shift": margin >= SAFETY * max_shift,
            f"at_{SAFETY}x_max_shift": after_rescoring(features, name, classifier, chunks,
                                                       needed)}


def after_rescoring(features: dict[str, torch.Tensor], name: str, classifier: MLPClassifier,
                    chunks: list[str], margin: float) -> dict:
    """One precision's scores with the scoring job's rule applied, as to one window in the
    middle of a shard (so its first and last chunks are judged like the others): how many
    frames it rescores, and the frame and chunk calls after it against float32's."""
    low = classifier.predict_proba(features[name])
    window = FrameWindow(1, [str(i) for i in range(len(low))], [], [], final=False,
                         chunks=chunks)
    need = rescore_positions(low, window, margin)
    fixed = low.clone()
    fixed[torch.from_numpy(need)] = classifier.predict_proba(features["float32"][need])
    truth = classifier.predict_proba(features["float32"])
    return {"margin": margin, "rescored_frames": len(need),
            "rescored_fraction": round(len(need) / len(low), 6),
            "identical_calls": round(same_calls(fixed, truth), 6),
            "identical_chunk_calls": round(same_chunk_calls(fixed, truth, chunks), 6)}


def same_calls(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Fraction of frames called alike (virus: P(virus) > P(others))."""
    return ((scores[:, 1] > scores[:, 0]) == (truth[:, 1] > truth[:, 0])).float().mean().item()


def same_chunk_calls(scores: torch.Tensor, truth: torch.Tensor, chunks: list[str]) -> float:
    """Fraction of chunks called alike, as classify calls them: virus when the chunk's largest
    P(virus) is at least its largest P(others)."""
    def calls(values: torch.Tensor) -> list[bool]:
        best: dict[str, tuple[float, float]] = {}
        for chunk, (others, virus) in zip(chunks, values.tolist()):
            b_others, b_virus = best.get(chunk, (others, virus))
            best[chunk] = (max(b_others, others), max(b_virus, virus))
        return [virus >= others for others, virus in best.values()]
    return sum(a == b for a, b in zip(calls(scores), calls(truth))) / len(set(chunks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny shapes, on the CPU")
    parser.add_argument("--cpu", action="store_true",
                        help="the published shapes on the CPU (slow: use --frames ~100)")
    parser.add_argument("--frames", type=int, default=None, help="default 8000 (dry: 300)")
    parser.add_argument("--precisions", default="bfloat16,mixed",
                        help=f"comma-separated, of {', '.join(PRECISIONS)} (default: "
                             "bfloat16,mixed); float32 always runs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "agreement.json")
    parser.add_argument("--cache", type=Path, help="keep each slice's features in this "
                        "directory: a rerun resumes, a smaller --frames reports on what is done")
    args = parser.parse_args()
    if not (args.dry or args.cpu) and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry for the CPU check of this script, or --cpu")
    precisions = args.precisions.split(",")
    if not precisions or set(precisions) - set(PRECISIONS):
        parser.error(f"--precisions: comma-separated, of {', '.join(PRECISIONS)}")
    device = torch.device("cpu" if args.dry or args.cpu else "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)
        result = run(device, args.frames or (300 if args.dry else 8000), args.dry, Path(tmp),
                     precisions, args.cache)
    result.update(torch=torch.__version__, machine=platform.machine(),
                  date=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
