#!/usr/bin/env bash
# The throughput issue's side-by-side, in one device call: the reference trainer (torchtitan v0.2.2 kit in .ref/)
# and `anytrain bench` on the same shapes, then a ratio table; a profiled llama-1b step last (kernel shares).
# Carry .whl (device-wheels.sh with the reference's wheels, plus anytrain's wheel) and .ref (../shared/anchors).
#   STAGES="b8 2b 2b_ac" (default) or any of b8 b16 b32 2b 2b_ac
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
RUNS=/tmp/tp_runs
mkdir -p "$OUT" "$RUNS"
# shellcheck source=scripts/device_setup.sh
source scripts/device_setup.sh
read -ra STAGES <<< "${STAGES:-b8 2b 2b_ac}"
declare -A REF=([b8]=tt_b8 [b16]=tt_b16 [b32]=tt_b32 [2b]=tt_2b [2b_ac]=tt_2b_ac)
declare -A OURS=([b8]="" [b16]="trainer.micro_batch=16" [b32]="trainer.micro_batch=32"
  [2b]="model=2b data.seq_len=8192 trainer.micro_batch=2"
  [2b_ac]="model=2b data.seq_len=8192 trainer.micro_batch=2 parallel.activation_checkpoint=full")
refs=(ceil); for s in "${STAGES[@]}"; do refs+=("${REF[$s]}"); done
echo "=== reference ${refs[*]} (t=${SECONDS}s)"
REFLOGS=$RUNS bash .ref/reference.sh "${refs[@]}" 2>&1 | grep -E "^(REF|==|  )" | tee "$RUNS/ref.txt"
for s in "${STAGES[@]}"; do
  echo "=== anytrain $s (t=${SECONDS}s)"
  read -ra args <<< "${OURS[$s]}"
  timeout 200 "$ANYTRAIN" bench "${args[@]}" --warmup 3 --steps 12 --data-seconds 0 --json > "$RUNS/$s.json" 2> "$RUNS/$s.log"
  echo "exit $?"; grep -i -m3 -E "error|out of memory" "$RUNS/$s.log"
done
python3 - "$RUNS" "${STAGES[@]}" <<'PY' | tee "$OUT/table.md"
import json, sys
from pathlib import Path
runs, stages = Path(sys.argv[1]), sys.argv[2:]
ref = {}
for line in (runs / "ref.txt").read_text().splitlines():
    if line.startswith("REF "):
        r = json.loads(line[4:]); ref[r.get("stage")] = r
names = {"b8": "tt_b8", "b16": "tt_b16", "b32": "tt_b32", "2b": "tt_2b", "2b_ac": "tt_2b_ac"}
print("| shape | reference tok/s (GiB) | anytrain tok/s (GiB) | ratio |\n|---|---|---|---|")
for s in stages:
    try:
        o = json.loads((runs / f"{s}.json").read_text().strip().splitlines()[-1])
    except Exception:
        o = None
    r = ref.get(names[s], {})
    rt, ot = r.get("tokens_per_s"), o and o["tokens_per_s"]
    ratio = f"{ot / rt:.3f}" if rt and ot else "-"
    print(f"| {s} | {rt and f'{rt:,.0f}'} ({r.get('peak_reserved_gib')}) | {ot and f'{ot:,.0f}'} "
          f"({o and round(o['peak_memory_gib'], 1)}) | {ratio} |")
print("ceil:", ref.get("ceil"))
PY
echo "=== profile b8 (t=${SECONDS}s)"
timeout 120 "$ANYTRAIN" bench --warmup 3 --steps 4 --data-seconds 0 --profile 3 > "$OUT/b8_profile.txt" 2>&1
sed -n '/^| kind/,$p' "$OUT/b8_profile.txt"
cp "$RUNS"/*.json "$RUNS"/ref.txt "$OUT/" 2>/dev/null
echo "=== done (t=${SECONDS}s)"
