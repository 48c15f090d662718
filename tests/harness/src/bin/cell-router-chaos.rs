//! `cell-router-chaos`: chaos under load through real Envoy; the run itself
//! is `cell_router_harness::chaos`. Exit 0 when it passed, 1 when it ran and
//! failed, 2 when it could not run.

use cell_router_harness::chaos::{self, Args};
use clap::Parser;

fn main() {
    let args = Args::parse();
    match chaos::run(&args) {
        Ok(report) => {
            print!("{}", report.text());
            if let Some(path) = &args.json
                && let Err(err) = std::fs::write(path, report.json.to_string())
            {
                eprintln!("cell-router-chaos: writing {}: {err}", path.display());
                std::process::exit(2);
            }
            if !report.failures.is_empty() {
                std::process::exit(1);
            }
        }
        Err(err) => {
            eprintln!("cell-router-chaos: {err:#}");
            std::process::exit(2);
        }
    }
}
