//! A stand-in cell: answers every request with the cell's name and what it was
//! routed with, so tests and the demo can see where a request landed.
//!
//! `cell-backend --cell cell-a=127.0.0.1:18001 --cell cell-b=127.0.0.1:18002`
//! serves every cell from one process (port 0 takes a free port; the start-up
//! line `cell-backend: NAME on http://ADDR` names the one bound).
//! Response: 200, `x-served-by: <cell>`, JSON `{"cell", "path", "routed_cell",
//! "snapshot", "tenant", "delay_ms", "headers"}` (`routed_cell`/`snapshot`/
//! `tenant` are the request's `x-cell-id`/`x-cell-snapshot`/`x-tenant-id`
//! headers, `headers` all of them, names lower-cased).
//!
//! **Slow answers**, for drain and timeout tests: `--delay-ms N` holds every
//! answer N ms; a request's `x-test-delay-ms: N` header sets its own delay
//! instead (0 for none; at most 600,000; anything else is answered 400
//! `bad_delay`). A delayed request is in flight the whole time: the headers
//! are read and judged at once, the reply is sent after the delay, and other
//! requests, on any connection, are served meanwhile.
//!
//! With `--check-snapshots DIR` (the chaos run) it also judges every request
//! that names its tenant (`x-test-tenant`, or `--tenant-header`): the
//! snapshot version it carried must be one of DIR's snapshots, and that
//! snapshot must send the tenant to this cell. `GET /__chaos` on any cell
//! answers the counters as JSON.
//!
//! HTTP/1.1 with keep-alive on tokio + hyper: every connection is its own
//! task, so a new connection is answered however many others are open.

mod checker;
mod serve;

use checker::Checker;
use clap::Parser;
use hyper::header::HeaderValue;
use serve::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Stand-in cell backends that echo where a request was routed")]
struct Args {
    /// NAME=ADDR, once per cell (e.g. cell-a=127.0.0.1:18001).
    #[arg(long = "cell", required = true)]
    cells: Vec<String>,
    /// Worker threads of the runtime that serves all the cells.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Judge each request against the snapshot version it carried, loading
    /// every `*.json` snapshot in this directory; counters at `GET /__chaos`.
    #[arg(long, value_name = "DIR")]
    check_snapshots: Option<PathBuf>,
    /// The header naming the request's tenant (set by the load generator;
    /// the router ignores it).
    #[arg(long, default_value = "x-test-tenant")]
    tenant_header: String,
    /// Hold every answer this many milliseconds (a request's
    /// `x-test-delay-ms` header overrides it).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    delay_ms: u64,
}

/// Why the process stops early, and its exit code: 2 for a bad invocation,
/// 1 when the machine refuses (a port taken, no threads).
struct Stop(i32, String);

fn main() {
    let args = Args::parse();
    if let Err(Stop(code, message)) = run(&args) {
        eprintln!("cell-backend: {message}");
        std::process::exit(code);
    }
}

fn run(args: &Args) -> Result<(), Stop> {
    let mut specs = Vec::new();
    for spec in &args.cells {
        let Some((name, addr)) = spec.split_once('=') else {
            return Err(Stop(2, format!("--cell wants NAME=ADDR, got {spec:?}")));
        };
        let served_by = HeaderValue::from_str(name)
            .map_err(|_| Stop(2, format!("--cell {spec:?}: the name is no header value")))?;
        specs.push((name.to_string(), addr.to_string(), served_by));
    }
    if args.delay_ms > serve::MAX_DELAY_MS {
        return Err(Stop(
            2,
            format!("--delay-ms is at most {}", serve::MAX_DELAY_MS),
        ));
    }
    let checker = match &args.check_snapshots {
        None => None,
        Some(dir) => {
            let names: Vec<String> = specs.iter().map(|(name, ..)| name.clone()).collect();
            let checker = Checker::load(dir, &names, &args.tenant_header)
                .map_err(|err| Stop(2, format!("--check-snapshots {}: {err}", dir.display())))?;
            eprintln!(
                "cell-backend: checking against {} snapshots from {}",
                checker.snapshots.len(),
                dir.display()
            );
            Some(Arc::new(checker))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_io()
        .enable_time()
        .build()
        .map_err(|err| Stop(1, format!("cannot start the runtime: {err}")))?;
    runtime.block_on(async {
        // Every port is bound before any is served: a taken port stops the
        // whole process, as the harness expects.
        let mut cells = Vec::new();
        for (name, addr, served_by) in specs {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|err| Stop(1, format!("cannot listen on {addr}: {err}")))?;
            let bound = listener
                .local_addr()
                .map_err(|err| Stop(1, format!("{addr}: {err}")))?;
            eprintln!("cell-backend: {name} on http://{bound}");
            let cell = Cell {
                name,
                served_by,
                checker: checker.clone(),
                delay: Duration::from_millis(args.delay_ms),
            };
            cells.push((listener, Arc::new(cell)));
        }
        let loops: Vec<_> = cells
            .into_iter()
            .map(|(listener, cell)| tokio::spawn(serve::accept_loop(listener, cell)))
            .collect();
        for accept in loops {
            // The loops never end; a join error is a panic in one of them.
            if let Err(err) = accept.await {
                return Err(Stop(1, format!("a cell stopped: {err}")));
            }
        }
        Ok(())
    })
}
