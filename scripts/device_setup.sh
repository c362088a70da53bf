# shellcheck shell=bash
# Sourced by the device-call scripts (gpu_bench.sh, gpu_checks.sh, gpu_scaling.sh): install anytrain's wheel and the
# carried wheels the GPU machine lacks into /tmp/site, and set the environment every benchmark process shares. Build
# anytrain's wheel into .whl/ first, next to the others: `pip wheel --no-deps --no-build-isolation -w .whl .`.
# With EXTRA set (a CPU dry run) nothing is installed and the commands on PATH (this checkout's venv) are used.
# EXTRA: overrides put before every variant's own, e.g. EXTRA="model.dim=64 ... trainer.device=cpu".
# TRAIN, ANYTRAIN: the installed commands (the safe launch form: no checkout module can shadow the wheel's).
# shellcheck disable=SC2034  # EXTRA_ARGS, TRAIN and ANYTRAIN are used by the sourcing script
read -ra EXTRA_ARGS <<< "${EXTRA:-}"
if [[ -z ${EXTRA:-} ]]; then
  compgen -G ".whl/anytrain-*.whl" > /dev/null \
    || { echo "no .whl/anytrain-*.whl: run pip wheel --no-deps --no-build-isolation -w .whl . first" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  TRAIN=/tmp/site/bin/train ANYTRAIN=/tmp/site/bin/anytrain
  export PYTHONPATH=/tmp/site:$PWD/.gpu/site
else
  TRAIN=$(command -v train) ANYTRAIN=$(command -v anytrain)
fi
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=true PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
