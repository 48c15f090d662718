//! Format-2 snapshots: pools, regions, pool selection, region homing and
//! the routing function with a region check (`SPEC.md`, "Format 2").

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_mapping::snapshot::encode_slot_table;
use cell_router_mapping::{Draws, Outcome, Snapshot, Source};
use serde_json::{Value, json};

const KEY: &str = "7b1f3c9a2e4d6f80a1c3e5f70b2d4f61";
const SLOTS: usize = 64;

/// Slot `s` is homed in `us` when `s` is even, `eu` when odd.
fn region_table() -> Vec<u16> {
    (0..SLOTS).map(|s| (s % 2) as u16).collect()
}

/// Cells (index: id): 0 voice-us-1, 1 voice-eu-1, 2 sms-us-1, 3 sms-us-2,
/// 4 sms-eu-1, 5 web-us-1, 6 web-eu-1, 7 web-eu-2.
fn doc() -> Value {
    let all = |cell: u16| encode_slot_table(&[cell; SLOTS]);
    let alternate = |a: u16, b: u16| {
        encode_slot_table(
            &(0..SLOTS)
                .map(|s| if s % 4 < 2 { a } else { b })
                .collect::<Vec<_>>(),
        )
    };
    json!({
        "format": 2,
        "version": 7,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": KEY, "slots": SLOTS},
        "regions": [{"id": "us"}, {"id": "eu"}],
        "region_table": encode_slot_table(&region_table()),
        "region_overrides": {"acme-gmbh": "eu"},
        "cells": [
            {"id": "voice-us-1", "pool": "voice", "region": "us"},
            {"id": "voice-eu-1", "pool": "voice", "region": "eu"},
            {"id": "sms-us-1", "pool": "sms", "region": "us", "failover": "sms-us-2"},
            {"id": "sms-us-2", "pool": "sms", "region": "us"},
            {"id": "sms-eu-1", "pool": "sms", "region": "eu"},
            {"id": "web-us-1", "pool": "web", "region": "us"},
            {"id": "web-eu-1", "pool": "web", "region": "eu", "failover": "web-eu-2"},
            {"id": "web-eu-2", "pool": "web", "region": "eu"}
        ],
        "pools": [
            {"id": "voice", "match": {"path_prefixes": ["/voice", "/api/voice"]},
             "slot_tables": {"us": all(0), "eu": all(1)}},
            {"id": "sms", "match": {"authorities": ["sms.example.com"]},
             "slot_tables": {"us": all(2), "eu": all(4)},
             "overrides": {"acme-gmbh": "sms-eu-1"}},
            {"id": "web",
             "slot_tables": {"us": all(5), "eu": alternate(6, 7)}}
        ]
    })
}

fn parse(doc: &Value) -> Snapshot {
    Snapshot::parse(doc.to_string().as_bytes()).unwrap()
}

fn refused(edit: impl FnOnce(&mut Value), path: &str, words: &str) {
    let mut d = doc();
    edit(&mut d);
    let err = Snapshot::parse(d.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.path, path, "{err}");
    assert!(err.message.contains(words), "{err}");
}

/// A tenant homed in `region` (by its slot), with no region override.
fn tenant_in(snapshot: &Snapshot, region: u16, nth: usize) -> String {
    (0..)
        .map(|i| format!("tenant-{i}"))
        .filter(|t| snapshot.home_region(t.as_bytes()) == region)
        .nth(nth)
        .unwrap()
}

#[test]
fn a_format_2_snapshot_parses_with_its_pools_and_regions() {
    let s = parse(&doc());
    assert_eq!(s.format(), 2);
    let pools: Vec<&str> = s.pools().iter().map(|p| p.id.as_str()).collect();
    assert_eq!(pools, ["voice", "sms", "web"]);
    let regions: Vec<&str> = s.regions().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(regions, ["us", "eu"]);
    assert_eq!(s.pool_index("sms"), Some(1));
    assert_eq!(s.region_index("eu"), Some(1));
    assert_eq!(s.region_index("ap"), None);
    assert_eq!(s.default_pool(), Some(2));
    assert_eq!(s.cell(4).unwrap().pool, 1);
    assert_eq!(s.cell(4).unwrap().region, 1);
    assert_eq!(s.pool_overrides(1).get("acme-gmbh").unwrap(), "sms-eu-1");
}

#[test]
fn a_format_1_snapshot_has_one_default_pool_and_region() {
    let doc = json!({
        "version": 1,
        "generated_at": "x",
        "hash": {"algorithm": "siphash-1-3", "key": KEY, "slots": 4},
        "cells": [{"id": "a"}, {"id": "b"}],
        "slot_table": encode_slot_table(&[0, 1, 0, 1]),
    });
    let s = parse(&doc);
    assert_eq!(s.format(), 1);
    assert_eq!(s.pools().len(), 1);
    assert_eq!(s.pools()[0].id, "default");
    assert_eq!(s.regions()[0].id, "default");
    assert_eq!(s.pool_for(b"anything:80", b"/voice/x"), Some(0));
    assert_eq!(s.home_region(b"t"), 0);
    // The gateway's region is ignored: no forwarding in format 1.
    let r = s.resolve_in(b"t", 0, Some(3), true, &Draws::default());
    assert_eq!(r.outcome, s.resolve(b"t", &Draws::default()).outcome);
    assert!(matches!(r.outcome, Outcome::Route { .. }));
}

#[test]
fn pool_selection_follows_the_spec() {
    let s = parse(&doc());
    let cases: &[(&[u8], &[u8], Option<u16>)] = &[
        (b"example.com", b"/voice", Some(0)),
        (b"example.com", b"/voice/", Some(0)),
        (b"example.com", b"/voice/calls/1", Some(0)),
        (b"example.com", b"/VOICE/x", Some(0)),
        (b"example.com", b"/voice;x", Some(0)),
        (b"example.com", b"/voice;v=1/x", Some(0)),
        (b"example.com", b"/voice?x=1", Some(0)),
        (b"example.com", b"/api/voice/1", Some(0)),
        (b"example.com", b"/voicemail", Some(2)),
        (b"example.com", b"/api/voicemail", Some(2)),
        (b"example.com", b"/api", Some(2)),
        (b"sms.example.com", b"/send", Some(1)),
        (b"SMS.Example.COM:8443", b"/send", Some(1)),
        (b"sms.example.com:", b"/send", Some(1)),
        // Document order: voice comes first.
        (b"sms.example.com", b"/voice/x", Some(0)),
        (b"sms.example.com.evil", b"/send", Some(2)),
        (b"", b"", Some(2)),
    ];
    for (authority, path, want) in cases {
        assert_eq!(
            s.pool_for(authority, path),
            *want,
            "{} {}",
            String::from_utf8_lossy(authority),
            String::from_utf8_lossy(path)
        );
    }
    // Without a default pool nothing else matches.
    let mut d = doc();
    d["pools"][2]["match"] = json!({"path_prefixes": ["/web"]});
    let s = parse(&d);
    assert_eq!(s.pool_for(b"example.com", b"/other"), None);
    assert_eq!(s.pool_for(b"example.com", b"/web/x"), Some(2));
}

#[test]
fn tenants_are_homed_by_slot_or_region_override() {
    let s = parse(&doc());
    let key = s.key();
    for i in 0..200 {
        let t = format!("tenant-{i}");
        let slot = key.hash(t.as_bytes()) % SLOTS as u64;
        assert_eq!(s.home_region(t.as_bytes()), (slot % 2) as u16, "{t}");
    }
    assert_eq!(s.home_region(b"acme-gmbh"), 1);
}

#[test]
fn a_tenant_homed_elsewhere_is_forwarded_once_then_refused() {
    let s = parse(&doc());
    let us = s.region_index("us").unwrap();
    let eu = s.region_index("eu").unwrap();
    let t = tenant_in(&s, eu, 0);
    let d = Draws::default();
    let r = s.resolve_in(t.as_bytes(), 0, Some(us), false, &d);
    assert_eq!(r.outcome, Outcome::Forward { region: eu });
    assert_eq!(r.reason(), "forward");
    assert_eq!((r.pool, r.home_region), (0, eu));
    // The home cell in the home region is still reported.
    assert_eq!(r.home, 1);
    let r = s.resolve_in(t.as_bytes(), 0, Some(us), true, &d);
    assert_eq!(r.outcome, Outcome::WrongRegion { region: eu });
    assert_eq!(r.reason(), "wrong_region");
    // At home it routes, forwarded or not.
    for forwarded in [false, true] {
        let r = s.resolve_in(t.as_bytes(), 0, Some(eu), forwarded, &d);
        assert_eq!(r.outcome, Outcome::Route { cell: 1 });
        assert_eq!(r.reason(), "slot");
    }
    // No region check (tools): the home region's cell.
    let r = s.resolve_in(t.as_bytes(), 1, None, false, &d);
    assert_eq!(r.outcome, Outcome::Route { cell: 4 });
}

#[test]
fn region_overrides_and_pool_overrides_route_in_the_home_region() {
    let s = parse(&doc());
    let eu = s.region_index("eu").unwrap();
    let d = Draws::default();
    let r = s.resolve_in(b"acme-gmbh", 1, Some(eu), false, &d);
    assert_eq!(r.source, Source::Override);
    assert_eq!(r.outcome, Outcome::Route { cell: 4 });
    // In another pool the same tenant has no override: its eu slot cell.
    let r = s.resolve_in(b"acme-gmbh", 2, Some(eu), false, &d);
    assert_eq!(r.source, Source::Slot);
    assert!(matches!(r.outcome, Outcome::Route { cell: 6 | 7 }));
    let r = s.resolve_in(b"acme-gmbh", 2, Some(0), false, &d);
    assert_eq!(r.outcome, Outcome::Forward { region: eu });
}

#[test]
fn failover_stays_in_the_region_and_a_dark_region_gets_503() {
    let mut d = doc();
    d["cells"][2]["state"] = json!("disabled");
    let s = parse(&d);
    let us = s.region_index("us").unwrap();
    let t = tenant_in(&s, us, 0);
    let r = s.resolve_in(t.as_bytes(), 1, Some(us), false, &Draws::default());
    assert_eq!(r.outcome, Outcome::Route { cell: 3 });
    assert_eq!(r.reason(), "failover");
    d["cells"][3]["state"] = json!("disabled");
    let s = parse(&d);
    let r = s.resolve_in(t.as_bytes(), 1, Some(us), false, &Draws::default());
    assert_eq!(r.outcome, Outcome::Unavailable { cell: 3 });
}

#[test]
fn validation_refuses_what_format_2_forbids() {
    refused(
        |d| d["slot_table"] = json!("AAAA"),
        "$.slot_table",
        "not in a format-2 snapshot",
    );
    refused(|d| d["overrides"] = json!({}), "$.overrides", "format-2");
    refused(
        |d| {
            d.as_object_mut().unwrap().remove("format");
        },
        "$.regions",
        "only in a format-2 snapshot",
    );
    refused(|d| d["format"] = json!(3), "$.format", "unknown format 3");
    refused(
        |d| {
            d["cells"][0].as_object_mut().unwrap().remove("pool");
        },
        "$.cells[0].pool",
        "missing field",
    );
    refused(
        |d| d["cells"][0]["region"] = json!("ap"),
        "$.cells[0].region",
        "unknown region \"ap\"",
    );
    refused(
        |d| d["cells"][0]["pool"] = json!("fax"),
        "$.cells[0].pool",
        "unknown pool \"fax\"",
    );
    refused(
        |d| d["cells"][2]["failover"] = json!("sms-eu-1"),
        "$.cells[2].failover",
        "failover stays in the cell's pool and region",
    );
    refused(
        |d| d["cells"][2]["failover"] = json!("voice-us-1"),
        "$.cells[2].failover",
        "failover stays",
    );
    refused(
        |d| d["pools"][1]["overrides"]["acme-gmbh"] = json!("sms-us-1"),
        "$.pools[1].overrides[\"acme-gmbh\"]",
        "cell sms-us-1 is in region us but tenant acme-gmbh is homed in eu",
    );
    refused(
        |d| d["pools"][1]["overrides"]["acme-gmbh"] = json!("web-eu-1"),
        "$.pools[1].overrides[\"acme-gmbh\"]",
        "cell web-eu-1 is in pool web, not in pool sms",
    );
    refused(
        |d| d["pools"][0]["slot_tables"]["us"] = json!(encode_slot_table(&[1; SLOTS])),
        "$.pools[0].slot_tables.us",
        "slot 0 points at cell voice-eu-1 (pool voice, region eu)",
    );
    refused(
        |d| {
            d["pools"][0]["slot_tables"]
                .as_object_mut()
                .unwrap()
                .remove("eu");
        },
        "$.pools[0].slot_tables",
        "no slot table for region \"eu\"",
    );
    refused(
        |d| d["pools"][0]["slot_tables"]["ap"] = json!(encode_slot_table(&[0; SLOTS])),
        "$.pools[0].slot_tables.ap",
        "unknown region",
    );
    refused(
        |d| {
            d["pools"][0].as_object_mut().unwrap().remove("match");
        },
        "$.pools[0].match",
        "only the last pool",
    );
    refused(
        |d| d["pools"][0]["match"] = json!({}),
        "$.pools[0].match",
        "must list path_prefixes or authorities",
    );
    refused(
        |d| d["pools"][0]["match"]["path_prefixes"][1] = json!("/Voice"),
        "$.pools[0].match.path_prefixes[1]",
        "lowercase",
    );
    refused(
        |d| d["pools"][1]["match"]["authorities"][0] = json!("sms.example.com:443"),
        "$.pools[1].match.authorities[0]",
        "without a port",
    );
    refused(
        |d| d["pools"][1]["id"] = json!("voice"),
        "$.pools[1].id",
        "duplicate pool id",
    );
    refused(
        |d| d["regions"][1]["id"] = json!("us"),
        "$.regions[1].id",
        "duplicate region id",
    );
    refused(
        |d| d["region_overrides"]["x"] = json!("ap"),
        "$.region_overrides.x",
        "unknown region \"ap\"",
    );
    refused(
        |d| d["region_table"] = json!(encode_slot_table(&[2; SLOTS])),
        "$.region_table",
        "slot 0 points at region index 2, but there are 2 regions",
    );
    refused(
        |d| d["pools"][0]["colour"] = json!(1),
        "$.pools[0].colour",
        "unknown field",
    );
    refused(|d| d["regions"] = json!([]), "$.regions", "1 to 255");
    refused(|d| d["pools"] = json!([]), "$.pools", "1 to 64");
}

#[test]
fn a_tenant_may_appear_once_per_pool_and_in_several_pools() {
    let mut d = doc();
    d["pools"][2]["overrides"] = json!({"acme-gmbh": "web-eu-2"});
    let s = parse(&d);
    let r = s.resolve_in(b"acme-gmbh", 2, Some(1), false, &Draws::default());
    assert_eq!(r.outcome, Outcome::Route { cell: 7 });
    d["pools"][2]["pins"] = json!({"acme-gmbh": "web-eu-1"});
    let err = Snapshot::parse(d.to_string().as_bytes()).unwrap_err();
    assert!(err.path.starts_with("$.pools[2]."), "{err}");
    assert!(err.message.contains("more than once"), "{err}");
}
