//! Recovery ramps (`SPEC.md`, "Ramps"): a cell back from `disabled` takes a
//! share of its tenants' requests that rises from `from_percent` to 100 %
//! over a window, computed by every gateway from its own clock; the rest go
//! to the cell's failover.

use crate::hash::BASIS_POINTS;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The longest ramp: 30 days.
pub const MAX_RAMP_DURATION_S: u64 = 30 * 86_400;
/// The latest start accepted: 9999-12-31T23:59:59Z.
pub const MAX_UNIX_S: u64 = 253_402_300_799;
/// Aggression bounds (outside them the curve is a step anyway).
pub const MIN_AGGRESSION: f64 = 0.01;
pub const MAX_AGGRESSION: f64 = 100.0;
/// Added before rounding the slow-start curve down, so that products that are
/// integers in exact arithmetic (`10000 · 0.1²`) round to that integer
/// whatever the last bit of `pow` (SPEC "Ramps").
pub const CURVE_EPSILON: f64 = 1e-6;

/// A point in time as written in a snapshot: whole Unix seconds, or an
/// RFC 3339 string (kept as written, parsed by validation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timestamp {
    Unix(u64),
    Rfc3339(String),
}

impl Timestamp {
    /// Milliseconds since the Unix epoch (fractions below a millisecond are
    /// dropped).
    pub fn to_unix_ms(&self) -> Result<u64, String> {
        match self {
            Timestamp::Unix(s) if *s <= MAX_UNIX_S => Ok(s * 1000),
            Timestamp::Unix(s) => Err(format!(
                "{s} is after 9999-12-31T23:59:59Z ({MAX_UNIX_S}); give Unix seconds"
            )),
            Timestamp::Rfc3339(text) => parse_rfc3339_ms(text),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timestamp::Unix(s) => write!(f, "{s}"),
            Timestamp::Rfc3339(text) => f.write_str(text),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Timestamp::Unix(s) => serializer.serialize_u64(*s),
            Timestamp::Rfc3339(text) => serializer.serialize_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("whole Unix seconds ≥ 0 or an RFC 3339 string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp::Unix(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Ok(Timestamp::Rfc3339(v.to_string()))
            }
        }
        deserializer.deserialize_any(TimestampVisitor)
    }
}

/// How the share rises over the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Curve {
    /// Straight from `from_percent` to 100 % (integer arithmetic).
    Linear,
    /// Envoy's slow start: progress^(1/aggression). 1 is linear; above 1
    /// more traffic early, below 1 less.
    Aggression(f64),
}

impl Serialize for Curve {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Curve::Linear => serializer.serialize_str("linear"),
            Curve::Aggression(a) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("aggression", a)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Curve {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CurveVisitor;
        impl<'de> Visitor<'de> for CurveVisitor {
            type Value = Curve;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""linear" or {"aggression": number}"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Curve, E> {
                match v {
                    "linear" => Ok(Curve::Linear),
                    other => Err(E::custom(format!(
                        r#"unknown curve {other:?}; expected "linear" or {{"aggression": number}}"#
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Curve, A::Error> {
                let mut aggression = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "aggression" if aggression.is_none() => {
                            aggression = Some(map.next_value::<f64>()?);
                        }
                        "aggression" => return Err(de::Error::duplicate_field("aggression")),
                        other => return Err(de::Error::unknown_field(other, &["aggression"])),
                    }
                }
                aggression
                    .map(Curve::Aggression)
                    .ok_or_else(|| de::Error::missing_field("aggression"))
            }
        }
        deserializer.deserialize_any(CurveVisitor)
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// A ramp as written on a cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampDoc {
    /// When the ramp starts.
    pub start: Timestamp,
    /// How long it lasts, whole seconds, 1 … 30 days.
    pub duration_s: u64,
    /// The share at (and before) the start, 0 … 100.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub from_percent: f64,
    /// `linear` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<Curve>,
}

/// A validated ramp.
#[derive(Clone, Debug, PartialEq)]
pub struct Ramp {
    /// As written (for the owned form and for explanations).
    pub doc: RampDoc,
    pub start_ms: u64,
    pub duration_ms: u64,
    /// `from_percent` in basis points.
    pub from_bp: u16,
    /// `1 / aggression`; `None` for the linear curve (and aggression 1).
    pub exponent: Option<f64>,
}

impl Ramp {
    /// Validates a ramp; the error names the field (`start`, `duration_s`,
    /// `from_percent`, `curve`) and why.
    pub fn from_doc(doc: &RampDoc) -> Result<Ramp, (&'static str, String)> {
        let start_ms = doc.start.to_unix_ms().map_err(|e| ("start", e))?;
        if doc.duration_s == 0 || doc.duration_s > MAX_RAMP_DURATION_S {
            return Err((
                "duration_s",
                format!(
                    "must be between 1 and {MAX_RAMP_DURATION_S} seconds (30 days), got {}",
                    doc.duration_s
                ),
            ));
        }
        if !doc.from_percent.is_finite() || !(0.0..=100.0).contains(&doc.from_percent) {
            return Err((
                "from_percent",
                format!("must be between 0 and 100, got {}", doc.from_percent),
            ));
        }
        let exponent = match doc.curve {
            None | Some(Curve::Linear) => None,
            Some(Curve::Aggression(a)) => {
                if !a.is_finite() || !(MIN_AGGRESSION..=MAX_AGGRESSION).contains(&a) {
                    return Err((
                        "curve",
                        format!(
                            "aggression must be between {MIN_AGGRESSION} and {MAX_AGGRESSION}, got {a}"
                        ),
                    ));
                }
                if a == 1.0 { None } else { Some(1.0 / a) }
            }
        };
        Ok(Ramp {
            doc: doc.clone(),
            start_ms,
            duration_ms: doc.duration_s * 1000,
            from_bp: crate::hash::ratio_to_basis_points(doc.from_percent / 100.0),
            exponent,
        })
    }

    /// When the cell takes all its traffic again (Unix ms).
    pub fn end_ms(&self) -> u64 {
        self.start_ms.saturating_add(self.duration_ms)
    }

    /// The share of the cell's requests it keeps at `now_ms` (Unix ms), in
    /// basis points: `from` before the start, 10,000 from the end on, and in
    /// between `from + ⌊(10000 − from) · e / D⌋` (linear, integers) or
    /// `from + ⌊(10000 − from) · (e / D)^(1/a) + 10⁻⁶⌋` (aggression `a`,
    /// doubles), with `e` the milliseconds since the start and `D` the
    /// duration.
    pub fn share_bp(&self, now_ms: u64) -> u16 {
        if now_ms < self.start_ms {
            return self.from_bp;
        }
        let elapsed = now_ms - self.start_ms;
        if elapsed >= self.duration_ms || self.duration_ms == 0 {
            return BASIS_POINTS;
        }
        let rest = BASIS_POINTS.saturating_sub(self.from_bp);
        let gained = match self.exponent {
            // e < D ≤ 2.6e9 and rest ≤ 10^4: the product fits easily.
            None => u64::from(rest) * elapsed / self.duration_ms,
            Some(exponent) => {
                let progress = elapsed as f64 / self.duration_ms as f64;
                (f64::from(rest) * progress.powf(exponent) + CURVE_EPSILON).floor() as u64
            }
        };
        let gained = u16::try_from(gained).unwrap_or(rest).min(rest);
        self.from_bp + gained
    }

    /// Whether the ramp still holds traffic back at `now_ms`.
    pub fn in_force(&self, now_ms: u64) -> bool {
        self.share_bp(now_ms) < BASIS_POINTS
    }
}

/// Parses an RFC 3339 date-time (`2026-01-01T00:00:00Z`,
/// `2026-01-01T01:30:00.250+01:30`) to Unix milliseconds. `T`/`t` and
/// `Z`/`z` in either case; fractions of any length, cut to milliseconds; no
/// leap second (`:60`); not before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{text:?} is not an RFC 3339 date-time ({why})");
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0u64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let expect = |at: usize, what: &[u8]| b.get(at).is_some_and(|c| what.contains(c));
    let (Some(year), Some(month), Some(day)) = (digits(0, 4), digits(5, 2), digits(8, 2)) else {
        return Err(bad("expected YYYY-MM-DD"));
    };
    if !expect(4, b"-") || !expect(7, b"-") || !expect(10, b"Tt") {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11, 2), digits(14, 2), digits(17, 2))
    else {
        return Err(bad("expected HH:MM:SS"));
    };
    if !expect(13, b":") || !expect(16, b":") {
        return Err(bad("expected HH:MM:SS"));
    }
    let mut at = 19;
    let mut millis = 0u64;
    if expect(at, b".") {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + u64::from(b.get(at).copied().unwrap_or(b'0') - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(bad("no digits after the decimal point"));
        }
        for _ in (at - start)..3 {
            millis *= 10;
        }
    }
    let offset_s: i64 = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() && expect(at + 3, b":") => {
            let (Some(oh), Some(om)) = (digits(at + 1, 2), digits(at + 4, 2)) else {
                return Err(bad("bad offset"));
            };
            if oh > 23 || om > 59 {
                return Err(bad("offset out of range"));
            }
            let s = (oh * 3600 + om * 60) as i64;
            if *sign == b'-' { -s } else { s }
        }
        _ => return Err(bad("expected Z or an offset ±HH:MM at the end")),
    };
    if !(1..=12).contains(&month) {
        return Err(bad("month out of range"));
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > month_days {
        return Err(bad("day out of range"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("time out of range (no leap seconds)"));
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let local = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    let unix = local - offset_s;
    if unix < 0 {
        return Err(bad("before 1970-01-01T00:00:00Z"));
    }
    Ok(unix as u64 * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(doc: serde_json::Value) -> Ramp {
        let doc: RampDoc = serde_json::from_value(doc).unwrap();
        Ramp::from_doc(&doc).unwrap()
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z").unwrap(),
            951_782_400_000
        );
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000
        );
        assert_eq!(
            parse_rfc3339_ms("2026-01-01t01:30:00.25+01:30").unwrap(),
            1_767_225_600_250
        );
        assert_eq!(
            parse_rfc3339_ms("2025-12-31T23:00:00.123456789-01:00").unwrap(),
            1_767_225_600_123
        );
        assert_eq!(
            parse_rfc3339_ms("9999-12-31T23:59:59Z").unwrap(),
            MAX_UNIX_S * 1000
        );
        for bad in [
            "",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-01-01 00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T23:59:60Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+0100",
            "2026-01-01T00:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+00:01",
            "２０２６-01-01T00:00:00Z",
            "+2026-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn linear_share_is_exact_integer_arithmetic() {
        let r = ramp(serde_json::json!({"start": 1000, "duration_s": 600}));
        let start = 1_000_000;
        assert_eq!(r.share_bp(0), 0);
        assert_eq!(r.share_bp(start - 1), 0);
        assert_eq!(r.share_bp(start), 0);
        assert_eq!(r.share_bp(start + 60), 1); // 10000·60/600000 = 1
        assert_eq!(r.share_bp(start + 59), 0);
        assert_eq!(r.share_bp(start + 300_000), 5000);
        assert_eq!(r.share_bp(start + 599_999), 9999);
        assert_eq!(r.share_bp(start + 600_000), 10_000);
        assert_eq!(r.share_bp(u64::MAX), 10_000);

        let from = ramp(serde_json::json!({"start": 1000, "duration_s": 10, "from_percent": 20}));
        assert_eq!(from.share_bp(0), 2000);
        assert_eq!(from.share_bp(start + 5000), 6000);
        assert_eq!(from.share_bp(start + 10_000), 10_000);
    }

    #[test]
    fn aggression_follows_envoys_slow_start_formula() {
        let fast =
            ramp(serde_json::json!({"start": 0, "duration_s": 100, "curve": {"aggression": 2}}));
        // (1/4)^(1/2) = 1/2.
        assert_eq!(fast.share_bp(25_000), 5000);
        let slow =
            ramp(serde_json::json!({"start": 0, "duration_s": 100, "curve": {"aggression": 0.5}}));
        // (1/2)^2 = 1/4.
        assert_eq!(slow.share_bp(50_000), 2500);
        // Aggression 1 is the linear curve, computed in integers.
        let one =
            ramp(serde_json::json!({"start": 0, "duration_s": 3, "curve": {"aggression": 1.0}}));
        assert_eq!(one.exponent, None);
        assert_eq!(one.share_bp(1000), 3333);
        // Monotone in time for every curve.
        for r in [&fast, &slow, &one] {
            let mut last = 0;
            for t in (0..=110_000).step_by(7) {
                let s = r.share_bp(t);
                assert!(s >= last, "share fell at {t}");
                last = s;
            }
            assert_eq!(last, 10_000);
        }
    }

    #[test]
    fn validation_names_the_field() {
        let check = |doc: serde_json::Value, field: &str| {
            let doc: RampDoc = serde_json::from_value(doc).unwrap();
            assert_eq!(Ramp::from_doc(&doc).unwrap_err().0, field);
        };
        check(
            serde_json::json!({"start": 0, "duration_s": 0}),
            "duration_s",
        );
        check(
            serde_json::json!({"start": 0, "duration_s": MAX_RAMP_DURATION_S + 1}),
            "duration_s",
        );
        check(
            serde_json::json!({"start": 0, "duration_s": 1, "from_percent": 100.5}),
            "from_percent",
        );
        check(
            serde_json::json!({"start": 0, "duration_s": 1, "curve": {"aggression": 0}}),
            "curve",
        );
        check(
            serde_json::json!({"start": MAX_UNIX_S + 1, "duration_s": 1}),
            "start",
        );
        check(
            serde_json::json!({"start": "yesterday", "duration_s": 1}),
            "start",
        );
        for refused in [
            serde_json::json!({"start": -1, "duration_s": 1}),
            serde_json::json!({"start": 1.5, "duration_s": 1}),
            serde_json::json!({"start": 0, "duration_s": 1, "curve": "exponential"}),
            serde_json::json!({"start": 0, "duration_s": 1, "curve": {"aggression": 2, "x": 1}}),
            serde_json::json!({"start": 0, "duration_s": 1, "curve": {}}),
            serde_json::json!({"start": 0, "duration_s": 1, "colour": 1}),
            serde_json::json!({"duration_s": 1}),
        ] {
            assert!(
                serde_json::from_value::<RampDoc>(refused.clone()).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn doc_round_trips_as_written() {
        for text in [
            r#"{"start":1767225600,"duration_s":600}"#,
            r#"{"start":"2026-01-01T00:00:00Z","duration_s":600,"from_percent":10.0,"curve":{"aggression":1.5}}"#,
            r#"{"start":0,"duration_s":1,"curve":"linear"}"#,
        ] {
            let doc: RampDoc = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&doc).unwrap(), text);
        }
    }
}
