//! The builder's promises (SPEC.md, "Builder"), checked against quotas and
//! move counts computed here independently with exact integer arithmetic.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_mapping::builder::{self, Build, BuildOptions, Spec};
use cell_router_mapping::{CellState, Draws, Snapshot, Source};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const KEY: &str = "00112233445566778899aabbccddeeff";
const AT: &str = "2026-01-01T00:00:00Z";

fn state_name(state: CellState) -> &'static str {
    state.as_str()
}

/// A spec with cells `c0..` of the given integer weights and states.
fn spec_json(slots: u32, cells: &[(u32, CellState)]) -> Value {
    let cells: Vec<Value> = cells
        .iter()
        .enumerate()
        .map(|(i, (w, s))| json!({"id": format!("c{i}"), "weight": w, "state": state_name(*s)}))
        .collect();
    json!({"hash": {"key": KEY, "slots": slots}, "cells": cells})
}

fn spec(doc: &Value) -> Spec {
    Spec::parse(doc.to_string().as_bytes()).unwrap()
}

fn build(doc: &Value, previous: Option<&Snapshot>, known: &[String]) -> Build {
    builder::build(
        &spec(doc),
        &BuildOptions {
            previous,
            known_tenants: known,
            generated_at: AT,
        },
    )
    .unwrap()
}

fn counts(s: &Snapshot) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = s.cells().iter().map(|c| (c.id.clone(), 0)).collect();
    for &i in s.slot_table() {
        *out.get_mut(&s.cells()[usize::from(i)].id).unwrap() += 1;
    }
    out
}

/// Slots whose cell (by id) differs.
fn moved(old: &Snapshot, new: &Snapshot) -> u64 {
    old.slot_table()
        .iter()
        .zip(new.slot_table())
        .filter(|(a, b)| old.cells()[usize::from(**a)].id != new.cells()[usize::from(**b)].id)
        .count() as u64
}

/// floor and whether a ceiling exists, for R·w/W.
fn share(r: u64, w: u64, total: u64) -> (u64, bool) {
    ((r * w) / total, !(r * w).is_multiple_of(total))
}

/// The fewest slots any floor/ceiling assignment must move, given the
/// previous counts: every removed cell's slots, plus each active cell's
/// excess over its quota, where the `extra` ceilings go to cells that can
/// use them.
fn minimum_moves(
    slots: u64,
    cells: &[(String, u64, CellState)],
    previous: &BTreeMap<String, u64>,
) -> u64 {
    let held = |id: &str| previous.get(id).copied().unwrap_or(0);
    let removed: u64 = previous
        .iter()
        .filter(|(id, _)| !cells.iter().any(|c| &c.0 == *id))
        .map(|(_, n)| n)
        .sum();
    let kept: u64 = cells
        .iter()
        .filter(|c| c.2 != CellState::Active)
        .map(|c| held(&c.0))
        .sum();
    let r = slots - kept;
    let active: Vec<&(String, u64, CellState)> =
        cells.iter().filter(|c| c.2 == CellState::Active).collect();
    let total: u64 = active.iter().map(|c| c.1).sum();
    if r == 0 || total == 0 {
        return removed;
    }
    let mut excess = 0;
    let mut floors = 0;
    let mut could_use_ceiling = 0;
    for c in &active {
        let (floor, has_ceiling) = share(r, c.1, total);
        floors += floor;
        excess += held(&c.0).saturating_sub(floor);
        if has_ceiling && held(&c.0) > floor {
            could_use_ceiling += 1;
        }
    }
    let extra = r - floors;
    removed + excess - extra.min(could_use_ceiling)
}

fn cells_strategy(max: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..20, 1..max)
        .prop_filter("a positive weight", |w| w.iter().any(|&x| x > 0))
}

fn slots_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 1u32..3000, 1 => Just(65_536u32)]
}

fn active(weights: &[u32]) -> Vec<(u32, CellState)> {
    weights.iter().map(|&w| (w, CellState::Active)).collect()
}

fn described(weights: &[u32], states: &[CellState]) -> Vec<(String, u64, CellState)> {
    weights
        .iter()
        .zip(states)
        .enumerate()
        .map(|(i, (&w, &s))| (format!("c{i}"), u64::from(w), s))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Each active cell's slots are ⌊S·w/W⌋ or ⌈S·w/W⌉: within one slot of
    /// its weight share.
    #[test]
    fn slot_share_is_within_one_slot_of_the_weight_share(slots in slots_strategy(), weights in cells_strategy(16)) {
        let b = build(&spec_json(slots, &active(&weights)), None, &[]);
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let got = counts(&b.snapshot);
        prop_assert_eq!(got.values().sum::<u64>(), u64::from(slots));
        for (i, &w) in weights.iter().enumerate() {
            let n = got[&format!("c{i}")];
            let (floor, has_ceiling) = share(u64::from(slots), u64::from(w), total);
            prop_assert!(n == floor || (has_ceiling && n == floor + 1), "c{i}: {n} slots, share {floor}+");
        }
    }

    /// Draining and disabled cells keep exactly their slots; active cells
    /// share the rest by weight.
    #[test]
    fn inactive_cells_keep_their_slots(slots in slots_strategy(), weights in cells_strategy(10), flags in prop::collection::vec(0u8..4, 10)) {
        let first = build(&spec_json(slots, &active(&weights)), None, &[]);
        let states: Vec<CellState> = weights.iter().zip(&flags).map(|(_, f)| match f {
            0 => CellState::Draining,
            1 => CellState::Disabled,
            _ => CellState::Active,
        }).collect();
        let doc = spec_json(slots, &weights.iter().copied().zip(states.iter().copied()).collect::<Vec<_>>());
        let Ok(second) = builder::build(&spec(&doc), &BuildOptions { previous: Some(&first.snapshot), known_tenants: &[], generated_at: AT }) else {
            // Only refused when no active weight is left to own free slots.
            let active_weight: u32 = weights.iter().zip(&states).filter(|(_, s)| **s == CellState::Active).map(|(w, _)| *w).sum();
            prop_assert_eq!(active_weight, 0);
            return Ok(());
        };
        let before = counts(&first.snapshot);
        let after = counts(&second.snapshot);
        let kept: u64 = states.iter().enumerate().filter(|(_, s)| **s != CellState::Active).map(|(i, _)| before[&format!("c{i}")]).sum();
        let r = u64::from(slots) - kept;
        let total: u64 = weights.iter().zip(&states).filter(|(_, s)| **s == CellState::Active).map(|(w, _)| u64::from(*w)).sum();
        for (i, s) in states.iter().enumerate() {
            let id = format!("c{i}");
            if *s == CellState::Active {
                let (floor, has_ceiling) = share(r, u64::from(weights[i]), total.max(1));
                prop_assert!(after[&id] == floor || (has_ceiling && after[&id] == floor + 1));
            } else {
                prop_assert_eq!(after[&id], before[&id]);
            }
        }
        // A state change moves only what the floor/ceiling rule forces
        // (none at all unless a share became an exact integer).
        prop_assert_eq!(moved(&first.snapshot, &second.snapshot), minimum_moves(u64::from(slots), &described(&weights, &states), &before));
        prop_assert_eq!(u64::from(second.report.slots_moved), moved(&first.snapshot, &second.snapshot));
    }

    /// Removing a cell moves its slots, plus only what the floor/ceiling
    /// rule forces; every other slot stays.
    #[test]
    fn removing_a_cell_moves_exactly_its_slots(slots in slots_strategy(), weights in cells_strategy(12), pick in any::<prop::sample::Index>()) {
        prop_assume!(weights.len() >= 2);
        let first = build(&spec_json(slots, &active(&weights)), None, &[]);
        let k = pick.index(weights.len());
        let mut doc = spec_json(slots, &active(&weights));
        doc["cells"].as_array_mut().unwrap().remove(k);
        let remaining: u32 = weights.iter().enumerate().filter(|(i, _)| *i != k).map(|(_, w)| *w).sum();
        prop_assume!(remaining > 0);
        let second = build(&doc, Some(&first.snapshot), &[]);
        let before = counts(&first.snapshot);
        let cells: Vec<(String, u64, CellState)> = described(&weights, &vec![CellState::Active; weights.len()])
            .into_iter().enumerate().filter(|(i, _)| *i != k).map(|(_, c)| c).collect();
        let expected = minimum_moves(u64::from(slots), &cells, &before);
        prop_assert_eq!(moved(&first.snapshot, &second.snapshot), expected);
        let removed_slots = before[&format!("c{k}")];
        prop_assert!(expected >= removed_slots);
        // Slots of cells that stay within their quota never move.
        let after = counts(&second.snapshot);
        for (slot, (&a, &b)) in first.snapshot.slot_table().iter().zip(second.snapshot.slot_table()).enumerate() {
            let old = &first.snapshot.cells()[usize::from(a)].id;
            let new = &second.snapshot.cells()[usize::from(b)].id;
            if old != new && old != &format!("c{k}") {
                prop_assert!(after[old] < before[old], "slot {slot} left {old}, which was not over quota");
            }
        }
    }

    /// A weight change (or a new cell) moves the minimum: Σ max(0, old − new
    /// quota), with the ceilings placed where they save moves.
    #[test]
    fn weight_change_moves_the_minimum(slots in slots_strategy(), weights in cells_strategy(12), changes in prop::collection::vec(0u32..20, 12), add in 0u32..4) {
        let first = build(&spec_json(slots, &active(&weights)), None, &[]);
        let mut new_weights: Vec<u32> = weights.iter().zip(&changes).map(|(w, c)| if c % 3 == 0 { *c } else { *w }).collect();
        new_weights.extend(std::iter::repeat_n(3, add as usize));
        prop_assume!(new_weights.iter().any(|&w| w > 0));
        let second = build(&spec_json(slots, &active(&new_weights)), Some(&first.snapshot), &[]);
        let before = counts(&first.snapshot);
        let after = counts(&second.snapshot);
        let over: u64 = before.iter().map(|(id, n)| n.saturating_sub(after[id])).sum();
        prop_assert_eq!(moved(&first.snapshot, &second.snapshot), over);
        let cells = described(&new_weights, &vec![CellState::Active; new_weights.len()]);
        prop_assert_eq!(over, minimum_moves(u64::from(slots), &cells, &before));
    }

    /// The same inputs give byte-identical snapshots.
    #[test]
    fn builds_are_reproducible(slots in slots_strategy(), weights in cells_strategy(8), changes in prop::collection::vec(0u32..9, 8)) {
        let doc = spec_json(slots, &active(&weights));
        let a = build(&doc, None, &[]);
        prop_assert_eq!(&a.json, &build(&doc, None, &[]).json);
        let new_weights: Vec<u32> = weights.iter().zip(&changes).map(|(w, c)| w + c).collect();
        let doc2 = spec_json(slots, &active(&new_weights));
        let known: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let b1 = build(&doc2, Some(&a.snapshot), &known);
        let b2 = build(&doc2, Some(&a.snapshot), &known);
        prop_assert_eq!(&b1.json, &b2.json);
        prop_assert_eq!(b1.snapshot.version(), 2);
    }

    /// Known tenants stay in their cell across ring changes until deliberately
    /// migrated, and every pin is needed (differs from the ring's answer).
    #[test]
    fn known_tenants_stay_put(weights in cells_strategy(6), w2 in prop::collection::vec(1u32..9, 8), w3 in prop::collection::vec(1u32..9, 9)) {
        let known: Vec<String> = (0..400).map(|i| format!("tenant-{i}")).collect();
        let v1 = build(&spec_json(1031, &active(&weights)), None, &[]);
        let home = |s: &Snapshot, t: &str| s.cells()[usize::from(s.resolve(t.as_bytes(), &Draws::default()).home)].id.clone();
        // v2: new weights and two more cells; v3: weights again and one more.
        let mut g2 = weights.clone();
        g2.iter_mut().zip(&w2).for_each(|(w, n)| *w = *n);
        g2.extend([2, 5]);
        let v2 = build(&spec_json(1031, &active(&g2)), Some(&v1.snapshot), &known);
        let mut g3 = g2.clone();
        g3.iter_mut().zip(&w3).for_each(|(w, n)| *w = *n);
        g3.push(4);
        let v3 = build(&spec_json(1031, &active(&g3)), Some(&v2.snapshot), &known);
        for t in &known {
            let original = home(&v1.snapshot, t);
            prop_assert_eq!(&home(&v2.snapshot, t), &original);
            prop_assert_eq!(&home(&v3.snapshot, t), &original);
        }
        for s in [&v2.snapshot, &v3.snapshot] {
            for (tenant, cell) in s.pins() {
                let r = s.resolve(tenant.as_bytes(), &Draws::default());
                prop_assert_eq!(r.source, Source::Pin);
                let ring = &s.cells()[usize::from(s.slot_table()[r.slot as usize])].id;
                prop_assert_ne!(ring, &cell, "pin of {} is not needed", tenant);
            }
        }
        let r2 = &v2.report;
        prop_assert_eq!(r2.pins, r2.pins_added);
        prop_assert_eq!(v3.report.pins, v3.report.pins_added + v3.report.pins_kept);
    }
}

fn example_spec() -> Value {
    serde_json::from_slice(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/spec.json")).unwrap(),
    )
    .unwrap()
}

fn example_snapshot_bytes() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/snapshot.json"
    ))
    .unwrap()
}

#[test]
fn the_example_snapshot_is_built_from_the_example_spec() {
    let committed = example_snapshot_bytes();
    let snapshot = Snapshot::parse(&committed).unwrap();
    let built = builder::build(
        &spec(&example_spec()),
        &BuildOptions {
            previous: None,
            known_tenants: &[],
            generated_at: snapshot.generated_at(),
        },
    )
    .unwrap();
    assert_eq!(
        built.json.as_bytes(),
        &committed[..],
        "examples/snapshot.json is stale: rebuild it (SPEC.md, Worked example)"
    );
}

/// Draining, disabling and re-enabling a cell leave the table untouched: its
/// tenants shed or fail over, then come back.
#[test]
fn state_changes_move_no_slot_on_the_example() {
    let v1 = Snapshot::parse(&example_snapshot_bytes()).unwrap();
    let mut doc = example_spec();
    doc["cells"][1]["state"] = json!("draining");
    doc["cells"][1]["shed_ratio"] = json!(0.3);
    let v2 = build(&doc, Some(&v1), &[]);
    doc["cells"][1]["state"] = json!("disabled");
    doc["cells"][2]["state"] = json!("draining");
    let v3 = build(&doc, Some(&v2.snapshot), &[]);
    doc["cells"][1]["state"] = json!("active");
    doc["cells"][2]["state"] = json!("active");
    let v4 = build(&doc, Some(&v3.snapshot), &[]);
    for s in [&v2.snapshot, &v3.snapshot, &v4.snapshot] {
        assert_eq!(s.slot_table(), v1.slot_table());
    }
    assert_eq!(v4.snapshot.version(), 4);
    assert_eq!(
        v2.report.slots_moved + v3.report.slots_moved + v4.report.slots_moved,
        0
    );
}

/// The rare case the floor/ceiling rule forces: 8 slots, weights 2,2,9,9,2,5.
/// c5 holds 1 slot; without it c2 and c3 have exact shares of 3 and need one
/// more slot each, so one of c0, c1, c4 (1 slot each, shares of ⅔) must give
/// its slot up too. Two slots move, and no assignment within the rule moves
/// fewer.
#[test]
fn removal_can_force_one_extra_move_and_the_builder_takes_the_minimum() {
    let weights = [2, 2, 9, 9, 2, 5];
    let v1 = build(&spec_json(8, &active(&weights)), None, &[]);
    let before = counts(&v1.snapshot);
    assert_eq!(
        before.values().copied().collect::<Vec<_>>(),
        vec![1, 1, 2, 2, 1, 1]
    );
    let v2 = build(
        &spec_json(8, &active(&weights[..5])),
        Some(&v1.snapshot),
        &[],
    );
    assert_eq!(
        counts(&v2.snapshot).values().copied().collect::<Vec<_>>(),
        vec![1, 1, 3, 3, 0]
    );
    assert_eq!(moved(&v1.snapshot, &v2.snapshot), 2);
}

#[test]
fn pinning_reports_and_respects_deliberate_migrations() {
    let v1 = Snapshot::parse(&example_snapshot_bytes()).unwrap();
    let known: Vec<String> = (0..3000)
        .map(|i| format!("tenant-{i}"))
        .chain(["acme-corp".to_string(), "globex".to_string()])
        .collect();
    let home = |s: &Snapshot, t: &str| {
        s.cells()[usize::from(s.resolve(t.as_bytes(), &Draws::default()).home)]
            .id
            .clone()
    };

    // v2: a fourth cell joins; the spec drops acme-corp's override.
    let mut doc = example_spec();
    doc["cells"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "cell-d", "weight": 2}));
    doc["overrides"] = json!({});
    let v2 = build(&doc, Some(&v1), &known);
    let ring_moved = known[..3000]
        .iter()
        .filter(|t| {
            let r = v2.snapshot.resolve(t.as_bytes(), &Draws::default());
            v2.snapshot.cells()[usize::from(v2.snapshot.slot_table()[r.slot as usize])].id
                != home(&v1, t)
        })
        .count();
    assert!(ring_moved > 500, "{ring_moved}");
    assert_eq!(v2.report.pins_added, ring_moved);
    assert_eq!(v2.report.unpinnable, 0);
    for t in &known[..3000] {
        assert_eq!(home(&v2.snapshot, t), home(&v1, t), "{t}");
    }
    // The removed override is a deliberate migration: acme-corp follows the
    // ring, and globex (a move) is left to its move.
    let acme = v2.snapshot.resolve(b"acme-corp", &Draws::default());
    assert_eq!(acme.source, Source::Slot);
    assert!(!v2.snapshot.pins().contains_key("acme-corp"));
    assert!(matches!(
        v2.snapshot.resolve(b"globex", &Draws::default()).source,
        Source::Split { .. }
    ));
    // Unknown tenants are not pinned.
    assert!(v2.snapshot.pins().keys().all(|t| known.contains(t)));

    // v3: cell-a is removed. Its pinned tenants cannot stay; an explicit
    // override replaces one pin; the rest are kept without --tenants.
    let pinned_to_a: Vec<String> = v2
        .snapshot
        .pins()
        .into_iter()
        .filter(|(_, c)| c == "cell-a")
        .map(|(t, _)| t)
        .collect();
    let (overridden, cell) = v2
        .snapshot
        .pins()
        .into_iter()
        .find(|(_, c)| c == "cell-c")
        .unwrap();
    let mut doc3 = doc.clone();
    doc3["cells"].as_array_mut().unwrap().remove(0);
    doc3["cells"][0].as_object_mut().unwrap().remove("failover");
    doc3["moves"] = json!([]);
    doc3["overrides"] = json!({ overridden.clone(): "cell-b" });
    let v3 = build(&doc3, Some(&v2.snapshot), &[]);
    let pins3 = v3.snapshot.pins();
    assert!(pinned_to_a.iter().all(|t| !pins3.contains_key(t)));
    assert!(!pins3.contains_key(&overridden));
    assert_eq!(home(&v3.snapshot, &overridden), "cell-b");
    assert_ne!(cell, "cell-b");
    let released = v3.report.pins_released;
    assert!(released > pinned_to_a.len(), "{released}");
    assert!(v3.report.unpinnable >= pinned_to_a.len());
    for (t, c) in &v2.snapshot.pins() {
        if c != "cell-a" && t != &overridden {
            assert_eq!(&home(&v3.snapshot, t), c, "{t}");
        }
    }
}

/// Refused specs name the path in the spec.
#[test]
fn spec_errors_name_the_path() {
    let bad = |doc: Value, previous: Option<&Snapshot>| -> (String, String) {
        let err = match Spec::parse(doc.to_string().as_bytes()) {
            Err(e) => e,
            Ok(s) => builder::build(
                &s,
                &BuildOptions {
                    previous,
                    known_tenants: &[],
                    generated_at: AT,
                },
            )
            .unwrap_err(),
        };
        (err.path, err.message)
    };
    let base = example_spec();
    let v1 = Snapshot::parse(&example_snapshot_bytes()).unwrap();
    let cases: Vec<(Value, Option<&Snapshot>, &str, &str)> = vec![
        (
            {
                let mut d = base.clone();
                d["cells"][0]["colour"] = json!(1);
                d
            },
            None,
            "$.cells[0].colour",
            "unknown field",
        ),
        (
            {
                let mut d = base.clone();
                d["generated_at"] = json!("x");
                d
            },
            None,
            "$.generated_at",
            "unknown field",
        ),
        (
            {
                let mut d = base.clone();
                d["hash"].as_object_mut().unwrap().remove("key");
                d
            },
            None,
            "$.hash.key",
            "missing field",
        ),
        (
            {
                let mut d = base.clone();
                d["hash"]["key"] = json!("xyz");
                d
            },
            None,
            "$.hash.key",
            "32 hex",
        ),
        (
            {
                let mut d = base.clone();
                d["hash"]["slots"] = json!(0);
                d
            },
            None,
            "$.hash.slots",
            "between 1 and",
        ),
        (
            {
                let mut d = base.clone();
                d["hash"]["algorithm"] = json!("md5");
                d
            },
            None,
            "$.hash.algorithm",
            "unknown algorithm",
        ),
        (
            {
                let mut d = base.clone();
                d["cells"][1]["weight"] = json!(-2);
                d
            },
            None,
            "$.cells[1].weight",
            "≥ 0",
        ),
        (
            {
                let mut d = base.clone();
                d["overrides"]["acme-corp"] = json!("cell-x");
                d
            },
            None,
            "$.overrides[\"acme-corp\"]",
            "unknown cell",
        ),
        (
            {
                let mut d = base.clone();
                d["moves"][0]["to"] = json!("cell-x");
                d
            },
            None,
            "$.moves[0].to",
            "unknown cell",
        ),
        (
            {
                let mut d = base.clone();
                d["moves"][0]["tenant"] = json!("acme-corp");
                d
            },
            None,
            "$.moves[0].tenant",
            "more than once",
        ),
        (
            {
                let mut d = base.clone();
                d["moves"][0]["percent"] = json!(101);
                d
            },
            None,
            "$.moves[0].percent",
            "between 0 and 100",
        ),
        (
            {
                let mut d = base.clone();
                for c in d["cells"].as_array_mut().unwrap() {
                    c["state"] = json!("draining");
                }
                d
            },
            None,
            "$.cells",
            "no active cell",
        ),
        (
            {
                let mut d = base.clone();
                d["cells"][0]["weight"] = json!(0);
                d["cells"][1]["weight"] = json!(0);
                d["cells"][2]["weight"] = json!(0);
                d
            },
            None,
            "$.cells",
            "no active cell",
        ),
        (
            {
                let mut d = base.clone();
                d["hash"]["slots"] = json!(1024);
                d
            },
            Some(&v1),
            "$.hash.slots",
            "differs from the previous",
        ),
        (
            {
                let mut d = base.clone();
                d["hash"]["key"] = json!("ffffffffffffffffffffffffffffffff");
                d
            },
            Some(&v1),
            "$.hash.key",
            "differs from the previous",
        ),
    ];
    for (doc, previous, path, words) in cases {
        let (p, m) = bad(doc, previous);
        assert_eq!(p, path, "{m}");
        assert!(m.contains(words), "{p}: {m} lacks {words:?}");
    }
    // A tenant twice in the spec's overrides: JSON allows the text, we don't.
    let text = r#"{"hash":{"key":"00112233445566778899aabbccddeeff"},"cells":[{"id":"a"}],"overrides":{"t":"a","t":"a"}}"#;
    let err = Spec::parse(text.as_bytes()).unwrap_err();
    assert_eq!(err.path, "$.overrides.t");
    assert!(err.message.contains("more than once"));
}

#[test]
fn defaults_and_versions() {
    let doc = json!({"hash": {"key": KEY}, "cells": [{"id": "only"}]});
    let b = build(&doc, None, &[]);
    assert_eq!(b.snapshot.slot_table().len(), 65_536);
    assert_eq!(b.snapshot.version(), 1);
    assert_eq!(b.doc.hash.algorithm, "siphash-1-3");
    let mut with_version = doc.clone();
    with_version["version"] = json!(41);
    let v41 = build(&with_version, None, &[]);
    assert_eq!(v41.snapshot.version(), 41);
    // With a previous snapshot the version is always previous + 1.
    assert_eq!(
        build(&with_version, Some(&v41.snapshot), &[])
            .snapshot
            .version(),
        42
    );
    // Keys are written in lowercase whatever the spec's case.
    let mut upper = doc;
    upper["hash"]["key"] = json!(KEY.to_uppercase());
    assert_eq!(build(&upper, None, &[]).doc.hash.key, KEY);
}
