//! End to end through real processes: Envoy 1.40 running `envoy/envoy.yaml`
//! with the built filter, the `cellmap serve` sidecar, and cell backends that
//! echo where each request landed. Run by `make test` (which builds the
//! filter, `cellmap` and installs Envoy first).

use anyhow::Result;
use cell_router_harness::e2e::{self, Gateway, Sidecar, client, next_snapshot, publish};
use cell_router_kit::fixtures::{bearer, metric, token_builder, unix_now};
use cell_router_kit::tokens::Alg;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn example_snapshot() -> Vec<u8> {
    std::fs::read(e2e::repo_root().join("mapping/examples/snapshot.json"))
        .expect("example snapshot")
}

fn tenants(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The cell each tenant is served by, and the snapshot version it was routed with.
fn served(gateway: &Gateway, tenants: &[String]) -> Vec<(String, String)> {
    let agent = client();
    tenants
        .iter()
        .map(|tenant| {
            let reply = gateway.call(&agent, tenant, &[]).unwrap();
            assert_eq!(reply.status, 200, "{tenant}: {}", reply.body);
            let body = reply.json().unwrap();
            (
                body["cell"].as_str().unwrap().to_string(),
                body["snapshot"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_thousand_tenants_are_served_by_the_cell_cellmap_route_gives() -> Result<()> {
    let gateway = Gateway::start("thousand", &example_snapshot(), 2)?;
    let mut names = tenants(1000, "tenant");
    names.push("acme-corp".into()); // an override
    let expected = e2e::cellmap_route(&gateway.source, &names)?;
    let served = served(&gateway, &names);

    let mut per_cell: HashMap<String, i64> = HashMap::new();
    for ((tenant, (cell, version)), want) in names.iter().zip(&served).zip(&expected) {
        assert_eq!(want["tenant"], tenant.as_str());
        assert_eq!(version, "1", "{tenant} routed with snapshot {version}");
        assert_eq!(
            want["cell"].as_str(),
            Some(cell.as_str()),
            "{tenant}: {want}"
        );
        *per_cell.entry(cell.clone()).or_default() += 1;
    }
    assert_eq!(
        served.last().map(|(c, _)| c.as_str()),
        Some("cell-c"),
        "acme-corp is pinned to cell-c"
    );
    // Every cell got traffic, and Envoy's stats count it per cell.
    assert_eq!(per_cell.len(), 3, "{per_cell:?}");
    let stats = gateway.envoy.stats("cell_router")?;
    for (cell, count) in &per_cell {
        let name = e2e::metric(&metric::routed(cell));
        // Readiness probes were routed too, so at least as many as we sent.
        assert!(
            stats.get(&name).copied().unwrap_or(0) >= *count,
            "{name}: {stats:?}"
        );
    }
    Ok(())
}

#[test]
fn tokens_are_checked_and_spoofed_cell_headers_ignored() -> Result<()> {
    let gateway = Gateway::start("tokens", &example_snapshot(), 2)?;
    let agent = client();
    let url = gateway.envoy.url("/");

    let missing = e2e::get(&agent, &url, &[("x-cell-id", "cell-a")])?;
    assert_eq!(missing.status, 401);
    assert!(
        missing
            .header("www-authenticate")
            .unwrap_or("")
            .starts_with("Bearer realm=")
    );
    assert_eq!(missing.json()?["error"], "missing_token");

    let forged = bearer(
        &token_builder(Alg::RS256, unix_now(), "acme-corp")
            .signed_by_other_key()
            .sign(),
    );
    let bad = e2e::get(
        &agent,
        &url,
        &[("authorization", &forged), ("x-cell-id", "cell-a")],
    )?;
    assert_eq!(bad.status, 401);
    assert!(
        bad.header("www-authenticate")
            .unwrap_or("")
            .contains("error=\"invalid_token\"")
    );

    let expired = bearer(
        &token_builder(Alg::ES256, unix_now() - 7200, "acme-corp")
            .expires_at(unix_now() - 3600)
            .sign(),
    );
    assert_eq!(
        e2e::get(&agent, &url, &[("authorization", &expired)])?.status,
        401
    );

    let wrong_aud = bearer(
        &token_builder(Alg::EdDSA, unix_now(), "acme-corp")
            .audience("someone-else")
            .sign(),
    );
    let reply = e2e::get(&agent, &url, &[("authorization", &wrong_aud)])?;
    assert_eq!(reply.status, 403, "{}", reply.body);

    // acme-corp lives in cell-c (override); a client-sent header in any case
    // variant, and a spoofed version header, change nothing.
    for spoof in ["x-cell-id", "X-Cell-Id", "X-CELL-ID"] {
        let reply = gateway.call(
            &agent,
            "acme-corp",
            &[(spoof, "cell-a"), ("x-cell-snapshot", "999")],
        )?;
        assert_eq!(reply.status, 200);
        let body = reply.json()?;
        assert_eq!(body["cell"], "cell-c", "{spoof}");
        assert_eq!(body["routed_cell"], "cell-c");
        assert_eq!(body["snapshot"], "1");
    }
    let stats = gateway.envoy.stats("cell_router.rejected")?;
    assert!(
        stats
            .get(&e2e::metric("cell_router.rejected.missing_token"))
            .copied()
            .unwrap_or(0)
            >= 1,
        "{stats:?}"
    );
    assert!(
        stats
            .get(&e2e::metric("cell_router.rejected.wrong_audience"))
            .copied()
            .unwrap_or(0)
            >= 1,
        "{stats:?}"
    );
    Ok(())
}

#[test]
fn draining_sheds_its_share_and_disabled_fails_over() -> Result<()> {
    let base = example_snapshot();
    let gateway = Gateway::start("drain", &base, 2)?;
    let names = tenants(300, "t");
    let before = e2e::cellmap_route(&gateway.source, &names)?;
    let in_cell = |cell: &str| {
        before
            .iter()
            .find(|r| r["cell"] == cell && r["reason"] == "slot")
            .map(|r| r["tenant"].as_str().unwrap().to_string())
            .unwrap()
    };
    let (in_b, in_c) = (in_cell("cell-b"), in_cell("cell-c"));

    // cell-b drains with half its requests shed; cell-c is disabled and fails
    // over to cell-a (whose own failover goes, or the chain would loop).
    let next = next_snapshot(&base, |s| {
        s["cells"][0].as_object_mut().unwrap().remove("failover");
        s["cells"][1]["state"] = "draining".into();
        s["cells"][1]["shed_ratio"] = 0.5.into();
        s["cells"][1]["retry_after_s"] = 7.into();
        s["cells"][2]["state"] = "disabled".into();
        s["cells"][2]["failover"] = "cell-a".into();
    })?;
    publish(&gateway.source, &next)?;
    assert!(
        gateway.wait_for_version(2, Duration::from_secs(10)),
        "snapshot 2 never applied"
    );

    let agent = client();
    let (mut shed, total) = (0, 400);
    for _ in 0..total {
        let reply = gateway.call(&agent, &in_b, &[])?;
        match reply.status {
            200 => assert_eq!(reply.json()?["cell"], "cell-b"),
            503 => {
                shed += 1;
                assert_eq!(reply.header("retry-after"), Some("7"));
                assert_eq!(reply.json()?["error"], "cell_draining");
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    let share = f64::from(shed) / f64::from(total);
    // Binomial(400, 0.5): ±0.1 is 4 standard deviations.
    assert!((0.4..=0.6).contains(&share), "shed share {share}");

    for _ in 0..20 {
        let reply = gateway.call(&agent, &in_c, &[])?;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.json()?["cell"],
            "cell-a",
            "disabled cell-c fails over to cell-a"
        );
    }
    let stats = gateway.envoy.stats("cell_router.shed")?;
    assert_eq!(
        stats.get(&e2e::metric("cell_router.shed.cell-b")).copied(),
        Some(shed.into())
    );
    Ok(())
}

#[test]
fn a_new_snapshot_reaches_every_worker_within_a_second() -> Result<()> {
    let base = example_snapshot();
    let gateway = Gateway::start("propagation", &base, 2)?;
    // Move a slot tenant to another cell by override in version 2.
    let tenant = "mover";
    let first = e2e::cellmap_route(&gateway.source, &[tenant.to_string()])?;
    let old_cell = first[0]["cell"].as_str().unwrap().to_string();
    let new_cell = if old_cell == "cell-a" {
        "cell-b"
    } else {
        "cell-a"
    };
    let next = next_snapshot(&base, |s| s["overrides"][tenant] = new_cell.into())?;

    publish(&gateway.source, &next)?;
    // From now on, every request on a fresh connection must carry version 1
    // with the old cell or version 2 with the new one; note when each worker
    // (told apart by Envoy's per-worker listener counters) first answers
    // with version 2. A worker never goes back to an older snapshot.
    let mut wrong = Vec::new();
    let reached = e2e::await_version(&gateway.envoy, 2, Duration::from_secs(30), |agent| {
        let reply = gateway.call(agent, tenant, &[("connection", "close")]);
        if let Ok(r) = &reply
            && let Ok(body) = r.json()
        {
            let want = if body["snapshot"] == "2" {
                new_cell
            } else {
                old_cell.as_str()
            };
            if body["cell"] != want {
                wrong.push(body.to_string());
            }
        }
        e2e::probe_body_version(reply)
    })?;
    assert!(wrong.is_empty(), "routed against its version: {wrong:?}");
    // The issue's requirement (a deadline, not a speed goal): within 1 s
    // (from the wait's start, just after the new file was renamed into place).
    assert!(
        reached.took <= Duration::from_secs(1),
        "took {:?}; per worker {:?}",
        reached.took,
        reached.workers
    );
    Ok(())
}

#[test]
fn routing_survives_the_sidecar_and_bad_snapshots() -> Result<()> {
    let base = example_snapshot();
    let mut gateway = Gateway::start("static-stability", &base, 2)?;
    let names = tenants(50, "s");
    let reference = served(&gateway, &names);

    // Sidecar killed: routing continues on the last good snapshot.
    gateway.sidecar.process.kill();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(served(&gateway, &names), reference);

    // A bad snapshot at the source while the sidecar is down, then back up:
    // the sidecar refuses it, serves its persisted last good copy (version
    // 1), and routing is unchanged.
    publish(&gateway.source, br#"{"version": 5, "cells": []}"#)?;
    gateway.sidecar.restart()?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        gateway.sidecar.version(),
        Some(1),
        "the restarted sidecar must serve its persisted last good snapshot, never the invalid one"
    );
    assert_eq!(served(&gateway, &names), reference);

    // A valid snapshot with a broken invariant (unknown failover) is refused too.
    let broken = next_snapshot(&base, |s| s["cells"][0]["failover"] = "cell-zz".into())?;
    publish(&gateway.source, &broken)?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served(&gateway, &names), reference);

    // A good one: updates resume.
    let good = next_snapshot(&base, |s| {
        s["version"] = 3.into();
        s["overrides"]["s-0"] = "cell-a".into();
        s["overrides"]["s-1"] = "cell-b".into();
    })?;
    publish(&gateway.source, &good)?;
    assert!(
        gateway.wait_for_version(3, Duration::from_secs(10)),
        "updates did not resume"
    );
    let after = served(&gateway, &names[..2]);
    assert_eq!(after[0], ("cell-a".to_string(), "3".to_string()));
    assert_eq!(after[1], ("cell-b".to_string(), "3".to_string()));
    Ok(())
}

#[test]
fn three_gateways_on_one_source_route_every_tenant_alike() -> Result<()> {
    let base = example_snapshot();
    let first = Gateway::start("fleet", &base, 2)?;
    // Two more Envoys, each with its own sidecar watching the same file.
    let mut others = Vec::new();
    for _ in 0..2 {
        let sidecar = Sidecar::start(&first.dir, &first.source)?;
        let mut options = e2e::EnvoyOptions::new(&first.backends, sidecar.port);
        options.concurrency = 2;
        let envoy = e2e::Envoy::start(&first.dir, options)?;
        others.push((sidecar, envoy));
    }
    let names = tenants(200, "fleet");
    let reference = served(&first, &names);
    let agent = client();
    for (_, envoy) in &others {
        let token_for =
            |t: &str| bearer(&cell_router_kit::fixtures::token(Alg::HS256, unix_now(), t));
        let probe = token_for("probe-tenant");
        e2e::await_version(envoy, 1, e2e::VERSION_TIMEOUT, |agent| {
            e2e::probe_body_version(e2e::get(
                agent,
                &envoy.url("/"),
                &[("authorization", &probe), ("connection", "close")],
            ))
        })?;
        for (tenant, (cell, _)) in names.iter().zip(&reference) {
            let reply = e2e::get(
                &agent,
                &envoy.url("/"),
                &[("authorization", &token_for(tenant))],
            )?;
            assert_eq!(reply.status, 200);
            assert_eq!(
                reply.json()?["cell"].as_str(),
                Some(cell.as_str()),
                "{tenant}"
            );
        }
    }
    Ok(())
}

/// A client-sent `x_cell_id` is not the header the filter removes, and a
/// backend that treats `_` and `-` alike would read it as the cell: Envoy
/// must refuse the request (`headers_with_underscores_action: REJECT_REQUEST`)
/// before any filter or cell sees it.
#[test]
fn a_header_name_with_an_underscore_is_refused_before_any_cell() -> Result<()> {
    let gateway = Gateway::start("underscores", &example_snapshot(), 2)?;
    let agent = client();
    // globex is not in cell-c; the smuggled header names cell-c.
    for (name, value) in [
        ("x_cell_id", "cell-c"),
        ("X_Cell_Id", "cell-c"),
        ("x_cell_snapshot", "999"),
    ] {
        let reply = gateway.call(&agent, "globex", &[(name, value)])?;
        assert_eq!(reply.status, 400, "{name}: {} {}", reply.status, reply.body);
        assert_eq!(
            reply.header("x-served-by"),
            None,
            "{name}: a cell answered: {}",
            reply.body
        );
    }
    let stats = gateway
        .envoy
        .stats("requests_rejected_with_underscores_in_headers")?;
    let rejected: i64 = stats.values().sum();
    assert!(rejected >= 3, "{stats:?}");
    // The same request without the header is served.
    let reply = gateway.call(&agent, "globex", &[])?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    Ok(())
}

/// Requests in flight when the gateway is stopped all get their whole
/// answer: the stop drains (fail health checks, drain listeners, wait for
/// in-flight requests) before SIGTERM, which alone cuts them.
#[test]
fn stopping_the_gateway_lets_in_flight_requests_finish() -> Result<()> {
    let took = slow_requests_survive_a_stop("drain", None, |envoy| {
        let report = envoy.stop();
        eprintln!("harness stop: {report:?}");
        assert_eq!(report.in_flight_at_term, 0, "{report:?}");
        assert!(report.admin_errors.is_empty(), "{report:?}");
        Ok(())
    })?;
    eprintln!("stopped in {took:?}");
    Ok(())
}

/// The same through `envoy/docker/gateway.sh`, the compose gateway's command:
/// SIGTERM to it drains Envoy before stopping it.
#[test]
fn the_compose_gateway_script_drains_on_sigterm() -> Result<()> {
    let script = e2e::repo_root().join("envoy/docker/gateway.sh");
    let took = slow_requests_survive_a_stop("drain-script", Some(script), |envoy| {
        envoy.process.signal("TERM")?;
        let exited = e2e::wait_until(Duration::from_secs(30), || !envoy.process.is_running());
        assert!(exited, "gateway.sh still running 30 s after SIGTERM");
        Ok(())
    })?;
    eprintln!("gateway.sh stopped in {took:?}");
    Ok(())
}

/// Starts a gateway whose cells answer `/slow` after 2.5 s, puts 24 slow
/// requests in flight (each on its own connection, so both workers have
/// some), stops it with `stop`, and checks that every request got its whole
/// answer and that the stop ended within the delay and a little.
fn slow_requests_survive_a_stop(
    name: &str,
    launcher: Option<std::path::PathBuf>,
    stop: impl FnOnce(&mut e2e::Envoy) -> Result<()>,
) -> Result<Duration> {
    const IN_FLIGHT: usize = 24;
    const DELAY: Duration = Duration::from_millis(2500);
    const PAD: usize = 64 * 1024;
    let dir = e2e::work_dir(name)?;
    let source = dir.join("snapshot.json");
    publish(&source, &example_snapshot())?;
    let cells = e2e::SlowCells::start(&["cell-a", "cell-b", "cell-c"], DELAY, PAD)?;
    let sidecar = Sidecar::start(&dir, &source)?;
    let mut options = e2e::EnvoyOptions::with_cells(cells.cells.clone(), sidecar.port);
    options.launcher = launcher;
    let mut envoy = e2e::Envoy::start(&dir, options)?;
    let token = bearer(&cell_router_kit::fixtures::token(
        Alg::HS256,
        unix_now(),
        "globex",
    ));
    e2e::await_version(&envoy, 1, e2e::VERSION_TIMEOUT, |agent| {
        e2e::probe_body_version(e2e::get(
            agent,
            &envoy.url("/"),
            &[("authorization", &token), ("connection", "close")],
        ))
    })?;

    let url = envoy.url("/slow");
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let (url, token) = (url.clone(), token.clone());
            std::thread::spawn(move || {
                let agent = client();
                let sent = Instant::now();
                let reply = e2e::get(&agent, &url, &[("authorization", &token)]);
                (i, sent.elapsed(), reply)
            })
        })
        .collect();
    let all_in_flight = e2e::wait_until(Duration::from_secs(30), || {
        envoy.requests_in_flight().unwrap_or(0) >= IN_FLIGHT as i64
    });
    let in_flight = envoy.requests_in_flight()?;
    assert!(
        all_in_flight,
        "only {in_flight} of {IN_FLIGHT} requests reached Envoy"
    );

    let stopping = Instant::now();
    stop(&mut envoy)?;
    let took = stopping.elapsed();
    let mut failures = Vec::new();
    for request in requests {
        let (i, took, reply) = request.join().expect("request thread");
        match reply {
            Ok(r) if r.status == 200 => {
                let body = r.json()?;
                let pad = body["pad"].as_str().map_or(0, str::len);
                if pad != PAD || r.header("x-served-by").is_none() {
                    failures.push(format!("#{i}: short answer ({pad} of {PAD} pad bytes)"));
                }
            }
            Ok(r) => failures.push(format!(
                "#{i}: HTTP {} after {took:?}: {}",
                r.status, r.body
            )),
            Err(err) => failures.push(format!("#{i}: no answer after {took:?}: {err:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {IN_FLIGHT} in-flight requests were cut by the stop (after {took:?}):\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        envoy.process.log_tail(20)
    );
    // Bounded: the stop waited for the slow answers, not the whole drain time.
    assert!(
        took < DELAY + Duration::from_secs(6),
        "the stop took {took:?}"
    );
    assert!(
        !envoy.process.is_running(),
        "Envoy still running after the stop"
    );
    Ok(took)
}

/// Issue #10, propagation: a burst of 20 snapshot changes (one every 10 ms,
/// faster than the sidecar's 100 ms file watch) under load, ten times; each
/// time every worker must route by the burst's last version within 1 s of
/// its publication. Workers are told apart by Envoy's per-worker listener
/// counters around each probe (a fresh connection).
///
/// Fails now and then on the current sidecar: one worker's long-poll is
/// never answered (neither the new version nor the 304 after `wait`), and
/// that worker stays on an older version until Envoy times the request out
/// (504 after the filter's `timeout_ms`, 35 s) and the filter asks again.
/// The sidecar rewrite (issue #10) is to fix it.
#[test]
fn twenty_rapid_flips_under_load_leave_every_worker_on_the_last_version_within_a_second()
-> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROUNDS: usize = 10;
    const FLIPS: u64 = 20;
    let base = example_snapshot();
    let gateway = Gateway::start("flips", &base, 2)?;

    // Load: four keep-alive clients over 100 tenants until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tokens: Vec<String> = tenants(100, "load")
        .iter()
        .map(|t| bearer(&cell_router_kit::fixtures::token(Alg::HS256, unix_now(), t)))
        .collect();
    let load: Vec<_> = (0..4)
        .map(|n| {
            let (stop, ok, other) = (stop.clone(), ok.clone(), other.clone());
            let (url, tokens) = (gateway.envoy.url("/"), tokens.clone());
            std::thread::spawn(move || {
                let agent = client();
                let mut i = n;
                while !stop.load(Ordering::SeqCst) {
                    let token = &tokens[i % tokens.len()];
                    match e2e::get(&agent, &url, &[("authorization", token)]) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        _ => other.fetch_add(1, Ordering::SeqCst),
                    };
                    i += 4;
                }
            })
        })
        .collect();

    let cells = ["cell-a", "cell-b", "cell-c"];
    let mut version = 1;
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        for flip in 0..FLIPS {
            version += 1;
            let doc = next_snapshot(&base, |s| {
                s["version"] = version.into();
                s["overrides"]["flipper"] = cells[(flip % 3) as usize].into();
            })?;
            publish(&gateway.source, &doc)?;
            std::thread::sleep(Duration::from_millis(10));
        }
        let reached = gateway.await_version(version, Duration::from_secs(30));
        let reached = match reached {
            Ok(r) => r,
            Err(err) => {
                stop.store(true, Ordering::SeqCst);
                return Err(err.context(format!("round {round}: version {version}")));
            }
        };
        rounds.push((round, version, reached));
    }
    stop.store(true, Ordering::SeqCst);
    for thread in load {
        let _ = thread.join();
    }
    let summary: Vec<String> = rounds
        .iter()
        .map(|(round, version, r)| {
            let seen: Vec<String> = r
                .seen
                .iter()
                .enumerate()
                .map(|(i, versions)| {
                    let list: Vec<String> = versions
                        .iter()
                        .map(|(at, v)| format!("v{v} at {at:.2?}"))
                        .collect();
                    format!("worker {i}: {}", list.join(", "))
                })
                .collect();
            format!(
                "round {round} (v{version}): {:.2?} per worker after {} probes ({})",
                r.workers,
                r.probes,
                seen.join("; ")
            )
        })
        .collect();
    eprintln!(
        "load: {} answered 200, {} not\n{}",
        ok.load(Ordering::SeqCst),
        other.load(Ordering::SeqCst),
        summary.join("\n")
    );
    let slow: Vec<&String> = rounds
        .iter()
        .zip(&summary)
        .filter(|((_, _, r), _)| r.took > Duration::from_secs(1))
        .map(|(_, line)| line)
        .collect();
    assert!(
        slow.is_empty(),
        "{} of {ROUNDS} rounds left a worker on an older version for over 1 s:\n{}",
        slow.len(),
        slow.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(ok.load(Ordering::SeqCst) > 0, "the load got no answers");
    Ok(())
}

/// Issue #10, static stability at gateway restart: a gateway restarted while
/// its sidecar is down routes by the newest snapshot the sidecar had accepted
/// (persisted by `cellmap serve --persist`, served by the persisted-copy
/// listener, fetched by the filter's `sidecar.persisted`), not 503
/// no_snapshot; 1,000 tenants as `cellmap route` gives them.
#[test]
fn a_gateway_restarted_while_the_sidecar_is_down_routes_by_the_persisted_copy() -> Result<()> {
    let base = example_snapshot();
    let mut gateway = Gateway::start("persisted", &base, 2)?;
    let names = tenants(1000, "p");
    // v2 and v3 move the first 100 tenants by override, so v1, v2 and v3
    // route them differently.
    let v2 = next_snapshot(&base, |s| {
        for name in &names[..100] {
            s["overrides"][name.as_str()] = "cell-a".into();
        }
    })?;
    publish(&gateway.source, &v2)?;
    gateway.await_version(2, e2e::VERSION_TIMEOUT)?;
    let v3 = next_snapshot(&v2, |s| {
        for (i, name) in names[..100].iter().enumerate() {
            s["overrides"][name.as_str()] = if i % 2 == 0 { "cell-b" } else { "cell-c" }.into();
        }
    })?;
    publish(&gateway.source, &v3)?;
    gateway.await_version(3, e2e::VERSION_TIMEOUT)?;
    let persisted = gateway.envoy.persisted.clone();
    let mut last = String::new();
    let written = e2e::wait_until(Duration::from_secs(30), || {
        let text = std::fs::read(&persisted).unwrap_or_default();
        last = format!("{} bytes", text.len());
        e2e::snapshot_version(&text).ok() == Some(3)
    });
    assert!(
        written,
        "{} never held version 3 ({last})",
        persisted.display()
    );

    // The sidecar dies; then the gateway restarts.
    gateway.sidecar.process.kill();
    let stopped = gateway.envoy.stop();
    eprintln!("old gateway stopped: {stopped:?}");
    let mut options = e2e::EnvoyOptions::new(&gateway.backends, gateway.sidecar.port);
    options.persisted = Some(persisted);
    gateway.envoy = e2e::Envoy::start(&gateway.dir, options)?;
    let agent = client();
    let mut last = String::from("no answer");
    let ready = e2e::wait_until(e2e::VERSION_TIMEOUT, || {
        let reply = gateway.envoy.filter_ready(&agent);
        last = match &reply {
            Ok(r) => format!("{} {}", r.status, r.body),
            Err(err) => format!("{err:#}"),
        };
        reply.is_ok_and(|r| r.status == 200)
    });
    assert!(
        ready,
        "the restarted gateway never became ready from the persisted copy (last: {last})\n{}",
        gateway.envoy.process.log_tail(30)
    );
    let expected = e2e::cellmap_route(&gateway.source, &names)?;
    for ((tenant, (cell, version)), want) in
        names.iter().zip(served(&gateway, &names)).zip(&expected)
    {
        assert_eq!(version, "3", "{tenant} routed with snapshot {version}");
        assert_eq!(
            want["cell"].as_str(),
            Some(cell.as_str()),
            "{tenant}: {want}"
        );
    }
    Ok(())
}

/// Issue #10, readiness: the filter's readiness path answers 503 while the
/// filter has no snapshot (Envoy's own /ready says 200 then, and every
/// request gets 503 no_snapshot), and 200 once the sidecar gives it one.
#[test]
fn the_filter_readiness_path_is_503_without_a_snapshot_and_200_with_one() -> Result<()> {
    let dir = e2e::work_dir("readiness")?;
    let source = dir.join("snapshot.json");
    publish(&source, &example_snapshot())?;
    let backends = e2e::Backends::start(&dir, &["cell-a", "cell-b", "cell-c"])?;
    // Nothing listens on the sidecar's port yet; the persisted copy is the
    // empty placeholder.
    let sidecar_port = e2e::free_port()?;
    let envoy = e2e::Envoy::start(&dir, e2e::EnvoyOptions::new(&backends, sidecar_port))?;
    let agent = client();
    let reply = envoy.filter_ready(&agent)?;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()?["ready"], false, "{}", reply.body);
    let admin = e2e::get(
        &agent,
        &format!("http://127.0.0.1:{}/ready", envoy.admin_port),
        &[],
    )?;
    assert_eq!(
        admin.status, 200,
        "Envoy's own readiness ignores the filter"
    );
    let token = bearer(&cell_router_kit::fixtures::token(
        Alg::HS256,
        unix_now(),
        "globex",
    ));
    let refused = e2e::get(&agent, &envoy.url("/"), &[("authorization", &token)])?;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()?["error"], "no_snapshot");

    let _sidecar = Sidecar::start_on(&dir, &source, sidecar_port)?;
    let mut last = String::new();
    let ready = e2e::wait_until(e2e::VERSION_TIMEOUT, || {
        let reply = envoy.filter_ready(&agent);
        last = match &reply {
            Ok(r) => format!("{} {}", r.status, r.body),
            Err(err) => format!("{err:#}"),
        };
        reply.is_ok_and(|r| r.status == 200)
    });
    assert!(ready, "never ready once the sidecar was up (last: {last})");
    assert_eq!(envoy.filter_ready(&agent)?.json()?["ready"], true);
    Ok(())
}

/// Issue #10: `cellmap serve` keeps serving after SIGHUP (a terminal closing,
/// a log rotation), and keeps following its source.
#[test]
fn cellmap_serve_survives_sighup() -> Result<()> {
    let dir = e2e::work_dir("sighup")?;
    let source = dir.join("snapshot.json");
    let base = example_snapshot();
    publish(&source, &base)?;
    let mut sidecar = Sidecar::start(&dir, &source)?;
    sidecar.process.signal("HUP")?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sidecar.process.is_running(),
        "cellmap serve died of SIGHUP\n{}",
        sidecar.process.log_tail(10)
    );
    assert_eq!(sidecar.version(), Some(1));
    publish(&source, &next_snapshot(&base, |_| {})?)?;
    assert!(
        e2e::wait_until(Duration::from_secs(30), || sidecar.version() == Some(2)),
        "after SIGHUP the sidecar serves {:?}, not version 2",
        sidecar.version()
    );
    Ok(())
}

/// The Envoy side of static stability at gateway restart, on its own: the
/// persisted-copy listener serves the file as it was when Envoy loaded its
/// config (what the filter's `sidecar.persisted` fetches), 64 MiB allowed,
/// and nothing else.
#[test]
fn the_persisted_copy_listener_serves_the_file_as_of_gateway_start() -> Result<()> {
    let dir = e2e::work_dir("persisted-listener")?;
    let backends = e2e::Backends::start(&dir, &["cell-a", "cell-b", "cell-c"])?;
    let persisted = dir.join("persisted.json");
    // A 0.7 MB snapshot: far over Envoy's default 4 KiB direct-response limit.
    let v1 = next_snapshot(&example_snapshot(), |s| {
        s["version"] = 1.into();
        for i in 0..20_000 {
            s["overrides"][format!("bulk-{i:05}")] = "cell-a".into();
        }
    })?;
    publish(&persisted, &v1)?;
    let mut options = e2e::EnvoyOptions::new(&backends, e2e::free_port()?);
    options.persisted = Some(persisted.clone());
    let envoy = e2e::Envoy::start(&dir, options)?;
    let port = envoy
        .persisted_port
        .expect("envoy.yaml has the persisted-copy listener");
    let url = format!("http://127.0.0.1:{port}/snapshot");
    let agent = client();
    let reply = e2e::get(&agent, &url, &[])?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body.as_bytes(), v1.as_slice(), "not the file's bytes");
    assert!(v1.len() > 500_000, "{} bytes", v1.len());

    // Read at config load: a newer file is not served until Envoy restarts.
    publish(&persisted, &next_snapshot(&v1, |_| {})?)?;
    let reply = e2e::get(&agent, &url, &[])?;
    assert_eq!(e2e::snapshot_version(reply.body.as_bytes())?, 1);
    assert_eq!(
        e2e::get(&agent, &format!("http://127.0.0.1:{port}/other"), &[])?.status,
        404
    );
    Ok(())
}
