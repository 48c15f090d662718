//! What an operator's tools see, through real Envoy running
//! `envoy/envoy.yaml`: the access log says where each request went and why
//! it was refused, `/stats/prometheus` counts per cell and per reason as
//! labels, and the Grafana dashboard asks only for metrics Envoy exports.

use anyhow::{Context, Result, bail};
use cell_router_harness::e2e::{self, Gateway, client, dashboard, next_snapshot, publish};
use cell_router_kit::fixtures::{bearer, token, token_builder, unix_now};
use cell_router_kit::tokens::Alg;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

fn example_snapshot() -> Vec<u8> {
    std::fs::read(e2e::repo_root().join("mapping/examples/snapshot.json"))
        .expect("example snapshot")
}

/// One sample of `/stats/prometheus`: metric name and its labels
/// (`cell="cell-a"`, sorted, comma-joined) to value.
type Samples = BTreeMap<(String, String), f64>;

fn prometheus(gateway: &Gateway) -> Result<(Samples, String)> {
    let url = format!(
        "http://127.0.0.1:{}/stats/prometheus",
        gateway.envoy.admin_port
    );
    let reply = e2e::get(&client(), &url, &[])?;
    if reply.status != 200 {
        bail!("{url}: HTTP {}", reply.status);
    }
    let mut samples = Samples::new();
    for line in reply.body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        labels.sort_unstable();
        if let Ok(value) = value.parse::<f64>() {
            // The native build's names as the dashboard's relabelled scrape has them.
            samples.insert(
                (e2e::dashboard_name(name).to_string(), labels.join(",")),
                value,
            );
        }
    }
    Ok((samples, reply.body))
}

fn sample(samples: &Samples, name: &str, labels: &str) -> f64 {
    samples
        .get(&(name.to_string(), labels.to_string()))
        .copied()
        .unwrap_or(0.0)
}

/// What one request got, as the client saw it.
#[derive(Debug)]
struct Sent {
    status: u16,
    /// The cell that answered (the backends echo it), for routed requests.
    cell: Option<String>,
    /// Envoy's response code details the access log should print.
    details: String,
    /// The decision the filter should write into filter state: the cell
    /// that decided (routed to or shed by) and why.
    decided_cell: Option<String>,
    reason: String,
}

/// The access log's JSON lines for the requests this test sent (their paths
/// start with `/observe/`), by path, once `expected` lines are there (Envoy
/// flushes the file every second).
fn access_log(gateway: &Gateway, expected: usize) -> Result<HashMap<String, Vec<Value>>> {
    let log = gateway
        .dir
        .join(format!("envoy-{}.log", gateway.envoy.port));
    let mut lines = HashMap::new();
    let read = |lines: &mut HashMap<String, Vec<Value>>| -> usize {
        lines.clear();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines().filter(|l| l.starts_with('{')) {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(path) = entry["path"].as_str()
                && path.starts_with("/observe/")
            {
                lines.entry(path.to_string()).or_default().push(entry);
            }
        }
        lines.values().map(Vec::len).sum()
    };
    let found = e2e::wait_until(Duration::from_secs(30), || read(&mut lines) >= expected);
    if !found {
        bail!(
            "{} access-log lines for /observe/ in {} after 30 s, expected {expected}",
            read(&mut lines),
            log.display()
        );
    }
    Ok(lines)
}

/// A gateway whose snapshot (version 2) sheds half of cell-b's requests
/// (draining) and sends cell-c's to cell-a (disabled, failover), plus a
/// tenant in each of the three.
fn observed_gateway(name: &str) -> Result<(Gateway, [String; 3])> {
    let base = example_snapshot();
    let gateway = Gateway::start(name, &base, 2)?;
    let names: Vec<String> = (0..300).map(|i| format!("t-{i}")).collect();
    let routes = e2e::cellmap_route(&gateway.source, &names)?;
    let in_cell = |cell: &str| -> Result<String> {
        routes
            .iter()
            .find(|r| r["cell"] == cell && r["reason"] == "slot")
            .and_then(|r| r["tenant"].as_str())
            .map(str::to_string)
            .with_context(|| format!("no tenant in {cell}"))
    };
    let tenants = [in_cell("cell-a")?, in_cell("cell-b")?, in_cell("cell-c")?];
    let next = next_snapshot(&base, |s| {
        if let Some(cell) = s["cells"][0].as_object_mut() {
            cell.remove("failover");
        }
        s["cells"][1]["state"] = "draining".into();
        s["cells"][1]["shed_ratio"] = 0.5.into();
        s["cells"][2]["state"] = "disabled".into();
        s["cells"][2]["failover"] = "cell-a".into();
    })?;
    publish(&gateway.source, &next)?;
    gateway.await_version(2, Duration::from_secs(30))?;
    Ok((gateway, tenants))
}

/// Sends routed, shed and refused requests, each on its own path
/// (`/observe/<n>`), and says what each got.
fn send_mix(gateway: &Gateway, tenants: &[String; 3]) -> Result<BTreeMap<String, Sent>> {
    let agent = client();
    let mut sent = BTreeMap::new();
    let now = unix_now();
    let expired = bearer(
        &token_builder(Alg::ES256, now - 7200, "acme-corp")
            .expires_at(now - 3600)
            .sign(),
    );
    for n in 0..120 {
        let path = format!("/observe/{n}");
        let valid;
        let authorization = match n % 6 {
            // Two of six requests without a token, one with an expired one.
            4 => None,
            5 if n % 12 == 5 => None,
            5 => Some(expired.as_str()),
            i => {
                valid = bearer(&token(Alg::HS256, now, &tenants[i % 3]));
                Some(valid.as_str())
            }
        };
        let mut headers = Vec::new();
        if let Some(value) = authorization {
            headers.push(("authorization", value));
        }
        // A client's cell header is never what the log reports.
        headers.push(("x-cell-id", "cell-b"));
        let reply = e2e::get(&agent, &gateway.envoy.url(&path), &headers)?;
        let body = reply.json().ok();
        let error = body
            .as_ref()
            .and_then(|b| b["error"].as_str())
            .unwrap_or("");
        let served = body
            .as_ref()
            .and_then(|b| b["cell"].as_str())
            .map(str::to_string);
        // Tenant 2's cell (cell-c) is disabled: its requests fail over.
        let routed_reason = if n % 6 % 3 == 2 { "failover" } else { "slot" };
        let (cell, details, decided_cell, reason) = match (reply.status, error) {
            (200, _) => (served.clone(), "via_upstream", served, routed_reason),
            (503, "cell_draining") => (None, "cell_router_shed", Some("cell-b".into()), "shed"),
            (401, "missing_token") => (None, "cell_router_missing_token", None, "missing_token"),
            (401, "invalid_token") => (None, "cell_router_expired", None, "expired"),
            (status, _) => bail!("{path}: unexpected {status}: {}", reply.body),
        };
        sent.insert(
            path,
            Sent {
                status: reply.status,
                cell,
                details: details.to_string(),
                decided_cell,
                reason: reason.to_string(),
            },
        );
    }
    Ok(sent)
}

/// A field of an access-log line as text; `-` and null (Envoy's "not set")
/// become None.
fn field<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry[name].as_str().filter(|v| *v != "-")
}

#[test]
fn the_access_log_says_where_each_request_went_and_why() -> Result<()> {
    let (gateway, tenants) = observed_gateway("observe-log")?;
    let sent = send_mix(&gateway, &tenants)?;
    let lines = access_log(&gateway, sent.len())?;

    let mut seen = BTreeMap::<String, usize>::new();
    for (path, want) in &sent {
        let entries = lines.get(path).map(Vec::as_slice).unwrap_or_default();
        let [entry] = entries else {
            panic!("{path}: {} access-log lines: {entries:?}", entries.len());
        };
        assert_eq!(
            entry["status"].as_u64(),
            Some(u64::from(want.status)),
            "{path}: {entry}"
        );
        assert_eq!(
            field(entry, "details"),
            Some(want.details.as_str()),
            "{path}: {entry}"
        );
        // The filter's decision, from filter state: the cell that decided
        // (routed to, or the draining cell that shed it), the reason, and
        // the snapshot it was decided by; none of it for a refused token.
        assert_eq!(
            field(entry, "cell"),
            want.decided_cell.as_deref(),
            "{path}: {entry}"
        );
        assert_eq!(
            field(entry, "reason"),
            Some(want.reason.as_str()),
            "{path}: {entry}"
        );
        let consulted = want.decided_cell.is_some();
        assert_eq!(
            field(entry, "snapshot"),
            consulted.then_some("2"),
            "{path}: {entry}"
        );
        // The cell header as the request left the filter: the filter's
        // choice when routed, and never the client's (it sent cell-b).
        assert_eq!(
            field(entry, "cell_header"),
            want.cell.as_deref(),
            "{path}: {entry}"
        );
        *seen
            .entry(format!(
                "{} {} {}",
                want.details,
                want.reason,
                want.decided_cell.as_deref().unwrap_or("-")
            ))
            .or_default() += 1;
    }
    // Every kind of line was there to be checked: routed to each serving
    // cell by slot, cell-c's tenant failed over to cell-a, shed, and both
    // refusals.
    for kind in [
        "via_upstream slot cell-a",
        "via_upstream slot cell-b",
        "via_upstream failover cell-a",
        "cell_router_shed shed cell-b",
        "cell_router_missing_token missing_token -",
        "cell_router_expired expired -",
    ] {
        assert!(seen.contains_key(kind), "no {kind} line: {seen:?}");
    }
    Ok(())
}

/// The Prometheus names of the filter's counters, as Envoy 1.40 exports
/// them with `stats_config.stats_tags` from `envoy/envoy.yaml`.
const ROUTED: &str = "cell_router_routed";
const SHED: &str = "cell_router_shed";
const FAILOVER: &str = "cell_router_failover";
const REJECTED: &str = "cell_router_rejected";

#[test]
fn prometheus_counts_per_cell_and_reason_as_labels() -> Result<()> {
    let (gateway, tenants) = observed_gateway("observe-prometheus")?;
    let (before, _) = prometheus(&gateway)?;
    let sent = send_mix(&gateway, &tenants)?;
    let (after, text) = prometheus(&gateway)?;
    // Kept for a look at what Envoy exports (target/e2e/observe-prometheus-*).
    std::fs::write(gateway.dir.join("prometheus.txt"), &text)?;

    let delta =
        |name: &str, labels: &str| sample(&after, name, labels) - sample(&before, name, labels);
    let count = |f: &dyn Fn(&Sent) -> bool| sent.values().filter(|s| f(s)).count() as f64;
    let show = || {
        text.lines()
            .filter(|l| l.contains("cell_router"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for cell in ["cell-a", "cell-b"] {
        let routed = count(&|s: &Sent| s.cell.as_deref() == Some(cell));
        assert!(routed > 0.0, "nothing routed to {cell}");
        assert_eq!(
            delta(ROUTED, &format!("cell=\"{cell}\"")),
            routed,
            "{ROUTED}{{cell=\"{cell}\"}}\n{}",
            show()
        );
    }
    let failover = count(&|s: &Sent| s.reason == "failover");
    assert!(failover > 0.0);
    assert_eq!(delta(FAILOVER, "cell=\"cell-a\""), failover, "{}", show());
    let shed = count(&|s: &Sent| s.details == "cell_router_shed");
    assert!(shed > 0.0);
    assert_eq!(delta(SHED, "cell=\"cell-b\""), shed, "{}", show());
    for reason in ["missing_token", "expired"] {
        let refused = count(&|s: &Sent| s.details == format!("cell_router_{reason}"));
        assert!(refused > 0.0);
        assert_eq!(
            delta(REJECTED, &format!("reason=\"{reason}\"")),
            refused,
            "{REJECTED}{{reason=\"{reason}\"}}\n{}",
            show()
        );
    }
    // The tags replace the per-cell names: nothing is left with the cell or
    // the reason in the metric name.
    let untagged: Vec<&String> = after
        .keys()
        .map(|(name, _)| name)
        .filter(|n| n.contains("cell_router_routed_") || n.contains("cell_router_rejected_"))
        .collect();
    assert!(untagged.is_empty(), "{untagged:?}");

    dashboard_queries_only_exported_metrics(&after)?;
    Ok(())
}

fn only_when_configured(name: &str) -> bool {
    name.starts_with("cell_router_jwks_") || name == "cell_router_ramp_share"
}

/// Every panel query of `envoy/grafana-dashboard.json` names only metrics
/// (and labels) that the Prometheus scrape above actually had.
fn dashboard_queries_only_exported_metrics(samples: &Samples) -> Result<()> {
    let path = e2e::repo_root().join("envoy/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let exported: BTreeSet<&str> = samples.keys().map(|(n, _)| n.as_str()).collect();
    let labels: BTreeSet<&str> = samples
        .keys()
        .flat_map(|(_, l)| l.split(','))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let panels = dashboard["panels"].as_array().context("no panels")?;
    let mut queried = 0;
    let mut all = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("target without expr")?;
            let names = dashboard::metric_names(expr);
            assert!(!names.is_empty(), "{}: no metric in {expr}", panel["title"]);
            // Key-set and ramp metrics exist only where remote keys or a
            // ramp are configured: e2e_keys and e2e_draws check those panels.
            for name in names.iter().filter(|n| !only_when_configured(n)) {
                assert!(
                    exported.contains(name.as_str()),
                    "panel {}: {name} is not exported by Envoy ({expr})",
                    panel["title"]
                );
                queried += 1;
                all.insert(name.clone());
            }
            for label in ["cell", "reason"] {
                if expr.contains(&format!("by ({label})")) {
                    assert!(labels.contains(label), "no label {label} exported");
                }
            }
        }
    }
    assert!(
        queried >= 6,
        "only {queried} metric references in the dashboard"
    );
    // What an operator watches during a drain or a migration.
    for needed in [
        ROUTED,
        FAILOVER,
        SHED,
        "cell_router_unavailable",
        REJECTED,
        "cell_router_snapshot_version",
        "cell_router_snapshot_age_s",
    ] {
        assert!(
            all.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
    Ok(())
}
