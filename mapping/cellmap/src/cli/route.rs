//! `cellmap route`: where tenants are routed, and why.

use super::{Failure, load_snapshot, write_failure};
use cell_router_mapping::Outcome;
use clap::Args;
use serde::Serialize;
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// Show where tenants are routed and why
#[derive(Args)]
#[command(long_about = "Show where tenants are routed and why.\n\n\
For each tenant: the cell, its slot, the reason (override, pin, split, slot, or \
failover when a disabled cell's failover was followed) and the outcome (route; shed \
when a draining cell sheds this request; unavailable when a disabled cell has no \
failover). Tenant ids are used byte for byte: no trimming, no case folding.\n\n\
With no TENANT arguments, tenants are read from stdin, one per line (a trailing \\r is \
removed; empty lines are skipped).\n\n\
Text output: `TENANT -> CELL (slot N, REASON, OUTCOME)` per line. With --json, one \
object per line: tenant, cell (the cell that decided the outcome), slot, slot_cell \
(the slot's owner), reason, outcome, home (the cell chosen before cell states \
applied), plus moved for a split and retry_after_s when shed. Tenant bytes that are not \
UTF-8 are routed as given and shown with U+FFFD in the output.")]
pub(super) struct RouteArgs {
    /// Snapshot file
    #[arg(long, short = 's')]
    snapshot: PathBuf,
    /// One JSON object per line instead of text
    #[arg(long)]
    json: bool,
    /// The per-request key (e.g. the x-request-id) used for gradual moves
    /// and shedding; empty when not given
    #[arg(long, value_name = "ID", default_value = "")]
    request_id: OsString,
    /// Tenant ids (read from stdin when none are given)
    tenants: Vec<OsString>,
}

#[derive(Serialize)]
struct RouteLine<'a> {
    tenant: &'a str,
    cell: &'a str,
    slot: u32,
    slot_cell: &'a str,
    reason: &'a str,
    outcome: &'a str,
    home: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    moved: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<u32>,
}

pub(super) fn run(args: RouteArgs) -> Result<(), Failure> {
    let snapshot = load_snapshot(&args.snapshot)?;
    let request_key = args.request_id.into_encoded_bytes();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut route_one = |tenant: &[u8]| -> Result<(), Failure> {
        let r = snapshot.resolve(tenant, &request_key);
        let id = |i: u16| snapshot.cell(i).map(|c| c.id.as_str()).unwrap_or("?");
        let slot_cell = snapshot
            .slot_table()
            .get(r.slot as usize)
            .copied()
            .map(id)
            .unwrap_or("?");
        let (outcome, retry_after_s) = match r.outcome {
            Outcome::Route { .. } => ("route", None),
            Outcome::Shed { retry_after_s, .. } => ("shed", Some(retry_after_s)),
            Outcome::Unavailable { .. } => ("unavailable", None),
        };
        let moved = match r.source {
            cell_router_mapping::Source::Split { moved } => Some(moved),
            _ => None,
        };
        let tenant = String::from_utf8_lossy(tenant);
        let line = RouteLine {
            tenant: &tenant,
            cell: id(r.final_cell()),
            slot: r.slot,
            slot_cell,
            reason: r.reason(),
            outcome,
            home: id(r.home),
            moved,
            retry_after_s,
        };
        if args.json {
            serde_json::to_writer(&mut out, &line).map_err(|e| write_failure(e.into()))?;
            out.write_all(b"\n").map_err(write_failure)?;
        } else {
            let mut outcome = line.outcome.to_string();
            if let Some(s) = retry_after_s {
                outcome.push_str(&format!(", retry after {s}s"));
            }
            writeln!(
                out,
                "{} -> {} (slot {}, {}, {})",
                line.tenant, line.cell, line.slot, line.reason, outcome
            )
            .map_err(write_failure)?;
        }
        Ok(())
    };

    if args.tenants.is_empty() {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err(Failure::usage(
                "give TENANT arguments or pipe tenant ids on stdin, one per line",
            ));
        }
        let mut reader = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Failure::invalid(format!("cannot read stdin: {e}")))?;
            if n == 0 {
                break;
            }
            let tenant = line.strip_suffix(b"\n").unwrap_or(&line);
            let tenant = tenant.strip_suffix(b"\r").unwrap_or(tenant);
            if !tenant.is_empty() {
                route_one(tenant)?;
            }
        }
    } else {
        for tenant in args.tenants {
            route_one(&tenant.into_encoded_bytes())?;
        }
    }
    out.flush().map_err(write_failure)
}
