//! The per-request decision with arbitrary header byte pairs, in JWT and
//! trust_header mode, against a snapshot with active, draining and disabled
//! cells. Whatever comes in: the answer is a routed request carrying the
//! router's own cell and version headers (every client copy removed), or a
//! local 401/403/503 with a JSON body (or the readiness answer).
#![no_main]

use cell_router_filter::decide::{Action, Outcome, VmKeys, VmState, decide};
use cell_router_filter::{Config, Installed};
use cell_router_filter_fuzz::{JWT_CONFIG, NOW, TRUST_CONFIG, fixed_config, header_lines};
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

struct Router {
    config: Config,
    installed: Option<Installed>,
    vm: Mutex<VmState>,
}

fn router(bytes: &[u8]) -> Router {
    let mut config = fixed_config(bytes);
    let installed = config.fallback_snapshot.take().map(Installed::new);
    let vm = Mutex::new(VmState::new(&config, VmKeys::fixed(9)));
    Router {
        config,
        installed,
        vm,
    }
}

static JWT: OnceLock<Router> = OnceLock::new();
static TRUST: OnceLock<Router> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let router = if mode % 2 == 0 {
        JWT.get_or_init(|| router(JWT_CONFIG))
    } else {
        TRUST.get_or_init(|| router(TRUST_CONFIG))
    };
    let headers = header_lines(rest);
    let Ok(mut vm) = router.vm.lock() else { return };
    // The VM's token cache persists across inputs, as in a real worker.
    let decision = decide(
        &router.config,
        &mut vm,
        &headers,
        &mut || NOW * 1000,
        router.installed.as_ref(),
    );

    let config = &router.config;
    for ours in [&config.cell_header, &config.version_header] {
        let sent = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(ours.as_bytes()));
        assert_eq!(
            sent,
            decision.remove.contains(&ours.as_str()),
            "client copy of {ours} not removed"
        );
    }
    match &decision.action {
        Action::Continue { set } => {
            let Outcome::Routed { cell, .. } = decision.outcome else {
                panic!("continued without a route: {:?}", decision.outcome);
            };
            let snapshot = router.installed.as_ref().map(Installed::snapshot);
            assert!(
                snapshot.is_some_and(|s| s.cell_index(cell).is_some()),
                "unknown cell {cell}"
            );
            assert_eq!(
                decision.set_header(&config.cell_header),
                Some(cell.as_bytes())
            );
            assert!(decision.set_header(&config.version_header).is_some());
            assert_eq!(set.len(), 2);
            assert!(decision.tenant.as_ref().is_some_and(|t| !t.is_empty()));
        }
        Action::Respond(reply) if matches!(decision.outcome, Outcome::Readiness { .. }) => {
            // The readiness path: 200 or 503, no token work, nothing routed.
            assert!(matches!(reply.status, 200 | 503), "status {}", reply.status);
            assert!(decision.tenant.is_none());
        }
        Action::Respond(reply) => {
            assert!(
                matches!(reply.status, 401 | 403 | 503),
                "status {}",
                reply.status
            );
            assert!(reply.error_code().is_some(), "no JSON error body");
            assert!(decision.routed_cell().is_none());
        }
    }
});
