//! Placement by load and draining in steps (SPEC.md, "Placement by load",
//! "Draining in steps"): outcomes checked by resolving tenants in the
//! snapshots, never by trusting the builder's own report.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_mapping::builder::drain::{self, DrainOptions};
use cell_router_mapping::builder::load::{Dimension, Load};
use cell_router_mapping::builder::{self, Build, BuildOptions, Spec};
use cell_router_mapping::{Outcome, Snapshot, Source};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const KEY: &str = "00112233445566778899aabbccddeeff";
const AT: &str = "2026-01-01T00:00:00Z";

fn spec(cells: &[(&str, f64)]) -> Spec {
    let cells: Vec<Value> = cells
        .iter()
        .map(|(id, w)| json!({"id": id, "weight": w}))
        .collect();
    Spec::parse(
        json!({"hash": {"key": KEY}, "cells": cells})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

fn options<'a>(previous: Option<&'a Snapshot>, known: &'a [String]) -> BuildOptions<'a> {
    BuildOptions {
        previous,
        known_tenants: known,
        generated_at: AT,
    }
}

fn load(doc: &Value) -> Load {
    Load::parse(doc.to_string().as_bytes()).unwrap()
}

fn home(s: &Snapshot, tenant: &str) -> String {
    s.cells()[usize::from(
        s.resolve(tenant.as_bytes(), &cell_router_mapping::Draws::default())
            .home,
    )]
    .id
    .clone()
}

fn slot_counts(s: &Snapshot) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = s.cells().iter().map(|c| (c.id.clone(), 0)).collect();
    for &i in s.slot_table() {
        *out.get_mut(&s.cells()[usize::from(i)].id).unwrap() += 1;
    }
    out
}

fn known(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("known-{i}")).collect()
}

/// Four cells of weight 1, every tenant by slot.
fn four_cells() -> Build {
    builder::build(
        &spec(&[
            ("cell-a", 1.0),
            ("cell-b", 1.0),
            ("cell-c", 1.0),
            ("cell-d", 1.0),
        ]),
        &options(None, &[]),
    )
    .unwrap()
}

/// The issue's test: cell-a at 90 % CPU with a 70 % threshold takes none of
/// 10,000 new tenants, no known tenant moves, and the other cells' shares of
/// the new tenants follow their headroom within 2 percentage points.
#[test]
fn new_tenants_avoid_a_cell_over_its_threshold_and_follow_headroom() {
    let v1 = four_cells();
    let known = known(5_000);
    let figures = load(&json!({
        "format": 1,
        "thresholds": {"cpu": 0.7},
        "cells": {
            "cell-a": {"cpu": 0.9},
            "cell-b": {"cpu": 0.35},
            "cell-c": {"cpu": 0.56},
            "cell-d": {"cpu": 0.14}
        }
    }));
    let spec = spec(&[
        ("cell-a", 1.0),
        ("cell-b", 1.0),
        ("cell-c", 1.0),
        ("cell-d", 1.0),
    ]);
    let v2 =
        builder::build_with_load(&spec, &options(Some(&v1.snapshot), &known), &figures).unwrap();

    // No known tenant moves.
    for t in &known {
        assert_eq!(home(&v2.snapshot, t), home(&v1.snapshot, t), "{t}");
    }
    // 10,000 new tenants: none on cell-a, the rest by headroom.
    let mut landed: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..10_000 {
        let t = format!("new-tenant-{i}");
        assert!(!known.contains(&t));
        let r = v2
            .snapshot
            .resolve(t.as_bytes(), &cell_router_mapping::Draws::default());
        assert_eq!(r.source, Source::Slot);
        *landed
            .entry(v2.snapshot.cells()[usize::from(r.home)].id.clone())
            .or_default() += 1;
    }
    assert_eq!(landed.get("cell-a"), None, "{landed:?}");
    let headroom = [("cell-b", 0.5), ("cell-c", 0.2), ("cell-d", 0.8)];
    let total: f64 = headroom.iter().map(|h| h.1).sum();
    for (cell, h) in headroom {
        let expected = h / total;
        let got = f64::from(landed[cell]) / 10_000.0;
        eprintln!(
            "{cell}: headroom {h}, expected share {:.2} %, got {:.2} %",
            expected * 100.0,
            got * 100.0
        );
        assert!((got - expected).abs() < 0.02, "{cell}: {got} vs {expected}");
        assert!(
            (figures.cell(cell).unwrap().headroom - h).abs() < 1e-9,
            "{cell}"
        );
    }
    // The slot table itself is within one slot of the headroom shares.
    let counts = slot_counts(&v2.snapshot);
    for (cell, h) in headroom {
        let exact = 65_536.0 * h / total;
        assert!((f64::from(counts[cell]) - exact).abs() <= 1.0, "{cell}");
    }

    // The oracle can fail: without the known tenants, the closed cell's
    // tenants would have moved.
    let unpinned =
        builder::build_with_load(&spec, &options(Some(&v1.snapshot), &[]), &figures).unwrap();
    let would_move = known
        .iter()
        .filter(|t| home(&unpinned.snapshot, t) != home(&v1.snapshot, t))
        .count();
    assert!(would_move > 1_000, "{would_move}");
    assert_eq!(v2.report.pins_added, would_move);
}

/// Load changes from build to build: known tenants stay put through all of
/// them, overrides win, and pins go when the ring gives the cell back.
#[test]
fn known_tenants_stay_across_successive_load_builds() {
    let v1 = four_cells();
    let known = known(4_000);
    let with_override = |doc: &mut Value| doc["overrides"] = json!({"known-7": "cell-a"});
    let mut doc = json!({"hash": {"key": KEY}, "cells": [
        {"id": "cell-a"}, {"id": "cell-b"}, {"id": "cell-c"}, {"id": "cell-d"}]});
    with_override(&mut doc);
    let spec = Spec::parse(doc.to_string().as_bytes()).unwrap();
    let figures = |a: f64, b: f64, c: f64, d: f64| {
        load(&json!({"format": 1, "thresholds": {"cpu": 0.7}, "cells": {
            "cell-a": {"cpu": a}, "cell-b": {"cpu": b}, "cell-c": {"cpu": c}, "cell-d": {"cpu": d}}}))
    };
    // cell-a hot, then recovered while cell-d is hot, then all even.
    let v2 = builder::build_with_load(
        &spec,
        &options(Some(&v1.snapshot), &known),
        &figures(0.9, 0.3, 0.3, 0.3),
    )
    .unwrap();
    let v3 = builder::build_with_load(
        &spec,
        &options(Some(&v2.snapshot), &known),
        &figures(0.2, 0.3, 0.3, 0.75),
    )
    .unwrap();
    let v4 = builder::build_with_load(
        &spec,
        &options(Some(&v3.snapshot), &known),
        &figures(0.35, 0.35, 0.35, 0.35),
    )
    .unwrap();
    for t in &known {
        let expected = if t == "known-7" {
            "cell-a".to_string()
        } else {
            home(&v1.snapshot, t)
        };
        for s in [&v2.snapshot, &v3.snapshot, &v4.snapshot] {
            assert_eq!(home(s, t), expected, "{t}");
        }
    }
    assert_eq!(slot_counts(&v2.snapshot)["cell-a"], 0);
    assert_eq!(slot_counts(&v3.snapshot)["cell-d"], 0);
    assert!(v3.report.pins_released > 300, "{:?}", v3.report);
    assert!(v4.report.pins_released > 0);
    // Every pin is needed, and overrides are never pinned.
    for s in [&v2.snapshot, &v3.snapshot, &v4.snapshot] {
        assert!(!s.pins().contains_key("known-7"));
        for (t, c) in s.pins() {
            let r = s.resolve(t.as_bytes(), &cell_router_mapping::Draws::default());
            assert_ne!(
                s.cells()[usize::from(s.slot_table()[r.slot as usize])].id,
                c
            );
        }
    }
}

/// weight × headroom: a cell three times as large with the same headroom
/// takes three times the new tenants.
#[test]
fn new_slots_follow_weight_times_headroom() {
    let spec = spec(&[("x", 1.0), ("y", 3.0), ("z", 2.0)]);
    let figures = load(&json!({
        "format": 1,
        "thresholds": {"tenants": 1000, "p99_ms": 200},
        "cells": {
            "x": {"tenants": 500},
            "y": {"tenants": 100, "p99_ms": 100},
            "z": {"tenants": 750, "p99_ms": 20}
        }
    }));
    // headroom: x 0.5, y min(0.9, 0.5) = 0.5, z min(0.25, 0.9) = 0.25;
    // × weight: 0.5, 1.5, 0.5 → 20 %, 60 %, 20 %.
    let b = builder::build_with_load(&spec, &options(None, &[]), &figures).unwrap();
    let counts = slot_counts(&b.snapshot);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![13_107, 39_322, 13_107]
    );
    assert!(b.report.by_load);
    // Without a previous snapshot nothing moves and nobody is pinned.
    assert!(b.report.slot_moves.is_empty());
    assert_eq!(b.snapshot.pins().len(), 0);
}

/// The report's numbers are the snapshots' numbers.
#[test]
fn build_report_matches_the_snapshots() {
    let v1 = four_cells();
    let known = known(4_000);
    let figures = load(&json!({
        "format": 1,
        "thresholds": {"cpu": 0.7, "p99_ms": 250},
        "cells": {
            "cell-a": {"cpu": 0.5, "p99_ms": 300},
            "cell-b": {"cpu": 0.35},
            "cell-c": {"cpu": 0.6, "thresholds": {"cpu": 0.8}},
            "cell-d": {"cpu": 0.7}
        }
    }));
    let spec = spec(&[
        ("cell-a", 1.0),
        ("cell-b", 1.0),
        ("cell-c", 2.0),
        ("cell-d", 1.0),
    ]);
    let v2 =
        builder::build_with_load(&spec, &options(Some(&v1.snapshot), &known), &figures).unwrap();
    let r = &v2.report;
    let (before, after) = (slot_counts(&v1.snapshot), slot_counts(&v2.snapshot));

    // Slots moved, per (from, to), from the two tables.
    let mut pairs: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (&a, &b) in v1
        .snapshot
        .slot_table()
        .iter()
        .zip(v2.snapshot.slot_table())
    {
        let (from, to) = (
            v1.snapshot.cells()[usize::from(a)].id.clone(),
            v2.snapshot.cells()[usize::from(b)].id.clone(),
        );
        if from != to {
            *pairs.entry((from, to)).or_default() += 1;
        }
    }
    let reported: BTreeMap<(String, String), u32> = r
        .slot_moves
        .iter()
        .map(|m| ((m.from.clone(), m.to.clone()), m.slots))
        .collect();
    assert_eq!(reported, pairs);
    assert_eq!(r.slots_moved, pairs.values().sum::<u32>());
    // cell-a (p99 over) and cell-d (cpu at the threshold) are closed: they
    // lose every slot and take none.
    assert!(pairs.keys().all(|(_, to)| to != "cell-a" && to != "cell-d"));
    assert_eq!(after["cell-a"] + after["cell-d"], 0);

    // Per cell: slots before and after, shares, headroom, closed, pins.
    let pins = v2.snapshot.pins();
    for c in &r.cells {
        assert_eq!(c.slots_before, Some(before[&c.id]), "{}", c.id);
        assert_eq!(c.slots_after, after[&c.id], "{}", c.id);
        assert_eq!(c.share_after, f64::from(after[&c.id]) / 65_536.0);
        assert_eq!(c.share_before, Some(f64::from(before[&c.id]) / 65_536.0));
        assert_eq!(c.headroom, Some(figures.cell(&c.id).unwrap().headroom));
        let pinned_here = pins.values().filter(|p| **p == c.id).count();
        assert_eq!(c.pins, pinned_here, "{}", c.id);
        assert_eq!(c.pins_added, pinned_here, "{}", c.id);
    }
    let closed: Vec<(&str, Dimension, f64, f64)> = r
        .cells
        .iter()
        .flat_map(|c| {
            c.closed_by
                .iter()
                .map(move |b| (c.id.as_str(), b.dimension, b.figure, b.threshold))
        })
        .collect();
    assert_eq!(
        closed,
        vec![
            ("cell-a", Dimension::P99Ms, 300.0, 250.0),
            ("cell-d", Dimension::Cpu, 0.7, 0.7)
        ]
    );
    // cell-c's own threshold applies: 1 − 0.6 / 0.8.
    assert!((r.cells[2].headroom.unwrap() - 0.25).abs() < 1e-12);
    assert_eq!(r.pins, pins.len());
    assert_eq!(r.pins_added, pins.len());
    // Every pin holds a known tenant that the ring moved, to its old cell.
    for (t, c) in &pins {
        assert!(known.contains(t));
        assert_eq!(&home(&v1.snapshot, t), c);
    }
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(
        json["cells"][0]["closed_by"][0]["dimension"],
        json!("p99_ms")
    );
    assert_eq!(json["slot_moves"].as_array().unwrap().len(), pairs.len());
}

/// With every active cell closed there is nowhere to put new tenants.
#[test]
fn every_active_cell_closed_is_refused() {
    let figures = load(&json!({
        "format": 1,
        "thresholds": {"tenants": 10},
        "cells": {"x": {"tenants": 10}, "y": {"tenants": 12}}
    }));
    let err = builder::build_with_load(
        &spec(&[("x", 1.0), ("y", 1.0)]),
        &options(None, &[]),
        &figures,
    )
    .unwrap_err();
    assert_eq!(err.path, "$.cells");
    assert!(err.message.contains("raise a threshold"), "{err}");
}

/// Bad load files are refused, naming the field.
#[test]
fn load_file_errors_name_the_field() {
    let good = || {
        json!({
            "format": 1,
            "thresholds": {"cpu": 0.7, "p99_ms": 250, "tenants": 1000},
            "cells": {"cell-a": {"cpu": 0.5}, "cell-b": {"tenants": 3}}
        })
    };
    Load::parse(good().to_string().as_bytes()).unwrap();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut d = good();
        f(&mut d);
        d.to_string()
    };
    let cases: Vec<(String, &str, &str)> = vec![
        ("not json".into(), "$", "expected"),
        ("[1, {}, {}]".into(), "$", "a JSON object"),
        (edit(&|d| d["format"] = json!(2)), "$.format", "unknown format 2"),
        (
            edit(&|d| {
                d.as_object_mut().unwrap().remove("format");
            }),
            "$.format",
            "missing field",
        ),
        (edit(&|d| d["colour"] = json!(1)), "$.colour", "unknown field"),
        (
            edit(&|d| d["thresholds"] = json!([0.7, 250, 1000])),
            "$.thresholds",
            "a JSON object",
        ),
        (edit(&|d| d["thresholds"]["cpu"] = json!(0)), "$.thresholds.cpu", "> 0"),
        (edit(&|d| d["thresholds"]["cpu"] = json!(70)), "$.thresholds.cpu", "fraction"),
        (
            edit(&|d| d["thresholds"]["p99_ms"] = json!(-5)),
            "$.thresholds.p99_ms",
            "> 0",
        ),
        (
            edit(&|d| d["thresholds"]["tenants"] = json!(0)),
            "$.thresholds.tenants",
            "> 0",
        ),
        (
            edit(&|d| d["thresholds"]["memory"] = json!(1)),
            "$.thresholds.memory",
            "unknown field",
        ),
        (
            edit(&|d| d["cells"] = json!([{"cpu": 0.5}])),
            "$.cells",
            "a JSON object",
        ),
        (
            edit(&|d| d["cells"]["cell-a"] = json!([0.5])),
            "$.cells[\"cell-a\"]",
            "a JSON object",
        ),
        (
            edit(&|d| d["cells"]["cell-a"]["cpu"] = json!(-0.1)),
            "$.cells[\"cell-a\"].cpu",
            "≥ 0",
        ),
        (
            edit(&|d| d["cells"]["cell-a"]["cpu"] = json!(90)),
            "$.cells[\"cell-a\"].cpu",
            "write 0.9 for 90 %",
        ),
        (
            edit(&|d| d["cells"]["cell-a"]["cpu"] = json!(null)),
            "$.cells[\"cell-a\"].cpu",
            "invalid type: null",
        ),
        (
            edit(&|d| d["cells"]["cell-a"]["cpu"] = json!("0.5")),
            "$.cells[\"cell-a\"].cpu",
            "invalid type: string",
        ),
        (
            edit(&|d| d["cells"]["cell-b"]["tenants"] = json!(-1)),
            "$.cells[\"cell-b\"].tenants",
            "invalid value",
        ),
        (
            edit(&|d| d["cells"]["cell-b"]["tenants"] = json!(2.5)),
            "$.cells[\"cell-b\"].tenants",
            "invalid type",
        ),
        (
            edit(&|d| d["cells"]["cell-a"]["mem"] = json!(0.1)),
            "$.cells[\"cell-a\"].mem",
            "unknown field",
        ),
        (
            edit(&|d| d["cells"]["cell-a"] = json!({})),
            "$.cells[\"cell-a\"]",
            "no figures",
        ),
        (
            edit(&|d| {
                d["thresholds"].as_object_mut().unwrap().remove("cpu");
            }),
            "$.cells[\"cell-a\"].cpu",
            "no threshold for cpu",
        ),
        (
            edit(&|d| d["cells"]["cell-a"]["thresholds"] = json!({"cpu": 1.5})),
            "$.cells[\"cell-a\"].thresholds.cpu",
            "fraction",
        ),
        (
            edit(&|d| d["cells"]["cell-a"]["thresholds"] = json!(null)),
            "$.cells[\"cell-a\"].thresholds",
            "a JSON object",
        ),
        // Written twice: JSON allows the text, the load file does not.
        (
            r#"{"format": 1, "thresholds": {"cpu": 0.7}, "cells": {"a": {"cpu": 0.1}, "a": {"cpu": 0.2}}}"#
                .into(),
            "$.cells.a",
            "more than once",
        ),
        (
            r#"{"format": 1, "thresholds": {"cpu": 0.7}, "cells": {"a": {"cpu": 0.1, "cpu": 0.9}}}"#
                .into(),
            "$.cells.a",
            "duplicate field `cpu`",
        ),
        (
            r#"{"format": 1, "format": 1, "cells": {}}"#.into(),
            "$",
            "duplicate field `format`",
        ),
        (
            r#"{"format": 1, "thresholds": {"cpu": 0.7, "cpu": 0.8}, "cells": {}}"#.into(),
            "$.thresholds",
            "duplicate field `cpu`",
        ),
    ];
    for (text, path, words) in cases {
        let err = Load::parse(text.as_bytes()).unwrap_err();
        assert_eq!(err.path, path, "{text}: {err}");
        assert!(err.message.contains(words), "{text}: {err} lacks {words:?}");
    }

    // Against the cells it places: unknown cells and missing active cells.
    let figures = load(&good());
    let three = spec(&[("cell-a", 1.0), ("cell-b", 1.0), ("cell-c", 1.0)]);
    let err = figures.check_cells(&three.cells, None, "spec").unwrap_err();
    assert_eq!(err.path, "$.cells");
    assert!(
        err.message
            .contains("no figures for active cell \"cell-c\""),
        "{err}"
    );
    let err = builder::build_with_load(&three, &options(None, &[]), &figures).unwrap_err();
    assert_eq!(err.path, "$.cells");
    let one = spec(&[("cell-a", 1.0)]);
    let err = figures.check_cells(&one.cells, None, "spec").unwrap_err();
    assert_eq!(err.path, "$.cells[\"cell-b\"]");
    assert!(err.message.contains("unknown cell"), "{err}");
    // A draining or disabled cell needs no figures (it takes no new slots).
    let mut draining = three.clone();
    draining.cells[2].state = cell_router_mapping::CellState::Draining;
    figures.check_cells(&draining.cells, None, "spec").unwrap();
}

/// The spec is untrusted JSON too: objects only.
#[test]
fn spec_objects_must_be_objects() {
    for (text, path) in [
        (format!(r#"["{KEY}"]"#), "$"),
        (
            format!(r#"{{"hash": ["siphash-1-3", "{KEY}", 64], "cells": [{{"id": "a"}}]}}"#),
            "$.hash",
        ),
        (
            format!(r#"{{"hash": {{"key": "{KEY}"}}, "cells": [["a"]]}}"#),
            "$.cells[0]",
        ),
        (
            format!(
                r#"{{"hash": {{"key": "{KEY}"}}, "cells": [{{"id": "a"}}, {{"id": "b"}}], "moves": [["t", "a", "b", 5]]}}"#
            ),
            "$.moves[0]",
        ),
        (
            format!(
                r#"{{"hash": {{"key": "{KEY}"}}, "cells": [{{"id": "a"}}], "overrides": [["t", "a"]]}}"#
            ),
            "$.overrides",
        ),
        (
            format!(r#"{{"hash": {{"key": "{KEY}", "key": "{KEY}"}}, "cells": [{{"id": "a"}}]}}"#),
            "$.hash",
        ),
    ] {
        let err = Spec::parse(text.as_bytes()).unwrap_err();
        assert_eq!(err.path, path, "{text}: {err}");
    }
}

// ---------------------------------------------------------------------------
// Draining in steps.

/// v1: four cells of weight 1. v2: by load, cell-b is near its threshold and
/// keeps about a quarter of its slots; its known tenants on the others are
/// pinned to it. So cell-b has slot tenants and pinned tenants to drain.
fn before_drain() -> (Build, Vec<String>) {
    let v1 = four_cells();
    let known = known(6_000);
    let figures = load(&json!({
        "format": 1,
        "thresholds": {"cpu": 0.7},
        "cells": {
            "cell-a": {"cpu": 0.35},
            "cell-b": {"cpu": 0.63},
            "cell-c": {"cpu": 0.35},
            "cell-d": {"cpu": 0.35}
        }
    }));
    let spec = spec(&[
        ("cell-a", 1.0),
        ("cell-b", 1.0),
        ("cell-c", 1.0),
        ("cell-d", 2.0),
    ]);
    let v2 =
        builder::build_with_load(&spec, &options(Some(&v1.snapshot), &known), &figures).unwrap();
    assert!(v2.report.cells[1].pins > 300, "{:?}", v2.report.cells[1]);
    (v2, known)
}

fn drain_options(cell: &str, step_basis_points: u16) -> DrainOptions<'_> {
    DrainOptions {
        cell,
        step_basis_points,
        load: None,
        generated_at: AT,
    }
}

/// 1 % steps: every step is a valid snapshot with the next version; only
/// cell-b's tenants move, each once and never back, about k % of them by
/// step k, to the other cells by weight; nobody is shed; after the last step
/// nothing routes to cell-b.
#[test]
fn drain_in_one_percent_steps_moves_the_cells_tenants_once_and_only_them() {
    let (v2, known) = before_drain();
    let start = &v2.snapshot;
    let plan = drain::plan(start, &drain_options("cell-b", 100)).unwrap();
    assert_eq!(plan.steps(), 100);
    let r = &plan.report;
    assert_eq!(r.slots, slot_counts(start)["cell-b"]);
    assert_eq!(r.pins, v2.report.cells[1].pins);
    // The slots go to the others by weight (1 : 1 : 2), within a slot.
    let taken: Vec<u32> = r.receivers.iter().map(|x| x.slots_taken).collect();
    assert_eq!(taken.iter().sum::<u32>(), r.slots);
    for (t, w) in taken.iter().zip([1.0, 1.0, 2.0]) {
        assert!(
            (f64::from(*t) - f64::from(r.slots) * w / 4.0).abs() <= 1.0,
            "{taken:?}"
        );
    }

    let mut tenants: Vec<String> = known.clone();
    tenants.extend((0..20_000).map(|i| format!("other-{i}")));
    let mut homes: Vec<String> = tenants.iter().map(|t| home(start, t)).collect();
    let on_b: Vec<bool> = homes.iter().map(|h| h == "cell-b").collect();
    let total_b = on_b.iter().filter(|&&b| b).count();
    assert!(total_b > 2_000, "{total_b}");
    let mut previous_version = start.version();
    let mut previous_slots = r.slots;
    let mut worst = 0.0f64;
    for k in 1..=plan.steps() {
        let step = plan.step(k).unwrap();
        let s = &step.snapshot;
        assert_eq!(step.version, previous_version + 1);
        assert_eq!(s.version(), step.version);
        previous_version = step.version;
        assert_eq!(
            Snapshot::parse(step.json.as_bytes()).unwrap().version(),
            step.version
        );
        let b = s.cell_index("cell-b").unwrap();
        assert_eq!(
            s.cells()[usize::from(b)].state,
            cell_router_mapping::CellState::Draining
        );
        assert_eq!(s.cells()[usize::from(b)].shed_ratio, 0.0);
        // The step's own numbers are the snapshot's.
        assert_eq!(step.slots_on_cell, slot_counts(s)["cell-b"]);
        assert_eq!(
            step.pins_on_cell,
            s.pins().values().filter(|c| *c == "cell-b").count()
        );
        assert!(step.slots_on_cell <= previous_slots);
        previous_slots = step.slots_on_cell;
        let mut moved = 0;
        for (i, t) in tenants.iter().enumerate() {
            let now = home(s, t);
            if now != homes[i] {
                assert_eq!(
                    homes[i], "cell-b",
                    "{t} moved from {} at step {k}",
                    homes[i]
                );
                homes[i] = now;
            }
            if on_b[i] && homes[i] != "cell-b" {
                moved += 1;
            }
        }
        let share = f64::from(moved) / total_b as f64;
        worst = worst.max((share - k as f64 / 100.0).abs());
        // Every pin is still needed: the ring gives another cell.
        for (t, c) in s.pins() {
            let slot = s
                .resolve(t.as_bytes(), &cell_router_mapping::Draws::default())
                .slot as usize;
            assert_ne!(&s.cells()[usize::from(s.slot_table()[slot])].id, &c, "{t}");
        }
    }
    eprintln!(
        "moved share vs step: worst difference {:.2} points",
        worst * 100.0
    );
    assert!(worst < 0.04, "{worst}");

    // After the last step nothing routes to cell-b: no slot, no pin, and
    // no tenant at all, for any request.
    let last = plan.step(plan.steps()).unwrap();
    let s = &last.snapshot;
    let b = s.cell_index("cell-b").unwrap();
    assert!(!s.slot_table().contains(&b));
    assert!(s.pins().values().all(|c| c != "cell-b"));
    assert_eq!((last.slots_on_cell, last.pins_on_cell), (0, 0));
    assert_eq!(last.basis_points, 10_000);
    for (i, t) in tenants.iter().enumerate() {
        let user = format!("user-{i}");
        let draws = cell_router_mapping::Draws::new(user.as_bytes(), (i % 10_000) as u16, 0);
        let r = s.resolve(t.as_bytes(), &draws);
        assert_ne!(r.home, b);
        assert!(matches!(r.outcome, Outcome::Route { .. }), "{t}");
    }
    // Tenants not on cell-b never moved (checked step by step above); the
    // other cells only gained slots.
    let (first, end) = (slot_counts(start), slot_counts(s));
    for cell in ["cell-a", "cell-c", "cell-d"] {
        assert!(end[cell] >= first[cell]);
    }
    for (&a, &z) in start.slot_table().iter().zip(s.slot_table()) {
        assert!(a == z || start.cells()[usize::from(a)].id == "cell-b");
    }
}

/// With a load file the drained slots go by weight × headroom, none to a
/// closed cell; steps of 30 % give 30, 60, 90, 100 %.
#[test]
fn drain_by_load_skips_closed_cells() {
    let (v2, _) = before_drain();
    let figures = load(&json!({
        "format": 1,
        "thresholds": {"cpu": 0.7},
        "cells": {
            "cell-a": {"cpu": 0.8},
            "cell-c": {"cpu": 0.35},
            "cell-d": {"cpu": 0.56}
        }
    }));
    let plan = drain::plan(
        &v2.snapshot,
        &DrainOptions {
            load: Some(&figures),
            ..drain_options("cell-b", 3_000)
        },
    )
    .unwrap();
    assert_eq!(plan.steps(), 4);
    let shares: Vec<u16> = (1..=4)
        .map(|k| plan.step(k).unwrap().basis_points)
        .collect();
    assert_eq!(shares, vec![3_000, 6_000, 9_000, 10_000]);
    let r = &plan.report;
    assert_eq!(r.closed.len(), 1);
    assert_eq!(r.closed[0].0, "cell-a");
    // cell-c: 1 × 0.5, cell-d: 2 × 0.2 → 5 : 4.
    let taken: BTreeMap<&str, u32> = r
        .receivers
        .iter()
        .map(|x| (x.id.as_str(), x.slots_taken))
        .collect();
    assert_eq!(taken["cell-a"], 0);
    let exact = f64::from(r.slots) * 5.0 / 9.0;
    assert!(
        (f64::from(taken["cell-c"]) - exact).abs() <= 1.0,
        "{taken:?}"
    );
    let last = plan.step(4).unwrap();
    assert_eq!(
        slot_counts(&last.snapshot)["cell-a"],
        slot_counts(&v2.snapshot)["cell-a"]
    );
    // Missing figures for a receiver are refused; the drained cell needs none.
    let partial = load(&json!({
        "format": 1, "thresholds": {"cpu": 0.7},
        "cells": {"cell-a": {"cpu": 0.1}, "cell-c": {"cpu": 0.1}}
    }));
    let err = drain::plan(
        &v2.snapshot,
        &DrainOptions {
            load: Some(&partial),
            ..drain_options("cell-b", 100)
        },
    )
    .unwrap_err();
    assert!(err.message.contains("\"cell-d\""), "{err}");
}

/// What would keep traffic on the cell, or leave it nowhere to go, is
/// refused with the path of the reason.
#[test]
fn drain_refusals_name_the_reason() {
    let example = Snapshot::parse(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/snapshot.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let refuse = |s: &Snapshot, cell: &str| drain::plan(s, &drain_options(cell, 100)).unwrap_err();
    // The example overrides acme-corp to cell-c and moves globex a → b.
    let err = refuse(&example, "cell-c");
    assert_eq!(err.path, "$.overrides[\"acme-corp\"]");
    let err = refuse(&example, "cell-b");
    assert_eq!(err.path, "$.moves[0].to");
    let err = refuse(&example, "cell-z");
    assert_eq!(err.path, "$.cells");
    assert!(err.message.contains("no cell \"cell-z\""));

    let mut doc: Value = serde_json::from_slice(example.to_doc().to_json().as_bytes()).unwrap();
    doc["overrides"] = json!({});
    doc["moves"] = json!([]);
    doc["cells"][0]["state"] = json!("disabled");
    let s = Snapshot::parse(doc.to_string().as_bytes()).unwrap();
    // cell-a is disabled and fails over to cell-b.
    let err = refuse(&s, "cell-b");
    assert_eq!(err.path, "$.cells[0].failover");
    // Active cell-a failing over to cell-b is only a note.
    doc["cells"][0]["state"] = json!("active");
    let s = Snapshot::parse(doc.to_string().as_bytes()).unwrap();
    let plan = drain::plan(&s, &drain_options("cell-b", 100)).unwrap();
    assert!(plan.report.notes[0].contains("cell-a fails over to cell-b"));
    // Nobody to take the slots.
    doc["cells"][0]["weight"] = json!(0);
    doc["cells"][2]["state"] = json!("draining");
    let s = Snapshot::parse(doc.to_string().as_bytes()).unwrap();
    let err = refuse(&s, "cell-b");
    assert_eq!(err.path, "$.cells");
    assert!(
        err.message.contains("no active cell other than cell-b"),
        "{err}"
    );
    // A cell with no slots and no pins: nothing to drain.
    let bare = builder::build(&spec(&[("x", 1.0), ("y", 0.0)]), &options(None, &[])).unwrap();
    let err = refuse(&bare.snapshot, "y");
    assert!(err.message.contains("nothing to drain"), "{err}");
    for bad in [0, 10_001] {
        assert!(drain::plan(&example, &drain_options("cell-a", bad)).is_err());
    }
}
