//! The draws through the real `.wasm` (issue #12): a recovery ramp against
//! the host's fake clock, on two workers; shedding that no request id can
//! steer.

use cell_router_kit::fixtures::{
    Config, HASH_KEY, bearer, cell, draining, parsed, snapshot_with, token,
};
use cell_router_kit::tokens::Alg;
use cell_router_mapping::{Draws, HashKey, SnapshotDoc};
use cell_router_wasm_host::{Exchange, Host, HostOptions};
use std::time::{Duration, UNIX_EPOCH};

fn router_with(doc: &SnapshotDoc) -> Host {
    let mut host = Host::new().expect("start the filter VM");
    host.configure(Config::jwt(&[Alg::HS256]).fallback(doc).json())
        .expect("configure the filter");
    host
}

/// A request of `tenant` (its token has no subject: the tenant is the split
/// key), with this `x-request-id` if given.
fn send(host: &mut Host, tenant: &str, request_id: Option<&str>) -> Exchange {
    let t = bearer(&token(Alg::HS256, host.now_unix(), tenant));
    let mut headers = vec![(":path", "/v1/sms"), ("authorization", t.as_str())];
    if let Some(id) = request_id {
        headers.push(("x-request-id", id));
    }
    host.request(&headers).expect("request through the filter")
}

/// Tenants whose slot is on cell index `cell`.
fn tenants_on(doc: &SnapshotDoc, cell: u16, n: usize) -> Vec<String> {
    let s = parsed(doc);
    (0..)
        .map(|i| format!("t-{i}"))
        .filter(|t| s.resolve(t.as_bytes(), &Draws::default()).home == cell)
        .take(n)
        .collect()
}

/// cell-a back from an outage, ramping from 0 to 100 % over 600 s from
/// 100 s after the host's start, cell-b its failover.
fn ramped(start_unix: u64) -> SnapshotDoc {
    let mut a = cell("cell-a");
    a.failover = Some("cell-b".into());
    a.ramp = Some(
        serde_json::from_value(serde_json::json!({"start": start_unix, "duration_s": 600}))
            .expect("a ramp"),
    );
    snapshot_with(1, vec![a, cell("cell-b"), cell("cell-c")])
}

/// Share of `tenants` routed to cell-a now; every other one must be on
/// cell-b with reason ramp's cell, and agree with the library.
fn share_on_a(host: &mut Host, doc: &SnapshotDoc, tenants: &[String]) -> f64 {
    let library = parsed(doc);
    let now_ms = host.now_unix() * 1000;
    let mut on_a = 0;
    for tenant in tenants {
        let r = send(host, tenant, None);
        let cell = r.cell().unwrap_or_else(|| panic!("{tenant}: {}", r.json()));
        let want = library.resolve(tenant.as_bytes(), &Draws::unshed(tenant.as_bytes(), now_ms));
        assert_eq!(
            cell,
            library.cell(want.final_cell()).unwrap().id,
            "{tenant}: filter vs library"
        );
        match cell {
            "cell-a" => on_a += 1,
            "cell-b" => {}
            other => panic!("{tenant} on {other}"),
        }
    }
    on_a as f64 / tenants.len() as f64
}

#[test]
fn a_linear_ramp_follows_the_fake_clock_on_two_workers() {
    // The ramp starts 100 s after the host clock's start (whole seconds).
    let options = HostOptions::default();
    let start = options
        .start_time
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 100;
    let doc = ramped(start);
    let tenants = tenants_on(&doc, 0, 2000);
    let mut one = Host::with_options(options).unwrap();
    one.configure(Config::jwt(&[Alg::HS256]).fallback(&doc).json())
        .unwrap();
    let mut two = one.worker().unwrap();
    two.configure(Config::jwt(&[Alg::HS256]).fallback(&doc).json())
        .unwrap();
    let gauge = "cell_router.ramp_share.cell-a";

    // Before the start and at it: nobody on cell-a; each request sent on to
    // cell-b is counted as ramped there.
    assert_eq!(share_on_a(&mut one, &doc, &tenants), 0.0);
    assert_eq!(one.metric("cell_router.ramped.cell-b"), Some(2000));
    assert_eq!(one.metric("cell_router.routed.cell-b"), Some(2000));
    one.advance_clock(Duration::from_secs(100));
    assert_eq!(share_on_a(&mut two, &doc, &tenants), 0.0);
    one.tick().unwrap();
    assert_eq!(one.metric(gauge), Some(0));

    // Midpoint: 50 ± 3 % on each worker (2,000 tenants, σ ≈ 1.1 %), the
    // same tenants on both.
    one.advance_clock(Duration::from_secs(300));
    let (a, b) = (
        share_on_a(&mut one, &doc, &tenants),
        share_on_a(&mut two, &doc, &tenants),
    );
    eprintln!("midpoint share: worker 1 {a:.4}, worker 2 {b:.4}");
    assert!((a - 0.5).abs() <= 0.03, "worker 1 at the midpoint: {a}");
    assert_eq!(a, b, "workers disagree at the same instant");
    two.tick().unwrap();
    assert_eq!(two.metric(gauge), Some(5000));

    // Later: more, and every tenant back on cell-a stays there.
    let library = parsed(&doc);
    let back_at = |now_s: u64| -> Vec<bool> {
        tenants
            .iter()
            .map(|t| {
                let d = Draws::unshed(t.as_bytes(), now_s * 1000);
                library.resolve(t.as_bytes(), &d).final_cell() == 0
            })
            .collect()
    };
    let mid = back_at(one.now_unix());
    one.advance_clock(Duration::from_secs(150));
    let three_quarters = share_on_a(&mut one, &doc, &tenants);
    assert!((three_quarters - 0.75).abs() <= 0.03, "{three_quarters}");
    let later = back_at(one.now_unix());
    assert!(mid.iter().zip(&later).all(|(m, l)| !m || *l));

    // After the end: everyone on cell-a, on both workers.
    one.advance_clock(Duration::from_secs(150));
    assert_eq!(share_on_a(&mut one, &doc, &tenants), 1.0);
    assert_eq!(share_on_a(&mut two, &doc, &tenants), 1.0);
    one.tick().unwrap();
    assert_eq!(one.metric(gauge), Some(10_000));
}

/// 2,000 requests with one fixed `x-request-id` to a cell shedding 30 %:
/// 30 ± 4 % are shed. And 20 ids the old rule (`draw('s', id)`) never shed
/// do no better.
#[test]
fn no_request_id_steers_shedding() {
    let doc = snapshot_with(1, vec![draining("cell-a", 0.3, 5), cell("cell-b")]);
    let tenant = tenants_on(&doc, 0, 1).remove(0);
    let mut host = router_with(&doc);
    let shed_share = |host: &mut Host, ids: &[String], n: usize| {
        let shed = (0..n)
            .filter(|i| {
                let r = send(host, &tenant, Some(&ids[i % ids.len()]));
                match r.status() {
                    Some(503) => true,
                    None => false,
                    other => panic!("status {other:?}"),
                }
            })
            .count();
        shed as f64 / n as f64
    };
    let fixed = shed_share(&mut host, &["fixed-id-1".to_string()], 2000);
    eprintln!("one fixed x-request-id: {fixed:.4} shed");
    assert!((fixed - 0.3).abs() <= 0.04, "fixed id shed {fixed}");

    let key = HashKey::from_hex(HASH_KEY).unwrap();
    let lucky: Vec<String> = (0..)
        .map(|i| format!("lucky-{i}"))
        .filter(|id| key.draw(b's', id.as_bytes()) >= 9000)
        .take(20)
        .collect();
    let lucky_share = shed_share(&mut host, &lucky, 2000);
    eprintln!("20 lucky ids: {lucky_share:.4} shed");
    assert!(
        (lucky_share - 0.3).abs() <= 0.04,
        "lucky ids shed {lucky_share}"
    );
}
