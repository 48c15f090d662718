//! The draws of the routing function (SPEC "Routing function", "Draws",
//! "Ramps"): moves and ramps split by a stable key, so a user stays on one
//! side and raising a percent or the passing of time never sends it back;
//! shedding depends on the shed draw alone (never on the split key, let alone
//! a request id); a ramp's share at 0, 50 and 100 % of its window.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_mapping::{CellState, Draws, Outcome, RampDoc, Snapshot, SnapshotDoc};
use proptest::prelude::*;

/// 2026-01-01T00:00:00Z in Unix milliseconds.
const T0: u64 = 1_767_225_600_000;

/// The SPEC's example with its table cut to the 4 slots it repeats (every
/// tenant keeps its cell: 65,536 is a multiple of 4), so it parses fast.
fn example_doc() -> SnapshotDoc {
    let mut doc = Snapshot::parse(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/snapshot.json"
        ))
        .unwrap(),
    )
    .unwrap()
    .to_doc();
    doc.hash.slots = 4;
    doc.slot_table = cell_router_mapping::snapshot::encode_slot_table(&[0, 1, 2, 2]);
    doc
}

fn parse(doc: &SnapshotDoc) -> Snapshot {
    Snapshot::parse(doc.to_json().as_bytes()).unwrap()
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// The example with cell-a (failover cell-b) ramping: `ramp` as JSON.
fn ramping(ramp: &str) -> Snapshot {
    let mut doc = example_doc();
    doc.cells[0].ramp = Some(serde_json::from_str::<RampDoc>(ramp).unwrap());
    parse(&doc)
}

/// One user stays on one side of a 25 % move, whatever the shed draw and
/// the time, request after request; and about 25 % of users move.
#[test]
fn a_user_stays_on_one_side_of_a_move() {
    let s = parse(&example_doc());
    let users = users(10_000);
    let mut moved = 0;
    for (i, user) in users.iter().enumerate() {
        let first = s
            .resolve(b"globex", &Draws::new(user.as_bytes(), 0, T0))
            .home;
        for (shed, now_ms) in [(9999, T0 + 1), ((i % 10_000) as u16, u64::MAX), (1234, 0)] {
            let again = s.resolve(b"globex", &Draws::new(user.as_bytes(), shed, now_ms));
            assert_eq!(again.home, first, "{user} changed sides");
        }
        moved += usize::from(first == 1);
    }
    let share = moved as f64 / users.len() as f64;
    assert!((share - 0.25).abs() < 0.015, "25 % move moved {share}");
}

/// Raising a move's percent never sends a user back to `from`; 0 % moves
/// nobody and 100 % everybody.
#[test]
fn raising_a_move_never_sends_a_user_back() {
    let mut doc = example_doc();
    let users = users(5000);
    let mut moved_before = vec![false; users.len()];
    for percent in [0.0, 1.0, 10.0, 25.0, 25.01, 50.0, 99.99, 100.0] {
        doc.moves[0].percent = percent;
        let s = parse(&doc);
        let mut count = 0;
        for (i, user) in users.iter().enumerate() {
            let moved = s
                .resolve(b"globex", &Draws::unshed(user.as_bytes(), T0))
                .home
                == 1;
            assert!(moved || !moved_before[i], "{user} went back at {percent}%");
            moved_before[i] = moved;
            count += usize::from(moved);
        }
        let share = count as f64 / users.len() as f64 * 100.0;
        assert!((share - percent).abs() < 2.5, "{percent}% → {share}%");
        if percent == 0.0 {
            assert_eq!(count, 0);
        }
        if percent == 100.0 {
            assert_eq!(count, users.len());
        }
    }
}

/// A draining cell sheds exactly the shed draws below its share: the split
/// key and the time play no part, and over the 10,000 possible draws
/// exactly `shed_ratio · 10000` shed.
#[test]
fn shedding_depends_on_the_shed_draw_alone() {
    let mut doc = example_doc();
    doc.cells[0].state = CellState::Draining;
    for ratio in [0.0, 0.05, 0.3, 0.99995, 1.0] {
        doc.cells[0].shed_ratio = ratio;
        let s = parse(&doc);
        let want = (ratio * 10_000.0_f64).round() as usize;
        for split_key in [&b""[..], b"user-1", b"user-2", b"tenant-3"] {
            let mut shed = 0;
            for draw in 0..10_000u16 {
                let r = s.resolve(b"tenant-3", &Draws::new(split_key, draw, T0));
                match r.outcome {
                    Outcome::Shed {
                        cell,
                        retry_after_s,
                    } => {
                        assert_eq!((cell, retry_after_s), (0, 5));
                        assert!(usize::from(draw) < want);
                        shed += 1;
                    }
                    other => {
                        assert_eq!(other, Outcome::Route { cell: 0 });
                        assert!(usize::from(draw) >= want);
                    }
                }
            }
            assert_eq!(shed, want, "ratio {ratio}");
        }
        // A draw ≥ 10000 never sheds.
        let r = s.resolve(b"tenant-3", &Draws::new(b"", u16::MAX, T0));
        assert_eq!(r.outcome, Outcome::Route { cell: 0 });
    }
}

/// A draining cell reached by a move sheds by the shed draw too, and the
/// shed draw does not change which side of the move a user is on.
#[test]
fn a_moved_user_on_a_draining_cell_is_shed_by_the_shed_draw() {
    let mut doc = example_doc();
    doc.cells[1].state = CellState::Draining;
    doc.cells[1].shed_ratio = 0.3;
    let s = parse(&doc);
    // user-7 moves to cell-b (SPEC worked example).
    let r = s.resolve(b"globex", &Draws::new(b"user-7", 2999, T0));
    assert!(matches!(r.outcome, Outcome::Shed { cell: 1, .. }));
    let r = s.resolve(b"globex", &Draws::new(b"user-7", 3000, T0));
    assert_eq!(r.outcome, Outcome::Route { cell: 1 });
}

/// The share of a linear ramp's users a cell keeps, over 10,000 users: 0
/// before the start and at it, 25/50/75 % at those points of the window,
/// 100 % at and after the end; the rest go to the failover.
#[test]
fn ramp_share_over_the_window() {
    let s = ramping(r#"{"start": "2026-01-01T00:00:00Z", "duration_s": 600}"#);
    let users = users(10_000);
    let kept_share = |now_ms: u64| {
        let mut kept = 0;
        for user in &users {
            let r = s.resolve(b"tenant-3", &Draws::new(user.as_bytes(), 0, now_ms));
            match r.outcome {
                Outcome::Route { cell: 0 } => kept += 1,
                Outcome::Route { cell: 1 } => assert_eq!(r.reason(), "ramp"),
                other => panic!("{other:?}"),
            }
        }
        kept as f64 / users.len() as f64
    };
    assert_eq!(kept_share(0), 0.0);
    assert_eq!(kept_share(T0 - 1), 0.0);
    assert_eq!(kept_share(T0), 0.0);
    for (secs, want) in [(150, 0.25), (300, 0.5), (450, 0.75)] {
        let got = kept_share(T0 + secs * 1000);
        assert!((got - want).abs() < 0.015, "at {secs} s kept {got}");
    }
    assert_eq!(kept_share(T0 + 600_000), 1.0);
    assert_eq!(kept_share(u64::MAX), 1.0);
}

/// `from_percent` and Envoy's aggression: 20 % at the start, and with
/// aggression 2 the share at a quarter of the window is
/// 20 + 80·√¼ = 60 %.
#[test]
fn ramp_from_percent_and_aggression() {
    let s = ramping(
        r#"{"start": 1767225600, "duration_s": 100, "from_percent": 20, "curve": {"aggression": 2}}"#,
    );
    assert_eq!(s.cells()[0].ramp_share_bp(T0), 2000);
    assert_eq!(s.cells()[0].ramp_share_bp(T0 + 25_000), 6000);
    let users = users(10_000);
    let kept = users
        .iter()
        .filter(|u| {
            s.resolve(b"tenant-3", &Draws::unshed(u.as_bytes(), T0 + 25_000))
                .routed_cell()
                == Some(0)
        })
        .count();
    let share = kept as f64 / users.len() as f64;
    assert!((share - 0.6).abs() < 0.015, "kept {share}");
}

/// A ramp sends the rest to the failover, whose own state applies: a
/// draining failover sheds by the shed draw, a disabled one fails over again.
#[test]
fn ramp_rest_follows_the_failovers_state() {
    let mut doc = example_doc();
    doc.cells[0].ramp =
        Some(serde_json::from_str(r#"{"start": 1767225600, "duration_s": 10}"#).unwrap());
    doc.cells[1].state = CellState::Disabled;
    let s = parse(&doc);
    // At the start nobody stays on cell-a: cell-b is disabled, on to cell-c.
    let r = s.resolve(b"tenant-3", &Draws::unshed(b"user-1", T0));
    assert_eq!(
        (r.outcome, r.reason()),
        (Outcome::Route { cell: 2 }, "ramp")
    );
    doc.cells[1].state = CellState::Draining;
    doc.cells[1].shed_ratio = 1.0;
    let s = parse(&doc);
    let r = s.resolve(b"tenant-3", &Draws::unshed(b"user-1", T0));
    assert!(matches!(r.outcome, Outcome::Shed { cell: 1, .. }));
}

/// Format-1 documents without ramps keep their bytes and their routing: the
/// committed example round-trips byte for byte.
#[test]
fn format_1_documents_are_unchanged() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/snapshot.json");
    let text = std::fs::read_to_string(path).unwrap();
    let s = Snapshot::parse(text.as_bytes()).unwrap();
    assert!(s.cells().iter().all(|c| c.ramp.is_none()));
    assert_eq!(s.to_doc().to_json(), text);
    // A ramp round-trips as written.
    let r = ramping(
        r#"{"start": "2026-01-01T00:00:00.5+01:00", "duration_s": 600, "from_percent": 12.5, "curve": {"aggression": 1.5}}"#,
    );
    let again = Snapshot::parse(r.to_doc().to_json().as_bytes()).unwrap();
    assert_eq!(again.to_doc(), r.to_doc());
    assert_eq!(again.cells()[0].ramp, r.cells()[0].ramp);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any ramp, any two instants t1 ≤ t2, any user: kept at t1 means kept
    /// at t2 (time never sends a user back), and the share never falls.
    #[test]
    fn ramps_never_send_a_user_back(
        duration_s in 1u64..5000,
        from_percent in 0.0f64..=100.0,
        aggression in prop::option::of(0.05f64..20.0),
        t1 in 0u64..6_000_000,
        dt in 0u64..6_000_000,
        user in "[a-z0-9|-]{0,24}",
    ) {
        let curve = match aggression {
            Some(a) => format!(r#", "curve": {{"aggression": {a}}}"#),
            None => String::new(),
        };
        let s = ramping(&format!(
            r#"{{"start": {}, "duration_s": {duration_s}, "from_percent": {from_percent}{curve}}}"#,
            T0 / 1000
        ));
        let at = |t: u64| s.resolve(b"tenant-3", &Draws::unshed(user.as_bytes(), T0 - 1000 + t));
        let (a, b) = (at(t1), at(t1 + dt));
        prop_assert!(s.cells()[0].ramp_share_bp(T0 - 1000 + t1) <= s.cells()[0].ramp_share_bp(T0 - 1000 + t1 + dt));
        if a.routed_cell() == Some(0) {
            prop_assert_eq!(b.routed_cell(), Some(0));
        }
    }

    /// Any percent p1 ≤ p2 and user: moved at p1 means moved at p2.
    #[test]
    fn moves_never_send_a_user_back(p1 in 0.0f64..=100.0, dp in 0.0f64..=100.0, user in ".{0,24}") {
        let mut doc = example_doc();
        let at = |doc: &mut SnapshotDoc, p: f64| {
            doc.moves[0].percent = p.min(100.0);
            parse(doc).resolve(b"globex", &Draws::unshed(user.as_bytes(), T0)).home
        };
        if at(&mut doc, p1) == 1 {
            prop_assert_eq!(at(&mut doc, p1 + dp), 1);
        }
    }
}
