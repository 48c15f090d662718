//! Cell router: a proxy-wasm filter for Envoy that verifies a JWT, reads the
//! tenant from a claim, resolves the tenant's cell in a mapping snapshot and
//! sets the cell header (or sheds, or refuses). See `README.md`.
//!
//! The decisions live in plain modules, tested natively; `glue` (wasm only)
//! translates proxy-wasm callbacks into calls of them.

pub mod cache;
pub mod config;
pub mod decide;
pub mod envoy_verify;
pub mod error;
pub mod header_pairs;
pub mod jwks;
pub mod metrics;
pub mod subscription;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
mod host;

pub use config::{Config, ConfigError};
pub use decide::{Action, Decision, Installed, LocalReply, Outcome, VmState, decide, decide_with};
