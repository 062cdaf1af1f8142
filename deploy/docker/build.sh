#!/usr/bin/env bash
# Builds the hdpo-tune image from the repo's Dockerfile with docker or podman (`make image`).
#
#   deploy/docker/build.sh [--variant cuda|cpu] [--engine podman|docker] [--base IMAGE] [--python python3.X]
#                          [--tag NAME:TAG] [--torch-index URL|none|auto] [--extra-pip "pkg==1.0"]
#                          [--extras ray]
#
# The host's pip configuration (what `pip config list` shows: index URLs, find-links, CA bundle, constraints,
# timeouts, from pip.conf files and PIP_* variables) is passed into the build, so pip inside it uses the same
# mirror or proxy as pip on the host. It goes in as the build secret `pipconf` (never stored in a layer);
# local files and folders it names are mounted read-only into the build's RUN steps (podman only: docker
# cannot mount host folders into a build, so with docker they are left out, and a line says which).
# --extras: this package's optional extras (pyproject), e.g. `ray` for the Ray pods of deploy/k8s/raycluster.yaml;
# the default tag then ends in -<extras>.
# Environment: ENGINE, VARIANT, BASE_IMAGE, PYTHON, TAG, TORCH_INDEX, EXTRA_PIP, EXTRAS, HOST_PIP (default
# "python3 -m pip").
set -euo pipefail
cd "$(dirname "$0")/../.."

die() { echo "build.sh: $*" >&2; exit 2; }

VARIANT="${VARIANT:-cuda}"
ENGINE="${ENGINE:-}"
BASE_IMAGE="${BASE_IMAGE:-}"
PYTHON="${PYTHON:-}"
TAG="${TAG:-}"
TORCH_INDEX="${TORCH_INDEX-auto}"
EXTRA_PIP="${EXTRA_PIP:-}"
EXTRAS="${EXTRAS:-}"
HOST_PIP="${HOST_PIP:-python3 -m pip}"
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "$1 needs a value (see the usage at the top of deploy/docker/build.sh)"
    case "$1" in
        --variant) VARIANT="$2" ;;
        --engine) ENGINE="$2" ;;
        --base) BASE_IMAGE="$2" ;;
        --python) PYTHON="$2" ;;
        --tag) TAG="$2" ;;
        --torch-index) TORCH_INDEX="$2" ;;
        --extra-pip) EXTRA_PIP="$2" ;;
        --extras) EXTRAS="$2" ;;
        *) die "unknown option $1 (options: --variant --engine --base --python --tag --torch-index --extra-pip --extras)" ;;
    esac
    shift 2
done
case "$VARIANT" in cpu|cuda) ;; *) die "--variant must be cpu or cuda, not '$VARIANT'" ;; esac
[[ -z "$EXTRAS" || "$EXTRAS" =~ ^[a-z0-9_-]+(,[a-z0-9_-]+)*$ ]] \
    || die "--extras must be extras of pyproject.toml separated by commas (e.g. ray), not '$EXTRAS'"
for extra in ${EXTRAS//,/ }; do
    grep -q "^${extra} = \[" pyproject.toml || die "--extras: pyproject.toml has no optional extra '${extra}'"
done
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null; then ENGINE=podman; elif command -v docker >/dev/null; then ENGINE=docker
    else die "neither podman nor docker is installed (Debian/Ubuntu as root: bash deploy/docker/podman_host.sh)"; fi
fi
case "$ENGINE" in podman|docker) ;; *) die "--engine must be podman or docker, not '$ENGINE'" ;; esac
command -v "$ENGINE" >/dev/null || die "$ENGINE is not installed"

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)"
torch_version="$(sed -n 's/^torch==//p' deploy/docker/constraints.txt)"
[ -n "$torch_version" ] || die "deploy/docker/constraints.txt pins no torch=="
suffix="${EXTRAS:+-${EXTRAS//,/-}}"
if [ "$VARIANT" = cpu ]; then TAG="${TAG:-hdpo-tune:${version}-cpu${suffix}}"; else TAG="${TAG:-hdpo-tune:${version}${suffix}}"; fi

# torch's index: "auto" uses the host's configured index when it already serves this torch build (a local
# mirror), else PyTorch's CPU index for the CPU build; the CUDA build is PyPI's default Linux wheel.
if [ "$TORCH_INDEX" = auto ]; then
    TORCH_INDEX=""
    if [ "$VARIANT" = cpu ]; then
        # shellcheck disable=SC2086
        if ! $HOST_PIP index versions torch 2>/dev/null | grep -qF "${torch_version}+cpu"; then
            TORCH_INDEX="https://download.pytorch.org/whl/cpu"
        fi
    fi
elif [ "$TORCH_INDEX" = none ]; then
    TORCH_INDEX=""
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2086
$HOST_PIP config list > "$work/pip-config-list" 2>/dev/null || : > "$work/pip-config-list"
mounts="$(python3 deploy/docker/pip_config.py "$ENGINE" "$work/pip-config-list" "$work/pip.conf")" \
    || die "could not turn the host's pip configuration into a build secret (see above)"

args=(build -f Dockerfile -t "$TAG"
      --secret "id=pipconf,src=$work/pip.conf"
      --build-arg "TORCH_VARIANT=$VARIANT" --build-arg "TORCH_INDEX=$TORCH_INDEX"
      --build-arg "EXTRA_PIP=$EXTRA_PIP" --build-arg "EXTRAS=$EXTRAS")
[ -n "$BASE_IMAGE" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "$PYTHON" ] && args+=(--build-arg "PYTHON=$PYTHON")
if [ "$ENGINE" = podman ]; then
    # docker format: the OCI format drops SHELL (pipefail); host network: the same mirrors/proxies as the host.
    args+=(--format docker --network host)
    while IFS= read -r path; do [ -n "$path" ] && args+=(-v "$path:$path:ro"); done <<< "$mounts"
else
    export DOCKER_BUILDKIT=1
fi
args+=(.)

echo "+ $ENGINE ${args[*]}" >&2
start="$(date +%s)"
"$ENGINE" "${args[@]}"
secs=$(( $(date +%s) - start ))
size="$("$ENGINE" image inspect --format '{{.Size}}' "$TAG")"
echo "built $TAG ($VARIANT build of torch $torch_version${TORCH_INDEX:+ from $TORCH_INDEX}) in ${secs}s;" \
     "image size $(( size / 1000000 )) MB" >&2
