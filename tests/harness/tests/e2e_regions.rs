//! Service pools and region homing through real Envoy (issue #11): two
//! gateways on this machine, region `us` and region `eu`, each the other's
//! `region|<id>` cluster (`cell_router_harness::e2e::regions`).
//!
//! - a tenant homed in the EU arriving at the US gateway is served by an EU
//!   cell through the EU gateway, and `/voice` and `/sms` of one tenant
//!   reach different cells;
//! - when the regions' snapshots disagree, a request is forwarded once and
//!   then refused (503 `wrong_region`), never forwarded back;
//! - a region with every cell disabled answers 503 + Retry-After on both
//!   gateways and never touches the other region's cells;
//! - path tricks reach the pool their normalised path names, or are refused;
//! - 1,000 tenants × 2 pools × 2 gateways land where `cellmap route` says.

use anyhow::{Context, Result, bail};
use cell_router_harness::e2e::regions::{
    FORWARDED_BY_HEADER, POOL_HEADER, REGION_HEADER, RegionGateway, RegionLayout, Served,
    TwoRegions,
};
use cell_router_harness::e2e::{cellmap_bin, client, wait_until, work_dir};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

fn start(name: &str, layout: &RegionLayout) -> TwoRegions {
    let dir = work_dir(name).unwrap();
    TwoRegions::start_in(&dir, layout, 2).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `layout` with explicit homes for the named test tenants.
fn with_homes(mut layout: RegionLayout, homes: &[(&str, &str)]) -> RegionLayout {
    for (tenant, region) in homes {
        layout
            .region_overrides
            .insert(tenant.to_string(), region.to_string());
    }
    layout
}

fn cell_pool(cell: &str) -> &str {
    cell.split('-').next().unwrap_or_default()
}

fn cell_region(cell: &str) -> &str {
    cell.split('-').nth(1).unwrap_or_default()
}

/// Requests Envoy sent to each of `cells` on `gateway`, summed.
fn upstream_to(gateway: &RegionGateway, cells: &[&str]) -> i64 {
    cells
        .iter()
        .map(|c| gateway.upstream_requests(c).unwrap())
        .sum()
}

#[test]
fn eu_tenant_at_the_us_gateway_is_served_by_an_eu_cell_through_the_eu_gateway() {
    let layout = with_homes(
        RegionLayout::voice_and_sms(10, 2),
        &[("acme-gmbh", "eu"), ("acme-inc", "us")],
    );
    let regions = start("regions-forward", &layout);
    let agent = client();
    let us_cells = layout.cells_in("us");
    let us_before = upstream_to(&regions.us, &us_cells);
    let forwarded_before = regions.us.metric("cell_router.forwarded.eu").unwrap();

    // Spoofed routing headers change nothing.
    let spoof = [
        ("x-cell-id", "voice-us-1"),
        ("x-cell-pool", "sms"),
        ("x-cell-region", "us"),
    ];
    let mut served_cells = BTreeMap::new();
    for path in ["/voice/calls", "/sms/messages"] {
        let reply = regions.us.call(&agent, "acme-gmbh", path, &spoof).unwrap();
        let served = Served::of(&reply).unwrap_or_else(|| panic!("{path}: {reply:?}"));
        let pool = &path[1..path[1..].find('/').unwrap() + 1];
        assert_eq!(cell_region(&served.cell), "eu", "{path}: {served:?}");
        assert_eq!(cell_pool(&served.cell), pool, "{path}: {served:?}");
        // The EU gateway chose the cell, and says so; the region route's
        // header never reaches a cell.
        assert_eq!(served.header("x-cell-id"), Some(served.cell.as_str()));
        assert_eq!(served.header(POOL_HEADER), Some(pool));
        assert_eq!(served.header(FORWARDED_BY_HEADER), Some("us"));
        assert_eq!(served.header(REGION_HEADER), None, "{served:?}");
        assert_eq!(served.path, path);
        // At its home gateway, the same cell.
        let direct = Served::of(&regions.eu.call(&agent, "acme-gmbh", path, &[]).unwrap())
            .unwrap_or_else(|| panic!("{path} at the EU gateway"));
        assert_eq!(direct.cell, served.cell);
        assert_eq!(direct.header(FORWARDED_BY_HEADER), None);
        served_cells.insert(pool.to_string(), served.cell);
    }
    // One tenant, two pools, two cells.
    assert_ne!(served_cells["voice"], served_cells["sms"]);
    assert_eq!(
        regions.us.metric("cell_router.forwarded.eu").unwrap() - forwarded_before,
        2
    );
    assert_eq!(
        upstream_to(&regions.us, &us_cells),
        us_before,
        "a US cell saw an EU tenant's request"
    );

    // Both access logs show the pool and the home region: the forward on
    // the US gateway, the cell on the EU one.
    let logged = |gateway: &RegionGateway, want: &[(&str, &str)]| {
        wait_until(Duration::from_secs(30), || {
            gateway.envoy.process.log_tail(400).lines().any(|line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|entry| {
                    entry["path"] == "/sms/messages"
                        && entry["status"] == 200
                        && want.iter().all(|(k, v)| entry[*k] == *v)
                })
            })
        })
    };
    assert!(
        logged(
            &regions.us,
            &[
                ("reason", "forward"),
                ("pool", "sms"),
                ("region", "eu"),
                ("forwarded_by", "us")
            ]
        ),
        "{}",
        regions.us.envoy.process.log_tail(20)
    );
    assert!(
        logged(
            &regions.eu,
            &[
                ("cell", served_cells["sms"].as_str()),
                ("pool", "sms"),
                ("region", "eu"),
                ("forwarded_by", "us"),
            ]
        ),
        "{}",
        regions.eu.envoy.process.log_tail(20)
    );

    // A US tenant stays in the US.
    let reply = regions
        .us
        .call(&agent, "acme-inc", "/voice/x", &[])
        .unwrap();
    let served = Served::of(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(cell_region(&served.cell), "us");
    assert_eq!(served.header(FORWARDED_BY_HEADER), None);
    // And the US tenant at the EU gateway goes to the US.
    let reply = regions
        .eu
        .call(&agent, "acme-inc", "/voice/x", &[])
        .unwrap();
    let via_eu = Served::of(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(via_eu.cell, served.cell);
    assert_eq!(via_eu.header(FORWARDED_BY_HEADER), Some("eu"));
    assert_eq!(regions.eu.metric("cell_router.forwarded.us").unwrap(), 1);
}

#[test]
fn disagreeing_snapshots_never_forward_twice() {
    let base = RegionLayout::voice_and_sms(20, 1);
    let regions = start(
        "regions-loop",
        &with_homes(base.clone(), &[("acme-gmbh", "eu")]),
    );
    let agent = client();
    // Each side homes `flip` in the other region.
    let mut us_view = with_homes(base.clone(), &[("flip", "eu"), ("acme-gmbh", "eu")]);
    us_view.version = 21;
    let mut eu_view = with_homes(base, &[("flip", "us"), ("acme-gmbh", "eu")]);
    eu_view.version = 21;
    regions.publish_to("us", &us_view).unwrap();
    regions.publish_to("eu", &eu_view).unwrap();

    for (entry, other) in [(&regions.us, &regions.eu), (&regions.eu, &regions.us)] {
        let forwarded = format!("cell_router.forwarded.{}", other.region);
        let back = format!("cell_router.forwarded.{}", entry.region);
        let before = (
            entry.metric(&forwarded).unwrap(),
            other.metric("cell_router.rejected.wrong_region").unwrap(),
            other.metric(&back).unwrap(),
            entry
                .upstream_requests(&format!("region|{}", other.region))
                .unwrap(),
            other
                .upstream_requests(&format!("region|{}", entry.region))
                .unwrap(),
        );
        let reply = entry.call(&agent, "flip", "/voice/x", &[]).unwrap();
        assert_eq!(reply.status, 503, "{}: {reply:?}", entry.region);
        assert_eq!(reply.json().unwrap()["error"], "wrong_region");
        assert_eq!(reply.header("retry-after"), Some("1"));
        let after = (
            entry.metric(&forwarded).unwrap(),
            other.metric("cell_router.rejected.wrong_region").unwrap(),
            other.metric(&back).unwrap(),
            entry
                .upstream_requests(&format!("region|{}", other.region))
                .unwrap(),
            other
                .upstream_requests(&format!("region|{}", entry.region))
                .unwrap(),
        );
        // Forwarded once, refused by the other side, never sent back.
        assert_eq!(after.0 - before.0, 1, "{} forwarded", entry.region);
        assert_eq!(after.1 - before.1, 1, "{} refused", other.region);
        assert_eq!(after.2, before.2, "{} forwarded back", other.region);
        assert_eq!(after.3 - before.3, 1);
        assert_eq!(after.4, before.4, "{} sent it back", other.region);
    }

    // A client that sends the marker only fails its own request.
    let before = regions.us.metric("cell_router.forwarded.eu").unwrap();
    let reply = regions
        .us
        .call(
            &agent,
            "acme-gmbh",
            "/sms/x",
            &[(FORWARDED_BY_HEADER, "eu")],
        )
        .unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json().unwrap()["error"], "wrong_region");
    assert_eq!(
        regions.us.metric("cell_router.forwarded.eu").unwrap(),
        before
    );
    // At the tenant's home it is simply routed there.
    let reply = regions
        .eu
        .call(
            &agent,
            "acme-gmbh",
            "/sms/x",
            &[(FORWARDED_BY_HEADER, "us")],
        )
        .unwrap();
    let served = Served::of(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(served.cell, "sms-eu-1");
}

#[test]
fn a_region_with_every_cell_disabled_answers_503_on_every_gateway() {
    let tenants: Vec<String> = (0..20).map(|i| format!("eu-tenant-{i}")).collect();
    let homes: Vec<(&str, &str)> = tenants.iter().map(|t| (t.as_str(), "eu")).collect();
    let layout = with_homes(RegionLayout::voice_and_sms(30, 2), &homes);
    let regions = start("regions-down", &layout);
    let mut down = layout.clone();
    down.version = 31;
    down.set_region_state("eu", "disabled");
    // The EU probe is refused from now on (no version to read): its refusal
    // says the worker holds the new snapshot, the old one had no such cell.
    regions
        .publish_until(&down, |gateway, reply| {
            gateway.region == "eu"
                && reply.status == 503
                && reply.json().is_ok_and(|b| b["error"] == "cell_unavailable")
        })
        .unwrap();
    let agent = client();
    let us_cells = layout.cells_in("us");
    let eu_cells = layout.cells_in("eu");
    let before = (
        upstream_to(&regions.us, &us_cells),
        upstream_to(&regions.eu, &eu_cells),
    );
    let mut answers = 0;
    for tenant in &tenants {
        for path in ["/voice/x", "/sms/x"] {
            for gateway in regions.gateways() {
                let reply = gateway.call(&agent, tenant, path, &[]).unwrap();
                assert_eq!(reply.status, 503, "{tenant} {path} at {}", gateway.region);
                assert_eq!(reply.json().unwrap()["error"], "cell_unavailable");
                assert_eq!(reply.header("retry-after"), Some("3"), "{reply:?}");
                answers += 1;
            }
        }
    }
    assert_eq!(answers, 80);
    assert_eq!(
        (
            upstream_to(&regions.us, &us_cells),
            upstream_to(&regions.eu, &eu_cells)
        ),
        before,
        "a cell was reached"
    );
    // The US still serves its own.
    let reply = regions.us.call(&agent, "probe-us", "/sms/x", &[]).unwrap();
    assert_eq!(
        Served::of(&reply).map(|s| cell_region(&s.cell).to_string()),
        Some("us".into())
    );
}

/// One raw HTTP/1.1 request (no client library to tidy the path): the
/// status and the body.
fn raw_get(port: u16, path: &str, token: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn path_tricks_reach_the_pool_the_normalised_path_names() {
    let layout = with_homes(RegionLayout::voice_and_sms(40, 1), &[("acme-inc", "us")]);
    let regions = start("regions-paths", &layout);
    let snapshot = cell_router_mapping::Snapshot::parse(&layout.to_json().unwrap()).unwrap();
    let token = cell_router_kit::fixtures::bearer(&cell_router_kit::fixtures::token(
        cell_router_kit::tokens::Alg::HS256,
        cell_router_kit::fixtures::unix_now(),
        "acme-inc",
    ));
    // (path, the pool it must reach: Some(pool), or None: refused)
    let cases: [(&str, Option<&str>); 17] = [
        ("/voice/x", Some("voice")),
        ("//voice/x", Some("voice")),
        ("///voice//x", Some("voice")),
        ("/voice/../sms/x", Some("sms")),
        ("/sms/../voice/x", Some("voice")),
        ("/sms/./../../voice", Some("voice")),
        ("/./voice/x", Some("voice")),
        ("/VOICE/x", Some("voice")),
        ("/voice;x", Some("voice")),
        ("/voice;v=1/x", Some("voice")),
        ("/voice?x=/sms", Some("voice")),
        ("/voicemail", None),
        ("/sms%2F..%2Fvoice", None),
        ("/voice%2fx", None),
        ("/sms/..%5Cvoice", None),
        // Envoy 1.40 decodes an encoded unreserved letter (measured).
        ("/%76oice/x", Some("voice")),
        ("/%2e%2e/voice/x", Some("voice")),
    ];
    let mut seen = Vec::new();
    for (path, want) in cases {
        let (status, body) = raw_get(regions.us.envoy.port, path, &token).unwrap();
        let echo: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let reached = echo.as_ref().filter(|_| status == 200).and_then(|e| {
            Some((
                e["cell"].as_str()?.to_string(),
                e["path"].as_str()?.to_string(),
            ))
        });
        match &reached {
            Some((cell, seen_path)) => {
                // The cell got the path the pool was picked from: the pool
                // that path names is the cell's pool.
                let named = snapshot
                    .pool_for(b"api.example.com", seen_path.as_bytes())
                    .map(|p| snapshot.pools()[usize::from(p)].id.clone());
                assert_eq!(
                    named.as_deref(),
                    Some(cell_pool(cell)),
                    "{path}: the cell {cell} got {seen_path}"
                );
                let headers = &echo.as_ref().unwrap()["headers"];
                assert_eq!(headers["x-cell-pool"], cell_pool(cell), "{path}");
            }
            None => assert!(
                matches!(status, 400 | 404),
                "{path}: refused with {status}: {body}"
            ),
        }
        let got = reached.as_ref().map(|(cell, _)| cell_pool(cell));
        assert_eq!(got, want, "{path}: {status} {body}");
        seen.push(format!(
            "{path} → {status} {}",
            reached.map_or("refused".to_string(), |(cell, p)| format!(
                "{cell} (path {p})"
            ))
        ));
    }
    eprintln!("path tricks:\n  {}", seen.join("\n  "));
}

/// Where `cellmap route` sends each (tenant, path) at each gateway region:
/// the cell id, or the refusal.
fn cellmap_routes(
    snapshot: &std::path::Path,
    requests: &[(String, &str, &str)],
) -> Result<Vec<String>> {
    // One run per (path, gateway): tenants on stdin.
    let mut answers = vec![String::new(); requests.len()];
    let mut groups: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, (_, path, region)) in requests.iter().enumerate() {
        groups.entry((*path, *region)).or_default().push(i);
    }
    for ((path, region), indexes) in groups {
        let input: String = indexes
            .iter()
            .map(|&i| format!("{}\n", requests[i].0))
            .collect();
        let mut child = std::process::Command::new(cellmap_bin()?)
            .args(["route", "--json", "--snapshot"])
            .arg(snapshot)
            .args(["--path", path, "--gateway-region", region])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output()?;
        writer.join().map_err(|_| anyhow::anyhow!("writer"))??;
        if !output.status.success() {
            bail!(
                "cellmap route --path {path} --gateway-region {region}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        if lines.len() != indexes.len() {
            bail!(
                "cellmap route answered {} lines for {} tenants",
                lines.len(),
                indexes.len()
            );
        }
        for (line, i) in lines.into_iter().zip(indexes) {
            answers[i] = match line["cell"].as_str() {
                Some(cell) if line["outcome"] == "route" || line["outcome"].is_null() => {
                    cell.to_string()
                }
                _ => format!("refused: {line}"),
            };
        }
    }
    Ok(answers)
}

#[test]
fn thousand_tenants_two_pools_two_regions_agree_with_cellmap_route() {
    let layout = RegionLayout::voice_and_sms(50, 3);
    let regions = start("regions-thousand", &layout);
    let snapshot_path = regions.us.source.clone();
    let tenants: Vec<String> = (0..1000).map(|i| format!("tenant-{i:04}")).collect();
    let mut requests = Vec::new();
    for tenant in &tenants {
        for path in ["/voice/x", "/sms/x"] {
            for region in ["us", "eu"] {
                requests.push((tenant.clone(), path, region));
            }
        }
    }
    let expected = cellmap_routes(&snapshot_path, &requests).unwrap();
    let forwarded_before = [
        regions.us.metric("cell_router.forwarded.eu").unwrap(),
        regions.eu.metric("cell_router.forwarded.us").unwrap(),
    ];
    let region_before = [
        regions.us.upstream_requests("region|eu").unwrap(),
        regions.eu.upstream_requests("region|us").unwrap(),
    ];
    // Four clients at once: the gateways have two workers each.
    let chunks: Vec<Vec<usize>> = (0..4)
        .map(|k| (0..requests.len()).filter(|i| i % 4 == k).collect())
        .collect();
    let results: Vec<(usize, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let (regions, requests) = (&regions, &requests);
                scope.spawn(move || {
                    let agent = client();
                    chunk
                        .iter()
                        .map(|&i| {
                            let (tenant, path, region) = &requests[i];
                            let gateway = regions.gateway(region).unwrap();
                            let reply = gateway.call(&agent, tenant, path, &[]).unwrap();
                            let got = Served::of(&reply).map_or_else(
                                || format!("HTTP {} {}", reply.status, reply.body),
                                |s| s.cell,
                            );
                            (i, got)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut wrong = Vec::new();
    let mut per_cell: BTreeMap<String, usize> = BTreeMap::new();
    let mut crossing = [0i64; 2];
    for (i, got) in results {
        let (tenant, path, region) = &requests[i];
        if got != expected[i] {
            wrong.push(format!(
                "{tenant} {path} at {region}: got {got}, cellmap route says {}",
                expected[i]
            ));
        }
        if cell_region(&got) != *region {
            crossing[usize::from(*region == "eu")] += 1;
        }
        *per_cell.entry(got).or_default() += 1;
    }
    assert!(
        wrong.is_empty(),
        "{} of {} differ:\n{}",
        wrong.len(),
        requests.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    // Every cell took its share, and each gateway forwarded exactly the
    // requests of tenants homed in the other region.
    assert_eq!(per_cell.len(), 12, "{per_cell:?}");
    assert!(crossing[0] > 500 && crossing[1] > 500, "{crossing:?}");
    assert_eq!(
        regions.us.metric("cell_router.forwarded.eu").unwrap() - forwarded_before[0],
        crossing[0]
    );
    assert_eq!(
        regions.eu.metric("cell_router.forwarded.us").unwrap() - forwarded_before[1],
        crossing[1]
    );
    // Envoy's own count of what each gateway sent to the other region.
    assert_eq!(
        regions.us.upstream_requests("region|eu").unwrap() - region_before[0],
        crossing[0]
    );
    assert_eq!(
        regions.eu.upstream_requests("region|us").unwrap() - region_before[1],
        crossing[1]
    );
    eprintln!(
        "4,000 requests: {per_cell:?}; forwarded us→eu {}, eu→us {}",
        crossing[0], crossing[1]
    );
}
