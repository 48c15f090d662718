//! The numbers in SPEC.md's worked example, checked against the engine and
//! the committed example snapshot, so the document cannot drift.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_mapping::hash::{DRAW_DOMAIN_MOVE, DRAW_DOMAIN_SHED};
use cell_router_mapping::{CellState, Outcome, Snapshot, Source};

fn example() -> Snapshot {
    Snapshot::parse(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/snapshot.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

#[test]
fn worked_example_numbers() {
    let s = example();
    let key = s.key();
    assert_eq!(key.to_hex(), "7b1f3c9a2e4d6f80a1c3e5f70b2d4f61");
    assert_eq!(s.slot_table().len(), 65_536);

    // The table repeats a b c c.
    for (slot, &cell) in s.slot_table().iter().enumerate() {
        assert_eq!(cell, [0, 1, 2, 2][slot % 4]);
    }

    let h = key.hash(b"tenant-3");
    assert_eq!(h, 0x6f6dec27dc84f6ec);
    assert_eq!(h, 8029333366619043564);
    let r = s.resolve(b"tenant-3", b"");
    assert_eq!(r.slot, 63212);
    assert_eq!(r.source, Source::Slot);
    assert_eq!(r.outcome, Outcome::Route { cell: 0 });

    assert_eq!(key.hash(b"tenant-1"), 10765836628613159011);
    assert_eq!(s.resolve(b"tenant-1", b"").slot, 22627);
    assert_eq!(s.resolve(b"tenant-1", b"").home, 2);

    assert_eq!(key.hash(b"acme-corp"), 5644414979235057051);
    let acme = s.resolve(b"acme-corp", b"");
    assert_eq!(
        (acme.slot, acme.source, acme.home),
        (3483, Source::Override, 2)
    );

    assert_eq!(key.hash(b"mreq-5"), 18294753008135900011);
    assert_eq!(key.draw(DRAW_DOMAIN_MOVE, b"req-5"), 11);
    assert_eq!(key.draw(DRAW_DOMAIN_MOVE, b"req-1"), 6961);
    let g5 = s.resolve(b"globex", b"req-5");
    assert_eq!(
        (g5.slot, g5.source, g5.home),
        (37195, Source::Split { moved: true }, 1)
    );
    let g1 = s.resolve(b"globex", b"req-1");
    assert_eq!((g1.source, g1.home), (Source::Split { moved: false }, 0));

    assert_eq!(key.hash(b"sreq-5"), 871374518575161522);
    assert_eq!(key.draw(DRAW_DOMAIN_SHED, b"req-5"), 1522);
    assert_eq!(key.draw(DRAW_DOMAIN_SHED, b"req-1"), 7196);
}

#[test]
fn worked_example_draining_and_disabled() {
    let mut doc = example().to_doc();
    doc.cells[0].state = CellState::Draining;
    doc.cells[0].shed_ratio = 0.5;
    let drained = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    assert_eq!(
        drained.resolve(b"tenant-3", b"req-5").outcome,
        Outcome::Shed {
            cell: 0,
            retry_after_s: 5
        }
    );
    assert_eq!(
        drained.resolve(b"tenant-3", b"req-1").outcome,
        Outcome::Route { cell: 0 }
    );

    doc.cells[0].state = CellState::Disabled;
    let disabled = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    let r = disabled.resolve(b"tenant-3", b"req-1");
    assert_eq!(
        (r.outcome, r.reason()),
        (Outcome::Route { cell: 1 }, "failover")
    );
    doc.cells[1].state = CellState::Disabled;
    let both = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    assert_eq!(
        both.resolve(b"tenant-3", b"").outcome,
        Outcome::Route { cell: 2 }
    );
    doc.cells[2].state = CellState::Disabled;
    let none = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    assert_eq!(
        none.resolve(b"tenant-3", b"").outcome,
        Outcome::Unavailable { cell: 2 }
    );
}

/// Raising a move's percent never sends a request back to `from`.
#[test]
fn raising_a_move_never_sends_a_request_back() {
    let mut doc = example().to_doc();
    let requests: Vec<String> = (0..2000).map(|i| format!("req-{i}")).collect();
    let mut moved_before = vec![false; requests.len()];
    for percent in [0.0, 1.0, 10.0, 25.0, 50.0, 99.99, 100.0] {
        doc.moves[0].percent = percent;
        let s = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
        let mut count = 0;
        for (i, req) in requests.iter().enumerate() {
            let moved = s.resolve(b"globex", req.as_bytes()).home == 1;
            assert!(moved || !moved_before[i], "{req} went back at {percent}%");
            moved_before[i] = moved;
            count += usize::from(moved);
        }
        // The share moved is close to the percent (2000 draws).
        let share = count as f64 / requests.len() as f64 * 100.0;
        assert!((share - percent).abs() < 4.0, "{percent}% → {share}%");
        if percent == 0.0 {
            assert_eq!(count, 0);
        }
        if percent == 100.0 {
            assert_eq!(count, requests.len());
        }
    }
}

/// A draining cell sheds about `shed_ratio` of its requests, the others
/// are routed to it.
#[test]
fn draining_sheds_its_share() {
    let mut doc = example().to_doc();
    doc.cells[0].state = CellState::Draining;
    for ratio in [0.0, 0.05, 0.3, 1.0] {
        doc.cells[0].shed_ratio = ratio;
        let s = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
        let n = 10_000;
        let shed = (0..n)
            .filter(|i| {
                let r = s.resolve(b"tenant-3", format!("{i}").as_bytes());
                match r.outcome {
                    Outcome::Shed {
                        cell,
                        retry_after_s,
                    } => {
                        assert_eq!((cell, retry_after_s), (0, 5));
                        true
                    }
                    other => {
                        assert_eq!(other, Outcome::Route { cell: 0 });
                        false
                    }
                }
            })
            .count();
        let share = shed as f64 / f64::from(n);
        assert!((share - ratio).abs() < 0.02, "{ratio} → {share}");
    }
}
