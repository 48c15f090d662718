//! The native build (`filter/native`, a dynamic module) through real Envoy
//! 1.40: `envoy/envoy-native.yaml`, the module found through
//! `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (`make native` puts it in `dist/`).
//! The snapshot is the config's inline `fallback_snapshot`, or the
//! sidecar's (`cellmap serve`), long-polled by the module's subscription
//! thread at the address the harness gives it (`CELL_ROUTER_CLUSTERS`).
//!
//! Callbacks these tests exercise: `log` (config message), `get_headers_size`
//! and `get_headers` (every request), `set_header` (set and remove),
//! `clear_route_cache` (routed requests), `send_response` (401s, readiness).
//! The metric, filter-state and scheduler callbacks, the persisted copy and
//! the key subscription are exercised by the other e2e files run with
//! `CELL_ROUTER_BUILD=native` (`make e2e-native`).

use anyhow::{Context, Result};
use cell_router_harness::e2e::{
    self, Backends, DEFAULT_CELL_PORTS, Envoy, EnvoyOptions, Reply, Sidecar, client, free_port,
    next_snapshot, probe_body_version, publish, work_dir,
};
use cell_router_kit::fixtures::{bearer, token, token_builder, unix_now};
use cell_router_kit::tokens::Alg;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn example_snapshot_path() -> PathBuf {
    e2e::repo_root().join("mapping/examples/snapshot.json")
}

/// The shipped plugin config, without the sidecar, with the example
/// snapshot inline.
fn native_plugin_config() -> Result<serde_json::Value> {
    let template = std::fs::read_to_string(e2e::repo_root().join("envoy/envoy-native.yaml"))?;
    let mut config = e2e::plugin_config_of(&template)?;
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example_snapshot_path())?)?;
    let object = config
        .as_object_mut()
        .context("plugin config is an object")?;
    object.remove("sidecar");
    object.insert("fallback_snapshot".into(), snapshot);
    Ok(config)
}

struct NativeGateway {
    envoy: Envoy,
    _backends: Backends,
}

fn start(name: &str, plugin_config: serde_json::Value, concurrency: u32) -> Result<NativeGateway> {
    // No sidecar in this config: the port only fills the template's cluster.
    start_in(&work_dir(name)?, plugin_config, concurrency, free_port()?)
}

fn start_in(
    dir: &Path,
    plugin_config: serde_json::Value,
    concurrency: u32,
    sidecar_port: u16,
) -> Result<NativeGateway> {
    let cells: Vec<&str> = DEFAULT_CELL_PORTS.iter().map(|(c, _)| *c).collect();
    let backends = Backends::start(dir, &cells)?;
    e2e::native_dir()?; // says how to build it when it is missing
    let mut options = EnvoyOptions::new(&backends, sidecar_port);
    options.use_native_build();
    options.concurrency = concurrency;
    options.plugin_config = Some(plugin_config);
    let envoy = Envoy::start(dir, options)?;
    Ok(NativeGateway {
        envoy,
        _backends: backends,
    })
}

fn call(gateway: &NativeGateway, tenant: &str, extra: &[(&str, &str)]) -> Result<Reply> {
    let authorization = bearer(&token(Alg::HS256, unix_now(), tenant));
    let mut headers = vec![("authorization", authorization.as_str())];
    headers.extend_from_slice(extra);
    e2e::get(&client(), &gateway.envoy.url("/"), &headers)
}

#[test]
fn native_module_routes_a_thousand_tenants_as_cellmap_route_does() -> Result<()> {
    let gateway = start("native-thousand", native_plugin_config()?, 2)?;
    let mut names: Vec<String> = (0..1000).map(|i| format!("tenant-{i}")).collect();
    names.push("acme-corp".into()); // an override
    let expected = e2e::cellmap_route(&example_snapshot_path(), &names)?;
    let mut per_cell: HashMap<String, usize> = HashMap::new();
    for (tenant, want) in names.iter().zip(&expected) {
        let reply = call(&gateway, tenant, &[])?;
        assert_eq!(reply.status, 200, "{tenant}: {}", reply.body);
        let body = reply.json()?;
        assert_eq!(want["tenant"], tenant.as_str());
        assert_eq!(body["cell"], want["cell"], "{tenant}: {want}");
        assert_eq!(body["snapshot"], "1", "{tenant}: {body}");
        *per_cell
            .entry(body["cell"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    assert_eq!(per_cell.len(), 3, "{per_cell:?}");
    // The module returns 1.40.0's exact ABI version: no mismatch warning.
    let log = gateway.envoy.process.log_tail(200);
    assert!(!log.contains("is deprecated"), "{log}");
    Ok(())
}

#[test]
fn native_module_checks_tokens_and_ignores_spoofed_headers() -> Result<()> {
    let gateway = start("native-tokens", native_plugin_config()?, 2)?;
    let agent = client();
    let url = gateway.envoy.url("/");

    let missing = e2e::get(&agent, &url, &[("x-cell-id", "cell-a")])?;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(
        missing
            .header("www-authenticate")
            .unwrap_or("")
            .starts_with("Bearer realm=\"cell-router-demo\""),
        "{:?}",
        missing.headers
    );
    assert_eq!(missing.json()?["error"], "missing_token");

    let forged = bearer(
        &token_builder(Alg::HS256, unix_now(), "acme-corp")
            .signed_by_other_key()
            .sign(),
    );
    let bad = e2e::get(
        &agent,
        &url,
        &[("authorization", &forged), ("x-cell-id", "cell-a")],
    )?;
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert!(
        bad.header("www-authenticate")
            .unwrap_or("")
            .contains("error=\"invalid_token\"")
    );

    // acme-corp is pinned to cell-c: client copies of the cell and version
    // headers are removed before the filter's own are set.
    let spoofed = call(
        &gateway,
        "acme-corp",
        &[("x-cell-id", "cell-a"), ("x-cell-snapshot", "999")],
    )?;
    assert_eq!(spoofed.status, 200, "{}", spoofed.body);
    let body = spoofed.json()?;
    assert_eq!(body["cell"], "cell-c", "{body}");
    assert_eq!(body["snapshot"], "1", "{body}");

    // The readiness path is answered by the module itself.
    let ready = e2e::get(&agent, &gateway.envoy.url(e2e::FILTER_READY_PATH), &[])?;
    assert_eq!(ready.status, 200, "{}", ready.body);
    Ok(())
}

#[test]
fn native_module_refuses_a_bad_config_and_envoy_does_not_start() -> Result<()> {
    let mut config = native_plugin_config()?;
    config["tenant_claim"] = serde_json::json!(42);
    let Err(err) = start("native-bad-config", config, 1) else {
        anyhow::bail!("Envoy started with a config the module must refuse");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("cell-router: configuration refused"),
        "{message}"
    );
    Ok(())
}

#[test]
fn native_module_follows_the_sidecar_on_every_worker_and_keeps_it_when_the_sidecar_dies()
-> Result<()> {
    let dir = work_dir("native-sidecar")?;
    let source = dir.join("snapshot.json");
    let v1 = std::fs::read(example_snapshot_path())?;
    publish(&source, &v1)?;
    let mut sidecar = Sidecar::start(&dir, &source)?;
    // The shipped plugin config: sidecar, no fallback snapshot.
    let template = std::fs::read_to_string(e2e::repo_root().join("envoy/envoy-native.yaml"))?;
    let config = e2e::plugin_config_of(&template)?;
    let gateway = start_in(&dir, config, 2, sidecar.port)?;
    let probe = |agent: &ureq::Agent| {
        let authorization = bearer(&token(Alg::HS256, unix_now(), "probe-tenant"));
        probe_body_version(e2e::get(
            agent,
            &gateway.envoy.url("/"),
            &[
                ("authorization", authorization.as_str()),
                ("connection", "close"),
            ],
        ))
    };
    e2e::await_version(&gateway.envoy, 1, Duration::from_secs(60), probe)
        .context("version 1 from the sidecar")?;

    let v2 = next_snapshot(&v1, |_| {})?;
    publish(&source, &v2)?;
    let reached = e2e::await_version(&gateway.envoy, 2, Duration::from_secs(60), probe)
        .context("version 2 on every worker")?;
    println!("version 2 reached: {reached:?}");

    // The sidecar goes away: the snapshot in force stays.
    sidecar.process.kill();
    for _ in 0..20 {
        let reply = call(&gateway, "acme-corp", &[("connection", "close")])?;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body = reply.json()?;
        assert_eq!(body["cell"], "cell-c", "{body}");
        assert_eq!(body["snapshot"], "2", "{body}");
    }
    Ok(())
}
