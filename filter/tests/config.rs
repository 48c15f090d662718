//! Plugin configuration: defaults, and every bad value refused with its field.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::config::{Auth, Config};
use cell_router_filter::jwks::Algorithm;
use common::*;
use serde_json::{Value, json};

/// Sets the member at a JSON pointer, creating the last level if needed.
fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, member) = pointer.rsplit_once('/').unwrap();
    let parent = base
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match parent {
        Value::Object(map) => {
            map.insert(member.to_string(), value);
        }
        Value::Array(items) => items[member.parse::<usize>().unwrap()] = value,
        _ => panic!("{pointer} is not in an object or array"),
    }
    base
}

fn set(mut base: Value, field: &str, value: Value) -> Value {
    base.as_object_mut()
        .unwrap()
        .insert(field.to_string(), value);
    base
}

fn without(mut base: Value, field: &str) -> Value {
    base.as_object_mut().unwrap().remove(field);
    base
}

#[test]
fn defaults_are_applied() {
    let config = config(&base_config());
    assert_eq!(config.cell_header, "x-cell-id");
    assert_eq!(config.version_header, "x-cell-snapshot");
    assert_eq!(config.realm, "cells");
    assert_eq!(config.max_tenant_bytes, 256);
    let jwt = config.jwt().unwrap();
    assert_eq!(jwt.source.header, "authorization");
    assert_eq!(jwt.source.prefix, "Bearer ");
    assert_eq!(jwt.source.query_param, None);
    assert!(jwt.require_exp);
    assert_eq!(jwt.clock_skew_s, 60);
    assert_eq!(jwt.max_token_bytes, 8192);
    assert_eq!(jwt.token_cache_entries, 4096);
    assert_eq!(jwt.tenant_claim.segments, vec!["tenant_id"]);
    assert_eq!(jwt.algorithms.len(), 12);
    let sidecar = config.sidecar.as_ref().unwrap();
    assert_eq!(sidecar.cluster, "cellmap_sidecar");
    assert_eq!(sidecar.authority, "cellmap");
    assert_eq!(sidecar.path, "/snapshot");
    assert_eq!(sidecar.long_poll_s, 30);
    assert_eq!(sidecar.timeout_ms, 35_000);
    assert_eq!(sidecar.retry_min_ms, 200);
    assert_eq!(sidecar.retry_max_ms, 5000);
    assert_eq!(sidecar.max_snapshot_bytes, 64 << 20);
    assert_eq!(sidecar.persisted, None);
    assert_eq!(config.readiness_path.as_deref(), Some("/cell-router/ready"));
    assert!(config.filter_state);
    assert!(!config.log_tenant);
    assert_eq!(config.fallback_snapshot.as_ref().unwrap().version(), 1);
}

#[test]
fn every_field_can_be_set() {
    let value = json!({
        "token": {"header": "x-jwt", "prefix": "", "query_param": "access_token", "cookie": "session"},
        "jwks": {"keys": [oct_jwk("k1")]},
        "algorithms": ["HS256"],
        "issuers": ["a", "b"],
        "audiences": ["c"],
        "require_exp": false,
        "clock_skew_s": 5,
        "max_token_bytes": 4096,
        "tenant_claim": ["https://example.com/claims", "tenant"],
        "token_cache_entries": 0,
        "max_tenant_bytes": 64,
        "cell_header": "x-cell",
        "version_header": "x-cell-version",
        "realm": "api",
        "sidecar": {
            "cluster": "sidecar", "authority": "cellmap.local:9901", "path": "/v1/snapshot",
            "long_poll_s": 10, "timeout_ms": 12000, "retry_min_ms": 50, "retry_max_ms": 800,
            "tick_ms": 250, "min_fetch_interval_ms": 20, "max_snapshot_bytes": 1048576,
            "persisted": {
                "cluster": "cellmap_persisted", "authority": "persisted.local", "path": "/persisted",
                "timeout_ms": 2000
            }
        },
        "readiness_path": "/ready",
        "filter_state": false
    });
    let config = config(&value);
    let jwt = config.jwt().unwrap();
    assert_eq!(jwt.source.header, "x-jwt");
    assert_eq!(jwt.source.prefix, "");
    assert_eq!(jwt.source.query_param.as_deref(), Some("access_token"));
    assert_eq!(jwt.source.cookie.as_deref(), Some("session"));
    assert_eq!(jwt.algorithms, vec![Algorithm::HS256]);
    assert_eq!(jwt.issuers.as_ref().unwrap().len(), 2);
    assert!(!jwt.require_exp);
    assert_eq!(jwt.clock_skew_s, 5);
    assert_eq!(
        jwt.tenant_claim.segments,
        vec!["https://example.com/claims", "tenant"]
    );
    assert_eq!(config.cell_header, "x-cell");
    let sidecar = config.sidecar.unwrap();
    assert_eq!(sidecar.authority, "cellmap.local:9901");
    assert_eq!(sidecar.timeout_ms, 12000);
    assert_eq!(sidecar.tick_ms, 250);
    assert_eq!(sidecar.max_snapshot_bytes, 1 << 20);
    let persisted = sidecar.persisted.unwrap();
    assert_eq!(persisted.cluster, "cellmap_persisted");
    assert_eq!(persisted.authority, "persisted.local");
    assert_eq!(persisted.path, "/persisted");
    assert_eq!(persisted.timeout_ms, 2000);
    assert_eq!(config.readiness_path.as_deref(), Some("/ready"));
    assert!(!config.filter_state);
    assert!(config.fallback_snapshot.is_none());
}

#[test]
fn region_is_optional_and_kept() {
    assert_eq!(config(&base_config()).region, None);
    let value = set(base_config(), "region", json!("eu-west.1"));
    assert_eq!(config(&value).region.as_deref(), Some("eu-west.1"));
}

#[test]
fn trust_header_mode_needs_no_token_settings() {
    let config =
        config(&json!({"trust_header": "x-tenant", "fallback_snapshot": snapshot_json(3)}));
    match config.auth {
        Auth::TrustHeader { header } => assert_eq!(header, "x-tenant"),
        Auth::Jwt(_) => panic!("expected trust_header mode"),
    }
}

/// Each case: (config, the field the error must name, a word of the reason).
fn cases() -> Vec<(Value, &'static str, &'static str)> {
    let base = base_config();
    vec![
        (
            set(base.clone(), "region", json!("")),
            "region",
            "1–128 bytes",
        ),
        (
            set(base.clone(), "region", json!("eu west")),
            "region",
            "only ASCII letters",
        ),
        (
            set(base.clone(), "region", json!("a|b")),
            "region",
            "only ASCII letters",
        ),
        (
            set(base.clone(), "region", json!(7)),
            "region",
            "invalid type",
        ),
        (
            set(base.clone(), "cell_header", json!("x-cell-region")),
            "cell_header",
            "set by the router",
        ),
        (
            set(base.clone(), "version_header", json!("x-cell-pool")),
            "version_header",
            "set by the router",
        ),
        (
            with(
                base.clone(),
                "/token",
                json!({"header": "x-cell-forwarded-by"}),
            ),
            "token.header",
            "x-cell-forwarded-by",
        ),
        (
            set(base.clone(), "colour", json!("blue")),
            "colour",
            "unknown field `colour`",
        ),
        (
            with(
                base.clone(),
                "/sidecar",
                json!({"cluster": "s", "retries": 3}),
            ),
            "sidecar.retries",
            "unknown field `retries`",
        ),
        (
            with(
                base.clone(),
                "/sidecar",
                json!({"cluster": "s", "max_snapshot_bytes": 1023}),
            ),
            "sidecar.max_snapshot_bytes",
            "between 1024 and 1073741824",
        ),
        (
            with(
                base.clone(),
                "/sidecar",
                json!({"cluster": "s", "max_snapshot_bytes": 2_000_000_000u64}),
            ),
            "sidecar.max_snapshot_bytes",
            "between 1024 and 1073741824",
        ),
        (
            with(
                base.clone(),
                "/sidecar",
                json!({"cluster": "s", "persisted": {"path": "/p"}}),
            ),
            "sidecar.persisted",
            "missing field `cluster`",
        ),
        (
            with(
                base.clone(),
                "/sidecar",
                json!({"cluster": "s", "persisted": {"cluster": ""}}),
            ),
            "sidecar.persisted.cluster",
            "non-empty",
        ),
        (
            with(
                base.clone(),
                "/sidecar",
                json!({"cluster": "s", "persisted": {"cluster": "p", "path": "snapshot"}}),
            ),
            "sidecar.persisted.path",
            "must start with '/'",
        ),
        (
            with(
                base.clone(),
                "/sidecar",
                json!({"cluster": "s", "persisted": {"cluster": "p", "timeout_ms": 50}}),
            ),
            "sidecar.persisted.timeout_ms",
            "between 100 and 600000",
        ),
        (
            with(
                base.clone(),
                "/sidecar",
                json!({"cluster": "s", "persisted": {"cluster": "p", "url": "/x"}}),
            ),
            "sidecar.persisted.url",
            "unknown field `url`",
        ),
        (
            set(base.clone(), "readiness_path", json!("ready")),
            "readiness_path",
            "must start with '/'",
        ),
        (
            set(base.clone(), "issuers", json!([ISSUER, ""])),
            "issuers[1]",
            "must be a non-empty string",
        ),
        (
            set(base.clone(), "issuers", json!([ISSUER, 3])),
            "issuers[1]",
            "invalid type",
        ),
        (
            set(base.clone(), "issuers", json!([])),
            "issuers",
            "at least one",
        ),
        (
            set(base.clone(), "audiences", json!(["x", "x"])),
            "audiences[1]",
            "duplicate",
        ),
        (
            set(base.clone(), "algorithms", json!(["RS256", "none"])),
            "algorithms[1]",
            "never allowed",
        ),
        (
            set(base.clone(), "algorithms", json!(["rs256"])),
            "algorithms[0]",
            "unknown algorithm",
        ),
        (
            set(base.clone(), "algorithms", json!([])),
            "algorithms",
            "at least one",
        ),
        (without(base.clone(), "algorithms"), "algorithms", "missing"),
        (without(base.clone(), "jwks"), "jwks", "missing"),
        (
            without(base.clone(), "tenant_claim"),
            "tenant_claim",
            "missing",
        ),
        (
            set(base.clone(), "tenant_claim", json!("org..id")),
            "tenant_claim",
            "empty segment",
        ),
        (
            set(base.clone(), "tenant_claim", json!("exp")),
            "tenant_claim",
            "registered claim",
        ),
        (
            set(base.clone(), "tenant_claim", json!("sub.id")),
            "tenant_claim",
            "no nested",
        ),
        (
            set(base.clone(), "tenant_claim", json!(7)),
            "tenant_claim",
            "did not match",
        ),
        (
            set(base.clone(), "clock_skew_s", json!(601)),
            "clock_skew_s",
            "between 0 and 600",
        ),
        (
            set(base.clone(), "clock_skew_s", json!(-1)),
            "clock_skew_s",
            "invalid value",
        ),
        (
            set(base.clone(), "max_token_bytes", json!(10)),
            "max_token_bytes",
            "between 256 and 65536",
        ),
        (
            set(base.clone(), "max_tenant_bytes", json!(0)),
            "max_tenant_bytes",
            "between 1 and 4096",
        ),
        (
            set(base.clone(), "token_cache_entries", json!(2_000_000)),
            "token_cache_entries",
            "between",
        ),
        (
            set(base.clone(), "require_exp", json!("yes")),
            "require_exp",
            "invalid type",
        ),
        (
            set(base.clone(), "cell_header", json!("X-Cell-Id")),
            "cell_header",
            "lowercase",
        ),
        (
            set(base.clone(), "cell_header", json!("x cell")),
            "cell_header",
            "not a valid header name",
        ),
        (
            set(base.clone(), "cell_header", json!("")),
            "cell_header",
            "non-empty",
        ),
        (
            set(base.clone(), "version_header", json!("x-cell-id")),
            "version_header",
            "differ",
        ),
        (
            set(base.clone(), "realm", json!("a\"b")),
            "realm",
            "printable ASCII",
        ),
        (
            set(base.clone(), "token", json!({"header": "x-cell-id"})),
            "token.header",
            "differ",
        ),
        (
            set(base.clone(), "token", json!({"prefix": "Bearer\n"})),
            "token.prefix",
            "printable",
        ),
        (
            set(base.clone(), "token", json!({"query_param": "a b"})),
            "token.query_param",
            "has",
        ),
        (
            set(base.clone(), "token", json!({"cookie": ""})),
            "token.cookie",
            "non-empty",
        ),
        (
            set(base.clone(), "token", json!({"bearer": true})),
            "token.bearer",
            "unknown field `bearer`",
        ),
        (
            set(base.clone(), "sidecar", json!({"authority": "x"})),
            "sidecar",
            "missing field `cluster`",
        ),
        (
            set(base.clone(), "sidecar", json!({"cluster": ""})),
            "sidecar.cluster",
            "non-empty",
        ),
        (
            set(
                base.clone(),
                "sidecar",
                json!({"cluster": "s", "path": "snapshot"}),
            ),
            "sidecar.path",
            "start with '/'",
        ),
        (
            set(
                base.clone(),
                "sidecar",
                json!({"cluster": "s", "path": "/s?x=1"}),
            ),
            "sidecar.path",
            "no query",
        ),
        (
            set(
                base.clone(),
                "sidecar",
                json!({"cluster": "s", "authority": "a b"}),
            ),
            "sidecar.authority",
            "host name",
        ),
        (
            set(
                base.clone(),
                "sidecar",
                json!({"cluster": "s", "long_poll_s": 301}),
            ),
            "sidecar.long_poll_s",
            "between 0 and 300",
        ),
        (
            set(
                base.clone(),
                "sidecar",
                json!({"cluster": "s", "long_poll_s": 30, "timeout_ms": 30000}),
            ),
            "sidecar.timeout_ms",
            "greater than",
        ),
        (
            set(
                base.clone(),
                "sidecar",
                json!({"cluster": "s", "retry_min_ms": 5}),
            ),
            "sidecar.retry_min_ms",
            "between 10",
        ),
        (
            set(
                base.clone(),
                "sidecar",
                json!({"cluster": "s", "retry_min_ms": 500, "retry_max_ms": 100}),
            ),
            "sidecar.retry_max_ms",
            "between 500",
        ),
        (
            set(
                base.clone(),
                "sidecar",
                json!({"cluster": "s", "tick_ms": 1}),
            ),
            "sidecar.tick_ms",
            "between 10",
        ),
        (
            without(without(base.clone(), "sidecar"), "fallback_snapshot"),
            "sidecar",
            "needs `sidecar`, `fallback_snapshot`",
        ),
        (
            set(base.clone(), "fallback_snapshot", json!([1])),
            "fallback_snapshot",
            "snapshot object",
        ),
        (
            with(
                base.clone(),
                "/fallback_snapshot/cells/0/shed_ratio",
                json!(2.0),
            ),
            "fallback_snapshot.cells[0].shed_ratio",
            "between 0 and 1",
        ),
        (
            with(base.clone(), "/fallback_snapshot/hash/key", json!("zz")),
            "fallback_snapshot.hash.key",
            "32 hex",
        ),
        (
            set(base.clone(), "filter_state", json!("no")),
            "filter_state",
            "boolean",
        ),
        (
            set(
                set(base.clone(), "filter_state", json!(false)),
                "log_tenant",
                json!(true),
            ),
            "log_tenant",
            "filter_state: false turns off",
        ),
        // The base has no `token`: the first JWT-only field present is `jwks`.
        (
            set(base.clone(), "trust_header", json!("x-tenant")),
            "jwks",
            "not used with trust_header",
        ),
    ]
}

#[test]
fn every_bad_field_is_refused_with_its_name() {
    for (value, field, reason) in cases() {
        let error = config_error(&value);
        assert!(
            error.starts_with(&format!("{field}: ")),
            "expected the error to name {field:?}, got {error:?}"
        );
        assert!(error.contains(reason), "expected {reason:?} in {error:?}");
    }
}

#[test]
fn malformed_json_and_empty_config_are_refused() {
    for bytes in [&b""[..], b"  ", b"{", b"[]", b"{} {}", b"\xff"] {
        let error = Config::from_json(bytes).unwrap_err();
        assert!(!error.message.is_empty());
    }
}

#[test]
fn duplicate_config_fields_are_refused() {
    let text = r#"{"trust_header": "x-a", "trust_header": "x-b", "fallback_snapshot": null}"#;
    let error = Config::from_json(text.as_bytes()).unwrap_err().to_string();
    assert!(error.contains("duplicate field"), "{error}");
}

#[test]
fn jwks_errors_name_the_key_and_member() {
    let base = base_config();
    let bad = |jwk: Value| set(base.clone(), "jwks", json!({"keys": [jwk]}));
    let rsa = rsa_jwk("r", None);
    let cases: Vec<(Value, &str, &str)> = vec![
        (set(base.clone(), "jwks", json!([])), "jwks", "JWKS object"),
        (set(base.clone(), "jwks", json!({})), "jwks.keys", "missing"),
        (
            set(base.clone(), "jwks", json!({"keys": []})),
            "jwks.keys",
            "at least one",
        ),
        (bad(json!({"kid": "x"})), "jwks.keys[0].kty", "missing"),
        (
            bad(json!({"kty": "DSA"})),
            "jwks.keys[0].kty",
            "unsupported key type",
        ),
        (
            bad(json!({"kty": "EC", "crv": "P-521", "x": "a", "y": "b"})),
            "jwks.keys[0].crv",
            "unsupported curve",
        ),
        (
            bad(with(rsa.clone(), "/alg", json!("ES256"))),
            "jwks.keys[0].alg",
            "does not fit kty RSA",
        ),
        (
            bad(with(oct_jwk("h"), "/kid", json!("h")).pipe_alg("RS256")),
            "jwks.keys[0].alg",
            "does not fit kty oct",
        ),
        (
            bad(with(rsa.clone(), "/use", json!("enc"))),
            "jwks.keys[0].use",
            "only signature keys",
        ),
        (
            bad(with(rsa.clone(), "/kid", json!(""))),
            "jwks.keys[0].kid",
            "must not be empty",
        ),
        (
            bad(with(rsa.clone(), "/kid", json!(5))),
            "jwks.keys[0].kid",
            "must be a string",
        ),
        (
            bad(with(rsa.clone(), "/n", json!("AQAB"))),
            "jwks.keys[0]",
            "shorter than 2048 bits",
        ),
        (
            bad(with(rsa.clone(), "/n", json!("***"))),
            "jwks.keys[0]",
            "not a valid RSA public key",
        ),
        (
            bad(with(rsa.clone(), "/e", json!("Aw"))),
            "jwks.keys[0]",
            "AQAB",
        ),
        (
            bad(rsa.clone().pipe_set("d", json!("AQAB"))),
            "jwks.keys[0].d",
            "private key material",
        ),
        (
            bad(rsa.clone().pipe_set("key_ops", json!(["sign"]))),
            "jwks.keys[0].key_ops",
            "verify",
        ),
        (
            bad(with(ec256_jwk("e"), "/x", json!("AAAA"))),
            "jwks.keys[0]",
            "not a valid P-256",
        ),
        (
            bad(with(ed25519_jwk("d"), "/x", json!("AAAA"))),
            "jwks.keys[0].x",
            "Ed25519",
        ),
        (
            bad(json!({"kty": "oct", "k": b64url(&[1; 16])})),
            "jwks.keys[0].k",
            "at least 32",
        ),
        (
            bad(json!({"kty": "oct", "k": "%%%"})),
            "jwks.keys[0].k",
            "base64url",
        ),
        (bad(json!({"kty": "oct"})), "jwks.keys[0].k", "missing"),
        (
            set(
                set(base.clone(), "algorithms", json!(["ES256"])),
                "jwks",
                json!({"keys": [rsa.clone()]}),
            ),
            "jwks.keys[0]",
            "no algorithm in `algorithms` fits kty RSA",
        ),
        (
            set(
                set(base.clone(), "algorithms", json!(["ES256"])),
                "jwks",
                json!({"keys": [with(rsa.clone(), "/kid", json!("r")).pipe_alg("RS256")]}),
            ),
            "jwks.keys[0].alg",
            "not in `algorithms`",
        ),
        (
            set(
                base.clone(),
                "jwks",
                json!({"keys": [rsa.clone(), rsa.clone()]}),
            ),
            "jwks.keys[1].kid",
            "already has kid",
        ),
    ];
    for (value, field, reason) in cases {
        let error = config_error(&value);
        assert!(
            error.starts_with(&format!("{field}: ")),
            "expected the error to name {field:?}, got {error:?}"
        );
        assert!(error.contains(reason), "expected {reason:?} in {error:?}");
    }
}

trait JwkEdit {
    fn pipe_alg(self, alg: &str) -> Value;
    fn pipe_set(self, member: &str, value: Value) -> Value;
}
impl JwkEdit for Value {
    fn pipe_alg(self, alg: &str) -> Value {
        self.pipe_set("alg", json!(alg))
    }
    fn pipe_set(mut self, member: &str, value: Value) -> Value {
        self.as_object_mut().unwrap().insert(member.into(), value);
        self
    }
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn arbitrary_config_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Config::from_json(&bytes);
        }

        /// Structurally plausible configs with random values: an answer, no
        /// panic, and an error always names a field.
        #[test]
        fn random_values_in_known_fields(
            field in proptest::sample::select(vec![
                "algorithms", "issuers", "audiences", "clock_skew_s", "max_token_bytes",
                "tenant_claim", "token_cache_entries", "cell_header", "realm", "jwks", "sidecar",
                "token", "require_exp", "max_tenant_bytes", "fallback_snapshot",
            ]),
            value in prop_oneof![
                any::<i64>().prop_map(|n| json!(n)),
                ".{0,12}".prop_map(|s| json!(s)),
                proptest::collection::vec(".{0,6}", 0..4).prop_map(|v| json!(v)),
                Just(json!(null)),
                Just(json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]})),
                Just(json!({"cluster": "", "long_poll_s": 0, "timeout_ms": 0})),
            ],
        ) {
            let mut config = base_config();
            config[field] = value;
            if let Err(error) = Config::from_json(config.to_string().as_bytes()) {
                prop_assert!(!error.field.is_empty());
                prop_assert!(!error.message.is_empty());
            }
        }
    }
}
