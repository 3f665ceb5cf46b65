#!/usr/bin/env bash
# A kind management cluster, on podman here (kind's podman provider) or on Docker elsewhere:
#
#   management.sh up     create (or find) kind cluster $UC_KIND_MANAGEMENT (default uc-mgmt)
#                        from the node image of the test control plane's Kubernetes release
#                        (../testenv/versions.env, built by build-images.sh), with the
#                        Docker API socket mounted for CAPD; prints KUBECONFIG=<path>
#   management.sh down   delete it
#
# The node image is the same one CAPD's machines run (one per minor, build-images.sh); kind
# reads the release from its /kind/version. No CNI manifest is applied (disableDefaultCNI): the
# image's bridge configuration serves a single node.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0
name="${UC_KIND_MANAGEMENT:-uc-mgmt}"
cache="${UC_CACHE_DIR:-$HOME/.cache/upgrade-controller}/kind"
state="${UC_KIND_STATE_DIR:-/tmp/upgrade-controller-kind}"
log() { echo "kind/management.sh: $*" >&2; }

# The kind CLI, keyed by its module files and the Go toolchain.
cli_key="$({ go version; cat "$here/cli/go.mod" "$here/cli/go.sum"; } | sha256sum | cut -c1-12)"
kind="$cache/cli-$cli_key/kind"
if [ ! -x "$kind" ]; then
	log "building the kind CLI ($(sed -n 's/^\s*sigs.k8s.io\/kind \(v[^ ]*\).*/\1/p' "$here/cli/go.mod"))"
	(cd "$here/cli" && go build -trimpath -ldflags "-s -w" -o "$kind.tmp" sigs.k8s.io/kind)
	mv "$kind.tmp" "$kind"
fi

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
	socket="${DOCKER_HOST:-unix:///var/run/docker.sock}"
	socket="${socket#unix://}"
else
	# No Docker: podman, with the containers.conf podman-service.sh writes (runc, cgroupfs,
	# fixed rlimits) and its Docker API socket for CAPD.
	"$here/podman-service.sh" up >/dev/null
	export KIND_EXPERIMENTAL_PROVIDER=podman
	export CONTAINERS_CONF=/run/upgrade-controller/containers.conf
	socket="${UC_KIND_SOCKET:-/run/upgrade-controller/podman.sock}"
fi

case "${1:-}" in
up)
	mkdir -p "$state"
	kubeconfig="$state/$name.kubeconfig"
	if "$kind" get clusters 2>/dev/null | grep -qx "$name"; then
		"$kind" get kubeconfig --name "$name" >"$kubeconfig"
		echo "KUBECONFIG=$kubeconfig"
		exit 0
	fi
	# shellcheck source=../testenv/versions.env
	version="$(. "$here/../testenv/versions.env" && echo "$KUBERNETES_VERSION")"
	minor="${version%.*}"
	env_file="$(UC_KIND_ONLY="$version" "$here/build-images.sh")"
	image="$(sed -n "s/^UC_KIND_NODE_IMAGE_${minor//./_}=//p" "$env_file")"
	[ -n "$image" ] || { log "build-images.sh named no node image for $version ($env_file)"; exit 1; }
	# The image holds one etcd (build-images.sh), not the one kubeadm defaults to.
	etcd_tag="$(sed -n 's/^UC_KIND_ETCD_TAG=//p' "$env_file")"
	config="$state/$name.yaml"
	cat >"$config" <<-EOF
		kind: Cluster
		apiVersion: kind.x-k8s.io/v1alpha4
		networking:
		  disableDefaultCNI: true
		kubeadmConfigPatches:
		- |
		  kind: ClusterConfiguration
		  etcd:
		    local:
		      imageTag: "$etcd_tag"
		nodes:
		- role: control-plane
		  extraMounts:
		  - hostPath: $socket
		    containerPath: /var/run/docker.sock
	EOF
	log "creating kind cluster $name from $image"
	SECONDS=0
	"$kind" create cluster --name "$name" --image "$image" --config "$config" \
		--kubeconfig "$kubeconfig" --wait 5m --retain
	log "kind cluster $name ready in ${SECONDS}s"
	echo "KUBECONFIG=$kubeconfig"
	;;
down)
	"$kind" delete cluster --name "$name"
	;;
*)
	echo "usage: $0 up|down" >&2
	exit 2
	;;
esac
