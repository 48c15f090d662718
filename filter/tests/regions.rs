//! Service pools and region homing in the decision (mapping/SPEC.md, format
//! 2): the pool from the request, the pool header, forwarding to the home
//! region and never twice, a disabled region, the gateway's `region`.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::decide::{Action, Outcome, filter_state};
use cell_router_filter::metrics::Metrics;
use common::*;
use serde_json::{Value, json};

fn token_for(tenant: &str) -> String {
    bearer(&sign("HS256", tenant_claims(tenant)))
}

fn table(cells: &[u16]) -> String {
    let slots: Vec<u16> = (0..64).map(|i| cells[i % cells.len()]).collect();
    cell_router_mapping::snapshot::encode_slot_table(&slots)
}

/// Regions us, eu; pools voice (`/voice`, or host voice.example.com) and
/// sms (`/sms`), no default pool. Cells: voice-us (0), voice-eu (1),
/// sms-us (2), sms-eu (3), in `states`. t-us is homed in us, t-eu in eu.
fn pooled(version: u64, states: [&str; 4]) -> Value {
    let region_table = cell_router_mapping::snapshot::encode_slot_table(&[0u16; 64]);
    let ids = ["voice-us", "voice-eu", "sms-us", "sms-eu"];
    let cells: Vec<Value> = ids
        .iter()
        .zip(states)
        .map(|(id, state)| {
            let (pool, region) = id.split_once('-').unwrap();
            json!({"id": id, "pool": pool, "region": region, "state": state, "retry_after_s": 9})
        })
        .collect();
    json!({
        "format": 2,
        "version": version,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "7b1f3c9a2e4d6f80a1c3e5f70b2d4f61", "slots": 64},
        "regions": [{"id": "us"}, {"id": "eu"}],
        "region_table": region_table,
        "region_overrides": {"t-eu": "eu", "t-us": "us"},
        "cells": cells,
        "pools": [
            {"id": "voice", "match": {"path_prefixes": ["/voice"], "authorities": []},
             "slot_tables": {"us": table(&[0]), "eu": table(&[1])}},
            {"id": "sms", "match": {"path_prefixes": ["/sms"]},
             "slot_tables": {"us": table(&[2]), "eu": table(&[3])}},
        ],
    })
}

fn active() -> [&'static str; 4] {
    ["active"; 4]
}

fn router_in(region: Option<&str>, snapshot: Value) -> Router {
    let mut value = base_config();
    value["fallback_snapshot"] = snapshot;
    if let Some(region) = region {
        value["region"] = json!(region);
    }
    Router::from_json(&value)
}

fn set_headers(action: &Action<'_>) -> Vec<(String, String)> {
    match action {
        Action::Continue { set } => set
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect(),
        Action::Respond(reply) => panic!("answered locally: {reply:?}"),
    }
}

#[test]
fn the_pool_comes_from_the_path_and_is_set_with_the_cell() {
    let mut router = router_in(Some("us"), pooled(5, active()));
    let token = token_for("t-us");
    for (path, cell, pool) in [
        ("/voice/calls", "voice-us", "voice"),
        ("/VOICE;v=2/x?y=/sms", "voice-us", "voice"),
        ("/sms", "sms-us", "sms"),
        ("/sms/", "sms-us", "sms"),
    ] {
        let decision = router.request(&[
            ("authorization", &token),
            (":path", path),
            (":authority", "api.example.com"),
            ("x-cell-pool", "sms"),
            ("x-cell-region", "eu"),
            ("x-cell-id", "sms-eu"),
        ]);
        assert_eq!(decision.routed_cell(), Some(cell), "{path}");
        assert_eq!(
            set_headers(&decision.action),
            [
                ("x-cell-id".to_string(), cell.to_string()),
                ("x-cell-snapshot".to_string(), "5".to_string()),
                ("x-cell-pool".to_string(), pool.to_string()),
            ],
            "{path}"
        );
        // Every client copy goes, whatever the answer.
        for name in ["x-cell-pool", "x-cell-region", "x-cell-id"] {
            assert!(decision.remove.contains(&name), "{path}: {name}");
        }
        assert_eq!(decision.pool, Some(pool));
        assert_eq!(decision.region, Some("us"));
    }
}

#[test]
fn no_pool_is_404() {
    let mut router = router_in(Some("us"), pooled(5, active()));
    let token = token_for("t-us");
    for path in ["/voicemail", "/", "/other/voice", "//voice"] {
        let decision = router.request(&[("authorization", &token), (":path", path)]);
        assert_eq!(decision.outcome, Outcome::NoPool, "{path}");
        let reply = decision.reply().unwrap();
        assert_eq!(reply.status, 404);
        assert_eq!(reply.error_code().as_deref(), Some("no_pool"));
        assert_eq!(reply.details, "cell_router_no_pool");
    }
}

#[test]
fn a_tenant_homed_elsewhere_is_forwarded_once() {
    let mut router = router_in(Some("us"), pooled(5, active()));
    let token = token_for("t-eu");
    let decision = router.request(&[
        ("authorization", &token),
        (":path", "/voice/x"),
        ("x-cell-region", "us"),
        ("x-cell-id", "voice-us"),
    ]);
    assert_eq!(decision.outcome, Outcome::Forwarded { region: "eu" });
    assert_eq!(
        set_headers(&decision.action),
        [
            ("x-cell-region".to_string(), "eu".to_string()),
            ("x-cell-forwarded-by".to_string(), "us".to_string()),
        ]
    );
    assert!(decision.remove.contains(&"x-cell-region"));
    assert!(decision.remove.contains(&"x-cell-id"));
    assert_eq!(decision.region, Some("eu"));
    let state: Vec<(String, String)> = filter_state(&decision, None, false)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let has = |k: &str, v: &str| state.contains(&(k.to_string(), v.to_string()));
    assert!(has("cell_router.reason", "forward"), "{state:?}");
    assert!(has("cell_router.pool", "voice"), "{state:?}");
    assert!(has("cell_router.region", "eu"), "{state:?}");

    // Already forwarded once: refused, never forwarded again.
    let decision = router.request(&[
        ("authorization", &token),
        (":path", "/voice/x"),
        ("x-cell-forwarded-by", "eu"),
    ]);
    assert_eq!(decision.outcome, Outcome::WrongRegion { region: "eu" });
    let reply = decision.reply().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code().as_deref(), Some("wrong_region"));
    assert_eq!(reply.header("retry-after"), Some("1"));

    // At its home gateway a forwarded request is routed there.
    let mut eu = router_in(Some("eu"), pooled(5, active()));
    let decision = eu.request(&[
        ("authorization", &token),
        (":path", "/sms/x"),
        ("x-cell-forwarded-by", "us"),
        ("x-cell-region", "eu"),
    ]);
    assert_eq!(decision.routed_cell(), Some("sms-eu"));
    assert!(decision.remove.contains(&"x-cell-region"));
}

#[test]
fn a_disabled_region_answers_503_with_retry_after_and_never_leaves_it() {
    let states = ["active", "disabled", "active", "disabled"];
    let mut eu = router_in(Some("eu"), pooled(6, states));
    let mut us = router_in(Some("us"), pooled(6, states));
    let token = token_for("t-eu");
    for path in ["/voice/x", "/sms/x"] {
        let decision = eu.request(&[("authorization", &token), (":path", path)]);
        assert!(
            matches!(decision.outcome, Outcome::Unavailable { cell } if cell.ends_with("-eu")),
            "{path}: {:?}",
            decision.outcome
        );
        let reply = decision.reply().unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("retry-after"), Some("9"));
        // The US gateway does not serve it either: it forwards.
        let decision = us.request(&[("authorization", &token), (":path", path)]);
        assert_eq!(decision.outcome, Outcome::Forwarded { region: "eu" });
    }
}

#[test]
fn the_gateway_region_must_be_in_the_snapshot() {
    // Two regions and no `region`: the config (its fallback) is refused.
    let mut value = base_config();
    value["fallback_snapshot"] = pooled(5, active());
    let error = config_error(&value);
    assert!(
        error.starts_with("fallback_snapshot: ") && error.contains("no region configured"),
        "{error}"
    );
    value["region"] = json!("ap");
    let error = config_error(&value);
    assert!(
        error.contains("\"ap\"") && error.contains("us, eu"),
        "{error}"
    );
    // Format 1 ignores the region.
    let mut value = base_config();
    value["region"] = json!("ap");
    let router = Router::from_json(&value);
    let snapshot = router.installed.as_ref().unwrap().snapshot();
    assert_eq!(snapshot.local_region(Some("ap")), Ok(None));
    // One region needs no `region`.
    let mut single = pooled(5, active());
    single["regions"] = json!([{"id": "us"}]);
    single["region_overrides"] = json!({});
    single["cells"] = json!([
        {"id": "voice-us", "pool": "voice", "region": "us"},
        {"id": "sms-us", "pool": "sms", "region": "us"},
    ]);
    single["pools"][0]["slot_tables"] = json!({"us": table(&[0])});
    single["pools"][1]["slot_tables"] = json!({"us": table(&[1])});
    let mut router = router_in(None, single);
    let decision = router.request(&[("authorization", &token_for("t-eu")), (":path", "/sms")]);
    assert_eq!(decision.routed_cell(), Some("sms-us"));
}

#[test]
fn format_1_sets_no_pool_header() {
    let mut router = Router::from_json(&base_config());
    let decision = router.request(&[
        ("authorization", &token_for("t-b")),
        (":path", "/voice"),
        ("x-cell-forwarded-by", "eu"),
    ]);
    assert_eq!(decision.routed_cell(), Some("b"));
    assert_eq!(set_headers(&decision.action).len(), 2);
    assert_eq!(decision.pool, None);
    assert_eq!(decision.region, None);
}

#[derive(Default)]
struct Recorder {
    names: Vec<String>,
    values: Vec<i64>,
}

impl cell_router_filter::metrics::MetricSink for Recorder {
    fn define(&mut self, _: cell_router_filter::metrics::MetricKind, name: &str) -> Option<u32> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Some(i as u32);
        }
        self.names.push(name.to_string());
        self.values.push(0);
        Some(self.names.len() as u32 - 1)
    }
    fn increment(&mut self, id: u32, delta: i64) {
        self.values[id as usize] += delta;
    }
    fn record(&mut self, id: u32, value: u64) {
        self.values[id as usize] = value as i64;
    }
}

impl Recorder {
    fn value(&self, name: &str) -> i64 {
        self.names
            .iter()
            .position(|n| n == name)
            .map_or(0, |i| self.values[i])
    }
}

#[test]
fn forwards_and_refusals_are_counted() {
    let mut sink = Recorder::default();
    let mut metrics = Metrics::define(&mut sink);
    let mut router = router_in(Some("us"), pooled(5, active()));
    let eu = token_for("t-eu");
    for headers in [
        vec![("authorization", eu.as_str()), (":path", "/voice")],
        vec![("authorization", eu.as_str()), (":path", "/sms")],
        vec![
            ("authorization", eu.as_str()),
            (":path", "/sms"),
            ("x-cell-forwarded-by", "eu"),
        ],
        vec![("authorization", eu.as_str()), (":path", "/fax")],
    ] {
        let decision = router.request(&headers);
        metrics.outcome(&mut sink, decision.outcome);
    }
    assert_eq!(sink.value("cell_router.forwarded.eu"), 2);
    assert_eq!(sink.value("cell_router.rejected.wrong_region"), 1);
    assert_eq!(sink.value("cell_router.rejected.no_pool"), 1);
}
