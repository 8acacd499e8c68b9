"""The on-disk layout: the rules' patterns and the stages' paths are the same files, and a
prepare directory's shards are those prepare wrote."""

import shutil
from pathlib import Path

from virnucpro import layout
from virnucpro.prepare import write_shards


def test_the_rules_patterns_name_the_stages_paths():
    sample, shard = Path("out/s"), "shard_000007"
    fill = {"sample": "out/s", "shard": shard}
    assert Path(layout.FEATURES_PATTERN.format(**fill)) == layout.features_file(sample, shard)
    assert Path(layout.SCORES_PATTERN.format(**fill)) == layout.scores_file(sample, shard)
    for kind, suffix in layout.SHARD_SUFFIXES.items():
        assert Path(layout.SHARD_PATTERN.format(**fill) + suffix) == \
            layout.shard_file(layout.prepare_dir(sample), shard, kind)
    assert layout.sentinel(layout.features_file(sample, shard)) == Path(
        "out/s/features/shard_000007.done")
    assert layout.partial_dir(Path("out/s/scores/shard_000007.tsv")) == Path(
        "out/s/scores/shard_000007.tsv.partial")


def test_prepared_shards_are_those_prepare_wrote(tmp_path, reference):
    prepared = tmp_path / "prepare"
    write_shards(reference / "prepare" / "test_with_orfs.fa", 500, 1, prepared)
    names = layout.prepared_shards(prepared)
    assert names == [layout.shard_name(i) for i in range(len(names))] and len(names) > 1
    for kind in layout.SHARD_SUFFIXES:
        assert layout.shard_file(prepared, names[0], kind).is_file()
    # files deleted since (intermediates of a finished sample) do not remove a shard
    (prepared / layout.SHARDS / f"{names[-1]}{layout.DONE}").unlink()
    layout.shard_file(prepared, names[0], "protein").unlink()
    assert layout.prepared_shards(prepared) == names
    shutil.rmtree(prepared / layout.SHARDS)
    assert layout.prepared_shards(prepared) == names
    assert layout.prepared_shards(tmp_path / "nowhere") == []
