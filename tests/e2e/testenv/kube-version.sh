# shellcheck shell=bash
# kube_version_ldflags VERSION: the -X flags that stamp a Kubernetes build with VERSION, as
# hack/lib/version.sh does. An unstamped build reports v0.0.0, which CAPI, kubeadm and
# kubectl's version-skew checks reject or misread. Sourced by build.sh and ../kind/build-images.sh.
kube_version_ldflags() {
	local version="$1" minor pkg flags=""
	minor="${version#v1.}"
	minor="${minor%%.*}"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	echo "$flags"
}
