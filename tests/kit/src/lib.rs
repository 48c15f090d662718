//! The cell router's test kit, shared by the filter's native tests, the
//! wasmtime host's tests and the Envoy harness: the throwaway keys in
//! `tests/keys` (`tokens`), scenario building blocks that agree with each
//! other (`fixtures`), a seeded generator (`rng`) and the one stand-in for
//! Envoy's `verify_signature` foreign function (`envoy_crypto`). No Wasm
//! engine and no Envoy: what ships never builds this crate.

pub mod envoy_crypto;
pub mod fixtures;
pub mod rng;
pub mod tokens;

use std::path::{Path, PathBuf};

/// The repository root (this crate lives in `tests/kit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
