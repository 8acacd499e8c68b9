"""bfloat16 and float16 against float32 on random models of the published shapes.

The same random weights (ESM-2 3B: 36 layers, 2560 wide; DNABERT-S: 12 layers, 768 wide) run
in float32, in bfloat16 and in float16 (weights and activations; no rescoring here) on frames
of random 150-bp reads; a random MLP of the published shape (3,328 -> 512 -> 2), its batch
norm fitted to the float32 features so that calls split both ways, scores them. Reported per
precision: per-row cosine of the features, the fraction of identical frame calls, and how far
it moves the decision margin P(virus) - P(others): what float16's float32 rescoring of
near-boundary frames must cover (precision.RESCORE_MARGINS). Then the scoring job's own rule
(precision.rescore_positions) on the float16 scores: the frames it rescores, and the calls
after rescoring. The precisions run one after the other, so that the CPU mode holds at most
a float32 and a 16-bit copy of ESM-2 3B.

    PYTHONPATH=src python3 bench/agreement.py --out DIR/agreement.json [--frames 8000]
    .venv/bin/python bench/agreement.py --cpu --frames 100   # the published shapes, slowly
    .venv/bin/python bench/agreement.py --dry      # tiny shapes on the CPU (make test)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from embed import DNABERT_S_SHAPE, TINY_DNABERT, make_frames  # noqa: E402
from virnucpro.demo_models import random_esm2, write_demo_dnabert2  # noqa: E402
from virnucpro.embed import EmbeddingEngine, store_in_16_bits  # noqa: E402
from virnucpro.models.classifier import MLPClassifier  # noqa: E402
from virnucpro.models.dnabert2 import load_dnabert2  # noqa: E402
from virnucpro.precision import PRECISIONS, rescore_margin, rescore_positions  # noqa: E402
from virnucpro.shards import FrameWindow  # noqa: E402

ESM_3B = {"layers": 36, "embed_dim": 2560, "heads": 40}
TINY_ESM = {"layers": 2, "embed_dim": 32, "heads": 4}


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


def run(device: torch.device, frames: int, dry: bool, workdir: Path) -> dict:
    esm_shape, dnabert_shape = (TINY_ESM, TINY_DNABERT) if dry else (ESM_3B, DNABERT_S_SHAPE)
    nucleotides, proteins, reads = make_frames(frames, workdir)
    start = time.perf_counter()
    esm = random_esm2(**esm_shape, device=device, dtype=torch.float32, seed=1)
    directory = write_demo_dnabert2(workdir / "dnabert", seed=2, **dnabert_shape)
    dnabert = load_dnabert2(directory, device, torch.float32)
    built = time.perf_counter() - start
    features, seconds = {}, {}

    def embed(name: str, engine: EmbeddingEngine) -> None:
        begin = time.perf_counter()
        features[name] = engine.embed(nucleotides, proteins)
        seconds[name] = round(time.perf_counter() - begin, 2)

    embed("float32", EmbeddingEngine(esm, dnabert))
    embed("bfloat16", EmbeddingEngine(copy.deepcopy(esm).to(torch.bfloat16),
                                      load_dnabert2(directory, device, torch.bfloat16)))
    kept = store_in_16_bits(esm, dnabert, torch.float16)  # the float32 copy is done with
    embed("float16", EmbeddingEngine(esm, dnabert, float32_weights=kept))
    classifier = calibrated_classifier(features["float32"])
    result = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
              "dry": dry, "esm_shape": esm_shape, "dnabert_shape": dnabert_shape,
              "frames": frames, "reads": reads, "build_s": round(built, 1), "embed_s": seconds,
              **{name: agreement(features[name], features["float32"], classifier)
                 for name in ("bfloat16", "float16")}}
    result["float16_rescored"] = after_rescoring(features, classifier,
                                                 rescore_margin(PRECISIONS["float16"]))
    return result


def after_rescoring(features: dict[str, torch.Tensor], classifier: MLPClassifier,
                    margin: float) -> dict:
    """The float16 scores with the scoring job's rule applied (one window, no chunk grouping:
    every frame its own chunk): how many frames it rescores, and the calls after it."""
    low = classifier.predict_proba(features["float16"])
    window = FrameWindow(1, [str(i) for i in range(len(low))], [], [], final=False)
    need = rescore_positions(low, window, margin)
    fixed = low.clone()
    fixed[torch.from_numpy(need)] = classifier.predict_proba(features["float32"][need])
    truth = classifier.predict_proba(features["float32"])
    same = ((fixed[:, 1] > fixed[:, 0]) == (truth[:, 1] > truth[:, 0])).float().mean().item()
    return {"margin": margin, "rescored_fraction": round(len(need) / len(low), 6),
            "identical_calls": round(same, 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny shapes, on the CPU")
    parser.add_argument("--cpu", action="store_true",
                        help="the published shapes on the CPU (slow: use --frames ~100)")
    parser.add_argument("--frames", type=int, default=None, help="default 8000 (dry: 300)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "agreement.json")
    args = parser.parse_args()
    if not (args.dry or args.cpu) and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry for the CPU check of this script, or --cpu")
    device = torch.device("cpu" if args.dry or args.cpu else "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        result = run(device, args.frames or (300 if args.dry else 8000), args.dry, Path(tmp))
    result.update(torch=torch.__version__, machine=platform.machine(),
                  date=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
