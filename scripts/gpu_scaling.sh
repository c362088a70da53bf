#!/usr/bin/env bash
# Weak scaling of llama-1b at micro-batch 8 per GPU (issue 8): `anytrain bench` on 1 GPU, then on $NPROC GPUs under
# DDP and FSDP, and the per-GPU efficiency of each against the 1-GPU run, in one device call (nvidia-h200-x4).
# Needs .whl/ (../shared/tools/device-wheels.sh and anytrain's wheel: scripts/device_setup.sh), carried. A CPU dry run: NPROC=2 EXTRA="model.dim=64 ...
# model.vocab_size=512 data.seq_len=64 trainer.compile=false trainer.device=cpu" bash scripts/gpu_scaling.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
RUNS=/tmp/scaling_runs
NPROC=${NPROC:-4}
mkdir -p "$OUT" "$RUNS"
# shellcheck source=scripts/device_setup.sh
source scripts/device_setup.sh
B=(--warmup 3 --steps 12 --data-seconds 0 --json)
bench() {  # name, launcher words..., -- overrides...
  local name=$1; shift
  local launch=()
  while [[ $1 != -- ]]; do launch+=("$1"); shift; done; shift
  echo "=== $name (t=${SECONDS}s)"
  timeout 300 "${launch[@]}" "$ANYTRAIN" bench "${EXTRA_ARGS[@]}" "$@" "${B[@]}" > "$RUNS/$name.json" 2> "$RUNS/$name.log"
  echo "exit $? ($name)"; grep -i -m3 -E "error|out of memory" "$RUNS/$name.log"
}
bench one --
bench ddp torchrun --standalone --nproc-per-node "$NPROC" --no-python -- parallel=ddp
bench fsdp torchrun --standalone --nproc-per-node "$NPROC" --no-python -- parallel=fsdp
(cd "$RUNS" && tar czf "$OUT/scaling.tgz" ./*.log ./*.json)
python3 - "$RUNS" <<'PY'
import json, sys
from pathlib import Path
res = {}
for name in ("one", "ddp", "fsdp"):
    lines = [x for x in (Path(sys.argv[1]) / f"{name}.json").read_text().splitlines() if x.startswith("{")]
    if lines:
        res[name] = json.loads(lines[-1])
print("\n| run | GPUs | tok/s per GPU | efficiency vs 1 GPU | MFU | peak GiB |")
print("|---|---|---|---|---|---|")
base = res.get("one", {}).get("tokens_per_s_per_device")
for name, r in res.items():
    eff = f"{100 * r['tokens_per_s_per_device'] / base:.1f}%" if base else "-"
    print(f"| {name} | {r['world_size']} | {r['tokens_per_s_per_device']:,.0f} | {eff} | {100 * (r['mfu'] or 0):.1f}% "
          f"| {r['peak_memory_gib'] or 0:.1f} |")
PY
