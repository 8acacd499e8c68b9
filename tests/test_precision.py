"""float16, the GPU default: weights and activations in float16 (no weight cast per batch),
and the scoring job's float32 rescoring of frames and chunks near the decision boundary,
gathered over windows, so that calls are float32's; a resumed job rescores as an
uninterrupted one.
"""

from __future__ import annotations

import json
import random
import threading

import pytest
import torch

from virnucpro.classify import aggregate
from virnucpro.demo_models import write_demo_models
from virnucpro.embed import EmbeddingEngine
from virnucpro.layout import partial_dir
from virnucpro.models.classifier import load_classifier, save_classifier
from virnucpro.precision import rescore_positions
from virnucpro.prepare import write_shards
from virnucpro.resume import CheckpointSettings, ScoreRows, embed_shard_resumable
from virnucpro.shards import FrameWindow, ShardFrames, read_frames
from agreement import calibrated_classifier
from conftest import Interrupted, die_after
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


def test_float16_is_closer_to_float32_than_bfloat16(tmp_path):
    models = write_demo_models(tmp_path / "models")
    rng = random.Random(2)
    proteins = ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(20, 90)))
                for _ in range(200)]
    nucleotides = ["".join(rng.choices("ACGT", k=3 * len(p) + 1)) for p in proteins]
    engines = {name: EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cpu", name)
               for name in ("float32", "bfloat16", "float16")}
    assert engines["float16"].settings()["dtype"] == "float16"
    # Weights stored in 16 bits: no cast per batch.
    assert {p.dtype for p in engines["float16"].esm.parameters()} == {torch.float16}
    assert {p.dtype for p in engines["float16"].dnabert.model.parameters()} == {torch.float16}
    exact = engines["float32"].embed(nucleotides, proteins)
    error = {name: (engines[name].embed(nucleotides, proteins) - exact).abs().max().item()
             for name in ("bfloat16", "float16")}
    assert 0 < error["float16"] < error["bfloat16"], error
    # float32=True: the float16 engine's own float32 numbers, those of a float32 engine (the
    # demo ESM-2 file is float16, so its weights convert back exactly; DNABERT's float32
    # originals are kept).
    assert torch.equal(engines["float16"].embed(nucleotides, proteins, float32=True), exact)


def _reads(path, n=120, seed=3):
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(n):
            out.write(f">r{i}\n{''.join(rng.choices(STOP_FREE_CODONS, k=rng.randint(60, 300)))}\n")


class Watched(EmbeddingEngine):
    """Records each float32 rescoring pass's frames, and for each of its batches the thread
    that computes it and how many loader threads are running."""

    def __init__(self, base: EmbeddingEngine) -> None:
        super().__init__(base.esm, base.dnabert, esm_tokens=base.budgets.esm,
                         float32_weights=base.float32_weights)
        self.passes: list[tuple[str, ...]] = []
        self.batches: set[tuple[str, int]] = set()

    def embed_now(self, nucleotides, proteins, float32=True):
        self.passes.append(tuple(proteins))
        return super().embed_now(nucleotides, proteins, float32)

    def forward_batch(self, model, inputs, float32=False):
        if float32:
            loaders = [t for t in threading.enumerate() if t.name == "virnucpro-loader"]
            self.batches.add((threading.current_thread().name, len(loaders)))
        return super().forward_batch(model, inputs, float32)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A prepared shard, demo models, and a classifier whose batch norm is fitted to the
    shard's float32 features, so that its scores crowd the decision boundary (a worst case:
    many frames to rescore, in most windows)."""
    where = tmp_path_factory.mktemp("scored")
    models = write_demo_models(where / "models")
    _reads(where / "reads.fa")
    prepared = where / "prepare"
    write_shards(where / "reads.fa", 500, 10**6, prepared)
    shard = prepared / "shards" / "shard_000000"
    engine = EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cpu", "float32")
    features = engine.embed(*read_frames(shard.with_suffix(".fna"), shard.with_suffix(".faa"))[1:])
    save_classifier(calibrated_classifier(features), where / "crowded.safetensors", {})
    return where, {**models, "classifier": where / "crowded.safetensors"}, prepared


def test_a_float16_scoring_job_gives_float32_calls(scored):
    where, models, prepared = scored
    classifier = load_classifier(models["classifier"])
    shard = prepared / "shards" / "shard_000000"
    calls, watched = {}, None
    for precision in ("float32", "float16"):
        engine = EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cpu", precision)
        if precision == "float16":
            engine = Watched(engine)
        out = where / precision / "scores" / "shard_000000.tsv"
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
        work = about["work"]
        assert work["frames"] == about["frames"]
        assert work["frames_rescored"] == about["rescored_in_float32"]
        for model in ("esm", "dnabert"):
            counted = work["tokens"][model]["pass"]
            assert 0 < counted["real"] <= counted["padded"] and work["tokens_per_s"][model] > 0
        if precision == "float16":
            watched = engine
    rescored, float16 = calls["float16"]
    frames = len(float16["prediction_results.txt"]) - 1
    assert calls["float32"][0] == 0 and 0 < rescored < frames
    assert float16 == calls["float32"][1]  # every frame call and every chunk call
    summary = {p: [line.split("\t")[-1] for line in
                   (where / p / "summary.tsv").read_text().splitlines()]
               for p in ("float32", "float16")}
    assert summary["float16"] == summary["float32"]  # and every read call
    # The rescoring: gathered over windows (fewer passes than windows), computed in the job's
    # own thread beside the engine's one loader thread at most (none started for it).
    windows = -(-frames // 64)
    assert sum(map(len, watched.passes)) == rescored and 0 < len(watched.passes) < windows
    threads = {thread for thread, _ in watched.batches}
    assert threads == {threading.main_thread().name}
    assert watched.batches and max(loaders for _, loaders in watched.batches) <= 1


def test_a_resumed_float16_scoring_job_equals_an_uninterrupted_one(scored):
    """Saved batches end where rescoring groups end: the resumed job gathers the same groups
    after them (the same float32 batches: their numbers can depend on what else a batch
    holds), so its scores are the uninterrupted job's, byte for byte."""
    where, models, prepared = scored
    classifier = load_classifier(models["classifier"])
    shard = prepared / "shards" / "shard_000000"
    engine = EmbeddingEngine.from_config(models["esm"], models["dnabert"], "cpu", "float16")
    # Groups of up to 4 windows of 16 frames; saving every 40 frames would cut one in two.
    settings = CheckpointSettings(frames=40, seconds=3600, window_frames=16)

    def run(engine, name):
        out = where / name / "scores" / "shard_000000.tsv"
        out.parent.mkdir(parents=True, exist_ok=True)
        result = ScoreRows(out, shard.with_suffix(".index.tsv"), classifier)
        return out, embed_shard_resumable(ShardFrames(shard.with_suffix(".fna"),
                                                      shard.with_suffix(".faa")),
                                          result, engine, settings)

    uninterrupted, resuming = Watched(engine), Watched(engine)
    clean, frames = run(uninterrupted, "clean")
    dying = die_after(Watched(engine), windows=7)
    with pytest.raises(Interrupted):
        run(dying, "resumed")
    resumed = where / "resumed" / "scores" / "shard_000000.tsv"
    assert list(partial_dir(resumed).glob("batch_*.done")) and not resumed.exists()
    # Killed in the middle of a group (its pass, or the next, had not finished when it died).
    assert len(dying.passes) < len(uninterrupted.passes)
    _, redone = run(resuming, "resumed")
    assert 0 < redone < frames
    assert resuming.passes == uninterrupted.passes[-len(resuming.passes):]
    assert resumed.read_text() == clean.read_text()
    assert json.loads(resumed.with_suffix(".json").read_text())["rescored_in_float32"] == \
        json.loads(clean.with_suffix(".json").read_text())["rescored_in_float32"] > 0
