#!/usr/bin/env bash
# GPU smoke test: short H-DPO runs of a tiny Llama built offline, timed. Meant for ONE call of the
# `device` tool (or any GPU box), from the repository root:
#
#   bash deploy/gpu_smoke.sh            # results also land in $OUT (device tool) or $SMOKE_OUT
#
# What it runs (each under its own timeout, each prints wall time and its last metrics line):
#   1. full fine-tuning on one GPU            hdpo-tune run job.yaml
#   2. LoRA on one GPU                        hdpo-tune run job_lora.yaml
#   3. FSDP2 over all GPUs (or 1 process on a single-GPU box, as a check of the FSDP2 code path):
#        accelerate launch --config_file deploy/accelerate/fsdp2.yaml --num_processes N \
#          --no_python hdpo-tune run job_fsdp2.yaml
# Knobs (environment): SMOKE_STEPS (20), SMOKE_HIDDEN (256), SMOKE_LAYERS (4), SMOKE_PAIRS (256),
# SMOKE_TIMEOUT per run in seconds (150), SMOKE_OUT, PYTHON (python3). No network is needed: the
# model, tokenizer and preference pairs are generated here, and HF_HUB_OFFLINE=1 is set.
# SMOKE_DRY_RUN=1 does everything but the runs (no GPU needed): builds the model, writes and validates
# the job specs and prints the commands. tests/deploy runs it that way so the specs here cannot drift.
# Exit status: 0 when every run it started succeeded, 1 otherwise.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
PY="${PYTHON:-python3}"
STEPS="${SMOKE_STEPS:-20}"
HIDDEN="${SMOKE_HIDDEN:-256}"
LAYERS="${SMOKE_LAYERS:-4}"
PAIRS="${SMOKE_PAIRS:-256}"
RUN_TIMEOUT="${SMOKE_TIMEOUT:-150}"
DRY_RUN="${SMOKE_DRY_RUN:-0}"
RESULTS="${OUT:-${SMOKE_OUT:-/tmp/hdpo-smoke-results}}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/hdpo-smoke.XXXXXX")"
mkdir -p "${RESULTS}" "${WORK}/bin"
if [ "${DRY_RUN}" = 1 ]; then trap 'rm -rf "${WORK}"' EXIT; fi
SUMMARY="${RESULTS}/smoke_summary.txt"
: > "${SUMMARY}"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HOME="${WORK}/hf" TOKENIZERS_PARALLELISM=false
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"

say() { echo "[smoke] $*" | tee -a "${SUMMARY}"; }
now() { date +%s.%N; }

# --- 0. wheels carried along in .whl/ (see the device tool's README) ----------------------------------
if compgen -G ".whl/*.whl" > /dev/null; then
  say "installing carried wheels from .whl/ into ${WORK}/site"
  "${PY}" -m pip install -q --no-index --no-deps --no-compile --target "${WORK}/site" .whl/*.whl
  export PYTHONPATH="${WORK}/site:${PYTHONPATH}"
fi

# --- 1. the hdpo-tune command: installed, else install from this tree, else a shim --------------------
PY_BIN_DIR="$(dirname "$(command -v "${PY}")")"
export PATH="${WORK}/bin:${PY_BIN_DIR}:${PATH}"
if ! command -v hdpo-tune > /dev/null; then
  say "hdpo-tune not on PATH: pip install --no-deps --no-build-isolation ${REPO}"
  if ! "${PY}" -m pip install -q --no-deps --no-build-isolation --no-index "${REPO}" > "${WORK}/pip.log" 2>&1 \
      || ! command -v hdpo-tune > /dev/null; then
    say "pip install failed or put no script on PATH (see below); using a shim over service.cli:main"
    tail -n 5 "${WORK}/pip.log" || true
    printf '#!/usr/bin/env bash\nexec "%s" -c "import sys; from service.cli import main; sys.exit(main())" "$@"\n' \
      "$(command -v "${PY}")" > "${WORK}/bin/hdpo-tune"
    chmod +x "${WORK}/bin/hdpo-tune"
  fi
fi

# --- 2. what we run on ----------------------------------------------------------------------------------
"${PY}" - "${WORK}/ngpu" <<'EOF' | tee -a "${SUMMARY}"
import importlib.metadata as md
import sys

import torch
names = ["torch", "transformers", "accelerate", "peft", "tokenizers", "huggingface-hub", "hdpo-tune"]
vers = []
for n in names:
    try:
        vers.append(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        vers.append(f"{n} (not installed as a distribution)")
print("[smoke] versions:", ", ".join(vers))
n = torch.cuda.device_count()
print(f"[smoke] cuda available: {torch.cuda.is_available()}, devices: {n}")
for i in range(n):
    p = torch.cuda.get_device_properties(i)
    print(f"[smoke]   gpu {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
with open(sys.argv[1], "w") as f:
    f.write(str(n))
EOF
NGPU="$(cat "${WORK}/ngpu")"
if [ "${NGPU}" -lt 1 ]; then
  if [ "${DRY_RUN}" != 1 ]; then
    say "no CUDA device visible; this script needs a GPU (SMOKE_DRY_RUN=1 checks everything else)"
    exit 1
  fi
  NGPU=1
fi

# --- 3. tiny model, tokenizer and preference pairs, built offline --------------------------------------
t0="$(now)"
"${PY}" - "${WORK}" "${HIDDEN}" "${LAYERS}" "${PAIRS}" <<'EOF'
import sys
from pathlib import Path

from tests.fixtures.tiny import build_tiny_llama, write_pairs_jsonl

work, hidden, layers, pairs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
build_tiny_llama(work / "model", hidden_size=hidden, layers=layers)
write_pairs_jsonl(work / "pairs.jsonl", n=pairs)
EOF
say "built tiny Llama (hidden ${HIDDEN}, ${LAYERS} layers) and ${PAIRS} pairs in $("${PY}" -c "print(f'{$(now) - ${t0}:.1f}')") s"

# job_<name>.yaml: the same small job; LoRA on or off; its own run folder.
write_job() {  # name lora(yes|no)
  local lora_block=""
  if [ "$2" = yes ]; then lora_block=$'lora:\n  r: 8\n  alpha: 16\n  dropout: 0.0'; fi
  cat > "${WORK}/job_$1.yaml" <<EOF
model:
  name_or_path: ${WORK}/model
  dtype: float32
${lora_block}
data:
  train: ${WORK}/pairs.jsonl
  max_length: 64
hdpo:
  alpha: 0.9
  beta: 0.1
train:
  max_steps: ${STEPS}
  batch_size: 16
  micro_batch_size: 8
  learning_rate: 1.0e-4
  mixed_precision: bf16
  save_every: ${STEPS}
  log_every: 1
output:
  dir: ${WORK}/runs/$1
EOF
}
write_job full no
write_job lora yes
write_job fsdp2 no

# Fail fast, before any GPU work, if the job spec has drifted from service/spec/job.py.
"${PY}" - "${WORK}"/job_*.yaml <<'EOF'
import sys
from service.spec.job import load_spec
for path in sys.argv[1:]:
    load_spec(path)
print(f"[smoke] {len(sys.argv) - 1} job specs validate")
EOF

# --- 4. the runs ------------------------------------------------------------------------------------------
FAILED=0
run_one() {  # label name command...
  local label="$1" name="$2"; shift 2
  local log="${WORK}/${name}.log" start end rc=0
  say "run ${label}: $*"
  if [ "${DRY_RUN}" = 1 ]; then return 0; fi
  start="$(now)"
  timeout --signal=TERM --kill-after=15 "${RUN_TIMEOUT}" "$@" > "${log}" 2>&1 || rc=$?
  end="$(now)"
  local wall
  wall="$("${PY}" -c "print(f'{${end} - ${start}:.1f}')")"
  local run_dir="${WORK}/runs/${name}"
  if [ "${rc}" -eq 0 ]; then
    say "  ${label}: ok, ${STEPS} steps in ${wall} s wall (model load and data prep included)"
  else
    say "  ${label}: FAILED rc=${rc} after ${wall} s; last lines of its log:"
    tail -n 25 "${log}" | sed 's/^/    /' | tee -a "${SUMMARY}"
    FAILED=1
  fi
  if [ -f "${run_dir}/metrics.jsonl" ]; then
    say "  last metrics line: $(tail -n 1 "${run_dir}/metrics.jsonl")"
    cp "${run_dir}/metrics.jsonl" "${RESULTS}/metrics_${name}.jsonl"
  fi
  if [ -f "${run_dir}/status.json" ]; then
    say "  status.json: $(tr -d '\n' < "${run_dir}/status.json" | cut -c1-400)"
  fi
  cp "${log}" "${RESULTS}/log_${name}.txt" 2>/dev/null || true
}

export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
run_one "full fine-tuning, 1 GPU" full hdpo-tune run "${WORK}/job_full.yaml"
run_one "LoRA, 1 GPU" lora hdpo-tune run "${WORK}/job_lora.yaml"
unset CUDA_VISIBLE_DEVICES

# FSDP2 through accelerate's own launcher and the ready config; a free port avoids clashes.
PORT="$("${PY}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
if [ "${NGPU}" -gt 1 ]; then FSDP_LABEL="FSDP2, ${NGPU} GPUs"; else FSDP_LABEL="FSDP2, 1 process (code path only)"; fi
run_one "${FSDP_LABEL}" fsdp2 "${PY}" -m accelerate.commands.launch \
  --config_file "${REPO}/deploy/accelerate/fsdp2.yaml" --num_processes "${NGPU}" --main_process_port "${PORT}" \
  --no_python hdpo-tune run "${WORK}/job_fsdp2.yaml"

if [ "${DRY_RUN}" = 1 ]; then say "dry run: nothing was run";
elif [ "${FAILED}" -eq 0 ]; then say "all runs passed"; else say "some runs FAILED"; fi
say "results in ${RESULTS}; scratch in ${WORK}"
exit "${FAILED}"
