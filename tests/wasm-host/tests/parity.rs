//! The same scenarios twice, as Coraza does: natively against the filter's
//! core (`cell_router_filter::decide`) and through the real `.wasm` in the
//! wasmtime host. Both must answer every request alike (status, cell, the
//! reason in the body), so a difference between the core and its glue shows
//! up here rather than in Envoy.

use cell_router_filter::decide::{Action, Installed, VmKeys, VmState, decide};
use cell_router_kit::fixtures::{
    Config, bearer, cell, disabled, draining, parsed, snapshot_with, token_builder, with_move,
    with_override,
};
use cell_router_kit::tokens::Alg;
use cell_router_mapping::SnapshotDoc;
use cell_router_wasm_host::Host;

/// What a request came to, in terms both runs can produce.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Forwarded { cell: String },
    Answered { status: u16, error: String },
}

fn scenario_snapshot() -> SnapshotDoc {
    let doc = snapshot_with(
        3,
        vec![
            cell("cell-a"),
            cell("cell-b"),
            draining("cell-drain", 1.0, 9),
            disabled("cell-off", Some("cell-b")),
            disabled("cell-gone", None),
        ],
    );
    let doc = with_override(doc, "pinned", "cell-a");
    let doc = with_override(doc, "draining", "cell-drain");
    let doc = with_override(doc, "failing-over", "cell-off");
    let doc = with_override(doc, "down", "cell-gone");
    with_move(doc, "moving", "cell-a", "cell-b", 100.0)
}

fn native_error(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Answered { error, .. } => error.clone(),
        Verdict::Forwarded { .. } => String::new(),
    }
}

fn error_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("<no error field in {:?}>", String::from_utf8_lossy(body)))
}

/// The requests: every tenant of the scenario with a good token, plus the
/// ways a token goes wrong, each with a spoofed cell header.
/// Each case: its name, the tenant a good token carries (None for the bad
/// ones), and its headers.
type Case = (String, Option<&'static str>, Vec<(String, String)>);

fn requests(now: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    let tenants = [
        "pinned",
        "draining",
        "failing-over",
        "down",
        "moving",
        "t-1",
        "t-2",
        "t-3",
        "t-4",
    ];
    for (i, tenant) in tenants.iter().enumerate() {
        let alg = [Alg::RS256, Alg::ES256, Alg::HS256][i % 3];
        let token = token_builder(alg, now, tenant).sign();
        cases.push((
            format!("{tenant} ({})", alg.name()),
            Some(*tenant),
            vec![
                ("authorization".into(), bearer(&token)),
                ("x-cell-id".into(), "cell-gone".into()),
            ],
        ));
    }
    let bad = [
        (
            "expired",
            token_builder(Alg::RS256, now, "t-1")
                .issued_at(now - 7200)
                .expires_at(now - 3600)
                .sign(),
        ),
        (
            "wrong issuer",
            token_builder(Alg::RS256, now, "t-1")
                .issuer("https://elsewhere")
                .sign(),
        ),
        (
            "wrong audience",
            token_builder(Alg::ES256, now, "t-1")
                .audience("someone-else")
                .sign(),
        ),
        (
            "bad signature",
            token_builder(Alg::RS256, now, "t-1")
                .signed_by_other_key()
                .sign(),
        ),
        ("not a token", "abc.def".to_string()),
    ];
    for (what, token) in bad {
        cases.push((
            what.to_string(),
            None,
            vec![
                ("authorization".into(), bearer(&token)),
                ("x-cell-id".into(), "cell-a".into()),
            ],
        ));
    }
    cases.push((
        "no token".into(),
        None,
        vec![("x-cell-id".into(), "cell-a".into())],
    ));
    cases
}

#[test]
fn the_core_and_the_wasm_decide_every_request_alike() {
    let doc = scenario_snapshot();
    let config_json = Config::jwt(&[Alg::RS256, Alg::ES256, Alg::HS256])
        .fallback(&doc)
        .json();

    let mut host = Host::new().unwrap();
    host.configure(&config_json).unwrap();
    let now = host.now_unix();

    let mut config = cell_router_filter::Config::from_json(config_json.as_bytes()).unwrap();
    let installed = config.fallback_snapshot.take().map(Installed::new);
    let mut vm = VmState::new(&config, VmKeys::fixed(7));

    // The oracle for good tokens: the mapping library's routing function
    // (every draw in this scenario is certain: shed 100 %, move 100 %).
    let mapping = parsed(&doc);
    let mut forwarded = 0;
    let mut bad_tokens = 0;
    for (what, tenant, headers) in requests(now) {
        let mut all = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), "/v1/messages".to_string()),
            (":authority".to_string(), "api.example".to_string()),
        ];
        all.extend(headers);

        let decision = decide(
            &config,
            &mut vm,
            &all,
            &mut || now * 1000,
            installed.as_ref(),
        );
        let native = match decision.action {
            Action::Continue { set } => Verdict::Forwarded {
                cell: set
                    .iter()
                    .find(|(name, _)| *name == "x-cell-id")
                    .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default(),
            },
            Action::Respond(reply) => Verdict::Answered {
                status: reply.status as u16,
                error: error_of(&reply.body),
            },
        };

        let reply = host.request(&all).unwrap();
        let wasm = match reply.status() {
            None => Verdict::Forwarded {
                cell: reply.cell().unwrap_or_default().to_string(),
            },
            Some(status) => Verdict::Answered {
                status,
                error: error_of(reply.body()),
            },
        };
        assert_eq!(native, wasm, "{what}: core and .wasm disagree");
        match tenant {
            Some(tenant) => {
                let draws = cell_router_mapping::Draws::unshed(tenant.as_bytes(), now * 1000);
                let resolution = mapping.resolve(tenant.as_bytes(), &draws);
                let expected = match resolution.routed_cell() {
                    Some(index) => Verdict::Forwarded {
                        cell: mapping
                            .cell(index)
                            .map(|c| c.id.clone())
                            .unwrap_or_default(),
                    },
                    None => Verdict::Answered {
                        status: 503,
                        error: native_error(&native),
                    },
                };
                assert_eq!(native, expected, "{what}: not what the mapping says");
                if matches!(native, Verdict::Forwarded { .. }) {
                    forwarded += 1;
                }
            }
            None => {
                // 403 for a token valid but not for us (audience), as jwt_authn.
                assert!(
                    matches!(
                        &native,
                        Verdict::Answered {
                            status: 401 | 403,
                            ..
                        }
                    ),
                    "{what}: {native:?}"
                );
                bad_tokens += 1;
            }
        }
    }
    // pinned, failing-over (to cell-b), moving, and slot tenants on active cells.
    assert!(forwarded >= 3, "forwarded only {forwarded}");
    assert_eq!(bad_tokens, 6);
}
