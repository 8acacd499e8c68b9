"""Mixed precision: bfloat16 matrix multiplications over float32 weights, and the scoring job's
float32 rescoring of frames and chunks near the decision boundary, so that calls are float32's.
"""

from __future__ import annotations

import json
import random

import torch

from virnucpro.classify import aggregate
from virnucpro.demo_models import write_demo_models
from virnucpro.embed import EmbeddingEngine
from virnucpro.shards import FrameWindow, ShardFrames
from virnucpro.models.classifier import load_classifier
from virnucpro.prepare import write_shards
from virnucpro.resume import (CheckpointSettings, ScoreRows, embed_shard_resumable,
                              rescore_positions)
from workflow_helpers import STOP_FREE_CODONS


def _scores(margins: list[float]) -> torch.Tensor:
    """[P(others), P(virus)] rows with these margins P(virus) - P(others)."""
    virus = torch.tensor([(1 + m) / 2 for m in margins])
    return torch.stack([1 - virus, virus], dim=1)


def _window(chunks: list[str], start: int = 10, final: bool = False) -> FrameWindow:
    return FrameWindow(start, [f"f{i}" for i in range(len(chunks))], [], [], final=final,
                       chunks=[("0", c) for c in chunks])


def test_rescoring_picks_frames_and_chunks_near_the_boundary():
    # chunk a: confident both ways (max P(virus) 0.95, max P(others) 0.8: margin 0.15)
    # chunk b: one frame within the margin of the frame boundary
    # chunk c: frames far from 0.5, but the chunk's call is close (max P(virus) 0.755, max
    #          P(others) 0.745): the frames that hold (or come within the margin of) those
    #          maxima are rescored, not its confident third frame
    margins = [0.9, -0.6, 0.8, 0.01, -0.9, 0.51, -0.49, -0.2]
    window = _window(["a", "a", "b", "b", "b", "c", "c", "c"])
    assert rescore_positions(_scores(margins), window, margin=0.02).tolist() == [3, 5, 6]
    assert rescore_positions(_scores(margins), window, margin=0.0).tolist() == []
    # The shard's first and last chunks may continue in another shard: always rescored.
    edges = rescore_positions(_scores(margins), _window(["a", "a", "b", "b", "b", "c", "c", "c"],
                                                        start=0, final=True), margin=0.02)
    assert edges.tolist() == [0, 1, 3, 5, 6, 7]
    # A 16-bit overflow (non-finite features, so NaN scores) is rescored too.
    nan = _scores([0.9, 0.9])
    nan[1] = float("nan")
    assert rescore_positions(nan, _window(["a", "b"]), margin=0.02).tolist() == [1]
    # Without chunk names each frame is its own chunk.
    plain = FrameWindow(5, ["x", "y", "z"], [], [])
    assert rescore_positions(_scores([0.5, 0.015, -0.3]), plain, margin=0.02).tolist() == [1]


def test_mixed_precision_is_closer_to_float32_than_bfloat16(tmp_path):
    models = write_demo_models(tmp_path / "models")
    rng = random.Random(2)
    proteins = ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(20, 90)))
                for _ in range(200)]
    nucleotides = ["".join(rng.choices("ACGT", k=3 * len(p) + 1)) for p in proteins]
    engines = {name: EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cpu", name)
               for name in ("float32", "bfloat16", "mixed")}
    assert engines["mixed"].settings()["dtype"] == "mixed"
    assert engines["mixed"].esm.embed_tokens.weight.dtype == torch.float32
    exact = engines["float32"].embed(nucleotides, proteins)
    error = {name: (engines[name].embed(nucleotides, proteins) - exact).abs().max().item()
             for name in ("bfloat16", "mixed")}
    assert 0 < error["mixed"] < error["bfloat16"], error  # bfloat16 matmuls on a CPU
    # exact=True: the mixed engine's own float32 numbers, those of a float32 engine.
    assert torch.equal(engines["mixed"].embed(nucleotides, proteins, exact=True), exact)


def _reads(path, n=120, seed=3):
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(n):
            out.write(f">r{i}\n{''.join(rng.choices(STOP_FREE_CODONS, k=rng.randint(60, 300)))}\n")


def test_a_mixed_scoring_job_gives_float32_calls(tmp_path):
    models = write_demo_models(tmp_path / "models")
    classifier = load_classifier(models["classifier"])
    _reads(tmp_path / "reads.fa")
    prepared = tmp_path / "prepare"
    write_shards(tmp_path / "reads.fa", 500, 10**6, prepared)
    shard = prepared / "shards" / "shard_000000"
    calls = {}
    for precision in ("float32", "mixed"):
        engine = EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cpu", precision)
        out = tmp_path / precision / "scores" / "shard_000000.tsv"
        out.parent.mkdir(parents=True)
        result = ScoreRows(out, shard.with_suffix(".index.tsv"), classifier)
        embed_shard_resumable(ShardFrames(shard.with_suffix(".fna"), shard.with_suffix(".faa")),
                              result, engine, CheckpointSettings(window_frames=64))
        about = json.loads(out.with_suffix(".json").read_text())
        assert about["settings"]["dtype"] == precision
        aggregate(prepared / "reads.tsv", [out], out.parent.parent)
        calls[precision] = about["rescored_in_float32"], {
            name: [line.split("\t")[:2] if name == "prediction_results.txt" else line
                   for line in (out.parent.parent / name).read_text().splitlines()]
            for name in ("prediction_results.txt", "prediction_results_highestscore.csv")}
    rescored, mixed = calls["mixed"]
    frames = len(mixed["prediction_results.txt"]) - 1
    assert calls["float32"][0] == 0 and 0 < rescored < frames
    assert mixed == calls["float32"][1]  # every frame call and every chunk call
    summary = {p: [line.split("\t")[-1] for line in
                   (tmp_path / p / "summary.tsv").read_text().splitlines()]
               for p in ("float32", "mixed")}
    assert summary["mixed"] == summary["float32"]  # and every read call
