//! `cellmap`: the operator's tool for mapping snapshots, and the sidecar.

fn main() -> std::process::ExitCode {
    cellmap::cli::main()
}
