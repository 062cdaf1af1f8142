#!/usr/bin/env bash
# `make test-container`: prepares podman (Debian packages, config, local Debian 12 base image), builds the CPU
# image from the repo's Dockerfile and runs tests/container against it. Where this machine cannot run
# containers it prints one line and exits 0, unless HDPO_REQUIRE_CONTAINER=1 (.ci/run sets it: CI can).
# Arguments go to pytest (e.g. `-k stop` for one check).
set -euo pipefail
cd "$(dirname "$0")/../.."

PY="${PY:-.venv/bin/python}"
TAG="${HDPO_IMAGE:-localhost/hdpo-tune:ci-cpu}"
BASE="${BASE_TAG:-localhost/hdpo-base:debian12}"
t0="$(date +%s)"

rc=0
BASE_TAG="$BASE" bash deploy/docker/podman_host.sh || rc=$?
if [ "$rc" -eq 3 ]; then
    if [ "${HDPO_REQUIRE_CONTAINER:-0}" = 1 ]; then
        echo "test-container: HDPO_REQUIRE_CONTAINER=1 but this machine cannot run containers (see above)" >&2
        exit 1
    fi
    exit 0
fi
[ "$rc" -eq 0 ] || exit "$rc"
t1="$(date +%s)"

bash deploy/docker/build.sh --engine podman --variant cpu --base "$BASE" --python python3.11 --tag "$TAG"
t2="$(date +%s)"

HDPO_IMAGE="$TAG" HDPO_ENGINE=podman "$PY" -m pytest -p no:cacheprovider tests/container -v -rs --durations=0 "$@"
t3="$(date +%s)"
echo "test-container: podman + base image $((t1 - t0))s, image build $((t2 - t1))s, container tests $((t3 - t2))s," \
     "total $((t3 - t0))s" >&2
