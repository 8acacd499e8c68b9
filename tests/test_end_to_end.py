"""The whole workflow against the original tool's own outputs (../shared/reference/end-to-end/).

The original `prediction.py` ran on `reads.fa` (250 varied reads) with small random-init models
in the published formats; the workflow, on the same reads and model files (CPU, float32),
must give the same frames, scores within 1e-4 and the same calls, at both chunk sizes, whether
the embedding job scores its shard (the default) or a classify job scores kept features.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_helpers import snakemake, write_config

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4


def _table(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def run_reference(work: Path, reference: Path, chunk: int, keep: bool, **extra) -> Path:
    """Run the workflow on the end-to-end reads with the reference models; the sample dir."""
    e2e = reference / "end-to-end"
    models = e2e / "models"
    config = write_config(
        work / "config.yaml", samples={"reads": str(e2e / "reads.fa")}, outdir="out",
        chunk_size=chunk, shard_size=150, keep_features=keep,
        models={"esm": str(models / "esm2_t36_tiny_UR50D.pt"), "dnabert": str(models / "dnabert"),
                "classifier": str(models / "classifier.pth")},
        embed={"device": "cpu", **extra.pop("embed", {"dtype": "float32"})}, **extra)
    proc = snakemake(work, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return work / "out" / "reads"


def assert_original_calls(sample: Path, expected: Path, tolerance: float = TOLERANCE) -> None:
    """Same frames, scores within `tolerance`, same frame and chunk calls as the original."""
    ours = {row[0]: row[1:] for row in _table(sample / "prediction_results.txt")[1:]}
    theirs = {row[0]: row[1:] for row in _table(expected / "prediction_results.txt")[1:]}
    assert len(ours) == len(_table(sample / "prediction_results.txt")) - 1  # no frame twice
    assert ours.keys() == theirs.keys()
    for frame, (call, score1, score2) in theirs.items():
        assert ours[frame][0] == call, frame
        assert abs(float(ours[frame][1]) - float(score1)) <= tolerance, frame
        assert abs(float(ours[frame][2]) - float(score2)) <= tolerance, frame
    # Per chunk, both sorted by chunk ID (the original's pandas groupby sorts).
    assert _table(sample / "prediction_results_highestscore.csv") == \
        _table(expected / "prediction_results_highestscore.csv")


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep_features"])
@pytest.mark.parametrize("chunk", [500, 300])
def test_the_original_tools_calls_on_its_own_models(tmp_path, reference, chunk, keep):
    sample = run_reference(tmp_path, reference, chunk, keep)
    assert (sample / "features").exists() == keep
    assert_original_calls(sample, reference / "end-to-end" / f"chunk{chunk}")


@pytest.mark.parametrize("chunk", [500, 300])
def test_float16_keeps_the_original_calls(tmp_path, reference, chunk):
    """float16 weights and activations (the GPU default, run here on the CPU), and the frames
    and chunks near the decision boundary rescored in float32: every frame and chunk call is
    the original's (plain bfloat16 changes about one in a hundred). Scores move by less than
    the margin."""
    sample = run_reference(tmp_path, reference, chunk, keep=False, embed={"dtype": "float16"})
    assert_original_calls(sample, reference / "end-to-end" / f"chunk{chunk}", tolerance=0.02)
    rescored = sum(json.loads(p.read_text())["rescored_in_float32"]
                   for p in (sample / "scores").glob("shard_*.json"))
    frames = len((sample / "prediction_results.txt").read_text().splitlines()) - 1
    assert 0 < rescored < frames
