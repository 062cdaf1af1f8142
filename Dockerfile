# syntax=docker/dockerfile:1
# hdpo-tune container: `docker run --gpus all --ipc=host -e HF_TOKEN -v hf-cache:/cache/huggingface \
#   -v "$PWD:/work" hdpo-tune /work/job.yaml` (the CLI turns a bare YAML path into `run <path>`).
#
# Build with deploy/docker/build.sh (docker or podman; `make image`), which passes the host's pip configuration
# (index URLs, find-links, CA bundle) in as the secret `pipconf` and picks the variant (see docs/deploy.md):
#   CUDA (default): torch==TORCH_VERSION from the configured index (PyPI's Linux wheel is the CUDA build and
#                   brings its CUDA libraries as nvidia-* wheels, so no CUDA base image is needed)
#   CPU:            --build-arg TORCH_VARIANT=cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
# BASE_IMAGE and PYTHON go together: the venv links to the base's /usr/bin/${PYTHON} in both stages
# (ubuntu:24.04 + python3.12, or a Debian 12 base + python3.11). Pin the base by digest for production.

ARG BASE_IMAGE=ubuntu:24.04

# ---------------------------------------------------------------------------------------------- builder
FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Each ARG is declared just before its first use: a RUN sees every ARG declared above it, so a variant's
# arguments placed earlier would make the CPU and CUDA builds share no layer.
ARG PYTHON=python3.12

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends "${PYTHON}" "${PYTHON}-venv" \
    && rm -rf /var/lib/apt/lists/*

RUN "${PYTHON}" -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

ARG TORCH_VERSION=2.13.0
# cuda: any build of TORCH_VERSION but the +cpu one; cpu: TORCH_VERSION+cpu. The step fails if the other came.
ARG TORCH_VARIANT=cuda
# Empty: torch comes from the configured package index like everything else; a URL replaces the index for torch.
ARG TORCH_INDEX=""
# pip reads the build host's configuration from the secret `pipconf` (mounted as /etc/pip.conf for these steps
# only, so index credentials never land in a layer); without it pip uses PyPI.
# torch first, from the index that matches the variant (its CUDA libraries come as nvidia-* wheels).
# DL3013: torch is pinned (hadolint reads the optional `${TORCH_INDEX:+...}` words as unpinned packages).
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    if [ "${TORCH_VARIANT}" = cpu ]; then spec="torch==${TORCH_VERSION}+cpu"; \
    else spec="torch==${TORCH_VERSION},!=${TORCH_VERSION}+cpu"; fi \
    && pip install --no-cache-dir ${TORCH_INDEX:+--index-url "${TORCH_INDEX}"} "${spec}" \
    && python -c "import sys, torch; cuda = torch.version.cuda; print('torch', torch.__version__, 'CUDA', cuda); \
sys.exit(f'wanted the ${TORCH_VARIANT} build of torch' if (cuda is None) != ('${TORCH_VARIANT}' == 'cpu') else 0)"

# Then the pinned closure of the runtime dependencies (its own layer: a source change does not reinstall it),
# then the package itself (no dependency changes; built with the pinned setuptools already in the venv).
COPY deploy/docker/constraints.txt /tmp/constraints.txt
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    grep -v '^torch==' /tmp/constraints.txt > /tmp/pins.txt \
    && pip install --no-cache-dir -r /tmp/pins.txt
COPY pyproject.toml /src/
COPY hdpo_core /src/hdpo_core
COPY service /src/service
# Optional extras of this package, e.g. --build-arg EXTRAS=ray for the Ray pods of deploy/k8s/raycluster.yaml:
# they come at pyproject's pins, with everything installed above held to /tmp/pins.txt (a clash fails the build).
ARG EXTRAS=""
# Optional extra wheels, e.g. --build-arg EXTRA_PIP="deepspeed==0.18.6" for deploy/accelerate/zero3.yaml.
ARG EXTRA_PIP=""
# DL3013: every dependency is pinned by /tmp/pins.txt or pyproject; /src is this package (with --no-deps unless
# EXTRAS asks for more) and EXTRA_PIP is the caller's own pinned spec.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    if [ -n "${EXTRAS}" ]; then \
        pip install --no-cache-dir --no-build-isolation --constraint /tmp/pins.txt "/src[${EXTRAS}]"; \
    else pip install --no-cache-dir --no-deps --no-build-isolation /src; fi \
    && if [ -n "${EXTRA_PIP}" ]; then pip install --no-cache-dir ${EXTRA_PIP}; fi \
    && pip check

# ------------------------------------------------------------------------------------------------ final
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG PYTHON=python3.12

LABEL org.opencontainers.image.title="hdpo-tune" \
      org.opencontainers.image.description="H-DPO (entropy-controllable DPO) fine-tuning service" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive
# bubblewrap: the sandbox of the `code` verifier (inside a container it needs
# `--security-opt systempaths=unconfined`, see docs/deploy.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends "${PYTHON}" ca-certificates bubblewrap \
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
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Declared after the chown so a fresh named volume starts out owned by uid 1000.
VOLUME ["/cache/huggingface"]
WORKDIR /work
USER 1000:1000

ENTRYPOINT ["hdpo-tune"]
CMD ["--help"]
