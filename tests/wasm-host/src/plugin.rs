//! Loading a proxy-wasm module: one wasmtime engine per process, each module
//! compiled and linked once, then instantiated cheaply per `Host`.

use super::state::HostState;
use anyhow::{Context as _, Result, anyhow, bail};
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use wasmtime::{Config, Engine, InstancePre, Linker, Module};

/// ABI versions Envoy accepts, newest first (the module exports a marker).
const ABI_MARKERS: &[&str] = &["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

pub(crate) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_backtrace(true);
        // Engine::new only fails for inconsistent settings; defaults are fine.
        Engine::new(&config).unwrap_or_else(|e| panic!("wasmtime engine: {e:#}"))
    })
}

/// A compiled, linked proxy-wasm module.
pub struct Plugin {
    name: String,
    module: Module,
    pub(crate) pre: InstancePre<HostState>,
    abi: &'static str,
}

impl Plugin {
    /// Compiles a module from a file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Plugin> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Plugin::from_bytes(&path.display().to_string(), &bytes)
    }

    /// Compiles a module and links it against the host. Like Envoy, refuses
    /// a module that imports anything the host does not provide.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Plugin> {
        let module = compile_cached(name, bytes)?;
        let abi = ABI_MARKERS
            .iter()
            .find(|m| module.get_export(m).is_some())
            .copied()
            .ok_or_else(|| anyhow!("{name} exports no proxy-wasm 0.2.x ABI marker"))?;
        let mut linker = Linker::new(engine());
        super::abi::define(&mut linker).map_err(|e| anyhow!("{e:#}"))?;
        super::wasi::define(&mut linker).map_err(|e| anyhow!("{e:#}"))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| anyhow!("linking {name} (Envoy would refuse it too): {e:#}"))?;
        Ok(Plugin {
            name: name.to_string(),
            module,
            pre,
            abi,
        })
    }

    /// The real filter (`dist/cell_router.wasm`), compiled once per process.
    /// Builds it first when it is missing or older than its sources.
    pub fn filter() -> Result<Arc<Plugin>> {
        static FILTER: OnceLock<std::result::Result<Arc<Plugin>, String>> = OnceLock::new();
        FILTER
            .get_or_init(|| {
                let path = filter_wasm_path().map_err(|e| format!("{e:#}"))?;
                Plugin::from_file(&path)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow!(e))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn abi_version(&self) -> &'static str {
        self.abi
    }

    /// `module.name` of every import, for checking what the plugin needs.
    pub fn imports(&self) -> Vec<String> {
        self.module
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect()
    }

    pub fn exports(&self) -> Vec<String> {
        self.module
            .exports()
            .map(|e| e.name().to_string())
            .collect()
    }
}

/// Compiling the filter takes seconds (more in debug builds, where
/// Cranelift itself is unoptimized), and every test binary needs it: keep the
/// compiled artifact on disk, keyed by the module bytes and the engine.
fn compile_cached(name: &str, bytes: &[u8]) -> Result<Module> {
    let engine = engine();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    bytes.hash(&mut hasher);
    let key = hasher.finish();
    let dir = cache_dir();
    let file = dir.join(format!("{key:016x}.cwasm"));
    if file.is_file() {
        // SAFETY: the file was written by `Module::serialize` below, into our
        // own target directory, for an engine with the same compatibility
        // hash; wasmtime still checks its header and refuses a mismatch.
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &file) } {
            return Ok(module);
        }
    }
    let module = Module::new(engine, bytes).with_context(|| format!("compiling {name}"))?;
    if let Ok(serialized) = module.serialize()
        && std::fs::create_dir_all(&dir).is_ok()
    {
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = dir.join(format!(".{key:016x}.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, serialized).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
        prune_cache(&dir, 4);
    }
    Ok(module)
}

/// Keeps the `keep` newest artifacts: each filter build adds one.
fn prune_cache(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut artifacts: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    artifacts.sort();
    let excess = artifacts.len().saturating_sub(keep);
    for (_, path) in artifacts.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("wasmtime-cache")
}

pub use cell_router_kit::repo_root;

/// Where the filter's `.wasm` is: `CELL_ROUTER_WASM` if set (used as is),
/// else `dist/cell_router.wasm`, built with `scripts/build-wasm.sh` when
/// missing or older than the filter and mapping sources.
pub fn filter_wasm_path() -> Result<PathBuf> {
    let default = repo_root().join("dist/cell_router.wasm");
    if let Some(path) = std::env::var_os("CELL_ROUTER_WASM") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        if path != default {
            bail!("CELL_ROUTER_WASM={} does not exist", path.display());
        }
    }
    if !default.is_file() || sources_newer_than(&default) {
        build_wasm()?;
    }
    Ok(default)
}

fn build_wasm() -> Result<()> {
    let root = repo_root();
    let script = root.join("scripts/build-wasm.sh");
    let status = Command::new(&script)
        .current_dir(&root)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// True when any input of the filter build changed after `artifact`.
fn sources_newer_than(artifact: &Path) -> bool {
    let Ok(built) = artifact.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let root = repo_root();
    let inputs = [
        root.join("filter"),
        root.join("mapping/src"),
        root.join("mapping/Cargo.toml"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
    ];
    inputs
        .iter()
        .any(|p| newest_mtime(p).is_some_and(|t| t > built))
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = path.metadata().ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}
