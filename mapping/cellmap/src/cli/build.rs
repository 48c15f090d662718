//! `cellmap build`: a snapshot from a spec.

use super::{Failure, load_snapshot_with_ids, path_failure, plural, read_input, write_failure};
use cell_router_mapping::builder::load::{Breach, Load};
use cell_router_mapping::builder::pools::{self, PoolsBuildOptions, PoolsBuildReport, PoolsSpec};
use cell_router_mapping::builder::{self, BuildOptions, BuildReport, CellReport, Spec};
use clap::Args;
use std::collections::BTreeSet;
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
With --load (per-cell CPU, p99 and tenant figures against thresholds; see \
mapping/SPEC.md, \"Placement by load\"), active cells take slots by weight × headroom \
instead of weight alone: new tenants land in proportion to each cell's headroom, and \
none on a cell at or over a threshold (its slots go to the others, its known tenants \
are pinned to it). With --previous, --load needs --tenants: without them the tenants \
of the slots that move would move too.\n\n\
The report says what moved: slots from → to, pins per cell, each cell's share of \
slots before and after, its headroom, and the cells closed to new tenants and why \
(--report-json writes it as JSON).\n\n\
A spec with \"format\": 2 (mapping/SPEC.md, \"Pools and regions\") has regions with \
weights, cells in a pool and a region, and pools (match, overrides, moves): it builds a \
format-2 snapshot. The region table is shared by region weight; each pool's table per \
region by its cells' weights, from its own previous table only (a change in one pool \
never moves another pool's tenants). Known tenants keep their home region: a region-table \
change pins them by region_overrides (and with --previous needs --tenants); a spec \
region override that would re-home a known tenant is refused unless --rehome names it \
(re-homing is a data migration). --load and pins work per pool and region. A format-1 \
--previous is read as the spec's default pool in the spec's first region, so the first \
format-2 build moves nobody.\n\n\
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
    /// Per-cell load figures (JSON): new slots go by weight × headroom, none
    /// to a cell at or over a threshold
    #[arg(long, value_name = "FILE")]
    load: Option<PathBuf>,
    /// Where to write the snapshot (`-` for stdout)
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Also write the snapshot's binary form (mapping/SPEC.md, "Binary
    /// form") to FILE, decoded back and checked before it is written
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// How the binary form keys tenants: `ids` (4 bytes + the id; it can be
    /// diffed and built on) or `hashes` (10 bytes a tenant, no ids: for
    /// gateways, which only route; refused if two tenants collide in 64 bits)
    #[arg(long, value_enum, default_value_t = crate::serve::BinaryKeys::Ids, requires = "binary")]
    binary_keys: crate::serve::BinaryKeys,
    /// Also write the report as JSON to FILE (`-` for stdout when the
    /// snapshot goes to a file)
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Format 2: re-home TENANT on purpose (a data migration): its home
    /// region follows the spec's region_overrides, else the region table
    /// (repeatable)
    #[arg(long, value_name = "TENANT", requires = "previous")]
    rehome: Vec<String>,
    /// Format 2: re-home the tenants listed in FILE (one per line), as
    /// --rehome
    #[arg(long, value_name = "FILE", requires = "previous")]
    rehome_file: Option<PathBuf>,
}

/// `generated_at`: $SOURCE_DATE_EPOCH (reproducible builds) or now.
pub(super) fn generated_at() -> Result<String, Failure> {
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
    let to_stdout = args.output == Path::new("-");
    if args.load.is_some() && args.previous.is_some() && args.tenants.is_none() {
        return Err(Failure::usage(
            "--load with --previous needs --tenants: slots move by load, and without the known tenants their tenants would move with them",
        ));
    }
    if to_stdout && args.report_json.as_deref() == Some(Path::new("-")) {
        return Err(Failure::usage(
            "the snapshot and the JSON report cannot both go to stdout",
        ));
    }
    let spec_bytes = read_input(&args.spec)?;
    let format = pools::document_format(&spec_bytes).map_err(|e| path_failure(e, &args.spec))?;
    if format == pools::FORMAT_POOLS {
        return run_pools(args, &spec_bytes);
    }
    if !args.rehome.is_empty() || args.rehome_file.is_some() {
        return Err(Failure::usage(
            "--rehome is for format-2 specs (pools and regions); a format-1 snapshot has one region",
        ));
    }
    let spec = Spec::parse(&spec_bytes).map_err(|e| path_failure(e, &args.spec))?;
    let load = match &args.load {
        Some(path) => {
            let load = Load::parse(&read_input(path)?).map_err(|e| path_failure(e, path))?;
            load.check_cells(&spec.cells, None, "spec")
                .map_err(|e| path_failure(e, path))?;
            Some(load)
        }
        None => None,
    };
    let previous = match &args.previous {
        Some(path) => Some(load_snapshot_with_ids(path, "built on")?),
        None => None,
    };
    let known = match &args.tenants {
        Some(path) => read_tenants(path)?,
        None => Vec::new(),
    };
    let generated_at = generated_at()?;
    let options = BuildOptions {
        previous: previous.as_ref(),
        known_tenants: &known,
        generated_at: &generated_at,
    };
    let built = match &load {
        Some(load) => builder::build_with_load(&spec, &options, load),
        None => builder::build(&spec, &options),
    }
    .map_err(|e| path_failure(e, &args.spec))?;

    write_outputs(&args, &built.snapshot, &built.json)?;

    let target = if to_stdout {
        "stdout".to_string()
    } else {
        args.output.display().to_string()
    };
    let report = text_report(&built.report, &target, previous.is_some());
    print_reports(&args, &report, &built.report)
}

/// The binary form keyed by id, checked like the JSON one: decoded back, it
/// is the same snapshot.
fn binary_keyed_by_id(snapshot: &cell_router_mapping::Snapshot) -> Result<Vec<u8>, Failure> {
    let bytes = cell_router_mapping::binary::encode(snapshot);
    let back = cell_router_mapping::binary::decode(&bytes)
        .map_err(|e| Failure::invalid(format!("the binary form does not decode: {e}")))?;
    if back.to_doc() != snapshot.to_doc() || back.to_pooled_doc() != snapshot.to_pooled_doc() {
        return Err(Failure::invalid(
            "the binary form decodes to another snapshot",
        ));
    }
    Ok(bytes)
}

/// The binary form keyed by hash, checked: it decodes, every tenant of
/// every table is found there with the same target, and it holds no other.
fn binary_keyed_by_hash(snapshot: &cell_router_mapping::Snapshot) -> Result<Vec<u8>, Failure> {
    use cell_router_mapping::binary;
    let bytes = binary::encode_hashed(snapshot).map_err(|e| {
        Failure::invalid(format!(
            "the binary form cannot be keyed by hash: {e}; use --binary-keys ids"
        ))
    })?;
    let back = binary::decode(&bytes)
        .map_err(|e| Failure::invalid(format!("the binary form does not decode: {e}")))?;
    let key = snapshot.key();
    let mut tables = vec![(
        snapshot.region_override_table(),
        back.region_override_table(),
    )];
    tables.extend(
        snapshot
            .pools()
            .iter()
            .zip(back.pools())
            .map(|(a, b)| (a.tenant_table(), b.tenant_table())),
    );
    let same = back.pools().len() == snapshot.pools().len()
        && tables.iter().all(|(ids, hashes)| {
            ids.len() == hashes.len()
                && ids
                    .iter()
                    .all(|(t, kind, value)| hashes.get(t, key.hash(t)) == Some((kind, value)))
        });
    if !same {
        return Err(Failure::invalid(
            "the binary form keyed by hash does not hold the snapshot's tenants",
        ));
    }
    Ok(bytes)
}

/// Writes the binary form (when asked) and the JSON snapshot.
fn write_outputs(
    args: &BuildArgs,
    snapshot: &cell_router_mapping::Snapshot,
    json: &str,
) -> Result<(), Failure> {
    if let Some(path) = &args.binary {
        let bytes = match args.binary_keys {
            crate::serve::BinaryKeys::Ids => binary_keyed_by_id(snapshot)?,
            crate::serve::BinaryKeys::Hashes => binary_keyed_by_hash(snapshot)?,
        };
        crate::files::write_atomically(path, &bytes)
            .map_err(|e| Failure::invalid(format!("cannot write {}: {e}", path.display())))?;
    }
    if args.output == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(json.as_bytes())
            .and_then(|()| out.flush())
            .map_err(write_failure)?;
    } else {
        // Written next to the target and renamed, so a watcher (the sidecar)
        // never reads a half-written snapshot.
        crate::files::write_atomically(&args.output, json.as_bytes()).map_err(|e| {
            Failure::invalid(format!("cannot write {}: {e}", args.output.display()))
        })?;
    }
    Ok(())
}

/// Prints the text report (stderr when stdout carries the snapshot or the
/// JSON report) and writes the JSON report when asked.
fn print_reports<R: serde::Serialize>(
    args: &BuildArgs,
    text: &str,
    json_report: &R,
) -> Result<(), Failure> {
    let to_stdout = args.output == Path::new("-");
    let json = match &args.report_json {
        Some(_) => {
            let mut json = serde_json::to_string_pretty(json_report)
                .map_err(|e| Failure::invalid(format!("cannot encode the report: {e}")))?;
            json.push('\n');
            Some(json)
        }
        None => None,
    };
    // The report file first: stdout closed early (`| head`) must not lose it.
    if let (Some(path), Some(json)) = (&args.report_json, &json)
        && path != Path::new("-")
    {
        crate::files::write_atomically(path, json.as_bytes())
            .map_err(|e| Failure::invalid(format!("cannot write {}: {e}", path.display())))?;
    }
    if to_stdout || args.report_json.as_deref() == Some(Path::new("-")) {
        eprintln!("{text}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(write_failure)?;
    }
    if let (Some(path), Some(json)) = (&args.report_json, &json)
        && path == Path::new("-")
    {
        let mut out = std::io::stdout().lock();
        out.write_all(json.as_bytes())
            .and_then(|()| out.flush())
            .map_err(write_failure)?;
    }
    Ok(())
}

fn read_tenants(path: &Path) -> Result<Vec<String>, Failure> {
    let text = String::from_utf8(read_input(path)?)
        .map_err(|_| Failure::invalid(format!("{}: not valid UTF-8", path.display())))?;
    builder::parse_known_tenants(&text)
        .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))
}

/// `cellmap build` of a format-2 spec (pools and regions).
fn run_pools(args: BuildArgs, spec_bytes: &[u8]) -> Result<(), Failure> {
    let spec = PoolsSpec::parse(spec_bytes).map_err(|e| path_failure(e, &args.spec))?;
    let load = match &args.load {
        Some(path) => {
            let load = Load::parse(&read_input(path)?).map_err(|e| path_failure(e, path))?;
            let cells: Vec<_> = spec.cells.iter().map(|c| c.cell()).collect();
            load.check_cells(&cells, None, "spec")
                .map_err(|e| path_failure(e, path))?;
            Some(load)
        }
        None => None,
    };
    let previous = match &args.previous {
        Some(path) => {
            // A format-1 snapshot is one pool in one region: the builder
            // reads it as the spec's default pool in the spec's first region.
            Some(load_snapshot_with_ids(path, "built on")?)
        }
        None => None,
    };
    let known = match &args.tenants {
        Some(path) => Some(read_tenants(path)?),
        None => None,
    };
    let mut rehome: BTreeSet<String> = args.rehome.iter().cloned().collect();
    if let Some(path) = &args.rehome_file {
        rehome.extend(read_tenants(path)?);
    }
    let generated_at = generated_at()?;
    let built = pools::build_pools(
        &spec,
        &PoolsBuildOptions {
            previous: previous.as_ref(),
            known_tenants: known.as_deref(),
            rehome: &rehome,
            load: load.as_ref(),
            generated_at: &generated_at,
        },
    )
    .map_err(|e| path_failure(e, &args.spec))?;
    write_outputs(&args, &built.snapshot, &built.json)?;
    let target = if args.output == Path::new("-") {
        "stdout".to_string()
    } else {
        args.output.display().to_string()
    };
    let text = pools_text_report(&built.report, &target, previous.is_some());
    print_reports(&args, &text, &built.report)
}

/// The format-2 report: regions, then per pool and region its cells.
fn pools_text_report(r: &PoolsBuildReport, target: &str, with_previous: bool) -> String {
    let pct = |share: f64| format!("{:.2}%", share * 100.0);
    let mut out = format!(
        "wrote {target}: format 2, version {}, {} slots, {}, {}",
        r.version,
        r.slots,
        plural(r.regions.len(), "region", "regions"),
        plural(r.pools.len(), "pool", "pools")
    );
    out.push_str("\nregions:");
    for region in &r.regions {
        out.push_str(&format!(
            " {}={} ({})",
            region.id,
            region.slots_after,
            pct(region.share_after)
        ));
    }
    if with_previous {
        out.push_str(&format!(
            "\nregion slots moved: {} of {}; region pins: {} ({} pinned now, {} kept, {} released); re-homed on purpose: {}",
            r.region_slots_moved,
            r.slots,
            r.region_pins,
            r.region_pins_added,
            r.region_pins_kept,
            r.region_pins_released,
            r.rehomed
        ));
    }
    for pool in &r.pools {
        out.push_str(&format!("\npool {}:", pool.id));
        if with_previous {
            out.push_str(&format!(
                " pins {} ({} pinned now, {} kept, {} released); could not pin {}",
                pool.pins, pool.pins_added, pool.pins_kept, pool.pins_released, pool.unpinnable
            ));
        }
        for region in &pool.regions {
            out.push_str(&format!(
                "\n  region {}: {} home slots",
                region.region, region.home_slots
            ));
            if with_previous {
                out.push_str(&format!(", {} moved", region.slots_moved));
            }
            let mut rows = vec![[
                "cell".to_string(),
                "state".to_string(),
                "weight".to_string(),
                "headroom".to_string(),
                "slots before".to_string(),
                "slots after".to_string(),
                "pins (new)".to_string(),
            ]];
            for c in &region.cells {
                rows.push(cell_row(c, &pct));
            }
            for line in table(&rows).lines().filter(|l| !l.is_empty()) {
                out.push_str("\n    ");
                out.push_str(line);
            }
        }
    }
    out
}

fn cell_row(c: &CellReport, pct: &dyn Fn(f64) -> String) -> [String; 7] {
    [
        c.id.clone(),
        c.state.as_str().to_string(),
        c.weight.to_string(),
        match c.headroom {
            Some(h) if !c.closed_by.is_empty() => format!("{h:.3} closed"),
            Some(h) => format!("{h:.3}"),
            None => "-".to_string(),
        },
        match (c.slots_before, c.share_before) {
            (Some(n), Some(share)) => format!("{n} ({})", pct(share)),
            _ => "-".to_string(),
        },
        format!("{} ({})", c.slots_after, pct(c.share_after)),
        format!("{} (+{})", c.pins, c.pins_added),
    ]
}

/// `cpu 0.9 ≥ 0.7, p99_ms 300 ≥ 250`
pub(super) fn breaches(closed_by: &[Breach]) -> String {
    closed_by
        .iter()
        .map(|b| format!("{} {} ≥ {}", b.dimension.as_str(), b.figure, b.threshold))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human report: what was written, what moved, who is pinned, and by
/// load which cells take no new tenants.
fn text_report(r: &BuildReport, target: &str, with_previous: bool) -> String {
    let mut out = format!(
        "wrote {target}: version {}, {} slots, {}",
        r.version,
        r.slots,
        plural(r.slots_per_cell.len(), "cell", "cells")
    );
    out.push_str("\nslots per cell:");
    for (cell, n) in &r.slots_per_cell {
        out.push_str(&format!(" {cell}={n}"));
    }
    if with_previous {
        out.push_str(&format!(
            "\nslots moved: {} of {} ({:.4}% of the keyspace)",
            r.slots_moved,
            r.slots,
            f64::from(r.slots_moved) * 100.0 / f64::from(r.slots.max(1))
        ));
        if !r.slot_moves.is_empty() {
            let moves: Vec<String> = r
                .slot_moves
                .iter()
                .map(|m| format!("{} → {} {}", m.from, m.to, m.slots))
                .collect();
            out.push_str(&format!("\nslot moves: {}", moves.join(", ")));
        }
        out.push_str(&format!(
            "\npins: {} in snapshot ({} pinned now, {} kept, {} released); could not pin {} (previous cell removed)",
            r.pins, r.pins_added, r.pins_kept, r.pins_released, r.unpinnable
        ));
    }
    if r.by_load {
        let closed: Vec<String> = r
            .cells
            .iter()
            .filter(|c| !c.closed_by.is_empty())
            .map(|c| format!("{} ({})", c.id, breaches(&c.closed_by)))
            .collect();
        out.push_str(&format!(
            "\nclosed to new tenants: {}",
            if closed.is_empty() {
                "none".to_string()
            } else {
                closed.join("; ")
            }
        ));
    }
    if with_previous || r.by_load {
        let pct = |share: f64| format!("{:.2}%", share * 100.0);
        let mut rows = vec![[
            "cell".to_string(),
            "state".to_string(),
            "weight".to_string(),
            "headroom".to_string(),
            "slots before".to_string(),
            "slots after".to_string(),
            "pins (new)".to_string(),
        ]];
        for c in &r.cells {
            rows.push([
                c.id.clone(),
                c.state.as_str().to_string(),
                c.weight.to_string(),
                match c.headroom {
                    Some(h) if !c.closed_by.is_empty() => format!("{h:.3} closed"),
                    Some(h) => format!("{h:.3}"),
                    None => "-".to_string(),
                },
                match (c.slots_before, c.share_before) {
                    (Some(n), Some(share)) => format!("{n} ({})", pct(share)),
                    _ => "-".to_string(),
                },
                format!("{} ({})", c.slots_after, pct(c.share_after)),
                format!("{} (+{})", c.pins, c.pins_added),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// Rows as left-aligned columns, each line starting with a newline.
pub(super) fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        out.push('\n');
        let mut line = String::new();
        for (cell, w) in row.iter().zip(widths) {
            line.push_str(cell);
            line.push_str(&" ".repeat(w - cell.chars().count() + 2));
        }
        out.push_str(line.trim_end());
    }
    out
}
