//! Keys fetched at run time (`jwks_remote`) by the real filter `.wasm`:
//! first fetch, rotation through an unknown kid, the grace period, the
//! refetch rate limit under a flood of bogus kids, and the last good keys
//! kept while the identity provider fails.

use cell_router_kit::fixtures::{Config, bearer, snapshot, token_builder};
use cell_router_kit::tokens::{Alg, Jwks};
use cell_router_wasm_host::{Exchange, Host, HttpCall, HttpCallFailure};
use std::time::Duration;

const IDP: &str = "idp";

fn configured() -> Host {
    let mut host = Host::new().expect("start the filter VM");
    let config = Config::jwt(&[Alg::ES256])
        .without("jwks")
        .set(
            "jwks_remote",
            serde_json::json!({
                "cluster": IDP, "authority": "idp.test", "path": "/.well-known/jwks.json",
                "grace_s": 60, "unknown_kid_refetch_s": 30
            }),
        )
        .fallback(&snapshot(1));
    host.configure(config.json()).expect("configure the filter");
    host
}

fn jwks(kids: &[&str]) -> String {
    kids.iter()
        .fold(Jwks::new(), |j, kid| j.with_key(Alg::ES256, kid))
        .to_json()
        .to_string()
}

fn send(host: &mut Host, kid: &str) -> Exchange {
    let t = token_builder(Alg::ES256, host.now_unix(), "acme")
        .kid(kid)
        .sign();
    host.request(&[(":path", "/v1/sms"), ("authorization", &bearer(&t))])
        .expect("request through the filter")
}

fn idp_calls(host: &Host) -> Vec<HttpCall> {
    host.pending_http_calls()
        .into_iter()
        .filter(|c| c.upstream == IDP)
        .collect()
}

/// Lets time pass in 100 ms ticks until the filter calls the IdP.
fn next_fetch(host: &mut Host, within: Duration) -> HttpCall {
    let steps = within.as_millis() / 100 + 1;
    for _ in 0..steps {
        if let Some(call) = idp_calls(host).into_iter().next() {
            return call;
        }
        host.advance(Duration::from_millis(100)).unwrap();
    }
    panic!("no JWKS fetch within {within:?}; log:\n{}", host.log_text());
}

fn metric(host: &Host, name: &str) -> i64 {
    host.metric(&format!("cell_router.jwks.{name}"))
        .unwrap_or(0)
}

#[test]
fn keys_are_fetched_rotated_by_an_unknown_kid_and_retired_after_the_grace() {
    let mut host = configured();
    // Nothing fetched yet: no key can verify.
    assert_eq!(send(&mut host, "k1").status(), Some(401));
    let call = next_fetch(&mut host, Duration::from_secs(1));
    assert_eq!(call.path(), Some("/.well-known/jwks.json"));
    assert_eq!(call.header(":authority"), Some("idp.test"));
    assert!(call.header("if-none-match").is_none());
    host.respond_http_call(call.token, 200, &[("etag", "\"e1\"")], jwks(&["k1"]))
        .unwrap();
    assert!(send(&mut host, "k1").forwarded(), "{}", host.log_text());
    assert_eq!(metric(&host, "version"), 1);
    assert_eq!(metric(&host, "applied"), 1);

    // The IdP rotates to k2: the first k2 token is refused, and asks for a
    // refetch (deferred: the last fetch started less than 30 s ago).
    assert_eq!(send(&mut host, "k2").status(), Some(401));
    let started = host.now();
    let call = next_fetch(&mut host, Duration::from_secs(31));
    let waited = host.now().duration_since(started).unwrap();
    assert!(waited <= Duration::from_secs(31), "{waited:?}");
    assert_eq!(call.header("if-none-match"), Some("\"e1\""));
    host.respond_http_call(call.token, 200, &[("etag", "\"e2\"")], jwks(&["k2"]))
        .unwrap();
    assert_eq!(metric(&host, "unknown_kid_refetches"), 1);
    assert!(send(&mut host, "k2").forwarded());
    // k1 is in its grace period.
    assert!(send(&mut host, "k1").forwarded());
    host.advance(Duration::from_secs(61)).unwrap();
    let old = send(&mut host, "k1");
    assert_eq!(old.status(), Some(401), "grace over: {}", host.log_text());
    assert!(
        old.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("unknown kid"),
        "{}",
        old.json()
    );
    assert!(send(&mut host, "k2").forwarded());
}

#[test]
fn a_flood_of_bogus_kids_fetches_once_per_interval_and_failures_keep_the_keys() {
    let mut host = configured();
    let call = next_fetch(&mut host, Duration::from_secs(1));
    host.respond_http_call(call.token, 200, &[("etag", "\"e1\"")], jwks(&["k1"]))
        .unwrap();
    host.advance(Duration::from_secs(31)).unwrap();

    // 2,000 bogus kids over 60 s, the IdP answering 304: a fetch at most
    // every 30 s (at 31, 61 and 91 s).
    let mut fetches = 0;
    for i in 0..2_000u32 {
        assert_eq!(send(&mut host, &format!("bogus-{i}")).status(), Some(401));
        if i % 10 == 0 {
            host.advance(Duration::from_millis(300)).unwrap();
        }
        for call in idp_calls(&host) {
            host.respond_http_call(call.token, 304, &[("etag", "\"e1\"")], "")
                .unwrap();
            fetches += 1;
        }
    }
    assert!(
        (2..=3).contains(&fetches),
        "{fetches} fetches for 2,000 bogus kids in 60 s"
    );
    assert_eq!(metric(&host, "unknown_kid_refetches"), fetches);

    // The IdP fails in every way for 60 s more, the flood going on: the
    // last good key keeps verifying; fetches back off (1 s doubling).
    let failures = [
        Some(HttpCallFailure::ConnectionFailure),
        None,
        Some(HttpCallFailure::Timeout),
        Some(HttpCallFailure::Reset),
    ];
    let mut failed = 0;
    for i in 0..2_000u32 {
        send(&mut host, &format!("bogus-more-{i}"));
        if i % 10 == 0 {
            host.advance(Duration::from_millis(300)).unwrap();
        }
        for call in idp_calls(&host) {
            match failures[failed % failures.len()] {
                Some(failure) => host.fail_http_call(call.token, failure).unwrap(),
                None => host
                    .respond_http_call(call.token, 200, &[], "{\"keys\": \"nope\"}")
                    .unwrap(),
            }
            failed += 1;
        }
        if i % 200 == 0 {
            assert!(
                send(&mut host, "k1").forwarded(),
                "after {failed} failed fetches"
            );
        }
    }
    assert!(failed >= 2, "{failed}");
    assert!(failed <= 8, "{failed} failed fetches in 60 s: no backoff?");
    assert_eq!(
        metric(&host, "fetch_failures") + metric(&host, "refused"),
        i64::try_from(failed).unwrap()
    );
    assert!(send(&mut host, "k1").forwarded());
    assert_eq!(metric(&host, "version"), 1);
}

#[test]
fn an_oversized_jwks_is_refused_and_the_keys_stay() {
    let mut host = configured();
    let call = next_fetch(&mut host, Duration::from_secs(1));
    host.respond_http_call(call.token, 200, &[], jwks(&["k1"]))
        .unwrap();
    assert_eq!(send(&mut host, "k2").status(), Some(401));
    let call = next_fetch(&mut host, Duration::from_secs(31));
    let huge = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(300 << 10));
    host.respond_http_call(call.token, 200, &[], huge).unwrap();
    assert_eq!(metric(&host, "refused"), 1);
    assert!(send(&mut host, "k1").forwarded());
}

#[test]
fn each_provider_fetches_its_own_keys_and_an_unknown_kid_refetches_its_issuer_only() {
    const OTHER: &str = "https://other-issuer.test";
    let mut host = Host::new().expect("start the filter VM");
    let provider = |issuer: &str, cluster: &str| {
        serde_json::json!({
            "issuer": issuer, "audiences": [cell_router_kit::fixtures::AUDIENCE],
            "algorithms": ["ES256"],
            "jwks_remote": {"cluster": cluster, "unknown_kid_refetch_s": 30}
        })
    };
    let config = Config::jwt(&[Alg::ES256])
        .without("jwks")
        .without("algorithms")
        .without("issuers")
        .without("audiences")
        .set(
            "providers",
            serde_json::json!([
                provider(cell_router_kit::fixtures::ISSUER, "idp-a"),
                provider(OTHER, "idp-b")
            ]),
        )
        .fallback(&snapshot(1));
    host.configure(config.json()).expect("configure the filter");
    host.advance(Duration::from_millis(200)).unwrap();
    let calls = host.pending_http_calls();
    let mut clusters: Vec<&str> = calls.iter().map(|c| c.upstream.as_str()).collect();
    clusters.sort();
    assert_eq!(
        clusters,
        ["idp-a", "idp-b"],
        "one subscription per provider"
    );
    for call in &calls {
        let kid = if call.upstream == "idp-a" { "a1" } else { "b1" };
        host.respond_http_call(call.token, 200, &[], jwks(&[kid]))
            .unwrap();
    }
    let send_as = |host: &mut Host, issuer: &str, kid: &str| {
        let t = token_builder(Alg::ES256, host.now_unix(), "acme")
            .issuer(issuer)
            .kid(kid)
            .sign();
        host.request(&[(":path", "/v1/sms"), ("authorization", &bearer(&t))])
            .expect("request through the filter")
    };
    assert!(send_as(&mut host, cell_router_kit::fixtures::ISSUER, "a1").forwarded());
    assert!(send_as(&mut host, OTHER, "b1").forwarded());
    // The same key material under provider A's kid does not sign for B.
    assert_eq!(send_as(&mut host, OTHER, "a1").status(), Some(401));
    // That unknown kid of B's asks for B's keys only (deferred to 30 s
    // after B's first fetch); B has rotated to b2 meanwhile.
    assert_eq!(send_as(&mut host, OTHER, "b2").status(), Some(401));
    host.advance(Duration::from_secs(31)).unwrap();
    let calls = host.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].upstream, "idp-b");
    host.respond_http_call(calls[0].token, 200, &[], jwks(&["b2"]))
        .unwrap();
    // b1 is in its grace period.
    assert!(send_as(&mut host, OTHER, "b1").forwarded());
    assert!(send_as(&mut host, OTHER, "b2").forwarded());
    assert!(send_as(&mut host, cell_router_kit::fixtures::ISSUER, "a1").forwarded());
}

#[test]
fn random_jwks_answers_and_random_tokens_never_trap_the_vm() {
    use cell_router_kit::rng::SplitMix64;
    let mut host = configured();
    let call = next_fetch(&mut host, Duration::from_secs(1));
    host.respond_http_call(call.token, 200, &[("etag", "\"e1\"")], jwks(&["k1"]))
        .unwrap();
    let mut rng = SplitMix64::new(42);
    let good = jwks(&["k1"]);
    for round in 0..300u32 {
        // A JWKS answer: random bytes, a mangled good set, or odd shapes.
        let body: Vec<u8> = match rng.below(5) {
            0 => {
                let n = rng.index(2048);
                rng.bytes(n)
            }
            1 => {
                let mut b = good.clone().into_bytes();
                for _ in 0..8 {
                    let i = rng.index(b.len());
                    b[i] = rng.next_u64() as u8;
                }
                b
            }
            2 => format!(
                "{{\"keys\": [{}]}}",
                "{\"kty\":\"EC\"},".repeat(rng.index(100)) + "{}"
            )
            .into_bytes(),
            3 => b"{\"keys\": {\"keys\": []}, \"keys\": 1}".to_vec(),
            _ => "[".repeat(rng.index(5000)).into_bytes(),
        };
        let etag = format!("\"r{}\"", rng.next_u64());
        let status = [200u16, 200, 304, 500, 404][rng.index(5)];
        // An unknown kid asks for a fetch; answer whatever is pending.
        let kid = format!("x{}{}", round, "\u{0}".repeat(rng.index(3)));
        send(&mut host, &kid);
        host.advance(Duration::from_secs(31)).unwrap();
        for call in idp_calls(&host) {
            host.respond_http_call(call.token, status, &[("etag", etag.as_str())], &body)
                .unwrap();
        }
        // Random token-ish headers.
        let n = rng.index(300);
        let junk = String::from_utf8_lossy(&rng.bytes(n)).into_owned();
        let _ = host.request(&[(":path", "/"), ("authorization", &format!("Bearer {junk}"))]);
    }
    // Alive, and k1 was never replaced by anything invalid.
    let reply = send(&mut host, "k1");
    assert!(
        reply.forwarded() || reply.status() == Some(401),
        "{}",
        host.log_text()
    );
    assert!(metric(&host, "refused") + metric(&host, "fetch_failures") > 0);
}
