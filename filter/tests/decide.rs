//! The per-request decision: spoofed headers, every routing path, shedding
//! shares, unavailable cells, no snapshot, trust-header mode, the cache.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::decide::{Action, Outcome};
use cell_router_filter::token::Reason;
use cell_router_mapping::{Draws, Source};
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

fn token_for(tenant: &str) -> String {
    bearer(&sign("HS256", tenant_claims(tenant)))
}

#[test]
fn spoofed_cell_and_version_headers_are_removed_in_every_case() {
    let mut router = Router::from_json(&base_config());
    let token = token_for("t-b");
    for (cell, version) in [
        ("x-cell-id", "x-cell-snapshot"),
        ("X-Cell-Id", "X-CELL-SNAPSHOT"),
        ("X-CELL-ID", "x-Cell-Snapshot"),
    ] {
        let decision = router.request(&[
            ("authorization", &token),
            (cell, "a"),
            (cell, "evil"),
            (version, "999"),
        ]);
        assert_eq!(decision.remove, vec!["x-cell-id", "x-cell-snapshot"]);
        // The real values replace whatever the client sent.
        assert_eq!(decision.set_header("x-cell-id"), Some(&b"b"[..]));
        assert_eq!(decision.set_header("x-cell-snapshot"), Some(&b"1"[..]));
    }
    // Also when the request is refused, and untouched when absent.
    let decision = router.request(&[("x-cell-id", "a")]);
    assert_eq!(decision.remove, vec!["x-cell-id"]);
    assert!(matches!(
        decision.outcome,
        Outcome::Rejected(Reason::MissingToken)
    ));
    let decision = router.request(&[("authorization", &token)]);
    assert!(decision.remove.is_empty());
}

#[test]
fn override_slot_failover_and_split_reasons() {
    let mut router = Router::from_json(&base_config());
    let route = |router: &mut Router, tenant: &str, request_id: &str| {
        let decision = router.request(&[
            ("authorization", &token_for(tenant)),
            ("x-request-id", request_id),
        ]);
        match decision.outcome {
            Outcome::Routed { cell, reason } => (cell.to_string(), reason),
            other => panic!("{tenant}: {other:?}"),
        }
    };
    assert_eq!(
        route(&mut router, "t-b", "r"),
        ("b".to_string(), "override")
    );
    assert_eq!(
        route(&mut router, "t-failover", "r"),
        ("a".to_string(), "failover")
    );
    let (cell, reason) = route(&mut router, "t-moving", "r");
    assert_eq!(reason, "split");
    assert!(cell == "a" || cell == "b");

    // Slot routing equals the mapping crate's answer for many tenants.
    let snapshot = snapshot(1);
    let mut seen = std::collections::HashSet::new();
    for i in 0..300 {
        let tenant = format!("tenant-{i}");
        let expected = snapshot.resolve(tenant.as_bytes(), &Draws::default());
        assert_eq!(expected.source, Source::Slot);
        let want = snapshot
            .cell(expected.routed_cell().unwrap())
            .unwrap()
            .id
            .clone();
        let (cell, reason) = route(&mut router, &tenant, "r");
        assert_eq!((cell.as_str(), reason), (want.as_str(), "slot"), "{tenant}");
        seen.insert(cell);
    }
    assert_eq!(seen.len(), 2, "both slot cells are used");
}

/// A 30 % move splits the tenant's users (token subjects), not its
/// requests: about 30 % of users go to b, each on every request whatever
/// its request id.
#[test]
fn gradual_move_splits_users_by_subject() {
    let mut router = Router::from_json(&base_config());
    let mut to_b = 0;
    let n = 4000;
    for i in 0..n {
        let mut claims = tenant_claims("t-moving");
        claims.subject = Some(format!("user-{i}"));
        let token = bearer(&sign("HS256", claims));
        let mut cells = std::collections::BTreeSet::new();
        for id in ["r-1", "r-2", "r-3"] {
            let decision = router.request(&[("authorization", &token), ("x-request-id", id)]);
            cells.insert(decision.routed_cell().unwrap().to_string());
        }
        assert_eq!(cells.len(), 1, "user-{i} was split across {cells:?}");
        to_b += usize::from(cells.contains("b"));
    }
    let share = to_b as f64 / f64::from(n);
    // σ ≈ 0.72 % over 4,000 users.
    assert!((share - 0.30).abs() < 0.03, "share to b = {share}");
}

#[test]
fn draining_cell_sheds_its_share_with_retry_after() {
    let mut router = Router::from_json(&base_config());
    let token = token_for("t-draining");
    let n = 10_000;
    let mut shed = 0;
    let mut routed_to_c = 0;
    for i in 0..n {
        let id = format!("{i:08x}-request");
        let decision = router.request(&[("authorization", &token), ("x-request-id", &id)]);
        match decision.outcome {
            Outcome::Shed { cell } => {
                assert_eq!(cell, "c");
                let reply = decision.reply().unwrap();
                assert_eq!(reply.status, 503);
                assert_eq!(reply.header("retry-after"), Some("7"));
                assert_eq!(reply.header("content-type"), Some("application/json"));
                assert_eq!(reply.error_code().as_deref(), Some("cell_draining"));
                shed += 1;
            }
            Outcome::Routed { cell, .. } => {
                assert_eq!(cell, "c");
                routed_to_c += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let share = f64::from(shed) / f64::from(n);
    // shed_ratio 0.25; binomial σ ≈ 0.43 % over 10k requests.
    assert!((share - 0.25).abs() < 0.015, "shed share = {share}");
    assert_eq!(shed + routed_to_c, n);

    // The same request id is shed at the cell's share too: the draw is the
    // VM's, not a hash of the id (a client resending its id is not shed on
    // every retry, nor ever spared).
    let n = 4000;
    let shed = (0..n)
        .filter(|_| {
            let decision = router.request(&[("authorization", &token), ("x-request-id", "fixed")]);
            matches!(decision.outcome, Outcome::Shed { .. })
        })
        .count();
    let share = shed as f64 / f64::from(n);
    // σ ≈ 0.68 %.
    assert!((share - 0.25).abs() < 0.03, "fixed id shed share = {share}");
}

#[test]
fn without_request_id_shedding_still_spreads() {
    let mut router = Router::from_json(&base_config());
    let token = token_for("t-draining");
    let n = 10_000;
    let shed = (0..n)
        .filter(|_| {
            matches!(
                router.request(&[("authorization", &token)]).outcome,
                Outcome::Shed { .. }
            )
        })
        .count();
    let share = shed as f64 / f64::from(n);
    assert!((share - 0.25).abs() < 0.015, "shed share = {share}");
}

#[test]
fn disabled_cell_without_failover_is_503() {
    let mut router = Router::from_json(&base_config());
    let decision = router.request(&[("authorization", &token_for("t-down"))]);
    assert_eq!(decision.outcome, Outcome::Unavailable { cell: "e" });
    let reply = decision.reply().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code().as_deref(), Some("cell_unavailable"));
    // A disabled cell comes back: clients are told when to retry (its
    // retry_after_s).
    assert!(reply.header("retry-after").is_some());
}

#[test]
fn no_snapshot_is_503_but_tokens_are_still_checked() {
    let mut value = base_config();
    value.as_object_mut().unwrap().remove("fallback_snapshot");
    let mut router = Router::from_json(&value);
    assert!(router.installed.is_none());
    let decision = router.request(&[("authorization", &token_for("t1"))]);
    assert_eq!(decision.outcome, Outcome::NoSnapshot);
    let reply = decision.reply().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code().as_deref(), Some("no_snapshot"));
    assert_eq!(reply.header("retry-after"), Some("1"));
    // A bad token is still a 401, not a 503.
    let decision = router.request(&[("authorization", "Bearer x.y.z")]);
    assert_eq!(decision.reply().unwrap().status, 401);
}

#[test]
fn routed_requests_carry_cell_and_version_headers() {
    let mut value = base_config();
    value["cell_header"] = json!("x-cell");
    value["version_header"] = json!("x-map-version");
    value["fallback_snapshot"] = snapshot_json(42);
    let mut router = Router::from_json(&value);
    let decision = router.request(&[("authorization", &token_for("t-b"))]);
    match &decision.action {
        Action::Continue { set } => {
            assert_eq!(
                set,
                &vec![("x-cell", &b"b"[..]), ("x-map-version", &b"42"[..])]
            );
        }
        Action::Respond(reply) => panic!("{reply:?}"),
    }
}

fn trust_router() -> Router {
    Router::from_json(&json!({"trust_header": "x-tenant", "fallback_snapshot": snapshot_json(1)}))
}

#[test]
fn trust_header_mode_routes_without_token_work() {
    let mut router = trust_router();
    let decision = router.request(&[("x-tenant", "t-b"), ("authorization", "Bearer garbage")]);
    assert_eq!(decision.routed_cell(), Some("b"));
    assert_eq!(decision.cache_hit, None);

    let decision = router.request(&[("authorization", "Bearer garbage")]);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::MissingToken));
    assert_eq!(decision.reply().unwrap().status, 401);

    for headers in [
        vec![("x-tenant", "a"), ("x-tenant", "b")],
        vec![("x-tenant", "")],
        vec![("x-tenant", "a\tb")],
    ] {
        let decision = router.request(&headers);
        assert_eq!(
            decision.outcome,
            Outcome::Rejected(Reason::TenantInvalid),
            "{headers:?}"
        );
        assert_eq!(decision.reply().unwrap().status, 403);
    }
    let decision = router.request_bytes(&[(b"x-tenant", b"caf\xe9")]);
    assert_eq!(decision.outcome, Outcome::Rejected(Reason::TenantInvalid));
}

#[test]
fn token_cache_hits_skip_verification_until_expiry() {
    let mut router = Router::from_json(&base_config());
    let mut claims = tenant_claims("t-b");
    claims.expires_at = Some(jwt_simple::prelude::UnixTimeStamp::from_secs(NOW + 100));
    let token = bearer(&sign("RS256", claims));
    let first = router.request(&[("authorization", &token)]);
    assert_eq!(
        (first.cache_hit, first.routed_cell()),
        (Some(false), Some("b"))
    );
    let second = router.request(&[("authorization", &token)]);
    assert_eq!(
        (second.cache_hit, second.routed_cell()),
        (Some(true), Some("b"))
    );
    assert_eq!(router.vm.cache.len(), 1);

    // Past exp + skew the entry is not served: the token is re-verified and
    // refused as expired.
    router.now = NOW + 100 + 60;
    assert_eq!(
        router.request(&[("authorization", &token)]).cache_hit,
        Some(true)
    );
    router.now = NOW + 100 + 61;
    let late = router.request(&[("authorization", &token)]);
    assert_eq!(late.cache_hit, Some(false));
    assert_eq!(late.outcome, Outcome::Rejected(Reason::Expired));
    assert_eq!(router.vm.cache.len(), 0);

    // A clock that goes back before nbf is not fooled by the cache either.
    let mut router = Router::from_json(&base_config());
    let mut claims = tenant_claims("t-b");
    claims.invalid_before = Some(jwt_simple::prelude::UnixTimeStamp::from_secs(NOW));
    claims.issued_at = None;
    let token = bearer(&sign("HS256", claims));
    assert_eq!(
        router.request(&[("authorization", &token)]).routed_cell(),
        Some("b")
    );
    router.now = NOW - 120;
    let early = router.request(&[("authorization", &token)]);
    assert_eq!(early.outcome, Outcome::Rejected(Reason::NotYetValid));
}

#[test]
fn token_cache_is_bounded_and_can_be_disabled() {
    let mut value = base_config();
    value["token_cache_entries"] = json!(4);
    let mut router = Router::from_json(&value);
    let tokens: Vec<String> = (0..10).map(|i| token_for(&format!("t{i}"))).collect();
    for token in &tokens {
        assert_eq!(
            router.request(&[("authorization", token)]).cache_hit,
            Some(false)
        );
        assert!(router.vm.cache.len() <= 4);
    }
    assert_eq!(router.vm.cache.len(), 4);
    // The last token is still cached and still right.
    let last = router.request(&[("authorization", &tokens[9])]);
    assert_eq!(
        (last.cache_hit, last.tenant.as_deref()),
        (Some(true), Some("t9"))
    );

    value["token_cache_entries"] = json!(0);
    let mut router = Router::from_json(&value);
    for _ in 0..2 {
        let decision = router.request(&[("authorization", &tokens[0])]);
        assert_eq!(
            (decision.cache_hit, decision.tenant.as_deref()),
            (None, Some("t0"))
        );
    }
    assert_eq!(router.vm.cache.len(), 0);
}

#[test]
fn refused_tokens_are_not_cached() {
    let mut router = Router::from_json(&base_config());
    let mut claims = tenant_claims("t1");
    claims.audiences = None;
    let token = bearer(&sign("HS256", claims));
    for _ in 0..3 {
        let decision = router.request(&[("authorization", &token)]);
        assert_eq!(decision.cache_hit, Some(false));
        assert_eq!(decision.outcome, Outcome::Rejected(Reason::WrongAudience));
    }
    assert_eq!(router.vm.cache.len(), 0);
}

#[test]
fn every_rejection_body_is_json_with_error_and_detail() {
    let mut router = Router::from_json(&base_config());
    for headers in [
        vec![],
        vec![("authorization", "Bearer a.b.c")],
        vec![("authorization", "Bearer x"), ("authorization", "Bearer y")],
    ] {
        let decision = router.request(&headers);
        let reply = decision.reply().unwrap();
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        let object = body.as_object().unwrap();
        assert_eq!(object.len(), 2, "{body}");
        assert!(object["error"].is_string() && object["detail"].is_string());
        assert!(reply.details.starts_with("cell_router_"));
        assert!(!reply.details.contains(' '));
    }
}

/// Parsing the config (RSA keys, snapshot) once keeps the property tests fast.
fn shared_config() -> cell_router_filter::Config {
    static CONFIG: std::sync::OnceLock<cell_router_filter::Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| config(&base_config())).clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary header names and values (any bytes) never panic, and a
    /// request without a valid token is never routed.
    #[test]
    fn arbitrary_headers_never_panic_or_route(
        headers in proptest::collection::vec(
            (
                prop_oneof![
                    Just(b"authorization".to_vec()),
                    Just(b"x-cell-id".to_vec()),
                    Just(b":path".to_vec()),
                    Just(b"x-request-id".to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..12),
                ],
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    "Bearer [A-Za-z0-9_.-]{0,80}".prop_map(String::into_bytes),
                ],
            ),
            0..8,
        )
    ) {
        let mut router = Router::new(shared_config());
        let pairs: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        let decision = router.request_bytes(&pairs);
        prop_assert!(matches!(decision.outcome, Outcome::Rejected(_)));
        prop_assert!(decision.reply().is_some());
    }

    #[test]
    fn arbitrary_trust_header_values_never_panic(value in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut router = trust_router();
        let decision = router.request_bytes(&[(b"x-tenant", value.as_slice())]);
        let routed = matches!(decision.outcome, Outcome::Routed { .. } | Outcome::Shed { .. } | Outcome::Unavailable { .. });
        let usable = !value.is_empty()
            && value.len() <= 256
            && std::str::from_utf8(&value).is_ok_and(|s| !s.chars().any(char::is_control));
        prop_assert_eq!(routed, usable);
    }
}

#[test]
fn the_decision_is_written_for_access_logs_without_the_tenant_by_default() {
    use cell_router_filter::decide::filter_state;
    let mut router = Router::from_json(&base_config());
    assert!(!router.config.log_tenant);
    let state = |router: &mut Router, headers: &[(&str, &str)]| {
        let installed = router.installed.take();
        let log_tenant = router.config.log_tenant;
        // The filter's clock is in milliseconds.
        let now = router.now * 1000;
        let mut clock = move || now;
        let decision = cell_router_filter::decide::decide(
            &router.config,
            &mut router.vm,
            headers,
            &mut clock,
            installed.as_ref(),
        );
        let state: Vec<(String, String)> = filter_state(&decision, installed.as_ref(), log_tenant)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        drop(decision);
        router.installed = installed;
        state
    };
    let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let token = token_for("t-b");
    assert_eq!(
        state(
            &mut router,
            &[("authorization", &token), ("x-cell-id", "a")]
        ),
        pairs(&[
            ("cell_router.cell", "b"),
            ("cell_router.reason", "override"),
            ("cell_router.snapshot", "1"),
        ])
    );
    assert_eq!(
        state(&mut router, &[("authorization", &token_for("t-failover"))]),
        pairs(&[
            ("cell_router.cell", "a"),
            ("cell_router.reason", "failover"),
            ("cell_router.snapshot", "1"),
        ])
    );
    // Refused before any cell was looked up: the reason only.
    assert_eq!(
        state(&mut router, &[("x-cell-id", "a")]),
        pairs(&[("cell_router.reason", "missing_token")])
    );
    // Shed: the draining cell that shed it.
    let token = token_for("t-draining");
    let shed = (0..200)
        .map(|i| {
            let id = format!("{i:08x}-request");
            state(
                &mut router,
                &[("authorization", &token), ("x-request-id", &id)],
            )
        })
        .find(|s| {
            s.iter()
                .any(|(k, v)| k == "cell_router.reason" && v == "shed")
        })
        .expect("a shed request");
    assert_eq!(
        shed,
        pairs(&[
            ("cell_router.cell", "c"),
            ("cell_router.reason", "shed"),
            ("cell_router.snapshot", "1"),
        ])
    );

    // The tenant only when asked for.
    let mut value = base_config();
    value["log_tenant"] = true.into();
    let mut router = Router::from_json(&value);
    let tenant = state(&mut router, &[("authorization", &token_for("t-b"))]);
    assert_eq!(
        tenant.last(),
        Some(&("cell_router.tenant".to_string(), "t-b".to_string()))
    );
    value["log_tenant"] = "yes".into();
    assert!(
        config_error(&value).contains("log_tenant"),
        "{}",
        config_error(&value)
    );
}
