#!/usr/bin/env bash
# Checks every Kubernetes manifest under envoy/ (Istio, Gateway API, the
# Deployment patch) against its schema, offline: no cluster runs here.
# The validators are npm packages pinned in scripts/manifests/package-lock.json
# (installed with `npm ci` on first use); scripts/manifests/check.mjs says
# what they check and where the schemas come from.
set -euo pipefail
cd "$(dirname "$0")/manifests"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "validate-manifests: needs node and npm (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
if ! cmp -s package-lock.json node_modules/.installed-from-lock 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >&2
  cp package-lock.json node_modules/.installed-from-lock
fi
mapfile -t manifests < <(find ../../envoy -name '*.yaml' -print0 | xargs -0 grep -l '^apiVersion:\|^spec:' | sort)
exec node check.mjs "${manifests[@]}"
