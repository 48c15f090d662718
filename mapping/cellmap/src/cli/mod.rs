//! The `cellmap` command line: one module per subcommand, `serve` in
//! `crate::serve`.
//!
//! Exit codes: 0 ok, 1 invalid input (a refused snapshot or spec, an
//! unreadable file), 2 usage (clap's own code for bad arguments).

mod build;
mod diff;
mod drain;
mod route;
mod validate;

use cell_router_mapping::{PathError, Snapshot};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cellmap",
    version,
    about = "Build, check, explain and serve cell-router mapping snapshots",
    long_about = "Build, check, explain and serve cell-router mapping snapshots.\n\n\
A snapshot maps every tenant to a cell: an explicit override or pin wins, a gradual \
move splits a tenant's users (by a split key such as the token's subject) between two \
cells, and everyone else is placed by SipHash-1-3 of the tenant id over a fixed table of \
slots (see mapping/SPEC.md). Cell states then apply: draining cells shed a random share \
of requests, disabled cells fail over, and a cell ramping back after an outage takes a \
rising share of its users, the rest going to its failover.\n\n\
Exit codes: 0 ok, 1 invalid input (the error names the JSON path), 2 usage.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Validate(validate::ValidateArgs),
    Route(route::RouteArgs),
    Diff(diff::DiffArgs),
    Build(build::BuildArgs),
    Drain(drain::DrainArgs),
    Serve(crate::serve::ServeArgs),
}

/// A failure: message and exit code.
pub(crate) struct Failure {
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

/// Parses the command line, runs the command, and maps the outcome to the
/// exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Route(args) => route::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Build(args) => build::run(args),
        Command::Drain(args) => drain::run(args),
        Command::Serve(args) => crate::serve::run(args).map_err(Failure::invalid),
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

/// A file's bytes; `-` reads stdin.
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

/// A snapshot file in either form, JSON or binary (told apart by the first
/// bytes).
fn load_snapshot(path: &Path) -> Result<Snapshot, Failure> {
    cell_router_mapping::binary::parse_any(&read_input(path)?).map_err(|e| path_failure(e, path))
}

/// [`load_snapshot`] for a command that needs the tenant ids (`doing`: what
/// it does with them): the binary form keyed by hash has none.
fn load_snapshot_with_ids(path: &Path, doing: &str) -> Result<Snapshot, Failure> {
    let snapshot = load_snapshot(path)?;
    if snapshot.keys() == cell_router_mapping::table::Keys::Hashes {
        return Err(Failure::invalid(format!(
            "{} is the binary form keyed by hash: it carries no tenant ids, so it cannot be {doing}; \
             use the JSON form or the binary form keyed by id (`cellmap build --binary-keys ids`)",
            path.display()
        )));
    }
    Ok(snapshot)
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
