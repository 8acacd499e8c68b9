"""DAG scale: the shard layout of a 10-million-read run (150-bp reads) at several
shard sizes, built on disk without embedding, and the time `snakemake -n` takes
to plan what remains (every shard still to embed, classify and aggregate).

    .venv/bin/python bench/dag.py [--reads 10000000] [--frames-per-read 0.8]

Results: printed, and saved to bench/results/dag.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SNAKEFILE = HERE.parent / "workflow" / "Snakefile"


def layout(work: Path, frames: int, shard_size: int) -> int:
    """A finished prepare of one sample with `frames` frames in shards of `shard_size`."""
    from virnucpro.demo_models import write_demo_models

    fasta = work / "reads.fa"
    fasta.write_text(">placeholder\nACGT\n")
    old = time.time() - 3600
    os.utime(fasta, (old, old))
    shards = work / "out" / "s" / "prepare" / "shards"
    shards.mkdir(parents=True)
    count = -(-frames // shard_size)
    for i in range(count):
        for suffix in (".fna", ".faa", ".index.tsv"):
            (shards / f"shard_{i:06d}{suffix}").touch()
        n = min(shard_size, frames - i * shard_size)
        (shards / f"shard_{i:06d}.done").write_text(f"{n}\n")
    (work / "out" / "s" / "prepare" / "reads.tsv").touch()
    (work / "out" / "s" / "prepare" / "stats.json").write_text("{}")
    # Real model files (pre-flight checks them before planning), the small demo ones.
    models = write_demo_models(work / "models")
    (work / "c.yaml").write_text(yaml.safe_dump({
        "samples": {"s": str(fasta)}, "outdir": "out", "shard_size": shard_size,
        "models": {kind: str(models[kind]) for kind in ("esm", "dnabert", "classifier")}}))
    return count


def dry_run(work: Path) -> tuple[float, dict[str, int]]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "out/s/summary.tsv",
                           "--snakefile", str(SNAKEFILE), "--directory", str(work),
                           "--configfile", str(work / "c.yaml")], capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(proc.stdout + proc.stderr)
    table = proc.stdout[proc.stdout.index("Job stats:"):]
    return seconds, {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=10_000_000)
    parser.add_argument("--frames-per-read", type=float, default=0.8)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[1_000_000, 100_000, 10_000])
    args = parser.parse_args()
    frames = int(args.reads * args.frames_per_read)
    rows = []
    for shard_size in args.shard_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            shards = layout(Path(tmp), frames, shard_size)
            seconds, jobs = dry_run(Path(tmp))
        rows.append({"shard_size": shard_size, "shards": shards, "jobs": jobs["total"],
                     "dry_run_seconds": round(seconds, 2),
                     "ms_per_job": round(1000 * seconds / jobs["total"], 2)})
        print(rows[-1], flush=True)
    result = {"reads": args.reads, "frames": frames, "runs": rows,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dag.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
