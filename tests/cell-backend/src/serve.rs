//! One cell's HTTP/1 server: an accept loop that hands every connection to
//! its own task, and the answer to each request.

use crate::checker::{Checker, Labels};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The request header that sets this request's delay, in milliseconds.
pub const DELAY_HEADER: &str = "x-test-delay-ms";
/// The longest delay a request may ask for (10 minutes): a typo must not
/// hold a connection for days.
pub const MAX_DELAY_MS: u64 = 600_000;

/// What every request to one cell shares.
pub struct Cell {
    pub name: String,
    /// `x-served-by`, checked once at start-up.
    pub served_by: HeaderValue,
    pub checker: Option<Arc<Checker>>,
    /// `--delay-ms`: how long each answer waits unless the request says.
    pub delay: Duration,
}

/// Accepts connections for ever; each is served on its own task, so a slow
/// or idle keep-alive connection never holds up a new one.
pub async fn accept_loop(listener: TcpListener, cell: Arc<Cell>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: say so, let the
                // other connections finish, and try again.
                eprintln!("cell-backend: {}: accept: {err}", cell.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let cell = Arc::clone(&cell);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let cell = Arc::clone(&cell);
                async move { Ok::<_, Infallible>(cell.answer(request).await) }
            });
            // No header-read timeout: like the tiny_http server before, the
            // cell never closes an idle keep-alive connection that Envoy may
            // be about to reuse (that race would show as a 503 upstream).
            let _ = http1::Builder::new()
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Cell {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        // The request target as sent: the path and any query.
        let target = request.uri().to_string();
        if let Some(checker) = &self.checker
            && target == "/__chaos"
        {
            return json_response(StatusCode::OK, checker.report().to_string());
        }
        let delay = match header(DELAY_HEADER) {
            None => self.delay,
            Some(value) => match value.trim().parse::<u64>() {
                Ok(ms) if ms <= MAX_DELAY_MS => Duration::from_millis(ms),
                _ => {
                    let body = serde_json::json!({
                        "error": "bad_delay",
                        "detail": format!(
                            "{DELAY_HEADER} wants whole milliseconds up to {MAX_DELAY_MS}, got {value:?}"
                        ),
                    });
                    return json_response(StatusCode::BAD_REQUEST, body.to_string());
                }
            },
        };
        if let Some(checker) = &self.checker {
            let (tenant, routed_cell, version) = (
                header(&checker.tenant_header),
                header("x-cell-id"),
                header("x-cell-snapshot"),
            );
            checker.judge(
                &self.name,
                &Labels {
                    tenant: tenant.as_deref(),
                    routed_cell: routed_cell.as_deref(),
                    version: version.as_deref(),
                    canary: header("x-chaos-canary").is_some(),
                },
            );
        }
        let headers: serde_json::Map<String, serde_json::Value> = request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into(),
                )
            })
            .collect();
        let body = serde_json::json!({
            "cell": self.name,
            "path": target,
            "routed_cell": header("x-cell-id"),
            "snapshot": header("x-cell-snapshot"),
            "tenant": header("x-tenant-id"),
            "delay_ms": delay.as_millis() as u64,
            "headers": headers,
        });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut response = json_response(StatusCode::OK, body.to_string());
        response
            .headers_mut()
            .insert("x-served-by", self.served_by.clone());
        response
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
