//! The load: wrk through Envoy, each request signed for one of many tenants
//! and labelled with its tenant for the checking backends.

use super::{Args, TENANT_HEADER};
use crate::e2e::{self, Gateway, Process};
use anyhow::{Context, Result, anyhow, bail};
use cell_router_kit::fixtures::{self, bearer};
use cell_router_kit::tokens::Alg;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Starts wrk for `--duration` (whole seconds, at least one) with a
/// pre-minted HS256 token per tenant; returns it and the seconds it runs.
pub fn start(args: &Args, gateway: &Gateway, tenants: &[String]) -> Result<(Process, u64)> {
    let dir = &gateway.dir;
    let now = fixtures::unix_now();
    let tokens: Vec<String> = tenants
        .iter()
        .map(|t| fixtures::token(Alg::HS256, now, t))
        .collect();
    let script = dir.join("chaos.lua");
    std::fs::write(&script, wrk_script(tenants, &tokens))?;

    // wrk takes whole seconds.
    let load_secs = args.duration.as_secs_f64().ceil().max(1.0) as u64;
    let mut wrk_command = Command::new("wrk");
    wrk_command
        .arg("-t")
        .arg(args.wrk_threads.to_string())
        .arg("-c")
        .arg(args.connections.to_string())
        .arg("-d")
        .arg(format!("{}s", load_secs))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(&script)
        .arg(gateway.envoy.url("/"));
    let wrk = Process::spawn("wrk", wrk_command, dir)
        .context("wrk is needed (apt-get install wrk, or scripts/install-tools.sh wrk)")?;
    Ok((wrk, load_secs))
}

/// Waits for wrk to stop by itself (after `--duration`, with a bounded
/// grace period) and reads its numbers.
pub fn finish(wrk: &mut Process, dir: &Path) -> Result<Load> {
    if !e2e::wait_until(Duration::from_secs(20), || !wrk.is_running()) {
        wrk.kill();
        bail!("wrk did not finish\n{}", wrk.log_tail(20));
    }
    let wrk_output = std::fs::read_to_string(dir.join("wrk.log"))?;
    parse_wrk(&wrk_output).with_context(|| wrk.log_tail(30))
}

/// The wrk script: each request takes the next of the pre-minted tokens (a
/// different stride per thread) and names its tenant for the checker;
/// `done` prints the status counts and errors as one parsable line.
pub fn wrk_script(tenants: &[String], tokens: &[String]) -> String {
    let mut lua = String::from("local pairs_ = {\n");
    for (tenant, token) in tenants.iter().zip(tokens) {
        let _ = writeln!(lua, "  {{\"{tenant}\", \"{}\"}},", bearer(token));
    }
    lua.push_str(
        r#"}
local n = #pairs_
local at = 0
local stride = 1
statuses = {}
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  -- Coprime strides so threads do not walk the tenants in step.
  local strides = {1, 7, 11, 13, 17, 19, 23, 29}
  stride = strides[((id or 1) - 1) % #strides + 1]
  at = (id or 1) * 97
end

function request()
  at = (at + stride) % n
  local p = pairs_[at + 1]
  wrk.headers["authorization"] = p[2]
  wrk.headers["TENANT_HEADER"] = p[1]
  return wrk.format("GET", "/")
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses") or {}
    for status, count in pairs(counts) do
      total[status] = (total[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(total) do
    table.insert(parts, status .. "=" .. count)
  end
  io.write("CHAOS-STATUS " .. table.concat(parts, " ") .. "\n")
  io.write(string.format(
    "CHAOS-SUMMARY requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#,
    );
    lua.replace("TENANT_HEADER", TENANT_HEADER)
}

/// wrk's numbers, from the `done` lines of the script.
#[derive(Debug, Default)]
pub struct Load {
    pub requests: u64,
    pub duration_s: f64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn parse_wrk(output: &str) -> Result<Load> {
    let mut load = Load::default();
    let status_line = output
        .lines()
        .find_map(|l| l.strip_prefix("CHAOS-STATUS"))
        .ok_or_else(|| anyhow!("wrk printed no CHAOS-STATUS line:\n{output}"))?;
    for pair in status_line.split_whitespace() {
        let (status, count) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("bad status pair {pair:?}"))?;
        load.statuses.insert(status.parse()?, count.parse()?);
    }
    let summary = output
        .lines()
        .find_map(|l| l.strip_prefix("CHAOS-SUMMARY"))
        .ok_or_else(|| anyhow!("wrk printed no CHAOS-SUMMARY line:\n{output}"))?;
    let mut fields = BTreeMap::new();
    for pair in summary.split_whitespace() {
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k.to_string(), v.parse::<u64>()?);
        }
    }
    let field = |k: &str| fields.get(k).copied().unwrap_or(0);
    load.requests = field("requests");
    load.duration_s = field("duration_us") as f64 / 1e6;
    for kind in ["connect", "read", "write", "timeout"] {
        load.errors.insert(kind.to_string(), field(kind));
    }
    load.p50_ms = field("p50_us") as f64 / 1e3;
    load.p99_ms = field("p99_us") as f64 / 1e3;
    load.max_ms = field("max_us") as f64 / 1e3;
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lines_the_script_prints() {
        let output = "Running 1s test\nCHAOS-STATUS 200=990 503=10\n\
            CHAOS-SUMMARY requests=1000 duration_us=2000000 connect=0 read=1 write=0 \
            status=10 timeout=2 p50_us=1500 p99_us=9000 max_us=20000\n";
        let load = parse_wrk(output).unwrap();
        assert_eq!(load.requests, 1000);
        assert_eq!(load.duration_s, 2.0);
        assert_eq!(load.statuses, BTreeMap::from([(200, 990), (503, 10)]));
        assert_eq!(load.errors["read"], 1);
        assert_eq!(load.errors["timeout"], 2);
        assert_eq!((load.p50_ms, load.p99_ms, load.max_ms), (1.5, 9.0, 20.0));
        assert!(parse_wrk("CHAOS-STATUS 200=1\n").is_err());
    }

    #[test]
    fn the_script_labels_each_request_with_its_tenant() {
        let lua = wrk_script(&["t1".into()], &["tok".into()]);
        assert!(lua.contains(&format!("wrk.headers[\"{TENANT_HEADER}\"] = p[1]")));
        assert!(lua.contains("{\"t1\", \"Bearer tok\"}"), "{lua}");
    }
}
