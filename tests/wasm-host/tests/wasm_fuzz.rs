//! The request path of the real filter `.wasm` under random header bytes:
//! random names (any UTF-8, NUL and control characters included; Envoy's
//! codecs never pass non-UTF-8 names), random value bytes (non-UTF-8, NUL,
//! up to 70 KB), several Authorization headers, valid, mutated and random
//! tokens, spoofed cell headers. For every input: no trap, the status is
//! continue, 401, 403 or 503, and a continued request carries exactly one
//! cell header — the router's, for a tenant whose token it verified.
//!
//! A seeded generator instead of proptest (no new dependency of this crate):
//! the seed and the case index are printed on failure, so a case replays with
//! `WASM_FUZZ_SEED=<seed>`. `WASM_FUZZ_CASES` changes the count.

use cell_router_kit::fixtures::{Config, bearer, cell, draining, parsed, snapshot_with, token};
use cell_router_kit::rng::SplitMix64 as Rng;
use cell_router_kit::tokens::Alg;
use cell_router_wasm_host::{Exchange, Host, Request};

const DEFAULT_CASES: u64 = 20_000;

/// A value length: mostly short, sometimes long, now and then over 60 KB.
fn random_len(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=59 => rng.below(16) as usize,
        60..=89 => rng.below(200) as usize,
        90..=98 => rng.below(9000) as usize,
        _ => 60_000 + rng.below(10_000) as usize,
    }
}

const NAMES: [&str; 14] = [
    "authorization",
    "Authorization",
    "AUTHORIZATION",
    "x-cell-id",
    "X-Cell-Id",
    "X-CELL-ID",
    "x-cell-snapshot",
    "X-Cell-Snapshot",
    "x-request-id",
    "cookie",
    ":path",
    "x-tenant",
    "content-length",
    "te",
];

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

fn random_name(rng: &mut Rng) -> String {
    if rng.chance(70) {
        return (*rng.pick(&NAMES)).to_string();
    }
    let len = rng.below(40) as usize;
    (0..len)
        .map(|_| match rng.below(4) {
            // Any Unicode scalar, NUL and controls included.
            0 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{0}'),
            1 => char::from(rng.below(0x20) as u8),
            _ => char::from(b'a' + rng.below(26) as u8),
        })
        .collect()
}

/// A token-ish value: valid, mutated, or made of base64url and dots.
fn token_value(rng: &mut Rng, valid: &[(String, String)]) -> Vec<u8> {
    let (_, t) = rng.pick(valid);
    let mut bytes = t.clone().into_bytes();
    match rng.below(6) {
        0 => {}
        1 => {
            let at = rng.index(bytes.len());
            bytes[at] = *rng.pick(B64URL);
        }
        2 => bytes.truncate(rng.index(bytes.len())),
        3 => {
            let at = rng.index(bytes.len());
            let n = 1 + rng.below(4) as usize;
            let junk = rng.bytes(n);
            bytes.splice(at..at, junk);
        }
        4 => {
            let len = random_len(rng);
            bytes = (0..len).map(|_| *rng.pick(B64URL)).collect();
        }
        _ => {
            let len = random_len(rng);
            bytes = rng.bytes(len);
        }
    }
    const SCHEMES: [&[u8]; 6] = [
        b"Bearer ",
        b"bearer ",
        b"BEARER ",
        b"",
        b"Basic ",
        b"Bearer  ",
    ];
    let scheme = *rng.pick(&SCHEMES);
    [scheme, &bytes].concat()
}

fn random_request(rng: &mut Rng, valid: &[(String, String)]) -> Request {
    let mut request = Request::default();
    if rng.chance(90) {
        let path: Vec<u8> = if rng.chance(80) {
            b"/v1/sms".to_vec()
        } else {
            let len = random_len(rng);
            rng.bytes(len)
        };
        request = request.header_bytes(":path", &path);
    }
    // Usually one token header, sometimes none or several.
    let tokens = match rng.below(10) {
        0 => 0,
        1 | 2 => 2 + rng.below(3),
        _ => 1,
    };
    for _ in 0..tokens {
        let name = *rng.pick(&["authorization", "Authorization", "AUTHORIZATION"]);
        request = request.header_bytes(name, &token_value(rng, valid));
    }
    for _ in 0..rng.below(8) {
        let name = random_name(rng);
        let value = if rng.chance(20) {
            token_value(rng, valid)
        } else {
            let len = random_len(rng);
            rng.bytes(len)
        };
        request = request.header_bytes(&name, &value);
    }
    request
}

fn check(
    r: &Exchange,
    valid: &[(String, String)],
    snapshot: &cell_router_mapping::Snapshot,
) -> Result<(), String> {
    if r.forwarded() {
        let cells = r.header_all("x-cell-id");
        if cells.len() != 1 {
            return Err(format!(
                "forwarded with {} cell headers: {cells:?}",
                cells.len()
            ));
        }
        if r.header_all("x-cell-snapshot") != vec![b"1".as_slice()] {
            return Err("forwarded without the router's version header".into());
        }
        // The cell must be the one the router computes for a tenant whose
        // valid token was in the request (no subject: the tenant is the
        // split key; whether a draining cell sheds is the VM's draw, so the
        // cell that decided is compared).
        let routed = cells[0];
        let matches = valid.iter().any(|(tenant, _)| {
            let draws = cell_router_mapping::Draws::unshed(tenant.as_bytes(), 0);
            let cell = snapshot.resolve(tenant.as_bytes(), &draws).final_cell();
            snapshot
                .cell(cell)
                .is_some_and(|c| c.id.as_bytes() == routed)
        });
        if !matches {
            return Err(format!(
                "forwarded to {:?}, no verified tenant goes there",
                String::from_utf8_lossy(routed)
            ));
        }
        return Ok(());
    }
    match r.status() {
        Some(401 | 403 | 503) => Ok(()),
        other => Err(format!(
            "neither forwarded nor 401/403/503: {other:?} paused={}",
            r.paused()
        )),
    }
}

#[test]
fn random_header_bytes_never_trap_or_forward_a_forged_identity() {
    let seed = std::env::var("WASM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c0_ffee_5eed_u64);
    let cases = std::env::var("WASM_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let doc = snapshot_with(
        1,
        vec![cell("cell-a"), cell("cell-b"), draining("cell-c", 0.5, 3)],
    );
    let snapshot = parsed(&doc);
    let config = Config::jwt(&[Alg::HS256, Alg::ES256])
        .set(
            "token",
            serde_json::json!({"query_param": "t", "cookie": "s"}),
        )
        .set("max_token_bytes", 4096)
        .set("token_cache_entries", 16)
        .fallback(&doc);
    let mut host = Host::new().expect("start the filter VM");
    host.configure(config.json()).expect("configure");
    let now = host.now_unix();
    let valid: Vec<(String, String)> = ["acme", "globex", "initech", "t-1", "t-2", "t-3"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let alg = if i % 3 == 0 { Alg::ES256 } else { Alg::HS256 };
            (t.to_string(), token(alg, now, t))
        })
        .collect();

    let mut rng = Rng::new(seed);
    let (mut forwarded, mut refused) = (0u64, 0u64);
    for case in 0..cases {
        let request = random_request(&mut rng, &valid);
        let r = match host.send(request.clone()) {
            Ok(r) => r,
            Err(e) => panic!("seed {seed} case {case}: the VM failed: {e:#}\nrequest: {request:?}"),
        };
        if let Err(e) = check(&r, &valid, &snapshot) {
            panic!("seed {seed} case {case}: {e}\nrequest: {request:?}");
        }
        if r.forwarded() {
            forwarded += 1
        } else {
            refused += 1
        }
        // A valid token alone is routed: the generator must reach both sides.
        if case % 1000 == 0 {
            let (tenant, t) = &valid[(case / 1000) as usize % valid.len()];
            let r = host
                .send(
                    Request::get("/")
                        .header("authorization", &bearer(t))
                        .header("x-cell-id", "evil"),
                )
                .expect("no trap");
            assert!(
                r.forwarded() || r.status() == Some(503),
                "{tenant}: {:?}",
                r.status()
            );
        }
    }
    eprintln!(
        "wasm_fuzz: seed {seed}: {cases} inputs, {forwarded} forwarded, {refused} refused, 0 traps"
    );
    assert!(
        forwarded > 0 && refused > 0,
        "forwarded {forwarded}, refused {refused}"
    );
}
