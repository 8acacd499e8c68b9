"""prepare -> embed through real Snakemake runs, with the demo models made by the workflow."""

from pathlib import Path

import pytest
import torch

from conftest import run_cli
from virnucpro.features import read_features
from virnucpro.models.classifier import MLPClassifier, save_classifier
from virnucpro.models.published import ADDRESSES
from workflow_helpers import (DEMO_MODELS, assert_same_features, assert_same_file, job_counts,
                              snakemake, write_config)

pytestmark = pytest.mark.slow


def test_workflow_embeds_every_shard_like_the_cli(tmp_path, reference):
    fasta = reference / "prepare" / "test_fixed_500bp.fa"
    config = write_config(tmp_path / "c.yaml", samples={"s": str(fasta)}, outdir="out",
                          shard_size=3, models=DEMO_MODELS, keep_features=True,
                          embed={"device": "cpu"})
    dry = snakemake(tmp_path, "-n", "--configfile", config)
    assert dry.returncode == 0, dry.stdout
    proc = snakemake(tmp_path, "--configfile", config, "--resources", "gpu=1")
    assert proc.returncode == 0, proc.stdout
    out = tmp_path / "out" / "s"
    sentinels = sorted((out / "features").glob("shard_*.done"))
    assert [p.stem for p in sentinels] == ["shard_000000", "shard_000001"]  # 4 frames, 3 per shard
    models = tmp_path / "resources" / "demo-models"
    for sentinel in sentinels:
        shard, frames = sentinel.stem, sentinel.read_text().strip()
        table = read_features(sentinel.with_suffix(".pt"), expected_dim=64)
        prepared = out / "prepare" / "shards" / shard
        index = [line.split("\t")[0]
                 for line in prepared.with_suffix(".index.tsv").read_text().splitlines()[1:]]
        assert table.ids == index and len(index) == int(frames)
        assert (out / "features" / f"{shard}.done").read_text() == f"{frames}\n"
        assert not (out / "features" / f"{shard}.pt.partial").exists()
        cli = tmp_path / f"{shard}.pt"
        run_cli("embed", "--nucleotide", prepared.with_suffix(".fna"), "--protein",
                prepared.with_suffix(".faa"), "--esm-model", models / "esm2_demo_t2_d32.pt",
                "--dnabert-model", models / "dnabert2_demo", "--device", "cpu", "--out", cli,
                check=True)
        assert_same_features(read_features(cli).data, table.data)


@pytest.mark.parametrize("missing", ["esm", "dnabert"])
def test_missing_real_models_fail_with_where_to_put_them(tmp_path, reference, missing):
    fasta = reference / "prepare" / "test_with_orfs.fa"
    models = dict(DEMO_MODELS)
    models[missing] = str(tmp_path / {"esm": "esm2_t36_3B_UR50D.pt",
                                      "dnabert": "DNABERT-S"}[missing])
    config = write_config(tmp_path / "c.yaml", samples={"s": str(fasta)}, outdir="out",
                          models=models)
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode != 0
    log = (tmp_path / "out" / "logs" / f"download_{missing}.log").read_text()
    expected = {"esm": f"copy esm2_t36_3B_UR50D.pt to {models['esm']} on this machine, or set "
                       "models.esm in your config to a local .pt file",
                "dnabert": "copy the model directory (config.json, model.safetensors or "
                           f"pytorch_model.bin, tokenizer.json) to {models['dnabert']}, or set "
                           "models.dnabert in your config to that directory"}[missing]
    address = {"esm": f"{ADDRESSES['fair-esm']}esm2_t36_3B_UR50D.pt",
               "dnabert": f"{ADDRESSES['DNABERT-S']}config.json"}[missing]
    assert expected in log and f" from {address} (" in log and "Traceback" not in log
    assert not (tmp_path / models[missing]).exists()


def test_a_truncated_feature_file_is_moved_aside_and_redone(tmp_path, reference):
    fasta = reference / "prepare" / "test_fixed_500bp.fa"
    config = write_config(tmp_path / "c.yaml", samples={"s": str(fasta)}, outdir="out",
                          shard_size=3, models=DEMO_MODELS, keep_features=True,
                          embed={"device": "cpu"})
    clean = tmp_path / "clean"
    clean.mkdir()
    assert snakemake(clean, "--configfile", config).returncode == 0
    # Embed only, then damage one result while its .done stays: it must not be trusted.
    assert snakemake(tmp_path, "out/prepare_summary.tsv", "--configfile", config).returncode == 0
    done = [f"out/s/features/shard_00000{i}.done" for i in (0, 1)]
    assert snakemake(tmp_path, *done, "--configfile", config).returncode == 0
    features = tmp_path / "out" / "s" / "features" / "shard_000001.pt"
    features.write_bytes(features.read_bytes()[:200])
    first = snakemake(tmp_path, "--configfile", config)  # the consumer finds and reports it
    assert first.returncode != 0
    log = (tmp_path / "out" / "logs" / "classify" / "s" / "shard_000001.log").read_text()
    assert "virnucpro: error: out/s/features/shard_000001.pt: corrupted feature file: " \
        "not a torch zip container" in log
    assert not features.with_suffix(".done").exists()
    dry = snakemake(tmp_path, "-n", "--configfile", config)
    assert job_counts(dry.stdout)["embed"] == 1, dry.stdout  # exactly that shard is redone
    assert snakemake(tmp_path, "--configfile", config).returncode == 0
    assert_same_features(read_features(features).data,
                         read_features(clean / "out" / "s" / "features" / "shard_000001.pt").data)
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "summary.tsv"):
        assert_same_file(tmp_path / "out" / "s" / name, clean / "out" / "s" / name)
    registry = (tmp_path / "out" / "failed_checkpoints.txt").read_text().splitlines()
    assert (len(registry) == 1
            and registry[0].startswith("out/s/features/shard_000001.pt|not a torch zip"))
    assert len(list(features.parent.glob("shard_000001.pt.corrupted-*"))) == 1


def _tree_state(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(directory.iterdir())}


def test_features_are_kept_only_on_request_and_scores_are_the_same_bits(tmp_path, reference):
    """By default the embedding job scores its shard and writes no feature file; with
    keep_features the same scores come from a classify job, byte for byte, and a new
    classifier rescores without embedding again."""
    fasta = reference / "prepare" / "test_with_orfs.fa"
    runs = {}
    for keep in (False, True):
        work = tmp_path / f"keep-{keep}"
        work.mkdir()
        config = write_config(work / "c.yaml", samples={"s": str(fasta)}, outdir="out",
                              shard_size=3, models=DEMO_MODELS, keep_features=keep,
                              embed={"device": "cpu"}, checkpoint={"window_frames": 2})
        assert snakemake(work, "--configfile", config).returncode == 0
        runs[keep] = (work, config)
    default, kept = runs[False][0] / "out" / "s", runs[True][0] / "out" / "s"
    assert not (default / "features").exists()
    shards = sorted(p.stem for p in (kept / "prepare" / "shards").glob("*.done"))
    assert len(shards) == 2 and sorted(p.stem for p in (kept / "features").glob("*.pt")) == shards
    for name in (*(f"scores/{shard}.tsv" for shard in shards), "prediction_results.txt",
                 "prediction_results_highestscore.csv", "summary.tsv"):
        assert_same_file(default / name, kept / name)
    assert not (runs[False][0] / "out" / "logs" / "classify").exists()  # scored in the job

    # Only the classifier changes: the kept run rescores, its feature files stay as they were.
    work, config = runs[True]
    features, embed_logs = _tree_state(kept / "features"), _tree_state(work / "out" / "logs" /
                                                                        "embed" / "s")
    before = (kept / "prediction_results.txt").read_text()
    torch.manual_seed(11)
    other = save_classifier(MLPClassifier(64), work / "other.safetensors", {})
    assert other["input_dim"] == 64
    config = write_config(work / "c.yaml", samples={"s": str(fasta)}, outdir="out",
                          shard_size=3, keep_features=True, embed={"device": "cpu"},
                          checkpoint={"window_frames": 2},
                          models={**DEMO_MODELS, "classifier": "other.safetensors"})
    assert snakemake(work, "--configfile", config).returncode == 0
    assert _tree_state(kept / "features") == features
    assert _tree_state(work / "out" / "logs" / "embed" / "s") == embed_logs
    assert (kept / "prediction_results.txt").read_text() != before
