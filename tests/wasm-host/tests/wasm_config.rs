//! What the real filter `.wasm` needs from its host, and how it treats its
//! configuration: bad configurations are refused whole.

use cell_router_kit::fixtures::{Config, bearer, snapshot, token};
use cell_router_kit::tokens::{Alg, Jwks};
use cell_router_wasm_host::{Host, Plugin};
use serde_json::json;

/// WASI functions Envoy 1.40 provides to proxy-wasm modules.
const ENVOY_WASI: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "path_open",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "random_get",
    "proc_exit",
];

#[test]
fn the_module_imports_only_what_envoy_provides() {
    let plugin = Plugin::filter().unwrap();
    assert_eq!(plugin.abi_version(), "proxy_abi_version_0_2_1");
    for import in plugin.imports() {
        let (module, name) = import.split_once('.').unwrap();
        let ok = match module {
            "env" => name.starts_with("proxy_"),
            "wasi_snapshot_preview1" => ENVOY_WASI.contains(&name),
            _ => false,
        };
        assert!(ok, "unexpected import {import}");
    }
    let exports = plugin.exports();
    for needed in [
        "memory",
        "proxy_on_memory_allocate",
        "_initialize",
        "proxy_on_request_headers",
    ] {
        assert!(
            exports.iter().any(|e| e == needed),
            "missing export {needed}"
        );
    }
}

#[test]
fn bad_configurations_are_refused() {
    let good = Config::jwt(&[Alg::RS256]).fallback(&snapshot(1));
    let mut broken_snapshot = snapshot(1);
    broken_snapshot.cells[0].shed_ratio = 2.0;
    let cases = [
        ("empty", String::new()),
        ("not json", "{".to_string()),
        ("unknown field", good.clone().set("colour", "blue").json()),
        (
            "alg none allowed",
            good.clone()
                .set("algorithms", json!(["RS256", "none"]))
                .json(),
        ),
        (
            "unknown algorithm",
            good.clone().set("algorithms", json!(["RS999"])).json(),
        ),
        ("no algorithms", good.clone().without("algorithms").json()),
        ("no jwks", good.clone().without("jwks").json()),
        (
            "no key for the algorithm",
            good.clone()
                .set("jwks", Jwks::new().with(Alg::ES256).to_json())
                .json(),
        ),
        (
            "no tenant claim",
            good.clone().without("tenant_claim").json(),
        ),
        (
            "uppercase header",
            good.clone().set("cell_header", "X-Cell-Id").json(),
        ),
        ("no mapping at all", Config::jwt(&[Alg::RS256]).json()),
        (
            "bad fallback snapshot",
            Config::jwt(&[Alg::RS256]).fallback(&broken_snapshot).json(),
        ),
        (
            "trust_header with jwt fields",
            Config::trust_header("x-tenant")
                .set("algorithms", json!(["RS256"]))
                .fallback(&snapshot(1))
                .json(),
        ),
        (
            "timeout shorter than the long-poll",
            good.clone()
                .sidecar_with(json!({"long_poll_s": 30, "timeout_ms": 1000}))
                .json(),
        ),
    ];
    for (what, config) in cases {
        let mut host = Host::new().unwrap();
        assert!(!host.try_configure(&config).unwrap(), "accepted: {what}");
    }
    let mut host = Host::new().unwrap();
    assert!(host.try_configure(good.json()).unwrap());
}

#[test]
fn a_refused_update_leaves_the_running_configuration_alone() {
    let mut host = Host::new().unwrap();
    host.configure(Config::jwt(&[Alg::HS256]).fallback(&snapshot(1)).json())
        .unwrap();
    assert!(!host.try_configure("{\"colour\": 1}").unwrap());
    let t = token(Alg::HS256, host.now_unix(), "acme");
    let r = host
        .request(&[(":path", "/"), ("authorization", &bearer(&t))])
        .unwrap();
    assert!(r.forwarded());
    assert_eq!(r.header("x-cell-snapshot"), Some("1"));
}

#[test]
fn an_unconfigured_filter_fails_closed() {
    let mut host = Host::new().unwrap();
    let r = host
        .request(&[(":path", "/"), ("x-cell-id", "cell-a")])
        .unwrap();
    assert_eq!(r.status(), Some(503));
    assert!(!r.forwarded());
}

#[test]
fn custom_header_names_are_used() {
    let config = Config::jwt(&[Alg::HS256])
        .fallback(&snapshot(4))
        .set("cell_header", "x-route-cell")
        .set("version_header", "x-route-version")
        .set("token", json!({"header": "x-token", "prefix": ""}));
    let mut host = Host::new().unwrap();
    host.configure(config.json()).unwrap();
    let t = token(Alg::HS256, host.now_unix(), "acme");
    let r = host
        .request(&[
            (":path", "/"),
            ("x-token", t.as_str()),
            ("x-route-cell", "spoof"),
        ])
        .unwrap();
    assert!(r.forwarded(), "{}", r.json());
    assert!(
        r.header("x-route-cell")
            .is_some_and(|c| c.starts_with("cell-"))
    );
    assert_eq!(r.header("x-route-version"), Some("4"));
    assert!(r.header("x-cell-id").is_none());
}
