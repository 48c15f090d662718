//! `cellmap route`: where tenants are routed, and why.

use super::{Failure, load_snapshot, write_failure};
use crate::clock::rfc3339_ms;
use cell_router_mapping::hash::BASIS_POINTS;
use cell_router_mapping::ramp::parse_rfc3339_ms;
use cell_router_mapping::{CellState, Draws, Outcome, Snapshot, Source, Timestamp};
use clap::Args;
use serde::Serialize;
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Show where tenants are routed and why
#[derive(Args)]
#[command(long_about = "Show where tenants are routed and why.\n\n\
For each tenant: the cell, its slot, the reason (override, pin, split, slot; failover \
when a disabled cell's failover was followed; ramp when a cell ramping back after an \
outage sent this key on to its failover) and the outcome (route; shed when the cell \
sheds every request; unavailable when a disabled cell has no failover). Tenant ids are \
used byte for byte: no trimming, no case folding.\n\n\
Gradual moves and ramps split by a stable key (the gateway uses the token's subject, \
else the tenant): give it with --split-key; without it the tenant is the key. Ramps \
depend on the time: --at (default now). Shedding is random per request, so a draining \
cell is explained as a probability (`sheds 30% of requests at random`), never as this \
request's fate.\n\n\
With no TENANT arguments, tenants are read from stdin, one per line (a trailing \\r is \
removed; empty lines are skipped).\n\n\
Text output: `TENANT -> CELL (slot N, REASON, OUTCOME)` per line, then `; ...` for a \
move, a ramp or shedding. With --json, one object per line: tenant, cell (the cell that \
decided the outcome), slot, slot_cell (the slot's owner), reason, outcome, home (the cell \
chosen before cell states applied), split_key; plus moved for a split; ramp (cell, \
share_percent now, kept, full_at) when a ramping cell was met; shed_percent and \
retry_after_s when the cell sheds. Tenant bytes that are not UTF-8 are routed as given \
and shown with U+FFFD in the output.")]
pub(super) struct RouteArgs {
    /// Snapshot file
    #[arg(long, short = 's')]
    snapshot: PathBuf,
    /// One JSON object per line instead of text
    #[arg(long)]
    json: bool,
    /// The stable key gradual moves and ramps split by (the gateway uses the
    /// token's subject); the tenant id when not given
    #[arg(long, value_name = "KEY")]
    split_key: Option<OsString>,
    /// The time ramps are computed at: Unix seconds or RFC 3339; now when
    /// not given
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    at: Option<u64>,
    /// Tenant ids (read from stdin when none are given)
    tenants: Vec<OsString>,
}

/// Unix seconds or RFC 3339, to Unix milliseconds.
fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Timestamp::Unix(secs).to_unix_ms();
    }
    parse_rfc3339_ms(text)
}

#[derive(Serialize)]
struct RampLine<'a> {
    cell: &'a str,
    share_percent: f64,
    kept: bool,
    full_at: String,
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
    split_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    moved: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ramp: Option<RampLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shed_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<u32>,
}

fn percent(basis_points: u16) -> f64 {
    f64::from(basis_points) / 100.0
}

pub(super) fn run(args: RouteArgs) -> Result<(), Failure> {
    let snapshot = load_snapshot(&args.snapshot)?;
    let now_ms = args.at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    });
    let split_key = args.split_key.map(OsString::into_encoded_bytes);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut route_one = |tenant: &[u8]| -> Result<(), Failure> {
        let key = split_key.as_deref().unwrap_or(tenant);
        // The luckiest shed draw: the route a request takes unless shed;
        // shedding is reported as the cell's probability below.
        let r = snapshot.resolve(tenant, &Draws::unshed(key, now_ms));
        let id = |i: u16| snapshot.cell(i).map(|c| c.id.as_str()).unwrap_or("?");
        let slot_cell = snapshot
            .slot_table()
            .get(r.slot as usize)
            .copied()
            .map(id)
            .unwrap_or("?");
        let final_cell = snapshot.cell(r.final_cell());
        let (outcome, shed_bp) = match r.outcome {
            Outcome::Route { .. } => (
                "route",
                final_cell
                    .filter(|c| c.state == CellState::Draining)
                    .map_or(0, |c| c.shed_basis_points),
            ),
            Outcome::Shed { .. } => ("shed", BASIS_POINTS),
            Outcome::Unavailable { .. } => ("unavailable", 0),
            // `resolve` makes no region check: never another region.
            Outcome::Forward { .. } => ("forward", 0),
            Outcome::WrongRegion { .. } => ("wrong_region", 0),
        };
        let moved = match r.source {
            Source::Split { moved } => Some(moved),
            _ => None,
        };
        let ramp = r.ramp.map(|step| RampLine {
            cell: id(step.cell),
            share_percent: percent(step.share_bp),
            kept: step.kept,
            full_at: snapshot
                .cell(step.cell)
                .and_then(|c| c.ramp.as_ref())
                .map(|ramp| rfc3339_ms(ramp.end_ms()))
                .unwrap_or_default(),
        });
        let tenant = String::from_utf8_lossy(tenant);
        let key = String::from_utf8_lossy(key);
        let line = RouteLine {
            tenant: &tenant,
            cell: id(r.final_cell()),
            slot: r.slot,
            slot_cell,
            reason: r.reason(),
            outcome,
            home: id(r.home),
            split_key: &key,
            moved,
            ramp,
            shed_percent: (shed_bp > 0).then(|| percent(shed_bp)),
            retry_after_s: (shed_bp > 0)
                .then(|| final_cell.map(|c| c.retry_after_s))
                .flatten(),
        };
        if args.json {
            serde_json::to_writer(&mut out, &line).map_err(|e| write_failure(e.into()))?;
            out.write_all(b"\n").map_err(write_failure)?;
        } else {
            writeln!(out, "{}", explain(&snapshot, &line)).map_err(write_failure)?;
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

/// `TENANT -> CELL (slot N, REASON, OUTCOME)`, then what a move, a ramp or
/// shedding does to this key and to requests.
fn explain(snapshot: &Snapshot, line: &RouteLine<'_>) -> String {
    let mut text = format!(
        "{} -> {} (slot {}, {}, {}",
        line.tenant, line.cell, line.slot, line.reason, line.outcome
    );
    if line.outcome == "shed"
        && let Some(s) = line.retry_after_s
    {
        text.push_str(&format!(", retry after {s}s"));
    }
    text.push(')');
    let tenant_move = snapshot.moves().iter().find(|m| m.tenant == line.tenant);
    if let (Some(moved), Some(m)) = (line.moved, tenant_move) {
        let id = |i: u16| snapshot.cell(i).map_or("?", |c| c.id.as_str());
        text.push_str(&format!(
            "; move {} → {} at {}%: key {:?} {}",
            id(m.from),
            id(m.to),
            percent(m.to_basis_points),
            line.split_key,
            if moved {
                "has moved"
            } else {
                "has not moved yet"
            }
        ));
    }
    if let Some(ramp) = &line.ramp {
        let failover = snapshot
            .cell_index(ramp.cell)
            .and_then(|i| snapshot.cell(i))
            .and_then(|c| c.failover)
            .and_then(|f| snapshot.cell(f))
            .map_or("?", |c| c.id.as_str());
        text.push_str(&format!(
            "; {} is ramping up: it takes {}% of keys now, 100% at {}; key {:?} {}",
            ramp.cell,
            ramp.share_percent,
            ramp.full_at,
            line.split_key,
            if ramp.kept {
                "is back on it".to_string()
            } else {
                format!("still goes to its failover {failover}")
            }
        ));
    }
    if line.outcome == "route"
        && let Some(p) = line.shed_percent
    {
        text.push_str(&format!(
            "; {} is draining: it sheds {p}% of requests at random (503, retry after {}s)",
            line.cell,
            line.retry_after_s.unwrap_or(0)
        ));
    }
    text
}
