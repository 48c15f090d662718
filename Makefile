# cell-router: `make demo` (the main job) and `make test` (the whole suite)
# both set up everything they need on a fresh machine.
SHELL := /bin/bash
CARGO ?= cargo
WASM := dist/cell_router.wasm
CELLMAP := target/release/cellmap
ENVOY := .venv/bin/envoy

.PHONY: all build wasm cellmap envoy tools test lint unit vectors validate-configs clean

all: build

build: wasm cellmap

wasm:
	scripts/build-wasm.sh

cellmap:
	$(CARGO) build --locked --release -p cell-router-mapping --bin cellmap

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
	CELL_ROUTER_WASM=$(CURDIR)/$(WASM) ENVOY_BIN=$(CURDIR)/$(ENVOY) CELLMAP_BIN=$(CURDIR)/$(CELLMAP) \
		$(CARGO) test --locked --workspace

validate-configs:
	@for f in $$(find envoy -name 'envoy*.yaml' 2>/dev/null); do \
		echo "validate $$f"; \
		$(ENVOY) --mode validate -c $$f --log-level warn >/dev/null || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf dist
