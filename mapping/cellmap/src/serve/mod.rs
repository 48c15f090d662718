//! `cellmap serve`: the sidecar next to each gateway.
//!
//! It holds the last good snapshot and serves it to the local Envoy:
//! - `GET /snapshot` answers the snapshot (`ETag: "<version>"`);
//!   `If-None-Match: "<v>"` or `?after=<v>` answers 304 unless a newer one
//!   exists; `&wait=<s>` holds the request (a long-poll) until a newer version
//!   arrives or `s` seconds pass, so every worker hears of a change at once.
//! - `GET /healthz` answers 200 with the version served, 503 before the first.
//! - `GET /jwks` answers the `--jwks` file, re-read on each request.
//!
//! Sources: a file (polled; a file that changes while being read is read
//! again later, so a half-written file is never taken) or an upstream URL
//! (polled with `If-None-Match`). Every candidate is validated and must carry
//! a greater version; a refused one is logged while the last good stays served.

use crate::snapshot::Snapshot;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options of `cellmap serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (keep it on loopback: only the local Envoy needs it).
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub listen: SocketAddr,
    /// Snapshot file to serve; polled, and reloaded when it changes.
    #[arg(
        long,
        required_unless_present = "upstream",
        conflicts_with = "upstream"
    )]
    pub file: Option<PathBuf>,
    /// Upstream URL serving snapshots (for example another sidecar or the
    /// control plane); polled with If-None-Match.
    #[arg(long)]
    pub upstream: Option<String>,
    /// How often to check the file for changes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub watch_interval_ms: u64,
    /// How often to poll the upstream URL, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// A JWKS file to serve at /jwks.
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// Longest a long-poll (`wait`) may hold a request, in seconds.
    #[arg(long, default_value_t = 60)]
    pub max_wait_s: u64,
    /// Largest snapshot accepted from the source, in MiB.
    #[arg(long, default_value_t = 512)]
    pub max_snapshot_mib: u64,
    /// Most requests handled at once (long-polls included); more get 503.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
}

/// A snapshot that passed validation, as served.
struct Served {
    version: u64,
    body: Arc<Vec<u8>>,
    cells: usize,
    tenant_entries: usize,
    since: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Served>,
}

/// The last good snapshot and the long-polls waiting for the next one.
struct Store {
    state: Mutex<State>,
    changed: Condvar,
    shutting_down: AtomicBool,
    refused: AtomicU64,
    applied: AtomicU64,
}

/// What became of a snapshot offered by a source.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Applied(u64),
    Unchanged(u64),
}

impl Store {
    fn new() -> Self {
        Store {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            shutting_down: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated (every
        // update is one assignment), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates `bytes` and serves them if their version is greater.
    fn offer(&self, bytes: Vec<u8>) -> Result<Offer, String> {
        let snapshot = Snapshot::parse(&bytes).map_err(|e| e.to_string())?;
        let mut state = self.lock();
        if let Some(current) = &state.current {
            if snapshot.version() == current.version && bytes == *current.body {
                return Ok(Offer::Unchanged(current.version));
            }
            if snapshot.version() <= current.version {
                return Err(format!(
                    "$.version: version {} is not greater than the served version {}",
                    snapshot.version(),
                    current.version
                ));
            }
        }
        let version = snapshot.version();
        state.current = Some(Served {
            version,
            cells: snapshot.cells().len(),
            tenant_entries: snapshot.tenant_entries(),
            body: Arc::new(bytes),
            since: Instant::now(),
        });
        drop(state);
        self.applied.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_all();
        Ok(Offer::Applied(version))
    }

    /// Offers and logs the result; counts refusals.
    fn offer_and_log(&self, bytes: Vec<u8>, origin: &str) {
        match self.offer(bytes) {
            Ok(Offer::Applied(version)) => {
                let state = self.lock();
                let (cells, entries) = state
                    .current
                    .as_ref()
                    .map(|s| (s.cells, s.tenant_entries))
                    .unwrap_or_default();
                log(
                    "info",
                    &format!(
                        "serving snapshot version {version} from {origin} ({cells} cells, {entries} overrides/pins/moves)"
                    ),
                );
            }
            Ok(Offer::Unchanged(_)) => {}
            Err(err) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                log(
                    "error",
                    &format!(
                        "refused snapshot from {origin}, still serving the last good one: {err}"
                    ),
                );
            }
        }
    }

    /// The served snapshot if its version is greater than `after`, waiting
    /// until `deadline` for one. `None`: nothing newer (or shutting down).
    fn newer_than(&self, after: Option<u64>, deadline: Instant) -> Option<(u64, Arc<Vec<u8>>)> {
        let mut state = self.lock();
        loop {
            if let Some(current) = &state.current
                && after.is_none_or(|after| current.version > after)
            {
                return Some((current.version, Arc::clone(&current.body)));
            }
            let now = Instant::now();
            if now >= deadline || self.shutting_down.load(Ordering::Relaxed) {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    fn current_version(&self) -> Option<u64> {
        self.lock().current.as_ref().map(|s| s.version)
    }
}

/// Runs the sidecar until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let store = Arc::new(Store::new());
    let server = Arc::new(
        tiny_http::Server::http(args.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?,
    );
    let max_bytes = args.max_snapshot_mib.saturating_mul(1024 * 1024);

    if let Some(path) = args.file.clone() {
        let store = Arc::clone(&store);
        let interval = Duration::from_millis(args.watch_interval_ms.max(10));
        std::thread::Builder::new()
            .name("watch-file".into())
            .spawn(move || watch_file(&store, &path, interval, max_bytes))
            .map_err(|e| format!("cannot start the file watcher: {e}"))?;
    }
    if let Some(url) = args.upstream.clone() {
        let store = Arc::clone(&store);
        let interval = Duration::from_millis(args.poll_interval_ms.max(10));
        std::thread::Builder::new()
            .name("poll-upstream".into())
            .spawn(move || poll_upstream(&store, &url, interval, max_bytes))
            .map_err(|e| format!("cannot start the upstream poller: {e}"))?;
    }

    {
        let store = Arc::clone(&store);
        let server = Arc::clone(&server);
        ctrlc::set_handler(move || {
            store.shutting_down.store(true, Ordering::SeqCst);
            store.changed.notify_all();
            server.unblock();
        })
        .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    }

    let source = match (&args.file, &args.upstream) {
        (Some(file), _) => format!("file {}", file.display()),
        (None, Some(url)) => format!("upstream {url}"),
        (None, None) => "nothing".to_string(),
    };
    log(
        "info",
        &format!("listening on http://{} (source: {source})", args.listen),
    );

    let in_flight = Arc::new(AtomicUsize::new(0));
    let config = Arc::new(args);
    while !store.shutting_down.load(Ordering::SeqCst) {
        let request = match server.recv() {
            Ok(request) => request,
            Err(err) => {
                if !store.shutting_down.load(Ordering::SeqCst) {
                    log("warn", &format!("accept failed: {err}"));
                }
                continue;
            }
        };
        if in_flight.fetch_add(1, Ordering::SeqCst) >= config.max_in_flight {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            respond_json(
                request,
                503,
                r#"{"error":"busy","detail":"too many requests in flight"}"#,
                &[],
            );
            continue;
        }
        let (store, config, in_flight) = (
            Arc::clone(&store),
            Arc::clone(&config),
            Arc::clone(&in_flight),
        );
        let spawned = std::thread::Builder::new()
            .name("request".into())
            .spawn(move || {
                handle(&store, &config, request);
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(err) = spawned {
            log("error", &format!("cannot start a request thread: {err}"));
        }
    }

    // Long-polls were woken by the handler; give them a moment to answer.
    let deadline = Instant::now() + Duration::from_secs(2);
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    log("info", "stopped");
    Ok(())
}

fn handle(store: &Store, config: &ServeArgs, request: tiny_http::Request) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let get_or_head = matches!(
        request.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    );
    match path {
        _ if !get_or_head => respond_json(
            request,
            405,
            r#"{"error":"method_not_allowed","detail":"only GET and HEAD"}"#,
            &[("Allow", "GET, HEAD")],
        ),
        "/snapshot" => serve_snapshot(store, config, request, query),
        "/healthz" => {
            let state = store.lock();
            let body = match &state.current {
                Some(s) => serde_json::json!({
                    "status": "ok",
                    "version": s.version,
                    "served_for_s": s.since.elapsed().as_secs(),
                    "applied": store.applied.load(Ordering::Relaxed),
                    "refused": store.refused.load(Ordering::Relaxed),
                }),
                None => serde_json::json!({
                    "status": "no_snapshot",
                    "refused": store.refused.load(Ordering::Relaxed),
                }),
            };
            let status = if state.current.is_some() { 200 } else { 503 };
            drop(state);
            respond_json(request, status, &body.to_string(), &[]);
        }
        "/jwks" => match &config.jwks {
            None => respond_json(
                request,
                404,
                r#"{"error":"not_found","detail":"no --jwks file configured"}"#,
                &[],
            ),
            Some(file) => match std::fs::read(file) {
                Ok(bytes) => {
                    respond_bytes(request, 200, bytes, &[("Content-Type", "application/json")])
                }
                Err(err) => respond_json(
                    request,
                    503,
                    &serde_json::json!({"error": "jwks_unavailable", "detail": err.to_string()})
                        .to_string(),
                    &[],
                ),
            },
        },
        _ => respond_json(
            request,
            404,
            r#"{"error":"not_found","detail":"try /snapshot or /healthz"}"#,
            &[],
        ),
    }
}

fn serve_snapshot(store: &Store, config: &ServeArgs, request: tiny_http::Request, query: &str) {
    let mut after = None;
    let mut wait_s = 0u64;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let parsed = value.parse::<u64>();
        match (name, parsed) {
            ("after", Ok(v)) => after = (v > 0).then_some(v),
            ("wait", Ok(v)) => wait_s = v.min(config.max_wait_s),
            ("after" | "wait", Err(_)) => {
                let body = serde_json::json!({
                    "error": "bad_request",
                    "detail": format!("query parameter `{name}` must be a whole number, got {value:?}"),
                });
                return respond_json(request, 400, &body.to_string(), &[]);
            }
            _ => {}
        }
    }
    // A conditional GET names the version it has, like `after`.
    if after.is_none() {
        after = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("If-None-Match"))
            .and_then(|h| {
                h.value
                    .as_str()
                    .trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .parse()
                    .ok()
            });
    }
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    match store.newer_than(after, deadline) {
        Some((version, body)) => {
            let etag = format!("\"{version}\"");
            let version = version.to_string();
            let headers = [
                ("Content-Type", "application/json"),
                ("ETag", etag.as_str()),
                ("X-Cell-Snapshot-Version", version.as_str()),
            ];
            respond_bytes(request, 200, body.to_vec(), &headers);
        }
        None => match store.current_version() {
            Some(version) => {
                let etag = format!("\"{version}\"");
                respond_bytes(request, 304, Vec::new(), &[("ETag", etag.as_str())]);
            }
            None => respond_json(
                request,
                503,
                r#"{"error":"no_snapshot","detail":"the sidecar has no valid snapshot yet"}"#,
                &[],
            ),
        },
    }
}

fn respond_json(request: tiny_http::Request, status: u16, body: &str, extra: &[(&str, &str)]) {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    respond_bytes(request, status, body.as_bytes().to_vec(), &headers);
}

fn respond_bytes(
    request: tiny_http::Request,
    status: u16,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) {
    let mut response = tiny_http::Response::from_data(body).with_status_code(status);
    for (name, value) in headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    // The client may have gone away (e.g. Envoy timed the long-poll out).
    let _ = request.respond(response);
}

/// Polls `path`; a file is taken only when it did not change while it was read.
fn watch_file(store: &Store, path: &std::path::Path, interval: Duration, max_bytes: u64) {
    let stamp =
        |path: &std::path::Path| std::fs::metadata(path).map(|m| (m.modified().ok(), m.len()));
    let mut last_taken = None;
    let mut last_error = String::new();
    while !store.shutting_down.load(Ordering::Relaxed) {
        match stamp(path) {
            Ok(before) if Some(before) != last_taken => {
                if before.1 > max_bytes {
                    report_once(
                        &mut last_error,
                        format!("{} is {} bytes, over the limit", path.display(), before.1),
                    );
                } else if let Ok(bytes) = std::fs::read(path) {
                    // Changed under us: a writer is still at it; read it next time.
                    if stamp(path).ok() == Some(before) {
                        last_taken = Some(before);
                        last_error.clear();
                        store.offer_and_log(bytes, &format!("file {}", path.display()));
                    }
                }
            }
            Ok(_) => {}
            Err(err) => report_once(
                &mut last_error,
                format!("cannot read {}: {err}", path.display()),
            ),
        }
        std::thread::sleep(interval);
    }
}

/// Polls an upstream URL with If-None-Match.
fn poll_upstream(store: &Store, url: &str, interval: Duration, max_bytes: u64) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut last_error = String::new();
    while !store.shutting_down.load(Ordering::Relaxed) {
        let mut request = agent.get(url);
        if let Some(version) = store.current_version() {
            request = request.header("If-None-Match", format!("\"{version}\""));
        }
        match request.call() {
            Ok(mut response) if response.status() == 200 => {
                match response
                    .body_mut()
                    .with_config()
                    .limit(max_bytes)
                    .read_to_vec()
                {
                    Ok(bytes) => {
                        if !last_error.is_empty() {
                            log("info", &format!("upstream {url} is reachable again"));
                            last_error.clear();
                        }
                        store.offer_and_log(bytes, &format!("upstream {url}"));
                    }
                    Err(err) => report_once(&mut last_error, format!("reading {url}: {err}")),
                }
            }
            Ok(response) if response.status() == 304 => {
                if !last_error.is_empty() {
                    log("info", &format!("upstream {url} is reachable again"));
                    last_error.clear();
                }
            }
            Ok(response) => report_once(
                &mut last_error,
                format!("{url} answered {}", response.status()),
            ),
            Err(err) => report_once(&mut last_error, format!("{url}: {err}")),
        }
        std::thread::sleep(interval);
    }
}

/// Logs a problem when it first appears, not on every poll while it lasts.
fn report_once(last: &mut String, message: String) {
    if *last != message {
        log(
            "warn",
            &format!("{message}; still serving the last good snapshot"),
        );
        *last = message;
    }
}

fn log(level: &str, message: &str) {
    let mut out = std::io::stderr().lock();
    let _ = std::io::Write::write_fmt(
        &mut out,
        format_args!("{} {level} cellmap-serve: {message}\n", utc_now_rfc3339()),
    );
}

/// `2026-11-22T05:01:23Z` from the system clock.
pub fn utc_now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339_from_unix(secs)
}

/// Formats Unix seconds as RFC 3339 UTC (civil-from-days, proleptic Gregorian).
pub fn rfc3339_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_from_unix(1_795_323_683), "2026-11-22T05:01:23Z");
    }

    fn snapshot(version: u64) -> Vec<u8> {
        serde_json::json!({
            "version": version,
            "generated_at": "2026-11-22T00:00:00Z",
            "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 2},
            "cells": [{"id": "cell-a"}, {"id": "cell-b"}],
            "slot_table": "AAABAA==",
            "overrides": {},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn store_applies_newer_and_refuses_older_or_invalid() {
        let store = Store::new();
        assert_eq!(store.offer(snapshot(3)), Ok(Offer::Applied(3)));
        assert_eq!(store.offer(snapshot(3)), Ok(Offer::Unchanged(3)));
        assert!(
            store
                .offer(snapshot(2))
                .unwrap_err()
                .starts_with("$.version")
        );
        assert!(store.offer(b"{\"version\": 9".to_vec()).is_err());
        assert_eq!(store.current_version(), Some(3));
        assert_eq!(store.offer(snapshot(4)), Ok(Offer::Applied(4)));
    }

    #[test]
    fn long_poll_wakes_on_a_newer_version() {
        let store = Arc::new(Store::new());
        store.offer(snapshot(1)).unwrap();
        let waiter = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                store.newer_than(Some(1), Instant::now() + Duration::from_secs(10))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        store.offer(snapshot(2)).unwrap();
        let (version, _) = waiter.join().unwrap().expect("woken with a snapshot");
        assert_eq!(version, 2);
        // Nothing newer than 2: the wait times out.
        assert!(
            store
                .newer_than(Some(2), Instant::now() + Duration::from_millis(20))
                .is_none()
        );
        // No version named: the current one at once.
        assert_eq!(
            store.newer_than(None, Instant::now()).map(|(v, _)| v),
            Some(2)
        );
    }
}
