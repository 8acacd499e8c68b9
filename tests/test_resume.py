"""Resumable shard embedding: interrupted runs finish with results identical to
uninterrupted ones, every frame exactly once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch

from conftest import Interrupted, die_after
from kill_resume import write_shard
from virnucpro.checkpoint import CheckpointError, frames_checkpointed
from virnucpro.features import read_features
from virnucpro.demo_models import write_demo_models
from virnucpro.embed import EmbeddingEngine
from virnucpro.shards import ShardFrames
from virnucpro.layout import partial_dir
from virnucpro.resume import CheckpointSettings, FeatureRows, embed_shard_resumable
from workflow_helpers import assert_same_features


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def engine(models):
    return EmbeddingEngine.from_config(models["esm"], models["dnabert"], device="cpu")


def dying(engine, windows):
    """A new engine on `engine`'s models that dies after `windows` windows."""
    return die_after(EmbeddingEngine(engine.esm, engine.dnabert), windows)


SETTINGS = CheckpointSettings(frames=10, seconds=3600, window_frames=5)


def run(engine, shard, out, settings=SETTINGS):
    return embed_shard_resumable(ShardFrames(*shard), FeatureRows(out),
                                 engine, settings)


def test_interrupted_run_resumes_to_identical_results(tmp_path, engine):
    shard = write_shard(tmp_path, 47)
    assert run(engine, shard, tmp_path / "clean.pt") == 47
    clean = read_features(tmp_path / "clean.pt")

    out = tmp_path / "resumed.pt"
    with pytest.raises(Interrupted):
        run(dying(engine, windows=5), shard, out)  # 25 frames done, 20 saved
    assert not out.exists() and not out.with_suffix(".done").exists()
    saved = sorted(p.name for p in partial_dir(out).glob("batch_*.done"))
    assert saved == ["batch_000000000000_000000000010.done", "batch_000000000010_000000000020.done"]
    assert run(engine, shard, out) == 27  # only the frames after the saved batches
    resumed = read_features(out)
    assert resumed.ids == clean.ids and torch.equal(resumed.data, clean.data)
    assert out.with_suffix(".done").read_text() == "47\n"
    assert not partial_dir(out).exists()


def test_crash_during_final_assembly_redoes_nothing(tmp_path, engine, monkeypatch):
    shard = write_shard(tmp_path, 20)
    out = tmp_path / "a.pt"

    def crash(*args, **kwargs):
        raise Interrupted
    monkeypatch.setattr("virnucpro.resume.assemble_features", crash)
    with pytest.raises(Interrupted):
        run(engine, shard, out)
    monkeypatch.undo()
    # Every batch was saved before the crash: nothing is embedded again.
    assert run(engine, shard, out) == 0
    assert read_features(out).ids == [f"f{i}" for i in range(20)]


def test_resume_refuses_partial_results_from_other_settings(tmp_path, engine):
    shard = write_shard(tmp_path, 20)
    out = tmp_path / "a.pt"
    with pytest.raises(Interrupted):
        run(dying(engine, windows=2), shard, out)
    with pytest.raises(CheckpointError, match="different settings"):
        run(engine, shard, out, CheckpointSettings(10, 3600, window_frames=2))
    assert run(engine, shard, out, CheckpointSettings(10, 3600, 2, force_resume=True)) == 10


def test_sigkill_of_the_cli_loses_at_most_one_interval(tmp_path, models):
    shard = write_shard(tmp_path, 3000, seed=1)
    out = tmp_path / "k.pt"
    cmd = [sys.executable, "-m", "virnucpro.cli", "-q", "embed", "--nucleotide", shard[0],
           "--protein", shard[1], "--esm-model", models["esm"],
           "--dnabert-model", models["dnabert"],
           "--device", "cpu", "--checkpoint-frames", "200", "--out", out]
    proc = subprocess.Popen(list(map(str, cmd)))
    partial = partial_dir(out)
    deadline = time.monotonic() + 120
    while len(list(partial.glob("batch_*.done"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    saved = frames_checkpointed(partial)
    assert saved >= 400
    rerun = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    redone = int(rerun.stdout.split()[0].replace(",", ""))
    assert redone == 3000 - saved  # nothing saved was embedded again
    clean = tmp_path / "clean.pt"
    subprocess.run(list(map(str, cmd[:-1] + [clean])), check=True)
    a, b = read_features(out), read_features(clean)  # three processes: PROCESS_NOISE's note
    assert a.ids == b.ids
    assert_same_features(a.data, b.data)


def test_sigterm_flushes_the_writer_and_the_run_resumes(tmp_path, models):
    shard = write_shard(tmp_path, 3000, seed=2)
    out = tmp_path / "t.pt"
    cmd = list(map(str, [sys.executable, "-m", "virnucpro.cli", "-q", "embed", "--nucleotide",
                         shard[0], "--protein", shard[1], "--esm-model", models["esm"],
                         "--dnabert-model", models["dnabert"], "--device", "cpu",
                         "--checkpoint-frames", "200", "--out", out]))
    proc = subprocess.Popen(cmd)
    partial = partial_dir(out)
    deadline = time.monotonic() + 120
    while not list(partial.glob("batch_*.done")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGTERM
    # Every batch the writer had been handed is on disk with its sentinel; no temp file is left.
    batches = sorted(partial.glob("batch_*.pt"))
    assert batches and all(b.with_suffix(".done").exists() for b in batches)
    assert not list(partial.glob(".*.tmp"))
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert read_features(out).ids == [f"f{i}" for i in range(3000)]


class FailingRows(FeatureRows):
    """A result whose rows fail at the second window, as a full disk fails a writer."""

    def __init__(self, out):
        super().__init__(out)
        self.windows = 0

    def rows(self, window, features, engine):
        self.windows += 1
        if self.windows == 2:
            raise OSError(28, "No space left on device")
        return super().rows(window, features, engine)


def test_a_failing_job_stops_the_loader_thread(tmp_path, engine):
    """The job's error ends the engine's loader thread too: one left running inside torch
    when the interpreter exits aborts the process, and its exit status is lost."""
    import threading

    shard = write_shard(tmp_path, 40)
    with pytest.raises(OSError, match="No space left") as error:
        embed_shard_resumable(ShardFrames(*shard), FailingRows(tmp_path / "a.pt"), engine,
                              CheckpointSettings(frames=10, seconds=3600, window_frames=5))
    # While the error (and so the job's frame) is still held, as a step's reporting holds it.
    assert error.value and [t for t in threading.enumerate()
                            if t.name == "virnucpro-loader"] == []


@pytest.fixture(scope="module")
def damaged(models, tmp_path_factory):
    """Demo models, each with one NaN weight (files sound: only their numbers show it)."""
    from conftest import with_nan_weight
    from virnucpro.models.classifier import load_classifier, save_classifier

    where = tmp_path_factory.mktemp("damaged")
    dnabert = where / "dnabert"
    shutil.copytree(models["dnabert"], dnabert)
    weights = dnabert / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    name = next(k for k in state if state[k].dim() == 2 and "embeddings" not in k)
    state[name].view(-1)[0] = float("nan")
    safetensors.torch.save_file(state, weights)
    esm = with_nan_weight(models["esm"], where / "esm2_t2_nan.pt")
    classifier = load_classifier(models["classifier"])
    with torch.no_grad():
        classifier.hidden_layer.weight[0, 0] = float("nan")
    save_classifier(classifier, where / "classifier.safetensors", {})
    return {"esm": esm, "dnabert": dnabert,
            "classifier": load_classifier(where / "classifier.safetensors")}


@pytest.mark.parametrize("result, dtype, broken", [
    ("scores", "float32", "esm"), ("scores", "float32", "dnabert"),
    ("scores", "float32", "classifier"), ("scores", "float16", "esm"),
    ("features", "float32", "esm"), ("features", "float32", "dnabert")])
def test_a_model_computing_nan_stops_the_job_naming_it(tmp_path, models, damaged, result, dtype,
                                                       broken):
    """Damaged weights give NaN: the job stops with one line naming the model before any
    row is saved or anything published (in float16, once float32 says so too);
    nothing blames a feature file."""
    from virnucpro.errors import ModelError
    from virnucpro.models.classifier import load_classifier
    from virnucpro.resume import ScoreRows

    kept = result == "features"
    shard = write_shard(tmp_path, 20)
    esm = damaged["esm"] if broken == "esm" else models["esm"]
    dnabert = damaged["dnabert"] if broken == "dnabert" else models["dnabert"]
    engine = EmbeddingEngine.from_config(esm, dnabert, device="cpu", dtype=dtype)
    out = tmp_path / ("a.pt" if kept else "a.tsv")
    if kept:
        result = FeatureRows(out)
    else:
        index = tmp_path / "a.index.tsv"
        index.write_text("frame_id\tread_index\tchunk\tframe\n"
                         + "".join(f"f{i}\t0\t{i}\tF1\n" for i in range(20)))
        classifier = damaged["classifier"] if broken == "classifier" else \
            load_classifier(models["classifier"])
        result = ScoreRows(out, index, classifier)
    with pytest.raises(ModelError) as raised:
        embed_shard_resumable(ShardFrames(*shard), result, engine, SETTINGS)
    named = {"esm": esm, "dnabert": dnabert / "model.safetensors",
             "classifier": damaged["classifier"].source}[broken]
    assert raised.value.one_line().startswith(f"{named}: the ")
    assert "NaN or infinite" in raised.value.one_line()
    assert not out.exists() and not list(partial_dir(out).glob("batch_*"))
