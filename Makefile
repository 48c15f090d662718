# cell-router: `make demo` (the main job) and `make test` (the whole suite)
# both set up everything they need on a fresh machine.
SHELL := /bin/bash
CARGO ?= cargo
WASM := dist/cell_router.wasm
CELLMAP := target/release/cellmap
ENVOY := .venv/bin/envoy

.PHONY: all build wasm native e2e-native cellmap demo-bins envoy tools test lint unit vectors wasm-imports fuzz-smoke validate-configs validate-manifests demo demo-regions demo-up demo-down chaos bench bench-smoke bench-mapping clean

all: build

build: wasm cellmap native

wasm:
	scripts/build-wasm.sh

cellmap:
	$(CARGO) build --locked --release -p cellmap --bin cellmap

# The same core as a native Envoy dynamic module: dist/libcell_router_native.so
# (envoy/envoy-native.yaml loads it through ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
# The `native` profile is release with unwinding, so the hooks' catch_unwind works.
NATIVE_TARGET = $${CARGO_TARGET_DIR:-target}
native:
	$(CARGO) build --locked --profile native -p cell-router-native
	mkdir -p dist
	cp $(NATIVE_TARGET)/native/libcell_router_native.so dist/

## Every real-Envoy e2e file against the native build (CELL_ROUTER_BUILD=native:
## the harness's gateways run envoy/envoy-native.yaml); `unit` runs them
## against the Wasm build. A new tests/harness/tests/e2e_*.rs belongs here too.
E2E_FILES := e2e_envoy e2e_attacks e2e_chaos e2e_keys e2e_draws e2e_observe e2e_native e2e_regions
e2e-native: tools native cellmap envoy
	$(CARGO) build --locked -p cell-router-cell-backend --bins
	$(TEST_ENV) CELL_ROUTER_BUILD=native $(CARGO) test --locked -p cell-router-harness $(addprefix --test ,$(E2E_FILES))

# The demo, the cell backends and demo-token (debug: they share the test build).
demo-bins:
	$(CARGO) build --locked -p cell-router-harness -p cell-router-kit -p cell-router-cell-backend --bins

envoy:
	scripts/install-envoy.sh

# wrk drives the chaos test's and the benchmark's load.
tools:
	scripts/install-tools.sh wrk

## The whole suite: lint, unit and property tests, the cross-language vectors,
## the real .wasm in the wasmtime host, real Envoy end to end (both builds),
## and a one-minute smoke run of the benchmark.
test: tools build envoy lint vectors wasm-imports unit e2e-native fuzz-smoke validate-configs validate-manifests bench-smoke

# The filter's proxy-wasm layer only builds for wasm32, so it is linted for the
# target it ships for too. Only its library there: the tests' dev-dependencies
# (proptest's fork and timeout support) do not build for wasm32-wasip1; the
# tests are linted natively by the line above.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	rustup target add wasm32-wasip1 >/dev/null 2>&1 || true
	$(CARGO) clippy --locked -p cell-router-filter --target wasm32-wasip1 --lib -- -D warnings

vectors:
	python3 mapping/tests/vectors_check.py mapping/tests/vectors.json
	python3 mapping/tests/binary_check.py mapping/tests/binary_vectors.json

unit:
	$(TEST_ENV) $(CARGO) test --locked --workspace

# Envoy loads only modules whose imports it provides.
wasm-imports:
	python3 filter/scripts/check-wasm-imports.py $(WASM)

# A few seconds per cargo-fuzz target when cargo-fuzz and a nightly toolchain
# are installed; otherwise it says it skipped (`unit` ran the proptest
# equivalents). Long runs: filter/fuzz and mapping/fuzz.
fuzz-smoke:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-5} scripts/fuzz-smoke.sh

validate-configs:
	ENVOY_BIN=$(ENVOY) scripts/validate-envoy-configs.sh

# The Istio and Gateway API manifests against their schemas (no cluster
# here): validators pinned in scripts/manifests/package-lock.json (npm).
validate-manifests:
	scripts/validate-manifests.sh

TEST_ENV := CELL_ROUTER_WASM=$(CURDIR)/$(WASM) CELL_ROUTER_NATIVE_DIR=$(CURDIR)/dist ENVOY_BIN=$(CURDIR)/$(ENVOY) CELLMAP_BIN=$(CURDIR)/$(CELLMAP)

## The main job: the whole path on this machine, checked and summarised.
demo: tools build envoy demo-bins
	$(TEST_ENV) target/debug/cell-router-demo run

## The demo's two-region part alone: a US and an EU gateway, service pools,
## an EU tenant forwarded, an EU region with every cell disabled.
demo-regions: tools build envoy demo-bins
	$(TEST_ENV) target/debug/cell-router-demo regions

## Leave the demo stack running on the default ports (gateway :10000).
demo-up: tools build envoy demo-bins
	$(TEST_ENV) target/debug/cell-router-demo up

## Load through Envoy while snapshots flip, bad ones are injected and the
## sidecar is killed; fails on any misroute or unintended 5xx.
chaos: tools build envoy demo-bins
	$(TEST_ENV) target/debug/cell-router-chaos --duration 20s

bench-mapping:
	$(CARGO) bench --locked -p cell-router-mapping --bench resolve

demo-down:
	@if [ -x target/debug/cell-router-demo ]; then target/debug/cell-router-demo down; \
	else echo "no demo built"; fi

clean:
	$(CARGO) clean
	rm -rf dist

## Benchmarks (not part of `make test`; bench-smoke is): real Envoy with the cell
## router (Wasm and native) against plain Envoy and jwt_authn + Lua at 3, 100
## and 1,000 cells, the per-call host cost table, plus the mapping and Wasm
## benches; writes BENCHMARKS.md and BENCHMARKS.svg. Gateways pinned to CPU 0,
## everything else to CPU 1 (taskset). About 22 minutes once built on 2 cores
## (the first run also mints ~30,000 RS256 tokens, kept for 3 days).
BENCH_TARGET = $${CARGO_TARGET_DIR:-target}
BENCH_OUT := target/cell-router-bench

bench: tools build envoy
	$(CARGO) build --locked --release -p cell-router-harness --bin cell-router-bench
	# The scale cases start test cells next to the bench binary.
	$(CARGO) build --locked --release -p cell-router-cell-backend --bin cell-backend
	mkdir -p $(BENCH_OUT)
	rm -f $(BENCH_OUT)/mapping.txt $(BENCH_OUT)/wasm.txt
	$(CARGO) bench --locked -p cell-router-mapping --bench resolve > $(BENCH_OUT)/mapping.txt 2>&1 \
	  || { echo "mapping bench failed (see above)"; cat $(BENCH_OUT)/mapping.txt; rm -f $(BENCH_OUT)/mapping.txt; }
	$(CARGO) bench --locked -p cell-router-wasm-host --bench wasm_request > $(BENCH_OUT)/wasm.txt 2>&1 \
	  || { echo "wasm_request bench failed (see above)"; cat $(BENCH_OUT)/wasm.txt; rm -f $(BENCH_OUT)/wasm.txt; }
	$(TEST_ENV) CELL_ROUTER_BENCH_COMMAND="make bench" $(BENCH_TARGET)/release/cell-router-bench run \
	  --mapping-output $(BENCH_OUT)/mapping.txt --wasm-output $(BENCH_OUT)/wasm.txt
	$(TEST_ENV) CELL_ROUTER_BENCH_COMMAND="make bench" $(BENCH_TARGET)/release/cell-router-bench scale

## A ~2-minute run of the same benchmark (one round of 2 s per case at 16
## connections, small pools, no per-call table); fails unless every case
## produced a clean row.
## The debug binary: `make test` has already built it.
bench-smoke: tools build envoy
	$(CARGO) build --locked -p cell-router-harness --bin cell-router-bench
	$(TEST_ENV) $(BENCH_TARGET)/debug/cell-router-bench run --smoke
