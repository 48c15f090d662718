//! The sidecar under load: hundreds of concurrent long-polls through
//! restarts, and the in-flight and connection bounds. The real binary over
//! real HTTP on loopback; the client is a raw HTTP/1.1 client on a small
//! tokio runtime (no thread per request).

// clippy.toml allows these in #[test] fns only; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The two tests here load the machine; one at a time.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

const CLIENTS: usize = 500;
const RESTARTS: usize = 20;
const WAIT_S: u64 = 5;

/// What the clients saw, for the assertions and the failure message.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    ok_200: AtomicU64,
    not_modified: AtomicU64,
    refused_connects: AtomicU64,
    /// Connections the kernel had queued when a stopping sidecar closed its
    /// listener: sent during (or just before) the stop, closed or reset with
    /// no byte of an answer.
    /// Like a refused connect, the client knows at once and asks again.
    cut_while_stopping: AtomicU64,
    /// The current restart window, in ms since `origin`: a stop begins at
    /// `stop_began_ms`; `started_again_ms` is u64::MAX until the new process
    /// listens.
    origin: std::sync::OnceLock<Instant>,
    stop_began_ms: AtomicU64,
    started_again_ms: AtomicU64,
    /// Failures, by kind, with the first few descriptions.
    problems: std::sync::Mutex<BTreeMap<String, Vec<String>>>,
    slowest_ms: AtomicU64,
}

impl Tally {
    fn problem(&self, kind: &str, what: String) {
        let mut problems = self.problems.lock().unwrap();
        let list = problems.entry(kind.to_string()).or_default();
        if list.len() < 5 {
            list.push(what);
        } else {
            list.push(String::new());
        }
    }

    fn now_ms(&self) -> u64 {
        let origin = self.origin.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a request sent at `sent_ms` can have been still in the
    /// kernel's accept queue when a stop began: sent during the restart
    /// window, or in the second before it (a busy machine can take that
    /// long to accept). A long-poll sent earlier was accepted and waiting,
    /// and must get its 304.
    fn sent_while_stopping(&self, sent_ms: u64) -> bool {
        sent_ms.saturating_add(1000) >= self.stop_began_ms.load(Ordering::SeqCst)
            && sent_ms <= self.started_again_ms.load(Ordering::SeqCst)
    }

    fn report(&self) -> String {
        let problems = self.problems.lock().unwrap();
        let problems: Vec<String> = problems
            .iter()
            .map(|(kind, list)| {
                let shown: Vec<&String> = list.iter().filter(|s| !s.is_empty()).collect();
                format!("{kind}: {} (e.g. {shown:?})", list.len())
            })
            .collect();
        format!(
            "answered {} (200: {}, 304: {}), refused connects {}, queued connections closed by a stopping sidecar {}, slowest answer {} ms, problems: {problems:?}",
            self.answered.load(Ordering::Relaxed),
            self.ok_200.load(Ordering::Relaxed),
            self.not_modified.load(Ordering::Relaxed),
            self.refused_connects.load(Ordering::Relaxed),
            self.cut_while_stopping.load(Ordering::Relaxed),
            self.slowest_ms.load(Ordering::Relaxed),
        )
    }
}

/// One gateway worker: long-polls for the next version until told to stop,
/// judging every answer. Returns the last version it saw.
async fn worker(port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> u64 {
    let limit = Duration::from_secs(WAIT_S + 1);
    let mut version = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let path = format!("/snapshot?after={version}&wait={WAIT_S}");
        let sent = Instant::now();
        let sent_ms = tally.now_ms();
        // Some slack past the limit, so a late answer is told from none.
        let reply =
            tokio::time::timeout(limit + Duration::from_secs(4), raw_get(port, &path)).await;
        let took = sent.elapsed();
        match reply {
            Err(_) => tally.problem(
                "stranded (no answer within wait + 5 s)",
                format!("after={version}"),
            ),
            Ok(Err(RawError::Refused)) => {
                // Between a stop and the next start nothing listens.
                tally.refused_connects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(RawError::Cut(what))) => {
                // A long-poll that was waiting when the stop began must get
                // its 304; only a connection made during the stop may be
                // closed unanswered (the kernel's queue dies with the
                // listener).
                // Closed before any byte of an answer, or reset: what the
                // kernel does to its queue when the listener closes.
                let unanswered = what.contains("after 0 bytes") || what.contains("reset");
                if tally.sent_while_stopping(sent_ms) && unanswered {
                    tally.cut_while_stopping.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.problem(
                        "connection cut before an answer",
                        format!("{what} (sent at {sent_ms} ms)"),
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Ok(reply)) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
                let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                tally.slowest_ms.fetch_max(ms, Ordering::Relaxed);
                if took > limit {
                    tally.problem(
                        "answered later than wait + 1 s",
                        format!("{} after {took:?}", reply.status),
                    );
                }
                match (reply.status, reply.version()) {
                    (200, Some(v)) if v > version => {
                        tally.ok_200.fetch_add(1, Ordering::Relaxed);
                        version = v;
                    }
                    (304, Some(v)) if v >= version => {
                        tally.not_modified.fetch_add(1, Ordering::Relaxed);
                    }
                    (status, v) => tally.problem(
                        "unexpected answer",
                        format!("{status} version {v:?} to after={version}"),
                    ),
                }
            }
        }
    }
    version
}

/// 500 gateway workers long-poll (`wait=5`) while the sidecar is stopped
/// with SIGTERM and started again 20 times and new versions are published:
/// every long-poll gets an answer (200 with a newer version, or 304) within
/// its wait + 1 s, none is left hanging, every stop exits 0, and at the end
/// every worker holds the last version.
#[test]
fn five_hundred_long_polls_ride_out_twenty_restarts() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let file = temp_file("load");
    publish(&file, &snapshot(1, "cell-a"));
    let port = free_port();
    let args = ["--file", file.to_str().unwrap(), "--max-in-flight", "2000"];
    let mut sidecar = start_on(port, &args);
    expect_version(&sidecar, 1, Duration::from_secs(5));

    let runtime = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    tally.now_ms();
    tally.stop_began_ms.store(u64::MAX, Ordering::SeqCst);
    tally.started_again_ms.store(u64::MAX, Ordering::SeqCst);
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| runtime.spawn(worker(port, Arc::clone(&stop), Arc::clone(&tally))))
        .collect();

    // Restarts under load, a new version every other one.
    let mut version = 1;
    let mut stop_times = Vec::new();
    for i in 0..RESTARTS {
        std::thread::sleep(Duration::from_millis(250));
        if i % 2 == 0 {
            version += 1;
            publish(
                &file,
                &snapshot(version, if i % 4 == 0 { "cell-b" } else { "cell-a" }),
            );
        }
        tally.started_again_ms.store(u64::MAX, Ordering::SeqCst);
        tally.stop_began_ms.store(tally.now_ms(), Ordering::SeqCst);
        let stopping = Instant::now();
        let status = sidecar.terminate(Duration::from_secs(5));
        stop_times.push(stopping.elapsed());
        assert!(status.success(), "restart {i}: exit status {status}");
        sidecar = start_on(port, &args);
        tally
            .started_again_ms
            .store(tally.now_ms(), Ordering::SeqCst);
    }
    // A version published with no restart reaches every worker, then the
    // long-polls run into their wait (304) with nothing newer.
    version += 1;
    publish(&file, &snapshot(version, "cell-b"));
    std::thread::sleep(Duration::from_secs(WAIT_S + 2));
    stop.store(true, Ordering::Relaxed);
    // Workers finish their current long-poll: at most wait + 1 s more.
    let finals = runtime.block_on(async {
        let mut finals = Vec::new();
        for worker in workers {
            finals.push(
                tokio::time::timeout(Duration::from_secs(WAIT_S + 5), worker)
                    .await
                    .map(|r| r.unwrap()),
            );
        }
        finals
    });

    let report = tally.report();
    let slowest_stop = stop_times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{CLIENTS} workers, {RESTARTS} restarts in {:?}: {report}; slowest stop {slowest_stop:?}",
        started.elapsed()
    );
    let problems = tally.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{report}");
    let behind: Vec<_> = finals
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != Ok(version))
        .map(|(i, v)| format!("worker {i}: {v:?}"))
        .collect();
    assert!(
        behind.is_empty(),
        "{} workers did not end on version {version}: {:?}",
        behind.len(),
        &behind[..behind.len().min(5)]
    );
    assert!(
        tally.ok_200.load(Ordering::Relaxed) >= (CLIENTS * 2) as u64,
        "{report}"
    );
    // A stop waits at most 2 s for open requests; room for a busy machine.
    assert!(slowest_stop < Duration::from_secs(5), "{stop_times:?}");
}

/// Over `--max-in-flight`, requests get 503 at once; a long-poll whose client
/// goes away gives its slot back (RAII permit), so after the burst requests
/// succeed again and exactly `--max-in-flight` long-polls can wait again.
#[test]
fn over_max_in_flight_is_503_at_once_and_slots_come_back() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    const SLOTS: usize = 8;
    let file = temp_file("in-flight");
    publish(&file, &snapshot(1, "cell-a"));
    let sidecar = start(&[
        "--file",
        file.to_str().unwrap(),
        "--max-in-flight",
        &SLOTS.to_string(),
    ]);
    expect_version(&sidecar, 1, Duration::from_secs(5));
    let port = sidecar.port;
    let runtime = runtime();

    runtime.block_on(async move {
        // Fill every slot with a long-poll on a kept-alive connection.
        let mut held = Vec::new();
        for _ in 0..SLOTS {
            let mut stream = connect(port).await.unwrap();
            let poll = tokio::spawn(async move {
                let reply = raw_request(&mut stream, "/snapshot?after=1&wait=60").await;
                (reply, stream)
            });
            held.push(poll);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            held.iter().all(|p| !p.is_finished()),
            "long-polls answered early"
        );

        // A burst over the limit: 503 busy, at once.
        let burst_started = Instant::now();
        let burst: Vec<_> = (0..50)
            .map(|_| tokio::spawn(raw_get(port, "/snapshot?after=1&wait=60")))
            .collect();
        for (i, reply) in burst.into_iter().enumerate() {
            let reply = tokio::time::timeout(Duration::from_secs(2), reply)
                .await
                .unwrap_or_else(|_| panic!("burst request {i} not answered within 2 s"))
                .unwrap()
                .unwrap_or_else(|e| panic!("burst request {i}: {e:?}"));
            assert_eq!(reply.status, 503, "burst request {i}");
            assert!(String::from_utf8_lossy(&reply.body).contains("busy"));
        }
        assert!(burst_started.elapsed() < Duration::from_secs(2));

        // The waiting clients go away: their slots must come back.
        for poll in held {
            poll.abort();
        }
        let back = Instant::now();
        loop {
            let reply = raw_get(port, "/snapshot").await.unwrap();
            if reply.status == 200 {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(3),
                "slots not given back 3 s after the clients left (still {})",
                reply.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Exactly SLOTS long-polls can wait again: none leaked.
        let mut held = Vec::new();
        for _ in 0..SLOTS {
            held.push(tokio::spawn(raw_get(port, "/snapshot?after=1&wait=60")));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            held.iter().all(|p| !p.is_finished()),
            "long-polls answered early"
        );
        let extra = raw_get(port, "/snapshot?after=1&wait=60").await.unwrap();
        assert_eq!(extra.status, 503, "one more than --max-in-flight");
        // A new version answers them all.
        publish(&file, &snapshot(2, "cell-b"));
        for poll in held {
            let reply = tokio::time::timeout(Duration::from_secs(3), poll)
                .await
                .expect("answered by the new version")
                .unwrap()
                .unwrap();
            assert_eq!((reply.status, reply.version()), (200, Some(2)));
        }
        let health = raw_get(port, "/healthz").await.unwrap();
        assert_eq!(health.status, 200);
    });
}

/// Over `--max-connections`, a new connection is closed at once; closing an
/// idle one makes room again.
#[test]
fn over_max_connections_new_ones_are_closed_and_room_comes_back() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let file = temp_file("connections");
    publish(&file, &snapshot(1, "cell-a"));
    let sidecar = start(&["--file", file.to_str().unwrap(), "--max-connections", "4"]);
    expect_version(&sidecar, 1, Duration::from_secs(5));
    let port = sidecar.port;
    // A limit past what a semaphore can count is clamped, not a crash.
    let unlimited = start(&[
        "--file",
        file.to_str().unwrap(),
        "--max-connections",
        "18446744073709551615",
    ]);
    expect_version(&unlimited, 1, Duration::from_secs(5));
    runtime().block_on(async move {
        // Four idle keep-alive connections (one request each, kept open).
        let mut open = Vec::new();
        for _ in 0..4 {
            let mut stream = connect(port).await.unwrap();
            let reply = raw_request(&mut stream, "/healthz").await.unwrap();
            assert_eq!(reply.status, 200);
            open.push(stream);
        }
        // A fifth: closed without an answer.
        let fifth = raw_get(port, "/healthz").await;
        assert!(matches!(fifth, Err(RawError::Cut(_))), "{fifth:?}");
        // The open ones still work.
        let reply = raw_request(&mut open[0], "/snapshot").await.unwrap();
        assert_eq!((reply.status, reply.version()), (200, Some(1)));
        // Close one: room for a new connection.
        drop(open.pop());
        let started = Instant::now();
        loop {
            match raw_get(port, "/healthz").await {
                Ok(reply) => {
                    assert_eq!(reply.status, 200);
                    break;
                }
                Err(err) => assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "no room 3 s after a connection closed: {err:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
