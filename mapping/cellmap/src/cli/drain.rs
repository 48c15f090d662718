//! `cellmap drain`: the series of snapshots that moves a cell's tenants to
//! other cells in small steps, and optionally publishing it step by step.

use super::build::{breaches, generated_at, table};
use super::{Failure, load_snapshot_with_ids, path_failure, read_input};
use cell_router_mapping::builder::drain::{self, DrainOptions, DrainPlan};
use cell_router_mapping::builder::load::Load;
use cell_router_mapping::{CellDoc, Snapshot};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Drain a cell in small steps: a series of snapshots
#[derive(Args)]
#[command(
    long_about = "Drain a cell in small steps (see mapping/SPEC.md, \"Draining in steps\").\n\n\
Writes the series of snapshots that moves the cell's tenants to the other active cells: \
step k moves k × --step percent of the cell's slots (and releases as many of the pins that \
hold tenants on it), so each tenant moves once, wholly, and never back. Nothing is shed: \
the cell becomes `draining` with shed_ratio 0 and keeps serving the tenants not yet \
moved. The other cells' slots never change; they take the cell's slots by weight, or by \
weight × headroom with --load (none to a cell at or over a threshold). After the last \
step no tenant is routed to the cell.\n\n\
The files are OUT_DIR/step-001.json, …, versions increasing from the snapshot's; each \
is validated before it is written. Publish them one by one (e.g. `mv` or `cp` to the \
file the sidecar watches), watching errors between steps; or give --publish FILE \
--every 30s to have cellmap write each step to FILE in turn. Before each write it checks \
that FILE still holds the step before (the drained snapshot first), and stops if \
anything else changed it. Interrupted, the last step published stays in force.\n\n\
Refused: overrides or gradual moves naming the cell, and disabled cells failing over to \
it (deliberate placements: change them in the spec and build first).\n\n\
Format 2 (pools and regions): the cell's slots in its pool's table for its region go to \
the other active cells of that pool and region; its pins in that pool are released; no \
other pool or region changes, and no tenant changes home region."
)]
pub(super) struct DrainArgs {
    /// The snapshot in force
    #[arg(long, short = 's')]
    snapshot: PathBuf,
    /// The cell to drain
    #[arg(long)]
    cell: String,
    /// Percent of the cell's tenants moved per step (0.01 … 100)
    #[arg(long, default_value = "1", value_name = "PERCENT")]
    step: f64,
    /// Per-cell load figures (as for build --load): the cell's slots go by
    /// weight × headroom, none to a cell at or over a threshold
    #[arg(long, value_name = "FILE")]
    load: Option<PathBuf>,
    /// Directory for the series (created; must be empty)
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// Publish the steps to FILE one after another (the file the sidecar
    /// watches), atomically
    #[arg(long, value_name = "FILE", requires = "every")]
    publish: Option<PathBuf>,
    /// Time between two published steps, e.g. 30s, 500ms, 2m
    #[arg(long, value_name = "DURATION", requires = "publish", value_parser = parse_duration)]
    every: Option<Duration>,
}

/// `30s`, `500ms`, `2m`, `0s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number and a unit (ms, s, m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{text:?}: the unit must be ms, s or m")),
    }
}

/// A percent in 0.01 … 100 as basis points.
fn step_basis_points(percent: f64) -> Result<u16, Failure> {
    let bp = (percent * 100.0).round();
    if !percent.is_finite()
        || !(1.0..=10_000.0).contains(&bp)
        || (bp - percent * 100.0).abs() > 1e-6
    {
        return Err(Failure::usage(format!(
            "--step must be a percent between 0.01 and 100 in steps of 0.01, got {percent}"
        )));
    }
    Ok(bp as u16)
}

pub(super) fn run(args: DrainArgs) -> Result<(), Failure> {
    let step = step_basis_points(args.step)?;
    let current = load_snapshot_with_ids(&args.snapshot, "drained")?;
    let load = match &args.load {
        Some(path) => {
            let load = Load::parse(&read_input(path)?).map_err(|e| path_failure(e, path))?;
            // Checked here so that its errors name the load file. Format 2:
            // only the cells of the drained cell's pool and region take part.
            let group = current
                .cell_index(&args.cell)
                .and_then(|i| current.cell(i))
                .map(|c| (c.pool, c.region));
            let cells: Vec<CellDoc> = current
                .cells()
                .iter()
                .filter(|c| group.is_none_or(|g| g == (c.pool, c.region)))
                .map(|c| CellDoc {
                    id: c.id.clone(),
                    state: c.state,
                    weight: c.weight,
                    shed_ratio: c.shed_ratio,
                    retry_after_s: c.retry_after_s,
                    failover: None,
                    ramp: None,
                })
                .collect();
            load.check_cells(&cells, Some(&args.cell), "snapshot")
                .map_err(|e| path_failure(e, path))?;
            Some(load)
        }
        None => None,
    };
    let generated_at = generated_at()?;
    let plan = drain::plan(
        &current,
        &DrainOptions {
            cell: &args.cell,
            step_basis_points: step,
            load: load.as_ref(),
            generated_at: &generated_at,
        },
    )
    .map_err(|e| path_failure(e, &args.snapshot))?;

    let files = write_series(&plan, &args.out_dir)?;
    if let (Some(target), Some(every)) = (&args.publish, args.every) {
        publish(&plan, &files, current.version(), target, every)?;
    }
    Ok(())
}

fn step_name(number: usize, steps: usize) -> String {
    let width = steps.to_string().len().max(3);
    format!("step-{number:0width$}.json")
}

/// Writes every step (each validated first) and prints the plan.
fn write_series(plan: &DrainPlan, dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::invalid(format!("cannot create {}: {e}", dir.display())))?;
    let not_empty = std::fs::read_dir(dir)
        .map_err(|e| Failure::invalid(format!("cannot read {}: {e}", dir.display())))?
        .next()
        .is_some();
    if not_empty {
        return Err(Failure::invalid(format!(
            "{} is not empty: a drain series is written into an empty directory",
            dir.display()
        )));
    }
    let r = &plan.report;
    println!(
        "draining {} from version {}: {} slots and {} pins, {} steps of {}%; it is {} (nothing shed) in every step",
        r.cell,
        r.from_version,
        r.slots,
        r.pins,
        r.steps,
        f64::from(r.step_basis_points) / 100.0,
        r.state.as_str()
    );
    let takers: Vec<String> = r
        .receivers
        .iter()
        .map(|x| {
            let headroom = x
                .headroom
                .map(|h| format!(", headroom {h:.3}"))
                .unwrap_or_default();
            format!(
                "{} +{} (weight {}{headroom})",
                x.id, x.slots_taken, x.weight
            )
        })
        .collect();
    println!("its slots go to: {}", takers.join(", "));
    for (cell, closed_by) in &r.closed {
        println!(
            "takes none (closed to new tenants): {cell} ({})",
            breaches(closed_by)
        );
    }
    for note in &r.notes {
        println!("note: {note}");
    }
    let mut rows = vec![[
        "file".to_string(),
        "share".to_string(),
        "version".to_string(),
        format!("{} slots", r.cell),
        format!("{} pins", r.cell),
        "slots moved".to_string(),
        "pins released".to_string(),
    ]];
    let mut files = Vec::with_capacity(plan.steps());
    for number in 1..=plan.steps() {
        let step = plan
            .step(number)
            .map_err(|e| Failure::invalid(format!("step {number}: {e}")))?;
        let path = dir.join(step_name(number, plan.steps()));
        crate::files::write_atomically(&path, step.json.as_bytes())
            .map_err(|e| Failure::invalid(format!("cannot write {}: {e}", path.display())))?;
        rows.push([
            step_name(number, plan.steps()),
            format!("{}%", f64::from(step.basis_points) / 100.0),
            step.version.to_string(),
            step.slots_on_cell.to_string(),
            step.pins_on_cell.to_string(),
            step.slots_moved.to_string(),
            step.pins_released.to_string(),
        ]);
        files.push(path);
    }
    println!("wrote {}:{}", dir.display(), table(&rows));
    Ok(files)
}

/// Writes the steps to `target` one after another, `every` apart, checking
/// before each that `target` holds the version written before it.
fn publish(
    plan: &DrainPlan,
    files: &[PathBuf],
    from_version: u64,
    target: &Path,
    every: Duration,
) -> Result<(), Failure> {
    let mut expected = from_version;
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(every);
        }
        let held = Snapshot::parse(&read_input(target)?)
            .map_err(|e| path_failure(e, target))?
            .version();
        if held != expected {
            return Err(Failure::invalid(format!(
                "{} holds version {held}, not {expected}: something else changed it; stopped before step {} of {}",
                target.display(),
                i + 1,
                plan.steps()
            )));
        }
        let bytes = std::fs::read(file)
            .map_err(|e| Failure::invalid(format!("{}: {e}", file.display())))?;
        crate::files::write_atomically(target, &bytes)
            .map_err(|e| Failure::invalid(format!("cannot write {}: {e}", target.display())))?;
        expected = from_version + i as u64 + 1;
        println!(
            "published {} to {} (version {expected})",
            file.display(),
            target.display()
        );
    }
    Ok(())
}
