//! Tenant → cell resolution: the routing function of `SPEC.md`.

use crate::hash::{DRAW_DOMAIN_MOVE, DRAW_DOMAIN_SHED};
use crate::snapshot::{CellState, Snapshot};
use crate::table::EntryKind;

/// Where the tenant's home cell came from, before cell states apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// An explicit override.
    Override,
    /// A builder pin that keeps a known tenant in its previous cell.
    Pin,
    /// A gradual move; `moved` says whether this request went to `to`.
    Split { moved: bool },
    /// The consistent-hash slot.
    Slot,
}

/// What happens to the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send it to `cell`.
    Route { cell: u16 },
    /// `cell` is draining and this request falls in its shed share: 503.
    Shed { cell: u16, retry_after_s: u32 },
    /// `cell` is disabled and has no failover: 503.
    Unavailable { cell: u16 },
}

/// The full answer for one request: enough to route it and to explain it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The tenant's consistent-hash slot (computed even when an override wins).
    pub slot: u32,
    pub source: Source,
    /// The cell chosen before cell states applied.
    pub home: u16,
    /// Whether a disabled cell's failover was followed.
    pub failed_over: bool,
    pub outcome: Outcome,
}

impl Resolution {
    /// The operator-facing reason: `failover` when a failover was followed,
    /// else `override`, `pin`, `split` or `slot`.
    pub fn reason(&self) -> &'static str {
        if self.failed_over {
            return "failover";
        }
        match self.source {
            Source::Override => "override",
            Source::Pin => "pin",
            Source::Split { .. } => "split",
            Source::Slot => "slot",
        }
    }

    /// The cell the request is sent to, if it is sent.
    pub fn routed_cell(&self) -> Option<u16> {
        match self.outcome {
            Outcome::Route { cell } => Some(cell),
            _ => None,
        }
    }

    /// The cell whose state decided the outcome (routed, shed or disabled).
    pub fn final_cell(&self) -> u16 {
        match self.outcome {
            Outcome::Route { cell }
            | Outcome::Shed { cell, .. }
            | Outcome::Unavailable { cell } => cell,
        }
    }
}

impl Snapshot {
    /// Resolves a tenant. `request_key` (e.g. the `x-request-id`) is only
    /// hashed when a gradual move or a draining cell needs a per-request draw.
    #[inline]
    pub fn resolve(&self, tenant: &[u8], request_key: &[u8]) -> Resolution {
        let key = self.key();
        let h = key.hash(tenant);
        let table = self.slot_table();
        let slot = (h % table.len().max(1) as u64) as u32;
        let slot_cell = table.get(slot as usize).copied().unwrap_or(0);

        let (source, home) = match self.tenant_table().get(tenant, h) {
            None => (Source::Slot, slot_cell),
            Some((EntryKind::Override, cell)) => (Source::Override, cell),
            Some((EntryKind::Pin, cell)) => (Source::Pin, cell),
            Some((EntryKind::Move, index)) => match self.moves().get(usize::from(index)) {
                Some(m) => {
                    let moved = key.draw(DRAW_DOMAIN_MOVE, request_key) < m.to_basis_points;
                    (Source::Split { moved }, if moved { m.to } else { m.from })
                }
                None => (Source::Slot, slot_cell),
            },
        };

        // Follow failovers of disabled cells; validation refused loops, and the
        // bound keeps this finite whatever the table holds.
        let mut cell = home;
        let mut failed_over = false;
        let outcome = 'outcome: {
            for _ in 0..=self.cells().len() {
                let Some(info) = self.cell(cell) else { break };
                match info.state {
                    CellState::Active => break 'outcome Outcome::Route { cell },
                    CellState::Draining => {
                        let shed = info.shed_basis_points > 0
                            && key.draw(DRAW_DOMAIN_SHED, request_key) < info.shed_basis_points;
                        break 'outcome if shed {
                            Outcome::Shed {
                                cell,
                                retry_after_s: info.retry_after_s,
                            }
                        } else {
                            Outcome::Route { cell }
                        };
                    }
                    CellState::Disabled => match info.failover {
                        Some(next) => {
                            cell = next;
                            failed_over = true;
                        }
                        None => break 'outcome Outcome::Unavailable { cell },
                    },
                }
            }
            Outcome::Unavailable { cell }
        };
        Resolution {
            slot,
            source,
            home,
            failed_over,
            outcome,
        }
    }
}
