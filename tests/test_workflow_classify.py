"""The whole workflow to the result files and the report, on real Snakemake runs."""

import json
import random

import pytest

from conftest import read_fasta, run_cli
from workflow_helpers import DEMO_MODELS, assert_same_file, snakemake, write_config

pytestmark = pytest.mark.slow
SAMPLES = ["test_with_orfs", "test_fixed_500bp", "test_sequences_small"]


def repeated_reads(path, reference) -> dict[str, str]:
    """The reads of two samples four times over under new IDs, shuffled: {new ID: read ID}."""
    records = [(f"copy{k}_{read}", read, seq) for k in range(4)
               for s in SAMPLES[:2] for read, seq in read_fasta(reference / "prepare" / f"{s}.fa")]
    random.Random(4).shuffle(records)
    path.write_text("".join(f">{name}\n{seq}\n" for name, _, seq in records))
    return {name: read for name, read, _ in records}


def test_results_for_every_read_and_a_report(tmp_path, reference):
    copies = repeated_reads(tmp_path / "repeated.fa", reference)
    config = write_config(tmp_path / "c.yaml",
                          samples={**{s: str(reference / "prepare" / f"{s}.fa") for s in SAMPLES},
                                   "repeated": str(tmp_path / "repeated.fa")},
                          outdir="out", shard_size=3, models=DEMO_MODELS, embed={"device": "cpu"},
                          keep_features=True)  # for the CLI's classify below
    proc = snakemake(tmp_path, "--configfile", config)
    assert proc.returncode == 0, proc.stdout
    ref = (reference / "original-format" / "prediction_results.txt").read_text().splitlines()
    ref_highest = (reference / "original-format"
                   / "prediction_results_highestscore.csv").read_text()
    for sample in SAMPLES:
        out = tmp_path / "out" / sample
        reads = [r for r, _ in read_fasta(reference / "prepare" / f"{sample}.fa")]
        summary = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()]
        assert [row[0] for row in summary[1:]] == reads  # every read once, in input order
        predictions = (out / "prediction_results.txt").read_text().splitlines()
        assert predictions[0] == ref[0]
        frames = [r for r, _ in
                  read_fasta(reference / "prepare" / f"{sample}_identified_protein.faa")]
        assert [line.split("\t")[0] for line in predictions[1:]] == frames
        for line in predictions[1:]:
            _, call, s1, s2 = line.split("\t")
            assert call in ("virus", "others") and abs(float(s1) + float(s2) - 1) < 1e-6
            assert (call == "virus") == (float(s2) > float(s1))
        highest = (out / "prediction_results_highestscore.csv").read_text().splitlines()
        assert highest[0] == ref_highest.splitlines()[0]
        assert highest[1:] == sorted(highest[1:]) and all(
            line.split("\t")[1] in ("True", "False") for line in highest[1:])
        assert (out / "report.html").exists()
    no_frames = (tmp_path / "out" / "test_sequences_small" / "summary.tsv").read_text().splitlines()
    assert len(no_frames) == 12 and all(line.endswith("\tno_coding_frame")
                                        for line in no_frames[1:])

    # The same reads four times over: each distinct frame embedded once, the results of each
    # copy those of its read (the same calls; the same scores but for the last bits that the
    # frames embedded with it move: float32 on a CPU, but other batches).
    out = tmp_path / "out"
    stats = json.loads((out / "repeated" / "prepare" / "stats.json").read_text())
    originals = {s: json.loads((out / s / "prepare" / "stats.json").read_text())
                 for s in SAMPLES[:2]}
    assert stats["frames"] == 4 * stats["distinct_frames"] == \
        4 * sum(o["frames"] for o in originals.values())
    features = sorted((out / "repeated" / "features").glob("shard_*.pt"))
    assert len(features) == -(-stats["distinct_frames"] // 3) == stats["shards"]
    counts = json.loads((out / "repeated" / "counts.json").read_text())
    assert (counts["frames"], counts["distinct_frames"]) == (stats["frames"],
                                                             stats["distinct_frames"])
    assert sum(run["frames"] for run in counts["embedding"]) == stats["distinct_frames"]
    rows = {row[0]: row for s in SAMPLES[:2] for row in
            (line.split("\t") for line in (out / s / "summary.tsv").read_text().splitlines()[1:])}
    frames = {row[0]: row for s in SAMPLES[:2] for row in (line.split("\t") for line in (
        out / s / "prediction_results.txt").read_text().splitlines()[1:])}
    summary = [line.split("\t") for line in
               (out / "repeated" / "summary.tsv").read_text().splitlines()[1:]]
    assert [row[0] for row in summary] == list(copies)
    for row in summary:
        original = rows[copies[row[0]]]
        assert row[1:4] + row[6:] == original[1:4] + original[6:]  # counts and call
        for ours, theirs in zip(row[4:6], original[4:6]):
            assert abs(float(ours) - float(theirs)) < 1e-6
    predictions = [line.split("\t") for line in
                   (out / "repeated" / "prediction_results.txt").read_text().splitlines()[1:]]
    assert len(predictions) == stats["frames"]
    first = {}
    for frame, call, *scores in predictions:
        name, _, rest = frame.partition("_chunk_")
        original = frames[f"{copies[name]}_chunk_{rest}"]
        assert call == original[1]
        assert all(abs(float(a) - float(b)) < 1e-6 for a, b in zip(scores, original[2:]))
        # Every copy of a frame has the scores of the first, text for text.
        assert first.setdefault(original[0], scores) == scores
    page = (out / "repeated" / "report.html").read_text()
    assert f"Distinct frames: {stats['distinct_frames']} of the {stats['frames']} " in page

    report = snakemake(tmp_path, "--configfile", config, "--report", "report.zip")
    assert report.returncode == 0, report.stdout
    assert (tmp_path / "report.zip").stat().st_size > 10_000

    # The classification stage alone, from the CLI, gives the same files.
    sample = tmp_path / "out" / "test_fixed_500bp"
    cli = run_cli("classify", "--features", *sorted((sample / "features").glob("shard_*.pt")),
                  "--prepared", sample / "prepare", "--model",
                  tmp_path / DEMO_MODELS["classifier"], "--outdir", tmp_path / "cli", check=True)
    assert "2 reads: " in cli.stdout
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "summary.tsv"):
        assert_same_file(tmp_path / "cli" / name, sample / name)
