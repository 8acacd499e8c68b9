"""Aggregation of scores into the original's result files and the per-read summary."""

from pathlib import Path

import pytest

from virnucpro.classify import SCORES_HEADER, aggregate
from virnucpro.errors import InputError
from virnucpro.prepare import READS_HEADER


def write_scores(path: Path, rows) -> Path:
    path.write_text(SCORES_HEADER + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def write_reads(path: Path, rows) -> Path:
    path.write_text(READS_HEADER.decode() + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def test_reference_scores_give_the_reference_files_byte_for_byte(reference, tmp_path):
    ref = reference / "original-format"
    lines = (ref / "prediction_results.txt").read_text().splitlines()[1:]
    frames = [line.split("\t") for line in lines]
    read_of = {"synthetic_seq_1": 0, "synthetic_seq_2": 1}
    scores = write_scores(tmp_path / "s.tsv", [
        (f, read_of[f.split("_chunk_")[0]], 1, s1, s2) for f, _, s1, s2 in frames])
    reads = write_reads(tmp_path / "reads.tsv", [(0, "synthetic_seq_1", 180, 1, 2),
                                                  (1, "synthetic_seq_2", 171, 1, 2)])
    aggregate(reads, [scores], tmp_path)
    assert (tmp_path / "prediction_results.txt").read_bytes() == \
        (ref / "prediction_results.txt").read_bytes()
    assert (tmp_path / "prediction_results_highestscore.csv").read_bytes() == \
        (ref / "prediction_results_highestscore.csv").read_bytes()


def test_every_read_once_in_order_with_calls_and_chunks_split_over_shards(tmp_path):
    reads = write_reads(tmp_path / "reads.tsv", [
        (0, "b_read", 600, 2, 3), (1, "no_orf", 150, 1, 0), (2, "a_read", 150, 1, 1),
        (3, "weird_chunk_9", 150, 1, 1)])
    shard0 = write_scores(tmp_path / "0.tsv", [
        ("b_read_chunk_1F1", 0, 1, "0.9", "0.1"), ("b_read_chunk_2F2", 0, 2, "0.3", "0.7")])
    shard1 = write_scores(tmp_path / "1.tsv", [
        ("b_read_chunk_2R1", 0, 2, "0.2", "0.8"), ("a_read_chunk_1F1", 2, 1, "0.5", "0.5"),
        ("weird_chunk_9_chunk_1R3", 3, 1, "0.25", "0.75")])
    counts = aggregate(reads, [shard0, shard1], tmp_path)
    summary = [line.split("\t") for line in (tmp_path / "summary.tsv").read_text().splitlines()]
    assert summary[0] == ["read_id", "length", "chunks", "frames", "best_virus_score", "read_score",
                          "virus_chunks", "call"]
    assert [r[0] for r in summary[1:]] == ["b_read", "no_orf", "a_read", "weird_chunk_9"]
    assert summary[1][3:] == ["3", "0.8", "0.45", "1", "virus"]  # chunk 1 others, chunk 2 virus
    assert summary[2][3:] == ["0", "NA", "NA", "0", "no_coding_frame"]
    assert summary[3][7] == "virus"  # max score2 >= max score1 (0.5 >= 0.5) for the chunk
    assert counts["reads"] == 4 and counts["no_coding_frame"] == 1 and counts["frames"] == 5
    predictions = (tmp_path / "prediction_results.txt").read_text().splitlines()
    assert predictions[4] == "a_read_chunk_1F1\tothers\t0.5\t0.5"  # a tie is "others" (argmax)
    highest = (tmp_path / "prediction_results_highestscore.csv").read_text().splitlines()
    # Sorted like pandas groupby; b_read_chunk_2 spans both shards and is combined once.
    assert highest == ["Modified_ID\tIs_Virus", "a_read_chunk_1\tTrue", "b_read_chunk_1\tFalse",
                       "b_read_chunk_2\tTrue", "weird_chunk_9_chunk_1\tTrue"]


def test_stale_scores_are_refused(tmp_path):
    reads = write_reads(tmp_path / "reads.tsv", [(0, "r", 150, 1, 2)])
    shard = write_scores(tmp_path / "0.tsv", [("r_chunk_1F1", 0, 1, "0.1", "0.9")])
    with pytest.raises(InputError, match="has 2 frames but 1 scores"):
        aggregate(reads, [shard], tmp_path)
    assert not (tmp_path / "summary.tsv").exists()
