//! The cell router's mapping engine: the snapshot contract (`SPEC.md`), its
//! validation, the normative tenant → cell routing function, and the builder
//! used by the control plane. No proxy-wasm dependency and no I/O: the filter, the
//! `cellmap` CLI and the sidecar (the `cellmap` crate) all share this code.
//!
//! Snapshot format 2 adds service pools and regions (`pools`): pool
//! selection by `:authority` and `:path` ([`Snapshot::pool_for`]), a home
//! region per tenant ([`Snapshot::home_region`]) and the routing function
//! with a region check ([`Snapshot::resolve_in`]). A format-1 snapshot is
//! one pool and one region, and [`Snapshot::resolve`] routes it as always.

pub mod binary;
pub mod builder;
pub mod diff;
pub mod error;
pub mod hash;
pub mod pools;
pub mod ramp;
pub mod resolve;
pub mod snapshot;
pub mod table;

pub use builder::{Build, BuildOptions, BuildReport, Spec};
pub use diff::SnapshotDiff;
pub use error::PathError;
pub use hash::HashKey;
pub use pools::{
    MatchDoc, MatchRule, Pool, PoolDoc, PooledCellDoc, PooledSnapshotDoc, Region, RegionDoc,
};
pub use ramp::{Curve, Ramp, RampDoc, Timestamp};
pub use resolve::{Draws, Outcome, RampStep, Resolution, Source};
pub use snapshot::{Cell, CellDoc, CellState, HashDoc, Move, MoveDoc, Snapshot, SnapshotDoc};
