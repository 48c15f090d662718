//! Snapshot bytes → parse and validate; when a snapshot is accepted, every
//! routing question about it must have an answer inside it. The sidecar
//! feeds the filter exactly these bytes, so a panic here would trap every
//! gateway's VM at once.
#![no_main]

use cell_router_mapping::{Draws, Outcome, Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = Snapshot::parse(data) else {
        return;
    };
    // The version check is the only extra rule of parse_newer.
    let version = snapshot.version();
    assert!(Snapshot::parse_newer(data, Some(version)).is_err());
    if version > 0 {
        assert!(Snapshot::parse_newer(data, Some(version - 1)).is_ok());
    }

    // Tenants: some fixed ones, and slices of the input itself (so the
    // fuzzer can reach override and move entries it wrote).
    let mut tenants: Vec<&[u8]> = vec![b"", b"acme", b"tenant-1", b"\xff\x00"];
    tenants.extend(data.split(|b| *b == b'"').take(64));
    let cells = snapshot.cells().len();
    for tenant in tenants {
        for (split_key, shed, now_ms) in [
            (&b""[..], 0, 0),
            (b"user-1", 4999, 1_767_225_600_000),
            (b"\x00\xff", 9999, u64::MAX),
            (tenant, u16::MAX, 1),
        ] {
            let r = snapshot.resolve(tenant, &Draws::new(split_key, shed, now_ms));
            let cell = match r.outcome {
                Outcome::Route { cell }
                | Outcome::Shed { cell, .. }
                | Outcome::Unavailable { cell } => cell,
            };
            assert!(usize::from(cell) < cells, "cell index out of range");
            assert!(usize::from(r.home) < cells, "home index out of range");
            assert!(
                (r.slot as usize) < snapshot.slot_table().len(),
                "slot out of range"
            );
            let _ = r.reason();
        }
    }
    // What the CLI and the sidecar print must not panic either.
    let _ = snapshot.to_doc().to_json();
});
