#!/usr/bin/env bash
# Debian packages the tests and benchmarks use; installs only what is missing.
set -euo pipefail
missing=()
command -v python3 >/dev/null || missing+=(python3 python3-venv)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v curl >/dev/null || missing+=(curl)
for tool in "$@"; do
  case "$tool" in
    wrk) command -v wrk >/dev/null || missing+=(wrk) ;;
    h2load) command -v h2load >/dev/null || missing+=(nghttp2-client) ;;
    hey) command -v hey >/dev/null || missing+=(hey) ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-tools: need ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
