//! The sidecar's HTTP protocol, as the filter and operators see it:
//!
//! - `GET /snapshot` answers the snapshot (`ETag: "<version>"`,
//!   `X-Cell-Snapshot-Version`); `If-None-Match: "<v>"` or `?after=<v>`
//!   answers 304 unless a newer one exists; `&wait=<s>` holds the request (a
//!   long-poll, at most `--max-wait-s`) until a newer version arrives or `s`
//!   seconds pass, so every worker hears of a change at once. While the
//!   sidecar stops, waiting long-polls are answered 304 at once.
//!   With `Accept: application/vnd.cellmap.snapshot` the body is the
//!   binary form (`mapping/SPEC.md`, "Binary form"; ETag `"<version>-bin"`),
//!   else JSON; both carry `Vary: Accept`.
//!   A body larger than the client takes (its `X-Cellmap-Max-Body-Bytes`,
//!   and never more than `--max-body-bytes`) is not sent: the answer is 413
//!   with the version's ETag and `X-Cell-Snapshot-Bytes`, so the client can
//!   ask past that version (`after`) instead of downloading a body its Envoy
//!   would reset.
//! - `GET /healthz` answers 200 with the version served, 503 before the first;
//!   both say `max_body_bytes`, how many snapshots were refused for their
//!   size and how many answers were 413, and why the last refused snapshot
//!   was refused (`last_refused`).
//! - `GET /jwks` answers the `--jwks` file, re-read on each request, with
//!   an ETag (304 on a match) and its last good content kept (`jwks.rs`).
//! - Other methods 405, other paths 404, a bad query 400, more than
//!   `--max-in-flight` requests at once 503 `busy`; every error has a JSON
//!   body `{"error": …, "detail": …}`.

use super::store::Store;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

pub(crate) type Body = Full<Bytes>;

/// What every request handler shares.
pub(crate) struct Context {
    pub(crate) store: Arc<Store>,
    pub(crate) jwks: Option<PathBuf>,
    pub(crate) jwks_last_good: super::jwks::LastGood,
    /// `--jwks-url`: the JWKS followed per issuer.
    pub(crate) jwks_followed: std::collections::HashMap<String, super::jwks::Followed>,
    pub(crate) max_wait_s: u64,
    /// Snapshot requests answered 413 (the body larger than the client takes).
    pub(crate) answered_too_large: AtomicU64,
    /// One permit per request being handled (long-polls included).
    pub(crate) in_flight: Arc<Semaphore>,
    /// Becomes true when the sidecar stops.
    pub(crate) shutdown: watch::Receiver<bool>,
}

const X_CELL_SNAPSHOT_VERSION: HeaderName = HeaderName::from_static("x-cell-snapshot-version");
/// The size of the body a 413 did not send.
const X_CELL_SNAPSHOT_BYTES: HeaderName = HeaderName::from_static("x-cell-snapshot-bytes");
/// The largest body the client takes (the filter sends its
/// `sidecar.max_snapshot_bytes`).
const X_CELLMAP_MAX_BODY_BYTES: HeaderName = HeaderName::from_static("x-cellmap-max-body-bytes");
/// The largest piece of the binary form the client wants per answer: a
/// larger snapshot is answered 206 with its first piece, and the client asks
/// for the rest with `Range` (a Wasm VM copies each answer's body in one
/// callback, during which its worker serves nothing).
const X_CELLMAP_CHUNK_BYTES: HeaderName = HeaderName::from_static("x-cellmap-chunk-bytes");
/// The smallest piece served.
const MIN_CHUNK_BYTES: u64 = 64;

/// Handles one request. The in-flight permit is held until the answer is
/// ready, and released by drop on every path, also when hyper drops this
/// future because the client went away mid long-poll.
pub(crate) async fn handle<B>(
    context: Arc<Context>,
    request: Request<B>,
) -> Result<Response<Body>, Infallible> {
    let mut response = match Arc::clone(&context.in_flight).try_acquire_owned() {
        Ok(_permit) => route(&context, &request).await,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many requests in flight",
        ),
    };
    if *context.shutdown.borrow() {
        // Stopping: the client must not send its next request here.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

async fn route<B>(context: &Context, request: &Request<B>) -> Response<Body> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET and HEAD",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/snapshot" => snapshot(context, request).await,
        "/healthz" => healthz(context),
        "/jwks" => {
            let if_none_match = request
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok());
            if let Some(response) = super::jwks::serve_followed(
                &context.jwks_followed,
                request.uri().query().unwrap_or(""),
                if_none_match,
                context.max_wait_s,
            )
            .await
            {
                return response;
            }
            super::jwks::serve(context.jwks.clone(), &context.jwks_last_good, if_none_match).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "try /snapshot or /healthz",
        ),
    }
}

async fn snapshot<B>(context: &Context, request: &Request<B>) -> Response<Body> {
    let mut after = None;
    let mut wait_s = 0u64;
    for pair in request.uri().query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (name, value.parse::<u64>()) {
            ("after", Ok(v)) => after = (v > 0).then_some(v),
            ("wait", Ok(v)) => wait_s = v.min(context.max_wait_s),
            ("after" | "wait", Err(_)) => {
                let detail =
                    format!("query parameter `{name}` must be a whole number, got {value:?}");
                return error(StatusCode::BAD_REQUEST, "bad_request", &detail);
            }
            _ => {}
        }
    }
    let binary = wants_binary(request.headers().get(header::ACCEPT));
    if let Some(range) = request.headers().get(header::RANGE) {
        return ranged(context, request, range, binary);
    }
    let chunk = match request.headers().get(X_CELLMAP_CHUNK_BYTES) {
        None => None,
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v >= MIN_CHUNK_BYTES)
        {
            Some(chunk) => Some(chunk),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!(
                        "header x-cellmap-chunk-bytes must be a whole number of at least {MIN_CHUNK_BYTES}"
                    ),
                );
            }
        },
    };
    let mut max_body_bytes = context.store.max_body_bytes();
    if let Some(value) = request.headers().get(X_CELLMAP_MAX_BODY_BYTES) {
        match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(client) => max_body_bytes = max_body_bytes.min(client),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "header x-cellmap-max-body-bytes must be a whole number",
                );
            }
        }
    }
    // A conditional GET names the version it has, like `after`.
    if after.is_none() {
        after = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .trim_end_matches(BINARY_ETAG_SUFFIX)
                    .parse()
                    .ok()
            });
    }
    let mut shutdown = context.shutdown.clone();
    let newer = context
        .store
        .newer_than(after, Duration::from_secs(wait_s), &mut shutdown)
        .await;
    if let Some(served) = newer {
        let (body, content_type, etag) = if binary {
            (
                served.binary.clone(),
                cell_router_mapping::binary::MEDIA_TYPE,
                binary_etag(served.version),
            )
        } else if !served.has_json() {
            return error(
                StatusCode::NOT_ACCEPTABLE,
                "no_json_form",
                super::store::NO_JSON,
            );
        } else {
            // Rendering a big snapshot's JSON takes a while: off the
            // runtime's threads.
            let rendering = Arc::clone(&served);
            match tokio::task::spawn_blocking(move || rendering.json())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
            {
                Ok(json) => (json, "application/json", etag(served.version)),
                Err(why) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &format!("cannot render the JSON form: {why}"),
                    );
                }
            }
        };
        if body.len() as u64 > max_body_bytes {
            return too_large(
                context,
                served.version,
                body.len(),
                max_body_bytes,
                if binary { "binary" } else { "JSON" },
                etag,
            );
        }
        if binary
            && let Some(chunk) = chunk.and_then(|c| usize::try_from(c).ok())
            && body.len() > chunk
        {
            return partial(&served, 0, chunk - 1);
        }
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::VARY, HeaderValue::from_static("accept"));
        if let Some(etag) = etag {
            headers.insert(header::ETAG, etag);
        }
        headers.insert(X_CELL_SNAPSHOT_VERSION, HeaderValue::from(served.version));
        return response;
    }
    match context.store.current_version() {
        Some(version) => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            let etag = if binary {
                binary_etag(version)
            } else {
                etag(version)
            };
            if let Some(etag) = etag {
                response.headers_mut().insert(header::ETAG, etag);
            }
            response
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept"));
            response
        }
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_snapshot",
            "the sidecar has no valid snapshot yet",
        ),
    }
}

/// `GET /snapshot` with `Range: bytes=<first>-<last>` (binary form only):
/// that piece of the snapshot served now, no long-poll. `If-Match` names the
/// version the client is assembling; when the sidecar serves another one
/// meanwhile, 412 with the current ETag (the client starts over).
fn ranged<B>(
    context: &Context,
    request: &Request<B>,
    range: &HeaderValue,
    binary: bool,
) -> Response<Body> {
    if !binary {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "ranges are served for the binary form only (Accept: application/vnd.cellmap.snapshot)",
        );
    }
    let Some(served) = context.store.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_snapshot",
            "the sidecar has no valid snapshot yet",
        );
    };
    let current = binary_etag(served.version);
    if let Some(wanted) = request.headers().get(header::IF_MATCH)
        && Some(wanted) != current.as_ref()
    {
        let mut response = error(
            StatusCode::PRECONDITION_FAILED,
            "changed",
            &format!(
                "the sidecar now serves snapshot version {}; start over",
                served.version
            ),
        );
        if let Some(etag) = current {
            response.headers_mut().insert(header::ETAG, etag);
        }
        return response;
    }
    let total = served.binary.len();
    let bounds = range
        .to_str()
        .ok()
        .and_then(|r| r.trim().strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(first, last)| {
            let first = first.trim().parse::<usize>().ok()?;
            let last = match last.trim() {
                "" => total.checked_sub(1)?,
                last => last.parse::<usize>().ok()?.min(total.checked_sub(1)?),
            };
            (first <= last).then_some((first, last))
        });
    match bounds {
        Some((first, last)) => partial(&served, first, last),
        None => {
            let mut response = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_range",
                &format!("one range `bytes=<first>-<last>` within the {total} bytes, please"),
            );
            if let Ok(value) = HeaderValue::try_from(format!("bytes */{total}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response
        }
    }
}

/// 206: bytes `first..=last` of the binary form (a slice of the served
/// bytes, not a copy).
fn partial(served: &super::store::Served, first: usize, last: usize) -> Response<Body> {
    let total = served.binary.len();
    let last = last.min(total.saturating_sub(1));
    let body = served.binary.slice(first.min(last + 1)..last + 1);
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(cell_router_mapping::binary::MEDIA_TYPE),
    );
    if let Ok(value) = HeaderValue::try_from(format!("bytes {first}-{last}/{total}")) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    if let Some(etag) = binary_etag(served.version) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(X_CELL_SNAPSHOT_VERSION, HeaderValue::from(served.version));
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// 413 instead of a snapshot body larger than the client takes: the version
/// (ETag, `X-Cell-Snapshot-Version`) and the size, so the client asks past
/// it and waits for a newer one instead of downloading it.
fn too_large(
    context: &Context,
    version: u64,
    size: usize,
    limit: u64,
    form: &str,
    etag: Option<HeaderValue>,
) -> Response<Body> {
    let count = context
        .answered_too_large
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(1);
    let detail = format!(
        "snapshot version {version} is {size} bytes in the {form} form, more than the \
         {limit} bytes this client takes (x-cellmap-max-body-bytes, --max-body-bytes); \
         not sent: ask after version {version} for a newer one"
    );
    // Once per VM and version is expected; the 1st, 2nd, 4th… are logged.
    if count.is_power_of_two() {
        super::log("warn", &format!("{detail} ({count} such answer(s) so far)"));
    }
    let mut response = error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &detail);
    let headers = response.headers_mut();
    if let Some(etag) = etag {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(X_CELL_SNAPSHOT_VERSION, HeaderValue::from(version));
    headers.insert(X_CELL_SNAPSHOT_BYTES, HeaderValue::from(size));
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// The binary form's ETag is `"<version>-bin"`: two representations of one
/// version need two entity tags (a cache keyed by ETag alone must not hand
/// JSON to a binary client). `If-None-Match` accepts either.
const BINARY_ETAG_SUFFIX: &str = "-bin";

fn binary_etag(version: u64) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("\"{version}{BINARY_ETAG_SUFFIX}\"")).ok()
}

/// Whether `Accept` lists the binary snapshot media type with a q above 0.
/// Anything else (no `Accept`, `*/*`, `application/json`) gets JSON: the
/// binary form is only for clients that ask for it by name.
fn wants_binary(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case(cell_router_mapping::binary::MEDIA_TYPE) {
            return false;
        }
        !parts.any(|p| {
            p.trim().split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q")
                    && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        })
    })
}

fn etag(version: u64) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("\"{version}\"")).ok()
}

fn healthz(context: &Context) -> Response<Body> {
    let store = &context.store;
    let (status, mut body) = match store.current() {
        Some(s) => (
            StatusCode::OK,
            serde_json::json!({
                "status": "ok",
                "version": s.version,
                "origin": s.origin,
                "served_for_s": s.since.elapsed().as_secs(),
                "applied": store.applied(),
                "refused": store.refused(),
            }),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "no_snapshot",
                "refused": store.refused(),
            }),
        ),
    };
    if let Some(fields) = body.as_object_mut() {
        fields.insert("max_body_bytes".into(), store.max_body_bytes().into());
        fields.insert("refused_too_large".into(), store.refused_too_large().into());
        fields.insert(
            "answered_too_large".into(),
            context.answered_too_large.load(Ordering::Relaxed).into(),
        );
        if let Some(refusal) = store.last_refusal() {
            fields.insert(
                "last_refused".into(),
                serde_json::json!({
                    "version": refusal.version,
                    "reason": refusal.reason,
                    "origin": refusal.origin,
                    "too_large": refusal.too_large,
                }),
            );
        }
    }
    json(status, Bytes::from(body.to_string()))
}

/// `{"error": …, "detail": …}` with `status`.
pub(crate) fn error(status: StatusCode, error: &str, detail: &str) -> Response<Body> {
    // Written by hand to keep the field order of the earlier sidecar.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(r#"{{"error":{},"detail":{}}}"#, quote(error), quote(detail));
    json(status, Bytes::from(body))
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
