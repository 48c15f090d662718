//! Shared by the sidecar tests: the real `cellmap serve` binary on a free
//! loopback port, snapshots, a blocking client (ureq) and a raw async
//! HTTP/1.1 client for hundreds of concurrent long-polls.

// clippy.toml allows these in #[test] fns only; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Sidecar {
    pub child: Child,
    pub port: u16,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends a signal by name (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// The exit status if the process ended within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then the exit status (panics if it takes over `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!("sidecar still running {timeout:?} after SIGTERM"),
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start(args: &[&str]) -> Sidecar {
    start_on(free_port(), args)
}

/// Starts `cellmap serve` on `port` and waits until it answers /healthz
/// (200 or 503). Its log goes to stderr when `CELLMAP_TEST_LOG` is set.
pub fn start_on(port: u16, args: &[&str]) -> Sidecar {
    let log = if std::env::var_os("CELLMAP_TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    let child = Command::new(binary())
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut sidecar = Sidecar { child, port };
    // Generous: a busy machine may take seconds to start a process.
    let up = wait_until(Duration::from_secs(30), || {
        get(sidecar.port, "/healthz", &[]).is_some()
    });
    if !up {
        let exited = sidecar.child.try_wait().unwrap();
        panic!("sidecar on port {port} did not answer /healthz within 30 s (exited: {exited:?})");
    }
    sidecar
}

/// The `cellmap` under test: this crate's, or `CELLMAP_TEST_BIN` (to run
/// these tests against another build, e.g. an older one, and see them fail).
pub fn binary() -> PathBuf {
    std::env::var_os("CELLMAP_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cellmap")))
}

/// Runs `command` with `input` on its standard input (written from another
/// thread, so a large input cannot deadlock against the output).
pub fn output_with_stdin(mut command: Command, input: &[u8]) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    pub body: String,
}

pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<Reply> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut request = agent.get(format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().ok()?;
    Some(Reply {
        status: response.status().as_u16(),
        etag: response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: response.body_mut().read_to_string().unwrap_or_default(),
    })
}

pub fn snapshot(version: u64, override_to: &str) -> String {
    serde_json::json!({
        "version": version,
        "generated_at": "2026-11-22T00:00:00Z",
        "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 2},
        "cells": [{"id": "cell-a"}, {"id": "cell-b"}],
        "slot_table": "AAABAA==",
        "overrides": {"acme": override_to},
    })
    .to_string()
}

/// Writes atomically, as a control plane should.
pub fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A fresh directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("cellmap-serve-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn temp_file(name: &str) -> PathBuf {
    temp_dir(name).join("snapshot.json")
}

pub fn health(port: u16) -> Option<serde_json::Value> {
    let reply = get(port, "/healthz", &[])?;
    serde_json::from_str(&reply.body).ok()
}

pub fn served_version(sidecar: &Sidecar) -> Option<u64> {
    health(sidecar.port)?["version"].as_u64()
}

pub fn refused(sidecar: &Sidecar) -> u64 {
    health(sidecar.port).unwrap()["refused"].as_u64().unwrap()
}

/// Waits for `version` to be served, or fails saying what was served.
pub fn expect_version(sidecar: &Sidecar, version: u64, within: Duration) {
    // A wait that ends early on success: give a busy machine room.
    let within = within.max(Duration::from_secs(30));
    let mut seen = None;
    let ok = wait_until(within, || {
        seen = served_version(sidecar);
        seen == Some(version)
    });
    assert!(
        ok,
        "expected version {version} within {within:?}; /healthz says {:?}",
        health(sidecar.port)
    );
}

/// The answer to one raw HTTP/1.1 request.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn version(&self) -> Option<u64> {
        self.etag.as_deref()?.trim_matches('"').parse().ok()
    }
}

/// Why a raw request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawError {
    /// The connection was refused: nothing listens (a restart in progress).
    Refused,
    /// Connected, but the connection ended before a whole answer.
    Cut(String),
}

/// Sends `GET path` on a new keep-alive connection (as Envoy does) and
/// reads one answer.
pub async fn raw_get(port: u16, path: &str) -> Result<RawReply, RawError> {
    let mut stream = connect(port).await?;
    raw_request(&mut stream, path).await
}

pub async fn connect(port: u16) -> Result<tokio::net::TcpStream, RawError> {
    match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => Ok(stream),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Err(RawError::Refused),
        Err(err) => Err(RawError::Cut(format!("connect: {err}"))),
    }
}

/// One request/answer on an open connection.
pub async fn raw_request(
    stream: &mut tokio::net::TcpStream,
    path: &str,
) -> Result<RawReply, RawError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let cut = |what: &str, err: std::io::Error| RawError::Cut(format!("{what}: {err}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| cut("write", e))?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.map_err(|e| cut("read", e))?;
        if n == 0 {
            return Err(RawError::Cut(format!(
                "closed after {} bytes of the head",
                buffer.len()
            )));
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RawError::Cut(format!("bad status line in {head:?}")))?;
    let mut etag = None;
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "etag" => etag = Some(value.trim().to_string()),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    if status == 304 || status == 204 {
        length = 0;
    }
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| cut("read body", e))?;
        if n == 0 {
            return Err(RawError::Cut(format!(
                "closed after {} of {length} body bytes",
                body.len()
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(RawReply { status, etag, body })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
