//! Chaos under load: wrk drives signed requests for many tenants through real
//! Envoy (the filter, `envoy/envoy.yaml`) while the snapshot at the source
//! flips every 100 ms, bad snapshots are injected, and the sidecar is
//! SIGKILLed and restarted. The cell backends judge every request against the
//! snapshot version it carried (`cell-backend --check-snapshots`), so a
//! misroute is a request served by any cell other than the one its own
//! version gives its tenant.
//!
//! Every snapshot is active-only (or a disabled cell with a failover), with no
//! draining cell and no gradual move, so each request has exactly one right
//! answer: a 200 from that cell. Any misroute, 5xx or other non-2xx fails the
//! run (exit 1).
//!
//! `cell-router-chaos --duration 20s [--json report.json]`; needs Envoy,
//! `cellmap` and the filter as the end-to-end tests do (`ENVOY_BIN`,
//! `CELLMAP_BIN`, `CELL_ROUTER_WASM`, or their `make` locations).
//!
//! [`run`] reads top-down: the `snapshots` are generated, the gateway
//! starts with `judge`'s checking backends, the `load` starts, the
//! `timeline` of flips, bad snapshots and kills runs against it, and
//! `judge` gives the verdict, which `report` prints.

mod judge;
mod load;
mod report;
mod snapshots;
mod timeline;

pub use report::Report;

use crate::e2e::{self, Envoy, EnvoyOptions, Gateway, Sidecar};
use anyhow::{Result, bail};
use clap::Parser;
use snapshots::{generate_versions, publish, tenant_name};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "Chaos under load through real Envoy: snapshot flips, bad snapshots, \
                   sidecar kills; counts misroutes and unintended 5xx (both must be 0)"
)]
pub struct Args {
    /// How long wrk drives load (e.g. 20s, 1m; whole seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Tenants, each with its own pre-minted HS256 token.
    #[arg(long, default_value_t = 1000)]
    pub tenants: usize,
    /// wrk connections (keep-alive; spread over Envoy's workers).
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub wrk_threads: u32,
    /// Envoy worker threads (each runs its own Wasm VM).
    #[arg(long, default_value_t = 2)]
    pub concurrency: u32,
    /// A new snapshot version is published this often.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub flip_every: Duration,
    /// A bad snapshot is injected this often (kinds in turn: invalid JSON,
    /// failover loop, older version, same version with other content).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub bad_every: Duration,
    /// How long a bad snapshot stays at the source (flips pause meanwhile),
    /// so the sidecar's file watch (every 100 ms) surely reads it.
    #[arg(long, default_value = "400ms", value_parser = parse_duration)]
    pub bad_hold: Duration,
    /// The sidecar is SIGKILLed this often (the first time at a third of the
    /// run, at most 3 s in).
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub kill_every: Duration,
    /// How long the sidecar stays dead before it restarts on the same port.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub down_for: Duration,
    /// Seed for the generated snapshots.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 20s, 1m, 500ms)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];
/// The header naming the tenant for the checker (the router ignores it).
const TENANT_HEADER: &str = "x-test-tenant";

/// One chaos run: Ok with the report whether or not it passed (see
/// [`Report::failures`]); Err when the run itself could not be made.
pub fn run(args: &Args) -> Result<Report> {
    if args.tenants == 0 || args.flip_every.is_zero() {
        bail!("--tenants and --flip-every must be above zero");
    }
    let dir = e2e::work_dir("chaos")?;
    let versions_dir = dir.join("versions");
    std::fs::create_dir_all(&versions_dir)?;

    // Enough versions for a flip every `flip_every` all run long, and spare.
    let count = (args.duration.as_secs_f64() / args.flip_every.as_secs_f64()).ceil() as u64 + 20;
    let docs = generate_versions(count, args.tenants, args.seed);
    let bodies: Vec<Vec<u8>> = docs.iter().map(|d| d.to_json().into_bytes()).collect();
    for (doc, body) in docs.iter().zip(&bodies) {
        std::fs::write(versions_dir.join(format!("v{:06}.json", doc.version)), body)?;
    }
    eprintln!(
        "chaos: {} versions in {}",
        docs.len(),
        versions_dir.display()
    );

    let backends = judge::start_backends(&dir, &versions_dir)?;
    let source = dir.join("snapshot.json");
    publish(&source, &bodies[0])?;
    let sidecar = Sidecar::start(&dir, &source)?;
    let mut options = EnvoyOptions::new(&backends, sidecar.port);
    options.concurrency = args.concurrency;
    let envoy = Envoy::start(&dir, options)?;
    let mut gateway = Gateway {
        dir: dir.clone(),
        source: source.clone(),
        backends,
        sidecar,
        envoy,
    };
    if !gateway.wait_for_version(1, Duration::from_secs(20)) {
        bail!(
            "Envoy never routed by snapshot 1\n{}",
            gateway.envoy.process.log_tail(30)
        );
    }

    let tenants: Vec<String> = (0..args.tenants).map(tenant_name).collect();
    judge::send_canaries(&gateway, &docs[0], &tenants)?;
    let (mut wrk, load_secs) = load::start(args, &gateway, &tenants)?;
    let started = Instant::now();
    eprintln!(
        "chaos: load for {load_secs} s through Envoy on :{}",
        gateway.envoy.port
    );
    let timeline = timeline::drive(
        args,
        &mut gateway,
        &mut wrk,
        &docs,
        &bodies,
        started,
        load_secs,
    )?;
    let load = load::finish(&mut wrk, &dir)?;
    judge::judge(args, &gateway, &load, &timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_help_says() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration(" 500ms "), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
