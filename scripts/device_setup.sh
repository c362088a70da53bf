# shellcheck shell=bash
# Sourced by the device-call scripts (gpu_bench.sh, gpu_scaling.sh): install the carried wheels the GPU machine
# lacks, and set the environment every benchmark process shares. With EXTRA set (a CPU dry run) nothing is installed.
# EXTRA: overrides put before every variant's own, e.g. EXTRA="model.dim=64 ... trainer.device=cpu".
# shellcheck disable=SC2034  # EXTRA_ARGS is used by the sourcing script
read -ra EXTRA_ARGS <<< "${EXTRA:-}"
if [[ -z ${EXTRA:-} ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
export PYTHONPATH=$PWD:/tmp/site:$PWD/.gpu/site PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=true PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
