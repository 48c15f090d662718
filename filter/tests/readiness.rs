//! The readiness path: the filter itself answers whether this VM has a
//! snapshot from the sidecar (or its persisted copy), whatever the token.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::decide::Outcome;
use cell_router_filter::{Installed, SnapshotSource};
use common::*;
use serde_json::{Value, json};

fn ready(router: &mut Router, path: &str) -> (u32, Value) {
    let decision = router.request(&[(":path", path), ("authorization", "Bearer not.a.token")]);
    let ready = match decision.outcome {
        Outcome::Readiness { ready } => ready,
        other => panic!("{path}: not answered as readiness: {other:?}"),
    };
    let reply = decision.reply().expect("a local reply").clone();
    assert_eq!(ready, reply.status == 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(reply.header("www-authenticate").is_none());
    (reply.status, serde_json::from_slice(&reply.body).unwrap())
}

fn with_installed(mut router: Router, version: u64, source: SnapshotSource) -> Router {
    router.installed = Some(Installed::with_source(snapshot(version), source));
    router
}

#[test]
fn ready_with_a_snapshot_from_the_sidecar_or_its_persisted_copy() {
    let router = Router::from_json(&base_config());
    let mut router = with_installed(router, 7, SnapshotSource::Sidecar);
    let (status, body) = ready(&mut router, "/cell-router/ready");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"ready": true, "version": 7, "source": "sidecar"})
    );

    let router = Router::from_json(&base_config());
    let mut router = with_installed(router, 6, SnapshotSource::Persisted);
    let (status, body) = ready(&mut router, "/cell-router/ready");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"ready": true, "version": 6, "source": "persisted"})
    );
}

#[test]
fn not_ready_without_a_snapshot_or_with_only_the_fallback() {
    let mut value = base_config();
    value.as_object_mut().unwrap().remove("fallback_snapshot");
    let mut router = Router::from_json(&value);
    assert!(router.installed.is_none());
    let (status, body) = ready(&mut router, "/cell-router/ready");
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"ready": false, "version": null, "source": null})
    );

    // base_config has a sidecar and a fallback: the fallback is a stale
    // static table, not what the sidecar serves.
    let mut router = Router::from_json(&base_config());
    let (status, body) = ready(&mut router, "/cell-router/ready");
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"ready": false, "version": 1, "source": "fallback"})
    );
}

#[test]
fn a_fallback_only_config_is_ready_on_its_fallback() {
    // Without a sidecar the fallback is the configured mapping.
    let mut value = base_config();
    value.as_object_mut().unwrap().remove("sidecar");
    let mut router = Router::from_json(&value);
    let (status, body) = ready(&mut router, "/cell-router/ready");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"ready": true, "version": 1, "source": "fallback"})
    );
}

#[test]
fn the_readiness_answer_never_depends_on_a_token() {
    let mut router = with_installed(
        Router::from_json(&base_config()),
        3,
        SnapshotSource::Sidecar,
    );
    for headers in [
        vec![(":path", "/cell-router/ready")],
        vec![
            (":path", "/cell-router/ready?probe=lb"),
            ("x-cell-id", "cell-z"),
        ],
        vec![
            (":path", "/cell-router/ready"),
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
        ],
        vec![
            (":path", "/cell-router/ready"),
            (
                "authorization",
                &bearer(&sign("HS256", tenant_claims("t-b"))),
            ),
        ],
    ] {
        let decision = router.request(&headers);
        assert_eq!(
            decision.outcome,
            Outcome::Readiness { ready: true },
            "{headers:?}"
        );
        assert_eq!(decision.reply().unwrap().status, 200);
    }
}

#[test]
fn other_paths_are_requests_like_any_other() {
    let mut router = with_installed(
        Router::from_json(&base_config()),
        3,
        SnapshotSource::Sidecar,
    );
    for path in [
        "/cell-router/ready/",
        "/cell-router/readyz",
        "/cell-router",
        "/CELL-ROUTER/READY",
        "/v1/cell-router/ready",
    ] {
        let decision = router.request(&[(":path", path)]);
        assert!(
            matches!(decision.outcome, Outcome::Rejected(_)),
            "{path}: {:?}",
            decision.outcome
        );
    }
}

#[test]
fn the_readiness_path_can_be_moved_or_turned_off() {
    let mut value = base_config();
    value["readiness_path"] = json!("/healthz/cells");
    let mut router = with_installed(Router::from_json(&value), 3, SnapshotSource::Sidecar);
    assert_eq!(ready(&mut router, "/healthz/cells").0, 200);
    let decision = router.request(&[(":path", "/cell-router/ready")]);
    assert!(matches!(decision.outcome, Outcome::Rejected(_)));

    value["readiness_path"] = Value::Null;
    let mut router = with_installed(Router::from_json(&value), 3, SnapshotSource::Sidecar);
    let decision = router.request(&[(":path", "/cell-router/ready")]);
    assert!(matches!(decision.outcome, Outcome::Rejected(_)));

    for bad in [
        json!("ready"),
        json!("/a b"),
        json!("/a?b"),
        json!(""),
        json!(5),
    ] {
        value["readiness_path"] = bad.clone();
        let error = config_error(&value);
        assert!(error.starts_with("readiness_path: "), "{bad}: {error}");
    }
}
