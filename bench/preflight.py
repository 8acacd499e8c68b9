"""What pre-flight's reads checks cost: counting records with the package's reader (ms per MB
on disk, for FASTA, FASTQ and gzip FASTQ), and `check` of one paired sample at
preflight.PAIR_COUNT_BYTES (counted in full: the most a dry run spends on a pair) and just
above it (its first MB only), plain and gzip. The limit is chosen so that the first stays
under about a second.

    .venv/bin/python bench/preflight.py

Results: printed, and saved to bench/results/preflight.json.
"""

from __future__ import annotations

import gzip
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from virnucpro import preflight  # noqa: E402
from virnucpro.fasta import ReadsReader  # noqa: E402


def write_pair(directory: Path, total_bytes: int, form: str) -> list[str]:
    """R1 and R2 of 150-bp reads (random bases and qualities) of about `total_bytes` together
    on disk; `form`: fastq or fastq.gz."""
    rng = random.Random(1)
    paths = []
    for mate in (1, 2):
        lines, size, i = [], 0, 0
        target = int(total_bytes // 2 * (2.4 if form.endswith(".gz") else 1))  # ~2.6x compression
        while size < target:
            seq = "".join(rng.choices("ACGT", k=150))
            record = f"@read{i}/{mate}\n{seq}\n+\n{''.join(rng.choices('#+5?FIJ', k=150))}\n"
            lines.append(record)
            size += len(record)
            i += 1
        text = "".join(lines).encode()
        path = directory / f"r{mate}.{form}"
        path.write_bytes(gzip.compress(text, 6) if form.endswith(".gz") else text)
        paths.append(str(path))
    return paths


def best_of(repeats: int, func) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def counting_cost(directory: Path) -> dict[str, float]:
    """ms per MB on disk to count every record with ReadsReader, per format."""
    fastq = write_pair(directory, 40 << 20, "fastq")[0]
    fasta = directory / "r1.fa"
    with open(fastq) as source, open(fasta, "w") as out:
        for i, line in enumerate(source):
            if i % 4 == 0:
                out.write(">" + line[1:])
            elif i % 4 == 1:
                out.write(line)
    gz = write_pair(directory, 20 << 20, "fastq.gz")[0]
    cost = {}
    for name, path in (("fasta", str(fasta)), ("fastq", fastq), ("fastq.gz", gz)):
        seconds = best_of(3, lambda: sum(map(len, ReadsReader(path))))
        cost[name] = round(1000 * seconds / (Path(path).stat().st_size / 1e6), 2)
    return cost


def check_seconds(directory: Path, total_bytes: int, form: str) -> float:
    """`preflight.sample_problems` of one paired sample, first time (nothing remembered)."""
    paths = write_pair(directory, total_bytes, form)
    size = sum(Path(p).stat().st_size for p in paths)

    def run() -> None:
        preflight._first_records.cache_clear()
        assert preflight.sample_problems("s", paths, 500) == []
    return round(best_of(3, run), 3), size


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cost = counting_cost(tmp)
        limit = preflight.PAIR_COUNT_BYTES
        checks = {}
        for form in ("fastq", "fastq.gz"):
            for label, size in (("at_limit", limit - (1 << 20)),
                                ("above_limit", limit + (4 << 20))):
                (tmp / form / label).mkdir(parents=True)
                seconds, on_disk = check_seconds(tmp / form / label, size, form)
                checks[f"{form}_{label}"] = {"bytes_on_disk": on_disk, "seconds": seconds}
    result = {"machine": platform.processor() or platform.machine(),
              "count_ms_per_disk_mb": cost, "pair_count_bytes": limit,
              "check_one_paired_sample": checks}
    print(json.dumps(result, indent=2))
    out = HERE / "results" / "preflight.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
