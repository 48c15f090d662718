//! Two regional gateways on one machine (service pools and region homing,
//! mapping/SPEC.md "Format 2"): a US and an EU gateway, each with its own
//! cells, sidecar and Envoy running the repository's gateway config, and
//! each other's listener as its `region|<id>` cluster. A request for a
//! tenant homed in the other region goes through the other gateway.
//!
//! The gateway config is `envoy/envoy.yaml` (or `envoy-native.yaml`) with
//! its example cell clusters replaced by the region's cells, the plugin
//! config's `region` set, and every port free; nothing else changes, so the
//! tests and the demo exercise the routes users get.

use super::{
    Backends, CONFIG_MARKER, DEFAULT_ADMIN_PORT, DEFAULT_LISTENER_PORT, DEFAULT_PERSISTED_PORT,
    DEFAULT_SIDECAR_PORT, Envoy, EnvoyOptions, Reply, Sidecar, VERSION_TIMEOUT, await_version,
    free_port, get, plugin_config_of, probe_body_version, publish, render_envoy_config,
};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Ports of the `region|us` and `region|eu` clusters in `envoy/envoy.yaml`.
pub const DEFAULT_REGION_PORTS: [(&str, u16); 2] = [("us", 10100), ("eu", 10200)];
/// The request header the filter routes by when it forwards, and the one
/// that marks a forwarded request.
pub const REGION_HEADER: &str = "x-cell-region";
pub const FORWARDED_BY_HEADER: &str = "x-cell-forwarded-by";
pub const POOL_HEADER: &str = "x-cell-pool";

/// A pool of a test snapshot: its match (both empty: the default pool).
#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub id: String,
    pub path_prefixes: Vec<String>,
    pub authorities: Vec<String>,
}

/// A cell of a test snapshot.
#[derive(Clone, Debug)]
pub struct CellSpec {
    pub id: String,
    pub pool: String,
    pub region: String,
    /// `active`, `draining` or `disabled`.
    pub state: String,
}

/// A format-2 snapshot, built from a short description: every pool has
/// the same number of cells in every region, slots go round-robin to
/// regions (the region table) and to a pool's cells of the region.
#[derive(Clone, Debug)]
pub struct RegionLayout {
    pub version: u64,
    pub slots: u32,
    pub regions: Vec<String>,
    pub pools: Vec<PoolSpec>,
    pub cells: Vec<CellSpec>,
    pub region_overrides: BTreeMap<String, String>,
}

/// The tenant each gateway's version probe sends: homed in that region.
pub fn probe_tenant(region: &str) -> String {
    format!("probe-{region}")
}

impl RegionLayout {
    /// Regions `us` and `eu`; pools `voice` (`/voice`) and `sms` (`/sms`),
    /// no default pool (any other path: 404 `no_pool`); `per_pool` cells
    /// per pool and region, named `<pool>-<region>-<n>`.
    pub fn voice_and_sms(version: u64, per_pool: usize) -> RegionLayout {
        let regions = vec!["us".to_string(), "eu".to_string()];
        let pools: Vec<PoolSpec> = ["voice", "sms"]
            .iter()
            .map(|p| PoolSpec {
                id: p.to_string(),
                path_prefixes: vec![format!("/{p}")],
                authorities: Vec::new(),
            })
            .collect();
        let mut cells = Vec::new();
        for pool in &pools {
            for region in &regions {
                for n in 1..=per_pool {
                    cells.push(CellSpec {
                        id: format!("{}-{region}-{n}", pool.id),
                        pool: pool.id.clone(),
                        region: region.clone(),
                        state: "active".into(),
                    });
                }
            }
        }
        let region_overrides = regions
            .iter()
            .map(|r| (probe_tenant(r), r.clone()))
            .collect();
        RegionLayout {
            version,
            slots: 1024,
            regions,
            pools,
            cells,
            region_overrides,
        }
    }

    /// A path the version probe sends (the first pool's first prefix).
    pub fn probe_path(&self) -> String {
        let prefix = self
            .pools
            .first()
            .and_then(|p| p.path_prefixes.first())
            .map_or("", String::as_str);
        format!("{prefix}/probe")
    }

    /// Cells of `region`.
    pub fn cells_in(&self, region: &str) -> Vec<&str> {
        self.cells
            .iter()
            .filter(|c| c.region == region)
            .map(|c| c.id.as_str())
            .collect()
    }

    /// Sets the state of every cell of `region`.
    pub fn set_region_state(&mut self, region: &str, state: &str) {
        for cell in self.cells.iter_mut().filter(|c| c.region == region) {
            cell.state = state.to_string();
        }
    }

    /// The snapshot document.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let slots = self.slots as usize;
        let encode = |table: &[u16]| {
            let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        let region_count =
            u16::try_from(self.regions.len()).map_err(|_| anyhow!("too many regions"))?;
        let region_table: Vec<u16> = (0..slots)
            .map(|s| (s % usize::from(region_count.max(1))) as u16)
            .collect();
        let mut pools = Vec::new();
        for pool in &self.pools {
            let mut tables = serde_json::Map::new();
            for region in &self.regions {
                let members: Vec<u16> = self
                    .cells
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.pool == pool.id && &c.region == region)
                    .map(|(i, _)| i as u16)
                    .collect();
                if members.is_empty() {
                    bail!("pool {} has no cell in region {region}", pool.id);
                }
                let table: Vec<u16> = (0..slots).map(|s| members[s % members.len()]).collect();
                tables.insert(region.clone(), encode(&table).into());
            }
            let mut doc = serde_json::json!({ "id": pool.id, "slot_tables": tables });
            if !pool.path_prefixes.is_empty() || !pool.authorities.is_empty() {
                let mut rule = serde_json::Map::new();
                if !pool.path_prefixes.is_empty() {
                    rule.insert("path_prefixes".into(), pool.path_prefixes.clone().into());
                }
                if !pool.authorities.is_empty() {
                    rule.insert("authorities".into(), pool.authorities.clone().into());
                }
                doc["match"] = rule.into();
            }
            pools.push(doc);
        }
        let cells: Vec<serde_json::Value> = self
            .cells
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "pool": c.pool,
                    "region": c.region,
                    "state": c.state,
                    "retry_after_s": 3,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "format": 2,
            "version": self.version,
            "generated_at": "2026-01-01T00:00:00Z",
            "hash": {
                "algorithm": "siphash-1-3",
                "key": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                "slots": self.slots,
            },
            "regions": self.regions.iter().map(|r| serde_json::json!({ "id": r })).collect::<Vec<_>>(),
            "region_table": encode(&region_table),
            "region_overrides": self.region_overrides,
            "cells": cells,
            "pools": pools,
        });
        Ok(serde_json::to_vec_pretty(&doc)?)
    }
}

/// The gateway config of one region: `template` (a gateway config of
/// envoy/) with its example cell clusters (`cell-a`, ...) replaced by
/// `cells`, the plugin config's `region` set, and its ports swapped
/// (`ports`: default port → port, the `region|*` clusters' included).
pub fn regional_config(
    template: &str,
    region: &str,
    cells: &[(String, u16)],
    ports: &HashMap<u16, u16>,
) -> Result<String> {
    const FIRST_CELL: &str = "\n  - name: cell-a\n";
    let at = template
        .find(FIRST_CELL)
        .ok_or_else(|| anyhow!("the template has no `cell-a` cluster"))?;
    let (head, example_cells) = template.split_at(at + 1);
    // Only the example cells follow: anything else would be cut with them.
    for line in example_cells.lines() {
        if let Some(name) = line.strip_prefix("  - name: ")
            && !name.starts_with("cell-")
        {
            bail!("cluster {name} follows the example cells in the template");
        }
        if !line.is_empty() && !line.starts_with("  ") {
            bail!("{line:?} follows the example cells in the template");
        }
    }
    let mut text = head.to_string();
    for (cell, port) in cells {
        text.push_str(&format!(
            "  - name: {cell}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {cell}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: 127.0.0.1
                port_value: {port}
"
        ));
    }
    let mut plugin = plugin_config_of(template)?;
    plugin["region"] = region.into();
    // The Wasm file name is set again when Envoy starts (`Envoy::start`).
    render_envoy_config(
        &text,
        ports,
        Path::new("dist/cell_router.wasm"),
        Some(&plugin),
    )
}

/// One region's gateway: its cells, its sidecar and its Envoy.
pub struct RegionGateway {
    pub region: String,
    pub dir: PathBuf,
    /// The file this region's sidecar watches.
    pub source: PathBuf,
    pub backends: Backends,
    pub sidecar: Sidecar,
    pub envoy: Envoy,
}

impl RegionGateway {
    /// Sends `GET path` for `tenant` with a fresh HS256 token.
    pub fn call(
        &self,
        agent: &ureq::Agent,
        tenant: &str,
        path: &str,
        extra: &[(&str, &str)],
    ) -> Result<Reply> {
        let token = cell_router_kit::fixtures::bearer(&cell_router_kit::fixtures::token(
            cell_router_kit::tokens::Alg::HS256,
            cell_router_kit::fixtures::unix_now(),
            tenant,
        ));
        let mut headers = vec![("authorization", token.as_str())];
        headers.extend_from_slice(extra);
        get(agent, &self.envoy.url(path), &headers)
    }

    /// A counter or gauge of the filter (`cell_router.…`), 0 when absent.
    pub fn metric(&self, name: &str) -> Result<i64> {
        let full = super::metric(name);
        let stats = self.envoy.stats(&regex_escape(&full))?;
        Ok(stats.get(&full).copied().unwrap_or(0))
    }

    /// Requests Envoy sent to cluster `cluster` (a cell or `region|<id>`).
    pub fn upstream_requests(&self, cluster: &str) -> Result<i64> {
        let name = format!("cluster.{cluster}.upstream_rq_total");
        let stats = self.envoy.stats(&regex_escape(&name))?;
        Ok(stats.get(&name).copied().unwrap_or(0))
    }

    /// Waits until every worker routes by `version` (probing with a tenant
    /// homed here, on `path`).
    pub fn await_version(&self, version: u64, path: &str) -> Result<()> {
        let tenant = probe_tenant(&self.region);
        await_version(&self.envoy, version, VERSION_TIMEOUT, |agent| {
            probe_body_version(self.call(agent, &tenant, path, &[("connection", "close")]))
        })
        .with_context(|| {
            format!(
                "the {} gateway\n{}",
                self.region,
                self.sidecar.process.log_tail(10)
            )
        })?;
        Ok(())
    }
}

fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    out.push('^');
    for c in name.chars() {
        if ".|()[]{}*+?^$\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('$');
    out
}

/// The US and EU gateways, each other's `region|<id>` cluster. Dropped as a
/// deployment is stopped: each Envoy drains first.
pub struct TwoRegions {
    pub us: RegionGateway,
    pub eu: RegionGateway,
    pub probe_path: String,
}

impl TwoRegions {
    /// Starts both regions of `layout` (regions `us` and `eu`) in `dir`,
    /// both sidecars serving `layout`'s snapshot, and waits until both
    /// gateways route by it.
    pub fn start_in(dir: &Path, layout: &RegionLayout, concurrency: u32) -> Result<TwoRegions> {
        let snapshot = layout.to_json()?;
        let listeners: HashMap<&str, (u16, u16)> = DEFAULT_REGION_PORTS
            .iter()
            .map(|(r, _)| Ok((*r, (free_port()?, free_port()?))))
            .collect::<Result<_>>()?;
        let mut started = Vec::new();
        for (region, _) in DEFAULT_REGION_PORTS {
            let dir = dir.join(region);
            std::fs::create_dir_all(&dir)?;
            let source = dir.join("snapshot.json");
            publish(&source, &snapshot)?;
            let cells = layout.cells_in(region);
            let backends = Backends::start(&dir, &cells)?;
            let persisted = dir.join("persisted-snapshot.json");
            let sidecar = Sidecar::start_with(&dir, &source, free_port()?, Some(&persisted))?;
            let (port, admin) = listeners
                .get(region)
                .copied()
                .ok_or_else(|| anyhow!("no ports for {region}"))?;
            let mut ports = HashMap::from([
                (DEFAULT_LISTENER_PORT, port),
                (DEFAULT_ADMIN_PORT, admin),
                (DEFAULT_SIDECAR_PORT, sidecar.port),
                (DEFAULT_PERSISTED_PORT, free_port()?),
            ]);
            for (other, default_port) in DEFAULT_REGION_PORTS {
                if let Some((p, _)) = listeners.get(other) {
                    ports.insert(default_port, *p);
                }
            }
            let mut options = EnvoyOptions::with_cells(backends.cells.clone(), sidecar.port);
            let template = std::fs::read_to_string(&options.template)
                .with_context(|| format!("reading {}", options.template.display()))?;
            if !template.contains(CONFIG_MARKER) {
                bail!("{} has no plugin configuration", options.template.display());
            }
            let config = regional_config(&template, region, &backends.cells, &ports)?;
            let regional = dir.join(format!("gateway-{region}.yaml"));
            std::fs::write(&regional, config)?;
            options.template = regional;
            options.concurrency = concurrency;
            options.ports = Some((port, admin));
            options.persisted = Some(persisted);
            let envoy = Envoy::start(&dir, options)?;
            started.push(RegionGateway {
                region: region.to_string(),
                dir,
                source,
                backends,
                sidecar,
                envoy,
            });
        }
        let eu = started.pop().ok_or_else(|| anyhow!("no EU gateway"))?;
        let us = started.pop().ok_or_else(|| anyhow!("no US gateway"))?;
        let regions = TwoRegions {
            us,
            eu,
            probe_path: layout.probe_path(),
        };
        regions.await_version(layout.version)?;
        Ok(regions)
    }

    pub fn gateways(&self) -> [&RegionGateway; 2] {
        [&self.us, &self.eu]
    }

    pub fn gateway(&self, region: &str) -> Result<&RegionGateway> {
        self.gateways()
            .into_iter()
            .find(|g| g.region == region)
            .ok_or_else(|| anyhow!("no gateway in region {region}"))
    }

    /// Waits until both gateways route by `version`.
    pub fn await_version(&self, version: u64) -> Result<()> {
        for gateway in self.gateways() {
            gateway.await_version(version, &self.probe_path)?;
        }
        Ok(())
    }

    /// Publishes `layout` to both sidecars and waits until both gateways
    /// route by it.
    pub fn publish(&self, layout: &RegionLayout) -> Result<()> {
        let snapshot = layout.to_json()?;
        for gateway in self.gateways() {
            publish(&gateway.source, &snapshot)?;
        }
        self.await_version(layout.version)
    }

    /// Publishes `layout` to both sidecars; waits until every worker of
    /// each gateway answers its probe as `routed_by_it` says only `layout`
    /// would (for a snapshot whose probe answer carries no version, e.g.
    /// every cell of a region disabled).
    pub fn publish_until(
        &self,
        layout: &RegionLayout,
        routed_by_it: impl Fn(&RegionGateway, &Reply) -> bool,
    ) -> Result<()> {
        let snapshot = layout.to_json()?;
        for gateway in self.gateways() {
            publish(&gateway.source, &snapshot)?;
        }
        for gateway in self.gateways() {
            let tenant = probe_tenant(&gateway.region);
            await_version(&gateway.envoy, layout.version, VERSION_TIMEOUT, |agent| {
                let reply =
                    gateway.call(agent, &tenant, &self.probe_path, &[("connection", "close")])?;
                if routed_by_it(gateway, &reply) {
                    return Ok(super::VersionProbe {
                        status: 200,
                        version: Some(layout.version),
                        error: None,
                    });
                }
                probe_body_version(Ok(reply))
            })
            .with_context(|| format!("the {} gateway", gateway.region))?;
        }
        Ok(())
    }

    /// Publishes `layout` to one region's sidecar only (the regions then
    /// disagree, as they may for a moment) and waits until its gateway
    /// routes by it.
    pub fn publish_to(&self, region: &str, layout: &RegionLayout) -> Result<()> {
        let gateway = self.gateway(region)?;
        publish(&gateway.source, &layout.to_json()?)?;
        gateway.await_version(layout.version, &self.probe_path)
    }
}

/// What the cell that answered saw: its name and the request's headers.
#[derive(Debug, Clone)]
pub struct Served {
    pub cell: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

impl Served {
    /// The cell's echo in `reply`, if a cell answered.
    pub fn of(reply: &Reply) -> Option<Served> {
        if reply.status != 200 {
            return None;
        }
        let body: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
        let headers = body["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Some(Served {
            cell: body["cell"].as_str()?.to_string(),
            path: body["path"].as_str().unwrap_or_default().to_string(),
            headers,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How long a test waits for anything else in this module.
pub const WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_config_swaps_cells_region_and_ports() {
        let template =
            std::fs::read_to_string(super::super::repo_root().join("envoy/envoy.yaml")).unwrap();
        let ports = HashMap::from([(10000, 41000), (10100, 41000), (10200, 42000)]);
        let cells = vec![("voice-us-1".to_string(), 43000)];
        let out = regional_config(&template, "us", &cells, &ports).unwrap();
        assert!(out.contains("  - name: voice-us-1\n"), "{out}");
        assert!(!out.contains("name: cell-a"), "{out}");
        assert!(out.contains("port_value: 43000"));
        assert!(out.contains("port_value: 42000"));
        assert!(!out.contains("port_value: 10200"));
        assert_eq!(plugin_config_of(&out).unwrap()["region"], "us");
        assert!(out.contains("cluster: \"region|eu\""));
    }

    #[test]
    fn the_layout_is_a_format_2_snapshot() {
        let layout = RegionLayout::voice_and_sms(3, 2);
        let doc: serde_json::Value = serde_json::from_slice(&layout.to_json().unwrap()).unwrap();
        assert_eq!(doc["format"], 2);
        assert_eq!(doc["cells"].as_array().unwrap().len(), 8);
        assert_eq!(doc["pools"][0]["match"]["path_prefixes"][0], "/voice");
        assert_eq!(layout.cells_in("eu").len(), 4);
        assert_eq!(layout.probe_path(), "/voice/probe");
    }
}
