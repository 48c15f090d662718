//! Plugin configuration bytes → parse and validate. Envoy hands the filter
//! this document in on_configure; a panic there fails the VM. An accepted
//! config must also be usable: build the VM state and decide one request.
#![no_main]

use cell_router_filter::decide::{VmKeys, VmState, decide};
use cell_router_filter::{Config, Installed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut config) = Config::from_json(data) else {
        return;
    };
    let installed = config.fallback_snapshot.take().map(Installed::new);
    let mut vm = VmState::new(&config, VmKeys::fixed(1));
    let headers: [(&[u8], &[u8]); 2] = [(b":path", b"/"), (b"authorization", b"Bearer x.y.z")];
    let decision = decide(
        &config,
        &mut vm,
        &headers,
        &mut || cell_router_filter_fuzz::NOW * 1000,
        installed.as_ref(),
    );
    if let Some(reply) = decision.reply() {
        assert!(
            matches!(reply.status, 401 | 403 | 503),
            "status {}",
            reply.status
        );
    }
});
