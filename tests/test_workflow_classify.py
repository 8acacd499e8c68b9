"""The whole workflow to the result files and the report, on real Snakemake runs."""

import pytest

from conftest import read_fasta, run_cli
from workflow_helpers import DEMO_MODELS, snakemake, write_config

pytestmark = pytest.mark.slow
SAMPLES = ["test_with_orfs", "test_fixed_500bp", "test_sequences_small"]


def test_results_for_every_read_and_a_report(tmp_path, reference):
    config = write_config(tmp_path / "c.yaml",
                          samples={s: str(reference / "prepare" / f"{s}.fa") for s in SAMPLES},
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
        assert (tmp_path / "cli" / name).read_text() == (sample / name).read_text()
