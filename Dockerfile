# syntax=docker/dockerfile:1
# hdpo-tune container: `docker run --gpus all --ipc=host -e HF_TOKEN -v hf-cache:/cache/huggingface \
#   -v "$PWD:/work" hdpo-tune /work/job.yaml` (the CLI turns a bare YAML path into `run <path>`).
#
# Variants (see docs/deploy.md):
#   CUDA (default): docker build -t hdpo-tune .
#   CPU:            docker build -t hdpo-tune:cpu --build-arg BASE_IMAGE=ubuntu:24.04 \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
# Both bases are Ubuntu 24.04, so the venv's /usr/bin/python3.12 exists in the builder and the final stage.
# For reproducible production builds pin the base by digest too: BASE_IMAGE=nvidia/cuda:...@sha256:...

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------- builder
FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
# Optional extra wheels, e.g. --build-arg EXTRA_PIP="deepspeed==0.18.6" for deploy/accelerate/zero3.yaml.
ARG EXTRA_PIP=""

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*

RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the index that matches the variant (its CUDA libraries come as nvidia-* wheels).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

# Then the pinned closure of the runtime dependencies, then the package itself (no dependency changes).
COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY pyproject.toml /src/
COPY hdpo_core /src/hdpo_core
COPY service /src/service
# DL3013: every version is pinned by /tmp/pins.txt; /src is this package (installed with --no-deps) and
# EXTRA_PIP is the caller's own pinned spec.
# hadolint ignore=DL3013
RUN grep -v '^torch==' /tmp/constraints.txt > /tmp/pins.txt \
    && pip install --no-cache-dir -r /tmp/pins.txt \
    && pip install --no-cache-dir --no-deps /src \
    && if [ -n "${EXTRA_PIP}" ]; then pip install --no-cache-dir ${EXTRA_PIP}; fi \
    && pip check

# ------------------------------------------------------------------------------------------------ final
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

LABEL org.opencontainers.image.title="hdpo-tune" \
      org.opencontainers.image.description="H-DPO (entropy-controllable DPO) fine-tuning service" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04 images ship a user `ubuntu` with uid 1000; replace it with ours so uid 1000 owns the
# mounted run folder and cache (the same uid as the default first user on most hosts).
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --user-group --shell /bin/bash hdpo \
    && mkdir -p /cache/huggingface /work \
    && chown -R 1000:1000 /cache /work

COPY --from=builder /opt/venv /opt/venv
# The ready accelerate configs, for `accelerate launch --config_file /opt/hdpo/accelerate/<name>.yaml`
# (Kubernetes TrainJob, multi-GPU docker run).
COPY deploy/accelerate /opt/hdpo/accelerate

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/hdpo \
    HF_HOME=/cache/huggingface \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Declared after the chown so a fresh named volume starts out owned by uid 1000.
VOLUME ["/cache/huggingface"]
WORKDIR /work
USER 1000:1000

ENTRYPOINT ["hdpo-tune"]
CMD ["--help"]
