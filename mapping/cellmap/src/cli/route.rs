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
and shown with U+FFFD in the output.\n\n\
Format 2 (pools and regions): the pool is the one the gateway selects for --authority \
and --path (as Envoy normalised them; default `/`), or --pool. The tenant's home region \
is its region override, else the region table's. With --gateway-region, a tenant homed \
elsewhere is forwarded there (routing `forward`, forward_to) and the cell shown is the one \
the home region's gateway routes to; with --forwarded too (the request carries \
x-cell-forwarded-by), it is refused instead: 503 wrong_region, never a second forward. \
JSON lines add pool, home_region, gateway_region, routing (local, forward, wrong_region), \
forward_to and cell_reason (why the cell was chosen in the home region; `reason` is the \
gateway's: forward, wrong_region, or the cell's). No pool matching: outcome no_pool \
(404). Format-1 output is unchanged (one pool, one region; the gateway region is ignored).\n\n\
Many tenants: --tenants-file FILE or stdin, one process for all of them.")]
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
    /// Format 2: the request's path (as Envoy normalised it) that selects
    /// the pool
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/",
        conflicts_with = "pool"
    )]
    path: String,
    /// Format 2: the request's :authority that selects the pool
    #[arg(long, value_name = "HOST", default_value = "", conflicts_with = "pool")]
    authority: String,
    /// Format 2: the pool, by id, instead of --path and --authority
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
    /// Format 2: the region of the gateway the request reaches; a tenant
    /// homed elsewhere is forwarded to its home region (without it, each
    /// tenant is resolved in its home region)
    #[arg(long, value_name = "REGION")]
    gateway_region: Option<String>,
    /// Format 2: the request already carries x-cell-forwarded-by (another
    /// region's gateway forwarded it): a tenant homed elsewhere gets 503
    /// wrong_region instead of a second forward
    #[arg(long, requires = "gateway_region")]
    forwarded: bool,
    /// Read tenant ids from FILE, one per line (as stdin)
    #[arg(long, value_name = "FILE", conflicts_with = "tenants")]
    tenants_file: Option<PathBuf>,
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
    /// Format 2: the pool the request selected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<&'a str>,
    /// Format 2: the tenant's home region.
    #[serde(skip_serializing_if = "Option::is_none")]
    home_region: Option<&'a str>,
    /// Format 2: the gateway's region (--gateway-region).
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_region: Option<&'a str>,
    /// Format 2: `local`, `forward` (to `forward_to`, whose gateway routes
    /// it: the fields below say how) or `wrong_region` (503).
    #[serde(skip_serializing_if = "Option::is_none")]
    routing: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward_to: Option<&'a str>,
    /// Format 2: why the cell was chosen in the home region (`reason` is
    /// `forward` or `wrong_region` when the gateway does not route itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    cell_reason: Option<&'a str>,
    /// None only for `wrong_region`: no cell serves the request.
    cell: Option<&'a str>,
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

/// What `cellmap route` resolves a tenant with: the pool and the gateway's
/// region (format 2), the split key and the time.
struct Request {
    /// Format 2: the pool (None: no pool matches: 404 no_pool).
    pool: Option<u16>,
    gateway_region: Option<u16>,
    forwarded: bool,
    now_ms: u64,
}

fn pool_and_region(snapshot: &Snapshot, args: &RouteArgs) -> Result<Request, Failure> {
    let now_ms = args.at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    });
    if snapshot.format() < 2 {
        // Format 1: one implicit pool matching every request, one region;
        // the gateway's region is ignored (SPEC.md).
        if let Some(pool) = args.pool.as_deref().filter(|p| *p != "default") {
            return Err(Failure::usage(format!(
                "--pool {pool}: a format-1 snapshot has one pool, `default`"
            )));
        }
        return Ok(Request {
            pool: Some(0),
            gateway_region: None,
            forwarded: false,
            now_ms,
        });
    }
    let pool = match &args.pool {
        Some(id) => Some(snapshot.pool_index(id).ok_or_else(|| {
            Failure::usage(format!(
                "--pool {id}: no such pool (the snapshot has {})",
                snapshot
                    .pools()
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
        None => snapshot.pool_for(args.authority.as_bytes(), args.path.as_bytes()),
    };
    let gateway_region = match &args.gateway_region {
        Some(id) => Some(snapshot.region_index(id).ok_or_else(|| {
            Failure::usage(format!(
                "--gateway-region {id}: no such region (the snapshot has {})",
                snapshot
                    .regions()
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
        None => None,
    };
    Ok(Request {
        pool,
        gateway_region,
        forwarded: args.forwarded,
        now_ms,
    })
}

/// Calls `each` for every tenant: the arguments, else --tenants-file, else
/// stdin (one per line; a trailing \r removed, empty lines skipped).
fn for_each_tenant(
    args: &RouteArgs,
    mut each: impl FnMut(&[u8]) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if !args.tenants.is_empty() {
        for tenant in &args.tenants {
            each(tenant.as_encoded_bytes())?;
        }
        return Ok(());
    }
    let mut reader: Box<dyn BufRead> = match &args.tenants_file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?,
        )),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(Failure::usage(
                    "give TENANT arguments, --tenants-file, or pipe tenant ids on stdin, one per line",
                ));
            }
            Box::new(stdin.lock())
        }
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure::invalid(format!("cannot read the tenants: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        let tenant = line.strip_suffix(b"\n").unwrap_or(&line);
        let tenant = tenant.strip_suffix(b"\r").unwrap_or(tenant);
        if !tenant.is_empty() {
            each(tenant)?;
        }
    }
}

/// A request that selects no pool (format 2): 404 no_pool.
#[derive(Serialize)]
struct NoPoolLine<'a> {
    tenant: &'a str,
    pool: Option<&'a str>,
    reason: &'a str,
    outcome: &'a str,
    authority: &'a str,
    path: &'a str,
}

pub(super) fn run(args: RouteArgs) -> Result<(), Failure> {
    let snapshot = load_snapshot(&args.snapshot)?;
    let request = pool_and_region(&snapshot, &args)?;
    let format2 = snapshot.format() >= 2;
    let now_ms = request.now_ms;
    let split_key = args.split_key.clone().map(OsString::into_encoded_bytes);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let region_id = |i: u16| {
        snapshot
            .regions()
            .get(usize::from(i))
            .map(|r| r.id.as_str())
    };
    let route_one = |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>,
                     tenant: &[u8]|
     -> Result<(), Failure> {
        let key = split_key.as_deref().unwrap_or(tenant);
        let tenant_text = String::from_utf8_lossy(tenant);
        let Some(pool) = request.pool else {
            let line = NoPoolLine {
                tenant: &tenant_text,
                pool: None,
                reason: "no_pool",
                outcome: "no_pool",
                authority: &args.authority,
                path: &args.path,
            };
            if args.json {
                serde_json::to_writer(&mut *out, &line).map_err(|e| write_failure(e.into()))?;
                out.write_all(b"\n").map_err(write_failure)?;
            } else {
                writeln!(
                    out,
                    "{} -> 404 no_pool (no pool matches authority {:?} path {:?})",
                    line.tenant, line.authority, line.path
                )
                .map_err(write_failure)?;
            }
            return Ok(());
        };
        // The luckiest shed draw: the route a request takes unless shed;
        // shedding is reported as the cell's probability below.
        let draws = Draws::unshed(key, now_ms);
        let home_region = snapshot.home_region(tenant);
        // What the gateway does, then (forwarded) what the home region's
        // gateway does with it.
        let at_gateway = snapshot.resolve_in(
            tenant,
            pool,
            request.gateway_region,
            request.forwarded,
            &draws,
        );
        let (routing, forward_to, r) = match at_gateway.outcome {
            Outcome::Forward { region } => (
                Some("forward"),
                region_id(region),
                snapshot.resolve_in(tenant, pool, Some(home_region), true, &draws),
            ),
            Outcome::WrongRegion { .. } => (
                Some("wrong_region"),
                None,
                snapshot.resolve_in(tenant, pool, Some(home_region), true, &draws),
            ),
            _ => (request.gateway_region.map(|_| "local"), None, at_gateway),
        };
        let wrong_region = routing == Some("wrong_region");
        let id = |i: u16| snapshot.cell(i).map(|c| c.id.as_str()).unwrap_or("?");
        let slot_cell = slot_cell(&snapshot, pool, home_region, r.slot)
            .map(id)
            .unwrap_or("?");
        let final_cell = snapshot.cell(r.final_cell());
        let (outcome, shed_bp) = match r.outcome {
            _ if wrong_region => ("wrong_region", 0),
            Outcome::Route { .. } => (
                "route",
                final_cell
                    .filter(|c| c.state == CellState::Draining)
                    .map_or(0, |c| c.shed_basis_points),
            ),
            Outcome::Shed { .. } => ("shed", BASIS_POINTS),
            Outcome::Unavailable { .. } => ("unavailable", 0),
            Outcome::Forward { .. } | Outcome::WrongRegion { .. } => ("wrong_region", 0),
        };
        let moved = match r.source {
            Source::Split { moved } => Some(moved),
            _ => None,
        };
        let ramp = r.ramp.filter(|_| !wrong_region).map(|step| RampLine {
            cell: id(step.cell),
            share_percent: percent(step.share_bp),
            kept: step.kept,
            full_at: snapshot
                .cell(step.cell)
                .and_then(|c| c.ramp.as_ref())
                .map(|ramp| rfc3339_ms(ramp.end_ms()))
                .unwrap_or_default(),
        });
        let key = String::from_utf8_lossy(key);
        let line = RouteLine {
            tenant: &tenant_text,
            pool: format2
                .then(|| {
                    snapshot
                        .pools()
                        .get(usize::from(pool))
                        .map(|p| p.id.as_str())
                })
                .flatten(),
            home_region: format2.then(|| region_id(home_region)).flatten(),
            gateway_region: request.gateway_region.and_then(region_id),
            routing: routing.filter(|_| format2),
            forward_to,
            cell_reason: format2.then(|| r.reason()),
            cell: (!wrong_region).then(|| id(r.final_cell())),
            slot: r.slot,
            slot_cell,
            reason: if format2 {
                at_gateway.reason()
            } else {
                r.reason()
            },
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
            serde_json::to_writer(&mut *out, &line).map_err(|e| write_failure(e.into()))?;
            out.write_all(b"\n").map_err(write_failure)?;
        } else {
            writeln!(out, "{}", explain(&snapshot, &line)).map_err(write_failure)?;
        }
        Ok(())
    };
    for_each_tenant(&args, |tenant| route_one(&mut out, tenant))?;
    out.flush().map_err(write_failure)
}

/// The owner of `slot` in `pool`'s table for `region`.
fn slot_cell(snapshot: &Snapshot, pool: u16, region: u16, slot: u32) -> Option<u16> {
    if snapshot.format() < 2 {
        return snapshot.slot_table().get(slot as usize).copied();
    }
    snapshot
        .pool(pool)?
        .slot_table(region)
        .get(slot as usize)
        .copied()
}

/// `TENANT -> CELL (slot N, REASON, OUTCOME)`, then what a move, a ramp or
/// shedding does to this key and to requests.
fn explain(snapshot: &Snapshot, line: &RouteLine<'_>) -> String {
    let cell = line.cell.unwrap_or("-");
    let mut text = match (line.pool, line.home_region) {
        (Some(pool), Some(home)) => {
            let gateway = line
                .gateway_region
                .map(|g| format!(", gateway {g}"))
                .unwrap_or_default();
            match line.routing {
                Some("wrong_region") => {
                    return format!(
                        "{} -> 503 wrong_region (pool {pool}, home region {home}{gateway}: already forwarded once, never forwarded again; retry after 1s)",
                        line.tenant
                    );
                }
                Some("forward") => format!(
                    "{} -> forward to {home} -> {cell} (pool {pool}, home region {home}{gateway}, slot {}, {}, {}",
                    line.tenant,
                    line.slot,
                    line.cell_reason.unwrap_or(line.reason),
                    line.outcome
                ),
                _ => format!(
                    "{} -> {cell} (pool {pool}, region {home}{gateway}, slot {}, {}, {}",
                    line.tenant, line.slot, line.reason, line.outcome
                ),
            }
        }
        _ => format!(
            "{} -> {cell} (slot {}, {}, {}",
            line.tenant, line.slot, line.reason, line.outcome
        ),
    };
    if line.outcome == "shed"
        && let Some(s) = line.retry_after_s
    {
        text.push_str(&format!(", retry after {s}s"));
    }
    text.push(')');
    // A tenant may have a move in several pools: the one that chose `home`.
    let moves = line
        .pool
        .and_then(|id| snapshot.pool(snapshot.pool_index(id)?))
        .map_or(snapshot.moves(), |p| p.moves());
    let tenant_move = moves.iter().find(|m| {
        m.tenant == line.tenant
            && [m.from, m.to]
                .iter()
                .any(|&c| snapshot.cell(c).is_some_and(|c| c.id == line.home))
    });
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
            cell,
            line.retry_after_s.unwrap_or(0)
        ));
    }
    text
}
