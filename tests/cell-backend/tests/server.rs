//! The real `cell-backend` binary on free loopback ports (port 0; the
//! start-up lines name the ports bound), driven over plain TCP so every
//! connection and every byte is the test's own.

// clippy.toml allows these in #[test] fns only; the helpers here are test
// code too, and failing loudly is their job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cell_router_kit::fixtures::{snapshot, snapshot_json};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// One `cell-backend` process, killed on drop.
struct Backend {
    child: Child,
    cells: Vec<(String, SocketAddr)>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    fn start(cells: &[&str], extra: &[&str]) -> Backend {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cell-backend"));
        for cell in cells {
            command.arg("--cell").arg(format!("{cell}=127.0.0.1:0"));
        }
        let mut child = command
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (lines, announced) = mpsc::channel();
        let keep = Arc::clone(&log);
        // Reads stderr to the end, so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                let _ = lines.send(line);
            }
        });
        let mut bound = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while bound.len() < cells.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = announced.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "cell-backend did not announce {cells:?} in 10 s:\n{}",
                    log.lock().unwrap().join("\n")
                );
            };
            if let Some((name, addr)) = line
                .strip_prefix("cell-backend: ")
                .and_then(|l| l.split_once(" on http://"))
            {
                bound.push((name.to_string(), addr.parse().unwrap()));
            }
        }
        Backend {
            child,
            cells: bound,
            log,
        }
    }

    fn addr(&self, cell: &str) -> SocketAddr {
        self.cells
            .iter()
            .find(|(c, _)| c == cell)
            .map(|(_, a)| *a)
            .unwrap()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn write_get(stream: &mut TcpStream, path: &str, headers: &[(&str, &str)], close: bool) {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: cell\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        request.push_str("connection: close\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
}

/// Reads one response (headers, then `content-length` bytes of body).
fn read_reply(stream: &mut TcpStream) -> std::io::Result<Reply> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes", head.len()),
            ));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// One request on a new connection.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = connect(addr);
    write_get(&mut stream, path, headers, true);
    read_reply(&mut stream).unwrap()
}

/// The case tiny_http 0.12 lost: new connections arriving together while
/// its pool has an idle thread and the other connections stay open on
/// keep-alive, as Envoy's do. Its pool queued the second of two arrivals for
/// the one idle thread, already woken for the first, and that connection sat
/// unserved until some other connection closed. (The old server, without its
/// accept nudge, failed this test in 3 runs of 3.) Here 200 threads each
/// open a connection at the same instant, send one request and keep the
/// connection open; every one must be answered 200 within 3 s, and the
/// connections opened before must still work afterwards.
#[test]
fn answers_200_simultaneous_new_connections_promptly() {
    const NEW: usize = 200;
    const PROMPT: Duration = Duration::from_secs(3);
    let backend = Backend::start(&["cell-a"], &["--threads", "2"]);
    let addr = backend.addr("cell-a");

    // Idle keep-alive connections, more than the worker threads.
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = connect(addr);
            write_get(&mut stream, "/held", &[], false);
            assert_eq!(read_reply(&mut stream).unwrap().status, 200);
            stream
        })
        .collect();
    // And connections that came and went: a pool of threads has idle ones
    // now, the state in which tiny_http's lost wakeup struck.
    for _ in 0..8 {
        assert_eq!(get(addr, "/gone", &[]).status, 200);
    }

    let start = Arc::new(Barrier::new(NEW + 1));
    let (done, outcomes) = mpsc::channel();
    for i in 0..NEW {
        let (start, done) = (Arc::clone(&start), done.clone());
        std::thread::spawn(move || {
            start.wait();
            let began = Instant::now();
            let mut kept = None;
            let outcome = TcpStream::connect_timeout(&addr, PROMPT).and_then(|mut stream| {
                stream.set_read_timeout(Some(PROMPT))?;
                stream
                    .write_all(format!("GET /new/{i} HTTP/1.1\r\nhost: cell\r\n\r\n").as_bytes())?;
                let reply = read_reply(&mut stream);
                kept = Some(stream);
                reply
            });
            // The stream goes to the test, which keeps it open to the end.
            let _ = done.send((i, outcome.map(|r| r.status), began.elapsed(), kept));
        });
    }
    drop(done);
    let began = Instant::now();
    start.wait();
    let deadline = began + PROMPT + Duration::from_secs(5);
    let mut seen = Vec::new();
    let mut still_open = Vec::new();
    while seen.len() < NEW {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((i, status, took, stream)) = outcomes.recv_timeout(left) else {
            break;
        };
        seen.push((i, status, took));
        still_open.extend(stream);
    }
    let all_done = began.elapsed();

    let mut latencies: Vec<Duration> = seen.iter().map(|(_, _, t)| *t).collect();
    latencies.sort();
    let mut bad: Vec<String> = seen
        .iter()
        .filter(|(_, status, took)| !matches!(status, Ok(200)) || *took > PROMPT)
        .map(|(i, status, took)| format!("connection {i}: {status:?} after {took:?}"))
        .collect();
    if seen.len() < NEW {
        bad.push(format!("{} connections never reported", NEW - seen.len()));
    }
    assert!(
        bad.is_empty(),
        "{} of {NEW} new connections not answered 200 within {PROMPT:?} \
         ({} reported in {all_done:?}; median {:?}, slowest {:?}):\n{}\nbackend log:\n{}",
        bad.len(),
        seen.len(),
        latencies.get(latencies.len() / 2),
        latencies.last(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
        backend.log()
    );
    println!(
        "{NEW} new connections answered in {all_done:?} (median {:?}, slowest {:?})",
        latencies.get(NEW / 2),
        latencies.last()
    );

    for stream in held.iter_mut().chain(still_open.iter_mut().take(8)) {
        write_get(stream, "/again", &[], false);
        let reply = read_reply(stream).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["path"], "/again");
    }
}

#[test]
fn echoes_the_cell_and_what_the_request_was_routed_with() {
    let backend = Backend::start(&["cell-a", "cell-b"], &[]);
    let reply = get(
        backend.addr("cell-b"),
        "/some/path?q=1",
        &[
            ("x-cell-id", "cell-b"),
            ("x-cell-snapshot", "42"),
            ("x-tenant-id", "acme-corp"),
            ("X-Custom", "Value"),
        ],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-served-by"), Some("cell-b"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["cell"], "cell-b");
    assert_eq!(body["path"], "/some/path?q=1");
    assert_eq!(body["routed_cell"], "cell-b");
    assert_eq!(body["snapshot"], "42");
    assert_eq!(body["tenant"], "acme-corp");
    assert_eq!(body["delay_ms"], 0);
    assert_eq!(body["headers"]["x-custom"], "Value");
    assert_eq!(body["headers"]["host"], "cell");

    // Without --check-snapshots there is no report endpoint: /__chaos is
    // just another path.
    let reply = get(backend.addr("cell-a"), "/__chaos", &[]);
    assert_eq!(reply.header("x-served-by"), Some("cell-a"));
    assert_eq!(reply.json()["path"], "/__chaos");
}

/// What the chaos load generator sends with each request: tenant `t`,
/// routed to `cell` by snapshot 1.
fn labels(cell: &str) -> [(&'static str, &str); 3] {
    [
        ("x-test-tenant", "t"),
        ("x-cell-id", cell),
        ("x-cell-snapshot", "1"),
    ]
}

/// With `--check-snapshots`, a request served by a cell other than the one
/// its snapshot version gives its tenant is counted as a misroute (and
/// sampled); a right one is counted correct.
#[test]
fn the_checker_flags_a_planted_misroute() {
    let dir = std::env::temp_dir().join(format!("cell-backend-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = snapshot(1);
    std::fs::write(dir.join("v1.json"), snapshot_json(&v1)).unwrap();
    let parsed = cell_router_kit::fixtures::parsed(&v1);
    let home = parsed
        .resolve(b"t", &cell_router_mapping::Draws::default())
        .routed_cell()
        .unwrap();
    let home = parsed.cell(home).unwrap().id.clone();
    let wrong = if home == "cell-a" { "cell-b" } else { "cell-a" };

    let backend = Backend::start(
        &["cell-a", "cell-b", "cell-c"],
        &["--check-snapshots", dir.to_str().unwrap()],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(get(backend.addr(&home), "/", &labels(&home)).status, 200);
    // The planted misroute: labelled as routed to `wrong` by snapshot 1,
    // which sends the tenant to `home`. The cell still answers.
    assert_eq!(get(backend.addr(wrong), "/", &labels(wrong)).status, 200);
    // A probe with no tenant is not judged.
    assert_eq!(get(backend.addr(wrong), "/", &[]).status, 200);

    let report = get(backend.addr("cell-c"), "/__chaos", &[]);
    assert_eq!(report.header("content-type"), Some("application/json"));
    let report = report.json();
    assert_eq!(report["requests"], 3, "{report}");
    assert_eq!(report["checked"], 2, "{report}");
    assert_eq!(report["correct"], 1, "{report}");
    assert_eq!(report["misroutes"], 1, "{report}");
    assert_eq!(report["unlabelled"], 1, "{report}");
    assert_eq!(report["per_cell"][wrong], 2, "{report}");
    let sample = report["misroute_samples"][0].as_str().unwrap_or("");
    assert!(
        sample.contains(&format!("served by {wrong}")) && sample.contains(&home),
        "{report}"
    );
}

/// `--delay-ms` holds every answer; `x-test-delay-ms` sets one request's
/// delay either way; delayed requests are in flight together, not in turn.
#[test]
fn the_delay_option_delays() {
    const DELAY: Duration = Duration::from_millis(400);
    let backend = Backend::start(&["cell-a"], &["--delay-ms", "400"]);
    let addr = backend.addr("cell-a");

    let timed = |headers: &[(&str, &str)]| {
        let began = Instant::now();
        let reply = get(addr, "/", headers);
        (reply, began.elapsed())
    };
    let (reply, took) = timed(&[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["delay_ms"], 400);
    assert!(took >= DELAY, "--delay-ms 400 answered in {took:?}");

    let (reply, took) = timed(&[("x-test-delay-ms", "0")]);
    assert_eq!(reply.json()["delay_ms"], 0);
    assert!(took < DELAY, "x-test-delay-ms: 0 answered in {took:?}");

    let (reply, took) = timed(&[("x-test-delay-ms", "700")]);
    assert_eq!(reply.json()["delay_ms"], 700);
    assert!(
        took >= Duration::from_millis(700),
        "x-test-delay-ms: 700 answered in {took:?}"
    );

    let (reply, _) = timed(&[("x-test-delay-ms", "soon")]);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "bad_delay");

    // Ten 400 ms requests at once, each on its own connection: in turn
    // they would take 4 s.
    let began = Instant::now();
    let parallel: Vec<_> = (0..10)
        .map(|_| std::thread::spawn(move || get(addr, "/", &[]).status))
        .collect();
    let statuses: Vec<u16> = parallel.into_iter().map(|t| t.join().unwrap()).collect();
    let took = began.elapsed();
    assert_eq!(statuses, vec![200; 10]);
    assert!(
        took >= DELAY && took < Duration::from_secs(2),
        "ten delayed requests at once took {took:?}"
    );
}
