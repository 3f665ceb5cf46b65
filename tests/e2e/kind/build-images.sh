#!/usr/bin/env bash
# Builds, in the local container storage (podman and buildah share it), what a CAPD
# Docker-backed cluster runs here, where no image can be pulled:
#
#   localhost/uc-kind/node:<version>-<key>   one node image ("OS image") per Kubernetes minor of
#                                            versions.env: systemd, containerd, runc, CNI plugins,
#                                            kubelet/kubeadm/kubectl, and in containerd the
#                                            control-plane, etcd and pause images kubeadm runs
#   localhost/uc-kind/haproxy:<key>          CAPD's load balancer (haproxy with CAPD's config path)
#
# In each node's containerd, besides its own release's control plane, are the kube-proxy images
# of its own, the previous and the next minor (KCP moves kube-proxy to the new minor once the
# control plane has rolled, while the old workers still run), and every CoreDNS of
# versions.env: the controller leaves CoreDNS to the platform's providers (KCP's skip-coredns),
# so the cluster's first CoreDNS keeps running on every later node. Nothing can be pulled here;
# a node elsewhere would pull them.
#
# and prints the path of an env file naming them (UC_KIND_NODE_IMAGE_<minor>=..., and
# UC_KIND_LB_REPOSITORY / UC_KIND_LB_TAG). Everything is keyed by the pins, the Go module files
# and the files baked in, and cached outside the repository: Kubernetes binaries under
# $UC_CACHE_DIR/kind, images in the container storage. A warm run builds nothing.
#
#   etcd (v3.5, one image for every minor)  ../testenv/build.sh's etcd binary
#   kube-* (per minor)                      k8s/<minor>/ (bump.sh), version-stamped as there
#   kube-proxy (per minor)                  the same, with the base's iptables and conntrack only
#   CoreDNS (kubeadm's, per minor)          `go install` of KIND_COREDNS_VERSIONS
#   pause                                   pause/pause.c, linked statically
#   crictl                                  tools/ (CAPD runs `crictl ps` in a new node)
#   base root filesystem                    debootstrap from Debian's packages
#
# UC_KIND_ONLY="v1.33.13" builds only the node images it names (the env file then names only
# those; the neighbouring releases are built for their addon images). Needs root, buildah, podman (runc) and debootstrap (../testenv/container-tools.sh
# --kind installs them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=readonly

log() { echo "kind/build-images.sh: $*" >&2; }
podman() { command podman --runtime runc --cgroup-manager cgroupfs "$@"; }

[ "$(id -u)" = 0 ] || { log "needs root (container storage, debootstrap)"; exit 1; }
"$here/../testenv/container-tools.sh" --kind

# versions.env is the single source of truth: refuse go.mod files that drifted from it.
for version in $KIND_KUBERNETES_VERSIONS; do
	minor="${version%.*}"
	got="$(cd "$here/k8s/$minor" 2>/dev/null && go list -m -f '{{.Version}}' k8s.io/kubernetes || true)"
	if [ "$got" != "$version" ]; then
		log "k8s/$minor/go.mod has k8s.io/kubernetes '${got}' but versions.env says $version; run tests/e2e/kind/bump.sh"
		exit 1
	fi
done

testenv="$("$here/../testenv/build.sh")"
etcd_bin="$testenv/bin/etcd"
# shellcheck source=../testenv/kube-version.sh
source "$here/../testenv/kube-version.sh"
etcd_tag="$("$etcd_bin" --version | sed -n 's/^etcd Version: \(.*\)$/\1/p')-0"

# Packages of the base root filesystem. haproxy is for the load-balancer image, which shares
# the base's layers; its service is masked on nodes.
packages=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,iproute2,ethtool,socat,conntrack,kmod,mount,util-linux,ca-certificates,procps,libseccomp2,ebtables,ipset,nftables,haproxy
base_key="$({ echo "$KIND_DEBIAN_SUITE $packages"; sed -n '/^# base:begin/,/^# base:end/p' "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-12)"
# Binaries and image archives are keyed by what they are built from; images by everything.
bin_key="$({ go version; echo "$etcd_tag"; cat "$here/versions.env" "$here/../testenv/kube-version.sh" "$here"/k8s/*/go.mod "$here"/k8s/*/go.sum "$here"/tools/go.mod "$here"/tools/go.sum "$here/pause/pause.c"; sed -n '/^# binaries:begin/,/^# binaries:end/p' "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-12)"
key="$({ echo "$base_key $bin_key"; cat "${BASH_SOURCE[0]}" "$here/loadbalancer/haproxy.cfg"; (cd "$here/node" && find . -type f | LC_ALL=C sort | xargs sha256sum); } | sha256sum | cut -c1-12)"
cache="${UC_CACHE_DIR:-$HOME/.cache/upgrade-controller}/kind"
out="$cache/$key"
env_file="$out/images.env"
repo=localhost/uc-kind
[ -z "${UC_KIND_ONLY:-}" ] || env_file="$out/images-$(echo "$UC_KIND_ONLY" | tr ' ' '_').env"
if [ -f "$env_file" ]; then
	ok=1
	while IFS='=' read -r _ image; do podman image exists "$image" || ok=0; done < <(grep '_IMAGE' "$env_file")
	if [ $ok = 1 ]; then
		log "cached images ($env_file)"
		echo "$env_file"
		exit 0
	fi
fi
mkdir -p "$out"
start=$SECONDS

# base:begin
base_image="$repo/base:$base_key"
if ! podman image exists "$base_image"; then
	log "building the base root filesystem ($KIND_DEBIAN_SUITE, debootstrap; cold: several minutes)"
	rootfs="$cache/rootfs.$base_key.$$"
	rm -rf "$rootfs"
	debootstrap --variant=minbase --include="$packages" "$KIND_DEBIAN_SUITE" "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
		{ tail -20 "$cache/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
	# A node boots systemd with only what a kubelet needs: no getty, no haproxy, no timers.
	chroot "$rootfs" systemctl mask haproxy.service getty.target console-getty.service \
		systemd-udevd.service systemd-udev-trigger.service systemd-networkd-wait-online.service \
		apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
		>/dev/null 2>&1
	chroot "$rootfs" systemctl enable containerd.service >/dev/null 2>&1
	rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
	tar -C "$rootfs" -c . | podman import --quiet --change 'ENV container=docker' --change 'STOPSIGNAL SIGRTMIN+3' - "$base_image" >/dev/null
	rm -rf "$rootfs"
fi
# base:end

# binaries:begin
# The pod sandbox, and crictl.
bin="$cache/bin-$bin_key"
mkdir -p "$bin"
[ -x "$bin/pause" ] || gcc -static -O2 -o "$bin/pause" "$here/pause/pause.c"
[ -x "$bin/crictl" ] || (cd "$here/tools" && go build -trimpath -ldflags "-s -w" -o "$bin/" sigs.k8s.io/cri-tools/cmd/crictl)

# One image archive per binary: FROM scratch, the static binary in /usr/local/bin.
image_archive() { # name tag binary archive
	local ctr
	ctr="$(buildah from scratch)"
	buildah copy --quiet --chmod 0755 "$ctr" "$3" "/usr/local/bin/$(basename "$3")" >/dev/null
	buildah config --env PATH=/usr/local/bin:/usr/bin:/bin --entrypoint "[\"/usr/local/bin/$(basename "$3")\"]" "$ctr"
	rm -f "$4"
	buildah commit --quiet --format docker "$ctr" "docker-archive:$4:registry.k8s.io/$1:$2" >/dev/null
	buildah rm "$ctr" >/dev/null
}
archives="$bin/archives"
mkdir -p "$archives"
[ -f "$archives/etcd.tar" ] || image_archive etcd "$etcd_tag" "$etcd_bin" "$archives/etcd.tar"
[ -f "$archives/pause.tar" ] || image_archive pause 3.10 "$bin/pause" "$archives/pause.tar"
# Releases and CoreDNS versions by index (KIND_COREDNS_VERSIONS[i] is kubeadm's for release i).
read -r -a releases <<<"$KIND_KUBERNETES_VERSIONS"
read -r -a corednses <<<"$KIND_COREDNS_VERSIONS"
[ "${#releases[@]}" = "${#corednses[@]}" ] || { log "versions.env: one CoreDNS version per Kubernetes release"; exit 1; }
index_of() { local i; for i in "${!releases[@]}"; do [ "${releases[$i]}" = "$1" ] && { echo "$i"; return; }; done; log "$1 is not in KIND_KUBERNETES_VERSIONS"; exit 1; }
# The indexes next to $1's (itself included).
neighbours() { local i; i="$(index_of "$1")"; for j in $((i - 1)) "$i" $((i + 1)); do [ "$j" -ge 0 ] && [ "$j" -lt "${#releases[@]}" ] && echo "$j"; done; }
wanted=()
for version in ${UC_KIND_ONLY:-$KIND_KUBERNETES_VERSIONS}; do
	index_of "$version" >/dev/null # exits on a release versions.env does not name
	for j in $(neighbours "$version"); do wanted[$j]=1; done
done
for v in "${corednses[@]}"; do
	if [ ! -f "$archives/coredns-$v.tar" ]; then
		log "building CoreDNS $v (cold: several minutes)"
		mkdir -p "$bin/coredns-$v"
		# `go install pkg@version` builds with CoreDNS's own go.mod and go.sum, as helm is built.
		GOFLAGS= GOBIN="$bin/coredns-$v" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$v"
		image_archive coredns/coredns "$v" "$bin/coredns-$v/coredns" "$archives/coredns-$v.tar"
	fi
done
for j in "${!wanted[@]}"; do
	version="${releases[$j]}"
	minor="${version%.*}"
	kbin="$bin/$version"
	if [ ! -f "$kbin/complete" ]; then
		log "building Kubernetes $version (kubelet, kubeadm, kubectl, control plane, kube-proxy; cold: several minutes)"
		mkdir -p "$kbin"
		(cd "$here/k8s/$minor" && go build -trimpath -ldflags "-s -w $(kube_version_ldflags "$version")" -o "$kbin/" \
			k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubectl \
			k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
			k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy)
		touch "$kbin/complete"
	fi
	for c in kube-apiserver kube-controller-manager kube-scheduler; do
		[ -f "$archives/$c-$version.tar" ] || image_archive "$c" "$version" "$kbin/$c" "$archives/$c-$version.tar"
	done
done
# binaries:end

lb_image="$repo/haproxy:$key"
if ! podman image exists "$lb_image"; then
	ctr="$(buildah from "$base_image")"
	buildah copy --quiet "$ctr" "$here/loadbalancer/haproxy.cfg" /usr/local/etc/haproxy/haproxy.cfg >/dev/null
	buildah config --entrypoint '["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]' --cmd '' --stop-signal SIGUSR1 "$ctr"
	buildah commit --quiet "$ctr" "$lb_image" >/dev/null
	buildah rm "$ctr" >/dev/null
fi
{
	echo "UC_KIND_LB_REPOSITORY=$repo"
	echo "UC_KIND_LB_TAG=$key"
	echo "UC_KIND_LB_IMAGE=$lb_image"
	echo "UC_KIND_ETCD_TAG=$etcd_tag"
} >"$env_file.tmp"

# kube-proxy's image: the binary and, from the base root filesystem, what its proxiers run
# (iptables/ip6tables and their -save/-restore through xtables-nft-multi, the node's own
# backend; nft, which it calls to clean up nftables rules; conntrack), the xtables extensions
# iptables loads at run time, every library those need (ldd in the base), and /etc/protocols.
kube_proxy_archive() { # version archive
	local ctr mnt stage f
	stage="$(mktemp -d)"
	ctr="$(buildah from "$base_image")"
	mnt="$(buildah mount "$ctr")"
	local files=(usr/sbin/xtables-nft-multi usr/sbin/nft usr/sbin/conntrack etc/protocols etc/ethertypes)
	mapfile -t -O "${#files[@]}" files < <(cd "$mnt" && ls -d usr/lib/x86_64-linux-gnu/xtables/*.so)
	# Each library by the name the loader asks for and by the file it resolves to.
	mapfile -t -O "${#files[@]}" files < <(
		chroot "$mnt" sh -c 'for f in "$@"; do ldd "/$f"; done' sh "${files[@]}" |
			sed -n 's#.*=> \(/[^ ]*\) .*#\1#p; s#^[[:space:]]*\(/[^ ]*\) (.*#\1#p' | sort -u |
			while read -r lib; do
				echo "usr/lib/x86_64-linux-gnu/$(basename "$lib")"
				chroot "$mnt" readlink -f "$lib" | sed 's#^/##'
			done | sort -u
	)
	for f in "${files[@]}"; do
		(cd "$mnt" && cp -a --parents "$f" "$stage/")
	done
	buildah umount "$ctr" >/dev/null
	buildah rm "$ctr" >/dev/null
	mkdir -p "$stage/usr/lib64"
	ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$stage/usr/lib64/ld-linux-x86-64.so.2"
	for f in bin sbin lib lib64; do ln -s "usr/$f" "$stage/$f"; done
	for f in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		ln -s xtables-nft-multi "$stage/usr/sbin/$f"
	done
	install -D -m 0755 "$bin/$1/kube-proxy" "$stage/usr/local/bin/kube-proxy"
	ctr="$(buildah from scratch)"
	buildah copy --quiet "$ctr" "$stage/" / >/dev/null
	buildah config --env PATH=/usr/local/bin:/usr/sbin:/usr/bin --entrypoint '["/usr/local/bin/kube-proxy"]' "$ctr"
	rm -f "$2.tmp"
	buildah commit --quiet --format docker "$ctr" "docker-archive:$2.tmp:registry.k8s.io/kube-proxy:$1" >/dev/null
	buildah rm "$ctr" >/dev/null
	rm -rf "$stage"
	mv "$2.tmp" "$2"
}
proxies="$out/kube-proxy"
mkdir -p "$proxies"
for j in "${!wanted[@]}"; do
	[ -f "$proxies/${releases[$j]}.tar" ] || kube_proxy_archive "${releases[$j]}" "$proxies/${releases[$j]}.tar"
done

for version in ${UC_KIND_ONLY:-$KIND_KUBERNETES_VERSIONS}; do
	minor="${version%.*}"
	node_image="$repo/node:$version-$key"
	echo "UC_KIND_NODE_IMAGE_${minor//./_}=$node_image" >>"$env_file.tmp"
	podman image exists "$node_image" && continue

	kbin="$bin/$version"
	log "assembling $node_image"
	ctr="$(buildah from "$base_image")"
	buildah copy --quiet "$ctr" "$here/node/" / >/dev/null
	buildah copy --quiet --chmod 0755 "$ctr" "$kbin/kubelet" "$kbin/kubeadm" "$kbin/kubectl" /usr/bin/ >/dev/null
	buildah copy --quiet --chmod 0755 "$ctr" "$bin/crictl" /usr/local/bin/ >/dev/null
	# kind reads a node image's Kubernetes release from /kind/version (management.sh).
	buildah run --isolation chroot "$ctr" -- sh -c "mkdir -p /kind && echo $version >/kind/version"
	buildah run --isolation chroot "$ctr" -- systemctl enable kubelet.service >/dev/null 2>&1
	buildah commit --quiet "$ctr" "$node_image.unseeded" >/dev/null
	buildah rm "$ctr" >/dev/null

	# Import the images into the node's containerd: run containerd alone in the new image, import,
	# and commit the result (CAPD's anonymous /var volume starts as a copy of the image's /var).
	seed="uc-kind-seed-$$"
	podman rm -f "$seed" >/dev/null 2>&1 || true
	podman run -d --name "$seed" --privileged --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 \
		-v "$archives:/archives:ro" -v "$proxies:/proxies:ro" --entrypoint /usr/bin/containerd "$node_image.unseeded" >/dev/null
	for _ in $(seq 100); do podman exec "$seed" ctr version >/dev/null 2>&1 && break; sleep 0.2; done
	imports=(etcd pause "kube-apiserver-$version" "kube-controller-manager-$version" "kube-scheduler-$version")
	for j in $(neighbours "$version"); do imports+=("../proxies/${releases[$j]}"); done
	for v in "${corednses[@]}"; do imports+=("coredns-$v"); done
	for a in "${imports[@]}"; do
		podman exec "$seed" ctr -n k8s.io images import "/archives/$a.tar" >/dev/null
	done
	podman exec "$seed" ctr -n k8s.io images tag registry.k8s.io/pause:3.10 registry.k8s.io/pause:3.10.1 >/dev/null
	# containerd ends on SIGTERM (the image's stop signal is systemd's).
	podman kill --signal TERM "$seed" >/dev/null
	podman wait "$seed" >/dev/null
	podman commit --quiet --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
		"$seed" "$node_image" >/dev/null
	podman rm -f "$seed" >/dev/null
	podman rmi "$node_image.unseeded" >/dev/null
done
mv "$env_file.tmp" "$env_file"
# Images of earlier keys are dead weight (a node image is about 1 GB); ones still in use stay.
podman images --format '{{.Repository}}:{{.Tag}}' | grep "^$repo/" | grep -v -e ":$base_key\$" -e "$key" |
	xargs -r podman rmi >/dev/null 2>&1 || true
log "built in $((SECONDS - start))s: $(grep -c _IMAGE "$env_file") images ($env_file)"
echo "$env_file"
