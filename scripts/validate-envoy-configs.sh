#!/usr/bin/env bash
# `envoy --mode validate` on every Envoy config in envoy/. Configs written for
# containers name /etc/envoy/<file>; those paths are pointed at the local
# files (the built filter, envoy/<file>) in a temporary copy first. The
# persisted-snapshot listener's file (written by `cellmap serve --persist`)
# is pointed at an empty placeholder, as the harness and compose do before
# the first snapshot: Envoy refuses a config naming a missing file.
set -euo pipefail
cd "$(dirname "$0")/.."
envoy=${ENVOY_BIN:-.venv/bin/envoy}
# envoy/envoy-native.yaml loads dist/libcell_router_native.so (`make native`).
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=${ENVOY_DYNAMIC_MODULES_SEARCH_PATH:-$PWD/dist}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
placeholder="$tmp/persisted-snapshot.json"
: > "$placeholder"
status=0
while IFS= read -r config; do
  copy="$tmp/$(echo "$config" | tr / _)"
  sed -e "s#/etc/envoy/cell_router.wasm#$PWD/dist/cell_router.wasm#g" \
      -e "s#/var/lib/cellmap/snapshot.json#$placeholder#g" \
      -e "s#\.work/persisted-snapshot\.json#$placeholder#g" \
      -e "s#/etc/envoy/#$PWD/$(dirname "$config")/#g" "$config" > "$copy"
  if "$envoy" --mode validate -c "$copy" --log-level error >"$tmp/out" 2>&1; then
    echo "valid: $config"
  else
    echo "INVALID: $config" >&2
    cat "$tmp/out" >&2
    status=1
  fi
done < <(find envoy -name '*.yaml' -print0 | xargs -0 grep -l 'static_resources' | sort)
exit $status
