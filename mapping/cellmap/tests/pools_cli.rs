//! `cellmap` with format-2 snapshots (pools and regions): build from the
//! example spec, route with --path/--authority/--gateway-region, rebuild
//! with --previous and --tenants, diff per pool and region. Every routed
//! answer is checked against the library's own resolution.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use cell_router_mapping::{Draws, Outcome, Snapshot};
use common::{stderr, stdout};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const EPOCH: &str = "1767225600"; // 2026-01-01T00:00:00Z

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn scratch() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cellmap-pools-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    Command::new(common::binary())
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "cellmap {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn build_example(dir: &Path) -> (PathBuf, Snapshot) {
    let path = dir.join("snapshot.json");
    let spec = example("spec-pools.json");
    ok(&[
        "build",
        "--spec",
        spec.to_str().unwrap(),
        "-o",
        path.to_str().unwrap(),
    ]);
    let snapshot = Snapshot::parse(&std::fs::read(&path).unwrap()).unwrap();
    (path, snapshot)
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tenants(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant-{i}")).collect()
}

#[test]
fn route_json_tells_pool_region_forwarding_and_cell_like_the_router() {
    let dir = scratch();
    let (path, s) = build_example(&dir);
    let file = dir.join("tenants.txt");
    let ts = tenants(1_000);
    std::fs::write(&file, ts.join("\n")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (url_path, pool) in [("/voice/calls", "voice"), ("/sms/send", "sms")] {
        for gateway in ["us", "eu"] {
            let out = ok(&[
                "route",
                "-s",
                path.to_str().unwrap(),
                "--path",
                url_path,
                "--authority",
                "api.example.com:8443",
                "--gateway-region",
                gateway,
                "--json",
                "--tenants-file",
                file.to_str().unwrap(),
            ]);
            let answers = lines(&out);
            assert_eq!(answers.len(), ts.len());
            let p = s.pool_index(pool).unwrap();
            let g = s.region_index(gateway).unwrap();
            for (tenant, line) in ts.iter().zip(&answers) {
                assert_eq!(line["tenant"], json!(tenant));
                assert_eq!(line["pool"], json!(pool));
                let home = s.home_region(tenant.as_bytes());
                let home_id = &s.regions()[usize::from(home)].id;
                assert_eq!(line["home_region"], json!(home_id));
                assert_eq!(line["gateway_region"], json!(gateway));
                let draws = Draws::unshed(tenant.as_bytes(), 0);
                let at_home = s.resolve_in(tenant.as_bytes(), p, Some(home), true, &draws);
                let Outcome::Route { cell } = at_home.outcome else {
                    panic!("{tenant}: {:?}", at_home.outcome)
                };
                assert_eq!(line["cell"], json!(s.cells()[usize::from(cell)].id));
                assert_eq!(line["cell_reason"], json!(at_home.reason()));
                if home == g {
                    assert_eq!(line["routing"], json!("local"));
                    assert_eq!(line["reason"], json!(at_home.reason()));
                    assert!(line.get("forward_to").is_none());
                } else {
                    assert_eq!(line["routing"], json!("forward"));
                    assert_eq!(line["forward_to"], json!(home_id));
                    assert_eq!(line["reason"], json!("forward"));
                }
                seen.insert((pool, gateway, line["routing"].as_str().unwrap().to_string()));
            }
        }
    }
    // Both pools at both gateways saw local and forwarded tenants.
    assert_eq!(seen.len(), 8, "{seen:?}");
}

#[test]
fn a_forwarded_request_is_never_forwarded_again_and_no_pool_is_404() {
    let dir = scratch();
    let (path, s) = build_example(&dir);
    let p = path.to_str().unwrap();
    // acme-gmbh is homed in eu (region override); at a us gateway, already
    // forwarded: 503 wrong_region.
    let out = ok(&[
        "route",
        "-s",
        p,
        "--pool",
        "voice",
        "--gateway-region",
        "us",
        "--forwarded",
        "--json",
        "acme-gmbh",
    ]);
    let line = &lines(&out)[0];
    assert_eq!(line["routing"], json!("wrong_region"));
    assert_eq!(line["reason"], json!("wrong_region"));
    assert_eq!(line["outcome"], json!("wrong_region"));
    assert_eq!(line["cell"], Value::Null);
    assert_eq!(line["home_region"], json!("eu"));
    let text = ok(&[
        "route",
        "-s",
        p,
        "--pool",
        "voice",
        "--gateway-region",
        "us",
        "--forwarded",
        "acme-gmbh",
    ]);
    assert!(text.contains("503 wrong_region"), "{text}");
    // In eu it is local and goes to its override.
    let text = ok(&[
        "route",
        "-s",
        p,
        "--path",
        "/VOICE;v=1/x",
        "--gateway-region",
        "eu",
        "acme-gmbh",
    ]);
    assert_eq!(
        text.trim(),
        "acme-gmbh -> voice-eu-1 (pool voice, region eu, gateway eu, slot 5256, override, route)"
    );
    assert_eq!(s.home_region(b"acme-gmbh"), s.region_index("eu").unwrap());
    // An unknown region or pool is a usage error.
    let out = run(&["route", "-s", p, "--gateway-region", "ap", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("us, eu"), "{}", stderr(&out));
    let out = run(&["route", "-s", p, "--pool", "fax", "x"]);
    assert_eq!(out.status.code(), Some(2));

    // A snapshot whose pools all have a match: a path none matches is 404.
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(example("spec-pools.json")).unwrap()).unwrap();
    spec["pools"][1]["match"] = json!({"path_prefixes": ["/sms"]});
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let snap = dir.join("matched.json");
    ok(&[
        "build",
        "--spec",
        spec_path.to_str().unwrap(),
        "-o",
        snap.to_str().unwrap(),
    ]);
    let out = ok(&[
        "route",
        "-s",
        snap.to_str().unwrap(),
        "--path",
        "/fax",
        "--json",
        "t1",
    ]);
    let line = &lines(&out)[0];
    assert_eq!(line["outcome"], json!("no_pool"));
    assert_eq!(line["pool"], Value::Null);
}

#[test]
fn rebuilding_keeps_known_tenants_and_diff_counts_per_pool_and_region() {
    let dir = scratch();
    let (first, s1) = build_example(&dir);
    let known = tenants(3_000);
    let known_file = dir.join("known.txt");
    std::fs::write(&known_file, known.join("\n")).unwrap();
    // voice gains a us cell and eu doubles its weight.
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(example("spec-pools.json")).unwrap()).unwrap();
    spec["cells"].as_array_mut().unwrap().insert(
        2,
        json!({"id": "voice-us-3", "pool": "voice", "region": "us", "weight": 2}),
    );
    spec["regions"][1]["weight"] = json!(2);
    let spec_path = dir.join("spec2.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let second = dir.join("snapshot2.json");
    let report = dir.join("report.json");

    // Without the known tenants the region table change is refused.
    let out = run(&[
        "build",
        "--spec",
        spec_path.to_str().unwrap(),
        "--previous",
        first.to_str().unwrap(),
        "-o",
        second.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("$.regions"), "{}", stderr(&out));
    assert!(!second.exists());

    let text = ok(&[
        "build",
        "--spec",
        spec_path.to_str().unwrap(),
        "--previous",
        first.to_str().unwrap(),
        "--tenants",
        known_file.to_str().unwrap(),
        "--report-json",
        report.to_str().unwrap(),
        "-o",
        second.to_str().unwrap(),
    ]);
    assert!(
        text.contains("region slots moved: 10923 of 65536"),
        "{text}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["format"], json!(2));
    assert_eq!(r["region_slots_moved"], json!(10_923));
    let sms = r["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "sms")
        .unwrap();
    assert_eq!(sms["pins"], json!(0));
    let s2 = Snapshot::parse(&std::fs::read(&second).unwrap()).unwrap();
    assert_eq!(s2.version(), 2);

    // diff --tenants: no known tenant changes cell or region.
    let out = ok(&[
        "diff",
        first.to_str().unwrap(),
        second.to_str().unwrap(),
        "--tenants",
        known_file.to_str().unwrap(),
        "--json",
    ]);
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["region_slots_moved"], json!(10_923));
    assert_eq!(d["tenants"]["checked"], json!(3_000));
    assert_eq!(d["tenants"]["changes"], json!([]));
    let counted: u64 = d["tenants"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tenants"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3_000 * 2, "every known tenant in both pools");
    // Unknown tenants do move: a few are re-homed to eu, some change voice
    // cell in us; sms in us moves none.
    let others: Vec<String> = (3_000..6_000).map(|i| format!("tenant-{i}")).collect();
    let others_file = dir.join("others.txt");
    std::fs::write(&others_file, others.join("\n")).unwrap();
    let out = ok(&[
        "diff",
        first.to_str().unwrap(),
        second.to_str().unwrap(),
        "--tenants",
        others_file.to_str().unwrap(),
        "--json",
    ]);
    let d: Value = serde_json::from_str(&out).unwrap();
    let count = |pool: &str, region: &str, field: &str| -> u64 {
        d["tenants"]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["pool"] == pool && c["region"] == region)
            .map_or(0, |c| c[field].as_u64().unwrap())
    };
    assert!(count("voice", "eu", "region_changed") > 300);
    assert!(count("voice", "us", "cell_changed") > 500);
    assert_eq!(count("sms", "us", "cell_changed"), 0);
    assert_eq!(count("sms", "us", "region_changed"), 0);
    for change in d["tenants"]["changes"].as_array().unwrap() {
        let t = change["tenant"].as_str().unwrap();
        let home1 = &s1.regions()[usize::from(s1.home_region(t.as_bytes()))].id;
        let home2 = &s2.regions()[usize::from(s2.home_region(t.as_bytes()))].id;
        assert_eq!(change["old_region"], json!(home1));
        assert_eq!(change["new_region"], json!(home2));
    }

    // A spec region override moving a known tenant is refused without
    // --rehome, taken with it.
    let tenant = known
        .iter()
        .find(|t| s2.home_region(t.as_bytes()) == s2.region_index("us").unwrap())
        .unwrap();
    spec["region_overrides"][tenant] = json!("eu");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let third = dir.join("snapshot3.json");
    let args = |rehome: bool| {
        let mut a = vec![
            "build".to_string(),
            "--spec".into(),
            spec_path.to_str().unwrap().into(),
            "--previous".into(),
            second.to_str().unwrap().into(),
            "--tenants".into(),
            known_file.to_str().unwrap().into(),
            "-o".into(),
            third.to_str().unwrap().into(),
        ];
        if rehome {
            a.extend(["--rehome".to_string(), tenant.clone()]);
        }
        a
    };
    let refused = run(&args(false).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(&format!("--rehome {tenant}")),
        "{}",
        stderr(&refused)
    );
    let text = ok(&args(true).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text.contains("re-homed on purpose: 1"), "{text}");
    let s3 = Snapshot::parse(&std::fs::read(&third).unwrap()).unwrap();
    assert_eq!(
        s3.home_region(tenant.as_bytes()),
        s3.region_index("eu").unwrap()
    );
}

#[test]
fn format_one_output_and_flags_are_unchanged() {
    let snapshot = example("snapshot.json");
    let s = snapshot.to_str().unwrap();
    let out = ok(&["route", "-s", s, "--json", "--at", "0", "acme-corp"]);
    let line = &lines(&out)[0];
    assert!(line.get("pool").is_none(), "{line}");
    assert_eq!(line["reason"], json!("override"));
    // --gateway-region is ignored for a format-1 snapshot (one region).
    let with = ok(&[
        "route",
        "-s",
        s,
        "--json",
        "--at",
        "0",
        "--path",
        "/x",
        "acme-corp",
    ]);
    assert_eq!(with, out);
    let out = run(&["route", "-s", s, "--pool", "voice", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let spec = example("spec.json");
    let out = run(&[
        "build",
        "--spec",
        spec.to_str().unwrap(),
        "--previous",
        s,
        "--rehome",
        "x",
        "-o",
        "-",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_binary_form_of_a_format_2_snapshot_routes_like_the_json() {
    let dir = scratch();
    let json_path = dir.join("s.json");
    let bin_path = dir.join("s.bin");
    let spec = example("spec-pools.json");
    ok(&[
        "build",
        "--spec",
        spec.to_str().unwrap(),
        "-o",
        json_path.to_str().unwrap(),
        "--binary",
        bin_path.to_str().unwrap(),
    ]);
    let text = ok(&["validate", bin_path.to_str().unwrap()]);
    assert!(text.contains("(binary form)"), "{text}");
    assert!(text.contains("pool voice (paths /voice)"), "{text}");
    let file = dir.join("tenants.txt");
    std::fs::write(&file, tenants(500).join("\n")).unwrap();
    let route = |snapshot: &Path| {
        ok(&[
            "route",
            "-s",
            snapshot.to_str().unwrap(),
            "--path",
            "/voice",
            "--gateway-region",
            "eu",
            "--json",
            "--tenants-file",
            file.to_str().unwrap(),
        ])
    };
    let from_json = route(&json_path);
    assert_eq!(lines(&from_json).len(), 500);
    assert_eq!(route(&bin_path), from_json);
}
