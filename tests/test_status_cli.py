"""`virnucpro status` and `virnucpro validate-features` on real run directories."""

import torch

from conftest import run_cli
from virnucpro.checkpoint import Batch, BatchWriter
from virnucpro.features import save_features
from virnucpro.prepare import write_shards


def make_run(tmp_path, reference):
    """A sample of 4 distinct frames in 4 shards of one frame, and 4 frames that repeat them
    (the same reads again under other names)."""
    sample = tmp_path / "results" / "s"
    text = (reference / "prepare" / "test_fixed_500bp.fa").read_text()
    (tmp_path / "reads.fa").write_text(text + text.replace(">", ">again_"))
    write_shards(tmp_path / "reads.fa", 500, 1, sample / "prepare")
    features = sample / "features"
    features.mkdir()
    save_features(features / "shard_000000.pt", ["a"], torch.zeros(1, 4))
    (features / "shard_000000.done").write_text("1\n")
    partial = features / "shard_000001.pt.partial"
    partial.mkdir()
    writer = BatchWriter(partial, "0" * 16)
    writer.submit(Batch(0, ["x", "y"], torch.ones(2, 4)))
    writer.close()
    return tmp_path / "results"


def test_status_counts_shards_and_checkpointed_frames(tmp_path, reference):
    outdir = make_run(tmp_path, reference)
    proc = run_cli("status", outdir, check=True)
    assert proc.stdout == ("s: 4 shards of 4 distinct frames (8 frames): 1 embedded, 0 scored, "
                           "2 frames saved in unfinished shards; results not aggregated yet\n")
    # The default run's embedding job writes scores (no feature file); then aggregation.
    sample = outdir / "s"
    (sample / "scores").mkdir()
    for shard in ("shard_000000", "shard_000001", "shard_000002"):
        (sample / "scores" / f"{shard}.tsv").write_text("frame_id\n")
    partial = sample / "scores" / "shard_000003.tsv.partial"
    partial.mkdir()
    writer = BatchWriter(partial, "0" * 16)
    writer.submit(Batch(0, ["z"], torch.ones(1, 2)))
    writer.close()
    (sample / "summary.tsv").write_text("read_id\n")
    proc = run_cli("status", outdir, check=True)
    assert proc.stdout == ("s: 4 shards of 4 distinct frames (8 frames): 3 embedded, 3 scored, "
                           "1 frames saved in unfinished shards; results aggregated\n")
    (sample / "scores" / "shard_000003.tsv").write_text("frame_id\n")
    assert run_cli("status", outdir, check=True).stdout.endswith("4 scored, 0 frames saved in "
                                                                  "unfinished shards; complete\n")


def test_status_names_a_missing_or_empty_outdir(tmp_path):
    missing = run_cli("status", tmp_path / "nothing")
    assert missing.returncode == 66
    assert missing.stderr.strip() == (f"virnucpro: error: {tmp_path / 'nothing'}: does not exist; "
                                      "give the workflow's outdir (the config's `outdir`, "
                                      "`results` by default)")
    empty = run_cli("status", tmp_path)
    assert empty.returncode == 64 and "no samples found" in empty.stderr


def test_validate_features_reports_each_file_and_fails_on_bad_ones(tmp_path, reference):
    outdir = make_run(tmp_path, reference)
    good = run_cli("validate-features", outdir)
    assert good.returncode == 0 and good.stdout.count("valid\t") == 2, good.stdout
    bad = outdir / "s" / "features" / "shard_000002.pt"
    bad.write_bytes(b"\x00" * 10)
    future = outdir / "s" / "features" / "shard_000003.pt"
    torch.save({"version": "3.0", "ids": [], "data": torch.zeros(0, 4)}, future)
    proc = run_cli("validate-features", outdir)
    assert proc.returncode == 78  # incompatible wins over corrupted
    assert f"corrupted\t{bad}\tnot a torch zip container" in proc.stdout
    assert f"incompatible\t{future}\twritten in format version 3.0" in proc.stdout
    assert "2 of 4 files are not valid" in proc.stderr
    future.unlink()
    assert run_cli("validate-checkpoints", outdir).returncode == 75  # the old name still works
