//! Native cost of token verification and of a whole decision, per algorithm.
//! Not a test: numbers depend on the machine. Run with
//! `cargo run --release -p cell-router-filter --example verify_bench`.
//! The wasmtime host measures the same inside the Wasm VM.

use base64::Engine as _;
use cell_router_filter::config::Config;
use cell_router_filter::decide::{Installed, VmKeys, VmState, decide};
use cell_router_filter::token;
use jwt_simple::prelude::*;
use serde_json::{Map, Value, json};
use std::error::Error;
use std::time::Instant;

const NOW: u64 = 1_700_000_000;

fn key_file(name: &str) -> Result<String, Box<dyn Error>> {
    let path = format!("{}/../tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    Ok(std::fs::read_to_string(path)?)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims(tenant: &str) -> JWTClaims<Map<String, Value>> {
    let mut custom = Map::new();
    custom.insert("tenant_id".into(), json!(tenant));
    JWTClaims {
        issued_at: Some(UnixTimeStamp::from_secs(NOW)),
        expires_at: Some(UnixTimeStamp::from_secs(NOW + 3600)),
        invalid_before: None,
        issuer: Some("https://issuer.test".into()),
        subject: None,
        audiences: Some(Audiences::AsString("cell-router".into())),
        jwt_id: None,
        nonce: None,
        custom,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let rsa = RS256KeyPair::from_pem(&key_file("rsa2048.pem")?)?.with_key_id("rsa-1");
    let components = rsa.public_key().to_components();
    let ec256 = ES256KeyPair::from_pem(&key_file("ec256.pem")?)?.with_key_id("ec256-1");
    let ec384 = ES384KeyPair::from_pem(&key_file("ec384.pem")?)?.with_key_id("ec384-1");
    let ed = Ed25519KeyPair::from_pem(&key_file("ed25519.pem")?)?.with_key_id("ed-1");
    let secret =
        base64::engine::general_purpose::STANDARD.decode(key_file("hs256.secret.b64")?.trim())?;
    let hs = HS256Key::from_bytes(&secret).with_key_id("hs-1");
    let ps = PS256KeyPair::from_pem(&key_file("rsa2048.pem")?)?.with_key_id("rsa-1");

    let mut jwks = vec![
        json!({"kty": "RSA", "kid": "rsa-1", "n": b64url(&components.n), "e": b64url(&components.e)}),
        json!({"kty": "oct", "kid": "hs-1", "k": b64url(&secret)}),
    ];
    for jwk in [
        ec256.public_key().to_jwk(),
        ec384.public_key().to_jwk(),
        ed.public_key().to_jwk(),
    ] {
        jwks.push(serde_json::from_str(&jwk)?);
    }
    let snapshot: Value = serde_json::from_str(&key_file("../../mapping/examples/snapshot.json")?)?;
    let config = json!({
        "jwks": {"keys": jwks},
        "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256"],
        "issuers": ["https://issuer.test"],
        "audiences": ["cell-router"],
        "tenant_claim": "tenant_id",
        "fallback_snapshot": snapshot,
    });
    let mut config = Config::from_json(config.to_string().as_bytes())?;
    let installed = config.fallback_snapshot.take().map(Installed::new);
    let jwt = config.jwt().ok_or("not JWT mode")?.clone();

    let tokens = [
        ("RS256", rsa.sign(claims("acme-corp"))?),
        ("PS256", ps.sign(claims("acme-corp"))?),
        ("ES256", ec256.sign(claims("acme-corp"))?),
        ("ES384", ec384.sign(claims("acme-corp"))?),
        ("EdDSA", ed.sign(claims("acme-corp"))?),
        ("HS256", hs.authenticate(claims("acme-corp"))?),
    ];
    println!(
        "{:<8} {:>14} {:>18} {:>18}",
        "alg", "verify µs/op", "decide uncached µs", "decide cached µs"
    );
    for (alg, token) in &tokens {
        let n = if alg.starts_with("HS") { 20_000 } else { 500 };
        let start = Instant::now();
        for _ in 0..n {
            token::verify(&jwt, 256, token.as_bytes(), NOW).map_err(|r| r.to_string())?;
        }
        let verify = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);

        let header = format!("Bearer {token}");
        let headers = [("authorization", header.as_str()), ("x-request-id", "r-1")];
        let mut clock = || NOW * 1000;
        let mut uncached = VmState::new(&config, VmKeys::fixed(1));
        let start = Instant::now();
        for _ in 0..n {
            uncached.cache = cell_router_filter::cache::TokenCache::new(0, 60, [1; 16]);
            let decision = decide(
                &config,
                &mut uncached,
                &headers,
                &mut clock,
                installed.as_ref(),
            );
            if decision.routed_cell().is_none() {
                return Err(format!("{alg}: not routed: {:?}", decision.reply()).into());
            }
        }
        let decide_uncached = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);

        let mut cached = VmState::new(&config, VmKeys::fixed(1));
        let m = 200_000;
        let start = Instant::now();
        for _ in 0..m {
            let decision = decide(
                &config,
                &mut cached,
                &headers,
                &mut clock,
                installed.as_ref(),
            );
            if decision.routed_cell().is_none() {
                return Err(format!("{alg}: not routed").into());
            }
        }
        let decide_cached = start.elapsed().as_secs_f64() * 1e6 / f64::from(m);
        println!("{alg:<8} {verify:>14.2} {decide_uncached:>18.2} {decide_cached:>18.3}");
    }
    Ok(())
}
