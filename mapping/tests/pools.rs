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
fn a_gateway_region_must_be_in_a_format_2_snapshot() {
    let s = parse(&doc());
    assert_eq!(s.local_region(Some("eu")), Ok(Some(1)));
    let err = s.local_region(Some("ap")).unwrap_err();
    assert!(
        err.contains("\"ap\" is not in the snapshot (its regions: us, eu)"),
        "{err}"
    );
    let err = s.local_region(None).unwrap_err();
    assert!(
        err.contains("2 regions (us, eu) and this gateway has no region"),
        "{err}"
    );
    // One region: no setting needed.
    let mut one = doc();
    one["regions"] = json!([{"id": "us"}]);
    one["region_table"] = json!(encode_slot_table(&[0; SLOTS]));
    one["region_overrides"] = json!({});
    let cells: Vec<Value> = one["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["region"] == "us")
        .cloned()
        .collect();
    one["cells"] = json!(cells);
    let ids: Vec<&str> = cells.iter().map(|c| c["id"].as_str().unwrap()).collect();
    let all = |id: &str| {
        let i = ids.iter().position(|c| *c == id).unwrap() as u16;
        json!({"us": encode_slot_table(&[i; SLOTS])})
    };
    one["pools"][0]["slot_tables"] = all("voice-us-1");
    one["pools"][1]["slot_tables"] = all("sms-us-1");
    one["pools"][1]["overrides"] = json!({});
    one["pools"][2]["slot_tables"] = all("web-us-1");
    let one = parse(&one);
    assert_eq!(one.local_region(None), Ok(Some(0)));
    assert!(one.local_region(Some("eu")).is_err());
    // Format 1 ignores the setting.
    let f1 = json!({
        "version": 1,
        "generated_at": "x",
        "hash": {"algorithm": "siphash-1-3", "key": KEY, "slots": 4},
        "cells": [{"id": "a"}],
        "slot_table": encode_slot_table(&[0; 4]),
    });
    assert_eq!(parse(&f1).local_region(Some("anywhere")), Ok(None));
    assert_eq!(parse(&f1).local_region(None), Ok(None));
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

mod pooled_gen;

use cell_router_mapping::Resolution;
use proptest::prelude::*;

/// A resolution with cells and regions by id (cell indexes shift when
/// another pool gains or loses cells).
fn described(s: &Snapshot, r: &Resolution) -> String {
    let cell = |i: u16| s.cell(i).map_or("?".to_string(), |c| c.id.clone());
    let region = |i: u16| s.region(i).map_or("?".to_string(), |r| r.id.clone());
    let outcome = match r.outcome {
        Outcome::Route { cell: c } => format!("route {}", cell(c)),
        Outcome::Shed {
            cell: c,
            retry_after_s,
        } => format!("shed {} {retry_after_s}", cell(c)),
        Outcome::Unavailable { cell: c } => format!("unavailable {}", cell(c)),
        Outcome::Forward { region: g } => format!("forward {}", region(g)),
        Outcome::WrongRegion { region: g } => format!("wrong_region {}", region(g)),
    };
    let ramp = r
        .ramp
        .map(|step| format!("{} {} {}", cell(step.cell), step.share_bp, step.kept));
    format!(
        "{outcome}; home {} in {}; slot {}; {:?}; {}; ramp {ramp:?}",
        cell(r.home),
        region(r.home_region),
        r.slot,
        r.source,
        r.reason()
    )
}

fn some_draws() -> Vec<Draws<'static>> {
    let mut out = Vec::new();
    for (split_key, shed) in [(&b""[..], 0u16), (b"user-1", 2999), (b"u", 9999)] {
        for now_ms in [0, 1_500_000, u64::MAX] {
            out.push(Draws::new(split_key, shed, now_ms));
        }
    }
    out
}

fn probes(g: &pooled_gen::PooledGen, extra: &[String]) -> Vec<String> {
    g.entries
        .iter()
        .map(|e| e.0.clone())
        .chain(g.region_overrides.iter().map(|e| e.0.clone()))
        .chain(extra.iter().cloned())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Changing another pool (its cells' states, its slot tables, its
    /// overrides, pins and moves) never changes where a tenant goes in
    /// this pool.
    #[test]
    fn another_pool_never_moves_a_tenant(
        g in pooled_gen::strategy(),
        other in any::<u8>(),
        new_cells in prop::collection::vec(
            prop::collection::vec((0u8..3, 0.0f64..=1.0, any::<bool>()), 1..=3), 3),
        new_slots in prop::collection::vec(prop::collection::vec(any::<u8>(), 40), 3),
        new_entries in prop::collection::vec(
            ("[a-d]{1,6}", 0u8..3, any::<u8>(), any::<u8>(), 0.0f64..=100.0), 0..30),
        extra in prop::collection::vec("[a-e]{0,6}", 0..10),
    ) {
        let q = usize::from(other) % g.pools;
        let mut h = g.clone();
        for r in 0..3 {
            h.group_cells[q * 3 + r] = new_cells[r].clone();
            h.pool_slots[q * 3 + r] = new_slots[r].clone();
        }
        h.entries.retain(|e| usize::from(e.1) % g.pools != q);
        h.entries.extend(new_entries.iter().map(|(t, kind, a, b, pc)| {
            (t.clone(), q as u8, *kind, *a, *b, *pc)
        }));
        let (a, b) = (parse(&g.to_json()), parse(&h.to_json()));
        for tenant in probes(&g, &extra) {
            for p in (0..g.pools as u16).filter(|&p| usize::from(p) != q) {
                for local in std::iter::once(None).chain((0..g.regions as u16).map(Some)) {
                    for forwarded in [false, true] {
                        for draws in some_draws() {
                            let t = tenant.as_bytes();
                            prop_assert_eq!(
                                described(&a, &a.resolve_in(t, p, local, forwarded, &draws)),
                                described(&b, &b.resolve_in(t, p, local, forwarded, &draws))
                            );
                        }
                    }
                }
            }
        }
    }

    /// Failover (and ramps) never leave the tenant's home region or the
    /// pool: at home every outcome names a cell of the pool in the home
    /// region; elsewhere the request goes (once) to the home region.
    #[test]
    fn failover_never_crosses_a_region(
        g in pooled_gen::strategy(),
        extra in prop::collection::vec("[a-e]{0,6}", 0..10),
    ) {
        let s = parse(&g.to_json());
        for tenant in probes(&g, &extra) {
            let t = tenant.as_bytes();
            let home = s.home_region(t);
            prop_assert_eq!(usize::from(home), g.home(&tenant));
            for p in 0..g.pools as u16 {
                for local in std::iter::once(None).chain((0..g.regions as u16).map(Some)) {
                    for forwarded in [false, true] {
                        for draws in some_draws() {
                            let r = s.resolve_in(t, p, local, forwarded, &draws);
                            prop_assert_eq!(r.home_region, home);
                            prop_assert_eq!(r.pool, p);
                            match (local, r.outcome) {
                                (Some(l), Outcome::Forward { region }) => {
                                    prop_assert!(l != home && !forwarded && region == home);
                                }
                                (Some(l), Outcome::WrongRegion { region }) => {
                                    prop_assert!(l != home && forwarded && region == home);
                                }
                                (local, _) => {
                                    prop_assert!(local.is_none_or(|l| l == home));
                                    let cell = s.cell(r.final_cell()).unwrap();
                                    prop_assert_eq!((cell.pool, cell.region), (p, home));
                                    let home_cell = s.cell(r.home).unwrap();
                                    prop_assert_eq!((home_cell.pool, home_cell.region), (p, home));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// A format-1 document and the equivalent format-2 document with one
    /// pool and one region route every request identically; so does the
    /// explicit migration (`to_pooled_doc`) of the format-1 snapshot.
    #[test]
    fn format_1_and_its_format_2_equivalent_route_identically(
        mut g in pooled_gen::strategy(),
        extra in prop::collection::vec("[a-e]{0,6}", 0..10),
    ) {
        g.regions = 1;
        g.pools = 1;
        g.default_pool = true;
        let v2 = g.to_json();
        // The same snapshot written as format 1.
        let pool = &v2["pools"][0];
        let cells: Vec<Value> = v2["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.as_object_mut().unwrap().remove("pool");
                c.as_object_mut().unwrap().remove("region");
                c
            })
            .collect();
        let v1 = json!({
            "version": v2["version"],
            "generated_at": v2["generated_at"],
            "hash": v2["hash"],
            "cells": cells,
            "slot_table": pool["slot_tables"]["r0"],
            "overrides": pool["overrides"],
            "pins": pool["pins"],
            "moves": pool["moves"],
        });
        let (one, two) = (parse(&v1), parse(&v2));
        let migrated = Snapshot::parse(one.to_pooled_doc().to_json().as_bytes()).unwrap();
        prop_assert_eq!(migrated.format(), 2);
        prop_assert_eq!(one.to_doc(), two.to_doc());
        for tenant in probes(&g, &extra) {
            let t = tenant.as_bytes();
            for draws in some_draws() {
                let want = one.resolve(t, &draws);
                for s in [&two, &migrated] {
                    prop_assert_eq!(s.resolve(t, &draws), want);
                    for local in [None, Some(0)] {
                        for forwarded in [false, true] {
                            prop_assert_eq!(s.resolve_in(t, 0, local, forwarded, &draws), want);
                        }
                    }
                }
            }
        }
        for (authority, path) in [(&b"x:1"[..], &b"/p0"[..]), (b"", b""), (b"A", b"/voice")] {
            prop_assert_eq!(one.pool_for(authority, path), Some(0));
            prop_assert_eq!(two.pool_for(authority, path), Some(0));
            prop_assert_eq!(migrated.pool_for(authority, path), Some(0));
        }
    }
}
