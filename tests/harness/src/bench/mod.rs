//! `make bench`: the cell router's cost in real Envoy, measured side by side
//! with plain Envoy and with what a user would build instead (Envoy's
//! `jwt_authn` plus a Lua lookup), interleaved over rounds, plus snapshot
//! propagation and memory from inside. `cell-router-bench` drives it and
//! writes BENCHMARKS.md; the Envoy configurations are in `envoy/bench/`.

pub mod anatomy;
pub mod cases;
pub mod inner;
pub mod pools;
pub mod propagation;
pub mod report;
pub mod run;
pub mod scale;
pub mod stack;
pub mod wrk;
