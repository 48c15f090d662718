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

use cell_router_mapping::hash::{DRAW_DOMAIN_MOVE, DRAW_DOMAIN_RAMP};
use cell_router_mapping::{CellState, Draws, Outcome, RampDoc, RampStep, Snapshot, Source};

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

/// 2026-01-01T00:00:00Z in Unix milliseconds.
const NEW_YEAR_MS: u64 = 1_767_225_600_000;

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
    let r = s.resolve(b"tenant-3", &Draws::default());
    assert_eq!(r.slot, 63212);
    assert_eq!(r.source, Source::Slot);
    assert_eq!(r.outcome, Outcome::Route { cell: 0 });

    assert_eq!(key.hash(b"tenant-1"), 10765836628613159011);
    assert_eq!(s.resolve(b"tenant-1", &Draws::default()).slot, 22627);
    assert_eq!(s.resolve(b"tenant-1", &Draws::default()).home, 2);

    assert_eq!(key.hash(b"acme-corp"), 5644414979235057051);
    let acme = s.resolve(b"acme-corp", &Draws::default());
    assert_eq!(
        (acme.slot, acme.source, acme.home),
        (3483, Source::Override, 2)
    );

    assert_eq!(key.hash(b"muser-7"), 12761032725855070241);
    assert_eq!(key.draw(DRAW_DOMAIN_MOVE, b"user-7"), 241);
    assert_eq!(key.draw(DRAW_DOMAIN_MOVE, b"user-1"), 5590);
    let g7 = s.resolve(b"globex", &Draws::unshed(b"user-7", 0));
    assert_eq!(
        (g7.slot, g7.source, g7.home),
        (37195, Source::Split { moved: true }, 1)
    );
    let g1 = s.resolve(b"globex", &Draws::unshed(b"user-1", 0));
    assert_eq!((g1.source, g1.home), (Source::Split { moved: false }, 0));
    // The shed draw and the time change nothing about a move.
    for shed in [0, 5000, 9999] {
        for now_ms in [0, NEW_YEAR_MS, u64::MAX] {
            let r = s.resolve(b"globex", &Draws::new(b"user-7", shed, now_ms));
            assert_eq!(r.outcome, Outcome::Route { cell: 1 });
        }
    }
}

#[test]
fn worked_example_draining_and_disabled() {
    let mut doc = example().to_doc();
    doc.cells[0].state = CellState::Draining;
    doc.cells[0].shed_ratio = 0.5;
    let drained = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    // 5000 basis points: shed draws 0…4999 shed, 5000…9999 do not.
    for (shed, outcome) in [
        (
            0,
            Outcome::Shed {
                cell: 0,
                retry_after_s: 5,
            },
        ),
        (
            4999,
            Outcome::Shed {
                cell: 0,
                retry_after_s: 5,
            },
        ),
        (5000, Outcome::Route { cell: 0 }),
        (9999, Outcome::Route { cell: 0 }),
    ] {
        for split_key in [&b""[..], b"user-1", b"user-7"] {
            let r = drained.resolve(b"tenant-3", &Draws::new(split_key, shed, NEW_YEAR_MS));
            assert_eq!(r.outcome, outcome, "shed draw {shed}");
        }
    }

    doc.cells[0].state = CellState::Disabled;
    let disabled = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    let r = disabled.resolve(b"tenant-3", &Draws::new(b"user-1", 0, NEW_YEAR_MS));
    assert_eq!(
        (r.outcome, r.reason()),
        (Outcome::Route { cell: 1 }, "failover")
    );
    doc.cells[1].state = CellState::Disabled;
    let both = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    assert_eq!(
        both.resolve(b"tenant-3", &Draws::default()).outcome,
        Outcome::Route { cell: 2 }
    );
    doc.cells[2].state = CellState::Disabled;
    let none = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    assert_eq!(
        none.resolve(b"tenant-3", &Draws::default()).outcome,
        Outcome::Unavailable { cell: 2 }
    );
}

/// SPEC "Worked example", the ramp: cell-a back from disabled with a
/// 600-second linear ramp from 2026-01-01T00:00:00Z.
#[test]
fn worked_example_ramp() {
    let mut doc = example().to_doc();
    doc.cells[0].ramp = Some(
        serde_json::from_str::<RampDoc>(r#"{"start": "2026-01-01T00:00:00Z", "duration_s": 600}"#)
            .unwrap(),
    );
    let s = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    let key = s.key();
    assert_eq!(key.hash(b"ruser-2"), 4355137935312463044);
    assert_eq!(key.draw(DRAW_DOMAIN_RAMP, b"user-2"), 3044);
    assert_eq!(key.draw(DRAW_DOMAIN_RAMP, b"user-1"), 6978);
    let at = |secs: u64, split_key: &'static [u8]| {
        s.resolve(
            b"tenant-3",
            &Draws::unshed(split_key, NEW_YEAR_MS + secs * 1000),
        )
    };
    assert_eq!(s.cells()[0].ramp_share_bp(NEW_YEAR_MS + 300_000), 5000);

    let r = at(300, b"user-2");
    assert_eq!(r.outcome, Outcome::Route { cell: 0 });
    assert_eq!(
        r.ramp,
        Some(RampStep {
            cell: 0,
            share_bp: 5000,
            kept: true
        })
    );
    assert_eq!(r.reason(), "slot");
    let r = at(300, b"user-1");
    assert_eq!(
        (r.outcome, r.reason()),
        (Outcome::Route { cell: 1 }, "ramp")
    );
    // At 120 s (2000 bp) user-2 is not back yet; user-1 comes back at 420 s
    // (7000 bp > 6978), not at 360 s (6000).
    assert_eq!(at(120, b"user-2").outcome, Outcome::Route { cell: 1 });
    assert_eq!(at(360, b"user-1").outcome, Outcome::Route { cell: 1 });
    assert_eq!(at(420, b"user-1").outcome, Outcome::Route { cell: 0 });
    // Before the start: the from share, 0: everyone on cell-b. After: cell-a.
    assert_eq!(at(0, b"user-7").outcome, Outcome::Route { cell: 1 });
    let after = at(600, b"user-1");
    assert_eq!(
        (after.outcome, after.ramp),
        (Outcome::Route { cell: 0 }, None)
    );
}

/// SPEC.md's worked example with pools and regions: the first pools
/// scenario of `tests/vectors.json`.
#[test]
fn worked_example_with_pools_and_regions() {
    let vectors: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors.json")).unwrap(),
    )
    .unwrap();
    let s = Snapshot::parse(vectors["pools"][0]["snapshot"].to_string().as_bytes()).unwrap();
    assert_eq!(s.key().to_hex(), "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    let (us, eu, ap) = (
        s.region_index("us").unwrap(),
        s.region_index("eu").unwrap(),
        s.region_index("ap").unwrap(),
    );
    for (slot, &region) in s.region_table().iter().enumerate() {
        assert_eq!(usize::from(region), (slot / 4) % 3);
    }
    let pool = |id: &str| s.pool_index(id).unwrap();
    let id = |i: u16| s.cell(i).unwrap().id.as_str();

    // Pools.
    assert_eq!(
        s.pool_for(b"api.example.com", b"/voice/calls/7?x=1"),
        Some(pool("voice"))
    );
    assert_eq!(
        s.pool_for(b"api.example.com", b"/voicemail/1"),
        Some(pool("web"))
    );
    assert_eq!(
        s.pool_for(b"SMS.Example.COM:443", b"/v1/send"),
        Some(pool("sms"))
    );
    assert_eq!(
        s.pool_for(b"sms.example.com", b"/voice;v=2/x"),
        Some(pool("voice"))
    );

    // tenant-3: slot 1, homed in us.
    let h = s.key().hash(b"tenant-3");
    assert_eq!(h, 0x913dc938f0c30a41);
    assert_eq!(h, 10465742355473566273);
    assert_eq!(h % 64, 1);
    assert_eq!(s.home_region(b"tenant-3"), us);
    let voice = pool("voice");
    let at = |tenant: &[u8], pool: u16, region: u16, forwarded: bool, shed: u16| {
        s.resolve_in(
            tenant,
            pool,
            Some(region),
            forwarded,
            &Draws::new(b"user-1", shed, 0),
        )
    };
    let r = at(b"tenant-3", voice, us, false, 4999);
    assert_eq!(id(r.home), "voice-us-2");
    assert_eq!(
        r.outcome,
        Outcome::Shed {
            cell: r.home,
            retry_after_s: 3
        }
    );
    let r = at(b"tenant-3", voice, us, false, 5000);
    assert_eq!(
        (r.outcome, r.reason()),
        (Outcome::Route { cell: r.home }, "slot")
    );
    let r = at(b"tenant-3", pool("web"), us, false, 9999);
    assert_eq!((id(r.final_cell()), r.reason()), ("web-us-2", "pin"));
    assert_eq!(
        at(b"tenant-3", voice, eu, false, 9999).outcome,
        Outcome::Forward { region: us }
    );
    assert_eq!(
        at(b"tenant-3", voice, eu, true, 9999).outcome,
        Outcome::WrongRegion { region: us }
    );

    // acme-gmbh: slot 10 (ap by the table), homed in eu by its override.
    assert_eq!(s.key().hash(b"acme-gmbh") % 64, 10);
    assert_eq!(s.home_region(b"acme-gmbh"), eu);
    for (p, cell, reason) in [
        ("voice", "voice-eu-3", "override"),
        ("sms", "sms-eu-1", "override"),
        ("web", "web-eu-1", "slot"),
    ] {
        let r = at(b"acme-gmbh", pool(p), eu, false, 9999);
        assert_eq!((id(r.final_cell()), r.reason()), (cell, reason), "{p}");
    }
    let mut doc = vectors["pools"][0]["snapshot"].clone();
    doc["pools"][0]["overrides"]["acme-gmbh"] = serde_json::json!("voice-us-1");
    let err = Snapshot::parse(doc.to_string().as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "$.pools[0].overrides[\"acme-gmbh\"]: cell voice-us-1 is in region us but tenant acme-gmbh is homed in eu"
    );

    // tenant-0: slot 44, homed in ap; every voice cell there is disabled.
    assert_eq!(s.key().hash(b"tenant-0") % 64, 44);
    assert_eq!(s.home_region(b"tenant-0"), ap);
    let r = at(b"tenant-0", voice, ap, false, 9999);
    assert_eq!(
        (id(r.final_cell()), r.outcome),
        ("voice-ap-1", Outcome::Unavailable { cell: r.home })
    );
    let r = at(b"tenant-0", pool("media"), ap, false, 9999);
    assert_eq!(
        (id(r.home), id(r.final_cell()), r.reason()),
        ("media-ap-1", "media-ap-2", "failover")
    );
    assert!(matches!(r.outcome, Outcome::Unavailable { .. }));
}
