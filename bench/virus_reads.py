"""The virus reads files: the gzip level's speed and size, and memory that does not grow.

Writes N random 150-bp FASTQ reads (qualities drawn from 7 Illumina-like symbols) and a
summary.tsv calling every read virus (the most a virus reads file can hold), then, in fresh
processes, runs `virnucpro.results.write_virus_reads` on them:

  levels  at gzip levels 1, 3 and 6 (the module's GZIP_LEVEL set for the run): seconds
          (best of --repeats), output MB, and the speed and size ratios against level 6,
          measured in this run;
  memory  at the chosen level, single reads at N and 4N and paired reads (N/2 and 2N pairs,
          pairs.tsv): peak anonymous memory (RssAnon, sampled), which must not grow with the
          sample (target: within 10 MB).

    .venv/bin/python bench/virus_reads.py [--reads 200000] [--repeats 3] [--workdir DIR]

Results: printed, and saved to bench/results/virus_reads.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from scale import MB, PYTHON, peak_anon  # noqa: E402

RESULTS = HERE / "results" / "virus_reads.json"
LEVELS = (1, 3, 6)
MEMORY_TARGET_MB = 10

# One run in a fresh process: the level set, the call timed; prints its seconds.
RUN = """
import sys, time
from virnucpro import results
results.GZIP_LEVEL = int(sys.argv[1])
reads, calls, outs = sys.argv[2].split(","), sys.argv[3], sys.argv[4].split(",")
start = time.perf_counter()
results.write_virus_reads(reads if len(reads) > 1 else reads[0], calls, outs)
print(time.perf_counter() - start)
"""


def write_fastq(path: Path, n: int, seed: int, mate: str = "") -> list[str]:
    """`n` random 150-bp reads as 4-line FASTQ; returns their IDs."""
    rng = random.Random(seed)
    ids = []
    with open(path, "w") as out:
        for i in range(n):
            seq = "".join(rng.choices("ACGT", k=150))
            quality = "".join(rng.choices("#+5?FIJ", k=150))
            out.write(f"@read{i} {mate}simulated\n{seq}\n+\n{quality}\n")
            ids.append(f"read{i}")
    return ids


def write_calls(path: Path, ids: list[str], first_column: str) -> None:
    """summary.tsv (or pairs.tsv) with every row called virus (only ID and call are read)."""
    with open(path, "w") as out:
        out.write(f"{first_column}\tcall\n")
        out.writelines(f"{rid}\tvirus\n" for rid in ids)


def run(level: int, reads: list[Path], calls: Path, outs: list[Path]) -> tuple[float, int]:
    """Seconds of the call and peak RssAnon (bytes) of its process."""
    cmd = [PYTHON, "-c", RUN, str(level), ",".join(map(str, reads)), str(calls),
           ",".join(map(str, outs))]
    peak, _, done = peak_anon(cmd, env={"PYTHONPATH": str(ROOT / "src")})
    return float(done.stdout.split()[-1]), peak


def single_sample(workdir: Path, n: int) -> tuple[list[Path], Path]:
    reads = workdir / f"single-{n}.fq"
    write_calls(workdir / f"summary-{n}.tsv", write_fastq(reads, n, seed=n), "read_id")
    return [reads], workdir / f"summary-{n}.tsv"


def paired_sample(workdir: Path, pairs: int) -> tuple[list[Path], Path]:
    reads = [workdir / f"pairs-{pairs}_R{mate}.fq" for mate in (1, 2)]
    ids = write_fastq(reads[0], pairs, seed=pairs, mate="1:N:0 ")
    write_fastq(reads[1], pairs, seed=pairs + 1, mate="2:N:0 ")
    write_calls(workdir / f"pairs-{pairs}.tsv", ids, "pair_id")
    return reads, workdir / f"pairs-{pairs}.tsv"


def bench_levels(workdir: Path, n: int, repeats: int) -> dict:
    reads, calls = single_sample(workdir, n)
    out = workdir / "virus_reads.fq.gz"
    figures = {}
    for level in LEVELS:
        seconds = min(run(level, reads, calls, [out])[0] for _ in range(repeats))
        figures[level] = {"seconds": round(seconds, 3), "output_mb": round(out.stat().st_size / MB,
                                                                            2)}
    base = figures[6]
    for level, row in figures.items():
        row["speed_vs_level_6"] = round(base["seconds"] / row["seconds"], 2)
        row["size_vs_level_6"] = round(row["output_mb"] / base["output_mb"], 3)
        print(f"level {level}: {row['seconds']:6.2f} s, {row['output_mb']:7.2f} MB: "
              f"{row['speed_vs_level_6']:.2f}x the speed of level 6, "
              f"{row['size_vs_level_6']:.3f}x its size")
    return {"reads": n, "input_mb": round(reads[0].stat().st_size / MB, 2), "levels": figures}


def bench_memory(workdir: Path, n: int, level: int) -> dict:
    figures = {}
    for kind, make, sizes, names in (
            ("single", single_sample, (n, 4 * n), ["virus_reads.fq.gz"]),
            ("paired", paired_sample, (n // 2, 2 * n), ["virus_R1.fq.gz", "virus_R2.fq.gz"])):
        rows = {}
        for size in sizes:
            reads, calls = make(workdir, size)
            seconds, peak = run(level, reads, calls, [workdir / name for name in names])
            rows[size] = {"peak_anon_mb": round(peak / MB, 1), "seconds": round(seconds, 2)}
            print(f"{kind} {size:>9,} {'pairs' if kind == 'paired' else 'reads'}: peak RssAnon "
                  f"{peak / MB:6.1f} MB, {seconds:6.2f} s")
            for path in reads:
                path.unlink()
        growth = rows[sizes[1]]["peak_anon_mb"] - rows[sizes[0]]["peak_anon_mb"]
        figures[kind] = {"runs": rows, "growth_mb": round(growth, 1),
                         "met": growth <= MEMORY_TARGET_MB}
        print(f"{kind}: growth {growth:+.1f} MB (target <= {MEMORY_TARGET_MB} MB): "
              f"{'met' if growth <= MEMORY_TARGET_MB else 'MISSED'}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from virnucpro.results import GZIP_LEVEL

    workdir = Path(tempfile.mkdtemp(prefix="bench-virus-reads-", dir=args.workdir))
    try:
        result = {"levels": bench_levels(workdir, args.reads, args.repeats),
                  "chosen_level": GZIP_LEVEL,
                  "memory": bench_memory(workdir, args.reads, GZIP_LEVEL),
                  "memory_target_growth_mb": MEMORY_TARGET_MB,
                  "machine": platform.platform(), "python": platform.python_version(),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    finally:
        shutil.rmtree(workdir)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
