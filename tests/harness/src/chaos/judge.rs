//! The oracle: backends that judge every request by the snapshot version it
//! carried (`cell-backend --check-snapshots`), canaries that prove they can
//! see a misroute, and the verdict on the whole run.

use super::load::Load;
use super::report::Report;
use super::timeline::Timeline;
use super::{Args, CELLS, TENANT_HEADER};
use crate::e2e::{self, Backends, Gateway, Process, client};
use anyhow::{Result, anyhow, bail};
use cell_router_kit::fixtures;
use cell_router_mapping::SnapshotDoc;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The checker's counters (any backend port answers for all cells).
pub fn checker_report(backends: &Backends) -> Result<Value> {
    let port = backends.cells.first().map(|(_, p)| *p).unwrap_or(0);
    e2e::get(&client(), &format!("http://127.0.0.1:{port}/__chaos"), &[])?.json()
}

pub fn newest_seen(backends: &Backends) -> u64 {
    checker_report(backends)
        .ok()
        .and_then(|r| r["versions_seen"].as_array()?.last()?.as_u64())
        .unwrap_or(0)
}

pub fn checked_so_far(backends: &Backends) -> u64 {
    checker_report(backends)
        .ok()
        .and_then(|r| r["checked"].as_u64())
        .unwrap_or(0)
}

pub fn start_backends(dir: &Path, versions_dir: &Path) -> Result<Backends> {
    let mut command = Command::new(e2e::backend_bin()?);
    let mut cells = Vec::new();
    for cell in CELLS {
        let port = e2e::free_port()?;
        command
            .arg("--cell")
            .arg(format!("{cell}=127.0.0.1:{port}"));
        cells.push((cell.to_string(), port));
    }
    command
        .arg("--threads")
        .arg("6")
        .arg("--check-snapshots")
        .arg(versions_dir)
        .arg("--tenant-header")
        .arg(TENANT_HEADER);
    let process = Process::spawn("backends", command, dir)?;
    let backends = Backends { cells, process };
    if !e2e::wait_until(Duration::from_secs(20), || {
        checker_report(&backends).is_ok()
    }) {
        bail!("backends did not start\n{}", backends.process.log_tail(20));
    }
    Ok(backends)
}

/// Envoy cluster counters that explain a failed or slow upstream request.
const UPSTREAM_TROUBLE: [&str; 10] = [
    "upstream_rq_timeout",
    "upstream_rq_per_try_timeout",
    "upstream_rq_5xx",
    "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout",
    "upstream_cx_destroy_remote_with_active_rq",
    "upstream_rq_rx_reset",
    "upstream_rq_tx_reset",
    "upstream_rq_pending_overflow",
    "upstream_rq_retry",
];

/// Deliberately mislabelled requests the checker must catch.
pub const CANARIES: u64 = 20;

/// Proves the checker can see a misroute: requests whose token is one
/// tenant's but whose label names a tenant that `first` puts in another cell.
/// The backends count them apart (`x-chaos-canary`).
pub fn send_canaries(gateway: &Gateway, first: &SnapshotDoc, tenants: &[String]) -> Result<()> {
    let snapshot = fixtures::parsed(first);
    let cell_of = |t: &str| {
        snapshot
            .resolve(t.as_bytes(), &cell_router_mapping::Draws::default())
            .routed_cell()
    };
    let token_tenant = tenants.first().ok_or_else(|| anyhow!("no tenants"))?;
    let label = tenants
        .iter()
        .find(|t| cell_of(t) != cell_of(token_tenant))
        .ok_or_else(|| anyhow!("every tenant is in one cell"))?;
    let agent = client();
    for _ in 0..CANARIES {
        let reply = gateway.call(
            &agent,
            token_tenant,
            &[(TENANT_HEADER, label), ("x-chaos-canary", "1")],
        )?;
        if reply.status != 200 {
            bail!("canary request answered {}: {}", reply.status, reply.body);
        }
    }
    Ok(())
}

/// Reads what the backends and Envoy counted once the load has stopped and
/// judges the run: any misroute, 5xx, other non-2xx, unjudged 2xx, missed
/// canary, unrefused bad snapshot or sidecar outage without service fails it.
pub fn judge(args: &Args, gateway: &Gateway, load: &Load, timeline: &Timeline) -> Result<Report> {
    let Timeline {
        published,
        injections,
        kills,
        flip_lag,
    } = timeline;
    let dir = &gateway.dir;
    // Let requests still in flight at the backends land before counting.
    std::thread::sleep(Duration::from_millis(200));
    let checker = checker_report(&gateway.backends)?;
    let stats = gateway.envoy.stats("cell_router").unwrap_or_default();
    // Where a stray 5xx or timeout came from, per upstream cluster.
    let upstream: BTreeMap<String, i64> = gateway
        .envoy
        .stats("upstream_")
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, value)| {
            *value > 0
                && UPSTREAM_TROUBLE
                    .iter()
                    .any(|t| name.ends_with(&format!(".{t}")))
        })
        .collect();
    let stat = |name: &str| stats.get(&e2e::metric(name)).copied().unwrap_or(0);

    let seen: BTreeSet<u64> = checker["versions_seen"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let counter = |name: &str| checker[name].as_u64().unwrap_or(0);
    let ok_2xx: u64 = load
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, c)| c)
        .sum();
    let non_2xx: BTreeMap<String, u64> = load
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(s, c)| (s.to_string(), *c))
        .collect();
    let five_xx: u64 = load
        .statuses
        .iter()
        .filter(|(s, _)| (500..600).contains(*s))
        .map(|(_, c)| c)
        .sum();
    let misroutes = counter("misroutes");
    let unjudged_2xx = ok_2xx.saturating_sub(counter("checked"));
    let kills_json: Vec<Value> = kills
        .iter()
        .map(|k| {
            json!({
                "at_s": k.at_s,
                "down_s": k.down_s,
                "served_while_down": k.served_while_down,
                "published_before_restart": k.published_before_restart,
                "updates_resumed": seen.iter().any(|v| *v > k.published_before_restart),
                "resumed_after_s": k.resumed_after_s,
            })
        })
        .collect();
    let injections_json: Vec<Value> = injections
        .iter()
        .map(|i| {
            json!({
                "kind": i.kind.name(),
                "at_s": i.at_s,
                "served_before": i.served_before,
                "served_after": i.served_after,
                "refused": i.refused,
            })
        })
        .collect();
    let bad_refused = injections.iter().filter(|i| i.refused).count();

    let mut failures = Vec::new();
    if misroutes > 0 {
        failures.push(format!("{misroutes} misroutes"));
    }
    if five_xx > 0 {
        failures.push(format!("{five_xx} unintended 5xx"));
    }
    if !non_2xx.is_empty() {
        failures.push(format!("non-2xx responses: {non_2xx:?}"));
    }
    for name in ["unknown_version", "missing_headers"] {
        if counter(name) > 0 {
            failures.push(format!("{} requests with {name}", counter(name)));
        }
    }
    if unjudged_2xx > 0 {
        failures.push(format!(
            "{unjudged_2xx} 2xx answers that no checking backend judged"
        ));
    }
    if counter("canaries_caught") != CANARIES || counter("canaries") != CANARIES {
        failures.push(format!(
            "the checker caught {} of {} deliberately mislabelled requests ({CANARIES} sent)",
            counter("canaries_caught"),
            counter("canaries")
        ));
    }
    if load.requests == 0 {
        failures.push("no requests completed".into());
    }
    if seen.len() < 2 {
        failures.push(format!("backends saw only {} versions", seen.len()));
    }
    if bad_refused < injections.len() {
        failures.push(format!(
            "{} of {} bad snapshots were not refused",
            injections.len() - bad_refused,
            injections.len()
        ));
    }
    for k in &kills_json {
        if k["served_while_down"] == 0 {
            failures.push(format!(
                "no request was served while the sidecar was down: {k}"
            ));
        }
        if k["updates_resumed"] != true {
            failures.push(format!("updates did not resume after a restart: {k}"));
        }
    }

    let json = json!({
        "duration_s": load.duration_s,
        "requests": load.requests,
        "rps": if load.duration_s > 0.0 { load.requests as f64 / load.duration_s } else { 0.0 },
        "latency_ms": {"p50": load.p50_ms, "p99": load.p99_ms, "max": load.max_ms},
        "statuses": load.statuses.iter().map(|(s, c)| (s.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "non_2xx_by_status": non_2xx,
        "unintended_5xx": five_xx,
        "socket_errors": load.errors,
        "misroutes": misroutes,
        "unjudged_2xx": unjudged_2xx,
        "tenants": args.tenants,
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "envoy_concurrency": args.concurrency,
        "flip_every_ms": args.flip_every.as_millis() as u64,
        "timeline_max_lag_ms": flip_lag.as_millis() as u64,
        "versions_published": published,
        "versions_seen": seen.len(),
        "first_version_seen": seen.first().copied().unwrap_or(0),
        "last_version_seen": seen.last().copied().unwrap_or(0),
        "bad_snapshots": injections_json,
        "bad_injected": injections.len(),
        "bad_refused": bad_refused,
        "sidecar_kills": kills_json,
        "sidecar_kill_count": kills.len(),
        "filter": {
            "applied": stat(fixtures::metric::SNAPSHOTS_APPLIED),
            "refused": stat(fixtures::metric::SNAPSHOTS_REFUSED),
            "fetch_failures": stat(fixtures::metric::FETCH_FAILURES),
        },
        "checker": checker,
        "envoy_upstream_trouble": upstream,
        "work_dir": dir.display().to_string(),
        "failures": failures,
    });
    Ok(Report { json, failures })
}
