//! Applies a 1,000,000-override binary snapshot and reports the time, the
//! memory it holds and resolve latency at 100 % override hits: natively, and
//! inside a Wasm VM (wasm32-wasip1, as the filter runs).
//!
//! ```sh
//! cargo run --release -p cell-router-mapping --example binary_apply -- write /tmp/snap.bin
//! cargo run --release -p cell-router-mapping --example binary_apply -- apply /tmp/snap.bin
//! ```
//!
//! For the VM: the package's dev-dependencies (proptest) do not build for
//! wasm32-wasip1, and examples get them, so build this file as the `main.rs`
//! of a throwaway crate with only `cell-router-mapping = { path = … }` and
//! the workspace's release profile, then
//! `node --no-liftoff mapping/examples/binary_apply_wasi.mjs FILE.wasm /tmp`
//! (it reads `/tmp/snap.bin`; without `--no-liftoff` V8 may still run the
//! baseline compiler's code during the apply).
//!
//! In the VM the file is read into linear memory first (as the filter holds
//! the response body), then decoded in place (`decode_owned`: the snapshot
//! routes from the body's bytes); "held besides the body" is the growth of
//! linear memory during the decode (Wasm memory never shrinks, so this is
//! also the decode's peak above the body).

// A measuring tool, not shipped code: failing loudly on a broken setup is right.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_mapping::builder::allocate_slots;
use cell_router_mapping::snapshot::{CellDoc, CellState, HashDoc, SnapshotDoc, encode_slot_table};
use cell_router_mapping::{Draws, Snapshot, binary};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

const CELLS: usize = 1_000;
const OVERRIDES: usize = 1_000_000;

fn tenant(i: usize) -> String {
    format!("tenant-{i:08}")
}

fn write(path: &str) {
    let cells: Vec<CellDoc> = (0..CELLS)
        .map(|i| CellDoc {
            id: format!("cell-{i:04}"),
            state: CellState::Active,
            weight: 1.0,
            shed_ratio: 0.0,
            retry_after_s: 5,
            failover: None,
            ramp: None,
        })
        .collect();
    let table = allocate_slots(65_536, &cells, None).expect("slots");
    let overrides: BTreeMap<String, String> = (0..OVERRIDES)
        .map(|i| (tenant(i), format!("cell-{:04}", i % CELLS)))
        .collect();
    let json = SnapshotDoc {
        version: 1,
        generated_at: "2026-01-01T00:00:00Z".into(),
        hash: HashDoc {
            algorithm: "siphash-1-3".into(),
            key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
            slots: 65_536,
        },
        cells,
        slot_table: encode_slot_table(&table),
        overrides,
        pins: BTreeMap::new(),
        moves: Vec::new(),
    }
    .to_json();
    let snapshot = Snapshot::parse(json.as_bytes()).expect("parse");
    let bytes = binary::encode(&snapshot);
    std::fs::write(path, &bytes).expect("write");
    println!("wrote {path}: {} bytes", bytes.len());
}

/// Linear memory in bytes (Wasm), or VmRSS (native).
fn memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size::<0>() as u64 * 65_536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }
}

fn apply(path: &str) {
    let bytes = std::fs::read(path).expect("read");
    let size = bytes.len();
    let before = memory_bytes();
    let start = Instant::now();
    let snapshot = binary::decode_owned(bytes).expect("decode");
    let elapsed = start.elapsed();
    let after = memory_bytes();
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let target = if cfg!(target_arch = "wasm32") {
        "wasm32 VM (linear memory)"
    } else {
        "native (VmRSS)"
    };
    println!("binary snapshot: {:.1} MiB, {target}", mib(size as u64));
    println!(
        "  apply (checksum + validation, in place): {:.1} ms (goal ≤ 100 ms: {})",
        elapsed.as_secs_f64() * 1e3,
        if elapsed.as_secs_f64() <= 0.1 {
            "met"
        } else {
            "UNMET"
        }
    );
    println!(
        "  memory with the body: {:.1} MiB before, {:.1} MiB after; held besides the body {:.1} MiB (with it, goal ≤ 32 MiB: {})",
        mib(before),
        mib(after),
        mib(after.saturating_sub(before)),
        if mib(after.saturating_sub(before) + size as u64) <= 32.0 {
            "met"
        } else {
            "UNMET"
        }
    );
    // 100 % hits, dependent: each probe's index waits for the last answer.
    let n = 1_000_000usize;
    // Ids packed in one buffer (all 15 bytes), in a scattered order.
    let width = tenant(0).len();
    let mut ids = Vec::with_capacity(n * width);
    for i in 0..n {
        ids.extend_from_slice(tenant(i.wrapping_mul(7_919) % OVERRIDES).as_bytes());
    }
    let mut i = 0usize;
    let mut acc = 0u64;
    let start = Instant::now();
    for _ in 0..n {
        let id = &ids[i * width..(i + 1) * width];
        let r = snapshot.resolve(black_box(id), &Draws::default());
        acc = acc.wrapping_add(u64::from(r.home));
        i += 1 + (r.slot >> 31) as usize;
        if i >= n {
            i = 0;
        }
    }
    black_box(acc);
    println!(
        "  resolve, 100 % hits over 1 M overrides, dependent: {:.0} ns/op",
        start.elapsed().as_nanos() as f64 / n as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("write"), Some(path)) => write(path),
        (Some("apply"), Some(path)) => apply(path),
        _ => {
            eprintln!("usage: binary_apply write FILE | apply FILE");
            std::process::exit(2);
        }
    }
}
