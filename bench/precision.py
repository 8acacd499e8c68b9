"""Precision: what bfloat16 changes, what float16 (the GPU default) keeps, and what keeping
it costs.

Two measurements, both through the scoring job itself (`embed_shard_resumable` with
`ScoreRows`: prepared shards, whole-chunk windows, float32 rescoring of frames and chunks near
the decision boundary in float16):

  agreement  the workflow's calls against the original tool's own outputs on
             ../shared/reference/end-to-end/ (its reads and model files), at both chunk sizes,
             in float32, bfloat16 and float16: identical frame and chunk calls, the largest
             score difference, and the largest shift of the margin P(virus) - P(others) from
             float32's (what the rescoring margin must cover), frames rescored.
  cost       throughput on frames of random 150-bp reads (ESM-2 of the esm2_t6_8M shape and a
             768-wide DNABERT-2, random weights, and a random classifier of the published
             shape whose batch norm is fitted to the float32 features, so that its calls split
             both ways): float16 (with its rescoring) against plain bfloat16, float32 beside
             them; repeats interleaved, best of each. What rescoring costs depends on how many
             frames lie near the boundary: this classifier's scores crowd it and it amplifies
             the precision's noise, a worst case beside a trained classifier, which is sure of
             most frames. On a CPU float16 runs no faster than float32 (no tensor cores): the
             rescored fraction is the figure that carries over to a GPU.

    .venv/bin/python bench/precision.py [--frames 2000] [--repeats 2]

Results: printed, and saved to bench/results/precision.json.
"""

from __future__ import annotations

import argparse
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

from agreement import calibrated_classifier  # noqa: E402
from embed import DNABERT_CPU_SHAPE, ESM_8M_SHAPE, random_reads  # noqa: E402
from virnucpro.classify import aggregate  # noqa: E402
from virnucpro.embed import EmbeddingEngine  # noqa: E402
from virnucpro.shards import ShardFrames, read_frames  # noqa: E402
from virnucpro.models.classifier import load_classifier, save_classifier  # noqa: E402
from virnucpro.demo_models import write_demo_dnabert2, write_demo_esm2  # noqa: E402
from virnucpro.prepare import write_shards  # noqa: E402
from virnucpro.precision import RESCORE_MARGINS, dtype_name  # noqa: E402
from virnucpro.resume import CheckpointSettings, ScoreRows, embed_shard_resumable  # noqa: E402

REFERENCE = HERE.parent.parent / "shared" / "reference" / "end-to-end"
PRECISIONS = ("float32", "bfloat16", "float16")


def score_sample(reads: Path, chunk: int, engine: EmbeddingEngine, classifier, out: Path
                 ) -> tuple[dict, float]:
    """Prepare, embed and score one sample as the workflow's jobs do; (facts, seconds)."""
    prepared = out / "prepare"
    if not prepared.exists():
        write_shards(reads, chunk, 10**7, prepared)
    shard = prepared / "shards" / "shard_000000"
    scores = out / engine.precision.name / "scores" / "shard_000000.tsv"
    scores.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    embed_shard_resumable(ShardFrames(shard.with_suffix(".fna"), shard.with_suffix(".faa")),
                          ScoreRows(scores, shard.with_suffix(".index.tsv"), classifier), engine,
                          CheckpointSettings(frames=10**9, seconds=10**9))
    seconds = time.perf_counter() - start
    aggregate(prepared / "reads.tsv", [scores], scores.parent.parent)
    about = json.loads(scores.with_suffix(".json").read_text())
    return {"frames": about["frames"], "rescored": about["rescored_in_float32"]}, seconds


def _tables(directory: Path) -> tuple[dict, dict]:
    frames = {line.split("\t")[0]: line.split("\t")[1:] for line in
              (directory / "prediction_results.txt").read_text().splitlines()[1:]}
    chunks = dict(line.split("\t") for line in
                  (directory / "prediction_results_highestscore.csv").read_text().splitlines()[1:])
    return frames, chunks


def margin_shift(engine: EmbeddingEngine, prepared: Path, classifier) -> float:
    """The largest |margin - float32's margin| over the shard's frames, margin = P(virus) -
    P(others), the engine's own pass against its float32 pass (no rescoring)."""
    shard = prepared / "shards" / "shard_000000"
    _, nucleotides, proteins = read_frames(shard.with_suffix(".fna"), shard.with_suffix(".faa"))
    margins = [classifier.predict_proba(features) @ torch.tensor([-1.0, 1.0]) for features in
               (engine.embed(nucleotides, proteins), exact_features(engine, nucleotides,
                                                                    proteins))]
    return round(float((margins[0] - margins[1]).abs().max()), 6)


def exact_features(engine: EmbeddingEngine, nucleotides: list[str], proteins: list[str]
                   ) -> torch.Tensor:
    """float32's features of the same models: the engine's float32 pass where it has one."""
    if engine.precision.rescored:
        return engine.embed(nucleotides, proteins, float32=True)
    models = REFERENCE / "models"
    return EmbeddingEngine.from_config(models / "esm2_t36_tiny_UR50D.pt", models / "dnabert",
                                       "cpu", "float32").embed(nucleotides, proteins)


def agreement(workdir: Path) -> dict:
    models = REFERENCE / "models"
    classifier = load_classifier(models / "classifier.pth")
    results = {}
    for chunk in (500, 300):
        original_frames, original_chunks = _tables(REFERENCE / f"chunk{chunk}")
        for precision in PRECISIONS:
            engine = EmbeddingEngine.from_config(models / "esm2_t36_tiny_UR50D.pt",
                                                 models / "dnabert", "cpu", precision)
            out = workdir / f"reference-{chunk}"
            facts, _ = score_sample(REFERENCE / "reads.fa", chunk, engine, classifier, out)
            frames, chunks = _tables(out / precision)
            assert (frames.keys() == original_frames.keys()
                    and chunks.keys() == original_chunks.keys())
            results[f"chunk{chunk}_{precision}"] = {
                "frame_calls_identical": sum(frames[f][0] == original_frames[f][0]
                                             for f in frames),
                "frames": len(frames),
                "chunk_calls_identical": sum(chunks[c] == original_chunks[c] for c in chunks),
                "chunks": len(chunks),
                "max_score_diff": round(max(abs(float(frames[f][2]) - float(original_frames[f][2]))
                                            for f in frames), 6),
                "rescored": facts["rescored"]}
            if precision != "float32":  # the 16-bit pass alone, before any rescoring
                results[f"chunk{chunk}_{precision}"]["max_margin_shift_unrescored"] = \
                    margin_shift(engine, out / "prepare", classifier)
            print(f"reference, chunk {chunk}, {precision:>8}: "
                  f"{results[f'chunk{chunk}_{precision}']}")
    return results


def cost(workdir: Path, frames: int, repeats: int) -> dict:
    reads = workdir / "reads.fa"
    random_reads(reads, int(frames * 1.8))  # ~0.55 stop-free frames per read
    esm = write_demo_esm2(workdir / "esm2_t6_8M_UR50D.pt", seed=1, **ESM_8M_SHAPE)
    dnabert = write_demo_dnabert2(workdir / "dnabert", seed=2, **DNABERT_CPU_SHAPE)
    engines = {p: EmbeddingEngine.from_config(esm, dnabert, "cpu", p) for p in PRECISIONS}
    out = workdir / "cost"
    write_shards(reads, 300, 10**7, out / "prepare")
    shard = out / "prepare" / "shards" / "shard_000000"
    _, nucleotides, proteins = read_frames(shard.with_suffix(".fna"), shard.with_suffix(".faa"))
    classifier_file = workdir / "classifier.safetensors"
    save_classifier(calibrated_classifier(engines["float32"].embed(nucleotides, proteins)),
                    classifier_file, {})
    classifier = load_classifier(classifier_file)
    seconds = {p: [] for p in PRECISIONS}
    facts = {}
    for _ in range(repeats):
        for precision in PRECISIONS:
            facts[precision], took = score_sample(reads, 300, engines[precision], classifier, out)
            seconds[precision].append(round(took, 2))
    best = {p: min(s) for p, s in seconds.items()}
    result = {"frames": facts["float16"]["frames"], "seconds": seconds,
              "frames_per_s": {p: round(facts[p]["frames"] / best[p], 1) for p in PRECISIONS},
              "float16_vs_bfloat16": round(best["bfloat16"] / best["float16"], 3),
              "float32_vs_bfloat16": round(best["bfloat16"] / best["float32"], 3),
              "rescored_fraction": round(facts["float16"]["rescored"]
                                         / facts["float16"]["frames"], 4)}
    print(f"cost: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"rescore_margins": {dtype_name(k): v for k, v in RESCORE_MARGINS.items()},
                  "agreement": agreement(Path(tmp)),
                  "cost": cost(Path(tmp), args.frames, args.repeats),
                  "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                  "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = HERE / "results" / "precision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
