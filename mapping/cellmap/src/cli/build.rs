//! `cellmap build`: a snapshot from a spec.

use super::{Failure, load_snapshot, path_failure, plural, read_input, write_failure};
use cell_router_mapping::builder::{self, BuildOptions, Spec};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

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
pub(super) struct BuildArgs {
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

/// `generated_at`: $SOURCE_DATE_EPOCH (reproducible builds) or now.
fn generated_at() -> Result<String, Failure> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => {
            let secs: u64 = value.trim().parse().map_err(|_| {
                Failure::invalid(format!(
                    "SOURCE_DATE_EPOCH={value:?} is not a whole number of seconds"
                ))
            })?;
            Ok(crate::clock::rfc3339_from_unix(secs))
        }
        Err(_) => Ok(crate::clock::utc_now_rfc3339()),
    }
}

pub(super) fn run(args: BuildArgs) -> Result<(), Failure> {
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
        // Written next to the target and renamed, so a watcher (the sidecar)
        // never reads a half-written snapshot.
        crate::files::write_atomically(&args.output, built.json.as_bytes()).map_err(|e| {
            Failure::invalid(format!("cannot write {}: {e}", args.output.display()))
        })?;
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
