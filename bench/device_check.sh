#!/usr/bin/env bash
# Everything that needs the GPU, in ONE call of the device tool (about 9 minutes plus the machine's start),
# from the repository root, with the wheels of .whl/ carried along:
#
#   bash bench/device_check.sh              # results in $OUT (device tool) or $CHECK_OUT
#   bash bench/device_check.sh --dry-run    # on a CPU: every part imports and starts, nothing is measured
#   PARTS="3 5" bash bench/device_check.sh  # only some parts (a second, shorter call)
#
# Parts, most important first, each under its own time limit (seconds; CHECK_T<n> overrides):
#   1  tests/gpu (CUDA paths, host syncs per step, fp16 overflow)             CHECK_T1=50
#   2  hdpo vs TRL, Qwen2.5-0.5B shape, bf16, 8 pairs, ~1100 tokens per pair, full FT and LoRA,
#      live reference (2a, with a profile of each first timed step) and precomputed (2b)   CHECK_T2A=110 CHECK_T2B=80
#   3  FSDP2 (+ ZeRO-3 if deepspeed imports) on one process: run, SIGTERM, resume, same losses, merge, export
#                                                                               CHECK_T3=110
#   4  memory knobs, hdpo full FT: gradient checkpointing, activation offloading, no output-layer chunking
#                                                                               CHECK_T4=55
#   5  largest batch (one step, doubling until out of memory) per engine, full FT   CHECK_T5=40
#   6  QLoRA (bitsandbytes 4-bit nf4 base): tests/gpu/test_qlora_cuda.py, hdpo vs TRL with the same bnb config,
#      hdpo QLoRA vs hdpo LoRA memory (bench/qlora_mem.py) and the largest model that fits by estimate
#                                                                               CHECK_T6=120
# What comes back (the device tool returns at most 8 files): summary.md (each part's verdict and tables, written
# as it finishes), results.json (every part's numbers), logs.txt (every part's output), profile.txt (the
# torch.profiler tables). Exit status: the number of failed parts.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
PY="${PYTHON:-python3}"
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
RESULTS="${OUT:-${CHECK_OUT:-/tmp/hdpo-device-check}}"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/hdpo-check.XXXXXX")"
mkdir -p "${RESULTS}"
SUMMARY="${RESULTS}/summary.md" LOGS="${RESULTS}/logs.txt" PROFILE="${RESULTS}/profile.txt" JSON="${RESULTS}/results.json"
: > "${SUMMARY}"; : > "${LOGS}"; : > "${PROFILE}"; echo '{}' > "${JSON}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HOME="${SCRATCH}/hf" HDPO_CACHE="${SCRATCH}/cache" TRANSFORMERS_VERBOSITY=error

# 0. the carried wheels, never resolved: --no-deps --no-index, onto PYTHONPATH (the image's packages stay)
if compgen -G ".whl/*.whl" > /dev/null; then
  "${PY}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${SCRATCH}/site" \
    .whl/*.whl >> "${LOGS}" 2>&1 || echo "wheel install FAILED (see logs.txt)" >> "${SUMMARY}"
  export PYTHONPATH="${SCRATCH}/site:${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
else
  export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
fi
{
  echo "# device check $(date -u +%FT%TZ)$( [ "${DRY}" = 1 ] && echo ' (dry run)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "${PY}" - <<'PYEOF'
import importlib, importlib.metadata as md
names = ["torch", "transformers", "accelerate", "peft", "huggingface-hub", "tokenizers", "trl", "datasets",
         "pydantic", "deepspeed", "pyarrow", "fsspec", "typing-extensions", "onnx", "onnxruntime", "onnxscript",
         "bitsandbytes"]
out = []
for n in names:
    try:
        out.append(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        out.append(f"{n} absent")
print("versions: " + ", ".join(out))
bad = []
for mod in ["hdpo_core.trainer", "hdpo_core.forward", "service.cli", "service.stages.train", "service.stages.pipeline",
            "trl", "datasets", "pydantic"]:
    try:
        importlib.import_module(mod)
    except Exception as exc:  # noqa: BLE001
        bad.append(f"{mod}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
print("imports: " + ("all ok" if not bad else "FAILED " + " | ".join(bad)))
PYEOF
} >> "${SUMMARY}" 2>> "${LOGS}"
cat "${SUMMARY}"

failed=0
want() { [ -z "${PARTS:-}" ] || [[ " ${PARTS} " == *" $1 "* ]]; }
part() {  # part ID TITLE SECONDS CMD...: run under its own limit; log to logs.txt; verdict (+ tail) to summary.md
  local id="$1" title="$2" limit="$3"
  shift 3
  want "${id%[ab]}" || return 0
  local t0 rc=0 log="${SCRATCH}/part${id}.log"
  t0="$(date +%s)"
  timeout --signal=TERM --kill-after=10 "${limit}" "$@" > "${log}" 2>&1 || rc=$?
  local took=$(( $(date +%s) - t0 ))
  { echo; echo "===== part ${id}: ${title} (exit ${rc}, ${took} s, limit ${limit} s)"; echo "\$ $*"; cat "${log}"; } >> "${LOGS}"
  { echo; echo "## part ${id}: ${title}: $( [ "${rc}" = 0 ] && echo ok || echo "FAILED (exit ${rc}$( [ "${rc}" = 124 ] && echo ', time limit'))") in ${took} s"
    grep -E '^\||^measured|^params|passed|failed|error' "${log}" | tail -n 40; } >> "${SUMMARY}"
  echo "part ${id}: exit ${rc} after ${took} s"
  if [ "${rc}" != 0 ]; then failed=$((failed + 1)); fi
  "${PY}" - "${JSON}" "${id}" "${rc}" "${took}" "${SCRATCH}/res${id}" <<'PYEOF' 2>> "${LOGS}"
import json, sys
from pathlib import Path
path, pid, rc, took, res = sys.argv[1:]
data = json.loads(Path(path).read_text())
entry = {"exit": int(rc), "seconds": int(took), "results": []}
for f in sorted(Path(res).glob("*.json")) if Path(res).exists() else []:
    data_f = json.loads(f.read_text())
    entry["results"].append({"file": f.name, **(data_f if isinstance(data_f, dict) else {"data": data_f})})
data[f"part{pid}"] = entry
Path(path).write_text(json.dumps(data, indent=1))
PYEOF
  for f in "${SCRATCH}"/res"${id}"/profile*.txt; do
    [ -f "${f}" ] && { echo "===== part ${id}: $(basename "${f}")"; cat "${f}"; } >> "${PROFILE}"
  done
  return 0
}

MODEL="${SCRATCH}/qwen-shape"  # the random-weight Qwen2.5-0.5B folder, built once, reused by parts 2, 4, 5
BENCH=("${PY}" bench/run.py --gpu --batch 8 --reps 1 --warmup 1 --steps 4 --model-dir "${MODEL}")
if [ "${DRY}" = 1 ]; then
  part 1 "tests/gpu collect" 400 "${PY}" -m pytest -q -p no:cacheprovider --collect-only -m gpu tests/gpu
  part 2a "bench plan + both children import" 400 bash -c "${PY} bench/run.py --gpu --dry-run && ${PY} bench/child.py --check"
  part 3 "FSDP2 / ZeRO-3 jobs and commands" 400 "${PY}" bench/dist_check.py --dry-run --out "${SCRATCH}/res3"
  part 4 "memory knobs plan" 200 "${PY}" bench/run.py --gpu --dry-run --engines hdpo --mode full --grad-ckpt --chunk-size 1000000
  part 5 "max batch plan" 200 "${PY}" bench/run.py --gpu --dry-run --max-batch --mode full
  part 6 "QLoRA plan" 200 bash -c "${PY} bench/run.py --gpu --qlora --mode lora --dry-run &&
    ${PY} bench/qlora_mem.py --gpu --dry-run"
else
  part 1 "tests/gpu" "${CHECK_T1:-50}" "${PY}" -m pytest -q -p no:cacheprovider -m gpu tests/gpu
  part 2a "hdpo vs TRL, live reference" "${CHECK_T2A:-110}" \
    "${BENCH[@]}" --mode both --out "${SCRATCH}/res2a" --profile "${SCRATCH}/res2a/profile.txt"
  part 2b "hdpo vs TRL, precomputed reference" "${CHECK_T2B:-80}" \
    "${BENCH[@]}" --mode both --precompute --out "${SCRATCH}/res2b"
  part 3 "FSDP2 / ZeRO-3 on one process" "${CHECK_T3:-110}" "${PY}" bench/dist_check.py --out "${SCRATCH}/res3" --timeout 35
  part 4 "memory knobs (hdpo full FT)" "${CHECK_T4:-55}" bash -c "
    ${BENCH[*]} --engines hdpo --mode full --grad-ckpt --out ${SCRATCH}/res4 &&
    ${BENCH[*]} --engines hdpo --mode full --hdpo-opt activation_offloading=true --out ${SCRATCH}/res4 &&
    ${BENCH[*]} --engines hdpo --mode full --chunk-size 1000000 --out ${SCRATCH}/res4"
  part 5 "largest batch, full FT" "${CHECK_T5:-40}" \
    "${BENCH[@]}" --mode full --max-batch --max-batch-cap 256 --max-batch-seconds "$(( ${CHECK_T5:-40} - 15 ))" \
    --out "${SCRATCH}/res5"
  part 6 "QLoRA: CUDA tests, hdpo vs TRL (same bnb 4-bit config), QLoRA vs LoRA memory" "${CHECK_T6:-120}" bash -c "
    ${PY} -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_qlora_cuda.py &&
    ${BENCH[*]} --mode lora --qlora --out ${SCRATCH}/res6 &&
    ${PY} bench/qlora_mem.py --gpu --out ${SCRATCH}/res6"
fi
echo; echo "failed parts: ${failed}" | tee -a "${SUMMARY}"
exit "${failed}"
