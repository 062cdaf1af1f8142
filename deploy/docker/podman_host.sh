#!/usr/bin/env bash
# Prepares a Debian 12 host (root) to build and run the image with rootful podman, offline from any container
# registry: installs podman and its helpers from Debian, configures it for hosts whose cgroup layout crun
# refuses, and makes a local base image (Debian 12 minbase, mmdebstrap + podman import).
#
#   bash deploy/docker/podman_host.sh            # packages + config + base image (skips what is already there)
#   BASE_TAG=localhost/hdpo-base:debian12 DEBIAN_MIRROR=http://MIRROR/debian DEBIAN_SECURITY=http://MIRROR/debian-security \
#       bash deploy/docker/podman_host.sh
#
# The base image's package sources are the host's own (what `apt-get indextargets` lists for bookworm): the
# mirror this machine is configured to reach, a local one included. DEBIAN_MIRROR / DEBIAN_SECURITY override them.
#
# Exit 0: ready. Exit 3: this machine cannot run containers (one line says why). Exit 1: a step failed.
set -euo pipefail

BASE_TAG="${BASE_TAG:-localhost/hdpo-base:debian12}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-}"
DEBIAN_SECURITY="${DEBIAN_SECURITY:-}"
CONF=/etc/containers/containers.conf
MARK="# written by hdpo-tune deploy/docker/podman_host.sh"
PACKAGES=(podman runc uidmap fuse-overlayfs slirp4netns containernetworking-plugins iptables mmdebstrap)

cannot() { echo "container check skipped: $*" >&2; exit 3; }

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || cannot "podman is not installed and installing it needs root (apt-get install ${missing[*]})"
    command -v apt-get >/dev/null || cannot "podman is not installed and this is no Debian/Ubuntu host (no apt-get)"
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# crun (podman's default runtime) refuses a hybrid cgroup v1/v2 layout, the systemd cgroup manager and the
# journald event log need systemd, and a container may not raise rlimits above the host's hard limits: runc,
# cgroupfs, a file event log, and default ulimits no higher than this host's own.
write_config() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "keeping your $CONF (not written by hdpo-tune); it needs runtime=runc, cgroup_manager=cgroupfs," \
             "events_logger=file where crun/systemd do not work" >&2
        return 0
    fi
    local nofile nproc pidmax
    nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"; pidmax="$(cat /proc/sys/kernel/pid_max)"
    [ "$nofile" = unlimited ] && nofile=1048576
    { [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pidmax" ]; } && nproc="$pidmax"
    mkdir -p /etc/containers
    cat > "$CONF" <<CONF
$MARK
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
}

# The bookworm sources as "deb URI SUITE main" lines: DEBIAN_MIRROR/DEBIAN_SECURITY when set, else the host's
# configured repositories for the bookworm suites (no mirror host is written into this repository).
host_sources() {
    if [ -n "$DEBIAN_MIRROR" ]; then
        echo "deb $DEBIAN_MIRROR bookworm main"; echo "deb $DEBIAN_MIRROR bookworm-updates main"
        [ -n "$DEBIAN_SECURITY" ] && echo "deb $DEBIAN_SECURITY bookworm-security main"
        return 0
    fi
    command -v apt-get >/dev/null || return 0
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' 2>/dev/null \
        | awk '$3 == "main" && $2 ~ /^bookworm(-updates|-security)?$/ {print "deb " $1 " " $2 " main"}' | sort -u
}

make_base() {
    if podman image exists "$BASE_TAG"; then return 0; fi
    local sources=()
    mapfile -t sources < <(host_sources)
    [ ${#sources[@]} -gt 0 ] || cannot "no Debian bookworm package source is configured on this host; set DEBIAN_MIRROR (and DEBIAN_SECURITY) to a Debian mirror's URL"
    echo "making $BASE_TAG: mmdebstrap --variant=minbase bookworm from ${sources[*]}" >&2
    mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm - "${sources[@]}" \
        | podman import --change 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
}

[ "$(uname -s)" = Linux ] || cannot "containers need Linux (this is $(uname -s))"
if [ "$(id -u)" -ne 0 ] && ! command -v podman >/dev/null; then cannot "no podman, and not root to install it"; fi
[ "$(id -u)" -eq 0 ] || cannot "rootful podman needs root (run as root, or build with docker: deploy/docker/build.sh --engine docker)"
install_packages
write_config
make_base
podman run --rm --network=none "$BASE_TAG" true 2>/dev/null \
    || cannot "podman cannot start a container here: $(podman run --rm --network=none "$BASE_TAG" true 2>&1 | tail -n 1)"
echo "podman ready; base image $BASE_TAG" >&2
