//! `cellmap validate`: check a snapshot file.

use super::{Failure, plural, read_input};
use cell_router_mapping::CellState;
use cell_router_mapping::table::EntryKind;
use clap::Args;
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
    let form = if cell_router_mapping::binary::is_binary(&bytes) {
        " (binary form)"
    } else {
        ""
    };
    let snapshot = cell_router_mapping::binary::parse_any_newer(&bytes, args.newer_than)
        .map_err(|e| Failure::invalid(e.to_string()))?;
    let count = |state| snapshot.cells().iter().filter(|c| c.state == state).count();
    let overrides = snapshot
        .tenant_table()
        .iter()
        .filter(|(_, k, _)| *k == EntryKind::Override)
        .count();
    let pins = snapshot
        .tenant_table()
        .iter()
        .filter(|(_, k, _)| *k == EntryKind::Pin)
        .count();
    println!(
        "ok: version {}, generated_at {}, {} ({} active, {} draining, {} disabled), {} slots, {}, {}, {}{}",
        snapshot.version(),
        snapshot.generated_at(),
        plural(snapshot.cells().len(), "cell", "cells"),
        count(CellState::Active),
        count(CellState::Draining),
        count(CellState::Disabled),
        snapshot.slot_table().len(),
        plural(overrides, "override", "overrides"),
        plural(pins, "pin", "pins"),
        plural(snapshot.moves().len(), "move", "moves"),
        form,
    );
    Ok(())
}
