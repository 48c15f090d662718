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
