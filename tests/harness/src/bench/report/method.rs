//! How the benchmark measures, printed under "Method".

pub const METHOD: &str = r#"
- **What runs.** One gateway Envoy per configuration from `envoy/bench/` (the same
  binary, each with its own process and the same listener, routes and clusters; they
  differ only in their HTTP filters and, for (6), the number of cell clusters), one backend Envoy whose three listeners (one per cell) answer
  from `direct_response` and echo the routing headers, and the `cellmap serve`
  sidecar. Only the gateway being measured gets load; the others sit idle. Every
  gateway's routing is checked first: each tenant's request (with a spoofed
  `x-cell-id`) must reach the cell `cellmap` resolves for it.
- **Configurations.** Every gateway routes with one `cluster_header` route (its
  cost does not depend on the number of cells; envoy/README.md, "Routing").
  (1) `plain.yaml`: routes on the `x-cell-id` the client sends, naming every cell
  in turn.
  (2) `cell-router.yaml` with 1,000 tokens, one per tenant, rotated (cache hits);
  *native*: `cell-router-native.yaml`, the same router and plugin configuration
  built as an Envoy dynamic module (`filter/native`), fed the same tokens.
  (3) the same configuration in a separate Envoy fed only unique tokens (a `jti`
  numbers them; a new slice of the pool for every run, so no token repeats).
  (4) `jwt-lua.yaml`: `jwt_authn` (same keys, `claim_to_headers`, `forward: true`
  like the cell router, `jwt_cache_config` of 4,096 like the router's token cache)
  and the Lua lookup in `envoy/bench/cell_lookup.lua` (override table, else
  SipHash-1-3 → slot → cell, then failover — the routing function of
  `mapping/SPEC.md` minus moves and shedding, computed per request, not a
  precomputed tenant table, because users route tenants they have never seen).
  Its unique-token rows run the same file without `jwt_cache_config`: jwt_authn
  then verifies every request whatever the token, which is what unique tokens cost
  it, so its pool need not be unique. (5) `trust-header.yaml`: `jwt_authn` + the
  cell router in `trust_header` mode. Every request carries a bearer token (plain
  Envoy ignores it), so request sizes match. (6) (1), (2) with cached HS256 (Wasm
  and native) and (4) with cached HS256 again with 100 and 1,000 cells: a snapshot, a Lua table and
  gateway clusters of that many cells (cell `i`'s cluster points at backend
  listener `i mod 3`), each with its own sidecar; at 1,000 cells also with the
  traffic on 3 of them (the others weigh 0 in the snapshot and the Lua table,
  and plain Envoy's clients name only those three). (8) (1), (2) with cached
  HS256 (Wasm and native) and (4) with cached HS256 again, paced: each
  connection waits 2 ms before each request (a third of what a gateway serves
  saturated), so p99 is the latency a filter adds, not a queue; compared with
  plain Envoy at the same pace.
- **Where the time goes.** `envoy/bench/probe` is a tiny proxy-wasm filter (a
  measuring instrument, not shipped) that makes exactly the host calls its
  configuration lists. The benchmark counts the real `.wasm`'s host calls for a
  cached token in the wasmtime host and runs the probe twice next to plain Envoy:
  with no calls (Envoy's cost for any Wasm filter: a context per request and the
  callbacks into V8; the probe keeps only the `proxy_on_*` exports the router
  has, as Envoy calls a VM only for events it exports) and with the router's
  calls; the router's own work is what
  remains. The probes route by the client's `x-cell-id`, spread over the same
  cells as plain Envoy's clients and the router's tenants. For the native build, `envoy/bench/native-probe` is a dynamic module
  (no dependencies, not shipped) run twice next to plain Envoy: its filter doing
  nothing (Envoy's cost for any dynamic-module filter), and clearing the route
  cache (Envoy matches the route a second time, as the router needs).
- **What each host call costs.** A gateway with the probe reading the calls to make
  from the request's `x-probe-calls` header; each row of the table repeats one call
  1, 10 and 100 times per request, and the call's cost is the least-squares slope of
  the gateway's CPU per request over the count (what every request costs anyway
  drops out of a slope).
- **Client.** wrk with `tests/harness/src/bench/wrk.lua`: requests are formatted once
  in `init()` and rotated, so the client costs the same in every case. Latency is
  wrk's (closed loop: at a fixed connection count, p99 is mostly queueing, except
  in the paced rows).
- **Pinning and CPU.** On two cores or more every gateway Envoy runs on CPU 0
  (`taskset`, one worker: `--concurrency 1`) and wrk, the backend Envoy, the
  sidecars and the benchmark itself on CPU 1, so the gateway under test has a core
  to itself and is the bottleneck: throughput ratios are then close to the
  gateway's own CPU ratios. *gw CPU* is the gateway's CPU time per request from
  its own `/proc/<pid>/stat` (user + system, all its threads) over the run, so the
  client, the backend and the rest of the machine are not in it.
- **Rounds and spread.** Many short runs: every case once per round, the order
  rotated each round, all runs of a round within a few minutes; a ratio pairs the
  two cases' runs of the same round (slow drifts of the machine cancel) and is the
  median over the rounds, shown with the lowest and highest round. The
  cost-vs-cells rows, the paced rows and the per-call table run at the first
  connection count only.
  *Other CPU* is the machine's busy time not spent by the processes under test
  (other builds or tests on the box) — the noise; with pinning it still takes CPU 0
  from the gateway now and then, which the spreads show.
"#;
