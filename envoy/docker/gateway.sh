#!/usr/bin/env bash
# Runs Envoy as a gateway should run: with drain settings, and on SIGTERM or
# SIGINT (docker stop, compose down, systemd stop) drains it before stopping
# it. Envoy's own SIGTERM handling exits at once and cuts requests in flight.
#
#   gateway.sh -c envoy.yaml [more envoy options]
#
# On the signal: POST /healthcheck/fail (the admin's /ready answers 503, so a
# load balancer stops sending), POST /drain_listeners?graceful (every
# connection is told to close at its next response; the listeners close after
# the drain time), wait until no request is in flight or DRAIN_TIME_S has
# passed, then SIGTERM. Only bash is needed (the admin is spoken to through
# /dev/tcp): the official envoyproxy/envoy image has it, curl it may not.
#
# ENVOY_BIN (envoy), ENVOY_ADMIN (127.0.0.1:9901), DRAIN_TIME_S (10).
set -uo pipefail
envoy_bin="${ENVOY_BIN:-envoy}"
admin="${ENVOY_ADMIN:-127.0.0.1:9901}"
drain_time="${DRAIN_TIME_S:-10}"

# admin METHOD PATH: the response body of one admin request.
admin() {
  local response
  exec 3<>"/dev/tcp/${admin%:*}/${admin##*:}" || return 1
  printf '%s %s HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n' "$1" "$2" >&3
  response="$(cat <&3)"
  exec 3<&-
  printf '%s\n' "${response#*$'\r\n\r\n'}"
}

# Downstream requests in flight on every listener but the admin's.
in_flight() {
  admin GET '/stats?filter=downstream_rq_active' \
    | awk -F': ' '/^http\./ && !/^http\.admin\./ {n += $2} END {print n + 0}'
}

drain() {
  echo "gateway.sh: draining (up to ${drain_time}s)" >&2
  admin POST /healthcheck/fail >/dev/null
  admin POST '/drain_listeners?graceful' >/dev/null
  local deadline=$((SECONDS + drain_time)) n
  while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$pid" 2>/dev/null; do
    n="$(in_flight)" || break
    [ "$n" = 0 ] && break
    sleep 0.2
  done
  echo "gateway.sh: ${n:-?} request(s) in flight; stopping Envoy" >&2
  kill -TERM "$pid" 2>/dev/null
}

"$envoy_bin" "$@" --drain-time-s "$drain_time" --drain-strategy immediate &
pid=$!
trap drain TERM INT
# `wait` returns early when a trapped signal arrives; wait again for the exit.
status=0
while kill -0 "$pid" 2>/dev/null; do
  wait "$pid"
  status=$?
done
exit "$status"
