//! `cellmap diff`: what changes between two snapshots.

use super::{Failure, load_snapshot, write_failure};
use cell_router_mapping::SnapshotDiff;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Compare two snapshots
#[derive(Args)]
#[command(long_about = "Compare two snapshots.\n\n\
Shows the slots each cell gained and lost, the share of the keyspace that moved (the \
share of tenants routed by slot whose cell changes), overrides, pins and moves added, \
removed and changed, and cells added, removed or changed (state, weight, shed ratio, \
failover, recovery ramp).")]
pub(super) struct DiffArgs {
    /// The snapshot in force
    old: PathBuf,
    /// The candidate snapshot
    new: PathBuf,
    /// One JSON document instead of text
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: DiffArgs) -> Result<(), Failure> {
    let old = load_snapshot(&args.old)?;
    let new = load_snapshot(&args.new)?;
    let diff = SnapshotDiff::between(&old, &new);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &diff).map_err(|e| write_failure(e.into()))?;
        writeln!(out).map_err(write_failure)?;
    } else {
        write!(out, "{diff}").map_err(write_failure)?;
    }
    out.flush().map_err(write_failure)
}
