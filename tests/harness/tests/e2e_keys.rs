//! Keys fetched at run time (`jwks_remote`) through real Envoy 1.40
//! (concurrency 2): an identity-provider stand-in served from this test
//! (its own cluster, its own fetch counter) rotates its keys; a token signed
//! with the new key is accepted on every worker within the refetch limit,
//! old tokens keep working during the grace period and stop after it; with
//! the IdP and the sidecar down the keys in force keep verifying; and
//! 10,000 requests with random kids cause at most the allowed fetches.

use anyhow::{Context, Result, anyhow, ensure};
use cell_router_harness::e2e::{
    self, Backends, Envoy, EnvoyOptions, Sidecar, client, plugin_config_of, publish, work_dir,
};
use cell_router_kit::fixtures::{bearer, token_builder, unix_now};
use cell_router_kit::tokens::{Alg, Jwks};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds between two unknown-kid refetches per VM (the config's
/// `unknown_kid_refetch_s`).
const REFETCH_S: u64 = 2;
const GRACE_S: u64 = 15;

#[derive(Default)]
struct IdpState {
    kids: Vec<String>,
    generation: u64,
    up: bool,
    fetches: u64,
}

/// A tiny JWKS server: one request per connection, `ETag: "<generation>"`,
/// 304 on a matching `If-None-Match`, 503 while "down".
struct Idp {
    port: u16,
    state: Arc<Mutex<IdpState>>,
}

impl Idp {
    fn start(kids: &[&str]) -> Result<Idp> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(IdpState {
            kids: kids.iter().map(|k| k.to_string()).collect(),
            generation: 1,
            up: true,
            fetches: 0,
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Ok(Idp { port, state })
    }

    fn rotate(&self, kids: &[&str]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.kids = kids.iter().map(|k| k.to_string()).collect();
        state.generation += 1;
    }

    fn set_up(&self, up: bool) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).up = up;
    }

    fn fetches(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).fetches
    }
}

fn serve(stream: TcpStream, state: &Mutex<IdpState>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut if_none_match = None;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("if-none-match")
        {
            if_none_match = Some(value.trim().to_string());
        }
    }
    let (status, etag, body) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.fetches += 1;
        let etag = format!("\"{}\"", state.generation);
        if !state.up {
            ("503 Service Unavailable", etag, "down".to_string())
        } else if if_none_match.as_deref() == Some(etag.as_str()) {
            ("304 Not Modified", etag, String::new())
        } else {
            let jwks = state
                .kids
                .iter()
                .fold(Jwks::new(), |j, kid| j.with_key(Alg::ES256, kid));
            ("200 OK", etag, jwks.to_json().to_string())
        }
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\netag: {etag}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(())
}

/// The build's gateway template (`envoy/envoy.yaml` or `envoy-native.yaml`) with an `idp|keys` cluster pointing at the stand-in
/// (a `|` in its name, like every non-cell cluster: no `x-cell-id` names it).
fn template_with_idp(dir: &std::path::Path, idp_port: u16) -> Result<std::path::PathBuf> {
    let template = std::fs::read_to_string(e2e::build().template())?;
    let cluster = format!(
        "  clusters:\n  - name: idp|keys\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: idp|keys\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address:\n                address: 127.0.0.1\n                port_value: {idp_port}\n"
    );
    ensure!(
        template.contains("\n  clusters:\n"),
        "no clusters: in envoy.yaml"
    );
    let path = dir.join("envoy-idp.yaml");
    std::fs::write(&path, template.replacen("  clusters:\n", &cluster, 1))?;
    Ok(path)
}

fn token(kid: &str, tenant: &str) -> String {
    bearer(
        &token_builder(Alg::ES256, unix_now(), tenant)
            .kid(kid)
            .sign(),
    )
}

/// Sends `n` requests with `auth`, each on a new connection (so both
/// workers see them); how many were forwarded to a cell (200).
fn accepted(agent: &ureq::Agent, envoy: &Envoy, auth: &str, n: usize) -> Result<usize> {
    let mut ok = 0;
    for _ in 0..n {
        let reply = e2e::get(
            agent,
            &envoy.url("/"),
            &[("authorization", auth), ("connection", "close")],
        )?;
        if reply.status == 200 {
            ok += 1;
        }
    }
    Ok(ok)
}

/// Waits until 20 requests in a row with `auth` are accepted; the time it took.
fn until_accepted(
    agent: &ureq::Agent,
    envoy: &Envoy,
    auth: &str,
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < limit {
        last = accepted(agent, envoy, auth, 20)?;
        if last == 20 {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow!(
        "not accepted on every worker within {limit:?}: {last}/20 in the last round"
    ))
}

#[test]
fn rotated_keys_reach_every_worker_old_ones_last_the_grace_and_bogus_kids_are_rate_limited()
-> Result<()> {
    let dir = work_dir("keys")?;
    let source = dir.join("snapshot.json");
    publish(
        &source,
        &std::fs::read(e2e::repo_root().join("mapping/examples/snapshot.json"))?,
    )?;
    let idp = Idp::start(&["k1"])?;
    let cells: Vec<&str> = e2e::DEFAULT_CELL_PORTS.iter().map(|(c, _)| *c).collect();
    let backends = Backends::start(&dir, &cells)?;
    let mut sidecar = Sidecar::start(&dir, &source)?;
    let mut options = EnvoyOptions::new(&backends, sidecar.port);
    options.template = template_with_idp(&dir, idp.port)?;
    let mut plugin = plugin_config_of(&std::fs::read_to_string(&options.template)?)?;
    plugin["jwks_remote"] = serde_json::json!({
        "cluster": "idp|keys", "authority": "idp.test", "path": "/jwks",
        "refresh_s": 3600, "unknown_kid_refetch_s": REFETCH_S, "grace_s": GRACE_S,
        "timeout_ms": 2000, "retry_min_ms": 500
    });
    options.plugin_config = Some(plugin);
    let envoy = Envoy::start(&dir, options)?;
    let agent = client();
    let k1 = token("k1", "acme-corp");

    // 1. The first fetch brings k1 to every worker.
    let took = until_accepted(&agent, &envoy, &k1, Duration::from_secs(60))
        .with_context(|| envoy.process.log_tail(30))?;
    eprintln!("k1 accepted on every worker {took:?} after Envoy was ready");

    // 2. Rotate: k2 replaces k1. The first k2 token on each worker is
    // refused and asks for a refetch; within REFETCH_S (+ a busy machine's
    // slack) every worker accepts k2.
    idp.rotate(&["k2"]);
    let rotated = Instant::now();
    let k2 = token("k2", "acme-corp");
    let took = until_accepted(&agent, &envoy, &k2, Duration::from_secs(REFETCH_S + 15))
        .with_context(|| envoy.process.log_tail(30))?;
    eprintln!(
        "k2 accepted on every worker {took:?} after the rotation (refetch limit {REFETCH_S} s)"
    );
    // 3. k1 tokens keep working during the grace period...
    let during = accepted(&agent, &envoy, &k1, 20)?;
    ensure!(
        rotated.elapsed() < Duration::from_secs(GRACE_S),
        "the machine is too slow to check the grace period ({:?})",
        rotated.elapsed()
    );
    assert_eq!(during, 20, "k1 within the grace period");
    // ...and not after it (the cached verification is dropped too). Each
    // VM counts the grace from when it took k2, up to REFETCH_S after the
    // rotation (+ a tick).
    std::thread::sleep(
        Duration::from_secs(GRACE_S + REFETCH_S + 3).saturating_sub(rotated.elapsed()),
    );
    let after = accepted(&agent, &envoy, &k1, 20)?;
    assert_eq!(after, 0, "k1 after the grace period");

    // 4. The IdP and the sidecar down: k2 keeps verifying, also after the
    // failed refetches an unknown kid causes.
    idp.set_up(false);
    sidecar.process.stop();
    let before = idp.fetches();
    accepted(&agent, &envoy, &token("k3", "acme-corp"), 10)?;
    std::thread::sleep(Duration::from_secs(REFETCH_S + 1));
    accepted(&agent, &envoy, &token("k4", "acme-corp"), 10)?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        idp.fetches() > before,
        "no refetch reached the stand-in while it was down"
    );
    assert_eq!(
        accepted(&agent, &envoy, &k2, 20)?,
        20,
        "k2 with IdP and sidecar down"
    );
    let stats = envoy.stats("cell_router.jwks")?;
    eprintln!("jwks stats with the IdP down: {stats:?}");
    // The dashboard's key-set panels ask for what this gateway exports.
    let exported =
        e2e::dashboard::exported_names(&e2e::dashboard::prometheus_text(envoy.admin_port)?);
    e2e::dashboard::check_panels("cell_router_jwks_", &exported)?;

    // 5. 10,000 requests with random kids (IdP up again): fetches per VM at
    // most one per REFETCH_S, plus one in flight at the start.
    idp.set_up(true);
    // Let the failure backoff (500 ms doubling) reach the IdP again.
    std::thread::sleep(Duration::from_secs(REFETCH_S + 6));
    let before = idp.fetches();
    let start = Instant::now();
    let mut rng = cell_router_kit::rng::SplitMix64::new(13);
    let mut refused = 0;
    // One signed token's claims and signature under 10,000 headers: the kid
    // is refused before any signature work, so signing each is not needed.
    let signed = token_builder(Alg::ES256, unix_now(), "acme-corp").sign();
    let rest = signed
        .split_once('.')
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default();
    for i in 0..10_000 {
        let kid = format!("bogus-{:016x}", rng.next_u64());
        let header = cell_router_kit::tokens::b64url(
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid}).to_string(),
        );
        let auth = bearer(&format!("{header}.{rest}"));
        let mut headers = vec![("authorization", auth.as_str())];
        // New connections now and then, so both workers get their share.
        if i % 50 == 0 {
            headers.push(("connection", "close"));
        }
        let reply = e2e::get(&agent, &envoy.url("/"), &headers)?;
        if reply.status == 401 {
            refused += 1;
        }
    }
    let elapsed = start.elapsed();
    let fetches = idp.fetches() - before;
    // One key subscription per worker's VM (Wasm), or one for the whole
    // gateway (native: every worker shares the keys in force).
    let subscriptions = match e2e::build() {
        e2e::Build::Wasm => u64::from(envoy.concurrency),
        e2e::Build::Native => 1,
    };
    let allowed = subscriptions * (elapsed.as_secs() / REFETCH_S + 2);
    eprintln!(
        "10,000 random kids in {elapsed:?}: {fetches} fetches at the IdP (allowed {allowed}), {refused} refused"
    );
    assert_eq!(refused, 10_000);
    assert!(fetches >= 1, "unknown kids must refetch");
    assert!(
        fetches <= allowed,
        "{fetches} fetches > {allowed} allowed in {elapsed:?}"
    );
    assert_eq!(accepted(&agent, &envoy, &k2, 10)?, 10);
    Ok(())
}

/// The sidecar as the key source: `cellmap serve --jwks-url` follows the
/// IdP stand-in, and every worker long-polls `/jwks?issuer=…&wait=…`
/// (re-polling 1 s after each answer); a rotation at the IdP reaches every
/// worker within that second, without any unknown kid, and
/// with the sidecar and the IdP down the keys in force keep verifying.
#[test]
fn through_the_sidecar_a_rotation_reaches_every_worker_by_long_poll() -> Result<()> {
    let dir = work_dir("keys-sidecar")?;
    let source = dir.join("snapshot.json");
    publish(
        &source,
        &std::fs::read(e2e::repo_root().join("mapping/examples/snapshot.json"))?,
    )?;
    let idp = Idp::start(&["k1"])?;
    let cells: Vec<&str> = e2e::DEFAULT_CELL_PORTS.iter().map(|(c, _)| *c).collect();
    let backends = Backends::start(&dir, &cells)?;
    let port = e2e::free_port()?;
    let mut command = std::process::Command::new(e2e::cellmap_bin()?);
    command
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--file")
        .arg(&source)
        .arg("--jwks-url")
        .arg(format!(
            "https://idp.test/=http://127.0.0.1:{}/jwks",
            idp.port
        ))
        .arg("--jwks-poll-s")
        .arg("1");
    let mut sidecar = e2e::Process::spawn("sidecar-jwks", command, &dir)?;
    e2e::wait_for_http(
        &mut sidecar,
        &format!("http://127.0.0.1:{port}/healthz"),
        e2e::HELPER_START_TIMEOUT,
    )?;
    let mut options = EnvoyOptions::new(&backends, port);
    let mut plugin = plugin_config_of(&std::fs::read_to_string(&options.template)?)?;
    // The sidecar's cluster, as the shipped config names it.
    let sidecar_cluster = plugin["sidecar"]["cluster"].clone();
    plugin["jwks_remote"] = serde_json::json!({
        "cluster": sidecar_cluster, "authority": "cellmap",
        "path": "/jwks?issuer=https%3A%2F%2Fidp.test%2F&wait=20",
        "refresh_s": 1, "timeout_ms": 25000, "unknown_kid_refetch_s": 30, "grace_s": 600
    });
    options.plugin_config = Some(plugin);
    let envoy = Envoy::start(&dir, options)?;
    let agent = client();
    let k1 = token("k1", "acme-corp");
    let took = until_accepted(&agent, &envoy, &k1, Duration::from_secs(60))
        .with_context(|| sidecar.log_tail(20))?;
    eprintln!("sidecar source: k1 accepted on every worker {took:?} after Envoy was ready");

    // Rotate at the IdP. No k2 request is sent before the workers have it:
    // the long-polls bring it (the unknown-kid refetch is 30 s here).
    let fetches_before = idp.fetches();
    idp.rotate(&["k2"]);
    let rotated = Instant::now();
    let sidecar_url = format!("http://127.0.0.1:{port}/jwks?issuer=https%3A%2F%2Fidp.test%2F");
    while !e2e::get(&agent, &sidecar_url, &[])?.body.contains("\"k2\"") {
        ensure!(
            rotated.elapsed() < Duration::from_secs(15),
            "the sidecar did not take k2 within 15 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let at_sidecar = rotated.elapsed();
    // A VM re-polls `refresh_s` (1 s) after each answer, then waits on the
    // sidecar: within that second plus a moment every worker has k2, and
    // must accept it at the first try.
    std::thread::sleep(Duration::from_millis(1500));
    let k2 = token("k2", "acme-corp");
    let first_round = accepted(&agent, &envoy, &k2, 20)?;
    let took = until_accepted(&agent, &envoy, &k2, Duration::from_secs(10))?;
    eprintln!(
        "sidecar source: IdP rotated → sidecar had k2 after {at_sidecar:?}; {first_round}/20 accepted at the first round, all after {:?} more; IdP saw {} polls",
        took,
        idp.fetches() - fetches_before
    );
    assert_eq!(
        first_round, 20,
        "k2 should arrive by long-poll, before any k2 request"
    );
    assert_eq!(
        accepted(&agent, &envoy, &k1, 20)?,
        20,
        "k1 in its grace period"
    );

    // Sidecar and IdP down: both keys keep verifying.
    idp.set_up(false);
    sidecar.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(accepted(&agent, &envoy, &k2, 20)?, 20, "k2, sidecar down");
    assert_eq!(accepted(&agent, &envoy, &k1, 20)?, 20, "k1, sidecar down");
    Ok(())
}
