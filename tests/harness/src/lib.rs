//! The real-Envoy harness of the cell router: starting Envoy, the `cellmap`
//! sidecar and the test cells on free loopback ports (`e2e`), the chaos run
//! (`chaos`) and the benchmark (`bench`). The binaries are the demo, the
//! chaos run and the benchmark runner; `tests/` holds the end-to-end tests.

pub mod bench;
pub mod chaos;
pub mod e2e;
