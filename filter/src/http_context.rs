//! The HTTP context: one per request. Reads the request headers, asks
//! `decide` what to do, and applies it (headers set and removed, or a local
//! reply), counting the outcome. Only built for wasm.

use crate::decide::{self, Action, Outcome};
use crate::envoy_verify::{self, HostVerdict, SignatureHost};
use crate::hostcalls::{self, LogLevel, Map, status};
use crate::root_context::{ForeignCall, HostMetrics, Shared, log};
use std::cell::RefCell;
use std::rc::Rc;

/// Envoy's `verify_signature` foreign function (BoringSSL).
struct EnvoyCrypto<'s> {
    state: &'s mut ForeignCall,
}

impl SignatureHost for EnvoyCrypto<'_> {
    fn verify_signature(
        &mut self,
        hash: &str,
        public_key_der: &[u8],
        signature: &[u8],
        text: &[u8],
    ) -> HostVerdict {
        if *self.state == ForeignCall::Missing {
            return HostVerdict::Unavailable;
        }
        let arguments = envoy_verify::encode_arguments(hash, public_key_der, signature, text);
        match hostcalls::call_foreign_function("verify_signature", &arguments) {
            Ok(result) => match envoy_verify::decode_result(&result) {
                Some((valid, _)) => {
                    *self.state = ForeignCall::Available;
                    if valid {
                        HostVerdict::Valid
                    } else {
                        HostVerdict::Invalid
                    }
                }
                None => HostVerdict::Unavailable,
            },
            Err(status::NOT_FOUND) => {
                *self.state = ForeignCall::Missing;
                log(
                    LogLevel::Info,
                    "cell-router: host has no verify_signature; checking signatures in the VM",
                );
                HostVerdict::Unavailable
            }
            // The host refused the key or the arguments: the VM decides.
            Err(_) => HostVerdict::Unavailable,
        }
    }
}

/// Answers 503 (fail closed) when the filter cannot decide.
pub(crate) fn respond_503(details: &str, detail: &str) {
    let body = serde_json::json!({"error": "internal", "detail": detail}).to_string();
    if hostcalls::send_local_response(
        503,
        details,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .is_err()
    {
        log(
            LogLevel::Error,
            "cell-router: host refused the local response",
        );
    }
}

pub(crate) struct Filter {
    shared: Option<Rc<RefCell<Shared>>>,
}

impl Filter {
    pub fn new(shared: Option<Rc<RefCell<Shared>>>) -> Self {
        Filter { shared }
    }

    /// The request headers are in: true to let the request continue, false
    /// when the filter answered it.
    pub fn on_request_headers(&mut self) -> bool {
        // Fail closed: a filter without a configuration routes nothing.
        let Some(shared) = &self.shared else {
            respond_503(
                "cell_router_unconfigured",
                "the cell router is not configured",
            );
            return false;
        };
        let Ok(mut shared) = shared.try_borrow_mut() else {
            respond_503("cell_router_busy", "the cell router state is busy");
            return false;
        };
        let config = Rc::clone(&shared.config);
        let installed = shared.installed.clone();
        let raw = hostcalls::header_map(Map::RequestHeaders).unwrap_or_default();
        let headers = hostcalls::pairs(&raw);
        let mut clock = || hostcalls::now_nanos() / 1_000_000;
        let Shared {
            vm,
            metrics,
            verify_signature,
            unknown_kids,
            ..
        } = &mut *shared;
        let mut crypto = EnvoyCrypto {
            state: verify_signature,
        };
        let decision = decide::decide_with(
            &config,
            vm,
            &headers,
            &mut clock,
            installed.as_deref(),
            &mut crypto,
        );

        let sink = &mut HostMetrics;
        if let Some(hit) = decision.cache_hit {
            metrics.cache(sink, hit);
        }
        if let Some(by_host) = decision.verified_by_host {
            metrics.verified(sink, by_host);
        }
        metrics.outcome(sink, decision.outcome);
        // Keys fetched at run time: an unknown kid may be a new key.
        if decision.outcome == Outcome::Rejected(crate::token::Reason::UnknownKid)
            && let Some(jwt) = config.jwt()
            && let Some(kid) = crate::key_subscription::unknown_kid_of(jwt, &headers)
        {
            crate::key_subscription::note_unknown_kid(unknown_kids, kid);
        }

        // The decision, where access logs read it. A failed set only costs
        // the log its field: the request goes on.
        if config.filter_state {
            for (key, value) in
                decide::filter_state(&decision, installed.as_deref(), config.log_tenant)
            {
                let _ = hostcalls::set_property(key, value.as_bytes());
            }
        }
        // Client copies go whatever the answer, so nothing after the filter
        // (a cell, an access log's %REQ(X-CELL-ID)%) reads the client's choice.
        for name in &decision.remove {
            let _ = hostcalls::remove_header(Map::RequestHeaders, name);
        }

        match decision.action {
            Action::Continue { set } => {
                for (name, value) in set {
                    if hostcalls::replace_header(Map::RequestHeaders, name, value).is_err() {
                        // Without the cell header the request must not pass.
                        respond_503("cell_router_header_failed", "could not set the cell header");
                        return false;
                    }
                }
                // No `clear_route_cache` call: Envoy clears the route cache
                // itself when a plugin of ABI 0.2.1 or older (this one)
                // changes a request header; the foreign function is for
                // newer plugins, which it stopped doing that for
                // (envoyproxy/envoy #36671). It cost about 1.7 µs a request.
                true
            }
            Action::Respond(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                if hostcalls::send_local_response(
                    reply.status,
                    &reply.details,
                    &headers,
                    &reply.body,
                )
                .is_err()
                {
                    log(
                        LogLevel::Error,
                        "cell-router: host refused the local response",
                    );
                }
                false
            }
        }
    }
}
