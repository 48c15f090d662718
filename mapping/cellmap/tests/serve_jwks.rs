//! `GET /jwks` (`--jwks FILE`): ETag and 304, the last good content kept
//! when the file goes bad or missing.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

const K1: &str =
    r#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#;
const K2: &str =
    r#"{"keys":[{"kty":"oct","kid":"k2","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#;

#[test]
fn jwks_has_an_etag_answers_304_and_keeps_the_last_good_file() {
    let snapshot_file = temp_file("jwks-snapshot");
    publish(&snapshot_file, &snapshot(1, "cell-a"));
    let jwks = temp_file("jwks");
    publish(&jwks, K1);
    let sidecar = start(&[
        "--file",
        snapshot_file.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
    ]);
    let first = get(sidecar.port, "/jwks", &[]).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.body, K1);
    let etag = first.etag.clone().expect("an ETag");
    let again = get(sidecar.port, "/jwks", &[("if-none-match", &etag)]).unwrap();
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // A new set: a new ETag, the old one no longer matches.
    publish(&jwks, K2);
    let second = get(sidecar.port, "/jwks", &[("if-none-match", &etag)]).unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.body, K2);
    let etag2 = second.etag.clone().unwrap();
    assert_ne!(etag, etag2);

    // Bad or missing file: the last good set, same ETag.
    for bad in ["not json", r#"{"keys": []}"#, r#"[1]"#] {
        publish(&jwks, bad);
        let reply = get(sidecar.port, "/jwks", &[]).unwrap();
        assert_eq!(reply.status, 200, "{bad}");
        assert_eq!(reply.body, K2, "{bad}");
        assert_eq!(reply.etag.as_deref(), Some(etag2.as_str()));
    }
    std::fs::remove_file(&jwks).unwrap();
    let reply = get(sidecar.port, "/jwks", &[("if-none-match", &etag2)]).unwrap();
    assert_eq!(reply.status, 304);
}

#[test]
fn jwks_without_a_good_file_yet_is_503() {
    let snapshot_file = temp_file("jwks-snapshot-2");
    publish(&snapshot_file, &snapshot(1, "cell-a"));
    let jwks = temp_file("jwks-bad");
    publish(&jwks, "{}");
    let sidecar = start(&[
        "--file",
        snapshot_file.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
    ]);
    let reply = get(sidecar.port, "/jwks", &[]).unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("jwks_unavailable"), "{}", reply.body);
}

/// An identity provider stand-in: serves `body` with `ETag: "<generation>"`
/// and `Cache-Control: max-age=1`, 304 on a match, `status` if not 200;
/// counts requests and conditional ones.
#[derive(Default)]
struct Upstream {
    body: String,
    generation: u64,
    status: u16,
    requests: u64,
    conditional: u64,
}

fn start_upstream(body: &str) -> (u16, std::sync::Arc<std::sync::Mutex<Upstream>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = std::sync::Arc::new(std::sync::Mutex::new(Upstream {
        body: body.to_string(),
        generation: 1,
        status: 200,
        ..Upstream::default()
    }));
    let shared = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut inm = None;
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((n, v)) = line.split_once(':')
                    && n.eq_ignore_ascii_case("if-none-match")
                {
                    inm = Some(v.trim().to_string());
                }
            }
            let (status, etag, body) = {
                let mut s = shared.lock().unwrap();
                s.requests += 1;
                let etag = format!("\"{}\"", s.generation);
                if inm.is_some() {
                    s.conditional += 1;
                }
                if s.status != 200 {
                    (format!("{} Oops", s.status), etag, "oops".to_string())
                } else if inm.as_deref() == Some(etag.as_str()) {
                    ("304 Not Modified".to_string(), etag, String::new())
                } else {
                    ("200 OK".to_string(), etag, s.body.clone())
                }
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\netag: {etag}\r\ncache-control: max-age=1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, state)
}

const ISSUER: &str = "https://idp.test/";
const ISSUER_Q: &str = "https%3A%2F%2Fidp.test%2F";

#[test]
fn follows_an_identity_provider_keeps_the_last_good_set_and_long_polls() {
    let (port, upstream) = start_upstream(K1);
    let snapshot_file = temp_file("jwks-follow-snapshot");
    publish(&snapshot_file, &snapshot(1, "cell-a"));
    let follow = format!("{ISSUER}=http://127.0.0.1:{port}/keys");
    let sidecar = start(&[
        "--file",
        snapshot_file.to_str().unwrap(),
        "--jwks-url",
        &follow,
        "--jwks-poll-s",
        "30",
    ]);
    let path = format!("/jwks?issuer={ISSUER_Q}");
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        get(sidecar.port, &path, &[]).is_some_and(|r| r.status == 200)
    }));
    let first = get(sidecar.port, &path, &[]).unwrap();
    assert_eq!(first.body, K1);
    let etag = first.etag.clone().unwrap();
    assert_eq!(
        get(sidecar.port, &path, &[("if-none-match", &etag)])
            .unwrap()
            .status,
        304
    );
    assert_eq!(
        get(sidecar.port, "/jwks?issuer=https%3A%2F%2Fnope", &[])
            .unwrap()
            .status,
        404
    );
    // max-age=1: polled about every second, conditionally.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    {
        let u = upstream.lock().unwrap();
        assert!(
            u.requests >= 2 && u.conditional >= 1,
            "{} requests, {} conditional",
            u.requests,
            u.conditional
        );
    }

    // Upstream failing, then serving garbage: the last good set stays.
    upstream.lock().unwrap().status = 500;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(get(sidecar.port, &path, &[]).unwrap().body, K1);
    {
        let mut u = upstream.lock().unwrap();
        u.status = 200;
        u.body = "{\"keys\": []}".to_string();
        u.generation += 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let kept = get(sidecar.port, &path, &[]).unwrap();
    assert_eq!(kept.body, K1);
    assert_eq!(kept.etag.as_deref(), Some(etag.as_str()));

    // A long-poll on the held ETag wakes when the IdP rotates.
    let port_s = sidecar.port;
    let (p2, e2) = (path.clone(), etag.clone());
    let waiter = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let reply = get(port_s, &format!("{p2}&wait=20"), &[("if-none-match", &e2)]).unwrap();
        (reply, start.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    {
        let mut u = upstream.lock().unwrap();
        u.body = K2.to_string();
        u.generation += 1;
    }
    let (reply, took) = waiter.join().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, K2);
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert_ne!(reply.etag.as_deref(), Some(etag.as_str()));
}

#[test]
fn a_followed_jwks_is_persisted_and_served_after_a_restart_with_the_idp_down() {
    let (port, upstream) = start_upstream(K1);
    let snapshot_file = temp_file("jwks-persist-snapshot");
    publish(&snapshot_file, &snapshot(1, "cell-a"));
    let persist = temp_file("jwks-persist");
    let follow = format!("{ISSUER}=http://127.0.0.1:{port}/keys");
    let args = [
        "--file",
        snapshot_file.to_str().unwrap(),
        "--persist",
        persist.to_str().unwrap(),
        "--jwks-url",
        &follow,
    ];
    let path = format!("/jwks?issuer={ISSUER_Q}");
    let mut first = start(&args);
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        get(first.port, &path, &[]).is_some_and(|r| r.status == 200)
    }));
    first.terminate(std::time::Duration::from_secs(5));
    upstream.lock().unwrap().status = 500;
    let second = start(&args);
    let reply = get(second.port, &path, &[]).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, K1);
}
