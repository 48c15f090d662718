//! The draws through real Envoy (issue #12): shedding that no client-sent
//! `x-request-id` can steer, and a recovery ramp that rises monotonically on
//! every worker of two gateways. Each test is bounded and says what it saw.

use anyhow::{Context as _, Result, bail};
use cell_router_harness::e2e::{self, Envoy, Gateway, Sidecar, client, next_snapshot, publish};
use cell_router_kit::fixtures::{bearer, token_builder, unix_now};
use cell_router_kit::tokens::Alg;
use cell_router_mapping::{Draws, HashKey, Snapshot};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn example_snapshot() -> Vec<u8> {
    std::fs::read(e2e::repo_root().join("mapping/examples/snapshot.json"))
        .expect("example snapshot")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `tenant-3` is on cell-a's slots (SPEC worked example).
const TENANT: &str = "tenant-3";

/// What a run of requests saw: the shed share, and on how many routed
/// requests the client's `x-request-id` reached the cell unchanged.
struct ShedRun {
    share: f64,
    id_reached_cell: usize,
    routed: usize,
}

fn shed_run(envoy: &Envoy, ids: &[String], n: usize) -> Result<ShedRun> {
    let agent = client();
    let (mut shed, mut id_reached_cell, mut routed) = (0, 0, 0);
    for i in 0..n {
        let id = &ids[i % ids.len()];
        let token = bearer(&token_builder(Alg::HS256, unix_now(), TENANT).sign());
        let reply = e2e::get(
            &agent,
            &envoy.url("/"),
            &[("authorization", &token), ("x-request-id", id.as_str())],
        )?;
        match reply.status {
            503 => {
                if reply.json()?["error"] != "cell_draining" {
                    bail!("503 that is not a shed: {}", reply.body);
                }
                shed += 1;
            }
            200 => {
                let body = reply.json()?;
                if body["cell"] != "cell-a" {
                    bail!("routed to {} instead of cell-a", body["cell"]);
                }
                routed += 1;
                if body["headers"]["x-request-id"] == id.as_str() {
                    id_reached_cell += 1;
                }
            }
            other => bail!("unexpected {other}: {}", reply.body),
        }
    }
    Ok(ShedRun {
        share: shed as f64 / n as f64,
        id_reached_cell,
        routed,
    })
}

/// 2,000 requests with one fixed `x-request-id` to a cell shedding 30 %:
/// 30 ± 4 % are shed, through the shipped config (whose
/// `use_remote_address: true` makes Envoy replace ids from outside) and
/// through a copy that keeps the client's id (`preserve_external_request_id`),
/// so the filter sees the fixed id on every request. On the latter, 20 ids
/// that the old rule (a hash of the id) never shed at 30 % do no better.
#[test]
fn a_fixed_request_id_is_shed_at_the_cells_share_and_lucky_ids_do_no_better() -> Result<()> {
    let base = example_snapshot();
    let mut doc: serde_json::Value = serde_json::from_slice(&base)?;
    doc["cells"][0]["state"] = "draining".into();
    doc["cells"][0]["shed_ratio"] = 0.3.into();
    let gateway = Gateway::start("shed-draw", &serde_json::to_vec(&doc)?, 2)?;

    // The same gateway, but Envoy hands the client's x-request-id on.
    let shipped = std::fs::read_to_string(e2e::build().template())?;
    let keep_ids = shipped.replacen(
        "generate_request_id: true",
        "generate_request_id: true\n          preserve_external_request_id: true",
        1,
    );
    if keep_ids == shipped {
        bail!("the gateway template has no generate_request_id line to extend");
    }
    let template = gateway.dir.join("envoy-keep-request-ids.yaml");
    std::fs::write(&template, keep_ids)?;
    let sidecar = Sidecar::start(&gateway.dir, &gateway.source)?;
    let mut options = e2e::EnvoyOptions::new(&gateway.backends, sidecar.port);
    options.template = template;
    let keeping = Envoy::start(&gateway.dir, options)?;
    let probe = bearer(&token_builder(Alg::HS256, unix_now(), "probe-tenant").sign());
    e2e::await_version(&keeping, 1, e2e::VERSION_TIMEOUT, |agent| {
        e2e::probe_body_version(e2e::get(
            agent,
            &keeping.url("/"),
            &[("authorization", &probe), ("connection", "close")],
        ))
    })?;

    let fixed = ["fixed-request-id".to_string()];
    // Binomial(2000, 0.3): σ ≈ 1.02 %; ±4 % is ~3.9 σ.
    let check = |what: &str, run: &ShedRun| {
        eprintln!(
            "{what}: {:.2}% shed; the client's id reached the cell on {} of {} routed requests",
            run.share * 100.0,
            run.id_reached_cell,
            run.routed
        );
        assert!(
            (run.share - 0.3).abs() <= 0.04,
            "{what}: {} shed (want 0.30 ± 0.04)",
            run.share
        );
    };
    let as_shipped = shed_run(&gateway.envoy, &fixed, 2000)?;
    check(
        "shipped config, one fixed x-request-id, 2000 requests",
        &as_shipped,
    );
    let kept = shed_run(&keeping, &fixed, 2000)?;
    check("ids kept, one fixed x-request-id, 2000 requests", &kept);
    assert_eq!(
        kept.id_reached_cell, kept.routed,
        "the id-keeping gateway must hand the fixed id on"
    );

    let key = HashKey::from_hex("7b1f3c9a2e4d6f80a1c3e5f70b2d4f61").map_err(anyhow::Error::msg)?;
    let lucky: Vec<String> = (0..)
        .map(|i| format!("lucky-{i}"))
        .filter(|id| key.draw(b's', id.as_bytes()) >= 3000)
        .take(20)
        .collect();
    let lucky_run = shed_run(&keeping, &lucky, 2000)?;
    check(
        "ids kept, 20 'lucky' ids (never shed by the old hash of the id), 2000 requests",
        &lucky_run,
    );
    assert_eq!(lucky_run.id_reached_cell, lucky_run.routed);
    drop(keeping);
    drop(sidecar);
    Ok(())
}

/// One batch of requests on one fresh keep-alive connection (so on one
/// worker): which worker, when, and how many users were on cell-a.
struct Sample {
    gateway: usize,
    worker: Option<usize>,
    from_ms: u64,
    to_ms: u64,
    on_a: usize,
}

fn sample(gateway: usize, envoy: &Envoy, tokens: &[String]) -> Result<Sample> {
    let before = envoy.worker_connections();
    let agent = client();
    let from_ms = now_ms();
    let mut on_a = 0;
    for token in tokens {
        let reply = e2e::get(&agent, &envoy.url("/"), &[("authorization", token)])?;
        if reply.status != 200 {
            bail!("HTTP {}: {}", reply.status, reply.body);
        }
        match reply.json()?["cell"].as_str() {
            Some("cell-a") => on_a += 1,
            Some("cell-b") => {}
            other => bail!("served by {other:?}"),
        }
    }
    let to_ms = now_ms();
    let after = envoy.worker_connections();
    let worker = match (before, after) {
        (Ok(b), Ok(a)) => {
            let grown: Vec<usize> = (0..b.len().min(a.len()))
                .filter(|&i| a[i] != b[i])
                .collect();
            match grown.as_slice() {
                [only] if a[*only] - b[*only] == 1 => Some(*only),
                _ => None,
            }
        }
        _ => None,
    };
    Ok(Sample {
        gateway,
        worker,
        from_ms,
        to_ms,
        on_a,
    })
}

/// cell-a comes back from `disabled` with a 10-second linear ramp, its
/// failover cell-b taking the rest. 40 users of one tenant are sampled in
/// batches, alternately on two gateways (two workers each), until after the
/// ramp: every batch lies between what the mapping library says at its
/// first and its last request, every worker's series never falls, and all
/// users are back on cell-a at the end.
#[test]
fn a_ten_second_ramp_rises_monotonically_on_every_worker_of_two_gateways() -> Result<()> {
    let base = example_snapshot();
    let v1 = next_snapshot(&base, |s| {
        s["version"] = 1.into();
        s["cells"][0]["state"] = "disabled".into();
    })?;
    let first = Gateway::start("ramp", &v1, 2)?;
    let sidecar = Sidecar::start(&first.dir, &first.source)?;
    let mut options = e2e::EnvoyOptions::new(&first.backends, sidecar.port);
    options.concurrency = 2;
    let second = Envoy::start(&first.dir, options)?;
    let probe = |envoy: &Envoy, version: u64| {
        let token = bearer(&token_builder(Alg::HS256, unix_now(), "probe-tenant").sign());
        e2e::await_version(envoy, version, e2e::VERSION_TIMEOUT, |agent| {
            e2e::probe_body_version(e2e::get(
                agent,
                &envoy.url("/"),
                &[("authorization", &token), ("connection", "close")],
            ))
        })
    };
    probe(&second, 1)?;

    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let tokens: Vec<String> = users
        .iter()
        .map(|u| {
            bearer(
                &token_builder(Alg::HS256, unix_now(), TENANT)
                    .subject(u)
                    .sign(),
            )
        })
        .collect();

    // The ramp starts 4 s after publishing (time for both gateways to take
    // the snapshot) and lasts 10 s.
    let start_s = unix_now() + 4;
    let v2 = next_snapshot(&v1, |s| {
        s["cells"][0]["state"] = "active".into();
        s["cells"][0]["ramp"] = serde_json::json!({"start": start_s, "duration_s": 10});
    })?;
    let library = Snapshot::parse(&v2).context("v2")?;
    publish(&first.source, &v2)?;
    first.await_version(2, e2e::VERSION_TIMEOUT)?;
    probe(&second, 2)?;
    let (start_ms, end_ms) = (start_s * 1000, (start_s + 10) * 1000);
    let expected = |at_ms: u64| {
        users
            .iter()
            .filter(|u| {
                library
                    .resolve(TENANT.as_bytes(), &Draws::unshed(u.as_bytes(), at_ms))
                    .routed_cell()
                    == Some(0)
            })
            .count()
    };

    let envoys = [&first.envoy, &second];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut samples = Vec::new();
    let mut gauge_mid = Vec::new();
    let mut turn = 0;
    while now_ms() < end_ms + 2000 {
        if Instant::now() > deadline {
            bail!("sampling overran its deadline; {} samples", samples.len());
        }
        let g = turn % 2;
        turn += 1;
        samples.push(sample(g, envoys[g], &tokens)?);
        if turn % 8 == 0 {
            let at = now_ms();
            if let Some(v) = envoys[g]
                .stats("ramp_share")?
                .get(&e2e::metric("cell_router.ramp_share.cell-a"))
            {
                gauge_mid.push((at, *v));
            }
        }
    }

    // What was seen, worker by worker.
    let mut report = String::new();
    for g in 0..2 {
        for w in 0..2 {
            let series: Vec<String> = samples
                .iter()
                .filter(|s| s.gateway == g && s.worker == Some(w))
                .map(|s| {
                    format!(
                        "{:+.1}s:{}",
                        (s.from_ms as f64 - start_ms as f64) / 1000.0,
                        s.on_a
                    )
                })
                .collect();
            report.push_str(&format!(
                "\n  gateway {g} worker {w} ({} samples): {}",
                series.len(),
                series.join(" ")
            ));
        }
    }
    let unattributed = samples.iter().filter(|s| s.worker.is_none()).count();
    report.push_str(&format!(
        "\n  unattributed samples: {unattributed}; ramp_share gauge readings: {gauge_mid:?}"
    ));
    eprintln!("ramp of 40 users over 10 s (users on cell-a per batch):{report}");

    // Every batch agrees with the library at its own instants.
    for s in &samples {
        let (low, high) = (expected(s.from_ms), expected(s.to_ms));
        assert!(
            (low..=high).contains(&s.on_a),
            "gateway {} worker {:?} at {}..{} ms: {} on cell-a, the library says {low}..{high}{report}",
            s.gateway,
            s.worker,
            s.from_ms,
            s.to_ms,
            s.on_a
        );
    }
    // Every worker of both gateways: never falls, seen inside the window,
    // and everyone back at the end.
    for g in 0..2 {
        for w in 0..2 {
            let series: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.gateway == g && s.worker == Some(w))
                .collect();
            for pair in series.windows(2) {
                assert!(
                    pair[1].on_a >= pair[0].on_a,
                    "gateway {g} worker {w} fell from {} to {}{report}",
                    pair[0].on_a,
                    pair[1].on_a
                );
            }
            let inside = series
                .iter()
                .filter(|s| s.from_ms > start_ms && s.to_ms < end_ms)
                .count();
            assert!(
                inside >= 2,
                "gateway {g} worker {w}: {inside} samples inside the ramp{report}"
            );
        }
    }
    let last_full = |g: usize| {
        samples
            .iter()
            .filter(|s| s.gateway == g && s.from_ms >= end_ms)
            .all(|s| s.on_a == users.len())
    };
    assert!(
        last_full(0) && last_full(1),
        "not all back after the ramp{report}"
    );
    assert!(
        samples.iter().any(|s| s.on_a > 0 && s.on_a < users.len()),
        "no batch saw the ramp in between{report}"
    );
    assert!(
        gauge_mid.windows(2).all(|p| p[1].1 >= p[0].1),
        "ramp_share gauge fell: {gauge_mid:?}"
    );
    for envoy in envoys {
        let stats = envoy.stats("ramp_share")?;
        assert_eq!(
            stats.get(&e2e::metric("cell_router.ramp_share.cell-a")),
            Some(&10_000),
            "{stats:?}"
        );
        // The dashboard's ramp panels ask for what the gateway exports.
        let exported =
            e2e::dashboard::exported_names(&e2e::dashboard::prometheus_text(envoy.admin_port)?);
        e2e::dashboard::check_panels("cell_router_ramp", &exported)?;
    }
    drop(sidecar);
    Ok(())
}
