#!/usr/bin/env bash
# Builds the filter for wasm32-wasip1 into dist/cell_router.wasm.
# First choice: rustup's wasm32-wasip1 target. Fallback, for machines where
# rustup cannot download it: Debian's rust-web toolchain with build-std.
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist/cell_router.wasm
mkdir -p dist

if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 \
   || rustup target add wasm32-wasip1 >&2; then
  cargo build --locked --release --target wasm32-wasip1 -p cell-router-filter
  # Honour CARGO_TARGET_DIR: copying from ./target would ship a stale build.
  cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/cell_router_filter.wasm" "$out"
else
  echo "build-wasm: rustup has no wasm32-wasip1; using Debian's rust-web toolchain" >&2
  if ! command -v /usr/bin/cargo >/dev/null || [ ! -d /usr/lib/wasm32-wasi ]; then
    apt-get update -qq && apt-get install -y -qq rustc-web cargo-web rust-web-src lld-22 wasi-libc >&2
  fi
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-L /usr/lib/wasm32-wasi" CARGO_TARGET_DIR=target/debian-wasm \
    /usr/bin/cargo build --release --target wasm32-wasip1 -p cell-router-filter \
    -Zbuild-std=std,panic_abort
  cp target/debian-wasm/wasm32-wasip1/release/cell_router_filter.wasm "$out"
fi
echo "built $out ($(stat -c %s "$out") bytes)" >&2
