//! Routing by the real filter `.wasm`: cell header set from the snapshot,
//! client copies removed, overrides, failover, gradual moves by user, shedding,
//! metrics, and agreement with `cellmap route` for 10,000 tenants.

use cell_router_kit::fixtures::{
    self, Config, bearer, cell, disabled, draining, metric, parsed, snapshot, snapshot_with, token,
    token_builder, with_move, with_override,
};
use cell_router_kit::tokens::Alg;
use cell_router_mapping::{Draws, SnapshotDoc};
use cell_router_wasm_host::{Exchange, Host, HostOptions, Request};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};

fn router_with(doc: &SnapshotDoc) -> Host {
    let mut host = Host::new().expect("start the filter VM");
    host.configure(Config::jwt(&[Alg::HS256]).fallback(doc).json())
        .expect("configure the filter");
    host
}

fn send(host: &mut Host, tenant: &str) -> Exchange {
    let t = token(Alg::HS256, host.now_unix(), tenant);
    host.request(&[(":path", "/v1/sms"), ("authorization", &bearer(&t))])
        .expect("request through the filter")
}

/// The cell id a slot-routed tenant lands in, by the mapping library.
fn slot_cell(doc: &SnapshotDoc, tenant: &str) -> String {
    let s = parsed(doc);
    let r = s.resolve(tenant.as_bytes(), &Draws::default());
    let index = s.slot_table()[r.slot as usize];
    s.cell(index).unwrap().id.clone()
}

/// Tenants ("t-0", "t-1", ...) whose slot is in `cell`.
fn tenants_in(doc: &SnapshotDoc, cell: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("t-{i}"))
        .filter(|t| slot_cell(doc, t) == cell)
        .take(n)
        .collect()
}

#[test]
fn client_copies_of_the_cell_and_version_headers_never_reach_a_cell() {
    let doc = snapshot(7);
    let mut host = router_with(&doc);
    let t = token(Alg::HS256, host.now_unix(), "acme");
    let r = host
        .request(&[
            (":path", "/"),
            ("X-Cell-Id", "cell-evil"),
            ("x-cell-id", "cell-evil-2"),
            ("authorization", &bearer(&t)),
            ("X-CELL-SNAPSHOT", "999"),
        ])
        .unwrap();
    assert!(r.forwarded());
    assert_eq!(
        r.header_all("x-cell-id"),
        vec![slot_cell(&doc, "acme").as_bytes()]
    );
    assert_eq!(r.header_all("x-cell-snapshot"), vec![b"7".as_slice()]);

    // A rejected request is not forwarded at all, spoofed header or not.
    let r = host
        .request(&[(":path", "/"), ("x-cell-id", "cell-a")])
        .unwrap();
    assert_eq!(r.status(), Some(401));
}

#[test]
fn an_override_wins_over_the_slot() {
    let base = snapshot(1);
    let tenant = tenants_in(&base, "cell-a", 1).remove(0);
    let doc = with_override(base, &tenant, "cell-c");
    let mut host = router_with(&doc);
    assert_eq!(send(&mut host, &tenant).cell(), Some("cell-c"));
    // Everyone else still goes by slot.
    for other in tenants_in(&doc, "cell-a", 20)
        .iter()
        .filter(|t| **t != tenant)
    {
        assert_eq!(send(&mut host, other).cell(), Some("cell-a"), "{other}");
    }
    assert_eq!(
        parsed(&doc)
            .resolve(tenant.as_bytes(), &Draws::default())
            .reason(),
        "override"
    );
}

#[test]
fn a_disabled_cell_fails_over_or_answers_503() {
    let doc = snapshot_with(
        1,
        vec![
            cell("cell-a"),
            disabled("cell-b", Some("cell-c")),
            cell("cell-c"),
            disabled("cell-d", None),
        ],
    );
    let mut host = router_with(&doc);
    for tenant in tenants_in(&doc, "cell-b", 10) {
        let r = send(&mut host, &tenant);
        assert_eq!(r.cell(), Some("cell-c"), "{tenant} should fail over");
    }
    for tenant in tenants_in(&doc, "cell-d", 10) {
        let r = send(&mut host, &tenant);
        assert_eq!(r.status(), Some(503), "{tenant}");
        assert_eq!(r.json()["error"], "cell_unavailable");
        assert!(r.cell().is_none());
    }
    assert_eq!(host.metric(&metric::unavailable("cell-d")), Some(10));
    assert_eq!(host.metric(&metric::routed("cell-c")), Some(10));
    assert_eq!(host.metric(&metric::routed("cell-b")).unwrap_or(0), 0);
}

/// A request of `tenant` by the user `subject` (the token's `sub`, the
/// filter's default split claim).
fn send_as(host: &mut Host, tenant: &str, subject: &str, request_id: &str) -> Exchange {
    let t = token_builder(Alg::HS256, host.now_unix(), tenant)
        .subject(subject)
        .sign();
    host.request(&[
        (":path", "/v1/sms"),
        ("authorization", &bearer(&t)),
        ("x-request-id", request_id),
    ])
    .expect("request through the filter")
}

#[test]
fn a_gradual_move_splits_by_user_and_never_sends_one_back() {
    let base = snapshot(1);
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i:05}")).collect();
    let route = |percent: f64| -> Vec<String> {
        let doc = with_move(base.clone(), "globex", "cell-a", "cell-b", percent);
        let mut host = router_with(&doc);
        let library = parsed(&doc);
        users
            .iter()
            .map(|user| {
                let expected = library.resolve(b"globex", &Draws::unshed(user.as_bytes(), 0));
                let expected = library
                    .cell(expected.routed_cell().unwrap())
                    .unwrap()
                    .id
                    .clone();
                // Two requests of the user, with different request ids,
                // land on the same side: the user's.
                for request_id in ["r-1", "r-2"] {
                    let r = send_as(&mut host, "globex", user, request_id);
                    assert_eq!(r.cell(), Some(expected.as_str()), "{user} at {percent}%");
                }
                expected
            })
            .collect()
    };
    let at_30 = route(30.0);
    let at_60 = route(60.0);
    let share = |cells: &[String]| {
        cells.iter().filter(|c| *c == "cell-b").count() as f64 / cells.len() as f64
    };
    // σ ≈ 1.5 % over 1,000 users.
    assert!(
        (share(&at_30) - 0.30).abs() < 0.05,
        "share at 30%: {}",
        share(&at_30)
    );
    assert!(
        (share(&at_60) - 0.60).abs() < 0.05,
        "share at 60%: {}",
        share(&at_60)
    );
    for (user, (before, after)) in users.iter().zip(at_30.iter().zip(&at_60)) {
        assert!(
            !(before == "cell-b" && after == "cell-a"),
            "{user} moved back"
        );
    }
    // 0 % and 100 % are exact.
    assert!(route(0.0).iter().all(|c| c == "cell-a"));
    assert!(route(100.0).iter().all(|c| c == "cell-b"));
}

#[test]
fn a_draining_cell_sheds_its_share_with_retry_after() {
    let doc = snapshot_with(1, vec![draining("cell-a", 0.25, 7), cell("cell-b")]);
    let mut host = router_with(&doc);
    let tenants = tenants_in(&doc, "cell-a", 50);
    let (mut shed, mut routed) = (0, 0);
    for i in 0..4000 {
        let tenant = &tenants[i % tenants.len()];
        let r = send(&mut host, tenant);
        match r.status() {
            Some(503) => {
                shed += 1;
                assert_eq!(r.response_header("retry-after"), Some("7"));
                assert_eq!(r.json()["error"], "cell_draining");
                assert!(r.cell().is_none());
            }
            None => {
                routed += 1;
                assert_eq!(r.cell(), Some("cell-a"));
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    let share = shed as f64 / 4000.0;
    assert!((share - 0.25).abs() < 0.03, "shed share {share}");
    assert_eq!(host.metric(&metric::shed("cell-a")), Some(shed));
    assert_eq!(host.metric(&metric::routed("cell-a")), Some(routed));
    // The other cell does not shed.
    for tenant in tenants_in(&doc, "cell-b", 20) {
        assert_eq!(send(&mut host, &tenant).cell(), Some("cell-b"));
    }
}

#[test]
fn without_any_snapshot_requests_get_503_and_retry_after() {
    let mut host = Host::new().unwrap();
    host.configure(Config::jwt(&[Alg::HS256]).sidecar().json())
        .unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(r.status(), Some(503));
    assert_eq!(r.json()["error"], "no_snapshot");
    assert_eq!(r.response_header("retry-after"), Some("1"));
    assert_eq!(host.metric(metric::NO_SNAPSHOT), Some(1));
}

#[test]
fn routed_requests_are_counted_per_cell() {
    let doc = snapshot(1);
    let mut host = router_with(&doc);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..300 {
        let tenant = format!("count-{i}");
        let r = send(&mut host, &tenant);
        *expected.entry(r.cell().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(expected.len(), 3);
    for (cell, n) in expected {
        assert_eq!(host.metric(&metric::routed(&cell)), Some(n), "{cell}");
    }
}

#[test]
fn the_route_cache_is_cleared_by_the_header_change_alone() {
    // Envoy clears it when a plugin of ABI 0.2.1 changes a request header;
    // the `clear_route_cache` foreign function would clear it a second time.
    let doc = snapshot(1);
    let mut host = router_with(&doc);
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some(slot_cell(&doc, "acme").as_str()));
    assert!(r.route_cache_clears >= 1);
    assert_eq!(r.foreign_call_count("clear_route_cache"), 0);

    // A host without the foreign function routes the same.
    let options = HostOptions {
        foreign_functions: BTreeSet::new(),
        ..HostOptions::default()
    };
    let mut host = Host::with_options(options).unwrap();
    host.configure(Config::jwt(&[Alg::HS256]).fallback(&doc).json())
        .unwrap();
    let other = send(&mut host, "acme");
    assert_eq!(other.cell(), r.cell());
    assert!(other.route_cache_clears >= 1);
}

/// `filter_state: false`: no property is set, whatever the answer, and the
/// answers are the same.
#[test]
fn filter_state_off_writes_no_property() {
    let doc = with_override(
        snapshot_with(7, vec![cell("cell-a"), draining("cell-b", 1.0, 3)]),
        "acme",
        "cell-a",
    );
    let mut host = Host::new().unwrap();
    host.configure(
        Config::jwt(&[Alg::HS256])
            .fallback(&doc)
            .set("filter_state", false)
            .json(),
    )
    .unwrap();
    let routed = send(&mut host, "acme");
    assert_eq!(routed.cell(), Some("cell-a"));
    assert_eq!(routed.request_headers.get("x-cell-snapshot"), Some("7"));
    let shed = send(&mut host, &tenants_in(&doc, "cell-b", 1)[0]);
    assert_eq!(shed.status(), Some(503));
    let refused = host.request(&[(":path", "/")]).unwrap();
    assert_eq!(refused.status(), Some(401));
    for r in [&routed, &shed, &refused] {
        assert!(r.properties.is_empty(), "{:?}", r.properties);
        assert_eq!(r.host_calls.get("proxy_set_property"), None);
    }
}

#[test]
fn rejections_and_local_replies_pass_nothing_upstream() {
    let doc = snapshot_with(1, vec![draining("cell-a", 1.0, 3)]);
    let mut host = router_with(&doc);
    let r = send(&mut host, "anyone");
    assert_eq!(r.status(), Some(503));
    assert_eq!(r.response_header("retry-after"), Some("3"));
    assert!(r.local_response.is_some());
    assert!(r.request_headers.get("x-cell-id").is_none());
}

#[test]
fn ten_thousand_tenants_route_as_cellmap_route_says() {
    let path = fixtures::example_snapshot_path();
    let text = std::fs::read_to_string(&path).expect("the example snapshot");
    let library =
        cell_router_mapping::Snapshot::parse(text.as_bytes()).expect("a valid example snapshot");
    let doc = library.to_doc();
    let mut host = Host::new().unwrap();
    host.configure(Config::trust_header("x-tenant").fallback(&doc).json())
        .unwrap();

    let tenants: Vec<String> = (0..10_000).map(|i| format!("tenant-{i:05}")).collect();
    let mut filter_cells = Vec::with_capacity(tenants.len());
    for tenant in &tenants {
        let r = host
            .send(
                Request::get("/v1")
                    .header("x-tenant", tenant)
                    .header("x-request-id", ""),
            )
            .unwrap();
        let cell = r
            .cell()
            .unwrap_or_else(|| panic!("{tenant} not routed: {}", r.json()));
        // trust_header mode: the tenant is the split key.
        let expected = library.resolve(tenant.as_bytes(), &Draws::unshed(tenant.as_bytes(), 0));
        let expected = library.cell(expected.final_cell()).unwrap();
        assert_eq!(cell, expected.id, "{tenant}: filter vs mapping library");
        filter_cells.push(cell.to_string());
    }
    // Several cells must actually be in play for this to mean anything.
    let distinct: BTreeSet<&String> = filter_cells.iter().collect();
    assert!(distinct.len() >= 3, "{distinct:?}");

    let bin = fixtures::cellmap_bin().expect("the cellmap binary");
    let mut child = Command::new(&bin)
        .args(["route", "--snapshot"])
        .arg(&path)
        .arg("--json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run cellmap route");
    let mut stdin = child.stdin.take().unwrap();
    let input = tenants.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "cellmap route failed: {output:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), tenants.len());
    for ((tenant, cell), line) in tenants.iter().zip(&filter_cells).zip(&lines) {
        assert_eq!(line["tenant"], tenant.as_str());
        assert_eq!(
            line["cell"],
            cell.as_str(),
            "{tenant}: filter vs cellmap route"
        );
    }
}

/// The decision goes into filter state (`proxy_set_property`, which Envoy
/// keeps as `wasm.cell_router.*` for access logs): cell, reason, snapshot;
/// the tenant only with `log_tenant`. A host that refuses the property
/// changes nothing else.
#[test]
fn the_decision_is_set_as_properties_and_a_refused_set_fails_nothing() {
    let doc = with_override(
        snapshot_with(7, vec![cell("cell-a"), draining("cell-b", 1.0, 3)]),
        "acme",
        "cell-a",
    );
    let mut host = router_with(&doc);
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some("cell-a"));
    assert_eq!(r.property("cell_router.cell").as_deref(), Some("cell-a"));
    assert_eq!(
        r.property("cell_router.reason").as_deref(),
        Some("override")
    );
    assert_eq!(r.property("cell_router.snapshot").as_deref(), Some("7"));
    assert_eq!(r.property("cell_router.tenant"), None);

    // Shed by the draining cell, every request (shed_ratio 1.0).
    let shed = send(&mut host, &tenants_in(&doc, "cell-b", 1)[0]);
    assert_eq!(shed.status(), Some(503));
    assert_eq!(shed.property("cell_router.cell").as_deref(), Some("cell-b"));
    assert_eq!(shed.property("cell_router.reason").as_deref(), Some("shed"));

    // Refused: the reason only, and the client's cell header is gone even
    // though nothing goes upstream (an access log reads the headers).
    let refused = host
        .request(&[(":path", "/"), ("x-cell-id", "cell-b")])
        .unwrap();
    assert_eq!(refused.status(), Some(401));
    assert_eq!(
        refused.property("cell_router.reason").as_deref(),
        Some("missing_token")
    );
    assert_eq!(refused.property("cell_router.cell"), None);
    assert!(refused.request_headers.get("x-cell-id").is_none());

    // The tenant, when configured.
    let mut host = Host::new().unwrap();
    host.configure(
        Config::jwt(&[Alg::HS256])
            .fallback(&doc)
            .set("log_tenant", true)
            .json(),
    )
    .unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(r.property("cell_router.tenant").as_deref(), Some("acme"));

    // A host that keeps no filter state: the same answers.
    let options = HostOptions {
        refuse_set_property: true,
        ..HostOptions::default()
    };
    let mut host = Host::with_options(options).unwrap();
    host.configure(Config::jwt(&[Alg::HS256]).fallback(&doc).json())
        .unwrap();
    let r = send(&mut host, "acme");
    assert!(r.forwarded());
    assert_eq!(r.cell(), Some("cell-a"));
    assert!(r.properties.is_empty());
    assert!(r.host_calls.get("proxy_set_property").copied().unwrap_or(0) >= 3);
    let refused = host.request(&[(":path", "/")]).unwrap();
    assert_eq!(refused.status(), Some(401));
}
