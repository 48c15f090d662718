# cell-router: `make demo` (the main job) and `make test` (the whole suite)
# both set up everything they need on a fresh machine.
SHELL := /bin/bash
CARGO ?= cargo
WASM := dist/cell_router.wasm
CELLMAP := target/release/cellmap
ENVOY := .venv/bin/envoy

.PHONY: all build wasm cellmap demo-bins envoy tools test lint unit vectors validate-configs demo demo-up demo-down clean

all: build

build: wasm cellmap

wasm:
	scripts/build-wasm.sh

cellmap:
	$(CARGO) build --locked --release -p cell-router-mapping --bin cellmap

# The demo, the cell backends and demo-token (debug: they share the test build).
demo-bins:
	$(CARGO) build --locked -p cell-router-tests --bins

envoy:
	scripts/install-envoy.sh

tools:
	scripts/install-tools.sh

## The whole suite: lint, unit and property tests, the cross-language vectors,
## the real .wasm in the wasmtime host, and real Envoy end to end.
test: tools build envoy lint vectors unit validate-configs

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

vectors:
	python3 mapping/tests/vectors_check.py mapping/tests/vectors.json

unit:
	$(TEST_ENV) $(CARGO) test --locked --workspace

validate-configs:
	ENVOY_BIN=$(ENVOY) scripts/validate-envoy-configs.sh

TEST_ENV := CELL_ROUTER_WASM=$(CURDIR)/$(WASM) ENVOY_BIN=$(CURDIR)/$(ENVOY) CELLMAP_BIN=$(CURDIR)/$(CELLMAP)

## The main job: the whole path on this machine, checked and summarised.
demo: tools build envoy demo-bins
	$(TEST_ENV) target/debug/cell-router-demo run

## Leave the demo stack running on the default ports (gateway :10000).
demo-up: tools build envoy demo-bins
	$(TEST_ENV) target/debug/cell-router-demo up

demo-down:
	@if [ -x target/debug/cell-router-demo ]; then target/debug/cell-router-demo down; \
	else echo "no demo built"; fi

clean:
	$(CARGO) clean
	rm -rf dist
