//! The JWT and header attack suite of issue 7, black-box through the real
//! filter `.wasm` in the wasmtime host. Every case carries spoofed cell and
//! version headers; each must get its documented status (filter/README.md,
//! "Rejections") and no forged identity may reach a cell: a refused request
//! is never forwarded, and a forwarded one carries exactly one cell header,
//! the router's.
//!
//! Already covered in wasm_tokens.rs (not repeated here, except inside the
//! spoofing table): alg none/None/nOnE/NONE, HS256 signed with the RSA
//! public key, unknown kid, crit, exp/nbf well outside the skew, wrong
//! iss/aud, aud as an array, oversized tokens, malformed compact forms,
//! two Authorization headers, non-UTF-8 header bytes, tenant of object type.
//! wasm_routing.rs covers the spoofed header in three spellings.
//!
//! Snapshot pools (workflow affinity by path prefix) do not exist in the
//! mapping format, so "path tricks against pool prefix rules" are N/A: the
//! path never influences routing (checked below anyway).

use cell_router_kit::fixtures::{
    AUDIENCE, Config, ISSUER, TENANT_CLAIM, bearer, metric, parsed, snapshot, token, token_builder,
};
use cell_router_kit::tokens::{
    Alg, RawSignature, alg_none_token, hs256_signed_with_rsa_public_key, keys, raw_token,
    raw_token_from_parts,
};
use cell_router_wasm_host::{Exchange, Host, Request};
use serde_json::{Value, json};
use std::time::Duration;

/// Spellings of the cell and version headers a client might send.
const SPOOFS: [(&str, &str); 6] = [
    ("x-cell-id", "cell-evil"),
    ("X-Cell-Id", "cell-evil-2"),
    ("X-CELL-ID", "cell-evil-3"),
    ("x-CeLl-iD", "cell-evil-4"),
    ("X-Cell-Snapshot", "999999"),
    ("x-cell-snapshot", "0"),
];

fn router(config: Config) -> Host {
    let mut host = Host::new().expect("start the filter VM");
    host.configure(config.fallback(&snapshot(1)).json())
        .expect("configure the filter");
    host
}

fn hs_router() -> Host {
    router(Config::jwt(&[Alg::HS256, Alg::RS256]))
}

/// A request with this Authorization value and every spoofed header.
fn spoofed(authorization: &[u8]) -> Request {
    let mut request = Request::get("/v1/sms").header_bytes("authorization", authorization);
    for (name, value) in SPOOFS {
        request = request.header(name, value);
    }
    request
}

fn send_token(host: &mut Host, token: &str) -> Exchange {
    host.send(spoofed(bearer(token).as_bytes()))
        .expect("the VM must not trap")
}

/// The cell the mapping gives the tenant (its tokens have no subject: the
/// tenant is the split key; the request id plays no part).
fn expected_cell(tenant: &str, _r: &Exchange) -> String {
    let snapshot = parsed(&snapshot(1));
    let cell = snapshot
        .resolve(
            tenant.as_bytes(),
            &cell_router_mapping::Draws::unshed(tenant.as_bytes(), 0),
        )
        .routed_cell()
        .expect("all test cells are active");
    snapshot.cell(cell).unwrap().id.clone()
}

/// Forwarded with the router's own identity only.
fn assert_routed(r: &Exchange, tenant: &str) {
    assert!(r.forwarded(), "refused: {}", r.json());
    let expected = expected_cell(tenant, r);
    assert_eq!(r.header_all("x-cell-id"), vec![expected.as_bytes()]);
    assert_eq!(r.header_all("x-cell-snapshot"), vec![b"1".as_slice()]);
}

/// Refused with the documented status, error and reason (metric +1); never
/// forwarded, so no header of the client's reaches a cell.
fn assert_refused(host: &Host, before: i64, r: &Exchange, status: u16, error: &str, reason: &str) {
    assert_eq!(
        r.status(),
        Some(status),
        "{reason}: {} (forwarded with cell {:?})",
        String::from_utf8_lossy(r.body()),
        r.cell()
    );
    assert!(!r.forwarded(), "{reason}: forwarded");
    assert_eq!(r.json()["error"], error, "{reason}: {}", r.json());
    assert_eq!(
        host.metric(&metric::rejected(reason)).unwrap_or(0),
        before + 1,
        "{reason}: {}",
        r.json()
    );
    if status == 401 {
        let challenge = r.response_header("www-authenticate").unwrap_or("");
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    }
}

fn count(host: &Host, reason: &str) -> i64 {
    host.metric(&metric::rejected(reason)).unwrap_or(0)
}

/// The common refusal: 401 `invalid_token` for `reason`.
fn expect_invalid_token(host: &mut Host, token: &str, reason: &str) {
    expect_refused(host, token, 401, "invalid_token", reason);
}

fn expect_refused(host: &mut Host, token: &str, status: u16, error: &str, reason: &str) {
    let before = count(host, reason);
    let r = send_token(host, token);
    assert_refused(host, before, &r, status, error, reason);
}

fn claims(now: u64, tenant: Value) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600, TENANT_CLAIM: tenant})
}

fn hs256(header: &Value, payload: &Value) -> String {
    raw_token(
        header,
        payload,
        RawSignature::Hs256(keys().hmac_secret.clone()),
    )
}

fn hs_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT", "kid": Alg::HS256.default_kid()})
}

#[test]
fn known_attacks_with_spoofed_headers_are_refused_and_never_forwarded() {
    let mut host = hs_router();
    let now = host.now_unix();
    let c = claims(now, json!("victim"));
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "alg none",
            alg_none_token("none", &c),
            401,
            "invalid_token",
            "alg_none",
        ),
        (
            "alg None",
            alg_none_token("None", &c),
            401,
            "invalid_token",
            "alg_none",
        ),
        (
            "alg nOnE",
            alg_none_token("nOnE", &c),
            401,
            "invalid_token",
            "alg_none",
        ),
        (
            "alg none, signed anyway",
            hs256(&json!({"alg": "none"}), &c),
            401,
            "invalid_token",
            "alg_none",
        ),
        (
            "HS256 with the RSA public key",
            hs256_signed_with_rsa_public_key(&Alg::RS256.default_kid(), &c),
            401,
            "invalid_token",
            "key_alg_mismatch",
        ),
        (
            "crit",
            hs256(
                &json!({"alg": "HS256", "kid": "hs256", "crit": ["b64"], "b64": false}),
                &c,
            ),
            401,
            "invalid_token",
            "unsupported_crit",
        ),
        (
            "wrong issuer",
            hs256(
                &hs_header(),
                &json!({"iss": "https://evil", "aud": AUDIENCE, "exp": now + 60, TENANT_CLAIM: "victim"}),
            ),
            401,
            "invalid_token",
            "wrong_issuer",
        ),
        (
            "wrong audience",
            hs256(
                &hs_header(),
                &json!({"iss": ISSUER, "aud": "other", "exp": now + 60, TENANT_CLAIM: "victim"}),
            ),
            403,
            "audience_not_allowed",
            "wrong_audience",
        ),
        (
            "audience array without an allowed member",
            hs256(
                &hs_header(),
                &json!({"iss": ISSUER, "aud": ["a", "b"], "exp": now + 60, TENANT_CLAIM: "victim"}),
            ),
            403,
            "audience_not_allowed",
            "wrong_audience",
        ),
        (
            "signed by another key",
            token_builder(Alg::RS256, now, "victim")
                .signed_by_other_key()
                .sign(),
            401,
            "invalid_token",
            "bad_signature",
        ),
    ];
    for (what, t, status, error, reason) in cases {
        let before = count(&host, reason);
        let r = send_token(&mut host, &t);
        // Shown with a failure: which of the cases it was.
        eprintln!("case: {what}");
        assert_refused(&host, before, &r, status, error, reason);
    }
    // The same spoofed request with a good token: routed by the router.
    let r = send_token(&mut host, &token(Alg::HS256, now, "victim"));
    assert_routed(&r, "victim");
}

#[test]
fn kids_with_paths_or_odd_bytes_name_no_key() {
    let mut host = hs_router();
    let now = host.now_unix();
    let c = claims(now, json!("acme"));
    let long = "k".repeat(4096);
    for kid in [
        "../../etc/passwd",
        "/dev/null",
        "..\\..\\windows\\win.ini",
        "hs256\u{0}",
        "\u{0}",
        "hs256/../hs256",
        "' OR '1'='1",
        "http://evil.example/key",
        "",
        "HS256",
        long.as_str(),
    ] {
        let header = json!({"alg": "HS256", "kid": kid});
        expect_invalid_token(&mut host, &hs256(&header, &c), "unknown_kid");
    }
    // A kid that is not a string is a malformed header (`"kid": null` is
    // the same as no kid).
    for kid in [json!(1), json!(["hs256"]), json!({"kid": "hs256"})] {
        let header = json!({"alg": "HS256", "kid": kid});
        expect_invalid_token(&mut host, &hs256(&header, &c), "malformed");
    }
}

#[test]
fn key_urls_and_embedded_keys_in_the_header_are_never_trusted() {
    let mut host = hs_router();
    let now = host.now_unix();
    let c = claims(now, json!("victim"));
    // The attacker's own key, "published" at a URL or embedded in the token.
    let attacker_secret = b"attacker-controlled-secret-32-bytes!".to_vec();
    let attacker_jwk =
        json!({"kty": "oct", "k": cell_router_kit::tokens::b64url(&attacker_secret)});
    let signed_by_attacker =
        |header: Value| raw_token(&header, &c, RawSignature::Hs256(attacker_secret.clone()));
    for header in [
        json!({"alg": "HS256", "kid": "hs256", "jku": "https://evil.example/jwks.json"}),
        json!({"alg": "HS256", "kid": "hs256", "x5u": "https://evil.example/cert.pem"}),
        json!({"alg": "HS256", "kid": "hs256", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}),
        json!({"alg": "HS256", "jku": "https://evil.example/jwks.json"}),
    ] {
        expect_invalid_token(&mut host, &signed_by_attacker(header), "bad_signature");
    }
    // An embedded jwk (the attacker's key) with or without a kid.
    for header in [
        json!({"alg": "HS256", "jwk": attacker_jwk}),
        json!({"alg": "HS256", "kid": "attacker", "jwk": attacker_jwk}),
        json!({"alg": "HS256", "kid": "hs256", "jwk": attacker_jwk}),
    ] {
        let r = send_token(&mut host, &signed_by_attacker(header.clone()));
        assert_eq!(r.status(), Some(401), "{header}");
        assert_eq!(r.json()["error"], "invalid_token");
        assert!(!r.forwarded());
    }
    // jku/x5u on a token signed by the configured key change nothing: the
    // key comes from the JWKS, the URLs are ignored.
    let t = hs256(
        &json!({"alg": "HS256", "kid": "hs256", "jku": "https://evil.example/jwks.json", "x5u": "https://evil.example/x"}),
        &c,
    );
    assert_routed(&send_token(&mut host, &t), "victim");
}

#[test]
fn time_claims_are_exact_at_the_skew_edge() {
    // Default skew 60 s; the host clock is whole seconds and moves only when
    // the test says.
    let mut host = hs_router();
    let now = host.now_unix();
    let with = |iat: u64, exp: u64, nbf: Option<u64>| {
        let mut c =
            json!({"iss": ISSUER, "aud": AUDIENCE, "iat": iat, "exp": exp, TENANT_CLAIM: "edge"});
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        hs256(&hs_header(), &c)
    };
    // exp: now - 60 is still inside the skew, now - 61 is not.
    let at_edge = with(now - 3600, now - 60, None);
    assert_routed(&send_token(&mut host, &at_edge), "edge");
    expect_invalid_token(&mut host, &with(now - 3600, now - 61, None), "expired");
    // One second later the cached verification must not serve it.
    host.advance_clock(Duration::from_secs(1));
    expect_invalid_token(&mut host, &at_edge, "expired");

    let now = host.now_unix();
    // nbf: now + 60 is accepted, now + 61 is not yet valid.
    assert_routed(
        &send_token(&mut host, &with(now, now + 600, Some(now + 60))),
        "edge",
    );
    let early = with(now, now + 600, Some(now + 61));
    expect_invalid_token(&mut host, &early, "not_yet_valid");
    // ... and becomes valid when the clock reaches it.
    host.advance_clock(Duration::from_secs(1));
    assert_routed(&send_token(&mut host, &early), "edge");

    let now = host.now_unix();
    // iat in the future: now + 60 passes, now + 61 is refused.
    assert_routed(
        &send_token(&mut host, &with(now + 60, now + 600, None)),
        "edge",
    );
    expect_invalid_token(
        &mut host,
        &with(now + 61, now + 600, None),
        "issued_in_future",
    );
    expect_invalid_token(
        &mut host,
        &with(now + 86_400 * 365, now + 86_400 * 366, None),
        "issued_in_future",
    );

    // A zero skew moves the edges to the second.
    let mut host = router(Config::jwt(&[Alg::HS256]).set("clock_skew_s", 0));
    let now = host.now_unix();
    assert_routed(&send_token(&mut host, &with(now - 10, now, None)), "edge");
    expect_invalid_token(&mut host, &with(now - 10, now - 1, None), "expired");
    expect_invalid_token(
        &mut host,
        &with(now, now + 60, Some(now + 1)),
        "not_yet_valid",
    );
    expect_invalid_token(
        &mut host,
        &with(now + 1, now + 60, None),
        "issued_in_future",
    );
}

#[test]
fn time_claims_of_the_wrong_type_or_absurd_size_are_refused() {
    let mut host = hs_router();
    let now = host.now_unix();
    for exp in [
        json!("9999999999"),
        json!(null),
        json!([now + 60]),
        json!({"t": now + 60}),
        json!(-1),
        json!(0),
    ] {
        let c = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": exp, TENANT_CLAIM: "acme"});
        let r = send_token(&mut host, &hs256(&hs_header(), &c));
        assert_eq!(r.status(), Some(401), "exp {exp}: {}", r.json());
        assert!(!r.forwarded());
    }
    // A float exp (jwt-simple reads numbers as f64 seconds): far-future
    // values are accepted like any far-future exp the issuer signed, i.e.
    // only the trusted key can make one; never a trap.
    for exp in [
        json!(1e300),
        json!(f64::MAX),
        json!((now + 60) as f64 + 0.5),
    ] {
        let c = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": exp, TENANT_CLAIM: "acme"});
        let r = send_token(&mut host, &hs256(&hs_header(), &c));
        if r.forwarded() {
            assert_routed(&r, "acme");
        } else {
            assert_eq!(r.status(), Some(401), "exp {exp}");
        }
    }
}

#[test]
fn audience_arrays_need_one_allowed_member() {
    let mut host = hs_router();
    let now = host.now_unix();
    let with_aud = |aud: Value| {
        hs256(
            &hs_header(),
            &json!({"iss": ISSUER, "aud": aud, "exp": now + 60, TENANT_CLAIM: "acme"}),
        )
    };
    assert_routed(
        &send_token(&mut host, &with_aud(json!(["x", AUDIENCE, "y"]))),
        "acme",
    );
    assert_routed(&send_token(&mut host, &with_aud(json!([AUDIENCE]))), "acme");
    for aud in [
        json!([]),
        json!(["cell-router "]),
        json!(["CELL-ROUTER"]),
        json!([["cell-router"]]),
    ] {
        let r = send_token(&mut host, &with_aud(aud.clone()));
        assert!(
            matches!(r.status(), Some(401 | 403)),
            "aud {aud}: {}",
            r.json()
        );
        assert!(!r.forwarded(), "aud {aud}");
    }
    // Issuers are compared exactly as well.
    for iss in [
        format!("{ISSUER}/"),
        ISSUER.to_uppercase(),
        format!("{ISSUER}\u{0}"),
    ] {
        let t = hs256(
            &hs_header(),
            &json!({"iss": iss, "aud": AUDIENCE, "exp": now + 60, TENANT_CLAIM: "acme"}),
        );
        expect_invalid_token(&mut host, &t, "wrong_issuer");
    }
}

#[test]
fn huge_and_deeply_nested_tokens_do_not_trap() {
    let mut host = hs_router();
    let now = host.now_unix();
    // Deep nesting inside the size limit: refused or routed, never a trap.
    for depth in [64, 127, 128, 129, 1000, 2000] {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let payload = format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"{TENANT_CLAIM}":"acme","deep":{nested}}}"#,
            now + 60
        );
        let t = raw_token_from_parts(
            hs_header().to_string().as_bytes(),
            payload.as_bytes(),
            RawSignature::Hs256(keys().hmac_secret.clone()),
        );
        let r = send_token(&mut host, &t);
        if r.forwarded() {
            assert_routed(&r, "acme");
        } else {
            assert_eq!(r.status(), Some(401), "depth {depth}: {}", r.json());
        }
    }
    // Deep objects in the tenant claim's path.
    let mut deep = json!("acme");
    for _ in 0..100 {
        deep = json!({ "a": deep });
    }
    let t = hs256(
        &hs_header(),
        &json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60, TENANT_CLAIM: deep}),
    );
    expect_refused(&mut host, &t, 403, "tenant_invalid", "tenant_invalid");
    // Deep nesting in the header.
    let header = format!(
        r#"{{"alg":"HS256","kid":"hs256","x":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let t = raw_token_from_parts(
        header.as_bytes(),
        claims(now, json!("acme")).to_string().as_bytes(),
        RawSignature::Empty,
    );
    let r = host.send(spoofed(bearer(&t).as_bytes())).unwrap();
    assert_eq!(r.status(), Some(401));

    // Huge: just over the default limit, and a megabyte.
    for size in [8193, 65_536, 1 << 20] {
        expect_invalid_token(&mut host, &"a".repeat(size), "too_large");
    }
}

#[test]
fn duplicate_json_keys_are_refused_wherever_they_are() {
    let mut host = hs_router();
    let now = host.now_unix();
    let sign = |header: &str, payload: &str| {
        raw_token_from_parts(
            header.as_bytes(),
            payload.as_bytes(),
            RawSignature::Hs256(keys().hmac_secret.clone()),
        )
    };
    let h = r#"{"alg":"HS256","kid":"hs256"}"#;
    let base = format!(r#""iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{}"#, now + 60);
    for payload in [
        format!(r#"{{{base},"{TENANT_CLAIM}":"a","{TENANT_CLAIM}":"b"}}"#),
        format!(r#"{{{base},"{TENANT_CLAIM}":"a","x":{{"k":1,"k":2}}}}"#),
        format!(r#"{{{base},"{TENANT_CLAIM}":"a","iss":"https://evil"}}"#),
        format!(r#"{{{base},"{TENANT_CLAIM}":"a","exp":{}}}"#, now + 999_999),
    ] {
        let r = send_token(&mut host, &sign(h, &payload));
        assert_eq!(r.status(), Some(401), "{payload}: {}", r.json());
        assert_eq!(r.json()["error"], "invalid_token");
    }
    // In the header: two algs, two kids.
    for header in [
        r#"{"alg":"none","alg":"HS256","kid":"hs256"}"#,
        r#"{"alg":"HS256","kid":"evil","kid":"hs256"}"#,
    ] {
        let payload = format!(r#"{{{base},"{TENANT_CLAIM}":"a"}}"#);
        let r = send_token(&mut host, &sign(header, &payload));
        assert_eq!(r.status(), Some(401), "{header}: {}", r.json());
        assert!(!r.forwarded());
    }
}

#[test]
fn bad_base64_is_malformed() {
    let mut host = hs_router();
    let good = token(Alg::HS256, host.now_unix(), "acme");
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let cases = [
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}==.{s}"),
        format!("{h}.{p}.{s}="),
        format!("{h}.{p}.{s}=="),
        // Standard-alphabet characters are not base64url.
        format!("{h}.{p}+/.{s}"),
        // (Replacing a character rather than '-'/'_', which a signature may not contain.)
        format!("{h}.{p}.+{}", &s[1..]),
        format!("{h}.{p}.{}/", &s[..s.len() - 1]),
        // A stray character that changes the length mod 4 to 1.
        format!("{h}.{p}A.{s}"),
        format!("{h}.{p}.{s}A"),
        format!(".{p}.{s}"),
        format!("{h}..{s}"),
        format!("{h}.{p}."),
        format!("{h}.{p}.{s}."),
    ];
    for t in &cases {
        let r = send_token(&mut host, t);
        assert_eq!(r.status(), Some(401), "{t}: {}", r.json());
        assert_eq!(r.json()["error"], "invalid_token", "{t}");
        assert!(!r.forwarded());
    }
    assert!(count(&host, "malformed") + count(&host, "bad_signature") >= cases.len() as i64 - 1);
    // The untouched token still routes.
    assert_routed(&send_token(&mut host, &good), "acme");
}

#[test]
fn nul_and_non_utf8_bytes_in_the_token_are_malformed() {
    let mut host = hs_router();
    let good = token(Alg::HS256, host.now_unix(), "acme");
    let at = good.find('.').unwrap();
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for junk in [
        &b"\0"[..],
        b"\xff",
        b"\xc3\x28",
        b"\r\n",
        b"\x7f",
        "é".as_bytes(),
    ] {
        let mut v = format!("Bearer {}", &good[..at]).into_bytes();
        v.extend_from_slice(junk);
        v.extend_from_slice(&good.as_bytes()[at..]);
        cases.push(v);
        let mut v = format!("Bearer {good}").into_bytes();
        v.extend_from_slice(junk);
        cases.push(v);
    }
    for value in cases {
        let before = count(&host, "malformed");
        let r = host.send(spoofed(&value)).expect("no trap");
        assert_refused(&host, before, &r, 401, "invalid_token", "malformed");
    }
    // The scheme itself with junk is "no token".
    let r = host.send(spoofed(b"Bearer\0abc")).unwrap();
    assert_eq!(r.status(), Some(401));
    assert!(!r.forwarded());
}

#[test]
fn several_authorization_headers_are_refused_in_any_spelling() {
    let mut host = hs_router();
    let now = host.now_unix();
    let good = bearer(&token(Alg::HS256, now, "acme"));
    let evil = bearer(&token(Alg::HS256, now, "victim"));
    for names in [
        ["authorization", "Authorization", ""],
        ["AUTHORIZATION", "authorization", "AuThOrIzAtIoN"],
        ["authorization", "authorization", "authorization"],
    ] {
        let mut request = spoofed(good.as_bytes());
        for name in names.iter().filter(|n| !n.is_empty()) {
            request = request.header(name, &evil);
        }
        let before = count(&host, "multiple_tokens");
        let r = host.send(request).unwrap();
        assert_refused(&host, before, &r, 401, "invalid_token", "multiple_tokens");
    }
    // The same token twice is still two headers.
    let request = spoofed(good.as_bytes()).header("authorization", &good);
    let before = count(&host, "multiple_tokens");
    let r = host.send(request).unwrap();
    assert_refused(&host, before, &r, 401, "invalid_token", "multiple_tokens");
    // An empty second copy too.
    let request = spoofed(good.as_bytes()).header("authorization", "");
    let r = host.send(request).unwrap();
    assert_eq!(r.status(), Some(401));
}

#[test]
fn tenant_claims_of_the_wrong_type_empty_or_with_control_characters() {
    let mut host = hs_router();
    let now = host.now_unix();
    for tenant in [
        json!(true),
        json!(1.5),
        json!(["acme"]),
        json!({"id": "acme"}),
        json!(""),
        json!("acme\n"),
        json!("ac\u{0}me"),
        json!("\u{7f}"),
        json!("a\u{85}b"),
        json!("tab\there"),
        json!("x".repeat(257)),
    ] {
        let t = hs256(&hs_header(), &claims(now, tenant.clone()));

        let before = count(&host, "tenant_invalid");
        let r = send_token(&mut host, &t);
        assert_refused(&host, before, &r, 403, "tenant_invalid", "tenant_invalid");
    }
    // null is a missing tenant.
    let t = hs256(&hs_header(), &claims(now, Value::Null));
    let r = send_token(&mut host, &t);
    assert_eq!(r.status(), Some(403));
    assert!(matches!(
        r.json()["error"].as_str(),
        Some("tenant_missing" | "tenant_invalid")
    ));
    // Unicode that is not a control character is a tenant like any other,
    // routed by its exact bytes.
    for tenant in ["ÄCME", "租户", "a b", "0", "-1"] {
        let t = hs256(&hs_header(), &claims(now, json!(tenant)));
        assert_routed(&send_token(&mut host, &t), tenant);
    }
    // A large integer becomes its decimal text.
    let t = hs256(&hs_header(), &claims(now, json!(u64::MAX)));
    assert_routed(&send_token(&mut host, &t), &u64::MAX.to_string());
}

#[test]
fn spoofed_cell_headers_in_every_spelling_and_count_are_replaced() {
    let mut host = hs_router();
    let now = host.now_unix();
    let t = token(Alg::HS256, now, "acme");
    // Many copies, every case variant, junk bytes, empty values.
    let mut request = spoofed(bearer(&t).as_bytes());
    for i in 0..50 {
        request = request.header(
            if i % 2 == 0 { "x-cell-id" } else { "X-Cell-ID" },
            &format!("cell-{i}"),
        );
    }
    request = request
        .header_bytes("x-cell-id", b"\xff\x00cell-a")
        .header("x-cell-id", "")
        .header("X-CELL-SNAPSHOT", "1");
    let r = host.send(request).unwrap();
    assert_routed(&r, "acme");

    // trust_header mode: the same rule.
    let mut host = router(Config::trust_header("x-tenant"));
    let r = host
        .send(spoofed(b"ignored").header("x-tenant", "acme"))
        .unwrap();
    assert_routed(&r, "acme");
    // Refused requests in trust_header mode are not forwarded either.
    let r = host.send(spoofed(b"ignored")).unwrap();
    assert_eq!(r.status(), Some(401));
    assert!(!r.forwarded());
}

#[test]
fn the_path_never_chooses_the_cell() {
    // No pools: the cell depends on the tenant only, whatever the path.
    let mut host = hs_router();
    let t = bearer(&token(Alg::HS256, host.now_unix(), "acme"));
    let mut cells = std::collections::BTreeSet::new();
    for path in [
        "/",
        "/v1/sms",
        "/../cell-b/",
        "//x-cell-id/cell-c",
        "/%2e%2e/",
        "/a?x-cell-id=cell-c",
    ] {
        let r = host
            .send(
                Request::get(path)
                    .header("authorization", &t)
                    .header("x-request-id", "fixed"),
            )
            .unwrap();
        assert_routed(&r, "acme");
        cells.insert(r.cell().unwrap().to_string());
    }
    assert_eq!(cells.len(), 1);
}
