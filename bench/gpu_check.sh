#!/usr/bin/env bash
# The GPU check, in one call: everything a lent GPU is needed for, results as JSON in OUTDIR.
#
#   bench/gpu_check.sh OUTDIR          on a machine with CUDA (about 6 minutes on one H100/H200)
#   bench/gpu_check.sh OUTDIR --dry    the same steps with tiny shapes on the CPU (make test
#                                      runs this, so the script works the first time it meets
#                                      a GPU)
#
# Steps, each writing OUTDIR/<step>.json (and .log), then OUTDIR/gpu_check.json, a summary:
#   cuda_tests  pytest -m cuda: side-stream staging, a real out-of-memory split, bf16 vs CPU
#               fp32, one host sync per window (also in a float16 scoring job), float16's
#               attention in fused kernels, compiled layers (tests/test_cuda.py; skipped in
#               --dry)
#   agreement   bf16 and fp16 vs fp32 on random models of the published shapes through a
#               classifier (bench/agreement.py): per-row cosine, identical calls, margin shift
#   speed       bench/embed.py --gpu --load: ESM-2 3B tokens/s and MFU, DNABERT-S frames/s,
#               both together (reads/s of 150-bp reads), the default (float16, compiled) and
#               its float32 pass against bf16, peak device memory, load time
#   ops         bench/ops.py: one ESM-2 3B layer's operators in each precision (weight casts
#               per batch, non-matmul kernels and bytes per token), on the CPU
#
# On the lent machine (python3 with a CUDA torch, no fair-esm): carry fair-esm as a wheel in
# .whl/ (pip download --no-deps fair-esm==2.0.0 -d .whl; see the device tool's README); it is
# installed into /tmp/site when `import esm` fails. Run from the repository root.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [--dry]}
dry=${2:-}
mkdir -p "$out"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "$dry" = "--dry" ] && python=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$python" -c "import esm" 2>/dev/null && ls .whl/fair_esm-*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --target /tmp/site .whl/fair_esm-*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step() {  # step NAME COMMAND...: run it, keep its log and exit status
    local name=$1; shift
    local start=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    echo "{\"step\": \"$name\", \"status\": $?, \"seconds\": $((SECONDS - start))}" \
        >"$out/$name.status.json"
    echo "$name: exit $(grep -o '"status": [0-9]*' "$out/$name.status.json" | cut -d' ' -f2)" \
         "after $((SECONDS - start)) s"
}

if [ "$dry" = "--dry" ]; then
    step cuda_tests "$python" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py \
        --junitxml "$out/cuda_tests.xml"
    step agreement "$python" bench/agreement.py --dry --out "$out/agreement.json"
    step speed "$python" bench/embed.py --gpu --dry --load --out "$out/speed.json"
    step ops "$python" bench/ops.py --dry --out "$out/ops.json"
else
    step cuda_tests "$python" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py \
        --junitxml "$out/cuda_tests.xml"
    step agreement "$python" bench/agreement.py --frames 8000 --out "$out/agreement.json"
    step speed "$python" bench/embed.py --gpu --load --frames 30000 --out "$out/speed.json"
    step ops "$python" bench/ops.py --out "$out/ops.json"
fi
"$python" - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {}
for step in ("cuda_tests", "agreement", "speed", "ops"):
    status = json.loads((out / f"{step}.status.json").read_text())
    result = out / f"{step}.json"
    summary[step] = {**status, "result": json.loads(result.read_text()) if result.exists() else None}
tests = out / "cuda_tests.xml"
if tests.exists():
    import xml.etree.ElementTree as ET
    suite = ET.parse(tests).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    summary["cuda_tests"]["result"] = {k: int(suite.get(k, 0))
                                       for k in ("tests", "failures", "errors", "skipped")}
speed, agreement = summary["speed"]["result"], summary["agreement"]["result"]
if speed and agreement:  # the default's cost: float16, plus float32 for the rescored frames
    fraction = agreement["float16_rescored"]["rescored_fraction"]
    default_s = speed["both_float16_s"] + fraction * speed["both_float32_s_estimated"]
    summary["default_precision"] = {
        "rescored_fraction": fraction,
        "identical_calls_after_rescoring": agreement["float16_rescored"]["identical_calls"],
        "throughput_vs_bfloat16": round(speed["seconds"]["both"] / default_s, 3)}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
failed = [s for s in ("cuda_tests", "agreement", "speed", "ops")
          if summary[s]["status"] not in (0, 5)]  # 5: pytest found no test
print(f"gpu_check: {'failed: ' + ', '.join(failed) if failed else 'all steps ran'} -> {out}/gpu_check.json")
sys.exit(1 if failed else 0)
EOF
