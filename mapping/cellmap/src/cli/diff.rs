//! `cellmap diff`: what changes between two snapshots.

use super::{Failure, load_snapshot_with_ids, read_input, write_failure};
use cell_router_mapping::SnapshotDiff;
use cell_router_mapping::builder::parse_known_tenants;
use cell_router_mapping::diff::PoolsDiff;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Compare two snapshots
#[derive(Args)]
#[command(long_about = "Compare two snapshots.\n\n\
Shows the slots each cell gained and lost, the share of the keyspace that moved (the \
share of tenants routed by slot whose cell changes), overrides, pins and moves added, \
removed and changed, and cells added, removed or changed (state, weight, shed ratio, \
failover, recovery ramp).\n\n\
Format 2 (pools and regions): the region table (slots per region gained and lost: \
tenants re-homed unless a region override holds them), region overrides, and per pool \
and region the cells' shares of the region's own slots and how many of those slots move \
(their tenants change cell or region); per pool its overrides, pins and moves. A \
format-1 snapshot compared with a format-2 one is one pool and one region, both \
`default`. With --tenants FILE (one tenant id per line), each known tenant is followed in every pool: \
counts per pool and home region of tenants whose cell changes and of tenants re-homed, \
and the list of changes (all of them with --json).")]
pub(super) struct DiffArgs {
    /// The snapshot in force
    old: PathBuf,
    /// The candidate snapshot
    new: PathBuf,
    /// One JSON document instead of text
    #[arg(long)]
    json: bool,
    /// Known tenant ids (one per line) to follow through the change, per
    /// pool and region
    #[arg(long, value_name = "FILE")]
    tenants: Option<PathBuf>,
}

fn emit<T: serde::Serialize + std::fmt::Display>(value: &T, json: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value).map_err(|e| write_failure(e.into()))?;
        writeln!(out).map_err(write_failure)?;
    } else {
        write!(out, "{value}").map_err(write_failure)?;
    }
    out.flush().map_err(write_failure)
}

pub(super) fn run(args: DiffArgs) -> Result<(), Failure> {
    let old = load_snapshot_with_ids(&args.old, "diffed")?;
    let new = load_snapshot_with_ids(&args.new, "diffed")?;
    // Per pool and region when either snapshot has pools, or to follow
    // known tenants (a format-1 snapshot is then one pool and one region,
    // both `default`).
    if old.format() < 2 && new.format() < 2 && args.tenants.is_none() {
        return emit(&SnapshotDiff::between(&old, &new), args.json);
    }
    let known = match &args.tenants {
        Some(path) => {
            let text = String::from_utf8(read_input(path)?)
                .map_err(|_| Failure::invalid(format!("{}: not valid UTF-8", path.display())))?;
            Some(
                parse_known_tenants(&text)
                    .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let diff = PoolsDiff::between(&old, &new, known.as_deref())
        .map_err(|e| Failure::invalid(e.to_string()))?;
    emit(&diff, args.json)
}
