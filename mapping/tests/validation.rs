//! Every way a snapshot can be refused, with the JSON path of the problem;
//! and no input, however broken, panics the parser.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use cell_router_mapping::{Draws, Snapshot};
use proptest::prelude::*;
use serde_json::{Value, json};

fn table(indexes: &[u16]) -> String {
    let bytes: Vec<u8> = indexes.iter().flat_map(|i| i.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A small valid snapshot: 3 cells (one ramping), 8 slots, an override, a
/// pin and a move.
fn valid() -> Value {
    json!({
        "version": 7,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 8},
        "cells": [
            {"id": "cell-a", "state": "active", "weight": 1, "retry_after_s": 5, "failover": "cell-b",
             "ramp": {"start": "2026-01-01T00:00:00Z", "duration_s": 600, "from_percent": 10, "curve": {"aggression": 1.5}}},
            {"id": "cell-b", "state": "draining", "weight": 1, "shed_ratio": 0.5, "retry_after_s": 5},
            {"id": "cell-c", "state": "disabled", "weight": 2, "retry_after_s": 5, "failover": "cell-a"}
        ],
        "slot_table": table(&[0, 1, 2, 2, 0, 1, 2, 2]),
        "overrides": {"acme": "cell-c"},
        "pins": {"initech": "cell-b"},
        "moves": [{"tenant": "globex", "from": "cell-a", "to": "cell-b", "percent": 25}]
    })
}

fn parse(doc: &Value) -> Result<Snapshot, cell_router_mapping::PathError> {
    Snapshot::parse(doc.to_string().as_bytes())
}

/// Applies `edit` to the valid snapshot and expects a refusal at `path`
/// whose message contains `words`.
fn refused(edit: impl FnOnce(&mut Value), path: &str, words: &str) {
    let mut doc = valid();
    edit(&mut doc);
    match parse(&doc) {
        Ok(_) => panic!("accepted, expected {path}: {words}"),
        Err(err) => {
            assert_eq!(err.path, path, "{err}");
            assert!(
                err.message.contains(words),
                "{err} does not mention {words:?}"
            );
        }
    }
}

#[test]
fn the_valid_snapshot_parses() {
    let s = parse(&valid()).unwrap();
    assert_eq!(s.version(), 7);
    assert_eq!(s.cells().len(), 3);
    assert_eq!(s.tenant_entries(), 3);
    assert_eq!(
        s.overrides().get("acme").map(String::as_str),
        Some("cell-c")
    );
    assert_eq!(s.pins().get("initech").map(String::as_str), Some("cell-b"));
    // The owned form round-trips.
    let again = Snapshot::parse(s.to_doc().to_json().as_bytes()).unwrap();
    assert_eq!(again.to_doc(), s.to_doc());
}

#[test]
fn wrong_table_length() {
    refused(
        |d| d["slot_table"] = json!(table(&[0, 1, 2])),
        "$.slot_table",
        "needs 16",
    );
    refused(
        |d| d["hash"]["slots"] = json!(9),
        "$.slot_table",
        "needs 18",
    );
}

#[test]
fn slot_index_out_of_range() {
    refused(
        |d| d["slot_table"] = json!(table(&[0, 1, 2, 3, 0, 1, 2, 2])),
        "$.slot_table",
        "slot 3 points at cell index 3",
    );
}

#[test]
fn unknown_cells() {
    refused(
        |d| d["overrides"]["acme"] = json!("cell-z"),
        "$.overrides.acme",
        "unknown cell \"cell-z\"",
    );
    refused(
        |d| d["overrides"] = json!({"acme corp": "nowhere"}),
        "$.overrides[\"acme corp\"]",
        "unknown cell",
    );
    refused(
        |d| d["pins"]["initech"] = json!("cell-z"),
        "$.pins.initech",
        "unknown cell",
    );
    refused(
        |d| d["moves"][0]["to"] = json!("cell-z"),
        "$.moves[0].to",
        "unknown cell",
    );
    refused(
        |d| d["moves"][0]["from"] = json!("cell-z"),
        "$.moves[0].from",
        "unknown cell",
    );
    refused(
        |d| d["cells"][1]["failover"] = json!("cell-z"),
        "$.cells[1].failover",
        "unknown cell",
    );
}

#[test]
fn failover_loops() {
    refused(
        |d| d["cells"][1]["failover"] = json!("cell-c"),
        "$.cells[0].failover",
        "failover loop: cell-a → cell-b → cell-c → cell-a",
    );
    refused(
        |d| d["cells"][1]["failover"] = json!("cell-b"),
        "$.cells[1].failover",
        "failover loop: cell-b → cell-b",
    );
}

#[test]
fn a_long_failover_chain_is_checked_in_linear_time() {
    // 65,535 cells, each failing over to the next: the old check walked every
    // chain from every cell (billions of steps); this must finish at once.
    let n = 65_535;
    let cells: Vec<Value> = (0..n)
        .map(|i| {
            if i + 1 < n {
                json!({"id": format!("c{i}"), "failover": format!("c{}", i + 1)})
            } else {
                json!({"id": format!("c{i}")})
            }
        })
        .collect();
    let mut doc = valid();
    doc["cells"] = json!(cells);
    doc["slot_table"] = json!(table(&[0; 8]));
    doc["overrides"] = json!({});
    doc["pins"] = json!({});
    doc["moves"] = json!([]);
    assert_eq!(parse(&doc).unwrap().cells().len(), n);
    // Close the chain: a loop through all of them.
    doc["cells"][n - 1]["failover"] = json!("c0");
    let err = parse(&doc).unwrap_err();
    assert_eq!(err.path, "$.cells[0].failover");
}

#[test]
fn duplicate_cell_ids() {
    refused(
        |d| d["cells"][2]["id"] = json!("cell-a"),
        "$.cells[2].id",
        "duplicate cell id",
    );
}

#[test]
fn bad_cell_ids() {
    refused(
        |d| d["cells"][0]["id"] = json!(""),
        "$.cells[0].id",
        "empty",
    );
    refused(
        |d| d["cells"][0]["id"] = json!("cell a"),
        "$.cells[0].id",
        "only ASCII",
    );
    refused(|d| d["cells"] = json!([]), "$.cells", "at least one cell");
}

#[test]
fn bad_weights() {
    refused(
        |d| d["cells"][1]["weight"] = json!(-1),
        "$.cells[1].weight",
        "finite number ≥ 0",
    );
    // JSON has no NaN; a bare NaN token is a syntax error at the field.
    let text = valid()
        .to_string()
        .replacen("\"weight\":2", "\"weight\":NaN", 1);
    let err = Snapshot::parse(text.as_bytes()).unwrap_err();
    assert_eq!(err.path, "$.cells[2].weight");
    refused(
        |d| d["cells"][0]["weight"] = json!("heavy"),
        "$.cells[0].weight",
        "invalid type",
    );
}

#[test]
fn shed_ratio_outside_0_1() {
    refused(
        |d| d["cells"][1]["shed_ratio"] = json!(1.5),
        "$.cells[1].shed_ratio",
        "between 0 and 1",
    );
    refused(
        |d| d["cells"][1]["shed_ratio"] = json!(-0.1),
        "$.cells[1].shed_ratio",
        "between 0 and 1",
    );
}

#[test]
fn bad_move_percent() {
    refused(
        |d| d["moves"][0]["percent"] = json!(100.5),
        "$.moves[0].percent",
        "between 0 and 100",
    );
    refused(
        |d| d["moves"][0]["to"] = json!("cell-a"),
        "$.moves[0].to",
        "must differ",
    );
}

#[test]
fn bad_ramps() {
    refused(
        |d| d["cells"][1]["ramp"] = json!({"start": 0, "duration_s": 60}),
        "$.cells[1].ramp",
        "only an active cell can ramp; this one is draining",
    );
    refused(
        |d| {
            d["cells"][0].as_object_mut().unwrap().remove("failover");
        },
        "$.cells[0].ramp",
        "a ramp needs a failover",
    );
    refused(
        |d| d["cells"][0]["ramp"]["duration_s"] = json!(0),
        "$.cells[0].ramp.duration_s",
        "between 1 and 2592000",
    );
    refused(
        |d| d["cells"][0]["ramp"]["duration_s"] = json!(1.5),
        "$.cells[0].ramp.duration_s",
        "invalid type",
    );
    refused(
        |d| d["cells"][0]["ramp"]["from_percent"] = json!(-1),
        "$.cells[0].ramp.from_percent",
        "between 0 and 100",
    );
    refused(
        |d| d["cells"][0]["ramp"]["start"] = json!("2026-02-30T00:00:00Z"),
        "$.cells[0].ramp.start",
        "day out of range",
    );
    refused(
        |d| d["cells"][0]["ramp"]["start"] = json!(-5),
        "$.cells[0].ramp.start",
        "Unix seconds",
    );
    refused(
        |d| d["cells"][0]["ramp"]["curve"] = json!({"aggression": 0}),
        "$.cells[0].ramp.curve",
        "aggression must be between",
    );
    refused(
        |d| d["cells"][0]["ramp"]["curve"] = json!("cubic"),
        "$.cells[0].ramp.curve",
        "unknown curve",
    );
    refused(
        |d| d["cells"][0]["ramp"]["speed"] = json!(2),
        "$.cells[0].ramp.speed",
        "unknown field `speed`",
    );
    refused(
        |d| {
            d["cells"][0]["ramp"]
                .as_object_mut()
                .unwrap()
                .remove("start");
        },
        "$.cells[0].ramp.start",
        "missing field",
    );
    // A ramp may point its rest along a chain that ends; a loop is refused
    // as for any failover.
    refused(
        |d| d["cells"][1]["failover"] = json!("cell-a"),
        "$.cells[0].failover",
        "failover loop",
    );
}

#[test]
fn bad_base64() {
    refused(
        |d| d["slot_table"] = json!("AAAB!AIAAgAAAAEAAgACAA=="),
        "$.slot_table",
        "invalid base64",
    );
    // Unpadded is refused too: the format says padded.
    refused(
        |d| d["slot_table"] = json!("AAA"),
        "$.slot_table",
        "invalid base64",
    );
}

#[test]
fn bad_hex_key() {
    refused(
        |d| d["hash"]["key"] = json!("000102030405060708090a0b0c0d0e0g"),
        "$.hash.key",
        "not a hex digit",
    );
    refused(
        |d| d["hash"]["key"] = json!("0001"),
        "$.hash.key",
        "32 hex characters",
    );
    refused(
        |d| d["hash"]["algorithm"] = json!("xxhash"),
        "$.hash.algorithm",
        "unknown algorithm",
    );
    refused(
        |d| d["hash"]["slots"] = json!(0),
        "$.hash.slots",
        "between 1 and",
    );
}

#[test]
fn version_must_be_greater_than_the_current_one() {
    let text = valid().to_string();
    let err = Snapshot::parse_newer(text.as_bytes(), Some(7)).unwrap_err();
    assert_eq!(err.path, "$.version");
    assert!(
        err.message
            .contains("not greater than the current version 7")
    );
    assert!(Snapshot::parse_newer(text.as_bytes(), Some(8)).is_err());
    assert_eq!(
        Snapshot::parse_newer(text.as_bytes(), Some(6))
            .unwrap()
            .version(),
        7
    );
    assert!(Snapshot::parse_newer(text.as_bytes(), None).is_ok());
}

#[test]
fn duplicate_tenants() {
    // The same tenant twice in overrides (JSON allows the text).
    let text = valid().to_string().replacen(
        "\"overrides\":{\"acme\":\"cell-c\"}",
        "\"overrides\":{\"acme\":\"cell-c\",\"acme\":\"cell-a\"}",
        1,
    );
    assert!(text.contains("\"acme\":\"cell-a\""));
    let err = Snapshot::parse(text.as_bytes()).unwrap_err();
    assert_eq!(err.path, "$.overrides.acme");
    assert!(err.message.contains("more than once"));
    refused(
        |d| d["pins"] = json!({"acme": "cell-b"}),
        "$.pins.acme",
        "more than once",
    );
    refused(
        |d| d["moves"][0]["tenant"] = json!("acme"),
        "$.moves[0].tenant",
        "more than once",
    );
}

#[test]
fn bad_tenant_ids() {
    refused(
        |d| d["overrides"] = json!({"": "cell-a"}),
        "$.overrides[\"\"]",
        "must not be empty",
    );
    let long = "t".repeat(1025);
    let path = format!("$.overrides.{long}");
    refused(
        move |d| d["overrides"] = json!({ long: "cell-a" }),
        &path,
        "more than the 1024 allowed",
    );
}

#[test]
fn unknown_and_missing_fields() {
    refused(
        |d| d["colour"] = json!("blue"),
        "$.colour",
        "unknown field `colour`",
    );
    refused(
        |d| d["cells"][0]["colour"] = json!("blue"),
        "$.cells[0].colour",
        "unknown field `colour`",
    );
    refused(
        |d| d["hash"]["seed"] = json!(1),
        "$.hash.seed",
        "unknown field `seed`",
    );
    refused(
        |d| d["moves"][0]["speed"] = json!(1),
        "$.moves[0].speed",
        "unknown field `speed`",
    );
    refused(
        |d| {
            d.as_object_mut().unwrap().remove("version");
        },
        "$.version",
        "missing field",
    );
    refused(
        |d| {
            d["hash"].as_object_mut().unwrap().remove("key");
        },
        "$.hash.key",
        "missing field",
    );
    refused(
        |d| {
            d["cells"][1].as_object_mut().unwrap().remove("id");
        },
        "$.cells[1].id",
        "missing field",
    );
    refused(
        |d| {
            d.as_object_mut().unwrap().remove("slot_table");
        },
        "$.slot_table",
        "missing field",
    );
    let text = valid()
        .to_string()
        .replacen("\"version\":7", "\"version\":7,\"version\":8", 1);
    assert!(text.contains("\"version\":8"));
    let err = Snapshot::parse(text.as_bytes()).unwrap_err();
    assert_eq!(err.path, "$.version");
    assert!(err.message.contains("duplicate field"), "{err}");
    refused(
        |d| d["cells"][0]["state"] = json!("sleeping"),
        "$.cells[0].state",
        "unknown variant",
    );
    refused(
        |d| d["overrides"]["acme"] = json!(3),
        "$.overrides.acme",
        "invalid type",
    );
}

#[test]
fn not_json_at_all() {
    for text in [
        &b""[..],
        b"[]",
        b"null",
        b"{",
        b"{\"version\":1}x",
        b"\xff\xfe",
    ] {
        assert!(Snapshot::parse(text).is_err(), "{text:?}");
    }
}

/// Mutations that keep the text JSON-ish: edits at the byte level of a real
/// snapshot (delete, duplicate, replace with JSON punctuation and digits).
fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    const ALPHABET: &[u8] = b"{}[]\":,0123456789-.eE \\nutfalsAB=/+";
    let mut bytes = base.to_vec();
    for &(pos, op, pick) in edits {
        if bytes.is_empty() {
            break;
        }
        let pos = pos % bytes.len();
        let c = ALPHABET[usize::from(pick) % ALPHABET.len()];
        match op % 4 {
            0 => {
                bytes.remove(pos);
            }
            1 => bytes[pos] = c,
            2 => bytes.insert(pos, c),
            _ => {
                let end = (pos + usize::from(pick) % 16).min(bytes.len());
                let chunk = bytes[pos..end].to_vec();
                bytes.splice(pos..pos, chunk);
            }
        }
    }
    bytes
}

/// Replaces the value at a random place in the document with a random JSON
/// value: wrong types, huge numbers, odd strings.
fn replace_somewhere(doc: &mut Value, choice: usize, with: Value) {
    let child = match doc {
        Value::Object(map) if !map.is_empty() && !choice.is_multiple_of(3) => {
            let key = map.keys().nth(choice % map.len()).cloned().unwrap();
            map.get_mut(&key)
        }
        Value::Array(items) if !items.is_empty() && !choice.is_multiple_of(3) => {
            let i = choice % items.len();
            items.get_mut(i)
        }
        _ => None,
    };
    match child {
        Some(child) => replace_somewhere(child, choice / 3, with),
        None => *doc = with,
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(json!("cell-a")),
        Just(json!("")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// If a mutated document still parses, using it must not panic either.
fn exercise(bytes: &[u8]) {
    if let Ok(s) = Snapshot::parse(bytes) {
        for tenant in [&b"acme"[..], b"globex", b"initech", b"", b"x"] {
            for (shed, now_ms) in [(0, 0), (5000, 1_767_225_600_000), (u16::MAX, u64::MAX)] {
                let _ = s.resolve(tenant, &Draws::new(b"user", shed, now_ms));
            }
        }
        for cell in s.cells() {
            let _ = cell.ramp_share_bp(u64::MAX);
        }
        let _ = s.to_doc().to_json();
        // Format 2 (and format 1 through the same calls): every pool, at
        // every region and none, forwarded or not; selection; migration.
        let regions = s.regions().len() as u16;
        for pool in 0..=s.pools().len() as u16 {
            for local in [
                None,
                Some(0),
                Some(regions.saturating_sub(1)),
                Some(u16::MAX),
            ] {
                for tenant in [&b"acme"[..], b"globex", b""] {
                    let _ = s.resolve_in(tenant, pool, local, local == Some(0), &Draws::default());
                }
            }
        }
        for (authority, path) in [
            (&b"voice.example.com:1"[..], &b"/voice;x/y"[..]),
            (b"", b""),
            (b":", b"?"),
        ] {
            let _ = s.pool_for(authority, path);
        }
        let _ = s.home_region(b"acme");
        let _ = s.to_pooled_doc().to_json();
    }
}

/// A valid format-2 snapshot with two regions, two pools, a region override,
/// failover, a ramp, overrides, a pin and a move.
fn valid2() -> Value {
    json!({
        "format": 2,
        "version": 7,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 4},
        "regions": [{"id": "us"}, {"id": "eu"}],
        "region_table": table(&[0, 1, 0, 1]),
        "region_overrides": {"acme": "eu", "globex": "us"},
        "cells": [
            {"id": "v-us", "pool": "voice", "region": "us", "failover": "v-us-2",
             "ramp": {"start": 1000, "duration_s": 60}},
            {"id": "v-us-2", "pool": "voice", "region": "us", "state": "draining", "shed_ratio": 0.5},
            {"id": "v-eu", "pool": "voice", "region": "eu"},
            {"id": "w-us", "pool": "web", "region": "us", "state": "disabled"},
            {"id": "w-eu", "pool": "web", "region": "eu"}
        ],
        "pools": [
            {"id": "voice", "match": {"path_prefixes": ["/voice"], "authorities": ["voice.example.com"]},
             "slot_tables": {"us": table(&[0, 1, 0, 1]), "eu": table(&[2, 2, 2, 2])},
             "overrides": {"acme": "v-eu"},
             "moves": [{"tenant": "globex", "from": "v-us", "to": "v-us-2", "percent": 50}]},
            {"id": "web", "slot_tables": {"us": table(&[3, 3, 3, 3]), "eu": table(&[4, 4, 4, 4])},
             "pins": {"acme": "w-eu"}}
        ]
    })
}

#[test]
fn the_valid_format_2_snapshot_parses() {
    let s = Snapshot::parse(valid2().to_string().as_bytes()).unwrap();
    assert_eq!((s.format(), s.pools().len(), s.regions().len()), (2, 2, 2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn byte_mutations_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let base = valid().to_string().into_bytes();
        exercise(&mutate(&base, &edits));
    }

    #[test]
    fn format_2_byte_mutations_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let base = valid2().to_string().into_bytes();
        exercise(&mutate(&base, &edits));
    }

    #[test]
    fn format_2_value_replacements_never_panic(choice in any::<usize>(), with in any_json()) {
        let mut doc = valid2();
        replace_somewhere(&mut doc, choice, with);
        exercise(doc.to_string().as_bytes());
    }

    #[test]
    fn value_replacements_never_panic(choice in any::<usize>(), with in any_json()) {
        let mut doc = valid();
        replace_somewhere(&mut doc, choice, with);
        exercise(doc.to_string().as_bytes());
    }
}
