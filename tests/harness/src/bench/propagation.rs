//! From a snapshot change at the source to every Wasm VM routing by it, and
//! what a 1,000,000-override snapshot costs in Envoy: measured on a gateway
//! of its own (cell-router.yaml) with a sidecar of its own, after the load
//! runs.
//!
//! Timeline of one change: the new file is renamed into place (t0); the
//! sidecar notices it (it polls the file) and answers a long-poll the
//! benchmark holds open (t1: "sidecar serving"); every VM's long-poll gets
//! it, parses and swaps it in, counting `cell_router.snapshot.applied` (t2:
//! the counter has risen by the number of VMs). Then requests on fresh
//! connections confirm that the gateway routes by it.

use super::cases::Gateway;
use super::stack::{self, Files};
use crate::e2e::{self, Backends, Envoy, Sidecar};
use anyhow::{Context, Result, bail};
use cell_router_mapping::SnapshotDoc;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

const APPLIED: &str = "cell_router.snapshot.applied";

#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub label: String,
    pub version: u64,
    pub overrides: usize,
    pub snapshot_bytes: usize,
    pub file_to_sidecar_ms: f64,
    pub sidecar_to_every_vm_ms: f64,
    pub file_to_every_vm_ms: f64,
    pub rss_before: u64,
    pub rss_after: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PropagationReport {
    /// VMs that apply each snapshot (workers + main thread).
    pub vms: i64,
    pub concurrency: u32,
    pub changes: Vec<Change>,
}

fn applied(envoy: &Envoy) -> i64 {
    envoy
        .stats(APPLIED)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.ends_with(APPLIED))
                .map(|(_, v)| *v)
                .sum()
        })
        .unwrap_or(-1)
}

/// Holds a long-poll on the sidecar for a version after `after`; the instant
/// its answer's status line arrives.
fn long_poll(port: u16, after: u64) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let url = format!("http://127.0.0.1:{port}/snapshot?after={after}&wait=30");
        let response = agent.get(&url).call().ok()?;
        let at = Instant::now();
        (response.status().as_u16() == 200).then_some(at)
    })
}

/// Publishes `doc` and times it; `base` is the applied counter before.
fn change(
    envoy: &Envoy,
    sidecar: &Sidecar,
    doc: &SnapshotDoc,
    label: &str,
    vms: i64,
    probe_token: &str,
) -> Result<Change> {
    let bytes = doc.to_json().into_bytes();
    let base = applied(envoy);
    let pid = envoy.process.pid().unwrap_or(0);
    let rss_before = stack::rss_bytes(pid).unwrap_or(0);
    let poll = long_poll(sidecar.port, doc.version - 1);
    // Let the long-poll reach the sidecar before the file changes.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    e2e::publish(&sidecar.source, &bytes)?;
    // Polled every few milliseconds (the admin endpoint answers in about one).
    let deadline = t0 + Duration::from_secs(120);
    let mut every_vm = false;
    while Instant::now() < deadline {
        if applied(envoy) >= base + vms {
            every_vm = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    let t2 = Instant::now();
    if !every_vm {
        bail!(
            "{label}: the VMs did not all apply version {} within 120 s (applied {} of {}; the sidecar serves {:?})\n{}",
            doc.version,
            applied(envoy) - base,
            vms,
            sidecar.version(),
            envoy.process.log_tail(20)
        );
    }
    let t1 = poll.join().ok().flatten().unwrap_or(t2);
    stack::await_version(envoy, probe_token, doc.version, e2e::VERSION_TIMEOUT)
        .with_context(|| format!("{label}: routing by version {}", doc.version))?;
    // Let freed memory settle before reading RSS.
    std::thread::sleep(Duration::from_millis(500));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(Change {
        label: label.to_string(),
        version: doc.version,
        overrides: doc.overrides.len(),
        snapshot_bytes: bytes.len(),
        file_to_sidecar_ms: ms(t1.saturating_duration_since(t0)),
        sidecar_to_every_vm_ms: ms(t2.saturating_duration_since(t1)),
        file_to_every_vm_ms: ms(t2 - t0),
        rss_before,
        rss_after: stack::rss_bytes(pid).unwrap_or(0),
    })
}

#[derive(Clone, Debug)]
pub struct PropagationOptions {
    pub tenants: usize,
    pub small_changes: usize,
    pub big_overrides: usize,
    pub big_changes: usize,
    pub concurrency: u32,
}

pub fn measure(
    dir: &Path,
    backends: &Backends,
    files: &Files,
    probe_token: &str,
    options: &PropagationOptions,
) -> Result<PropagationReport> {
    let dir = dir.join("propagation");
    std::fs::create_dir_all(&dir)?;
    let source = dir.join("snapshot.json");
    let first = stack::bench_snapshot(1, options.tenants, 0)?;
    e2e::publish(&source, first.to_json().as_bytes())?;
    let sidecar = Sidecar::start(&dir, &source)?;
    let envoy = stack::start_gateway(
        &dir,
        Gateway::Router,
        stack::CELLS.len(),
        backends,
        sidecar.port,
        files,
        options.concurrency,
    )?;
    stack::await_version(&envoy, probe_token, 1, e2e::VERSION_TIMEOUT)
        .context("propagation gateway: routing by version 1")?;
    // Every VM (the workers' and the main thread's) applies each snapshot
    // once: version 1 has been applied concurrency + 1 times.
    let vms = i64::from(options.concurrency) + 1;
    let mut seen = applied(&envoy);
    let deadline = Instant::now() + e2e::VERSION_TIMEOUT;
    while seen < vms && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        seen = applied(&envoy);
    }
    if seen != vms {
        bail!(
            "{APPLIED} is {seen} after version 1, expected {vms} (the {} workers' VMs and the main thread's){}",
            options.concurrency,
            if seen < 0 {
                "; no such counter in Envoy's stats"
            } else {
                ""
            }
        );
    }
    let mut changes = Vec::new();
    let mut version = 1;
    for i in 0..options.small_changes {
        version += 1;
        let doc = stack::bench_snapshot(version, options.tenants, 0)?;
        changes.push(
            change(
                &envoy,
                &sidecar,
                &doc,
                &format!("small #{}", i + 1),
                vms,
                probe_token,
            )
            .context("small snapshot change")?,
        );
    }
    for i in 0..options.big_changes {
        version += 1;
        let doc = stack::bench_snapshot(version, options.tenants, options.big_overrides)?;
        changes.push(
            change(
                &envoy,
                &sidecar,
                &doc,
                &format!("{} overrides #{}", options.big_overrides, i + 1),
                vms,
                probe_token,
            )
            .context("big snapshot change")?,
        );
    }
    Ok(PropagationReport {
        vms,
        concurrency: options.concurrency,
        changes,
    })
}

impl PropagationReport {
    pub fn markdown(&self, w: &mut String) {
        let _ = writeln!(w, "### Snapshot change → every worker routing by it\n");
        let _ = writeln!(
            w,
            "A gateway of its own (`cell-router.yaml`, concurrency {}, {} Wasm VMs: the \
             workers' and the main thread's) and a sidecar watching a file (polled every \
             100 ms). *file → sidecar*: from the rename of the new file to the sidecar \
             answering a long-poll with it; *→ every VM*: until `{APPLIED}` has risen by \
             {} (each VM parsed, validated and swapped it in); afterwards 20 requests in a \
             row on fresh connections are checked to be routed by it. RSS is the gateway \
             Envoy's.\n",
            self.concurrency, self.vms, self.vms
        );
        let _ = writeln!(
            w,
            "| change | overrides | snapshot MiB | file → sidecar ms | sidecar → every VM ms | file → every VM ms | RSS before MiB | RSS after MiB |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        for c in &self.changes {
            let _ = writeln!(
                w,
                "| {} (v{}) | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                c.label,
                c.version,
                c.overrides,
                c.snapshot_bytes as f64 / (1024.0 * 1024.0),
                c.file_to_sidecar_ms,
                c.sidecar_to_every_vm_ms,
                c.file_to_every_vm_ms,
                mib(c.rss_before),
                mib(c.rss_after)
            );
        }
        if let (Some(small), Some(big)) = (
            self.changes.iter().find(|c| c.overrides < 10_000),
            self.changes.iter().rfind(|c| c.overrides >= 10_000),
        ) {
            let per_vm = (big.rss_after as f64 - small.rss_after as f64) / self.vms as f64;
            let _ = writeln!(
                w,
                "\nMemory of the big snapshot in Envoy: RSS {:.0} MiB with it vs {:.0} MiB \
                 with the small one, i.e. about {:.0} MiB per Wasm VM (the parsed snapshot, \
                 and what the VM's linear memory kept from parsing it: Wasm memory never \
                 shrinks).\n",
                mib(big.rss_after),
                mib(small.rss_after),
                per_vm / (1024.0 * 1024.0)
            );
        } else {
            let _ = writeln!(w);
        }
    }
}
