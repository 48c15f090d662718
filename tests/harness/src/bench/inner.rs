//! The other benchmarks `make bench` runs first, and their output in
//! BENCHMARKS.md: the mapping engine's (`cargo bench -p cell-router-mapping
//! --bench resolve`) and the filter's per-request cost in the wasmtime host
//! (`cargo bench -p cell-router-wasm-host --bench wasm_request`).

use std::fmt::Write as _;
use std::path::Path;

/// One benchmark's output, as captured by `make bench`.
pub struct Inner {
    pub title: &'static str,
    pub command: &'static str,
    /// `None`: the output file is missing (the bench was not run or failed).
    pub output: Option<String>,
}

pub struct InnerBenches {
    pub benches: Vec<Inner>,
}

/// Keeps the benchmark's own lines: drops cargo's progress lines.
fn clean(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            ![
                "Compiling ",
                "Finished ",
                "Running ",
                "Blocking ",
                "Downloaded ",
                "Downloading ",
                "Updating ",
                "Locking ",
                "warning: ",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

impl InnerBenches {
    /// Reads the captured outputs (`None` paths: not given).
    pub fn read(mapping: Option<&Path>, wasm: Option<&Path>) -> InnerBenches {
        let read = |p: Option<&Path>| {
            p.and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| clean(&t))
                .filter(|t| !t.is_empty())
        };
        InnerBenches {
            benches: vec![
                Inner {
                    title: "Mapping engine: resolve ns, 1 M-override parse time and memory (native)",
                    command: "cargo bench -p cell-router-mapping --bench resolve",
                    output: read(mapping),
                },
                Inner {
                    title: "The filter's .wasm per request and 1 M-override apply, in the wasmtime host",
                    command: "cargo bench -p cell-router-wasm-host --bench wasm_request",
                    output: read(wasm),
                },
            ],
        }
    }

    pub fn markdown(&self, w: &mut String) {
        for bench in &self.benches {
            let _ = writeln!(w, "### {}\n", bench.title);
            match &bench.output {
                Some(text) => {
                    let _ = writeln!(w, "`{}`:\n\n```text\n{text}\n```\n", bench.command);
                }
                None => {
                    let _ = writeln!(
                        w,
                        "`{}`: no output in this run (not run, or it failed).\n",
                        bench.command
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_noise_is_dropped() {
        let text = "   Compiling x v1\n    Finished `bench` profile\n     Running benches/resolve.rs\nresolve 54 ns\n";
        assert_eq!(clean(text), "resolve 54 ns");
    }
}
