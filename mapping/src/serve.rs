//! `cellmap serve`: the sidecar that serves snapshots to the local Envoy.
//! (Being written by the lead; the CLI only needs `ServeArgs` and `run`.)

/// Options of `cellmap serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Snapshot file to serve (watched and reloaded on change).
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
}

/// Runs the sidecar until it is told to stop.
pub fn run(args: ServeArgs) -> Result<(), String> {
    Err(format!("cellmap serve is not implemented yet ({args:?})"))
}
