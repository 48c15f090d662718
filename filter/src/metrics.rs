//! The filter's metrics, by name. Envoy shows proxy-wasm metrics with a
//! `wasmcustom.` prefix, e.g. `wasmcustom.cell_router.routed.cell-a`; every
//! worker VM defines the same names, so Envoy sums the counters.
//!
//! The host is behind [`MetricSink`] so the bookkeeping is tested natively.

use crate::decide::Outcome;
use crate::subscription::Source;
use crate::token::Reason;
use std::collections::HashMap;

pub const PREFIX: &str = "cell_router";

/// Most cells whose metric ids are held at once: as many as a snapshot can
/// have.
pub const MAX_TRACKED_CELLS: usize = cell_router_mapping::snapshot::MAX_CELLS;

/// Most regions whose `forwarded.<region>` ids are held: as many as a
/// snapshot can have (mapping/SPEC.md, format 2).
pub const MAX_TRACKED_REGIONS: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Where metrics go: proxy-wasm in the filter, a map in tests.
pub trait MetricSink {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment(&mut self, id: u32, delta: i64);
    fn record(&mut self, id: u32, value: u64);
}

#[derive(Clone, Copy, Debug, Default)]
struct CellIds {
    routed: Option<u32>,
    shed: Option<u32>,
    unavailable: Option<u32>,
    failover: Option<u32>,
    ramped: Option<u32>,
}

/// Metric ids, defined once per VM (per cell on first use).
#[derive(Debug, Default)]
pub struct Metrics {
    rejected: HashMap<Reason, u32>,
    cells: HashMap<String, CellIds>,
    /// `ramp_share.<cell>` gauges of cells that have had a ramp.
    ramp_shares: HashMap<String, Option<u32>>,
    /// `forwarded.<region>` counters, by region id.
    forwarded: HashMap<String, Option<u32>>,
    wrong_region: Option<u32>,
    no_pool: Option<u32>,
    region_mismatch: Option<u32>,
    no_snapshot: Option<u32>,
    cache_hit: Option<u32>,
    cache_miss: Option<u32>,
    signature_host: Option<u32>,
    signature_wasm: Option<u32>,
    snapshot_version: Option<u32>,
    snapshot_age: Option<u32>,
    fetch_failures: Option<u32>,
    snapshots_refused: Option<u32>,
    snapshots_too_large: Option<u32>,
    snapshots_applied: Option<u32>,
    persisted_applied: Option<u32>,
    persisted_fetch_failures: Option<u32>,
}

/// Metric names use cell ids; a `.` in an id would add a level to Envoy's
/// stat tree, so it becomes `_` (as would `:`, which some sinks reject).
pub fn stat_safe(id: &str) -> String {
    id.chars()
        .map(|c| if c == '.' || c == ':' { '_' } else { c })
        .collect()
}

pub fn name(parts: &[&str]) -> String {
    let mut out = String::from(PREFIX);
    for part in parts {
        out.push('.');
        out.push_str(part);
    }
    out
}

impl Metrics {
    /// Defines the fixed metrics.
    pub fn define(sink: &mut dyn MetricSink) -> Metrics {
        let counter = |sink: &mut dyn MetricSink, parts: &[&str]| {
            sink.define(MetricKind::Counter, &name(parts))
        };
        let mut metrics = Metrics {
            no_snapshot: counter(sink, &["no_snapshot"]),
            wrong_region: counter(sink, &["rejected", "wrong_region"]),
            no_pool: counter(sink, &["rejected", "no_pool"]),
            region_mismatch: counter(sink, &["rejected", "region_mismatch"]),
            cache_hit: counter(sink, &["token_cache", "hit"]),
            cache_miss: counter(sink, &["token_cache", "miss"]),
            signature_host: counter(sink, &["signature", "host"]),
            signature_wasm: counter(sink, &["signature", "wasm"]),
            snapshot_version: sink.define(MetricKind::Gauge, &name(&["snapshot", "version"])),
            snapshot_age: sink.define(MetricKind::Gauge, &name(&["snapshot", "age_s"])),
            fetch_failures: counter(sink, &["snapshot", "fetch_failures"]),
            snapshots_refused: counter(sink, &["snapshot", "refused"]),
            snapshots_too_large: counter(sink, &["snapshot", "refused_too_large"]),
            snapshots_applied: counter(sink, &["snapshot", "applied"]),
            persisted_applied: counter(sink, &["snapshot", "persisted_applied"]),
            persisted_fetch_failures: counter(sink, &["snapshot", "persisted_fetch_failures"]),
            ..Metrics::default()
        };
        for reason in Reason::ALL {
            if let Some(id) = counter(sink, &["rejected", reason.metric_name()]) {
                metrics.rejected.insert(reason, id);
            }
        }
        metrics
    }

    fn bump(sink: &mut dyn MetricSink, id: Option<u32>) {
        if let Some(id) = id {
            sink.increment(id, 1);
        }
    }

    fn cell(&mut self, sink: &mut dyn MetricSink, cell: &str) -> CellIds {
        if let Some(ids) = self.cells.get(cell) {
            return *ids;
        }
        // Cells only come from the snapshot in force, which `retain_cells`
        // keeps the map to; this only bounds a caller that never calls it.
        if self.cells.len() >= MAX_TRACKED_CELLS {
            self.cells.clear();
        }
        let safe = stat_safe(cell);
        let ids = CellIds {
            routed: sink.define(MetricKind::Counter, &name(&["routed", &safe])),
            shed: sink.define(MetricKind::Counter, &name(&["shed", &safe])),
            unavailable: sink.define(MetricKind::Counter, &name(&["unavailable", &safe])),
            failover: sink.define(MetricKind::Counter, &name(&["failover", &safe])),
            ramped: sink.define(MetricKind::Counter, &name(&["ramped", &safe])),
        };
        self.cells.insert(cell.to_string(), ids);
        ids
    }

    /// Cells whose metric ids are held.
    pub fn tracked_cells(&self) -> usize {
        self.cells.len()
    }

    /// A snapshot was put in force: forget the ids of cells it does not
    /// have, so the map holds at most the cells in force (cells come and go
    /// across snapshots). Envoy keeps the stat itself: a cell that comes back
    /// is defined again under the same name and counts on.
    pub fn retain_cells(&mut self, keep: impl Fn(&str) -> bool) {
        self.cells.retain(|id, _| keep(id));
        self.ramp_shares.retain(|id, _| keep(id));
    }

    /// Records `ramp_share.<cell>`, the share of its tenants' requests a
    /// ramping cell takes at `now_ms`, in basis points (0–10,000), for every
    /// cell of `snapshot` with a ramp (also once it is over: 10,000). A cell
    /// whose ramp was removed is recorded at 10,000 once, then forgotten.
    pub fn ramp_shares(
        &mut self,
        sink: &mut dyn MetricSink,
        snapshot: &cell_router_mapping::Snapshot,
        now_ms: u64,
    ) {
        for cell in snapshot.cells() {
            if cell.ramp.is_none() {
                continue;
            }
            let id = match self.ramp_shares.get(&cell.id) {
                Some(id) => *id,
                None => {
                    if self.ramp_shares.len() >= MAX_TRACKED_CELLS {
                        self.ramp_shares.clear();
                    }
                    let id = sink.define(
                        MetricKind::Gauge,
                        &name(&["ramp_share", &stat_safe(&cell.id)]),
                    );
                    self.ramp_shares.insert(cell.id.clone(), id);
                    id
                }
            };
            if let Some(id) = id {
                sink.record(id, u64::from(cell.ramp_share_bp(now_ms)));
            }
        }
        self.ramp_shares.retain(|id, gauge| {
            let ramping = snapshot
                .cell_index(id)
                .and_then(|i| snapshot.cell(i))
                .is_some_and(|c| c.ramp.is_some());
            if !ramping && let Some(gauge) = gauge {
                sink.record(*gauge, u64::from(cell_router_mapping::hash::BASIS_POINTS));
            }
            ramping
        });
    }

    pub fn routed(&mut self, sink: &mut dyn MetricSink, cell: &str) {
        let id = self.cell(sink, cell).routed;
        Self::bump(sink, id);
    }

    pub fn shed(&mut self, sink: &mut dyn MetricSink, cell: &str) {
        let id = self.cell(sink, cell).shed;
        Self::bump(sink, id);
    }

    /// A request routed to `cell` because its own cell is disabled (also
    /// counted in `routed`).
    pub fn failover(&mut self, sink: &mut dyn MetricSink, cell: &str) {
        let id = self.cell(sink, cell).failover;
        Self::bump(sink, id);
    }

    /// A request routed to `cell` because its own cell is ramping back and
    /// does not take it yet (also counted in `routed`).
    pub fn ramped(&mut self, sink: &mut dyn MetricSink, cell: &str) {
        let id = self.cell(sink, cell).ramped;
        Self::bump(sink, id);
    }

    pub fn unavailable(&mut self, sink: &mut dyn MetricSink, cell: &str) {
        let id = self.cell(sink, cell).unavailable;
        Self::bump(sink, id);
    }

    /// Counts what a decision did (per cell, region or reason).
    pub fn outcome(&mut self, sink: &mut dyn MetricSink, outcome: Outcome<'_>) {
        match outcome {
            Outcome::Routed { cell, reason } => {
                self.routed(sink, cell);
                match reason {
                    "failover" => self.failover(sink, cell),
                    "ramp" => self.ramped(sink, cell),
                    _ => {}
                }
            }
            Outcome::Shed { cell } => self.shed(sink, cell),
            Outcome::Unavailable { cell } => self.unavailable(sink, cell),
            Outcome::Forwarded { region } => self.forwarded(sink, region),
            Outcome::WrongRegion { .. } => self.wrong_region(sink),
            Outcome::NoPool => self.no_pool(sink),
            Outcome::RegionMismatch => self.region_mismatch(sink),
            Outcome::NoSnapshot => self.no_snapshot(sink),
            Outcome::Rejected(reason) => self.rejected(sink, reason),
            Outcome::Readiness { .. } => {}
        }
    }

    /// A request sent to `region`'s gateway (its tenant is homed there).
    pub fn forwarded(&mut self, sink: &mut dyn MetricSink, region: &str) {
        let id = match self.forwarded.get(region) {
            Some(id) => *id,
            None => {
                // Regions come from the snapshot (at most 255); this bounds
                // the map whatever a caller passes.
                if self.forwarded.len() >= MAX_TRACKED_REGIONS {
                    self.forwarded.clear();
                }
                let id = sink.define(
                    MetricKind::Counter,
                    &name(&["forwarded", &stat_safe(region)]),
                );
                self.forwarded.insert(region.to_string(), id);
                id
            }
        };
        Self::bump(sink, id);
    }

    /// A request for a tenant homed elsewhere that was already forwarded once.
    pub fn wrong_region(&self, sink: &mut dyn MetricSink) {
        Self::bump(sink, self.wrong_region);
    }

    /// A request no pool takes.
    pub fn no_pool(&self, sink: &mut dyn MetricSink) {
        Self::bump(sink, self.no_pool);
    }

    /// A request refused because the snapshot in force does not fit the
    /// gateway's region.
    pub fn region_mismatch(&self, sink: &mut dyn MetricSink) {
        Self::bump(sink, self.region_mismatch);
    }

    pub fn rejected(&self, sink: &mut dyn MetricSink, reason: Reason) {
        Self::bump(sink, self.rejected.get(&reason).copied());
    }

    pub fn no_snapshot(&self, sink: &mut dyn MetricSink) {
        Self::bump(sink, self.no_snapshot);
    }

    pub fn cache(&self, sink: &mut dyn MetricSink, hit: bool) {
        Self::bump(sink, if hit { self.cache_hit } else { self.cache_miss });
    }

    /// A token verified, its signature checked by the host or in the VM.
    pub fn verified(&self, sink: &mut dyn MetricSink, by_host: bool) {
        Self::bump(
            sink,
            if by_host {
                self.signature_host
            } else {
                self.signature_wasm
            },
        );
    }

    pub fn fetch_failed(&self, sink: &mut dyn MetricSink, source: Source) {
        Self::bump(
            sink,
            match source {
                Source::Sidecar => self.fetch_failures,
                Source::Persisted => self.persisted_fetch_failures,
            },
        );
    }

    /// A snapshot refused; `too_large`: for its size, before reading it
    /// (counted in both counters).
    pub fn snapshot_refused(&self, sink: &mut dyn MetricSink, too_large: bool) {
        Self::bump(sink, self.snapshots_refused);
        if too_large {
            Self::bump(sink, self.snapshots_too_large);
        }
    }

    pub fn snapshot_applied(&self, sink: &mut dyn MetricSink, source: Source) {
        Self::bump(
            sink,
            match source {
                Source::Sidecar => self.snapshots_applied,
                Source::Persisted => self.persisted_applied,
            },
        );
    }

    pub fn gauges(&self, sink: &mut dyn MetricSink, version: u64, age_s: u64) {
        if let Some(id) = self.snapshot_version {
            sink.record(id, version);
        }
        if let Some(id) = self.snapshot_age {
            sink.record(id, age_s);
        }
    }
}

/// Every fixed metric name, for documentation and tests.
pub fn fixed_names() -> Vec<String> {
    let mut names = vec![
        name(&["no_snapshot"]),
        name(&["rejected", "wrong_region"]),
        name(&["rejected", "no_pool"]),
        name(&["rejected", "region_mismatch"]),
        name(&["token_cache", "hit"]),
        name(&["token_cache", "miss"]),
        name(&["signature", "host"]),
        name(&["signature", "wasm"]),
        name(&["snapshot", "version"]),
        name(&["snapshot", "age_s"]),
        name(&["snapshot", "fetch_failures"]),
        name(&["snapshot", "refused"]),
        name(&["snapshot", "refused_too_large"]),
        name(&["snapshot", "applied"]),
        name(&["snapshot", "persisted_applied"]),
        name(&["snapshot", "persisted_fetch_failures"]),
    ];
    names.extend(
        Reason::ALL
            .iter()
            .map(|r| name(&["rejected", r.metric_name()])),
    );
    names
}
