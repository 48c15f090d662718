//! Chaos under load, short: the `cell-router-chaos` driver (real Envoy, the
//! filter, the sidecar, checking cell backends, wrk) for 9 s of load while
//! the source snapshot flips every 100 ms, bad snapshots are injected and the
//! sidecar is SIGKILLed and restarted. Its JSON report is asserted here.
//!
//! The driver runs in its own process group, so whatever happens (a hang, a
//! failed assertion) the group is killed and nothing it started survives.

use cell_router_harness::e2e;
use serde_json::Value;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Envoy start, load, and shutdown fit well within this.
const HARD_TIMEOUT: Duration = Duration::from_secs(180);

/// Kills the driver's whole process group when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn chaos_under_load_routes_every_request_by_the_snapshot_it_carried() {
    let dir = e2e::work_dir("chaos-test").unwrap();
    let report_path = dir.join("report.json");
    let log_path = dir.join("driver.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cell-router-chaos"))
        .args([
            "--duration",
            "9s",
            "--bad-every",
            "2s",
            "--kill-every",
            "6s",
        ])
        .arg("--json")
        .arg(&report_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    let mut group = Group(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = group.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < HARD_TIMEOUT,
            "the chaos driver ran over {HARD_TIMEOUT:?}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(group);
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .unwrap_or_else(|e| panic!("no report ({e}); driver said:\n{output}")),
    )
    .unwrap();
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));

    // The two numbers that must be zero.
    assert_eq!(n(&report["misroutes"]), 0, "{output}");
    assert_eq!(n(&report["unintended_5xx"]), 0, "{output}");
    assert_eq!(
        report["non_2xx_by_status"],
        serde_json::json!({}),
        "{output}"
    );

    // Every 2xx wrk saw was judged by a backend against a known version.
    let checker = &report["checker"];
    assert!(n(&report["requests"]) >= 1000, "{output}");
    assert_eq!(n(&report["unjudged_2xx"]), 0, "{output}");
    assert_eq!(n(&checker["unknown_version"]), 0, "{output}");
    assert_eq!(n(&checker["missing_headers"]), 0, "{output}");
    assert_eq!(n(&checker["checked"]), n(&checker["correct"]), "{output}");
    // And the checker can see a misroute: the driver's deliberately
    // mislabelled requests were all caught (and counted apart).
    assert!(n(&checker["canaries"]) > 0, "{output}");
    assert_eq!(
        n(&checker["canaries_caught"]),
        n(&checker["canaries"]),
        "{output}"
    );

    // The snapshot really changed under load: many versions were routed by.
    let seen = n(&report["versions_seen"]);
    assert!(seen >= 20, "only {seen} versions seen\n{output}");
    assert!(n(&report["filter"]["applied"]) >= seen, "{output}");

    // The sidecar died and came back; requests kept being served meanwhile,
    // and newer versions were routed by after the restart.
    let kills = report["sidecar_kills"].as_array().unwrap();
    assert!(!kills.is_empty(), "{output}");
    for kill in kills {
        assert!(n(&kill["served_while_down"]) > 0, "{kill}\n{output}");
        assert_eq!(kill["updates_resumed"], true, "{kill}\n{output}");
    }

    // Each kind of bad snapshot was injected and refused by the sidecar.
    let bad = report["bad_snapshots"].as_array().unwrap();
    for kind in ["invalid_json", "failover_loop", "older_version"] {
        assert!(
            bad.iter().any(|b| b["kind"] == kind),
            "{kind} not injected\n{output}"
        );
    }
    for b in bad {
        assert_eq!(b["refused"], true, "{b}\n{output}");
        assert_eq!(b["served_after"], b["served_before"], "{b}\n{output}");
    }

    assert!(status.success(), "driver exited {status}\n{output}");
}
