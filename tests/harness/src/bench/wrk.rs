//! Runs `wrk` with the token-rotating Lua script and reads its result line.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The wrk script (`wrk.lua` next to this file).
pub const SCRIPT: &str = include_str!("wrk.lua");

/// Writes the script to `dir`; its path.
pub fn write_script(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("wrk.lua");
    std::fs::write(&path, SCRIPT)?;
    Ok(path)
}

/// What `done()` in the script prints.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Responses with a status ≥ 400.
    pub status_errors: u64,
    pub timeouts: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub mean_us: f64,
    pub max_us: u64,
    /// Times a thread went round its share of the token file.
    pub wraps: u64,
    /// Tokens loaded over all threads.
    pub tokens: u64,
}

impl WrkResult {
    pub fn requests_per_s(&self) -> f64 {
        if self.duration_us == 0 {
            return 0.0;
        }
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    pub fn errors(&self) -> u64 {
        self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.status_errors
            + self.timeouts
    }
}

/// Finds the `BENCH_RESULT {...}` line in wrk's output.
pub fn parse_output(stdout: &str) -> Result<WrkResult> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_RESULT "))
        .ok_or_else(|| anyhow!("wrk printed no BENCH_RESULT line:\n{stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

/// One wrk run.
pub struct WrkRun<'a> {
    pub url: &'a str,
    pub connections: u32,
    pub threads: u32,
    pub duration: Duration,
    pub script: &'a Path,
    pub token_file: &'a Path,
    /// The token line the run starts at (it wraps round the file).
    pub start: usize,
    /// Extra `name: value` headers.
    pub headers: &'a [String],
    /// Run wrk on these CPUs (`taskset -c`), off the gateway's.
    pub cpus: Option<&'a str>,
    /// Milliseconds each connection waits before each request (0: none, a
    /// closed loop that saturates the gateway).
    pub think_ms: u32,
}

impl WrkRun<'_> {
    pub fn run(&self) -> Result<WrkResult> {
        let threads = self.threads.min(self.connections).max(1);
        let mut command = match self.cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus, "wrk"]);
                command
            }
            None => Command::new("wrk"),
        };
        let output = command
            .env("CELL_ROUTER_WRK_THINK_MS", self.think_ms.to_string())
            .arg("-t")
            .arg(threads.to_string())
            .arg("-c")
            .arg(self.connections.to_string())
            .arg("-d")
            // wrk takes whole seconds.
            .arg(format!("{}s", self.duration.as_secs_f64().ceil().max(1.0)))
            .arg("--timeout")
            .arg("10s")
            .arg("-s")
            .arg(self.script)
            .arg(self.url)
            .arg("--")
            .arg(self.token_file)
            .arg(threads.to_string())
            .arg(self.start.to_string())
            .args(self.headers)
            .output()
            .context("running wrk (is it installed? `make tools`)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "wrk failed ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse_output(&stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_result_line() {
        let out = "Running 1s test @ http://127.0.0.1:1/\n\
            BENCH_RESULT {\"requests\":2000,\"duration_us\":1000000,\"connect_errors\":0,\
            \"read_errors\":0,\"write_errors\":0,\"status_errors\":3,\"timeouts\":1,\
            \"p50_us\":400,\"p90_us\":800,\"p99_us\":1500,\"p999_us\":3000,\"mean_us\":450.5,\
            \"max_us\":9000,\"wraps\":2,\"tokens\":1000}\n";
        let r = parse_output(out).unwrap();
        assert_eq!(r.requests, 2000);
        assert_eq!(r.requests_per_s(), 2000.0);
        assert_eq!(r.errors(), 4);
        assert_eq!(r.p99_us, 1500);
        assert!(parse_output("Running\n").is_err());
    }

    /// A tiny HTTP/1.1 server answering 200 to every request, recording the
    /// requests' raw bytes.
    fn echo_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let request: Vec<u8> = pending.drain(..end + 4).collect();
                            record.lock().unwrap().extend_from_slice(&request);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if stream.write_all(reply).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    /// The script runs in wrk's LuaJIT: every thread sends its share of the
    /// tokens, in rotation, with the extra header, and done() reports.
    #[test]
    fn script_rotates_tokens_in_wrk() {
        if Command::new("wrk").arg("--version").output().is_err() {
            eprintln!("wrk not installed; skipped");
            return;
        }
        let dir = std::env::temp_dir().join(format!("cell-router-wrk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = write_script(&dir).unwrap();
        let tokens = dir.join("tokens.txt");
        std::fs::write(&tokens, "tok-a\ntok-b\ntok-c\n").unwrap();
        let (port, seen) = echo_server();
        let url = format!("http://127.0.0.1:{port}/");
        let result = WrkRun {
            url: &url,
            connections: 2,
            threads: 2,
            duration: Duration::from_secs(1),
            script: &script,
            token_file: &tokens,
            start: 0,
            headers: &[
                "x-cell-id: cell-a".to_string(),
                "x-spread: {cells:1000}".to_string(),
            ],
            cpus: None,
            think_ms: 0,
        }
        .run()
        .unwrap();
        assert_eq!(result.tokens, 3);
        assert!(result.requests > 10, "{result:?}");
        assert_eq!(result.errors(), 0, "{result:?}");
        assert!(result.wraps > 0, "{result:?}");
        let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        for token in ["tok-a", "tok-b", "tok-c"] {
            assert!(
                seen.contains(&format!("Authorization: Bearer {token}\r\n")),
                "{token}"
            );
        }
        assert!(seen.contains("x-cell-id: cell-a\r\n"));
        // `{cells:N}`: token line i names cell i mod N.
        for cell in ["cell-a", "cell-b", "cell-c"] {
            assert!(seen.contains(&format!("x-spread: {cell}\r\n")), "{cell}");
        }
        assert!(!seen.contains("{cells:"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
