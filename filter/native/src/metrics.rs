//! The Wasm filter's metrics (`cell_router::metrics`, `KeyMetrics`) on
//! Envoy's dynamic-module stats.
//!
//! Envoy takes metric definitions only while a config is being made, but
//! the filter names per-cell metrics (`cell_router.routed.<cell>`) as cells
//! appear in snapshots. So every fixed name is defined then, as is, and each
//! per-cell family once, with a `cell` label: Envoy shows
//! `dynamicmodulescustom.cell_router.routed.cell.<cell>` on `/stats` and
//! `cell_router_routed{cell="<cell>"}` on `/stats/prometheus`, the same
//! Prometheus series as the Wasm build's (`wasmcustom.cell_router.routed.<cell>`
//! with `envoy.yaml`'s stats_tags).
//!
//! The shared bookkeeping (`Metrics`, `KeyMetrics`) talks to a
//! [`MetricSink`]; [`Slots`] turns its names into those definitions.

use crate::envoy::{ConfigHandle, Kind, Stream};
use cell_router_filter::key_subscription::KeyMetrics;
use cell_router_filter::metrics::{self, MetricKind, MetricSink, Metrics};
use std::collections::HashMap;

/// The label of the per-cell families.
pub const CELL_LABEL: &str = "cell";
/// The label of the per-region family (`forwarded.<region>`).
pub const REGION_LABEL: &str = "region";

/// The labelled families: name, kind and label.
const LABELLED_FAMILIES: [(&str, Kind, &str); 7] = [
    ("routed", Kind::Counter, CELL_LABEL),
    ("shed", Kind::Counter, CELL_LABEL),
    ("unavailable", Kind::Counter, CELL_LABEL),
    ("failover", Kind::Counter, CELL_LABEL),
    ("ramped", Kind::Counter, CELL_LABEL),
    ("ramp_share", Kind::Gauge, CELL_LABEL),
    ("forwarded", Kind::Counter, REGION_LABEL),
];

fn kind(kind: MetricKind) -> Kind {
    match kind {
        MetricKind::Counter => Kind::Counter,
        MetricKind::Gauge => Kind::Gauge,
    }
}

/// What Envoy defined for one filter config.
#[derive(Default)]
pub struct Definitions {
    fixed: HashMap<String, (Kind, usize)>,
    cells: HashMap<&'static str, (Kind, usize)>,
}

/// Records the names `Metrics::define` and `KeyMetrics::define` ask for.
struct Names(Vec<(Kind, String)>);

impl MetricSink for Names {
    fn define(&mut self, k: MetricKind, name: &str) -> Option<u32> {
        self.0.push((kind(k), name.to_string()));
        None
    }
    fn increment(&mut self, _: u32, _: i64) {}
    fn record(&mut self, _: u32, _: u64) {}
}

impl Definitions {
    /// Defines every metric; only while `on_http_filter_config_new` runs.
    /// The key-set metrics only with keys fetched at run time, as in Wasm.
    pub fn define(config: ConfigHandle, with_keys: bool) -> Definitions {
        let mut names = Names(Vec::new());
        let _ = Metrics::define(&mut names);
        if with_keys {
            let _ = KeyMetrics::define(&mut names);
        }
        let mut definitions = Definitions::default();
        for (k, name) in names.0 {
            if let Some(id) = config.define(k, &name, None) {
                definitions.fixed.insert(name, (k, id));
            }
        }
        for (family, k, label) in LABELLED_FAMILIES {
            if let Some(id) = config.define(k, &metrics::name(&[family]), Some(label)) {
                definitions.cells.insert(family, (k, id));
            }
        }
        definitions
    }

    /// How many metrics Envoy took (fixed ones and per-cell families).
    pub fn count(&self) -> usize {
        self.fixed.len() + self.cells.len()
    }
}

/// A metric as the sink's ids name it.
#[derive(Clone, Debug)]
struct Target {
    kind: Kind,
    id: usize,
    cell: Option<String>,
}

/// The ids one `Metrics` holds, each a fixed metric or a family and cell.
/// Bounded like the names `Metrics` asks for (it forgets cells not in force).
#[derive(Default)]
pub struct Slots {
    targets: Vec<Target>,
    by_name: HashMap<String, u32>,
}

/// Past this many distinct names the table starts over (the `Metrics`
/// using it is started over too, see [`Slots::full`]).
const MAX_SLOTS: usize = 4 * metrics::MAX_TRACKED_CELLS + 256;

impl Slots {
    fn resolve(&mut self, definitions: &Definitions, name: &str) -> Option<u32> {
        if let Some(slot) = self.by_name.get(name) {
            return Some(*slot);
        }
        let target = if let Some((kind, id)) = definitions.fixed.get(name) {
            Target {
                kind: *kind,
                id: *id,
                cell: None,
            }
        } else {
            let rest = name.strip_prefix(metrics::PREFIX)?.strip_prefix('.')?;
            let (family, cell) = rest.split_once('.')?;
            let (kind, id) = definitions.cells.get(family)?;
            Target {
                kind: *kind,
                id: *id,
                cell: Some(cell.to_string()),
            }
        };
        if self.targets.len() >= MAX_SLOTS {
            return None;
        }
        let slot = u32::try_from(self.targets.len()).ok()?;
        self.targets.push(target);
        self.by_name.insert(name.to_string(), slot);
        Some(slot)
    }

    /// Whether the table is full: its owner then starts its `Metrics` and
    /// the table over.
    pub fn full(&self) -> bool {
        self.targets.len() >= MAX_SLOTS
    }

    fn get(&self, slot: u32) -> Option<&Target> {
        self.targets.get(usize::try_from(slot).ok()?)
    }
}

/// Where a sink's updates go.
pub enum Via<'s> {
    /// A request's worker thread: labelled counters through the stream.
    Request(&'s Stream),
    /// The main thread: everything through the config.
    Main,
    /// Another thread: unlabelled metrics only (labelled ones are dropped;
    /// the main thread records them).
    Background,
}

/// `MetricSink` over Envoy's stats.
pub struct Sink<'s> {
    pub config: ConfigHandle,
    pub definitions: &'s Definitions,
    pub slots: &'s mut Slots,
    pub via: Via<'s>,
}

impl Sink<'_> {
    fn update(&mut self, slot: u32, value: u64) {
        let Some(target) = self.slots.get(slot) else {
            return;
        };
        match (&self.via, &target.cell) {
            (_, None) => self.config.update(target.kind, target.id, None, value),
            (Via::Main, Some(cell)) => {
                self.config
                    .update(target.kind, target.id, Some(cell), value)
            }
            (Via::Request(stream), Some(cell)) if target.kind == Kind::Counter => {
                stream.increment_counter(target.id, Some(cell), value)
            }
            _ => {}
        }
    }
}

impl MetricSink for Sink<'_> {
    fn define(&mut self, _: MetricKind, name: &str) -> Option<u32> {
        let known = self.slots.by_name.contains_key(name);
        let slot = self.slots.resolve(self.definitions, name)?;
        // A labelled stat exists once touched: a cell's counters appear (at
        // 0) when the cell is first seen, as the Wasm filter's do when it
        // defines them.
        if !known
            && self
                .slots
                .get(slot)
                .is_some_and(|t| t.cell.is_some() && t.kind == Kind::Counter)
        {
            self.update(slot, 0);
        }
        Some(slot)
    }
    fn increment(&mut self, id: u32, delta: i64) {
        // Every increment of the filter is positive.
        if let Ok(delta) = u64::try_from(delta) {
            self.update(id, delta);
        }
    }
    fn record(&mut self, id: u32, value: u64) {
        self.update(id, value);
    }
}
