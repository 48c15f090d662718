//! Test support for the cell router: a proxy-wasm host on wasmtime that runs
//! the real filter `.wasm` the way Envoy does (`host`), and token minting
//! for tests, benchmarks and the demo (`tokens`), and scenario building
//! blocks that agree with each other (`fixtures`).

pub mod bench;
pub mod e2e;
pub mod fixtures;
pub mod host;
pub mod rng;
pub mod tokens;
