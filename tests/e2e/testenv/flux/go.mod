// The test control plane's Flux: kustomize-controller built from the Go module proxy
// (tests/e2e/testenv/build.sh). Its own go.mod's replace lines are copied here, since Go reads
// replace directives only from the main module; its ./api replace is the published
// kustomize-controller/api module of the same version instead.
module upgrade-controller.test/testenv/flux

go 1.26.0

require github.com/fluxcd/kustomize-controller v1.9.6

require github.com/fluxcd/kustomize-controller/api v1.9.6

replace github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.20220411205349-bde1400a84be

replace (
	sigs.k8s.io/kustomize/api => sigs.k8s.io/kustomize/api v0.21.1
	sigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1
)

replace gopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1
