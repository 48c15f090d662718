//! The snapshots the run publishes: good versions that keep moving tenants
//! between cells, and bad ones the sidecar must refuse; and how they reach
//! the source.

use super::CELLS;
use anyhow::Result;
use cell_router_kit::fixtures;
use cell_router_kit::rng::SplitMix64;
use cell_router_mapping::SnapshotDoc;
use cell_router_mapping::snapshot::encode_slot_table;
use std::collections::BTreeMap;
use std::path::Path;

pub fn tenant_name(i: usize) -> String {
    format!("chaos-{i:04}")
}

/// Versions 1..=count that move tenants between cells: slot ranges change
/// hands (as a weight change would move them), overrides come and go, and
/// now and then cell-a or cell-b is disabled and fails over. Never a draining
/// cell or a gradual move: each version gives each tenant exactly one cell.
pub fn generate_versions(count: u64, tenants: usize, seed: u64) -> Vec<SnapshotDoc> {
    let mut rng = SplitMix64::new(seed);
    let slots = fixtures::SLOTS as usize;
    let mut table: Vec<u16> = (0..slots).map(|i| (i % CELLS.len()) as u16).collect();
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for version in 1..=count {
        if version > 1 {
            for _ in 0..1 + rng.index(3) {
                let len = 16 + rng.index(240);
                let start = rng.index(slots);
                let cell = rng.index(CELLS.len()) as u16;
                let end = (start + len).min(slots);
                table[start..end].fill(cell);
            }
            if version % 10 == 0 {
                // A reweighting: contiguous blocks in proportion to new weights.
                let weights: Vec<usize> = (0..CELLS.len()).map(|_| 1 + rng.index(4)).collect();
                let total: usize = weights.iter().sum();
                let mut at = 0;
                for (cell, w) in weights.iter().enumerate() {
                    let end = if cell + 1 == CELLS.len() {
                        slots
                    } else {
                        at + slots * w / total
                    };
                    for slot in &mut table[at..end] {
                        *slot = cell as u16;
                    }
                    at = end;
                }
            }
            let keys: Vec<String> = overrides.keys().cloned().collect();
            for _ in 0..keys.len().min(15) {
                if let Some(key) = keys.get(rng.index(keys.len())) {
                    overrides.remove(key);
                }
            }
            for _ in 0..20 {
                let tenant = tenant_name(rng.index(tenants));
                let cell = CELLS[rng.index(CELLS.len())];
                overrides.insert(tenant, cell.to_string());
            }
        }
        let mut cells = vec![
            fixtures::cell("cell-a"),
            fixtures::cell("cell-b"),
            fixtures::cell("cell-c"),
        ];
        cells[0].failover = Some("cell-b".into());
        cells[1].failover = Some("cell-c".into());
        match version % 13 {
            5 => cells[0] = fixtures::disabled("cell-a", Some("cell-b")),
            11 => cells[1] = fixtures::disabled("cell-b", Some("cell-c")),
            _ => {}
        }
        let mut doc = fixtures::snapshot_with(version, cells);
        doc.slot_table = encode_slot_table(&table);
        doc.overrides = overrides.clone();
        out.push(doc);
    }
    out
}

/// The bad snapshots, each of which the sidecar must refuse.
#[derive(Clone, Copy, Debug)]
pub enum Bad {
    InvalidJson,
    FailoverLoop,
    OlderVersion,
    SameVersionOtherContent,
}

impl Bad {
    pub const ALL: [Bad; 4] = [
        Bad::InvalidJson,
        Bad::FailoverLoop,
        Bad::OlderVersion,
        Bad::SameVersionOtherContent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bad::InvalidJson => "invalid_json",
            Bad::FailoverLoop => "failover_loop",
            Bad::OlderVersion => "older_version",
            Bad::SameVersionOtherContent => "same_version_other_content",
        }
    }

    /// The bad document, given the good one the sidecar serves. Each would
    /// route differently (or not at all) if it were ever taken, so the
    /// checker would see it.
    pub fn bytes(self, served: &SnapshotDoc) -> Vec<u8> {
        let rotated = |doc: &mut SnapshotDoc| {
            let table: Vec<u16> = (0..fixtures::SLOTS as usize)
                .map(|i| ((i + 1) % CELLS.len()) as u16)
                .collect();
            doc.slot_table = encode_slot_table(&table);
            doc.overrides.clear();
        };
        match self {
            Bad::InvalidJson => format!(
                "{{\"version\": {}, \"cells\": [{{\"id\": ",
                served.version + 1
            )
            .into_bytes(),
            Bad::FailoverLoop => {
                let mut doc = served.clone();
                doc.version += 1;
                doc.cells[0] = fixtures::disabled("cell-a", Some("cell-b"));
                doc.cells[1] = fixtures::disabled("cell-b", Some("cell-a"));
                doc.to_json().into_bytes()
            }
            Bad::OlderVersion => {
                let mut doc = served.clone();
                doc.version = served.version.saturating_sub(1).max(1);
                rotated(&mut doc);
                doc.to_json().into_bytes()
            }
            Bad::SameVersionOtherContent => {
                let mut doc = served.clone();
                rotated(&mut doc);
                doc.to_json().into_bytes()
            }
        }
    }
}

/// Replaces `path` atomically (temporary file, then rename) as a control
/// plane would. Unlike `e2e::publish` there is no fsync: readers see the
/// rename at once, and on a busy machine an fsync every 100 ms stalls the
/// timeline for seconds.
pub fn publish(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cell_router_mapping::Snapshot;

    /// Every generated version is valid and gives every tenant exactly one
    /// cell; the two malformed bad kinds are refused by validation itself
    /// (the other two are refused by the sidecar's version rules).
    #[test]
    fn versions_are_valid_and_malformed_bad_ones_are_not() {
        let docs = generate_versions(30, 50, 7);
        assert_eq!(docs.len(), 30);
        for (i, doc) in docs.iter().enumerate() {
            assert_eq!(doc.version, i as u64 + 1);
            let snapshot = Snapshot::parse(doc.to_json().as_bytes()).unwrap();
            for t in 0..50 {
                let tenant = tenant_name(t);
                assert!(
                    snapshot
                        .resolve(tenant.as_bytes(), &cell_router_mapping::Draws::default())
                        .routed_cell()
                        .is_some(),
                    "v{} {tenant}",
                    doc.version
                );
            }
        }
        let served = &docs[4];
        for bad in [Bad::InvalidJson, Bad::FailoverLoop] {
            assert!(
                Snapshot::parse(&bad.bytes(served)).is_err(),
                "{}",
                bad.name()
            );
        }
        for bad in [Bad::OlderVersion, Bad::SameVersionOtherContent] {
            let doc = Snapshot::parse(&bad.bytes(served)).unwrap();
            assert!(doc.version() <= served.version, "{}", bad.name());
        }
    }
}
