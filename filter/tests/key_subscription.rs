//! The key subscription state machine (`jwks_remote`): refresh, unknown-kid
//! refetch rate limit and negative cache, keep-last-good, grace period, and
//! the keys a request is then verified with.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::config::Config;
use cell_router_filter::decide::{Installed, VmKeys, VmState, decide};
use cell_router_filter::jwks::Algorithm;
use cell_router_filter::key_subscription::{
    KeySubscription, KeysOutcome, RemoteKeysConfig, token_kid, with_keys,
};
use cell_router_filter::subscription::{Body, BodyPlan};
use common::*;
use serde_json::{Value, json};

const T0: u64 = NOW * 1000;

fn remote() -> RemoteKeysConfig {
    RemoteKeysConfig {
        cluster: "idp".into(),
        authority: "idp.test".into(),
        path: "/jwks".into(),
        refresh_s: 300,
        timeout_ms: 5_000,
        unknown_kid_refetch_s: 30,
        grace_s: 600,
        max_jwks_bytes: 64 << 10,
        retry_min_ms: 1_000,
    }
}

fn subscription() -> KeySubscription {
    KeySubscription::new(remote(), vec![Algorithm::ES256, Algorithm::RS256], T0)
}

fn jwks(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

/// Starts the due fetch at `now` (it must be due) and answers it.
fn answer(
    sub: &mut KeySubscription,
    now: u64,
    token: u32,
    status: Option<u16>,
    etag: Option<&[u8]>,
    body: &[u8],
) -> KeysOutcome {
    sub.poll(now).expect("a fetch is due");
    sub.dispatched(token, now);
    sub.on_response(token, now, status, etag, Body::Read(body))
}

fn kids(sub: &KeySubscription) -> Vec<String> {
    let mut kids: Vec<String> = sub
        .keys()
        .entries()
        .iter()
        .filter_map(|e| e.kid.clone())
        .collect();
    kids.sort();
    kids.dedup();
    kids
}

#[test]
fn fetches_at_once_then_every_refresh_with_the_etag() {
    let mut sub = subscription();
    let request = sub.poll(T0).unwrap();
    assert_eq!(request.header(":path"), Some("/jwks"));
    assert_eq!(request.header(":authority"), Some("idp.test"));
    assert!(request.header("if-none-match").is_none());
    sub.dispatched(1, T0);
    assert!(sub.poll(T0 + 1000).is_none(), "one call in flight");
    let outcome = sub.on_response(
        1,
        T0,
        Some(200),
        Some(b"\"v1\""),
        Body::Read(&jwks(&[ec256_jwk("a")])),
    );
    assert!(
        matches!(outcome, KeysOutcome::Applied { keys: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(sub.version(), 1);
    assert!(sub.poll(T0 + 299_000).is_none());
    let request = sub.poll(T0 + 300_000).unwrap();
    assert_eq!(request.header("if-none-match"), Some("\"v1\""));
    sub.dispatched(2, T0 + 300_000);
    let outcome = sub.on_response(2, T0 + 300_000, Some(304), None, Body::Read(&[]));
    assert!(matches!(outcome, KeysOutcome::Unchanged));
    assert_eq!(sub.version(), 1);
    assert_eq!(kids(&sub), ["a"]);
}

#[test]
fn an_unknown_kid_refetches_at_once_then_at_most_once_per_interval() {
    let mut sub = subscription();
    answer(&mut sub, T0, 1, Some(200), None, &jwks(&[ec256_jwk("a")]));
    // Within 30 s of the last fetch start: deferred to its end.
    assert!(sub.unknown_kid(Some("b"), T0 + 1_000));
    assert!(sub.poll(T0 + 29_999).is_none());
    assert!(sub.refetch_pending());
    let outcome = answer(
        &mut sub,
        T0 + 30_000,
        2,
        Some(200),
        None,
        &jwks(&[ec256_jwk("a"), ec256_jwk("b")]),
    );
    assert!(matches!(outcome, KeysOutcome::Applied { .. }));
    assert_eq!(kids(&sub), ["a", "b"]);

    // A flood of random kids: one fetch per 30 s at most.
    let mut fetches = 0;
    let mut token = 10;
    for i in 0..10_000u64 {
        let now = T0 + 31_000 + i * 10; // 100 s of requests
        sub.unknown_kid(Some(&format!("bogus-{i}")), now);
        if sub.poll(now).is_some() {
            fetches += 1;
            token += 1;
            sub.dispatched(token, now);
            sub.on_response(token, now, Some(304), None, Body::Read(&[]));
        }
    }
    // 100 s after the fetch at 30 s: at 60, 90, 120 s.
    assert!(
        fetches <= 4,
        "{fetches} fetches for 10,000 bogus kids in 100 s"
    );
    assert!(fetches >= 3, "{fetches}: unknown kids must still refetch");
}

#[test]
fn a_kid_in_the_negative_cache_does_not_ask_again() {
    let mut sub = subscription();
    answer(&mut sub, T0, 1, Some(200), None, &jwks(&[ec256_jwk("a")]));
    let at = T0 + 60_000;
    assert!(sub.unknown_kid(Some("x"), at));
    answer(&mut sub, at, 2, Some(304), None, &[]);
    // Same kid right after the fetch: remembered, no new refetch asked.
    assert!(!sub.unknown_kid(Some("x"), at + 100));
    assert_eq!(sub.next_fetch_at_ms(), Some(at + 300_000));
    // After the interval it may ask again.
    assert!(sub.unknown_kid(Some("x"), at + 30_001));
    // No kid at all counts as one entry of its own: asked once, then
    // remembered.
    sub.unknown_kid(None, at + 30_002);
    assert!(!sub.unknown_kid(None, at + 30_003));
}

#[test]
fn failures_and_bad_sets_keep_the_last_good_keys() {
    let mut sub = subscription();
    answer(&mut sub, T0, 1, Some(200), None, &jwks(&[ec256_jwk("a")]));
    let mut now = T0 + 300_000;
    let bad: Vec<(Option<u16>, Vec<u8>)> = vec![
        (Some(500), b"oops".to_vec()),
        (None, Vec::new()),
        (Some(200), b"not json".to_vec()),
        (Some(200), br#"{"keys": [], "keys": []}"#.to_vec()),
        (Some(200), br#"[1, 2]"#.to_vec()),
        (Some(200), br#"{"keys": []}"#.to_vec()),
        // Only keys the filter cannot use.
        (
            Some(200),
            jwks(&[json!({"kty": "RSA", "use": "enc", "n": "x", "e": "AQAB"})]),
        ),
        (Some(200), jwks(&[oct_jwk("h")])),
    ];
    let mut token = 1;
    for (status, body) in &bad {
        // Backoff after failures: find the next due time.
        while sub.poll(now).is_none() {
            now += 100;
        }
        token += 1;
        sub.dispatched(token, now);
        let outcome = sub.on_response(token, now, *status, None, Body::Read(body));
        assert!(
            matches!(
                outcome,
                KeysOutcome::Failed { .. } | KeysOutcome::Refused { .. }
            ),
            "{status:?} {:?}: {outcome:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(kids(&sub), ["a"], "after {status:?}");
    }
    // Oversized: not even read.
    assert_eq!(sub.body_plan(Some(200), (64 << 10) + 1), BodyPlan::TooLarge);
    while sub.poll(now).is_none() {
        now += 100;
    }
    sub.dispatched(99, now);
    let outcome = sub.on_response(99, now, Some(200), None, Body::TooLarge(1 << 20));
    assert!(matches!(
        outcome,
        KeysOutcome::Refused {
            too_large: true,
            ..
        }
    ));
    assert_eq!(kids(&sub), ["a"]);
    // Failures back off, bounded by refresh_s.
    assert!(sub.consecutive_failures() >= 9);
    let next = sub.next_fetch_at_ms().unwrap();
    assert!(next <= now + 300_000, "{next} vs {now}");
    // The keys stay a day later with the source still down.
    assert!(!sub.expire(now + 86_400_000));
    assert_eq!(kids(&sub), ["a"]);
}

#[test]
fn unusable_keys_are_skipped_next_to_usable_ones() {
    let mut sub = subscription();
    let outcome = answer(
        &mut sub,
        T0,
        1,
        Some(200),
        None,
        &jwks(&[
            json!({"kty": "RSA", "use": "enc", "n": "x", "e": "AQAB", "kid": "enc"}),
            oct_jwk("not-allowed"),
            ec256_jwk("a"),
        ]),
    );
    match outcome {
        KeysOutcome::Applied { keys, skipped, .. } => {
            assert_eq!(keys, 1);
            assert_eq!(skipped.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_removed_key_keeps_verifying_for_the_grace_period() {
    let mut sub = subscription();
    answer(&mut sub, T0, 1, Some(200), None, &jwks(&[ec256_jwk("old")]));
    let rotated = T0 + 300_000;
    let outcome = answer(
        &mut sub,
        rotated,
        2,
        Some(200),
        None,
        &jwks(&[ec256_jwk("new")]),
    );
    assert!(
        matches!(outcome, KeysOutcome::Applied { retired: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(kids(&sub), ["new", "old"]);
    assert_eq!(sub.retiring(), 1);
    assert!(!sub.expire(rotated + 599_999));
    assert_eq!(kids(&sub), ["new", "old"]);
    assert!(sub.expire(rotated + 600_000));
    assert_eq!(kids(&sub), ["new"]);
    // A key that comes back is current again, not retiring.
    let mut sub = subscription();
    answer(&mut sub, T0, 1, Some(200), None, &jwks(&[ec256_jwk("a")]));
    answer(
        &mut sub,
        rotated,
        2,
        Some(200),
        None,
        &jwks(&[ec256_jwk("b")]),
    );
    answer(
        &mut sub,
        rotated + 300_000,
        3,
        Some(200),
        None,
        &jwks(&[ec256_jwk("a"), ec256_jwk("b")]),
    );
    assert_eq!(sub.retiring(), 0);
    assert!(!sub.expire(rotated + 10_000_000));
    assert_eq!(kids(&sub), ["a", "b"]);
}

#[test]
fn grace_zero_drops_a_removed_key_at_once() {
    let mut config = remote();
    config.grace_s = 0;
    let mut sub = KeySubscription::new(config, vec![Algorithm::ES256], T0);
    answer(&mut sub, T0, 1, Some(200), None, &jwks(&[ec256_jwk("old")]));
    answer(
        &mut sub,
        T0 + 300_000,
        2,
        Some(200),
        None,
        &jwks(&[ec256_jwk("new")]),
    );
    assert_eq!(kids(&sub), ["new"]);
}

#[test]
fn stale_answers_are_ignored_and_lost_calls_given_up() {
    let mut sub = subscription();
    sub.poll(T0).unwrap();
    sub.dispatched(7, T0);
    let outcome = sub.on_response(8, T0, Some(200), None, Body::Read(&jwks(&[ec256_jwk("a")])));
    assert!(matches!(outcome, KeysOutcome::Stale));
    assert!(sub.poll(T0 + 10_001).is_none());
    assert!(
        !sub.in_flight(),
        "a call the host never answered is given up"
    );
}

fn remote_config() -> Config {
    Config::from_json(
        json!({
            "jwks_remote": {"cluster": "idp", "path": "/jwks", "grace_s": 60},
            "algorithms": ["ES256"],
            "issuers": [ISSUER],
            "audiences": [AUDIENCE],
            "tenant_claim": "tenant_id",
            "fallback_snapshot": serde_json::from_str::<Value>(&snapshot_doc(1).to_json()).unwrap(),
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

#[test]
fn config_takes_remote_keys_without_inline_ones() {
    let config = remote_config();
    let jwt = config.jwt().unwrap();
    let remote = jwt.remote.as_ref().unwrap();
    assert_eq!(remote.cluster, "idp");
    assert_eq!(remote.refresh_s, 300);
    assert_eq!(remote.unknown_kid_refetch_s, 30);
    assert_eq!(remote.grace_s, 60);
    assert!(jwt.keys.is_empty());
    for (bad, field) in [
        (json!({"path": "/jwks"}), "jwks_remote"),
        (
            json!({"cluster": "idp", "refresh_s": 0}),
            "jwks_remote.refresh_s",
        ),
        (
            json!({"cluster": "idp", "path": "jwks"}),
            "jwks_remote.path",
        ),
        (json!({"cluster": "idp", "zzz": 1}), "jwks_remote"),
        (
            json!({"cluster": "idp", "max_jwks_bytes": 10}),
            "jwks_remote.max_jwks_bytes",
        ),
    ] {
        let mut value: Value = json!({
            "algorithms": ["ES256"], "tenant_claim": "t", "sidecar": {"cluster": "c"}
        });
        value["jwks_remote"] = bad;
        let error = Config::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(error.field.starts_with(field), "{error}");
    }
}

#[test]
fn requests_verify_with_fetched_keys_and_unknown_kids_are_named() {
    let config = remote_config();
    let installed = Installed::new(config.fallback_snapshot.clone().unwrap());
    let jwt = config.jwt().unwrap();
    let token = sign_as("ES256", "k1", tenant_claims("acme"));
    assert_eq!(token_kid(token.as_bytes(), 8192).as_deref(), Some("k1"));
    let headers = [("authorization".to_string(), format!("Bearer {token}"))];
    let mut vm = VmState::new(&config, VmKeys::fixed(7));
    let mut clock = || NOW * 1000; // the filter reads milliseconds
    // No keys yet: unknown kid, and the kid is what the subscription hears.
    let decision = decide(&config, &mut vm, &headers, &mut clock, Some(&installed));
    assert_eq!(decision.reply().unwrap().status, 401);
    assert_eq!(
        cell_router_filter::key_subscription::unknown_kid_of(jwt, &headers),
        Some((Some(ISSUER.to_string()), Some("k1".to_string())))
    );

    let mut sub = KeySubscription::new(jwt.remote.clone().unwrap(), jwt.algorithms.clone(), T0);
    answer(&mut sub, T0, 1, Some(200), None, &jwks(&[ec256_jwk("k1")]));
    let (settings, removed) = with_keys(jwt, &sub.keys());
    assert!(!removed);
    let mut config2 = config.clone();
    config2.auth = cell_router_filter::config::Auth::Jwt(Box::new(settings));
    let decision = decide(&config2, &mut vm, &headers, &mut clock, Some(&installed));
    assert!(decision.reply().is_none(), "{:?}", decision.reply());
    assert_eq!(vm.cache.len(), 1);

    // k1 rotated out and its grace over: the keys lose it, and the caller
    // is told to empty the token cache.
    answer(
        &mut sub,
        T0 + 300_000,
        2,
        Some(200),
        None,
        &jwks(&[ec256_jwk("k2")]),
    );
    assert!(sub.expire(T0 + 360_000));
    let (settings, removed) = with_keys(config2.jwt().unwrap(), &sub.keys());
    assert!(removed);
    assert!(!settings.keys.has_kid("k1"));
}

#[test]
fn the_readme_documents_every_key_metric() {
    let readme =
        std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for name in cell_router_filter::key_subscription::metric_names() {
        assert!(readme.contains(&format!("`{name}`")), "{name}");
    }
}

fn two_providers() -> Config {
    Config::from_json(
        json!({
            "providers": [
                {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
                 "jwks": {"keys": [ec256_jwk("a-1")]}},
                {"issuer": "https://other.test", "audiences": ["other-api"], "algorithms": ["EdDSA"],
                 "jwks_remote": {"cluster": "other-idp", "path": "/keys"}}
            ],
            "tenant_claim": "tenant_id",
            "fallback_snapshot": serde_json::from_str::<Value>(&snapshot_doc(1).to_json()).unwrap(),
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

#[test]
fn providers_each_verify_their_own_issuer_with_their_keys_algorithms_and_audiences() {
    let config = two_providers();
    let jwt = config.jwt().unwrap();
    assert_eq!(jwt.providers.len(), 2);
    assert!(jwt.providers[0].remote.is_none());
    assert_eq!(
        jwt.providers[1].remote.as_ref().unwrap().cluster,
        "other-idp"
    );
    let installed = Installed::new(config.fallback_snapshot.clone().unwrap());
    let mut vm = VmState::new(&config, VmKeys::fixed(7));
    let mut clock = || NOW * 1000; // the filter reads milliseconds
    let claims = |iss: &str, aud: &str| {
        let mut c = tenant_claims("acme");
        c.issuer = Some(iss.to_string());
        c.audiences = Some(jwt_simple::prelude::Audiences::AsString(aud.to_string()));
        c
    };
    let mut status = |token: String| {
        let headers = [("authorization".to_string(), format!("Bearer {token}"))];
        let d = decide(&config, &mut vm, &headers, &mut clock, Some(&installed));
        (
            d.reply().map(|r| r.status),
            d.reply().and_then(|r| r.error_code()),
        )
    };
    // Provider 1: its issuer, key, algorithm and audience.
    assert_eq!(
        status(sign_as("ES256", "a-1", claims(ISSUER, AUDIENCE))).0,
        None
    );
    // Its audience only.
    assert_eq!(
        status(sign_as("ES256", "a-1", claims(ISSUER, "other-api"))).0,
        Some(403)
    );
    // Provider 2 has no keys yet (remote, not fetched): unknown kid.
    assert_eq!(
        status(sign_as(
            "EdDSA",
            "b-1",
            claims("https://other.test", "other-api")
        ))
        .0,
        Some(401)
    );
    // Provider 1's key does not sign for provider 2's issuer.
    assert_eq!(
        status(sign_as(
            "ES256",
            "a-1",
            claims("https://other.test", "other-api")
        ))
        .0,
        Some(401)
    );
    // An issuer no provider has.
    assert_eq!(
        status(sign_as(
            "ES256",
            "a-1",
            claims("https://evil.test", AUDIENCE)
        ))
        .0,
        Some(401)
    );

    // Provider 2's keys arrive: its tokens verify, and an unknown kid of
    // its issuer is routed to its subscription.
    let remote = jwt.providers[1].remote.clone().unwrap();
    let mut sub = KeySubscription::new(remote, vec![Algorithm::EdDSA], T0);
    answer(
        &mut sub,
        T0,
        1,
        Some(200),
        None,
        &jwks(&[ed25519_jwk("b-1")]),
    );
    let mut top = jwt.clone();
    let (settings, _) = with_keys(&top.providers[1], &sub.keys());
    top.providers[1] = settings;
    let mut config2 = config.clone();
    config2.auth = cell_router_filter::config::Auth::Jwt(Box::new(top));
    let token = sign_as("EdDSA", "b-1", claims("https://other.test", "other-api"));
    let headers = [("authorization".to_string(), format!("Bearer {token}"))];
    let d = decide(&config2, &mut vm, &headers, &mut clock, Some(&installed));
    assert!(d.reply().is_none(), "{:?}", d.reply());
    assert_eq!(
        cell_router_filter::key_subscription::source_for(jwt, Some("https://other.test")),
        Some(Some(1))
    );
    assert_eq!(
        cell_router_filter::key_subscription::source_for(jwt, Some(ISSUER)),
        None
    );
    assert_eq!(
        cell_router_filter::key_subscription::source_for(jwt, None),
        None
    );
}

#[test]
fn providers_refuse_top_level_key_fields_and_duplicate_issuers() {
    let base = |extra: Value| {
        let mut v = json!({
            "providers": [{"issuer": "i", "algorithms": ["ES256"], "jwks": {"keys": [ec256_jwk("a")]}}],
            "tenant_claim": "t", "sidecar": {"cluster": "c"}
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        Config::from_json(v.to_string().as_bytes())
    };
    assert!(base(json!({})).is_ok());
    for field in ["algorithms", "issuers", "audiences"] {
        let error = base(json!({ field: ["x"] })).unwrap_err();
        assert_eq!(error.field, field, "{error}");
    }
    let dup = base(json!({"providers": [
        {"issuer": "i", "algorithms": ["ES256"], "jwks": {"keys": [ec256_jwk("a")]}},
        {"issuer": "i", "algorithms": ["ES256"], "jwks": {"keys": [ec256_jwk("a")]}}
    ]}))
    .unwrap_err();
    assert_eq!(dup.field, "providers[1].issuer", "{dup}");
    let no_keys =
        base(json!({"providers": [{"issuer": "i", "algorithms": ["ES256"]}]})).unwrap_err();
    assert_eq!(no_keys.field, "providers[0].jwks", "{no_keys}");
    let bad_remote = base(
        json!({"providers": [{"issuer": "i", "algorithms": ["ES256"],
        "jwks_remote": {"cluster": "c", "refresh_s": 0}}]}),
    )
    .unwrap_err();
    assert_eq!(
        bad_remote.field, "providers[0].jwks_remote.refresh_s",
        "{bad_remote}"
    );
}
