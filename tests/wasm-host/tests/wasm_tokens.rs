//! Token handling of the real filter `.wasm`: every algorithm, every
//! rejection, the token cache, hostile bytes. Runs in the wasmtime host.

use cell_router_kit::fixtures::{
    AUDIENCE, Config, ISSUER, TENANT_CLAIM, bearer, metric, parsed, snapshot, token, token_builder,
};
use cell_router_kit::tokens::{
    Alg, Jwks, RawSignature, TokenBuilder, alg_none_token, hs256_signed_with_rsa_public_key, keys,
    raw_token, tamper_payload,
};
use cell_router_wasm_host::{Exchange, Host, Request};
use serde_json::json;
use std::time::Duration;

/// A host running the filter with `config` and the standard snapshot.
fn router(config: Config) -> Host {
    let mut host = Host::new().expect("start the filter VM");
    host.configure(config.fallback(&snapshot(1)).json())
        .expect("configure the filter");
    host
}

fn with_token(host: &mut Host, token: &str) -> Exchange {
    host.request(&[(":path", "/v1/sms"), ("authorization", &bearer(token))])
        .expect("request through the filter")
}

/// The cell the mapping library picks for this request (the test tokens
/// have no subject: the tenant is the split key; no cell sheds).
fn expected_cell(tenant: &str, _exchange: &Exchange) -> String {
    let snapshot = parsed(&snapshot(1));
    let draws = cell_router_mapping::Draws::unshed(tenant.as_bytes(), 0);
    let resolution = snapshot.resolve(tenant.as_bytes(), &draws);
    let cell = resolution.routed_cell().expect("all test cells are active");
    snapshot.cell(cell).unwrap().id.clone()
}

/// A rejection: local reply with this status and JSON error, the request
/// never forwarded, the reason counted once.
fn assert_rejected(host: &Host, r: &Exchange, status: u16, error: &str, reason: &str) {
    assert_eq!(
        r.status(),
        Some(status),
        "body: {}",
        String::from_utf8_lossy(r.body())
    );
    assert!(!r.forwarded());
    assert_eq!(r.json()["error"], error, "body: {}", r.json());
    assert!(r.json()["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(r.response_header("content-type"), Some("application/json"));
    assert_eq!(
        host.metric(&metric::rejected(reason)),
        Some(1),
        "reason {reason}"
    );
}

fn www_authenticate(r: &Exchange) -> &str {
    r.response_header("www-authenticate").unwrap_or("")
}

#[test]
fn a_valid_token_of_every_algorithm_routes_to_the_mapped_cell() {
    let mut host = router(Config::jwt_all());
    for (i, alg) in Alg::ALL.into_iter().enumerate() {
        let tenant = format!("tenant-{i}");
        let t = token(alg, host.now_unix(), &tenant);
        let r = with_token(&mut host, &t);
        assert!(r.forwarded(), "{alg:?}: {:?} {}", r.status(), r.json());
        assert_eq!(
            r.cell(),
            Some(expected_cell(&tenant, &r).as_str()),
            "{alg:?}"
        );
        assert_eq!(r.header("x-cell-snapshot"), Some("1"));
    }
    assert_eq!(host.metric(metric::CACHE_MISS), Some(Alg::ALL.len() as i64));
}

#[test]
fn a_missing_token_gets_401_with_a_bearer_challenge() {
    let mut host = router(Config::jwt(&[Alg::RS256]));
    let r = host.request(&[(":path", "/v1/sms")]).unwrap();
    assert_rejected(&host, &r, 401, "missing_token", "missing_token");
    assert_eq!(www_authenticate(&r), "Bearer realm=\"cell-router\"");

    // Another scheme is not a bearer token either.
    let r = host
        .request(&[(":path", "/"), ("authorization", "Basic dXNlcjpwYXNz")])
        .unwrap();
    assert_eq!(r.status(), Some(401));
    assert_eq!(r.json()["error"], "missing_token");
}

#[test]
fn expired_and_not_yet_valid_tokens_get_401_outside_the_clock_skew() {
    let mut host = router(Config::jwt(&[Alg::ES256]));
    let now = host.now_unix();
    // Default skew is 60 s: inside it the token passes, beyond it it does not.
    let barely = token_builder(Alg::ES256, now - 3600, "t")
        .expires_at(now - 30)
        .sign();
    assert!(with_token(&mut host, &barely).forwarded());
    let expired = token_builder(Alg::ES256, now - 3600, "t")
        .expires_at(now - 120)
        .sign();
    let r = with_token(&mut host, &expired);
    assert_rejected(&host, &r, 401, "invalid_token", "expired");
    assert!(www_authenticate(&r).contains("error=\"invalid_token\""));

    let soon = token_builder(Alg::ES256, now, "t")
        .not_before(now + 30)
        .sign();
    assert!(with_token(&mut host, &soon).forwarded());
    let later = token_builder(Alg::ES256, now, "t")
        .not_before(now + 600)
        .sign();
    let r = with_token(&mut host, &later);
    assert_rejected(&host, &r, 401, "invalid_token", "not_yet_valid");
}

#[test]
fn a_token_expires_with_the_host_clock() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let now = host.now_unix();
    let t = token_builder(Alg::HS256, now, "acme")
        .expires_at(now + 100)
        .sign();
    assert!(with_token(&mut host, &t).forwarded());
    // The cached verification must not outlive the token.
    host.advance_clock(Duration::from_secs(100 + 61));
    let r = with_token(&mut host, &t);
    assert_rejected(&host, &r, 401, "invalid_token", "expired");
}

#[test]
fn bad_signatures_unknown_kids_and_wrong_issuers_get_401() {
    let mut host = router(Config::jwt(&[Alg::RS256, Alg::HS256, Alg::EdDSA]));
    let now = host.now_unix();

    let forged = token_builder(Alg::RS256, now, "acme")
        .signed_by_other_key()
        .sign();
    let r = with_token(&mut host, &forged);
    assert_rejected(&host, &r, 401, "invalid_token", "bad_signature");

    let unknown = token_builder(Alg::EdDSA, now, "acme")
        .kid("no-such-key")
        .sign();
    let r = with_token(&mut host, &unknown);
    assert_rejected(&host, &r, 401, "invalid_token", "unknown_kid");

    let foreign = token_builder(Alg::HS256, now, "acme")
        .issuer("https://evil.test")
        .sign();
    let r = with_token(&mut host, &foreign);
    assert_rejected(&host, &r, 401, "invalid_token", "wrong_issuer");
    assert!(www_authenticate(&r).contains("error=\"invalid_token\""));
}

#[test]
fn a_tampered_payload_does_not_verify() {
    let mut host = router(Config::jwt(&[Alg::PS256]));
    let good = token(Alg::PS256, host.now_unix(), "acme");
    let evil = tamper_payload(&good, |c| c[TENANT_CLAIM] = json!("victim"));
    let r = with_token(&mut host, &evil);
    assert_rejected(&host, &r, 401, "invalid_token", "bad_signature");
    assert!(r.cell().is_none());
}

#[test]
fn a_wrong_audience_gets_403() {
    let mut host = router(Config::jwt(&[Alg::ES384]));
    let now = host.now_unix();
    let t = token_builder(Alg::ES384, now, "acme")
        .audience("another-api")
        .sign();
    let r = with_token(&mut host, &t);
    assert_rejected(&host, &r, 403, "audience_not_allowed", "wrong_audience");
    assert!(www_authenticate(&r).contains("error=\"insufficient_scope\""));

    // One allowed audience among several is enough.
    let t = token_builder(Alg::ES384, now, "acme")
        .audiences(&["another-api", AUDIENCE])
        .sign();
    assert!(with_token(&mut host, &t).forwarded());
}

#[test]
fn unsigned_tokens_are_refused_in_every_spelling() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let now = host.now_unix();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, TENANT_CLAIM: "acme"});
    for (i, alg) in ["none", "None", "nOnE", "NONE"].into_iter().enumerate() {
        let r = with_token(&mut host, &alg_none_token(alg, &claims));
        assert_eq!(r.status(), Some(401), "alg {alg}");
        assert_eq!(r.json()["error"], "invalid_token");
        assert_eq!(
            host.metric(&metric::rejected("alg_none")),
            Some(i as i64 + 1),
            "{} {:?}",
            r.json(),
            host.metrics()
                .iter()
                .filter(|(_, m)| m.value != 0)
                .map(|(k, m)| (k.clone(), m.value))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let claims =
        json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, TENANT_CLAIM: "victim"});
    let attack = hs256_signed_with_rsa_public_key(&Alg::RS256.default_kid(), &claims);

    // Only RS256 allowed: HS256 is not an allowed algorithm.
    let mut host = router(Config::jwt(&[Alg::RS256]));
    let r = with_token(&mut host, &attack);
    assert_rejected(&host, &r, 401, "invalid_token", "alg_not_allowed");

    // HS256 allowed too: the RSA key still cannot be used as an HMAC secret.
    let mut host = router(Config::jwt(&[Alg::RS256, Alg::HS256]));
    let r = with_token(&mut host, &attack);
    assert_rejected(&host, &r, 401, "invalid_token", "key_alg_mismatch");
    assert!(r.cell().is_none());
}

#[test]
fn an_oversized_token_is_refused_before_any_parsing() {
    let mut host = router(Config::jwt(&[Alg::HS256]).set("max_token_bytes", 1024));
    let big = token_builder(Alg::HS256, host.now_unix(), "acme")
        .claim("padding", "x".repeat(2000))
        .sign();
    assert!(big.len() > 1024);
    let r = with_token(&mut host, &big);
    assert_rejected(&host, &r, 401, "invalid_token", "too_large");

    // A megabyte of header value does not trap either.
    let huge = format!("Bearer {}", "a".repeat(1 << 20));
    let r = host
        .request(&[(":path", "/"), ("authorization", &huge)])
        .unwrap();
    assert_eq!(r.status(), Some(401));
    assert_eq!(host.metric(&metric::rejected("too_large")), Some(2));
}

#[test]
fn malformed_tokens_get_401() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let cases = [
        "abc",
        "a.b",
        "a.b.c.d",
        "@@@.###.$$$",
        "e30.e30.",
        "bm90IGpzb24.e30.c2ln",
    ];
    for (i, bad) in cases.into_iter().enumerate() {
        let r = with_token(&mut host, bad);
        assert_eq!(r.status(), Some(401), "{bad}");
        assert_eq!(r.json()["error"], "invalid_token", "{bad}");
        assert_eq!(
            host.metric(&metric::rejected("malformed")),
            Some(i as i64 + 1),
            "{bad}"
        );
    }
    let r = host
        .request(&[(":path", "/"), ("authorization", "Bearer ")])
        .unwrap();
    assert_eq!(r.status(), Some(401));
}

#[test]
fn a_token_without_exp_is_refused_unless_configured() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let t = token_builder(Alg::HS256, host.now_unix(), "acme")
        .no_exp()
        .sign();
    let r = with_token(&mut host, &t);
    assert_rejected(&host, &r, 401, "invalid_token", "missing_exp");

    let mut host = router(Config::jwt(&[Alg::HS256]).set("require_exp", false));
    assert!(with_token(&mut host, &t).forwarded());
}

#[test]
fn the_tenant_claim_must_be_present_and_usable() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let now = host.now_unix();
    let no_tenant = TokenBuilder::new(Alg::HS256, now)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .sign();
    let r = with_token(&mut host, &no_tenant);
    assert_rejected(&host, &r, 403, "tenant_missing", "tenant_missing");

    let bad_type = TokenBuilder::new(Alg::HS256, now)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .claim(TENANT_CLAIM, json!({"id": 1}))
        .sign();
    let r = with_token(&mut host, &bad_type);
    assert_rejected(&host, &r, 403, "tenant_invalid", "tenant_invalid");

    // An integer tenant is routed as its decimal text.
    let numeric = TokenBuilder::new(Alg::HS256, now)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .claim(TENANT_CLAIM, 4242)
        .sign();
    let r = with_token(&mut host, &numeric);
    assert!(r.forwarded());
    assert_eq!(r.cell(), Some(expected_cell("4242", &r).as_str()));
}

#[test]
fn a_nested_tenant_claim_is_followed() {
    let mut host = router(Config::jwt(&[Alg::HS256]).set("tenant_claim", "org.id"));
    let t = TokenBuilder::new(Alg::HS256, host.now_unix())
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .claim("org", json!({"id": "globex"}))
        .sign();
    let r = with_token(&mut host, &t);
    assert!(r.forwarded(), "{}", r.json());
    assert_eq!(r.cell(), Some(expected_cell("globex", &r).as_str()));
}

#[test]
fn repeated_tokens_are_answered_from_the_cache() {
    let mut host = router(Config::jwt(&[Alg::RS256]));
    let t = token(Alg::RS256, host.now_unix(), "acme");
    let first = with_token(&mut host, &t);
    let second = with_token(&mut host, &t);
    let third = with_token(&mut host, &t);
    assert!(first.forwarded() && second.forwarded() && third.forwarded());
    assert_eq!(second.cell(), first.cell());
    assert_eq!(host.metric(metric::CACHE_MISS), Some(1));
    assert_eq!(host.metric(metric::CACHE_HIT), Some(2));

    // A different token for the same tenant is verified again.
    let other = token_builder(Alg::RS256, host.now_unix(), "acme")
        .claim("jti", "2")
        .sign();
    assert!(with_token(&mut host, &other).forwarded());
    assert_eq!(host.metric(metric::CACHE_MISS), Some(2));

    // A tampered copy of a cached token must not hit the cache.
    let evil = tamper_payload(&t, |c| c[TENANT_CLAIM] = json!("victim"));
    assert_eq!(with_token(&mut host, &evil).status(), Some(401));
    assert_eq!(host.metric(metric::CACHE_HIT), Some(2));
}

#[test]
fn a_disabled_cache_verifies_every_time() {
    let mut host = router(Config::jwt(&[Alg::HS256]).set("token_cache_entries", 0));
    let t = token(Alg::HS256, host.now_unix(), "acme");
    for _ in 0..3 {
        assert!(with_token(&mut host, &t).forwarded());
    }
    assert_eq!(host.metric(metric::CACHE_HIT).unwrap_or(0), 0);
}

#[test]
fn two_authorization_headers_are_refused() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let good = bearer(&token(Alg::HS256, host.now_unix(), "acme"));
    let evil = bearer(&token(Alg::HS256, host.now_unix(), "victim"));
    let r = host
        .request(&[
            (":path", "/"),
            ("authorization", &good),
            ("authorization", &evil),
        ])
        .unwrap();
    assert_rejected(&host, &r, 401, "invalid_token", "multiple_tokens");
}

#[test]
fn tokens_from_a_query_parameter_or_cookie() {
    let config = Config::jwt(&[Alg::HS256]).set(
        "token",
        json!({"query_param": "access_token", "cookie": "session"}),
    );
    let mut host = router(config);
    let t = token(Alg::HS256, host.now_unix(), "acme");
    let r = host
        .request(&[(":path", format!("/v1?x=1&access_token={t}").as_str())])
        .unwrap();
    assert!(r.forwarded(), "{}", r.json());
    let r = host
        .request(&[
            (":path", "/v1"),
            ("cookie", format!("a=b; session={t}").as_str()),
        ])
        .unwrap();
    assert!(r.forwarded(), "{}", r.json());
    assert_eq!(host.metric(metric::CACHE_HIT), Some(1));
}

#[test]
fn non_utf8_header_bytes_never_trap() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let t = token(Alg::HS256, host.now_unix(), "acme");
    let junk: &[u8] = &[0xff, 0xfe, 0x80, 0x00, b'x', 0xc3];

    // Junk as the token.
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(junk);
    let r = host
        .send(Request::get("/").header_bytes("authorization", &value))
        .unwrap();
    assert_eq!(r.status(), Some(401));

    // Junk in a spoofed cell header and elsewhere, with a valid token.
    let r = host
        .send(
            Request::get("/")
                .header("authorization", &bearer(&t))
                .header_bytes("x-cell-id", junk)
                .header_bytes("x-cell-snapshot", junk)
                .header_bytes("x-anything", junk),
        )
        .unwrap();
    assert!(r.forwarded());
    assert_eq!(r.header_all("x-cell-id").len(), 1);
    assert_eq!(r.cell(), Some(expected_cell("acme", &r).as_str()));
    assert_eq!(r.request_headers.get_bytes("x-anything"), Some(junk));

    // Junk in the path (query token lookup) and in a cookie header.
    let config =
        Config::jwt(&[Alg::HS256]).set("token", json!({"query_param": "t", "cookie": "c"}));
    let mut host = router(config);
    let mut path = b"/p?t=".to_vec();
    path.extend_from_slice(junk);
    let r = host
        .send(
            Request::default()
                .header_bytes(":path", &path)
                .header_bytes("cookie", junk),
        )
        .unwrap();
    assert_eq!(r.status(), Some(401));
}

#[test]
fn trust_header_mode_takes_the_tenant_from_jwt_authn() {
    let mut host = router(Config::trust_header("x-jwt-tenant"));
    let r = host
        .request(&[(":path", "/"), ("x-jwt-tenant", "acme")])
        .unwrap();
    assert!(r.forwarded());
    assert_eq!(r.cell(), Some(expected_cell("acme", &r).as_str()));

    let r = host.request(&[(":path", "/")]).unwrap();
    assert_eq!(r.status(), Some(401));

    let r = host
        .send(Request::get("/").header_bytes("x-jwt-tenant", &[0xff, 0xfe]))
        .unwrap();
    assert_eq!(r.status(), Some(403));
    assert_eq!(r.json()["error"], "tenant_invalid");

    let r = host
        .request(&[(":path", "/"), ("x-jwt-tenant", "a"), ("x-jwt-tenant", "b")])
        .unwrap();
    assert_eq!(r.status(), Some(403));
}

#[test]
fn raw_hmac_tokens_with_unknown_critical_extensions_are_refused() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let now = host.now_unix();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, TENANT_CLAIM: "acme"});
    let header = json!({"alg": "HS256", "kid": "hs256", "crit": ["exp"], "exp": 1});
    let t = raw_token(
        &header,
        &claims,
        RawSignature::Hs256(keys().hmac_secret.clone()),
    );
    let r = with_token(&mut host, &t);
    assert_rejected(&host, &r, 401, "invalid_token", "unsupported_crit");

    // The same token without `crit` passes: the signature was fine.
    let header = json!({"alg": "HS256", "kid": "hs256"});
    let t = raw_token(
        &header,
        &claims,
        RawSignature::Hs256(keys().hmac_secret.clone()),
    );
    assert!(with_token(&mut host, &t).forwarded());
}

#[test]
fn the_jwks_fixes_which_key_verifies() {
    // Only the ES256 key is published; an ES256 token whose kid names it
    // passes, the same token under another kid does not.
    let config = Config::jwt(&[Alg::ES256])
        .set("jwks", Jwks::new().with_key(Alg::ES256, "prod-1").to_json());
    let mut host = router(config);
    let now = host.now_unix();
    assert!(
        with_token(
            &mut host,
            &token_builder(Alg::ES256, now, "a").kid("prod-1").sign()
        )
        .forwarded()
    );
    let r = with_token(
        &mut host,
        &token_builder(Alg::ES256, now, "a").kid("prod-2").sign(),
    );
    assert_eq!(r.json()["error"], "invalid_token");
    assert_eq!(host.metric(&metric::rejected("unknown_kid")), Some(1));
}

#[test]
fn a_token_issued_in_the_future_is_refused() {
    let mut host = router(Config::jwt(&[Alg::HS256]));
    let now = host.now_unix();
    let t = token_builder(Alg::HS256, now + 3600, "acme")
        .expires_at(now + 7200)
        .sign();
    let r = with_token(&mut host, &t);
    assert_rejected(&host, &r, 401, "invalid_token", "issued_in_future");
}

#[test]
fn hostile_json_in_a_validly_signed_token_never_traps() {
    use cell_router_kit::tokens::raw_token_from_parts;
    let mut host = router(Config::jwt(&[Alg::HS256]).set("max_token_bytes", 65536));
    let now = host.now_unix();
    let secret = || RawSignature::Hs256(keys().hmac_secret.clone());
    let header = br#"{"alg":"HS256","kid":"hs256"}"#;
    let base = format!(
        r#""iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"{TENANT_CLAIM}""#,
        now + 600
    );

    // Nested far beyond any parser's recursion limit.
    let deep = format!(
        r#"{{{base}:"acme","x":{}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let r = with_token(
        &mut host,
        &raw_token_from_parts(header, deep.as_bytes(), secret()),
    );
    assert_eq!(r.status(), Some(401));

    // The tenant twice: parsers could disagree on which one wins.
    let twice = format!(r#"{{{base}:"acme","{TENANT_CLAIM}":"victim"}}"#);
    let r = with_token(
        &mut host,
        &raw_token_from_parts(header, twice.as_bytes(), secret()),
    );
    assert_eq!(r.status(), Some(401));
    assert!(r.cell().is_none());

    // Not UTF-8, and not even JSON.
    let r = with_token(
        &mut host,
        &raw_token_from_parts(header, &[0xff, 0xfe, b'{'], secret()),
    );
    assert_eq!(r.status(), Some(401));
    let r = with_token(
        &mut host,
        &raw_token_from_parts(b"\xff\x00", b"{}", secret()),
    );
    assert_eq!(r.status(), Some(401));

    // Still alive and routing.
    let t = token(Alg::HS256, now, "acme");
    assert!(with_token(&mut host, &t).forwarded());
}

#[test]
fn rsa_and_ecdsa_signatures_are_checked_by_the_hosts_verify_signature() {
    use cell_router_wasm_host::HostOptions;
    let config = Config::jwt_all();
    let mut host = router(config.clone());
    let now = host.now_unix();
    for alg in Alg::ALL {
        let by_host = matches!(
            alg,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::ES256 | Alg::ES384
        );
        let r = with_token(&mut host, &token(alg, now, "acme"));
        assert!(r.forwarded(), "{alg:?}");
        assert_eq!(
            r.foreign_call_count("verify_signature"),
            usize::from(by_host),
            "{alg:?}"
        );
        // A forged signature is refused whoever checks it.
        let forged = token_builder(alg, now, "acme").signed_by_other_key().sign();
        assert_eq!(
            with_token(&mut host, &forged).status(),
            Some(401),
            "{alg:?}"
        );
    }

    // Without the foreign function (older Envoy) the VM verifies, and the
    // filter stops asking after the first NotFound.
    let options = HostOptions {
        foreign_functions: ["clear_route_cache".to_string()].into(),
        ..HostOptions::default()
    };
    let mut host = Host::with_options(options).unwrap();
    host.configure(config.fallback(&snapshot(1)).json())
        .unwrap();
    let first = with_token(&mut host, &token(Alg::RS256, now, "a"));
    let second = with_token(&mut host, &token(Alg::ES256, now, "b"));
    assert!(first.forwarded() && second.forwarded());
    assert_eq!(first.foreign_call_count("verify_signature"), 1);
    assert_eq!(second.foreign_call_count("verify_signature"), 0);
    let forged = token_builder(Alg::RS256, now, "a")
        .signed_by_other_key()
        .sign();
    assert_eq!(with_token(&mut host, &forged).status(), Some(401));
}
