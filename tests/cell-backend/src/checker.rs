//! The chaos run's oracle: judges each request by the snapshot version it
//! carried (`--check-snapshots DIR`) and keeps the counters `GET /__chaos`
//! answers.

use cell_router_mapping::Snapshot;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Judges requests against the snapshots they were routed with.
pub struct Checker {
    pub tenant_header: String,
    pub snapshots: HashMap<u64, Snapshot>,
    /// Requests that reached a cell, `/__chaos` aside.
    requests: AtomicU64,
    /// Requests naming their tenant, so they could be judged.
    checked: AtomicU64,
    /// Served by the cell their snapshot version gives the tenant.
    correct: AtomicU64,
    /// Served by another cell, or routed though their snapshot refuses them.
    misroutes: AtomicU64,
    /// Carried a version that is not among the published snapshots.
    unknown_version: AtomicU64,
    /// Named a tenant but lacked the cell or version header.
    missing_headers: AtomicU64,
    /// No tenant header (readiness probes): not judged.
    unlabelled: AtomicU64,
    /// Deliberately mislabelled requests, and how many were caught.
    canaries: AtomicU64,
    canaries_caught: AtomicU64,
    per_cell: HashMap<String, AtomicU64>,
    versions_seen: Mutex<BTreeSet<u64>>,
    /// The first few misroutes, to explain a failure.
    samples: Mutex<Vec<String>>,
}

const MAX_SAMPLES: usize = 20;

/// What a request carried that the checker reads.
pub struct Labels<'a> {
    pub tenant: Option<&'a str>,
    pub routed_cell: Option<&'a str>,
    pub version: Option<&'a str>,
    pub canary: bool,
}

enum Verdict {
    Unlabelled,
    MissingHeaders(String),
    UnknownVersion(String),
    Correct(u64),
    Misroute(u64, String),
}

impl Checker {
    pub fn load(dir: &Path, cells: &[String], tenant_header: &str) -> Result<Checker, String> {
        let mut snapshots = HashMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let snapshot =
                Snapshot::parse(&bytes).map_err(|e| format!("{}: {e:?}", path.display()))?;
            if snapshots.insert(snapshot.version(), snapshot).is_some() {
                return Err(format!(
                    "{}: a second snapshot of its version",
                    path.display()
                ));
            }
        }
        if snapshots.is_empty() {
            return Err("no *.json snapshots".into());
        }
        Ok(Checker {
            tenant_header: tenant_header.to_string(),
            snapshots,
            requests: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            correct: AtomicU64::new(0),
            misroutes: AtomicU64::new(0),
            unknown_version: AtomicU64::new(0),
            missing_headers: AtomicU64::new(0),
            unlabelled: AtomicU64::new(0),
            canaries: AtomicU64::new(0),
            canaries_caught: AtomicU64::new(0),
            per_cell: cells
                .iter()
                .map(|c| (c.clone(), AtomicU64::new(0)))
                .collect(),
            versions_seen: Mutex::new(BTreeSet::new()),
            samples: Mutex::new(Vec::new()),
        })
    }

    /// Counts one request. A canary (`x-chaos-canary`) is deliberately
    /// mislabelled by the driver to prove misroutes are caught; it is
    /// counted apart so it never hides or fakes a real one.
    pub fn judge(&self, cell: &str, request: &Labels<'_>) {
        let bump = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
        bump(&self.requests);
        if let Some(count) = self.per_cell.get(cell) {
            bump(count);
        }
        let verdict = self.verdict(cell, request);
        if request.canary {
            bump(&self.canaries);
            if matches!(verdict, Verdict::Misroute(..)) {
                bump(&self.canaries_caught);
            }
            return;
        }
        match verdict {
            Verdict::Unlabelled => {
                bump(&self.unlabelled);
            }
            Verdict::MissingHeaders(why) => {
                bump(&self.checked);
                bump(&self.missing_headers);
                self.sample(why);
            }
            Verdict::UnknownVersion(why) => {
                bump(&self.checked);
                bump(&self.unknown_version);
                self.sample(why);
            }
            Verdict::Correct(version) => {
                bump(&self.checked);
                bump(&self.correct);
                self.saw(version);
            }
            Verdict::Misroute(version, why) => {
                bump(&self.checked);
                bump(&self.misroutes);
                self.saw(version);
                self.sample(why);
            }
        }
    }

    fn verdict(&self, cell: &str, request: &Labels<'_>) -> Verdict {
        let Some(tenant) = request.tenant else {
            return Verdict::Unlabelled;
        };
        let (Some(routed_cell), Some(version)) = (request.routed_cell, request.version) else {
            return Verdict::MissingHeaders(format!(
                "{tenant}: served by {cell} without x-cell-id/x-cell-snapshot ({:?}, {:?})",
                request.routed_cell, request.version
            ));
        };
        let Some((number, snapshot)) = version
            .parse::<u64>()
            .ok()
            .and_then(|v| Some((v, self.snapshots.get(&v)?)))
        else {
            return Verdict::UnknownVersion(format!(
                "{tenant}: served by {cell} with unknown snapshot {version:?}"
            ));
        };
        // The right cell is the one the request's tenant is routed to: the
        // chaos load's tokens carry no subject, so the tenant is the split
        // key; a shed request never reaches a cell (the luckiest shed draw
        // is the route of every request that does); chaos snapshots have
        // no ramps, so the time is the checker's own.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let resolution = snapshot.resolve(
            tenant.as_bytes(),
            &cell_router_mapping::Draws::unshed(tenant.as_bytes(), now_ms),
        );
        let want = resolution
            .routed_cell()
            .and_then(|index| snapshot.cell(index))
            .map(|c| c.id.as_str());
        if want == Some(cell) && routed_cell == cell {
            Verdict::Correct(number)
        } else {
            Verdict::Misroute(
                number,
                format!(
                    "{tenant}: snapshot {number} gives {want:?} ({reason}), served by {cell}, x-cell-id {routed_cell}",
                    reason = resolution.reason()
                ),
            )
        }
    }

    fn saw(&self, version: u64) {
        if let Ok(mut seen) = self.versions_seen.lock() {
            seen.insert(version);
        }
    }

    fn sample(&self, what: String) {
        if let Ok(mut samples) = self.samples.lock()
            && samples.len() < MAX_SAMPLES
        {
            samples.push(what);
        }
    }

    pub fn report(&self) -> serde_json::Value {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let seen: Vec<u64> = self
            .versions_seen
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let per_cell: serde_json::Map<String, serde_json::Value> = self
            .per_cell
            .iter()
            .map(|(cell, count)| (cell.clone(), load(count).into()))
            .collect();
        serde_json::json!({
            "requests": load(&self.requests),
            "checked": load(&self.checked),
            "correct": load(&self.correct),
            "misroutes": load(&self.misroutes),
            "unknown_version": load(&self.unknown_version),
            "missing_headers": load(&self.missing_headers),
            "unlabelled": load(&self.unlabelled),
            "canaries": load(&self.canaries),
            "canaries_caught": load(&self.canaries_caught),
            "per_cell": per_cell,
            "versions_loaded": self.snapshots.len(),
            "versions_seen": seen,
            "misroute_samples": samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cell_router_kit::fixtures::{snapshot, snapshot_json, with_override};

    /// Version 1 routes tenant `t` by slot to `home`; version 2 overrides it to `moved`.
    fn checker(moved: &str) -> Checker {
        let dir = std::env::temp_dir().join(format!("cell-backend-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v1 = snapshot(1);
        let v2 = with_override(snapshot(2), "t", moved);
        std::fs::write(dir.join("v1.json"), snapshot_json(&v1)).unwrap();
        std::fs::write(dir.join("v2.json"), snapshot_json(&v2)).unwrap();
        let cells = ["cell-a", "cell-b", "cell-c"].map(String::from);
        let checker = Checker::load(&dir, &cells, "x-test-tenant").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        checker
    }

    fn labels<'a>(tenant: &'a str, cell: &'a str, version: &'a str) -> Labels<'a> {
        Labels {
            tenant: Some(tenant),
            routed_cell: Some(cell),
            version: Some(version),
            canary: false,
        }
    }

    #[test]
    fn judges_each_request_by_the_version_it_carried() {
        let v1 =
            cell_router_mapping::Snapshot::parse(snapshot_json(&snapshot(1)).as_bytes()).unwrap();
        let home = v1
            .resolve(b"t", &cell_router_mapping::Draws::default())
            .routed_cell()
            .unwrap();
        let home = v1.cell(home).unwrap().id.clone();
        let moved = if home == "cell-a" { "cell-b" } else { "cell-a" };
        let checker = checker(moved);

        // Right for its own version, old or new.
        checker.judge(&home, &labels("t", &home, "1"));
        checker.judge(moved, &labels("t", moved, "2"));
        // Wrong for its version: served by the other version's cell, or by a
        // cell other than the header named.
        checker.judge(&home, &labels("t", &home, "2"));
        checker.judge(moved, &labels("t", moved, "1"));
        checker.judge(moved, &labels("t", &home, "1"));
        // Unknown version, missing headers, no tenant.
        checker.judge(moved, &labels("t", moved, "3"));
        let mut missing = labels("t", moved, "2");
        missing.version = None;
        checker.judge(moved, &missing);
        let mut probe = labels("t", moved, "2");
        probe.tenant = None;
        checker.judge(moved, &probe);
        // A canary is counted apart.
        let mut canary = labels("t", &home, "2");
        canary.canary = true;
        checker.judge(&home, &canary);

        let report = checker.report();
        assert_eq!(report["requests"], 9);
        assert_eq!(report["checked"], 7);
        assert_eq!(report["correct"], 2);
        assert_eq!(report["misroutes"], 3);
        assert_eq!(report["unknown_version"], 1);
        assert_eq!(report["missing_headers"], 1);
        assert_eq!(report["unlabelled"], 1);
        assert_eq!(report["canaries"], 1);
        assert_eq!(report["canaries_caught"], 1);
        assert_eq!(report["versions_seen"], serde_json::json!([1, 2]));
        assert_eq!(report["misroute_samples"].as_array().unwrap().len(), 5);
    }
}
