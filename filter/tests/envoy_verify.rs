//! Signatures checked by the host (Envoy's `verify_signature`, here an
//! independent RustCrypto stand-in): which algorithms go there, fallbacks,
//! and that the host path answers exactly like the VM path.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::decide::Outcome;
use cell_router_filter::envoy_verify::HostVerdict;
use cell_router_filter::token::Reason;
use common::*;
use jwt_simple::prelude::*;
use proptest::prelude::*;
use serde_json::json;

fn no_cache() -> serde_json::Value {
    let mut value = base_config();
    value["token_cache_entries"] = json!(0);
    value
}

#[test]
fn rsa_pkcs1_and_ecdsa_go_to_the_host_the_rest_stays_in_the_vm() {
    let mut router = Router::from_json(&no_cache());
    for alg in ALL_ALGORITHMS {
        let mut host = RustCryptoHost::new();
        let token = bearer(&sign(alg, tenant_claims("t-b")));
        let decision = router.request_with_host(&[("authorization", &token)], &mut host);
        assert_eq!(decision.routed_cell(), Some("b"), "{alg}");
        let on_host = matches!(alg, "RS256" | "RS384" | "RS512" | "ES256" | "ES384");
        assert_eq!(decision.verified_by_host, Some(on_host), "{alg}");
        assert_eq!(host.calls, usize::from(on_host), "{alg}");
    }
}

#[test]
fn forged_tokens_are_refused_by_the_host() {
    let mut router = Router::from_json(&no_cache());
    let other = RS256KeyPair::from_pem(&key_file("rsa2048-other.pem"))
        .unwrap()
        .with_key_id("rsa-1")
        .sign(tenant_claims("t1"))
        .unwrap();
    let mut host = RustCryptoHost::new();
    let decision = router.request_with_host(&[("authorization", &bearer(&other))], &mut host);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::BadSignature));
    assert_eq!(host.calls, 1);

    for alg in ["RS256", "RS512", "ES256", "ES384"] {
        let token = sign(alg, tenant_claims("t1"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64url(payload_json("victim").as_bytes()),
            parts[2]
        );
        let mut host = RustCryptoHost::new();
        let decision = router.request_with_host(&[("authorization", &bearer(&forged))], &mut host);
        assert_eq!(
            decision.outcome,
            Outcome::Rejected(Reason::BadSignature),
            "{alg}"
        );
        assert_eq!(host.calls, 1, "{alg}");
        // A truncated ECDSA signature never reaches the host.
        let short = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        let mut host = RustCryptoHost::new();
        let decision = router.request_with_host(&[("authorization", &bearer(&short))], &mut host);
        assert_eq!(decision.reply().unwrap().status, 401, "{alg}");
    }
}

#[test]
fn the_host_verdict_is_final_when_it_gives_one() {
    let mut router = Router::from_json(&no_cache());
    let token = bearer(&sign("ES256", tenant_claims("t-b")));
    let mut host = RustCryptoHost::new();
    host.forced = Some(HostVerdict::Invalid);
    let decision = router.request_with_host(&[("authorization", &token)], &mut host);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::BadSignature));
}

#[test]
fn an_unavailable_host_falls_back_to_the_vm() {
    let mut router = Router::from_json(&no_cache());
    let token = bearer(&sign("RS256", tenant_claims("t-b")));
    let mut host = RustCryptoHost::new();
    host.available = false;
    let decision = router.request_with_host(&[("authorization", &token)], &mut host);
    assert_eq!(decision.routed_cell(), Some("b"));
    assert_eq!(decision.verified_by_host, Some(false));
    assert_eq!(host.calls, 1);
}

#[test]
fn host_signatures_can_be_turned_off() {
    let mut value = no_cache();
    value["host_signatures"] = json!(false);
    let mut router = Router::from_json(&value);
    let token = bearer(&sign("RS256", tenant_claims("t-b")));
    let mut host = RustCryptoHost::new();
    let decision = router.request_with_host(&[("authorization", &token)], &mut host);
    assert_eq!(
        (decision.routed_cell(), decision.verified_by_host),
        (Some("b"), Some(false))
    );
    assert_eq!(host.calls, 0);
}

#[test]
fn header_rules_hold_on_the_host_path() {
    let mut router = Router::from_json(&no_cache());
    // typ must be JWT (or *+jwt), as jwt-simple requires.
    for (typ, ok) in [("JWT", true), ("at+jwt", true), ("JOSE", false)] {
        let pair = ES256KeyPair::from_pem(&key_file("ec256.pem"))
            .unwrap()
            .with_key_id("ec256-1");
        let options = HeaderOptions {
            signature_type: Some(typ.to_string()),
            ..HeaderOptions::default()
        };
        let token = pair
            .sign_with_options(tenant_claims("t-b"), &options)
            .unwrap();
        let mut host = RustCryptoHost::new();
        let decision = router.request_with_host(&[("authorization", &bearer(&token))], &mut host);
        let mut vm = Router::from_json(&no_cache());
        let in_vm = vm.request(&[("authorization", &bearer(&token))]);
        assert_eq!(decision.routed_cell().is_some(), ok, "{typ}");
        assert_eq!(decision.outcome, in_vm.outcome, "{typ}");
    }
}

#[derive(Debug, Clone)]
struct ClaimCase {
    now_offset: i64,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    issuer: Option<&'static str>,
    audience: Option<Vec<&'static str>>,
}

fn claim_case() -> impl Strategy<Value = ClaimCase> {
    // Boundaries of the 60 s skew, and anything else.
    let offset = || {
        prop_oneof![
            proptest::sample::select(vec![-61i64, -60, -59, -1, 0, 1, 59, 60, 61]),
            -70i64..70,
            -4000i64..4000,
        ]
    };
    (
        prop_oneof![Just(0i64), -100i64..100],
        proptest::option::of(offset()),
        proptest::option::of(offset()),
        proptest::option::of(offset()),
        proptest::option::of(proptest::sample::select(vec![ISSUER, "https://evil.test"])),
        proptest::option::of(proptest::sample::select(vec![
            vec![AUDIENCE],
            vec!["other"],
            vec!["other", AUDIENCE],
            vec![],
        ])),
    )
        .prop_map(|(now_offset, exp, nbf, iat, issuer, audience)| ClaimCase {
            now_offset,
            exp,
            nbf,
            iat,
            issuer,
            audience,
        })
}

fn at(offset: i64) -> UnixTimeStamp {
    UnixTimeStamp::from_secs(NOW.checked_add_signed(offset).unwrap())
}

fn shared_router() -> Router {
    static CONFIG: std::sync::OnceLock<cell_router_filter::Config> = std::sync::OnceLock::new();
    Router::new(CONFIG.get_or_init(|| config(&no_cache())).clone())
}

/// Every combination of the skew boundaries, deterministically.
#[test]
fn host_and_vm_paths_agree_at_every_time_boundary() {
    let edges = [None, Some(-61i64), Some(-60), Some(60), Some(61)];
    let mut router = shared_router();
    let mut compared = 0;
    for exp in edges {
        for nbf in edges {
            for iat in edges {
                let mut claims = tenant_claims("t-b");
                claims.expires_at = exp.map(at);
                claims.invalid_before = nbf.map(at);
                claims.issued_at = iat.map(at);
                let token = bearer(&sign("ES256", claims));
                // The signature is real (the VM checks it); the host's answer
                // is taken as given: this is about the claim checks.
                let mut host = RustCryptoHost::new();
                host.forced = Some(HostVerdict::Valid);
                let on_host = format!(
                    "{:?}",
                    router
                        .request_with_host(&[("authorization", &token)], &mut host)
                        .outcome
                );
                let in_vm = format!("{:?}", router.request(&[("authorization", &token)]).outcome);
                assert_eq!(on_host, in_vm, "exp {exp:?} nbf {nbf:?} iat {iat:?}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 125);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The host path re-implements jwt-simple's claim checks: for any
    /// timing, issuer and audience, both paths give the same answer.
    #[test]
    fn host_and_vm_paths_agree_on_claims(case in claim_case()) {
        let mut claims = tenant_claims("t-b");
        claims.expires_at = case.exp.map(at);
        claims.invalid_before = case.nbf.map(at);
        claims.issued_at = case.iat.map(at);
        claims.issuer = case.issuer.map(str::to_string);
        claims.audiences = case.audience.clone().map(|a| match a.as_slice() {
            [one] => Audiences::AsString(one.to_string()),
            many => Audiences::AsSet(many.iter().map(|s| s.to_string()).collect()),
        });
        let token = bearer(&sign("ES256", claims));
        let mut router = shared_router();
        router.now = NOW.checked_add_signed(case.now_offset).unwrap();
        let mut host = RustCryptoHost::new();
        host.forced = Some(HostVerdict::Valid);
        let on_host = router.request_with_host(&[("authorization", &token)], &mut host);
        let host_outcome = format!("{:?}", on_host.outcome);
        let by_host = on_host.verified_by_host;
        let in_vm = router.request(&[("authorization", &token)]);
        prop_assert_eq!(host_outcome, format!("{:?}", in_vm.outcome), "{:?}", case);
        prop_assert_eq!(host.calls, 1);
        if by_host.is_some() {
            prop_assert_eq!(by_host, Some(true));
        }
    }
}
