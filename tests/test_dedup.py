"""Each distinct chunk of a sample embedded once: the table of chunk sequences (hash
collisions included), prepare's shards with and without repeats, and results that are byte for
byte those of every frame embedded."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_fasta
from virnucpro import dedup
from virnucpro.classify import aggregate, write_scores
from virnucpro.dedup import DistinctChunks, SeenHashes
from virnucpro.prepare import head_counts, write_prepare_summary, write_shards
from virnucpro.preflight import unprepared
from workflow_helpers import STOP_FREE_CODONS


def test_the_hash_table_is_a_map_of_its_keys(monkeypatch, tmp_path):
    """Keys added in blocks, runs merged up to a size (small here, so that many runs go to
    disk): every lookup gives a dict's answer, and the memory held stays below a few runs."""
    monkeypatch.setattr(dedup, "MERGED_RUN_KEYS", 300)
    rng = np.random.default_rng(0)
    table, expected = SeenHashes(tmp_path), {}
    for size in [0, *rng.integers(1, 200, 120)]:
        keys = np.unique(rng.integers(0, 1 << 63, size, dtype=np.uint64))
        keys = keys[[int(k) not in expected for k in keys]]
        values = rng.integers(0, 1 << 40, len(keys))
        table.add(keys, values)
        expected.update(zip(map(int, keys), map(int, values)))
        asked = np.concatenate([keys, rng.integers(0, 1 << 63, 50, dtype=np.uint64),
                                np.fromiter(expected, np.uint64)[:40]])
        assert table.get(asked).tolist() == [expected.get(int(k), -1) for k in asked]
        assert table.in_memory <= 16 * 3 * 300
    assert len(table) == len(expected) > 5000
    assert 1 < table.runs < 120  # merged, but not into one run beyond the limit
    assert list(tmp_path.iterdir()) == []  # the runs on disk are unlinked files


def chunk_blocks(rng: random.Random, blocks: int = 25, per_block: int = 60):
    """Blocks of short sequences (spans of one buffer each) that repeat within and across
    blocks, and sequences of equal lengths that differ."""
    pool = ["".join(rng.choices("ACGTacgtN", k=rng.randint(1, 9))) for _ in range(150)]
    for _ in range(blocks):
        sequences = [rng.choice(pool).encode() for _ in range(per_block)]
        length = np.array([len(s) for s in sequences])
        yield (np.frombuffer(b"".join(sequences), dtype=np.uint8), np.cumsum(length) - length,
               length, sequences)


def find_all(hash_spans=dedup.hash_spans, seed=1):
    """Each chunk of `chunk_blocks`: (sequence, repeated sequence or None), through
    DistinctChunks with `hash_spans`, each chunk's value its (block, position)."""
    found = []
    remembered = {}
    with DistinctChunks(None, hash_spans) as chunks:
        for block, (data, start, length, sequences) in enumerate(chunk_blocks(random.Random(seed))):
            seen = chunks.find(data, start, length)
            values = block * 1000 + np.arange(len(sequences))
            chunks.remember(seen, data, start, length, values[seen.new])
            remembered.update({int(values[i]): sequences[i] for i in seen.new})
            for i, sequence in enumerate(sequences):
                if seen.distinct[i]:
                    found.append((sequence, None))
                elif seen.earlier[i] >= 0:
                    found.append((sequence, remembered[int(seen.earlier[i])]))
                else:
                    assert seen.first[i] < i
                    found.append((sequence, sequences[seen.first[i]]))
    return found


def test_repeats_are_the_sequences_seen_before():
    found = find_all()
    seen = set()
    for sequence, repeated in found:
        assert (repeated is not None) == (sequence in seen)
        assert repeated in (None, sequence)
        seen.add(sequence)
    assert 50 < len(seen) < len(found) / 5  # repeats within blocks and across them


@pytest.mark.parametrize("weak", ["length", "constant"])
def test_equal_hashes_of_different_sequences_are_never_merged(weak):
    """With a hash that collides all the time (each length one hash, or one hash for all),
    a chunk is a repeat only of the very same bytes, whatever the hash says; a hash taken by
    one sequence leaves the others of that hash embedded, each time (no saving, no error)."""
    hashes = {"length": lambda data, start, length: length.astype(np.uint64),
              "constant": lambda data, start, length: np.zeros(len(start), dtype=np.uint64)}
    found = find_all(hashes[weak])
    assert all(repeated in (None, sequence) for sequence, repeated in found)
    exact = find_all()
    repeats = sum(repeated is not None for _, repeated in found)
    assert 0 < repeats < sum(repeated is not None for _, repeated in exact)
    # The first sequence of each hash is found again whenever it comes back.
    first_of, met = {}, set()
    for sequence, repeated in found:
        first_of.setdefault(len(sequence) if weak == "length" else 0, sequence)
        if sequence in first_of.values():
            assert (repeated is not None) == (sequence in met)
            met.add(sequence)


def orfs(rng: random.Random, codons: int) -> str:
    return "".join(rng.choices(STOP_FREE_CODONS, k=codons))


def repeated_pairs(directory: Path, seed: int = 3) -> list[Path]:
    """Paired FASTA files whose reads repeat: the same pairs again under other names, mates
    with the same sequence, a long read whose two chunks are one sequence, the same read in
    lower case (not merged: its bytes differ), reads of 1 to 3 chunks."""
    rng = random.Random(seed)
    pairs = []
    for i in range(60):
        mate1 = orfs(rng, rng.choice([40, 150, 300]))
        mate2 = mate1 if i % 7 == 0 else orfs(rng, rng.randint(30, 120))
        pairs.append((f"p{i}", mate1, mate2))
    stretch = orfs(rng, 166) + "AC"  # 500 bp: a read of two chunks...
    special = [("long", stretch + stretch, orfs(rng, 60)),  # ... of the same sequence
               ("lower", pairs[1][1].lower(), pairs[1][2])]
    again = [(f"again{i}", mate1, mate2) for i, (_, mate1, mate2) in
             enumerate(rng.choices(pairs + special, k=120))]
    tail = pairs[30:] + again
    rng.shuffle(tail)
    paths = [directory / "r1.fa", directory / "r2.fa"]
    for mate, path in enumerate(paths, 1):
        path.write_text("".join(f">{name}/{mate}\n{seqs[mate - 1]}\n"
                                for name, *seqs in pairs[:30] + special + tail))
    return paths


def shard_frames(prepared: Path):
    """(nucleotide records, protein records, index rows) of every shard, in order; checks each
    shard's .done and that no shard is without a frame."""
    nucleotides, proteins, index = [], [], []
    for fna in sorted((prepared / "shards").glob("shard_*.fna")):
        records = read_fasta(fna)
        assert records and fna.with_suffix(".done").read_text().split()[0] == str(len(records))
        nucleotides += records
        proteins += read_fasta(fna.with_suffix(".faa"))
        index += [row.split("\t") for row in
                  fna.with_suffix(".index.tsv").read_text().splitlines()[1:]]
    return nucleotides, proteins, index


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One sample prepared with and without dedup, in shards of 7 frames to embed."""
    directory = tmp_path_factory.mktemp("repeats")
    reads = repeated_pairs(directory)
    stats = {dedup: write_shards(reads, 500, 7, directory / f"dedup-{dedup}", dedup=dedup)
             for dedup in (True, False)}
    return directory, reads, stats


def test_the_shards_hold_each_chunk_sequence_once_and_the_index_every_frame(prepared):
    directory, _, stats = prepared
    every_nucleotide, every_protein, every_row = shard_frames(directory / "dedup-False")
    nucleotides, proteins, rows = shard_frames(directory / "dedup-True")
    assert [row[:4] for row in rows] == [row[:4] for row in every_row]  # every frame, in order
    assert all(row[4] == "" for row in every_row)
    embedded = [row[0] for row in rows if not row[4]]
    assert [frame for frame, _ in nucleotides] == [frame for frame, _ in proteins] == embedded
    nucleotide, protein = dict(every_nucleotide), dict(every_protein)
    assert [sequence for _, sequence in nucleotides] == [nucleotide[f] for f in embedded]
    position = {frame: number for number, frame in enumerate(embedded)}
    repeats = 0
    for number, row in enumerate(rows):
        if not row[4]:
            continue
        repeats += 1
        representative = int(row[4])
        frame, sequence = nucleotides[representative]
        # The same frame of an earlier chunk of the same sequence: same nucleotides, protein
        # and frame; the chunk's frames map in order.
        assert sequence == nucleotide[row[0]] and proteins[representative][1] == protein[row[0]]
        assert frame[-2:] == row[0][-2:] and frame[:-2] != row[0][:-2]
        assert [r[0] for r in rows[:number]].count(frame) == 1  # it came before
        assert position[frame] == representative
    assert stats[True].frames == stats[False].frames == len(rows)
    assert stats[True].distinct_frames == len(embedded) == len(every_row) - repeats
    assert stats[False].distinct_frames == stats[False].frames
    assert stats[True].shards == -(-len(embedded) // 7) < stats[False].shards
    # Every repeated chunk was found: the frames embedded are those of distinct sequences, and
    # again those of the lower-case read (frames are upper case, chunks are compared as read).
    lower = [frame for frame in embedded if frame.startswith("lower/1_")]
    assert lower and len(embedded) == len({(nucleotide[f], protein[f]) for f in nucleotide}) + \
        len(lower)
    reads_tables = [(directory / f"dedup-{d}" / "reads.tsv").read_bytes() for d in (True, False)]
    assert reads_tables[0] == reads_tables[1]


def test_identical_mates_long_read_chunks_and_lower_case(prepared):
    directory = prepared[0]
    rows = shard_frames(directory / "dedup-True")[2]
    repeats = {row[0] for row in rows if row[4]}
    assert any(f.startswith("p0/2_chunk_1") for f in repeats)  # the mate of the same sequence
    assert not any(f.startswith("p1/2_") for f in repeats)
    assert any(f.startswith("long/1_chunk_2") for f in repeats)  # its first chunk again
    assert not any(f.startswith("long/1_chunk_1") for f in repeats)
    assert not any(f.startswith("lower/1_") for f in repeats)  # other bytes: embedded
    assert any(f.startswith("lower/2_") for f in repeats)


def frame_scores(sequence: str) -> tuple[float, float]:
    """Scores that depend on a frame's sequence alone, as a model's do; some tiny (printed
    in scientific notation), some ties."""
    digest = int.from_bytes(hashlib.sha256(sequence.encode()).digest()[:8], "little")
    virus = [digest % 1000 / 1000, 10.0 ** -(digest % 9), 0.5][digest % 3]
    return 1 - virus, virus


def score_and_aggregate(prepared: Path, out: Path) -> dict:
    """Score every shard's embedded frames (by their sequences), write the shards' scores
    files as an embedding job does, and aggregate them."""
    (out / "scores").mkdir(parents=True)
    files = []
    for fna in sorted((prepared / "shards").glob("shard_*.fna")):
        records = read_fasta(fna)
        scores = torch.tensor([frame_scores(seq) for _, seq in records], dtype=torch.float32)
        files.append(out / "scores" / f"{fna.stem}.tsv")
        parts = [([f for f, _ in records[:3]], scores[:3]), ([f for f, _ in records[3:]],
                                                             scores[3:])]
        write_scores(files[-1], fna.with_suffix(".index.tsv"), parts, fna)
    return aggregate(prepared / "reads.tsv", files, out, paired=True)


def test_the_results_are_those_of_every_frame_embedded(prepared, tmp_path):
    """The same scores for the same frames: every result file byte for byte, counts.json
    but for the distinct frames it counts and the embedding jobs (fewer shards)."""
    directory = prepared[0]
    counts = {d: score_and_aggregate(directory / f"dedup-{d}", tmp_path / str(d))
              for d in (True, False)}
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv",
                 "summary.tsv", "pairs.tsv"):
        assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes()
    saved = {d: json.loads((tmp_path / str(d) / "counts.json").read_text()) for d in counts}
    assert saved[True].pop("distinct_frames") == prepared[2][True].distinct_frames
    assert saved[False].pop("distinct_frames") == saved[False]["frames"]
    for d, stats in prepared[2].items():
        assert [run["shards"] for run in saved[d].pop("embedding")] == [stats.shards]
    assert saved[True] == saved[False]
    predictions = (tmp_path / "True" / "prediction_results.txt").read_text()
    assert "e-0" in predictions and "\tvirus\t" in predictions and "\tothers\t" in predictions
    assert list(tmp_path.glob("*/.*")) == []  # the scratch files are gone


def test_a_representative_that_did_not_come_first_is_refused(tmp_path):
    """Scores files out of order (or of another preparation): a frame whose representative is
    not among the embedded frames before it is named, and nothing is written."""
    from virnucpro.classify import SCORES_HEADER
    from virnucpro.errors import InputError
    from virnucpro.prepare import READS_HEADER

    reads = tmp_path / "reads.tsv"
    reads.write_text(READS_HEADER.decode() + "0\ta\t150\t1\t1\n1\tb\t150\t1\t1\n")
    scores = tmp_path / "shard_000000.tsv"
    scores.write_text(SCORES_HEADER + "a_chunk_1F1\t0\t1\t0.25\t0.75\t\n"
                      "b_chunk_1F1\t1\t1\t\t\t1\n")
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match=f"{scores}: a frame repeats embedded frame 1, but "
                       "only 1 came before it"):
        aggregate(reads, [scores], tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    scores.write_text(scores.read_text().replace("\t\t\t1\n", "\t\t\t0\n"))
    aggregate(reads, [scores], tmp_path / "out")
    assert (tmp_path / "out" / "prediction_results.txt").read_text().splitlines()[1:] == [
        "a_chunk_1F1\tvirus\t0.25\t0.75", "b_chunk_1F1\tvirus\t0.25\t0.75"]


def test_the_summary_and_the_estimate_count_distinct_frames(prepared, tmp_path):
    directory, reads, stats = prepared
    write_prepare_summary({"d": directory / "dedup-True", "all": directory / "dedup-False"},
                          tmp_path / "summary.tsv")
    header, *rows = [line.split("\t") for line in
                     (tmp_path / "summary.tsv").read_text().splitlines()]
    table = {row[0]: dict(zip(header[1:], row[1:])) for row in rows}
    frames, distinct = stats[True].frames, stats[True].distinct_frames
    assert (table["d"]["frames"], table["d"]["distinct_frames"]) == (str(frames), str(distinct))
    assert table["d"]["saved"] == f"{1 - distinct / frames:.3f}" != "0.000"
    assert (table["all"]["distinct_frames"], table["all"]["saved"]) == (str(frames), "0.000")
    # The estimate of small files is their count; each file is deduplicated on its own.
    heads = [head_counts(str(path), 500, 1 << 20, dedup=True) for path in reads]
    assert sum(h.frames for h in heads) == frames
    assert distinct < sum(h.distinct_frames for h in heads) < frames
    line = unprepared("d", [str(p) for p in reads], 500, 7, dedup=True)
    assert f"{frames:,} frames ({sum(h.distinct_frames for h in heads):,} distinct), " in line
