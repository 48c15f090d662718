//! The snapshot subscription of the native build: the filter's own
//! `Subscription` (long-poll, ETag, backoff, validation), driven by one
//! background thread per filter config with a plain blocking HTTP client.
//!
//! Why a thread and not Envoy's http callouts: the callouts and the
//! scheduler are config-level callbacks whose 1.40 signatures and threading
//! rules would each need their own test through real Envoy; a thread that
//! only talks to the loopback sidecar and swaps one `Arc` is simple to get
//! right and keeps every worker on the same snapshot. The cost: the sidecar
//! is reached at an address (`$CELL_ROUTER_SIDECAR_ADDRESS` in Envoy's
//! environment, default `127.0.0.1:18000`: the plugin config stays the Wasm
//! filter's, whose `sidecar.cluster` names an Envoy cluster) rather than
//! through the cluster, and the persisted copy is not fetched yet.

use crate::abi;
use crate::envoy;
use cell_router_filter::decide::{Installed, SnapshotSource};
use cell_router_filter::subscription::{
    Body, BodyPlan, FetchOutcome, FetchResponse, SidecarConfig, Source, Subscription,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the thread shares with the filter config.
pub struct Shared {
    pub installed: RwLock<Option<Arc<Installed>>>,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn installed(&self) -> Option<Arc<Installed>> {
        match self.installed.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn install(&self, installed: Installed) {
        let installed = Some(Arc::new(installed));
        match self.installed.write() {
            Ok(mut guard) => *guard = installed,
            Err(poisoned) => *poisoned.into_inner() = installed,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Starts the subscription thread; it ends soon after `shared.stop` is set
/// (at the latest when its current long-poll returns).
pub fn start(shared: Arc<Shared>, config: SidecarConfig, address: String) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cell-router-snapshot".into())
        .spawn(move || {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&shared, config, &address)
            }));
            if caught.is_err() {
                envoy::log(
                    abi::LOG_LEVEL_ERROR,
                    "cell-router: the snapshot subscription thread panicked; the snapshot in force stays",
                );
            }
        })
        .map(|_| ())
}

fn run(shared: &Shared, config: SidecarConfig, address: &str) {
    let seed = now_ms();
    let mut subscription = Subscription::new(config, now_ms(), seed);
    let mut token: u32 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = now_ms();
        let Some(request) = subscription.poll(now) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if request.source == Source::Persisted {
            // Not fetched by the native build yet.
            subscription.dispatch_failed(Source::Persisted, now);
            continue;
        }
        token = token.wrapping_add(1);
        subscription.dispatched(Source::Sidecar, token, now);
        let path = request.header(":path").unwrap_or("/snapshot").to_string();
        let authority = request.header(":authority").unwrap_or("").to_string();
        // Forwarded as the subscription wrote them: the conditional and
        // the media types (the binary form first when `sidecar.binary`).
        let forward: Vec<(&str, &str)> = ["accept", "if-none-match"]
            .into_iter()
            .filter_map(|name| Some((name, request.header(name)?)))
            .collect();
        let max = subscription.config().max_snapshot_bytes;
        let fetched = fetch(
            address,
            max,
            &path,
            &authority,
            &forward,
            request.timeout,
            |status, size| subscription.body_plan(status, size),
        );
        let body;
        let response = match &fetched {
            Ok((status, etag, plan_body)) => {
                body = plan_body;
                FetchResponse {
                    status: Some(*status),
                    etag: etag.as_deref().map(str::as_bytes),
                    body: match body {
                        FetchedBody::Read(bytes) => Body::Read(bytes),
                        FetchedBody::TooLarge(size) => Body::TooLarge(*size),
                        FetchedBody::Skipped => Body::Read(&[]),
                    },
                }
            }
            Err(_) => FetchResponse {
                status: None,
                etag: None,
                body: Body::Unreadable,
            },
        };
        match subscription.on_response(token, now_ms(), response) {
            FetchOutcome::Applied { snapshot, .. } => {
                let version = snapshot.version();
                shared.install(Installed::with_source(*snapshot, SnapshotSource::Sidecar));
                subscription.installed(version, now_ms());
                envoy::log(
                    abi::LOG_LEVEL_INFO,
                    &format!("cell-router native: snapshot v{version} from the sidecar installed"),
                );
            }
            FetchOutcome::Refused { error, .. } => envoy::log(
                abi::LOG_LEVEL_ERROR,
                &format!("cell-router native: snapshot refused: {error}"),
            ),
            FetchOutcome::Failed { why, .. } => envoy::log(
                abi::LOG_LEVEL_INFO,
                &format!("cell-router native: snapshot fetch failed: {why}"),
            ),
            _ => {}
        }
    }
}

enum FetchedBody {
    Read(Vec<u8>),
    TooLarge(usize),
    Skipped,
}

/// One GET to the sidecar: status, ETag and the body as the plan says.
fn fetch(
    address: &str,
    max: usize,
    path: &str,
    authority: &str,
    forward: &[(&str, &str)],
    timeout: Duration,
    plan: impl FnOnce(Option<u16>, usize) -> BodyPlan,
) -> Result<(u16, Option<String>, FetchedBody), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(format!("http://{address}{path}"));
    if !authority.is_empty() {
        request = request.header("host", authority);
    }
    for (name, value) in forward {
        request = request.header(*name, *value);
    }
    let mut response = request.call()?;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let body = match plan(Some(status), length) {
        BodyPlan::Skip => FetchedBody::Skipped,
        BodyPlan::TooLarge => FetchedBody::TooLarge(length),
        BodyPlan::Read => {
            // Without a content-length the read itself is bounded.
            let limit = u64::try_from(max.saturating_add(1)).unwrap_or(u64::MAX);
            let bytes = response
                .body_mut()
                .with_config()
                .limit(limit)
                .read_to_vec()?;
            if bytes.len() > max {
                FetchedBody::TooLarge(bytes.len())
            } else {
                FetchedBody::Read(bytes)
            }
        }
    };
    Ok((status, etag, body))
}
