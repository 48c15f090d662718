//! What changed between two snapshots: slots per cell, the share of the
//! keyspace that moved, overrides, pins, moves and cell states.

use crate::ramp::{Curve, RampDoc};
use crate::snapshot::{CellState, Snapshot};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Slots one cell gained and lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CellSlots {
    pub cell: String,
    pub old_slots: u32,
    pub new_slots: u32,
    pub gained: u32,
    pub lost: u32,
}

/// A cell whose state, weight, shed ratio, failover or ramp changed, or that was
/// added or removed (`old`/`new` is `None`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CellChange {
    pub cell: String,
    pub old: Option<CellSummary>,
    pub new: Option<CellSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CellSummary {
    pub state: CellState,
    pub weight: f64,
    pub shed_ratio: f64,
    pub retry_after_s: u32,
    pub failover: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampDoc>,
}

/// `ramp 10%→100% from 2026-01-01T00:00:00Z over 600s, aggression 1.5`.
pub fn describe_ramp(ramp: &RampDoc) -> String {
    let mut out = format!(
        "ramp {}%→100% from {} over {}s",
        ramp.from_percent, ramp.start, ramp.duration_s
    );
    if let Some(Curve::Aggression(a)) = ramp.curve {
        out.push_str(&format!(", aggression {a}"));
    }
    out
}

/// Entries of a tenant → value map that were added, removed or changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MapDiff {
    pub added: Vec<(String, String)>,
    pub removed: Vec<(String, String)>,
    /// (tenant, old, new)
    pub changed: Vec<(String, String, String)>,
}

impl MapDiff {
    fn between(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> MapDiff {
        let mut diff = MapDiff::default();
        for (tenant, value) in old {
            match new.get(tenant) {
                None => diff.removed.push((tenant.clone(), value.clone())),
                Some(v) if v != value => {
                    diff.changed
                        .push((tenant.clone(), value.clone(), v.clone()));
                }
                Some(_) => {}
            }
        }
        for (tenant, value) in new {
            if !old.contains_key(tenant) {
                diff.added.push((tenant.clone(), value.clone()));
            }
        }
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The difference between two snapshots.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnapshotDiff {
    pub old_version: u64,
    pub new_version: u64,
    pub old_slots: u32,
    pub new_slots: u32,
    /// The hash key or slot count changed: slots are not comparable and
    /// (nearly) every tenant may move.
    pub rehashed: bool,
    /// Slots whose cell changed (all of them when `rehashed`).
    pub slots_moved: u32,
    /// `slots_moved / new_slots`: the share of tenants routed by slot that
    /// move.
    pub keyspace_moved: f64,
    /// Every cell of either snapshot, new order first, then removed cells.
    pub cells: Vec<CellSlots>,
    pub cell_changes: Vec<CellChange>,
    pub overrides: MapDiff,
    pub pins: MapDiff,
    /// Moves keyed by tenant; the value is `from → to @ percent%`.
    pub moves: MapDiff,
}

fn summary(snapshot: &Snapshot, index: usize) -> Option<CellSummary> {
    let cell = snapshot.cells().get(index)?;
    Some(CellSummary {
        state: cell.state,
        weight: cell.weight,
        shed_ratio: cell.shed_ratio,
        retry_after_s: cell.retry_after_s,
        failover: cell
            .failover
            .and_then(|f| snapshot.cell(f))
            .map(|c| c.id.clone()),
        ramp: cell.ramp.as_ref().map(|r| r.doc.clone()),
    })
}

fn slot_counts(snapshot: &Snapshot) -> Vec<u32> {
    let mut counts = vec![0u32; snapshot.cells().len()];
    for &cell in snapshot.slot_table() {
        if let Some(c) = counts.get_mut(usize::from(cell)) {
            *c += 1;
        }
    }
    counts
}

fn moves_of(snapshot: &Snapshot) -> BTreeMap<String, String> {
    let id = |i: u16| snapshot.cell(i).map(|c| c.id.as_str()).unwrap_or("?");
    snapshot
        .moves()
        .iter()
        .map(|m| {
            (
                m.tenant.clone(),
                format!("{} → {} @ {}%", id(m.from), id(m.to), m.percent),
            )
        })
        .collect()
}

impl SnapshotDiff {
    pub fn between(old: &Snapshot, new: &Snapshot) -> SnapshotDiff {
        let old_slots = old.slot_table().len() as u32;
        let new_slots = new.slot_table().len() as u32;
        let rehashed = old.key() != new.key() || old_slots != new_slots;

        // Cells by id: new order first, then the removed ones.
        let mut ids: Vec<&str> = new.cells().iter().map(|c| c.id.as_str()).collect();
        for cell in old.cells() {
            if new.cell_index(&cell.id).is_none() {
                ids.push(cell.id.as_str());
            }
        }
        let position: BTreeMap<&str, usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let old_to_row: Vec<usize> = old
            .cells()
            .iter()
            .map(|c| position.get(c.id.as_str()).copied().unwrap_or(0))
            .collect();
        let new_to_row: Vec<usize> = (0..new.cells().len()).collect();

        let mut rows: Vec<CellSlots> = ids
            .iter()
            .map(|id| CellSlots {
                cell: id.to_string(),
                old_slots: 0,
                new_slots: 0,
                gained: 0,
                lost: 0,
            })
            .collect();
        for (i, n) in slot_counts(old).into_iter().enumerate() {
            if let Some(row) = old_to_row.get(i).and_then(|&r| rows.get_mut(r)) {
                row.old_slots = n;
            }
        }
        for (i, n) in slot_counts(new).into_iter().enumerate() {
            if let Some(row) = rows.get_mut(i) {
                row.new_slots = n;
            }
        }

        let slots_moved = if rehashed {
            for row in &mut rows {
                row.lost = row.old_slots;
                row.gained = row.new_slots;
            }
            new_slots
        } else {
            let mut moved = 0;
            for (&o, &n) in old.slot_table().iter().zip(new.slot_table()) {
                let from = old_to_row.get(usize::from(o)).copied();
                let to = new_to_row.get(usize::from(n)).copied();
                if from != to {
                    moved += 1;
                    if let Some(row) = from.and_then(|r| rows.get_mut(r)) {
                        row.lost += 1;
                    }
                    if let Some(row) = to.and_then(|r| rows.get_mut(r)) {
                        row.gained += 1;
                    }
                }
            }
            moved
        };

        let mut cell_changes = Vec::new();
        for id in &ids {
            let o = old
                .cell_index(id)
                .and_then(|i| summary(old, usize::from(i)));
            let n = new
                .cell_index(id)
                .and_then(|i| summary(new, usize::from(i)));
            if o != n {
                cell_changes.push(CellChange {
                    cell: id.to_string(),
                    old: o,
                    new: n,
                });
            }
        }

        SnapshotDiff {
            old_version: old.version(),
            new_version: new.version(),
            old_slots,
            new_slots,
            rehashed,
            slots_moved,
            keyspace_moved: if new_slots == 0 {
                0.0
            } else {
                f64::from(slots_moved) / f64::from(new_slots)
            },
            cells: rows,
            cell_changes,
            overrides: MapDiff::between(&old.overrides(), &new.overrides()),
            pins: MapDiff::between(&old.pins(), &new.pins()),
            moves: MapDiff::between(&moves_of(old), &moves_of(new)),
        }
    }

    /// Whether routing can differ at all.
    pub fn is_empty(&self) -> bool {
        !self.rehashed
            && self.slots_moved == 0
            && self.cell_changes.is_empty()
            && self.overrides.is_empty()
            && self.pins.is_empty()
            && self.moves.is_empty()
    }
}

fn write_map(f: &mut fmt::Formatter<'_>, name: &str, diff: &MapDiff) -> fmt::Result {
    writeln!(
        f,
        "{name}: {} added, {} removed, {} changed",
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    )?;
    for (tenant, value) in &diff.added {
        writeln!(f, "  + {tenant:?} → {value}")?;
    }
    for (tenant, value) in &diff.removed {
        writeln!(f, "  - {tenant:?} → {value}")?;
    }
    for (tenant, old, new) in &diff.changed {
        writeln!(f, "  ~ {tenant:?}: {old} ⇒ {new}")?;
    }
    Ok(())
}

fn describe(cell: &Option<CellSummary>) -> String {
    match cell {
        None => "absent".to_string(),
        Some(c) => {
            let mut out = format!("{} weight {}", c.state.as_str(), c.weight);
            if c.shed_ratio > 0.0 {
                out.push_str(&format!(" shed {}", c.shed_ratio));
            }
            if let Some(f) = &c.failover {
                out.push_str(&format!(" failover {f}"));
            }
            if let Some(r) = &c.ramp {
                out.push_str(&format!(" {}", describe_ramp(r)));
            }
            out
        }
    }
}

impl fmt::Display for SnapshotDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "version {} → {}", self.old_version, self.new_version)?;
        if self.rehashed {
            writeln!(
                f,
                "hash key or slot count changed ({} → {} slots): every tenant may move",
                self.old_slots, self.new_slots
            )?;
        }
        writeln!(
            f,
            "slots moved: {} of {} ({:.4}% of the keyspace)",
            self.slots_moved,
            self.new_slots,
            self.keyspace_moved * 100.0
        )?;
        writeln!(
            f,
            "{:<24} {:>8} {:>8} {:>8} {:>8}",
            "cell", "old", "new", "gained", "lost"
        )?;
        for row in &self.cells {
            writeln!(
                f,
                "{:<24} {:>8} {:>8} {:>8} {:>8}",
                row.cell, row.old_slots, row.new_slots, row.gained, row.lost
            )?;
        }
        if self.cell_changes.is_empty() {
            writeln!(f, "cells: no changes")?;
        } else {
            writeln!(f, "cells: {} changed", self.cell_changes.len())?;
            for change in &self.cell_changes {
                writeln!(
                    f,
                    "  ~ {}: {} ⇒ {}",
                    change.cell,
                    describe(&change.old),
                    describe(&change.new)
                )?;
            }
        }
        write_map(f, "overrides", &self.overrides)?;
        write_map(f, "pins", &self.pins)?;
        write_map(f, "moves", &self.moves)
    }
}

// ---------------------------------------------------------------------------
// Format 2: per pool and region.

use crate::builder::pools::PoolsView;
use crate::error::PathError;
use crate::pools::{PoolDoc, PooledCellDoc, PooledSnapshotDoc};
use std::collections::HashMap;

/// A region's slots in the region table, before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegionSlots {
    pub region: String,
    pub old_slots: u32,
    pub new_slots: u32,
    pub gained: u32,
    pub lost: u32,
}

/// One pool in one region: the cells' shares of the region's own slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolRegionDiff {
    pub region: String,
    /// Slots homed in the region after (by the new region table).
    pub home_slots: u32,
    /// Of those, the slots whose tenants (routed by slot) change cell or
    /// region: (old region, old cell) ≠ (region, new cell).
    pub slots_moved: u32,
    /// Cells of the pool in the region (either snapshot), counting their
    /// region's own slots.
    pub cells: Vec<CellSlots>,
}

/// One pool: per region, and its tenant maps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolDiff {
    pub pool: String,
    /// `added`, `removed` or `kept`.
    pub status: &'static str,
    pub regions: Vec<PoolRegionDiff>,
    pub overrides: MapDiff,
    pub pins: MapDiff,
    pub moves: MapDiff,
}

/// A cell of either format-2 snapshot whose settings, pool or region changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolCellChange {
    pub cell: String,
    pub old: Option<PooledCellDoc>,
    pub new: Option<PooledCellDoc>,
}

/// A known tenant whose placement in a pool changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantChange {
    pub tenant: String,
    pub pool: String,
    pub old_region: String,
    pub new_region: String,
    pub old_cell: String,
    pub new_cell: String,
}

/// Known tenants per pool and (new home) region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantCounts {
    pub pool: String,
    pub region: String,
    /// Known tenants homed in the region after.
    pub tenants: usize,
    /// Of them, those whose cell changes (in the same region).
    pub cell_changed: usize,
    /// Of them, those whose home region changes (re-homed).
    pub region_changed: usize,
}

/// What changes for a list of known tenants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantDiff {
    pub checked: usize,
    pub counts: Vec<TenantCounts>,
    /// Every change, by tenant then pool.
    pub changes: Vec<TenantChange>,
}

/// The difference between two format-2 snapshots, per pool and region.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolsDiff {
    pub old_version: u64,
    pub new_version: u64,
    pub slots: u32,
    /// The hash key or slot count changed: nothing is comparable and every
    /// tenant may move.
    pub rehashed: bool,
    /// Region-table slots whose region changed: their tenants (those without
    /// a region override) are re-homed.
    pub region_slots_moved: u32,
    pub regions: Vec<RegionSlots>,
    pub region_overrides: MapDiff,
    pub pools: Vec<PoolDiff>,
    pub cell_changes: Vec<PoolCellChange>,
    /// With known tenants (`cellmap diff --tenants`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants: Option<TenantDiff>,
}

fn moves_by_tenant(pool: &PoolDoc) -> BTreeMap<String, String> {
    pool.moves
        .iter()
        .map(|m| {
            (
                m.tenant.clone(),
                format!("{} → {} @ {}%", m.from, m.to, m.percent),
            )
        })
        .collect()
}

impl PoolsDiff {
    /// Compares two snapshots per pool and region (a format-1 snapshot is
    /// one pool and one region, both `default`); `known` tenants are
    /// followed one by one (their home region and cell in every pool both
    /// snapshots have).
    pub fn between(
        old: &Snapshot,
        new: &Snapshot,
        known: Option<&[String]>,
    ) -> Result<PoolsDiff, PathError> {
        let (old, new) = (old.to_pooled_doc(), new.to_pooled_doc());
        let (old, new) = (&old, &new);
        let old_view = PoolsView::new(old)?;
        let new_view = PoolsView::new(new)?;
        let slots = new.hash.slots;
        let rehashed = old_view.key != new_view.key || old.hash.slots != new.hash.slots;

        let region_ids = |doc: &PooledSnapshotDoc| -> Vec<String> {
            doc.regions.iter().map(|r| r.id.clone()).collect()
        };
        let mut all_regions = region_ids(new);
        for r in region_ids(old) {
            if !all_regions.contains(&r) {
                all_regions.push(r);
            }
        }
        let old_region_at = |s: usize| old_view.ring_region(s);
        let new_region_at = |s: usize| new_view.ring_region(s);

        let mut regions: Vec<RegionSlots> = all_regions
            .iter()
            .map(|r| RegionSlots {
                region: r.clone(),
                old_slots: 0,
                new_slots: 0,
                gained: 0,
                lost: 0,
            })
            .collect();
        let row = |rows: &[RegionSlots], id: Option<&str>| -> Option<usize> {
            let id = id?;
            rows.iter().position(|r| r.region == id)
        };
        let mut region_slots_moved = 0;
        for s in 0..new_view.region_table.len().max(old_view.region_table.len()) {
            let (o, n) = (old_region_at(s), new_region_at(s));
            if let Some(i) = row(&regions, o).filter(|_| s < old_view.region_table.len())
                && let Some(r) = regions.get_mut(i)
            {
                r.old_slots += 1;
            }
            if let Some(i) = row(&regions, n)
                && let Some(r) = regions.get_mut(i)
            {
                r.new_slots += 1;
            }
            if rehashed || o != n {
                region_slots_moved += 1;
                if let Some(r) = row(&regions, o).and_then(|i| regions.get_mut(i)) {
                    r.lost += 1;
                }
                if let Some(r) = row(&regions, n).and_then(|i| regions.get_mut(i)) {
                    r.gained += 1;
                }
            }
        }

        let mut pool_ids: Vec<&str> = new.pools.iter().map(|p| p.id.as_str()).collect();
        for p in &old.pools {
            if !pool_ids.contains(&p.id.as_str()) {
                pool_ids.push(p.id.as_str());
            }
        }
        let empty = PoolDoc {
            id: String::new(),
            match_rule: None,
            slot_tables: BTreeMap::new(),
            overrides: BTreeMap::new(),
            pins: BTreeMap::new(),
            moves: Vec::new(),
        };
        let mut pools = Vec::with_capacity(pool_ids.len());
        for id in pool_ids {
            let op = old_view.pool_index(id);
            let np = new_view.pool_index(id);
            let old_doc = op.and_then(|i| old.pools.get(i)).unwrap_or(&empty);
            let new_doc = np.and_then(|i| new.pools.get(i)).unwrap_or(&empty);
            let status = match (op, np) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "kept",
            };
            // One row per region; each slot counts once, in its old
            // region's row and its new region's row: O(S) per pool.
            let mut per_region: Vec<PoolRegionDiff> = all_regions
                .iter()
                .map(|region| {
                    let mut ids: Vec<String> = Vec::new();
                    for c in new.cells.iter().chain(&old.cells) {
                        if c.pool == id && &c.region == region && !ids.contains(&c.id) {
                            ids.push(c.id.clone());
                        }
                    }
                    PoolRegionDiff {
                        region: region.clone(),
                        home_slots: 0,
                        slots_moved: 0,
                        cells: ids
                            .into_iter()
                            .map(|cell| CellSlots {
                                cell,
                                old_slots: 0,
                                new_slots: 0,
                                gained: 0,
                                lost: 0,
                            })
                            .collect(),
                    }
                })
                .collect();
            let row_of = |doc: &PooledSnapshotDoc| -> Vec<Option<usize>> {
                doc.regions
                    .iter()
                    .map(|r| all_regions.iter().position(|x| *x == r.id))
                    .collect()
            };
            let (old_rows, new_rows) = (row_of(old), row_of(new));
            let mut position: HashMap<(usize, String), usize> = HashMap::new();
            for (r, row) in per_region.iter().enumerate() {
                for (i, c) in row.cells.iter().enumerate() {
                    position.insert((r, c.cell.clone()), i);
                }
            }
            for s in 0..slots as usize {
                let before = slot_place(&old_view, &old_rows, op, s);
                let after = slot_place(&new_view, &new_rows, np, s);
                let old_cell = before.and_then(|(r, c)| Some((r, c?)));
                let new_cell = after.and_then(|(r, c)| Some((r, c?)));
                if let Some(c) = cell_at(&mut per_region, &position, old_cell) {
                    c.old_slots += 1;
                }
                if let Some(c) = cell_at(&mut per_region, &position, new_cell) {
                    c.new_slots += 1;
                }
                let moved = rehashed || old_cell != new_cell;
                if let Some((r, _)) = after
                    && let Some(row) = per_region.get_mut(r)
                {
                    row.home_slots += 1;
                    row.slots_moved += u32::from(moved);
                }
                if moved {
                    if let Some(c) = cell_at(&mut per_region, &position, old_cell) {
                        c.lost += 1;
                    }
                    if let Some(c) = cell_at(&mut per_region, &position, new_cell) {
                        c.gained += 1;
                    }
                }
            }
            pools.push(PoolDiff {
                pool: id.to_string(),
                status,
                regions: per_region,
                overrides: MapDiff::between(&old_doc.overrides, &new_doc.overrides),
                pins: MapDiff::between(&old_doc.pins, &new_doc.pins),
                moves: MapDiff::between(&moves_by_tenant(old_doc), &moves_by_tenant(new_doc)),
            });
        }

        let mut cell_changes = Vec::new();
        let mut cell_ids: Vec<&str> = new.cells.iter().map(|c| c.id.as_str()).collect();
        for c in &old.cells {
            if !cell_ids.contains(&c.id.as_str()) {
                cell_ids.push(c.id.as_str());
            }
        }
        for id in cell_ids {
            let o = old.cells.iter().find(|c| c.id == id);
            let n = new.cells.iter().find(|c| c.id == id);
            if o != n {
                cell_changes.push(PoolCellChange {
                    cell: id.to_string(),
                    old: o.cloned(),
                    new: n.cloned(),
                });
            }
        }

        let tenants = known.map(|known| tenant_diff(&old_view, &new_view, known));
        Ok(PoolsDiff {
            old_version: old.version,
            new_version: new.version,
            slots,
            rehashed,
            region_slots_moved,
            regions,
            region_overrides: MapDiff::between(&old.region_overrides, &new.region_overrides),
            pools,
            cell_changes,
            tenants,
        })
    }

    /// Whether routing can differ at all.
    pub fn is_empty(&self) -> bool {
        !self.rehashed
            && self.region_slots_moved == 0
            && self.region_overrides.is_empty()
            && self.cell_changes.is_empty()
            && self.pools.iter().all(|p| {
                p.status == "kept"
                    && p.regions.iter().all(|r| r.slots_moved == 0)
                    && p.overrides.is_empty()
                    && p.pins.is_empty()
                    && p.moves.is_empty()
            })
    }
}

/// The row (region) and cell of slot `s` in a pool of `view`: the slot's
/// region by the region table, and that region's table of the pool.
fn slot_place<'a>(
    view: &PoolsView<'a>,
    rows: &[Option<usize>],
    pool: Option<usize>,
    s: usize,
) -> Option<(usize, Option<&'a str>)> {
    let r = *view.region_table.get(s)?;
    let row = (*rows.get(usize::from(r))?)?;
    Some((
        row,
        pool.and_then(|p| view.table_cell(p, usize::from(r), s)),
    ))
}

fn cell_at<'a>(
    rows: &'a mut [PoolRegionDiff],
    position: &HashMap<(usize, String), usize>,
    at: Option<(usize, &str)>,
) -> Option<&'a mut CellSlots> {
    let (r, cell) = at?;
    let i = *position.get(&(r, cell.to_string()))?;
    rows.get_mut(r)?.cells.get_mut(i)
}

fn tenant_diff(old: &PoolsView<'_>, new: &PoolsView<'_>, known: &[String]) -> TenantDiff {
    let mut counts: BTreeMap<(usize, String), TenantCounts> = BTreeMap::new();
    let mut changes = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for tenant in known {
        if !seen.insert(tenant.as_str()) {
            continue;
        }
        for (np, pool) in new.doc.pools.iter().enumerate() {
            let Some(op) = old.pool_index(&pool.id) else {
                continue;
            };
            let (Some(before), Some(after)) =
                (old.placement(tenant, op), new.placement(tenant, np))
            else {
                continue;
            };
            let entry = counts
                .entry((np, after.region.clone()))
                .or_insert_with(|| TenantCounts {
                    pool: pool.id.clone(),
                    region: after.region.clone(),
                    tenants: 0,
                    cell_changed: 0,
                    region_changed: 0,
                });
            entry.tenants += 1;
            if before.region != after.region {
                entry.region_changed += 1;
            } else if before.cell != after.cell {
                entry.cell_changed += 1;
            }
            if before.region != after.region || before.cell != after.cell {
                changes.push(TenantChange {
                    tenant: tenant.clone(),
                    pool: pool.id.clone(),
                    old_region: before.region,
                    new_region: after.region,
                    old_cell: before.cell,
                    new_cell: after.cell,
                });
            }
        }
    }
    TenantDiff {
        checked: seen.len(),
        counts: counts.into_values().collect(),
        changes,
    }
}

/// How many tenant changes (and entries per map) the text form lists; JSON
/// has them all.
const TEXT_CHANGES: usize = 50;

/// `write_map` listing at most [`TEXT_CHANGES`] entries: a format-2 build
/// may add thousands of region pins.
fn write_map_capped(
    f: &mut fmt::Formatter<'_>,
    indent: &str,
    name: &str,
    diff: &MapDiff,
) -> fmt::Result {
    writeln!(
        f,
        "{indent}{name}: {} added, {} removed, {} changed",
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    )?;
    let lines = diff
        .added
        .iter()
        .map(|(t, v)| format!("+ {t:?} → {v}"))
        .chain(diff.removed.iter().map(|(t, v)| format!("- {t:?} → {v}")))
        .chain(
            diff.changed
                .iter()
                .map(|(t, o, n)| format!("~ {t:?}: {o} ⇒ {n}")),
        );
    let total = diff.added.len() + diff.removed.len() + diff.changed.len();
    for line in lines.take(TEXT_CHANGES) {
        writeln!(f, "{indent}  {line}")?;
    }
    if total > TEXT_CHANGES {
        writeln!(
            f,
            "{indent}  … {} more (--json lists them all)",
            total - TEXT_CHANGES
        )?;
    }
    Ok(())
}

impl fmt::Display for PoolsDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "version {} → {}", self.old_version, self.new_version)?;
        if self.rehashed {
            writeln!(
                f,
                "hash key or slot count changed: every tenant may change region and cell"
            )?;
        }
        writeln!(
            f,
            "region table: {} of {} slots change region ({:.4}%)",
            self.region_slots_moved,
            self.slots,
            f64::from(self.region_slots_moved) * 100.0 / f64::from(self.slots.max(1))
        )?;
        writeln!(
            f,
            "{:<24} {:>8} {:>8} {:>8} {:>8}",
            "region", "old", "new", "gained", "lost"
        )?;
        for r in &self.regions {
            writeln!(
                f,
                "{:<24} {:>8} {:>8} {:>8} {:>8}",
                r.region, r.old_slots, r.new_slots, r.gained, r.lost
            )?;
        }
        write_map_capped(f, "", "region overrides", &self.region_overrides)?;
        for pool in &self.pools {
            writeln!(f, "pool {} ({})", pool.pool, pool.status)?;
            for region in &pool.regions {
                writeln!(
                    f,
                    "  region {}: {} of {} home slots move ({:.4}%)",
                    region.region,
                    region.slots_moved,
                    region.home_slots,
                    f64::from(region.slots_moved) * 100.0 / f64::from(region.home_slots.max(1))
                )?;
                for c in &region.cells {
                    writeln!(
                        f,
                        "    {:<22} {:>8} {:>8} {:>8} {:>8}",
                        c.cell, c.old_slots, c.new_slots, c.gained, c.lost
                    )?;
                }
            }
            for (name, map) in [
                ("overrides", &pool.overrides),
                ("pins", &pool.pins),
                ("moves", &pool.moves),
            ] {
                if !map.is_empty() {
                    write_map_capped(f, "  ", name, map)?;
                }
            }
        }
        if self.cell_changes.is_empty() {
            writeln!(f, "cells: no changes")?;
        } else {
            writeln!(f, "cells: {} changed", self.cell_changes.len())?;
            for change in &self.cell_changes {
                let show = |c: &Option<PooledCellDoc>| match c {
                    None => "absent".to_string(),
                    Some(c) => format!(
                        "{}/{} {} weight {}{}",
                        c.pool,
                        c.region,
                        c.state.as_str(),
                        c.weight,
                        c.failover
                            .as_ref()
                            .map(|x| format!(" failover {x}"))
                            .unwrap_or_default()
                    ),
                };
                writeln!(
                    f,
                    "  ~ {}: {} ⇒ {}",
                    change.cell,
                    show(&change.old),
                    show(&change.new)
                )?;
            }
        }
        if let Some(t) = &self.tenants {
            writeln!(
                f,
                "known tenants: {} checked; per pool and region (tenants, cell changes, re-homed):",
                t.checked
            )?;
            for c in &t.counts {
                writeln!(
                    f,
                    "  {}/{}: {} tenants, {} change cell, {} re-homed",
                    c.pool, c.region, c.tenants, c.cell_changed, c.region_changed
                )?;
            }
            for c in t.changes.iter().take(TEXT_CHANGES) {
                writeln!(
                    f,
                    "  ~ {:?} in {}: {}/{} ⇒ {}/{}",
                    c.tenant, c.pool, c.old_region, c.old_cell, c.new_region, c.new_cell
                )?;
            }
            if t.changes.len() > TEXT_CHANGES {
                writeln!(
                    f,
                    "  … {} more (--json lists them all)",
                    t.changes.len() - TEXT_CHANGES
                )?;
            }
        }
        Ok(())
    }
}
