"""Aggregation of scores into the original's result files and the per-read summary."""

import random
from pathlib import Path

import pandas as pd
import pytest

from virnucpro import classify
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


# Read IDs whose order differs between ways of sorting text: case, digits, punctuation, letters
# beyond ASCII and beyond the Basic Multilingual Plane, one ID the prefix of another.
ID_PIECES = ["a", "B", "_", "1", "9", "10", "é", "ß", "Z", "z", "~", "-", ".", "Ω", "|",
             "\U0001F600", "\uFFFD", "chunk_"]
RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "summary.tsv",
           "counts.json")


def varied_sample(directory: Path, reads: int = 400, shard_frames: int = 37, seed: int = 7):
    """Reads of 1-3 chunks with 0-4 frames each, IDs from ID_PIECES, scores with ties, in shards
    of `shard_frames` frames (so chunks are split over two shards). A few IDs come twice
    (prepare refuses that; the original's table combines their chunks, rows far apart)."""
    rng = random.Random(seed)
    ids, rows, frames = set(), [], []
    while len(rows) < reads:
        read_id = "".join(rng.choice(ID_PIECES) for _ in range(rng.randint(1, 5)))
        if read_id in ids and rng.random() > 0.05:
            continue
        ids.add(read_id)
        index, chunks, mine = len(rows), rng.randint(1, 3), []
        for chunk in range(1, chunks + 1):
            for frame in rng.sample(["F1", "F2", "F3", "R1", "R2", "R3"], rng.randint(0, 4)):
                virus = rng.choice([f"{rng.random():.8f}", "0.5", "1e-05"])
                others = rng.choice([virus, "0.5", f"{rng.random():.7f}"])
                mine.append((f"{read_id}_chunk_{chunk}{frame}", index, chunk, others, virus))
        rows.append((index, read_id, 150 * chunks, chunks, len(mine)))
        frames += mine
    reads_tsv = write_reads(directory / "reads.tsv", rows)
    shards = [write_scores(directory / f"shard_{n}.tsv", frames[start:start + shard_frames])
              for n, start in enumerate(range(0, len(frames), shard_frames))]
    return reads_tsv, shards


def test_the_per_chunk_table_sorted_on_disk_is_the_originals_groupby(tmp_path, monkeypatch):
    """The per-chunk table is sorted in blocks on disk and merged: with blocks of 5 rows merged
    3 at a time (hundreds of run files, several passes) every result is byte for byte what one
    block sorted in memory gives, the scratch directory is gone, and the table is what the
    original's pandas groupby makes of the per-frame table."""
    reads, shards = varied_sample(tmp_path)
    for name in ("in-memory", "on-disk"):
        (tmp_path / name).mkdir()
    aggregate(reads, shards, tmp_path / "in-memory")
    monkeypatch.setattr(classify, "SORT_BLOCK_ROWS", 5)
    monkeypatch.setattr(classify, "MERGE_FAN_IN", 3)
    aggregate(reads, shards, tmp_path / "on-disk")
    for name in RESULTS:
        assert (tmp_path / "on-disk" / name).read_bytes() == \
            (tmp_path / "in-memory" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "on-disk").iterdir()) == sorted(RESULTS)

    frames = pd.read_csv(tmp_path / "on-disk" / "prediction_results.txt", sep="\t",
                         dtype={"Sequence_ID": object}, keep_default_na=False)
    frames["Modified_ID"] = frames["Sequence_ID"].str[:-2]
    chunks = frames.groupby("Modified_ID")
    expected = chunks["score2"].max() >= chunks["score1"].max()
    assert len(expected) > 500 and len(frames) > len(expected)
    read_ids = [line.split("\t")[1] for line in reads.read_text().splitlines()[1:]]
    assert len(set(read_ids)) < len(read_ids)  # chunks of the same name, rows far apart
    assert (tmp_path / "on-disk" / "prediction_results_highestscore.csv").read_text() == \
        "Modified_ID\tIs_Virus\n" + "".join(f"{key}\t{value}\n" for key, value in expected.items())


def test_a_failed_aggregation_leaves_no_scratch_files(tmp_path, monkeypatch):
    """Stale scores found at the last read, after run files were written: nothing is published
    and the scratch directory is removed."""
    reads, shards = varied_sample(tmp_path)
    lines = shards[-1].read_text().splitlines(keepends=True)
    shards[-1].write_text("".join(lines[:-1]))
    monkeypatch.setattr(classify, "SORT_BLOCK_ROWS", 5)
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="frames but"):
        aggregate(reads, shards, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
