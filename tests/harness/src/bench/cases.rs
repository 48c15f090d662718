//! What is measured: the gateway configurations (one Envoy each) and the
//! cases (a gateway plus the tokens sent to it).

use cell_router_kit::tokens::Alg;

/// One running Envoy configuration (`envoy/bench/<template>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Gateway {
    /// (1) routes on the header the client sends; no filter.
    Plain,
    /// (2) the cell router verifying tokens, fed cached tokens only.
    Router,
    /// (3) the same configuration in its own Envoy, fed unique tokens only
    /// (so the cached runs never find their cache emptied by them).
    RouterUnique,
    /// (4) jwt_authn (with its JWT cache) + the Lua lookup, cached tokens.
    JwtLua,
    /// (4) jwt_authn without its JWT cache + the Lua lookup: every request
    /// is verified, whatever the token, which is what unique tokens cost it.
    JwtLuaNoCache,
    /// (5) jwt_authn + the cell router in trust_header mode.
    TrustHeader,
    /// Where the time goes: plain + the probe filter doing nothing.
    ProbeEmpty,
    /// plain + the probe filter making the router's host calls.
    ProbeCalls,
    /// The same router as (2), built natively: the Envoy dynamic module
    /// (`filter/native`, `dist/libcell_router_native.so`).
    RouterNative,
    /// plain + the probe filter repeating the host call the request's
    /// `x-probe-calls` header names: the per-call cost table.
    ProbeTable,
    /// plain + a dynamic module doing nothing (`envoy/bench/native-probe`):
    /// what Envoy spends on any dynamic-module filter.
    NativeProbeEmpty,
    /// plain + that module clearing the route cache: Envoy then matches the
    /// route a second time, as it does for the router.
    NativeProbeClear,
}

impl Gateway {
    pub const ALL: [Gateway; 12] = [
        Gateway::Plain,
        Gateway::Router,
        Gateway::RouterNative,
        Gateway::RouterUnique,
        Gateway::JwtLua,
        Gateway::JwtLuaNoCache,
        Gateway::TrustHeader,
        Gateway::ProbeEmpty,
        Gateway::ProbeCalls,
        Gateway::ProbeTable,
        Gateway::NativeProbeEmpty,
        Gateway::NativeProbeClear,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Gateway::Plain => "plain",
            Gateway::Router => "cell-router",
            Gateway::RouterUnique => "cell-router-unique",
            Gateway::JwtLua => "jwt-lua",
            Gateway::JwtLuaNoCache => "jwt-lua-nocache",
            Gateway::TrustHeader => "trust-header",
            Gateway::ProbeEmpty => "probe-empty",
            Gateway::ProbeCalls => "probe-calls",
            Gateway::RouterNative => "cell-router-native",
            Gateway::ProbeTable => "probe-table",
            Gateway::NativeProbeEmpty => "native-probe-empty",
            Gateway::NativeProbeClear => "native-probe-clear",
        }
    }

    /// The probe gateways (plain + `envoy/bench/probe` or
    /// `envoy/bench/native-probe`), which route on the client's header like
    /// plain.
    pub fn is_probe(self) -> bool {
        self.is_native_probe()
            || matches!(
                self,
                Gateway::ProbeEmpty | Gateway::ProbeCalls | Gateway::ProbeTable
            )
    }

    /// plain + `envoy/bench/native-probe` (a dynamic module).
    pub fn is_native_probe(self) -> bool {
        matches!(self, Gateway::NativeProbeEmpty | Gateway::NativeProbeClear)
    }

    /// The config template in `envoy/bench/`.
    pub fn template(self) -> &'static str {
        match self {
            Gateway::Plain
            | Gateway::ProbeEmpty
            | Gateway::ProbeCalls
            | Gateway::ProbeTable
            | Gateway::NativeProbeEmpty
            | Gateway::NativeProbeClear => "plain.yaml",
            Gateway::Router | Gateway::RouterUnique => "cell-router.yaml",
            Gateway::RouterNative => "cell-router-native.yaml",
            Gateway::JwtLua | Gateway::JwtLuaNoCache => "jwt-lua.yaml",
            Gateway::TrustHeader => "trust-header.yaml",
        }
    }

    /// Whether the cell router's Wasm filter runs in this gateway.
    pub fn has_filter(self) -> bool {
        matches!(
            self,
            Gateway::Router | Gateway::RouterUnique | Gateway::TrustHeader
        )
    }

    /// Whether the cell router routes in this gateway (Wasm or native): its
    /// snapshot version is awaited and checked.
    pub fn routes_by_snapshot(self) -> bool {
        self.has_filter() || self == Gateway::RouterNative
    }

    pub fn has_jwt_authn(self) -> bool {
        matches!(
            self,
            Gateway::JwtLua | Gateway::JwtLuaNoCache | Gateway::TrustHeader
        )
    }
}

/// What the client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tokens {
    /// 1,000 tokens, one per tenant, rotated: the verified-token cache answers.
    Cached(Alg),
    /// A different token on every request.
    Unique(Alg),
}

impl Tokens {
    pub fn alg(self) -> Alg {
        match self {
            Tokens::Cached(alg) | Tokens::Unique(alg) => alg,
        }
    }

    pub fn is_unique(self) -> bool {
        matches!(self, Tokens::Unique(_))
    }

    pub fn describe(self) -> String {
        match self {
            Tokens::Cached(alg) => format!("cached {}", alg.name()),
            Tokens::Unique(alg) => format!("unique {}", alg.name()),
        }
    }
}

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct Case {
    /// Stable id, e.g. `router-cached-rs256`.
    pub id: String,
    /// The numbering: 1 plain, 2 cached, 3 unique, 4 jwt_authn+Lua,
    /// 5 trust_header; 0 for the probes.
    pub group: u8,
    pub gateway: Gateway,
    pub tokens: Tokens,
    /// Cells in the snapshot and the gateway's clusters (3 but for the
    /// cost-vs-cells rows, group 6).
    pub cells: usize,
    /// How many of them the traffic reaches: every one, or the first 3 for
    /// the rows that keep the traffic the same and change only the number
    /// of cells (the others get no tenants, and the plain clients name only
    /// those three).
    pub busy_cells: usize,
    /// Milliseconds each connection waits before each request: 0 saturates
    /// the gateway; the paced rows (group 8) keep it well below capacity, so
    /// their p99 is the latency a filter adds, not a queue.
    pub think_ms: u32,
    /// The per-call table's rows (group 7): the host call the probe
    /// repeats and how many times per request.
    pub probe: Option<(&'static str, u32)>,
}

impl Case {
    fn new(group: u8, gateway: Gateway, tokens: Tokens) -> Case {
        let prefix = match gateway {
            Gateway::Plain => "plain",
            Gateway::Router | Gateway::RouterUnique => "router",
            Gateway::JwtLua | Gateway::JwtLuaNoCache => "jwtlua",
            Gateway::TrustHeader => "trust",
            Gateway::ProbeEmpty => "probe-empty",
            Gateway::ProbeCalls => "probe-calls",
            Gateway::RouterNative => "native",
            Gateway::ProbeTable => "probe-table",
            Gateway::NativeProbeEmpty => "native-probe-empty",
            Gateway::NativeProbeClear => "native-probe-clear",
        };
        let id = match gateway {
            Gateway::Plain
            | Gateway::ProbeEmpty
            | Gateway::ProbeCalls
            | Gateway::ProbeTable
            | Gateway::NativeProbeEmpty
            | Gateway::NativeProbeClear => prefix.to_string(),
            _ => {
                let kind = if tokens.is_unique() {
                    "unique"
                } else {
                    "cached"
                };
                format!(
                    "{prefix}-{kind}-{}",
                    tokens.alg().name().to_ascii_lowercase()
                )
            }
        };
        Case {
            id,
            group,
            gateway,
            tokens,
            cells: DEFAULT_CELLS,
            busy_cells: DEFAULT_CELLS,
            think_ms: 0,
            probe: None,
        }
    }

    /// A per-call table row: the probe making `call` `n` times per request
    /// (`n` = 0: the table's own baseline, the probe reading its header).
    pub fn probe_table(call: &'static str, n: u32) -> Case {
        let mut case = Case::new(7, Gateway::ProbeTable, Tokens::Cached(Alg::HS256));
        case.id = if n == 0 {
            "probe-table-none".into()
        } else {
            format!("probe-table-{call}-x{n}")
        };
        case.probe = Some((call, n));
        case
    }

    /// Whether this case runs at `connections` of `all` (every case at the
    /// first count; the cost-vs-cells rows and the per-call table only
    /// there, to keep the run short).
    pub fn runs_at(&self, connections: u32, all: &[u32]) -> bool {
        !matches!(self.group, 6..=8) || all.first() == Some(&connections)
    }

    /// The same case with each connection waiting `think_ms` before each
    /// request (group 8, id suffix `-paced`).
    pub fn paced(mut self, think_ms: u32) -> Case {
        self.id = format!("{}-paced", self.id);
        self.group = 8;
        self.think_ms = think_ms;
        self
    }

    /// The same case with `cells` cells, traffic on every one (group 6, id
    /// suffix `-c<cells>`).
    pub fn with_cells(self, cells: usize) -> Case {
        self.with_cells_busy(cells, cells)
    }

    /// The same case with `cells` cells of which the traffic reaches the
    /// first `busy` (group 6, id suffix `-c<cells>`, then `-on<busy>` when
    /// not every cell is busy).
    pub fn with_cells_busy(mut self, cells: usize, busy: usize) -> Case {
        let busy = busy.clamp(1, cells.max(1));
        if cells != DEFAULT_CELLS || busy != DEFAULT_CELLS {
            self.id = format!("{}{}", self.id, cells_suffix(cells, busy));
            self.group = 6;
            self.cells = cells;
            self.busy_cells = busy;
        }
        self
    }

    /// The 3-cell case a cost-vs-cells row is compared with.
    pub fn at_default_cells(&self) -> Option<String> {
        (self.group == 6).then(|| {
            self.id
                .trim_end_matches(&cells_suffix(self.cells, self.busy_cells))
                .to_string()
        })
    }

    /// The plain case with the same cells and traffic.
    pub fn plain_twin(&self) -> String {
        if self.think_ms > 0 {
            "plain-paced".into()
        } else if self.group == 6 {
            format!("plain{}", cells_suffix(self.cells, self.busy_cells))
        } else {
            "plain".into()
        }
    }

    /// The cells and busy cells, the key of a case's gateway and snapshot.
    pub fn cell_key(&self) -> (usize, usize) {
        (self.cells, self.busy_cells)
    }

    /// A readable label for tables.
    pub fn label(&self) -> String {
        let label = self.base_label();
        if self.think_ms > 0 {
            format!(
                "{label}, paced (each connection waits {} ms before each request)",
                self.think_ms
            )
        } else if self.group != 6 {
            label
        } else if self.busy_cells == self.cells {
            format!("{label}, {} cells", thousands(self.cells))
        } else {
            format!(
                "{label}, {} cells, traffic on {}",
                thousands(self.cells),
                self.busy_cells
            )
        }
    }

    fn base_label(&self) -> String {
        match self.gateway {
            Gateway::Plain => "plain Envoy, route on client header (every cell in turn)".into(),
            Gateway::Router | Gateway::RouterUnique => {
                format!("cell-router, {}", self.tokens.describe())
            }
            Gateway::RouterNative => {
                format!("cell-router native, {}", self.tokens.describe())
            }
            Gateway::ProbeTable => match self.probe {
                Some((call, n)) if n > 0 => format!("probe: {call} ×{n}"),
                _ => "probe: no call (reads its header)".into(),
            },
            Gateway::JwtLua | Gateway::JwtLuaNoCache => {
                format!("jwt_authn + Lua, {}", self.tokens.describe())
            }
            Gateway::TrustHeader => {
                format!(
                    "jwt_authn + cell-router trust_header, {}",
                    self.tokens.describe()
                )
            }
            Gateway::ProbeEmpty => "plain + a Wasm filter doing nothing (probe)".into(),
            Gateway::ProbeCalls => {
                "plain + a Wasm filter making the router's host calls (probe)".into()
            }
            Gateway::NativeProbeEmpty => "plain + a dynamic module doing nothing (probe)".into(),
            Gateway::NativeProbeClear => {
                "plain + a dynamic module clearing the route cache (probe)".into()
            }
        }
    }

    /// Extra request headers (the plain gateway routes on the client's header).
    /// The plain gateway's clients name every cell in turn (wrk.lua's
    /// `{cells:N}`), as the router's tenants land on every cell: sending
    /// requests to 1,000 clusters costs Envoy more than to 3, whatever
    /// the routing (1,000 connection pools per worker, colder caches).
    pub fn headers(&self) -> Vec<String> {
        if self.gateway == Gateway::ProbeTable {
            let calls = match self.probe {
                Some((call, n)) if n > 0 => format!("{call}*{n}"),
                _ => "none".into(),
            };
            vec![
                "x-cell-id: cell-a".to_string(),
                format!("x-probe-calls: {calls}"),
            ]
        } else if self.gateway == Gateway::Plain || self.gateway.is_probe() {
            // The probes route by the client's header as plain Envoy does, to
            // as many cells as the router's tenants reach: more upstream
            // clusters cost Envoy more (about 1 µs a request from 1 to 3
            // here), which is not the router's work.
            vec![format!("x-cell-id: {{cells:{}}}", self.busy_cells)]
        } else {
            Vec::new()
        }
    }

    /// The id of the (4) case this one is compared with: jwt_authn + Lua with
    /// the same kind of tokens, or `None` for the plain case.
    pub fn baseline_jwt_lua(&self) -> Option<String> {
        if self.gateway == Gateway::Plain || self.gateway.is_probe() {
            return None;
        }
        let kind = if self.tokens.is_unique() {
            "unique"
        } else {
            "cached"
        };
        let cells = if self.group == 6 {
            cells_suffix(self.cells, self.busy_cells)
        } else if self.think_ms > 0 {
            "-paced".into()
        } else {
            String::new()
        };
        Some(format!(
            "jwtlua-{kind}-{}{cells}",
            self.tokens.alg().name().to_ascii_lowercase()
        ))
    }
}

/// Cells of every case but the cost-vs-cells rows.
pub const DEFAULT_CELLS: usize = 3;

/// The id of cell `index` of `cells`: `cell-a`, `cell-b`, `cell-c`, then
/// `cell-0003`, `cell-0004`, ...
pub fn cell_id(index: usize) -> String {
    match index {
        0 => "cell-a".into(),
        1 => "cell-b".into(),
        2 => "cell-c".into(),
        _ => format!("cell-{index:04}"),
    }
}

/// The id suffix of a cost-vs-cells row: `-c<cells>`, and `-on<busy>` when
/// the traffic reaches only `busy` of them.
fn cells_suffix(cells: usize, busy: usize) -> String {
    if busy == cells {
        format!("-c{cells}")
    } else {
        format!("-c{cells}-on{busy}")
    }
}

/// The cell the plain gateway's client names: the last one.
pub fn plain_cell(cells: usize) -> String {
    cell_id(cells.max(1) - 1)
}

pub fn thousands(n: usize) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

/// The cost-vs-cells rows (group 6): plain, the router (cached HS256; Wasm
/// and native) and jwt_authn + Lua (cached HS256), each in its best routing style (one
/// `cluster_header` route), at each of `cells` with traffic on every cell,
/// and at the largest also with traffic on 3 of them (the number of cells
/// alone changes); `router_only` for the smoke run.
pub fn cell_cases(cells: &[usize], router_only: bool) -> Vec<Case> {
    use Alg::HS256;
    let largest = cells.iter().copied().filter(|n| *n > DEFAULT_CELLS).max();
    let mut out = Vec::new();
    let mut keys: Vec<(usize, usize)> = cells
        .iter()
        .filter(|n| **n != DEFAULT_CELLS)
        .map(|&n| (n, n))
        .collect();
    keys.extend(largest.map(|n| (n, DEFAULT_CELLS)));
    for (n, busy) in keys {
        if !router_only {
            out.push(
                Case::new(1, Gateway::Plain, Tokens::Cached(Alg::RS256)).with_cells_busy(n, busy),
            );
        }
        out.push(Case::new(2, Gateway::Router, Tokens::Cached(HS256)).with_cells_busy(n, busy));
        if !router_only {
            out.push(
                Case::new(2, Gateway::RouterNative, Tokens::Cached(HS256)).with_cells_busy(n, busy),
            );
            out.push(Case::new(4, Gateway::JwtLua, Tokens::Cached(HS256)).with_cells_busy(n, busy));
        }
    }
    out
}

/// How long each connection of the paced rows waits before each request:
/// with about 1 ms a request at 16 connections, a third of what a gateway
/// serves saturated.
pub const PACED_THINK_MS: u32 = 2;

/// The paced rows (group 8): plain, the router (Wasm and native) and
/// jwt_authn + Lua with cached HS256 tokens, each connection waiting
/// [`PACED_THINK_MS`] before each request; their p99 is compared with plain
/// Envoy's at the same pace.
pub fn paced_cases() -> Vec<Case> {
    use Alg::{HS256, RS256};
    vec![
        Case::new(1, Gateway::Plain, Tokens::Cached(RS256)).paced(PACED_THINK_MS),
        Case::new(2, Gateway::Router, Tokens::Cached(HS256)).paced(PACED_THINK_MS),
        Case::new(2, Gateway::RouterNative, Tokens::Cached(HS256)).paced(PACED_THINK_MS),
        Case::new(4, Gateway::JwtLua, Tokens::Cached(HS256)).paced(PACED_THINK_MS),
    ]
}

/// The host calls of the per-call table, by the probe's names, and what
/// each does (`envoy/bench/probe`).
pub const TABLE_CALLS: [(&str, &str); 9] = [
    (
        "pairs",
        "proxy_get_header_map_pairs: every request header at once",
    ),
    ("get", "proxy_get_header_map_value: one request header"),
    (
        "replace",
        "proxy_replace_header_map_value: set one request header",
    ),
    (
        "remove",
        "proxy_remove_header_map_value: a header the request lacks",
    ),
    ("time", "proxy_get_current_time_nanoseconds"),
    ("metric", "proxy_increment_metric: one counter"),
    (
        "foreign",
        "proxy_call_foreign_function(\"clear_route_cache\")",
    ),
    ("property_get", "proxy_get_property(request.path)"),
    ("property_set", "proxy_set_property: one filter state value"),
];

/// Calls per request of the per-call table's rows.
pub const TABLE_REPEATS: [u32; 3] = [1, 10, 100];

/// The per-call table's rows (group 7): its baseline, then every call of
/// [`TABLE_CALLS`] at every count of [`TABLE_REPEATS`].
pub fn table_cases() -> Vec<Case> {
    let mut out = vec![Case::probe_table("none", 0)];
    for (call, _) in TABLE_CALLS {
        for n in TABLE_REPEATS {
            out.push(Case::probe_table(call, n));
        }
    }
    out
}

/// Every case, in table order. The plain case sends the cached RS256 tokens
/// too (Envoy ignores them), so every request has the same size. The probes
/// (group 0) send the HS256 tokens of the case they dissect.
pub fn all_cases() -> Vec<Case> {
    use Alg::{ES256, HS256, RS256};
    vec![
        Case::new(1, Gateway::Plain, Tokens::Cached(RS256)),
        Case::new(2, Gateway::Router, Tokens::Cached(HS256)),
        Case::new(2, Gateway::Router, Tokens::Cached(RS256)),
        Case::new(2, Gateway::RouterNative, Tokens::Cached(HS256)),
        Case::new(2, Gateway::RouterNative, Tokens::Cached(RS256)),
        Case::new(3, Gateway::RouterUnique, Tokens::Unique(HS256)),
        Case::new(3, Gateway::RouterUnique, Tokens::Unique(RS256)),
        Case::new(3, Gateway::RouterUnique, Tokens::Unique(ES256)),
        Case::new(4, Gateway::JwtLua, Tokens::Cached(HS256)),
        Case::new(4, Gateway::JwtLua, Tokens::Cached(RS256)),
        Case::new(4, Gateway::JwtLuaNoCache, Tokens::Unique(HS256)),
        Case::new(4, Gateway::JwtLuaNoCache, Tokens::Unique(RS256)),
        Case::new(4, Gateway::JwtLuaNoCache, Tokens::Unique(ES256)),
        Case::new(5, Gateway::TrustHeader, Tokens::Cached(RS256)),
        Case::new(0, Gateway::ProbeEmpty, Tokens::Cached(HS256)),
        Case::new(0, Gateway::ProbeCalls, Tokens::Cached(HS256)),
        Case::new(0, Gateway::NativeProbeEmpty, Tokens::Cached(HS256)),
        Case::new(0, Gateway::NativeProbeClear, Tokens::Cached(HS256)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_cases_name_their_cells_and_their_3_cell_rows() {
        let cases = cell_cases(&[3, 100, 1000], false);
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "plain-c100",
                "router-cached-hs256-c100",
                "native-cached-hs256-c100",
                "jwtlua-cached-hs256-c100",
                "plain-c1000",
                "router-cached-hs256-c1000",
                "native-cached-hs256-c1000",
                "jwtlua-cached-hs256-c1000",
                "plain-c1000-on3",
                "router-cached-hs256-c1000-on3",
                "native-cached-hs256-c1000-on3",
                "jwtlua-cached-hs256-c1000-on3"
            ]
        );
        let all: Vec<String> = all_cases().into_iter().map(|c| c.id).collect();
        for case in &cases {
            assert_eq!(case.group, 6);
            assert!(
                all.contains(&case.at_default_cells().unwrap()),
                "{}",
                case.id
            );
        }
        assert_eq!(
            cases[1].baseline_jwt_lua().as_deref(),
            Some("jwtlua-cached-hs256-c100")
        );
        assert_eq!(
            cases[2].baseline_jwt_lua().as_deref(),
            Some("jwtlua-cached-hs256-c100")
        );
        assert_eq!(cases[4].headers(), ["x-cell-id: {cells:1000}"]);
        assert!(
            cases[5].label().ends_with(", 1,000 cells"),
            "{}",
            cases[5].label()
        );
        // The same traffic as at 3 cells: the plain clients name 3 cells.
        assert_eq!(cases[8].headers(), ["x-cell-id: {cells:3}"]);
        assert_eq!(cases[8].cell_key(), (1000, 3));
        assert_eq!(
            cases[9].at_default_cells().as_deref(),
            Some("router-cached-hs256")
        );
        assert_eq!(
            cases[9].baseline_jwt_lua().as_deref(),
            Some("jwtlua-cached-hs256-c1000-on3")
        );
        assert!(
            cases[9].label().ends_with(", 1,000 cells, traffic on 3"),
            "{}",
            cases[9].label()
        );
        assert_eq!(cases[9].plain_twin(), "plain-c1000-on3");
        assert_eq!(cases[5].plain_twin(), "plain-c1000");
        assert_eq!(cell_cases(&[1000], true).len(), 2);
        assert_eq!(all_cases()[0].headers(), ["x-cell-id: {cells:3}"]);
        // The probes reach as many cells as plain Envoy's clients.
        for probe in all_cases().iter().filter(|c| c.gateway.is_probe()) {
            assert_eq!(probe.headers(), ["x-cell-id: {cells:3}"], "{}", probe.id);
        }
        assert_eq!(plain_cell(3), "cell-c");
    }

    #[test]
    fn paced_cases_compare_with_their_paced_twins() {
        let cases = paced_cases();
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "plain-paced",
                "router-cached-hs256-paced",
                "native-cached-hs256-paced",
                "jwtlua-cached-hs256-paced"
            ]
        );
        for case in &cases {
            assert_eq!(case.group, 8);
            assert_eq!(case.think_ms, PACED_THINK_MS);
            assert_eq!(case.plain_twin(), "plain-paced");
            assert!(case.runs_at(16, &[16, 64]) && !case.runs_at(64, &[16, 64]));
        }
        assert_eq!(
            cases[2].baseline_jwt_lua().as_deref(),
            Some("jwtlua-cached-hs256-paced")
        );
        assert_eq!(cases[0].headers(), ["x-cell-id: {cells:3}"]);
        assert!(
            cases[1]
                .label()
                .ends_with("waits 2 ms before each request)")
        );
        assert_eq!(all_cases()[1].plain_twin(), "plain");
    }

    #[test]
    fn table_cases_name_their_call_and_count() {
        let cases = table_cases();
        assert_eq!(cases.len(), 1 + TABLE_CALLS.len() * TABLE_REPEATS.len());
        assert_eq!(cases[0].id, "probe-table-none");
        assert_eq!(
            cases[0].headers(),
            ["x-cell-id: cell-a", "x-probe-calls: none"]
        );
        let metric = cases
            .iter()
            .find(|c| c.id == "probe-table-metric-x100")
            .unwrap();
        assert_eq!(metric.probe, Some(("metric", 100)));
        assert_eq!(
            metric.headers(),
            ["x-cell-id: cell-a", "x-probe-calls: metric*100"]
        );
        assert!(metric.baseline_jwt_lua().is_none());
        assert!(metric.runs_at(16, &[16, 64]));
        assert!(!metric.runs_at(64, &[16, 64]));
        assert!(all_cases()[0].runs_at(64, &[16, 64]));
    }

    #[test]
    fn every_case_has_its_jwt_lua_baseline() {
        let cases = all_cases();
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        let mut unique_ids = ids.clone();
        unique_ids.sort();
        unique_ids.dedup();
        assert_eq!(unique_ids.len(), ids.len(), "{ids:?}");
        for case in cases
            .iter()
            .filter(|c| !c.gateway.is_probe() && c.group != 1)
        {
            let base = case.baseline_jwt_lua().unwrap();
            {
                assert!(ids.contains(&base.as_str()), "{} → {base}", case.id);
            }
        }
        assert_eq!(cases[6].id, "router-unique-rs256");
        assert_eq!(
            cases[6].baseline_jwt_lua().as_deref(),
            Some("jwtlua-unique-rs256")
        );
        assert!(
            cases
                .iter()
                .filter(|c| c.gateway.is_probe())
                .all(|c| c.baseline_jwt_lua().is_none())
        );
    }
}
