//! `GET /jwks`: the `--jwks` file, re-read on each request, for filters
//! that fetch their keys at run time (`jwks_remote`).
//!
//! - `ETag: "<SipHash-1-3 of the bytes, hex>"`; a matching `If-None-Match`
//!   answers 304, so a filter's regular refresh costs no body.
//! - The last good content is kept: a file that is missing, unreadable,
//!   larger than [`MAX_JWKS_BYTES`], not a JSON object or without a
//!   non-empty `keys` array is not served; the last good content is (503
//!   only before there was one). The filter validates the keys themselves.

use super::http::{Body, error};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Mutex;

/// Largest JWKS file served (the filter's own default limit is 256 KiB).
pub const MAX_JWKS_BYTES: u64 = 1 << 20;

/// The last good JWKS served, and its ETag.
#[derive(Default)]
pub(crate) struct LastGood(Mutex<Option<(Bytes, String)>>);

fn etag_of(bytes: &[u8]) -> String {
    let mut hasher = SipHasher13::new_with_keys(0, 0);
    hasher.write(bytes);
    format!("\"{:016x}\"", hasher.finish())
}

/// Why `bytes` is not a JWKS worth serving, if it is not.
fn refusal(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(err) => return Some(format!("not JSON: {err}")),
    };
    match value.get("keys").and_then(|k| k.as_array()) {
        Some(keys) if !keys.is_empty() && value.is_object() => None,
        _ => Some("not a JWKS object with a non-empty `keys` array".to_string()),
    }
}

pub(crate) async fn serve(
    file: Option<PathBuf>,
    last_good: &LastGood,
    if_none_match: Option<&str>,
) -> Response<Body> {
    let Some(file) = file else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no --jwks file configured",
        );
    };
    // A small file, but a file read blocks: off the serving thread.
    let read = tokio::task::spawn_blocking(move || {
        let size = std::fs::metadata(&file)?.len();
        if size > MAX_JWKS_BYTES {
            return Err(std::io::Error::other(format!(
                "{size} bytes, more than {MAX_JWKS_BYTES}"
            )));
        }
        std::fs::read(&file)
    })
    .await;
    let fresh = match read {
        Ok(Ok(bytes)) => match refusal(&bytes) {
            None => Ok(bytes),
            Some(why) => Err(why),
        },
        Ok(Err(err)) => Err(err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    let (bytes, etag) = {
        let mut held = last_good.0.lock().unwrap_or_else(|e| e.into_inner());
        match fresh {
            Ok(bytes) => {
                let etag = etag_of(&bytes);
                *held = Some((Bytes::from(bytes), etag));
            }
            Err(why) => {
                if held.is_none() {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "jwks_unavailable", &why);
                }
                super::log(
                    "warn",
                    &format!("--jwks file refused ({why}); serving the last good one"),
                );
            }
        }
        match held.as_ref() {
            Some(good) => good.clone(),
            None => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jwks_unavailable",
                    "no JWKS yet",
                );
            }
        }
    };
    let matches = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if matches {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}
