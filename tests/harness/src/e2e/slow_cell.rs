//! Cells that take their time: plain HTTP/1.1 servers on threads of the test
//! process, for requests that must still be in flight when something happens
//! (a gateway stop). A request whose path starts with `/slow` is answered
//! after the delay; any other at once. Each answer is what `cell-backend`
//! answers (`x-served-by`, JSON with `cell`, `routed_cell`, `snapshot`) plus
//! a `pad` of `body_bytes` bytes, so a cut response shows as a short body.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub struct SlowCells {
    pub cells: Vec<(String, u16)>,
    /// Requests answered in full.
    pub answered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl SlowCells {
    pub fn start(cells: &[&str], delay: Duration, body_bytes: usize) -> Result<SlowCells> {
        let answered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut ports = Vec::new();
        for cell in cells {
            let listener = TcpListener::bind("127.0.0.1:0").context("binding a slow cell")?;
            ports.push((cell.to_string(), listener.local_addr()?.port()));
            let (cell, answered, stop) = (cell.to_string(), answered.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (cell, answered) = (cell.clone(), answered.clone());
                    std::thread::spawn(move || serve(stream, &cell, delay, body_bytes, &answered));
                }
            });
        }
        Ok(SlowCells {
            cells: ports,
            answered,
            stop,
        })
    }
}

impl Drop for SlowCells {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, port) in &self.cells {
            // Wakes the accept loop so it sees the stop flag.
            let _ = TcpStream::connect(("127.0.0.1", *port));
        }
    }
}

/// Keep-alive: answers requests on `stream` until the peer closes it.
fn serve(stream: TcpStream, cell: &str, delay: Duration, body_bytes: usize, answered: &AtomicU64) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let length: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > 0
            && std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink()).is_err()
        {
            return;
        }
        if path.starts_with("/slow") {
            std::thread::sleep(delay);
        }
        let body = serde_json::json!({
            "cell": cell,
            "path": path,
            "routed_cell": header("x-cell-id"),
            "snapshot": header("x-cell-snapshot"),
            "pad": "x".repeat(body_bytes),
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-served-by: {cell}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
}
