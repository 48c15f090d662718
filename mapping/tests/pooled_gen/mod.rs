//! Random valid format-2 snapshots for property tests: 1–3 regions, 1–3
//! pools (the last one sometimes the default pool), 1–3 cells per pool and
//! region in every state with failovers and ramps inside their group,
//! random region and slot tables, region overrides, and per-pool
//! overrides, pins and moves placed in each tenant's home region.

#![allow(dead_code)]

use base64::Engine as _;
use cell_router_mapping::HashKey;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

pub const KEY: &str = "7b1f3c9a2e4d6f80a1c3e5f70b2d4f61";
/// Most pools × regions a generated snapshot has.
pub const GROUPS: usize = 9;
const MAX_SLOTS: usize = 40;

pub fn table(indexes: &[u16]) -> String {
    let bytes: Vec<u8> = indexes.iter().flat_map(|i| i.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A cell: state (0 active, 1 draining, 2 disabled), shed ratio, whether
/// it fails over to the next cell of its group.
pub type CellGen = (u8, f64, bool);
/// A pool entry: tenant, pool, kind (0 override, 1 pin, 2 move), cell
/// choices a and b, move percent.
pub type EntryGen = (String, u8, u8, u8, u8, f64);

#[derive(Debug, Clone)]
pub struct PooledGen {
    pub regions: usize,
    pub pools: usize,
    pub default_pool: bool,
    /// Per group `pool * 3 + region`.
    pub group_cells: Vec<Vec<CellGen>>,
    /// One per slot (S = its length): the region, modulo the region count.
    pub region_slots: Vec<u8>,
    /// Per group: the slot owners, modulo the group's cell count.
    pub pool_slots: Vec<Vec<u8>>,
    pub region_overrides: Vec<(String, u8)>,
    pub entries: Vec<EntryGen>,
}

pub fn strategy() -> impl Strategy<Value = PooledGen> {
    (
        1usize..=3,
        1usize..=3,
        any::<bool>(),
        prop::collection::vec(
            prop::collection::vec((0u8..3, 0.0f64..=1.0, any::<bool>()), 1..=3),
            GROUPS,
        ),
        prop::collection::vec(any::<u8>(), 1..MAX_SLOTS),
        prop::collection::vec(prop::collection::vec(any::<u8>(), MAX_SLOTS), GROUPS),
        prop::collection::vec(("[a-d]{1,5}", any::<u8>()), 0..10),
        prop::collection::vec(
            (
                "[a-d]{1,6}",
                any::<u8>(),
                0u8..3,
                any::<u8>(),
                any::<u8>(),
                0.0f64..=100.0,
            ),
            0..60,
        ),
    )
        .prop_map(
            |(
                regions,
                pools,
                default_pool,
                group_cells,
                region_slots,
                pool_slots,
                region_overrides,
                entries,
            )| PooledGen {
                regions,
                pools,
                default_pool,
                group_cells,
                region_slots,
                pool_slots,
                region_overrides,
                entries,
            },
        )
}

pub fn cell_id(pool: usize, region: usize, k: usize) -> String {
    format!("c-p{pool}-r{region}-{k}")
}

impl PooledGen {
    pub fn slots(&self) -> usize {
        self.region_slots.len()
    }

    pub fn cells_of(&self, pool: usize, region: usize) -> &[CellGen] {
        &self.group_cells[pool * 3 + region]
    }

    fn region_table(&self) -> Vec<u16> {
        self.region_slots
            .iter()
            .map(|v| u16::from(*v) % self.regions as u16)
            .collect()
    }

    fn region_override_map(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (tenant, region) in &self.region_overrides {
            out.entry(tenant.clone())
                .or_insert(usize::from(*region) % self.regions);
        }
        out
    }

    /// The home region the snapshot will compute (independently: the
    /// generator places overrides with it).
    pub fn home(&self, tenant: &str) -> usize {
        if let Some(r) = self.region_override_map().get(tenant) {
            return *r;
        }
        let key = HashKey::from_hex(KEY).unwrap();
        let slot = (key.hash(tenant.as_bytes()) % self.slots() as u64) as usize;
        usize::from(self.region_table()[slot])
    }

    /// A pool's entries as the document will hold them (first per tenant).
    pub fn pool_entries(&self, pool: usize) -> Vec<EntryGen> {
        let mut seen = HashSet::new();
        self.entries
            .iter()
            .filter(|e| usize::from(e.1) % self.pools == pool)
            .filter(|e| seen.insert(e.0.clone()))
            .cloned()
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let mut cells = Vec::new();
        for p in 0..self.pools {
            for r in 0..self.regions {
                let group = self.cells_of(p, r);
                for (k, (state, shed, failover)) in group.iter().enumerate() {
                    let state = ["active", "draining", "disabled"][usize::from(*state)];
                    let mut c = json!({
                        "id": cell_id(p, r, k),
                        "pool": format!("p{p}"),
                        "region": format!("r{r}"),
                        "state": state,
                        "shed_ratio": shed,
                    });
                    if *failover && k + 1 < group.len() {
                        c["failover"] = json!(cell_id(p, r, k + 1));
                        if state == "active" {
                            c["ramp"] = json!({"start": 1000, "duration_s": 1000, "from_percent": shed * 100.0});
                        }
                    }
                    cells.push(c);
                }
            }
        }
        let index_of: HashMap<String, u16> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c["id"].as_str().unwrap().to_string(), i as u16))
            .collect();
        let mut pools = Vec::new();
        for p in 0..self.pools {
            let mut slot_tables = serde_json::Map::new();
            for r in 0..self.regions {
                let n = self.cells_of(p, r).len();
                let owners: Vec<u16> = self.pool_slots[p * 3 + r][..self.slots()]
                    .iter()
                    .map(|v| index_of[&cell_id(p, r, usize::from(*v) % n)])
                    .collect();
                slot_tables.insert(format!("r{r}"), json!(table(&owners)));
            }
            let (mut overrides, mut pins, mut moves) =
                (serde_json::Map::new(), serde_json::Map::new(), vec![]);
            for (tenant, _, kind, a, b, percent) in self.pool_entries(p) {
                let home = self.home(&tenant);
                let n = self.cells_of(p, home).len();
                let (a, b) = (usize::from(a) % n, usize::from(b) % n);
                match kind {
                    0 => {
                        overrides.insert(tenant, json!(cell_id(p, home, a)));
                    }
                    1 => {
                        pins.insert(tenant, json!(cell_id(p, home, a)));
                    }
                    _ if a != b => moves.push(json!({
                        "tenant": tenant,
                        "from": cell_id(p, home, a),
                        "to": cell_id(p, home, b),
                        "percent": percent,
                    })),
                    _ => {}
                }
            }
            let mut pool = json!({
                "id": format!("p{p}"),
                "slot_tables": slot_tables,
                "overrides": overrides,
                "pins": pins,
                "moves": moves,
            });
            let last = p + 1 == self.pools;
            if !(last && self.default_pool) {
                let mut m = json!({"path_prefixes": [format!("/p{p}")]});
                if p % 2 == 1 {
                    m["authorities"] = json!([format!("p{p}.example.com")]);
                }
                pool["match"] = m;
            }
            pools.push(pool);
        }
        let region_overrides: serde_json::Map<String, Value> = self
            .region_override_map()
            .into_iter()
            .map(|(t, r)| (t, json!(format!("r{r}"))))
            .collect();
        json!({
            "format": 2,
            "version": 3,
            "generated_at": "2026-01-01T00:00:00Z",
            "hash": {"algorithm": "siphash-1-3", "key": KEY, "slots": self.slots()},
            "regions": (0..self.regions).map(|r| json!({"id": format!("r{r}")})).collect::<Vec<_>>(),
            "region_table": table(&self.region_table()),
            "region_overrides": region_overrides,
            "cells": cells,
            "pools": pools,
        })
    }
}
