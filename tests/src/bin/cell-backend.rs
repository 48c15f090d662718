//! A stand-in cell: answers every request with the cell's name and what it was
//! routed with, so tests and the demo can see where a request landed.
//!
//! `cell-backend --cell cell-a=127.0.0.1:18001 --cell cell-b=127.0.0.1:18002`
//! Response: 200, `x-served-by: <cell>`, JSON `{"cell", "path", "routed_cell",
//! "snapshot", "tenant", "headers"}` (`routed_cell`/`snapshot` are the request's
//! `x-cell-id`/`x-cell-snapshot` headers).

use clap::Parser;
use std::sync::Arc;

#[derive(Parser)]
#[command(about = "Stand-in cell backends that echo where a request was routed")]
struct Args {
    /// NAME=ADDR, once per cell (e.g. cell-a=127.0.0.1:18001).
    #[arg(long = "cell", required = true)]
    cells: Vec<String>,
    /// Worker threads per cell.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn main() {
    let args = Args::parse();
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
        for _ in 0..args.threads.max(1) {
            let (server, name) = (Arc::clone(&server), name.to_string());
            workers.push(std::thread::spawn(move || serve(&server, &name)));
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

fn serve(server: &tiny_http::Server, cell: &str) {
    let served_by = tiny_http::Header::from_bytes("x-served-by", cell).ok();
    let json = tiny_http::Header::from_bytes("content-type", "application/json").ok();
    for request in server.incoming_requests() {
        let header = |name: &'static str| {
            request
                .headers()
                .iter()
                .find(|h| h.field.equiv(name))
                .map(|h| h.value.as_str().to_string())
        };
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
