"""Crash-proof resume under fire: SIGKILL `virnucpro embed` at 20+ random points
(some timed to land inside a checkpoint write, the final assembly and publication, or the
removal of the partial directory after publication), resume each time, and check that no
frame is lost or duplicated, that every result equals an uninterrupted run's (to the last bit,
or within the rare noise between two processes, counted apart: README "Precision"), that the
work redone after each kill stays within one checkpoint interval, and that a kill during the
removal never leaves saved batches under the partial name without their fingerprint (which a
later run could take for its own).

    .venv/bin/python bench/kill_resume.py [--kills 24] [--frames 4000] [--interval 250]

Results: printed, and saved to bench/results/kill_resume.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
from virnucpro.checkpoint import frames_checkpointed  # noqa: E402
from virnucpro.features import read_features  # noqa: E402
from virnucpro.demo_models import write_demo_models  # noqa: E402
from virnucpro.layout import partial_dir, sentinel  # noqa: E402

EMBEDDED = re.compile(r"embedded frames up to (\d+) of")
MAX_MISSES = 20  # attempts at a kill point before its kills are taken at random instead


def write_shard(directory: Path, frames: int, seed: int = 0) -> tuple[Path, Path]:
    """A shard of random frames (30-60 residues) with IDs f0, f1, ... (also used by tests)."""
    rng = random.Random(seed)
    nuc, prot = directory / "s.fna", directory / "s.faa"
    with open(nuc, "w") as n, open(prot, "w") as p:
        for i in range(frames):
            k = rng.randint(30, 60)
            p.write(f">f{i}\n{''.join(rng.choices('ACDEFGHIKLMNPQRSTVWY', k=k))}\n")
            n.write(f">f{i}\n{''.join(rng.choices('ACGT', k=3 * k + 1))}\n")
    return nuc, prot


def wait_for(proc: subprocess.Popen, mode: str, out: Path, delay: float) -> bool:
    """Wait for the kill point; False if the process finished first."""
    partial = partial_dir(out)
    deadline = time.monotonic() + delay
    while proc.poll() is None:
        if mode == "random" and time.monotonic() >= deadline:
            return True
        if mode == "checkpoint-write" and partial.is_dir() and any(partial.glob(".batch_*.tmp")):
            return True
        if mode == "final-assembly" and any(out.parent.glob(f".{out.name}.*.tmp")):
            return True
        if mode == "partial-removal" and sentinel(out).exists() and (
                partial.exists() or any(out.parent.glob(f".{partial.name}.*.tmp"))):
            return True
        time.sleep(0.0005)
    return False


# Two processes embedding the same frames on a CPU rarely differ in their last bits (README
# "Precision": up to 2.2e-5 in a feature, every value of ESM-2's columns of the odd process); a
# chain whose features differ by at most this is counted as not bitwise identical, not as
# different. The same bound as the tests' PROCESS_NOISE (tests/workflow_helpers.py, where it is
# argued); not imported from there, nor there from here: this module imports torch at once,
# which the tests' helpers import only where they need it.
PROCESS_NOISE = 1e-4


def describe_difference(chain: int, table, expected) -> dict:
    """Where a chain's features differ from the clean run's: how much, in which rows and in
    which model's columns (README "Precision": rare jobs differ by ~1e-5, the calls not)."""
    differ = table.data != expected.data
    rows = differ.any(1).nonzero()[:, 0].tolist()
    columns = {name: int(differ[:, start:stop].sum())
               for name, (start, stop) in table.meta["settings"]["columns"].items()}
    return {"chain": chain, "largest": float((table.data - expected.data).abs().max()),
            "rows": len(rows), "first_row": rows[0], "last_row": rows[-1],
            "values_by_model": columns}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--interval", type=int, default=250)
    args = parser.parse_args()
    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = write_demo_models(tmp / "models")
        nuc, prot = write_shard(tmp, args.frames)

        def command(out: Path) -> list[str]:
            return [sys.executable, "-m", "virnucpro.cli", "-v", "embed", "--nucleotide", str(nuc),
                    "--protein", str(prot), "--esm-model", str(models["esm"]),
                    "--dnabert-model", str(models["dnabert"]), "--device", "cpu",
                    "--checkpoint-frames", str(args.interval), "--out", str(out)]

        clean = tmp / "clean.pt"
        start = time.monotonic()
        subprocess.run(command(clean), check=True, capture_output=True)
        clean_seconds = time.monotonic() - start
        expected = read_features(clean)

        kills, chains, out = [], 0, None
        modes = ["random", "random", "checkpoint-write", "final-assembly", "partial-removal"]
        missed = {mode: 0 for mode in modes}  # attempts that finished before the kill point
        while len(kills) < args.kills:
            if out is None or sentinel(out).exists():
                chains += 1
                out = tmp / f"run{chains}.pt"
            mode = modes[len(kills) % len(modes)]
            if missed[mode] >= MAX_MISSES:  # a window too short to hit: count it, go on
                mode = "random"
            log = tmp / f"kill{len(kills)}.log"
            with open(log, "w") as stderr:
                proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=stderr)
                landed = wait_for(proc, mode, out, rng.uniform(0.3, clean_seconds))
                if not landed:
                    missed[mode] += 1
                    continue  # finished before the kill point: try again
                before = frames_checkpointed(partial_dir(out))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            computed = max([int(m) for m in EMBEDDED.findall(log.read_text())], default=0)
            after = frames_checkpointed(partial_dir(out))
            partial = partial_dir(out)
            unowned = partial.is_dir() and any(partial.glob("batch_*.pt")) and not (
                partial / "fingerprint.json").exists()
            kills.append({"mode": mode, "saved_before_kill": before, "saved_after_kill": after,
                          "computed_at_kill": computed, "batches_without_fingerprint": unowned,
                          "redone": 0 if sentinel(out).exists() else max(0, computed - after)})

        # Finish every chain, then compare every result with the clean run.
        lost = duplicated = mismatched = 0
        differences = []
        for chain in range(1, chains + 1):
            out = tmp / f"run{chain}.pt"
            subprocess.run(command(out), check=True, capture_output=True)
            table = read_features(out)
            lost += len(set(expected.ids) - set(table.ids))
            duplicated += len(table.ids) - len(set(table.ids))
            if table.ids != expected.ids:
                mismatched += 1
            elif not torch.equal(table.data, expected.data):
                differences.append(describe_difference(chain, table, expected))
                mismatched += int(differences[-1]["largest"] > PROCESS_NOISE)

    redone = [k["redone"] for k in kills]
    result = {
        "kills": len(kills), "chains": chains, "frames": args.frames,
        "checkpoint_interval_frames": args.interval,
        "kills_by_mode": {m: sum(k["mode"] == m for k in kills) for m in modes},
        "attempts_finished_before_the_kill_point": missed,
        "kills_leaving_batches_without_fingerprint": sum(k["batches_without_fingerprint"]
                                                         for k in kills),
        "frames_lost": lost, "frames_duplicated": duplicated,
        "results_differing_from_uninterrupted": mismatched,
        "results_not_bitwise_identical": len(differences),
        "differences": differences,
        "redone_frames_per_kill": {"max": max(redone), "mean": round(sum(redone) / len(redone), 1)},
        "redone_within_one_interval": all(r <= args.interval for r in redone),
        "clean_run_seconds": round(clean_seconds, 2),
        "per_kill": kills,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "per_kill"}, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "kill_resume.json").write_text(json.dumps(result, indent=2) + "\n")
    if lost or duplicated or mismatched or result["kills_leaving_batches_without_fingerprint"]:
        sys.exit("FAILED: frames lost, duplicated or different after resume, or batches left "
                 "without their fingerprint")


if __name__ == "__main__":
    main()
