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
use std::collections::HashMap;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

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

/// A JWKS followed from an identity provider (`--jwks-url ISSUER=URL`):
/// its last good content and ETag.
#[derive(Debug)]
pub(crate) struct Held {
    bytes: Bytes,
    etag: String,
}

pub(crate) type Followed = watch::Receiver<Option<Arc<Held>>>;

/// Splits `ISSUER=URL` (the URL starts at the first `=http`).
pub(crate) fn parse_follow(arg: &str) -> Result<(String, String), String> {
    let at = arg
        .find("=http://")
        .or_else(|| arg.find("=https://"))
        .ok_or_else(|| format!("--jwks-url {arg:?}: expected ISSUER=URL (http or https)"))?;
    let (issuer, url) = arg.split_at(at);
    let url = url.trim_start_matches('=');
    if issuer.is_empty() {
        return Err(format!("--jwks-url {arg:?}: the issuer is empty"));
    }
    Ok((issuer.to_string(), url.to_string()))
}

/// `max-age` of a Cache-Control value.
fn max_age(value: &str) -> Option<u64> {
    value.split(',').find_map(|d| {
        let (name, v) = d.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| v.trim().trim_matches('"').parse().ok())?
    })
}

/// Starts following `url` on its own thread: polled every `poll` at most
/// (sooner when Cache-Control max-age says so, never more than once a
/// second) with If-None-Match; a good new set replaces the held one, a
/// failure or a bad set keeps it.
pub(crate) fn follow(
    issuer: String,
    url: String,
    poll: Duration,
    persist: Option<&std::path::Path>,
) -> Followed {
    // The set persisted by an earlier run, served until the IdP answers.
    let persist = persist.map(|p| persisted_path(p, &issuer));
    let restored = persist.as_deref().and_then(|path| {
        let bytes = crate::serve::source::read_limited(path, MAX_JWKS_BYTES).ok()??;
        if let Some(why) = refusal(&bytes) {
            super::log(
                "warn",
                &format!("persisted JWKS {} refused: {why}", path.display()),
            );
            return None;
        }
        super::log(
            "info",
            &format!("JWKS of {issuer} restored from {}", path.display()),
        );
        Some(Arc::new(Held {
            etag: etag_of(&bytes),
            bytes: Bytes::from(bytes),
        }))
    });
    let (tx, rx) = watch::channel(restored);
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut upstream_etag: Option<String> = None;
        let mut last_problem = String::new();
        loop {
            let mut request = agent.get(&url);
            if let Some(etag) = &upstream_etag {
                request = request.header("If-None-Match", etag);
            }
            let mut wait = poll;
            let problem = match request.call() {
                Ok(mut response) => {
                    let header = |name: &str| {
                        response
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    if let Some(age) = header("cache-control").as_deref().and_then(max_age) {
                        wait = Duration::from_secs(age.max(1)).min(poll);
                    }
                    let etag = header("etag");
                    match response.status().as_u16() {
                        304 => None,
                        200 => match response
                            .body_mut()
                            .with_config()
                            .limit(MAX_JWKS_BYTES)
                            .read_to_vec()
                        {
                            Ok(bytes) => match refusal(&bytes) {
                                None => {
                                    let new = etag_of(&bytes);
                                    let same = tx.borrow().as_ref().is_some_and(|h| h.etag == new);
                                    if !same {
                                        super::log(
                                            "info",
                                            &format!("JWKS of {issuer} taken from {url}"),
                                        );
                                        if let Some(path) = &persist {
                                            save(path, &bytes);
                                        }
                                        tx.send_replace(Some(Arc::new(Held {
                                            bytes: Bytes::from(bytes),
                                            etag: new,
                                        })));
                                    }
                                    upstream_etag = etag;
                                    None
                                }
                                Some(why) => Some(format!("{url}: refused ({why})")),
                            },
                            Err(err) => Some(format!("{url}: {err}")),
                        },
                        status => Some(format!("{url} answered {status}")),
                    }
                }
                Err(err) => Some(format!("{url}: {err}")),
            };
            match problem {
                Some(problem) if problem != last_problem => {
                    super::log(
                        "warn",
                        &format!("JWKS of {issuer}: {problem}; keeping the last good set"),
                    );
                    last_problem = problem;
                }
                Some(_) => {}
                None => last_problem.clear(),
            }
            std::thread::sleep(wait);
        }
    });
    rx
}

/// Where `--persist <path>` keeps the JWKS followed for `issuer`: next to
/// it, named by a hash of the issuer.
pub(crate) fn persisted_path(persist: &std::path::Path, issuer: &str) -> PathBuf {
    let mut hasher = SipHasher13::new_with_keys(0, 0);
    hasher.write(issuer.as_bytes());
    let mut name = persist.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".jwks-{:016x}.json", hasher.finish()));
    persist.with_file_name(name)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename);
/// a failure is logged, the set is served anyway.
fn save(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("json.tmp");
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(err) = result {
        super::log(
            "warn",
            &format!("cannot persist the JWKS to {}: {err}", path.display()),
        );
    }
}

/// Percent-decodes a query value (`+` is a space).
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /jwks?issuer=<issuer>[&wait=<s>]`: the followed JWKS of that
/// issuer, with its ETag; a matching If-None-Match with `wait` holds the
/// request until the set changes or `wait` seconds pass (then 304).
pub(crate) async fn serve_followed(
    followed: &HashMap<String, Followed>,
    query: &str,
    if_none_match: Option<&str>,
    max_wait_s: u64,
) -> Option<Response<Body>> {
    let mut issuer = None;
    let mut wait_s = 0u64;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "issuer" => issuer = percent_decode(value),
            "wait" => wait_s = value.parse::<u64>().unwrap_or(0).min(max_wait_s),
            _ => {}
        }
    }
    let issuer = issuer?;
    let Some(rx) = followed.get(&issuer) else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "unknown_issuer",
            "no --jwks-url for this issuer",
        ));
    };
    let mut rx = rx.clone();
    let matches =
        |held: &Held| if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == held.etag));
    let current = rx.borrow_and_update().clone();
    let current = match current {
        Some(held) if matches(&held) && wait_s > 0 => {
            let _ = tokio::time::timeout(Duration::from_secs(wait_s), rx.changed()).await;
            rx.borrow().clone().unwrap_or(held)
        }
        Some(held) => held,
        None => {
            return Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "jwks_unavailable",
                "the identity provider's JWKS was not fetched yet",
            ));
        }
    };
    let mut response = if matches(&current) {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(current.bytes.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    if let Ok(value) = HeaderValue::from_str(&current.etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Some(response)
}
