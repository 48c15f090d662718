//! The filter defects of issue #10, through the real `.wasm` in the wasmtime
//! host: snapshot size limit, refused versions fetched again, stalls, host
//! calls that could trap, duplicate keys and arrays in untrusted JSON,
//! stricter token members, per-cell metrics, and static stability at gateway
//! start (the persisted copy and the readiness path).

use cell_router_kit::fixtures::{
    AUDIENCE, Config, ISSUER, SIDECAR_CLUSTER, TENANT_CLAIM, bearer, cell, metric, snapshot,
    snapshot_json, snapshot_with, token, with_override,
};
use cell_router_kit::tokens::{Alg, RawSignature, keys, raw_token_from_parts};
use cell_router_mapping::SnapshotDoc;
use cell_router_wasm_host::{Exchange, Host, HttpCall, HttpCallFailure, Plugin};
use serde_json::{Value, json};
use std::time::Duration;

const PERSISTED_CLUSTER: &str = "cellmap_persisted";

fn configured(config: &Config) -> Host {
    let mut host = Host::new().expect("start the filter VM");
    host.configure(config.json()).expect("configure the filter");
    host
}

fn send(host: &mut Host, tenant: &str) -> Exchange {
    let t = token(Alg::HS256, host.now_unix(), tenant);
    host.request(&[(":path", "/v1/sms"), ("authorization", &bearer(&t))])
        .expect("request through the filter")
}

fn ready(host: &mut Host) -> (Option<u16>, Value) {
    let r = host
        .request(&[(":path", "/cell-router/ready")])
        .expect("readiness request");
    (r.status(), r.json())
}

/// Lets time pass (ticks fire) until the filter calls `cluster`.
fn next_call_to(host: &mut Host, cluster: &str) -> HttpCall {
    for _ in 0..1200 {
        if let Some(call) = host
            .pending_http_calls()
            .into_iter()
            .find(|c| c.upstream == cluster)
        {
            return call;
        }
        host.advance(Duration::from_millis(100)).unwrap();
    }
    panic!(
        "no call to {cluster} within 120 s; log:\n{}",
        host.log_text()
    );
}

fn serve(host: &mut Host, doc: &SnapshotDoc) {
    let call = next_call_to(host, SIDECAR_CLUSTER);
    let etag = format!("\"{}\"", doc.version);
    host.respond_http_call(call.token, 200, &[("etag", &etag)], snapshot_json(doc))
        .unwrap();
}

/// A snapshot of about `bytes` bytes (overrides make it grow).
fn big_snapshot(version: u64, bytes: usize) -> SnapshotDoc {
    let mut doc = snapshot(version);
    let mut i = 0;
    while snapshot_json(&doc).len() < bytes {
        doc = with_override(doc, &format!("tenant-{i:06}"), "cell-b");
        i += 1;
    }
    doc
}

// ---------------------------------------------------------------------------
// 1, 2: size limit; a refused version is not downloaded again.

#[test]
fn an_oversized_snapshot_is_refused_unread_and_not_fetched_again() {
    let mut host =
        configured(&Config::jwt(&[Alg::HS256]).sidecar_with(json!({"max_snapshot_bytes": 8192})));
    serve(&mut host, &snapshot(1));
    assert_eq!(send(&mut host, "acme").header("x-cell-snapshot"), Some("1"));

    let big = big_snapshot(2, 20_000);
    let call = next_call_to(&mut host, SIDECAR_CLUSTER);
    let reads_before = host
        .host_calls()
        .get("proxy_get_buffer_bytes")
        .copied()
        .unwrap_or(0);
    host.respond_http_call(call.token, 200, &[("etag", "\"2\"")], snapshot_json(&big))
        .unwrap();
    let reads_after = host
        .host_calls()
        .get("proxy_get_buffer_bytes")
        .copied()
        .unwrap_or(0);
    assert_eq!(reads_after, reads_before, "the oversized body was read");
    assert_eq!(host.metric(metric::SNAPSHOTS_REFUSED), Some(1));
    assert_eq!(
        host.metric("cell_router.snapshot.refused_too_large"),
        Some(1)
    );
    // The last good one keeps serving.
    assert_eq!(send(&mut host, "acme").header("x-cell-snapshot"), Some("1"));
    assert_eq!(host.metric(metric::SNAPSHOT_VERSION), Some(1));

    // Not asked again: the next long-poll is for newer than 2.
    let call = next_call_to(&mut host, SIDECAR_CLUSTER);
    assert_eq!(call.path(), Some("/snapshot?after=2&wait=30"));
    assert_eq!(call.header("if-none-match"), Some("\"2\""));
    host.respond_http_call(
        call.token,
        200,
        &[("etag", "\"3\"")],
        snapshot_json(&snapshot(3)),
    )
    .unwrap();
    assert_eq!(send(&mut host, "acme").header("x-cell-snapshot"), Some("3"));
}

#[test]
fn a_refused_snapshot_is_not_downloaded_again() {
    let mut host = configured(&Config::jwt(&[Alg::HS256]).sidecar());
    serve(&mut host, &snapshot(4));
    let mut bad = snapshot(5);
    bad.cells[0].failover = Some("nowhere".into());
    let call = next_call_to(&mut host, SIDECAR_CLUSTER);
    host.respond_http_call(call.token, 200, &[("etag", "\"5\"")], snapshot_json(&bad))
        .unwrap();
    assert_eq!(host.metric(metric::SNAPSHOTS_REFUSED), Some(1));
    let call = next_call_to(&mut host, SIDECAR_CLUSTER);
    assert_eq!(call.path(), Some("/snapshot?after=5&wait=30"));
    // Nothing newer for a while, then a good 6.
    host.respond_http_call(call.token, 304, &[("etag", "\"5\"")], "")
        .unwrap();
    serve(&mut host, &snapshot(6));
    assert_eq!(send(&mut host, "acme").header("x-cell-snapshot"), Some("6"));
    assert_eq!(host.metric(metric::SNAPSHOTS_REFUSED), Some(1));
}

// ---------------------------------------------------------------------------
// 3: every answer is the version routed by, and the one asked after.

#[test]
fn rapid_flips_route_by_the_last_version_and_ask_after_it() {
    let mut host = configured(&Config::jwt(&[Alg::HS256]).sidecar());
    for version in 1..=20 {
        let call = next_call_to(&mut host, SIDECAR_CLUSTER);
        let expected_after = version - 1;
        assert_eq!(
            call.path(),
            Some(format!("/snapshot?after={expected_after}&wait=30").as_str())
        );
        let etag = format!("\"{version}\"");
        host.respond_http_call(
            call.token,
            200,
            &[("etag", &etag)],
            snapshot_json(&snapshot(version)),
        )
        .unwrap();
        let version = version.to_string();
        assert_eq!(
            send(&mut host, "acme").header("x-cell-snapshot"),
            Some(version.as_str())
        );
    }
    assert_eq!(host.metric(metric::SNAPSHOTS_APPLIED), Some(20));
}

// ---------------------------------------------------------------------------
// 4: no proxy-wasm SDK dispatcher or wrappers in the module.

#[test]
fn the_module_only_uses_host_calls_the_filter_declares() {
    let plugin = Plugin::filter().expect("load the filter");
    // The SDK's dispatcher and wrappers bring these in (and panic on
    // statuses and ids they do not expect); the filter uses none of them.
    // (`proxy_get_status` it does call, through its own wrapper, to log why
    // an http call got no response; so `proxy_get_shared_data` and
    // `proxy_set_shared_data`, to check a binary snapshot's records once per
    // Envoy: `one_vm_checks_a_binary_snapshot_for_every_worker`.)
    for import in plugin.imports() {
        assert!(
            !matches!(
                import.as_str(),
                "env.proxy_set_effective_context" | "env.proxy_done" | "env.proxy_grpc_call"
            ),
            "imports {import}"
        );
    }
    let exports = plugin.exports();
    for export in [
        "proxy_on_grpc_receive",
        "proxy_on_new_connection",
        "proxy_on_foreign_function",
    ] {
        assert!(!exports.iter().any(|e| e == export), "exports {export}");
    }
    for export in [
        "proxy_abi_version_0_2_1",
        "proxy_on_memory_allocate",
        "proxy_on_context_create",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_http_call_response",
        "proxy_on_request_headers",
        "proxy_on_delete",
    ] {
        assert!(exports.iter().any(|e| e == export), "no export {export}");
    }
}

// ---------------------------------------------------------------------------
// 5, 6: duplicate keys and arrays in the plugin config.

#[test]
fn duplicate_keys_and_arrays_in_the_config_are_refused() {
    let base = Config::jwt(&[Alg::HS256]).fallback(&snapshot(1)).sidecar();
    let text = base.json();
    let cases = [
        // The fallback's version twice (serde_json kept the last one).
        text.replacen("\"version\":1", "\"version\":1,\"version\":9", 1),
        // A JWK's kid twice.
        text.replacen("\"kid\":", "\"kid\":\"other\",\"kid\":", 1),
        // The sidecar section as an array.
        base.clone()
            .set("sidecar", json!([SIDECAR_CLUSTER, "cellmap", "/snapshot"]))
            .json(),
        // A fallback cell as an array.
        {
            let mut value = base.value();
            value["fallback_snapshot"]["cells"][0] = json!(["cell-a"]);
            value.to_string()
        },
    ];
    for config in cases {
        assert_ne!(config, text);
        let mut host = Host::new().unwrap();
        assert!(!host.try_configure(&config).unwrap(), "accepted: {config}");
        assert!(
            host.log_text().contains("configuration refused"),
            "{}",
            host.log_text()
        );
    }
    // The unchanged config is fine.
    let mut host = Host::new().unwrap();
    assert!(host.try_configure(&text).unwrap());
}

/// An RS256 token with a hand-made header, signed with the real test key.
fn rs256_with_header(header: &str, payload: &Value) -> String {
    raw_token_from_parts(
        header.as_bytes(),
        payload.to_string().as_bytes(),
        RawSignature::Rs256,
    )
}

fn claims(host: &Host, tenant: &str) -> Value {
    let now = host.now_unix();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now, "exp": now + 600,
        (TENANT_CLAIM): tenant,
    })
}

#[test]
fn a_jose_header_written_as_an_array_is_refused() {
    let mut host = configured(&Config::jwt(&[Alg::RS256]).fallback(&snapshot(1)));
    let payload = claims(&host, "acme");
    // The same header as an object passes: the signature is right.
    let good = rs256_with_header(r#"{"alg":"RS256","kid":"rs256"}"#, &payload);
    let r = host.request(&[("authorization", &bearer(&good))]).unwrap();
    assert!(r.forwarded(), "{:?}", r.json());
    // As an array, serde's derived structs read it as [alg, kid].
    let array = rs256_with_header(r#"["RS256","rs256"]"#, &payload);
    let r = host.request(&[("authorization", &bearer(&array))]).unwrap();
    assert_eq!(r.status(), Some(401), "{:?}", r.json());
    assert_eq!(host.metric(&metric::rejected("malformed")), Some(1));
}

// ---------------------------------------------------------------------------
// 7: kid must be a string; times must be integers in 0..2^64.

#[test]
fn a_null_kid_and_odd_times_are_refused() {
    let mut host = configured(&Config::jwt(&[Alg::HS256]).fallback(&snapshot(1)));
    let secret = keys().hmac_secret.clone();
    let payload = claims(&host, "acme").to_string();
    let hs = |header: &str, payload: &str| {
        raw_token_from_parts(
            header.as_bytes(),
            payload.as_bytes(),
            RawSignature::Hs256(secret.clone()),
        )
    };
    let good = hs(r#"{"alg":"HS256","kid":"hs256"}"#, &payload);
    assert!(
        host.request(&[("authorization", &bearer(&good))])
            .unwrap()
            .forwarded()
    );
    let mut refused = vec![hs(r#"{"alg":"HS256","kid":null}"#, &payload)];
    let now = host.now_unix();
    for claim in ["exp", "nbf", "iat"] {
        for bad in ["1e308", "18446744073709551616", "1.5", "-1"] {
            let mut value: Value = serde_json::from_str(&payload).unwrap();
            value[claim] = json!("@@");
            if claim != "exp" {
                value["exp"] = json!(now + 600);
            }
            let text = value.to_string().replace("\"@@\"", bad);
            refused.push(hs(r#"{"alg":"HS256","kid":"hs256"}"#, &text));
        }
    }
    for t in &refused {
        let r = host.request(&[("authorization", &bearer(t))]).unwrap();
        assert_eq!(r.status(), Some(401), "{t}: {:?}", r.json());
        assert_eq!(r.json()["error"], "invalid_token");
    }
    assert_eq!(
        host.metric(&metric::rejected("malformed")),
        Some(refused.len() as i64)
    );
}

// ---------------------------------------------------------------------------
// 8: cells leave and come back.

#[test]
fn a_cell_that_leaves_and_comes_back_counts_on() {
    let mut host = configured(&Config::jwt(&[Alg::HS256]).sidecar());
    let with_a = with_override(snapshot(1), "acme", "cell-a");
    serve(&mut host, &with_a);
    assert_eq!(send(&mut host, "acme").cell(), Some("cell-a"));
    // 30 snapshots of cells that come and go, cell-a gone.
    for version in 2..32u64 {
        let cells = (0..3)
            .map(|i| cell(&format!("cell-{version}-{i}")))
            .collect();
        serve(&mut host, &snapshot_with(version, cells));
        let r = send(&mut host, "acme");
        assert!(
            r.cell()
                .is_some_and(|c| c.starts_with(&format!("cell-{version}-")))
        );
    }
    serve(&mut host, &with_override(snapshot(40), "acme", "cell-a"));
    assert_eq!(send(&mut host, "acme").cell(), Some("cell-a"));
    assert_eq!(host.metric(&metric::routed("cell-a")), Some(2));
}

// ---------------------------------------------------------------------------
// 10: static stability at gateway start.

fn with_persisted() -> Config {
    Config::jwt(&[Alg::HS256]).sidecar_with(json!({"persisted": {"cluster": PERSISTED_CLUSTER}}))
}

#[test]
fn a_gateway_started_while_the_sidecar_is_down_routes_by_the_persisted_copy() {
    let mut host = configured(&with_persisted());
    let (status, body) = ready(&mut host);
    assert_eq!(status, Some(503));
    assert_eq!(
        body,
        json!({"ready": false, "version": null, "source": null})
    );
    assert_eq!(send(&mut host, "acme").status(), Some(503));

    // The sidecar is down.
    let call = next_call_to(&mut host, SIDECAR_CLUSTER);
    host.fail_http_call(call.token, HttpCallFailure::ConnectionFailure)
        .unwrap();
    // Envoy serves the persisted copy from a file (direct_response).
    let call = next_call_to(&mut host, PERSISTED_CLUSTER);
    assert_eq!(call.path(), Some("/snapshot"));
    assert_eq!(call.header(":method"), Some("GET"));
    let copy = with_override(snapshot(7), "acme", "cell-c");
    host.respond_http_call(call.token, 200, &[], snapshot_json(&copy))
        .unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some("cell-c"));
    assert_eq!(r.header("x-cell-snapshot"), Some("7"));
    assert_eq!(
        ready(&mut host),
        (
            Some(200),
            json!({"ready": true, "version": 7, "source": "persisted"})
        )
    );
    assert_eq!(
        host.metric("cell_router.snapshot.persisted_applied"),
        Some(1)
    );

    // The sidecar stays primary: asked for newer than the copy, and its
    // answer replaces it.
    let call = next_call_to(&mut host, SIDECAR_CLUSTER);
    assert_eq!(call.path(), Some("/snapshot?after=7&wait=30"));
    host.respond_http_call(
        call.token,
        200,
        &[("etag", "\"8\"")],
        snapshot_json(&with_override(snapshot(8), "acme", "cell-b")),
    )
    .unwrap();
    assert_eq!(send(&mut host, "acme").cell(), Some("cell-b"));
    assert_eq!(
        ready(&mut host),
        (
            Some(200),
            json!({"ready": true, "version": 8, "source": "sidecar"})
        )
    );
    // The copy is not asked again.
    for _ in 0..5 {
        let call = next_call_to(&mut host, SIDECAR_CLUSTER);
        host.fail_http_call(call.token, HttpCallFailure::ConnectionFailure)
            .unwrap();
    }
    host.advance(Duration::from_secs(10)).unwrap();
    assert!(
        host.pending_http_calls()
            .iter()
            .all(|c| c.upstream != PERSISTED_CLUSTER)
    );
    assert_eq!(send(&mut host, "acme").cell(), Some("cell-b"));
}

#[test]
fn the_persisted_copy_replaces_a_stale_fallback() {
    // The fallback is a static table from deploy time (version 100 here);
    // the persisted copy is the sidecar's own, version 3.
    let fallback = with_override(snapshot(100), "acme", "cell-a");
    let mut host = configured(&with_persisted().fallback(&fallback));
    assert_eq!(send(&mut host, "acme").cell(), Some("cell-a"));
    assert_eq!(
        ready(&mut host),
        (
            Some(503),
            json!({"ready": false, "version": 100, "source": "fallback"})
        )
    );
    let call = next_call_to(&mut host, SIDECAR_CLUSTER);
    host.fail_http_call(call.token, HttpCallFailure::NoHealthyUpstream)
        .unwrap();
    let call = next_call_to(&mut host, PERSISTED_CLUSTER);
    host.respond_http_call(
        call.token,
        200,
        &[],
        snapshot_json(&with_override(snapshot(3), "acme", "cell-b")),
    )
    .unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some("cell-b"));
    assert_eq!(r.header("x-cell-snapshot"), Some("3"));
    assert_eq!(ready(&mut host).0, Some(200));
}

#[test]
fn the_persisted_copy_is_retried_with_backoff_while_the_sidecar_stays_down() {
    let mut host = configured(&with_persisted());
    let start = host.now();
    let mut persisted_calls = Vec::new();
    // Two minutes of a sidecar and a persisted route that refuse connections.
    while host.now() < start + Duration::from_secs(120) {
        for call in host.pending_http_calls() {
            if call.upstream == PERSISTED_CLUSTER {
                persisted_calls.push(call.dispatched_at);
            }
            host.fail_http_call(call.token, HttpCallFailure::ConnectionFailure)
                .unwrap();
        }
        host.advance(Duration::from_millis(100)).unwrap();
    }
    assert!(
        (10..=200).contains(&persisted_calls.len()),
        "{} calls to the persisted copy in 2 minutes",
        persisted_calls.len()
    );
    assert!(
        host.metric("cell_router.snapshot.persisted_fetch_failures")
            .unwrap_or(0)
            >= 10
    );
    assert_eq!(ready(&mut host).0, Some(503));
    // Then it answers.
    let call = next_call_to(&mut host, PERSISTED_CLUSTER);
    host.respond_http_call(call.token, 200, &[], snapshot_json(&snapshot(5)))
        .unwrap();
    assert_eq!(send(&mut host, "acme").header("x-cell-snapshot"), Some("5"));
    assert_eq!(ready(&mut host).0, Some(200));
}

#[test]
fn without_a_persisted_copy_only_the_sidecar_is_called() {
    let mut host = configured(&Config::jwt(&[Alg::HS256]).sidecar());
    for _ in 0..10 {
        let call = next_call_to(&mut host, SIDECAR_CLUSTER);
        host.fail_http_call(call.token, HttpCallFailure::ConnectionFailure)
            .unwrap();
        assert!(
            host.pending_http_calls()
                .iter()
                .all(|c| c.upstream == SIDECAR_CLUSTER)
        );
    }
}

#[test]
fn readiness_never_depends_on_a_token_and_can_be_moved_or_turned_off() {
    let mut host = configured(&Config::jwt(&[Alg::HS256]).sidecar());
    serve(&mut host, &snapshot(2));
    for headers in [
        vec![(":path", "/cell-router/ready")],
        vec![
            (":path", "/cell-router/ready?lb=1"),
            ("authorization", "Bearer x.y.z"),
        ],
        vec![
            (":path", "/cell-router/ready"),
            ("authorization", "Basic Zm9v"),
        ],
    ] {
        let r = host.request(&headers).unwrap();
        assert_eq!(r.status(), Some(200), "{headers:?}");
        assert_eq!(
            r.json(),
            json!({"ready": true, "version": 2, "source": "sidecar"})
        );
        assert_eq!(r.response_header("cache-control"), Some("no-store"));
        assert!(!r.forwarded());
    }
    // Any other path is a request like any other.
    let r = host.request(&[(":path", "/cell-router/readyz")]).unwrap();
    assert_eq!(r.status(), Some(401));

    let mut host = configured(
        &Config::jwt(&[Alg::HS256])
            .sidecar()
            .set("readiness_path", "/healthz"),
    );
    assert_eq!(
        host.request(&[(":path", "/healthz")]).unwrap().status(),
        Some(503)
    );
    let mut host = configured(
        &Config::jwt(&[Alg::HS256])
            .sidecar()
            .set("readiness_path", Value::Null),
    );
    assert_eq!(
        host.request(&[(":path", "/cell-router/ready")])
            .unwrap()
            .status(),
        Some(401)
    );
}
