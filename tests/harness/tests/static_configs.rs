//! The container and Istio artifacts cannot run here (no Docker engine, no
//! cluster), so they are checked statically: the files they reference exist,
//! they carry the same gateway as the local demo, and the real filter accepts
//! their plugin configuration. (`make test` also runs `envoy --mode validate`
//! on every Envoy config.)

use cell_router_harness::e2e::{plugin_config_of, repo_root};
use cell_router_wasm_host::Host;
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Lines that define what the gateway does, independent of addresses.
fn gateway_shape(config: &str) -> Vec<String> {
    config
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("- name:")
                || l.starts_with("string_match:")
                || l.starts_with("route: {cluster:")
                || l.starts_with("failure_policy:")
                || l.starts_with("runtime:")
                || l.starts_with("root_id:")
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn the_compose_gateway_is_the_local_gateway() {
    let local = read("envoy/envoy.yaml");
    let docker = read("envoy/docker/envoy.yaml");
    assert_eq!(
        plugin_config_of(&docker).unwrap(),
        plugin_config_of(&local).unwrap()
    );
    let shape = gateway_shape(&local);
    assert!(shape.len() >= 10, "{shape:?}");
    assert_eq!(gateway_shape(&docker), shape);
    assert!(docker.contains("filename: /etc/envoy/cell_router.wasm"));
}

#[test]
fn compose_references_files_that_exist() {
    let compose = read("envoy/docker-compose.yaml");
    let envoy_dir = repo_root().join("envoy");
    let mut checked = 0;
    for line in compose.lines().map(str::trim) {
        // Volume sources (`- ../dist/x:/etc/...`) and build contexts are
        // relative to envoy/; dockerfiles to the context (the repo root).
        if let Some(volume) = line.strip_prefix("- ")
            && volume.starts_with('.')
            && let Some((source, _)) = volume.split_once(':')
        {
            let path = envoy_dir.join(source);
            // dist/ holds the built filter: `make test` builds it first.
            assert!(
                path.exists(),
                "compose volume source {} is missing",
                path.display()
            );
            checked += 1;
        }
        if let Some(context) = line.strip_prefix("context: ") {
            assert!(envoy_dir.join(context).is_dir(), "build context {context}");
            checked += 1;
        }
        if let Some(dockerfile) = line.strip_prefix("dockerfile: ") {
            let dockerfile = repo_root().join(dockerfile);
            let text = std::fs::read_to_string(&dockerfile).unwrap();
            checked += 1;
            // Every build target compose asks for is a stage of that file.
            for target in ["sidecar", "cell"] {
                assert!(
                    text.contains(&format!(" AS {target}\n")),
                    "no stage {target}"
                );
            }
        }
    }
    // 4 volumes, and the sidecar's and the cells' build (cell-b and cell-c
    // reuse cell-a's through a YAML anchor).
    assert_eq!(checked, 8, "references found: is the parser still right?");
    // Envoy runs under the draining wrapper, and reads the copy the sidecar
    // persists on the shared volume.
    assert!(
        compose.contains("command: [\"/etc/envoy/gateway.sh\", \"-c\", \"/etc/envoy/envoy.yaml\"")
    );
    // The sidecar image's entrypoint persists; compose must not pass
    // `--persist` again (clap refuses a repeated option).
    assert!(
        read("envoy/Dockerfile").contains("\"--persist\", \"/var/lib/cellmap/snapshot.json\"]")
    );
    assert!(!compose.contains("--persist"), "compose repeats --persist");
    assert!(compose.contains("- cellmap-state:/var/lib/cellmap:ro"));
    assert!(compose.contains("GET /cell-router/ready HTTP/1.1"));
    assert!(
        read("envoy/docker/envoy.yaml")
            .contains("body: {filename: /var/lib/cellmap/snapshot.json}")
    );
    assert!(read("envoy/Dockerfile").contains(": > /var/lib/cellmap/snapshot.json"));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let script = repo_root().join("envoy/docker/gateway.sh");
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{} is not executable", script.display());
    }
    // The image the issue names, at the version the tests run.
    assert!(compose.contains("image: envoyproxy/envoy:v1.40.0"));
    // The snapshot the sidecar is pointed at exists in the mounted folder.
    assert!(read("envoy/Dockerfile").contains("/snapshots/snapshot.json"));
    assert!(repo_root().join("mapping/examples/snapshot.json").exists());
}

fn istio_plugin_config() -> Value {
    let manifest = read("envoy/istio/wasmplugin.yaml");
    let (_, after) = manifest
        .split_once("  pluginConfig:\n")
        .expect("pluginConfig");
    serde_json::from_str(after).expect("pluginConfig is JSON (valid YAML)")
}

#[test]
fn istio_plugin_config_is_the_local_one_with_the_istio_sidecar_cluster() {
    let istio = istio_plugin_config();
    let mut local = plugin_config_of(&read("envoy/envoy.yaml")).unwrap();
    assert_eq!(
        istio["sidecar"]["cluster"],
        "outbound|18000||cellmap.cell-router.local"
    );
    assert_eq!(
        istio["sidecar"]["persisted"]["cluster"],
        "outbound|18010||cellmap-persisted.cell-router.local"
    );
    local["sidecar"]["cluster"] = istio["sidecar"]["cluster"].clone();
    local["sidecar"]["authority"] = istio["sidecar"]["authority"].clone();
    local["sidecar"]["persisted"]["cluster"] = istio["sidecar"]["persisted"]["cluster"].clone();
    assert_eq!(istio, local);
    let manifest = read("envoy/istio/wasmplugin.yaml");
    assert!(manifest.contains("failStrategy: FAIL_CLOSE"));
    // The ServiceEntry host is the one the cluster name is built from.
    let service_entries = read("envoy/istio/sidecar.yaml");
    assert!(service_entries.contains("hosts: [\"cellmap.cell-router.local\"]"));
    assert!(service_entries.contains("hosts: [\"cellmap-persisted.cell-router.local\"]"));
    // The persisted-copy listener serves the file the sidecar persists.
    assert!(
        read("envoy/istio/envoyfilter.yaml")
            .contains("body: {filename: /var/lib/cellmap/snapshot.json}")
    );
    let patch = read("envoy/istio/gateway-patch.yaml");
    assert!(patch.contains("- /var/lib/cellmap/snapshot.json"));
    assert!(patch.contains("httpGet: {path: /cell-router/ready, port: 8080}"));
    assert!(read("envoy/istio/Dockerfile").contains("COPY dist/cell_router.wasm ./plugin.wasm"));
}

#[test]
fn the_real_filter_accepts_every_shipped_plugin_config() {
    let configs = [
        (
            "envoy/envoy.yaml",
            plugin_config_of(&read("envoy/envoy.yaml")).unwrap(),
        ),
        (
            "envoy/docker/envoy.yaml",
            plugin_config_of(&read("envoy/docker/envoy.yaml")).unwrap(),
        ),
        // The native build reads the same JSON.
        (
            "envoy/envoy-native.yaml",
            plugin_config_of(&read("envoy/envoy-native.yaml")).unwrap(),
        ),
        ("envoy/istio/wasmplugin.yaml", istio_plugin_config()),
    ];
    for (name, config) in configs {
        assert!(
            config["sidecar"]["persisted"].is_object(),
            "{name}: no sidecar.persisted"
        );
        let mut host = Host::new().unwrap();
        host.configure(config.to_string())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Every HTTP connection manager shipped under envoy/ (gateways, benchmark
/// configs, the persisted-copy listener, the Istio patch) refuses header
/// names with underscores: a cell that treats `_` and `-` alike would
/// otherwise read a client's `x_cell_id` as the router's `x-cell-id`.
#[test]
fn every_shipped_http_connection_manager_refuses_underscores() {
    let mut files = Vec::new();
    let mut dirs = vec![repo_root().join("envoy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    let mut managers = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let hcm = text.matches("v3.HttpConnectionManager").count();
        let rejecting = text
            .matches("headers_with_underscores_action: REJECT_REQUEST")
            .count();
        assert_eq!(rejecting, hcm, "{}", path.display());
        managers += hcm;
    }
    assert!(managers >= 12, "found only {managers} connection managers");
}

/// Every HTTP connection manager shipped under envoy/ is the edge
/// (`use_remote_address: true`): the client address comes from the
/// connection, `x-envoy-*` and `x-request-id` from outside are untrusted; the
/// gateways say how many proxies in front they trust (`xff_num_trusted_hops`).
#[test]
fn every_shipped_http_connection_manager_uses_the_remote_address() {
    let mut managers = 0;
    let mut dirs = vec![repo_root().join("envoy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let hcm = text.matches("v3.HttpConnectionManager").count();
            let remote = text.matches("use_remote_address: true").count();
            assert_eq!(remote, hcm, "{}", path.display());
            let gateways = text.matches("stat_prefix: gateway").count();
            let hops = text.matches("xff_num_trusted_hops: 0").count();
            assert_eq!(hops, gateways, "{}", path.display());
            managers += hcm;
        }
    }
    assert!(managers >= 12, "found only {managers} connection managers");
}

/// The WasmPlugin pins the image (a digest Istio checks after pulling),
/// says how it is pulled, and fails closed.
#[test]
fn the_wasmplugin_pins_its_image_and_fails_closed() {
    let manifest = read("envoy/istio/wasmplugin.yaml");
    let sha = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256: "))
        .expect("spec.sha256")
        .trim_matches('"');
    assert_eq!(sha.len(), 64, "{sha}");
    assert!(
        sha.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(manifest.contains("\n  imagePullPolicy: IfNotPresent\n"));
    assert!(manifest.contains("\n  failStrategy: FAIL_CLOSE\n"));
    assert!(manifest.contains("\n  url: oci://"));
}

/// The Gateway API route and the Istio VirtualService send each cell header
/// value to the same cell's service, one backendRef per cell, and neither
/// routes a request without the header to a cell.
#[test]
fn the_gateway_api_route_matches_the_virtualservice() {
    let virtual_service = read("envoy/istio/gateway-routes.yaml");
    let http_route = read("envoy/istio/gateway-api-routes.yaml");
    let cells: Vec<&str> = cell_router_harness::e2e::DEFAULT_CELL_PORTS
        .iter()
        .map(|(c, _)| *c)
        .collect();
    for cell in &cells {
        assert!(
            virtual_service.contains(&format!(
                "- match: [{{headers: {{x-cell-id: {{exact: {cell}}}}}}}]\n      route: [{{destination: {{host: api.{cell}.svc.cluster.local}}}}]"
            )),
            "VirtualService: {cell}"
        );
        assert!(
            http_route.contains(&format!(
                "- matches: [{{headers: [{{type: Exact, name: x-cell-id, value: {cell}}}]}}]\n      backendRefs: [{{name: api, namespace: {cell}, port: 80}}]"
            )),
            "HTTPRoute: {cell}"
        );
        // The cell's namespace lets the route name its Service.
        assert!(
            http_route.contains(&format!(
                "  name: cell-router-routes\n  namespace: {cell}\n"
            )),
            "ReferenceGrant: {cell}"
        );
    }
    assert_eq!(http_route.matches("backendRefs:").count(), cells.len());
    assert_eq!(http_route.matches("- matches:").count(), cells.len());
}

/// The cell id alphabet (mapping/SPEC.md): what the cell route's regex admits.
fn is_cell_id_shaped(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Cluster names of an Envoy config: `- name:` items of `clusters:`.
fn cluster_names(config: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_clusters: Option<usize> = None;
    for line in config.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed == "clusters:" {
            in_clusters = Some(indent);
            continue;
        }
        match in_clusters {
            Some(level) if indent < level || (indent == level && !trimmed.starts_with("- ")) => {
                in_clusters = None;
            }
            Some(level) if indent == level => {
                if let Some(name) = trimmed.strip_prefix("- name: ") {
                    names.push(name.trim_matches('"').to_string());
                }
            }
            _ => {}
        }
    }
    names
}

/// The safety of routing with `cluster_header` (envoy/README.md, "Routing"):
/// every gateway config routes its cells with the one guarded route, and
/// every cluster that is not a cell has a name no value the route accepts
/// can name, so a client cannot reach the sidecar (or any internal
/// cluster) through `x-cell-id` even where the filter is absent.
#[test]
fn no_client_header_can_name_a_cluster_that_is_not_a_cell() {
    const ROUTE: &str = "                  - name: x-cell-id
                    string_match: {safe_regex: {regex: \"[A-Za-z0-9._:-]+\"}}
                  - name: x-cell-id
                    string_match: {safe_regex: {regex: \".*[^A-Za-z0-9._:-].*\"}}
                    invert_match: true
                route: {cluster_header: x-cell-id}";
    let gateways = [
        "envoy/envoy.yaml",
        "envoy/envoy-native.yaml",
        "envoy/docker/envoy.yaml",
        "envoy/bench/plain.yaml",
        "envoy/bench/cell-router.yaml",
        "envoy/bench/cell-router-native.yaml",
        "envoy/bench/jwt-lua.yaml",
        "envoy/bench/trust-header.yaml",
    ];
    for path in gateways {
        let text = read(path);
        assert_eq!(text.matches(ROUTE).count(), 1, "{path}: the cell route");
        assert_eq!(
            text.matches("cluster_header:").count(),
            1,
            "{path}: one cluster_header route"
        );
        // No other route sends to a fixed cluster but the region routes: a
        // cell is reached through the guarded route only.
        let fixed = text.matches("route: {cluster: ").count();
        let regional = region_routes(&text);
        assert_eq!(
            fixed,
            regional.len(),
            "{path}: a fixed-cluster route that is not a region route"
        );
        let names = cluster_names(&text);
        let cells: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| is_cell_id_shaped(n))
            .collect();
        assert_eq!(
            cells,
            ["cell-a", "cell-b", "cell-c"],
            "{path}: a cluster whose name is a valid cell id is reachable by any client \
             that names it in x-cell-id; give every cluster that is not a cell a `|` \
             in its name (envoy/README.md, \"Routing\")"
        );
        for name in names.iter().filter(|n| !is_cell_id_shaped(n)) {
            assert!(name.contains('|'), "{path}: cluster {name}");
        }
        for region in &regional {
            let cluster = format!("region|{region}");
            assert!(names.contains(&cluster), "{path}: no cluster {cluster}");
        }
        if let Ok(config) = plugin_config_of(&text) {
            let sidecar = config["sidecar"]["cluster"].as_str().unwrap();
            assert!(!is_cell_id_shaped(sidecar), "{path}: {sidecar}");
            assert!(names.iter().any(|n| n == sidecar), "{path}: {sidecar}");
            if let Some(persisted) = config["sidecar"]["persisted"]["cluster"].as_str() {
                assert!(!is_cell_id_shaped(persisted), "{path}: {persisted}");
                assert!(names.iter().any(|n| n == persisted), "{path}: {persisted}");
            }
        }
    }
    // The parser sees clusters at all.
    assert_eq!(
        cluster_names(&read("envoy/envoy.yaml")),
        [
            "cellmap|sidecar",
            "cellmap|persisted",
            "region|us",
            "region|eu",
            "cell-a",
            "cell-b",
            "cell-c"
        ]
    );
    // And the alphabet is the mapping's: a cell id with `|` is refused.
    assert!(!is_cell_id_shaped("cellmap|sidecar"));
    assert!(is_cell_id_shaped("cellmap_sidecar"));
    let example = read("mapping/examples/snapshot.json");
    assert!(cell_router_mapping::Snapshot::parse(example.as_bytes()).is_ok());
    let internal = example.replace("\"cell-a\"", "\"cellmap|sidecar\"");
    let refused = cell_router_mapping::Snapshot::parse(internal.as_bytes())
        .map(|_| ())
        .expect_err("a snapshot naming cellmap|sidecar as a cell is refused");
    assert!(
        format!("{refused:?}").contains("cells[0].id"),
        "{refused:?}"
    );
}

/// The region routes of a gateway config (envoy/README.md, "Regions"), by
/// region id: each is a route on the exact `x-cell-region` value to cluster
/// `region|<id>`, and nothing else.
fn region_routes(config: &str) -> Vec<String> {
    let lines: Vec<&str> = config.lines().map(str::trim).collect();
    let mut regions = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(cluster) = line.strip_prefix("route: {cluster: ") else {
            continue;
        };
        let cluster = cluster.trim_end_matches('}').trim_matches('"');
        let region = cluster.strip_prefix("region|").unwrap_or_else(|| {
            panic!("fixed route to {cluster}: only region routes may name a cluster")
        });
        // - match: / prefix: "/" / headers: / - name: x-cell-region / string_match
        let matched = &lines[i.saturating_sub(5)..i];
        assert_eq!(
            matched,
            [
                "- match:",
                "prefix: \"/\"",
                "headers:",
                "- name: x-cell-region",
                &format!("string_match: {{exact: {region}}}"),
            ],
            "the route to {cluster}"
        );
        regions.push(region.to_string());
    }
    regions
}

fn shipped_yaml() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![repo_root().join("envoy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The filter picks the pool from `:path` as Envoy hands it, so every HTTP
/// connection manager shipped under envoy/ (gateways, benchmark configs,
/// the persisted-copy listener, the Istio patch) normalises it: dot
/// segments resolved, slashes merged, escaped slashes refused
/// (envoy/README.md, "Paths"). Without them `/voice/../sms/x` or `//voice`
/// would reach one pool by the prefix rule and another by the cell's reading.
#[test]
fn every_shipped_http_connection_manager_normalises_paths() {
    let mut managers = 0;
    for path in shipped_yaml() {
        let text = std::fs::read_to_string(&path).unwrap();
        let hcm = text.matches("v3.HttpConnectionManager").count();
        for setting in [
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: REJECT_REQUEST",
        ] {
            let uncommented = text.lines().filter(|l| l.trim() == setting).count();
            assert_eq!(uncommented, hcm, "{}: {setting}", path.display());
        }
        managers += hcm;
    }
    assert!(managers >= 12, "found only {managers} connection managers");
}

/// Every gateway config forwards to both example regions, names the same
/// regions, and is itself in one of them (its plugin config's `region`).
#[test]
fn every_gateway_routes_each_region_to_its_gateway() {
    for path in [
        "envoy/envoy.yaml",
        "envoy/envoy-native.yaml",
        "envoy/docker/envoy.yaml",
    ] {
        let text = read(path);
        let regions = region_routes(&text);
        assert_eq!(regions, ["us", "eu"], "{path}");
        let config = plugin_config_of(&text).unwrap();
        let region = config["region"].as_str().unwrap();
        assert!(
            regions.iter().any(|r| r == region),
            "{path}: region {region}"
        );
        // The filter's headers: x-cell-region is what the routes match.
        assert!(text.contains("- name: x-cell-region"), "{path}");
    }
    assert_eq!(istio_plugin_config()["region"], "us");
    // Istio: the same routes in the VirtualService, to hosts the
    // ServiceEntry gives clusters, with TLS to each.
    let virtual_service = read("envoy/istio/gateway-routes.yaml");
    let entries = read("envoy/istio/sidecar.yaml");
    for region in ["us", "eu"] {
        let host = format!("gateway.{region}.cell-router.internal");
        assert!(
            virtual_service.contains(&format!(
                "- match: [{{headers: {{x-cell-region: {{exact: {region}}}}}}}]\n      route: [{{destination: {{host: {host}}}}}]"
            )),
            "VirtualService: {region}"
        );
        assert!(
            entries.contains(&format!("\"{host}\"")),
            "ServiceEntry: {host}"
        );
        assert!(
            entries.contains(&format!(
                "  host: {host}\n  trafficPolicy:\n    tls: {{mode: SIMPLE"
            )),
            "DestinationRule: {host}"
        );
    }
}
