#!/usr/bin/env bash
# Serves the Docker Engine API from podman for CAPD's docker backend, on a machine without a
# Docker daemon:
#
#   podman-service.sh up     start (or find running) `podman system service` on $UC_KIND_SOCKET
#                            (default /run/upgrade-controller/podman.sock), create the `kind`
#                            network CAPD attaches machines to, and print DOCKER_HOST=...
#   podman-service.sh down   stop it (containers and the network stay)
#
# The service runs with a containers.conf of its own, because podman 4.3's Docker-compatible
# create ignores HostConfig.CgroupnsMode, which CAPD sets to "private" for every node; podman's
# default on cgroup v1 is the host's cgroup namespace, where a node's systemd and kubelet would
# see, and write, the host's cgroup tree. runc with cgroupfs, and fixed rlimits: crun and the
# systemd cgroup manager fail on this machine's hybrid cgroups.
#
# On a host with Docker none of this is needed: CAPD talks to Docker itself.
set -euo pipefail
sock="${UC_KIND_SOCKET:-/run/upgrade-controller/podman.sock}"
dir="$(dirname "$sock")"
pidfile="$dir/podman-service.pid"
log() { echo "kind/podman-service.sh: $*" >&2; }
ping() { curl -sf --max-time 2 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; }

case "${1:-}" in
up)
	mkdir -p "$dir"
	conf="$dir/containers.conf"
	cat >"$conf" <<-'EOF'
		[containers]
		cgroupns = "private"
		default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
		[engine]
		runtime = "runc"
		cgroup_manager = "cgroupfs"
	EOF
	export CONTAINERS_CONF="$conf"
	podman network exists kind || podman network create kind >/dev/null
	if ! ping; then
		rm -f "$sock"
		nohup podman system service --time=0 "unix://$sock" >"$dir/podman-service.log" 2>&1 &
		echo $! >"$pidfile"
		for _ in $(seq 100); do ping && break; sleep 0.1; done
		ping || { log "podman system service did not answer on $sock; log: $dir/podman-service.log"; exit 1; }
		log "serving the Docker API on $sock (pid $(cat "$pidfile"))"
	fi
	echo "DOCKER_HOST=unix://$sock"
	;;
down)
	if [ -f "$pidfile" ]; then
		kill "$(cat "$pidfile")" 2>/dev/null || true
		rm -f "$pidfile" "$sock"
	fi
	;;
*)
	echo "usage: $0 up|down" >&2
	exit 2
	;;
esac
