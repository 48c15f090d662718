//! Shared helpers over the test kit (`cell-router-kit`: the throwaway keys,
//! their JWKs, the one signer and the one verify_signature stand-in): claims
//! at a fixed clock, this crate's scenario snapshot, configs and a router.
#![allow(dead_code)]

use cell_router_filter::config::Config;
use cell_router_filter::decide::{Decision, Installed, VmKeys, VmState, decide};
use cell_router_kit as kit;
use cell_router_mapping::snapshot::encode_slot_table;
use cell_router_mapping::{CellDoc, CellState, HashDoc, MoveDoc, Snapshot, SnapshotDoc};
use jwt_simple::prelude::*;
use kit::tokens::Alg;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The clock of every test: 2023-11-14.
pub const NOW: u64 = 1_700_000_000;
pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "cell-router";

/// A file of the kit's throwaway keys (`tests/keys`).
pub fn key_file(name: &str) -> String {
    let path = kit::tokens::keys_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn hs_secret() -> Vec<u8> {
    kit::tokens::keys().hmac_secret.clone()
}

pub fn b64url(bytes: &[u8]) -> String {
    kit::tokens::b64url(bytes)
}

/// The kit's public JWK of `alg`'s test key under `kid`, without `alg`.
fn jwk(alg: Alg, kid: &str) -> Value {
    let mut jwk = kit::tokens::public_jwk(alg);
    if let Some(object) = jwk.as_object_mut() {
        object.insert("kid".into(), json!(kid));
    }
    jwk
}

/// The public RSA test key as a JWK, with `alg` when given.
pub fn rsa_jwk(kid: &str, alg: Option<&str>) -> Value {
    let mut jwk = jwk(Alg::RS256, kid);
    jwk["use"] = json!("sig");
    if let Some(alg) = alg {
        jwk["alg"] = json!(alg);
    }
    jwk
}

pub fn ec256_jwk(kid: &str) -> Value {
    jwk(Alg::ES256, kid)
}

pub fn ec384_jwk(kid: &str) -> Value {
    jwk(Alg::ES384, kid)
}

pub fn ed25519_jwk(kid: &str) -> Value {
    jwk(Alg::EdDSA, kid)
}

pub fn oct_jwk(kid: &str) -> Value {
    jwk(Alg::HS256, kid)
}

/// Every test key, each with its own kid and no `alg` (so it serves every
/// allowed algorithm of its type).
pub fn all_keys_jwks() -> Value {
    json!({"keys": [
        rsa_jwk("rsa-1", None),
        ec256_jwk("ec256-1"),
        ec384_jwk("ec384-1"),
        ed25519_jwk("ed-1"),
        oct_jwk("hs-1"),
    ]})
}

pub const ALL_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// The kid of the test key that signs `alg`.
pub fn kid_for(alg: &str) -> &'static str {
    match alg {
        a if a.starts_with("HS") => "hs-1",
        a if a.starts_with("RS") || a.starts_with("PS") => "rsa-1",
        "ES256" => "ec256-1",
        "ES384" => "ec384-1",
        _ => "ed-1",
    }
}

/// Standard claims at [`NOW`], valid for an hour, plus `extra`.
pub fn claims(extra: Value) -> JWTClaims<Map<String, Value>> {
    JWTClaims {
        issued_at: Some(UnixTimeStamp::from_secs(NOW)),
        expires_at: Some(UnixTimeStamp::from_secs(NOW + 3600)),
        invalid_before: None,
        issuer: Some(ISSUER.to_string()),
        subject: Some("user-1".to_string()),
        audiences: Some(Audiences::AsString(AUDIENCE.to_string())),
        jwt_id: None,
        nonce: None,
        custom: extra.as_object().cloned().unwrap_or_default(),
    }
}

pub fn tenant_claims(tenant: &str) -> JWTClaims<Map<String, Value>> {
    claims(json!({ "tenant_id": tenant }))
}

/// Signs with the test key for `alg`, under `kid` (the kit's signer).
pub fn sign_as(alg: &str, kid: &str, claims: JWTClaims<Map<String, Value>>) -> String {
    let alg = Alg::from_name(alg).unwrap_or_else(|| panic!("no test key for {alg}"));
    kit::tokens::sign_claims(alg, Some(kid), claims)
}

pub fn sign(alg: &str, claims: JWTClaims<Map<String, Value>>) -> String {
    sign_as(alg, kid_for(alg), claims)
}

/// A token with a hand-made header and payload, MACed with HS256 under
/// `secret` (for headers jwt-simple would never write).
pub fn raw_hs256(secret: &[u8], header: &str, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes())
    );
    let tag = HS256Key::from_bytes(secret).authentication_tag(input.as_bytes());
    format!("{input}.{}", b64url(&tag))
}

/// A standard payload JSON at NOW for tenant `tenant`.
pub fn payload_json(tenant: &str) -> String {
    json!({
        "iat": NOW, "exp": NOW + 3600, "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1",
        "tenant_id": tenant
    })
    .to_string()
}

// ---------------------------------------------------------------------------
// Snapshots.

pub const HASH_KEY: &str = "000102030405060708090a0b0c0d0e0f";

fn cell(id: &str, state: CellState, shed_ratio: f64, failover: Option<&str>) -> CellDoc {
    CellDoc {
        id: id.to_string(),
        state,
        weight: 1.0,
        shed_ratio,
        retry_after_s: 7,
        failover: failover.map(str::to_string),
        ramp: None,
    }
}

/// Cells: a, b active; c draining (shed 0.25, retry 7 s); d disabled with
/// failover a; e disabled without failover. Slots alternate a and b.
/// Overrides pin t-b→b, t-draining→c, t-failover→d, t-down→e; t-moving moves
/// from a to b at 30 %.
pub fn snapshot_doc(version: u64) -> SnapshotDoc {
    let slots: Vec<u16> = (0..64).map(|i| (i % 2) as u16).collect();
    let mut overrides = BTreeMap::new();
    overrides.insert("t-b".to_string(), "b".to_string());
    overrides.insert("t-draining".to_string(), "c".to_string());
    overrides.insert("t-failover".to_string(), "d".to_string());
    overrides.insert("t-down".to_string(), "e".to_string());
    SnapshotDoc {
        version,
        generated_at: "2023-11-14T22:13:20Z".to_string(),
        hash: HashDoc {
            algorithm: "siphash-1-3".to_string(),
            key: HASH_KEY.to_string(),
            slots: slots.len() as u32,
        },
        cells: vec![
            cell("a", CellState::Active, 0.0, None),
            cell("b", CellState::Active, 0.0, None),
            cell("c", CellState::Draining, 0.25, None),
            cell("d", CellState::Disabled, 0.0, Some("a")),
            cell("e", CellState::Disabled, 0.0, None),
        ],
        slot_table: encode_slot_table(&slots),
        overrides,
        pins: BTreeMap::new(),
        moves: vec![MoveDoc {
            tenant: "t-moving".to_string(),
            from: "a".to_string(),
            to: "b".to_string(),
            percent: 30.0,
        }],
    }
}

pub fn snapshot_json(version: u64) -> Value {
    serde_json::from_str(&snapshot_doc(version).to_json()).unwrap()
}

pub fn snapshot(version: u64) -> Snapshot {
    Snapshot::parse(snapshot_doc(version).to_json().as_bytes()).unwrap()
}

// ---------------------------------------------------------------------------
// Configs and requests.

/// A full JWT-mode config with every test key and algorithm.
pub fn base_config() -> Value {
    json!({
        "jwks": all_keys_jwks(),
        "algorithms": ALL_ALGORITHMS,
        "issuers": [ISSUER],
        "audiences": [AUDIENCE],
        "tenant_claim": "tenant_id",
        "realm": "cells",
        "sidecar": {"cluster": "cellmap_sidecar"},
        "fallback_snapshot": snapshot_json(1),
    })
}

pub fn config(value: &Value) -> Config {
    Config::from_json(value.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("config refused: {e}"))
}

pub fn config_error(value: &Value) -> String {
    match Config::from_json(value.to_string().as_bytes()) {
        Ok(_) => panic!("config accepted: {value}"),
        Err(e) => e.to_string(),
    }
}

/// A router for tests: config, VM state and the snapshot in force.
pub struct Router {
    pub config: Config,
    pub vm: VmState,
    pub installed: Option<Installed>,
    /// The clock, Unix seconds (the filter reads milliseconds: `now` × 1000
    /// + `now_ms_extra`).
    pub now: u64,
    pub now_ms_extra: u64,
}

impl Router {
    pub fn new(mut config: Config) -> Self {
        let installed = config.fallback_snapshot.take().map(Installed::new);
        let vm = VmState::new(&config, VmKeys::fixed(7));
        Router {
            config,
            vm,
            installed,
            now: NOW,
            now_ms_extra: 0,
        }
    }

    pub fn from_json(value: &Value) -> Self {
        Router::new(config(value))
    }

    pub fn request(&mut self, headers: &[(&str, &str)]) -> Decision<'_> {
        let now = self.now * 1000 + self.now_ms_extra;
        let mut clock = move || now;
        decide(
            &self.config,
            &mut self.vm,
            headers,
            &mut clock,
            self.installed.as_ref(),
        )
    }

    pub fn request_bytes(&mut self, headers: &[(&[u8], &[u8])]) -> Decision<'_> {
        let now = self.now * 1000 + self.now_ms_extra;
        let mut clock = move || now;
        decide(
            &self.config,
            &mut self.vm,
            headers,
            &mut clock,
            self.installed.as_ref(),
        )
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------
// Envoy's verify_signature, answered by the test kit's one stand-in for it
// (SubjectPublicKeyInfo DER, DER ECDSA signatures, PKCS#1 v1.5 RSA, as
// BoringSSL takes them).

use cell_router_filter::envoy_verify::{HostVerdict, SignatureHost};

pub struct RustCryptoHost {
    pub calls: usize,
    /// Answer `Unavailable` (like a host without the function).
    pub available: bool,
    /// Answer this whatever the signature (a lying or broken host).
    pub forced: Option<HostVerdict>,
}

impl RustCryptoHost {
    pub fn new() -> Self {
        RustCryptoHost {
            calls: 0,
            available: true,
            forced: None,
        }
    }
}

impl SignatureHost for RustCryptoHost {
    fn verify_signature(
        &mut self,
        hash: &str,
        der: &[u8],
        signature: &[u8],
        text: &[u8],
    ) -> HostVerdict {
        self.calls += 1;
        if !self.available {
            return HostVerdict::Unavailable;
        }
        if let Some(forced) = self.forced {
            return forced;
        }
        match kit::envoy_crypto::verify(hash, der, signature, text) {
            Ok(()) => HostVerdict::Valid,
            Err(_) => HostVerdict::Invalid,
        }
    }
}

impl Router {
    pub fn request_with_host(
        &mut self,
        headers: &[(&str, &str)],
        host: &mut RustCryptoHost,
    ) -> Decision<'_> {
        let now = self.now * 1000 + self.now_ms_extra;
        let mut clock = move || now;
        cell_router_filter::decide::decide_with(
            &self.config,
            &mut self.vm,
            headers,
            &mut clock,
            self.installed.as_ref(),
            host,
        )
    }
}
