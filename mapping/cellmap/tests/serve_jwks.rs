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
