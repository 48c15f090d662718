//! The built `cellmap` binary, command by command: outputs, errors and exit
//! codes (0 ok, 1 invalid input, 2 usage).

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

const EXAMPLE_EPOCH: &str = "1767225600"; // 2026-01-01T00:00:00Z

fn example(name: &str) -> PathBuf {
    // The examples belong to the mapping crate, one folder up.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// A fresh scratch directory for one test.
fn scratch() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cellmap-cli-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cellmap(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::binary());
    cmd.args(args).env_remove("SOURCE_DATE_EPOCH");
    cmd
}

fn run(args: &[&str]) -> Output {
    cellmap(args).output().unwrap()
}

fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    common::output_with_stdin(cellmap(args), input)
}

fn example_doc() -> Value {
    serde_json::from_slice(&std::fs::read(example("snapshot.json")).unwrap()).unwrap()
}

fn write_json(dir: &Path, name: &str, doc: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, doc.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["validate", "--help"],
        &["route", "--help"],
        &["diff", "--help"],
        &["build", "--help"],
        &["serve", "--help"],
        &["help", "build"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(stdout(&out).contains("Usage: cellmap"), "{args:?}");
    }
    let top = stdout(&run(&["--help"]));
    for command in ["validate", "route", "diff", "build", "serve"] {
        assert!(top.contains(command), "{command} missing from --help");
    }
    let help = stdout(&run(&["route", "--help"]));
    assert!(
        help.contains("--split-key") && help.contains("--at"),
        "{help}"
    );
    // The sidecar documents its persisted copy and what SIGHUP does.
    let serve = stdout(&run(&["serve", "--help"]));
    for needle in ["--persist", "SIGHUP", "SIGTERM", "--max-connections"] {
        assert!(serve.contains(needle), "{needle} missing from serve --help");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["validate"],
        &["route", "acme"],
        &["diff", "only-one.json"],
        &["build", "--spec", "x.json"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    // --tenants needs --previous.
    let out = run(&[
        "build",
        "--spec",
        example("spec.json").to_str().unwrap(),
        "--tenants",
        "known.txt",
        "-o",
        "out.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--previous"));
}

#[test]
fn validate_accepts_the_example_and_names_the_path_of_a_problem() {
    let ok = run(&["validate", example("snapshot.json").to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let line = stdout(&ok);
    assert!(line.starts_with("ok: version 1, generated_at 2026-01-01T00:00:00Z, 3 cells"));
    assert!(
        line.contains("65536 slots, 1 override, 0 pins, 1 move"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1);

    let dir = scratch();
    let mut doc = example_doc();
    doc["cells"][2]["weight"] = json!(-1);
    let bad = write_json(&dir, "bad.json", &doc);
    let out = run(&["validate", &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: $.cells[2].weight: must be a finite number"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());

    let out = run(&[
        "validate",
        "--newer-than",
        "1",
        example("snapshot.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: $.version: "));

    let out = run(&["validate", dir.join("absent.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("absent.json"));

    let out = run_with_stdin(&["validate", "-"], b"{\"version\": 1}");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: $.generated_at: missing field"));
}

#[test]
fn route_explains_each_tenant() {
    let snap = example("snapshot.json");
    let out = run(&[
        "route",
        "--snapshot",
        snap.to_str().unwrap(),
        "acme-corp",
        "tenant-1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = Snapshot::parse(&std::fs::read(&snap).unwrap()).unwrap();
    let slot = |t: &str| s.resolve(t.as_bytes(), &Draws::default()).slot;
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "acme-corp -> cell-c (slot {}, override, route)",
            slot("acme-corp")
        )
    );
    let r = s.resolve(b"tenant-1", &Draws::default());
    let cell = &s.cells()[usize::from(r.home)].id;
    assert_eq!(
        lines[1],
        format!("tenant-1 -> {cell} (slot {}, slot, route)", r.slot)
    );
}

#[test]
fn route_json_matches_the_library_for_10000_tenants_on_stdin() {
    let snap = example("snapshot.json");
    let s = Snapshot::parse(&std::fs::read(&snap).unwrap()).unwrap();
    let mut tenants: Vec<String> = (0..9_997).map(|i| format!("tenant-{i}")).collect();
    tenants.extend(["acme-corp", "globex", "租户-7"].map(String::from));
    let mut input = tenants.join("\n").into_bytes();
    input.extend_from_slice(b"\r\n\n");
    let out = run_with_stdin(
        &[
            "route",
            "--snapshot",
            snap.to_str().unwrap(),
            "--json",
            "--split-key",
            "user-42",
        ],
        &input,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10_000);
    let id = |i: u16| s.cells()[usize::from(i)].id.as_str();
    for (tenant, line) in tenants.iter().zip(&lines) {
        let r = s.resolve(tenant.as_bytes(), &Draws::unshed(b"user-42", 0));
        assert_eq!(line["tenant"], json!(tenant));
        assert_eq!(line["cell"], json!(id(r.final_cell())));
        assert_eq!(line["home"], json!(id(r.home)));
        assert_eq!(line["slot"], json!(r.slot));
        assert_eq!(line["reason"], json!(r.reason()));
        assert_eq!(line["outcome"], json!("route"));
        assert_eq!(line["split_key"], json!("user-42"));
        assert_eq!(
            line["slot_cell"],
            json!(id(s.slot_table()[r.slot as usize]))
        );
    }
    let globex = &lines[9_998];
    assert_eq!(globex["reason"], json!("split"));
    assert!(globex["moved"].is_boolean());
}

#[test]
fn route_reports_splits_shedding_failover_and_unavailable() {
    let dir = scratch();
    let mut doc = example_doc();
    // cell-a disabled (fails over to cell-b), cell-b draining and shedding
    // everything, cell-c disabled with no failover.
    doc["cells"][0]["state"] = json!("disabled");
    doc["cells"][1]["state"] = json!("draining");
    doc["cells"][1]["shed_ratio"] = json!(1.0);
    doc["cells"][1]["retry_after_s"] = json!(30);
    doc["cells"][2]["state"] = json!("disabled");
    let path = write_json(&dir, "states.json", &doc);
    let s = Snapshot::parse(doc.to_string().as_bytes()).unwrap();
    // Find a tenant on each cell's slots.
    let on = |cell: u16| {
        (0..)
            .map(|i| format!("t{i}"))
            .find(|t| s.resolve(t.as_bytes(), &Draws::default()).home == cell)
            .unwrap()
    };
    let (a, b, c) = (on(0), on(1), on(2));
    let out = run(&["route", "-s", &path, "--json", &a, &b, &c, "acme-corp"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // a: cell-a disabled → cell-b, which sheds.
    assert_eq!(lines[0]["reason"], json!("failover"));
    assert_eq!(lines[0]["home"], json!("cell-a"));
    assert_eq!(lines[0]["cell"], json!("cell-b"));
    assert_eq!(lines[0]["outcome"], json!("shed"));
    assert_eq!(lines[0]["retry_after_s"], json!(30));
    assert_eq!(lines[1]["reason"], json!("slot"));
    assert_eq!(lines[1]["outcome"], json!("shed"));
    assert_eq!(lines[2]["outcome"], json!("unavailable"));
    assert_eq!(lines[2]["cell"], json!("cell-c"));
    assert_eq!(lines[3]["reason"], json!("override"));
    assert_eq!(lines[3]["outcome"], json!("unavailable"));
    let text = stdout(&run(&["route", "-s", &path, &b]));
    assert!(text.contains("shed, retry after 30s"), "{text}");

    // The split follows the split key.
    let snap = example("snapshot.json");
    let s = Snapshot::parse(&std::fs::read(&snap).unwrap()).unwrap();
    let mut seen = [false, false];
    for i in 0..64 {
        let user = format!("user-{i}");
        let r = s.resolve(b"globex", &Draws::unshed(user.as_bytes(), 0));
        let out = run(&[
            "route",
            "-s",
            snap.to_str().unwrap(),
            "--json",
            "--split-key",
            &user,
            "globex",
        ]);
        let line: Value = serde_json::from_slice(&out.stdout).unwrap();
        let moved = line["moved"].as_bool().unwrap();
        assert_eq!(line["cell"], json!(if moved { "cell-b" } else { "cell-a" }));
        assert_eq!(Some(r.home), if moved { Some(1) } else { Some(0) });
        assert!(matches!(r.outcome, Outcome::Route { .. }));
        seen[usize::from(moved)] = true;
        if seen == [true, true] {
            break;
        }
    }
    assert_eq!(
        seen,
        [true, true],
        "a 25% move should send some of 64 users each way"
    );
    // SPEC worked example: user-7 has moved, user-1 has not.
    let text = stdout(&run(&[
        "route",
        "-s",
        snap.to_str().unwrap(),
        "--split-key",
        "user-7",
        "globex",
    ]));
    assert_eq!(
        text.trim_end(),
        "globex -> cell-b (slot 37195, split, route); move cell-a → cell-b at 25%: key \"user-7\" has moved"
    );
    let text = stdout(&run(&[
        "route",
        "-s",
        snap.to_str().unwrap(),
        "--split-key",
        "user-1",
        "globex",
    ]));
    assert!(
        text.contains("globex -> cell-a (slot 37195, split, route)"),
        "{text}"
    );
    assert!(text.contains("has not moved yet"), "{text}");
}

/// Shedding is random per request: route explains it as a probability.
#[test]
fn route_explains_shedding_as_a_probability() {
    let dir = scratch();
    let mut doc = example_doc();
    doc["cells"][0]["state"] = json!("draining");
    doc["cells"][0]["shed_ratio"] = json!(0.3);
    let path = write_json(&dir, "draining.json", &doc);
    let text = stdout(&run(&["route", "-s", &path, "tenant-3"]));
    assert_eq!(
        text.trim_end(),
        "tenant-3 -> cell-a (slot 63212, slot, route); cell-a is draining: it sheds 30% of requests at random (503, retry after 5s)"
    );
    let out = run(&[
        "route",
        "-s",
        &path,
        "--json",
        "--split-key",
        "anything",
        "tenant-3",
    ]);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["outcome"], json!("route"));
    assert_eq!(line["shed_percent"], json!(30.0));
    assert_eq!(line["retry_after_s"], json!(5));
    // Nothing about shedding on an active cell.
    let out = run(&["route", "-s", &path, "--json", "tenant-1"]);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(line.get("shed_percent").is_none(), "{line}");
}

/// A tenant of a ramping cell: its share now, when it is full, and where
/// this key goes, at --at times before, during and after the ramp.
#[test]
fn route_explains_a_ramping_tenant() {
    let dir = scratch();
    let mut doc = example_doc();
    doc["cells"][0]["ramp"] = json!({"start": "2026-01-01T00:00:00Z", "duration_s": 600});
    let path = write_json(&dir, "ramp.json", &doc);
    // SPEC worked example: draw('r', "user-2") = 3044, draw('r', "user-1") = 6978.
    let at = |time: &str, key: &str| {
        let out = run(&[
            "route",
            "-s",
            &path,
            "--at",
            time,
            "--split-key",
            key,
            "tenant-3",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out).trim_end().to_string()
    };
    assert_eq!(
        at("2026-01-01T00:05:00Z", "user-2"),
        "tenant-3 -> cell-a (slot 63212, slot, route); cell-a is ramping up: it takes 50% of keys now, 100% at 2026-01-01T00:10:00Z; key \"user-2\" is back on it"
    );
    assert_eq!(
        at("1767225900", "user-1"),
        "tenant-3 -> cell-b (slot 63212, ramp, route); cell-a is ramping up: it takes 50% of keys now, 100% at 2026-01-01T00:10:00Z; key \"user-1\" still goes to its failover cell-b"
    );
    assert!(at("2026-01-01T00:07:00Z", "user-1").starts_with("tenant-3 -> cell-a (slot 63212, slot, route); cell-a is ramping up: it takes 70% of keys now"));
    assert!(at("2025-12-31T23:00:00Z", "user-2").contains("it takes 0% of keys now"));
    assert_eq!(
        at("2026-01-01T00:10:00Z", "user-1"),
        "tenant-3 -> cell-a (slot 63212, slot, route)"
    );
    // JSON carries the same.
    let out = run(&[
        "route",
        "-s",
        &path,
        "--json",
        "--at",
        "2026-01-01T00:05:00Z",
        "--split-key",
        "user-1",
        "tenant-3",
    ]);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        line["ramp"],
        json!({"cell": "cell-a", "share_percent": 50.0, "kept": false, "full_at": "2026-01-01T00:10:00Z"})
    );
    assert_eq!(
        (line["cell"].clone(), line["reason"].clone()),
        (json!("cell-b"), json!("ramp"))
    );
    // diff shows the ramp that starts.
    let out = run(&["diff", example("snapshot.json").to_str().unwrap(), &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("~ cell-a: active weight 1 failover cell-b ⇒ active weight 1 failover cell-b ramp 0%→100% from 2026-01-01T00:00:00Z over 600s"),
        "{text}"
    );
    let out = run(&[
        "diff",
        "--json",
        example("snapshot.json").to_str().unwrap(),
        &path,
    ]);
    let diff: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        diff["cell_changes"][0]["new"]["ramp"],
        json!({"start": "2026-01-01T00:00:00Z", "duration_s": 600})
    );
    // A bad --at is a usage error.
    let out = run(&["route", "-s", &path, "--at", "noon", "tenant-3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn build_reproduces_the_example_byte_for_byte() {
    let dir = scratch();
    let out_path = dir.join("snapshot.json");
    let out = cellmap(&[
        "build",
        "--spec",
        example("spec.json").to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ])
    .env("SOURCE_DATE_EPOCH", EXAMPLE_EPOCH)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        std::fs::read(example("snapshot.json")).unwrap()
    );
    assert!(stdout(&out).contains("cell-a=16384 cell-b=16384 cell-c=32768"));

    // `-o -` writes the snapshot to stdout and the report to stderr.
    let out = cellmap(&[
        "build",
        "--spec",
        example("spec.json").to_str().unwrap(),
        "-o",
        "-",
    ])
    .env("SOURCE_DATE_EPOCH", EXAMPLE_EPOCH)
    .output()
    .unwrap();
    assert_eq!(out.stdout, std::fs::read(example("snapshot.json")).unwrap());
    assert!(stderr(&out).contains("wrote stdout"));

    let out = cellmap(&[
        "build",
        "--spec",
        example("spec.json").to_str().unwrap(),
        "-o",
        "-",
    ])
    .env("SOURCE_DATE_EPOCH", "yesterday")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SOURCE_DATE_EPOCH"));
}

#[test]
fn build_with_previous_and_tenants_then_diff() {
    let dir = scratch();
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(example("spec.json")).unwrap()).unwrap();
    spec["cells"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "cell-d", "weight": 1}));
    let spec_path = write_json(&dir, "spec2.json", &spec);
    let known_path = example("known-tenants.txt");
    let known: Vec<String> = std::fs::read_to_string(&known_path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(known.len(), 2000);
    let new_path = dir.join("v2.json");
    let prev = example("snapshot.json");
    let out = run(&[
        "build",
        "--spec",
        &spec_path,
        "--previous",
        prev.to_str().unwrap(),
        "--tenants",
        known_path.to_str().unwrap(),
        "-o",
        new_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(report.contains("version 2"), "{report}");
    assert!(report.contains("slots moved: 13107 of 65536"), "{report}");
    let v1 = Snapshot::parse(&std::fs::read(&prev).unwrap()).unwrap();
    let v2 = Snapshot::parse(&std::fs::read(&new_path).unwrap()).unwrap();
    let pins = v2.pins().len();
    assert!(pins > 100);
    assert!(
        report.contains(&format!("pins: {pins} in snapshot ({pins} pinned now")),
        "{report}"
    );
    for t in &known {
        assert_eq!(
            v1.resolve(t.as_bytes(), &Draws::default()).home,
            v2.resolve(t.as_bytes(), &Draws::default()).home,
            "{t}"
        );
    }
    // No temporary file left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // diff: text and JSON.
    let out = run(&["diff", prev.to_str().unwrap(), new_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("version 1 → 2"));
    assert!(
        text.contains("slots moved: 13107 of 65536 (19.9997% of the keyspace)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pins: {pins} added, 0 removed, 0 changed")),
        "{text}"
    );
    assert!(
        text.contains("~ cell-d: absent ⇒ active weight 1"),
        "{text}"
    );
    let out = run(&[
        "diff",
        "--json",
        prev.to_str().unwrap(),
        new_path.to_str().unwrap(),
    ]);
    let diff: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diff["slots_moved"], json!(13107));
    assert_eq!(diff["rehashed"], json!(false));
    let cells = diff["cells"].as_array().unwrap();
    let d = cells.iter().find(|c| c["cell"] == json!("cell-d")).unwrap();
    assert_eq!(
        (d["gained"].as_u64(), d["lost"].as_u64()),
        (Some(13107), Some(0))
    );
    let lost: u64 = cells.iter().map(|c| c["lost"].as_u64().unwrap()).sum();
    assert_eq!(lost, 13107);
    assert_eq!(diff["pins"]["added"].as_array().unwrap().len(), pins);

    // Identical snapshots: nothing moved.
    let out = run(&[
        "diff",
        "--json",
        prev.to_str().unwrap(),
        prev.to_str().unwrap(),
    ]);
    let diff: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diff["slots_moved"], json!(0));
    assert_eq!(diff["keyspace_moved"], json!(0.0));
}

#[test]
fn build_and_diff_refuse_bad_input_with_exit_1() {
    let dir = scratch();
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(example("spec.json")).unwrap()).unwrap();
    spec["cells"][0]["weight"] = json!(-3);
    let spec_path = write_json(&dir, "bad-spec.json", &spec);
    let out = run(&[
        "build",
        "--spec",
        &spec_path,
        "-o",
        dir.join("o.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: $.cells[0].weight: "),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("bad-spec.json"));
    assert!(!dir.join("o.json").exists());

    let mut snap = example_doc();
    snap["slot_table"] = json!("AAAA");
    let bad_snap = write_json(&dir, "bad-snap.json", &snap);
    let good = example("snapshot.json");
    let out = run(&["diff", good.to_str().unwrap(), &bad_snap]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: $.slot_table: "),
        "{}",
        stderr(&out)
    );
    let out = run(&["route", "-s", &bad_snap, "acme"]);
    assert_eq!(out.status.code(), Some(1));

    let known = dir.join("known.txt");
    std::fs::write(&known, "x".repeat(2000)).unwrap();
    let out = run(&[
        "build",
        "--spec",
        example("spec.json").to_str().unwrap(),
        "--previous",
        good.to_str().unwrap(),
        "--tenants",
        known.to_str().unwrap(),
        "-o",
        "-",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
}

/// `--binary-keys hashes`: 10 bytes a tenant, routes as the JSON form,
/// validates and routes with `cellmap`, but cannot be diffed or built on.
#[test]
fn build_writes_the_binary_form_keyed_by_hash() {
    let dir = scratch();
    let json_path = dir.join("snapshot.json");
    let bin_path = dir.join("snapshot.hashed.bin");
    let out = cellmap(&[
        "build",
        "--spec",
        example("spec.json").to_str().unwrap(),
        "-o",
        json_path.to_str().unwrap(),
        "--binary",
        bin_path.to_str().unwrap(),
        "--binary-keys",
        "hashes",
    ])
    .env("SOURCE_DATE_EPOCH", EXAMPLE_EPOCH)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bytes = std::fs::read(&bin_path).unwrap();
    let json = Snapshot::parse(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(
        bytes,
        cell_router_mapping::binary::encode_hashed(&json).unwrap()
    );
    let bin = cell_router_mapping::binary::decode(&bytes).unwrap();
    for tenant in ["tenant-3", "acme-corp", "globex", "nobody"] {
        assert_eq!(
            bin.resolve(tenant.as_bytes(), &Draws::unshed(b"user-5", 0)),
            json.resolve(tenant.as_bytes(), &Draws::unshed(b"user-5", 0))
        );
    }
    let ok = run(&["validate", bin_path.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("1 override, 0 pins, 1 move (binary form keyed by hash)"),
        "{}",
        stdout(&ok)
    );
    let route = run(&[
        "route",
        "--snapshot",
        bin_path.to_str().unwrap(),
        "acme-corp",
    ]);
    let route_json = run(&[
        "route",
        "--snapshot",
        json_path.to_str().unwrap(),
        "acme-corp",
    ]);
    assert_eq!(route.status.code(), Some(0), "{}", stderr(&route));
    assert_eq!(stdout(&route), stdout(&route_json));
    let diff = run(&[
        "diff",
        json_path.to_str().unwrap(),
        bin_path.to_str().unwrap(),
    ]);
    assert_eq!(diff.status.code(), Some(1));
    assert!(
        stderr(&diff).contains("keyed by hash: it carries no tenant ids, so it cannot be diffed"),
        "{}",
        stderr(&diff)
    );
}

#[test]
fn build_writes_the_binary_form_and_validate_reads_both() {
    let dir = scratch();
    let json_path = dir.join("snapshot.json");
    let bin_path = dir.join("snapshot.bin");
    let out = cellmap(&[
        "build",
        "--spec",
        example("spec.json").to_str().unwrap(),
        "-o",
        json_path.to_str().unwrap(),
        "--binary",
        bin_path.to_str().unwrap(),
    ])
    .env("SOURCE_DATE_EPOCH", EXAMPLE_EPOCH)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The JSON output is unchanged by --binary.
    assert_eq!(
        std::fs::read(&json_path).unwrap(),
        std::fs::read(example("snapshot.json")).unwrap()
    );
    let bytes = std::fs::read(&bin_path).unwrap();
    let json = Snapshot::parse(&std::fs::read(&json_path).unwrap()).unwrap();
    let bin = cell_router_mapping::binary::decode(&bytes).unwrap();
    assert_eq!(bin.to_doc(), json.to_doc());
    for tenant in ["tenant-3", "acme-corp", "globex", "nobody"] {
        assert_eq!(
            bin.resolve(tenant.as_bytes(), &Draws::unshed(b"user-5", 0)),
            json.resolve(tenant.as_bytes(), &Draws::unshed(b"user-5", 0))
        );
    }

    let ok = run(&["validate", bin_path.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let line = stdout(&ok);
    assert!(line.starts_with("ok: version 1, generated_at 2026-01-01T00:00:00Z, 3 cells"));
    assert!(
        line.contains("1 override, 0 pins, 1 move (binary form)"),
        "{line}"
    );
    let newer = run(&["validate", "--newer-than", "1", bin_path.to_str().unwrap()]);
    assert_eq!(newer.status.code(), Some(1));

    // One flipped byte: refused, with the reason.
    let mut bad = bytes.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    let bad_path = dir.join("bad.bin");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = run(&["validate", bad_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("binary:checksum"), "{}", stderr(&out));
}
