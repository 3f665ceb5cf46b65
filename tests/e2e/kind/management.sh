#!/usr/bin/env bash
# A kind management cluster, on podman here (kind's podman provider) or on Docker elsewhere:
#
#   management.sh up          create (or find) kind cluster $UC_KIND_MANAGEMENT (default uc-mgmt)
#                             from the node image of the test control plane's Kubernetes
#                             release (../testenv/versions.env, built by build-images.sh), with
#                             the Docker API socket mounted for CAPD; load the Cluster API
#                             managers' images into it and wait for kube-proxy and CoreDNS.
#                             Prints KUBECONFIG=<path>, CAPI_IMAGE_<manager>=<image> per
#                             manager and NODE_DOCKER_HOST=<the socket's URL inside the node>
#   management.sh images      build-images.sh for the workload clusters, the images copied into
#                             Docker where CAPD's engine is Docker; prints the env file's path
#   management.sh load IMAGE  load an image of the local container storage into it
#   management.sh down        delete it
#
# The node image is the same one CAPD's machines run (one per minor, build-images.sh); kind
# reads the release from its /kind/version. No CNI manifest is applied (disableDefaultCNI): the
# image's bridge configuration serves a single node. kubeadm's kube-proxy and CoreDNS run from
# the images in the node image (build-images.sh), so Services work: the pods reach the API
# server through `kubernetes`, and the API server reaches webhooks through theirs.
#
# The managers' images are static builds of the test control plane's CAPI pins, each FROM
# scratch, cached as docker archives; the Rust harness installs them (tests/e2e/src/kind.rs).
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
	provider=docker
	unset KIND_EXPERIMENTAL_PROVIDER
	# The daemon docker talks to: DOCKER_HOST, else the current context's endpoint.
	endpoint="${DOCKER_HOST:-$(docker context inspect -f '{{.Endpoints.docker.Host}}' 2>/dev/null || echo unix:///var/run/docker.sock)}"
	case "$endpoint" in
	unix://*) socket="${endpoint#unix://}" ;;
	*) log "Docker's endpoint is $endpoint: CAPD's pod needs a unix socket to mount (set DOCKER_HOST=unix://...)"; exit 1 ;;
	esac
	[ -S "$socket" ] || { log "Docker's endpoint $endpoint is not a socket on this host"; exit 1; }
else
	provider=podman
	# No Docker: podman, with the containers.conf podman-service.sh writes (runc, cgroupfs,
	# fixed rlimits) beside its Docker API socket for CAPD.
	socket="${UC_KIND_SOCKET:-/run/upgrade-controller/podman.sock}"
	"$here/podman-service.sh" up >/dev/null
	export KIND_EXPERIMENTAL_PROVIDER=podman
	export CONTAINERS_CONF="$(dirname "$socket")/containers.conf"
fi

# The socket's directory is mounted (a restarted podman service makes a new socket file there);
# Docker's own socket file is mounted as it is.
node_socket_dir=/run/uc-docker
if [ "$provider" = podman ]; then
	mount_from="$(dirname "$socket")"
else
	mount_from="$socket"
fi
node_docker_host="unix://$node_socket_dir/$(basename "$socket")"

podman() { command podman --runtime runc --cgroup-manager cgroupfs "$@"; }

# `kind load image-archive` of one docker archive, timed.
load_archive() { # archive
	local t=$SECONDS
	"$kind" load image-archive "$1" --name "$name" >/dev/null
	log "loaded $(basename "$1") in $((SECONDS - t))s"
}

# The image ID (config digest) of a docker archive's one image, as containerd reports it.
archive_id() { # archive
	tar -xOf "$1" manifest.json | sed -n 's/.*"Config":"\(blobs\/sha256\/\)\{0,1\}\([0-9a-f]\{64\}\)[^"]*".*/sha256:\2/p'
}

# The Cluster API managers as images FROM scratch (docker archives), built from the test control
# plane's module (../testenv/capi, the same pins) but unpatched: ../testenv/build.sh compiles
# its copies with the webhook server bound to 127.0.0.1 (it runs them on this machine), and a
# pod's webhook must listen on the pod's address, as upstream's do. Keyed by the module files.
manager_images() {
	local capi_version key dir m pkg ctr
	capi_version="$(. "$here/../testenv/versions.env" && echo "$CAPI_VERSION")"
	key="$({ go version; echo "$capi_version"; cat "$here/../testenv/capi/go.mod" "$here/../testenv/capi/go.sum"; sed -n '/^manager_images()/,/^}/p' "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-12)"
	dir="$cache/capi-$key"
	mkdir -p "$dir"
	for m in capi-manager capi-kubeadm-bootstrap-manager capi-kubeadm-control-plane-manager capd-manager; do
		case "$m" in
		capi-manager) pkg=sigs.k8s.io/cluster-api ;;
		capi-kubeadm-bootstrap-manager) pkg=sigs.k8s.io/cluster-api/bootstrap/kubeadm ;;
		capi-kubeadm-control-plane-manager) pkg=sigs.k8s.io/cluster-api/controlplane/kubeadm ;;
		capd-manager) pkg=sigs.k8s.io/cluster-api/test/infrastructure/docker ;;
		esac
		if [ ! -f "$dir/$m.tar" ]; then
			log "building $m $capi_version"
			(cd "$here/../testenv/capi" && go build -trimpath -o "$dir/$m" -ldflags "-s -w \
				-X sigs.k8s.io/cluster-api/version.gitVersion=$capi_version \
				-X sigs.k8s.io/cluster-api/version.gitMajor=1 \
				-X sigs.k8s.io/cluster-api/version.gitTreeState=clean" "$pkg")
			rm -f "$dir/$m.tar.tmp"
			ctr="$(buildah from scratch)"
			buildah copy --quiet --chmod 0755 "$ctr" "$dir/$m" /manager >/dev/null
			# CAPD talks to the Docker API socket, which is root's.
			buildah config --entrypoint '["/manager"]' --user "$([ "$m" = capd-manager ] && echo 0 || echo 65532)" "$ctr"
			buildah commit --quiet --format docker "$ctr" "docker-archive:$dir/$m.tar.tmp:localhost/uc-capi/$m:$capi_version-$key" >/dev/null
			buildah rm "$ctr" >/dev/null
			mv "$dir/$m.tar.tmp" "$dir/$m.tar"
			rm -f "$dir/$m"
		fi
		echo "$m localhost/uc-capi/$m:$capi_version-$key $dir/$m.tar"
	done
}

# On Docker, images built here (in the local container storage) are copied into Docker, where
# kind and CAPD look for them; on podman they are already there.
to_engine() { # image...
	[ "$provider" = docker ] || return 0
	local i
	for i in "$@"; do
		docker image inspect "$i" >/dev/null 2>&1 && continue
		log "copying $i into Docker"
		podman save --format docker-archive "$i" | docker load >/dev/null
	done
}

kubectl() { command "$("$here/../testenv/build.sh")/bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

case "${1:-}" in
up)
	mkdir -p "$state"
	kubeconfig="$state/$name.kubeconfig"
	# shellcheck source=../testenv/versions.env
	version="$(. "$here/../testenv/versions.env" && echo "$KUBERNETES_VERSION")"
	minor="${version%.*}"
	env_file="$(UC_KIND_ONLY="$version" "$here/build-images.sh")"
	image="$(sed -n "s/^UC_KIND_NODE_IMAGE_${minor//./_}=//p" "$env_file")"
	[ -n "$image" ] || { log "build-images.sh named no node image for $version ($env_file)"; exit 1; }
	manager_images >"$state/managers"
	mapfile -t managers <"$state/managers"
	[ "${#managers[@]}" = 4 ] || { log "expected 4 manager images, got: ${managers[*]}"; exit 1; }
	umask 077 # the admin kubeconfig
	clusters="$("$kind" get clusters 2>/dev/null)"
	if grep -qx "$name" <<<"$clusters"; then
		# Reused only when it runs this node image (the release and node files of this checkout)
		# and its API server answers; anything else is said, not repaired.
		running="$($provider inspect -f '{{.Config.Image}}' "$name-control-plane" 2>/dev/null || true)"
		if [ "$running" != "$image" ] && [ "$running" != "${image#localhost/}" ]; then
			log "kind cluster $name runs node image '$running', not $image: run '$0 down' and '$0 up'"
			exit 1
		fi
		"$kind" get kubeconfig --name "$name" >"$kubeconfig"
		kubectl get --raw /readyz >/dev/null 2>&1 ||
			{ log "kind cluster $name does not answer (a failed create leaves its node behind): run '$0 down' and '$0 up'"; exit 1; }
		log "kind cluster $name exists"
	else
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
			  - hostPath: $mount_from
			    containerPath: $([ "$provider" = podman ] && echo "$node_socket_dir" || echo "$node_socket_dir/$(basename "$socket")")
		EOF
		to_engine "$image"
		# kind mounts the host's /lib/modules into every node, read-only, and the engine
		# refuses a missing source ("statfs /lib/modules: no such file or directory"): a
		# kernel with its drivers built in, as on some VMs, has none. An empty one serves.
		if [ ! -d /lib/modules ]; then
			log "this host has no /lib/modules, which kind mounts into its node: creating it empty"
			mkdir -p /lib/modules
		fi
		log "creating kind cluster $name from $image"
		t=$SECONDS
		# --retain keeps a failed node for its logs (`kind export logs`); `down` removes it.
		"$kind" create cluster --name "$name" --image "$image" --config "$config" \
			--kubeconfig "$kubeconfig" --wait 5m --retain >&2
		log "kind cluster $name ready in $((SECONDS - t))s"
	fi
	node="$name-control-plane"
	# A node whose mount no longer shows the socket (a cluster from before a reboot) cannot
	# serve CAPD: say so rather than fail later in CAPD's log.
	$provider exec "$node" test -S "${node_docker_host#unix://}" ||
		{ log "node $node has no Docker API socket at ${node_docker_host#unix://}: run '$0 down' and '$0 up'"; exit 1; }
	# An image is loaded unless the node holds that very image (by ID, not by tag).
	node_id() { $provider exec "$node" crictl inspecti -o go-template --template '{{.status.id}}' "$1" 2>/dev/null || true; }
	for m in "${managers[@]}"; do
		read -r _ m_image m_archive <<<"$m"
		want="$(archive_id "$m_archive")"
		[ "$(node_id "$m_image")" = "$want" ] && continue
		load_archive "$m_archive"
		[ "$(node_id "$m_image")" = "$want" ] || { log "$m_archive did not load as $m_image ($want): remove it and retry"; exit 1; }
	done
	kubectl -n kube-system rollout status daemonset/kube-proxy --timeout=120s >&2
	kubectl -n kube-system rollout status deployment/coredns --timeout=120s >&2
	echo "KUBECONFIG=$kubeconfig"
	for m in "${managers[@]}"; do
		read -r m_name m_image _ <<<"$m"
		echo "CAPI_IMAGE_$m_name=$m_image"
	done
	echo "NODE_DOCKER_HOST=$node_docker_host"
	;;
images)
	# The workload clusters' node and load-balancer images, where CAPD's engine has them.
	env_file="$("$here/build-images.sh")"
	mapfile -t images < <(sed -n 's/^UC_KIND_\(NODE\|LB\)_IMAGE[^=]*=//p' "$env_file")
	to_engine "${images[@]}"
	echo "$env_file"
	;;
load)
	[ $# -ge 2 ] || { echo "usage: $0 load IMAGE" >&2; exit 2; }
	archive="$state/load-$$.tar"
	mkdir -p "$state"
	rm -f "$archive"
	podman save --quiet --format docker-archive -o "$archive" "$2"
	load_archive "$archive"
	rm -f "$archive"
	;;
down)
	"$kind" delete cluster --name "$name"
	;;
*)
	echo "usage: $0 up|images|load IMAGE|down" >&2
	exit 2
	;;
esac
