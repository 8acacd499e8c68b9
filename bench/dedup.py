"""Distinct frames embedded once: what repeated reads cost, measured.

  embed    A sample of N random 150-bp reads (default 1,200), and the same reads four times
           over under new IDs, shuffled, through the CLI chain (prepare, embed, classify) with
           random models of mid-size shapes (ESM-2 8M's, DNABERT-S's width with 2 layers: the
           frames dominate a job's time, as with the published models). The embedding job's
           CPU time (one thread; the child's user + system time, model loading included) of
           the repeated sample over the sample's: target <= 1.5x; without dedup (`prepare
           --no-dedup`, today's cost) it is about 4x. The calls of each copy must be its
           read's, and those of the repeated sample with and without dedup identical; the
           scores are compared (the batches differ, so the last bits may move).
  prepare  `write_shards` on 1,000,000 random 150-bp reads, with dedup and without, in child
           processes: wall and CPU time (target: dedup <= 1.3x) and peak RssAnon (sampled);
           also on 1,000,000 reads that are 250,000 reads four times over, shuffled, where
           dedup writes a quarter of the frames. The hash table's memory at 1 and 20 million
           distinct chunks (tracemalloc; its large runs are on disk), and a Python dict's.
  frames   How many repeated frames chunk-level dedup leaves: distinct frames (distinct
           nucleotide + protein sequences) against the frames prepare embeds, on the
           repeated sample and on deep reads of one 3-kb genome (reads starting 1 or 2 bases
           apart share frames in different chunks).

    .venv/bin/python bench/dedup.py [embed prepare frames] [--reads 1200]
                                    [--prepare-reads 1000000] [--workdir DIR]

Results: printed, and saved to bench/results/dedup.json (sections measured in this run
replace those of an earlier run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from embed import DNABERT_CPU_SHAPE, ESM_8M_SHAPE, random_reads  # noqa: E402
from scale import measure_step, run_sections  # noqa: E402

RESULTS = HERE / "results" / "dedup.json"
PYTHON = sys.executable
COPIES = 4
EMBED_TARGET = 1.5
PREPARE_TARGET = 1.3
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MB = 1 << 20


def repeated(source: Path, out: Path, copies: int = COPIES, seed: int = 1) -> dict[str, str]:
    """`source`'s reads `copies` times over under new IDs (cK_ID), shuffled: {new ID: ID}."""
    lines = source.read_text().splitlines()
    records = [(f"c{k}_{lines[i][1:]}", lines[i][1:], lines[i + 1])
               for k in range(copies) for i in range(0, len(lines), 2)]
    random.Random(seed).shuffle(records)
    with open(out, "w") as handle:
        handle.writelines(f">{name}\n{seq}\n" for name, _, seq in records)
    return {name: read for name, read, _ in records}


def cpu_of(*args: str, env: dict[str, str] | None = None) -> float:
    """CPU seconds (user + system) of the child process `virnucpro ARGS`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([PYTHON, "-m", "virnucpro.cli", "-q", *args], capture_output=True,
                          text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})
    if proc.returncode:
        raise SystemExit(f"virnucpro {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def table(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def chain(work: Path, reads: Path, models: dict[str, Path], *prepare_options: str) -> dict:
    """prepare, embed (one shard), classify; the embedding job's CPU seconds and frames."""
    prepared = work / "prepared"
    cpu_of("prepare", str(reads), "--chunk-size", "300", "--outdir", str(prepared),
           "--shard-size", "1000000", *prepare_options)
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["shards"] == 1, stats
    shard = prepared / "shards" / "shard_000000"
    features = work / "features" / "shard_000000.pt"
    seconds = cpu_of("embed", "--nucleotide", f"{shard}.fna", "--protein", f"{shard}.faa",
                     "--esm-model", str(models["esm"]), "--dnabert-model", str(models["dnabert"]),
                     "--device", "cpu", "--dtype", "float32", "--out", str(features),
                     env=ONE_THREAD)
    cpu_of("classify", "--features", str(features), "--prepared", str(prepared), "--model",
           str(models["classifier"]), "--outdir", str(work / "results"))
    return {"embed_cpu_seconds": round(seconds, 2), "frames": stats["frames"],
            "distinct_frames": stats["distinct_frames"], "results": work / "results"}


def compare(ours: Path, theirs: Path, name_of: dict[str, str] | None = None) -> dict:
    """Frame and read calls of `ours` against `theirs` (a copy's read named by `name_of`):
    every call the same? the largest score difference, and how many score texts differ."""
    def original(frame_or_read: str) -> str:
        if name_of is None:
            return frame_or_read
        name, _, rest = frame_or_read.partition("_chunk_")
        return name_of[name] + (f"_chunk_{rest}" if rest else "")

    facts = {"frames": 0, "frame_calls_differ": 0, "read_calls_differ": 0,
             "score_texts_differ": 0, "max_score_difference": 0.0}
    frames = {row[0]: row for row in table(theirs / "prediction_results.txt")}
    for frame, call, *scores in table(ours / "prediction_results.txt"):
        expected = frames[original(frame)]
        facts["frames"] += 1
        facts["frame_calls_differ"] += call != expected[1]
        facts["score_texts_differ"] += scores != expected[2:]
        facts["max_score_difference"] = max(facts["max_score_difference"], *(
            abs(float(a) - float(b)) for a, b in zip(scores, expected[2:])))
    reads = {row[0]: row for row in table(theirs / "summary.tsv")}
    for row in table(ours / "summary.tsv"):
        facts["read_calls_differ"] += row[-1] != reads[original(row[0])][-1]
    facts["calls_identical"] = not facts["frame_calls_differ"] and not facts["read_calls_differ"]
    return facts


def bench_embed(work: Path, reads: int) -> dict:
    from virnucpro.demo_models import write_demo_classifier, write_demo_dnabert2, write_demo_esm2

    models = {"esm": write_demo_esm2(work / "models", **ESM_8M_SHAPE),
              "dnabert": write_demo_dnabert2(work / "models" / "dnabert", **DNABERT_CPU_SHAPE),
              "classifier": write_demo_classifier(
                  work / "models" / "classifier.pth",
                  ESM_8M_SHAPE["embed_dim"] + DNABERT_CPU_SHAPE["hidden"])}
    sample, copies = work / "sample.fa", work / "repeated.fa"
    random_reads(sample, reads, seed=3)
    name_of = repeated(sample, copies)
    runs = {"sample": chain(work / "sample", sample, models),
            "repeated": chain(work / "repeated", copies, models),
            "repeated_without_dedup": chain(work / "all", copies, models, "--no-dedup")}
    base = runs["sample"]["embed_cpu_seconds"]
    result = {"reads": reads, "copies": COPIES, "models": {"esm": ESM_8M_SHAPE,
                                                            "dnabert": DNABERT_CPU_SHAPE},
              "threads": 1, "target_ratio": EMBED_TARGET}
    for name, facts in runs.items():
        facts["ratio_to_sample"] = round(facts["embed_cpu_seconds"] / base, 2)
        print(f"{name:>24}: {facts['frames']:>6,} frames, {facts['distinct_frames']:>6,} "
              f"embedded: embedding job {facts['embed_cpu_seconds']:6.1f} s CPU "
              f"({facts['ratio_to_sample']:.2f}x the sample's)")
    result["copies_vs_reads"] = compare(runs["repeated"]["results"], runs["sample"]["results"],
                                        name_of)
    result["dedup_vs_without"] = compare(runs["repeated"]["results"],
                                         runs["repeated_without_dedup"]["results"])
    for key in ("copies_vs_reads", "dedup_vs_without"):
        facts = result[key]
        print(f"{key}: {facts['frames']:,} frames, calls identical: {facts['calls_identical']}, "
              f"score texts differing {facts['score_texts_differ']:,}, largest score "
              f"difference {facts['max_score_difference']:.2g}")
    for facts in runs.values():
        del facts["results"]
    result["runs"] = runs
    ratio = runs["repeated"]["ratio_to_sample"]
    result["met"] = ratio <= EMBED_TARGET and result["copies_vs_reads"]["calls_identical"] and \
        result["dedup_vs_without"]["calls_identical"]
    print(f"repeated over sample: {ratio:.2f}x (target <= {EMBED_TARGET}; without dedup "
          f"{runs['repeated_without_dedup']['ratio_to_sample']:.2f}x): "
          f"{'met' if result['met'] else 'MISSED'}")
    return result


def bench_prepare(work: Path, reads: int) -> dict:
    distinct, copies = work / "distinct.fa", work / "repeated.fa"
    random_reads(distinct, reads, seed=5)
    random_reads(work / "quarter.fa", reads // COPIES, seed=6)
    repeated(work / "quarter.fa", copies)
    result = {"reads": reads, "target_time_ratio": PREPARE_TARGET, "samples": {}}
    for sample, path in (("distinct", distinct), (f"{COPIES}x_repeated", copies)):
        figures = {}
        for dedup in (False, True):
            out = work / f"{sample}-{dedup}"
            facts = measure_step("virnucpro.prepare.write_shards",
                                 [str(path), 300, 1_000_000, str(out), False, False, dedup], work)
            stats = json.loads((out / "stats.json").read_text())
            facts.update(frames=stats["frames"], distinct_frames=stats["distinct_frames"],
                         shard_bytes=sum(p.stat().st_size for p in (out / "shards").iterdir()))
            figures["dedup" if dedup else "without"] = facts
            print(f"prepare {sample:>12} {'dedup' if dedup else 'without':>7}: "
                  f"{facts['seconds']:6.1f} s ({facts['cpu_seconds']:.1f} s CPU), peak RssAnon "
                  f"{facts['peak_anon_mb']:6.1f} MB, {stats['frames']:,} frames, "
                  f"{stats['distinct_frames']:,} written")
            shutil.rmtree(out)
        ratio = figures["dedup"]["cpu_seconds"] / figures["without"]["cpu_seconds"]
        figures["cpu_ratio"] = round(ratio, 3)
        figures["wall_ratio"] = round(figures["dedup"]["seconds"] / figures["without"]["seconds"],
                                      3)
        figures["peak_anon_growth_mb"] = round(figures["dedup"]["peak_anon_mb"]
                                               - figures["without"]["peak_anon_mb"], 1)
        print(f"  dedup over without: {ratio:.2f}x CPU time (target <= {PREPARE_TARGET}), "
              f"{figures['peak_anon_growth_mb']:+.1f} MB peak RssAnon")
        result["samples"][sample] = figures
    result["table"] = table_memory(work)
    result["met"] = all(s["cpu_ratio"] <= PREPARE_TARGET for s in result["samples"].values())
    return result


def table_memory(directory: Path, sizes: tuple[int, ...] = (1_000_000, 20_000_000)) -> dict:
    """Memory the hash table holds (tracemalloc: numpy's allocations; runs moved to disk are
    memory maps, not counted) with its keys added in blocks of 10,000, as prepare adds them, at
    two sizes; and a Python dict of the smaller size's keys and values."""
    import numpy as np

    from virnucpro.dedup import SeenHashes

    facts = {}
    for keys in sizes:
        values = np.random.default_rng(keys).integers(0, 1 << 62, keys, dtype=np.uint64)
        tracemalloc.start()
        seen = SeenHashes(directory)
        for start in range(0, keys, 10_000):
            block = values[start:start + 10_000]
            seen.add(block, block.astype(np.int64))
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        facts[keys] = {"runs": seen.runs, "held_mb": round(held / MB, 1),
                       "peak_mb": round(peak / MB, 1), "bytes_per_key": round(held / keys, 1)}
        print(f"hash table of {keys:>11,} distinct chunks: {held / MB:6.1f} MB held "
              f"({held / keys:.1f} bytes a chunk; peak {peak / MB:.1f} MB while merging), "
              f"{seen.runs} runs")
        del seen
    values = np.random.default_rng(0).integers(0, 1 << 62, sizes[0], dtype=np.uint64)
    tracemalloc.start()
    mapping = dict(zip(values.tolist(), values.astype(np.int64).tolist()))  # its own ints
    facts["python_dict_bytes_per_key"] = round(tracemalloc.get_traced_memory()[0] / sizes[0], 1)
    tracemalloc.stop()
    del mapping
    print(f"a Python dict of {sizes[0]:,} keys: {facts['python_dict_bytes_per_key']} bytes a key")
    return facts


def genome_reads(path: Path, reads: int, seed: int = 7) -> None:
    """Deep 150-bp reads of one random 3-kb genome (both strands' frames; reads starting 1
    or 2 bases apart share frames, and some start at the same base: repeats)."""
    rng = random.Random(seed)
    genome = "".join(rng.choices("ACGT", k=3000))
    with open(path, "w") as out:
        for i in range(reads):
            start = rng.randint(0, len(genome) - 150)
            out.write(f">g{i}\n{genome[start:start + 150]}\n")


def bench_frames(work: Path, reads: int) -> dict:
    from virnucpro.fasta import fasta_records
    from virnucpro.prepare import write_shards

    random_reads(work / "sample.fa", reads, seed=3)
    repeated(work / "sample.fa", work / "repeated.fa")
    genome_reads(work / "genome.fa", reads * COPIES)
    result = {}
    for name in ("repeated", "genome"):
        out = work / f"{name}-prepared"
        stats = write_shards(work / f"{name}.fa", 300, 1_000_000, out)
        embedded = list(zip(fasta_records(out / "shards" / "shard_000000.fna"),
                            fasta_records(out / "shards" / "shard_000000.faa")))
        sequences = {(n[1], p[1]) for n, p in embedded}
        facts = {"reads": stats.reads, "frames": stats.frames,
                 "chunk_level_distinct_frames": stats.distinct_frames,
                 "frame_level_distinct_frames": len(sequences),
                 "repeated_frames_left": stats.distinct_frames - len(sequences)}
        facts["left_share_of_frames"] = round(facts["repeated_frames_left"] / stats.frames, 4)
        result[name] = facts
        print(f"{name:>9}: {stats.frames:,} frames, {stats.distinct_frames:,} embedded "
              f"(chunk level), {len(sequences):,} distinct sequences (frame level): "
              f"{facts['repeated_frames_left']:,} repeated frames left "
              f"({100 * facts['left_share_of_frames']:.1f}% of the frames)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sections = ["embed", "prepare", "frames"]
    parser.add_argument("sections", nargs="*", help=f"of {', '.join(sections)} (default: all)")
    parser.add_argument("--reads", type=int, default=1200)
    parser.add_argument("--prepare-reads", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    run_sections(parser, RESULTS, args.sections, args.workdir, {
        "embed": lambda here: bench_embed(here, args.reads),
        "prepare": lambda here: bench_prepare(here, args.prepare_reads),
        "frames": lambda here: bench_frames(here, args.reads)})


if __name__ == "__main__":
    main()
