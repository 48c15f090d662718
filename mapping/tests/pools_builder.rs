//! The format-2 builder's promises (SPEC.md, "Builder", "Pools and
//! regions"): region homing never changes for a known tenant unless asked,
//! a change in one pool never moves a tenant of another, and each pool's
//! cells share their region's tenants by weight.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_mapping::builder::load::Load;
use cell_router_mapping::builder::pools::{
    PoolsBuild, PoolsBuildOptions, PoolsSpec, PoolsView, build_pools,
};
use cell_router_mapping::{Draws, Outcome, PathError, Snapshot};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const KEY: &str = "00112233445566778899aabbccddeeff";
const AT: &str = "2026-01-01T00:00:00Z";

fn example_spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/spec-pools.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A spec: regions (id, weight), cells (id, pool, region, weight), pools
/// in order (the last without `match`).
fn spec_json(slots: u32, regions: &[(&str, f64)], cells: &[(&str, &str, &str, f64)]) -> Value {
    let mut pools: Vec<String> = Vec::new();
    for (_, pool, _, _) in cells {
        if !pools.contains(&pool.to_string()) {
            pools.push(pool.to_string());
        }
    }
    let n = pools.len();
    json!({
        "format": 2,
        "hash": {"key": KEY, "slots": slots},
        "regions": regions.iter().map(|(id, w)| json!({"id": id, "weight": w})).collect::<Vec<_>>(),
        "cells": cells.iter().map(|(id, pool, region, w)| json!({"id": id, "pool": pool, "region": region, "weight": w})).collect::<Vec<_>>(),
        "pools": pools.iter().enumerate().map(|(i, p)| if i + 1 < n {
            json!({"id": p, "match": {"path_prefixes": [format!("/{p}")]}})
        } else {
            json!({"id": p})
        }).collect::<Vec<_>>(),
    })
}

struct Inputs<'a> {
    previous: Option<&'a Snapshot>,
    known: Option<&'a [String]>,
    rehome: &'a [&'a str],
    load: Option<&'a Load>,
}

fn try_build(doc: &Value, inputs: Inputs<'_>) -> Result<PoolsBuild, PathError> {
    let spec = PoolsSpec::parse(doc.to_string().as_bytes())?;
    let rehome: BTreeSet<String> = inputs.rehome.iter().map(|t| t.to_string()).collect();
    build_pools(
        &spec,
        &PoolsBuildOptions {
            previous: inputs.previous,
            known_tenants: inputs.known,
            rehome: &rehome,
            load: inputs.load,
            generated_at: AT,
        },
    )
}

fn fresh(doc: &Value) -> PoolsBuild {
    try_build(
        doc,
        Inputs {
            previous: None,
            known: None,
            rehome: &[],
            load: None,
        },
    )
    .unwrap()
}

fn next(doc: &Value, previous: &Snapshot, known: &[String]) -> PoolsBuild {
    try_build(
        doc,
        Inputs {
            previous: Some(previous),
            known: Some(known),
            rehome: &[],
            load: None,
        },
    )
    .unwrap()
}

fn tenants(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// (home region, cell before states) of every tenant in every pool, from
/// the router's own functions.
fn placements(s: &Snapshot, tenants: &[String]) -> BTreeMap<(String, String), (String, String)> {
    let mut out = BTreeMap::new();
    for (p, pool) in s.pools().iter().enumerate() {
        for t in tenants {
            let home = s.home_region(t.as_bytes());
            let r = s.resolve_in(t.as_bytes(), p as u16, Some(home), false, &Draws::default());
            let region = s.regions()[usize::from(home)].id.clone();
            out.insert(
                (pool.id.clone(), t.clone()),
                (region, s.cells()[usize::from(r.home)].id.clone()),
            );
        }
    }
    out
}

/// Per region, the cell id at every slot of a pool's tables.
fn table_ids(build: &PoolsBuild, pool: &str) -> Vec<Vec<String>> {
    let view = view_of(build);
    let p = view.pool_index(pool).unwrap();
    (0..build.doc.regions.len())
        .map(|r| {
            (0..build.doc.hash.slots as usize)
                .map(|s| view.table_cell(p, r, s).unwrap().to_string())
                .collect()
        })
        .collect()
}

fn view_of(build: &PoolsBuild) -> PoolsView<'_> {
    PoolsView::new(&build.doc).unwrap()
}

#[test]
fn the_example_spec_builds_a_snapshot_the_router_reads() {
    let built = fresh(&example_spec());
    let s = &built.snapshot;
    assert_eq!(s.format(), 2);
    assert_eq!(
        s.regions()
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["us", "eu"]
    );
    // Regions by weight 2:1 over 65,536 slots, largest remainder.
    let report = &built.report;
    assert_eq!(
        report
            .regions
            .iter()
            .map(|r| r.slots_after)
            .collect::<Vec<_>>(),
        [43_691, 21_845]
    );
    // sms in us: weights 1:2 over the region's own 43,691 slots.
    let sms = report.pools.iter().find(|p| p.id == "sms").unwrap();
    let us = sms.regions.iter().find(|r| r.region == "us").unwrap();
    assert_eq!(us.home_slots, 43_691);
    assert_eq!(
        us.cells.iter().map(|c| c.slots_after).collect::<Vec<_>>(),
        [14_564, 29_127]
    );
    // The region override and the pool override route acme-gmbh to eu.
    let voice = s.pool_index("voice").unwrap();
    assert_eq!(s.pool_for(b"api.example.com", b"/voice/calls"), Some(voice));
    assert_eq!(
        s.pool_for(b"api.example.com", b"/sms/send"),
        s.pool_index("sms")
    );
    let eu = s.region_index("eu").unwrap();
    assert_eq!(s.home_region(b"acme-gmbh"), eu);
    let r = s.resolve_in(b"acme-gmbh", voice, Some(eu), false, &Draws::default());
    assert_eq!(
        r.outcome,
        Outcome::Route {
            cell: s.cell_index("voice-eu-1").unwrap()
        }
    );
    // Same inputs, same bytes.
    assert_eq!(fresh(&example_spec()).json, built.json);
}

#[test]
fn each_cell_gets_its_weight_of_its_regions_tenants_without_aliasing() {
    // Two regions 1:1 and two cells 1:1 per region: allocated over all slots
    // at once, `us eu us eu` and `a b a b` would send every us tenant to a.
    let doc = spec_json(
        4096,
        &[("us", 1.0), ("eu", 1.0)],
        &[
            ("a-us", "p", "us", 1.0),
            ("b-us", "p", "us", 1.0),
            ("a-eu", "p", "eu", 1.0),
            ("b-eu", "p", "eu", 1.0),
        ],
    );
    let built = fresh(&doc);
    let mut per_cell: BTreeMap<String, usize> = BTreeMap::new();
    let ts = tenants("t", 20_000);
    for ((_, _), (_, cell)) in placements(&built.snapshot, &ts) {
        *per_cell.entry(cell).or_default() += 1;
    }
    for (cell, n) in &per_cell {
        let share = *n as f64 / ts.len() as f64;
        assert!(
            (0.22..0.28).contains(&share),
            "{cell} has {share:.3} of the tenants, expected about 0.25: {per_cell:?}"
        );
    }
    assert_eq!(per_cell.len(), 4);
}

#[test]
fn changing_one_pools_cells_moves_no_tenant_of_another_pool() {
    let regions = [("us", 1.0), ("eu", 1.0)];
    let before = spec_json(
        8192,
        &regions,
        &[
            ("v-us-1", "voice", "us", 1.0),
            ("v-eu-1", "voice", "eu", 1.0),
            ("s-us-1", "sms", "us", 1.0),
            ("s-us-2", "sms", "us", 1.0),
            ("s-eu-1", "sms", "eu", 1.0),
        ],
    );
    let first = fresh(&before);
    // voice gains a cell in us and its eu cell doubles its weight (alone,
    // no effect); sms is unchanged.
    let after = spec_json(
        8192,
        &regions,
        &[
            ("v-us-1", "voice", "us", 1.0),
            ("v-us-2", "voice", "us", 3.0),
            ("v-eu-1", "voice", "eu", 2.0),
            ("s-us-1", "sms", "us", 1.0),
            ("s-us-2", "sms", "us", 1.0),
            ("s-eu-1", "sms", "eu", 1.0),
        ],
    );
    let ts = tenants("t", 5_000);
    let known = &ts[..2_500];
    let second = next(&after, &first.snapshot, known);
    let old = placements(&first.snapshot, &ts);
    let new = placements(&second.snapshot, &ts);
    let mut voice_moved = 0;
    for (key, place) in &old {
        let (pool, tenant) = key;
        if pool == "sms" {
            assert_eq!(&new[key], place, "sms tenant {tenant} moved");
        } else if known.contains(tenant) {
            assert_eq!(&new[key], place, "known voice tenant {tenant} moved");
        } else if &new[key] != place {
            voice_moved += 1;
            assert_eq!(
                new[key].1, "v-us-2",
                "{tenant} moved elsewhere than the new cell"
            );
        }
    }
    // The new cell takes 3/4 of us: about 3/4 of the unknown us tenants.
    assert!(
        (800..1_100).contains(&voice_moved),
        "{voice_moved} unknown voice tenants moved"
    );
    // sms's tables name the same cell at every slot (the bytes differ: cell
    // indexes are global and voice gained a cell before sms's), and the
    // region table is byte for byte the same.
    assert!(second.doc.region_table == first.doc.region_table);
    assert_eq!(table_ids(&second, "sms"), table_ids(&first, "sms"));
    assert!(second.doc.pools[1].pins.is_empty());
    let voice = second
        .report
        .pools
        .iter()
        .find(|p| p.id == "voice")
        .unwrap();
    let us = voice.regions.iter().find(|r| r.region == "us").unwrap();
    // Exactly the new cell's quota of us's own slots moved.
    assert_eq!(us.slots_moved, us.cells[1].slots_after);
    assert_eq!(us.cells[1].slots_after, us.home_slots * 3 / 4);
    let eu = voice.regions.iter().find(|r| r.region == "eu").unwrap();
    assert_eq!(eu.slots_moved, 0);
    assert!(voice.pins_added > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any change to pool a's cells (weights, states, a cell added or
    /// removed) leaves every tenant of pool b where it was, and every known
    /// tenant's home region.
    #[test]
    fn a_change_in_one_pool_never_moves_another_pools_tenants(
        weights in prop::collection::vec(0u32..4, 4),
        drain in prop::collection::vec(any::<bool>(), 4),
        add in any::<bool>(),
        remove in any::<bool>(),
    ) {
        let regions = [("us", 2.0), ("eu", 1.0)];
        let cells = |a: &[(String, String, f64)]| -> Value {
            let mut list: Vec<(String, String, String, f64)> = a
                .iter()
                .map(|(id, r, w)| (id.clone(), "a".to_string(), r.clone(), *w))
                .collect();
            list.push(("b-us".into(), "b".into(), "us".into(), 1.0));
            list.push(("b-us-2".into(), "b".into(), "us".into(), 2.0));
            list.push(("b-eu".into(), "b".into(), "eu".into(), 1.0));
            let refs: Vec<(&str, &str, &str, f64)> = list
                .iter()
                .map(|(i, p, r, w)| (i.as_str(), p.as_str(), r.as_str(), *w))
                .collect();
            spec_json(2048, &regions, &refs)
        };
        let base: Vec<(String, String, f64)> = vec![
            ("a-us-1".into(), "us".into(), 1.0),
            ("a-us-2".into(), "us".into(), 1.0),
            ("a-eu-1".into(), "eu".into(), 1.0),
            ("a-eu-2".into(), "eu".into(), 1.0),
        ];
        let first = fresh(&cells(&base));
        let mut changed: Vec<(String, String, f64)> = base
            .iter()
            .zip(&weights)
            .map(|((id, r, _), w)| (id.clone(), r.clone(), f64::from(*w)))
            .collect();
        // Keep an active cell with weight in each region.
        changed[0].2 = changed[0].2.max(1.0);
        changed[2].2 = changed[2].2.max(1.0);
        if remove {
            changed.remove(3);
        }
        if add {
            changed.push(("a-us-3".into(), "us".into(), 2.0));
        }
        let mut doc = cells(&changed);
        for (i, d) in drain.iter().enumerate() {
            // Draining a cell keeps its slots (never the first: it keeps
            // each region able to place new tenants).
            if *d && i != 0 && i != 2 && i < changed.len() {
                doc["cells"][i]["state"] = json!("draining");
            }
        }
        let ts = tenants("x", 1_500);
        let known = &ts[..700];
        let second = next(&doc, &first.snapshot, known);
        let old = placements(&first.snapshot, &ts);
        let new = placements(&second.snapshot, &ts);
        for ((pool, tenant), place) in &old {
            let now = &new[&(pool.clone(), tenant.clone())];
            prop_assert_eq!(&now.0, &place.0, "{} changed region", tenant);
            if pool == "b" {
                prop_assert_eq!(now, place, "pool b tenant {} moved", tenant);
            } else if known.contains(tenant) && !(remove && place.1 == "a-eu-2") {
                prop_assert_eq!(now, place, "known pool a tenant {} moved", tenant);
            }
        }
        prop_assert!(second.doc.region_table == first.doc.region_table, "the region table changed");
    }

    /// Region weights change and regions are added: no known tenant's home
    /// region changes; unknown ones may.
    #[test]
    fn known_tenants_keep_their_home_region_when_the_region_table_changes(
        us in 1u32..5, eu in 0u32..5, add_ap in any::<bool>(),
    ) {
        let cells_for = |regions: &[&str]| -> Vec<(String, String, String, f64)> {
            regions
                .iter()
                .flat_map(|r| {
                    [("p", 1.0), ("q", 1.0)].map(|(p, w)| (format!("{p}-{r}"), p.to_string(), r.to_string(), w))
                })
                .collect()
        };
        let doc = |regions: &[(&str, f64)]| {
            let ids: Vec<&str> = regions.iter().map(|r| r.0).collect();
            let cells = cells_for(&ids);
            let refs: Vec<(&str, &str, &str, f64)> = cells
                .iter()
                .map(|(i, p, r, w)| (i.as_str(), p.as_str(), r.as_str(), *w))
                .collect();
            spec_json(1024, regions, &refs)
        };
        let first = fresh(&doc(&[("us", 1.0), ("eu", 1.0)]));
        let mut regions = vec![("us", f64::from(us)), ("eu", f64::from(eu))];
        if add_ap {
            regions.push(("ap", 1.0));
        }
        let ts = tenants("k", 2_000);
        let known = &ts[..1_000];
        let second = next(&doc(&regions), &first.snapshot, known);
        let old = placements(&first.snapshot, &ts);
        let new = placements(&second.snapshot, &ts);
        let mut unknown_rehomed = 0;
        for (key, place) in &old {
            if known.contains(&key.1) {
                prop_assert_eq!(&new[key], place, "known tenant {} moved", &key.1);
            } else if new[key].0 != place.0 {
                unknown_rehomed += 1;
            }
        }
        let r = &second.report;
        prop_assert_eq!(r.region_pins, second.doc.region_overrides.len());
        if r.region_slots_moved == 0 {
            prop_assert_eq!(unknown_rehomed, 0);
            prop_assert_eq!(r.region_pins, 0);
        } else {
            prop_assert!(r.region_pins > 0);
        }
    }
}

#[test]
fn a_region_table_change_needs_the_known_tenants() {
    let doc = |us: f64| {
        spec_json(
            1024,
            &[("us", us), ("eu", 1.0)],
            &[("p-us", "p", "us", 1.0), ("p-eu", "p", "eu", 1.0)],
        )
    };
    let first = fresh(&doc(1.0));
    let err = try_build(
        &doc(3.0),
        Inputs {
            previous: Some(&first.snapshot),
            known: None,
            rehome: &[],
            load: None,
        },
    )
    .unwrap_err();
    assert_eq!(err.path, "$.regions");
    assert!(err.message.contains("--tenants"), "{err}");
    // Without a region change no tenants are needed.
    try_build(
        &doc(1.0),
        Inputs {
            previous: Some(&first.snapshot),
            known: None,
            rehome: &[],
            load: None,
        },
    )
    .unwrap();
}

#[test]
fn re_homing_takes_the_flag() {
    let doc = spec_json(
        1024,
        &[("us", 1.0), ("eu", 1.0)],
        &[("p-us", "p", "us", 1.0), ("p-eu", "p", "eu", 1.0)],
    );
    let first = fresh(&doc);
    let ts = tenants("r", 200);
    let s = &first.snapshot;
    let eu = s.region_index("eu").unwrap();
    let homed_us = ts
        .iter()
        .find(|t| s.home_region(t.as_bytes()) != eu)
        .unwrap()
        .clone();
    let mut moved = doc.clone();
    moved["region_overrides"] = json!({ homed_us.clone(): "eu" });
    let err = try_build(
        &moved,
        Inputs {
            previous: Some(s),
            known: Some(&ts),
            rehome: &[],
            load: None,
        },
    )
    .unwrap_err();
    assert_eq!(
        err.path,
        cell_router_mapping::error::key_path(["region_overrides", homed_us.as_str()])
    );
    assert!(
        err.message.contains(&format!("--rehome {homed_us}")),
        "{err}"
    );
    let built = try_build(
        &moved,
        Inputs {
            previous: Some(s),
            known: Some(&ts),
            rehome: &[homed_us.as_str()],
            load: None,
        },
    )
    .unwrap();
    assert_eq!(built.report.rehomed, 1);
    let n = &built.snapshot;
    assert_eq!(
        n.home_region(homed_us.as_bytes()),
        n.region_index("eu").unwrap()
    );
    // Nobody else changed region.
    for t in ts.iter().filter(|t| **t != homed_us) {
        assert_eq!(
            n.regions()[usize::from(n.home_region(t.as_bytes()))].id,
            s.regions()[usize::from(s.home_region(t.as_bytes()))].id
        );
    }
    // Removing the override again does not re-home it back.
    let rebuilt = next(&doc, n, &ts);
    assert_eq!(
        rebuilt.snapshot.home_region(homed_us.as_bytes()),
        rebuilt.snapshot.region_index("eu").unwrap()
    );
    assert_eq!(rebuilt.report.region_pins, 1);
}

#[test]
fn a_region_with_known_tenants_cannot_be_removed() {
    let with_ap = spec_json(
        512,
        &[("us", 1.0), ("ap", 1.0)],
        &[("p-us", "p", "us", 1.0), ("p-ap", "p", "ap", 1.0)],
    );
    let first = fresh(&with_ap);
    let without = spec_json(512, &[("us", 1.0)], &[("p-us", "p", "us", 1.0)]);
    let ts = tenants("z", 100);
    let err = try_build(
        &without,
        Inputs {
            previous: Some(&first.snapshot),
            known: Some(&ts),
            rehome: &[],
            load: None,
        },
    )
    .unwrap_err();
    assert_eq!(err.path, "$.regions");
    assert!(err.message.contains("\"ap\""), "{err}");
    let all: Vec<&str> = ts.iter().map(String::as_str).collect();
    let built = try_build(
        &without,
        Inputs {
            previous: Some(&first.snapshot),
            known: Some(&ts),
            rehome: &all,
            load: None,
        },
    )
    .unwrap();
    assert!(built.report.rehomed > 0);
}

#[test]
fn draining_a_cell_moves_no_slot_and_load_closes_a_cell_per_region() {
    let doc = spec_json(
        2048,
        &[("us", 1.0), ("eu", 1.0)],
        &[
            ("p-us-1", "p", "us", 1.0),
            ("p-us-2", "p", "us", 1.0),
            ("p-eu-1", "p", "eu", 1.0),
            ("p-eu-2", "p", "eu", 1.0),
        ],
    );
    let first = fresh(&doc);
    let ts = tenants("d", 1_000);
    let mut drained = doc.clone();
    drained["cells"][0]["state"] = json!("draining");
    let second = next(&drained, &first.snapshot, &ts);
    assert_eq!(second.doc.pools, {
        let mut pools = first.doc.pools.clone();
        for p in &mut pools {
            p.pins.clear();
        }
        pools
    });
    // By load: p-us-1 over its threshold takes no new us tenants; the
    // known ones stay (pinned); eu is untouched.
    let load = Load::parse(
        json!({
            "format": 1,
            "thresholds": {"cpu": 0.7},
            "cells": {
                "p-us-1": {"cpu": 0.9}, "p-us-2": {"cpu": 0.2},
                "p-eu-1": {"cpu": 0.35}, "p-eu-2": {"cpu": 0.35}
            }
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let by_load = try_build(
        &doc,
        Inputs {
            previous: Some(&first.snapshot),
            known: Some(&ts),
            rehome: &[],
            load: Some(&load),
        },
    )
    .unwrap();
    let us = &by_load.report.pools[0].regions[0];
    assert_eq!(us.region, "us");
    assert_eq!(us.cells[0].slots_after, 0);
    assert_eq!(us.cells[1].slots_after, us.home_slots);
    assert_eq!(by_load.report.pools[0].regions[1].slots_moved, 0);
    assert_eq!(
        placements(&by_load.snapshot, &ts),
        placements(&first.snapshot, &ts)
    );
    let view = view_of(&by_load);
    let new_tenants = tenants("new", 2_000);
    for t in &new_tenants {
        let place = view.placement(t, 0).unwrap();
        assert_ne!(place.cell, "p-us-1", "{t} placed on a closed cell");
    }
}

#[test]
fn spec_errors_name_the_path_in_the_spec() {
    let mut doc = spec_json(
        64,
        &[("us", 1.0), ("eu", 1.0)],
        &[("p-us", "p", "us", 1.0), ("p-eu", "p", "eu", 1.0)],
    );
    doc["cells"][1]["pool"] = json!("nope");
    let err = try_build(
        &doc,
        Inputs {
            previous: None,
            known: None,
            rehome: &[],
            load: None,
        },
    )
    .unwrap_err();
    assert_eq!(err.path, "$.cells[1].pool");
    doc["cells"][1]["pool"] = json!("p");
    doc["cells"][1]["region"] = json!("us");
    let err = try_build(
        &doc,
        Inputs {
            previous: None,
            known: None,
            rehome: &[],
            load: None,
        },
    )
    .unwrap_err();
    assert_eq!(err.path, "$.pools[0]");
    assert!(err.message.contains("no cell in region \"eu\""), "{err}");
    // A top-level slot_table is a format-1 field: refused by name.
    let mut doc = spec_json(64, &[("us", 1.0)], &[("p-us", "p", "us", 1.0)]);
    doc["overrides"] = json!({});
    let err = PoolsSpec::parse(doc.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.path, "$.overrides");
}

#[test]
fn the_spec_md_example_builds() {
    let spec_md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SPEC.md")).unwrap();
    let section = spec_md
        .split("### Pools and regions (format 2)")
        .nth(1)
        .expect("SPEC.md has the section");
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a JSON example in the section");
    let doc: Value = serde_json::from_str(block).unwrap();
    let built = fresh(&doc);
    let s = &built.snapshot;
    assert_eq!(s.pools().len(), 2);
    assert_eq!(s.home_region(b"acme-gmbh"), s.region_index("eu").unwrap());
}

#[test]
fn draining_a_format_2_cell_moves_only_its_pool_and_regions_tenants_once() {
    use cell_router_mapping::builder::drain::{DrainOptions, plan};
    let spec = example_spec();
    let first = fresh(&spec);
    let refused = plan(
        &first.snapshot,
        &DrainOptions {
            cell: "sms-us-1",
            step_basis_points: 100,
            load: None,
            generated_at: AT,
        },
    )
    .unwrap_err();
    assert_eq!(refused.path, "$.pools[1].moves[0].from");
    let ts = tenants("d", 4_000);
    // sms-us-2 grows: sms-us-1 loses slots, its known tenants are pinned.
    let mut grown = spec.clone();
    grown["cells"][4]["weight"] = json!(4);
    // A move naming the drained cell is refused by drain: finished here.
    grown["pools"][1]["moves"] = json!([]);
    let second = next(&grown, &first.snapshot, &ts);
    let sms = &second.doc.pools[1];
    assert!(sms.pins.values().any(|c| c == "sms-us-1"));
    let current = &second.snapshot;
    let drain = plan(
        current,
        &DrainOptions {
            cell: "sms-us-1",
            step_basis_points: 2_500,
            load: None,
            generated_at: AT,
        },
    )
    .unwrap();
    assert_eq!(drain.steps(), 4);
    // Only sms-us-2 takes the slots (same pool and region).
    assert_eq!(
        drain
            .report
            .receivers
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["sms-us-2"]
    );
    let before = placements(current, &ts);
    let mut moved: BTreeSet<String> = BTreeSet::new();
    let mut last = before.clone();
    for k in 1..=drain.steps() {
        let step = drain.step(k).unwrap();
        let now = placements(&step.snapshot, &ts);
        for (key, place) in &now {
            let (pool, tenant) = key;
            assert_eq!(place.0, before[key].0, "{tenant} changed region");
            if pool != "sms" || place.0 != "us" {
                assert_eq!(place, &before[key], "{pool}/{tenant} moved");
            } else if place != &last[key] {
                assert_eq!(last[key].1, "sms-us-1", "{tenant} moved off another cell");
                assert_eq!(place.1, "sms-us-2");
                assert!(moved.insert(tenant.clone()), "{tenant} moved twice");
            }
        }
        last = now;
    }
    assert!(!moved.is_empty());
    assert!(last.values().all(|(_, cell)| cell != "sms-us-1"));
}

#[test]
fn moving_from_format_1_to_format_2_moves_nobody() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/");
    let v1 = Snapshot::parse(&std::fs::read(format!("{dir}snapshot.json")).unwrap()).unwrap();
    let spec1: Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}spec.json")).unwrap()).unwrap();
    // The same cells, overrides and moves as one pool in one region.
    let cells: Vec<Value> = spec1["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c["pool"] = json!("web");
            c["region"] = json!("us");
            c
        })
        .collect();
    let one_region = json!({
        "format": 2,
        "hash": spec1["hash"],
        "regions": [{"id": "us"}],
        "cells": cells,
        "pools": [{"id": "web", "overrides": spec1["overrides"], "moves": spec1["moves"]}],
    });
    let ts = tenants("m", 5_000);
    let built = next(&one_region, &v1, &[]);
    assert_eq!(built.snapshot.version(), v1.version() + 1);
    assert_eq!(built.report.pools[0].regions[0].slots_moved, 0);
    for t in ts.iter().map(String::as_str).chain(["acme-corp", "globex"]) {
        let before = v1.resolve(t.as_bytes(), &Draws::default());
        let s = &built.snapshot;
        let after = s.resolve_in(t.as_bytes(), 0, None, false, &Draws::default());
        assert_eq!(
            v1.cells()[usize::from(before.home)].id,
            s.cells()[usize::from(after.home)].id,
            "{t} moved"
        );
    }
    // Adding a second region at once: known tenants stay in us, on their
    // cell; the region table change needs them.
    let mut two_regions = one_region.clone();
    two_regions["regions"] = json!([{"id": "us"}, {"id": "eu"}]);
    two_regions["cells"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "cell-eu-1", "pool": "web", "region": "eu"}));
    let built = next(&two_regions, &v1, &ts);
    let s = &built.snapshot;
    assert!(built.report.region_slots_moved > 30_000);
    let us = s.region_index("us").unwrap();
    for t in &ts {
        let before = v1.resolve(t.as_bytes(), &Draws::default());
        assert_eq!(s.home_region(t.as_bytes()), us, "{t} re-homed");
        let after = s.resolve_in(t.as_bytes(), 0, Some(us), false, &Draws::default());
        assert_eq!(
            v1.cells()[usize::from(before.home)].id,
            s.cells()[usize::from(after.home)].id,
            "{t} moved"
        );
    }
    // New tenants land in eu too.
    let eu = s.region_index("eu").unwrap();
    let new_in_eu = tenants("fresh", 1_000)
        .iter()
        .filter(|t| s.home_region(t.as_bytes()) == eu)
        .count();
    assert!((400..600).contains(&new_in_eu), "{new_in_eu} of 1000 in eu");
}
