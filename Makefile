# Entry points a newcomer needs; README.md explains each.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

# Build outputs live outside the repository so a fresh clone reuses them (CI caches them too).
UC_CACHE_DIR ?= $(HOME)/.cache/upgrade-controller
export UC_CACHE_DIR
export CARGO_TARGET_DIR ?= $(UC_CACHE_DIR)/cargo-target
TESTENV := cargo run --quiet --locked -p e2e --bin testenv --

.PHONY: demo test lint bench image container-tools testenv-build testenv-up testenv-down e2e-kind

## demo: the main job end to end: a local control plane, an in-memory cluster at ACP 4.0
## (Kubernetes 1.31), and upgrade-controller taking it to 4.3 one minor at a time.
demo: testenv-build
	cargo run --quiet --locked -p e2e --bin demo

## test: lint, build the test control plane and the image, run every test (unit + e2e on the
## real control plane, the image among them). Stops the control plane afterwards unless it was
## already running.
test: lint testenv-build image
	@was_up=0; $(TESTENV) status >/dev/null 2>&1 && was_up=1; \
	status=0; SECONDS=0; \
	cargo test --workspace --locked --no-fail-fast || status=$$?; \
	echo "make test: cargo test finished in $${SECONDS}s (exit $$status)"; \
	if [ $$was_up = 0 ]; then $(TESTENV) down || true; fi; \
	exit $$status

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

## bench: the scale benchmark (README "Scale"): 1,000 UpgradeRequests over 50 namespaces on the
## test control plane, with a release build of the controller (or UC_CONTROLLER_BIN).
## BENCH_ARGS passes flags (`--requests 200 --namespaces 10`).
bench: testenv-build
	cargo build --quiet --release --locked -p upgrade-controller
	UC_CONTROLLER_BIN=$${UC_CONTROLLER_BIN:-$(CARGO_TARGET_DIR)/release/upgrade-controller} \
		cargo run --quiet --locked -p e2e --bin bench -- $(BENCH_ARGS)

## image: the container image (README "Container image"): the controller linked statically
## against glibc on this machine, then `Containerfile` (FROM scratch) around it. Nothing is
## pulled. IMAGE names it; IMAGE_BUILDER="docker build" builds it on a Docker host instead.
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n1)
IMAGE ?= localhost/upgrade-controller:$(IMAGE_VERSION)
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo -dirty)
IMAGE_BUILDER ?= buildah bud --isolation chroot
STATIC_TARGET := x86_64-unknown-linux-gnu
IMAGE_CONTEXT = $(CARGO_TARGET_DIR)/image-context
# buildah also writes the labels as OCI manifest annotations (docker build has no such flag).
ifeq ($(firstword $(IMAGE_BUILDER)),buildah)
IMAGE_ANNOTATIONS := --annotation org.opencontainers.image.version=$(IMAGE_VERSION) \
	--annotation org.opencontainers.image.revision=$(IMAGE_REVISION)
endif

image: container-tools
	@SECONDS=0; bin="$(CARGO_TARGET_DIR)/$(STATIC_TARGET)/release/upgrade-controller"; \
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --locked --release \
		--target $(STATIC_TARGET) -p upgrade-controller --bin upgrade-controller; \
	if ! file -b "$$bin" | grep -Eq 'static(-pie)? linked'; then \
		echo "make image: $$bin is not statically linked: $$(file -b "$$bin")" >&2; exit 1; fi; \
	rm -rf "$(IMAGE_CONTEXT)"; mkdir -p "$(IMAGE_CONTEXT)"; \
	install -m 0555 "$$bin" "$(IMAGE_CONTEXT)/upgrade-controller"; \
	install -m 0444 /etc/ssl/certs/ca-certificates.crt "$(IMAGE_CONTEXT)/ca-certificates.crt"; \
	$(IMAGE_BUILDER) --quiet $(IMAGE_ANNOTATIONS) --build-arg VERSION=$(IMAGE_VERSION) \
		--build-arg REVISION=$(IMAGE_REVISION) -f Containerfile -t $(IMAGE) "$(IMAGE_CONTEXT)" >/dev/null; \
	echo "make image: $(IMAGE) ($(IMAGE_REVISION)) built in $${SECONDS}s"

## container-tools: buildah, podman and runc (image build, in-cluster test), from Debian's
## packages when missing.
container-tools:
	@tests/e2e/testenv/container-tools.sh

## testenv-build: build (or find cached) etcd, kube-apiserver, kubectl and the CAPI managers.
testenv-build:
	@SECONDS=0; tests/e2e/testenv/build.sh >/dev/null; echo "make testenv-build: ready in $${SECONDS}s"

## e2e-kind: the kind + CAPD suite (tests/e2e/kind/README.md): a kind management cluster with
## Cluster API's managers in pods and the controller installed by its chart, upgrading a CAPD
## docker-backed cluster on real kubeadm nodes, one locally built node image per Kubernetes
## minor. Not part of `make test`. Needs root; installs debootstrap, buildah and podman when
## missing. The kind cluster stays up for the next run (`tests/e2e/kind/management.sh down`).
e2e-kind: testenv-build
	@SECONDS=0; tests/e2e/kind/build-images.sh >/dev/null; echo "make e2e-kind: node images ready in $${SECONDS}s"
	@status=0; SECONDS=0; \
	cargo test --locked -p e2e --features kind --test kind_capd -- --nocapture || status=$$?; \
	echo "make e2e-kind: finished in $${SECONDS}s (exit $$status)"; \
	exit $$status

## testenv-up / testenv-down: run the test control plane by hand;
## `eval "$$(make -s testenv-up)"` points kubectl at it.
testenv-up: testenv-build
	@$(TESTENV) up

testenv-down:
	@$(TESTENV) down
