//! Where the cell router's time goes in Envoy: the probe filter
//! (`envoy/bench/probe`) measured next to plain Envoy and the router. The
//! probe makes the same host calls the real `.wasm` makes for a cached token,
//! as counted by the wasmtime host (`cell_router_wasm_host`), so
//!
//! - plain → probe doing nothing: what Envoy spends on any Wasm filter
//!   (a VM context per request and the callbacks into V8);
//! - → probe making the router's host calls: what those calls cost;
//! - → the router: the router's own work in the VM (token cache, claims,
//!   resolve), which the wasmtime host also times directly.

use anyhow::{Context, Result};
use cell_router_kit::fixtures::{Config, bearer, token};
use cell_router_kit::tokens::Alg;
use cell_router_mapping::SnapshotDoc;
use cell_router_wasm_host::{Host, Request};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Host calls the probe can make, by proxy-wasm ABI name.
const PROBE_CALLS: [(&str, &str); 10] = [
    ("proxy_get_header_map_pairs", "pairs"),
    ("proxy_get_header_map_value", "get"),
    ("proxy_replace_header_map_value", "replace"),
    ("proxy_remove_header_map_value", "remove"),
    ("proxy_get_current_time_nanoseconds", "time"),
    ("proxy_increment_metric", "metric"),
    ("proxy_record_metric", "metric"),
    ("proxy_call_foreign_function", "foreign"),
    ("proxy_get_property", "property_get"),
    ("proxy_set_property", "property_set"),
];

/// The router's host calls per request for a cached HS256 token.
#[derive(Clone, Debug)]
pub struct HostCalls {
    /// Calls per request by ABI name (averaged, then rounded).
    pub per_request: BTreeMap<String, u64>,
    /// Time per request inside the VM (wasmtime), in microseconds.
    pub vm_us: f64,
}

impl HostCalls {
    /// The probe's configuration: its call names, in a fixed order.
    pub fn probe_config(&self) -> String {
        let mut calls = Vec::new();
        for (abi, probe) in PROBE_CALLS {
            for _ in 0..self.per_request.get(abi).copied().unwrap_or(0) {
                calls.push(probe);
            }
        }
        calls.join(",")
    }

    /// The router's calls per request the probe makes as `probe_name`.
    pub fn calls_of_probe_name(&self, probe_name: &str) -> u64 {
        PROBE_CALLS
            .iter()
            .filter(|(_, probe)| *probe == probe_name)
            .map(|(abi, _)| self.per_request.get(*abi).copied().unwrap_or(0))
            .sum()
    }

    /// Calls the probe does not make (it cannot stand in for them).
    pub fn not_replicated(&self) -> Vec<String> {
        self.per_request
            .keys()
            .filter(|name| !PROBE_CALLS.iter().any(|(abi, _)| abi == name))
            .cloned()
            .collect()
    }

    pub fn describe(&self) -> String {
        self.per_request
            .iter()
            .map(|(name, n)| format!("{name} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Counts the real `.wasm`'s host calls for cached-token requests in the
/// wasmtime host (configured like the benchmark gateways, `filter_state`
/// off as in `stack::plugin_config`, with the benchmark snapshot inline).
pub fn count_router_host_calls(doc: &SnapshotDoc) -> Result<HostCalls> {
    let mut host = Host::new().context("starting the wasmtime host")?;
    let snapshot: serde_json::Value = serde_json::from_str(&doc.to_json())?;
    host.configure(
        Config::jwt(&[Alg::HS256])
            .set("filter_state", false)
            .set("fallback_snapshot", snapshot)
            .json(),
    )?;
    let authorization = bearer(&token(Alg::HS256, host.now_unix(), "tenant-00001"));
    let request = || Request::get("/").header("authorization", &authorization);
    // The first request verifies; the rest hit the token cache.
    host.send(request())?;
    let n = 200u64;
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut vm = std::time::Duration::ZERO;
    for _ in 0..n {
        let exchange = host.send(request())?;
        anyhow::ensure!(exchange.forwarded(), "the router refused the probe request");
        vm += exchange.vm_time;
        for (name, count) in &exchange.host_calls {
            *totals.entry(name.to_string()).or_default() += count;
        }
    }
    Ok(HostCalls {
        per_request: totals
            .into_iter()
            .map(|(name, total)| (name, (total + n / 2) / n))
            .filter(|(_, n)| *n > 0)
            .collect(),
        vm_us: vm.as_secs_f64() * 1e6 / n as f64,
    })
}

/// Builds the native probe (`envoy/bench/native-probe`, its own small crate)
/// into `target_dir`; the directory holding its `.so` (Envoy's module search
/// path for the native probe gateways).
pub fn build_native_probe(target_dir: &Path) -> Result<PathBuf> {
    let manifest = crate::e2e::repo_root().join("envoy/bench/native-probe/Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--locked", "--release"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .context("running cargo to build the native probe")?;
    anyhow::ensure!(
        output.status.success(),
        "building the native probe failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = target_dir.join("release");
    let library = dir.join("libcell_router_bench_native_probe.so");
    anyhow::ensure!(library.is_file(), "no {}", library.display());
    Ok(dir)
}

/// Builds the probe filter (`envoy/bench/probe`, its own small crate) for
/// wasm32-wasip1 under `target_dir`; the `.wasm`'s path.
pub fn build_probe(target_dir: &Path) -> Result<PathBuf> {
    let manifest = crate::e2e::repo_root().join("envoy/bench/probe/Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            "wasm32-wasip1",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .context("running cargo to build the probe filter")?;
    anyhow::ensure!(
        output.status.success(),
        "building the probe filter failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let wasm = target_dir.join("wasm32-wasip1/release/cell_router_bench_probe.wasm");
    anyhow::ensure!(wasm.is_file(), "no {}", wasm.display());
    Ok(wasm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_config_repeats_calls_in_a_fixed_order() {
        let calls = HostCalls {
            per_request: BTreeMap::from([
                ("proxy_increment_metric".to_string(), 2),
                ("proxy_get_header_map_pairs".to_string(), 1),
                ("proxy_replace_header_map_value".to_string(), 2),
                ("proxy_log".to_string(), 1),
            ]),
            vm_us: 2.0,
        };
        assert_eq!(calls.probe_config(), "pairs,replace,replace,metric,metric");
        assert_eq!(calls.not_replicated(), vec!["proxy_log".to_string()]);
    }
}
