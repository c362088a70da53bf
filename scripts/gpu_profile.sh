#!/usr/bin/env bash
# Where the llama-1b step spends its device time, and which kernel choices pay (the throughput issue), in one device
# call: scripts/bench_kernels.py (chunked-loss head gradient, SDPA backends, AdamW clipping), then a profiled
# `anytrain bench` at llama-1b micro-batch 8 with the kernel shares; optionally the tokenize sweep of the data issue
# (TOKENIZE=1). Carry .whl (device-wheels.sh + anytrain's wheel) and .gpu (see gpu_data.sh).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
# shellcheck source=scripts/device_setup.sh
source scripts/device_setup.sh
export ANYTRAIN
echo "=== kernels (t=${SECONDS}s)"
timeout 240 python3 scripts/bench_kernels.py ${KERNELS:-loss attention adamw} 2>&1 | grep -v -i warn | tee "$OUT/kernels.txt"
echo "=== profiled bench b8 (t=${SECONDS}s)"
timeout 200 "$ANYTRAIN" bench --warmup 3 --steps 8 --data-seconds 0 --profile 3 ${BENCH_ARGS:-} > "$OUT/b8_profile.txt" 2>&1
echo "exit $?"; grep -E "tokens/s|MFU|peak|^\|" "$OUT/b8_profile.txt" | head -40
if [[ -n ${TOKENIZE:-} ]]; then
  echo "=== tokenize bench (t=${SECONDS}s)"
  lscpu | grep -E "Model name|Socket|Core|Thread|^CPU\(s\)" | tee "$OUT/lscpu.txt"
  timeout 200 python3 scripts/bench_data.py --out /tmp/bd --copies "${COPIES:-8}" --workers "${WORKERS:-1,2,4,8,16}" \
    --only-tokenize 2>&1 | grep --line-buffered -v "^tokenize:" | tee "$OUT/bench_tok.txt"
  cp /tmp/bd/bench_data.json "$OUT/" 2>/dev/null
fi
echo "=== done (t=${SECONDS}s)"
