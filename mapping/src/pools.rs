//! Service pools and regions (`SPEC.md`, "Format 2"): which pool a request
//! belongs to (by `:authority` and `:path`), and the owned document types of
//! a format-2 snapshot.
//!
//! Pool selection is normative: the filter, the native module and
//! `cellmap route --path/--authority` all call [`crate::Snapshot::pool_for`],
//! and `tests/vectors_check.py` reimplements it.

use crate::ramp::RampDoc;
use crate::snapshot::{CellDoc, CellState, HashDoc, MoveDoc};
use crate::table::TenantTable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The snapshot format with pools and regions.
pub const FORMAT_POOLS: u8 = 2;
/// Pools in one snapshot (each has a slot table per region).
pub const MAX_POOLS: usize = 64;
/// Regions in one snapshot (a region index fits a byte, with room to spare
/// in the u16 region table).
pub const MAX_REGIONS: usize = 255;
/// `path_prefixes` and `authorities` entries per pool: bounds the work of
/// selecting a pool for every request.
pub const MAX_MATCH_ENTRIES: usize = 64;
/// Longest path prefix.
pub const MAX_PREFIX_BYTES: usize = 1024;
/// Longest authority (a DNS name is at most 253 characters).
pub const MAX_AUTHORITY_BYTES: usize = 253;
/// The id of the implicit pool and region of a format-1 snapshot.
pub const DEFAULT_ID: &str = "default";

/// A region (format 2; a format-1 snapshot has one implicit region,
/// [`DEFAULT_ID`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub id: String,
}

/// Which requests a pool takes (`match` in the document), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchRule {
    /// Lowercase, as written (`/voice`, `/api/v2`, or `/`).
    pub path_prefixes: Vec<String>,
    /// Lowercase host names without a port.
    pub authorities: Vec<String>,
}

impl MatchRule {
    /// Whether a request is taken: (no authorities, or the authority's host
    /// listed) and (no prefixes, or one matches). `host` is the authority
    /// without its port ([`host_of`]), in any case.
    pub fn matches(&self, host: &[u8], path: &[u8]) -> bool {
        (self.authorities.is_empty()
            || self
                .authorities
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(host)))
            && (self.path_prefixes.is_empty()
                || self
                    .path_prefixes
                    .iter()
                    .any(|p| prefix_matches(p.as_bytes(), path)))
    }
}

/// A validated pool: its match rule, one slot table per region, and its
/// overrides, pins and moves.
#[derive(Clone, Debug)]
pub struct Pool {
    pub id: String,
    /// `None`: the default pool, which takes every request.
    pub match_rule: Option<MatchRule>,
    pub(crate) slot_tables: Vec<Vec<u16>>,
    pub(crate) tenants: TenantTable,
    pub(crate) moves: Vec<crate::snapshot::Move>,
}

impl Pool {
    /// The pool's slot table for a region (indexes into the snapshot's
    /// cells); empty for a region index out of range.
    pub fn slot_table(&self, region: u16) -> &[u16] {
        self.slot_tables
            .get(usize::from(region))
            .map_or(&[], Vec::as_slice)
    }

    /// Every region's slot table, in region order.
    pub fn slot_tables(&self) -> &[Vec<u16>] {
        &self.slot_tables
    }

    /// The pool's overrides, pins and moves (values: cell indexes for
    /// overrides and pins, indexes into [`Self::moves`] for moves).
    pub fn tenant_table(&self) -> &TenantTable {
        &self.tenants
    }

    pub fn moves(&self) -> &[crate::snapshot::Move] {
        &self.moves
    }
}

/// The host of an authority as pool selection compares it: ASCII
/// lowercase, a trailing `:port` (a colon followed only by digits) removed.
/// `[::1]:8080` gives `[::1]`; `[::1]` stays (it ends in `]`).
pub fn normalise_authority(authority: &[u8]) -> Vec<u8> {
    host_of(authority).to_ascii_lowercase()
}

/// The authority without a trailing `:port`, case kept (selection compares
/// case-insensitively, without allocating).
pub fn host_of(authority: &[u8]) -> &[u8] {
    match authority.iter().rposition(|&b| b == b':') {
        Some(colon)
            if authority
                .get(colon + 1..)
                .is_some_and(|port| port.iter().all(u8::is_ascii_digit)) =>
        {
            authority.get(..colon).unwrap_or(authority)
        }
        _ => authority,
    }
}

/// The path part that selection looks at: up to the first `?` or `#`.
fn path_only(path: &[u8]) -> &[u8] {
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

/// Whether a validated prefix (`/` or `/a/b`, lowercase) matches a path:
/// the path's first segments equal the prefix's, each path segment cut at
/// its first `;` and compared ASCII-case-insensitively.
pub fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    let (Some(prefix), Some(path)) = (prefix.strip_prefix(b"/"), path.strip_prefix(b"/")) else {
        return false;
    };
    let mut path_segments = path_only(path).split(|&b| b == b'/');
    for want in prefix.split(|&b| b == b'/') {
        let Some(segment) = path_segments.next() else {
            return false;
        };
        let segment = segment.split(|&b| b == b';').next().unwrap_or(segment);
        if !segment.eq_ignore_ascii_case(want) {
            return false;
        }
    }
    true
}

/// Checks a `path_prefixes` entry; the error says why.
pub fn check_path_prefix(prefix: &str) -> Result<(), String> {
    if prefix == "/" {
        return Ok(());
    }
    if !prefix.starts_with('/') {
        return Err(format!("path prefix {prefix:?} must start with /"));
    }
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "path prefix is longer than {MAX_PREFIX_BYTES} bytes"
        ));
    }
    if let Some(bad) = prefix.chars().find(|&c| {
        !c.is_ascii_graphic() || c.is_ascii_uppercase() || matches!(c, ';' | '?' | '#' | '%')
    }) {
        return Err(format!(
            "path prefix {prefix:?} has {bad:?}; use lowercase visible ASCII without ; ? # % (paths are matched case-insensitively after Envoy's normalisation)"
        ));
    }
    for segment in prefix.split('/').skip(1) {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "path prefix {prefix:?} has an empty, . or .. segment (or a trailing /); normalised paths never do"
            ));
        }
    }
    Ok(())
}

/// Checks an `authorities` entry: a lowercase host name (letters, digits,
/// `-`, `.`) or a bracketed IPv6 literal, without a port.
pub fn check_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() || authority.len() > MAX_AUTHORITY_BYTES {
        return Err(format!(
            "authority must be 1 to {MAX_AUTHORITY_BYTES} bytes"
        ));
    }
    let ipv6 = authority.starts_with('[') && authority.ends_with(']') && authority.len() > 2;
    let ok = if ipv6 {
        authority.get(1..authority.len() - 1).is_some_and(|inner| {
            inner
                .chars()
                .all(|c| matches!(c, '0'..='9' | 'a'..='f' | ':' | '.'))
        })
    } else {
        authority
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '.'))
    };
    if !ok {
        return Err(format!(
            "authority {authority:?} must be a lowercase host name (a-z 0-9 - .) or a bracketed IPv6 address, without a port"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The owned document form of a format-2 snapshot (what the builder writes).

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn default_weight() -> f64 {
    1.0
}

fn default_retry_after() -> u32 {
    crate::snapshot::DEFAULT_RETRY_AFTER_S
}

fn default_state() -> CellState {
    CellState::Active
}

/// `regions[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionDoc {
    pub id: String,
}

/// A pool's `match`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorities: Vec<String>,
}

/// A cell of a format-2 snapshot: a format-1 cell plus its pool and region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PooledCellDoc {
    pub id: String,
    pub pool: String,
    pub region: String,
    #[serde(default = "default_state")]
    pub state: CellState,
    #[serde(default = "default_weight")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shed_ratio: f64,
    #[serde(default = "default_retry_after")]
    pub retry_after_s: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampDoc>,
}

impl PooledCellDoc {
    /// `cell` in `pool` and `region`.
    pub fn new(cell: CellDoc, pool: impl Into<String>, region: impl Into<String>) -> Self {
        PooledCellDoc {
            id: cell.id,
            pool: pool.into(),
            region: region.into(),
            state: cell.state,
            weight: cell.weight,
            shed_ratio: cell.shed_ratio,
            retry_after_s: cell.retry_after_s,
            failover: cell.failover,
            ramp: cell.ramp,
        }
    }

    /// The cell without its pool and region.
    pub fn cell(&self) -> CellDoc {
        CellDoc {
            id: self.id.clone(),
            state: self.state,
            weight: self.weight,
            shed_ratio: self.shed_ratio,
            retry_after_s: self.retry_after_s,
            failover: self.failover.clone(),
            ramp: self.ramp.clone(),
        }
    }
}

/// `pools[i]`. Maps are sorted so the same snapshot serialises to the same
/// bytes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolDoc {
    pub id: String,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_rule: Option<MatchDoc>,
    /// Region id → base64 slot table (as `slot_table` in format 1).
    pub slot_tables: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<MoveDoc>,
}

/// A whole format-2 snapshot in owned form (`"format": 2`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PooledSnapshotDoc {
    /// Always [`FORMAT_POOLS`].
    pub format: u8,
    pub version: u64,
    pub generated_at: String,
    pub hash: HashDoc,
    pub regions: Vec<RegionDoc>,
    /// Base64 of S × u16 LE region indexes.
    pub region_table: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub region_overrides: BTreeMap<String, String>,
    pub cells: Vec<PooledCellDoc>,
    pub pools: Vec<PoolDoc>,
}

impl PooledSnapshotDoc {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut out = serde_json::to_string_pretty(self).unwrap_or_default();
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments_case_insensitively_ignoring_params() {
        let yes: &[&[u8]] = &[
            b"/voice",
            b"/voice/",
            b"/voice/x",
            b"/VOICE;v=1/x",
            b"/Voice?x=1",
            b"/voice#frag",
            b"/voice;x",
        ];
        for path in yes {
            assert!(prefix_matches(b"/voice", path), "{path:?}");
        }
        let no: &[&[u8]] = &[
            b"/voicemail",
            b"/",
            b"",
            b"voice",
            b"/vo",
            b"/x/voice",
            b"?/voice",
        ];
        for path in no {
            assert!(!prefix_matches(b"/voice", path), "{path:?}");
        }
        assert!(prefix_matches(b"/api/v2", b"/API/V2;a/b"));
        assert!(!prefix_matches(b"/api/v2", b"/api"));
        assert!(!prefix_matches(b"/api/v2", b"/api/v20"));
        assert!(prefix_matches(b"/", b""));
        assert!(prefix_matches(b"/", b"*"));
    }

    #[test]
    fn authorities_lose_case_and_port() {
        assert_eq!(
            normalise_authority(b"Voice.Example.COM:8443"),
            b"voice.example.com"
        );
        assert_eq!(normalise_authority(b"example.com:"), b"example.com");
        assert_eq!(normalise_authority(b"[::1]:80"), b"[::1]");
        assert_eq!(normalise_authority(b"[::1]"), b"[::1]");
        assert_eq!(normalise_authority(b"a:b"), b"a:b");
    }

    #[test]
    fn prefix_and_authority_checks() {
        for ok in ["/", "/voice", "/api/v2", "/a-b_c.d~"] {
            assert_eq!(check_path_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "voice", "/Voice", "/voice/", "//x", "/./x", "/x/..", "/a;b", "/a?b", "/a#",
            "/a%2f", "/a b", "/é",
        ] {
            assert!(check_path_prefix(bad).is_err(), "{bad}");
        }
        for ok in ["voice.example.com", "localhost", "[::1]", "10.0.0.1"] {
            assert_eq!(check_authority(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Voice.example.com", "host:80", "a b", "[::1]:80", "[]"] {
            assert!(check_authority(bad).is_err(), "{bad}");
        }
    }
}
