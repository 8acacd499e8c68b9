"""Training the classifier: the pieces, then the `train` target end to end on synthetic data."""

import json
import random
import shutil

import numpy as np
import pytest
import torch

import plain_prepare
from conftest import read_fasta, run_cli
from virnucpro.errors import UsageError
from virnucpro.frames import ambiguous_chunks, chunk_layout
from virnucpro.models.classifier import load_classifier
from virnucpro.prepare import write_shards
from virnucpro.train import (Examples, TrainingSettings, evaluate, fit, roc_curve, split_reads)
from workflow_helpers import DEMO_MODELS, STOP_FREE_CODONS, snakemake, write_config

# Codon usage is the learnable signal: viruses here favour GC-rich codons, the others AT-rich.
GC_RICH = ["GCC", "GGC", "CGC", "CCG", "GCG", "CCC", "GGG", "CTG", "AGC", "ACC"]
AT_RICH = ["AAT", "TTA", "ATA", "AAA", "TTT", "ATT", "TAT", "ACA", "AGA", "GAT"]


def synthetic(path, codons, n, seed, ambiguous=0):
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(n):
            seq = "".join(rng.choices(codons, k=rng.randint(50, 100)))
            if i < ambiguous:
                seq = seq[:40] + "N" + seq[41:]
            out.write(f">{path.stem}_{i}\n{seq}\n")


def test_roc_and_metrics_on_known_scores():
    labels = np.array([1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2])
    fpr, tpr = roc_curve(labels, scores)
    assert fpr.tolist() == [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1] and tpr[-1] == 1
    metrics = evaluate(labels, scores)
    assert metrics["roc_auc"] == pytest.approx(8 / 9)  # 8 of 9 virus/other pairs ordered
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"]) == \
        pytest.approx((5 / 6, 3 / 4, 1.0))
    assert metrics["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert evaluate(labels, np.full(6, 0.5))["roc_auc"] == pytest.approx(0.5)  # all tied


def test_validation_split_keeps_reads_whole():
    reads = np.repeat(np.arange(100), 3)  # three frames per read
    held = split_reads(reads, 0.2, seed=1)
    assert held.sum() == 60 and set(reads[held]).isdisjoint(reads[~held])
    assert (split_reads(reads, 0.2, seed=1) == held).all()
    assert not (split_reads(reads, 0.2, seed=2) == held).all()


def test_training_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(300, 16, generator=gen)
    labels = (features[:, 0] > 0).long()
    data = Examples.in_memory(features[:240], labels[:240], torch.ones(240))
    held = Examples.in_memory(features[240:], labels[240:], torch.ones(60))
    settings = TrainingSettings(epochs=15, learning_rate=0.01, hidden_dim=32, seed=3)
    first, history = fit(data, held, settings)
    second, again = fit(data, held, settings)
    assert history == again
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    best = min(range(len(history)), key=lambda e: history[e]["validation_loss"])
    assert history[best]["validation_loss"] < history[0]["validation_loss"]


def test_a_diverging_training_is_one_clear_error():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(100, 8, generator=gen)
    features[0, 0] = float("nan")  # one bad row poisons the weights in the first epoch
    labels = (torch.arange(100) % 2).long()
    data = Examples.in_memory(features[:80], labels[:80], torch.ones(80))
    held = Examples.in_memory(features[80:], labels[80:], torch.ones(20))
    with pytest.raises(UsageError, match="training diverged: the validation loss is NaN after "
                                         "epoch 1; lower train.learning_rate"):
        fit(data, held, TrainingSettings(epochs=3, hidden_dim=8))


def test_training_prepare_drops_chunks_with_ambiguous_bases(tmp_path):
    rng = random.Random(4)
    reads = ["".join(rng.choices(STOP_FREE_CODONS, k=rng.randint(40, 400))) for _ in range(60)]
    for i in range(0, 60, 3):  # an ambiguous letter somewhere in every third read
        at = rng.randrange(len(reads[i]))
        reads[i] = reads[i][:at] + rng.choice("NRY") + reads[i][at + 1:]
    text = "".join(f">r{i}\n{seq}\n" for i, seq in enumerate(reads))
    (tmp_path / "in.fa").write_text(text)
    stats = write_shards(tmp_path / "in.fa", 500, 10**6, tmp_path / "out", drop_ambiguous=True)
    kept = read_fasta(tmp_path / "out" / "shards" / "shard_000000.faa")
    clean_chunks = {cid for rid, seq in plain_prepare.read_fasta(str(tmp_path / "in.fa"))
                    for cid, chunk in plain_prepare.chunks(rid, seq, 500)
                    if set(chunk) <= set("ACGT")}
    expected = [(fid, prot) for fid, _, prot in plain_prepare.prepare(str(tmp_path / "in.fa"), 500)
                if fid[:-2] in clean_chunks]
    assert kept == expected and stats.ambiguous_chunks >= 20
    assert len(expected) < len(list(plain_prepare.prepare(str(tmp_path / "in.fa"), 500)))


def test_ambiguous_chunks_flags_any_non_acgt_code():
    codes = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 3], dtype=np.uint8)
    chunks = chunk_layout(np.array([10]), np.array([0]), 300)
    assert ambiguous_chunks(codes, chunks).tolist() == [True]
    assert ambiguous_chunks(codes[5:], chunk_layout(np.array([5]), np.array([0]), 300)).tolist() \
        == [False]


@pytest.mark.slow
def test_train_target_learns_codon_usage_and_the_model_predicts(tmp_path):
    for name, codons, seed in (("virus", GC_RICH, 1), ("host", AT_RICH, 2),
                               ("new_virus", GC_RICH, 3), ("new_host", AT_RICH, 4)):
        synthetic(tmp_path / f"{name}.fa", codons, 150, seed, ambiguous=10)
    config = write_config(
        tmp_path / "train.yaml", samples={"new_virus": "new_virus.fa", "new_host": "new_host.fa"},
        outdir="out", shard_size=500, models=DEMO_MODELS, embed={"device": "cpu"},
        train={"virus": ["virus.fa"], "nonvirus": ["host.fa"], "validation_fraction": 0.25,
               "seed": 7, "learning_rate": 0.01, "epochs": 60, "patience": 8,
               "weights": {"host.fa": 1.5}})
    proc = snakemake(tmp_path, "train", "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = tmp_path / "out" / "train"
    metrics = json.loads((out / "metrics.json").read_text())
    print("validation metrics "
          f"{ {k: metrics[k] for k in ('accuracy', 'precision', 'recall', 'f1', 'roc_auc')} }")
    assert metrics["roc_auc"] >= 0.95 and metrics["accuracy"] >= 0.9
    sidecar = json.loads((out / "model.safetensors.json").read_text())
    assert sidecar["chunk_size"] == 500 and sidecar["input_dim"] == 64
    assert [d["file"] for d in sidecar["training_data"]] == ["virus.fa", "host.fa"]
    assert sidecar["training_data"][1]["weight"] == 1.5
    assert set(sidecar["embedding_models"]) == {"esm", "dnabert"}
    assert sidecar["validation_metrics"]["roc_auc"] == metrics["roc_auc"]
    for name in ("roc.svg", "scores.svg"):
        assert (out / name).read_text().startswith("<svg")
    stats = json.loads((tmp_path / "out" / "train-virus-0" / "prepare" / "stats.json").read_text())
    assert stats["drop_ambiguous"] and stats["ambiguous_chunks"] == 10
    assert load_classifier(out / "model.safetensors").input_dim == 64

    # The same training from the CLI, on the same embedded directories: the same model.
    cli = run_cli("train", "--virus", tmp_path / "out" / "train-virus-0", "--nonvirus",
                  f"{tmp_path / 'out' / 'train-nonvirus-0'}=1.5", "--chunk-size", 500, "--outdir",
                  tmp_path / "cli", "--validation-fraction", 0.25, "--seed", 7,
                  "--learning-rate", 0.01, "--epochs", 60, "--patience", 8)
    assert cli.returncode == 0, cli.stderr
    ours = load_classifier(tmp_path / "cli" / "model.safetensors").state_dict()
    for key, value in load_classifier(out / "model.safetensors").state_dict().items():
        assert torch.equal(value, ours[key]), key

    # The trained model, copied out as a user would keep it, in the prediction workflow
    # unchanged: new reads of both kinds.
    (tmp_path / "my_models").mkdir()
    for name in ("model.safetensors", "model.safetensors.json"):
        shutil.copy(out / name, tmp_path / "my_models" / name)
    predict = write_config(
        tmp_path / "predict.yaml", samples={"new_virus": "new_virus.fa", "new_host": "new_host.fa"},
        outdir="out", shard_size=500, embed={"device": "cpu"},
        models={**DEMO_MODELS, "classifier": "my_models/model.safetensors"})
    proc = snakemake(tmp_path, "--configfile", predict)
    assert proc.returncode == 0, proc.stdout[-3000:]
    calls = {}
    for sample in ("new_virus", "new_host"):
        rows = (tmp_path / "out" / sample / "summary.tsv").read_text().splitlines()[1:]
        calls[sample] = [r.split("\t")[-1] for r in rows]
    assert calls["new_virus"].count("virus") >= 0.9 * len(calls["new_virus"])
    assert calls["new_host"].count("non-virus") >= 0.9 * len(calls["new_host"])
    report = snakemake(tmp_path, "train", "--configfile", config, "--report", "report.zip")
    assert report.returncode == 0, report.stdout[-3000:]


def test_a_corrupt_training_feature_file_is_moved_aside_for_the_rerun(tmp_path):
    """Training is a consumer of finished feature files like classify: a corrupt one is moved
    aside and its .done removed (exit 75), so that the rerun embeds that shard again instead
    of failing alike forever."""
    from scale import labelled_dir

    labelled_dir(tmp_path / "virus", 60, seed=1, shard_frames=20)
    labelled_dir(tmp_path / "host", 60, seed=0, shard_frames=20)
    bad = tmp_path / "host" / "features" / "shard_000001.pt"
    bad.write_bytes(bad.read_bytes()[:100])
    proc = run_cli("train", "--virus", tmp_path / "virus", "--nonvirus", tmp_path / "host",
                   "--chunk-size", "500", "--outdir", tmp_path / "model", "--epochs", "2")
    assert proc.returncode == 75, proc.stderr
    assert not bad.exists() and not bad.with_suffix(".done").exists()
    (aside,) = bad.parent.glob("shard_000001.pt.corrupted-*")
    assert f"moved aside as {aside.name}" in proc.stderr
    assert (tmp_path / "failed_checkpoints.txt").read_text().startswith(f"{bad}|")
    assert not (tmp_path / "model").exists()
