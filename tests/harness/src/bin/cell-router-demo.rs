//! `make demo`: the whole path on one machine, with real requests.
//!
//! Starts three cell backends, the `cellmap serve` sidecar and Envoy 1.40
//! (concurrency 2) with the filter, then shows: tenants routed to cells (and
//! that `cellmap route` agrees), an override moving a tenant, rejected tokens,
//! a spoofed cell header ignored, a draining cell shedding its share, a
//! gradual move that keeps each user on one side, a cell ramping back after
//! an outage, and snapshots published through the sidecar taking effect
//! live; then two regional gateways (US and EU, service pools `/voice` and
//! `/sms`): an EU tenant at the US gateway served by an EU cell through the
//! EU gateway, one tenant's two pools on two cells, and an EU region with
//! every cell disabled answering 503 without touching a US cell (`regions`
//! runs that part alone). Every step is checked; the demo exits non-zero if
//! one fails.
//!
//! `up` leaves the stack running on the default ports for curl; `down` stops it.

use anyhow::{Context, Result, bail};
use cell_router_harness::e2e::{self, Gateway, Reply, client, next_snapshot, publish};
use cell_router_kit::fixtures::{
    AUDIENCE, ISSUER, TENANT_CLAIM, bearer, metric, token_builder, unix_now,
};
use cell_router_kit::tokens::{Alg, TokenBuilder};
use cell_router_mapping::{Draws, Snapshot};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "The cell-router demo: a gateway, its sidecar and three cells on this machine")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo end to end, print a summary, stop everything (default).
    Run,
    /// Start the stack on the default ports and leave it running.
    Up,
    /// Stop a stack started with `up`.
    Down,
    /// Only the two-region part: a US and an EU gateway on this machine.
    Regions,
}

const TENANTS: [&str; 6] = [
    "acme-corp",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark-industries",
];

fn main() {
    let args = Args::parse();
    let result = match args.command.unwrap_or(Command::Run) {
        Command::Run => run(),
        Command::Up => up(),
        Command::Down => down(),
        Command::Regions => regions_only(),
    };
    if let Err(err) = result {
        eprintln!("\ndemo failed: {err:#}");
        std::process::exit(1);
    }
}

fn demo_dir() -> PathBuf {
    e2e::repo_root().join(".work/demo")
}

fn fresh_demo_dir() -> Result<PathBuf> {
    let dir = demo_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn example_snapshot() -> Result<Vec<u8>> {
    let path = e2e::repo_root().join("mapping/examples/snapshot.json");
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// A real RS256 token for `tenant`, as an identity provider would issue.
fn token(tenant: &str) -> String {
    bearer(&token_builder(Alg::RS256, unix_now(), tenant).sign())
}

/// The same for one user (`sub`) of `tenant`: moves and ramps split by it.
fn user_token(tenant: &str, user: &str) -> String {
    bearer(
        &token_builder(Alg::RS256, unix_now(), tenant)
            .subject(user)
            .sign(),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `cellmap route` in text form, as an operator would run it.
fn cellmap_route_text(snapshot: &Path, args: &[&str]) -> Result<String> {
    let output = std::process::Command::new(e2e::cellmap_bin()?)
        .arg("route")
        .arg("--snapshot")
        .arg(snapshot)
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "cellmap route failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim_end().to_string())
}

fn call(
    gateway: &Gateway,
    agent: &ureq::Agent,
    tenant: &str,
    extra: &[(&str, &str)],
) -> Result<Reply> {
    let auth = token(tenant);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    e2e::get(agent, &gateway.envoy.url("/"), &headers)
}

fn served_cell(reply: &Reply) -> String {
    reply
        .json()
        .ok()
        .and_then(|b| b["cell"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {}", reply.status))
}

struct Summary {
    lines: Vec<(String, bool)>,
}

impl Summary {
    fn check(&mut self, what: impl Into<String>, ok: bool) {
        let what = what.into();
        println!("  {} {what}", if ok { "✓" } else { "✗" });
        self.lines.push((what, ok));
    }
}

fn heading(title: &str) {
    println!("\n== {title}");
}

fn run() -> Result<()> {
    let dir = fresh_demo_dir()?;
    println!(
        "Starting 3 cell backends, the cellmap sidecar and Envoy 1.40 (concurrency 2) in {}",
        dir.display()
    );
    let base = example_snapshot()?;
    let gateway = Gateway::start_in(dir, &base, 2, false)?;
    println!(
        "Gateway on {} (admin :{}), sidecar on :{}, snapshot version 1",
        gateway.envoy.url("/"),
        gateway.envoy.admin_port,
        gateway.sidecar.port
    );
    let mut summary = Summary { lines: Vec::new() };
    let agent = client();

    heading("1. Tenants → cells (RS256 tokens through Envoy; `cellmap route` for comparison)");
    let names: Vec<String> = TENANTS.iter().map(|t| t.to_string()).collect();
    let expected = e2e::cellmap_route(&gateway.source, &names)?;
    println!(
        "  {:<18} {:<8} {:<8} {:<9} reason",
        "tenant", "served", "cellmap", "snapshot"
    );
    let mut agree = true;
    for (tenant, want) in names.iter().zip(&expected) {
        let reply = call(&gateway, &agent, tenant, &[])?;
        let cell = served_cell(&reply);
        let reason = want["reason"].as_str().unwrap_or("?");
        let want_cell = want["cell"].as_str().unwrap_or("?");
        // These tokens carry no subject: a move splits them by tenant, as
        // `cellmap route` does without --split-key.
        agree &= cell == want_cell;
        let snapshot = reply
            .header("x-cell-snapshot")
            .map(str::to_string)
            .unwrap_or_else(|| {
                reply
                    .json()
                    .ok()
                    .and_then(|b| b["snapshot"].as_str().map(str::to_string))
                    .unwrap_or_default()
            });
        println!("  {tenant:<18} {cell:<8} {want_cell:<8} {snapshot:<9} {reason}");
    }
    summary.check(
        "every tenant served by the cell `cellmap route` gives",
        agree,
    );

    heading("2. An override moves a tenant (snapshot 2 published through the sidecar)");
    let mover = "initech";
    let before = served_cell(&call(&gateway, &agent, mover, &[])?);
    let target = if before == "cell-a" {
        "cell-b"
    } else {
        "cell-a"
    };
    let v2 = next_snapshot(&base, |s| s["overrides"][mover] = target.into())?;
    let published = Instant::now();
    publish(&gateway.source, &v2)?;
    let live = gateway.wait_for_version(2, Duration::from_secs(10));
    let took = published.elapsed();
    let after = served_cell(&call(&gateway, &agent, mover, &[])?);
    println!("  {mover}: {before} → {after} (override {mover} → {target})");
    summary.check(
        format!("override moved {mover} from {before} to {after}"),
        after == target,
    );
    summary.check(
        format!(
            "snapshot 2 live on every worker {} ms after the file was written",
            took.as_millis()
        ),
        live,
    );

    heading("3. Rejected tokens");
    let url = gateway.envoy.url("/");
    let none = e2e::get(&agent, &url, &[])?;
    println!("  no token          → {} {}", none.status, none.body);
    let forged = bearer(
        &token_builder(Alg::RS256, unix_now(), "acme-corp")
            .signed_by_other_key()
            .sign(),
    );
    let bad = e2e::get(&agent, &url, &[("authorization", &forged)])?;
    println!("  wrong signature   → {} {}", bad.status, bad.body);
    let expired = bearer(
        &token_builder(Alg::RS256, unix_now() - 7200, "acme-corp")
            .expires_at(unix_now() - 3600)
            .sign(),
    );
    let old = e2e::get(&agent, &url, &[("authorization", &expired)])?;
    println!("  expired           → {} {}", old.status, old.body);
    let other_aud = bearer(
        &TokenBuilder::new(Alg::RS256, unix_now())
            .issuer(ISSUER)
            .audience("billing")
            .claim(TENANT_CLAIM, "acme-corp")
            .sign(),
    );
    let aud = e2e::get(&agent, &url, &[("authorization", &other_aud)])?;
    println!(
        "  audience billing  → {} {} (allowed: {AUDIENCE})",
        aud.status, aud.body
    );
    summary.check(
        "no token, forged and expired tokens get 401; a foreign audience 403",
        none.status == 401 && bad.status == 401 && old.status == 401 && aud.status == 403,
    );

    heading("4. A spoofed cell header is ignored");
    let home = served_cell(&call(&gateway, &agent, "acme-corp", &[])?);
    let spoof_to = if home == "cell-a" { "cell-b" } else { "cell-a" };
    let spoofed = call(&gateway, &agent, "acme-corp", &[("x-cell-id", spoof_to)])?;
    println!(
        "  acme-corp sends x-cell-id: {spoof_to} → served by {}",
        served_cell(&spoofed)
    );
    summary.check(
        "the client's x-cell-id is replaced by the router's",
        served_cell(&spoofed) == home,
    );

    heading("5. A draining cell sheds its share (503 + Retry-After)");
    let drained = "cell-b";
    let v3 = next_snapshot(&v2, |s| {
        if let Some(cells) = s["cells"].as_array_mut() {
            for cell in cells.iter_mut().filter(|c| c["id"] == drained) {
                cell["state"] = "draining".into();
                cell["shed_ratio"] = 0.3.into();
                cell["retry_after_s"] = 15.into();
            }
        }
    })?;
    publish(&gateway.source, &v3)?;
    let v3_live = gateway.wait_for_version(3, Duration::from_secs(10));
    let probe: Vec<String> = (0..200).map(|i| format!("tenant-{i}")).collect();
    let routes = e2e::cellmap_route(&gateway.source, &probe)?;
    let in_b = routes
        .iter()
        .find(|r| r["home"] == drained && r["reason"] == "slot")
        .and_then(|r| r["tenant"].as_str())
        .unwrap_or("tenant-0")
        .to_string();
    let (mut shed, mut served, mut retry_after) = (0u32, 0u32, None);
    let total = 300;
    // One token, as a real client would reuse it (the filter caches it).
    let auth = token(&in_b);
    for _ in 0..total {
        let reply = e2e::get(&agent, &url, &[("authorization", &auth)])?;
        match reply.status {
            503 => {
                shed += 1;
                retry_after = reply.header("retry-after").map(str::to_string);
            }
            200 => served += 1,
            other => bail!("unexpected HTTP {other} while draining: {}", reply.body),
        }
    }
    let share = f64::from(shed) / f64::from(total);
    println!(
        "  {in_b} (in {drained}, shed_ratio 0.3): {served} served, {shed} shed = {:.1} % (Retry-After: {})",
        share * 100.0,
        retry_after.as_deref().unwrap_or("-")
    );
    summary.check(
        format!(
            "{drained} sheds {:.1} % of requests (target 30 %), each with Retry-After: 15",
            share * 100.0
        ),
        v3_live && (0.22..=0.38).contains(&share) && retry_after.as_deref() == Some("15"),
    );

    heading("6. A gradual move keeps each user on one side (split by the token's sub)");
    let v4 = sticky_move_step(&gateway, &agent, &v3, &mut summary)?;

    heading("7. A cell ramps back after an outage (10 s, computed by every worker from its clock)");
    ramp_step(&gateway, &v4, &mut summary)?;

    heading("8. Envoy's stats count each request the demo sends, per cell");
    metrics_step(&gateway, &agent, &mut summary)?;

    heading("9. Two regions: a US and an EU gateway, service pools, a tenant homed in the EU");
    regions_step(&demo_dir().join("regions"), &mut summary)?;

    heading("Summary");
    let failed = summary.lines.iter().filter(|(_, ok)| !ok).count();
    for (what, ok) in &summary.lines {
        println!("  {} {what}", if *ok { "✓" } else { "✗" });
    }
    let mut gateway = gateway;
    let stop = gateway.envoy.stop();
    drop(gateway);
    println!(
        "\nStopped everything the demo started (Envoy drained in {} ms: {} request(s) in flight at the drain, {} cut).",
        stop.took.as_millis(),
        stop.in_flight_at_drain.max(0),
        stop.in_flight_at_term
    );
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// `make demo-regions`: step 9 alone.
fn regions_only() -> Result<()> {
    let dir = fresh_demo_dir()?.join("regions");
    let mut summary = Summary { lines: Vec::new() };
    heading("Two regions: a US and an EU gateway, service pools, a tenant homed in the EU");
    regions_step(&dir, &mut summary)?;
    let failed = summary.lines.iter().filter(|(_, ok)| !ok).count();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// Two gateways (region us, region eu), each with a voice and an sms cell,
/// each the other's `region|<id>` cluster; a format-2 snapshot homes
/// acme-gmbh in the EU and acme-inc in the US. Shows the forward, one tenant's
/// two pools on two cells, and an EU region with every cell disabled.
fn regions_step(dir: &Path, summary: &mut Summary) -> Result<()> {
    use e2e::regions::{FORWARDED_BY_HEADER, RegionLayout, Served, TwoRegions};
    let mut layout = RegionLayout::voice_and_sms(1, 1);
    layout
        .region_overrides
        .insert("acme-gmbh".into(), "eu".into());
    layout
        .region_overrides
        .insert("acme-inc".into(), "us".into());
    std::fs::create_dir_all(dir)?;
    let regions = TwoRegions::start_in(dir, &layout, 2)?;
    println!(
        "  US gateway {} (cells {}), EU gateway {} (cells {}); pools voice (/voice) and sms (/sms)",
        regions.us.envoy.url("/"),
        layout.cells_in("us").join(", "),
        regions.eu.envoy.url("/"),
        layout.cells_in("eu").join(", ")
    );
    let agent = client();
    let cell_of = |reply: &Reply| {
        Served::of(reply).map_or_else(
            || format!("HTTP {} {}", reply.status, reply.body.trim()),
            |s| s.cell,
        )
    };

    // An EU tenant at the US gateway.
    let us_voice_before = regions.us.upstream_requests("voice-us-1")?;
    let reply = regions.us.call(&agent, "acme-gmbh", "/voice/calls", &[])?;
    let served = Served::of(&reply);
    let via = served
        .as_ref()
        .and_then(|s| s.header(FORWARDED_BY_HEADER).map(str::to_string));
    println!(
        "  acme-gmbh (homed eu) → US gateway /voice/calls → {} (the cell saw {FORWARDED_BY_HEADER}: {})",
        cell_of(&reply),
        via.as_deref().unwrap_or("-")
    );
    let route = cellmap_route_text(
        &regions.us.source,
        &[
            "--path",
            "/voice/calls",
            "--gateway-region",
            "us",
            "acme-gmbh",
        ],
    )?;
    println!("  cellmap route --path /voice/calls --gateway-region us acme-gmbh:\n    {route}");
    summary.check(
        "an EU tenant at the US gateway is served by an EU cell, forwarded by the US gateway",
        served.as_ref().is_some_and(|s| s.cell == "voice-eu-1") && via.as_deref() == Some("us"),
    );
    summary.check(
        "the US gateway counted it (cell_router.forwarded.eu = 1), no US cell saw it",
        regions.us.metric("cell_router.forwarded.eu")? == 1
            && regions.us.upstream_requests("voice-us-1")? == us_voice_before,
    );

    // One tenant, two pools.
    let voice = cell_of(&regions.us.call(&agent, "acme-inc", "/voice/x", &[])?);
    let sms = cell_of(&regions.us.call(&agent, "acme-inc", "/sms/x", &[])?);
    println!("  acme-inc (homed us): /voice/x → {voice}, /sms/x → {sms}");
    summary.check(
        "/voice and /sms of one tenant reach different cells (voice-us-1, sms-us-1)",
        voice == "voice-us-1" && sms == "sms-us-1",
    );

    // Every EU cell disabled.
    let mut down = layout.clone();
    down.version = 2;
    down.set_region_state("eu", "disabled");
    regions.publish_until(&down, |gateway, reply| {
        gateway.region == "eu"
            && reply.status == 503
            && reply.json().is_ok_and(|b| b["error"] == "cell_unavailable")
    })?;
    let us_cells = layout.cells_in("us");
    let us_before: i64 = us_cells
        .iter()
        .map(|c| regions.us.upstream_requests(c))
        .sum::<Result<i64>>()?;
    let mut refused = true;
    for gateway in regions.gateways() {
        for path in ["/voice/x", "/sms/x"] {
            let reply = gateway.call(&agent, "acme-gmbh", path, &[])?;
            println!(
                "  EU disabled: acme-gmbh → {} gateway {path} → {} {}, Retry-After: {}",
                gateway.region,
                reply.status,
                reply
                    .json()
                    .ok()
                    .and_then(|b| b["error"].as_str().map(str::to_string))
                    .unwrap_or_default(),
                reply.header("retry-after").unwrap_or("-")
            );
            refused &= reply.status == 503 && reply.header("retry-after").is_some();
        }
    }
    let us_after: i64 = us_cells
        .iter()
        .map(|c| regions.us.upstream_requests(c))
        .sum::<Result<i64>>()?;
    summary.check(
        "an EU region with every cell disabled answers 503 + Retry-After on both gateways",
        refused,
    );
    summary.check("and never touches a US cell", us_after == us_before);
    Ok(())
}

/// cell-b serves again; globex moves cell-a → cell-b at 25 %, then 60 %: 20 users send 3
/// requests each (different request ids); every user stays on one side,
/// agrees with the library, and nobody moved goes back when the percent
/// rises. Returns the last snapshot published.
fn sticky_move_step(
    gateway: &Gateway,
    agent: &ureq::Agent,
    previous: &[u8],
    summary: &mut Summary,
) -> Result<Vec<u8>> {
    let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    let tokens: Vec<String> = users.iter().map(|u| user_token("globex", u)).collect();
    let mut sides: Vec<Vec<String>> = Vec::new();
    let mut sticky = true;
    let mut agree = true;
    let mut last = previous.to_vec();
    for percent in [25, 60] {
        let version = e2e::snapshot_version(&last)? + 1;
        let next = next_snapshot(&last, |s| {
            // cell-b serves again (step 5 drained it).
            s["cells"][1]["state"] = "active".into();
            s["cells"][1]["shed_ratio"] = 0.into();
            if let Some(moves) = s["moves"].as_array_mut() {
                for m in moves.iter_mut().filter(|m| m["tenant"] == "globex") {
                    m["percent"] = percent.into();
                }
            }
        })?;
        publish(&gateway.source, &next)?;
        if !gateway.wait_for_version(version, Duration::from_secs(10)) {
            bail!("snapshot {version} never applied");
        }
        let library = Snapshot::parse(&next).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut now_on = Vec::new();
        for (user, token) in users.iter().zip(&tokens) {
            let mut seen = Vec::new();
            for id in ["r-1", "r-2", "r-3"] {
                let reply = e2e::get(
                    agent,
                    &gateway.envoy.url("/"),
                    &[("authorization", token), ("x-request-id", id)],
                )?;
                seen.push(served_cell(&reply));
            }
            sticky &= seen.iter().all(|c| *c == seen[0]);
            let want = library.resolve(b"globex", &Draws::unshed(user.as_bytes(), now_ms()));
            let want = library.cell(want.home).map_or("?", |c| c.id.as_str());
            agree &= seen[0] == want;
            now_on.push(seen[0].clone());
        }
        let on_b = now_on.iter().filter(|c| *c == "cell-b").count();
        println!(
            "  {percent:>2} %: {}  ({on_b} of 20 users on cell-b)",
            now_on
                .iter()
                .map(|c| if c == "cell-b" { "B" } else { "a" })
                .collect::<String>()
        );
        sides.push(now_on);
        last = next;
    }
    let back = sides[0]
        .iter()
        .zip(&sides[1])
        .filter(|(before, after)| *before == "cell-b" && *after == "cell-a")
        .count();
    let explained = cellmap_route_text(&gateway.source, &["--split-key", "user-0", "globex"])?;
    println!("  $ cellmap route --split-key user-0 globex\n  {explained}");
    summary.check(
        "each user of a gradual move stays on one side for every request, as the library says",
        sticky && agree,
    );
    summary.check(
        format!("raising the move from 25 % to 60 % sent {back} users back (must be 0)"),
        back == 0,
    );
    Ok(last)
}

/// cell-a goes down (its tenants fail over to cell-b), then comes back with
/// a 10-second linear ramp: 40 users of a cell-a tenant are sampled about
/// once a second; the share back on cell-a only rises, from 0 to all.
fn ramp_step(gateway: &Gateway, previous: &[u8], summary: &mut Summary) -> Result<()> {
    let tenant = "tenant-3"; // on cell-a's slots (SPEC worked example)
    let down_version = e2e::snapshot_version(previous)? + 1;
    let down = next_snapshot(previous, |s| {
        if let Some(cells) = s["cells"].as_array_mut() {
            for cell in cells.iter_mut() {
                cell["state"] = "active".into();
                cell["shed_ratio"] = 0.into();
            }
        }
        s["cells"][0]["state"] = "disabled".into();
    })?;
    publish(&gateway.source, &down)?;
    if !gateway.wait_for_version(down_version, Duration::from_secs(10)) {
        bail!("snapshot {down_version} never applied");
    }
    let start_s = unix_now() + 3;
    let up = next_snapshot(&down, |s| {
        s["cells"][0]["state"] = "active".into();
        s["cells"][0]["ramp"] = serde_json::json!({"start": start_s, "duration_s": 10});
    })?;
    publish(&gateway.source, &up)?;
    if !gateway.wait_for_version(down_version + 1, Duration::from_secs(10)) {
        bail!("snapshot {} never applied", down_version + 1);
    }
    println!(
        "  cell-a disabled (snapshot {down_version}), then active with \"ramp\": {{\"start\": {start_s}, \"duration_s\": 10}} (snapshot {})",
        down_version + 1
    );
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let tokens: Vec<String> = users.iter().map(|u| user_token(tenant, u)).collect();
    let end_ms = (start_s + 10) * 1000;
    let mut series = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while now_ms() < end_ms + 1500 && Instant::now() < deadline {
        let at = now_ms();
        let agent = client();
        let mut on_a = 0;
        for token in &tokens {
            let reply = e2e::get(&agent, &gateway.envoy.url("/"), &[("authorization", token)])?;
            on_a += usize::from(served_cell(&reply) == "cell-a");
        }
        let gauge = gateway
            .envoy
            .stats("ramp_share")?
            .get("wasmcustom.cell_router.ramp_share.cell-a")
            .copied()
            .unwrap_or(-1);
        println!(
            "  {:+5.1} s  gauge ramp_share.cell-a {gauge:>5}  on cell-a {on_a:>2}/40 {}",
            (at as f64 - start_s as f64 * 1000.0) / 1000.0,
            "█".repeat(on_a)
        );
        series.push(on_a);
        std::thread::sleep(Duration::from_millis(700));
    }
    let mid = format!("{}", start_s + 5);
    let explained = cellmap_route_text(
        &gateway.source,
        &["--at", &mid, "--split-key", "user-1", tenant],
    )?;
    println!("  $ cellmap route --at <start + 5 s> --split-key user-1 {tenant}\n  {explained}");
    let rising = series.windows(2).all(|p| p[1] >= p[0]);
    let full = series.last() == Some(&users.len());
    let between = series.iter().any(|&n| n > 0 && n < users.len());
    summary.check(
        format!(
            "a 10 s ramp brought cell-a's users back step by step and never sent one away again ({})",
            series
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" → ")
        ),
        rising && full && between,
    );
    Ok(())
}

/// Sends one request for each of 300 tenants and compares the change in the
/// filter's per-cell counters with what the demo saw and with what `cellmap
/// route` predicts: `routed.<cell>` must rise by the 200s served by the cell,
/// and `routed` + `shed` by the tenants `cellmap route` puts in the cell
/// (cell-b is draining by now). Tenants in a gradual move (a per-request
/// draw) are left out.
fn metrics_step(gateway: &Gateway, agent: &ureq::Agent, summary: &mut Summary) -> Result<()> {
    let candidates: Vec<String> = (0..320).map(|i| format!("metrics-{i}")).collect();
    let routes = e2e::cellmap_route(&gateway.source, &candidates)?;
    let sample: Vec<(String, String)> = routes
        .iter()
        .filter(|r| r["reason"] != "split")
        .filter_map(|r| {
            Some((
                r["tenant"].as_str()?.to_string(),
                r["cell"].as_str()?.to_string(),
            ))
        })
        .take(300)
        .collect();
    let before = gateway.envoy.stats("cell_router")?;
    let mut served: BTreeMap<String, i64> = BTreeMap::new();
    let mut shed: BTreeMap<String, i64> = BTreeMap::new();
    let mut predicted: BTreeMap<String, i64> = BTreeMap::new();
    for (tenant, cell) in &sample {
        *predicted.entry(cell.clone()).or_default() += 1;
        let reply = call(gateway, agent, tenant, &[])?;
        match reply.status {
            200 => *served.entry(served_cell(&reply)).or_default() += 1,
            503 => *shed.entry(cell.clone()).or_default() += 1,
            other => bail!("{tenant}: unexpected HTTP {other}: {}", reply.body),
        }
    }
    let after = gateway.envoy.stats("cell_router")?;
    let delta = |name: String| {
        let name = format!("wasmcustom.{name}");
        after.get(&name).copied().unwrap_or(0) - before.get(&name).copied().unwrap_or(0)
    };
    println!(
        "  {} tenants, one request each; Δ is the change in Envoy's counters",
        sample.len()
    );
    println!(
        "  {:<8} {:>14} {:>10} {:>8} {:>9} {:>7}",
        "cell", "cellmap route", "served 200", "shed 503", "Δ routed", "Δ shed"
    );
    let mut all_agree = true;
    for cell in ["cell-a", "cell-b", "cell-c"] {
        let want = predicted.get(cell).copied().unwrap_or(0);
        let ok200 = served.get(cell).copied().unwrap_or(0);
        let shed503 = shed.get(cell).copied().unwrap_or(0);
        let routed = delta(metric::routed(cell));
        let shed_count = delta(metric::shed(cell));
        let agree = routed == ok200 && shed_count == shed503 && routed + shed_count == want;
        all_agree &= agree;
        println!(
            "  {cell:<8} {want:>14} {ok200:>10} {shed503:>8} {routed:>9} {shed_count:>7}{}",
            if agree { "" } else { "  ✗" }
        );
    }
    let others: i64 = after
        .keys()
        .filter(|k| k.contains("cell_router.rejected.") || k.ends_with("cell_router.no_snapshot"))
        .map(|k| delta(k.trim_start_matches("wasmcustom.").to_string()))
        .sum();
    summary.check(
        format!(
            "Envoy's per-cell counters rose by exactly the {} requests sent (routed + shed = `cellmap route`'s count per cell; {others} rejected)",
            sample.len()
        ),
        all_agree && others == 0 && sample.len() == 300,
    );
    Ok(())
}

fn up() -> Result<()> {
    let dir = fresh_demo_dir()?;
    let gateway = Gateway::start_in(dir.clone(), &example_snapshot()?, 2, true)
        .context("starting on the default ports (is a stack already up? `make demo-down`)")?;
    let source = gateway.source.clone();
    let envoy_pid = gateway.envoy.process.pid();
    let admin_port = gateway.envoy.admin_port;
    let pids = gateway.detach();
    if let Some(pid) = envoy_pid {
        // `down` drains this Envoy through its admin before stopping it.
        std::fs::write(dir.join("envoy"), format!("{pid} {admin_port}\n"))?;
    }
    std::fs::write(
        dir.join("pids"),
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    println!(
        "cell-router demo is up (logs and pids in {}):",
        dir.display()
    );
    println!(
        "  gateway  http://127.0.0.1:{}/",
        e2e::DEFAULT_LISTENER_PORT
    );
    println!(
        "  admin    http://127.0.0.1:{}/stats?filter=cell_router",
        e2e::DEFAULT_ADMIN_PORT
    );
    println!(
        "  sidecar  http://127.0.0.1:{}/healthz",
        e2e::DEFAULT_SIDECAR_PORT
    );
    println!(
        "  snapshot {} (edit or replace it: the sidecar reloads it)",
        source.display()
    );
    println!("Try:");
    println!(
        "  curl -s -H \"authorization: Bearer $(target/debug/demo-token acme-corp)\" localhost:{}/",
        e2e::DEFAULT_LISTENER_PORT
    );
    println!("Stop with: make demo-down");
    Ok(())
}

fn down() -> Result<()> {
    let pids = demo_dir().join("pids");
    let Ok(text) = std::fs::read_to_string(&pids) else {
        println!("no demo is running ({} not found)", pids.display());
        return Ok(());
    };
    // Envoy first, drained: requests in flight finish before it stops.
    let envoy = demo_dir().join("envoy");
    if let Ok(line) = std::fs::read_to_string(&envoy) {
        let mut fields = line.split_whitespace();
        if let (Some(pid), Some(Ok(admin_port))) = (fields.next(), fields.next().map(str::parse)) {
            let running = || std::path::Path::new(&format!("/proc/{pid}")).exists();
            let report = e2e::drain(admin_port, running);
            terminate(pid);
            println!(
                "drained Envoy (pid {pid}) in {} ms: {} request(s) in flight at the drain, {} cut{}",
                report.took.as_millis(),
                report.in_flight_at_drain.max(0),
                report.in_flight_at_term,
                if report.admin_errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", report.admin_errors.join("; "))
                }
            );
        }
        let _ = std::fs::remove_file(&envoy);
    }
    for pid in text.lines().filter(|l| !l.trim().is_empty()) {
        terminate(pid.trim());
    }
    let _ = std::fs::remove_file(&pids);
    println!("stopped the demo stack");
    Ok(())
}

/// SIGTERM, then up to 10 s for the process to go.
fn terminate(pid: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", pid])
        .stderr(std::process::Stdio::null())
        .status();
    let gone = e2e::wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    if !gone {
        eprintln!("pid {pid} did not exit within 10 s of SIGTERM");
    }
}
