//! `cellmap`: the operator's tool for mapping snapshots.
//!
//! Exit codes: 0 ok, 1 invalid input (a refused snapshot or spec, an
//! unreadable file), 2 usage (clap's own code for bad arguments).

use cell_router_mapping::builder::{self, BuildOptions, Spec};
use cell_router_mapping::{Outcome, PathError, Snapshot, SnapshotDiff};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cellmap",
    version,
    about = "Build, check, explain and serve cell-router mapping snapshots",
    long_about = "Build, check, explain and serve cell-router mapping snapshots.\n\n\
A snapshot maps every tenant to a cell: an explicit override or pin wins, a gradual \
move splits a tenant's requests between two cells, and everyone else is placed by \
SipHash-1-3 of the tenant id over a fixed table of slots (see mapping/SPEC.md). Cell \
states then apply: draining cells shed a share of requests, disabled cells fail over.\n\n\
Exit codes: 0 ok, 1 invalid input (the error names the JSON path), 2 usage.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Validate(ValidateArgs),
    Route(RouteArgs),
    Diff(DiffArgs),
    Build(BuildArgs),
    /// Run the sidecar that serves snapshots to the local gateway
    #[command(
        long_about = "Run the sidecar that serves snapshots to the local gateway.\n\n\
It serves the last good snapshot at GET /snapshot (ETag, If-None-Match, ?after=<version> \
and &wait=<s> long-polls) and GET /healthz. Every new snapshot from the source is \
validated and must carry a greater version; a bad one is refused and logged while the \
last good one stays served."
    )]
    Serve(cell_router_mapping::serve::ServeArgs),
}

/// Check a snapshot file
#[derive(Args)]
#[command(
    long_about = "Check a snapshot file against the format of mapping/SPEC.md.\n\n\
Prints a one-line summary and exits 0, or prints `error: $.json.path: why` for the first \
problem and exits 1."
)]
struct ValidateArgs {
    /// Snapshot file (`-` reads stdin)
    file: PathBuf,
    /// Also require the version to be greater than this one (as the sidecar
    /// and the filter do when replacing a snapshot)
    #[arg(long, value_name = "VERSION")]
    newer_than: Option<u64>,
}

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
struct RouteArgs {
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

/// Compare two snapshots
#[derive(Args)]
#[command(long_about = "Compare two snapshots.\n\n\
Shows the slots each cell gained and lost, the share of the keyspace that moved (the \
share of tenants routed by slot whose cell changes), overrides, pins and moves added, \
removed and changed, and cells added, removed or changed (state, weight, shed ratio, \
failover).")]
struct DiffArgs {
    /// The snapshot in force
    old: PathBuf,
    /// The candidate snapshot
    new: PathBuf,
    /// One JSON document instead of text
    #[arg(long)]
    json: bool,
}

/// Build a snapshot from a spec
#[derive(Args)]
#[command(
    long_about = "Build a snapshot from a spec (see mapping/SPEC.md, \"Builder\").\n\n\
The spec holds the hash key and slot count, the cells (weight, state, shed_ratio, \
retry_after_s, failover), overrides and gradual moves. Slots are shared among active \
cells by weight (largest remainder); draining and disabled cells keep the slots they \
had and get no new ones.\n\n\
With --previous only the slots that must move do (a removed cell's, and the fewest \
needed to reach the new quotas), and the version is the previous one + 1. With \
--tenants, each known tenant whose cell would change because the ring changed (not \
because of an explicit override) is pinned to its previous cell.\n\n\
generated_at is $SOURCE_DATE_EPOCH when set, else now, so the same inputs can give a \
byte-identical snapshot. The output is validated before it is written; the file is \
replaced atomically."
)]
struct BuildArgs {
    /// Spec file (JSON)
    #[arg(long)]
    spec: PathBuf,
    /// The snapshot in force, to move as few slots as possible
    #[arg(long)]
    previous: Option<PathBuf>,
    /// Known tenant ids, one per line, to keep in place (needs --previous)
    #[arg(long, requires = "previous")]
    tenants: Option<PathBuf>,
    /// Where to write the snapshot (`-` for stdout)
    #[arg(long, short = 'o')]
    output: PathBuf,
}

/// A failure: message and exit code.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 2,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate(args),
        Command::Route(args) => route(args),
        Command::Diff(args) => diff(args),
        Command::Build(args) => build(args),
        Command::Serve(args) => cell_router_mapping::serve::run(args).map_err(Failure::invalid),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("error: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, Failure> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::invalid(format!("cannot read stdin: {e}")))?;
        return Ok(bytes);
    }
    std::fs::read(path).map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))
}

fn path_failure(err: PathError, file: &Path) -> Failure {
    Failure::invalid(format!("{err} (in {})", file.display()))
}

fn load_snapshot(path: &Path) -> Result<Snapshot, Failure> {
    Snapshot::parse(&read_input(path)?).map_err(|e| path_failure(e, path))
}

fn write_failure(err: std::io::Error) -> Failure {
    // `cellmap route ... | head` closing the pipe early is not an error.
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        return Failure {
            message: String::new(),
            code: 0,
        };
    }
    Failure::invalid(format!("cannot write output: {err}"))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn validate(args: ValidateArgs) -> Result<(), Failure> {
    let bytes = read_input(&args.file)?;
    let snapshot = Snapshot::parse_newer(&bytes, args.newer_than)
        .map_err(|e| Failure::invalid(e.to_string()))?;
    let count = |state| snapshot.cells().iter().filter(|c| c.state == state).count();
    let overrides = snapshot
        .tenant_table()
        .iter()
        .filter(|(_, k, _)| *k == cell_router_mapping::table::EntryKind::Override)
        .count();
    let pins = snapshot
        .tenant_table()
        .iter()
        .filter(|(_, k, _)| *k == cell_router_mapping::table::EntryKind::Pin)
        .count();
    println!(
        "ok: version {}, generated_at {}, {} ({} active, {} draining, {} disabled), {} slots, {}, {}, {}",
        snapshot.version(),
        snapshot.generated_at(),
        plural(snapshot.cells().len(), "cell", "cells"),
        count(cell_router_mapping::CellState::Active),
        count(cell_router_mapping::CellState::Draining),
        count(cell_router_mapping::CellState::Disabled),
        snapshot.slot_table().len(),
        plural(overrides, "override", "overrides"),
        plural(pins, "pin", "pins"),
        plural(snapshot.moves().len(), "move", "moves"),
    );
    Ok(())
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

fn route(args: RouteArgs) -> Result<(), Failure> {
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

fn diff(args: DiffArgs) -> Result<(), Failure> {
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

/// `generated_at`: $SOURCE_DATE_EPOCH (reproducible builds) or now.
fn generated_at() -> Result<String, Failure> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => {
            let secs: u64 = value.trim().parse().map_err(|_| {
                Failure::invalid(format!(
                    "SOURCE_DATE_EPOCH={value:?} is not a whole number of seconds"
                ))
            })?;
            Ok(cell_router_mapping::serve::rfc3339_from_unix(secs))
        }
        Err(_) => Ok(cell_router_mapping::serve::utc_now_rfc3339()),
    }
}

fn build(args: BuildArgs) -> Result<(), Failure> {
    let spec = Spec::parse(&read_input(&args.spec)?).map_err(|e| path_failure(e, &args.spec))?;
    let previous = match &args.previous {
        Some(path) => Some(load_snapshot(path)?),
        None => None,
    };
    let known = match &args.tenants {
        Some(path) => {
            let text = String::from_utf8(read_input(path)?)
                .map_err(|_| Failure::invalid(format!("{}: not valid UTF-8", path.display())))?;
            builder::parse_known_tenants(&text)
                .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?
        }
        None => Vec::new(),
    };
    let generated_at = generated_at()?;
    let built = builder::build(
        &spec,
        &BuildOptions {
            previous: previous.as_ref(),
            known_tenants: &known,
            generated_at: &generated_at,
        },
    )
    .map_err(|e| path_failure(e, &args.spec))?;

    let to_stdout = args.output == Path::new("-");
    if to_stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(built.json.as_bytes())
            .and_then(|()| out.flush())
            .map_err(write_failure)?;
    } else {
        write_atomically(&args.output, built.json.as_bytes())?;
    }

    let r = &built.report;
    let mut report = format!(
        "wrote {}: version {}, {} slots, {}",
        if to_stdout {
            "stdout".to_string()
        } else {
            args.output.display().to_string()
        },
        r.version,
        r.slots,
        plural(r.slots_per_cell.len(), "cell", "cells")
    );
    report.push_str("\nslots per cell:");
    for (cell, n) in &r.slots_per_cell {
        report.push_str(&format!(" {cell}={n}"));
    }
    if previous.is_some() {
        report.push_str(&format!(
            "\nslots moved: {} of {} ({:.4}% of the keyspace)",
            r.slots_moved,
            r.slots,
            f64::from(r.slots_moved) * 100.0 / f64::from(r.slots.max(1))
        ));
        report.push_str(&format!(
            "\npins: {} in snapshot ({} pinned now, {} kept, {} released); could not pin {} (previous cell removed)",
            r.pins, r.pins_added, r.pins_kept, r.pins_released, r.unpinnable
        ));
    }
    if to_stdout {
        eprintln!("{report}");
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Writes next to the target and renames, so a watcher (the sidecar) never
/// reads a half-written snapshot.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot.json".to_string());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure::invalid(format!("cannot write {}: {e}", path.display()))
    })
}
