//! The snapshot subscription: what to ask the sidecar, and what to do with
//! each answer. Plain state machine, driven by the root context with the host
//! clock; no host calls here.
//!
//! Protocol (served by `cellmap serve`): `GET <path>?after=<v>&wait=<s>` with
//! `If-None-Match: "<v>"`. 200 + body = a snapshot newer than `v`; 304 = no
//! newer one within `wait` seconds. `after=0` (nothing held yet) answers what
//! the sidecar has at once. The request names the largest body the VM takes
//! (`x-cellmap-max-body-bytes`); a larger snapshot is answered 413 with its
//! version's ETag and no body, and the subscription asks past that version:
//! a body Envoy or the VM cannot take is never downloaded, let alone again
//! and again (Envoy resets a call whose body passes its
//! `http.async_response_buffer_limit`, and reports only "reset").

use cell_router_mapping::{PathError, Snapshot, binary};

/// `Accept` when the binary form is wanted: it first, JSON second.
const BINARY_THEN_JSON: &str = "application/vnd.cellmap.snapshot, application/json;q=0.5";
/// The request header naming the largest body the VM takes.
pub const MAX_BODY_BYTES_HEADER: &str = "x-cellmap-max-body-bytes";
/// The request header naming the largest piece the VM takes per answer.
pub const CHUNK_BYTES_HEADER: &str = "x-cellmap-chunk-bytes";
/// The most of a 413's error body read (the sidecar's `detail`).
const MAX_ERROR_BODY_BYTES: usize = 4096;
/// proxy-wasm's `BrokenConnection` status: what Envoy reports for a call
/// that got no response, reset or over its buffer limit alike.
const HOST_BROKEN_CONNECTION: u32 = 11;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// `sidecar` in the plugin config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarConfig {
    /// Envoy cluster of the sidecar.
    pub cluster: String,
    /// `:authority` of the requests.
    pub authority: String,
    /// Path of the snapshot endpoint.
    pub path: String,
    /// How long the sidecar may hold a request (0 = plain polling).
    pub long_poll_s: u64,
    /// Timeout of one request; greater than the long-poll.
    pub timeout_ms: u64,
    /// First backoff after a failure; doubles up to `retry_max_ms`.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Tick period of the root context.
    pub tick_ms: u64,
    /// Shortest time between the starts of two fetches, so a sidecar that
    /// answers at once (no long-poll) is not hammered in a loop.
    pub min_fetch_interval_ms: u64,
    /// Largest snapshot body read into the VM; a larger answer is refused
    /// before its body is read.
    pub max_snapshot_bytes: usize,
    /// Ask the sidecar for the binary snapshot form (`mapping/SPEC.md`,
    /// "Binary form"), JSON as the second choice. Either answer is taken
    /// (told apart by its first bytes), so a sidecar that only speaks JSON
    /// still works.
    pub binary: bool,
    /// With `binary`: the largest piece of a snapshot asked for per answer
    /// (`x-cellmap-chunk-bytes`); the rest comes with `Range` requests, one
    /// after the other. 0: whole snapshots.
    pub chunk_bytes: usize,
    /// A second source: the sidecar's last accepted snapshot as persisted on
    /// disk and served by Envoy itself (a `direct_response` from the file).
    pub persisted: Option<PersistedConfig>,
}

/// `sidecar.persisted` in the plugin config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedConfig {
    /// Envoy cluster that answers with the persisted snapshot.
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// Where a snapshot is fetched from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The sidecar (`cellmap serve`), long-polled: the primary source.
    Sidecar,
    /// The sidecar's persisted copy, served by Envoy from a file: asked while
    /// the VM holds nothing from the sidecar and the sidecar is failing.
    Persisted,
}

/// A request to dispatch to a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub source: Source,
    pub cluster: String,
    pub headers: Vec<(&'static str, String)>,
    pub timeout: Duration,
}

impl FetchRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The body of an answer, as far as the VM read it.
#[derive(Clone, Debug)]
pub enum Body<'a> {
    Read(&'a [u8]),
    /// Read, and handed over: a binary snapshot is then routed by from these
    /// very bytes (no copy).
    Owned(Vec<u8>),
    /// Larger than `max_snapshot_bytes`: not read (this many bytes).
    TooLarge(usize),
    /// The host did not hand it over.
    Unreadable,
}

/// What to do with an answer's body before reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyPlan {
    /// Read it whole.
    Read,
    /// Not needed (not a 200).
    Skip,
    /// Larger than `max_snapshot_bytes`: do not read it.
    TooLarge,
}

/// An answer, as far as the host reported it. A failed or timed out call
/// has no status.
#[derive(Clone, Debug)]
pub struct FetchResponse<'a> {
    pub status: Option<u16>,
    /// The `etag` header, if any (the sidecar sends `"<version>"`).
    pub etag: Option<&'a [u8]>,
    /// The `content-range` header of a 206 (`bytes <first>-<last>/<total>`).
    pub content_range: Option<&'a [u8]>,
    pub body: Body<'a>,
}

impl<'a> FetchResponse<'a> {
    /// An answer with this status and body, no ETag.
    pub fn new(status: Option<u16>, body: &'a [u8]) -> Self {
        FetchResponse {
            status,
            etag: None,
            content_range: None,
            body: Body::Read(body),
        }
    }
}

/// What an answer means for the filter.
#[derive(Debug)]
pub enum FetchOutcome {
    /// A valid, newer snapshot: install it for new requests, then report
    /// [`Subscription::installed`].
    Applied {
        snapshot: Box<Snapshot>,
        source: Source,
    },
    /// A piece of a binary snapshot arrived (or the download starts over):
    /// the next request is due at once.
    Downloading,
    /// A binary snapshot is being checked in steps
    /// ([`Subscription::apply_step`]); no new request until it is done.
    Applying,
    /// 304: nothing newer.
    Unchanged,
    /// A 200 whose snapshot was refused; the last good one stays.
    Refused {
        source: Source,
        error: PathError,
        /// Refused for its size, before reading it.
        too_large: bool,
    },
    /// Transport error, timeout, or an unexpected status.
    Failed { source: Source, why: String },
    /// An answer to a request this subscription did not make (or forgot
    /// after a timeout); ignored.
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Free to fetch from `not_before_ms` on.
    Idle {
        not_before_ms: u64,
    },
    InFlight {
        token: u32,
        since_ms: u64,
    },
    /// A binary snapshot from the sidecar is being applied in steps.
    Applying,
}

/// Shared-data key (one per Envoy and `vm_id`) naming the last binary
/// snapshot a VM checked in full and put in force: `<version> <checksum>`.
/// Every VM receives and checksums its own copy; the records are checked by
/// one VM for all ([`CHECKING_KEY`]), so a swap costs the process about one
/// record check instead of one per worker (Wasm only: the native module
/// holds one snapshot for every worker).
pub const CHECKED_MARK_KEY: &str = "cell_router.checked_snapshot";
/// Shared-data key naming the binary snapshot whose records a VM is checking
/// for the others, while it does: `<version> <checksum> <VM> <time ns>`.
pub const CHECKING_KEY: &str = "cell_router.checking_snapshot";

/// A binary snapshot being applied, and the version its ETag named.
#[derive(Debug)]
struct Applying {
    apply: binary::Apply,
    etag_version: Option<u64>,
    /// Assembled from pieces: a checksum that does not match may be the
    /// assembly's fault (pieces of two encodings under one ETag), so that
    /// version is asked for again rather than skipped.
    from_pieces: bool,
    /// Pieces and download time, and when the checks started.
    pieces: u32,
    download_ms: u64,
    started_ms: u64,
}

/// A binary snapshot arriving in pieces.
#[derive(Debug)]
struct Download {
    /// The ETag of its first piece: every later piece must have it.
    etag: Vec<u8>,
    total: usize,
    bytes: Vec<u8>,
    pieces: u32,
    started_ms: u64,
}

impl Download {
    /// When the next piece is due if the download is spread over
    /// `spread_ms` (None: at once).
    fn next_piece_due(&self, spread_ms: u64) -> Option<u64> {
        if spread_ms == 0 || self.total == 0 {
            return None;
        }
        let share = u128::from(spread_ms) * self.bytes.len() as u128 / self.total as u128;
        Some(
            self.started_ms
                .saturating_add(u64::try_from(share).unwrap_or(u64::MAX)),
        )
    }
}

/// How the last binary snapshot was received and checked, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    pub bytes: usize,
    /// Answers it came in (1: whole).
    pub pieces: u32,
    /// From the first piece to the last.
    pub download_ms: u64,
    /// From the last piece to the outcome (the checks, in slices).
    pub check_ms: u64,
    /// The bytes' fingerprint (`None` if refused before its checksum).
    pub fingerprint: Option<binary::Fingerprint>,
    /// Its records were not checked here: another VM of this Envoy had
    /// checked the same bytes ([`Subscription::trust_applying_records`]).
    pub records_trusted: bool,
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in {} piece(s) over {} ms, checked in {} ms",
            self.bytes, self.pieces, self.download_ms, self.check_ms
        )?;
        if self.records_trusted {
            write!(f, " (records already checked by another VM of this Envoy)")?;
        }
        Ok(())
    }
}

/// `bytes <first>-<last>/<total>`.
fn content_range(value: &[u8]) -> Option<(usize, usize, usize)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (span, total) = text.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, total) = (
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        total.trim().parse().ok()?,
    );
    (first <= last && last < total).then_some((first, last, total))
}

/// The persisted copy's part of the subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PersistedState {
    /// Asked, from `not_before_ms` on, while the VM holds nothing from the
    /// sidecar and the sidecar is failing.
    Wanted {
        not_before_ms: u64,
    },
    InFlight {
        token: u32,
        since_ms: u64,
    },
    /// It answered with a snapshot, taken or not: its content only changes
    /// when Envoy reloads the file, so it is not asked again.
    Done,
}

/// Grace beyond the request timeout before a call the host never answered is
/// given up on.
const LOST_CALL_GRACE_MS: u64 = 5_000;

/// The host clock (wall time, which NTP may step) made monotonic: a step
/// back makes time stand still instead of running backwards, so deadlines
/// set before it do not wait for the clock to catch up.
#[derive(Clone, Copy, Debug)]
struct Clock {
    last_wall_ms: u64,
    offset_ms: u64,
}

impl Clock {
    fn new(now_ms: u64) -> Self {
        Clock {
            last_wall_ms: now_ms,
            offset_ms: 0,
        }
    }

    /// Monotonic milliseconds for a wall-clock reading.
    fn now(&mut self, wall_ms: u64) -> u64 {
        if wall_ms < self.last_wall_ms {
            self.offset_ms = self.offset_ms.saturating_add(self.last_wall_ms - wall_ms);
        }
        self.last_wall_ms = wall_ms;
        wall_ms.saturating_add(self.offset_ms)
    }

    /// [`Clock::now`] without recording the reading.
    fn peek(&self, wall_ms: u64) -> u64 {
        wall_ms
            .max(self.last_wall_ms)
            .saturating_add(self.offset_ms)
    }
}

#[derive(Debug)]
pub struct Subscription {
    config: SidecarConfig,
    /// The binary snapshot being applied in steps, if any.
    applying: Option<Applying>,
    /// The binary snapshot arriving in pieces, if any.
    download: Option<Download>,
    /// The least time a download of several pieces takes
    /// ([`Subscription::spread_downloads`]); 0: pieces back to back.
    download_spread_ms: u64,
    /// The last apply's report, until taken.
    report: Option<ApplyReport>,
    clock: Clock,
    state: State,
    /// Consecutive sidecar failures, for the backoff.
    failures: u32,
    persisted: PersistedState,
    /// Consecutive failures of the persisted copy, for its own backoff.
    persisted_failures: u32,
    /// Version of the last snapshot the root context put in force from the
    /// sidecar ([`Subscription::installed`]), never one merely received. The
    /// fallback snapshot does not count: any valid sidecar snapshot
    /// replaces it.
    version: Option<u64>,
    /// The highest version the sidecar offered and the VM refused (from the
    /// ETag, else the body): asked past, so the same refused body is not
    /// downloaded again and again.
    refused: Option<u64>,
    started_ms: u64,
    last_contact_ms: Option<u64>,
    last_start_ms: Option<u64>,
    rng: u64,
    /// The gateway's `region`: a snapshot this gateway cannot route by
    /// (`Snapshot::local_region`) is refused like an invalid one, here, so
    /// that every host (the Wasm VM, the native module) refuses it alike.
    gateway_region: Option<String>,
}

impl Subscription {
    /// `seed` spreads the backoff of the workers apart (any value works).
    pub fn new(config: SidecarConfig, now_ms: u64, seed: u64) -> Self {
        Subscription {
            config,
            applying: None,
            download: None,
            download_spread_ms: 0,
            report: None,
            clock: Clock::new(now_ms),
            state: State::Idle {
                not_before_ms: now_ms,
            },
            failures: 0,
            persisted: PersistedState::Wanted {
                not_before_ms: now_ms,
            },
            persisted_failures: 0,
            version: None,
            refused: None,
            started_ms: now_ms,
            last_contact_ms: None,
            last_start_ms: None,
            // xorshift must not start at 0.
            rng: seed | 1,
            gateway_region: None,
        }
    }

    /// The gateway's `region` (plugin config): snapshots that do not fit it
    /// are refused and the last good one keeps serving.
    pub fn with_gateway_region(mut self, region: Option<String>) -> Self {
        self.gateway_region = region;
        self
    }

    /// `parsed`, refused if this gateway cannot route by it.
    fn fits_region(&self, parsed: Result<Snapshot, PathError>) -> Result<Snapshot, PathError> {
        let snapshot = parsed?;
        match snapshot.local_region(self.gateway_region.as_deref()) {
            Ok(_) => Ok(snapshot),
            Err(why) => Err(PathError::new(
                "$.regions",
                format!("version {}: {why}", snapshot.version()),
            )),
        }
    }

    pub fn config(&self) -> &SidecarConfig {
        &self.config
    }

    /// Version of the last snapshot installed from the sidecar.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn in_flight(&self) -> bool {
        matches!(self.state, State::InFlight { .. })
    }

    /// A binary snapshot is being applied ([`Subscription::apply_step`]).
    pub fn is_applying(&self) -> bool {
        self.applying.is_some()
    }

    /// Whether a binary snapshot is arriving in pieces.
    pub fn is_downloading(&self) -> bool {
        self.download.is_some()
    }

    /// Spreads the pieces of the downloads that follow over at least
    /// `spread_ms` (0: back to back): the piece that starts at byte `b` of
    /// `total` is not asked for before `spread_ms × b / total` after the
    /// first arrived. A host whose requests share a thread with the
    /// download sets it while serving, so a big swap takes a little of each
    /// millisecond instead of all of a few (see `root_context.rs`).
    pub fn spread_downloads(&mut self, spread_ms: u64) {
        self.download_spread_ms = spread_ms;
    }

    /// Consecutive failures of `source`.
    pub fn failures_of(&self, source: Source) -> u32 {
        match source {
            Source::Sidecar => self.failures,
            Source::Persisted => self.persisted_failures,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// When the next fetch may start, if none is in flight.
    pub fn next_fetch_at_ms(&self) -> Option<u64> {
        match self.state {
            State::Idle { not_before_ms } => Some(not_before_ms),
            State::InFlight { .. } | State::Applying => None,
        }
    }

    /// Seconds since the last successful contact (200 or 304), or since the
    /// start when there was none yet.
    pub fn age_s(&self, now_ms: u64) -> u64 {
        let now_ms = self.clock.peek(now_ms);
        now_ms.saturating_sub(self.last_contact_ms.unwrap_or(self.started_ms)) / 1000
    }

    /// The request to send now, if one is due. Call on every tick and after
    /// every response, until it answers `None` (the sidecar's and the
    /// persisted copy's may both be due); report each with
    /// [`Subscription::dispatched`] or [`Subscription::dispatch_failed`].
    pub fn poll(&mut self, now_ms: u64) -> Option<FetchRequest> {
        let now_ms = self.clock.now(now_ms);
        match self.state {
            State::InFlight { since_ms, .. } => {
                // The host always answers (Envoy enforces the timeout); this
                // only guards against one that never does.
                if now_ms.saturating_sub(since_ms) > self.config.timeout_ms + LOST_CALL_GRACE_MS {
                    self.fail(now_ms);
                }
            }
            State::Idle { not_before_ms } if now_ms >= not_before_ms => {
                return Some(self.request());
            }
            State::Idle { .. } | State::Applying => {}
        }
        self.poll_persisted(now_ms)
    }

    /// The persisted copy's request, if it is wanted and due: the VM holds
    /// nothing from the sidecar, and the sidecar's last answer was a failure.
    fn poll_persisted(&mut self, now_ms: u64) -> Option<FetchRequest> {
        let config = self.config.persisted.as_ref()?;
        match self.persisted {
            PersistedState::InFlight { since_ms, .. } => {
                if now_ms.saturating_sub(since_ms) > config.timeout_ms + LOST_CALL_GRACE_MS {
                    self.persisted_fail(now_ms);
                }
                None
            }
            PersistedState::Wanted { not_before_ms }
                if now_ms >= not_before_ms && self.version.is_none() && self.failures > 0 =>
            {
                Some(FetchRequest {
                    source: Source::Persisted,
                    cluster: config.cluster.clone(),
                    headers: vec![
                        (":method", "GET".to_string()),
                        (":path", config.path.clone()),
                        (":authority", config.authority.clone()),
                        ("accept", self.accept().to_string()),
                    ],
                    timeout: Duration::from_millis(config.timeout_ms),
                })
            }
            PersistedState::Wanted { .. } | PersistedState::Done => None,
        }
    }

    /// What the sidecar is asked for newer than: the version installed, or
    /// a newer one it offered and the VM refused.
    fn after(&self) -> Option<u64> {
        self.version.max(self.refused)
    }

    /// The media types asked for.
    fn accept(&self) -> &'static str {
        if self.config.binary {
            BINARY_THEN_JSON
        } else {
            "application/json"
        }
    }

    /// The request for the version held now (or for the next piece of the
    /// snapshot arriving).
    pub fn request(&self) -> FetchRequest {
        if let Some(download) = &self.download {
            let first = download.bytes.len();
            let last = first
                .saturating_add(self.config.chunk_bytes.max(1))
                .min(download.total)
                .saturating_sub(1);
            return FetchRequest {
                source: Source::Sidecar,
                cluster: self.config.cluster.clone(),
                headers: vec![
                    (":method", "GET".to_string()),
                    (":path", self.config.path.clone()),
                    (":authority", self.config.authority.clone()),
                    ("accept", binary::MEDIA_TYPE.to_string()),
                    ("range", format!("bytes={first}-{last}")),
                    (
                        "if-match",
                        String::from_utf8_lossy(&download.etag).into_owned(),
                    ),
                ],
                timeout: Duration::from_millis(self.config.timeout_ms),
            };
        }
        let held = self.after();
        let after = held.unwrap_or(0);
        let mut headers = vec![
            (":method", "GET".to_string()),
            (
                ":path",
                format!(
                    "{}?after={after}&wait={}",
                    self.config.path, self.config.long_poll_s
                ),
            ),
            (":authority", self.config.authority.clone()),
            ("accept", self.accept().to_string()),
            (
                MAX_BODY_BYTES_HEADER,
                self.config.max_snapshot_bytes.to_string(),
            ),
        ];
        if let Some(version) = held {
            headers.push(("if-none-match", format!("\"{version}\"")));
        }
        if self.config.binary && self.config.chunk_bytes > 0 {
            headers.push((CHUNK_BYTES_HEADER, self.config.chunk_bytes.to_string()));
        }
        FetchRequest {
            source: Source::Sidecar,
            cluster: self.config.cluster.clone(),
            headers,
            timeout: Duration::from_millis(self.config.timeout_ms),
        }
    }

    /// The host accepted the call.
    pub fn dispatched(&mut self, source: Source, token: u32, now_ms: u64) {
        let now_ms = self.clock.now(now_ms);
        match source {
            Source::Sidecar => {
                self.state = State::InFlight {
                    token,
                    since_ms: now_ms,
                };
                self.last_start_ms = Some(now_ms);
            }
            Source::Persisted => {
                self.persisted = PersistedState::InFlight {
                    token,
                    since_ms: now_ms,
                };
            }
        }
    }

    /// The host refused the call (e.g. unknown cluster): back off.
    pub fn dispatch_failed(&mut self, source: Source, now_ms: u64) {
        let now_ms = self.clock.now(now_ms);
        match source {
            Source::Sidecar => {
                self.last_start_ms = Some(now_ms);
                self.fail(now_ms);
            }
            Source::Persisted => self.persisted_fail(now_ms),
        }
    }

    /// What to do with the body of an answer with this status and size,
    /// before reading it.
    pub fn body_plan(&self, status: Option<u16>, body_size: usize) -> BodyPlan {
        if status == Some(413) && body_size <= MAX_ERROR_BODY_BYTES {
            // The sidecar's reason, in a small JSON error.
            BodyPlan::Read
        } else if status != Some(200) && status != Some(206) {
            BodyPlan::Skip
        } else if body_size > self.config.max_snapshot_bytes {
            BodyPlan::TooLarge
        } else {
            BodyPlan::Read
        }
    }

    /// Handles the answer to call `token`.
    pub fn on_response(
        &mut self,
        token: u32,
        now_ms: u64,
        response: FetchResponse<'_>,
    ) -> FetchOutcome {
        let now_ms = self.clock.now(now_ms);
        if matches!(self.persisted, PersistedState::InFlight { token: t, .. } if t == token) {
            return self.on_persisted_response(now_ms, response);
        }
        match self.state {
            State::InFlight {
                token: expected, ..
            } if expected == token => {}
            _ => return FetchOutcome::Stale,
        }
        let source = Source::Sidecar;
        if self.download.is_some() || response.status == Some(206) {
            return self.on_piece(now_ms, response);
        }
        match response.status {
            Some(200) => {
                let body = match response.body {
                    Body::Read(body) => Cow::Borrowed(body),
                    Body::Owned(body) => Cow::Owned(body),
                    Body::TooLarge(size) => {
                        self.remember_refused(response.etag.and_then(etag_version));
                        self.fail(now_ms);
                        return FetchOutcome::Refused {
                            source,
                            error: self.too_large(size),
                            too_large: true,
                        };
                    }
                    Body::Unreadable => {
                        self.fail(now_ms);
                        return FetchOutcome::Failed {
                            source,
                            why: "the host did not hand over the response body".to_string(),
                        };
                    }
                };
                let etag = response.etag.and_then(etag_version);
                if binary::is_binary(&body) {
                    return self.start_apply(now_ms, body.into_owned(), etag, (1, 0));
                }
                match self.fits_region(binary::parse_any_newer(&body, self.version)) {
                    Ok(snapshot) => {
                        // Recorded once installed, not before: a snapshot
                        // dropped on the way must be asked for again.
                        self.succeed(now_ms);
                        FetchOutcome::Applied {
                            snapshot: Box::new(snapshot),
                            source,
                        }
                    }
                    Err(error) => {
                        let claimed = etag.or_else(|| claimed_version(&body));
                        self.refuse(now_ms, claimed, error)
                    }
                }
            }
            Some(304) => {
                self.succeed(now_ms);
                FetchOutcome::Unchanged
            }
            Some(413) => self.on_too_large(now_ms, response),
            Some(status) => {
                self.fail(now_ms);
                FetchOutcome::Failed {
                    source,
                    why: format!("sidecar answered HTTP {status}"),
                }
            }
            None => {
                self.fail(now_ms);
                FetchOutcome::Failed {
                    source,
                    why: "no response".to_string(),
                }
            }
        }
    }

    /// How the last binary snapshot was received and checked (once).
    pub fn take_apply_report(&mut self) -> Option<ApplyReport> {
        self.report.take()
    }

    /// The binary snapshot being applied whose records this VM is still
    /// checking, once its own checksum is verified: what another VM's
    /// "checked" mark must name for [`Self::trust_applying_records`].
    pub fn applying_fingerprint(&self) -> Option<binary::Fingerprint> {
        let applying = self.applying.as_ref()?;
        if applying.apply.records_trusted() {
            return None;
        }
        applying.apply.verified_fingerprint()
    }

    /// Skips the record checks left for the snapshot being applied: another
    /// VM of this Envoy fully checked bytes with the same fingerprint (see
    /// `binary::Apply::trust_records`). Returns whether that took effect.
    pub fn trust_applying_records(&mut self) -> bool {
        self.applying
            .as_mut()
            .is_some_and(|applying| applying.apply.trust_records())
    }

    /// Starts applying a binary snapshot in steps (`pieces` answers over
    /// `download_ms`).
    fn start_apply(
        &mut self,
        now_ms: u64,
        bytes: Vec<u8>,
        etag: Option<u64>,
        (pieces, download_ms): (u32, u64),
    ) -> FetchOutcome {
        match binary::Apply::new(bytes) {
            Ok(apply) => {
                self.applying = Some(Applying {
                    apply,
                    etag_version: etag,
                    from_pieces: pieces > 1,
                    pieces,
                    download_ms,
                    started_ms: now_ms,
                });
                self.state = State::Applying;
                FetchOutcome::Applying
            }
            Err(error) => self.refuse(now_ms, etag, error),
        }
    }

    /// A piece of a binary snapshot (206), or what came instead of one.
    /// The first piece (`bytes 0-…/<total>`) starts a download of `total`
    /// bytes, held in one buffer of exactly that size; every later piece
    /// must continue it, with the same ETag. A newer version published
    /// meanwhile (412) starts over at once; anything else fails the
    /// download (and backs off) like a failed fetch.
    fn on_piece(&mut self, now_ms: u64, response: FetchResponse<'_>) -> FetchOutcome {
        let source = Source::Sidecar;
        let etag = response.etag;
        if response.status == Some(412) && self.download.is_some() {
            self.download = None;
            self.contact(now_ms);
            return FetchOutcome::Downloading;
        }
        let body = match (response.status, response.body) {
            (Some(206), Body::Read(body)) => Cow::Borrowed(body),
            (Some(206), Body::Owned(body)) => Cow::Owned(body),
            (Some(206), Body::TooLarge(size)) => {
                self.download = None;
                self.remember_refused(etag.and_then(etag_version));
                self.fail(now_ms);
                return FetchOutcome::Refused {
                    source,
                    error: self.too_large(size),
                    too_large: true,
                };
            }
            (status, _) => {
                self.download = None;
                self.fail(now_ms);
                return FetchOutcome::Failed {
                    source,
                    why: match status {
                        Some(status) => {
                            format!("sidecar answered HTTP {status} to a piece of a snapshot")
                        }
                        None => "no response to a piece of a snapshot".to_string(),
                    },
                };
            }
        };
        let range = response.content_range.and_then(content_range);
        let piece = match (range, etag) {
            (Some((first, last, total)), Some(etag)) if last - first + 1 == body.len() => {
                Some((first, total, etag))
            }
            _ => None,
        };
        let Some((first, total, etag)) = piece else {
            return self.broken_download(
                now_ms,
                etag,
                "a piece without a matching Content-Range or ETag",
            );
        };
        match self.download.as_mut() {
            None if first == 0 => {
                if total > self.config.max_snapshot_bytes {
                    self.remember_refused(etag_version(etag));
                    self.fail(now_ms);
                    return FetchOutcome::Refused {
                        source,
                        error: self.too_large(total),
                        too_large: true,
                    };
                }
                let mut bytes = Vec::new();
                if bytes.try_reserve_exact(total).is_err() {
                    return self.broken_download(now_ms, Some(etag), "no memory for the snapshot");
                }
                bytes.extend_from_slice(&body);
                self.download = Some(Download {
                    etag: etag.to_vec(),
                    total,
                    bytes,
                    pieces: 1,
                    started_ms: now_ms,
                });
            }
            Some(download)
                if first == download.bytes.len()
                    && total == download.total
                    && etag == download.etag.as_slice() =>
            {
                download.bytes.extend_from_slice(&body);
                download.pieces = download.pieces.saturating_add(1);
            }
            _ => {
                return self.broken_download(now_ms, Some(etag), "a piece out of order");
            }
        }
        self.contact(now_ms);
        match self.download.take() {
            Some(download) if download.bytes.len() >= download.total => {
                let version = etag_version(&download.etag);
                let received = (download.pieces, now_ms.saturating_sub(download.started_ms));
                self.start_apply(now_ms, download.bytes, version, received)
            }
            download => {
                if let Some(due) = download
                    .as_ref()
                    .and_then(|d| d.next_piece_due(self.download_spread_ms))
                    .filter(|due| *due > now_ms)
                {
                    self.state = State::Idle { not_before_ms: due };
                }
                self.download = download;
                FetchOutcome::Downloading
            }
        }
    }

    /// A download that cannot go on: dropped, and the fetch failed.
    fn broken_download(&mut self, now_ms: u64, etag: Option<&[u8]>, why: &str) -> FetchOutcome {
        self.download = None;
        self.fail(now_ms);
        let version = etag
            .and_then(etag_version)
            .map_or(String::new(), |v| format!(" of version {v}"));
        FetchOutcome::Failed {
            source: Source::Sidecar,
            why: format!("{why}{version}; starting over"),
        }
    }

    /// A successful contact mid-download: the next request is due at once.
    fn contact(&mut self, now_ms: u64) {
        self.failures = 0;
        self.last_contact_ms = Some(now_ms);
        self.state = State::Idle {
            not_before_ms: now_ms,
        };
    }

    /// A sidecar snapshot refused. The sidecar keeps serving it: ask past its
    /// version when known, and back off (asking again at once could only
    /// loop). Not a successful contact either: what we serve is getting
    /// older.
    fn refuse(&mut self, now_ms: u64, version: Option<u64>, error: PathError) -> FetchOutcome {
        self.remember_refused(version);
        self.fail(now_ms);
        FetchOutcome::Refused {
            source: Source::Sidecar,
            error,
            too_large: false,
        }
    }

    /// Checks about `budget` more bytes of the binary snapshot being
    /// applied: [`FetchOutcome::Applying`] while there is more, then
    /// `Applied` (install it, as for any answer) or `Refused`. `Stale` when
    /// nothing is being applied.
    pub fn apply_step(&mut self, now_ms: u64, budget: usize) -> FetchOutcome {
        let now_ms = self.clock.now(now_ms);
        let Some(applying) = self.applying.as_mut() else {
            return FetchOutcome::Stale;
        };
        // Known before the last step (afterwards the apply is over).
        let fingerprint = applying.apply.verified_fingerprint();
        let stepped = applying.apply.step(budget);
        if let Ok(None) = stepped {
            return FetchOutcome::Applying;
        }
        let applying = self.applying.take();
        self.report = applying.as_ref().map(|a| ApplyReport {
            bytes: a.apply.len(),
            pieces: a.pieces,
            download_ms: a.download_ms,
            check_ms: now_ms.saturating_sub(a.started_ms),
            fingerprint,
            records_trusted: a.apply.records_trusted(),
        });
        let pieces = applying.as_ref().is_some_and(|a| a.from_pieces);
        let mut etag = applying.and_then(|a| a.etag_version);
        if pieces && stepped.as_ref().is_err_and(|e| e.path == "binary:checksum") {
            etag = None;
        }
        let checked = stepped.and_then(|snapshot| {
            let snapshot = snapshot.ok_or_else(|| PathError::new("$", "no snapshot"))?;
            match self.version {
                Some(current) if snapshot.version() <= current => Err(PathError::new(
                    "$.version",
                    format!(
                        "version {} is not greater than the current version {current}",
                        snapshot.version()
                    ),
                )),
                _ => Ok(snapshot),
            }
        });
        match self.fits_region(checked) {
            Ok(snapshot) => {
                self.succeed(now_ms);
                FetchOutcome::Applied {
                    snapshot: Box::new(snapshot),
                    source: Source::Sidecar,
                }
            }
            Err(error) => self.refuse(now_ms, etag, error),
        }
    }

    /// 413: the sidecar did not send a snapshot larger than this VM takes.
    /// With its version known (ETag), the next request asks past it: the
    /// sidecar then holds it until a newer version comes, so there is no
    /// loop to back off from. Not a successful contact: what the VM serves
    /// is getting older.
    fn on_too_large(&mut self, now_ms: u64, response: FetchResponse<'_>) -> FetchOutcome {
        let version = response.etag.and_then(etag_version);
        let detail = match response.body {
            Body::Read(body) => sidecar_detail(body),
            Body::Owned(body) => sidecar_detail(&body),
            Body::TooLarge(_) | Body::Unreadable => None,
        }
        .unwrap_or_else(|| "no reason given".to_string());
        let named = version.map_or("a snapshot".to_string(), |v| {
            format!("snapshot version {v}")
        });
        match version {
            Some(v) if self.after().is_none_or(|after| v > after) => {
                self.remember_refused(Some(v));
                self.failures = self.failures.saturating_add(1);
                let earliest = self
                    .last_start_ms
                    .map_or(now_ms, |start| start + self.config.min_fetch_interval_ms);
                self.state = State::Idle {
                    not_before_ms: earliest.max(now_ms),
                };
            }
            _ => self.fail(now_ms),
        }
        FetchOutcome::Refused {
            source: Source::Sidecar,
            error: PathError::new(
                "$",
                format!(
                    "the sidecar did not send {named}, larger than this VM takes \
                     (sidecar.max_snapshot_bytes = {}): {detail}; waiting for a newer version",
                    self.config.max_snapshot_bytes
                ),
            ),
            too_large: true,
        }
    }

    /// The persisted copy's answer. It is taken only if newer than what the
    /// VM holds from the sidecar (the inline fallback does not count).
    fn on_persisted_response(&mut self, now_ms: u64, response: FetchResponse<'_>) -> FetchOutcome {
        let source = Source::Persisted;
        match response.status {
            Some(200) => {
                let body = match response.body {
                    Body::Read(body) => Cow::Borrowed(body),
                    Body::Owned(body) => Cow::Owned(body),
                    Body::TooLarge(size) => {
                        self.persisted = PersistedState::Done;
                        return FetchOutcome::Refused {
                            source,
                            error: self.too_large(size),
                            too_large: true,
                        };
                    }
                    Body::Unreadable => {
                        self.persisted_fail(now_ms);
                        return FetchOutcome::Failed {
                            source,
                            why: "the host did not hand over the response body".to_string(),
                        };
                    }
                };
                self.persisted = PersistedState::Done;
                match self.fits_region(binary::parse_any(&body)) {
                    Err(error) => FetchOutcome::Refused {
                        source,
                        error,
                        too_large: false,
                    },
                    // The sidecar answered meanwhile.
                    Ok(snapshot) if self.version.is_some_and(|held| snapshot.version() <= held) => {
                        FetchOutcome::Unchanged
                    }
                    Ok(snapshot) => FetchOutcome::Applied {
                        snapshot: Box::new(snapshot),
                        source,
                    },
                }
            }
            Some(status) => {
                self.persisted_fail(now_ms);
                FetchOutcome::Failed {
                    source,
                    why: format!("the persisted copy answered HTTP {status}"),
                }
            }
            None => {
                self.persisted_fail(now_ms);
                FetchOutcome::Failed {
                    source,
                    why: "no response".to_string(),
                }
            }
        }
    }

    fn too_large(&self, size: usize) -> PathError {
        PathError::new(
            "$",
            format!(
                "the snapshot is {size} bytes, more than sidecar.max_snapshot_bytes = {}; not read",
                self.config.max_snapshot_bytes
            ),
        )
    }

    fn persisted_fail(&mut self, now_ms: u64) {
        self.persisted_failures = self.persisted_failures.saturating_add(1);
        let delay = self.backoff_ms(self.persisted_failures);
        self.persisted = PersistedState::Wanted {
            not_before_ms: now_ms.saturating_add(delay),
        };
    }

    /// The snapshot of an [`FetchOutcome::Applied`] is in force: from now on
    /// the subscription asks for newer than `version`.
    pub fn installed(&mut self, version: u64, now_ms: u64) {
        self.clock.now(now_ms);
        self.version = Some(self.version.map_or(version, |held| held.max(version)));
    }

    fn remember_refused(&mut self, version: Option<u64>) {
        self.refused = self.refused.max(version);
    }

    fn succeed(&mut self, now_ms: u64) {
        self.failures = 0;
        self.last_contact_ms = Some(now_ms);
        let earliest = self
            .last_start_ms
            .map_or(now_ms, |start| start + self.config.min_fetch_interval_ms);
        self.state = State::Idle {
            not_before_ms: earliest.max(now_ms),
        };
    }

    fn fail(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff_ms(self.failures);
        self.state = State::Idle {
            not_before_ms: now_ms.saturating_add(delay),
        };
    }

    /// Exponential backoff with jitter in [d/2, d], d = min(max, min·2^(n-1)).
    fn backoff_ms(&mut self, failures: u32) -> u64 {
        let exponent = failures.saturating_sub(1).min(32);
        let full = self
            .config
            .retry_min_ms
            .saturating_mul(1u64 << exponent)
            .min(self.config.retry_max_ms);
        let half = full / 2;
        half + self.next_random() % (full - half + 1)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough to spread workers; not security-relevant.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// What the host said of a call that got no response, for the log: Envoy
/// reports `BrokenConnection` ("reset") both for a connection that failed or
/// was reset and for a body larger than its `http.async_response_buffer_limit`
/// (it does not tell them apart), so the log names both.
pub fn host_failure(code: u32, message: &str) -> String {
    let named = if code == HOST_BROKEN_CONNECTION {
        "BrokenConnection"
    } else {
        "status"
    };
    format!(
        "Envoy reports {named} ({code}) {message:?}: the connection to the sidecar failed or \
         was reset, or the body was larger than Envoy's http.async_response_buffer_limit \
         (runtime key, 32 MiB unless raised; envoy/README.md, \"Snapshot size\")"
    )
}

/// The `detail` of the sidecar's JSON error body, if it has one.
fn sidecar_detail(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        detail: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|e| e.detail.chars().take(512).collect())
}

/// The version an ETag names: `"42"`, `W/"42"` or `"42-bin"` (the binary
/// form's; what `cellmap serve` sends); anything else names none.
fn etag_version(etag: &[u8]) -> Option<u64> {
    let etag = std::str::from_utf8(etag).ok()?.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    let digits = etag.strip_prefix('"')?.strip_suffix('"')?;
    let digits = digits.strip_suffix("-bin").unwrap_or(digits);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The top-level `version` of a refused body, if the body is a JSON object
/// that has exactly one. Skims the document without building it (a refused
/// body may be tens of megabytes).
fn claimed_version(body: &[u8]) -> Option<u64> {
    // A binary body names its version at a fixed place in its header.
    if binary::is_binary(body) {
        let bytes: [u8; 8] = body.get(16..24)?.try_into().ok()?;
        return Some(u64::from_le_bytes(bytes));
    }
    struct Claimed;

    impl<'de> Visitor<'de> for Claimed {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a snapshot object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
            let mut version = None;
            let mut twice = false;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == "version" {
                    twice |= version.is_some();
                    version = Some(map.next_value::<u64>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(if twice { None } else { version })
        }
    }

    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(Claimed).ok().flatten()
}
