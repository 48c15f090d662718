//! `cellmap serve`: the sidecar next to each gateway.
//!
//! It holds the last good snapshot and serves it to the local Envoy (the
//! protocol is in `http`). Sources: a file or an upstream URL (`source`);
//! every candidate is validated and must carry a greater version, and a
//! refused one is logged while the last good one stays served (`store`).
//! With `--persist`, every snapshot taken is also written to a file that the
//! next start serves first, so a restart while the control plane is down
//! keeps the last good mapping.
//!
//! One current-thread tokio runtime serves HTTP/1.1 with hyper; long-polls
//! are futures parked on a `watch` channel. Sources run on their own threads
//! (blocking file reads, parsing, the upstream client) so a large snapshot
//! never stalls an answer.

mod http;
mod jwks;
mod source;
mod store;

use http::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use source::{FileSource, Wake};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use store::{Save, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Run the sidecar that serves snapshots to the local gateway
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Run the sidecar that serves snapshots to the local gateway.\n\n\
It serves the last good snapshot at GET /snapshot (ETag, If-None-Match, ?after=<version> \
and &wait=<s> long-polls; JSON, or the binary form with Accept: application/vnd.cellmap.snapshot; \
the source may be either form; 413 with the version's ETag instead of a body larger than \
--max-body-bytes or the client's x-cellmap-max-body-bytes), GET /healthz, GET /jwks with --jwks (ETag; the last good file \
content kept), and GET /jwks?issuer=<issuer> for each --jwks-url ISSUER=URL it follows \
(ETag; If-None-Match with &wait=<s> long-polls; the last good set kept). Every new snapshot \
from the source is validated and must carry a greater version; a bad one is refused and \
logged while the last good one stays served; so is one whose binary form is larger than \
--max-body-bytes (no gateway could take it).\n\n\
The file source is looked at every --watch-interval-ms: a change of size, mtime, ctime or \
inode makes it read, and it is taken only if its content differs from the last read, so \
a copy that keeps size and mtime (cp -p, rsync -t) is seen too. A file that changes while \
being read is read again later; still, write it atomically (write, then rename).\n\n\
With --persist FILE, every snapshot taken from the source is also written to FILE \
(a temporary file in the same directory, fsync, rename: FILE is always a whole, valid \
snapshot). At start, FILE is served first if it validates, so a restart while the control \
plane is down or its snapshot is bad keeps serving the last good mapping; the source then \
replaces it only with a greater version, as without the restart. A source that is \
invalid never overwrites FILE. Delete FILE to start over with lower versions.\n\n\
Signals: SIGTERM and SIGINT answer waiting long-polls at once (304), let open requests \
finish (at most 2 s) and exit 0. SIGHUP does not stop the sidecar: it looks at the \
source at once (the file is read even if it looks unchanged; the upstream is polled)."
)]
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
    /// Keep the last good snapshot in this file (written atomically on every
    /// change, served first at start); each --jwks-url set is kept next to
    /// it (`<file>.jwks-<hash of the issuer>.json`) the same way
    #[arg(long, value_name = "PATH")]
    pub persist: Option<PathBuf>,
    /// How often to check the file for changes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub watch_interval_ms: u64,
    /// How often to poll the upstream URL, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// A JWKS file to serve at /jwks.
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// Follow an identity provider's JWKS: `ISSUER=URL`, repeatable. Served
    /// at /jwks?issuer=ISSUER (ETag; If-None-Match with &wait=<s> long-polls);
    /// the last good set is kept through failures and bad sets.
    #[arg(long = "jwks-url", value_name = "ISSUER=URL")]
    pub jwks_url: Vec<String>,
    /// Longest time between two polls of a --jwks-url, in seconds (sooner
    /// when its Cache-Control max-age says so, at most once a second).
    #[arg(long, default_value_t = 300)]
    pub jwks_poll_s: u64,
    /// Longest a long-poll (`wait`) may hold a request, in seconds.
    #[arg(long, default_value_t = 60)]
    pub max_wait_s: u64,
    /// Largest snapshot accepted from the source, in MiB.
    #[arg(long, default_value_t = 512)]
    pub max_snapshot_mib: u64,
    /// Largest body the gateways take, in bytes: their Envoy's
    /// `http.async_response_buffer_limit` (32 MiB unless raised). A snapshot
    /// whose binary form is larger is refused (the last good one stays
    /// served; /healthz says why), and a request whose
    /// `x-cellmap-max-body-bytes` (or this limit) is below the form it asks
    /// for is answered 413 with the version's ETag instead of the body.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: u64,
    /// How the binary form served to gateways keys tenants: `hashes` (10
    /// bytes a tenant, no ids: gateways only route; a snapshot whose tenants
    /// collide in 64 bits, or with more than 16,384 cells or moves, is
    /// served keyed by id, with a warning) or `ids` (4 bytes + the id).
    #[arg(long, value_enum, default_value_t = BinaryKeys::Hashes)]
    pub binary_keys: BinaryKeys,
    /// Most requests handled at once (long-polls included); more get 503.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Most open connections (idle keep-alive ones included); more are
    /// closed as soon as they are accepted.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
}

/// `--binary-keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BinaryKeys {
    Hashes,
    Ids,
}

impl BinaryKeys {
    fn keys(self) -> cell_router_mapping::table::Keys {
        match self {
            BinaryKeys::Hashes => cell_router_mapping::table::Keys::Hashes,
            BinaryKeys::Ids => cell_router_mapping::table::Keys::Ids,
        }
    }
}

/// `--max-body-bytes` default: Envoy's default `http.async_response_buffer_limit`.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

/// How long shutdown waits for open requests before exiting anyway.
const DRAIN: Duration = Duration::from_secs(2);
/// How long connections accepted just before shutdown get to send their
/// request before idle connections are closed.
const GRACE: Duration = Duration::from_millis(100);
/// Pending connections the kernel queues before the sidecar accepts them
/// (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;
/// A connection that sends no complete request head for this long is closed
/// (idle keep-alive connections included: Envoy opens a new one).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the sidecar until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(serve(args));
    // A /jwks read still running must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // Before anything else: a SIGHUP or SIGTERM from now on is handled, never
    // the default action.
    let mut signals = Signals::install()?;
    let max_bytes = args.max_snapshot_mib.saturating_mul(1024 * 1024);
    let store = Arc::new(Store::new(
        args.persist.clone(),
        args.max_body_bytes,
        args.binary_keys.keys(),
    ));
    if let Some(path) = &args.persist {
        restore(&store, path, max_bytes);
    }

    let listener =
        listen(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;

    let (wake, wake_rx) = std::sync::mpsc::channel::<Wake>();
    let source = start_source(&args, &store, wake_rx, max_bytes)?;
    log(
        "info",
        &format!("listening on http://{} (source: {source})", args.listen),
    );

    let mut jwks_followed = std::collections::HashMap::new();
    for arg in &args.jwks_url {
        let (issuer, url) = jwks::parse_follow(arg)?;
        let poll = Duration::from_secs(args.jwks_poll_s.max(1));
        let followed = jwks::follow(issuer.clone(), url, poll, args.persist.as_deref());
        jwks_followed.insert(issuer, followed);
    }
    let (stop, shutdown) = watch::channel(false);
    let context = Arc::new(Context {
        store: Arc::clone(&store),
        jwks: args.jwks.clone(),
        jwks_last_good: jwks::LastGood::default(),
        jwks_followed,
        max_wait_s: args.max_wait_s,
        answered_too_large: AtomicU64::new(0),
        in_flight: Arc::new(Semaphore::new(
            args.max_in_flight.min(Semaphore::MAX_PERMITS),
        )),
        shutdown,
    });
    let server = Server {
        context,
        connections: Arc::new(Semaphore::new(
            args.max_connections.min(Semaphore::MAX_PERMITS),
        )),
        graceful: GracefulShutdown::new(),
        refused_connections: AtomicU64::new(0),
    };

    let reason = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => server.connection(stream),
                Err(err) => {
                    // Out of file descriptors and the like: do not spin.
                    log("warn", &format!("accept failed: {err}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            signal = signals.next() => match signal {
                Signal::Stop(name) => break name,
                Signal::Hangup => {
                    log("info", &format!("SIGHUP: looking at the {source} now"));
                    let _ = wake.send(Wake::Check);
                }
            },
        }
    };

    log(
        "info",
        &format!("{reason}: answering waiting long-polls, then stopping"),
    );
    stop.send_replace(true);
    // Connections the kernel completed before the listener closes are
    // served too (their long-polls answer at once), not reset.
    match listener.into_std() {
        Ok(listener) => {
            while let Ok((stream, _)) = listener.accept() {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream));
                if let Ok(stream) = stream {
                    server.connection(stream);
                }
            }
        }
        Err(err) => log("warn", &format!("closing the listener: {err}")),
    }
    let _ = wake.send(Wake::Stop);
    // hyper's graceful shutdown closes a connection that has not read its
    // request yet without an answer. Let the connections just accepted read
    // theirs first: they are answered at once (304 for a long-poll) with
    // `Connection: close`.
    tokio::time::sleep(GRACE).await;
    if tokio::time::timeout(DRAIN, server.graceful.shutdown())
        .await
        .is_err()
    {
        log(
            "warn",
            &format!("requests still open after {DRAIN:?}; closing them"),
        );
    }
    log("info", "stopped");
    Ok(())
}

/// The listening socket. The accept queue is longer than the default 128
/// (`TcpListener::bind`): after a restart every worker of the gateway (and
/// every gateway sharing an upstream sidecar) reconnects at once, and a full
/// queue drops connection attempts, which clients retry only after a second.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind does: a restart may bind the port at once, even
    // with connections of the previous process in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves the `--persist` copy if it validates (before the source is read),
/// and makes sure its directory exists for the next write. Problems with the
/// copy are logged, never fatal: serving matters more than persisting.
fn restore(store: &Store, path: &Path, max_bytes: u64) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(err) = std::fs::create_dir_all(dir)
    {
        log(
            "error",
            &format!("cannot create {} for --persist: {err}", dir.display()),
        );
    }
    match source::read_limited(path, max_bytes) {
        Ok(Some(bytes)) => store.offer_and_log(
            bytes,
            &format!("persisted copy {}", path.display()),
            Save::No,
        ),
        Ok(None) => log(
            "warn",
            &format!(
                "persisted copy {} is over the limit of {max_bytes} bytes; not used",
                path.display()
            ),
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => log(
            "info",
            &format!(
                "no persisted copy at {} yet; it is written when a snapshot is taken",
                path.display()
            ),
        ),
        Err(err) => log(
            "warn",
            &format!("cannot read persisted copy {}: {err}", path.display()),
        ),
    }
}

/// Reads the file once now (so a restarted sidecar serves it from its first
/// answer), then starts the source's thread. Returns its name for the logs.
fn start_source(
    args: &ServeArgs,
    store: &Arc<Store>,
    wake: std::sync::mpsc::Receiver<Wake>,
    max_bytes: u64,
) -> Result<String, String> {
    if let Some(path) = args.file.clone() {
        let name = format!("file {}", path.display());
        let interval = Duration::from_millis(args.watch_interval_ms.max(10));
        let mut file = FileSource::new(path, max_bytes);
        file.look(store, true);
        let store = Arc::clone(store);
        std::thread::Builder::new()
            .name("watch-file".into())
            .spawn(move || file.run(&store, &wake, interval))
            .map_err(|e| format!("cannot start the file watcher: {e}"))?;
        return Ok(name);
    }
    if let Some(url) = args.upstream.clone() {
        let name = format!("upstream {url}");
        let interval = Duration::from_millis(args.poll_interval_ms.max(10));
        let store = Arc::clone(store);
        std::thread::Builder::new()
            .name("poll-upstream".into())
            .spawn(move || source::poll_upstream(&store, &url, &wake, interval, max_bytes))
            .map_err(|e| format!("cannot start the upstream poller: {e}"))?;
        return Ok(name);
    }
    Ok("nothing".to_string())
}

struct Server {
    context: Arc<Context>,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    graceful: GracefulShutdown,
    refused_connections: AtomicU64,
}

impl Server {
    /// Serves one accepted connection on its own task, or closes it at once
    /// when `--max-connections` are open.
    fn connection(&self, stream: TcpStream) {
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            let refused = self
                .refused_connections
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            // The 1st, 2nd, 4th, 8th…: visible, but no flood under attack.
            if refused.is_power_of_two() {
                log(
                    "warn",
                    &format!(
                        "{refused} connection(s) closed at once so far: --max-connections are open"
                    ),
                );
            }
            return;
        };
        let _ = stream.set_nodelay(true);
        let context = Arc::clone(&self.context);
        let service =
            hyper::service::service_fn(move |request| http::handle(Arc::clone(&context), request));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = self.graceful.watch(connection);
        tokio::spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            // An error here is a client that went away or spoke bad HTTP;
            // hyper already answered what it could.
            let _ = connection.await;
        });
    }
}

enum Signal {
    Stop(&'static str),
    Hangup,
}

#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| format!("cannot install the signal handler: {e}"))
        };
        Ok(Signals {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
            hangup: install(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
            _ = self.hangup.recv() => Signal::Hangup,
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Result<Self, String> {
        Ok(Signals)
    }

    async fn next(&mut self) -> Signal {
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Stop("Ctrl-C"),
            Err(_) => std::future::pending().await,
        }
    }
}

fn log(level: &str, message: &str) {
    let mut out = std::io::stderr().lock();
    let _ = std::io::Write::write_fmt(
        &mut out,
        format_args!(
            "{} {level} cellmap-serve: {message}\n",
            crate::clock::utc_now_rfc3339()
        ),
    );
}
