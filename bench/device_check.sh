#!/usr/bin/env bash
# Everything that needs a GPU, in ONE call of the `device` tool (15 minutes of device time per issue, at most
# 10 minutes per command), from the repository root:
#
#   bash bench/device_check.sh            # results land in $OUT (device tool) or $CHECK_OUT
#
# 1. pytest -m gpu tests/gpu                      the fast paths on CUDA (equivalence, memory bound, fused AdamW)
# 2. bash deploy/gpu_smoke.sh                     full / LoRA / FSDP2 runs of a tiny model (docs/deploy.md)
# 3. python bench/run.py --gpu --reps 2          hdpo vs TRL, Qwen2.5-0.5B shape, bf16 (docs/benchmarks.md)
# 4. python bench/run.py --gpu --max-batch       largest batch each engine fits (only with CHECK_T4 > 0 seconds)
# Each step has its own time limit (CHECK_T1/T2/T3 seconds: 120/200/240) so one stuck step cannot eat the
# others' time; the exit status is the number of failed steps. Wheels carried in .whl/ are installed first
# (the device image may hold older transformers/huggingface_hub; see the device tool's README).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
PY="${PYTHON:-python3}"
RESULTS="${OUT:-${CHECK_OUT:-/tmp/hdpo-device-check}}"
mkdir -p "${RESULTS}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE="$(mktemp -d)"
  "${PY}" -m pip install -q --no-index --no-deps --no-compile --target "${SITE}" .whl/*.whl
  export PYTHONPATH="${SITE}:${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
else
  export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
fi
failed=0
step() {  # step NAME SECONDS CMD...: run with a limit, log to $RESULTS/NAME.log, print its tail
  local name="$1" limit="$2"
  shift 2
  local t0 rc=0
  t0="$(date +%s)"
  timeout --signal=TERM --kill-after=15 "${limit}" "$@" > "${RESULTS}/${name}.log" 2>&1 || rc=$?
  echo "== ${name}: exit ${rc} after $(( $(date +%s) - t0 )) s (limit ${limit} s)"
  tail -n 25 "${RESULTS}/${name}.log"
  if [ "${rc}" != 0 ]; then failed=$((failed + 1)); fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
step gpu_tests "${CHECK_T1:-120}" "${PY}" -m pytest -q -p no:cacheprovider -m gpu tests/gpu
step gpu_smoke "${CHECK_T2:-200}" env SMOKE_OUT="${RESULTS}/smoke" OUT= bash deploy/gpu_smoke.sh
step bench_gpu "${CHECK_T3:-240}" "${PY}" bench/run.py --gpu --reps 2 --out "${RESULTS}/bench"
if [ "${CHECK_T4:-0}" -gt 0 ]; then
  step max_batch "${CHECK_T4}" "${PY}" bench/run.py --gpu --max-batch --mode full --out "${RESULTS}/bench"
fi
exit "${failed}"
