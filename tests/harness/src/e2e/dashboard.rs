//! The Grafana dashboard (`envoy/grafana-dashboard.json`) against what Envoy
//! exports: the metric names its panel queries use, and the names a gateway's
//! `/stats/prometheus` has. The e2e tests that run each kind of traffic check
//! the panels on it (per cell and reason in `e2e_observe`, key sets in
//! `e2e_keys`, ramps in `e2e_draws`), so a renamed metric fails a test.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeSet;

/// Metric names in a PromQL expression: the words naming the filter's or
/// Envoy's metrics (`cell_router_…`, `envoy_…`) that are not label names
/// (followed by `=`), functions (followed by `(`) or inside quotes.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let before = rest.get(..start).and_then(|s| s.chars().last());
        let tail = rest.get(start..).unwrap_or_default();
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let (word, after) = tail.split_at(len);
        let after = after.trim_start();
        let metric = word.starts_with("cell_router_") || word.starts_with("envoy_");
        let label_or_call =
            after.starts_with('=') || after.starts_with("!=") || after.starts_with('(');
        if metric && !label_or_call && before != Some('"') {
            names.insert(word.to_string());
        }
        rest = after;
    }
    names
}

/// The dashboard: every panel's title with the metric names of its queries.
pub fn panels() -> Result<Vec<(String, BTreeSet<String>)>> {
    let path = super::repo_root().join("envoy/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        let mut names = BTreeSet::new();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("target without expr")?;
            let found = metric_names(expr);
            if found.is_empty() {
                bail!("{}: no metric in {expr}", panel["title"]);
            }
            names.extend(found);
        }
        out.push((panel["title"].as_str().unwrap_or("?").to_string(), names));
    }
    Ok(out)
}

/// Metric names in Prometheus text exposition format, as the dashboard
/// names them (see [`super::dashboard_name`]).
pub fn exported_names(prometheus_text: &str) -> BTreeSet<String> {
    prometheus_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| super::dashboard_name(name).to_string())
        .collect()
}

/// Every dashboard metric whose name starts with `prefix` is in
/// `exported`; at least one is (so the check cannot pass on nothing).
pub fn check_panels(prefix: &str, exported: &BTreeSet<String>) -> Result<usize> {
    let mut checked = 0;
    for (title, names) in panels()? {
        for name in names.iter().filter(|n| n.starts_with(prefix)) {
            if !exported.contains(name) {
                bail!("panel {title:?}: {name} is not exported by Envoy");
            }
            checked += 1;
        }
    }
    if checked == 0 {
        bail!("the dashboard has no panel on {prefix}*");
    }
    Ok(checked)
}

/// `/stats/prometheus` of an Envoy admin port.
pub fn prometheus_text(admin_port: u16) -> Result<String> {
    let url = format!("http://127.0.0.1:{admin_port}/stats/prometheus");
    let reply = super::get(&super::client(), &url, &[])?;
    if reply.status != 200 {
        bail!("{url}: HTTP {}", reply.status);
    }
    Ok(reply.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_metrics_not_labels_or_functions() {
        let names = metric_names(
            "sum by (cell) (rate(cell_router_routed{cell=\"cell_router_x\"}[5m])) / envoy_up",
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["cell_router_routed", "envoy_up"]
        );
    }

    #[test]
    fn exported_names_skip_comments_and_labels() {
        let text =
            "# TYPE cell_router_routed counter\ncell_router_routed{cell=\"a\"} 3\nenvoy_x 1\n";
        assert_eq!(
            exported_names(text).into_iter().collect::<Vec<_>>(),
            ["cell_router_routed", "envoy_x"]
        );
    }

    #[test]
    fn the_dashboard_has_key_set_and_ramp_panels() {
        let all: BTreeSet<String> = panels().unwrap().into_iter().flat_map(|(_, n)| n).collect();
        for needed in [
            "cell_router_jwks_version",
            "cell_router_jwks_age_s",
            "cell_router_ramp_share",
            "cell_router_ramped",
        ] {
            assert!(all.contains(needed), "no panel on {needed}");
        }
    }
}
