//! Where the cell router's time goes in Envoy: the probe filter
//! (`envoy/bench/probe`) measured next to plain Envoy and the router. The
//! probe makes the same host calls the real `.wasm` makes for a cached token,
//! as counted by the wasmtime host (`cell_router_wasm_host`), so
//!
//! - plain → probe doing nothing: what Envoy spends on any Wasm filter
//!   (a VM context per request and the callbacks into V8; the probe keeps
//!   only the `proxy_on_*` exports the router has, so both get the same
//!   callbacks);
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
    let built = target_dir.join("wasm32-wasip1/release/cell_router_bench_probe.wasm");
    let probe = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let router_path = crate::e2e::wasm_path()?;
    let router = std::fs::read(&router_path)
        .with_context(|| format!("reading {}", router_path.display()))?;
    let wasm = target_dir.join("wasm32-wasip1/release/cell_router_bench_probe.callbacks.wasm");
    std::fs::write(&wasm, with_callbacks_of(&probe, &router)?)
        .with_context(|| format!("writing {}", wasm.display()))?;
    Ok(wasm)
}

/// `probe` without the `proxy_on_*` exports `router` lacks. Envoy calls into
/// a VM only for the events its module exports (the SDK the probe is built
/// with exports every one), so this way the probe doing nothing costs what
/// any filter with the router's callbacks costs.
pub fn with_callbacks_of(probe: &[u8], router: &[u8]) -> Result<Vec<u8>> {
    let keep = export_names(router)?;
    let mut module = wasm_encoder::Module::new();
    for payload in wasmparser::Parser::new(0).parse_all(probe) {
        let payload = payload.context("parsing the probe")?;
        if let wasmparser::Payload::ExportSection(reader) = &payload {
            let mut exports = wasm_encoder::ExportSection::new();
            for export in reader.clone() {
                let export = export.context("parsing the probe's exports")?;
                if export.name.starts_with("proxy_on_") && !keep.contains(export.name) {
                    continue;
                }
                let kind = match export.kind {
                    wasmparser::ExternalKind::Func => wasm_encoder::ExportKind::Func,
                    wasmparser::ExternalKind::Table => wasm_encoder::ExportKind::Table,
                    wasmparser::ExternalKind::Memory => wasm_encoder::ExportKind::Memory,
                    wasmparser::ExternalKind::Global => wasm_encoder::ExportKind::Global,
                    wasmparser::ExternalKind::Tag => wasm_encoder::ExportKind::Tag,
                };
                exports.export(export.name, kind, export.index);
            }
            module.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            let data = probe.get(range).context("a section past the probe's end")?;
            module.section(&wasm_encoder::RawSection { id, data });
        }
    }
    Ok(module.finish())
}

/// The names a module exports.
pub fn export_names(wasm: &[u8]) -> Result<std::collections::BTreeSet<String>> {
    let mut names = std::collections::BTreeSet::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::ExportSection(reader) = payload.context("parsing a module")? {
            for export in reader {
                names.insert(export.context("parsing exports")?.name.to_string());
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module exporting `names` (functions), a memory and a custom section.
    fn module(names: &[&str]) -> Vec<u8> {
        let mut m = wasm_encoder::Module::new();
        let mut types = wasm_encoder::TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = wasm_encoder::FunctionSection::new();
        funcs.function(0);
        m.section(&funcs);
        let mut memory = wasm_encoder::MemorySection::new();
        memory.memory(wasm_encoder::MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        m.section(&memory);
        let mut exports = wasm_encoder::ExportSection::new();
        exports.export("memory", wasm_encoder::ExportKind::Memory, 0);
        for name in names {
            exports.export(name, wasm_encoder::ExportKind::Func, 0);
        }
        m.section(&exports);
        let mut code = wasm_encoder::CodeSection::new();
        let mut body = wasm_encoder::Function::new([]);
        body.instructions().end();
        code.function(&body);
        m.section(&code);
        m.section(&wasm_encoder::CustomSection {
            name: "note".into(),
            data: b"kept".as_slice().into(),
        });
        m.finish()
    }

    #[test]
    fn the_probe_keeps_only_the_routers_callbacks() {
        let probe = module(&[
            "proxy_on_request_headers",
            "proxy_on_response_headers",
            "proxy_on_log",
            "proxy_on_delete",
            "malloc",
        ]);
        let router = module(&["proxy_on_request_headers", "proxy_on_delete", "other"]);
        let trimmed = with_callbacks_of(&probe, &router).unwrap();
        let names: Vec<String> = export_names(&trimmed).unwrap().into_iter().collect();
        assert_eq!(
            names,
            [
                "malloc",
                "memory",
                "proxy_on_delete",
                "proxy_on_request_headers"
            ]
        );
        // Every other section is carried over byte for byte.
        let sections = |wasm: &[u8]| -> Vec<(u8, Vec<u8>)> {
            wasmparser::Parser::new(0)
                .parse_all(wasm)
                .filter_map(|p| {
                    let p = p.unwrap();
                    if matches!(p, wasmparser::Payload::ExportSection(_)) {
                        return None;
                    }
                    p.as_section().map(|(id, r)| (id, wasm[r].to_vec()))
                })
                .collect()
        };
        assert_eq!(sections(&trimmed), sections(&probe));
        assert_eq!(sections(&probe).len(), 5);
    }

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
