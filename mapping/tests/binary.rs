//! The binary snapshot form (`SPEC.md`, "Binary form"): it routes exactly as
//! the JSON form, refuses every corruption, never panics, and never routes a
//! stranger to an override cell, whatever the hash says.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use cell_router_mapping::binary::{self, HEADER_LEN};
use cell_router_mapping::table::Keys;
use cell_router_mapping::{Draws, Snapshot, Source};
use proptest::prelude::*;
use serde_json::{Value, json};

mod pooled_gen;

fn table(indexes: &[u16]) -> String {
    let bytes: Vec<u8> = indexes.iter().flat_map(|i| i.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn small() -> Value {
    json!({
        "version": 7,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 8},
        "cells": [
            {"id": "cell-a", "state": "active", "weight": 1, "retry_after_s": 5, "failover": "cell-b"},
            {"id": "cell-b", "state": "draining", "weight": 1, "shed_ratio": 0.5, "retry_after_s": 5},
            {"id": "cell-c", "state": "disabled", "weight": 2, "retry_after_s": 5, "failover": "cell-a"}
        ],
        "slot_table": table(&[0, 1, 2, 2, 0, 1, 2, 2]),
        "overrides": {"acme": "cell-c"},
        "pins": {"initech": "cell-b"},
        "moves": [{"tenant": "globex", "from": "cell-a", "to": "cell-b", "percent": 25}]
    })
}

fn parse(doc: &Value) -> Snapshot {
    Snapshot::parse(doc.to_string().as_bytes()).unwrap()
}

/// Split keys, shed draws and clocks that exercise moves, shedding and
/// ramps.
fn some_draws() -> Vec<Draws<'static>> {
    let mut out = Vec::new();
    for (split_key, shed) in [
        (&b""[..], 0u16),
        (b"user-1", 2999),
        (b"user-7", 5000),
        (b"u", 9999),
    ] {
        for now_ms in [0, 1_767_225_600_000, 1_767_225_900_000, u64::MAX] {
            out.push(Draws::new(split_key, shed, now_ms));
        }
    }
    out
}

/// Every probe routes the same in both snapshots, for several draws.
fn assert_same_routes(a: &Snapshot, b: &Snapshot, probes: &[Vec<u8>]) {
    for probe in probes {
        for draws in some_draws() {
            assert_eq!(
                a.resolve(probe, &draws),
                b.resolve(probe, &draws),
                "{probe:?}"
            );
        }
    }
}

#[test]
fn round_trip_routes_and_documents_identically() {
    let json = parse(&small());
    let bytes = binary::encode(&json);
    assert!(binary::is_binary(&bytes));
    let back = binary::decode(&bytes).unwrap();
    assert_eq!(back.version(), 7);
    assert_eq!(back.to_doc(), json.to_doc());
    let probes: Vec<Vec<u8>> = ["acme", "initech", "globex", "nobody", "", "acm", "acmee"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_same_routes(&json, &back, &probes);
    // Deterministic, and parse_any tells the forms apart.
    assert_eq!(binary::encode(&back), bytes);
    assert_eq!(
        binary::parse_any(small().to_string().as_bytes())
            .unwrap()
            .to_doc(),
        json.to_doc()
    );
    assert_eq!(binary::parse_any(&bytes).unwrap().to_doc(), json.to_doc());
    assert!(binary::parse_any_newer(&bytes, Some(7)).is_err());
    assert!(binary::parse_any_newer(&bytes, Some(6)).is_ok());
}

/// The form keyed by hash: flagged in the header, 10 bytes a tenant instead
/// of 4 + the id, routes as the JSON form, re-encodes to the same bytes,
/// refuses every truncation and bit flip, and cannot be listed as JSON.
#[test]
fn hashed_keys_route_identically_in_fewer_bytes() {
    let json = parse(&small());
    let by_id = binary::encode(&json);
    let bytes = binary::encode_hashed(&json).unwrap();
    assert_eq!(&bytes[12..16], &binary::FLAG_HASHED_KEYS.to_le_bytes());
    assert_eq!(&by_id[12..16], &0u32.to_le_bytes());
    let back = binary::decode(&bytes).unwrap();
    assert_eq!(back.keys(), Keys::Hashes);
    assert_eq!(binary::decode(&by_id).unwrap().keys(), Keys::Ids);
    assert_eq!(back.tenant_entries(), json.tenant_entries());
    let probes: Vec<Vec<u8>> = ["acme", "initech", "globex", "nobody", "", "acm", "acmee"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_same_routes(&json, &back, &probes);
    assert_eq!(binary::encode(&back), bytes);
    // A table keyed by hash lists no tenant: its JSON would lose them.
    assert!(back.overrides().is_empty() && !json.overrides().is_empty());
    // Arena: the ids' bytes + 4 each by id, 10 each by hash (smaller from
    // 7-byte ids on).
    let ids: usize = json
        .tenant_table()
        .iter()
        .map(|(t, _, _)| t.len() + 4)
        .sum();
    let entries = json.tenant_entries();
    assert_eq!(by_id.len() + 10 * entries, bytes.len() + ids);
    for len in 0..bytes.len() {
        assert!(binary::decode(&bytes[..len]).is_err(), "truncated to {len}");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            assert!(binary::decode(&bad).is_err(), "byte {i} bit {bit}");
        }
    }
    // Unknown flags are refused, even resealed.
    let mut flagged = bytes.clone();
    flagged[12] = 3;
    let error = binary::decode(&reseal(flagged)).unwrap_err().to_string();
    assert!(error.contains("unknown flags 0x3"), "{error}");
}

/// Records keyed by hash must be in increasing hash order within a bucket:
/// a swapped or repeated record is refused, resealed or not.
#[test]
fn hashed_records_out_of_order_or_repeated_are_refused() {
    // One bucket (at most 4 tenants): records 0..3 in hash order.
    let json = parse(&small());
    let bytes = binary::encode_hashed(&json).unwrap();
    let (arena, len) = section(&bytes, 4);
    assert_eq!(len, 10 * json.tenant_entries());
    assert!(json.tenant_entries() >= 2);
    let mut swapped = bytes.clone();
    let (a, b) = (arena, arena + 10);
    let first: Vec<u8> = swapped[a..a + 10].to_vec();
    let second: Vec<u8> = swapped[b..b + 10].to_vec();
    swapped[a..a + 10].copy_from_slice(&second);
    swapped[b..b + 10].copy_from_slice(&first);
    let error = binary::decode(&reseal(swapped)).unwrap_err().to_string();
    assert!(error.contains("out of hash order"), "{error}");
    let mut repeated = bytes.clone();
    repeated[b..b + 8].copy_from_slice(&first[..8]);
    let error = binary::decode(&reseal(repeated)).unwrap_err().to_string();
    assert!(error.contains("more than once"), "{error}");
}

#[test]
fn every_truncation_and_every_single_bit_flip_is_refused() {
    let bytes = binary::encode(&parse(&small()));
    for len in 0..bytes.len() {
        assert!(binary::decode(&bytes[..len]).is_err(), "truncated to {len}");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            assert!(binary::decode(&bad).is_err(), "byte {i} bit {bit}");
        }
    }
}

/// Re-seals a modified body with a correct checksum, so that the structural
/// checks behind the checksum are what refuses it.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let body = bytes.len() - 8;
    let sum = binary::checksum(&bytes[..body]);
    bytes[body..].copy_from_slice(&sum.to_le_bytes());
    bytes
}

/// Offset and length of section `i` (0 generated_at … 5 tenant_buckets).
fn section(bytes: &[u8], i: usize) -> (usize, usize) {
    let at = 48 + i * 16;
    let word = |a: usize| u64::from_le_bytes(bytes[a..a + 8].try_into().unwrap()) as usize;
    (word(at), word(at + 8))
}

#[test]
fn a_resealed_but_inconsistent_body_is_refused() {
    let bytes = binary::encode(&parse(&small()));
    let (arena, arena_len) = section(&bytes, 4);
    assert!(arena_len > 0);
    // Flip every byte of the tenant arena and directory in turn: a tenant
    // renamed, moved to another bucket, given another kind, value or length.
    let (_, buckets_len) = section(&bytes, 5);
    let mut accepted = 0;
    for i in arena..arena + arena_len + buckets_len {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            if let Ok(s) = binary::decode(&reseal(bad)) {
                // A renamed tenant may still be a valid table (it hashes to
                // the same bucket with its Bloom bits set): then it must be
                // a different, valid snapshot, never a crash.
                accepted += 1;
                let _ = s.resolve(b"acme", &Draws::default());
            }
        }
    }
    // Most of these are refused.
    assert!(accepted < (arena_len + buckets_len) * 8 / 4, "{accepted}");
    // A slot index out of range.
    let (slots, _) = section(&bytes, 2);
    let mut bad = bytes.clone();
    bad[slots] = 9;
    let e = binary::decode(&reseal(bad)).unwrap_err();
    assert!(e.message.contains("slot 0"), "{e}");
    // Another format.
    let mut bad = bytes.clone();
    bad[8] = 3;
    assert!(
        binary::decode(&reseal(bad))
            .unwrap_err()
            .message
            .contains("format 3")
    );
    // Layout 2 read over a layout-1 body.
    let mut bad = bytes.clone();
    bad[8] = 2;
    assert!(binary::decode(&reseal(bad)).is_err());
    // Wrong entry count.
    let mut bad = bytes.clone();
    bad[44] += 1;
    assert!(binary::decode(&reseal(bad)).is_err());
    // A header-only buffer.
    let mut short = bytes[..HEADER_LEN].to_vec();
    short.extend_from_slice(&[0; 8]);
    assert!(binary::decode(&reseal(short)).is_err());
}

/// A tenant table hashed with a key where many ids share a bucket: probes
/// with the same hash bits, one byte apart, empty or 255 bytes long must
/// never reach an override cell unless they are in the table.
#[test]
fn adversarial_ids_never_route_a_stranger_to_an_override() {
    let key = "000102030405060708090a0b0c0d0e0f";
    let k = cell_router_mapping::HashKey::from_hex(key).unwrap();
    let long = "x".repeat(255);
    let mut overrides = serde_json::Map::new();
    let members: Vec<String> = vec![
        "acme".into(),
        "acme-1".into(),
        long.clone(),
        "\u{0}".into(),
        "a".into(),
    ];
    for m in &members {
        overrides.insert(m.clone(), json!("cell-b"));
    }
    // Ids whose hash agrees with a member's in the low 8 bits (same bucket in
    // a small table, same slot in 8 slots): found by search.
    let mut same_low = Vec::new();
    let target = k.hash(b"acme") & 0xff;
    for i in 0..200_000u32 {
        let id = format!("s{i}");
        if k.hash(id.as_bytes()) & 0xff == target {
            same_low.push(id.into_bytes());
        }
    }
    assert!(same_low.len() > 100);
    let doc = json!({
        "version": 1,
        "generated_at": "t",
        "hash": {"algorithm": "siphash-1-3", "key": key, "slots": 8},
        "cells": [{"id": "cell-a"}, {"id": "cell-b"}],
        "slot_table": table(&[0; 8]),
        "overrides": overrides,
    });
    let json = parse(&doc);
    let bin = binary::decode(&binary::encode(&json)).unwrap();
    let hashed = binary::decode(&binary::encode_hashed(&json).unwrap()).unwrap();
    let mut strangers: Vec<Vec<u8>> = same_low;
    strangers.push(Vec::new());
    strangers.push("x".repeat(254).into_bytes());
    strangers.push("x".repeat(256).into_bytes());
    let mut one_off = long.clone().into_bytes();
    one_off[254] = b'y';
    strangers.push(one_off);
    strangers.extend(
        [
            "acmf",
            "Acme",
            "acme ",
            "acme-",
            "acme-2",
            "\u{0}\u{0}",
            "b",
        ]
        .map(|s| s.as_bytes().to_vec()),
    );
    for s in &strangers {
        for snap in [&json, &bin, &hashed] {
            let r = snap.resolve(s, &Draws::default());
            assert_eq!(r.source, Source::Slot, "{s:?}");
            assert_eq!(r.routed_cell(), Some(0), "{s:?}");
        }
    }
    for m in &members {
        for snap in [&bin, &hashed] {
            let r = snap.resolve(m.as_bytes(), &Draws::default());
            assert_eq!(r.source, Source::Override);
            assert_eq!(r.routed_cell(), Some(1));
        }
    }
}

#[derive(Debug, Clone)]
struct Gen {
    cells: Vec<(u8, f64, Option<usize>)>,
    slots: Vec<usize>,
    tenants: Vec<(String, u8, usize, usize, f64)>,
}

fn gen_snapshot() -> impl Strategy<Value = Gen> {
    (1usize..6).prop_flat_map(|n| {
        (
            prop::collection::vec((0u8..3, 0.0f64..=1.0, prop::option::of(0usize..6)), n),
            prop::collection::vec(0usize..n, 1..40),
            prop::collection::vec(
                ("[a-d]{1,6}", 0u8..3, 0usize..n, 0usize..n, 0.0f64..=100.0),
                0..60,
            ),
        )
            .prop_map(|(cells, slots, tenants)| Gen {
                cells,
                slots,
                tenants,
            })
    })
}

fn to_json(g: &Gen) -> Value {
    let n = g.cells.len();
    let cells: Vec<Value> = g
        .cells
        .iter()
        .enumerate()
        .map(|(i, (state, shed, failover))| {
            let state = ["active", "draining", "disabled"][usize::from(*state)];
            let mut c = json!({
                "id": format!("c{i}"),
                "state": state,
                "shed_ratio": shed,
            });
            // Failovers only point forward: no loops.
            if let Some(f) = failover.filter(|f| *f > i && *f < n) {
                c["failover"] = json!(format!("c{f}"));
                // An active cell with a failover ramps (from the shed ratio
                // as a start share, over 1,000 s from t = 1,000 s).
                if state == "active" {
                    c["ramp"] =
                        json!({"start": 1000, "duration_s": 1000, "from_percent": shed * 100.0});
                }
            }
            c
        })
        .collect();
    let slots: Vec<u16> = g.slots.iter().map(|&s| s as u16).collect();
    let (mut overrides, mut pins, mut moves) =
        (serde_json::Map::new(), serde_json::Map::new(), vec![]);
    let mut seen = std::collections::HashSet::new();
    for (tenant, kind, a, b, percent) in &g.tenants {
        if !seen.insert(tenant.clone()) {
            continue;
        }
        match kind {
            0 => {
                overrides.insert(tenant.clone(), json!(format!("c{a}")));
            }
            1 => {
                pins.insert(tenant.clone(), json!(format!("c{a}")));
            }
            _ if a != b => moves.push(json!({"tenant": tenant, "from": format!("c{a}"), "to": format!("c{b}"), "percent": percent})),
            _ => {}
        }
    }
    json!({
        "version": 3,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "7b1f3c9a2e4d6f80a1c3e5f70b2d4f61", "slots": slots.len()},
        "cells": cells,
        "slot_table": table(&slots),
        "overrides": overrides,
        "pins": pins,
        "moves": moves,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// JSON and binary route identically for random snapshots (cells in
    /// every state, failovers, overrides, pins, moves) and random tenants
    /// and request keys.
    #[test]
    fn json_and_binary_route_identically(
        g in gen_snapshot(),
        probes in prop::collection::vec("[a-e]{0,7}", 0..40),
        keys in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..12), 0u16..10_001, 0u64..2_000_000_000_000),
            1..6,
        ),
    ) {
        let json = parse(&to_json(&g));
        let bytes = binary::encode(&json);
        let bin = binary::decode(&bytes).unwrap();
        prop_assert_eq!(bin.to_doc(), json.to_doc());
        let hashed_bytes = binary::encode_hashed(&json).unwrap();
        let hashed = binary::decode(&hashed_bytes).unwrap();
        prop_assert_eq!(hashed.keys(), Keys::Hashes);
        prop_assert_eq!(hashed.tenant_entries(), json.tenant_entries());
        prop_assert_eq!(&binary::encode(&hashed), &hashed_bytes);
        let listed = g.tenants.iter().map(|t| t.0.as_bytes().to_vec());
        for probe in listed.chain(probes.iter().map(|p| p.as_bytes().to_vec())) {
            for (split_key, shed, now_ms) in &keys {
                let draws = Draws::new(split_key, *shed, *now_ms);
                prop_assert_eq!(json.resolve(&probe, &draws), bin.resolve(&probe, &draws));
                prop_assert_eq!(json.resolve(&probe, &draws), hashed.resolve(&probe, &draws));
            }
        }
    }

    /// Arbitrary bytes, and arbitrary bytes behind a valid header, never
    /// panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = binary::decode(&tail);
        let mut with_magic = binary::MAGIC.to_vec();
        with_magic.extend_from_slice(&tail);
        let _ = binary::decode(&with_magic);
        let _ = binary::decode(&reseal_any(with_magic));
    }

    /// Byte-level mutations of a valid binary snapshot, re-sealed so that
    /// the checksum does not hide them, never panic; what is accepted
    /// still resolves.
    #[test]
    fn resealed_mutations_never_panic(
        g in gen_snapshot(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        hashed in any::<bool>(),
    ) {
        let snapshot = parse(&to_json(&g));
        let mut bytes = if hashed {
            binary::encode_hashed(&snapshot).unwrap()
        } else {
            binary::encode(&snapshot)
        };
        for (at, value) in edits {
            let i = at.index(bytes.len() - 8);
            bytes[i] = value;
        }
        if let Ok(s) = binary::decode(&reseal(bytes)) {
            let _ = s.resolve(b"a", &Draws::unshed(b"k", 0));
            let _ = binary::encode(&s);
        }
    }
}

/// Every pool, at a gateway in every region (and with no region check),
/// forwarded or not: both snapshots resolve the same.
fn assert_same_pooled_routes(a: &Snapshot, b: &Snapshot, probes: &[Vec<u8>]) {
    for probe in probes {
        for pool in 0..a.pools().len() as u16 {
            for local in std::iter::once(None).chain((0..a.regions().len() as u16).map(Some)) {
                for forwarded in [false, true] {
                    for draws in some_draws() {
                        assert_eq!(
                            a.resolve_in(probe, pool, local, forwarded, &draws),
                            b.resolve_in(probe, pool, local, forwarded, &draws),
                            "{probe:?} pool {pool} local {local:?}"
                        );
                    }
                }
            }
        }
        assert_eq!(a.home_region(probe), b.home_region(probe));
    }
    for (authority, path) in [
        (&b"p1.example.com"[..], &b"/p1/x"[..]),
        (b"x", b"/p0"),
        (b"x", b"/P2;a"),
        (b"", b""),
    ] {
        assert_eq!(a.pool_for(authority, path), b.pool_for(authority, path));
    }
}

#[test]
fn a_format_2_snapshot_round_trips_in_layout_2() {
    let doc = json!({
        "format": 2,
        "version": 9,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 4},
        "regions": [{"id": "us"}, {"id": "eu"}],
        "region_table": table(&[0, 1, 0, 1]),
        "region_overrides": {"acme": "eu"},
        "cells": [
            {"id": "v-us", "pool": "voice", "region": "us"},
            {"id": "v-eu", "pool": "voice", "region": "eu", "failover": "v-eu-2"},
            {"id": "v-eu-2", "pool": "voice", "region": "eu", "state": "draining", "shed_ratio": 0.5},
            {"id": "d-us", "pool": "default", "region": "us"},
            {"id": "d-eu", "pool": "default", "region": "eu"}
        ],
        "pools": [
            {"id": "voice", "match": {"path_prefixes": ["/voice"], "authorities": ["voice.example.com"]},
             "slot_tables": {"us": table(&[0, 0, 0, 0]), "eu": table(&[1, 2, 1, 2])},
             "overrides": {"acme": "v-eu-2"},
             "moves": [{"tenant": "globex", "from": "v-eu", "to": "v-eu-2", "percent": 50}]},
            {"id": "default", "slot_tables": {"us": table(&[3, 3, 3, 3]), "eu": table(&[4, 4, 4, 4])}}
        ]
    });
    let json = parse(&doc);
    let bytes = binary::encode(&json);
    assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
    let back = binary::decode(&bytes).unwrap();
    assert_eq!(back.format(), 2);
    assert_eq!(back.to_pooled_doc(), json.to_pooled_doc());
    assert_eq!(binary::encode(&back), bytes);
    let probes: Vec<Vec<u8>> = ["acme", "globex", "nobody", "", "t1", "t2", "t3"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_same_pooled_routes(&json, &back, &probes);
    // Every truncation and single-bit flip is refused.
    for len in 0..bytes.len() {
        assert!(binary::decode(&bytes[..len]).is_err(), "truncated to {len}");
    }
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        assert!(binary::decode(&bad).is_err(), "byte {i}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// JSON and binary route identically for random format-2 snapshots.
    #[test]
    fn json_and_binary_route_identically_with_pools(
        g in pooled_gen::strategy(),
        probes in prop::collection::vec("[a-e]{0,7}", 0..20),
    ) {
        let json = parse(&g.to_json());
        let bytes = binary::encode(&json);
        let bin = binary::decode(&bytes).unwrap();
        prop_assert_eq!(bin.to_pooled_doc(), json.to_pooled_doc());
        let hashed_bytes = binary::encode_hashed(&json).unwrap();
        let hashed = binary::decode(&hashed_bytes).unwrap();
        prop_assert_eq!(&binary::encode(&hashed), &hashed_bytes);
        let listed = g.entries.iter().map(|t| t.0.as_bytes().to_vec());
        let probes: Vec<Vec<u8>> = listed.chain(probes.iter().map(|p| p.as_bytes().to_vec())).collect();
        assert_same_pooled_routes(&json, &bin, &probes);
        assert_same_pooled_routes(&json, &hashed, &probes);
    }

    /// Byte-level mutations of a valid layout-2 snapshot never panic.
    #[test]
    fn resealed_layout_2_mutations_never_panic(
        g in pooled_gen::strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        hashed in any::<bool>(),
    ) {
        let snapshot = parse(&g.to_json());
        let mut bytes = if hashed {
            binary::encode_hashed(&snapshot).unwrap()
        } else {
            binary::encode(&snapshot)
        };
        for (at, value) in edits {
            let i = at.index(bytes.len() - 8);
            bytes[i] = value;
        }
        if let Ok(s) = binary::decode(&reseal(bytes)) {
            for pool in 0..s.pools().len() as u16 {
                let _ = s.resolve_in(b"a", pool, Some(0), false, &Draws::unshed(b"k", 0));
            }
            let _ = s.pool_for(b"p1.example.com", b"/p1");
            let _ = binary::encode(&s);
        }
    }
}

fn reseal_any(bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() < 8 {
        return bytes;
    }
    reseal(bytes)
}

// ---------------------------------------------------------------------------
// Cross-language vectors for the binary form: `tests/binary_vectors.json`,
// checked by `tests/binary_check.py` (an independent decoder and router).
// Regenerate after a deliberate change with
// `CELLMAP_WRITE_VECTORS=1 cargo test -p cell-router-mapping --test binary`.

fn vector_snapshot() -> Snapshot {
    let long = "L".repeat(255);
    let doc = json!({
        "version": 42,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "7b1f3c9a2e4d6f80a1c3e5f70b2d4f61", "slots": 13},
        "cells": [
            {"id": "cell-a"},
            {"id": "cell-b", "state": "draining", "shed_ratio": 0.5, "retry_after_s": 9},
            {"id": "cell-c", "state": "disabled", "failover": "cell-a"},
            {"id": "cell-d", "state": "disabled"},
            {"id": "cell-e", "failover": "cell-a", "ramp": {"start": "2026-01-01T00:00:00Z", "duration_s": 600}}
        ],
        "slot_table": table(&[0, 1, 2, 3, 4, 0, 1, 2, 4, 3, 1, 0, 4]),
        "overrides": {"acme": "cell-b", "acme-corp": "cell-c", (long.clone()): "cell-d", "\u{79df}\u{6237}": "cell-a", "ramped": "cell-e"},
        "pins": {"tenant-1077": "cell-b", "a": "cell-a"},
        "moves": [
            {"tenant": "globex", "from": "cell-a", "to": "cell-b", "percent": 25},
            {"tenant": "initech", "from": "cell-c", "to": "cell-a", "percent": 100}
        ]
    });
    parse(&doc)
}

fn vector_probes() -> Vec<String> {
    let mut probes: Vec<String> = [
        "acme",
        "acme-corp",
        "\u{79df}\u{6237}",
        "tenant-1077",
        "a",
        "globex",
        "initech",
        "ramped",
        // Strangers: one byte off, case, trailing space, prefixes, empty.
        "acmf",
        "Acme",
        "acme ",
        "acm",
        "acme-corp2",
        "tenant-1078",
        "b",
        "",
        "globe",
        "\u{79df}",
        "tenant-1",
        "tenant-2",
        "tenant-3",
        "tenant-4",
        "tenant-5",
        "tenant-6",
    ]
    .map(String::from)
    .to_vec();
    probes.push("L".repeat(255));
    probes.push("L".repeat(254));
    probes.push(format!("{}M", "L".repeat(254)));
    probes
}

fn binary_vectors() -> String {
    let snapshot = vector_snapshot();
    let bytes = binary::encode(&snapshot);
    let names = |i: u16| snapshot.cell(i).unwrap().id.clone();
    let mut routes = Vec::new();
    // Before, during and after cell-e's ramp (2026-01-01T00:00:00Z + 600 s).
    let start = 1_767_225_600_000u64;
    let combos = [
        ("user-1", 0u16, start - 1),
        ("user-2", 2999, start + 150_000),
        ("user-7", 5000, start + 450_000),
        ("", 9999, start + 600_000),
    ];
    for tenant in vector_probes() {
        for (split_key, shed, now_ms) in combos {
            let r = snapshot.resolve(
                tenant.as_bytes(),
                &Draws::new(split_key.as_bytes(), shed, now_ms),
            );
            let outcome = match r.outcome {
                cell_router_mapping::Outcome::Route { .. } => "route",
                cell_router_mapping::Outcome::Shed { .. } => "shed",
                cell_router_mapping::Outcome::Unavailable { .. } => "unavailable",
                cell_router_mapping::Outcome::Forward { .. } => "forward",
                cell_router_mapping::Outcome::WrongRegion { .. } => "wrong_region",
            };
            let ramp = r.ramp.map(|step| {
                json!({"cell": names(step.cell), "share_bp": step.share_bp, "kept": step.kept})
            });
            routes.push(json!({
                "tenant": tenant, "split_key": split_key, "shed": shed, "now_ms": now_ms.to_string(),
                "slot": r.slot, "home": names(r.home), "cell": names(r.final_cell()),
                "outcome": outcome, "reason": r.reason(), "ramp": ramp,
            }));
        }
    }
    let doc = json!({
        "about": "Binary snapshot form (mapping/SPEC.md, Binary form): `binary` is the base64 of one binary snapshot; every route is what the routing function gives for tenant, split_key, shed draw and now_ms (Unix ms, decimal string). `binary_hashed`: the same snapshot keyed by hash (header flag 1), which routes the same. `layout2`: the same for a format-2 snapshot (binary layout 2; the first pools scenario of vectors.json), each route also with its pool, gateway_region (null: no region check) and forwarded. Generated by mapping/tests/binary.rs; check with mapping/tests/binary_check.py, which decodes the bytes on its own.",
        "binary": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "binary_hashed": base64::engine::general_purpose::STANDARD
            .encode(binary::encode_hashed(&snapshot).unwrap()),
        "routes": routes,
        "layout2": layout2_vectors(),
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap();
    text.push('\n');
    text
}

/// The first pools scenario of `vectors.json`, as a snapshot.
fn layout2_snapshot() -> Snapshot {
    let vectors: Value = serde_json::from_slice(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors.json")).unwrap(),
    )
    .unwrap();
    parse(&vectors["pools"][0]["snapshot"])
}

fn layout2_vectors() -> Value {
    let snapshot = layout2_snapshot();
    let bytes = binary::encode(&snapshot);
    let cell = |i: u16| snapshot.cell(i).unwrap().id.clone();
    let region = |i: u16| snapshot.region(i).unwrap().id.clone();
    let mut tenants: Vec<String> = (0..10).map(|i| format!("tenant-{i}")).collect();
    tenants.extend(["acme-gmbh", "globex", "acme-gmbh ", "Globex", ""].map(String::from));
    let start = 1_767_225_600_000u64;
    let combos = [
        ("user-1", 0u16, start - 1),
        ("user-2", 2499, start + 300_000),
        ("user-7", 5000, start + 450_000),
        ("", 9999, start + 600_000),
    ];
    let mut gateways: Vec<(Option<u16>, bool)> = vec![(None, false)];
    for r in 0..snapshot.regions().len() as u16 {
        gateways.push((Some(r), false));
    }
    gateways.push((Some(1), true));
    let mut routes = Vec::new();
    let mut k = 0;
    for tenant in &tenants {
        for pool in 0..snapshot.pools().len() as u16 {
            for &(gateway, forwarded) in &gateways {
                let (split_key, shed, now_ms) = combos[k % combos.len()];
                k += 1;
                let r = snapshot.resolve_in(
                    tenant.as_bytes(),
                    pool,
                    gateway,
                    forwarded,
                    &Draws::new(split_key.as_bytes(), shed, now_ms),
                );
                let outcome = match r.outcome {
                    cell_router_mapping::Outcome::Route { .. } => "route",
                    cell_router_mapping::Outcome::Shed { .. } => "shed",
                    cell_router_mapping::Outcome::Unavailable { .. } => "unavailable",
                    cell_router_mapping::Outcome::Forward { .. } => "forward",
                    cell_router_mapping::Outcome::WrongRegion { .. } => "wrong_region",
                };
                let ramp = r.ramp.map(|step| {
                    json!({"cell": cell(step.cell), "share_bp": step.share_bp, "kept": step.kept})
                });
                routes.push(json!({
                    "tenant": tenant, "pool": snapshot.pool(pool).unwrap().id,
                    "gateway_region": gateway.map(region), "forwarded": forwarded,
                    "split_key": split_key, "shed": shed, "now_ms": now_ms.to_string(),
                    "slot": r.slot, "home_region": region(r.home_region), "home": cell(r.home),
                    "cell": r.other_region().is_none().then(|| cell(r.final_cell())),
                    "outcome": outcome, "reason": r.reason(), "ramp": ramp,
                }));
            }
        }
    }
    json!({
        "binary": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "binary_hashed": base64::engine::general_purpose::STANDARD
            .encode(binary::encode_hashed(&snapshot).unwrap()),
        "routes": routes,
    })
}

#[test]
fn committed_binary_vectors_match_the_generator() {
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/binary_vectors.json");
    let fresh = binary_vectors();
    if std::env::var_os("CELLMAP_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(
        on_disk == fresh,
        "tests/binary_vectors.json is stale; regenerate it (see tests/binary.rs)"
    );
    // The committed bytes decode to the snapshot they were made from.
    let doc: Value = serde_json::from_str(&on_disk).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(doc["binary"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        binary::decode(&bytes).unwrap().to_doc(),
        vector_snapshot().to_doc()
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(doc["layout2"]["binary"].as_str().unwrap())
        .unwrap();
    assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
    assert_eq!(
        binary::decode(&bytes).unwrap().to_pooled_doc(),
        layout2_snapshot().to_pooled_doc()
    );
}

/// Each snapshot's binary form keyed by id, then keyed by hash.
fn both_forms(snapshots: &[Snapshot]) -> Vec<Vec<u8>> {
    snapshots
        .iter()
        .flat_map(|s| [binary::encode(s), binary::encode_hashed(s).unwrap()])
        .collect()
}

/// Applies `bytes` in steps of `budget` bytes.
fn apply_in_steps(bytes: &[u8], budget: usize) -> Result<(Snapshot, usize), String> {
    let mut apply = binary::Apply::new(bytes.to_vec()).map_err(|e| e.to_string())?;
    let mut steps = 0;
    loop {
        steps += 1;
        if let Some(snapshot) = apply.step(budget).map_err(|e| e.to_string())? {
            return Ok((snapshot, steps));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A snapshot applied in steps of any size is the one decoded at once,
    /// and a bad one is refused with the same error; small steps take many
    /// calls (work is really split).
    #[test]
    fn stepwise_apply_equals_decode(
        g in gen_snapshot(),
        pooled in pooled_gen::strategy(),
        budget in 1usize..600,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        for mut bytes in both_forms(&[parse(&to_json(&g)), parse(&pooled.to_json())]) {
            let (stepped, steps) = apply_in_steps(&bytes, budget).unwrap();
            prop_assert_eq!(&binary::encode(&stepped), &bytes);
            // The checksum alone is hashed `budget` bytes per step; the
            // trailing checksum itself is compared, not hashed.
            let hashed = bytes.len() - binary::CHECKSUM_LEN;
            prop_assert!(steps > hashed / budget, "{} steps for {} hashed bytes", steps, hashed);
            for (at, value) in &edits {
                let i = at.index(bytes.len() - 8);
                bytes[i] = *value;
            }
            let resealed = reseal(bytes);
            let once = binary::decode(&resealed).map(|s| binary::encode(&s)).map_err(|e| e.to_string());
            let stepped = apply_in_steps(&resealed, budget).map(|(s, _)| binary::encode(&s));
            prop_assert_eq!(stepped, once);
        }
    }
}

/// Applies `bytes` in steps of `budget` bytes, trusting the records as soon
/// as the checksum is verified (as a Wasm VM does once another VM of its
/// Envoy has checked the same bytes); also says whether trust took effect.
fn apply_trusting(bytes: &[u8], budget: usize) -> Result<(Snapshot, bool), String> {
    let mut apply = binary::Apply::new(bytes.to_vec()).map_err(|e| e.to_string())?;
    loop {
        if apply.verified_fingerprint().is_some() {
            apply.trust_records();
        }
        if let Some(snapshot) = apply.step(budget).map_err(|e| e.to_string())? {
            return Ok((snapshot, apply.records_trusted()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Trusting the records (bytes another reader checked) gives the very
    /// snapshot the full checks give.
    #[test]
    fn a_trusted_apply_equals_decode(
        g in gen_snapshot(),
        pooled in pooled_gen::strategy(),
        budget in 1usize..600,
    ) {
        for bytes in both_forms(&[parse(&to_json(&g)), parse(&pooled.to_json())]) {
            let (trusted, took) = apply_trusting(&bytes, budget).unwrap();
            prop_assert!(took, "the records were checked although the checksum was verified");
            prop_assert_eq!(&binary::encode(&trusted), &bytes);
        }
    }

    /// Trusted records are still walked: mutated and resealed bytes never
    /// panic, in the apply or in routing.
    #[test]
    fn trusted_resealed_mutations_never_panic(
        g in gen_snapshot(),
        pooled in pooled_gen::strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        for mut bytes in both_forms(&[parse(&to_json(&g)), parse(&pooled.to_json())]) {
            for (at, value) in &edits {
                let i = at.index(bytes.len() - 8);
                bytes[i] = *value;
            }
            if let Ok((s, _)) = apply_trusting(&reseal(bytes), 64) {
                for pool in 0..s.pools().len() as u16 {
                    let _ = s.resolve_in(b"a", pool, Some(0), false, &Draws::unshed(b"k", 0));
                }
                let _ = binary::encode(&s);
            }
        }
    }
}

/// Trust is only for bytes whose own checksum was verified: before that it
/// does not take, and a corrupted body is refused by its checksum whatever
/// another reader checked.
#[test]
fn records_are_trusted_only_after_the_checksum() {
    let bytes = binary::encode(&parse(&small()));
    let mut apply = binary::Apply::new(bytes.clone()).unwrap();
    assert_eq!(apply.verified_fingerprint(), None);
    assert!(!apply.trust_records());
    let fingerprint = loop {
        if let Some(f) = apply.verified_fingerprint() {
            break f;
        }
        assert!(apply.step(16).unwrap().is_none());
    };
    assert_eq!(fingerprint.version, 7);
    let stored = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().unwrap());
    assert_eq!(fingerprint.checksum, stored);
    assert_eq!(fingerprint.to_string().parse(), Ok(fingerprint));
    assert!(apply.trust_records());

    let mut bad = bytes;
    bad[HEADER_LEN + 3] ^= 1;
    let mut apply = binary::Apply::new(bad).unwrap();
    let error = loop {
        apply.trust_records();
        match apply.step(16) {
            Ok(None) => continue,
            Ok(Some(_)) => panic!("a corrupted body was accepted"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(error.contains("checksum"), "{error}");
    assert!(!apply.records_trusted());
    assert_eq!(apply.verified_fingerprint(), None);
}

/// A refused apply stays refused, and a finished one cannot be stepped again.
#[test]
fn an_apply_is_over_after_its_outcome() {
    let bytes = binary::encode(&parse(&small()));
    let mut apply = binary::Apply::new(bytes.clone()).unwrap();
    assert_eq!(apply.claimed_version(), Some(7));
    while apply.step(64).unwrap().is_none() {}
    assert!(apply.step(64).is_err());
    let mut bad = bytes;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut apply = binary::Apply::new(bad).unwrap();
    let error = loop {
        match apply.step(1 << 20) {
            Ok(None) => continue,
            Ok(Some(_)) => panic!("a bad checksum was accepted"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(error.contains("checksum"), "{error}");
    assert!(apply.step(1 << 20).is_err());
}
