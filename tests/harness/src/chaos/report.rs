//! The text summary of a run, read from its JSON report.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The run's outcome: every figure as JSON (`--json`), and what failed.
pub struct Report {
    pub json: Value,
    /// Empty when the run passed.
    pub failures: Vec<String>,
}

impl Report {
    /// The summary printed at the end of a run.
    pub fn text(&self) -> String {
        let j = &self.json;
        let mut out = String::new();
        let statuses = j["statuses"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let non_2xx = j["non_2xx_by_status"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "none".into());
        let _ = writeln!(out, "\ncell-router chaos under load");
        let _ = writeln!(
            out,
            "  load         wrk {} threads, {} connections, {} tenants (HS256), Envoy concurrency {}",
            j["wrk_threads"], j["connections"], j["tenants"], j["envoy_concurrency"]
        );
        let _ = writeln!(
            out,
            "  duration     {:.1} s",
            j["duration_s"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            out,
            "  requests     {} ({:.0} req/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms)",
            j["requests"],
            j["rps"].as_f64().unwrap_or(0.0),
            j["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            j["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            j["latency_ms"]["max"].as_f64().unwrap_or(0.0),
        );
        let _ = writeln!(out, "  statuses     {statuses}");
        let _ = writeln!(out, "  non-2xx      {non_2xx}");
        let _ = writeln!(out, "  5xx          {}", j["unintended_5xx"]);
        let _ = writeln!(
            out,
            "  socket errs  connect {}, read {}, write {}, timeout {}",
            j["socket_errors"]["connect"],
            j["socket_errors"]["read"],
            j["socket_errors"]["write"],
            j["socket_errors"]["timeout"]
        );
        let _ = writeln!(
            out,
            "  snapshots    {} versions published (one per {} ms; timeline at most {} ms late), {} distinct versions seen by the backends (v{}..v{})",
            j["versions_published"],
            j["flip_every_ms"],
            j["timeline_max_lag_ms"],
            j["versions_seen"],
            j["first_version_seen"],
            j["last_version_seen"]
        );
        let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for i in j["bad_snapshots"].as_array().into_iter().flatten() {
            let entry = by_kind
                .entry(i["kind"].as_str().unwrap_or("?"))
                .or_default();
            entry.0 += 1;
            if i["refused"] == true {
                entry.1 += 1;
            }
        }
        let injections = by_kind
            .iter()
            .map(|(kind, (injected, refused))| format!("{kind} {refused}/{injected}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "  bad          {} injected, {} refused by the sidecar (refused/injected: {injections})",
            j["bad_injected"], j["bad_refused"]
        );
        let _ = writeln!(
            out,
            "  sidecar      {} SIGKILLs, each restarted on the same port",
            j["sidecar_kill_count"]
        );
        for k in j["sidecar_kills"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    at {:4.1} s, down {:.1} s: {} requests served meanwhile; updates {}",
                k["at_s"].as_f64().unwrap_or(0.0),
                k["down_s"].as_f64().unwrap_or(0.0),
                k["served_while_down"],
                match (k["updates_resumed"] == true, k["resumed_after_s"].as_f64()) {
                    (true, Some(s)) => format!("resumed {s:.2} s after the restart"),
                    (true, None) => "resumed".to_string(),
                    (false, _) => "DID NOT RESUME".to_string(),
                }
            );
        }
        let _ = writeln!(
            out,
            "  filter       snapshots applied {}, refused {}, fetch failures {} (Envoy stats, both workers)",
            j["filter"]["applied"], j["filter"]["refused"], j["filter"]["fetch_failures"]
        );
        let _ = writeln!(
            out,
            "  checker      {} judged, {} correct, misroutes {}, unknown version {}, missing headers {}, 2xx not judged {}",
            j["checker"]["checked"],
            j["checker"]["correct"],
            j["misroutes"],
            j["checker"]["unknown_version"],
            j["checker"]["missing_headers"],
            j["unjudged_2xx"]
        );
        let trouble = j["envoy_upstream_trouble"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "none".into());
        let _ = writeln!(out, "  upstreams    {trouble} (Envoy cluster counters)");
        let _ = writeln!(
            out,
            "  self-test    {} of {} deliberately mislabelled requests caught as misroutes (counted apart)",
            j["checker"]["canaries_caught"], j["checker"]["canaries"]
        );
        if let Some(samples) = j["checker"]["misroute_samples"].as_array()
            && !samples.is_empty()
        {
            let _ = writeln!(out, "  samples:");
            for s in samples {
                let _ = writeln!(out, "    {}", s.as_str().unwrap_or(""));
            }
        }
        let _ = writeln!(
            out,
            "  files        {}",
            j["work_dir"].as_str().unwrap_or("")
        );
        if self.failures.is_empty() {
            let _ = writeln!(out, "  verdict      PASS");
        } else {
            let _ = writeln!(out, "  verdict      FAIL");
            for f in &self.failures {
                let _ = writeln!(out, "    - {f}");
            }
        }
        out
    }
}
