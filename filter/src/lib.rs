//! Cell router: a proxy-wasm filter for Envoy that verifies a JWT, reads the
//! tenant from a claim, resolves the tenant's cell in a mapping snapshot and
//! sets the cell header (or sheds, or refuses). See `README.md`.
//!
//! The decisions live in plain modules, tested natively. Only on wasm:
//! `exports` (the ABI entry points Envoy calls) hands each callback to
//! `root_context` or `http_context`, which translate it into calls of the
//! plain modules, through `hostcalls` (the host functions, declared here).

pub mod cache;
pub mod config;
pub mod decide;
pub mod envoy_verify;
pub mod error;
pub mod header_pairs;
pub mod json;
pub mod jwks;
pub mod key_subscription;
pub mod metrics;
pub mod shed_draw;
pub mod subscription;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod exports;
#[cfg(target_arch = "wasm32")]
mod hostcalls;
#[cfg(target_arch = "wasm32")]
mod http_context;
#[cfg(target_arch = "wasm32")]
mod root_context;

pub use config::{Config, ConfigError};
pub use decide::{
    Action, Decision, Installed, LocalReply, Outcome, SnapshotSource, VmKeys, VmState, decide,
    decide_with,
};
