#!/usr/bin/env bash
# The one GPU command, on the lent machine (docs/performance.md, "GPU"): install what it lacks from
# .whl/ (bench/gpu_wheels.sh, run beforehand where PyPI is reachable), then the headline rows of
# bench/gpu.py, under 8 minutes with model building. Results go to $OUT (or bench/.cache/).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-bench/.cache}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
# 460 s for the rows: model building (~1 min), a, b, c, cc (its compile ~2 min) and lightning, 3 runs each.
# The rows written so far come back even when the run stops early (a timeout exits 124).
status=0
timeout 460 python3 bench/gpu.py --headline --cache /tmp/bench-cache --results "$out/RESULTS.md" 2>&1 \
    | tee "$out/gpu.log" || status=$?
cp /tmp/bench-cache/results-gpu.json "$out/" 2>/dev/null || true
exit "$status"
