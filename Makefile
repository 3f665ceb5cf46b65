# Entry points a newcomer needs; README.md explains each.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

# Build outputs live outside the repository so a fresh clone reuses them (CI caches them too).
UC_CACHE_DIR ?= $(HOME)/.cache/upgrade-controller
export UC_CACHE_DIR
export CARGO_TARGET_DIR ?= $(UC_CACHE_DIR)/cargo-target
TESTENV := cargo run --quiet --locked -p e2e --bin testenv --

.PHONY: demo test lint bench testenv-build testenv-up testenv-down

## demo: the main job end to end: a local control plane, an in-memory cluster at ACP 4.0
## (Kubernetes 1.31), and upgrade-controller taking it to 4.3 one minor at a time.
demo: testenv-build
	cargo run --quiet --locked -p e2e --bin demo

## test: lint, build the test control plane, run every test (unit + e2e on the real control
## plane). Stops the control plane afterwards unless it was already running.
test: lint testenv-build
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

## testenv-build: build (or find cached) etcd, kube-apiserver, kubectl and the CAPI managers.
testenv-build:
	@SECONDS=0; tests/e2e/testenv/build.sh >/dev/null; echo "make testenv-build: ready in $${SECONDS}s"

## testenv-up / testenv-down: run the test control plane by hand;
## `eval "$$(make -s testenv-up)"` points kubectl at it.
testenv-up: testenv-build
	@$(TESTENV) up

testenv-down:
	@$(TESTENV) down
