//! The sidecar as the gateway sees it: the real `cellmap serve` binary over
//! real HTTP on loopback.

// clippy.toml allows these in #[test] fns only; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn serves_conditional_gets_and_long_polls_from_a_file() {
    let file = temp_file("file");
    publish(&file, &snapshot(1, "cell-a"));
    let sidecar = start(&["--file", file.to_str().unwrap()]);
    assert!(wait_until(Duration::from_secs(5), || served_version(
        &sidecar
    ) == Some(1)));

    let first = get(sidecar.port, "/snapshot", &[]).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.etag.as_deref(), Some("\"1\""));
    assert_eq!(first.body, snapshot(1, "cell-a"), "served byte for byte");
    assert_eq!(
        get(sidecar.port, "/snapshot", &[("if-none-match", "\"1\"")])
            .unwrap()
            .status,
        304
    );
    assert_eq!(
        get(sidecar.port, "/snapshot?after=1", &[]).unwrap().status,
        304
    );
    assert_eq!(
        get(sidecar.port, "/snapshot?after=0", &[]).unwrap().status,
        200
    );

    // A long-poll is answered as soon as a newer version is published.
    let port = sidecar.port;
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = get(port, "/snapshot?after=1&wait=15", &[]).unwrap();
        (reply.status, reply.etag, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    publish(&file, &snapshot(2, "cell-b"));
    let (status, etag, waited) = poll.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(etag.as_deref(), Some("\"2\""));
    assert!(
        waited < Duration::from_secs(15),
        "answered by the change, not the timeout"
    );

    // A long-poll with nothing newer ends with 304 after `wait`.
    let reply = get(sidecar.port, "/snapshot?after=2&wait=1", &[]).unwrap();
    assert_eq!(reply.status, 304);
}

#[test]
fn refuses_bad_snapshots_and_keeps_the_last_good_one() {
    let file = temp_file("refuse");
    publish(&file, &snapshot(5, "cell-a"));
    let sidecar = start(&["--file", file.to_str().unwrap()]);
    assert!(wait_until(Duration::from_secs(5), || served_version(
        &sidecar
    ) == Some(5)));

    let bad = [
        "{\"version\": 6".to_string(), // half a document
        snapshot(6, "cell-zz"),        // unknown cell
        snapshot(4, "cell-b"),         // older version
        snapshot(5, "cell-b"),         // same version, other content
    ];
    for (i, text) in bad.iter().enumerate() {
        publish(&file, text);
        let counted = wait_until(Duration::from_secs(5), || refused(&sidecar) == i as u64 + 1);
        assert!(counted, "bad snapshot {i} was not refused");
        assert_eq!(served_version(&sidecar), Some(5));
        let body = get(sidecar.port, "/snapshot", &[]).unwrap().body;
        assert_eq!(body, snapshot(5, "cell-a"));
    }
    publish(&file, &snapshot(7, "cell-b"));
    assert!(wait_until(Duration::from_secs(5), || served_version(
        &sidecar
    ) == Some(7)));
}

#[test]
fn an_upstream_sidecar_is_followed() {
    let file = temp_file("upstream");
    publish(&file, &snapshot(1, "cell-a"));
    let origin = start(&["--file", file.to_str().unwrap()]);
    let url = format!("http://127.0.0.1:{}/snapshot", origin.port);
    let follower = start(&["--upstream", &url, "--poll-interval-ms", "100"]);
    assert!(wait_until(Duration::from_secs(5), || served_version(
        &follower
    ) == Some(1)));
    publish(&file, &snapshot(2, "cell-b"));
    assert!(wait_until(Duration::from_secs(5), || served_version(
        &follower
    ) == Some(2)));
    assert_eq!(
        get(follower.port, "/snapshot", &[]).unwrap().body,
        snapshot(2, "cell-b")
    );

    // The origin goes away: the follower keeps serving what it has.
    drop(origin);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(served_version(&follower), Some(2));
    assert_eq!(get(follower.port, "/snapshot", &[]).unwrap().status, 200);
}

#[test]
fn answers_errors_clearly_and_stops_gracefully() {
    let file = temp_file("errors");
    // No snapshot yet: 503, but the sidecar runs and picks one up later.
    let mut sidecar = start(&["--file", file.to_str().unwrap()]);
    assert_eq!(get(sidecar.port, "/healthz", &[]).unwrap().status, 503);
    let none = get(sidecar.port, "/snapshot", &[]).unwrap();
    assert_eq!(none.status, 503);
    assert!(none.body.contains("no_snapshot"));
    assert_eq!(get(sidecar.port, "/nope", &[]).unwrap().status, 404);
    assert_eq!(get(sidecar.port, "/jwks", &[]).unwrap().status, 404);
    let bad_query = get(sidecar.port, "/snapshot?after=x", &[]).unwrap();
    assert_eq!(bad_query.status, 400);
    assert!(bad_query.body.contains("after"), "{}", bad_query.body);

    publish(&file, &snapshot(1, "cell-a"));
    assert!(wait_until(Duration::from_secs(5), || served_version(
        &sidecar
    ) == Some(1)));

    // SIGTERM: a waiting long-poll is answered and the process exits 0.
    let port = sidecar.port;
    let poll = std::thread::spawn(move || get(port, "/snapshot?after=1&wait=30", &[]));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &sidecar.child.id().to_string()])
        .status()
        .unwrap();
    let status = sidecar.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let answered = poll.join().unwrap();
    assert_eq!(answered.map(|r| r.status), Some(304));
}
