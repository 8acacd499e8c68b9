"""Validation levels, quarantine and incremental checkpoints on real files."""

import json
import os
import time

import pytest
import torch

from virnucpro.errors import EXIT_CORRUPTED, EXIT_INCOMPATIBLE
from virnucpro.checkpoint import (Accumulator, Batch, BatchWriter, CheckpointError, PartialShard,
                                  checkpoint_policy, frames_checkpointed)
from virnucpro.features import (FeatureFileError, first_duplicate, quarantine, read_features,
                                read_trusted, save_features)


def good(path, n=4, d=6, **meta):
    save_features(path, [f"f{i}" for i in range(n)],
                  torch.arange(n * d, dtype=torch.float32).view(n, d), **meta)
    return path


def corrupt_cases(tmp_path):
    cases = {}
    cases["zero-byte"] = tmp_path / "zero.pt"
    cases["zero-byte"].write_bytes(b"")
    cases["truncated"] = tmp_path / "trunc.pt"
    data = good(tmp_path / "src.pt").read_bytes()
    cases["truncated"].write_bytes(data[: len(data) // 2])
    cases["random-bytes"] = tmp_path / "random.pt"
    cases["random-bytes"].write_bytes(os.urandom(3000))
    for name, obj in {
        "wrong-shape": {"version": "1.0", "ids": ["a", "b"], "data": torch.zeros(3, 6)},
        "one-dimensional": {"version": "1.0", "ids": ["a"], "data": torch.zeros(6)},
        "non-finite": {"version": "1.0", "ids": ["a", "b"],
                       "data": torch.tensor([[1.0, float("nan")]] * 2)},
        "duplicate-id": {"version": "1.0", "ids": ["a", "a"], "data": torch.zeros(2, 6)},
        "missing-keys": {"version": "1.0", "ids": ["a"]},
        "not-a-dict": [1, 2, 3],
    }.items():
        cases[name] = tmp_path / f"{name}.pt"
        torch.save(obj, cases[name])
    return cases


EXPECTED = {"zero-byte": "missing or empty", "truncated": "not a torch zip container",
            "random-bytes": "not a torch zip container", "wrong-shape": "3 rows for 2 IDs",
            "one-dimensional": "not a 2-D float tensor", "non-finite": "non-finite",
            "duplicate-id": "duplicate ID 'a'", "missing-keys": "missing keys",
            "not-a-dict": "holds a list"}


def test_each_corruption_is_reported_as_corrupted_with_its_reason(tmp_path):
    for name, path in corrupt_cases(tmp_path).items():
        with pytest.raises(FeatureFileError) as info:
            read_features(path)
        assert info.value.kind == "corrupted" and info.value.exit_code == EXIT_CORRUPTED, name
        assert EXPECTED[name] in str(info.value), name
        assert str(path) in str(info.value)


def test_pickled_code_is_refused_at_load(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    path = tmp_path / "evil.pt"
    torch.save({"version": "1.0", "ids": ["a"], "data": torch.zeros(1, 2), "x": Evil()}, path)
    with pytest.raises(FeatureFileError, match="cannot be loaded safely"):
        read_features(path)
    assert not (tmp_path / "pwned").exists()


def test_expected_width_is_checked(tmp_path):
    with pytest.raises(FeatureFileError, match="6 columns, expected 3328"):
        read_features(good(tmp_path / "a.pt"), expected_dim=3328)


def test_future_major_version_is_incompatible_and_names_both_versions(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"version": "2.0", "ids": ["a"], "data": torch.zeros(1, 2)}, path)
    with pytest.raises(FeatureFileError) as info:
        read_features(path)
    assert info.value.kind == "incompatible" and info.value.exit_code == EXIT_INCOMPATIBLE
    assert "version 2.0" in str(info.value) and "format 1.0" in str(info.value)
    # A newer minor version of the same major is read.
    good(tmp_path / "minor.pt")
    obj = torch.load(tmp_path / "minor.pt", weights_only=True)
    obj["version"] = "1.7"
    torch.save(obj, tmp_path / "minor.pt")
    assert read_features(tmp_path / "minor.pt").version == "1.7"


@pytest.mark.parametrize("name, width", [("output_1_merged.pt", 3328),
                                         ("output_1_DNABERT_S.pt", 768),
                                         ("output_1_ESM.pt", 2560)])
def test_original_unversioned_files_are_read(reference, name, width):
    table = read_features(reference / "original-format" / name, expected_dim=width)
    assert table.version == "0"
    frames = [line.split("\t")[0] for line in
              (reference / "original-format" / "prediction_results.txt").read_text()
              .splitlines()[1:]]
    assert sorted(table.ids) == sorted(frames)  # the ESM file is in batch order
    assert table.data.shape == (len(table.ids), width)


def test_round_trip_keeps_ids_data_and_metadata(tmp_path):
    path = good(tmp_path / "a.pt", models={"esm": {"layers": 2}})
    table = read_features(path)
    assert table.version == "1.0" and table.ids == ["f0", "f1", "f2", "f3"]
    assert table.meta["models"] == {"esm": {"layers": 2}}
    assert torch.equal(table.data, torch.arange(24, dtype=torch.float32).view(4, 6))


def test_quarantine_moves_aside_and_records(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"junk")
    registry = tmp_path / "failed_checkpoints.txt"
    aside = quarantine(path, "not a torch zip container", registry)
    assert not path.exists() and aside.read_bytes() == b"junk"
    recorded, reason, stamp = registry.read_text().strip().split("|")
    assert (recorded == str(path) and reason == "not a torch zip container"
            and stamp.startswith("20"))


def test_an_io_error_is_not_corruption(tmp_path, monkeypatch):
    """A read that fails (EIO: a failing disk, a network file system gone) says so and leaves
    the file and its sentinel where they are; nothing is moved aside or recomputed. (No disk
    fails on demand here: the failing read is simulated.)"""
    import builtins
    import errno

    from virnucpro.errors import StorageError

    registry = tmp_path / "failed_checkpoints.txt"
    result, sentinel = good(tmp_path / "s.pt"), tmp_path / "s.done"
    sentinel.write_text("4\n")
    real_open = builtins.open

    def failing_open(file, *args, **kwargs):
        if str(file) == str(result):
            raise OSError(errno.EIO, "Input/output error", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(StorageError) as raised:
        read_trusted(result, registry)
    monkeypatch.undo()
    assert raised.value.one_line() == (f"{result}: cannot be read (Input/output error); it is "
                                       "left where it is: check the disk or file system, then "
                                       "rerun") and raised.value.exit_code == 74
    assert result.is_file() and sentinel.is_file() and not registry.exists()
    assert read_trusted(result, registry).ids == ["f0", "f1", "f2", "f3"]


def test_a_consumer_moves_a_corrupt_result_aside_and_removes_its_sentinel(tmp_path):
    registry = tmp_path / "failed_checkpoints.txt"
    result, sentinel = good(tmp_path / "s.pt"), tmp_path / "s.done"
    sentinel.write_text("4\n")
    assert read_trusted(result, registry).ids == ["f0", "f1", "f2", "f3"]
    result.write_bytes(result.read_bytes()[:100])  # .done without a valid file
    with pytest.raises(FeatureFileError, match="not a torch zip container"):
        read_trusted(result, registry)
    assert not sentinel.exists() and not result.exists()
    assert "not a torch zip container" in registry.read_text()


def test_skip_validation_trusts_the_data_but_still_checks_the_container(tmp_path):
    path = tmp_path / "nan.pt"
    torch.save({"version": "1.0", "ids": ["a", "a"], "data": torch.full((2, 3), float("nan"))},
               path)
    assert read_features(path, validate=False).ids == ["a", "a"]
    with pytest.raises(FeatureFileError, match="duplicate ID"):
        read_features(path)
    path.write_bytes(b"junk")
    with pytest.raises(FeatureFileError, match="not a torch zip"):
        read_features(path, validate=False)


def batches_of(ids, sizes):
    start = 0
    for size in sizes:
        yield Batch(start, ids[start:start + size], torch.full((size, 3), float(start)))
        start += size


def write_batches(partial, batches):
    writer = partial.writer()
    for batch in batches:
        writer.submit(batch)
    writer.close()


def test_resume_loads_marked_batches_and_stops_at_the_first_bad_one(tmp_path):
    ids = [f"f{i}" for i in range(20)]
    partial = PartialShard(tmp_path / "p", {"model": "m"}, tmp_path / "failed.txt")
    assert partial.resume(ids) == []
    write_batches(partial, batches_of(ids, [5, 5, 5, 5]))
    assert frames_checkpointed(partial.directory) == 20
    # Batch 3 loses its sentinel (killed between file and .done); batch 4 is then orphaned.
    (partial.directory / "batch_000000000010_000000000015.done").unlink()
    loaded = PartialShard(tmp_path / "p", {"model": "m"}, tmp_path / "failed.txt").resume(ids)
    assert [b.start for b in loaded] == [0, 5] and sum(len(b) for b in loaded) == 10
    assert sorted(p.name for p in partial.directory.glob("batch_*")) == [
        "batch_000000000000_000000000005.done", "batch_000000000000_000000000005.pt",
        "batch_000000000005_000000000010.done", "batch_000000000005_000000000010.pt"]


def test_resume_quarantines_a_corrupt_marked_batch(tmp_path):
    ids = [f"f{i}" for i in range(10)]
    partial = PartialShard(tmp_path / "p", {}, tmp_path / "failed.txt")
    partial.resume(ids)
    write_batches(partial, batches_of(ids, [5, 5]))
    second = partial.directory / "batch_000000000005_000000000010.pt"
    second.write_bytes(second.read_bytes()[:50])
    loaded = partial.resume(ids)
    assert [b.stop for b in loaded] == [5]
    assert "batch_000000000005_000000000010.pt|not a torch zip container" in \
        (tmp_path / "failed.txt").read_text()
    assert list(partial.directory.glob("*.corrupted-*"))


def test_resume_refuses_a_different_fingerprint_unless_forced(tmp_path):
    ids = [f"f{i}" for i in range(5)]
    first = PartialShard(tmp_path / "p", {"esm": "a", "dtype": "float32"}, tmp_path / "f")
    first.resume(ids)
    write_batches(first, batches_of(ids, [5]))
    other = PartialShard(tmp_path / "p", {"esm": "b", "dtype": "float32"}, tmp_path / "f")
    with pytest.raises(CheckpointError, match=r"different settings \(esm\)") as info:
        other.resume(ids)
    assert info.value.exit_code == EXIT_INCOMPATIBLE
    forced = PartialShard(tmp_path / "p", {"esm": "b", "dtype": "float32"}, tmp_path / "f",
                          force_resume=True)
    assert len(forced.resume(ids)) == 1


def test_batches_describe_the_job_that_wrote_them(tmp_path):
    """Batches are bound to their job's fingerprint by their `.done`, not by fingerprint.json:
    without it, this job's batches are still reused and another job's are set aside."""
    ids = [f"f{i}" for i in range(10)]
    mine = PartialShard(tmp_path / "p", {"classifier": "a"}, tmp_path / "failed.txt")
    mine.resume(ids)
    write_batches(mine, batches_of(ids, [5, 5]))
    (mine.directory / PartialShard.FINGERPRINT).unlink()
    same = PartialShard(tmp_path / "p", {"classifier": "a"}, tmp_path / "failed.txt")
    assert [b.stop for b in same.resume(ids)] == [5, 10]
    (mine.directory / PartialShard.FINGERPRINT).unlink()
    other = PartialShard(tmp_path / "p", {"classifier": "b"}, tmp_path / "failed.txt")
    assert other.resume(ids) == []
    aside = list(tmp_path.glob("p.stale-*"))
    assert len(aside) == 1 and len(list(aside[0].glob("batch_*.pt"))) == 2
    assert sorted(p.name for p in other.directory.iterdir()) == [PartialShard.FINGERPRINT]
    assert (tmp_path / "failed.txt").read_text().startswith(
        f"{tmp_path / 'p'}|saved batches that do not carry this job's fingerprint")
    # batches of an older virnucpro (a `.done` with the frame count alone) are not reused
    write_batches(other, batches_of(ids, [5]))
    (other.directory / "batch_000000000000_000000000005.done").write_text("5\n")
    assert PartialShard(tmp_path / "p", {"classifier": "b"}, tmp_path / "failed.txt"
                        ).resume(ids) == []
    assert len(list(tmp_path.glob("p.stale-*"))) == 2


def test_a_fingerprint_without_batches_asks_for_no_decision(tmp_path):
    """A job that failed before saving a batch (a model computing NaN, say) leaves only its
    fingerprint: the fixed rerun, with other models, takes the directory over."""
    ids = [f"f{i}" for i in range(5)]
    PartialShard(tmp_path / "p", {"esm": "broken"}, tmp_path / "f").resume(ids)
    fixed = PartialShard(tmp_path / "p", {"esm": "good"}, tmp_path / "f")
    assert fixed.resume(ids) == [] and not (tmp_path / "f").exists()
    assert json.loads((tmp_path / "p" / PartialShard.FINGERPRINT).read_text()) == {"esm": "good"}


def test_partial_results_of_other_frames_are_set_aside(tmp_path):
    """The shard's frames changed (new reads, another chunk size): its partial results can
    never be reused, so they are moved aside and the shard starts afresh (no exit 78)."""
    ids = [f"f{i}" for i in range(10)]
    first = PartialShard(tmp_path / "p", {"esm": "a", "frames": 10}, tmp_path / "failed.txt")
    first.resume(ids)
    write_batches(first, batches_of(ids, [5]))
    again = PartialShard(tmp_path / "p", {"esm": "a", "frames": 12}, tmp_path / "failed.txt")
    assert again.resume(ids + ["f10", "f11"]) == []
    assert len(list(tmp_path.glob("p.stale-*"))) == 1
    assert "made for other frames of this shard" in (tmp_path / "failed.txt").read_text()


def test_an_interrupted_removal_leaves_only_an_orphan(tmp_path, monkeypatch):
    """The partial directory is renamed away before it is removed: a kill during the removal
    leaves a hidden temporary directory, which the next run removes, and never batches
    under the partial name."""
    from virnucpro.orphans import remove_orphans

    ids = [f"f{i}" for i in range(10)]
    partial = PartialShard(tmp_path / "scores" / "s.tsv.partial", {}, tmp_path / "failed.txt")
    partial.resume(ids)
    write_batches(partial, batches_of(ids, [5, 5]))

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("virnucpro.checkpoint.shutil.rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        partial.clear()
    monkeypatch.undo()
    assert not partial.directory.exists()
    (orphan,) = (tmp_path / "scores").iterdir()
    assert orphan.name.startswith(".s.tsv.partial.") and orphan.name.endswith(".tmp")
    (tmp_path / "scores" / "s.tsv").write_text("a result\n")  # not an orphan
    assert remove_orphans(tmp_path)[0] == 1
    assert [p.name for p in (tmp_path / "scores").iterdir()] == ["s.tsv"]


def test_writer_surfaces_errors(tmp_path):
    writer = BatchWriter(tmp_path / "missing-dir", "0" * 16)
    writer.submit(Batch(0, ["a"], torch.zeros(1, 2)))
    with pytest.raises(FileNotFoundError):
        writer.close()


def test_accumulator_cuts_every_n_frames_or_t_seconds():
    ids = [f"f{i}" for i in range(10)]
    acc = Accumulator(0, frames=4, seconds=3600)
    cut = [b for start in (0, 3, 6) for b in acc.add(ids[start:start + 3], torch.zeros(3, 1))]
    cut += list(acc.finish())
    assert [(b.start, b.stop) for b in cut] == [(0, 6), (6, 9)]
    assert cut[1].ids == ids[6:9]
    timed = Accumulator(2, frames=100, seconds=0.01)
    time.sleep(0.02)
    assert [(b.start, b.stop) for b in timed.add(ids[2:4], torch.zeros(2, 1))] == [(2, 4)]


def test_policy_environment_overrides(monkeypatch):
    assert checkpoint_policy() == (10_000, 300.0)
    monkeypatch.setenv("VIRNUCPRO_CHECKPOINT_FRAMES", "50")
    monkeypatch.setenv("VIRNUCPRO_CHECKPOINT_SECONDS", "2.5")
    assert checkpoint_policy(1000, 60) == (50, 2.5)


def test_a_duplicate_id_is_found_in_one_pass(tmp_path):
    """The last ID repeated in a large file: found without comparing every pair (a count()
    per ID took hours at this size)."""
    ids = [f"read{i}_chunk_1F1" for i in range(400_000)]
    ids.append(ids[-1])
    start = time.monotonic()
    assert first_duplicate(ids) == ids[-1]
    path = tmp_path / "dup.pt"
    save_features(path, ids, torch.zeros(len(ids), 2))
    with pytest.raises(FeatureFileError, match=f"duplicate ID '{ids[-1]}'"):
        read_features(path)
    assert time.monotonic() - start < 30
