//! Wall-clock time as RFC 3339 UTC, without a date-time crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-22T05:01:23Z` from the system clock.
pub fn utc_now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339_from_unix(secs)
}

/// Formats Unix milliseconds as RFC 3339 UTC, with `.mmm` when not whole
/// seconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let whole = rfc3339_from_unix(ms / 1000);
    match ms % 1000 {
        0 => whole,
        frac => format!("{}.{frac:03}Z", whole.trim_end_matches('Z')),
    }
}

/// Formats Unix seconds as RFC 3339 UTC (civil-from-days, proleptic Gregorian).
pub fn rfc3339_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_from_unix(1_795_323_683), "2026-11-22T05:01:23Z");
        // The largest u64 does not overflow (days fit an i64).
        assert!(rfc3339_from_unix(u64::MAX).ends_with('Z'));
        assert_eq!(rfc3339_ms(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_767_225_600_050), "2026-01-01T00:00:00.050Z");
    }
}
