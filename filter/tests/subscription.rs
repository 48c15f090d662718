//! The snapshot subscription state machine.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_filter::subscription::{
    Body, BodyPlan, FetchOutcome, FetchRequest, FetchResponse, PersistedConfig, SidecarConfig,
    Source, Subscription,
};
use common::*;

fn sidecar() -> SidecarConfig {
    SidecarConfig {
        cluster: "cellmap_sidecar".into(),
        authority: "cellmap".into(),
        path: "/snapshot".into(),
        long_poll_s: 30,
        timeout_ms: 35_000,
        retry_min_ms: 200,
        retry_max_ms: 5_000,
        tick_ms: 100,
        min_fetch_interval_ms: 100,
        max_snapshot_bytes: 64 << 20,
        binary: true,
        chunk_bytes: 1 << 20,
        persisted: None,
    }
}

const T0: u64 = NOW * 1000;

fn body(version: u64) -> Vec<u8> {
    snapshot_doc(version).to_json().into_bytes()
}

/// Dispatches whatever is due at `now` and returns its token.
fn start(sub: &mut Subscription, now: u64, token: u32) -> FetchRequest {
    let request = sub.poll(now).expect("a fetch is due");
    sub.dispatched(Source::Sidecar, token, now);
    request
}

fn respond(
    sub: &mut Subscription,
    token: u32,
    now: u64,
    status: Option<u16>,
    body: &[u8],
) -> FetchOutcome {
    respond_with(sub, token, now, FetchResponse::new(status, body))
}

/// Hands an answer to the subscription as the root context does: a snapshot
/// it applies is put in force and reported installed.
fn respond_with(
    sub: &mut Subscription,
    token: u32,
    now: u64,
    response: FetchResponse<'_>,
) -> FetchOutcome {
    let mut outcome = sub.on_response(token, now, response);
    // A binary snapshot is applied in steps, as the root context does on
    // its ticks; no new request may start meanwhile.
    let mut steps = 0;
    while matches!(outcome, FetchOutcome::Applying) {
        assert!(sub.is_applying());
        assert_eq!(sub.poll(now + 5_000), None, "a fetch while applying");
        outcome = sub.apply_step(now, 256);
        steps += 1;
        assert!(steps < 100_000, "the apply never ends");
    }
    assert!(!sub.is_applying());
    if let FetchOutcome::Applied { snapshot, .. } = &outcome {
        sub.installed(snapshot.version(), now);
    }
    outcome
}

#[test]
fn first_request_asks_for_what_the_sidecar_has() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    let request = start(&mut sub, T0, 1);
    assert_eq!(request.cluster, "cellmap_sidecar");
    assert_eq!(request.header(":method"), Some("GET"));
    assert_eq!(request.header(":path"), Some("/snapshot?after=0&wait=30"));
    assert_eq!(request.header(":authority"), Some("cellmap"));
    assert_eq!(request.header("if-none-match"), None);
    assert_eq!(request.timeout.as_millis(), 35_000);
    // One at a time.
    assert!(sub.in_flight());
    assert!(sub.poll(T0 + 10_000).is_none());
}

#[test]
fn a_200_applies_and_the_next_long_poll_follows_at_once() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    match respond(&mut sub, 1, T0 + 150, Some(200), &body(5)) {
        FetchOutcome::Applied { snapshot, .. } => assert_eq!(snapshot.version(), 5),
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.version(), Some(5));
    // The previous fetch started more than min_fetch_interval ago: go now.
    let request = start(&mut sub, T0 + 150, 2);
    assert_eq!(request.header(":path"), Some("/snapshot?after=5&wait=30"));
    assert_eq!(request.header("if-none-match"), Some("\"5\""));
}

#[test]
fn a_304_keeps_the_version() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    assert!(matches!(
        respond(&mut sub, 1, T0 + 10, Some(200), &body(5)),
        FetchOutcome::Applied { .. }
    ));
    start(&mut sub, T0 + 200, 2);
    assert!(matches!(
        respond(&mut sub, 2, T0 + 30_200, Some(304), b""),
        FetchOutcome::Unchanged
    ));
    assert_eq!(sub.version(), Some(5));
    assert_eq!(sub.consecutive_failures(), 0);
    assert!(sub.poll(T0 + 30_200).is_some());
}

#[test]
fn a_sidecar_answering_at_once_is_not_hammered() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0 + 2, Some(304), b"");
    assert!(sub.poll(T0 + 2).is_none());
    assert!(sub.poll(T0 + 99).is_none());
    assert!(sub.poll(T0 + 100).is_some());
}

#[test]
fn a_bad_snapshot_is_refused_and_the_last_good_kept() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0, Some(200), &body(5));
    start(&mut sub, T0 + 100, 2);
    let mut bad = snapshot_json(6);
    bad["cells"][0]["shed_ratio"] = serde_json::json!(3.0);
    match respond(&mut sub, 2, T0 + 200, Some(200), bad.to_string().as_bytes()) {
        FetchOutcome::Refused { error, .. } => assert_eq!(error.path, "$.cells[0].shed_ratio"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.version(), Some(5));
    assert_eq!(sub.consecutive_failures(), 1);
    // Backs off rather than asking again at once.
    assert!(sub.poll(T0 + 200).is_none());
    let request = sub
        .poll(T0 + 200 + 200)
        .expect("due after the first backoff");
    // Past the refused version 6: the same body is not downloaded again.
    assert_eq!(request.header(":path"), Some("/snapshot?after=6&wait=30"));

    // Garbage and truncated bodies are refused the same way.
    for garbage in [&b"not json"[..], b"", &body(7)[..100]] {
        sub.dispatched(Source::Sidecar, 9, T0 + 1000);
        assert!(matches!(
            respond(&mut sub, 9, T0 + 1000, Some(200), garbage),
            FetchOutcome::Refused { .. }
        ));
        assert_eq!(sub.version(), Some(5));
    }
}

#[test]
fn a_version_not_newer_is_refused() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0, Some(200), &body(5));
    for (token, version) in [(2, 5), (3, 4)] {
        sub.dispatched(Source::Sidecar, token, T0 + 1000);
        match respond(&mut sub, token, T0 + 1000, Some(200), &body(version)) {
            FetchOutcome::Refused { error, .. } => {
                assert_eq!(error.path, "$.version");
                assert!(error.message.contains("not greater"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sub.version(), Some(5));
    }
}

#[test]
fn any_valid_sidecar_snapshot_replaces_the_fallback() {
    // The fallback (say version 100) is not the sidecar's sequence: the first
    // sidecar snapshot wins whatever its version.
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    assert!(matches!(
        respond(&mut sub, 1, T0, Some(200), &body(3)),
        FetchOutcome::Applied { .. }
    ));
}

#[test]
fn errors_back_off_exponentially_with_jitter_up_to_the_cap() {
    let mut sub = Subscription::new(sidecar(), T0, 42);
    let mut now = T0;
    let mut delays = Vec::new();
    for token in 1..=10 {
        start(&mut sub, now, token);
        let status = if token % 2 == 0 { Some(503) } else { None };
        assert!(matches!(
            respond(&mut sub, token, now, status, b""),
            FetchOutcome::Failed { .. }
        ));
        let next = sub.next_fetch_at_ms().unwrap();
        assert!(sub.poll(next - 1).is_none());
        delays.push(next - now);
        now = next;
    }
    for (i, delay) in delays.iter().enumerate() {
        let full = (200u64 << i).min(5_000);
        assert!(
            *delay >= full / 2 && *delay <= full,
            "failure {}: {delay} ms, full {full}",
            i + 1
        );
    }
    assert_eq!(sub.consecutive_failures(), 10);
    // Success resets the backoff.
    start(&mut sub, now, 99);
    respond(&mut sub, 99, now, Some(304), b"");
    assert_eq!(sub.consecutive_failures(), 0);
}

#[test]
fn unexpected_statuses_and_refused_dispatches_back_off() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    for status in [404, 500, 302, 201] {
        sub.dispatched(Source::Sidecar, 1, T0);
        assert!(matches!(
            respond(&mut sub, 1, T0, Some(status), b"{}"),
            FetchOutcome::Failed { .. }
        ));
    }
    let mut sub = Subscription::new(sidecar(), T0, 1);
    assert!(sub.poll(T0).is_some());
    sub.dispatch_failed(Source::Sidecar, T0);
    assert_eq!(sub.consecutive_failures(), 1);
    assert!(sub.poll(T0).is_none());
}

#[test]
fn stale_responses_are_ignored() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    assert!(matches!(
        respond(&mut sub, 7, T0, Some(200), &body(5)),
        FetchOutcome::Stale
    ));
    start(&mut sub, T0, 1);
    assert!(matches!(
        respond(&mut sub, 2, T0, Some(200), &body(5)),
        FetchOutcome::Stale
    ));
    assert_eq!(sub.version(), None);
    assert!(sub.in_flight());
}

#[test]
fn a_call_the_host_never_answers_is_given_up() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    assert!(sub.poll(T0 + 35_000 + 5_000).is_none());
    assert!(sub.in_flight());
    assert!(sub.poll(T0 + 35_000 + 5_001).is_none());
    assert!(!sub.in_flight());
    assert_eq!(sub.consecutive_failures(), 1);
    // Its late answer no longer counts.
    assert!(matches!(
        respond(&mut sub, 1, T0 + 50_000, Some(200), &body(5)),
        FetchOutcome::Stale
    ));
}

#[test]
fn age_counts_from_the_last_successful_contact() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    assert_eq!(sub.age_s(T0 + 2_500), 2);
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0 + 3_000, Some(304), b"");
    assert_eq!(sub.age_s(T0 + 3_000), 0);
    assert_eq!(sub.age_s(T0 + 13_999), 10);
    start(&mut sub, T0 + 4_000, 2);
    respond(&mut sub, 2, T0 + 5_000, None, b"");
    assert_eq!(sub.age_s(T0 + 23_000), 20);
}

#[test]
fn plain_polling_without_long_poll() {
    let mut config = sidecar();
    config.long_poll_s = 0;
    config.timeout_ms = 2_000;
    config.min_fetch_interval_ms = 1_000;
    let mut sub = Subscription::new(config, T0, 1);
    let request = start(&mut sub, T0, 1);
    assert_eq!(request.header(":path"), Some("/snapshot?after=0&wait=0"));
    respond(&mut sub, 1, T0 + 5, Some(304), b"");
    assert!(sub.poll(T0 + 999).is_none());
    assert!(sub.poll(T0 + 1_000).is_some());
}

// ---------------------------------------------------------------------------
// Stalls: a VM must never keep routing by an old version while a newer one
// is on offer.

#[test]
fn the_version_asked_after_is_the_version_installed() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    let outcome = sub.on_response(1, T0 + 10, FetchResponse::new(Some(200), &body(5)));
    assert!(
        matches!(outcome, FetchOutcome::Applied { .. }),
        "{outcome:?}"
    );
    // The root context could not put it in force (it never reported it
    // installed): asking for newer than 5 would leave the VM on what it had
    // until the next publish.
    assert_eq!(sub.version(), None);
    let request = start(&mut sub, T0 + 200, 2);
    assert_eq!(request.header(":path"), Some("/snapshot?after=0&wait=30"));
    assert_eq!(request.header("if-none-match"), None);
    // The same snapshot comes again and is taken (not refused as not newer).
    match respond(&mut sub, 2, T0 + 210, Some(200), &body(5)) {
        FetchOutcome::Applied { snapshot, .. } => assert_eq!(snapshot.version(), 5),
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.version(), Some(5));
    let request = start(&mut sub, T0 + 400, 3);
    assert_eq!(request.header(":path"), Some("/snapshot?after=5&wait=30"));
}

#[test]
fn rapid_flips_end_on_the_last_version_installed() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    let mut now = T0;
    let mut installed = None;
    for version in 1..=20u64 {
        start(&mut sub, now, version as u32);
        let outcome = sub.on_response(
            version as u32,
            now + 5,
            FetchResponse::new(Some(200), &body(version)),
        );
        let FetchOutcome::Applied { snapshot, .. } = outcome else {
            panic!("version {version}: {outcome:?}");
        };
        // Every third install fails (the state was busy, say).
        if version % 3 != 0 {
            sub.installed(snapshot.version(), now + 5);
            installed = Some(version);
        }
        assert_eq!(sub.version(), installed, "after version {version}");
        now += 100;
    }
    let request = start(&mut sub, now, 99);
    assert_eq!(request.header(":path"), Some("/snapshot?after=20&wait=30"));
}

#[test]
fn a_clock_stepping_back_does_not_stall_fetches() {
    // The host clock is the wall clock: NTP may step it back. Deadlines set
    // before the step must not wait for the clock to catch up.
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0 + 10, None, b"");
    let back = T0 - 3_600_000;
    assert!(sub.poll(back).is_none(), "the backoff still holds");
    assert!(
        sub.poll(back + 200).is_some(),
        "retry due one backoff (≤ 200 ms) after the failure, however the clock reads"
    );
    sub.dispatched(Source::Sidecar, 2, back + 200);
    // The long-poll answered at once: the next one waits min_fetch_interval
    // from its start, not until the clock is back at T0.
    respond(&mut sub, 2, back + 210, Some(304), b"");
    let back_again = back - 60_000;
    assert!(sub.poll(back_again).is_none());
    assert!(sub.poll(back_again + 90).is_some());

    // A call in flight across a step back is still given up after its
    // timeout (plus grace) of elapsed time.
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    let back = T0 - 3_600_000;
    assert!(sub.poll(back).is_none());
    assert!(sub.poll(back + 40_001).is_none());
    assert!(!sub.in_flight(), "given up after 40 s of elapsed time");
    // And the age gauge never runs backwards.
    assert!(sub.age_s(back + 40_001) >= 40);
}

// ---------------------------------------------------------------------------
// Size limit.

#[test]
fn a_snapshot_larger_than_the_limit_is_refused_before_its_body_is_read() {
    let mut config = sidecar();
    config.max_snapshot_bytes = 4096;
    let mut sub = Subscription::new(config, T0, 1);
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0 + 10, Some(200), &body(5));
    // The body size is known from the callback: decided before reading.
    assert_eq!(sub.body_plan(Some(200), 4096), BodyPlan::Read);
    assert_eq!(sub.body_plan(Some(200), 4097), BodyPlan::TooLarge);
    assert_eq!(sub.body_plan(Some(200), usize::MAX), BodyPlan::TooLarge);
    assert_eq!(sub.body_plan(Some(304), 1 << 30), BodyPlan::Skip);
    assert_eq!(sub.body_plan(None, 0), BodyPlan::Skip);

    start(&mut sub, T0 + 200, 2);
    let response = FetchResponse {
        content_range: None,
        status: Some(200),
        etag: Some(b"\"6\""),
        body: Body::TooLarge(70 << 20),
    };
    match sub.on_response(2, T0 + 210, response) {
        FetchOutcome::Refused {
            error, too_large, ..
        } => {
            assert!(too_large);
            assert_eq!(error.path, "$");
            assert!(error.message.contains("4096"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // The last good one stays; the next fetch backs off.
    assert_eq!(sub.version(), Some(5));
    assert_eq!(sub.consecutive_failures(), 1);
    assert!(sub.poll(T0 + 210).is_none());
}

#[test]
fn the_request_names_the_largest_body_the_vm_takes() {
    let mut config = sidecar();
    config.max_snapshot_bytes = 4096;
    let mut sub = Subscription::new(config, T0, 1);
    let request = start(&mut sub, T0, 1);
    assert_eq!(request.header("x-cellmap-max-body-bytes"), Some("4096"));
}

#[test]
fn a_413_with_a_version_is_asked_past_at_once_and_never_downloaded() {
    let (mut sub, now) = holding_5(2);
    let detail = br#"{"error":"too_large","detail":"snapshot version 6 is 99999 bytes"}"#;
    assert_eq!(sub.body_plan(Some(413), detail.len()), BodyPlan::Read);
    assert_eq!(sub.body_plan(Some(413), 1 << 20), BodyPlan::Skip);
    let response = FetchResponse {
        content_range: None,
        status: Some(413),
        etag: Some(b"\"6-bin\""),
        body: Body::Read(detail),
    };
    match sub.on_response(2, now + 10, response) {
        FetchOutcome::Refused {
            error, too_large, ..
        } => {
            assert!(too_large);
            assert!(error.message.contains("version 6"), "{error}");
            assert!(error.message.contains("99999 bytes"), "{error}");
            assert!(error.message.contains("newer version"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // The last good one stays, and the next request asks past 6 without
    // backing off: the sidecar holds it until version 7.
    assert_eq!(sub.version(), Some(5));
    let next = sub.next_fetch_at_ms().unwrap();
    assert!(next <= now + 100, "next fetch at +{} ms", next - now);
    let request = start(&mut sub, next, 3);
    assert_eq!(request.header(":path"), Some("/snapshot?after=6&wait=30"));
    assert_eq!(request.header("if-none-match"), Some("\"6\""));
    // Version 7 fits and is applied.
    match respond(&mut sub, 3, next + 10, Some(200), &body(7)) {
        FetchOutcome::Applied { snapshot, .. } => assert_eq!(snapshot.version(), 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.consecutive_failures(), 0);
}

#[test]
fn a_413_without_a_version_backs_off() {
    let (mut sub, now) = holding_5(2);
    let response = FetchResponse {
        content_range: None,
        status: Some(413),
        etag: None,
        body: Body::Read(b"not json"),
    };
    assert!(matches!(
        sub.on_response(2, now + 10, response),
        FetchOutcome::Refused {
            too_large: true,
            ..
        }
    ));
    assert!(sub.next_fetch_at_ms().unwrap() >= now + 10 + 100);
    let next = sub.next_fetch_at_ms().unwrap();
    let request = start(&mut sub, next, 3);
    assert_eq!(request.header(":path"), Some("/snapshot?after=5&wait=30"));
}

#[test]
fn a_call_with_no_response_names_what_envoy_reported() {
    let why = cell_router_filter::subscription::host_failure(11, "reset");
    assert!(why.contains("BrokenConnection (11) \"reset\""), "{why}");
    assert!(why.contains("http.async_response_buffer_limit"), "{why}");
}

#[test]
fn a_body_the_host_did_not_hand_over_is_a_failure_not_a_refusal() {
    // Nothing is known about its content: it must not count as refused (and
    // must never be remembered as a refused version).
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    let response = FetchResponse {
        content_range: None,
        status: Some(200),
        etag: Some(b"\"6\""),
        body: Body::Unreadable,
    };
    assert!(matches!(
        sub.on_response(1, T0 + 10, response),
        FetchOutcome::Failed { .. }
    ));
    let next = sub.next_fetch_at_ms().unwrap();
    let request = start(&mut sub, next, 2);
    assert_eq!(request.header(":path"), Some("/snapshot?after=0&wait=30"));
}

// ---------------------------------------------------------------------------
// A refused snapshot is not downloaded again.

/// Version `version` with a shed ratio no validator accepts.
fn bad_body(version: u64) -> Vec<u8> {
    let mut bad = snapshot_json(version);
    bad["cells"][0]["shed_ratio"] = serde_json::json!(3.0);
    bad.to_string().into_bytes()
}

/// A subscription holding version 5, its next fetch started with `token`.
fn holding_5(token: u32) -> (Subscription, u64) {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0 + 10, Some(200), &body(5));
    start(&mut sub, T0 + 200, token);
    (sub, T0 + 200)
}

/// After the backoff, the next request.
fn next_request(sub: &mut Subscription, token: u32) -> FetchRequest {
    let at = sub.next_fetch_at_ms().expect("idle");
    start(sub, at, token)
}

#[test]
fn a_refused_version_is_not_fetched_again() {
    let (mut sub, now) = holding_5(2);
    let body6 = bad_body(6);
    let response = FetchResponse {
        content_range: None,
        status: Some(200),
        etag: Some(b"\"6\""),
        body: Body::Read(&body6),
    };
    assert!(matches!(
        sub.on_response(2, now + 5, response),
        FetchOutcome::Refused { .. }
    ));
    assert_eq!(sub.version(), Some(5));
    // Asking `after=5` would download the same refused body again, forever.
    let request = next_request(&mut sub, 3);
    assert_eq!(request.header(":path"), Some("/snapshot?after=6&wait=30"));
    assert_eq!(request.header("if-none-match"), Some("\"6\""));
    // Nothing newer yet: the sidecar holds the long-poll, then 304.
    assert!(matches!(
        respond(&mut sub, 3, now + 30_000, Some(304), b""),
        FetchOutcome::Unchanged
    ));
    assert_eq!(sub.version(), Some(5));
    // A later good one is still taken.
    let request = next_request(&mut sub, 4);
    assert_eq!(request.header(":path"), Some("/snapshot?after=6&wait=30"));
    match respond(&mut sub, 4, now + 31_000, Some(200), &body(7)) {
        FetchOutcome::Applied { snapshot, .. } => assert_eq!(snapshot.version(), 7),
        other => panic!("{other:?}"),
    }
    let request = next_request(&mut sub, 5);
    assert_eq!(request.header(":path"), Some("/snapshot?after=7&wait=30"));
}

#[test]
fn without_an_etag_the_refused_version_is_the_bodys() {
    let (mut sub, now) = holding_5(2);
    assert!(matches!(
        respond(&mut sub, 2, now + 5, Some(200), &bad_body(6)),
        FetchOutcome::Refused { .. }
    ));
    let request = next_request(&mut sub, 3);
    assert_eq!(request.header(":path"), Some("/snapshot?after=6&wait=30"));
}

#[test]
fn an_oversized_snapshot_is_not_fetched_again() {
    let mut config = sidecar();
    config.max_snapshot_bytes = 4096;
    let mut sub = Subscription::new(config, T0, 1);
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0 + 10, Some(200), &body(5));
    start(&mut sub, T0 + 200, 2);
    let response = FetchResponse {
        content_range: None,
        status: Some(200),
        etag: Some(b"W/\"6\""),
        body: Body::TooLarge(1 << 20),
    };
    assert!(matches!(
        sub.on_response(2, T0 + 210, response),
        FetchOutcome::Refused {
            too_large: true,
            ..
        }
    ));
    let request = next_request(&mut sub, 3);
    assert_eq!(request.header(":path"), Some("/snapshot?after=6&wait=30"));
}

#[test]
fn a_refusal_of_unknown_or_older_version_asks_after_what_is_held() {
    // Garbage has no version; an older version changes nothing; an ETag
    // that is not a version is ignored.
    let not_json = b"not json".to_vec();
    let older = body(4);
    let cases: [(Option<&[u8]>, &[u8]); 3] = [
        (None, &not_json),
        (Some(b"\"4\""), &older),
        (Some(b"\"abc\""), &not_json),
    ];
    for (etag, bad) in cases {
        let (mut sub, now) = holding_5(2);
        let response = FetchResponse {
            content_range: None,
            status: Some(200),
            etag,
            body: Body::Read(bad),
        };
        assert!(matches!(
            sub.on_response(2, now + 5, response),
            FetchOutcome::Refused { .. }
        ));
        let request = next_request(&mut sub, 3);
        assert_eq!(request.header(":path"), Some("/snapshot?after=5&wait=30"));
    }
}

// ---------------------------------------------------------------------------
// The persisted copy: static stability when a gateway starts while the
// sidecar is down.

fn with_persisted() -> SidecarConfig {
    SidecarConfig {
        persisted: Some(PersistedConfig {
            cluster: "cellmap_persisted".into(),
            authority: "cellmap-persisted".into(),
            path: "/snapshot".into(),
            timeout_ms: 5_000,
        }),
        ..sidecar()
    }
}

/// Polls until nothing more is due; returns the requests, started with
/// tokens from `first_token` on.
fn start_all(sub: &mut Subscription, now: u64, first_token: u32) -> Vec<(u32, FetchRequest)> {
    let mut started = Vec::new();
    while let Some(request) = sub.poll(now) {
        let token = first_token + started.len() as u32;
        sub.dispatched(request.source, token, now);
        started.push((token, request));
        assert!(started.len() <= 2, "more than one call per source");
    }
    started
}

#[test]
fn the_persisted_copy_is_asked_when_the_sidecar_fails_and_nothing_is_held() {
    let mut sub = Subscription::new(with_persisted(), T0, 1);
    // The sidecar first, alone.
    let started = start_all(&mut sub, T0, 1);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].1.source, Source::Sidecar);
    // Connection refused: the persisted copy is asked at once.
    respond(&mut sub, 1, T0 + 2, Some(503), b"no healthy upstream");
    let started = start_all(&mut sub, T0 + 2, 2);
    assert_eq!(started.len(), 1, "{started:?}");
    let (token, request) = &started[0];
    assert_eq!(request.source, Source::Persisted);
    assert_eq!(request.cluster, "cellmap_persisted");
    assert_eq!(request.header(":method"), Some("GET"));
    assert_eq!(request.header(":path"), Some("/snapshot"));
    assert_eq!(request.header(":authority"), Some("cellmap-persisted"));
    assert_eq!(request.timeout.as_millis(), 5_000);
    match respond(&mut sub, *token, T0 + 3, Some(200), &body(40)) {
        FetchOutcome::Applied { snapshot, source } => {
            assert_eq!(snapshot.version(), 40);
            assert_eq!(source, Source::Persisted);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.version(), Some(40));
    // The sidecar stays the primary source, asked for newer than the copy.
    let at = sub.next_fetch_at_ms().unwrap();
    let started = start_all(&mut sub, at, 3);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].1.source, Source::Sidecar);
    assert_eq!(
        started[0].1.header(":path"),
        Some("/snapshot?after=40&wait=30")
    );
    // Once it is back, a newer snapshot replaces the copy.
    match respond(&mut sub, 3, at + 10, Some(200), &body(41)) {
        FetchOutcome::Applied { source, .. } => assert_eq!(source, Source::Sidecar),
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.version(), Some(41));
    // The copy is never asked again.
    let mut now = at + 10;
    for token in 10..40 {
        for (t, request) in start_all(&mut sub, now, token * 10) {
            assert_eq!(request.source, Source::Sidecar);
            respond(&mut sub, t, now, None, b"");
        }
        now += 10_000;
    }
}

#[test]
fn the_persisted_copy_is_not_asked_while_the_sidecar_answers() {
    let mut sub = Subscription::new(with_persisted(), T0, 1);
    start_all(&mut sub, T0, 1);
    respond(&mut sub, 1, T0 + 2, Some(200), &body(3));
    let mut now = T0 + 200;
    for token in 2..10 {
        let started = start_all(&mut sub, now, token * 10);
        assert!(started.iter().all(|(_, r)| r.source == Source::Sidecar));
        for (t, _) in started {
            respond(&mut sub, t, now + 30_000, Some(304), b"");
        }
        now += 30_100;
    }
    // A sidecar failure after that does not bring the copy in either: the
    // VM holds the sidecar's snapshot.
    for (t, _) in start_all(&mut sub, now, 100) {
        respond(&mut sub, t, now, None, b"");
    }
    let at = sub.next_fetch_at_ms().unwrap();
    assert!(
        start_all(&mut sub, at, 200)
            .iter()
            .all(|(_, r)| r.source == Source::Sidecar)
    );
}

#[test]
fn the_persisted_copy_is_retried_with_backoff_while_the_sidecar_stays_down() {
    let mut sub = Subscription::new(with_persisted(), T0, 7);
    let mut now = T0;
    let mut persisted_calls = Vec::new();
    let mut token = 1;
    // Ten minutes of a sidecar and a persisted route that refuse
    // connections (Envoy not listening yet, say).
    while now < T0 + 600_000 {
        for (t, request) in start_all(&mut sub, now, token) {
            token += 10;
            if request.source == Source::Persisted {
                persisted_calls.push(now);
            }
            respond(&mut sub, t, now, Some(503), b"");
        }
        now += 100;
    }
    assert!(
        (100..=400).contains(&persisted_calls.len()),
        "{} persisted calls in 10 minutes",
        persisted_calls.len()
    );
    let gaps: Vec<u64> = persisted_calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.first() < gaps.last(), "no backoff: {gaps:?}");
    assert!(gaps.iter().all(|g| *g <= 5_100), "{gaps:?}");
    // It answers at last.
    let mut applied = false;
    for _ in 0..100 {
        for (t, request) in start_all(&mut sub, now, token) {
            token += 10;
            let outcome = if request.source == Source::Persisted {
                respond(&mut sub, t, now, Some(200), &body(9))
            } else {
                respond(&mut sub, t, now, None, b"")
            };
            applied |= matches!(outcome, FetchOutcome::Applied { .. });
        }
        now += 100;
    }
    assert!(applied);
    assert_eq!(sub.version(), Some(9));
}

#[test]
fn a_refused_persisted_copy_is_not_asked_again() {
    for (body, too_large) in [
        (bad_body(8), false),
        (b"{}".to_vec(), false),
        (body(8), true),
    ] {
        let mut config = with_persisted();
        if too_large {
            config.max_snapshot_bytes = 1024;
        }
        let mut sub = Subscription::new(config, T0, 1);
        start_all(&mut sub, T0, 1);
        respond(&mut sub, 1, T0, None, b"");
        let started = start_all(&mut sub, T0, 2);
        assert_eq!(started[0].1.source, Source::Persisted);
        let response = FetchResponse {
            content_range: None,
            status: Some(200),
            etag: None,
            body: if too_large {
                Body::TooLarge(body.len())
            } else {
                Body::Read(&body)
            },
        };
        assert!(matches!(
            sub.on_response(2, T0 + 1, response),
            FetchOutcome::Refused {
                source: Source::Persisted,
                ..
            }
        ));
        // Its content only changes when Envoy reloads the file: not asked
        // again, while the sidecar is retried.
        let mut now = T0 + 1;
        for round in 0..50 {
            for (t, request) in start_all(&mut sub, now, 100 + round * 10) {
                assert_eq!(request.source, Source::Sidecar);
                respond(&mut sub, t, now, None, b"");
            }
            now += 1_000;
        }
        assert_eq!(sub.version(), None);
    }
}

#[test]
fn a_persisted_copy_older_than_the_sidecars_is_not_installed() {
    let mut sub = Subscription::new(with_persisted(), T0, 1);
    start_all(&mut sub, T0, 1);
    respond(&mut sub, 1, T0, None, b"");
    let started = start_all(&mut sub, T0, 2);
    assert_eq!(started[0].1.source, Source::Persisted);
    // While the copy is on its way, the sidecar comes back with version 12.
    let at = sub.next_fetch_at_ms().unwrap();
    let started = start_all(&mut sub, at, 3);
    assert_eq!(started[0].1.source, Source::Sidecar);
    respond(&mut sub, 3, at, Some(200), &body(12));
    assert_eq!(sub.version(), Some(12));
    // The copy (version 11) arrives late: not installed, not a refusal.
    assert!(matches!(
        respond(&mut sub, 2, at + 1, Some(200), &body(11)),
        FetchOutcome::Unchanged
    ));
    assert_eq!(sub.version(), Some(12));
}

#[test]
fn without_a_persisted_copy_nothing_else_is_asked() {
    let mut sub = Subscription::new(sidecar(), T0, 1);
    let mut now = T0;
    for round in 0..30 {
        for (t, request) in start_all(&mut sub, now, round * 10 + 1) {
            assert_eq!(request.source, Source::Sidecar);
            respond(&mut sub, t, now, None, b"");
        }
        now += 1_000;
    }
}

#[test]
fn the_binary_form_is_asked_first_and_either_form_is_applied() {
    use cell_router_mapping::binary;
    let mut sub = Subscription::new(sidecar(), T0, 1);
    let request = start(&mut sub, T0, 1);
    assert_eq!(
        request.header("accept"),
        Some("application/vnd.cellmap.snapshot, application/json;q=0.5")
    );
    // A binary answer is applied (in steps: the first answer says so),
    // and routes as the JSON it came from.
    let bytes = binary::encode(&snapshot(5));
    let mut probe = Subscription::new(sidecar(), T0, 1);
    start(&mut probe, T0, 1);
    assert!(matches!(
        probe.on_response(1, T0 + 10, FetchResponse::new(Some(200), &bytes)),
        FetchOutcome::Applying
    ));
    assert!(matches!(
        probe.apply_step(T0 + 11, 16),
        FetchOutcome::Applying
    ));
    match respond(&mut sub, 1, T0 + 10, Some(200), &bytes) {
        FetchOutcome::Applied { snapshot: got, .. } => {
            assert_eq!(got.version(), 5);
            assert_eq!(got.to_doc(), snapshot(5).to_doc());
            let draws = cell_router_mapping::Draws::default();
            assert_eq!(
                got.resolve(b"t-b", &draws),
                snapshot(5).resolve(b"t-b", &draws)
            );
        }
        other => panic!("{other:?}"),
    }
    // Then JSON from a sidecar that only speaks JSON.
    start(&mut sub, T0 + 200, 2);
    assert!(matches!(
        respond(&mut sub, 2, T0 + 210, Some(200), &body(6)),
        FetchOutcome::Applied { .. }
    ));
    assert_eq!(sub.version(), Some(6));
    // A corrupted binary body is refused; its header names the version, so
    // it is not fetched again.
    start(&mut sub, T0 + 400, 3);
    let mut bad = binary::encode(&snapshot(7));
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    match respond_with(
        &mut sub,
        3,
        T0 + 410,
        FetchResponse {
            etag: Some(b"\"7-bin\""),
            ..FetchResponse::new(Some(200), &bad)
        },
    ) {
        FetchOutcome::Refused { error, .. } => assert!(error.path.contains("checksum"), "{error}"),
        other => panic!("{other:?}"),
    }
    let request = sub.request();
    assert_eq!(request.header(":path"), Some("/snapshot?after=7&wait=30"));

    // binary: false asks for JSON only.
    let mut config = sidecar();
    config.binary = false;
    let mut sub = Subscription::new(config, T0, 1);
    assert_eq!(
        start(&mut sub, T0, 1).header("accept"),
        Some("application/json")
    );
}

/// A format-2 snapshot with regions `us` and `eu` (one default pool).
fn two_regions(version: u64) -> Vec<u8> {
    let table = |cell: u16| cell_router_mapping::snapshot::encode_slot_table(&[cell; 4]);
    serde_json::json!({
        "format": 2,
        "version": version,
        "generated_at": "2026-01-01T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "7b1f3c9a2e4d6f80a1c3e5f70b2d4f61", "slots": 4},
        "regions": [{"id": "us"}, {"id": "eu"}],
        "region_table": table(0),
        "cells": [
            {"id": "p-us", "pool": "p", "region": "us"},
            {"id": "p-eu", "pool": "p", "region": "eu"},
        ],
        "pools": [{"id": "p", "slot_tables": {"us": table(0), "eu": table(1)}}],
    })
    .to_string()
    .into_bytes()
}

#[test]
fn a_snapshot_without_the_gateways_region_is_refused_and_asked_past() {
    // The same rule for every host: the Wasm VM and the native module both
    // take snapshots through the subscription.
    let mut sub = Subscription::new(sidecar(), T0, 1).with_gateway_region(Some("ap".into()));
    start(&mut sub, T0, 1);
    respond(&mut sub, 1, T0, Some(200), &body(5));
    assert_eq!(sub.version(), Some(5));
    start(&mut sub, T0 + 100, 2);
    match respond(&mut sub, 2, T0 + 200, Some(200), &two_regions(6)) {
        FetchOutcome::Refused { error, .. } => {
            assert_eq!(error.path, "$.regions");
            assert!(error.message.contains("\"ap\""), "{}", error.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.version(), Some(5));
    let request = sub.poll(T0 + 200 + 5_000).expect("due after the backoff");
    assert_eq!(request.header(":path"), Some("/snapshot?after=6&wait=30"));

    // A gateway in one of its regions takes it.
    let mut sub = Subscription::new(sidecar(), T0, 1).with_gateway_region(Some("eu".into()));
    start(&mut sub, T0, 1);
    assert!(matches!(
        respond(&mut sub, 1, T0, Some(200), &two_regions(6)),
        FetchOutcome::Applied { .. }
    ));
}

/// A piece of `bytes` as the sidecar answers it (206).
fn piece<'a>(
    bytes: &'a [u8],
    first: usize,
    chunk: usize,
    etag: &'a [u8],
    range: &'a mut String,
) -> FetchResponse<'a> {
    let last = (first + chunk).min(bytes.len()) - 1;
    *range = format!("bytes {first}-{last}/{}", bytes.len());
    FetchResponse {
        status: Some(206),
        etag: Some(etag),
        content_range: Some(range.as_bytes()),
        body: Body::Read(&bytes[first..=last]),
    }
}

/// A big binary snapshot arrives in pieces: the long-poll names the piece
/// size, the first 206 starts the download, every next piece is asked at
/// once with Range and If-Match, nothing else is asked meanwhile, and the
/// assembled snapshot is applied.
#[test]
fn a_binary_snapshot_arrives_in_pieces() {
    use cell_router_mapping::binary;
    let mut config = sidecar();
    config.chunk_bytes = 100;
    let mut sub = Subscription::new(config, T0, 1);
    let request = start(&mut sub, T0, 1);
    assert_eq!(request.header("x-cellmap-chunk-bytes"), Some("100"));
    let bytes = binary::encode(&snapshot(5));
    assert!(bytes.len() > 300, "{}", bytes.len());
    let etag: &[u8] = b"\"5-bin\"";
    let mut range = String::new();
    let mut outcome = sub.on_response(1, T0 + 1, piece(&bytes, 0, 100, etag, &mut range));
    let mut token = 1;
    let mut at = 100;
    let mut now = T0 + 1;
    while matches!(outcome, FetchOutcome::Downloading) {
        assert_eq!(sub.body_plan(Some(206), 100), BodyPlan::Read);
        now += 1;
        let next = sub.poll(now).expect("the next piece is due at once");
        let last = (at + 100).min(bytes.len()) - 1;
        assert_eq!(
            next.header("range"),
            Some(format!("bytes={at}-{last}").as_str())
        );
        assert_eq!(next.header("if-match"), Some("\"5-bin\""));
        token += 1;
        sub.dispatched(Source::Sidecar, token, now);
        now += 1;
        outcome = sub.on_response(token, now, piece(&bytes, at, 100, etag, &mut range));
        at = last + 1;
    }
    let downloaded_at = now;
    assert_eq!(token as usize, bytes.len().div_ceil(100));
    while matches!(outcome, FetchOutcome::Applying) {
        now += 1;
        assert_eq!(sub.poll(now), None);
        outcome = sub.apply_step(now, 64);
    }
    match outcome {
        FetchOutcome::Applied { snapshot: got, .. } => {
            assert_eq!(got.to_doc(), snapshot(5).to_doc());
            sub.installed(got.version(), now);
        }
        other => panic!("{other:?}"),
    }
    let report = sub.take_apply_report().expect("a report");
    assert_eq!((report.bytes, report.pieces), (bytes.len(), token));
    assert_eq!(report.download_ms, downloaded_at - (T0 + 1));
    assert_eq!(report.check_ms, now - downloaded_at);
    assert_eq!(
        report.to_string(),
        format!(
            "{} bytes in {token} piece(s) over {} ms, checked in {} ms",
            bytes.len(),
            report.download_ms,
            report.check_ms
        )
    );
    assert_eq!(sub.take_apply_report(), None, "taken once");
    assert_eq!(sub.failures_of(Source::Sidecar), 0);
    let next = sub.poll(now + 1_000).expect("the long-poll again");
    assert_eq!(next.header(":path"), Some("/snapshot?after=5&wait=30"));
    assert_eq!(next.header("range"), None);
}

/// Spread over 400 ms (a VM that serves requests), the piece starting at
/// byte `b` of `total` is not asked for before 400 × b / total ms after the
/// first arrived, and is asked for at once from then on; the whole snapshot
/// still arrives and is applied. Spread 0 keeps pieces back to back.
#[test]
fn a_spread_download_asks_for_each_piece_on_its_share_of_the_time() {
    use cell_router_mapping::binary;
    let mut config = sidecar();
    config.chunk_bytes = 100;
    let mut sub = Subscription::new(config, T0, 1);
    sub.spread_downloads(400);
    start(&mut sub, T0, 1);
    let bytes = binary::encode(&snapshot(5));
    let total = bytes.len() as u64;
    assert!(total > 300, "{total}");
    let etag: &[u8] = b"\"5-bin\"";
    let mut range = String::new();
    let first_at = T0 + 1;
    let mut outcome = sub.on_response(1, first_at, piece(&bytes, 0, 100, etag, &mut range));
    let mut token = 1;
    let mut at = 100u64;
    let mut now = first_at;
    while matches!(outcome, FetchOutcome::Downloading) {
        let due = first_at + 400 * at / total;
        assert!(due > now, "piece at {at}: due {due}, now {now}");
        assert_eq!(sub.poll(due - 1), None, "piece at {at} asked for early");
        now = due;
        let next = sub.poll(now).expect("the next piece once due");
        let last = (at + 100).min(total) - 1;
        assert_eq!(
            next.header("range"),
            Some(format!("bytes={at}-{last}").as_str())
        );
        token += 1;
        sub.dispatched(Source::Sidecar, token, now);
        outcome = sub.on_response(
            token,
            now,
            piece(&bytes, at as usize, 100, etag, &mut range),
        );
        at = last + 1;
    }
    assert!(now - first_at >= 400 * (total - 100) / total, "{now}");
    assert!(!sub.is_downloading());
    while matches!(outcome, FetchOutcome::Applying) {
        now += 1;
        outcome = sub.apply_step(now, 64);
    }
    assert!(
        matches!(outcome, FetchOutcome::Applied { .. }),
        "{outcome:?}"
    );

    // Spread 0: the next piece is due at once.
    let mut sub = Subscription::new(sidecar_with_chunk(100), T0, 1);
    sub.spread_downloads(0);
    start(&mut sub, T0, 1);
    let outcome = sub.on_response(1, T0 + 1, piece(&bytes, 0, 100, etag, &mut range));
    assert!(matches!(outcome, FetchOutcome::Downloading));
    assert!(sub.is_downloading());
    assert!(sub.poll(T0 + 1).is_some());
}

fn sidecar_with_chunk(chunk_bytes: usize) -> SidecarConfig {
    let mut config = sidecar();
    config.chunk_bytes = chunk_bytes;
    config
}

/// A download that goes wrong starts over: a newer version meanwhile (412)
/// at once; a piece out of order, a wrong ETag, a failed call or a total
/// over the limit with the failure's backoff, and the limit's refusal asks
/// past that version.
#[test]
fn a_broken_download_starts_over() {
    use cell_router_mapping::binary;
    let mut config = sidecar();
    config.chunk_bytes = 100;
    let bytes = binary::encode(&snapshot(5));
    let etag: &[u8] = b"\"5-bin\"";
    let mut range = String::new();
    let begin = |sub: &mut Subscription, range: &mut String| {
        start(sub, T0, 1);
        let outcome = sub.on_response(1, T0 + 1, piece(&bytes, 0, 100, etag, range));
        assert!(matches!(outcome, FetchOutcome::Downloading), "{outcome:?}");
        sub.poll(T0 + 2).expect("next piece");
        sub.dispatched(Source::Sidecar, 2, T0 + 2);
    };

    let mut sub = Subscription::new(config.clone(), T0, 1);
    begin(&mut sub, &mut range);
    let changed = FetchResponse {
        etag: Some(b"\"6-bin\""),
        ..FetchResponse::new(Some(412), b"")
    };
    assert!(matches!(
        sub.on_response(2, T0 + 3, changed),
        FetchOutcome::Downloading
    ));
    let again = sub.poll(T0 + 3).expect("at once");
    assert_eq!(again.header("range"), None);
    assert_eq!(again.header(":path"), Some("/snapshot?after=0&wait=30"));

    for bad in ["out of order", "wrong etag", "failed call"] {
        let mut sub = Subscription::new(config.clone(), T0, 1);
        begin(&mut sub, &mut range);
        let response = match bad {
            "out of order" => piece(&bytes, 200, 100, etag, &mut range),
            "wrong etag" => piece(&bytes, 100, 100, b"\"6-bin\"", &mut range),
            _ => FetchResponse::new(None, b""),
        };
        match sub.on_response(2, T0 + 3, response) {
            FetchOutcome::Failed { why, .. } => assert!(!why.is_empty()),
            other => panic!("{bad}: {other:?}"),
        }
        assert_eq!(sub.failures_of(Source::Sidecar), 1, "{bad}");
        assert_eq!(sub.poll(T0 + 4), None, "{bad}: backing off");
        let again = sub.poll(T0 + 60_000).expect("after the backoff");
        assert_eq!(again.header("range"), None, "{bad}: from the start");
    }

    let mut small = config.clone();
    small.max_snapshot_bytes = 200;
    let mut sub = Subscription::new(small, T0, 1);
    start(&mut sub, T0, 1);
    match sub.on_response(1, T0 + 1, piece(&bytes, 0, 100, etag, &mut range)) {
        FetchOutcome::Refused { too_large, .. } => assert!(too_large),
        other => panic!("{other:?}"),
    }
    let again = sub.poll(T0 + 60_000).expect("after the backoff");
    assert_eq!(again.header(":path"), Some("/snapshot?after=5&wait=30"));
}

/// Pieces that do not add up to their checksum are refused, but that
/// version is asked for again (after the backoff): the assembly, not the
/// snapshot, may be at fault. A whole body with a bad checksum is skipped.
#[test]
fn pieces_that_fail_their_checksum_are_fetched_again() {
    use cell_router_mapping::binary;
    let mut config = sidecar();
    config.chunk_bytes = 100;
    let mut bad = binary::encode(&snapshot(5));
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    let etag: &[u8] = b"\"5-bin\"";
    let mut range = String::new();
    let mut sub = Subscription::new(config, T0, 1);
    start(&mut sub, T0, 1);
    let mut outcome = sub.on_response(1, T0 + 1, piece(&bad, 0, 100, etag, &mut range));
    let (mut token, mut at) = (1, 100);
    while matches!(outcome, FetchOutcome::Downloading) {
        sub.poll(T0 + 2).expect("next piece");
        token += 1;
        sub.dispatched(Source::Sidecar, token, T0 + 2);
        outcome = sub.on_response(token, T0 + 3, piece(&bad, at, 100, etag, &mut range));
        at += 100;
    }
    while matches!(outcome, FetchOutcome::Applying) {
        outcome = sub.apply_step(T0 + 4, 1 << 20);
    }
    match outcome {
        FetchOutcome::Refused { error, .. } => assert_eq!(error.path, "binary:checksum"),
        other => panic!("{other:?}"),
    }
    let again = sub.poll(T0 + 60_000).expect("after the backoff");
    assert_eq!(again.header(":path"), Some("/snapshot?after=0&wait=30"));
}
