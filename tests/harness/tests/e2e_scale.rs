//! Snapshots larger than a gateway takes, through real Envoy 1.40
//! (concurrency 2, so three VMs: two workers and the main thread), the real
//! `.wasm` and the real sidecar. Each limit in turn is set below one
//! snapshot (the example's 65,536-slot table plus 20,000 overrides, about
//! 370 KB in the binary form keyed by hash) and above the others (the example alone,
//! about 130 KB):
//!
//! - the VM's `sidecar.max_snapshot_bytes`: the sidecar answers each VM 413
//!   once, the body is never sent, no VM asks for that version again, the
//!   reason is logged, the last good snapshot keeps routing, and the next
//!   version that fits is taken;
//! - the sidecar's `--max-body-bytes`: it does not publish the snapshot and
//!   `/healthz` says why; the gateway never sees it;
//! - Envoy's `http.async_response_buffer_limit` alone, with the snapshot
//!   fetched whole (a misconfiguration the two others prevent): the VM logs
//!   what Envoy reported for the reset call, and keeps routing by the last
//!   good snapshot;
//! - the same buffer limit with the snapshot fetched in pieces smaller than
//!   it (`sidecar.chunk_bytes`): every VM applies it, no fetch fails.

use anyhow::{Context, Result, anyhow, bail, ensure};
use cell_router_harness::e2e::{
    self, Backends, Envoy, EnvoyOptions, Gateway, Sidecar, client, free_port, get, next_snapshot,
    plugin_config_of, publish, work_dir,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Below the big snapshot, above the small one (both forms).
const LIMIT: u64 = 256 * 1024;
/// Overrides added to make the big snapshot.
const BULK: usize = 20_000;
/// Workers (each with its VM) of every Envoy here; the main thread has one too.
const CONCURRENCY: u32 = 2;
const VMS: i64 = CONCURRENCY as i64 + 1;
const WAIT: Duration = Duration::from_secs(60);

fn small_snapshot() -> Vec<u8> {
    std::fs::read(e2e::repo_root().join("mapping/examples/snapshot.json"))
        .expect("example snapshot")
}

/// The next version of `snapshot` with [`BULK`] overrides more, and
/// `acme-corp` (on cell-c in the example) moved to cell-a.
fn big_after(snapshot: &[u8]) -> Result<Vec<u8>> {
    let big = next_snapshot(snapshot, |doc| {
        let overrides = doc["overrides"]
            .as_object_mut()
            .expect("the example has overrides");
        for i in 0..BULK {
            overrides.insert(format!("bulk-tenant-{i:06}"), "cell-b".into());
        }
        overrides.insert("acme-corp".into(), "cell-a".into());
    })?;
    ensure!(big.len() as u64 > LIMIT, "the big snapshot is too small");
    Ok(big)
}

fn healthz(sidecar: &Sidecar) -> Result<serde_json::Value> {
    get(
        &client(),
        &format!("http://127.0.0.1:{}/healthz", sidecar.port),
        &[],
    )?
    .json()
}

/// A gateway whose sidecar runs with `sidecar_args`, whose filter config
/// has `max_snapshot_bytes` and `chunk_bytes`, and whose Envoy runs
/// `template`.
fn gateway(
    name: &str,
    sidecar_args: &[&str],
    max_snapshot_bytes: Option<u64>,
    template: Option<PathBuf>,
    chunk_bytes: Option<u64>,
) -> Result<Option<Gateway>> {
    if e2e::build() == e2e::Build::Native {
        // These tests count refusals per Wasm VM and Envoy's async-client
        // buffer; the native module has one subscription per gateway and
        // fetches outside Envoy (its own HTTP client), so they do not apply.
        eprintln!("e2e_scale: the Wasm filter's limits; skipped for CELL_ROUTER_BUILD=native");
        return Ok(None);
    }
    let dir = work_dir(name)?;
    let source = dir.join("snapshot.json");
    publish(&source, &small_snapshot())?;
    let backends = Backends::start(&dir, &["cell-a", "cell-b", "cell-c"])?;
    let sidecar = Sidecar::start_with_args(&dir, &source, free_port()?, None, sidecar_args)?;
    let mut options = EnvoyOptions::new(&backends, sidecar.port);
    options.concurrency = CONCURRENCY;
    if let Some(template) = template {
        options.template = template;
    }
    let mut config = plugin_config_of(&std::fs::read_to_string(&options.template)?)?;
    if let Some(max) = max_snapshot_bytes {
        config["sidecar"]["max_snapshot_bytes"] = max.into();
    }
    if let Some(chunk) = chunk_bytes {
        config["sidecar"]["chunk_bytes"] = chunk.into();
    }
    options.plugin_config = Some(config);
    // The filter's info lines: how each VM applied a snapshot.
    options.log_level = Some("info".into());
    let envoy = Envoy::start(&dir, options)?;
    let gateway = Gateway {
        dir,
        source,
        backends,
        sidecar,
        envoy,
    };
    gateway.await_version(1, WAIT)?;
    Ok(Some(gateway))
}

/// The sum over VMs of a filter counter (`cell_router.<name>`).
fn counter(envoy: &Envoy, name: &str) -> i64 {
    let full = format!("cell_router.{name}");
    envoy
        .stats(&full)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.ends_with(&full))
                .map(|(_, v)| *v)
                .sum()
        })
        .unwrap_or(-1)
}

fn envoy_log(gateway: &Gateway) -> String {
    let path = gateway
        .dir
        .join(format!("envoy-{}.log", gateway.envoy.port));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The cell and snapshot version `tenant` is routed with.
fn routed(gateway: &Gateway, tenant: &str) -> Result<(String, String)> {
    let reply = gateway.call(&client(), tenant, &[("connection", "close")])?;
    ensure!(reply.status == 200, "{tenant}: {}", reply.body);
    let body = reply.json()?;
    let field = |name: &str| match &body[name] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok((
        field("cell").ok_or_else(|| anyhow!("no cell in {body}"))?,
        field("snapshot").ok_or_else(|| anyhow!("no snapshot in {body}"))?,
    ))
}

/// Every VM routes `acme-corp` by version 1 (cell-c), on fresh connections
/// (spread over the workers).
fn still_on_version_1(gateway: &Gateway) -> Result<()> {
    for _ in 0..8 {
        let (cell, version) = routed(gateway, "acme-corp")?;
        ensure!(
            (cell.as_str(), version.as_str()) == ("cell-c", "1"),
            "acme-corp routed to {cell} with snapshot {version}, expected cell-c with the last good version 1"
        );
    }
    Ok(())
}

fn wait_for(
    what: &str,
    mut seen: impl FnMut() -> Result<bool>,
    detail: impl Fn() -> String,
) -> Result<()> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < WAIT {
        match seen() {
            Ok(true) => return Ok(()),
            Ok(false) => last = None,
            Err(err) => last = Some(format!("{err:#}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{what}: not within {WAIT:?} (last error: {last:?})\n{}",
        detail()
    )
}

#[test]
fn a_snapshot_over_the_vms_limit_is_refused_once_per_vm_and_never_downloaded() -> Result<()> {
    let Some(gateway) = gateway("scale-vm-limit", &[], Some(LIMIT), None, None)? else {
        return Ok(());
    };
    let failures_before = counter(&gateway.envoy, "snapshot.fetch_failures");
    let big = big_after(&small_snapshot())?;
    publish(&gateway.source, &big)?;

    // Every VM is answered 413 once, and counts it.
    wait_for(
        "every VM refused version 2 for its size",
        || {
            Ok(
                healthz(&gateway.sidecar)?["answered_too_large"].as_i64() == Some(VMS)
                    && counter(&gateway.envoy, "snapshot.refused_too_large") == VMS,
            )
        },
        || {
            format!(
                "sidecar /healthz: {:?}; refused_too_large {}\n{}",
                healthz(&gateway.sidecar).ok(),
                counter(&gateway.envoy, "snapshot.refused_too_large"),
                gateway.envoy.process.log_tail(20)
            )
        },
    )?;
    let health = healthz(&gateway.sidecar)?;
    assert_eq!(health["version"], 2, "the sidecar serves it: {health}");
    still_on_version_1(&gateway)?;

    // Nobody asks for it again: the VMs' long-polls now wait past version 2.
    std::thread::sleep(Duration::from_secs(5));
    let health = healthz(&gateway.sidecar)?;
    assert_eq!(
        health["answered_too_large"].as_i64(),
        Some(VMS),
        "version 2 was asked for again: {health}"
    );
    assert_eq!(counter(&gateway.envoy, "snapshot.refused_too_large"), VMS);
    assert_eq!(
        counter(&gateway.envoy, "snapshot.fetch_failures"),
        failures_before,
        "a refusal by size is not a failed fetch"
    );
    still_on_version_1(&gateway)?;

    // The reason is in the log, once per VM.
    let log = envoy_log(&gateway);
    let reasons = log
        .lines()
        .filter(|l| l.contains("did not send snapshot version 2, larger than this VM takes"))
        .collect::<Vec<_>>();
    assert_eq!(
        reasons.len() as i64,
        VMS,
        "{}",
        gateway.envoy.process.log_tail(30)
    );
    assert!(
        reasons
            .iter()
            .all(|l| l.contains("bytes in the binary form")),
        "the sidecar's reason is logged: {reasons:?}"
    );

    // The next version that fits is taken by every VM.
    let small_3 = next_snapshot(&next_snapshot(&small_snapshot(), |_| {})?, |doc| {
        doc["overrides"]["acme-corp"] = "cell-b".into();
    })?;
    publish(&gateway.source, &small_3)?;
    gateway.await_version(3, WAIT)?;
    let (cell, version) = routed(&gateway, "acme-corp")?;
    assert_eq!((cell.as_str(), version.as_str()), ("cell-b", "3"));
    assert_eq!(
        healthz(&gateway.sidecar)?["answered_too_large"].as_i64(),
        Some(VMS)
    );
    Ok(())
}

#[test]
fn the_sidecar_does_not_publish_a_snapshot_over_the_gateways_limit() -> Result<()> {
    let limit = LIMIT.to_string();
    let Some(gateway) = gateway(
        "scale-sidecar-limit",
        &["--max-body-bytes", &limit],
        None,
        None,
        None,
    )?
    else {
        return Ok(());
    };
    let big = big_after(&small_snapshot())?;
    publish(&gateway.source, &big)?;
    wait_for(
        "the sidecar refused version 2 for its size",
        || Ok(healthz(&gateway.sidecar)?["refused_too_large"] == 1),
        || format!("{:?}", healthz(&gateway.sidecar).ok()),
    )?;
    let health = healthz(&gateway.sidecar)?;
    assert_eq!(
        health["version"], 1,
        "still serving the last good: {health}"
    );
    assert_eq!(health["max_body_bytes"], LIMIT);
    assert_eq!(health["last_refused"]["version"], 2, "{health}");
    assert_eq!(health["last_refused"]["too_large"], true, "{health}");
    let reason = health["last_refused"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("--max-body-bytes 262144") && reason.contains("not published"),
        "{reason}"
    );
    assert!(
        gateway
            .sidecar
            .process
            .log_tail(20)
            .contains("refused snapshot from file"),
        "{}",
        gateway.sidecar.process.log_tail(20)
    );
    still_on_version_1(&gateway)?;
    assert_eq!(counter(&gateway.envoy, "snapshot.refused_too_large"), 0);
    assert_eq!(health["answered_too_large"], 0);
    Ok(())
}

/// envoy/envoy.yaml with `http.async_response_buffer_limit` at [`LIMIT`].
fn low_buffer_template(name: &str) -> Result<PathBuf> {
    let dir = work_dir(name)?;
    let template = dir.join("envoy-low-buffer-limit.yaml");
    let shipped = std::fs::read_to_string(e2e::repo_root().join("envoy/envoy.yaml"))?;
    let key = "http.async_response_buffer_limit: ";
    let at = shipped
        .find(key)
        .context("envoy/envoy.yaml sets http.async_response_buffer_limit")?;
    let end = at + shipped[at..].find('\n').unwrap_or(shipped.len() - at);
    let lowered = format!("{}{key}{LIMIT}{}", &shipped[..at], &shipped[end..]);
    std::fs::write(&template, lowered)?;
    Ok(template)
}

/// A snapshot larger than Envoy's async-client buffer arrives in pieces
/// smaller than it (`sidecar.chunk_bytes`): every VM applies it, every
/// worker routes by it, no fetch fails. Its records are checked by one VM
/// and trusted by the others (proxy shared data across Envoy's real VMs).
#[test]
fn a_snapshot_larger_than_envoys_buffer_arrives_in_pieces() -> Result<()> {
    let template = low_buffer_template("scale-pieces-template")?;
    let Some(gateway) = gateway("scale-pieces", &[], None, Some(template), Some(65_536))? else {
        return Ok(());
    };
    let applied_before = counter(&gateway.envoy, "snapshot.applied");
    let failures_before = counter(&gateway.envoy, "snapshot.fetch_failures");
    let big = big_after(&small_snapshot())?;
    // The form the sidecar serves gateways (keyed by hash).
    let binary_size = cell_router_mapping::binary::encode_hashed(
        &cell_router_mapping::binary::parse_any(&big).map_err(|e| anyhow!("{e}"))?,
    )
    .map_err(|e| anyhow!("{e}"))?
    .len();
    ensure!(
        binary_size as u64 > LIMIT,
        "the binary form ({binary_size} bytes) must be larger than Envoy's buffer ({LIMIT})"
    );
    publish(&gateway.source, &big)?;
    wait_for(
        "every VM applied version 2",
        || Ok(counter(&gateway.envoy, "snapshot.applied") >= applied_before + VMS),
        || gateway.envoy.process.log_tail(30),
    )?;
    for _ in 0..8 {
        let (cell, version) = routed(&gateway, "acme-corp")?;
        ensure!(
            (cell.as_str(), version.as_str()) == ("cell-a", "2"),
            "acme-corp routed to {cell} with snapshot {version}, expected cell-a with version 2"
        );
    }
    assert_eq!(
        counter(&gateway.envoy, "snapshot.fetch_failures"),
        failures_before,
        "no piece failed"
    );
    assert_eq!(
        counter(&gateway.envoy, "snapshot.applied"),
        applied_before + VMS
    );
    let log = envoy_log(&gateway);
    let applied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("snapshot version 2 applied from the sidecar"))
        .collect();
    let trusted = applied
        .iter()
        .filter(|l| l.contains("records already checked by another VM"))
        .count();
    ensure!(
        applied.len() as i64 == VMS && trusted >= 1 && trusted < applied.len(),
        "one VM checks the records, the others trust them; applied:\n{}",
        applied.join("\n")
    );
    Ok(())
}

#[test]
fn a_body_over_envoys_buffer_limit_is_logged_with_envoys_reason() -> Result<()> {
    // envoy/envoy.yaml with the runtime key lowered below the big snapshot,
    // and nothing else: the sidecar and the VM would take it (whole: the
    // big snapshot is smaller than the default piece).
    let template = low_buffer_template("scale-envoy-limit-template")?;
    let Some(gateway) = gateway("scale-envoy-limit", &[], None, Some(template), None)? else {
        return Ok(());
    };
    let failures_before = counter(&gateway.envoy, "snapshot.fetch_failures");
    let big = big_after(&small_snapshot())?;
    publish(&gateway.source, &big)?;
    wait_for(
        "the VMs logged Envoy's reason for the reset call",
        || Ok(envoy_log(&gateway).contains("Envoy reports BrokenConnection (11) \"reset\"")),
        || gateway.envoy.process.log_tail(30),
    )?;
    let log = envoy_log(&gateway);
    let line = log
        .lines()
        .find(|l| l.contains("Envoy reports BrokenConnection"))
        .unwrap_or("");
    assert!(
        line.contains("http.async_response_buffer_limit"),
        "the log names the limit: {line}"
    );
    assert!(counter(&gateway.envoy, "snapshot.fetch_failures") > failures_before);
    still_on_version_1(&gateway)?;
    Ok(())
}
