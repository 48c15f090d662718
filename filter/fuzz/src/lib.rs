//! What the filter's fuzz targets share: the fixed configuration (real test
//! keys from `tests/keys`, written by `examples/make_seeds.rs`), the clock,
//! and how an input becomes request headers.

use cell_router_filter::Config;

/// The clock of every target and of the seed tokens (2023-11-14).
pub const NOW: u64 = 1_700_000_000;

/// JWT mode: every algorithm with its real public key, issuer, audience,
/// nested tenant claim, header/query/cookie sources, a fallback snapshot with
/// an active, a draining and a disabled cell.
pub const JWT_CONFIG: &[u8] = include_bytes!("../fuzz_config.json");

/// trust_header mode over the same snapshot.
pub const TRUST_CONFIG: &[u8] = include_bytes!("../fuzz_config_trust.json");

/// Parses a fixed configuration; failing here is a broken checkout, not a
/// fuzz finding, so it aborts loudly.
pub fn fixed_config(bytes: &[u8]) -> Config {
    match Config::from_json(bytes) {
        Ok(config) => config,
        Err(e) => panic!("fixed fuzz config refused: {e}"),
    }
}

/// `name: value` lines (split at the first `": "`; a line without one is a
/// name with an empty value). Any bytes are allowed in both, so seeds stay
/// readable while the fuzzer is free to write NULs, CRs or invalid UTF-8.
pub fn header_lines(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    data.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.windows(2).position(|w| w == b": ") {
            Some(at) => (&line[..at], &line[at + 2..]),
            None => (line, &b""[..]),
        })
        .collect()
}
