//! The compact binary form of a snapshot (`SPEC.md`, "Binary form").
//!
//! JSON stays the control plane's form; this one is for consumers that apply
//! large snapshots often (the filter, in every Wasm VM). It is the indexed
//! [`Snapshot`] laid out contiguously: the tenant table's record arena and
//! bucket directory are stored exactly as [`TenantTable`] holds them, so
//! applying the form is a checksum, one validation pass (bounds, order,
//! buckets, values, duplicates; no per-entry allocation) and a copy of each
//! section. The result is an ordinary [`Snapshot`]: there is one routing
//! function, [`Snapshot::resolve`], for both forms.
//!
//! In the form keyed by id, tenant lookups compare the full tenant bytes (the
//! arena holds every id), so no hash collision, crafted or not, can route a
//! tenant that is not in the table to an override cell. The form keyed by
//! hash ([`encode_hashed`]) compares 64-bit keyed hashes, refusing at
//! encoding a table in which two tenants share one (SPEC, "Hashed keys").

use crate::error::PathError;
use crate::hash::{HashKey, IncrementalHash, ratio_to_basis_points};
use crate::pools::{DEFAULT_ID, FORMAT_POOLS, MAX_POOLS, MatchDoc, Pool, Region, RegionDoc};
use crate::snapshot::{
    AnyCellDoc, Places, check_place, check_pool_heads, check_pooled_cells, check_regions,
    check_slot_table_places, home_region_of,
};
use crate::snapshot::{Cell, CellDoc, MAX_SLOTS, Move, MoveDoc, Snapshot, validate_cells};
use crate::table::{EntryKind, Keys, TenantTable};
use std::ops::Range;
use std::sync::Arc;

/// First 8 bytes of every binary snapshot. A JSON snapshot starts with `{`
/// or whitespace, so the two forms are told apart by their first byte.
pub const MAGIC: [u8; 8] = *b"CELLMAPB";
/// The layout version this code reads and writes.
pub const FORMAT: u32 = 1;
/// Header flag (the word at offset 12): the tenant tables are keyed by the
/// tenant's 64-bit routing hash, not by its bytes (SPEC, "Hashed keys").
pub const FLAG_HASHED_KEYS: u32 = 1;
/// The media type the sidecar serves the binary form under.
pub const MEDIA_TYPE: &str = "application/vnd.cellmap.snapshot";
/// Fixed header: magic, format, reserved, version, key, slots, entries, and
/// the section table.
pub const HEADER_LEN: usize = 48 + SECTIONS * 16;
/// The checksum trailer.
pub const CHECKSUM_LEN: usize = 8;
const SECTIONS: usize = 6;
const SECTION_NAMES: [&str; SECTIONS] = [
    "generated_at",
    "cells",
    "slot_table",
    "moves",
    "tenant_arena",
    "tenant_buckets",
];

/// The checksum of the binary form: SipHash-1-3 under the all-zero key of
/// every byte before the trailer. It detects truncation and corruption (it
/// is not a signature: the channel's authenticity is the transport's job).
/// SipHash because every implementation of the routing function already has
/// it: no new dependency in the filter, nothing new in the Python checker.
pub fn checksum(bytes: &[u8]) -> u64 {
    HashKey::from_bytes([0; 16]).hash(bytes)
}

/// Whether `bytes` look like the binary form (they start with [`MAGIC`]).
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Whether `bytes` are the binary form keyed by hash (they claim so in
/// their header; not yet checked).
pub fn is_hashed(bytes: &[u8]) -> bool {
    is_binary(bytes) && u32_at(bytes, 12) == Some(FLAG_HASHED_KEYS)
}

/// Parses either form: binary if it starts with [`MAGIC`], JSON otherwise.
pub fn parse_any(bytes: &[u8]) -> Result<Snapshot, PathError> {
    if is_binary(bytes) {
        decode(bytes)
    } else {
        Snapshot::parse(bytes)
    }
}

/// Like [`parse_any`], refusing a version not greater than `current`.
pub fn parse_any_newer(bytes: &[u8], current: Option<u64>) -> Result<Snapshot, PathError> {
    let snapshot = parse_any(bytes)?;
    if let Some(current) = current
        && snapshot.version() <= current
    {
        return Err(PathError::new(
            "$.version",
            format!(
                "version {} is not greater than the current version {current}",
                snapshot.version()
            ),
        ));
    }
    Ok(snapshot)
}

fn cell_docs(snapshot: &Snapshot) -> Vec<CellDoc> {
    let id = |i: u16| snapshot.cell(i).map(|c| c.id.clone()).unwrap_or_default();
    snapshot
        .cells()
        .iter()
        .map(|c| CellDoc {
            id: c.id.clone(),
            state: c.state,
            weight: c.weight,
            shed_ratio: c.shed_ratio,
            retry_after_s: c.retry_after_s,
            failover: c.failover.map(id),
            ramp: c.ramp.as_ref().map(|r| r.doc.clone()),
        })
        .collect()
}

fn move_docs(snapshot: &Snapshot) -> Vec<MoveDoc> {
    let id = |i: u16| snapshot.cell(i).map(|c| c.id.clone()).unwrap_or_default();
    snapshot
        .moves()
        .iter()
        .map(|m| MoveDoc {
            tenant: m.tenant.clone(),
            from: id(m.from),
            to: id(m.to),
            percent: m.percent,
        })
        .collect()
}

/// Writes the binary form of a snapshot, its tenant tables keyed as the
/// snapshot's are (by id, unless it was decoded from a form keyed by
/// hash). Deterministic: the same snapshot gives the same bytes. A format-1
/// snapshot is written in layout 1 (as before pools existed), a format-2
/// snapshot in layout 2.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    if snapshot.format() == FORMAT_POOLS {
        return encode_pooled(snapshot);
    }
    let cells = serde_json::to_vec(&cell_docs(snapshot)).unwrap_or_default();
    let moves = serde_json::to_vec(&move_docs(snapshot)).unwrap_or_default();
    let slots = u16_bytes(snapshot.slot_table());
    let (arena, buckets) = snapshot.tenant_table().indexed_parts();
    let bucket_bytes = buckets;
    let sections: [&[u8]; SECTIONS] = [
        snapshot.generated_at().as_bytes(),
        &cells,
        &slots,
        &moves,
        arena,
        bucket_bytes,
    ];
    seal(snapshot, FORMAT, &[], &sections)
}

/// The binary form with every tenant table keyed by the tenant's 64-bit
/// routing hash (10 bytes a tenant, ids not kept; SPEC, "Hashed keys"): for
/// gateways, which only route. Refused, naming the tenants, when two
/// tenants of one table share a hash, and when a cell or move index does
/// not fit 14 bits; the form keyed by id ([`encode`]) carries any snapshot.
pub fn encode_hashed(snapshot: &Snapshot) -> Result<Vec<u8>, PathError> {
    Ok(encode(&snapshot.with_hashed_keys()?))
}

fn u16_bytes(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The header (with `extra` header words after the fixed 48 bytes), the
/// section table, the sections and the checksum.
fn seal(snapshot: &Snapshot, format: u32, extra: &[u32], sections: &[&[u8]]) -> Vec<u8> {
    let header_len = 48 + extra.len() * 4 + sections.len() * 16;
    let total = header_len + sections.iter().map(|s| s.len()).sum::<usize>() + CHECKSUM_LEN;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&format.to_le_bytes());
    let flags = if snapshot.keys() == Keys::Hashes {
        FLAG_HASHED_KEYS
    } else {
        0
    };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&snapshot.version().to_le_bytes());
    out.extend_from_slice(&key_bytes(snapshot.key()));
    out.extend_from_slice(&snapshot.slots().to_le_bytes());
    out.extend_from_slice(&(snapshot.tenant_entries() as u32).to_le_bytes());
    for word in extra {
        out.extend_from_slice(&word.to_le_bytes());
    }
    let mut offset = header_len as u64;
    for section in sections {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        offset += section.len() as u64;
    }
    for section in sections {
        out.extend_from_slice(section);
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// A pool's id and match rule (the `pools` section of layout 2; its tables
/// are sections of their own).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolHead {
    id: String,
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    match_rule: Option<MatchDoc>,
}

/// Layout 2 (a format-2 snapshot): after the 48 fixed bytes, P (pools) and
/// R (regions) as u32, then 7 + 4·P sections.
fn encode_pooled(snapshot: &Snapshot) -> Vec<u8> {
    let doc = snapshot.to_pooled_doc();
    let cells = serde_json::to_vec(&doc.cells).unwrap_or_default();
    let regions = serde_json::to_vec(&doc.regions).unwrap_or_default();
    let region_table = u16_bytes(snapshot.region_table());
    let (region_arena, region_buckets) = snapshot.region_override_table().indexed_parts();
    let heads: Vec<PoolHead> = snapshot
        .pools()
        .iter()
        .map(|p| PoolHead {
            id: p.id.clone(),
            match_rule: p.match_rule.as_ref().map(|m| MatchDoc {
                path_prefixes: m.path_prefixes.clone(),
                authorities: m.authorities.clone(),
            }),
        })
        .collect();
    let heads = serde_json::to_vec(&heads).unwrap_or_default();
    let mut per_pool: Vec<[Vec<u8>; 4]> = Vec::with_capacity(snapshot.pools().len());
    for (pool, pool_doc) in snapshot.pools().iter().zip(&doc.pools) {
        let tables: Vec<u8> = pool
            .slot_tables()
            .iter()
            .flat_map(|t| u16_bytes(t))
            .collect();
        let moves = serde_json::to_vec(&pool_doc.moves).unwrap_or_default();
        let (arena, buckets) = pool.tenant_table().indexed_parts();
        per_pool.push([tables, moves, arena.to_vec(), buckets.to_vec()]);
    }
    let mut sections: Vec<&[u8]> = vec![
        snapshot.generated_at().as_bytes(),
        &cells,
        &regions,
        &region_table,
        region_arena,
        region_buckets,
        &heads,
    ];
    for parts in &per_pool {
        sections.extend(parts.iter().map(Vec::as_slice));
    }
    seal(
        snapshot,
        u32::from(FORMAT_POOLS),
        &[
            snapshot.pools().len() as u32,
            snapshot.regions().len() as u32,
        ],
        &sections,
    )
}

/// The 16 key bytes (`hash.key` decoded).
fn key_bytes(key: HashKey) -> [u8; 16] {
    let hex = key.to_hex();
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).unwrap_or("00");
        *byte = u8::from_str_radix(digits, 16).unwrap_or(0);
    }
    out
}

fn err(part: &str, message: impl Into<String>) -> PathError {
    PathError::new(format!("binary:{part}"), message)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// The section table at `table_at`: contiguous sections, in order, from its
/// end to the checksum. Ranges of `body`.
fn read_sections(
    body: &[u8],
    table_at: usize,
    names: &[String],
) -> Result<Vec<Range<usize>>, PathError> {
    let header = |what: &str| err("header", format!("cut short before {what}"));
    let mut out = Vec::with_capacity(names.len());
    let mut expected = (table_at + names.len() * 16) as u64;
    for (i, name) in names.iter().enumerate() {
        let at = table_at + i * 16;
        let offset = u64_at(body, at).ok_or_else(|| header("the section table"))?;
        let len = u64_at(body, at + 8).ok_or_else(|| header("the section table"))?;
        if offset != expected {
            return Err(err(
                name,
                format!("section starts at {offset}, expected {expected}"),
            ));
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= body.len() as u64)
            .ok_or_else(|| err(name, "section runs past the end"))?;
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .map(|(a, b)| a..b)
            .filter(|r| body.get(r.clone()).is_some())
            .ok_or_else(|| err(name, "section runs past the end"))?;
        out.push(range);
        expected = end;
    }
    if expected != body.len() as u64 {
        return Err(err(
            names.last().map_or("header", String::as_str),
            format!(
                "sections end at {expected}, the checksum starts at {}",
                body.len()
            ),
        ));
    }
    Ok(out)
}

/// S little-endian u16 indexes below `limit` (`what`: cell or region).
fn read_u16_table(
    bytes: &[u8],
    slots: u32,
    limit: usize,
    section: &str,
    what: &str,
) -> Result<Vec<u16>, PathError> {
    if bytes.len() != slots as usize * 2 {
        return Err(err(
            section,
            format!(
                "{} bytes; {slots} slots need {} (2 bytes a slot)",
                bytes.len(),
                slots as usize * 2
            ),
        ));
    }
    let mut table = Vec::with_capacity(slots as usize);
    for (slot, pair) in bytes.chunks_exact(2).enumerate() {
        let index = match pair {
            [lo, hi] => u16::from_le_bytes([*lo, *hi]),
            _ => 0,
        };
        if usize::from(index) >= limit {
            return Err(err(
                section,
                format!(
                    "slot {slot} points at {what} index {index}, but there are {limit} {what}s"
                ),
            ));
        }
        table.push(index);
    }
    Ok(table)
}

fn json_section<T: serde::de::DeserializeOwned>(bytes: &[u8], name: &str) -> Result<T, PathError> {
    crate::error::from_json_with_path(bytes).map_err(|e| err(name, e.to_string()))
}

/// Reads and validates the binary form. Everything [`Snapshot::parse`]
/// checks in a JSON snapshot is checked here too, so a snapshot accepted in
/// one form routes exactly as in the other; never panics, whatever the bytes.
/// Copies `bytes` once; [`decode_owned`] takes them as they are.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, PathError> {
    decode_owned(bytes.to_vec())
}

/// [`decode`] without a copy: the snapshot's tenant tables are `bytes`
/// themselves (the arena and directory sections, used in place).
pub fn decode_owned(bytes: Vec<u8>) -> Result<Snapshot, PathError> {
    decode_shared(Arc::new(bytes))
}

/// [`decode_owned`] of bytes the caller keeps a handle on (e.g. to serve
/// them): once the snapshot is dropped, `Arc::try_unwrap` gives them back.
pub fn decode_shared(bytes: Arc<Vec<u8>>) -> Result<Snapshot, PathError> {
    let mut apply = Apply::from_shared(bytes)?;
    loop {
        if let Some(snapshot) = apply.step(usize::MAX)? {
            return Ok(snapshot);
        }
    }
}

/// A binary snapshot being applied in steps, so that a host with one thread
/// per worker (a Wasm VM) can serve requests between them: each
/// [`Apply::step`] does about `budget` bytes of work (the checksum, then
/// the tenant tables' records), and the last one returns the snapshot. The
/// checks and their order are [`decode`]'s (it is this, in one step); the
/// snapshot routes from the received bytes in place: applying copies no
/// tenant table.
pub struct Apply {
    body: Arc<Vec<u8>>,
    stage: Stage,
    /// The records are counted, not checked: see [`Apply::trust_records`].
    records_trusted: bool,
}

/// What names one binary snapshot's bytes: the version its header claims
/// and its checksum. Two readers of one process holding bytes with the same
/// fingerprint, each verified against its own checksum, hold the same
/// snapshot (the checksum detects corruption, not forgery: both came from
/// the same trusted source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub version: u64,
    pub checksum: u64,
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:016x}", self.version, self.checksum)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = ();

    /// The [`Display`](std::fmt::Display) form: `<version> <checksum hex>`.
    fn from_str(text: &str) -> Result<Fingerprint, ()> {
        let (version, checksum) = text.split_once(' ').ok_or(())?;
        if checksum.len() != 16 {
            return Err(());
        }
        Ok(Fingerprint {
            version: version.parse().map_err(|_| ())?,
            checksum: u64::from_str_radix(checksum, 16).map_err(|_| ())?,
        })
    }
}

impl std::fmt::Debug for Apply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.stage {
            Stage::Checksum { at, .. } => format!("checksum at byte {at}"),
            Stage::Prepare => "sections".to_string(),
            Stage::Tables(pending) => format!("table {} bucket {}", pending.table, pending.bucket),
            Stage::Over => "over".to_string(),
        };
        f.debug_struct("Apply")
            .field("bytes", &self.body.len())
            .field("version", &self.claimed_version())
            .field("stage", &stage)
            .finish()
    }
}

enum Stage {
    Checksum {
        hash: IncrementalHash,
        at: usize,
    },
    Prepare,
    Tables(Box<Pending>),
    /// Returned its snapshot or an error.
    Over,
}

/// Everything decoded but the tenant tables' records.
struct Pending {
    snapshot: Snapshot,
    /// Header N.
    entries: u32,
    /// Layout 2: pool and region ids, for the place checks' messages.
    places: Option<Places>,
    /// Per pool: its moves, arena and buckets section names.
    names: Vec<[String; 3]>,
    /// The table being checked: 0 is the region overrides (layout 2), then
    /// pool `i` is `i + 1`.
    table: usize,
    bucket: usize,
    records: usize,
    move_entries: usize,
    /// The current table's moves were not counted (trusted records keyed
    /// by hash: see [`TenantTable::count_buckets`]).
    moves_uncounted: bool,
    total: usize,
}

impl Apply {
    /// Starts applying `bytes`: checks the fixed header (magic, format,
    /// reserved word, length). Cheap.
    pub fn new(bytes: Vec<u8>) -> Result<Apply, PathError> {
        Apply::from_shared(Arc::new(bytes))
    }

    /// [`Apply::new`] of bytes shared with the caller.
    pub fn from_shared(bytes: Arc<Vec<u8>>) -> Result<Apply, PathError> {
        let header = |what: &str| err("header", format!("cut short before {what}"));
        if !is_binary(&bytes) {
            return Err(err("header", "not a binary snapshot (bad magic)"));
        }
        if bytes.len() < 48 + CHECKSUM_LEN {
            return Err(header("the end of the header"));
        }
        let format = u32_at(&bytes, 8).ok_or_else(|| header("format"))?;
        if format != FORMAT && format != u32::from(FORMAT_POOLS) {
            return Err(err(
                "header",
                format!(
                    "format {format} is not supported (this reader knows {FORMAT} and {FORMAT_POOLS})"
                ),
            ));
        }
        match u32_at(&bytes, 12) {
            Some(0 | FLAG_HASHED_KEYS) => {}
            flags => {
                return Err(err(
                    "header",
                    format!(
                        "unknown flags {:#x} (this reader knows {FLAG_HASHED_KEYS:#x}, hashed keys)",
                        flags.unwrap_or(0)
                    ),
                ));
            }
        }
        Ok(Apply {
            body: bytes,
            stage: Stage::Checksum {
                hash: HashKey::from_bytes([0; 16]).incremental(),
                at: 0,
            },
            records_trusted: false,
        })
    }

    /// The bytes' fingerprint once their checksum has been verified (`None`
    /// before, and after a refusal).
    pub fn verified_fingerprint(&self) -> Option<Fingerprint> {
        if !matches!(self.stage, Stage::Prepare | Stage::Tables(_)) {
            return None;
        }
        let checksum_at = self.body.len().checked_sub(CHECKSUM_LEN)?;
        Some(Fingerprint {
            version: self.claimed_version()?,
            checksum: u64_at(&self.body, checksum_at)?,
        })
    }

    /// Skips the per-record checks still to do (hash, bucket, Bloom bits,
    /// value, duplicates), because bytes with this very fingerprint were
    /// fully checked by another reader of the same process (e.g. another
    /// Wasm VM of the same Envoy): the records are then only walked and
    /// counted, and every other check still runs. Only once this reader has
    /// verified its own checksum ([`Apply::verified_fingerprint`]); returns
    /// whether the records are now trusted.
    pub fn trust_records(&mut self) -> bool {
        if self.verified_fingerprint().is_some() {
            self.records_trusted = true;
        }
        self.records_trusted
    }

    /// Whether [`Apply::trust_records`] took effect.
    pub fn records_trusted(&self) -> bool {
        self.records_trusted
    }

    /// The version the header names (not yet checked by the checksum).
    pub fn claimed_version(&self) -> Option<u64> {
        u64_at(&self.body, 16)
    }

    /// The size of the snapshot being applied, in bytes.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// About `budget` bytes of work (at least one unit). `Ok(Some(_))`: the
    /// snapshot, valid; `Ok(None)`: call again; `Err`: refused (and every
    /// later call is refused too).
    pub fn step(&mut self, budget: usize) -> Result<Option<Snapshot>, PathError> {
        let budget = budget.max(1);
        let outcome = self.advance(budget);
        if !matches!(outcome, Ok(None)) {
            self.stage = Stage::Over;
        }
        outcome
    }

    fn advance(&mut self, budget: usize) -> Result<Option<Snapshot>, PathError> {
        let body_len = self.body.len().saturating_sub(CHECKSUM_LEN);
        match &mut self.stage {
            Stage::Checksum { hash, at } => {
                let end = at.saturating_add(budget).min(body_len);
                hash.write(self.body.get(*at..end).unwrap_or(&[]));
                *at = end;
                if end < body_len {
                    return Ok(None);
                }
                let stored = u64_at(&self.body, body_len)
                    .ok_or_else(|| err("header", "cut short before checksum"))?;
                let computed = hash.finish();
                if stored != computed {
                    return Err(err(
                        "checksum",
                        format!(
                            "checksum {stored:016x} does not match the content ({computed:016x}): truncated or corrupted"
                        ),
                    ));
                }
                self.stage = Stage::Prepare;
                Ok(None)
            }
            Stage::Prepare => {
                let pending = prepare(&self.body)?;
                self.stage = Stage::Tables(Box::new(pending));
                Ok(None)
            }
            Stage::Tables(pending) => pending.check(budget, self.records_trusted),
            Stage::Over => Err(err(
                "header",
                "this snapshot was already applied or refused",
            )),
        }
    }
}

/// The fixed header fields both layouts share.
struct Head {
    version: u64,
    key: HashKey,
    slots: u32,
    entries: u32,
    keys: Keys,
}

/// Everything but the tenant tables' records (already checksummed).
fn prepare(bytes: &Arc<Vec<u8>>) -> Result<Pending, PathError> {
    let header = |what: &str| err("header", format!("cut short before {what}"));
    let body = bytes
        .get(..bytes.len().saturating_sub(CHECKSUM_LEN))
        .unwrap_or(&[]);
    let format = u32_at(body, 8).ok_or_else(|| header("format"))?;
    let version = u64_at(body, 16).ok_or_else(|| header("version"))?;
    let key_bytes: [u8; 16] = body
        .get(24..40)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| header("key"))?;
    let key = HashKey::from_bytes(key_bytes);
    let slots = u32_at(body, 40).ok_or_else(|| header("slots"))?;
    let entries = u32_at(body, 44).ok_or_else(|| header("entries"))?;
    let keys = if u32_at(body, 12) == Some(FLAG_HASHED_KEYS) {
        Keys::Hashes
    } else {
        Keys::Ids
    };
    if slots == 0 || slots > MAX_SLOTS {
        return Err(err(
            "header",
            format!("slots must be between 1 and {MAX_SLOTS}, got {slots}"),
        ));
    }
    let head = Head {
        version,
        key,
        slots,
        entries,
        keys,
    };
    if format == FORMAT {
        prepare_layout1(bytes, body, head)
    } else {
        prepare_layout2(bytes, body, head)
    }
}

/// A table's arena and directory, adopted in place; the errors name the
/// arena's section.
fn adopt(
    bytes: &Arc<Vec<u8>>,
    arena: Range<usize>,
    buckets: Range<usize>,
    buckets_name: &str,
    arena_name: &str,
    keys: Keys,
) -> Result<TenantTable, PathError> {
    if !(buckets.end - buckets.start).is_multiple_of(8) {
        return Err(err(buckets_name, "length is not a multiple of 8"));
    }
    TenantTable::adopt(Arc::clone(bytes), arena, buckets, keys).map_err(|e| err(arena_name, e))
}

fn prepare_layout1(bytes: &Arc<Vec<u8>>, body: &[u8], head: Head) -> Result<Pending, PathError> {
    let Head {
        version,
        key,
        slots,
        entries,
        keys,
    } = head;
    if body.len() < HEADER_LEN {
        return Err(err("header", "cut short before the end of the header"));
    }
    let names: Vec<String> = SECTION_NAMES.iter().map(|s| s.to_string()).collect();
    let ranges = read_sections(body, 48, &names)?;
    let get = |i: usize| -> &[u8] {
        ranges
            .get(i)
            .and_then(|r| body.get(r.clone()))
            .unwrap_or(&[])
    };
    let range = |i: usize| ranges.get(i).cloned().unwrap_or(0..0);

    let generated_at = std::str::from_utf8(get(0))
        .map_err(|_| err("generated_at", "not UTF-8"))?
        .to_string();

    let cell_docs: Vec<crate::error::ObjectOnly<CellDoc>> = json_section(get(1), "cells")?;
    let cell_docs: Vec<CellDoc> = cell_docs.into_iter().map(|c| c.0).collect();
    let cells: Vec<Cell> = validate_cells(&cell_docs)?;
    let slot_table = read_u16_table(get(2), slots, cells.len(), "slot_table", "cell")?;

    let move_docs: Vec<crate::error::ObjectOnly<MoveDoc>> = json_section(get(3), "moves")?;
    let moves = validate_moves(move_docs.into_iter().map(|m| m.0), &cells, "binary:moves")?;
    let tenants = adopt(
        bytes,
        range(4),
        range(5),
        "tenant_buckets",
        "tenant_arena",
        keys,
    )?;

    Ok(Pending {
        snapshot: Snapshot {
            format: 1,
            version,
            generated_at,
            key,
            slots,
            cells,
            regions: vec![Region {
                id: DEFAULT_ID.to_string(),
            }],
            region_table: Vec::new(),
            region_overrides: TenantTable::default(),
            pools: vec![Pool {
                id: DEFAULT_ID.to_string(),
                match_rule: None,
                slot_tables: vec![slot_table],
                tenants,
                moves,
            }],
        },
        entries,
        places: None,
        names: vec![[
            "moves".to_string(),
            "tenant_arena".to_string(),
            "tenant_buckets".to_string(),
        ]],
        // No region overrides in layout 1: start at the pool.
        table: 1,
        bucket: 0,
        records: 0,
        move_entries: 0,
        moves_uncounted: false,
        total: 0,
    })
}

/// Layout 2 sections, in order: the seven shared ones, then four per pool.
const LAYOUT2_SECTIONS: [&str; 7] = [
    "generated_at",
    "cells",
    "regions",
    "region_table",
    "region_arena",
    "region_buckets",
    "pools",
];
const LAYOUT2_POOL_SECTIONS: [&str; 4] = ["slot_tables", "moves", "tenant_arena", "tenant_buckets"];

fn prepare_layout2(bytes: &Arc<Vec<u8>>, body: &[u8], head: Head) -> Result<Pending, PathError> {
    let Head {
        version,
        key,
        slots,
        entries,
        keys,
    } = head;
    let pool_count = u32_at(body, 48).ok_or_else(|| err("header", "cut short before P"))?;
    let region_count = u32_at(body, 52).ok_or_else(|| err("header", "cut short before R"))?;
    let pool_count = usize::try_from(pool_count).unwrap_or(usize::MAX);
    let region_count = usize::try_from(region_count).unwrap_or(usize::MAX);
    if pool_count == 0 || pool_count > MAX_POOLS {
        return Err(err(
            "header",
            format!("P must be between 1 and {MAX_POOLS}, got {pool_count}"),
        ));
    }
    let mut names: Vec<String> = LAYOUT2_SECTIONS.iter().map(|s| s.to_string()).collect();
    for p in 0..pool_count {
        names.extend(
            LAYOUT2_POOL_SECTIONS
                .iter()
                .map(|s| format!("pools[{p}].{s}")),
        );
    }
    let ranges = read_sections(body, 56, &names)?;
    let get = |i: usize| -> &[u8] {
        ranges
            .get(i)
            .and_then(|r| body.get(r.clone()))
            .unwrap_or(&[])
    };
    let range = |i: usize| ranges.get(i).cloned().unwrap_or(0..0);

    let generated_at = std::str::from_utf8(get(0))
        .map_err(|_| err("generated_at", "not UTF-8"))?
        .to_string();
    let region_docs: Vec<crate::error::ObjectOnly<RegionDoc>> = json_section(get(2), "regions")?;
    let region_docs: Vec<RegionDoc> = region_docs.into_iter().map(|r| r.0).collect();
    let region_of = check_regions(&region_docs)?;
    if region_docs.len() != region_count {
        return Err(err(
            "regions",
            format!(
                "{} regions, the header says {region_count}",
                region_docs.len()
            ),
        ));
    }
    let region_table = read_u16_table(get(3), slots, region_count, "region_table", "region")?;
    let heads: Vec<crate::error::ObjectOnly<PoolHead>> = json_section(get(6), "pools")?;
    if heads.len() != pool_count {
        return Err(err(
            "pools",
            format!("{} pools, the header says {pool_count}", heads.len()),
        ));
    }
    let head_refs: Vec<(Option<&str>, Option<&MatchDoc>)> = heads
        .iter()
        .map(|h| (Some(h.0.id.as_str()), h.0.match_rule.as_ref()))
        .collect();
    let (pool_of, match_rules) = check_pool_heads(&head_refs)?;
    let places = Places {
        pools: heads.iter().map(|h| h.0.id.clone()).collect(),
        regions: region_docs.iter().map(|r| r.id.clone()).collect(),
    };
    let cell_docs: Vec<crate::error::ObjectOnly<AnyCellDoc>> = json_section(get(1), "cells")?;
    let cells = check_pooled_cells(
        cell_docs.into_iter().map(|c| c.0).collect(),
        &pool_of,
        &region_of,
        &places,
    )?;
    let region_overrides = adopt(
        bytes,
        range(4),
        range(5),
        "region_buckets",
        "region_arena",
        keys,
    )?;

    let mut pools = Vec::with_capacity(pool_count);
    let mut pool_names = Vec::with_capacity(pool_count);
    for ((p, head), match_rule) in heads.into_iter().enumerate().zip(match_rules) {
        let at = 7 + 4 * p;
        let name = |i: usize| names.get(at + i).map_or("pools", String::as_str);
        let tables = get(at);
        let table_len = slots as usize * 2;
        if tables.len() != table_len * region_count {
            return Err(err(
                name(0),
                format!(
                    "{} bytes; {region_count} regions × {slots} slots need {}",
                    tables.len(),
                    table_len * region_count
                ),
            ));
        }
        let mut slot_tables = Vec::with_capacity(region_count);
        for (r, bytes) in tables.chunks_exact(table_len.max(1)).enumerate() {
            let table = read_u16_table(bytes, slots, cells.len(), name(0), "cell")?;
            check_slot_table_places(
                &table,
                p as u16,
                r as u16,
                &cells,
                &places,
                &format!("binary:{}", name(0)),
            )?;
            slot_tables.push(table);
        }
        let move_docs: Vec<crate::error::ObjectOnly<MoveDoc>> = json_section(get(at + 1), name(1))?;
        let moves = validate_moves(
            move_docs.into_iter().map(|m| m.0),
            &cells,
            &format!("binary:{}", name(1)),
        )?;
        let tenants = adopt(bytes, range(at + 2), range(at + 3), name(3), name(2), keys)?;
        pool_names.push([
            name(1).to_string(),
            name(2).to_string(),
            name(3).to_string(),
        ]);
        pools.push(Pool {
            id: head.0.id,
            match_rule,
            slot_tables,
            tenants,
            moves,
        });
    }

    Ok(Pending {
        snapshot: Snapshot {
            format: FORMAT_POOLS,
            version,
            generated_at,
            key,
            slots,
            cells,
            regions: region_docs
                .into_iter()
                .map(|r| Region { id: r.id })
                .collect(),
            region_table,
            region_overrides,
            pools,
        },
        entries,
        places: Some(places),
        names: pool_names,
        table: 0,
        bucket: 0,
        records: 0,
        move_entries: 0,
        moves_uncounted: false,
        total: 0,
    })
}

impl Pending {
    /// Checks about `budget` bytes of records; the snapshot after the last.
    fn check(&mut self, budget: usize, trusted: bool) -> Result<Option<Snapshot>, PathError> {
        let mut left = budget;
        loop {
            let pool_index = self.table.checked_sub(1);
            let Some(table) = (match pool_index {
                None => Some(&self.snapshot.region_overrides),
                Some(p) => self.snapshot.pools.get(p).map(|pool| &pool.tenants),
            }) else {
                return self.finish().map(Some);
            };
            if self.bucket == 0
                && let Some(p) = pool_index
            {
                self.check_move_places(p)?;
            }
            let count = table.bucket_count();
            // Whole buckets up to the budget's byte.
            let from = table.bucket_start(self.bucket);
            let mut end = self.bucket + 1;
            if left == usize::MAX {
                end = count;
            } else {
                let mut step = 1usize;
                while end < count && table.bucket_start(end).saturating_sub(from) < left {
                    end = (end + step).min(count);
                    step = step.saturating_mul(2);
                }
            }
            let end = end.min(count).max(self.bucket);
            let (records, bytes) = if trusted {
                self.count_range(pool_index, self.bucket..end)?
            } else {
                self.check_range(pool_index, self.bucket..end)?
            };
            self.records += records;
            self.bucket = end;
            left = left.saturating_sub(bytes.max(1));
            if self.bucket >= count {
                self.finish_table(pool_index)?;
            }
            if left == 0 {
                return Ok(None);
            }
        }
    }

    /// Buckets `range` of the current table, records walked and counted
    /// (their moves too), not checked: [`Apply::trust_records`].
    fn count_range(
        &mut self,
        pool_index: Option<usize>,
        range: Range<usize>,
    ) -> Result<(usize, usize), PathError> {
        let (table, name) = match pool_index {
            None => (&self.snapshot.region_overrides, "region_arena"),
            Some(p) => match self.snapshot.pools.get(p) {
                Some(pool) => (
                    &pool.tenants,
                    self.names.get(p).map_or("tenant_arena", |n| n[1].as_str()),
                ),
                None => return Ok((0, 0)),
            },
        };
        let (records, moves, bytes) = table.count_buckets(range).map_err(|e| err(name, e))?;
        if pool_index.is_some() {
            match moves {
                Some(moves) => self.move_entries += moves,
                None => self.moves_uncounted = true,
            }
        }
        Ok((records, bytes))
    }

    /// Buckets `range` of the current table, with the checks of its kind.
    fn check_range(
        &mut self,
        pool_index: Option<usize>,
        range: Range<usize>,
    ) -> Result<(usize, usize), PathError> {
        let snapshot = &self.snapshot;
        let key = snapshot.key;
        let Some(p) = pool_index else {
            let region_count = snapshot.regions.len();
            return snapshot
                .region_overrides
                .check_buckets(
                    range,
                    |t| key.hash(t),
                    |_, _, kind, value| {
                        if kind == EntryKind::Override && usize::from(value) < region_count {
                            Ok(())
                        } else {
                            Err(format!("not a region override of a known region ({value})"))
                        }
                    },
                )
                .map_err(|e| err("region_arena", e));
        };
        let Some(pool) = snapshot.pools.get(p) else {
            return Ok((0, 0));
        };
        let arena_name = self.names.get(p).map_or("tenant_arena", |n| n[1].as_str());
        let cell_count = snapshot.cells.len();
        let move_count = pool.moves.len();
        let cell_places: Vec<(u16, u16)> = match &self.places {
            Some(_) => snapshot.cells.iter().map(|c| (c.pool, c.region)).collect(),
            None => Vec::new(),
        };
        let region_count = snapshot.regions.len();
        let places = self.places.as_ref();
        let move_entries = &mut self.move_entries;
        pool.tenants
            .check_buckets(
                range,
                |t| key.hash(t),
                |tenant, h, kind, value| {
                    let limit = match kind {
                        EntryKind::Override | EntryKind::Pin => cell_count,
                        EntryKind::Move => {
                            *move_entries += 1;
                            move_count
                        }
                    };
                    if usize::from(value) >= limit {
                        return Err(format!("out-of-range value {value}"));
                    }
                    let Some(places) = places else {
                        return Ok(());
                    };
                    if kind == EntryKind::Move {
                        return Ok(());
                    }
                    // With one region every tenant is homed there.
                    let home = if region_count == 1 {
                        0
                    } else {
                        home_region_of(
                            &snapshot.region_overrides,
                            &snapshot.region_table,
                            snapshot.slots,
                            tenant,
                            h,
                        )
                    };
                    // The common case from a compact table; check_place
                    // words the refusal.
                    if cell_places.get(usize::from(value)) == Some(&(p as u16, home)) {
                        return Ok(());
                    }
                    // Keyed by hash, the tenant is named by its hash.
                    let label = if tenant.is_empty() {
                        format!("with hash {h:016x}").into_bytes()
                    } else {
                        tenant.to_vec()
                    };
                    check_place(
                        &snapshot.cells,
                        places,
                        p as u16,
                        value,
                        &label,
                        home,
                        || format!("binary:{arena_name}"),
                    )
                    .map_err(|e| e.to_string())
                },
            )
            .map_err(|e| err(arena_name, e))
    }

    /// Layout 2: a move's cells in its pool and its tenant's home region
    /// (checked once the region overrides are).
    fn check_move_places(&self, p: usize) -> Result<(), PathError> {
        let (Some(places), Some(pool)) = (&self.places, self.snapshot.pools.get(p)) else {
            return Ok(());
        };
        let snapshot = &self.snapshot;
        let moves_name = self.names.get(p).map_or("moves", |n| n[0].as_str());
        for (i, m) in pool.moves.iter().enumerate() {
            let tenant = m.tenant.as_bytes();
            let home = if snapshot.regions.len() == 1 {
                0
            } else {
                home_region_of(
                    &snapshot.region_overrides,
                    &snapshot.region_table,
                    snapshot.slots,
                    tenant,
                    snapshot.key.hash(tenant),
                )
            };
            for (field, cell) in [("from", m.from), ("to", m.to)] {
                check_place(
                    &snapshot.cells,
                    places,
                    p as u16,
                    cell,
                    tenant,
                    home,
                    || format!("binary:{moves_name}[{i}].{field}"),
                )?;
            }
        }
        Ok(())
    }

    /// The current table is checked: its record count, and for a pool its
    /// moves (every move in the table under its own index, nothing else a
    /// move).
    fn finish_table(&mut self, pool_index: Option<usize>) -> Result<(), PathError> {
        let records = std::mem::take(&mut self.records);
        let move_entries = std::mem::take(&mut self.move_entries);
        let moves_uncounted = std::mem::take(&mut self.moves_uncounted);
        self.table += 1;
        self.bucket = 0;
        let key = self.snapshot.key;
        let Some(p) = pool_index else {
            let table = std::mem::take(&mut self.snapshot.region_overrides);
            self.snapshot.region_overrides = table
                .with_entries(records)
                .map_err(|e| err("region_arena", e))?;
            return Ok(());
        };
        let [moves_name, arena_name, _] = self.names.get(p).cloned().unwrap_or_default();
        let Some(pool) = self.snapshot.pools.get_mut(p) else {
            return Ok(());
        };
        let table = std::mem::take(&mut pool.tenants);
        pool.tenants = table
            .with_entries(records)
            .map_err(|e| err(&arena_name, e))?;
        // Uncounted, the reader that checked these bytes counted them; each
        // move is still looked up below.
        if !moves_uncounted && move_entries != pool.moves.len() {
            return Err(err(
                &moves_name,
                format!(
                    "{} moves, but the table has {move_entries} move entries",
                    pool.moves.len()
                ),
            ));
        }
        for (i, m) in pool.moves.iter().enumerate() {
            let t = m.tenant.as_bytes();
            if pool.tenants.get(t, key.hash(t)) != Some((EntryKind::Move, i as u16)) {
                return Err(err(
                    &moves_name,
                    format!(
                        "move {i} (tenant {:?}) is not in the tenant table as move {i}",
                        m.tenant
                    ),
                ));
            }
        }
        self.total += records;
        Ok(())
    }

    /// Every table is checked: the header's count, and the snapshot.
    fn finish(&mut self) -> Result<Snapshot, PathError> {
        if self.total != self.entries as usize {
            let what = if self.places.is_some() {
                "the tables hold"
            } else {
                "the table holds"
            };
            return Err(err(
                "header",
                format!(
                    "header says {} tenant entries, {what} {}",
                    self.entries, self.total
                ),
            ));
        }
        Ok(std::mem::replace(
            &mut self.snapshot,
            Snapshot::placeholder(),
        ))
    }
}

fn validate_moves(
    docs: impl Iterator<Item = MoveDoc>,
    cells: &[Cell],
    base: &str,
) -> Result<Vec<Move>, PathError> {
    let index: std::collections::HashMap<&str, u16> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i as u16))
        .collect();
    let index_of = |id: &str| index.get(id).copied();
    let mut moves = Vec::new();
    for (i, m) in docs.enumerate() {
        let path = |field: &str| format!("{base}[{i}].{field}");
        let from = index_of(&m.from)
            .ok_or_else(|| PathError::new(path("from"), format!("unknown cell {:?}", m.from)))?;
        let to = index_of(&m.to)
            .ok_or_else(|| PathError::new(path("to"), format!("unknown cell {:?}", m.to)))?;
        if from == to {
            return Err(PathError::new(path("to"), "must differ from `from`"));
        }
        if !m.percent.is_finite() || !(0.0..=100.0).contains(&m.percent) {
            return Err(PathError::new(
                path("percent"),
                format!("must be between 0 and 100, got {}", m.percent),
            ));
        }
        if i > usize::from(u16::MAX) {
            return Err(PathError::new(
                path("tenant"),
                "too many moves (at most 65535)",
            ));
        }
        moves.push(Move {
            to_basis_points: ratio_to_basis_points(m.percent / 100.0),
            tenant: m.tenant,
            from,
            to,
            percent: m.percent,
        });
    }
    Ok(moves)
}
