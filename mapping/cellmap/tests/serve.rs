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

/// `cp -p` and `rsync -t` keep the size and the mtime: the sidecar must still
/// see the new content (a stamp of mtime and size alone misses it).
#[test]
fn a_copy_with_the_same_size_and_mtime_is_taken() {
    let file = temp_file("same-stamp");
    std::fs::write(&file, snapshot(1, "cell-a")).unwrap();
    let stamp = |path: &std::path::Path| {
        let meta = std::fs::metadata(path).unwrap();
        (meta.len(), meta.modified().unwrap())
    };
    let original = stamp(&file);
    let sidecar = start(&["--file", file.to_str().unwrap()]);
    expect_version(&sidecar, 1, Duration::from_secs(5));
    // Past the sidecar's 2 s window for recently changed files, so only the
    // metadata can reveal the next change.
    std::thread::sleep(Duration::from_millis(2500));

    // cp -p: rewritten in place (same inode), mtime restored.
    let second = snapshot(2, "cell-b");
    assert_eq!(
        second.len() as u64,
        original.0,
        "the test needs equal sizes"
    );
    std::fs::write(&file, &second).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(original.1)
        .unwrap();
    assert_eq!(stamp(&file), original, "same size and mtime as before");
    expect_version(&sidecar, 2, Duration::from_secs(3));
    assert_eq!(get(sidecar.port, "/snapshot", &[]).unwrap().body, second);

    // rsync -t: a new file with the old mtime renamed over it.
    std::thread::sleep(Duration::from_millis(2500));
    let third = snapshot(3, "cell-a");
    let tmp = file.with_extension("rsync-tmp");
    std::fs::write(&tmp, &third).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(original.1)
        .unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert_eq!(stamp(&file), original, "same size and mtime as before");
    expect_version(&sidecar, 3, Duration::from_secs(3));
    assert_eq!(get(sidecar.port, "/snapshot", &[]).unwrap().body, third);
}

/// SIGHUP (a closed terminal, a reload by habit) must not take the gateway's
/// sidecar down; it makes the sidecar look at its source at once.
#[test]
fn sighup_looks_at_the_source_and_does_not_stop_it() {
    let file = temp_file("sighup");
    publish(&file, &snapshot(1, "cell-a"));
    // The watcher would not look on its own for an hour.
    let mut sidecar = start(&[
        "--file",
        file.to_str().unwrap(),
        "--watch-interval-ms",
        "3600000",
    ]);
    expect_version(&sidecar, 1, Duration::from_secs(5));
    publish(&file, &snapshot(2, "cell-b"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served_version(&sidecar), Some(1), "not looked at yet");

    sidecar.signal("HUP");
    expect_version(&sidecar, 2, Duration::from_secs(3));
    for _ in 0..3 {
        sidecar.signal("HUP");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sidecar.child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the sidecar"
    );
    assert_eq!(get(sidecar.port, "/healthz", &[]).unwrap().status, 200);
    assert_eq!(
        get(sidecar.port, "/snapshot", &[]).unwrap().body,
        snapshot(2, "cell-b")
    );
}

/// SIGTERM: every waiting long-poll is answered 304 at once, then exit 0.
#[test]
fn sigterm_answers_every_waiting_long_poll_at_once_and_exits_0() {
    let file = temp_file("sigterm");
    publish(&file, &snapshot(1, "cell-a"));
    let mut sidecar = start(&["--file", file.to_str().unwrap()]);
    expect_version(&sidecar, 1, Duration::from_secs(5));
    let runtime = runtime();
    let port = sidecar.port;
    let polls: Vec<_> = (0..100)
        .map(|_| runtime.spawn(async move { raw_get(port, "/snapshot?after=1&wait=60").await }))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        polls.iter().all(|p| !p.is_finished()),
        "long-polls answered before anything changed"
    );
    let stopped = Instant::now();
    let status = sidecar.terminate(Duration::from_secs(3));
    assert!(status.success(), "exit status {status}");
    let replies = runtime.block_on(async {
        let mut replies = Vec::new();
        for poll in polls {
            replies.push(tokio::time::timeout(Duration::from_secs(2), poll).await);
        }
        replies
    });
    let answered = stopped.elapsed();
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply
            .unwrap_or_else(|_| panic!("long-poll {i} not answered 2 s after SIGTERM"))
            .unwrap();
        match reply {
            Ok(r) => {
                assert_eq!(r.status, 304, "long-poll {i}");
                assert_eq!(r.version(), Some(1), "long-poll {i}");
            }
            Err(err) => panic!("long-poll {i} got no answer: {err:?}"),
        }
    }
    assert!(
        answered < Duration::from_secs(2),
        "answered {answered:?} after SIGTERM"
    );
}

/// `Instant + Duration` panics on overflow: a huge `--max-wait-s` or `wait=`
/// must still wait (until a change or shutdown), not crash.
#[test]
fn huge_waits_and_limits_neither_crash_nor_overflow() {
    const MAX: &str = "18446744073709551615";
    let file = temp_file("huge");
    publish(&file, &snapshot(1, "cell-a"));
    let mut sidecar = start(&[
        "--file",
        file.to_str().unwrap(),
        "--max-wait-s",
        MAX,
        "--max-in-flight",
        MAX,
        "--max-snapshot-mib",
        MAX,
    ]);
    expect_version(&sidecar, 1, Duration::from_secs(5));
    let port = sidecar.port;

    // Nothing named: the current snapshot at once, whatever the wait.
    let started = Instant::now();
    let now = get(port, &format!("/snapshot?wait={MAX}"), &[]).unwrap();
    assert_eq!((now.status, now.etag.as_deref()), (200, Some("\"1\"")));
    assert!(started.elapsed() < Duration::from_secs(2));
    // One past u64: a bad request, not a crash.
    let bad = get(port, "/snapshot?after=1&wait=18446744073709551616", &[]).unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);

    // A huge wait is ended by a newer version…
    let poll = std::thread::spawn(move || get(port, &format!("/snapshot?after=1&wait={MAX}"), &[]));
    std::thread::sleep(Duration::from_millis(300));
    publish(&file, &snapshot(2, "cell-b"));
    let reply = poll.join().unwrap().expect("answered");
    assert_eq!((reply.status, reply.etag.as_deref()), (200, Some("\"2\"")));

    // …or by shutdown.
    let poll = std::thread::spawn(move || get(port, &format!("/snapshot?after=2&wait={MAX}"), &[]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(sidecar.child.try_wait().unwrap().is_none(), "it crashed");
    let status = sidecar.terminate(Duration::from_secs(3));
    assert!(status.success(), "exit status {status}");
    let reply = poll.join().unwrap().expect("answered at shutdown");
    assert_eq!((reply.status, reply.etag.as_deref()), (304, Some("\"2\"")));
}

/// Static stability: a sidecar restarted while its source is missing or bad
/// serves the last good snapshot from `--persist`; a bad source never
/// overwrites that copy.
#[test]
fn the_persisted_copy_is_served_when_the_source_is_bad_or_gone() {
    let dir = temp_dir("persist");
    let file = dir.join("snapshot.json");
    // Its directory does not exist yet: the sidecar makes it.
    let persist = dir.join("state/last-good.json");
    let args = [
        "--file",
        file.to_str().unwrap(),
        "--persist",
        persist.to_str().unwrap(),
    ];
    let persisted = || std::fs::read_to_string(&persist).ok();

    // Every snapshot taken is persisted, byte for byte.
    publish(&file, &snapshot(3, "cell-a"));
    let mut sidecar = start(&args);
    expect_version(&sidecar, 3, Duration::from_secs(5));
    assert_eq!(persisted(), Some(snapshot(3, "cell-a")));
    publish(&file, &snapshot(4, "cell-b"));
    expect_version(&sidecar, 4, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(2), || persisted()
        == Some(snapshot(4, "cell-b"))));
    // A refused snapshot is not persisted.
    publish(&file, &snapshot(5, "cell-zz"));
    assert!(wait_until(Duration::from_secs(5), || refused(&sidecar) == 1));
    assert_eq!(persisted(), Some(snapshot(4, "cell-b")));
    assert!(sidecar.terminate(Duration::from_secs(3)).success());

    // Restart with an invalid source: the persisted copy is served.
    publish(&file, "{\"version\": 9");
    let mut sidecar = start(&args);
    let snap = get(sidecar.port, "/snapshot", &[]).unwrap();
    assert_eq!(snap.status, 200);
    assert_eq!(snap.etag.as_deref(), Some("\"4\""));
    assert_eq!(snap.body, snapshot(4, "cell-b"));
    assert!(wait_until(Duration::from_secs(5), || refused(&sidecar) >= 1));
    assert_eq!(served_version(&sidecar), Some(4));
    assert_eq!(persisted(), Some(snapshot(4, "cell-b")), "not overwritten");
    assert!(sidecar.terminate(Duration::from_secs(3)).success());

    // Restart with no source at all: the same.
    std::fs::remove_file(&file).unwrap();
    let sidecar = start(&args);
    let health = health(sidecar.port).unwrap();
    assert_eq!(health["version"], 4, "{health}");
    assert!(
        health["origin"].as_str().unwrap().contains("persisted"),
        "{health}"
    );
    assert_eq!(
        get(sidecar.port, "/snapshot", &[]).unwrap().body,
        snapshot(4, "cell-b")
    );
    // An older snapshot from the source is refused, as before the restart…
    publish(&file, &snapshot(2, "cell-a"));
    assert!(wait_until(Duration::from_secs(5), || refused(&sidecar) >= 1));
    assert_eq!(served_version(&sidecar), Some(4));
    // …and a newer one replaces the copy.
    publish(&file, &snapshot(6, "cell-a"));
    expect_version(&sidecar, 6, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(2), || persisted()
        == Some(snapshot(6, "cell-a"))));
    drop(sidecar);

    // The same with an upstream source that cannot be reached.
    let nowhere = format!("http://127.0.0.1:{}/snapshot", free_port());
    let follower = start(&[
        "--upstream",
        &nowhere,
        "--persist",
        persist.to_str().unwrap(),
    ]);
    let snap = get(follower.port, "/snapshot", &[]).unwrap();
    assert_eq!((snap.status, snap.body), (200, snapshot(6, "cell-a")));
    drop(follower);

    // A damaged copy is not served: no snapshot until the source has one.
    std::fs::write(&persist, "{\"version\": 7, \"trunc").unwrap();
    std::fs::remove_file(&file).unwrap();
    let sidecar = start(&args);
    let none = get(sidecar.port, "/snapshot", &[]).unwrap();
    assert_eq!(none.status, 503, "{}", none.body);
    publish(&file, &snapshot(1, "cell-b"));
    expect_version(&sidecar, 1, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(2), || persisted()
        == Some(snapshot(1, "cell-b"))));
}

/// `GET /snapshot` with the raw body and the headers that negotiation sets.
fn get_raw(port: u16, path: &str, accept: Option<&str>) -> (u16, String, String, String, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let mut response = request.call().unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (content_type, etag, vary) = (header("content-type"), header("etag"), header("vary"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec().unwrap_or_default();
    (status, content_type, etag, vary, body)
}

#[test]
fn serves_the_binary_form_to_clients_that_ask_for_it() {
    use cell_router_mapping::{Snapshot, binary};
    let file = temp_file("binary");
    publish(&file, &snapshot(1, "cell-b"));
    let sidecar = start(&["--file", file.to_str().unwrap()]);
    assert!(wait_until(Duration::from_secs(5), || served_version(
        &sidecar
    ) == Some(1)));
    let json = Snapshot::parse(snapshot(1, "cell-b").as_bytes()).unwrap();

    let (status, content_type, etag, vary, body) = get_raw(
        sidecar.port,
        "/snapshot",
        Some("application/vnd.cellmap.snapshot, application/json;q=0.5"),
    );
    assert_eq!(status, 200);
    assert_eq!(content_type, binary::MEDIA_TYPE);
    assert_eq!(etag, "\"1-bin\"");
    assert_eq!(vary, "accept");
    // Keyed by hash (`--binary-keys hashes`, the default): gateways route.
    assert_eq!(body, binary::encode_hashed(&json).unwrap());
    let served = binary::decode(&body).unwrap();
    assert_eq!(served.keys(), cell_router_mapping::table::Keys::Hashes);
    assert_eq!(
        served
            .resolve(b"acme", &cell_router_mapping::Draws::default())
            .routed_cell(),
        Some(1)
    );

    // JSON to everyone else: no Accept, */*, JSON, or the binary type at q=0.
    for accept in [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("application/vnd.cellmap.snapshot;q=0"),
    ] {
        let (status, content_type, etag, _, body) = get_raw(sidecar.port, "/snapshot", accept);
        assert_eq!(
            (status, content_type.as_str()),
            (200, "application/json"),
            "{accept:?}"
        );
        assert_eq!(etag, "\"1\"");
        assert_eq!(body, snapshot(1, "cell-b").into_bytes());
    }
    // The binary ETag works for conditional GETs and long-polls.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let reply = agent
        .get(format!("http://127.0.0.1:{}/snapshot", sidecar.port))
        .header("accept", binary::MEDIA_TYPE)
        .header("if-none-match", "\"1-bin\"")
        .call()
        .unwrap();
    assert_eq!(reply.status().as_u16(), 304);
    assert_eq!(
        reply.headers().get("etag").and_then(|v| v.to_str().ok()),
        Some("\"1-bin\"")
    );

    // A binary snapshot published to the file is taken too, and served in
    // both forms.
    let next = Snapshot::parse(snapshot(2, "cell-a").as_bytes()).unwrap();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, binary::encode(&next)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    expect_version(&sidecar, 2, Duration::from_secs(5));
    let (_, _, etag, _, body) = get_raw(sidecar.port, "/snapshot", Some(binary::MEDIA_TYPE));
    assert_eq!(etag, "\"2-bin\"");
    assert_eq!(body, binary::encode_hashed(&next).unwrap());
    let (_, _, _, _, body) = get_raw(sidecar.port, "/snapshot", None);
    assert_eq!(Snapshot::parse(&body).unwrap().to_doc(), next.to_doc());

    // A source keyed by hash is served as it is, and has no JSON form.
    let third = Snapshot::parse(snapshot(3, "cell-a").as_bytes()).unwrap();
    let hashed = binary::encode_hashed(&third).unwrap();
    std::fs::write(&tmp, &hashed).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    expect_version(&sidecar, 3, Duration::from_secs(5));
    let (_, _, _, _, body) = get_raw(sidecar.port, "/snapshot", Some(binary::MEDIA_TYPE));
    assert_eq!(body, hashed);
    let (status, _, _, _, body) = get_raw(sidecar.port, "/snapshot", None);
    assert_eq!(status, 406);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("no_json_form") && body.contains("no tenant ids"),
        "{body}"
    );
}

/// `--binary-keys ids`: the binary form keeps the tenant ids.
#[test]
fn the_binary_form_can_keep_tenant_ids() {
    use cell_router_mapping::{Snapshot, binary};
    let file = temp_file("binary-ids");
    publish(&file, &snapshot(1, "cell-b"));
    let sidecar = start(&["--file", file.to_str().unwrap(), "--binary-keys", "ids"]);
    expect_version(&sidecar, 1, Duration::from_secs(5));
    let json = Snapshot::parse(snapshot(1, "cell-b").as_bytes()).unwrap();
    let (status, _, _, _, body) = get_raw(sidecar.port, "/snapshot", Some(binary::MEDIA_TYPE));
    assert_eq!(status, 200);
    assert_eq!(body, binary::encode(&json));
    assert_eq!(binary::decode(&body).unwrap().to_doc(), json.to_doc());
}

/// A binary source is persisted as it came (no JSON is rendered for a
/// gateway that only asks for the binary form) and served again, in both
/// forms, from that copy after a restart.
#[test]
fn a_binary_source_is_persisted_as_binary_and_restored() {
    use cell_router_mapping::{Snapshot, binary};
    let dir = temp_dir("persist-binary");
    let file = dir.join("snapshot.bin");
    let persist = dir.join("last-good");
    let args = [
        "--file",
        file.to_str().unwrap(),
        "--persist",
        persist.to_str().unwrap(),
    ];
    let next = Snapshot::parse(snapshot(7, "cell-b").as_bytes()).unwrap();
    let encoded = binary::encode(&next);
    let served = binary::encode_hashed(&next).unwrap();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, &encoded).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let sidecar = start(&args);
    expect_version(&sidecar, 7, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(2), || std::fs::read(
        &persist
    )
    .ok()
        == Some(encoded.clone())));
    drop(sidecar);

    std::fs::remove_file(&file).unwrap();
    let sidecar = start(&args);
    let (status, _, etag, _, body) = get_raw(sidecar.port, "/snapshot", Some(binary::MEDIA_TYPE));
    assert_eq!((status, etag.as_str()), (200, "\"7-bin\""));
    assert_eq!(body, served);
    let (status, _, _, _, body) = get_raw(sidecar.port, "/snapshot", None);
    assert_eq!(status, 200);
    assert_eq!(Snapshot::parse(&body).unwrap().to_doc(), next.to_doc());
}

/// The binary form in pieces: a client naming `x-cellmap-chunk-bytes` gets
/// 206 with the first piece and asks for the rest with `Range` and
/// `If-Match`; a version published meanwhile answers 412, a range outside
/// the snapshot 416.
#[test]
fn the_binary_form_is_served_in_pieces() {
    use cell_router_mapping::{Snapshot, binary};
    let file = temp_file("chunks");
    publish(&file, &snapshot(3, "cell-b"));
    let sidecar = start(&["--file", file.to_str().unwrap()]);
    expect_version(&sidecar, 3, Duration::from_secs(5));
    let whole =
        binary::encode_hashed(&Snapshot::parse(snapshot(3, "cell-b").as_bytes()).unwrap()).unwrap();
    assert!(whole.len() > 250, "{} bytes", whole.len());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://127.0.0.1:{}/snapshot", sidecar.port);
    let ask = |headers: &[(&str, &str)]| {
        let mut request = agent.get(&url).header("accept", binary::MEDIA_TYPE);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.call().unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (range, etag) = (header("content-range"), header("etag"));
        let status = response.status().as_u16();
        (
            status,
            range,
            etag,
            response.body_mut().read_to_vec().unwrap(),
        )
    };

    let (status, range, etag, first) = ask(&[("x-cellmap-chunk-bytes", "100")]);
    assert_eq!(status, 206);
    assert_eq!(range, format!("bytes 0-99/{}", whole.len()));
    assert_eq!(etag, "\"3-bin\"");
    let mut assembled = first;
    while assembled.len() < whole.len() {
        let from = assembled.len();
        let to = (from + 100).min(whole.len()) - 1;
        let (status, range, _, piece) = ask(&[
            ("range", &format!("bytes={from}-{to}")),
            ("if-match", "\"3-bin\""),
        ]);
        assert_eq!(status, 206);
        assert_eq!(range, format!("bytes {from}-{to}/{}", whole.len()));
        assembled.extend_from_slice(&piece);
    }
    assert_eq!(assembled, whole);
    // A snapshot that fits the piece is answered whole.
    let (status, _, _, body) = ask(&[("x-cellmap-chunk-bytes", &whole.len().to_string())]);
    assert_eq!((status, body.len()), (200, whole.len()));
    // Out of range, malformed, or too small a piece.
    let past = format!("bytes={}-{}", whole.len(), whole.len() + 10);
    assert_eq!(ask(&[("range", &past)]).0, 416);
    assert_eq!(ask(&[("range", "lines=1-2")]).0, 416);
    assert_eq!(ask(&[("x-cellmap-chunk-bytes", "12")]).0, 400);
    // A newer version meanwhile: the old pieces are gone.
    publish(&file, &snapshot(4, "cell-b"));
    expect_version(&sidecar, 4, Duration::from_secs(5));
    let (status, _, etag, _) = ask(&[("range", "bytes=0-10"), ("if-match", "\"3-bin\"")]);
    assert_eq!((status, etag.as_str()), (412, "\"4-bin\""));
}
