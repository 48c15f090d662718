//! Tenant → cell resolution: the routing function of `SPEC.md`.

use crate::hash::{BASIS_POINTS, DRAW_DOMAIN_MOVE, DRAW_DOMAIN_RAMP};
use crate::snapshot::{CellState, Snapshot};
use crate::table::EntryKind;

/// What the routing function needs from the request besides the tenant
/// (`SPEC.md`, "Routing function").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draws<'a> {
    /// A stable key the client cannot choose freely: the verified token's
    /// subject (falling back to the tenant). Moves and ramps hash it, so a
    /// user stays on one side of a split for its whole duration.
    pub split_key: &'a [u8],
    /// The shed draw, uniform in `0..10_000` and independent per request,
    /// from a generator the client cannot influence (not a function of
    /// anything it sends). A draining cell sheds the request when
    /// `shed < shed_ratio` in basis points. Values ≥ 10,000 never shed.
    pub shed: u16,
    /// The gateway's clock, Unix milliseconds: ramps are computed from it.
    pub now_ms: u64,
}

impl<'a> Draws<'a> {
    /// The highest in-range shed draw: sheds only at a shed ratio of 1.
    pub const LUCKIEST_SHED: u16 = BASIS_POINTS - 1;

    pub fn new(split_key: &'a [u8], shed: u16, now_ms: u64) -> Self {
        Draws {
            split_key,
            shed,
            now_ms,
        }
    }

    /// `split_key` at `now_ms`, with the luckiest shed draw: how the request
    /// is routed unless shed (explanations, tests).
    pub fn unshed(split_key: &'a [u8], now_ms: u64) -> Self {
        Draws::new(split_key, Self::LUCKIEST_SHED, now_ms)
    }
}

impl Default for Draws<'_> {
    /// An empty split key, the luckiest shed draw and time 0 (before every
    /// ramp's start).
    fn default() -> Self {
        Draws::unshed(b"", 0)
    }
}

/// A ramping cell met on the way: the share it takes at this time, and
/// whether it kept this request (else the request went on to its failover).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RampStep {
    pub cell: u16,
    /// Basis points, below 10,000 (a finished ramp is not reported).
    pub share_bp: u16,
    pub kept: bool,
}

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
    /// The tenant is homed in another `region` and the request has not been
    /// forwarded yet: send it to that region's gateway (format 2).
    Forward { region: u16 },
    /// The tenant is homed in another `region` but the request was already
    /// forwarded once (the gateways' snapshots disagree for a moment): 503,
    /// never a second forward (format 2).
    WrongRegion { region: u16 },
}

/// The full answer for one request: enough to route it and to explain it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The pool the tenant was resolved in.
    pub pool: u16,
    /// The tenant's home region (0 in format 1).
    pub home_region: u16,
    /// The tenant's consistent-hash slot (computed even when an override wins).
    pub slot: u32,
    pub source: Source,
    /// The cell chosen before cell states applied, from the pool's tables
    /// for the home region (also when the request is forwarded there).
    pub home: u16,
    /// Whether a disabled cell's failover was followed.
    pub failed_over: bool,
    /// The first cell met whose ramp was in force, if any.
    pub ramp: Option<RampStep>,
    pub outcome: Outcome,
}

impl Resolution {
    /// The operator-facing reason: `forward` / `wrong_region` when the
    /// tenant is homed in another region, `ramp` when a ramping cell sent the
    /// request on to its failover, `failover` when a disabled cell's failover
    /// was followed, else `override`, `pin`, `split` or `slot`.
    pub fn reason(&self) -> &'static str {
        match self.outcome {
            Outcome::Forward { .. } => return "forward",
            Outcome::WrongRegion { .. } => return "wrong_region",
            _ => {}
        }
        if self.ramp.is_some_and(|r| !r.kept) {
            return "ramp";
        }
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

    /// The cell whose state decided the outcome (routed, shed or disabled);
    /// for a request sent to another region, the home cell there.
    pub fn final_cell(&self) -> u16 {
        match self.outcome {
            Outcome::Route { cell }
            | Outcome::Shed { cell, .. }
            | Outcome::Unavailable { cell } => cell,
            Outcome::Forward { .. } | Outcome::WrongRegion { .. } => self.home,
        }
    }

    /// The region the request must go to, if it is not this one.
    pub fn other_region(&self) -> Option<u16> {
        match self.outcome {
            Outcome::Forward { region } | Outcome::WrongRegion { region } => Some(region),
            _ => None,
        }
    }
}

impl Snapshot {
    /// Resolves a tenant in the default pool (format 1: the only pool; else
    /// the first), in its home region, without a region check: the
    /// routing function of a format-1 snapshot.
    #[inline]
    pub fn resolve(&self, tenant: &[u8], draws: &Draws<'_>) -> Resolution {
        self.resolve_in(tenant, self.legacy_pool_index(), None, false, draws)
    }

    /// The pool a request belongs to (`SPEC.md`, "Pool selection"): the
    /// first pool, in document order, whose `match` takes the request's
    /// authority and path (as Envoy normalised them); `None`: no pool
    /// matches (404 `no_pool`). A format-1 snapshot's one pool takes every
    /// request.
    pub fn pool_for(&self, authority: &[u8], path: &[u8]) -> Option<u16> {
        let host = crate::pools::host_of(authority);
        self.pools
            .iter()
            .position(|p| p.match_rule.as_ref().is_none_or(|m| m.matches(host, path)))
            .map(|i| i as u16)
    }

    /// The region a gateway configured with `configured` (its plugin
    /// configuration's `region`) routes for, as [`Self::resolve_in`]'s
    /// `local_region`, or why the snapshot must be refused there (SPEC
    /// "Region homing"): a format-1 snapshot ignores the setting (`None`: no
    /// region check); a format-2 snapshot must list the configured region,
    /// and without one it must have exactly one region (then that one).
    pub fn local_region(&self, configured: Option<&str>) -> Result<Option<u16>, String> {
        if self.format() == 1 {
            return Ok(None);
        }
        let ids = || {
            self.regions()
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match configured {
            Some(id) => self.region_index(id).map(Some).ok_or_else(|| {
                format!(
                    "the gateway's region {id:?} is not in the snapshot (its regions: {})",
                    ids()
                )
            }),
            None if self.regions().len() == 1 => Ok(Some(0)),
            None => Err(format!(
                "the snapshot has {} regions ({}) and this gateway has no region configured",
                self.regions().len(),
                ids()
            )),
        }
    }

    /// The tenant's home region: `region_overrides[tenant]`, else
    /// `region_table[h mod S]` (0 in format 1).
    pub fn home_region(&self, tenant: &[u8]) -> u16 {
        if self.region_table.is_empty() {
            return 0;
        }
        let h = self.key().hash(tenant);
        crate::snapshot::home_region_of(
            &self.region_overrides,
            &self.region_table,
            self.slots,
            tenant,
            h,
        )
    }

    /// Resolves a tenant in `pool` (from [`Self::pool_for`]; an index out of
    /// range resolves in the first pool) at a gateway in `local_region`.
    /// In a format-2 snapshot, a tenant homed in another region is
    /// [`Outcome::Forward`]ed there, or [`Outcome::WrongRegion`] when the
    /// request was `forwarded` already; `local_region` `None` resolves in
    /// the home region wherever it is (tools). A format-1 snapshot ignores
    /// `local_region` and `forwarded`. Otherwise the pool's overrides, pins,
    /// moves and its slot table for the home region pick the home cell, and
    /// cell states apply as in format 1 (failover never leaves the pool and
    /// region: validation refuses it). The split key is only hashed when a
    /// gradual move or a ramp needs it; the shed draw is only compared for a
    /// draining cell.
    #[inline]
    pub fn resolve_in(
        &self,
        tenant: &[u8],
        pool: u16,
        local_region: Option<u16>,
        forwarded: bool,
        draws: &Draws<'_>,
    ) -> Resolution {
        let key = self.key();
        let h = key.hash(tenant);
        let slot = (h % u64::from(self.slots.max(1))) as u32;
        let home_region = if self.region_table.is_empty() {
            0
        } else {
            crate::snapshot::home_region_of(
                &self.region_overrides,
                &self.region_table,
                self.slots,
                tenant,
                h,
            )
        };
        let (pool, pool_ref) = match self.pools.get(usize::from(pool)) {
            Some(p) => (pool, p),
            None => match self.pools.first() {
                Some(p) => (0, p),
                None => {
                    return Resolution {
                        pool: 0,
                        home_region,
                        slot,
                        source: Source::Slot,
                        home: 0,
                        failed_over: false,
                        ramp: None,
                        outcome: Outcome::Unavailable { cell: 0 },
                    };
                }
            },
        };
        let slot_cell = pool_ref
            .slot_table(home_region)
            .get(slot as usize)
            .copied()
            .unwrap_or(0);

        let (source, home) = match pool_ref.tenants.get(tenant, h) {
            None => (Source::Slot, slot_cell),
            Some((EntryKind::Override, cell)) => (Source::Override, cell),
            Some((EntryKind::Pin, cell)) => (Source::Pin, cell),
            Some((EntryKind::Move, index)) => match pool_ref.moves.get(usize::from(index)) {
                Some(m) => {
                    let moved = key.draw(DRAW_DOMAIN_MOVE, draws.split_key) < m.to_basis_points;
                    (Source::Split { moved }, if moved { m.to } else { m.from })
                }
                None => (Source::Slot, slot_cell),
            },
        };

        if self.format() != 1
            && let Some(local) = local_region
            && local != home_region
        {
            return Resolution {
                pool,
                home_region,
                slot,
                source,
                home,
                failed_over: false,
                ramp: None,
                outcome: if forwarded {
                    Outcome::WrongRegion {
                        region: home_region,
                    }
                } else {
                    Outcome::Forward {
                        region: home_region,
                    }
                },
            };
        }

        // Follow failovers of disabled cells and of ramping cells that do not
        // take this key yet; validation refused loops, and the bound keeps
        // this finite whatever the table holds.
        let mut cell = home;
        let mut failed_over = false;
        let mut ramp = None;
        let mut ramp_draw = None;
        let outcome = 'outcome: {
            for _ in 0..=self.cells().len() {
                let Some(info) = self.cell(cell) else { break };
                match info.state {
                    CellState::Active => {
                        let (Some(r), Some(next)) = (&info.ramp, info.failover) else {
                            break 'outcome Outcome::Route { cell };
                        };
                        let share_bp = r.share_bp(draws.now_ms);
                        if share_bp >= BASIS_POINTS {
                            break 'outcome Outcome::Route { cell };
                        }
                        let d = *ramp_draw
                            .get_or_insert_with(|| key.draw(DRAW_DOMAIN_RAMP, draws.split_key));
                        let kept = d < share_bp;
                        if ramp.is_none() {
                            ramp = Some(RampStep {
                                cell,
                                share_bp,
                                kept,
                            });
                        }
                        if kept {
                            break 'outcome Outcome::Route { cell };
                        }
                        cell = next;
                    }
                    CellState::Draining => {
                        let shed = draws.shed < info.shed_basis_points;
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
            pool,
            home_region,
            slot,
            source,
            home,
            failed_over,
            ramp,
            outcome,
        }
    }
}
