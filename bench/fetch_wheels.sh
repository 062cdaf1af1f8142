#!/usr/bin/env bash
# Fill .whl/ (gitignored) with the packages the GPU image lacks, for bench/device_check.sh to install there
# with --no-deps (nothing can be fetched on the device). Run here, from the repository root, with network to
# PyPI; PYTHON must have torch installed (DeepSpeed's build imports it).
#   bash bench/fetch_wheels.sh      # ~50 MiB (bitsandbytes, with its CUDA kernels, is 43 MiB: QLoRA)
# DeepSpeed ships only an sdist: it is built here into a pure-Python wheel with no op prebuilt (DS_BUILD_OPS=0);
# ZeRO-3 with torch's AdamW needs none of its ops.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
mkdir -p .whl
"${PY}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hjson==3.1.0 bitsandbytes==0.50.2
DS_BUILD_OPS=0 "${PY}" -m pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -la .whl
