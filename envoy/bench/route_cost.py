#!/usr/bin/env python3
"""Envoy CPU per request of two route styles at N cells, no filter (issue 14).

  header-match:   one route per cell, `x-cell-id` exact match (linear in cells)
  cluster-header: one route, `cluster_header: x-cell-id`, guarded as in
                  envoy/envoy.yaml (O(1) in cells)

Each gateway (one worker) has N cell clusters, all pointing at one backend
Envoy answering from direct_response. wrk (16 connections) names one cell, or
every cell of the first K in turn ("spread K"). CPU is the gateway's
utime + stime over the run. Loopback only. The numbers in envoy/README.md,
"Routing", come from this script:

  python3 envoy/bench/route_cost.py [--envoy .venv/bin/envoy] [--seconds 4] [--rounds 2]
"""
import argparse, os, re, socket, subprocess, tempfile, time, urllib.request

GUARD = """                  - name: x-cell-id
                    string_match: {safe_regex: {regex: "[A-Za-z0-9._:-]+"}}
                  - name: x-cell-id
                    string_match: {safe_regex: {regex: ".*[^A-Za-z0-9._:-].*"}}
                    invert_match: true"""

SPREAD_LUA = """local n = tonumber(os.getenv("SPREAD"))
local i = 0
request = function()
  i = (i + 7919) % n
  return wrk.format("GET", "/", {["x-cell-id"] = string.format("cell-%04d", i)})
end
"""

HCM = """      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: {name}
              domains: ["*"]
              routes:{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(name, port, routes):
    return f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin}}}}}}}}
static_resources:
  listeners:
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
""" + HCM.format(name=name, routes=routes)


def backend(port):
    return listener("backend", port, """
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "ok"}}""")


def gateway(style, cells, port, backend_port):
    ids = [f"cell-{i:04d}" for i in range(cells)]
    if style == "header-match":
        routes = "".join(f"""
              - match: {{prefix: "/", headers: [{{name: x-cell-id, string_match: {{exact: {c}}}}}]}}
                route: {{cluster: {c}}}""" for c in ids)
    else:
        routes = f"""
              - match:
                  prefix: "/"
                  headers:
{GUARD}
                route: {{cluster_header: x-cell-id}}"""
    routes += """
              - match: {prefix: "/"}
                direct_response: {status: 503}"""
    clusters = "".join(f"""
  - name: {c}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {c}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend_port}}}}}}}}}]}}]""" for c in ids)
    return listener("gateway", port, routes) + "  clusters:" + clusters + "\n"


class Envoy:
    def __init__(self, envoy, config, workdir, name):
        self.admin = free_port()
        path = os.path.join(workdir, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(config.replace("{admin}", str(self.admin)))
        log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.process = subprocess.Popen(
            [envoy, "-c", path, "--concurrency", "1", "--disable-hot-restart",
             "--log-level", "warn", "--base-id", str(free_port())],
            stdout=log, stderr=subprocess.STDOUT)
        for _ in range(1200):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready").status == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"{name} did not start; see {log.name}")

    def cpu_s(self):
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.process.terminate()
        self.process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envoy", default=".venv/bin/envoy")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cases = [  # (style, cells, what the client names)
        ("header-match", 3, "cell-0002"),
        ("header-match", 1000, "cell-0000"),
        ("header-match", 1000, "cell-0999"),
        ("header-match", 1000, "spread 1000"),
        ("cluster-header", 3, "cell-0002"),
        ("cluster-header", 1000, "cell-0999"),
        ("cluster-header", 1000, "spread 3"),
        ("cluster-header", 1000, "spread 1000"),
    ]
    workdir = tempfile.mkdtemp(prefix="route-cost-")
    lua = os.path.join(workdir, "spread.lua")
    with open(lua, "w") as f:
        f.write(SPREAD_LUA)
    backend_port = free_port()
    envoys = {"backend": Envoy(args.envoy, backend(backend_port), workdir, "backend")}
    ports = {}
    try:
        for style, cells, _ in cases:
            key = f"{style}-{cells}"
            if key not in envoys:
                ports[key] = free_port()
                envoys[key] = Envoy(args.envoy, gateway(style, cells, ports[key], backend_port), workdir, key)
        for round_ in range(1, args.rounds + 1):
            for style, cells, names in cases:
                key = f"{style}-{cells}"
                url = f"http://127.0.0.1:{ports[key]}/"
                wrk = ["wrk", "-t1", "-c16", f"-d{args.seconds}s"]
                env = dict(os.environ)
                if names.startswith("spread"):
                    env["SPREAD"] = names.split()[1]
                    wrk += ["-s", lua, url]
                else:
                    wrk += ["-H", f"x-cell-id: {names}", url]
                before = envoys[key].cpu_s()
                out = subprocess.run(wrk, capture_output=True, text=True, env=env).stdout
                used = envoys[key].cpu_s() - before
                requests = int(re.search(r"(\d+) requests in", out).group(1))
                bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
                print(f"round {round_}  {style:<14} {cells:>4} cells  client names {names:<11}"
                      f"  {used / requests * 1e6:6.1f} µs CPU/request"
                      f"  ({requests / args.seconds:,.0f} req/s, non-2xx {bad.group(1) if bad else 0})",
                      flush=True)
    finally:
        for envoy in envoys.values():
            envoy.stop()


if __name__ == "__main__":
    main()
