//! Writes the fixed fuzz configs and the seed corpora (run from filter/fuzz:
//! `cargo +nightly run --example make_seeds`). Tokens are signed with the
//! throwaway keys in tests/keys at the targets' fixed clock.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use cell_router_filter_fuzz::NOW;
use cell_router_mapping::snapshot::encode_slot_table;
use jwt_simple::prelude::*;
use serde_json::{Value, json};
use std::fs;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "cell-router";

fn key(name: &str) -> String {
    let path = format!("{}/../../tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_point(jwk: &str, kid: &str, crv: &str) -> Value {
    let full: Value = serde_json::from_str(jwk).unwrap();
    json!({"kty": "EC", "crv": crv, "kid": kid, "x": full["x"], "y": full["y"]})
}

fn snapshot() -> Value {
    json!({
        "version": 7,
        "generated_at": "2023-11-14T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 8},
        "cells": [
            {"id": "cell-a", "state": "active", "weight": 1.0, "failover": "cell-b"},
            {"id": "cell-b", "state": "active", "weight": 1.0},
            {"id": "cell-c", "state": "draining", "weight": 1.0, "shed_ratio": 0.5, "retry_after_s": 5},
            {"id": "cell-d", "state": "disabled", "weight": 1.0}
        ],
        "slot_table": encode_slot_table(&[0, 1, 2, 3, 0, 1, 2, 1]),
        "overrides": {"acme": "cell-a", "pinned": "cell-d"}
    })
}

fn main() {
    let secret = STANDARD.decode(key("hs256.secret.b64").trim()).unwrap();
    let rsa = RS256KeyPair::from_pem(&key("rsa2048.pem")).unwrap();
    let parts = rsa.public_key().to_components();
    let es256 = ES256KeyPair::from_pem(&key("ec256.pem")).unwrap();
    let es384 = ES384KeyPair::from_pem(&key("ec384.pem")).unwrap();
    let ed = Ed25519KeyPair::from_pem(&key("ed25519.pem")).unwrap();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "n": b64(&parts.n), "e": b64(&parts.e)},
        ec_point(&es256.public_key().to_jwk(), "ec256-1", "P-256"),
        ec_point(&es384.public_key().to_jwk(), "ec384-1", "P-384"),
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": b64(ed.public_key().to_bytes())},
        {"kty": "oct", "kid": "hs-1", "k": b64(&secret)},
    ]});
    let config = json!({
        "token": {"header": "authorization", "prefix": "Bearer ", "query_param": "access_token", "cookie": "session"},
        "jwks": jwks,
        "algorithms": ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
        "issuers": [ISSUER],
        "audiences": [AUDIENCE, "other-api"],
        "tenant_claim": "org.tenant_id",
        "max_token_bytes": 4096,
        "max_tenant_bytes": 64,
        "token_cache_entries": 64,
        "fallback_snapshot": snapshot(),
    });
    let trust = json!({"trust_header": "x-tenant", "fallback_snapshot": snapshot()});
    fs::write(
        "fuzz_config.json",
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    fs::write(
        "fuzz_config_trust.json",
        serde_json::to_string_pretty(&trust).unwrap(),
    )
    .unwrap();

    // Valid tokens of every algorithm, for tenants that route, shed, or hit
    // the disabled cell.
    let claims = |tenant: &str| {
        Claims::with_custom_claims(
            json!({"org": {"tenant_id": tenant}}),
            Duration::from_hours(1),
        )
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
    };
    let at_now = |mut c: JWTClaims<Value>| {
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        c.invalid_before = Some(UnixTimeStamp::from_secs(NOW));
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 3600));
        c
    };
    let hs = HS256Key::from_bytes(&secret).with_key_id("hs-1");
    let mut tokens: Vec<(String, String)> = Vec::new();
    let tenants = ["acme", "pinned", "globex", "t-42"];
    for (i, tenant) in tenants.iter().enumerate() {
        let c = at_now(claims(tenant));
        let t = match i {
            0 => hs.authenticate(c).unwrap(),
            1 => HS384Key::from_bytes(&secret)
                .with_key_id("hs-1")
                .authenticate(c)
                .unwrap(),
            2 => HS512Key::from_bytes(&secret)
                .with_key_id("hs-1")
                .authenticate(c)
                .unwrap(),
            _ => hs.authenticate(c).unwrap(),
        };
        tokens.push((format!("hs-{tenant}"), t));
    }
    let c = || at_now(claims("acme"));
    let rsa = || {
        RS256KeyPair::from_pem(&key("rsa2048.pem"))
            .unwrap()
            .with_key_id("rsa-1")
    };
    tokens.push(("rs256".into(), rsa().sign(c()).unwrap()));
    tokens.push((
        "rs384".into(),
        RS384KeyPair::from_pem(&key("rsa2048.pem"))
            .unwrap()
            .with_key_id("rsa-1")
            .sign(c())
            .unwrap(),
    ));
    tokens.push((
        "ps256".into(),
        PS256KeyPair::from_pem(&key("rsa2048.pem"))
            .unwrap()
            .with_key_id("rsa-1")
            .sign(c())
            .unwrap(),
    ));
    tokens.push((
        "es256".into(),
        es256.with_key_id("ec256-1").sign(c()).unwrap(),
    ));
    tokens.push((
        "es384".into(),
        es384.with_key_id("ec384-1").sign(c()).unwrap(),
    ));
    tokens.push(("eddsa".into(), ed.with_key_id("ed-1").sign(c()).unwrap()));

    // Hand-built hostile tokens.
    let raw = |header: &[u8], payload: &[u8], secret: &[u8]| {
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = hmac_sha256::HMAC::mac(input.as_bytes(), secret);
        format!("{input}.{}", b64(sig))
    };
    let payload = json!({"iss": ISSUER, "aud": AUDIENCE, "iat": NOW, "exp": NOW + 3600, "org": {"tenant_id": "victim"}}).to_string();
    let p = payload.as_bytes();
    tokens.push((
        "alg-none".into(),
        format!("{}.{}.", b64(br#"{"alg":"nOnE"}"#), b64(p)),
    ));
    tokens.push((
        "hs-rsa-pub".into(),
        raw(
            br#"{"alg":"HS256","kid":"rsa-1"}"#,
            p,
            key("rsa2048.pub.pem").as_bytes(),
        ),
    ));
    tokens.push((
        "crit".into(),
        raw(
            br#"{"alg":"HS256","kid":"hs-1","crit":["exp"]}"#,
            p,
            &secret,
        ),
    ));
    tokens.push((
        "jku".into(),
        raw(
            br#"{"alg":"HS256","kid":"hs-1","jku":"https://evil/jwks","x5u":"https://evil/x5"}"#,
            p,
            &secret,
        ),
    ));
    tokens.push(("dup-tenant".into(), raw(br#"{"alg":"HS256","kid":"hs-1"}"#,
        format!(r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"org":{{"tenant_id":"a","tenant_id":"b"}}}}"#, NOW + 60).as_bytes(), &secret)));
    tokens.push((
        "aud-array".into(),
        raw(
            br#"{"alg":"HS256","kid":"hs-1"}"#,
            format!(
                r#"{{"iss":"{ISSUER}","aud":["x","{AUDIENCE}"],"exp":{},"org":{{"tenant_id":7}}}}"#,
                NOW + 60
            )
            .as_bytes(),
            &secret,
        ),
    ));
    tokens.push((
        "kid-path".into(),
        raw(
            br#"{"alg":"HS256","kid":"../../etc/passwd\u0000"}"#,
            p,
            &secret,
        ),
    ));

    fs::create_dir_all("corpus/token").unwrap();
    fs::create_dir_all("corpus/decide").unwrap();
    fs::create_dir_all("corpus/config").unwrap();
    for (i, (name, t)) in tokens.iter().enumerate() {
        // First byte: where the token travels (0 header, 1 query, 2 cookie,
        // 3 bare header; +4 checks several clocks).
        let place = (i % 8) as u8;
        fs::write(
            format!("corpus/token/{name}"),
            [&[place][..], t.as_bytes()].concat(),
        )
        .unwrap();
        let spoof = if i % 2 == 0 {
            "x-cell-id: cell-d\nX-Cell-Snapshot: 999\n"
        } else {
            "X-CELL-ID: evil\nx-cell-id: \u{0}\n"
        };
        let request =
            format!(":path: /v1/sms\nx-request-id: req-{i}\nauthorization: Bearer {t}\n{spoof}");
        fs::write(
            format!("corpus/decide/{name}"),
            [&[0u8][..], request.as_bytes()].concat(),
        )
        .unwrap();
    }
    for (name, request) in [
        ("trust-ok", ":path: /\nx-tenant: acme\n"),
        (
            "trust-spoof",
            ":path: /\nx-tenant: globex\nx-cell-id: cell-d\nx-Cell-Id: cell-c\n",
        ),
        ("trust-two", ":path: /\nx-tenant: a\nx-tenant: b\n"),
        (
            "trust-draining",
            ":path: /\nx-tenant: t-42\nx-request-id: r\n",
        ),
        ("trust-ctl", ":path: /\nx-tenant: a\x01b\n"),
    ] {
        fs::write(
            format!("corpus/decide/{name}"),
            [&[1u8][..], request.as_bytes()].concat(),
        )
        .unwrap();
    }
    fs::write(
        "corpus/decide/two-auth",
        format!(
            "\0:path: /\nauthorization: Bearer {}\nAuthorization: Bearer x\n",
            tokens[0].1
        ),
    )
    .unwrap();
    fs::write("corpus/decide/no-token", "\0:path: /\n").unwrap();

    fs::write(
        "corpus/config/jwt",
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    fs::write("corpus/config/trust", trust.to_string()).unwrap();
    fs::write(
        "corpus/config/minimal",
        json!({"trust_header": "x-t", "sidecar": {"cluster": "c"}}).to_string(),
    )
    .unwrap();
    fs::write("corpus/config/sidecar", json!({"jwks": {"keys": [{"kty": "oct", "kid": "k", "k": b64(&secret)}]},
        "algorithms": ["HS256"], "tenant_claim": ["https://x/tenant"], "sidecar": {"cluster": "c", "long_poll_s": 0, "timeout_ms": 10}}).to_string()).unwrap();
    println!("wrote {} tokens", tokens.len());
}
