//! Waiting for a gateway to route by a snapshot version, in a way that holds
//! on a busy machine and, when it does not, says what it saw.
//!
//! A Wasm VM never goes back to an older snapshot (the filter only takes
//! greater versions), so "every worker has answered with the version once" is
//! a stable condition: no streak of good answers is needed, and a transient
//! error (a slow answer, a refused connection) costs one probe, not the wait.
//! Each probe goes on a fresh connection; which worker accepted it is read
//! from Envoy's per-worker listener counters around it.

use super::{Envoy, Reply, client};
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One probe's answer: the status, the snapshot version it was routed with
/// (if routed), and the filter's `error` (if refused).
#[derive(Debug, Clone, Default)]
pub struct VersionProbe {
    pub status: u16,
    pub version: Option<u64>,
    pub error: Option<String>,
}

/// Reads a probe's answer from a cell's echo (`{"snapshot": "7", ...}`) or
/// a rejection (`{"error": ...}`); the `x-routed-snapshot` header of the
/// benchmark's backends also counts.
pub fn probe_body_version(reply: Result<Reply>) -> Result<VersionProbe> {
    let reply = reply?;
    let body: Option<serde_json::Value> = serde_json::from_str(&reply.body).ok();
    let field = |name: &str| {
        body.as_ref().and_then(|b| match &b[name] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let version = field("snapshot")
        .or_else(|| reply.header("x-routed-snapshot").map(str::to_string))
        .and_then(|v| v.parse().ok());
    Ok(VersionProbe {
        status: reply.status,
        version,
        error: field("error"),
    })
}

/// When every worker was first seen on the version.
#[derive(Debug, Clone)]
pub struct Reached {
    /// Until the last worker was seen on it (from the call).
    pub took: Duration,
    /// Per worker (by index; `None` without per-worker counters).
    pub workers: Vec<Option<Duration>>,
    /// Per worker, each version it answered with and when first.
    pub seen: Vec<Vec<(Duration, u64)>>,
    pub probes: u32,
}

#[derive(Debug, Clone, Default)]
struct Worker {
    probes: u32,
    last_version: Option<u64>,
    reached_after: Option<Duration>,
    versions: Vec<(Duration, u64)>,
}

/// Probes until every worker of `envoy` has answered a request routed by
/// snapshot `want` or later; when each did. `probe` sends one request
/// on the given fresh agent. Without per-worker counters (another listener
/// address), 20 good answers in a row stand in, reset only by an answer
/// with an older version.
pub fn await_version(
    envoy: &Envoy,
    want: u64,
    timeout: Duration,
    mut probe: impl FnMut(&ureq::Agent) -> Result<VersionProbe>,
) -> Result<Reached> {
    let started = Instant::now();
    let mut workers = vec![Worker::default(); envoy.concurrency.max(1) as usize];
    let mut answers: BTreeMap<String, u32> = BTreeMap::new();
    let mut last_error: Option<String> = None;
    let (mut probes, mut unattributed, mut streak) = (0u32, 0u32, 0u32);
    let mut counters_seen = false;
    let mut counters_error: Option<String> = None;
    while started.elapsed() < timeout {
        let before = envoy.worker_connections();
        let result = probe(&client());
        let after = envoy.worker_connections();
        probes += 1;
        let worker = match (&before, &after) {
            (Ok(b), Ok(a)) => {
                counters_seen = true;
                let grown: Vec<usize> = (0..b.len().min(a.len()))
                    .filter(|&i| a.get(i) != b.get(i))
                    .collect();
                match grown.as_slice() {
                    [only]
                        if a.get(*only)
                            .zip(b.get(*only))
                            .is_some_and(|(a, b)| a - b == 1) =>
                    {
                        Some(*only)
                    }
                    _ => None,
                }
            }
            (Err(err), _) | (_, Err(err)) => {
                counters_error = Some(format!("{err:#}"));
                None
            }
        };
        match result {
            Ok(answer) => {
                let label = match &answer.error {
                    Some(error) => format!("{} {error}", answer.status),
                    None => answer.status.to_string(),
                };
                *answers.entry(label).or_default() += 1;
                let good = answer.status == 200 && answer.version.is_some_and(|v| v >= want);
                match worker.and_then(|w| workers.get_mut(w)) {
                    Some(seen) => {
                        seen.probes += 1;
                        if let Some(v) = answer.version
                            && seen.last_version != Some(v)
                        {
                            seen.versions.push((started.elapsed(), v));
                        }
                        seen.last_version = answer.version.or(seen.last_version);
                        if good && seen.reached_after.is_none() {
                            seen.reached_after = Some(started.elapsed());
                        }
                    }
                    None => unattributed += 1,
                }
                if good {
                    streak += 1;
                } else if answer.version.is_some_and(|v| v < want) {
                    streak = 0;
                }
            }
            Err(err) => {
                *answers.entry("no answer".into()).or_default() += 1;
                last_error = Some(format!("{err:#}"));
                if worker.is_none() {
                    unattributed += 1;
                }
            }
        }
        let done = if counters_seen {
            workers.iter().all(|w| w.reached_after.is_some())
        } else {
            streak >= 20
        };
        if done {
            return Ok(Reached {
                took: started.elapsed(),
                workers: workers.iter().map(|w| w.reached_after).collect(),
                seen: workers.iter().map(|w| w.versions.clone()).collect(),
                probes,
            });
        }
        if !envoy.process.is_running_shared() {
            bail!(
                "Envoy :{} exited while waiting for snapshot {want}\n{}",
                envoy.port,
                envoy.process.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen = String::new();
    for (i, w) in workers.iter().enumerate() {
        let history: Vec<String> = w
            .versions
            .iter()
            .map(|(at, v)| format!("v{v} at {at:.2?}"))
            .collect();
        let _ = write!(
            seen,
            "\n  worker {i}: {} probe(s), last version {}, {} (seen: {})",
            w.probes,
            w.last_version.map_or("none".into(), |v| v.to_string()),
            w.reached_after
                .map_or("never on it".into(), |d| format!("on it after {d:?}")),
            history.join(", ")
        );
    }
    let answers: Vec<String> = answers.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    bail!(
        "Envoy :{} did not route by snapshot {want} on every worker within {timeout:?} \
         ({probes} probes; {unattributed} not attributable to one worker{}):{seen}\n  answers: {}\n  last error: {}\n{}",
        envoy.port,
        counters_error
            .map(|e| format!("; per-worker counters: {e}"))
            .unwrap_or_default(),
        answers.join(", "),
        last_error.as_deref().unwrap_or("none"),
        envoy.process.log_tail(30)
    )
}
