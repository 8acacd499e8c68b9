"""A real SIGKILL in the middle of a workflow run: resume redoes at most one
checkpoint interval, and the results equal an uninterrupted run (the default run, whose
embedding job scores its shard and keeps no feature file; a quarter of the reads repeat
others, so the shard holds the distinct frames only)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

from virnucpro.checkpoint import frames_checkpointed
from workflow_helpers import (DEMO_MODELS, SNAKEFILE, assert_same_file, job_counts, orf_reads,
                              snakemake, write_config)

pytestmark = pytest.mark.slow
INTERVAL = 300


def config_for(tmp_path, fasta):
    return write_config(
        tmp_path / "c.yaml", samples={"s": str(fasta)}, outdir="out", shard_size=100000,
        models=DEMO_MODELS,
        embed={"device": "cpu"}, checkpoint={"frames": INTERVAL, "window_frames": 100})


def test_sigkill_during_embedding_then_resume(tmp_path):
    fasta = tmp_path / "reads.fa"
    orf_reads(fasta, 6000)
    reads = fasta.read_text().splitlines()
    again = random.Random(1).sample(range(0, len(reads), 2), 2000)
    with open(fasta, "a") as out:  # 2,000 reads again under new IDs
        out.writelines(f">again{i}\n{reads[line + 1]}\n" for i, line in enumerate(again))
    work, clean = tmp_path / "killed", tmp_path / "clean"
    work.mkdir()
    clean.mkdir()
    config = config_for(tmp_path, fasta)
    # Models and prepare first, so that the kill lands in the embedding job.
    assert snakemake(work, "out/prepare_summary.tsv", "--configfile", config).returncode == 0
    assert snakemake(work, "resources/demo-models/models.json",
                     "--configfile", config).returncode == 0

    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
           "--directory", str(work), "--cores", "2", "--configfile", str(config)]
    runner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = work / "out" / "s" / "scores" / "shard_000000.tsv.partial"
    deadline = time.monotonic() + 300
    while len(list(partial.glob("batch_*.done"))) < 3:
        assert runner.poll() is None and time.monotonic() < deadline, "finished before the kill"
        time.sleep(0.01)
    tree = psutil.Process(runner.pid).children(recursive=True) + [psutil.Process(runner.pid)]
    assert any("embed.py" in " ".join(p.cmdline()) for p in tree[:-1])
    for process in tree:  # the whole run dies at once, as on a node failure
        os.kill(process.pid, signal.SIGKILL)
    runner.wait()
    time.sleep(0.2)
    saved = frames_checkpointed(partial)
    frames = int((work / "out" / "s" / "prepare" / "shards" / "shard_000000.done")
                 .read_text().split()[0])
    assert INTERVAL * 3 <= saved < frames
    assert not (work / "out" / "s" / "scores" / "shard_000000.tsv").exists()

    # A dry-run shows exactly what the resume will redo.
    dry = snakemake(work, "-n", "--configfile", config)
    assert dry.returncode == 0, dry.stdout
    assert job_counts(dry.stdout) == {"embed_classify": 1, "aggregate": 1, "sample_report": 1,
                                      "virus_reads": 1, "samples_summary": 1,
                                      "overview_report": 1, "all": 1, "total": 7}
    assert snakemake(work, "--unlock", "--configfile", config).returncode == 0
    rerun = snakemake(work, "--configfile", config)
    assert rerun.returncode == 0, rerun.stdout
    log = (work / "out" / "logs" / "embed_classify" / "s" / "shard_000000.log").read_text()
    assert f"resuming after {saved} of {frames} frames" in log  # nothing saved is redone
    left = f"{frames - saved:,}"
    assert "embed done after" in log and f": {left} of {left} frames (100%)" in log

    assert snakemake(clean, "--configfile", config).returncode == 0
    for name in ("scores/shard_000000.tsv", "prediction_results.txt", "summary.tsv",
                 "prediction_results_highestscore.csv"):
        assert_same_file(work / "out" / "s" / name, clean / "out" / "s" / name)
    scored = [line.split("\t") for line in
              (work / "out" / "s" / "scores" / "shard_000000.tsv").read_text().splitlines()[1:]]
    stats = json.loads((work / "out" / "s" / "prepare" / "stats.json").read_text())
    assert len(scored) == len({row[0] for row in scored}) == stats["frames"]  # every frame once
    # embedded once each: the frames of the 2,000 reads again were not
    assert sum(not row[5] for row in scored) == stats["distinct_frames"] == frames
    assert {row[0].split("_")[0] for row in scored if row[5]} == {f"again{i}" for i in range(2000)}
    assert not partial.exists() and not (work / "out" / "s" / "features").exists()
