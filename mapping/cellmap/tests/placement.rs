//! `cellmap build --load` and `cellmap drain`, through the built binary:
//! outcomes checked by routing tenants (`cellmap route` and the library),
//! and a real sidecar taking each published drain step.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{stderr, stdout};

use cell_router_mapping::Snapshot;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const EPOCH: &str = "1767225600";

fn cellmap(args: &[&str]) -> Output {
    Command::new(common::binary())
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap()
}

fn cellmap_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut command = Command::new(common::binary());
    command.args(args).env("SOURCE_DATE_EPOCH", EPOCH);
    common::output_with_stdin(command, input)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn snapshot(path: &str) -> Snapshot {
    Snapshot::parse(&std::fs::read(path).unwrap()).unwrap()
}

fn home(s: &Snapshot, tenant: &str) -> String {
    s.cells()[usize::from(
        s.resolve(tenant.as_bytes(), &cell_router_mapping::Draws::default())
            .home,
    )]
    .id
    .clone()
}

const SPEC: &str = r#"{"hash": {"key": "7b1f3c9a2e4d6f80a1c3e5f70b2d4f61"},
  "cells": [{"id": "cell-a"}, {"id": "cell-b"}, {"id": "cell-c"}, {"id": "cell-d"}]}"#;

/// cell-a at 90 % CPU (threshold 70 %): closed. Headroom b 0.5, c 0.2, d 0.8.
const LOAD: &str = r#"{"format": 1, "thresholds": {"cpu": 0.7, "p99_ms": 250},
  "cells": {"cell-a": {"cpu": 0.9, "p99_ms": 120}, "cell-b": {"cpu": 0.35},
            "cell-c": {"cpu": 0.56}, "cell-d": {"cpu": 0.14, "p99_ms": 50}}}"#;

struct Setup {
    dir: PathBuf,
    v1: String,
    v2: String,
    known: Vec<String>,
    report: Value,
    text: String,
}

/// v1 from the spec; v2 with --previous v1, the example's 2,000 known
/// tenants and the load file.
fn setup(name: &str) -> Setup {
    let dir = common::temp_dir(name);
    let spec = write(&dir, "spec.json", SPEC);
    let load = write(&dir, "load.json", LOAD);
    let v1 = dir.join("v1.json").to_str().unwrap().to_string();
    let out = cellmap(&["build", "--spec", &spec, "-o", &v1]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let tenants = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/known-tenants.txt");
    let known: Vec<String> = std::fs::read_to_string(&tenants)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let v2 = dir.join("v2.json").to_str().unwrap().to_string();
    let report_path = dir.join("report.json");
    let out = cellmap(&[
        "build",
        "--spec",
        &spec,
        "--previous",
        &v1,
        "--tenants",
        tenants.to_str().unwrap(),
        "--load",
        &load,
        "-o",
        &v2,
        "--report-json",
        report_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    Setup {
        dir,
        v1,
        v2,
        known,
        report,
        text: stdout(&out),
    }
}

/// The issue's test through the binary: 10,000 new tenants routed by
/// `cellmap route` never land on cell-a and follow headroom; known tenants
/// stay; the JSON and text reports say what the snapshots show.
#[test]
fn build_by_load_places_new_tenants_by_headroom_and_reports_it() {
    let s = setup("build-load");
    let (v1, v2) = (snapshot(&s.v1), snapshot(&s.v2));
    for t in &s.known {
        assert_eq!(home(&v1, t), home(&v2, t), "{t}");
    }

    let ids: Vec<String> = (0..10_000).map(|i| format!("fresh-{i}")).collect();
    let out = cellmap_stdin(
        &["route", "--snapshot", &s.v2, "--json"],
        ids.join("\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut landed: BTreeMap<String, u32> = BTreeMap::new();
    for line in stdout(&out).lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["reason"], json!("slot"));
        *landed
            .entry(line["cell"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(landed.values().sum::<u32>(), 10_000);
    assert_eq!(landed.get("cell-a"), None);
    for (cell, h) in [("cell-b", 0.5), ("cell-c", 0.2), ("cell-d", 0.8)] {
        let got = f64::from(landed[cell]) / 10_000.0;
        assert!((got - h / 1.5).abs() < 0.02, "{cell}: {got}");
    }

    // The JSON report against the snapshots.
    let r = &s.report;
    let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (&a, &b) in v1.slot_table().iter().zip(v2.slot_table()) {
        let (from, to) = (
            &v1.cells()[usize::from(a)].id,
            &v2.cells()[usize::from(b)].id,
        );
        if from != to {
            *pairs.entry((from.clone(), to.clone())).or_default() += 1;
        }
    }
    let reported: BTreeMap<(String, String), u64> = r["slot_moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                (
                    m["from"].as_str().unwrap().to_string(),
                    m["to"].as_str().unwrap().to_string(),
                ),
                m["slots"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reported, pairs);
    assert_eq!(r["slots_moved"].as_u64(), Some(pairs.values().sum::<u64>()));
    let pins = v2.pins();
    assert_eq!(r["pins"].as_u64(), Some(pins.len() as u64));
    for c in r["cells"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let index = v2.cell_index(id).unwrap();
        let after = v2.slot_table().iter().filter(|&&i| i == index).count();
        assert_eq!(c["slots_after"].as_u64(), Some(after as u64), "{id}");
        assert_eq!(c["slots_before"].as_u64(), Some(16_384), "{id}");
        let pinned = pins.values().filter(|p| p.as_str() == id).count();
        assert_eq!(c["pins"].as_u64(), Some(pinned as u64), "{id}");
        assert_eq!(c["pins_added"].as_u64(), Some(pinned as u64), "{id}");
    }
    assert_eq!(
        r["cells"][0]["closed_by"],
        json!([{"dimension": "cpu", "figure": 0.9, "threshold": 0.7}])
    );
    assert_eq!(r["cells"][1]["headroom"], json!(0.5));
    assert_eq!(r["cells"][1]["closed_by"], json!([]));
    assert_eq!(r["by_load"], json!(true));

    // `--report-json -`: the JSON alone on stdout, the text on stderr.
    let again = s.dir.join("again.json");
    let out = cellmap(&[
        "build",
        "--spec",
        s.dir.join("spec.json").to_str().unwrap(),
        "--load",
        s.dir.join("load.json").to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
        "--report-json",
        "-",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["cells"][0]["slots_after"], json!(0));
    assert!(stderr(&out).contains("closed to new tenants: cell-a"));

    // The text report says the same.
    let text = &s.text;
    assert!(
        text.contains("closed to new tenants: cell-a (cpu 0.9 ≥ 0.7)"),
        "{text}"
    );
    for ((from, to), n) in &pairs {
        assert!(text.contains(&format!("{from} → {to} {n}")), "{text}");
    }
    let a_pins = pins.values().filter(|p| *p == "cell-a").count();
    assert!(a_pins > 300, "{a_pins}");
    assert!(
        text.lines().any(|l| l.starts_with("cell-a ")
            && l.contains("0.000 closed")
            && l.contains("16384 (25.00%)")
            && l.ends_with(&format!("{a_pins} (+{a_pins})"))),
        "{text}"
    );
}

/// Bad load files and bad combinations: exit 1 naming the file and the
/// field, or exit 2 for usage; nothing written.
#[test]
fn build_by_load_refusals() {
    let dir = common::temp_dir("build-load-bad");
    let spec = write(&dir, "spec.json", SPEC);
    let out_path = dir.join("out.json");
    let out_s = out_path.to_str().unwrap();
    let mut load: Value = serde_json::from_str(LOAD).unwrap();
    load["cells"]["cell-b"]["cpu"] = json!(35);
    let cases: Vec<(String, &str)> = vec![
        (
            load.to_string(),
            "error: $.cells[\"cell-b\"].cpu: cpu is a fraction",
        ),
        (
            LOAD.replace("\"format\": 1", "\"format\": 2"),
            "error: $.format: unknown format 2",
        ),
        (
            LOAD.replace("\"cell-d\"", "\"cell-x\""),
            "error: $.cells[\"cell-x\"]: unknown cell \"cell-x\": not in the spec",
        ),
        (
            LOAD.replace(", \"cell-d\": {\"cpu\": 0.14, \"p99_ms\": 50}", ""),
            "error: $.cells: no figures for active cell \"cell-d\"",
        ),
        (
            LOAD.replace("\"cell-b\": {\"cpu\": 0.35}", "\"cell-b\": [0.35]"),
            "error: $.cells[\"cell-b\"]: invalid type: sequence, expected a JSON object",
        ),
        (
            LOAD.replace("\"cell-c\": {\"cpu\": 0.56}", "\"cell-b\": {\"cpu\": 0.56}"),
            "error: $.cells[\"cell-b\"]: appears more than once",
        ),
    ];
    for (text, expected) in cases {
        let load_path = write(&dir, "load.json", &text);
        let out = cellmap(&["build", "--spec", &spec, "--load", &load_path, "-o", out_s]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = stderr(&out);
        assert!(err.starts_with(expected), "{err}");
        assert!(err.contains("load.json"), "{err}");
        assert!(!out_path.exists());
    }
    // Every cell closed: nowhere for new tenants; the error is in the spec's terms.
    let all = LOAD
        .replace("0.35", "0.7")
        .replace("0.56", "0.8")
        .replace("0.14", "0.99");
    let load_path = write(&dir, "load.json", &all);
    let out = cellmap(&["build", "--spec", &spec, "--load", &load_path, "-o", out_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("raise a threshold"),
        "{}",
        stderr(&out)
    );

    // Usage: --load with --previous needs --tenants; one stdout only.
    let load_path = write(&dir, "load.json", LOAD);
    let v1 = dir.join("v1.json");
    assert!(
        cellmap(&["build", "--spec", &spec, "-o", v1.to_str().unwrap()])
            .status
            .success()
    );
    let out = cellmap(&[
        "build",
        "--spec",
        &spec,
        "--previous",
        v1.to_str().unwrap(),
        "--load",
        &load_path,
        "-o",
        out_s,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--tenants"), "{}", stderr(&out));
    let out = cellmap(&["build", "--spec", &spec, "-o", "-", "--report-json", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!out_path.exists());
}

/// `cellmap drain` writes a series that `cellmap validate --newer-than`
/// accepts step after step; after the last step no known tenant is on the
/// drained cell and none of the others moved.
#[test]
fn drain_writes_a_valid_series() {
    let s = setup("drain-series");
    let steps = s.dir.join("steps");
    let out = cellmap(&[
        "drain",
        "--snapshot",
        &s.v2,
        "--cell",
        "cell-b",
        "--step",
        "5",
        "--out-dir",
        steps.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("20 steps of 5%"), "{text}");
    let mut names: Vec<String> = std::fs::read_dir(&steps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 20);
    assert_eq!(names[0], "step-001.json");
    let v2 = snapshot(&s.v2);
    let mut version = v2.version();
    let mut on_b = usize::MAX;
    for name in &names {
        let path = steps.join(name);
        let out = cellmap(&[
            "validate",
            "--newer-than",
            &version.to_string(),
            path.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        assert!(stdout(&out).contains("1 draining"), "{}", stdout(&out));
        version += 1;
        let step = snapshot(path.to_str().unwrap());
        assert_eq!(step.version(), version);
        let now = s
            .known
            .iter()
            .filter(|t| home(&step, t) == "cell-b")
            .count();
        assert!(
            now <= on_b,
            "{name}: {now} known tenants on cell-b, {on_b} before"
        );
        on_b = now;
        // The printed table has this step's line.
        assert!(text.lines().any(|l| l.starts_with(name.as_str())), "{text}");
    }
    assert_eq!(on_b, 0);
    let last = snapshot(steps.join("step-020.json").to_str().unwrap());
    for t in &s.known {
        if home(&v2, t) != "cell-b" {
            assert_eq!(home(&last, t), home(&v2, t), "{t}");
        }
    }
    // A second series into the same directory is refused.
    let again = cellmap(&[
        "drain",
        "--snapshot",
        &s.v2,
        "--cell",
        "cell-b",
        "--out-dir",
        steps.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("not empty"));
}

/// `--publish --every` writes each step to the file a real sidecar watches;
/// the sidecar takes every one of them, refusing none.
#[test]
fn drain_publishes_step_by_step_to_a_watching_sidecar() {
    let s = setup("drain-publish");
    let live = s.dir.join("live.json");
    std::fs::copy(&s.v2, &live).unwrap();
    let live_s = live.to_str().unwrap().to_string();
    let sidecar = common::start(&["--file", &live_s]);
    let first = snapshot(&s.v2).version();
    common::expect_version(&sidecar, first, Duration::from_secs(10));

    // Records every version the sidecar serves until it serves the last step.
    let last = first + 5;
    let watcher = {
        let port = sidecar.port;
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !seen.contains(&last) && std::time::Instant::now() < deadline {
                if let Some(v) = common::health(port).and_then(|h| h["version"].as_u64()) {
                    seen.insert(v);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    };
    let steps = s.dir.join("steps");
    let out = cellmap(&[
        "drain",
        "-s",
        &live_s,
        "--cell",
        "cell-c",
        "--step",
        "20",
        "--out-dir",
        steps.to_str().unwrap(),
        "--publish",
        &live_s,
        "--every",
        "600ms",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let seen = watcher.join().unwrap();
    let expected: BTreeSet<u64> = (first..=last).collect();
    assert_eq!(seen, expected, "versions the sidecar served");
    assert_eq!(common::refused(&sidecar), 0);
    assert_eq!(
        std::fs::read(&live).unwrap(),
        std::fs::read(steps.join("step-005.json")).unwrap()
    );
    assert_eq!(stdout(&out).matches("published ").count(), 5);

    // Publishing over a file that is not the drained snapshot is refused
    // before anything is written.
    let out = cellmap(&[
        "drain",
        "-s",
        &s.v2,
        "--cell",
        "cell-c",
        "--step",
        "50",
        "--out-dir",
        s.dir.join("again").to_str().unwrap(),
        "--publish",
        &live_s,
        "--every",
        "0s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("holds version {}, not {first}", first + 5)),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&live).unwrap(),
        std::fs::read(steps.join("step-005.json")).unwrap()
    );
}

#[test]
fn drain_usage_and_refusals() {
    let out = cellmap(&["drain", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    for needle in [
        "--step",
        "--every",
        "--publish",
        "--out-dir",
        "--load",
        "draining",
    ] {
        assert!(stdout(&out).contains(needle), "{needle}");
    }
    assert!(stdout(&cellmap(&["--help"])).contains("drain"));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/snapshot.json");
    let example = example.to_str().unwrap();
    let dir = common::temp_dir("drain-usage");
    let out_dir = dir.join("steps");
    let out_dir = out_dir.to_str().unwrap();
    for args in [
        &[
            "drain",
            "-s",
            example,
            "--cell",
            "cell-a",
            "--out-dir",
            out_dir,
            "--every",
            "1s",
        ][..],
        &[
            "drain",
            "-s",
            example,
            "--cell",
            "cell-a",
            "--out-dir",
            out_dir,
            "--publish",
            "x.json",
        ],
        &[
            "drain",
            "-s",
            example,
            "--cell",
            "cell-a",
            "--out-dir",
            out_dir,
            "--publish",
            "x",
            "--every",
            "soon",
        ],
        &[
            "drain",
            "-s",
            example,
            "--cell",
            "cell-a",
            "--out-dir",
            out_dir,
            "--step",
            "0",
        ],
        &[
            "drain",
            "-s",
            example,
            "--cell",
            "cell-a",
            "--out-dir",
            out_dir,
            "--step",
            "150",
        ],
        &["drain", "-s", example, "--cell", "cell-a"],
    ] {
        let out = cellmap(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    // The example moves globex from cell-a to cell-b: a deliberate placement.
    let out = cellmap(&[
        "drain",
        "-s",
        example,
        "--cell",
        "cell-a",
        "--out-dir",
        out_dir,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: $.moves[0].from: the gradual move of \"globex\""),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("snapshot.json"));
    assert!(!Path::new(out_dir).exists());
}
