//! The snapshot subscription of the real filter `.wasm`: fetch from the
//! sidecar cluster, swap, refuse bad snapshots, survive sidecar failures.

use cell_router_kit::fixtures::{
    Config, SIDECAR_CLUSTER, bearer, metric, parsed, snapshot, snapshot_json, token, with_override,
};
use cell_router_kit::tokens::Alg;
use cell_router_mapping::SnapshotDoc;
use cell_router_wasm_host::{Exchange, Host, HostOptions, HttpCall, HttpCallFailure};
use std::collections::BTreeSet;
use std::time::Duration;

fn subscribed() -> Host {
    let mut host = Host::new().expect("start the filter VM");
    host.configure(Config::jwt(&[Alg::HS256]).sidecar().json())
        .expect("configure the filter");
    host
}

fn send(host: &mut Host, tenant: &str) -> Exchange {
    let t = token(Alg::HS256, host.now_unix(), tenant);
    host.request(&[(":path", "/v1/sms"), ("authorization", &bearer(&t))])
        .expect("request through the filter")
}

/// Lets time pass (ticks fire) until the filter calls the sidecar.
fn next_fetch(host: &mut Host) -> HttpCall {
    for _ in 0..600 {
        if let Some(call) = host.pending_http_calls().into_iter().next() {
            return call;
        }
        host.advance(Duration::from_millis(100)).unwrap();
    }
    panic!("no fetch within 60 s; log:\n{}", host.log_text());
}

fn serve(host: &mut Host, doc: &SnapshotDoc) {
    let call = next_fetch(host);
    host.respond_http_call(
        call.token,
        200,
        &[("content-type", "application/json")],
        snapshot_json(doc),
    )
    .unwrap();
}

/// A tenant whose slot cell in `doc` is not `cell`.
fn tenant_not_in(doc: &SnapshotDoc, cell: &str) -> String {
    let s = parsed(doc);
    (0..)
        .map(|i| format!("tenant-{i}"))
        .find(|t| {
            let r = s.resolve(t.as_bytes(), &cell_router_mapping::Draws::default());
            s.cell(r.routed_cell().unwrap()).unwrap().id != cell
        })
        .unwrap()
}

#[test]
fn the_first_fetch_asks_the_sidecar_cluster_for_any_version() {
    let mut host = subscribed();
    let call = next_fetch(&mut host);
    assert_eq!(call.upstream, SIDECAR_CLUSTER);
    assert_eq!(call.header(":method"), Some("GET"));
    assert_eq!(call.path(), Some("/snapshot?after=0&wait=30"));
    assert!(call.header(":authority").is_some());
    assert!(call.header("if-none-match").is_none());
    // Longer than the long-poll, so the sidecar can hold the request.
    assert!(call.timeout > Duration::from_secs(30), "{:?}", call.timeout);
    // Only one call in flight.
    host.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(host.pending_http_calls().len(), 1);
}

#[test]
fn a_fetched_snapshot_is_swapped_in_and_the_next_fetch_is_conditional() {
    let mut host = subscribed();
    assert_eq!(send(&mut host, "acme").status(), Some(503));

    let v1 = snapshot(1);
    serve(&mut host, &v1);
    let r = send(&mut host, "acme");
    let slot_cell = r.cell().unwrap().to_string();
    assert_eq!(r.header("x-cell-snapshot"), Some("1"));
    assert_eq!(host.metric(metric::SNAPSHOTS_APPLIED), Some(1));
    assert_eq!(host.metric(metric::SNAPSHOT_VERSION), Some(1));

    let call = next_fetch(&mut host);
    assert_eq!(call.path(), Some("/snapshot?after=1&wait=30"));
    assert_eq!(call.header("if-none-match"), Some("\"1\""));

    // Version 2 moves acme elsewhere: new requests follow at once.
    let target = if slot_cell == "cell-c" {
        "cell-a"
    } else {
        "cell-c"
    };
    let v2 = with_override(snapshot(2), "acme", target);
    host.respond_http_call(call.token, 200, &[], snapshot_json(&v2))
        .unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some(target));
    assert_eq!(r.header("x-cell-snapshot"), Some("2"));
    assert_eq!(host.metric(metric::SNAPSHOT_VERSION), Some(2));
    assert_eq!(host.metric(metric::SNAPSHOTS_APPLIED), Some(2));
}

#[test]
fn not_modified_keeps_the_snapshot_and_is_not_a_failure() {
    let mut host = subscribed();
    serve(&mut host, &snapshot(5));
    for _ in 0..3 {
        let call = next_fetch(&mut host);
        host.respond_http_call(call.token, 304, &[], "").unwrap();
    }
    assert_eq!(send(&mut host, "acme").header("x-cell-snapshot"), Some("5"));
    assert_eq!(host.metric(metric::FETCH_FAILURES).unwrap_or(0), 0);
    assert_eq!(host.metric(metric::SNAPSHOTS_APPLIED), Some(1));
}

#[test]
fn a_bad_snapshot_is_refused_and_the_last_good_one_keeps_serving() {
    let mut host = subscribed();
    let good = snapshot(3);
    serve(&mut host, &good);
    let before = send(&mut host, "acme").cell().unwrap().to_string();

    let mut broken_table = snapshot(4);
    broken_table.slot_table = "AAAA".into(); // 2 slots instead of 1024
    let mut unknown_failover = snapshot(5);
    unknown_failover.cells[0].failover = Some("nowhere".into());
    let bodies = [
        "{not json".to_string(),
        snapshot_json(&broken_table),
        snapshot_json(&unknown_failover),
        // Not newer than what is held.
        snapshot_json(&with_override(snapshot(3), "acme", "cell-b")),
        snapshot_json(&with_override(snapshot(2), "acme", "cell-b")),
        String::new(),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let call = next_fetch(&mut host);
        host.respond_http_call(call.token, 200, &[], body).unwrap();
        assert_eq!(host.metric(metric::SNAPSHOTS_REFUSED), Some(i as i64 + 1));
        let r = send(&mut host, "acme");
        assert_eq!(r.cell(), Some(before.as_str()), "after refusing body {i}");
        assert_eq!(r.header("x-cell-snapshot"), Some("3"));
    }
    assert_eq!(host.metric(metric::SNAPSHOT_VERSION), Some(3));

    // A good one is still taken afterwards.
    serve(&mut host, &with_override(snapshot(6), "acme", "cell-b"));
    assert_eq!(send(&mut host, "acme").cell(), Some("cell-b"));
}

#[test]
fn sidecar_errors_and_timeouts_back_off_and_routing_continues() {
    let mut host = subscribed();
    serve(&mut host, &snapshot(1));
    let tenant = "acme";
    let cell = send(&mut host, tenant).cell().unwrap().to_string();

    let failures = [
        HttpCallFailure::ConnectionFailure,
        HttpCallFailure::NoHealthyUpstream,
        HttpCallFailure::Reset,
    ];
    let mut gaps = Vec::new();
    let mut last = host.now();
    for (i, failure) in failures.iter().enumerate() {
        let call = next_fetch(&mut host);
        gaps.push(call.dispatched_at.duration_since(last).unwrap());
        last = call.dispatched_at;
        host.fail_http_call(call.token, *failure).unwrap();
        assert_eq!(host.metric(metric::FETCH_FAILURES), Some(i as i64 + 1));
        assert_eq!(send(&mut host, tenant).cell(), Some(cell.as_str()));
    }
    // A 500 from the sidecar is a failure too.
    let call = next_fetch(&mut host);
    gaps.push(call.dispatched_at.duration_since(last).unwrap());
    last = call.dispatched_at;
    host.respond_http_call(call.token, 500, &[], "boom")
        .unwrap();
    assert_eq!(host.metric(metric::FETCH_FAILURES), Some(4));

    // A sidecar that never answers: Envoy times the call out (504).
    let call = next_fetch(&mut host);
    gaps.push(call.dispatched_at.duration_since(last).unwrap());
    host.advance(call.timeout + Duration::from_millis(1))
        .unwrap();
    assert_eq!(host.metric(metric::FETCH_FAILURES), Some(5));
    assert!(
        host.pending_http_calls()
            .iter()
            .all(|c| c.token != call.token)
    );

    // Retries back off: each gap after a failure is at least as long as the
    // first, and the later ones are longer.
    assert!(gaps[3] > gaps[1], "no backoff: {gaps:?}");
    assert_eq!(send(&mut host, tenant).cell(), Some(cell.as_str()));
}

#[test]
fn with_the_sidecar_down_the_last_good_snapshot_serves_indefinitely() {
    let mut host = subscribed();
    serve(&mut host, &snapshot(9));
    let cell = send(&mut host, "acme").cell().unwrap().to_string();
    // Ten minutes of refused connections.
    let deadline = host.now() + Duration::from_secs(600);
    let mut calls = 0;
    while host.now() < deadline {
        if let Some(call) = host.pending_http_calls().into_iter().next() {
            calls += 1;
            host.fail_http_call(call.token, HttpCallFailure::ConnectionFailure)
                .unwrap();
        }
        host.advance(Duration::from_millis(100)).unwrap();
    }
    // Backed off (default max 5 s), not hammering every tick.
    assert!(
        (100..=6000).contains(&calls) && calls < 600,
        "{calls} calls in 10 minutes"
    );
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some(cell.as_str()));
    assert_eq!(r.header("x-cell-snapshot"), Some("9"));
    let age = host.metric(metric::SNAPSHOT_AGE).unwrap();
    assert!((595..=605).contains(&age), "age {age}");
    // And the sidecar coming back is noticed.
    serve(&mut host, &with_override(snapshot(10), "acme", "cell-b"));
    assert_eq!(send(&mut host, "acme").cell(), Some("cell-b"));
    assert_eq!(host.metric(metric::SNAPSHOT_AGE), Some(0));
}

#[test]
fn the_fallback_snapshot_serves_until_the_sidecar_answers() {
    let fallback = snapshot(100);
    let mut host = Host::new().unwrap();
    host.configure(
        Config::jwt(&[Alg::HS256])
            .fallback(&fallback)
            .sidecar()
            .json(),
    )
    .unwrap();
    let tenant = tenant_not_in(&fallback, "cell-b");
    assert_eq!(
        send(&mut host, &tenant).header("x-cell-snapshot"),
        Some("100")
    );
    // Any valid sidecar snapshot replaces the fallback, whatever its version.
    serve(&mut host, &with_override(snapshot(1), &tenant, "cell-b"));
    let r = send(&mut host, &tenant);
    assert_eq!(r.cell(), Some("cell-b"));
    assert_eq!(r.header("x-cell-snapshot"), Some("1"));
}

#[test]
fn every_worker_fetches_and_switches_on_its_own() {
    let mut first = subscribed();
    let mut second = first.worker().unwrap();
    second
        .configure(Config::jwt(&[Alg::HS256]).sidecar().json())
        .unwrap();
    serve(&mut first, &snapshot(1));
    serve(&mut second, &snapshot(1));
    // Both hold a long-poll; the sidecar answers both with version 2.
    let v2 = with_override(snapshot(2), "acme", "cell-c");
    for host in [&mut first, &mut second] {
        let call = next_fetch(host);
        assert_eq!(call.path(), Some("/snapshot?after=1&wait=30"));
        host.respond_http_call(call.token, 200, &[], snapshot_json(&v2))
            .unwrap();
    }
    for host in [&mut first, &mut second] {
        let r = send(host, "acme");
        assert_eq!(r.cell(), Some("cell-c"));
        assert_eq!(r.header("x-cell-snapshot"), Some("2"));
    }
    // Envoy sums the workers' counters.
    assert_eq!(first.metric(metric::SNAPSHOTS_APPLIED), Some(4));
}

#[test]
fn an_unknown_sidecar_cluster_is_a_fetch_failure_not_a_crash() {
    let options = HostOptions {
        clusters: Some(BTreeSet::from(["some-other-cluster".to_string()])),
        ..HostOptions::default()
    };
    let mut host = Host::with_options(options).unwrap();
    host.configure(
        Config::jwt(&[Alg::HS256])
            .fallback(&snapshot(1))
            .sidecar()
            .json(),
    )
    .unwrap();
    host.advance(Duration::from_secs(5)).unwrap();
    assert!(host.pending_http_calls().is_empty());
    let failures = host.metric(metric::FETCH_FAILURES).unwrap();
    assert!((1..=20).contains(&failures), "{failures} failures in 5 s");
    assert!(send(&mut host, "acme").forwarded());
}

/// Answers `host`'s long-poll with these binary bytes.
fn serve_binary(host: &mut Host, bytes: Vec<u8>) {
    let call = next_fetch(host);
    host.respond_http_call(
        call.token,
        200,
        &[("content-type", cell_router_mapping::binary::MEDIA_TYPE)],
        bytes,
    )
    .unwrap();
}

const TRUSTED: &str = "records already checked by another VM of this Envoy";

fn applied_lines(host: &Host) -> Vec<String> {
    host.logs()
        .iter()
        .filter(|l| l.message.contains("applied from the sidecar"))
        .map(|l| l.message.clone())
        .collect()
}

/// Workers of one Envoy each receive and checksum their own copy of a
/// binary snapshot, but the records are checked by the first VM only: it
/// publishes the bytes' fingerprint in shared data, and a VM holding bytes
/// with that fingerprint trusts them. Bytes that do not match the mark
/// (another version, a corrupted copy) are checked (and refused) in full.
#[test]
fn one_vm_checks_a_binary_snapshot_for_every_worker() {
    use cell_router_mapping::binary;
    let mut first = subscribed();
    let mut second = first.worker().unwrap();
    second
        .configure(Config::jwt(&[Alg::HS256]).sidecar().json())
        .unwrap();
    let v1 = binary::encode(&parsed(&with_override(snapshot(1), "acme", "cell-c")));
    serve_binary(&mut first, v1.clone());
    let checksum = u64::from_le_bytes(v1[v1.len() - 8..].try_into().unwrap());
    let mark = first
        .shared_data(cell_router_filter::subscription::CHECKED_MARK_KEY)
        .map(|(value, _)| String::from_utf8(value).unwrap());
    assert_eq!(mark, Some(format!("1 {checksum:016x}")));
    serve_binary(&mut second, v1);
    for host in [&mut first, &mut second] {
        let r = send(host, "acme");
        assert_eq!(r.cell(), Some("cell-c"));
        assert_eq!(r.header("x-cell-snapshot"), Some("1"));
    }
    let (one, two) = (applied_lines(&first), applied_lines(&second));
    assert!(one.len() == 1 && !one[0].contains(TRUSTED), "{one:?}");
    assert!(two.len() == 1 && two[0].contains(TRUSTED), "{two:?}");

    // A copy corrupted on its way to the second VM, under a mark for the
    // same version: its own checksum refuses it.
    let v2 = binary::encode(&parsed(&with_override(snapshot(2), "acme", "cell-a")));
    serve_binary(&mut first, v2.clone());
    let mut bad = v2;
    let middle = bad.len() / 2;
    bad[middle] ^= 0x10;
    serve_binary(&mut second, bad);
    assert_eq!(send(&mut first, "acme").cell(), Some("cell-a"));
    let r = send(&mut second, "acme");
    assert_eq!(
        r.header("x-cell-snapshot"),
        Some("1"),
        "{}",
        second.log_text()
    );
    assert_eq!(r.cell(), Some("cell-c"));

    // A mark naming other bytes (another encoding of version 3): checked here.
    let v3 = binary::encode(&parsed(&with_override(snapshot(3), "acme", "cell-b")));
    second.set_shared_data(
        cell_router_filter::subscription::CHECKED_MARK_KEY,
        b"3 0123456789abcdef",
    );
    second.clear_logs();
    serve_binary(&mut second, v3);
    assert_eq!(send(&mut second, "acme").cell(), Some("cell-b"));
    let lines = applied_lines(&second);
    assert!(lines.len() == 1 && !lines[0].contains(TRUSTED), "{lines:?}");
}

fn unix_nanos(host: &Host) -> u64 {
    host.now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// While another VM holds a fresh claim on the same bytes, a VM waits for
/// its mark (serving the last good snapshot), then trusts them; a claim not
/// renewed for a second is taken over and the records checked here.
#[test]
fn a_vm_waits_for_the_vm_checking_the_same_bytes() {
    use cell_router_filter::subscription::{CHECKED_MARK_KEY, CHECKING_KEY};
    use cell_router_mapping::binary;
    let mut host = subscribed();
    serve(&mut host, &snapshot(1));
    let v2 = binary::encode(&parsed(&with_override(snapshot(2), "acme", "cell-c")));
    let checksum = u64::from_le_bytes(v2[v2.len() - 8..].try_into().unwrap());
    let fingerprint = format!("2 {checksum:016x}");
    let claim = format!("{fingerprint} 00000000000000aa {}", unix_nanos(&host));
    host.set_shared_data(CHECKING_KEY, claim.as_bytes());
    serve_binary(&mut host, v2);
    host.advance(Duration::from_millis(300)).unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(
        r.header("x-cell-snapshot"),
        Some("1"),
        "{}",
        host.log_text()
    );
    host.set_shared_data(CHECKED_MARK_KEY, fingerprint.as_bytes());
    host.advance(Duration::from_millis(20)).unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(
        r.header("x-cell-snapshot"),
        Some("2"),
        "{}",
        host.log_text()
    );
    assert_eq!(r.cell(), Some("cell-c"));
    let lines = applied_lines(&host);
    assert!(
        lines.last().is_some_and(|l| l.contains(TRUSTED)),
        "{lines:?}"
    );

    // A claim last renewed two seconds ago: its VM is gone; checked here.
    let v3 = binary::encode(&parsed(&with_override(snapshot(3), "acme", "cell-b")));
    let checksum = u64::from_le_bytes(v3[v3.len() - 8..].try_into().unwrap());
    let stale = unix_nanos(&host) - 2_000_000_000;
    let claim = format!("3 {checksum:016x} 00000000000000aa {stale}");
    host.set_shared_data(CHECKING_KEY, claim.as_bytes());
    host.clear_logs();
    serve_binary(&mut host, v3);
    host.advance(Duration::from_millis(20)).unwrap();
    assert_eq!(
        send(&mut host, "acme").cell(),
        Some("cell-b"),
        "{}",
        host.log_text()
    );
    let lines = applied_lines(&host);
    assert!(lines.len() == 1 && !lines[0].contains(TRUSTED), "{lines:?}");
    let mark = host.shared_data(CHECKED_MARK_KEY).map(|(v, _)| v);
    assert_eq!(mark, Some(format!("3 {checksum:016x}").into_bytes()));
}

/// The real `.wasm` asks for the binary form and installs it: routing
/// follows the binary snapshot exactly as it follows the JSON one; a
/// corrupted binary body is refused and the last good snapshot serves.
#[test]
fn the_binary_form_is_asked_for_and_installed() {
    use cell_router_mapping::binary;
    let mut host = subscribed();
    let call = next_fetch(&mut host);
    assert_eq!(
        call.header("accept"),
        Some("application/vnd.cellmap.snapshot, application/json;q=0.5")
    );
    let v1 = with_override(snapshot(1), "acme", "cell-c");
    host.respond_http_call(
        call.token,
        200,
        &[("content-type", binary::MEDIA_TYPE), ("etag", "\"1-bin\"")],
        binary::encode(&parsed(&v1)),
    )
    .unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some("cell-c"));
    assert_eq!(r.header("x-cell-snapshot"), Some("1"));
    assert_eq!(host.metric(metric::SNAPSHOTS_APPLIED), Some(1));

    let call = next_fetch(&mut host);
    assert_eq!(call.path(), Some("/snapshot?after=1&wait=30"));
    let v2 = with_override(snapshot(2), "acme", "cell-a");
    let mut bad = binary::encode(&parsed(&v2));
    let middle = bad.len() / 2;
    bad[middle] ^= 0x10;
    host.respond_http_call(call.token, 200, &[("etag", "\"2-bin\"")], bad)
        .unwrap();
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some("cell-c"), "the last good snapshot serves");
    assert_eq!(r.header("x-cell-snapshot"), Some("1"));
    assert_eq!(host.metric(metric::SNAPSHOTS_APPLIED), Some(1));
}

/// The binary form keyed by hash (what `cellmap serve` sends by default) is
/// installed by the real `.wasm` and routes as the JSON form: the override's
/// tenant goes to its cell, others by slot; a copy with a record out of
/// hash order is refused and the last good snapshot keeps serving.
#[test]
fn the_binary_form_keyed_by_hash_is_installed() {
    use cell_router_mapping::binary;
    let mut host = subscribed();
    let v1 = with_override(snapshot(1), "acme", "cell-c");
    let json = parsed(&v1);
    serve_binary(&mut host, binary::encode_hashed(&json).unwrap());
    let stranger = tenant_not_in(&v1, "cell-c");
    for tenant in ["acme", stranger.as_str()] {
        let want = json.resolve(tenant.as_bytes(), &cell_router_mapping::Draws::default());
        let want = want
            .routed_cell()
            .and_then(|i| json.cell(i))
            .map(|c| c.id.clone());
        let r = send(&mut host, tenant);
        assert_eq!(r.cell().map(str::to_string), want, "{tenant}");
        assert_eq!(r.header("x-cell-snapshot"), Some("1"));
    }
    assert_eq!(send(&mut host, "acme").cell(), Some("cell-c"));
    assert_eq!(host.metric(metric::SNAPSHOTS_APPLIED), Some(1));

    // Version 2 with two overrides, the records swapped and resealed.
    let v2 = with_override(
        with_override(snapshot(2), "acme", "cell-a"),
        "beta",
        "cell-a",
    );
    let bytes = binary::encode_hashed(&parsed(&v2)).unwrap();
    let arena =
        u64::from_le_bytes(bytes[48 + 4 * 16..48 + 4 * 16 + 8].try_into().unwrap()) as usize;
    let mut bad = bytes.clone();
    bad[arena..arena + 10].copy_from_slice(&bytes[arena + 10..arena + 20]);
    bad[arena + 10..arena + 20].copy_from_slice(&bytes[arena..arena + 10]);
    let body = bad.len() - 8;
    let sum = binary::checksum(&bad[..body]);
    bad[body..].copy_from_slice(&sum.to_le_bytes());
    serve_binary(&mut host, bad);
    let r = send(&mut host, "acme");
    assert_eq!(r.cell(), Some("cell-c"), "the last good snapshot serves");
    assert_eq!(r.header("x-cell-snapshot"), Some("1"));
    assert!(
        host.log_text().contains("out of hash order"),
        "{}",
        host.log_text()
    );
}
