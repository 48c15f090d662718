//! The draws the filter feeds the routing function (issue #12): shedding
//! from the VM's own generator, never from the request id; moves and ramps
//! split by the verified token's `split_claim` (default `sub`), else the
//! tenant; ramps follow the host clock.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::decide::Outcome;
use cell_router_mapping::{Draws, HashKey, Snapshot, SnapshotDoc};
use common::*;
use serde_json::{Value, json};

fn token_with(tenant: &str, subject: Option<&str>, extra: Value) -> String {
    let mut claims = claims(extra);
    claims.custom.insert("tenant_id".into(), json!(tenant));
    claims.subject = subject.map(str::to_string);
    bearer(&sign("HS256", claims))
}

fn routed(router: &mut Router, token: &str, request_id: &str) -> String {
    let decision = router.request(&[("authorization", token), ("x-request-id", request_id)]);
    match decision.outcome {
        Outcome::Routed { cell, .. } => cell.to_string(),
        other => panic!("{other:?}"),
    }
}

/// Where the mapping library sends `t-moving` (30 % a → b) for a split key.
fn library_cell(split_key: &str) -> String {
    let s = snapshot(1);
    let r = s.resolve(
        b"t-moving",
        &Draws::unshed(split_key.as_bytes(), NOW * 1000),
    );
    s.cell(r.home).unwrap().id.clone()
}

/// Split keys that the library sends to a and to b.
fn keys_on_each_side(prefix: &str) -> (String, String) {
    let mut a = None;
    let mut b = None;
    for i in 0.. {
        let key = format!("{prefix}-{i}");
        match library_cell(&key).as_str() {
            "a" if a.is_none() => a = Some(key),
            "b" if b.is_none() => b = Some(key),
            _ => {}
        }
        if let (Some(a), Some(b)) = (&a, &b) {
            return (a.clone(), b.clone());
        }
    }
    unreachable!()
}

#[test]
fn moves_split_by_the_subject_by_default() {
    let mut router = Router::from_json(&base_config());
    let (on_a, on_b) = keys_on_each_side("user");
    for (user, cell) in [(&on_a, "a"), (&on_b, "b")] {
        let token = token_with("t-moving", Some(user), json!({}));
        for id in ["1", "2", "3", "4"] {
            // Cached or not, every request of the user lands the same.
            assert_eq!(routed(&mut router, &token, id), cell, "{user}");
        }
    }
    // No subject: the tenant is the split key.
    let token = token_with("t-moving", None, json!({}));
    assert_eq!(routed(&mut router, &token, "1"), library_cell("t-moving"));
}

#[test]
fn split_claim_names_another_claim_or_the_tenant() {
    let (on_a, on_b) = keys_on_each_side("uid");
    let mut value = base_config();
    value["split_claim"] = json!("profile.uid");
    let mut router = Router::from_json(&value);
    for (uid, cell) in [(&on_a, "a"), (&on_b, "b")] {
        // The subject is the same for both: only the named claim counts.
        let token = token_with("t-moving", Some("same"), json!({"profile": {"uid": uid}}));
        assert_eq!(routed(&mut router, &token, "x"), cell, "{uid}");
    }
    // Integers are text; a missing or unusable claim falls back to the tenant.
    let token = token_with("t-moving", Some("same"), json!({"profile": {"uid": 42}}));
    assert_eq!(routed(&mut router, &token, "x"), library_cell("42"));
    for profile in [
        json!({}),
        json!({"uid": ""}),
        json!({"uid": [1]}),
        json!({"uid": "x".repeat(1025)}),
    ] {
        let token = token_with("t-moving", Some("same"), json!({ "profile": profile }));
        assert_eq!(
            routed(&mut router, &token, "x"),
            library_cell("t-moving"),
            "{profile}"
        );
    }

    // null: always the tenant.
    value["split_claim"] = Value::Null;
    let mut router = Router::from_json(&value);
    for user in [&on_a, &on_b] {
        let token = token_with("t-moving", Some(user), json!({}));
        assert_eq!(routed(&mut router, &token, "x"), library_cell("t-moving"));
    }

    // Refused like tenant_claim's mistakes, and in trust_header mode.
    for (bad, words) in [
        (json!("exp"), "cannot hold a user id"),
        (json!("sub.x"), "no nested fields"),
        (json!(""), "empty segment"),
        (json!(7), "split_claim"),
    ] {
        let mut value = base_config();
        value["split_claim"] = bad.clone();
        let error = config_error(&value);
        assert!(
            error.contains("split_claim") && error.contains(words),
            "{bad}: {error}"
        );
    }
    let error = config_error(
        &json!({"trust_header": "x-tenant", "split_claim": "sub", "fallback_snapshot": snapshot_json(1)}),
    );
    assert!(error.contains("split_claim"), "{error}");
}

#[test]
fn trust_header_mode_splits_by_the_tenant() {
    let mut router = Router::from_json(
        &json!({"trust_header": "x-tenant", "fallback_snapshot": snapshot_json(1)}),
    );
    let want = library_cell("t-moving");
    for id in ["1", "2", "3"] {
        let decision = router.request(&[("x-tenant", "t-moving"), ("x-request-id", id)]);
        assert_eq!(decision.routed_cell(), Some(want.as_str()));
    }
}

/// Request ids that the old rule (`draw('s', x-request-id)`) never shed at
/// 25 % are shed at 25 % now, like any other: a fixed set of "lucky" ids
/// does no better.
#[test]
fn lucky_request_ids_are_shed_like_any_other() {
    let key = HashKey::from_hex(HASH_KEY).unwrap();
    let lucky: Vec<String> = (0..)
        .map(|i| format!("lucky-{i}"))
        .filter(|id| key.draw(b's', id.as_bytes()) >= 9000)
        .take(20)
        .collect();
    let mut router = Router::from_json(&base_config());
    let token = token_with("t-draining", Some("user-1"), json!({}));
    let mut shed = 0;
    let rounds = 200;
    for _ in 0..rounds {
        for id in &lucky {
            let decision = router.request(&[("authorization", &token), ("x-request-id", id)]);
            shed += usize::from(matches!(decision.outcome, Outcome::Shed { cell: "c" }));
        }
    }
    let share = shed as f64 / (rounds * lucky.len()) as f64;
    // 4,000 requests, σ ≈ 0.68 %.
    assert!((share - 0.25).abs() < 0.03, "lucky ids shed {share}");
}

/// Two VMs (different random keys) shed different requests, each at the
/// share: the draw is nobody's function of the request.
#[test]
fn each_vm_draws_its_own_sequence() {
    let token = token_with("t-draining", Some("user-1"), json!({}));
    let run = |keys: u8| -> Vec<bool> {
        let mut router = Router::from_json(&base_config());
        router.vm = cell_router_filter::VmState::new(
            &router.config,
            cell_router_filter::VmKeys::fixed(keys),
        );
        (0..400)
            .map(|_| {
                let decision =
                    router.request(&[("authorization", &token), ("x-request-id", "same")]);
                matches!(decision.outcome, Outcome::Shed { .. })
            })
            .collect()
    };
    let (a, b) = (run(1), run(2));
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    // Independent 25 % draws differ with probability 37.5 %: ~150 of 400.
    assert!(differ > 90, "only {differ} of 400 differ");
}

fn ramped_doc() -> SnapshotDoc {
    let mut doc = snapshot_doc(1);
    doc.cells[0].failover = Some("b".into());
    doc.cells[0].ramp =
        Some(serde_json::from_value(json!({"start": NOW + 100, "duration_s": 600})).unwrap());
    doc
}

/// A tenant whose slot is on cell a.
fn tenant_on_a(s: &Snapshot) -> String {
    (0..)
        .map(|i| format!("tenant-{i}"))
        .find(|t| s.resolve(t.as_bytes(), &Draws::default()).home == 0)
        .unwrap()
}

/// Cell a ramps from NOW + 100 s over 600 s: its users come back as the
/// clock moves, each once and for good, as the library says.
#[test]
fn a_ramp_follows_the_clock_and_keeps_users() {
    let doc = ramped_doc();
    let library = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
    let mut value = base_config();
    value["fallback_snapshot"] = serde_json::from_str(&doc.to_json()).unwrap();
    let mut router = Router::from_json(&value);
    let tenant = tenant_on_a(&library);
    let users: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let tokens: Vec<String> = users
        .iter()
        .map(|u| token_with(&tenant, Some(u), json!({})))
        .collect();
    let mut back = vec![false; users.len()];
    let mut shares = Vec::new();
    for offset_s in [0, 100, 250, 400, 550, 699, 700, 800] {
        router.now = NOW + offset_s;
        let now_ms = router.now * 1000;
        let mut on_a = 0;
        for (i, token) in tokens.iter().enumerate() {
            let decision = router.request(&[("authorization", token)]);
            let Outcome::Routed { cell, reason } = decision.outcome else {
                panic!("{:?}", decision.outcome);
            };
            let want = library.resolve(
                tenant.as_bytes(),
                &Draws::unshed(users[i].as_bytes(), now_ms),
            );
            assert_eq!(
                cell,
                library.cell(want.final_cell()).unwrap().id,
                "{}",
                users[i]
            );
            let kept = cell == "a";
            assert!(
                kept || !back[i],
                "{} went back to b at +{offset_s} s",
                users[i]
            );
            assert_eq!(reason, if kept { "slot" } else { "ramp" });
            back[i] = kept;
            on_a += usize::from(kept);
        }
        shares.push((offset_s, on_a as f64 / users.len() as f64));
    }
    let share_at = |t: u64| shares.iter().find(|(s, _)| *s == t).unwrap().1;
    assert_eq!(share_at(0), 0.0, "{shares:?}");
    assert_eq!(share_at(100), 0.0, "{shares:?}");
    assert!((share_at(400) - 0.5).abs() < 0.08, "{shares:?}");
    assert_eq!(share_at(700), 1.0, "{shares:?}");
    assert_eq!(share_at(800), 1.0, "{shares:?}");
}

/// With several identity providers, `split_claim` applies to every one.
#[test]
fn split_claim_applies_to_every_provider() {
    let (on_a, on_b) = keys_on_each_side("uid");
    let mut router = Router::from_json(&json!({
        "providers": [
            {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"],
             "jwks": {"keys": [oct_jwk("hs-1")]}},
            {"issuer": "https://other.test", "algorithms": ["EdDSA"],
             "jwks": {"keys": [ed25519_jwk("ed-1")]}}
        ],
        "tenant_claim": "tenant_id",
        "split_claim": "uid",
        "fallback_snapshot": snapshot_json(1),
    }));
    for (uid, cell) in [(&on_a, "a"), (&on_b, "b")] {
        let token = token_with("t-moving", Some("same"), json!({ "uid": uid }));
        assert_eq!(routed(&mut router, &token, "x"), cell, "{uid}");
    }
}
