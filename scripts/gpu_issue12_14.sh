#!/usr/bin/env bash
# One device call for two figures: `anytrain tokenize` on 1..16 workers (scripts/bench_data.py --only-tokenize) and the
# 1b checkpoint's save / verify / load times (scripts/bench_checkpoint.py). Carry .whl and .gpu (see gpu_data.sh).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
# shellcheck source=scripts/device_setup.sh
source scripts/device_setup.sh
export ANYTRAIN
lscpu | grep -E "Model name|Socket|Core|Thread|^CPU\(s\)" | tee "$OUT/lscpu.txt"
echo "=== checkpoint bench (t=${SECONDS}s)"
python3 scripts/bench_checkpoint.py --model 1b --out /tmp/bench-ckpt 2>&1 | tail -2 | tee "$OUT/bench_checkpoint.txt"
echo "=== tokenize bench (t=${SECONDS}s)"
python3 scripts/bench_data.py --out /tmp/bd --copies "${COPIES:-32}" --workers "${WORKERS:-1,2,4,8,16}" --only-tokenize 2>&1 \
  | grep --line-buffered -v "^tokenize:" | tee "$OUT/bench_tok.txt"
cp /tmp/bd/bench_data.json "$OUT/" 2>/dev/null
echo "=== done (t=${SECONDS}s)"
