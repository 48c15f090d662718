//! Per-request cost of the real filter `.wasm` in the wasmtime host, and the
//! cost of applying a 1,000,000-override snapshot inside the VM.
//!
//! `cargo bench -p cell-router-tests --bench wasm_request [-- --quick] [-- --json]`
//!
//! For each scenario: wall time per request through the host (p50, p99,
//! mean), the time inside the plugin's callbacks (what Envoy would spend in
//! the filter, host functions included), and host calls per request.

use cell_router_mapping::SnapshotDoc;
use cell_router_tests::fixtures::{Config, bearer, cell, snapshot, snapshot_with, token};
use cell_router_tests::host::{Exchange, Host, HostOptions, Plugin, Request};
use cell_router_tests::tokens::Alg;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Args {
    quick: bool,
    json: bool,
}

fn args() -> Args {
    let all: Vec<String> = std::env::args().collect();
    Args {
        quick: all.iter().any(|a| a == "--quick"),
        json: all.iter().any(|a| a == "--json"),
    }
}

#[derive(Default)]
struct Sample {
    wall: Vec<Duration>,
    vm: Vec<Duration>,
    foreign: Vec<Duration>,
    host_calls: Vec<u64>,
    calls_by_name: BTreeMap<&'static str, u64>,
}

impl Sample {
    fn add(&mut self, wall: Duration, r: &Exchange) {
        self.wall.push(wall);
        self.vm.push(r.vm_time);
        self.foreign
            .push(r.foreign_calls.iter().map(|c| c.elapsed).sum());
        self.host_calls.push(r.host_call_total());
        for (name, n) in &r.host_calls {
            *self.calls_by_name.entry(name).or_default() += n;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Row {
    name: String,
    n: usize,
    wall_p50: f64,
    wall_p99: f64,
    wall_mean: f64,
    vm_p50: f64,
    vm_p99: f64,
    vm_mean: f64,
    foreign_mean: f64,
    host_calls: f64,
    calls_by_name: BTreeMap<&'static str, f64>,
}

fn summarize(name: &str, s: Sample) -> Row {
    let n = s.wall.len();
    let mut wall = s.wall.clone();
    let mut vm = s.vm.clone();
    wall.sort();
    vm.sort();
    let mean = |v: &[Duration]| micros(v.iter().sum::<Duration>()) / v.len().max(1) as f64;
    Row {
        name: name.to_string(),
        n,
        wall_p50: micros(percentile(&wall, 0.5)),
        wall_p99: micros(percentile(&wall, 0.99)),
        wall_mean: mean(&wall),
        vm_p50: micros(percentile(&vm, 0.5)),
        vm_p99: micros(percentile(&vm, 0.99)),
        vm_mean: mean(&vm),
        foreign_mean: mean(&s.foreign),
        host_calls: s.host_calls.iter().sum::<u64>() as f64 / n.max(1) as f64,
        calls_by_name: s
            .calls_by_name
            .into_iter()
            .map(|(k, v)| (k, v as f64 / n.max(1) as f64))
            .collect(),
    }
}

fn router(config: Config) -> Host {
    let mut host = Host::new().expect("start the filter VM");
    host.configure(config.fallback(&snapshot(1)).json())
        .expect("configure");
    host
}

/// Sends `requests` and measures each; every request must be forwarded.
fn measure(host: &mut Host, requests: impl IntoIterator<Item = Request>) -> Sample {
    let mut sample = Sample::default();
    for request in requests {
        let started = Instant::now();
        let r = host.send(request).expect("request");
        let wall = started.elapsed();
        assert!(
            r.forwarded(),
            "not forwarded: {:?} {}",
            r.status(),
            r.json()
        );
        sample.add(wall, &r);
    }
    sample
}

fn jwt_request(token: &str) -> Request {
    Request::get("/v1/sms").header("authorization", &bearer(token))
}

/// Unique tokens (distinct tenants), minted before measuring.
fn unique_tokens(alg: Alg, now: u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| token(alg, now, &format!("tenant-{i}")))
        .collect()
}

fn cached(alg: Alg, n: usize) -> Row {
    let mut host = router(Config::jwt(&[alg]));
    let t = token(alg, host.now_unix(), "acme");
    measure(&mut host, (0..200).map(|_| jwt_request(&t)));
    let s = measure(&mut host, (0..n).map(|_| jwt_request(&t)));
    summarize(&format!("cached token ({})", alg.name()), s)
}

/// Unique tokens; `host_verify` offers Envoy's `verify_signature` (RS*/ES*
/// signatures are then checked outside the VM, by the test host's stand-in
/// for BoringSSL, so that part of the time is only indicative).
fn uncached(alg: Alg, n: usize, host_verify: bool) -> Row {
    let mut options = HostOptions::default();
    if !host_verify {
        options.foreign_functions.remove("verify_signature");
    }
    let mut host = Host::with_options(options).expect("start the filter VM");
    host.configure(Config::jwt(&[alg]).fallback(&snapshot(1)).json())
        .expect("configure");
    let warm = unique_tokens(alg, host.now_unix(), 50.min(n));
    measure(&mut host, warm.iter().map(|t| jwt_request(t)));
    let tokens: Vec<String> = (0..n)
        .map(|i| token(alg, host.now_unix(), &format!("fresh-{i}")))
        .collect();
    let s = measure(&mut host, tokens.iter().map(|t| jwt_request(t)));
    let how = if host_verify
        && matches!(
            alg,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::ES256 | Alg::ES384
        ) {
        ", host verify_signature"
    } else {
        ""
    };
    summarize(&format!("unique token ({}{how})", alg.name()), s)
}

fn trust_header(n: usize) -> Row {
    let mut host = router(Config::trust_header("x-jwt-tenant"));
    let request =
        |i: usize| Request::get("/v1/sms").header("x-jwt-tenant", &format!("tenant-{}", i % 1000));
    measure(&mut host, (0..200).map(request));
    let s = measure(&mut host, (0..n).map(request));
    summarize("trust_header (1,000 tenants)", s)
}

/// A snapshot with `n` overrides over three cells.
fn big_snapshot(version: u64, n: usize) -> SnapshotDoc {
    let mut doc = snapshot_with(
        version,
        vec![cell("cell-a"), cell("cell-b"), cell("cell-c")],
    );
    let cells = ["cell-a", "cell-b", "cell-c"];
    for i in 0..n {
        doc.overrides
            .insert(format!("tenant-{i:07}"), cells[i % 3].to_string());
    }
    doc
}

struct SnapshotRow {
    overrides: usize,
    body_bytes: usize,
    apply: Duration,
    memory_before: usize,
    memory_after: usize,
    memory_after_second: usize,
    second_apply: Duration,
}

fn apply_big_snapshot(n: usize) -> SnapshotRow {
    let mut host = Host::new().expect("start the filter VM");
    host.configure(Config::jwt(&[Alg::HS256]).sidecar().json())
        .expect("configure");
    let next_call = |host: &mut Host| loop {
        if let Some(call) = host.pending_http_calls().into_iter().next() {
            break call;
        }
        host.advance(Duration::from_millis(100)).expect("tick");
    };
    let doc = big_snapshot(1, n);
    let body = serde_json::to_vec(&doc).expect("serialize");
    let memory_before = host.memory_bytes();

    let call = next_call(&mut host);
    let started = Instant::now();
    host.respond_http_call(call.token, 200, &[], &body)
        .expect("deliver the snapshot");
    let apply = started.elapsed();
    let memory_after = host.memory_bytes();
    // The override really is in force.
    let t = token(Alg::HS256, host.now_unix(), "tenant-0000004");
    let r = host.send(jwt_request(&t)).expect("request");
    assert_eq!(r.cell(), Some("cell-b"), "{}", r.json());
    assert_eq!(r.header("x-cell-snapshot"), Some("1"));

    // A second one replaces it: memory after the old one is dropped.
    let doc = big_snapshot(2, n);
    let body = serde_json::to_vec(&doc).expect("serialize");
    let call = next_call(&mut host);
    let started = Instant::now();
    host.respond_http_call(call.token, 200, &[], &body)
        .expect("deliver the snapshot");
    let second_apply = started.elapsed();
    let r = host.send(jwt_request(&t)).expect("request");
    assert_eq!(r.header("x-cell-snapshot"), Some("2"));
    SnapshotRow {
        overrides: n,
        body_bytes: body.len(),
        apply,
        memory_before,
        memory_after,
        memory_after_second: host.memory_bytes(),
        second_apply,
    }
}

fn main() {
    let args = args();
    let (n_cached, n_unique) = if args.quick {
        (500, 50)
    } else {
        (20_000, 2_000)
    };
    let overrides = if args.quick { 10_000 } else { 1_000_000 };

    let compile = Instant::now();
    let plugin = Plugin::filter().expect("the filter .wasm");
    let compile = compile.elapsed();

    let mut rows = vec![
        cached(Alg::HS256, n_cached),
        cached(Alg::RS256, n_cached),
        trust_header(n_cached),
    ];
    for alg in [
        Alg::HS256,
        Alg::RS256,
        Alg::PS256,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ] {
        rows.push(uncached(alg, n_unique, false));
    }
    for alg in [Alg::RS256, Alg::ES256, Alg::ES384] {
        rows.push(uncached(alg, n_unique, true));
    }
    let big = apply_big_snapshot(overrides);

    let mut idle = router(Config::jwt(&[Alg::RS256]));
    let idle_memory = idle.memory_bytes();
    let t = token(Alg::RS256, idle.now_unix(), "acme");
    idle.send(jwt_request(&t)).expect("request");

    if args.json {
        let out = json!({
            "module": plugin.name(),
            "module_compile_ms": compile.as_millis() as u64,
            "requests": rows.iter().map(|r| json!({
                "scenario": r.name, "n": r.n,
                "wall_us": {"p50": r.wall_p50, "p99": r.wall_p99, "mean": r.wall_mean},
                "vm_us": {"p50": r.vm_p50, "p99": r.vm_p99, "mean": r.vm_mean},
                "foreign_functions_us_mean": r.foreign_mean,
                "host_calls_per_request": r.host_calls,
                "host_calls_by_name": r.calls_by_name,
            })).collect::<Vec<_>>(),
            "snapshot": {
                "overrides": big.overrides, "body_bytes": big.body_bytes,
                "apply_ms": big.apply.as_secs_f64() * 1e3,
                "second_apply_ms": big.second_apply.as_secs_f64() * 1e3,
                "vm_memory_before_bytes": big.memory_before,
                "vm_memory_after_bytes": big.memory_after,
                "vm_memory_after_second_bytes": big.memory_after_second,
            },
            "vm_memory_configured_bytes": idle_memory,
        });
        println!("{out:#}");
        return;
    }

    println!("# Filter cost per request in the wasmtime host");
    println!();
    println!(
        "module: {} (compiled or loaded in {compile:?})",
        plugin.name()
    );
    println!();
    println!(
        "| scenario | n | wall p50 µs | wall p99 µs | in VM p50 µs | in VM p99 µs | in VM mean µs | of which in foreign functions µs | host calls/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.name,
            r.n,
            r.wall_p50,
            r.wall_p99,
            r.vm_p50,
            r.vm_p99,
            r.vm_mean,
            r.foreign_mean,
            r.host_calls
        );
    }
    println!();
    if let Some(r) = rows.first() {
        let calls: Vec<String> = r
            .calls_by_name
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        println!("host calls per request ({}): {}", r.name, calls.join(", "));
        println!();
    }
    let mb = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "snapshot with {} overrides ({:.1} MB JSON): applied in {:.0} ms (second swap {:.0} ms); VM memory {:.1} MB before, {:.1} MB after, {:.1} MB after the second",
        big.overrides,
        mb(big.body_bytes),
        big.apply.as_secs_f64() * 1e3,
        big.second_apply.as_secs_f64() * 1e3,
        mb(big.memory_before),
        mb(big.memory_after),
        mb(big.memory_after_second),
    );
    println!(
        "VM memory once configured (small snapshot): {:.1} MB",
        mb(idle_memory)
    );
}
