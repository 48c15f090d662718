//! The documentation cannot drift from the code: the README's full example
//! is a valid config, and the JSON Schema names exactly the fields the filter
//! accepts, with the same defaults.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_filter::config::{self, Config};
use cell_router_filter::jwks::Algorithm;
use serde_json::Value;
use std::collections::BTreeSet;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn readme_example() -> String {
    let readme = read("README.md");
    let marker = readme
        .find("<!-- config-example")
        .expect("marker in README");
    let rest = &readme[marker..];
    let start = rest.find("```json\n").unwrap() + "```json\n".len();
    let end = rest[start..].find("\n```").unwrap();
    rest[start..start + end].to_string()
}

#[test]
fn readme_full_example_is_a_valid_config() {
    let config = Config::from_json(readme_example().as_bytes()).unwrap();
    let jwt = config.jwt().unwrap();
    assert_eq!(jwt.algorithms, vec![Algorithm::RS256]);
    assert_eq!(jwt.keys.entries().len(), 1);
    assert_eq!(jwt.tenant_claim.segments, vec!["org", "tenant_id"]);
    assert_eq!(jwt.source.cookie.as_deref(), Some("session"));
    let snapshot = config.fallback_snapshot.unwrap();
    assert_eq!(snapshot.cells().len(), 3);
    let acme = snapshot.resolve(b"acme-corp", &cell_router_mapping::Draws::default());
    assert_eq!(
        snapshot.cell(acme.routed_cell().unwrap()).unwrap().id,
        "cell-b"
    );
}

/// The fields serde accepts at `json`'s level, from its unknown-field error.
fn accepted_fields(json: &str) -> BTreeSet<String> {
    let error = Config::from_json(json.as_bytes()).unwrap_err().message;
    let list = error
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("{error}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn schema_fields(schema: &Value, pointer: &str) -> BTreeSet<String> {
    schema
        .pointer(pointer)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn schema_names_exactly_the_accepted_fields() {
    let schema: Value = serde_json::from_str(&read("config.schema.json")).unwrap();
    assert_eq!(
        schema_fields(&schema, "/properties"),
        accepted_fields(r#"{"zzz": 1}"#)
    );
    assert_eq!(
        schema_fields(&schema, "/properties/token/properties"),
        accepted_fields(r#"{"token": {"zzz": 1}}"#)
    );
    assert_eq!(
        schema_fields(&schema, "/properties/sidecar/properties"),
        accepted_fields(r#"{"sidecar": {"cluster": "c", "zzz": 1}}"#)
    );
    assert_eq!(
        schema_fields(
            &schema,
            "/properties/sidecar/properties/persisted/properties"
        ),
        accepted_fields(
            r#"{"sidecar": {"cluster": "c", "persisted": {"cluster": "p", "zzz": 1}}}"#
        )
    );
    assert_eq!(
        schema_fields(&schema, "/properties/jwks_remote/properties"),
        accepted_fields(r#"{"jwks_remote": {"cluster": "c", "zzz": 1}}"#)
    );
    assert_eq!(
        schema_fields(&schema, "/properties/providers/items/properties"),
        accepted_fields(r#"{"providers": [{"issuer": "i", "zzz": 1}]}"#)
    );
    let algorithms: BTreeSet<String> = schema["$defs"]["algorithm"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let known: BTreeSet<String> = Algorithm::ALL
        .iter()
        .map(|a| a.as_str().to_string())
        .collect();
    assert_eq!(algorithms, known);
}

#[test]
fn schema_defaults_match_the_code() {
    let schema: Value = serde_json::from_str(&read("config.schema.json")).unwrap();
    let default = |pointer: &str| {
        schema
            .pointer(&format!("{pointer}/default"))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        default("/properties/token/properties/header"),
        config::DEFAULT_TOKEN_HEADER
    );
    assert_eq!(
        default("/properties/token/properties/prefix"),
        config::DEFAULT_TOKEN_PREFIX
    );
    assert_eq!(
        default("/properties/cell_header"),
        config::DEFAULT_CELL_HEADER
    );
    assert_eq!(
        default("/properties/version_header"),
        config::DEFAULT_VERSION_HEADER
    );
    assert_eq!(default("/properties/realm"), config::DEFAULT_REALM);
    assert_eq!(
        default("/properties/clock_skew_s"),
        config::DEFAULT_CLOCK_SKEW_S
    );
    assert_eq!(
        default("/properties/max_token_bytes"),
        config::DEFAULT_MAX_TOKEN_BYTES
    );
    assert_eq!(
        default("/properties/max_tenant_bytes"),
        config::DEFAULT_MAX_TENANT_BYTES
    );
    assert_eq!(
        default("/properties/token_cache_entries"),
        config::DEFAULT_TOKEN_CACHE_ENTRIES
    );
    assert_eq!(default("/properties/require_exp"), true);
    assert_eq!(
        default("/properties/split_claim"),
        config::DEFAULT_SPLIT_CLAIM
    );

    // The sidecar defaults, as the validated config applies them.
    let config =
        Config::from_json(br#"{"trust_header": "x-t", "sidecar": {"cluster": "c"}}"#).unwrap();
    let sidecar = config.sidecar.unwrap();
    let sd = |field: &str| default(&format!("/properties/sidecar/properties/{field}"));
    assert_eq!(sd("authority"), sidecar.authority.as_str());
    assert_eq!(sd("path"), sidecar.path.as_str());
    assert_eq!(sd("long_poll_s"), sidecar.long_poll_s);
    assert_eq!(sd("retry_min_ms"), sidecar.retry_min_ms);
    assert_eq!(sd("retry_max_ms"), sidecar.retry_max_ms);
    assert_eq!(sd("tick_ms"), sidecar.tick_ms);
    assert_eq!(sd("min_fetch_interval_ms"), sidecar.min_fetch_interval_ms);
    assert_eq!(sd("max_snapshot_bytes"), sidecar.max_snapshot_bytes);
    assert_eq!(
        default("/properties/readiness_path"),
        config.readiness_path.as_deref().unwrap()
    );
    let remote = Config::from_json(
        br#"{"jwks_remote": {"cluster": "c"}, "algorithms": ["ES256"], "tenant_claim": "t", "sidecar": {"cluster": "c"}}"#,
    )
    .unwrap()
    .jwt()
    .unwrap()
    .remote
    .clone()
    .unwrap();
    let rd = |field: &str| default(&format!("/properties/jwks_remote/properties/{field}"));
    assert_eq!(rd("authority"), remote.authority.as_str());
    assert_eq!(rd("path"), remote.path.as_str());
    assert_eq!(rd("refresh_s"), remote.refresh_s);
    assert_eq!(rd("timeout_ms"), remote.timeout_ms);
    assert_eq!(rd("unknown_kid_refetch_s"), remote.unknown_kid_refetch_s);
    assert_eq!(rd("grace_s"), remote.grace_s);
    assert_eq!(rd("max_jwks_bytes"), remote.max_jwks_bytes);
    assert_eq!(rd("retry_min_ms"), remote.retry_min_ms);
    let persisted = Config::from_json(
        br#"{"trust_header": "x-t", "sidecar": {"cluster": "c", "persisted": {"cluster": "p"}}}"#,
    )
    .unwrap()
    .sidecar
    .unwrap()
    .persisted
    .unwrap();
    let pd = |field: &str| {
        default(&format!(
            "/properties/sidecar/properties/persisted/properties/{field}"
        ))
    };
    assert_eq!(pd("authority"), persisted.authority.as_str());
    assert_eq!(pd("path"), persisted.path.as_str());
    assert_eq!(pd("timeout_ms"), persisted.timeout_ms);
}
