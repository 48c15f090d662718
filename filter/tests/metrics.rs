//! Metric bookkeeping against a recording sink.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::metrics::{MetricKind, MetricSink, Metrics, fixed_names, stat_safe};
use cell_router_filter::subscription::Source;
use cell_router_filter::token::Reason;
use common::*;
use std::collections::HashMap;

#[derive(Default)]
struct Recorder {
    names: Vec<(MetricKind, String)>,
    values: HashMap<u32, i64>,
}

impl Recorder {
    fn value(&self, name: &str) -> i64 {
        let id = self
            .names
            .iter()
            .position(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("{name} not defined"));
        self.values.get(&(id as u32)).copied().unwrap_or(0)
    }
}

impl MetricSink for Recorder {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some(id) = self.names.iter().position(|(_, n)| n == name) {
            return Some(id as u32);
        }
        self.names.push((kind, name.to_string()));
        Some(self.names.len() as u32 - 1)
    }
    fn increment(&mut self, id: u32, delta: i64) {
        *self.values.entry(id).or_default() += delta;
    }
    fn record(&mut self, id: u32, value: u64) {
        self.values.insert(id, value as i64);
    }
}

#[test]
fn fixed_metrics_are_defined_with_their_kinds() {
    let mut sink = Recorder::default();
    Metrics::define(&mut sink);
    let defined: Vec<&str> = sink.names.iter().map(|(_, n)| n.as_str()).collect();
    for name in fixed_names() {
        assert!(defined.contains(&name.as_str()), "{name}");
    }
    for (kind, name) in &sink.names {
        let gauge = name == "cell_router.snapshot.version" || name == "cell_router.snapshot.age_s";
        assert_eq!(*kind == MetricKind::Gauge, gauge, "{name}");
    }
    assert!(defined.contains(&"cell_router.rejected.expired"));
    assert!(defined.contains(&"cell_router.token_cache.hit"));
}

#[test]
fn decisions_are_counted_per_cell_and_reason() {
    let mut sink = Recorder::default();
    let mut metrics = Metrics::define(&mut sink);
    let mut router = Router::from_json(&base_config());
    let good = bearer(&sign("HS256", tenant_claims("t-b")));
    let down = bearer(&sign("HS256", tenant_claims("t-down")));
    let failover = bearer(&sign("HS256", tenant_claims("t-failover")));
    for headers in [
        vec![("authorization", failover.as_str())],
        vec![("authorization", good.as_str())],
        vec![("authorization", good.as_str())],
        vec![("authorization", down.as_str())],
        vec![("authorization", "Bearer a.b.c")],
        vec![],
    ] {
        let decision = router.request(&headers);
        if let Some(hit) = decision.cache_hit {
            metrics.cache(&mut sink, hit);
        }
        metrics.outcome(&mut sink, decision.outcome);
    }
    assert_eq!(sink.value("cell_router.routed.b"), 2);
    assert_eq!(sink.value("cell_router.failover.b"), 0);
    // A failover counts as routed to the cell that took it, and apart.
    assert_eq!(sink.value("cell_router.routed.a"), 1);
    assert_eq!(sink.value("cell_router.failover.a"), 1);
    assert_eq!(sink.value("cell_router.unavailable.e"), 1);
    assert_eq!(sink.value("cell_router.rejected.malformed"), 1);
    assert_eq!(sink.value("cell_router.rejected.missing_token"), 1);
    assert_eq!(sink.value("cell_router.token_cache.hit"), 1);
    assert_eq!(sink.value("cell_router.token_cache.miss"), 4);
    metrics.rejected(&mut sink, Reason::WrongAudience);
    assert_eq!(sink.value("cell_router.rejected.wrong_audience"), 1);

    metrics.gauges(&mut sink, 17, 4);
    assert_eq!(sink.value("cell_router.snapshot.version"), 17);
    assert_eq!(sink.value("cell_router.snapshot.age_s"), 4);
    metrics.snapshot_applied(&mut sink, Source::Sidecar);
    metrics.snapshot_refused(&mut sink, false);
    metrics.fetch_failed(&mut sink, Source::Sidecar);
    metrics.fetch_failed(&mut sink, Source::Sidecar);
    assert_eq!(sink.value("cell_router.snapshot.applied"), 1);
    assert_eq!(sink.value("cell_router.snapshot.refused"), 1);
    assert_eq!(sink.value("cell_router.snapshot.fetch_failures"), 2);
}

#[test]
fn cell_ids_are_made_stat_safe() {
    assert_eq!(stat_safe("eu-west.cell:1"), "eu-west_cell_1");
    let mut sink = Recorder::default();
    let mut metrics = Metrics::define(&mut sink);
    metrics.routed(&mut sink, "eu.1");
    metrics.routed(&mut sink, "eu.1");
    assert_eq!(sink.value("cell_router.routed.eu_1"), 2);
}

#[test]
fn oversized_snapshots_are_counted_apart() {
    let mut sink = Recorder::default();
    let metrics = Metrics::define(&mut sink);
    metrics.snapshot_refused(&mut sink, true);
    metrics.snapshot_refused(&mut sink, false);
    assert_eq!(sink.value("cell_router.snapshot.refused"), 2);
    assert_eq!(sink.value("cell_router.snapshot.refused_too_large"), 1);
    assert!(fixed_names().contains(&"cell_router.snapshot.refused_too_large".to_string()));
}

#[test]
fn cell_metrics_follow_the_installed_snapshot() {
    let mut sink = Recorder::default();
    let mut metrics = Metrics::define(&mut sink);
    // Cells come and go across 200 snapshots of 5 cells each.
    for round in 0..200 {
        let cells: Vec<String> = (0..5).map(|i| format!("cell-{round}-{i}")).collect();
        metrics.retain_cells(|id| cells.iter().any(|c| c == id));
        for cell in &cells {
            metrics.routed(&mut sink, cell);
            metrics.shed(&mut sink, cell);
        }
        assert!(
            metrics.tracked_cells() <= cells.len(),
            "round {round}: {} cells tracked",
            metrics.tracked_cells()
        );
    }
    // A cell that disappears and comes back counts on in the same stat.
    metrics.retain_cells(|id| id == "cell-a");
    metrics.routed(&mut sink, "cell-a");
    metrics.routed(&mut sink, "cell-a");
    metrics.retain_cells(|_| false);
    assert_eq!(metrics.tracked_cells(), 0);
    metrics.retain_cells(|id| id == "cell-a");
    metrics.routed(&mut sink, "cell-a");
    assert_eq!(sink.value("cell_router.routed.cell-a"), 3);
    assert_eq!(sink.value("cell_router.routed.cell-0-0"), 1);
}

#[test]
fn the_persisted_copy_is_counted_apart() {
    let mut sink = Recorder::default();
    let metrics = Metrics::define(&mut sink);
    metrics.snapshot_applied(&mut sink, Source::Persisted);
    metrics.fetch_failed(&mut sink, Source::Persisted);
    metrics.fetch_failed(&mut sink, Source::Persisted);
    assert_eq!(sink.value("cell_router.snapshot.persisted_applied"), 1);
    assert_eq!(
        sink.value("cell_router.snapshot.persisted_fetch_failures"),
        2
    );
    // The sidecar's own counters say nothing about it.
    assert_eq!(sink.value("cell_router.snapshot.applied"), 0);
    assert_eq!(sink.value("cell_router.snapshot.fetch_failures"), 0);
    for name in [
        "cell_router.snapshot.persisted_applied",
        "cell_router.snapshot.persisted_fetch_failures",
    ] {
        assert!(fixed_names().contains(&name.to_string()), "{name}");
    }
}

/// `ramp_share.<cell>`: the basis points a ramping cell takes, as the clock
/// moves; 10,000 once the ramp is over, and once more when a snapshot drops
/// the ramp (then the gauge is left alone).
#[test]
fn ramp_share_gauge_follows_the_clock() {
    let mut sink = Recorder::default();
    let mut metrics = Metrics::define(&mut sink);
    let mut doc = snapshot_doc(1);
    doc.cells[0].failover = Some("b".into());
    doc.cells[0].ramp =
        Some(serde_json::from_value(serde_json::json!({"start": NOW, "duration_s": 100})).unwrap());
    let ramped = cell_router_mapping::Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    let start_ms = NOW * 1000;
    for (at_ms, want) in [
        (start_ms - 5000, 0),
        (start_ms, 0),
        (start_ms + 25_000, 2500),
        (start_ms + 50_000, 5000),
        (start_ms + 99_999, 9999),
        (start_ms + 100_000, 10_000),
    ] {
        metrics.ramp_shares(&mut sink, &ramped, at_ms);
        assert_eq!(sink.value("cell_router.ramp_share.a"), want, "at {at_ms}");
    }
    // Only ramping cells get the gauge.
    assert!(
        !sink
            .names
            .iter()
            .any(|(_, n)| n == "cell_router.ramp_share.b")
    );
    assert!(
        sink.names
            .iter()
            .any(|(k, n)| *k == MetricKind::Gauge && n == "cell_router.ramp_share.a")
    );
    // Mid-ramp, a snapshot without the ramp: the gauge says 10,000.
    metrics.ramp_shares(&mut sink, &ramped, start_ms + 10_000);
    assert_eq!(sink.value("cell_router.ramp_share.a"), 1000);
    metrics.ramp_shares(&mut sink, &snapshot(2), start_ms + 10_000);
    assert_eq!(sink.value("cell_router.ramp_share.a"), 10_000);
}
