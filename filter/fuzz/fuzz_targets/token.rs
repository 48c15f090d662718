//! Token bytes → extraction (header, query parameter, cookie), verification
//! against real keys of every algorithm, and the tenant claim. The first
//! byte picks where the token is carried; the rest is the token.
#![no_main]

use cell_router_filter::config::Auth;
use cell_router_filter::token::{self, check_tenant};
use cell_router_filter_fuzz::{JWT_CONFIG, NOW, fixed_config};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static CONFIG: OnceLock<cell_router_filter::Config> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let config = CONFIG.get_or_init(|| fixed_config(JWT_CONFIG));
    let Auth::Jwt(jwt) = &config.auth else {
        panic!("the fixed config is in JWT mode");
    };
    let Some((&place, rest)) = data.split_first() else {
        return;
    };
    let (name, prefix): (&[u8], &[u8]) = match place % 4 {
        0 => (b"authorization", b"Bearer "),
        1 => (b":path", b"/v1?access_token="),
        2 => (b"cookie", b"session="),
        _ => (b"authorization", b""),
    };
    let value = [prefix, rest].concat();
    let headers: [(&[u8], &[u8]); 2] = [(b":path", b"/v1"), (name, &value)];
    let headers = if place % 4 == 1 {
        &headers[1..]
    } else {
        &headers[..]
    };

    let Ok(token) = token::extract(&jwt.source, headers) else {
        return;
    };
    // Time checks on both sides of the seed tokens' window. The clock is the
    // host's (a real time, far below jwt-simple's 2^32 s fixed-point limit),
    // never attacker input, so it stays in a realistic range.
    let at = [NOW, NOW + 3600, NOW - 3600, NOW + 60, NOW + 3661];
    for now in at.into_iter().take(if place & 4 == 0 { 1 } else { 5 }) {
        if let Ok(verified) = token::verify(jwt, config.max_tenant_bytes, &token, now) {
            // Whatever was accepted is a usable tenant id.
            assert!(check_tenant(&verified.tenant, config.max_tenant_bytes, "tenant").is_ok());
            if let (Some(from), Some(exp)) = (verified.valid_from, verified.expires_at) {
                assert!(
                    from <= exp.saturating_add(2 * jwt.clock_skew_s),
                    "valid window inverted"
                );
            }
        }
    }
});
