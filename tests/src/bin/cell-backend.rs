//! A stand-in cell: answers every request with the cell's name and what it was
//! routed with, so tests and the demo can see where a request landed.
//!
//! `cell-backend --cell cell-a=127.0.0.1:18001 --cell cell-b=127.0.0.1:18002`
//! Response: 200, `x-served-by: <cell>`, JSON `{"cell", "path", "routed_cell",
//! "snapshot", "tenant", "headers"}` (`routed_cell`/`snapshot` are the request's
//! `x-cell-id`/`x-cell-snapshot` headers).
//!
//! With `--check-snapshots DIR` (the chaos run) it also judges every request
//! that names its tenant (`x-test-tenant`): the snapshot version it carried
//! must be one of DIR's snapshots, and that snapshot must send the tenant to
//! this cell. `GET /__chaos` on any cell answers the counters as JSON.

use cell_router_mapping::Snapshot;
use clap::Parser;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(about = "Stand-in cell backends that echo where a request was routed")]
struct Args {
    /// NAME=ADDR, once per cell (e.g. cell-a=127.0.0.1:18001).
    #[arg(long = "cell", required = true)]
    cells: Vec<String>,
    /// Worker threads per cell.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Judge each request against the snapshot version it carried, loading
    /// every `*.json` snapshot in this directory; counters at `GET /__chaos`.
    #[arg(long, value_name = "DIR")]
    check_snapshots: Option<PathBuf>,
    /// The header naming the request's tenant (set by the load generator;
    /// the router ignores it).
    #[arg(long, default_value = "x-test-tenant")]
    tenant_header: String,
}

fn main() {
    let args = Args::parse();
    let names: Vec<String> = args
        .cells
        .iter()
        .filter_map(|s| s.split_once('=').map(|(n, _)| n.to_string()))
        .collect();
    let checker = match &args.check_snapshots {
        None => None,
        Some(dir) => match Checker::load(dir, &names, &args.tenant_header) {
            Ok(checker) => {
                eprintln!(
                    "cell-backend: checking against {} snapshots from {}",
                    checker.snapshots.len(),
                    dir.display()
                );
                Some(Arc::new(checker))
            }
            Err(err) => {
                eprintln!("cell-backend: --check-snapshots {}: {err}", dir.display());
                std::process::exit(2);
            }
        },
    };
    let mut workers = Vec::new();
    for spec in &args.cells {
        let Some((name, addr)) = spec.split_once('=') else {
            eprintln!("cell-backend: --cell wants NAME=ADDR, got {spec:?}");
            std::process::exit(2);
        };
        let server = match tiny_http::Server::http(addr) {
            Ok(server) => Arc::new(server),
            Err(err) => {
                eprintln!("cell-backend: cannot listen on {addr}: {err}");
                std::process::exit(1);
            }
        };
        eprintln!("cell-backend: {name} on http://{addr}");
        keep_accepting(addr);
        for _ in 0..args.threads.max(1) {
            let (server, name) = (Arc::clone(&server), name.to_string());
            let checker = checker.clone();
            workers.push(std::thread::spawn(move || {
                serve(&server, &name, checker.as_deref())
            }));
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Works around a lost wakeup in tiny_http 0.12's connection pool: when two
/// connections arrive together while every pool thread holds a keep-alive
/// connection, the second can sit unserved until the next connection comes
/// (Envoy then answers 504 after its 15 s route timeout, about once per
/// 100,000 requests under load). An empty connection every 50 ms makes the
/// pool start a thread that also picks up any stranded one. Always on: the
/// demo stack is loaded with wrk too (a 25 s wrk run through `make demo-up`
/// without it had 12 of 107,882 requests time out).
fn keep_accepting(addr: &str) {
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return;
    };
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ =
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200));
        }
    });
}

fn serve(server: &tiny_http::Server, cell: &str, checker: Option<&Checker>) {
    let served_by = tiny_http::Header::from_bytes("x-served-by", cell).ok();
    let json = tiny_http::Header::from_bytes("content-type", "application/json").ok();
    for request in server.incoming_requests() {
        let header = |name: &str| {
            request
                .headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_string())
        };
        if let Some(checker) = checker {
            if request.url() == "/__chaos" {
                let mut response = tiny_http::Response::from_string(checker.report().to_string());
                for h in json.iter() {
                    response.add_header(h.clone());
                }
                let _ = request.respond(response);
                continue;
            }
            let (tenant, routed_cell, version, request_id) = (
                header(&checker.tenant_header),
                header("x-cell-id"),
                header("x-cell-snapshot"),
                header("x-request-id"),
            );
            checker.judge(
                cell,
                &Labels {
                    tenant: tenant.as_deref(),
                    routed_cell: routed_cell.as_deref(),
                    version: version.as_deref(),
                    request_id: request_id.as_deref(),
                    canary: header("x-chaos-canary").is_some(),
                },
            );
        }
        let headers: serde_json::Map<String, serde_json::Value> = request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().into(),
                )
            })
            .collect();
        let body = serde_json::json!({
            "cell": cell,
            "path": request.url(),
            "routed_cell": header("x-cell-id"),
            "snapshot": header("x-cell-snapshot"),
            "tenant": header("x-tenant-id"),
            "headers": headers,
        });
        let mut response = tiny_http::Response::from_string(body.to_string());
        for h in served_by.iter().chain(json.iter()) {
            response.add_header(h.clone());
        }
        let _ = request.respond(response);
    }
}

/// Judges requests against the snapshots they were routed with.
struct Checker {
    tenant_header: String,
    snapshots: HashMap<u64, Snapshot>,
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
struct Labels<'a> {
    tenant: Option<&'a str>,
    routed_cell: Option<&'a str>,
    version: Option<&'a str>,
    request_id: Option<&'a str>,
    canary: bool,
}

enum Verdict {
    Unlabelled,
    MissingHeaders(String),
    UnknownVersion(String),
    Correct(u64),
    Misroute(u64, String),
}

impl Checker {
    fn load(dir: &Path, cells: &[String], tenant_header: &str) -> Result<Checker, String> {
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
    fn judge(&self, cell: &str, request: &Labels<'_>) {
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
        let resolution = snapshot.resolve(
            tenant.as_bytes(),
            request.request_id.unwrap_or("").as_bytes(),
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

    fn report(&self) -> serde_json::Value {
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
    use cell_router_tests::fixtures::{snapshot, snapshot_json, with_override};

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
            request_id: None,
            canary: false,
        }
    }

    #[test]
    fn judges_each_request_by_the_version_it_carried() {
        let v1 =
            cell_router_mapping::Snapshot::parse(snapshot_json(&snapshot(1)).as_bytes()).unwrap();
        let home = v1.resolve(b"t", b"").routed_cell().unwrap();
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
