//! Untrusted JSON is read one way everywhere: duplicate keys are refused at
//! any depth (parsers that keep the first and parsers that keep the last
//! must never disagree), and an object is only ever read from a JSON object
//! (serde's derived structs also take an array, fields by position). Plugin
//! config, `jwks`, `fallback_snapshot`, snapshots, JOSE headers and claims.
//! Also the stricter token rules shared with Envoy's `jwt_authn`: `kid` is a
//! string when present, `exp`/`nbf`/`iat` are integers that fit in 64 bits.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::config::Config;
use cell_router_filter::decide::Outcome;
use cell_router_filter::subscription::{FetchOutcome, FetchResponse, Source, Subscription};
use cell_router_filter::token::Reason;
use cell_router_mapping::Snapshot;
use common::*;
use serde_json::{Value, json};

fn refused(text: &str) -> String {
    match Config::from_json(text.as_bytes()) {
        Ok(_) => panic!("config accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

/// The base config as text, with `field` replaced by raw JSON text.
fn config_with_raw(field: &str, raw: &str) -> String {
    let mut base = base_config();
    base[field] = json!("@@RAW@@");
    base.to_string().replace("\"@@RAW@@\"", raw)
}

fn snapshot_text(version: u64) -> String {
    snapshot_json(version).to_string()
}

// ---------------------------------------------------------------------------
// Duplicate keys.

#[test]
fn duplicate_keys_in_the_fallback_snapshot_are_refused() {
    let good = snapshot_text(1);
    // The top-level version twice: which one is in force?
    let twice = good.replacen("\"version\":1", "\"version\":1,\"version\":2", 1);
    assert_ne!(twice, good);
    let error = refused(&config_with_raw("fallback_snapshot", &twice));
    assert!(error.starts_with("fallback_snapshot"), "{error}");
    assert!(error.contains("duplicate"), "{error}");

    // A cell's state twice, deeper down.
    let deep = good.replacen(
        "\"state\":\"active\"",
        "\"state\":\"disabled\",\"state\":\"active\"",
        1,
    );
    assert_ne!(deep, good);
    let error = refused(&config_with_raw("fallback_snapshot", &deep));
    assert!(error.starts_with("fallback_snapshot.cells[0]"), "{error}");
    assert!(error.contains("duplicate"), "{error}");

    // The same tenant twice in overrides.
    let overrides = good.replacen(
        "\"overrides\":{",
        "\"overrides\":{\"t-x\":\"a\",\"t-x\":\"b\",",
        1,
    );
    assert_ne!(overrides, good);
    let error = refused(&config_with_raw("fallback_snapshot", &overrides));
    assert!(error.starts_with("fallback_snapshot.overrides"), "{error}");
}

#[test]
fn duplicate_keys_in_the_jwks_are_refused() {
    let jwk = oct_jwk("hs-1").to_string();
    let doubled_kid = jwk.replacen("\"kid\":\"hs-1\"", "\"kid\":\"hs-1\",\"kid\":\"other\"", 1);
    assert_ne!(doubled_kid, jwk);
    let error = refused(&config_with_raw(
        "jwks",
        &format!(r#"{{"keys":[{doubled_kid}]}}"#),
    ));
    assert!(error.starts_with("jwks.keys[0]"), "{error}");
    assert!(error.contains("duplicate"), "{error}");

    let keys_twice = format!(r#"{{"keys":[{jwk}],"keys":[{jwk}]}}"#);
    let error = refused(&config_with_raw("jwks", &keys_twice));
    assert!(error.starts_with("jwks"), "{error}");
    assert!(error.contains("duplicate"), "{error}");
}

#[test]
fn duplicate_keys_anywhere_in_the_config_are_refused() {
    let text = r#"{"trust_header": "x-t", "sidecar": {"cluster": "a", "cluster": "b"}}"#;
    let error = refused(text);
    assert!(error.starts_with("sidecar"), "{error}");
    assert!(error.contains("duplicate"), "{error}");
}

#[test]
fn duplicate_jose_header_members_make_the_token_malformed() {
    let mut router = Router::from_json(&base_config());
    let secret = hs_secret();
    // A member the filter does not read, twice: still ambiguous for others.
    let header = r#"{"alg":"HS256","kid":"hs-1","typ":"JWT","typ":"JOSE"}"#;
    let decision = router.request(&[(
        "authorization",
        &bearer(&raw_hs256(&secret, header, &payload_json("t1"))),
    )]);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::Malformed));
    let header = r#"{"alg":"HS256","kid":"hs-1","x":1,"x":2}"#;
    let decision = router.request(&[(
        "authorization",
        &bearer(&raw_hs256(&secret, header, &payload_json("t1"))),
    )]);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::Malformed));
}

// ---------------------------------------------------------------------------
// Arrays where objects are meant.

#[test]
fn a_jose_header_written_as_an_array_is_malformed() {
    let mut router = Router::from_json(&base_config());
    let secret = hs_secret();
    // Correctly MACed with the configured key; derived Deserialize would read
    // it as {"alg": "HS256", "kid": "hs-1"}.
    let token = raw_hs256(&secret, r#"["HS256","hs-1"]"#, &payload_json("t1"));
    let decision = router.request(&[("authorization", &bearer(&token))]);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::Malformed));
    assert_eq!(decision.reply().unwrap().status, 401);
}

#[test]
fn claims_written_as_an_array_are_malformed() {
    let mut router = Router::from_json(&base_config());
    let header = json!({"alg": "HS256", "kid": "hs-1"}).to_string();
    let payload = json!([NOW, NOW + 3600, null, ISSUER, "user-1", AUDIENCE]).to_string();
    let decision = router.request(&[(
        "authorization",
        &bearer(&raw_hs256(&hs_secret(), &header, &payload)),
    )]);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::Malformed));
}

#[test]
fn config_sections_written_as_arrays_are_refused() {
    // The whole config.
    let error = refused(r#"[{"cluster": "c"}, null]"#);
    assert!(error.contains("object"), "{error}");
    // sidecar: [cluster, authority, path, ...] by position.
    let error = refused(
        r#"{"trust_header": "x-t", "sidecar": ["c", "cellmap", "/snapshot", 30, 35000, 200, 5000, 100, 100]}"#,
    );
    assert!(error.starts_with("sidecar"), "{error}");
    // token: [header, prefix, query_param, cookie].
    let error = refused(&config_with_raw(
        "token",
        r#"["authorization", "Bearer ", null, null]"#,
    ));
    assert!(error.starts_with("token"), "{error}");
}

#[test]
fn jwks_and_jwks_written_as_arrays_are_refused() {
    let error = refused(&config_with_raw(
        "jwks",
        &json!([[oct_jwk("k")]]).to_string(),
    ));
    assert!(error.starts_with("jwks"), "{error}");
    let jwk_as_array = json!({"keys": [["oct", "k", b64url(&hs_secret())]]}).to_string();
    let error = refused(&config_with_raw("jwks", &jwk_as_array));
    assert!(error.starts_with("jwks.keys[0]"), "{error}");
}

/// The snapshot's objects, each written as an array in turn.
fn snapshots_with_arrays() -> Vec<(&'static str, String)> {
    let base = snapshot_json(1);
    let mut hash = base.clone();
    hash["hash"] = json!(["siphash-1-3", HASH_KEY, 64]);
    let mut cell = base.clone();
    cell["cells"][0] = json!(["a"]);
    let mut moves = base.clone();
    moves["moves"][0] = json!(["t-moving", "a", "b", 30.0]);
    vec![
        ("$.hash", hash.to_string()),
        ("$.cells[0]", cell.to_string()),
        ("$.moves[0]", moves.to_string()),
        (
            "$",
            json!([
                1,
                "2023-11-14T22:13:20Z",
                base["hash"],
                base["cells"],
                base["slot_table"]
            ])
            .to_string(),
        ),
    ]
}

#[test]
fn snapshot_objects_written_as_arrays_are_refused() {
    for (path, text) in snapshots_with_arrays() {
        let error = Snapshot::parse(text.as_bytes()).expect_err(&text);
        assert_eq!(error.path, path, "{error}");
    }
}

#[test]
fn a_fallback_snapshot_with_arrays_for_objects_is_refused() {
    for (path, text) in snapshots_with_arrays() {
        let error = refused(&config_with_raw("fallback_snapshot", &text));
        let field = format!("fallback_snapshot{}", path.trim_start_matches('$'));
        assert!(error.starts_with(&field), "{field}: {error}");
    }
}

#[test]
fn a_sidecar_snapshot_with_arrays_for_objects_is_refused() {
    let config = Config::from_json(br#"{"trust_header": "x-t", "sidecar": {"cluster": "c"}}"#)
        .unwrap()
        .sidecar
        .unwrap();
    for (path, text) in snapshots_with_arrays() {
        let mut sub = Subscription::new(config.clone(), NOW * 1000, 1);
        assert!(sub.poll(NOW * 1000).is_some());
        sub.dispatched(Source::Sidecar, 1, NOW * 1000);
        match sub.on_response(
            1,
            NOW * 1000,
            FetchResponse::new(Some(200), text.as_bytes()),
        ) {
            FetchOutcome::Refused { error, .. } => assert_eq!(error.path, path),
            other => panic!("{path}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Stricter token members, as jwt_authn.

#[test]
fn a_null_kid_is_malformed() {
    let mut router = Router::from_json(&base_config());
    let header = r#"{"alg":"HS256","kid":null}"#;
    let decision = router.request(&[(
        "authorization",
        &bearer(&raw_hs256(&hs_secret(), header, &payload_json("t1"))),
    )]);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::Malformed));
    // Nor any other type.
    for kid in ["1", "[\"hs-1\"]", "{}", "true"] {
        let header = format!(r#"{{"alg":"HS256","kid":{kid}}}"#);
        let decision = router.request(&[(
            "authorization",
            &bearer(&raw_hs256(&hs_secret(), &header, &payload_json("t1"))),
        )]);
        assert_eq!(
            decision.outcome,
            Outcome::Rejected(Reason::Malformed),
            "kid {kid}"
        );
    }
}

#[test]
fn times_must_be_integers_that_fit_in_64_bits() {
    let header = json!({"alg": "HS256", "kid": "hs-1"}).to_string();
    for claim in ["exp", "nbf", "iat"] {
        for bad in [
            "1e308",
            "18446744073709551616",
            "1.5",
            "1700000000.0",
            "-1",
            "-1700000000",
            "1e3",
        ] {
            let mut router = Router::from_json(&base_config());
            let mut payload: Value = serde_json::from_str(&payload_json("t1")).unwrap();
            payload[claim] = json!("@@");
            let payload = payload.to_string().replace("\"@@\"", bad);
            let decision = router.request(&[(
                "authorization",
                &bearer(&raw_hs256(&hs_secret(), &header, &payload)),
            )]);
            assert_eq!(
                decision.outcome,
                Outcome::Rejected(Reason::Malformed),
                "{claim}: {bad}"
            );
        }
    }
    // The largest integer that fits is a time (far in the future).
    let mut router = Router::from_json(&base_config());
    let mut payload: Value = serde_json::from_str(&payload_json("t1")).unwrap();
    payload["exp"] = json!(u64::MAX);
    let decision = router.request(&[(
        "authorization",
        &bearer(&raw_hs256(&hs_secret(), &header, &payload.to_string())),
    )]);
    assert!(decision.routed_cell().is_some(), "{:?}", decision.reply());
}
