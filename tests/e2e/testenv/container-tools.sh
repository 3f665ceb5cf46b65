#!/usr/bin/env bash
# Makes sure the tools that build and run the controller's container image are installed:
# buildah (`make image`), podman with runc (the in-cluster e2e test, tests/e2e/tests/in_cluster.rs),
# libc6-dev (the static glibc the image's binary links against) and file (to check it is static).
# No Docker engine or registry is needed. Installs what is missing from Debian's packages with
# apt-get when run as root; otherwise prints the command and fails. A no-op, in well under a
# second, when everything is there.
#
# --kind: also debootstrap, which builds the kind + CAPD suite's node root filesystem
# (tests/e2e/kind/build-images.sh).
set -euo pipefail

log() { echo "testenv/container-tools.sh: $*" >&2; }

cmds=(buildah podman runc file)
[ "${1:-}" = --kind ] && cmds+=(debootstrap)
missing=()
for cmd in "${cmds[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
# glibc's static archive (libc.a) comes with libc6-dev.
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	log "missing: ${missing[*]}; install them, e.g. apt-get install ${missing[*]}"
	exit 1
fi
log "installing ${missing[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# No recommends: crun (podman's default, which fails here on hybrid cgroups; runc is used),
# slirp4netns, fuse-overlayfs and the rest serve rootless setups this project does not use.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for cmd in "${cmds[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || { log "$cmd still missing after apt-get install"; exit 1; }
done
log "installed: $(buildah --version), $(podman --version), $(runc --version | head -1)"
