//! Tokens through the whole decision: every algorithm accepted, every
//! rejection with its status, error code and challenge.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::decide::Outcome;
use cell_router_filter::token::Reason;
use common::*;
use jwt_simple::prelude::*;
use serde_json::{Value, json};

/// Routes `token` and returns the routed cell, or panics with the rejection.
fn routed(router: &mut Router, token: &str) -> String {
    let decision = router.request(&[("authorization", &bearer(token)), ("x-request-id", "r1")]);
    match decision.outcome {
        Outcome::Routed { cell, .. } => cell.to_string(),
        other => panic!("expected routing, got {other:?}: {:?}", decision.reply()),
    }
}

/// Asserts a rejection: reason, status, JSON error code, and the challenge.
fn assert_rejected(router: &mut Router, headers: &[(&str, &str)], reason: Reason) {
    let decision = router.request(headers);
    assert_eq!(
        decision.outcome,
        Outcome::Rejected(reason),
        "{:?}",
        decision.reply()
    );
    let reply = decision.reply().expect("a local reply");
    assert_eq!(reply.status, reason.status());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], reason.error_code());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    let challenge = reply.header("www-authenticate");
    match reason {
        Reason::MissingToken => assert_eq!(challenge, Some(r#"Bearer realm="cells""#)),
        Reason::WrongAudience => assert_eq!(
            challenge,
            Some(r#"Bearer realm="cells", error="insufficient_scope""#)
        ),
        Reason::TenantMissing | Reason::TenantInvalid => assert_eq!(challenge, None),
        _ => assert_eq!(
            challenge,
            Some(r#"Bearer realm="cells", error="invalid_token""#)
        ),
    }
}

fn rejected_token(router: &mut Router, token: &str, reason: Reason) {
    assert_rejected(router, &[("authorization", &bearer(token))], reason);
}

fn expected_cell(tenant: &str) -> String {
    let snapshot = snapshot(1);
    let resolution = snapshot.resolve(tenant.as_bytes(), &cell_router_mapping::Draws::default());
    let index = resolution.routed_cell().unwrap();
    snapshot.cell(index).unwrap().id.clone()
}

#[test]
fn every_algorithm_verifies_and_routes() {
    let mut router = Router::from_json(&base_config());
    for alg in ALL_ALGORITHMS {
        let tenant = format!("tenant-{alg}");
        let token = sign(alg, tenant_claims(&tenant));
        let decision =
            router.request(&[("authorization", &bearer(&token)), ("x-request-id", "r1")]);
        assert_eq!(decision.tenant.as_deref(), Some(tenant.as_str()), "{alg}");
        assert_eq!(
            decision.routed_cell(),
            Some(expected_cell(&tenant).as_str()),
            "{alg}"
        );
    }
}

#[test]
fn keys_with_an_alg_only_serve_that_alg() {
    let mut value = base_config();
    value["jwks"] = json!({"keys": [rsa_jwk("rsa-1", Some("PS256"))]});
    let mut router = Router::from_json(&value);
    routed(&mut router, &sign("PS256", tenant_claims("t1")));
    rejected_token(
        &mut router,
        &sign("RS256", tenant_claims("t1")),
        Reason::KeyAlgMismatch,
    );
}

#[test]
fn missing_token_is_401_with_a_bare_challenge() {
    let mut router = Router::from_json(&base_config());
    assert_rejected(&mut router, &[(":path", "/")], Reason::MissingToken);
    assert_rejected(
        &mut router,
        &[("authorization", "Basic dXNlcjpwdw==")],
        Reason::MissingToken,
    );
}

#[test]
fn malformed_tokens_are_401_invalid_token() {
    let mut router = Router::from_json(&base_config());
    let good = sign("HS256", tenant_claims("t1"));
    let (head, rest) = good.split_once('.').unwrap();
    for bad in [
        "abc".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        "..".to_string(),
        format!("{head}.{rest}.x"),
        format!("!!!.{rest}"),
        format!("{}.{rest}", b64url(b"not json")),
        format!("{}.{rest}", b64url(br#"{"alg": 5}"#)),
        format!("{head}.%%%.sig"),
        // Correctly MACed, but the claims are not an object.
        raw_hs256(&hs_secret(), r#"{"alg":"HS256","kid":"hs-1"}"#, "[]"),
        raw_hs256(
            &hs_secret(),
            r#"{"alg":"HS256","kid":"hs-1"}"#,
            r#"{"exp":"soon"}"#,
        ),
        format!("{head}.."),
        "Bearer".to_string(),
    ] {
        rejected_token(&mut router, &bad, Reason::Malformed);
    }
    // Bytes no token has: NUL, non-UTF-8, spaces inside.
    for value in [
        &b"Bearer ab\0c.d.e"[..],
        b"Bearer \xff\xfe.a.b",
        b"Bearer a b.c.d",
    ] {
        let decision = router.request_bytes(&[(b"authorization", value)]);
        assert_eq!(decision.outcome, Outcome::Rejected(Reason::Malformed));
        assert_eq!(decision.reply().unwrap().status, 401);
    }
    assert_rejected(
        &mut router,
        &[("authorization", "Bearer ")],
        Reason::Malformed,
    );
}

#[test]
fn expiry_honours_the_clock_skew_boundary() {
    let mut router = Router::from_json(&base_config());
    let mut claims = tenant_claims("t1");
    claims.expires_at = Some(UnixTimeStamp::from_secs(NOW - 60));
    routed(&mut router, &sign("ES256", claims.clone()));
    claims.expires_at = Some(UnixTimeStamp::from_secs(NOW - 61));
    rejected_token(&mut router, &sign("ES256", claims), Reason::Expired);
}

#[test]
fn not_before_and_issued_at_honour_the_skew() {
    let mut router = Router::from_json(&base_config());
    let mut claims = tenant_claims("t1");
    claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW + 60));
    routed(&mut router, &sign("EdDSA", claims.clone()));
    claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW + 61));
    rejected_token(&mut router, &sign("EdDSA", claims), Reason::NotYetValid);

    let mut claims = tenant_claims("t1");
    claims.issued_at = Some(UnixTimeStamp::from_secs(NOW + 61));
    rejected_token(&mut router, &sign("EdDSA", claims), Reason::IssuedInFuture);
}

#[test]
fn the_host_clock_decides_expiry() {
    let mut router = Router::from_json(&base_config());
    let token = sign("HS256", tenant_claims("t1"));
    router.now = NOW + 3600 + 60;
    routed(&mut router, &token);
    router.now = NOW + 3600 + 61;
    rejected_token(&mut router, &token, Reason::Expired);
}

#[test]
fn bad_signatures_are_refused() {
    let mut router = Router::from_json(&base_config());
    // Signed by another RSA key under the trusted kid.
    let other = RS256KeyPair::from_pem(&key_file("rsa2048-other.pem"))
        .unwrap()
        .with_key_id("rsa-1")
        .sign(tenant_claims("t1"))
        .unwrap();
    rejected_token(&mut router, &other, Reason::BadSignature);

    // A valid token whose payload was swapped for another tenant.
    for alg in ["RS256", "ES256", "EdDSA", "HS256", "PS384"] {
        let token = sign(alg, tenant_claims("t1"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64url(payload_json("victim").as_bytes()),
            parts[2]
        );
        rejected_token(&mut router, &forged, Reason::BadSignature);
    }
}

#[test]
fn unknown_kid_and_wrong_issuer_are_refused() {
    let mut router = Router::from_json(&base_config());
    rejected_token(
        &mut router,
        &sign_as("RS256", "rotated-away", tenant_claims("t1")),
        Reason::UnknownKid,
    );

    let mut claims = tenant_claims("t1");
    claims.issuer = Some("https://evil.test".into());
    rejected_token(
        &mut router,
        &sign("RS256", claims.clone()),
        Reason::WrongIssuer,
    );
    claims.issuer = None;
    rejected_token(&mut router, &sign("RS256", claims), Reason::WrongIssuer);
}

#[test]
fn tokens_without_kid_try_the_keys_of_their_algorithm() {
    let mut router = Router::from_json(&base_config());
    let token = HS256Key::from_bytes(&hs_secret())
        .authenticate(tenant_claims("t1"))
        .unwrap();
    routed(&mut router, &token);
    let token = HS256Key::from_bytes(&[9; 32])
        .authenticate(tenant_claims("t1"))
        .unwrap();
    rejected_token(&mut router, &token, Reason::BadSignature);
}

#[test]
fn audience_not_allowed_is_403() {
    let mut router = Router::from_json(&base_config());
    let mut claims = tenant_claims("t1");
    claims.audiences = Some(Audiences::AsString("someone-else".into()));
    rejected_token(
        &mut router,
        &sign("RS256", claims.clone()),
        Reason::WrongAudience,
    );
    claims.audiences = None;
    rejected_token(
        &mut router,
        &sign("RS256", claims.clone()),
        Reason::WrongAudience,
    );
    claims.audiences = Some(Audiences::AsSet(
        ["x".to_string(), AUDIENCE.to_string()].into(),
    ));
    routed(&mut router, &sign("RS256", claims.clone()));
    claims.audiences = Some(Audiences::AsSet(["x".to_string(), "y".to_string()].into()));
    rejected_token(&mut router, &sign("RS256", claims), Reason::WrongAudience);
}

#[test]
fn alg_none_in_any_case_is_refused() {
    let mut router = Router::from_json(&base_config());
    for alg in ["none", "None", "nOnE", "NONE"] {
        let header = json!({"alg": alg, "typ": "JWT"}).to_string();
        let token = format!(
            "{}.{}.",
            b64url(header.as_bytes()),
            b64url(payload_json("t1").as_bytes())
        );
        rejected_token(&mut router, &token, Reason::AlgNone);
    }
}

#[test]
fn algorithms_outside_the_allow_list_are_refused() {
    let mut value = base_config();
    value["algorithms"] = json!(["RS256"]);
    value["jwks"] = json!({"keys": [rsa_jwk("rsa-1", None)]});
    let mut router = Router::from_json(&value);
    routed(&mut router, &sign("RS256", tenant_claims("t1")));
    for alg in ["HS256", "ES256", "PS256", "RS512"] {
        rejected_token(
            &mut router,
            &sign(alg, tenant_claims("t1")),
            Reason::AlgNotAllowed,
        );
    }
    let header = json!({"alg": "RS1", "kid": "rsa-1"}).to_string();
    let token = format!(
        "{}.{}.c2ln",
        b64url(header.as_bytes()),
        b64url(payload_json("t1").as_bytes())
    );
    rejected_token(&mut router, &token, Reason::AlgNotAllowed);
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: MAC the token with the public key as secret.
    let public_pem = key_file("rsa2048.pub.pem");
    let (n, _) = {
        let c = RS256KeyPair::from_pem(&key_file("rsa2048.pem"))
            .unwrap()
            .public_key()
            .to_components();
        (c.n, c.e)
    };
    for secret in [public_pem.as_bytes().to_vec(), n] {
        // With the RSA key's kid: that key is not an HS256 key.
        let mut router = Router::from_json(&base_config());
        let token = HS256Key::from_bytes(&secret)
            .with_key_id("rsa-1")
            .authenticate(tenant_claims("t1"))
            .unwrap();
        rejected_token(&mut router, &token, Reason::KeyAlgMismatch);

        // Only RSA keys configured, HS256 allowed: no HS256 key exists.
        let mut value = base_config();
        value["algorithms"] = json!(["RS256", "HS256"]);
        value["jwks"] = json!({"keys": [rsa_jwk("rsa-1", Some("RS256"))]});
        let mut router = Router::from_json(&value);
        let token = HS256Key::from_bytes(&secret)
            .authenticate(tenant_claims("t1"))
            .unwrap();
        rejected_token(&mut router, &token, Reason::UnknownKid);
    }
}

#[test]
fn oversized_tokens_are_refused_before_any_work() {
    let mut router = Router::from_json(&base_config());
    let big = "a".repeat(20_000);
    let token = sign("HS256", claims(json!({"tenant_id": "t1", "pad": big})));
    rejected_token(&mut router, &token, Reason::TooLarge);
}

#[test]
fn several_authorization_headers_are_refused() {
    let mut router = Router::from_json(&base_config());
    let token = bearer(&sign("HS256", tenant_claims("t1")));
    assert_rejected(
        &mut router,
        &[("authorization", &token), ("Authorization", &token)],
        Reason::MultipleTokens,
    );
}

#[test]
fn unknown_crit_is_refused_and_key_urls_are_ignored() {
    let mut router = Router::from_json(&base_config());
    let secret = hs_secret();
    let crit = json!({"alg": "HS256", "kid": "hs-1", "crit": ["exp"]}).to_string();
    rejected_token(
        &mut router,
        &raw_hs256(&secret, &crit, &payload_json("t1")),
        Reason::UnsupportedCrit,
    );

    // jku/x5u point at an attacker's keys: they are not fetched or trusted;
    // the token verifies (or not) with the configured key only.
    let header = json!({"alg": "HS256", "kid": "hs-1", "jku": "https://evil.test/jwks", "x5u": "https://evil.test/cert"})
        .to_string();
    routed(
        &mut router,
        &raw_hs256(&secret, &header, &payload_json("t1")),
    );
    rejected_token(
        &mut router,
        &raw_hs256(&[1; 32], &header, &payload_json("t1")),
        Reason::BadSignature,
    );

    // An embedded JWK object is never used; jwt-simple refuses the header.
    let header =
        json!({"alg": "HS256", "kid": "hs-1", "jwk": {"kty": "oct", "k": b64url(&[1; 32])}})
            .to_string();
    let decision = router.request(&[(
        "authorization",
        &bearer(&raw_hs256(&[1; 32], &header, &payload_json("t1"))),
    )]);
    assert_eq!(decision.reply().map(|r| r.status), Some(401));
}

#[test]
fn missing_exp_is_refused_unless_allowed() {
    let mut claims = tenant_claims("t1");
    claims.expires_at = None;
    let token = sign("HS256", claims);
    let mut router = Router::from_json(&base_config());
    rejected_token(&mut router, &token, Reason::MissingExp);
    let mut value = base_config();
    value["require_exp"] = json!(false);
    let mut router = Router::from_json(&value);
    routed(&mut router, &token);
}

#[test]
fn duplicate_claims_are_refused() {
    let mut router = Router::from_json(&base_config());
    let secret = hs_secret();
    let header = json!({"alg": "HS256", "kid": "hs-1"}).to_string();
    let payload = format!(
        r#"{{"iat":{NOW},"exp":{},"iss":"{ISSUER}","aud":"{AUDIENCE}","tenant_id":"a","tenant_id":"b"}}"#,
        NOW + 60
    );
    rejected_token(
        &mut router,
        &raw_hs256(&secret, &header, &payload),
        Reason::Malformed,
    );
    let payload = format!(
        r#"{{"iat":{NOW},"exp":{},"exp":{},"iss":"{ISSUER}","aud":"{AUDIENCE}","tenant_id":"a"}}"#,
        NOW + 60,
        NOW + 99_999
    );
    rejected_token(
        &mut router,
        &raw_hs256(&secret, &header, &payload),
        Reason::Malformed,
    );
    let payload = format!(
        r#"{{"iat":{NOW},"exp":{},"iss":"{ISSUER}","aud":"{AUDIENCE}","org":{{"id":"a","id":"b"}},"tenant_id":"a"}}"#,
        NOW + 60
    );
    rejected_token(
        &mut router,
        &raw_hs256(&secret, &header, &payload),
        Reason::Malformed,
    );
}

#[test]
fn deeply_nested_claims_do_not_break_anything() {
    let mut router = Router::from_json(&base_config());
    let nested = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let header = json!({"alg": "HS256", "kid": "hs-1"}).to_string();
    let payload = format!(r#"{{"exp":{},"tenant_id":"a","deep":{nested}}}"#, NOW + 60);
    let mut value = base_config();
    value["max_token_bytes"] = json!(65536);
    let mut big = Router::from_json(&value);
    let decision = big.request(&[(
        "authorization",
        &bearer(&raw_hs256(&hs_secret(), &header, &payload)),
    )]);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::Malformed));
    // And within the default size, nothing reaches the parser.
    rejected_token(
        &mut router,
        &raw_hs256(&hs_secret(), &header, &payload),
        Reason::TooLarge,
    );
}

#[test]
fn tenant_claim_must_be_usable() {
    let mut router = Router::from_json(&base_config());
    let check = |router: &mut Router, tenant: Value, reason: Reason| {
        rejected_token(
            router,
            &sign("HS256", claims(json!({ "tenant_id": tenant }))),
            reason,
        );
    };
    rejected_token(
        &mut router,
        &sign("HS256", claims(json!({"other": "x"}))),
        Reason::TenantMissing,
    );
    check(&mut router, Value::Null, Reason::TenantMissing);
    check(&mut router, json!(true), Reason::TenantInvalid);
    check(&mut router, json!(1.5), Reason::TenantInvalid);
    check(&mut router, json!({"id": "x"}), Reason::TenantInvalid);
    check(&mut router, json!(["x"]), Reason::TenantInvalid);
    check(&mut router, json!(""), Reason::TenantInvalid);
    check(&mut router, json!("a".repeat(257)), Reason::TenantInvalid);
    check(&mut router, json!("acme\ncorp"), Reason::TenantInvalid);
    check(&mut router, json!("acme\u{0}"), Reason::TenantInvalid);
    check(&mut router, json!("acme\u{85}"), Reason::TenantInvalid);
    // Integers become their decimal form; any other string is taken as is.
    let decision_tenant = |router: &mut Router, tenant: Value| {
        let token = sign("HS256", claims(json!({ "tenant_id": tenant })));
        router.request(&[("authorization", &bearer(&token))]).tenant
    };
    assert_eq!(
        decision_tenant(&mut router, json!(42)),
        Some("42".to_string())
    );
    assert_eq!(
        decision_tenant(&mut router, json!(-7)),
        Some("-7".to_string())
    );
    assert_eq!(
        decision_tenant(&mut router, json!(" Acme ")),
        Some(" Acme ".to_string())
    );
    assert_eq!(
        decision_tenant(&mut router, json!("a".repeat(256))),
        Some("a".repeat(256))
    );
}

#[test]
fn nested_and_registered_tenant_claims() {
    let mut value = base_config();
    value["tenant_claim"] = json!("org.tenant.id");
    let mut router = Router::from_json(&value);
    let token = sign("HS256", claims(json!({"org": {"tenant": {"id": "deep"}}})));
    assert_eq!(
        router
            .request(&[("authorization", &bearer(&token))])
            .tenant
            .as_deref(),
        Some("deep")
    );
    rejected_token(
        &mut router,
        &sign("HS256", claims(json!({"org": {"tenant": "flat"}}))),
        Reason::TenantMissing,
    );

    value["tenant_claim"] = json!(["https://example.com/tenant"]);
    let mut router = Router::from_json(&value);
    let token = sign(
        "HS256",
        claims(json!({"https://example.com/tenant": "namespaced"})),
    );
    assert_eq!(
        router
            .request(&[("authorization", &bearer(&token))])
            .tenant
            .as_deref(),
        Some("namespaced")
    );

    value["tenant_claim"] = json!("sub");
    let mut router = Router::from_json(&value);
    let token = sign("HS256", tenant_claims("ignored"));
    assert_eq!(
        router
            .request(&[("authorization", &bearer(&token))])
            .tenant
            .as_deref(),
        Some("user-1")
    );
}

#[test]
fn tokens_from_query_parameters_and_cookies() {
    let mut value = base_config();
    value["token"] = json!({"query_param": "access_token", "cookie": "session"});
    let mut router = Router::from_json(&value);
    let token = sign("HS256", tenant_claims("q1"));
    let path = format!("/v1/x?a=1&access_token={token}&b=2");
    assert_eq!(
        router.request(&[(":path", &path)]).tenant.as_deref(),
        Some("q1")
    );
    let encoded = format!("/v1/x?access_token={}", token.replace('.', "%2E"));
    assert_eq!(
        router.request(&[(":path", &encoded)]).tenant.as_deref(),
        Some("q1")
    );
    let twice = format!("/v1/x?access_token={token}&access_token={token}");
    assert_rejected(&mut router, &[(":path", &twice)], Reason::MultipleTokens);
    assert_rejected(
        &mut router,
        &[(":path", "/v1/x?access_token=%zz")],
        Reason::Malformed,
    );

    let cookie = format!("theme=dark; session={token}; lang=en");
    assert_eq!(
        router.request(&[("cookie", &cookie)]).tenant.as_deref(),
        Some("q1")
    );
    let quoted = format!("session=\"{token}\"");
    assert_eq!(
        router.request(&[("cookie", &quoted)]).tenant.as_deref(),
        Some("q1")
    );
    assert_rejected(
        &mut router,
        &[("cookie", &cookie), ("cookie", &format!("session={token}"))],
        Reason::MultipleTokens,
    );
    // The header wins over the query and the cookie.
    let other = sign("HS256", tenant_claims("h1"));
    let decision = router.request(&[
        ("authorization", &bearer(&other)),
        (":path", &path),
        ("cookie", &cookie),
    ]);
    assert_eq!(decision.tenant.as_deref(), Some("h1"));
    assert_rejected(
        &mut router,
        &[(":path", "/v1/x?other=1")],
        Reason::MissingToken,
    );
}

#[test]
fn custom_header_without_prefix() {
    let mut value = base_config();
    value["token"] = json!({"header": "x-jwt", "prefix": ""});
    let mut router = Router::from_json(&value);
    let token = sign("ES384", tenant_claims("t9"));
    assert_eq!(
        router.request(&[("x-jwt", &token)]).tenant.as_deref(),
        Some("t9")
    );
    // The Authorization header is not looked at then.
    assert_rejected(
        &mut router,
        &[("authorization", &bearer(&token))],
        Reason::MissingToken,
    );
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let mut router = Router::from_json(&base_config());
    let token = sign("HS256", tenant_claims("t1"));
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let value = format!("{scheme} {token}");
        assert_eq!(
            router
                .request(&[("authorization", &value)])
                .tenant
                .as_deref(),
            Some("t1")
        );
    }
}

mod never_panics {
    use super::*;
    use cell_router_filter::token::verify;
    use proptest::prelude::*;

    fn settings() -> &'static cell_router_filter::config::JwtSettings {
        static CONFIG: std::sync::OnceLock<cell_router_filter::Config> = std::sync::OnceLock::new();
        CONFIG.get_or_init(|| config(&base_config())).jwt().unwrap()
    }

    fn header_payload(alg: &str) -> String {
        let header = json!({"alg": alg, "kid": kid_for(alg)}).to_string();
        format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(payload_json("t1").as_bytes())
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random signatures of any length, for every algorithm: refused, no panic.
        #[test]
        fn random_signatures_are_refused(
            alg in proptest::sample::select(ALL_ALGORITHMS.to_vec()),
            signature in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let token = format!("{}.{}", header_payload(alg), b64url(&signature));
            let result = verify(settings(), 256, token.as_bytes(), NOW);
            prop_assert!(result.is_err());
        }

        /// Arbitrary bytes and arbitrary base64url/dot strings: no panic, no
        /// acceptance.
        #[test]
        fn arbitrary_tokens_are_refused(
            raw in proptest::collection::vec(any::<u8>(), 0..400),
            text in "[A-Za-z0-9_.-]{0,400}",
        ) {
            prop_assert!(verify(settings(), 256, &raw, NOW).is_err());
            prop_assert!(verify(settings(), 256, text.as_bytes(), NOW).is_err());
        }

        /// Any JSON in the header and payload (MACed correctly): no panic.
        #[test]
        fn arbitrary_json_in_a_correctly_signed_token(
            header in "\\{(\"[a-z]{1,4}\":(\"[A-Za-z0-9]{0,6}\"|[0-9]{1,3}|null|\\[\\]),?){0,5}\"alg\":\"HS256\"\\}",
            payload in "\\{(\"[a-z_]{1,9}\":(\"[A-Za-z0-9]{0,6}\"|-?[0-9]{1,12}|true|\\{\\}|\\[1\\]),?){0,8}\"x\":1\\}",
        ) {
            let token = raw_hs256(&hs_secret(), &header, &payload);
            let _ = verify(settings(), 256, token.as_bytes(), NOW);
        }
    }
}
