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
//! Tenant lookups compare the full tenant bytes (the arena holds every id),
//! so no hash collision, crafted or not, can route a tenant that is not in the
//! table to an override cell.

use crate::error::PathError;
use crate::hash::{HashKey, ratio_to_basis_points};
use crate::pools::{DEFAULT_ID, FORMAT_POOLS, MAX_POOLS, MatchDoc, Pool, Region, RegionDoc};
use crate::snapshot::{
    AnyCellDoc, Places, check_place, check_pool_heads, check_pooled_cells, check_regions,
    check_slot_table_places, home_region_of,
};
use crate::snapshot::{Cell, CellDoc, MAX_SLOTS, Move, MoveDoc, Snapshot, validate_cells};
use crate::table::{EntryKind, TenantTable};

/// First 8 bytes of every binary snapshot. A JSON snapshot starts with `{`
/// or whitespace, so the two forms are told apart by their first byte.
pub const MAGIC: [u8; 8] = *b"CELLMAPB";
/// The layout version this code reads and writes.
pub const FORMAT: u32 = 1;
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

/// Writes the binary form of a snapshot. Deterministic: the same snapshot
/// gives the same bytes. A format-1 snapshot is written in layout 1 (as
/// before pools existed), a format-2 snapshot in layout 2.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    if snapshot.format() == FORMAT_POOLS {
        return encode_pooled(snapshot);
    }
    let cells = serde_json::to_vec(&cell_docs(snapshot)).unwrap_or_default();
    let moves = serde_json::to_vec(&move_docs(snapshot)).unwrap_or_default();
    let slots = u16_bytes(snapshot.slot_table());
    let (arena, buckets) = snapshot.tenant_table().indexed_parts();
    let bucket_bytes = u64_bytes(buckets);
    let sections: [&[u8]; SECTIONS] = [
        snapshot.generated_at().as_bytes(),
        &cells,
        &slots,
        &moves,
        arena,
        &bucket_bytes,
    ];
    seal(snapshot, FORMAT, &[], &sections)
}

fn u16_bytes(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u64_bytes(values: &[u64]) -> Vec<u8> {
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
    out.extend_from_slice(&0u32.to_le_bytes());
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
    let region_buckets = u64_bytes(region_buckets);
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
        per_pool.push([tables, moves, arena.to_vec(), u64_bytes(buckets)]);
    }
    let mut sections: Vec<&[u8]> = vec![
        snapshot.generated_at().as_bytes(),
        &cells,
        &regions,
        &region_table,
        region_arena,
        &region_buckets,
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
/// end to the checksum.
fn read_sections<'a>(
    body: &'a [u8],
    table_at: usize,
    names: &[String],
) -> Result<Vec<&'a [u8]>, PathError> {
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
        out.push(
            usize::try_from(offset)
                .ok()
                .zip(usize::try_from(end).ok())
                .and_then(|(a, b)| body.get(a..b))
                .ok_or_else(|| err(name, "section runs past the end"))?,
        );
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

fn read_buckets(bytes: &[u8], section: &str) -> Result<Vec<u64>, PathError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(err(section, "length is not a multiple of 8"));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .collect())
}

/// A pool's (or layout 1's) tenant table and moves, checked against each
/// other: every move is in the table under its own index, nothing else is a
/// move.
fn read_tenants(
    arena: &[u8],
    bucket_bytes: &[u8],
    moves: &[Move],
    key: HashKey,
    cell_count: usize,
    names: [&str; 3],
    mut place: impl FnMut(&[u8], u64, u16) -> Result<(), PathError>,
) -> Result<TenantTable, PathError> {
    let [moves_name, arena_name, buckets_name] = names;
    let buckets = read_buckets(bucket_bytes, buckets_name)?;
    let mut move_entries = 0usize;
    let move_count = moves.len();
    let tenants = TenantTable::from_indexed_parts(
        arena.to_vec(),
        buckets,
        |t| key.hash(t),
        |tenant, h, kind, value| {
            let limit = match kind {
                EntryKind::Override | EntryKind::Pin => cell_count,
                EntryKind::Move => {
                    move_entries += 1;
                    move_count
                }
            };
            if usize::from(value) >= limit {
                return Err(format!("out-of-range value {value}"));
            }
            if kind == EntryKind::Move {
                return Ok(());
            }
            place(tenant, h, value).map_err(|e| e.to_string())
        },
    )
    .map_err(|e| err(arena_name, e))?;
    if move_entries != moves.len() {
        return Err(err(
            moves_name,
            format!(
                "{} moves, but the table has {move_entries} move entries",
                moves.len()
            ),
        ));
    }
    for (i, m) in moves.iter().enumerate() {
        let t = m.tenant.as_bytes();
        if tenants.get(t, key.hash(t)) != Some((EntryKind::Move, i as u16)) {
            return Err(err(
                moves_name,
                format!(
                    "move {i} (tenant {:?}) is not in the tenant table as move {i}",
                    m.tenant
                ),
            ));
        }
    }
    Ok(tenants)
}

fn json_section<T: serde::de::DeserializeOwned>(bytes: &[u8], name: &str) -> Result<T, PathError> {
    crate::error::from_json_with_path(bytes).map_err(|e| err(name, e.to_string()))
}

/// Reads and validates the binary form. Everything [`Snapshot::parse`]
/// checks in a JSON snapshot is checked here too, so a snapshot accepted in
/// one form routes exactly as in the other; never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, PathError> {
    let header = |what: &str| err("header", format!("cut short before {what}"));
    if !is_binary(bytes) {
        return Err(err("header", "not a binary snapshot (bad magic)"));
    }
    if bytes.len() < 48 + CHECKSUM_LEN {
        return Err(header("the end of the header"));
    }
    let format = u32_at(bytes, 8).ok_or_else(|| header("format"))?;
    if format != FORMAT && format != u32::from(FORMAT_POOLS) {
        return Err(err(
            "header",
            format!(
                "format {format} is not supported (this reader knows {FORMAT} and {FORMAT_POOLS})"
            ),
        ));
    }
    if u32_at(bytes, 12) != Some(0) {
        return Err(err("header", "reserved word must be 0"));
    }
    let body_len = bytes.len() - CHECKSUM_LEN;
    let (body, trailer) = bytes.split_at(body_len);
    let stored = u64_at(trailer, 0).ok_or_else(|| header("checksum"))?;
    let computed = checksum(body);
    if stored != computed {
        return Err(err(
            "checksum",
            format!(
                "checksum {stored:016x} does not match the content ({computed:016x}): truncated or corrupted"
            ),
        ));
    }
    let version = u64_at(body, 16).ok_or_else(|| header("version"))?;
    let key_bytes: [u8; 16] = body
        .get(24..40)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| header("key"))?;
    let key = HashKey::from_bytes(key_bytes);
    let slots = u32_at(body, 40).ok_or_else(|| header("slots"))?;
    let entries = u32_at(body, 44).ok_or_else(|| header("entries"))?;
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
    };
    if format == FORMAT {
        decode_layout1(body, head)
    } else {
        decode_layout2(body, head)
    }
}

/// The fixed header fields both layouts share.
struct Head {
    version: u64,
    key: HashKey,
    slots: u32,
    entries: u32,
}

fn decode_layout1(body: &[u8], head: Head) -> Result<Snapshot, PathError> {
    let Head {
        version,
        key,
        slots,
        entries,
    } = head;
    if body.len() < HEADER_LEN {
        return Err(err("header", "cut short before the end of the header"));
    }
    let names: Vec<String> = SECTION_NAMES.iter().map(|s| s.to_string()).collect();
    let section = read_sections(body, 48, &names)?;
    let [generated_at, cells, slot_bytes, moves, arena, bucket_bytes] = section.as_slice() else {
        return Err(err("header", "wrong number of sections"));
    };

    let generated_at = std::str::from_utf8(generated_at)
        .map_err(|_| err("generated_at", "not UTF-8"))?
        .to_string();

    let cell_docs: Vec<crate::error::ObjectOnly<CellDoc>> = json_section(cells, "cells")?;
    let cell_docs: Vec<CellDoc> = cell_docs.into_iter().map(|c| c.0).collect();
    let cells: Vec<Cell> = validate_cells(&cell_docs)?;
    let slot_table = read_u16_table(slot_bytes, slots, cells.len(), "slot_table", "cell")?;

    let move_docs: Vec<crate::error::ObjectOnly<MoveDoc>> = json_section(moves, "moves")?;
    let moves = validate_moves(move_docs.into_iter().map(|m| m.0), &cells, "binary:moves")?;
    let tenants = read_tenants(
        arena,
        bucket_bytes,
        &moves,
        key,
        cells.len(),
        ["moves", "tenant_arena", "tenant_buckets"],
        |_, _, _| Ok(()),
    )?;
    if tenants.len() != entries as usize {
        return Err(err(
            "header",
            format!(
                "header says {entries} tenant entries, the table holds {}",
                tenants.len()
            ),
        ));
    }

    Ok(Snapshot {
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

fn decode_layout2(body: &[u8], head: Head) -> Result<Snapshot, PathError> {
    let Head {
        version,
        key,
        slots,
        entries,
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
    let section = read_sections(body, 56, &names)?;
    let get = |i: usize| section.get(i).copied().unwrap_or(&[]);

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

    let region_overrides = TenantTable::from_indexed_parts(
        get(4).to_vec(),
        read_buckets(get(5), "region_buckets")?,
        |t| key.hash(t),
        |_, _, kind, value| {
            if kind == EntryKind::Override && usize::from(value) < region_count {
                Ok(())
            } else {
                Err(format!("not a region override of a known region ({value})"))
            }
        },
    )
    .map_err(|e| err("region_arena", e))?;
    // With one region every tenant is homed there: no lookup needed.
    let home_region = |tenant: &[u8], h: u64| -> u16 {
        if region_count == 1 {
            return 0;
        }
        home_region_of(&region_overrides, &region_table, slots, tenant, h)
    };

    let cell_places: Vec<(u16, u16)> = cells.iter().map(|c| (c.pool, c.region)).collect();
    let mut pools = Vec::with_capacity(pool_count);
    let mut total = 0usize;
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
        for (i, m) in moves.iter().enumerate() {
            let home = home_region(m.tenant.as_bytes(), key.hash(m.tenant.as_bytes()));
            for (field, cell) in [("from", m.from), ("to", m.to)] {
                check_place(
                    &cells,
                    &places,
                    p as u16,
                    cell,
                    m.tenant.as_bytes(),
                    home,
                    || format!("binary:{}[{i}].{field}", name(1)),
                )?;
            }
        }
        let tenants = read_tenants(
            get(at + 2),
            get(at + 3),
            &moves,
            key,
            cells.len(),
            [name(1), name(2), name(3)],
            |tenant, h, cell| {
                let home = home_region(tenant, h);
                // The common case from a compact table; check_place words
                // the refusal.
                if cell_places.get(usize::from(cell)) == Some(&(p as u16, home)) {
                    return Ok(());
                }
                check_place(&cells, &places, p as u16, cell, tenant, home, || {
                    format!("binary:{}", name(2))
                })
            },
        )?;
        total += tenants.len();
        pools.push(Pool {
            id: head.0.id,
            match_rule,
            slot_tables,
            tenants,
            moves,
        });
    }
    if total != entries as usize {
        return Err(err(
            "header",
            format!("header says {entries} tenant entries, the tables hold {total}"),
        ));
    }

    Ok(Snapshot {
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
    })
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
