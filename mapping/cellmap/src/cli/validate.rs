//! `cellmap validate`: check a snapshot file.

use super::{Failure, plural, read_input, write_failure};
use cell_router_mapping::table::EntryKind;
use cell_router_mapping::{CellState, Snapshot};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Check a snapshot file
#[derive(Args)]
#[command(
    long_about = "Check a snapshot file, JSON or binary (told apart by the first bytes), against the format of mapping/SPEC.md.\n\n\
Prints a one-line summary and exits 0, or prints `error: $.json.path: why` for the first \
problem and exits 1."
)]
pub(super) struct ValidateArgs {
    /// Snapshot file (`-` reads stdin)
    file: PathBuf,
    /// Also require the version to be greater than this one (as the sidecar
    /// and the filter do when replacing a snapshot)
    #[arg(long, value_name = "VERSION")]
    newer_than: Option<u64>,
}

pub(super) fn run(args: ValidateArgs) -> Result<(), Failure> {
    let bytes = read_input(&args.file)?;
    let form = if cell_router_mapping::binary::is_hashed(&bytes) {
        " (binary form keyed by hash)"
    } else if cell_router_mapping::binary::is_binary(&bytes) {
        " (binary form)"
    } else {
        ""
    };
    let snapshot = cell_router_mapping::binary::parse_any_newer(&bytes, args.newer_than)
        .map_err(|e| Failure::invalid(e.to_string()))?;
    let count = |state| snapshot.cells().iter().filter(|c| c.state == state).count();
    // Every pool's (format 1 has one).
    let entries = |kind: EntryKind| -> usize {
        snapshot
            .pools()
            .iter()
            .map(|p| p.tenant_table().kinds().filter(|(k, _)| *k == kind).count())
            .sum()
    };
    let overrides = entries(EntryKind::Override);
    let pins = entries(EntryKind::Pin);
    let moves: usize = snapshot.pools().iter().map(|p| p.moves().len()).sum();
    let mut out = format!(
        "ok: version {}, generated_at {}, {} ({} active, {} draining, {} disabled), {} slots, {}, {}, {}{}\n",
        snapshot.version(),
        snapshot.generated_at(),
        plural(snapshot.cells().len(), "cell", "cells"),
        count(CellState::Active),
        count(CellState::Draining),
        count(CellState::Disabled),
        snapshot.slots(),
        plural(overrides, "override", "overrides"),
        plural(pins, "pin", "pins"),
        plural(moves, "move", "moves"),
        form,
    );
    if snapshot.format() >= 2 {
        out.push_str(&describe_pools(&snapshot));
    }
    // Written, not println!: a closed stdout (`| head`) ends quietly.
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(write_failure)
}

/// Format 2: the regions (share of the region table, region overrides) and
/// each pool (match, cells per region, overrides, pins, moves).
fn describe_pools(snapshot: &Snapshot) -> String {
    let slots = snapshot.region_table().len().max(1);
    let regions: Vec<String> = snapshot
        .regions()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = snapshot
                .region_table()
                .iter()
                .filter(|&&x| usize::from(x) == i)
                .count();
            format!(
                "{} ({:.2}% of slots)",
                r.id,
                n as f64 * 100.0 / slots as f64
            )
        })
        .collect();
    let mut out = format!(
        "format 2: regions {}; {}\n",
        regions.join(", "),
        plural(
            snapshot.region_override_table().len(),
            "region override",
            "region overrides"
        )
    );
    for (p, pool) in snapshot.pools().iter().enumerate() {
        let matches = match &pool.match_rule {
            None => "every request (default pool)".to_string(),
            Some(m) => {
                let mut parts = Vec::new();
                if !m.authorities.is_empty() {
                    parts.push(format!("authorities {}", m.authorities.join(" ")));
                }
                if !m.path_prefixes.is_empty() {
                    parts.push(format!("paths {}", m.path_prefixes.join(" ")));
                }
                parts.join(", ")
            }
        };
        let per_region: Vec<String> = snapshot
            .regions()
            .iter()
            .enumerate()
            .map(|(r, region)| {
                let cells: Vec<&str> = snapshot
                    .cells()
                    .iter()
                    .filter(|c| usize::from(c.pool) == p && usize::from(c.region) == r)
                    .map(|c| c.id.as_str())
                    .collect();
                format!("{}: {}", region.id, cells.join(" "))
            })
            .collect();
        let count = |kind: EntryKind| {
            pool.tenant_table()
                .kinds()
                .filter(|(k, _)| *k == kind)
                .count()
        };
        out.push_str(&format!(
            "pool {} ({matches}): {}; {}, {}, {}\n",
            pool.id,
            per_region.join("; "),
            plural(count(EntryKind::Override), "override", "overrides"),
            plural(count(EntryKind::Pin), "pin", "pins"),
            plural(pool.moves().len(), "move", "moves"),
        ));
    }
    out
}
