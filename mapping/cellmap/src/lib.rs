//! The `cellmap` command: build, validate, route and diff mapping snapshots
//! (`cli`), and `cellmap serve`, the sidecar that serves them to the local
//! gateway (`serve`). The snapshot format and routing live in
//! `cell_router_mapping`, which knows nothing of files, sockets or CLIs.

pub mod cli;
pub mod clock;
pub mod files;
pub mod serve;
