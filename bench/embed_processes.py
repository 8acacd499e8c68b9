"""`virnucpro embed` against the original's way, as whole processes timed from outside.

The same 2,000 frames of random 150-bp reads (a shard written by the project's prepare) and
the same model files of the real formats, small (ESM-2 of the esm2_t6_8M shape, a 2-layer
DNABERT-2 of DNABERT-S's width): A is `virnucpro embed --device cpu` (its defaults: float32),
B the original's way (bench/original_embed.py: DNABERT-S one frame at a time, fair-esm's
batching). Each process is timed whole, start-up and model loading included: wall time on a
monotonic clock around it, CPU time (user + system) from the operating system's accounting
of the finished child. A and B run in turn, A B A B ..., after one unmeasured run of each
(file caches); the ratio B/A is taken pair by pair, so that a machine whose speed drifts
(other people's jobs) moves both sides of a pair alike, and the median pair is reported.
Both outputs are checked to hold the same features (within 1e-4).

    .venv/bin/python bench/embed_processes.py [--frames 2000] [--pairs 5]

Results: printed, and saved to bench/results/embed_processes.json (target: B/A >= 1.4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from embed import DNABERT_CPU_SHAPE, ESM_8M_SHAPE, make_frames  # noqa: E402
from virnucpro.demo_models import write_demo_dnabert2, write_demo_esm2  # noqa: E402
from virnucpro.features import read_features  # noqa: E402

TARGET = 1.4


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embed_processes.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nucleotides, proteins, _ = make_frames(args.frames, work)
        for suffix, seqs in ((".fna", nucleotides), (".faa", proteins)):
            (work / f"shard{suffix}").write_text("".join(f">f{i}\n{seq}\n"
                                                         for i, seq in enumerate(seqs)))
        esm = write_demo_esm2(work / "esm2_t6_8M_UR50D.pt", seed=1, **ESM_8M_SHAPE)
        dnabert = write_demo_dnabert2(work / "dnabert", seed=2, **DNABERT_CPU_SHAPE)
        shard = [str(work / "shard.fna"), str(work / "shard.faa")]
        commands = {
            "virnucpro": [sys.executable, "-m", "virnucpro.cli", "-q", "embed", "--nucleotide",
                          shard[0], "--protein", shard[1], "--esm-model", str(esm),
                          "--dnabert-model", str(dnabert), "--device", "cpu",
                          "--out", str(work / "ours.pt")],
            "original": [sys.executable, str(HERE / "original_embed.py"), *shard, str(esm),
                         str(dnabert), str(work / "original.pt")]}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for pair in range(args.pairs + 1):
            for name, cmd in commands.items():
                if name == "virnucpro":  # a finished result is not redone: start afresh
                    for leftover in work.glob("ours.*"):
                        leftover.unlink()
                measured = timed(cmd)
                if pair:
                    runs[name].append(measured)
        ours = read_features(work / "ours.pt")
        theirs = torch.load(work / "original.pt", weights_only=True)
        difference = float((ours.data - theirs["data"]).abs().max())
        assert ours.ids == theirs["ids"] and difference <= 1e-4, difference
    ratios = [b[0] / a[0] for a, b in zip(runs["virnucpro"], runs["original"])]
    result = {
        "frames": args.frames, "pairs": args.pairs,
        "models": {"esm": f"ESM-2 {ESM_8M_SHAPE}", "dnabert": f"DNABERT-2 {DNABERT_CPU_SHAPE}"},
        "wall_s": {name: [round(r[0], 2) for r in measured] for name, measured in runs.items()},
        "cpu_s": {name: [round(r[1], 2) for r in measured] for name, measured in runs.items()},
        "ratios_original_over_virnucpro": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        "median_cpu_s": {name: round(statistics.median(r[1] for r in measured), 2)
                         for name, measured in runs.items()},
        "max_abs_feature_difference": difference, "target": TARGET,
        "met": statistics.median(ratios) >= TARGET,
        "cores": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__, "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"virnucpro embed vs the original's way, {args.frames} frames, whole processes: "
          f"median ratio {result['median_ratio']} (pairs {result['ratios_original_over_virnucpro']}"
          f"; target >= {TARGET}: {'met' if result['met'] else 'MISSED'})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
