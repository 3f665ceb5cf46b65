#!/usr/bin/env bash
# Builds the test control plane's binaries from the Go modules beside this script, copies the
# CAPI CRDs and webhook configurations and the Flux CRDs out of the Go module cache, and prints
# the directory that holds them (bin/ and manifests/). Binaries are cached outside the
# repository, keyed by the pinned versions and module files, so a warm run builds nothing.
#
#   etcd, kube-apiserver, kube-controller-manager, kubectl   (apiserver/, KUBERNETES_VERSION + ETCD_VERSION)
#   capi-manager, capi-kubeadm-bootstrap-manager,
#   capi-kubeadm-control-plane-manager, capd-manager   (capi/, CAPI_VERSION)
#   helm                                               (go install, HELM_VERSION)
#   kustomize-controller                               (flux/, the version its go.mod requires)
#
# manifests/: crd/ (CAPI), webhook/ (CAPI), flux-crd/ (the Kustomization CRD, and the
# source.toolkit.fluxcd.io CRDs kustomize-controller watches, from the source-controller
# release whose API it is built against).
#
# Environment: UC_CACHE_DIR (default ~/.cache/upgrade-controller) holds the binaries; Go's own
# GOMODCACHE and GOCACHE are used as configured (both outside the repository by default).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=readonly

log() { echo "testenv/build.sh: $*" >&2; }

# versions.env is the single source of truth: refuse go.mod files that drifted from it.
check_pin() { # module-dir module-path expected-version
	local got
	got="$(cd "$here/$1" && go list -m -f '{{.Version}}' "$2")"
	if [ "$got" != "$3" ]; then
		log "$1/go.mod has $2 $got but versions.env says $3; run tests/e2e/testenv/bump.sh"
		exit 1
	fi
}
check_pin apiserver k8s.io/kubernetes "$KUBERNETES_VERSION"
check_pin apiserver go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
check_pin capi sigs.k8s.io/cluster-api "$CAPI_VERSION"
check_pin capi sigs.k8s.io/cluster-api/test "$CAPI_VERSION"

key="$(cd "$here" && { go version; cat versions.env apiserver/go.mod apiserver/go.sum apiserver/etcd/main.go capi/go.mod capi/go.sum flux/go.mod flux/go.sum build.sh kube-version.sh; } | sha256sum | cut -c1-16)"
cache="${UC_CACHE_DIR:-$HOME/.cache/upgrade-controller}/testenv"
out="$cache/$key"
bins=(etcd kube-apiserver kube-controller-manager kubectl capi-manager capi-kubeadm-bootstrap-manager capi-kubeadm-control-plane-manager capd-manager helm kustomize-controller)

complete() {
	for b in "${bins[@]}"; do [ -x "$out/bin/$b" ] || return 1; done
	[ -f "$out/manifests/complete" ]
}
if complete; then
	log "cached binaries and manifests in $out"
	echo "$out"
	exit 0
fi

tmp="$cache/tmp.$key.$$"
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/manifests/crd" "$tmp/manifests/webhook" "$tmp/manifests/flux-crd"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

# shellcheck source=kube-version.sh
source "$here/kube-version.sh"
kver="$(kube_version_ldflags "$KUBERNETES_VERSION")"

log "building etcd $ETCD_VERSION, kube-apiserver, kube-controller-manager and kubectl $KUBERNETES_VERSION (cold: several minutes)"
(cd "$here/apiserver" && go build -trimpath -ldflags "-s -w $kver" -o "$tmp/bin/" \
	./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kubectl)

log "building Cluster API $CAPI_VERSION managers"
# The managers expose no flag for the webhook server's bind address and controller-runtime
# defaults to every interface. The test control plane binds to 127.0.0.1 only, so the managers
# are compiled from writable copies of the two CAPI modules (Go refuses build overlays for
# files in GOMODCACHE) in which each main.go adds Host: "127.0.0.1" to its webhook.Options.
# The edit is checked: a CAPI bump that changes that line fails here, not silently later.
(cd "$here/capi" && go mod download sigs.k8s.io/cluster-api sigs.k8s.io/cluster-api/test)
capi_dir="$(cd "$here/capi" && go list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api)"
capi_test_dir="$(cd "$here/capi" && go list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api/test)"
src="$tmp/src"
mkdir -p "$src/build"
cp -r "$capi_dir" "$src/cluster-api"
cp -r "$capi_test_dir" "$src/cluster-api-test"
chmod -R u+w "$src"
for main in cluster-api/main.go cluster-api/bootstrap/kubeadm/main.go \
	cluster-api/controlplane/kubeadm/main.go cluster-api-test/infrastructure/docker/main.go; do
	if [ "$(grep -c 'webhook.Options{$' "$src/$main")" != 1 ]; then
		log "expected exactly one 'webhook.Options{' in $main; update build.sh"
		exit 1
	fi
	sed -i 's/webhook.Options{$/webhook.Options{ Host: "127.0.0.1",/' "$src/$main"
done
cp "$here/capi/go.mod" "$here/capi/go.sum" "$src/build/"
printf '\nreplace sigs.k8s.io/cluster-api => ../cluster-api\n\nreplace sigs.k8s.io/cluster-api/test => ../cluster-api-test\n' >>"$src/build/go.mod"
capi_ldflags="-s -w -X sigs.k8s.io/cluster-api/version.gitVersion=$CAPI_VERSION -X sigs.k8s.io/cluster-api/version.gitMajor=1 -X sigs.k8s.io/cluster-api/version.gitTreeState=clean"
(
	cd "$src/build"
	go build -trimpath -ldflags "$capi_ldflags" -o "$tmp/bin/capi-manager" sigs.k8s.io/cluster-api
	go build -trimpath -ldflags "$capi_ldflags" -o "$tmp/bin/capi-kubeadm-bootstrap-manager" sigs.k8s.io/cluster-api/bootstrap/kubeadm
	go build -trimpath -ldflags "$capi_ldflags" -o "$tmp/bin/capi-kubeadm-control-plane-manager" sigs.k8s.io/cluster-api/controlplane/kubeadm
	go build -trimpath -ldflags "$capi_ldflags" -o "$tmp/bin/capd-manager" sigs.k8s.io/cluster-api/test/infrastructure/docker
)
rm -rf "$src"

log "building helm $HELM_VERSION"
# `go install pkg@version` builds with helm's own go.mod and go.sum, outside our modules.
GOFLAGS= GOBIN="$tmp/bin" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

# Flux: kustomize-controller from flux/go.mod (which also copies its replace lines; see
# flux/README.md). Its CRDs: the Kustomization CRD from its own module, and the source CRDs
# from github.com/fluxcd/source-controller at the version of the source-controller/api module
# kustomize-controller is built against (the api module carries no YAML). That module is not
# in flux/'s build list, so it is downloaded by version (checked against the Go checksum
# database, as every module is; flux/go.sum stays as `go mod tidy` leaves it). Besides
# ExternalArtifact, kustomize-controller watches GitRepositories, OCIRepositories and Buckets
# and does not start without their CRDs.
kc_version="$(cd "$here/flux" && go list -m -f '{{.Version}}' github.com/fluxcd/kustomize-controller)"
log "building Flux kustomize-controller $kc_version"
(cd "$here/flux" && go build -trimpath -ldflags "-s -w" -o "$tmp/bin/" github.com/fluxcd/kustomize-controller)
kc_dir="$(cd "$here/flux" && go list -m -f '{{.Dir}}' github.com/fluxcd/kustomize-controller)"
sc_version="$(cd "$here/flux" && go list -m -f '{{.Version}}' github.com/fluxcd/source-controller/api)"
sc_dir="$(cd "$here/flux" && go mod download -json "github.com/fluxcd/source-controller@$sc_version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ ! -d "$sc_dir/config/crd/bases" ] ||
	! grep -q "github.com/fluxcd/source-controller/api $sc_version\$" "$sc_dir/go.mod"; then
	log "github.com/fluxcd/source-controller@$sc_version (at '$sc_dir') is not the release of source-controller/api $sc_version; update build.sh"
	exit 1
fi
cp "$kc_dir/config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml" "$tmp/manifests/flux-crd/"
for kind in externalartifacts gitrepositories ocirepositories buckets; do
	cp "$sc_dir/config/crd/bases/source.toolkit.fluxcd.io_$kind.yaml" "$tmp/manifests/flux-crd/"
done

# CRDs and webhook configurations as each provider publishes them; testenv applies them after
# adding what clusterctl and kustomize normally add (contract labels, webhook URLs, CA bundle).
cp "$capi_dir"/config/crd/bases/*.yaml "$capi_dir"/bootstrap/kubeadm/config/crd/bases/*.yaml \
	"$capi_dir"/controlplane/kubeadm/config/crd/bases/*.yaml \
	"$capi_test_dir"/infrastructure/docker/config/crd/bases/*.yaml "$tmp/manifests/crd/"
cp "$capi_dir/config/webhook/manifests.yaml" "$tmp/manifests/webhook/capi.yaml"
cp "$capi_dir/bootstrap/kubeadm/config/webhook/manifests.yaml" "$tmp/manifests/webhook/capi-kubeadm-bootstrap.yaml"
cp "$capi_dir/controlplane/kubeadm/config/webhook/manifests.yaml" "$tmp/manifests/webhook/capi-kubeadm-control-plane.yaml"
cp "$capi_test_dir/infrastructure/docker/config/webhook/manifests.yaml" "$tmp/manifests/webhook/capd.yaml"
chmod -R u+w "$tmp/manifests"
touch "$tmp/manifests/complete"

rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
log "built ${#bins[@]} binaries in $((SECONDS - start))s into $out/bin"
echo "$out"
