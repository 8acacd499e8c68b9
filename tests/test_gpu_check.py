"""The GPU check script, in its CPU dry mode: every step runs and writes its JSON, so the
script works the first time it meets a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_writes_every_result(tmp_path):
    proc = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path), "--dry"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [summary[s]["status"] for s in ("cuda_tests", "agreement", "speed", "ops")] == \
        [0, 0, 0, 0]
    tests = summary["cuda_tests"]["result"]
    assert tests["tests"] >= 5 and tests["failures"] == tests["errors"] == 0
    agreement = summary["agreement"]["result"]
    assert agreement["dry"] and agreement["frames"] == 300
    for precision in ("bfloat16", "float16"):
        assert 0.9 < agreement[precision]["identical_calls"] <= 1
        assert agreement[precision]["cosine"]["min"] > 0.9
        assert 0.05 < agreement[precision]["virus_fraction_fp32"] < 0.95  # calls both ways
    speed = summary["speed"]["result"]
    assert speed["mode"] == "gpu-dry" and speed["esm_tokens_per_s"] > 0
    assert speed["reads_per_s_150bp"] > 0 and speed["esm_load_s"] >= 0
    assert speed["default_precision"] == "float16" and speed["float16_vs_bfloat16"] > 0
    ops = summary["ops"]["result"]
    assert ops["default_precision"] == "float16"
    assert ops["precisions"]["float16"]["weight_casts_per_batch"] == 0
    assert ops["precisions"]["mixed (before)"]["weight_casts_per_batch"] > 0
    default = summary["default_precision"]
    assert default["identical_calls_after_rescoring"] == 1.0
    assert 0 <= default["rescored_fraction"] <= 1 and default["throughput_vs_bfloat16"] > 0
