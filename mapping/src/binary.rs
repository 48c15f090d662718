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
use crate::pools::{DEFAULT_ID, Pool, Region};
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
/// gives the same bytes.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let cells = serde_json::to_vec(&cell_docs(snapshot)).unwrap_or_default();
    let moves = serde_json::to_vec(&move_docs(snapshot)).unwrap_or_default();
    let mut slots = Vec::with_capacity(snapshot.slot_table().len() * 2);
    for index in snapshot.slot_table() {
        slots.extend_from_slice(&index.to_le_bytes());
    }
    let (arena, buckets) = snapshot.tenant_table().indexed_parts();
    let mut bucket_bytes = Vec::with_capacity(buckets.len() * 8);
    for word in buckets {
        bucket_bytes.extend_from_slice(&word.to_le_bytes());
    }
    let sections: [&[u8]; SECTIONS] = [
        snapshot.generated_at().as_bytes(),
        &cells,
        &slots,
        &moves,
        arena,
        &bucket_bytes,
    ];
    let total = HEADER_LEN + sections.iter().map(|s| s.len()).sum::<usize>() + CHECKSUM_LEN;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&snapshot.version().to_le_bytes());
    out.extend_from_slice(&key_bytes(snapshot.key()));
    out.extend_from_slice(&(snapshot.slot_table().len() as u32).to_le_bytes());
    out.extend_from_slice(&(snapshot.tenant_entries() as u32).to_le_bytes());
    let mut offset = HEADER_LEN as u64;
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

/// Reads and validates the binary form. Everything [`Snapshot::parse`]
/// checks in a JSON snapshot is checked here too, so a snapshot accepted in
/// one form routes exactly as in the other; never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, PathError> {
    let header = |what: &str| err("header", format!("cut short before {what}"));
    if !is_binary(bytes) {
        return Err(err("header", "not a binary snapshot (bad magic)"));
    }
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(header("the end of the header"));
    }
    let format = u32_at(bytes, 8).ok_or_else(|| header("format"))?;
    if format != FORMAT {
        return Err(err(
            "header",
            format!("format {format} is not supported (this reader knows {FORMAT})"),
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

    // Sections: contiguous, in order, from the end of the header to the
    // checksum.
    let mut section: [&[u8]; SECTIONS] = [&[]; SECTIONS];
    let mut expected = HEADER_LEN as u64;
    for (i, (slot, name)) in section.iter_mut().zip(SECTION_NAMES).enumerate() {
        let at = 48 + i * 16;
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
            .filter(|&e| e <= body_len as u64)
            .ok_or_else(|| err(name, "section runs past the end"))?;
        *slot = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(a, b)| body.get(a..b))
            .ok_or_else(|| err(name, "section runs past the end"))?;
        expected = end;
    }
    if expected != body_len as u64 {
        return Err(err(
            "tenant_buckets",
            format!("sections end at {expected}, the checksum starts at {body_len}"),
        ));
    }
    let [generated_at, cells, slot_bytes, moves, arena, bucket_bytes] = section;

    let generated_at = std::str::from_utf8(generated_at)
        .map_err(|_| err("generated_at", "not UTF-8"))?
        .to_string();

    let cell_docs: Vec<crate::error::ObjectOnly<CellDoc>> =
        crate::error::from_json_with_path(cells).map_err(|e| err("cells", e.to_string()))?;
    let cell_docs: Vec<CellDoc> = cell_docs.into_iter().map(|c| c.0).collect();
    let cells: Vec<Cell> = validate_cells(&cell_docs)?;

    if slot_bytes.len() != slots as usize * 2 {
        return Err(err(
            "slot_table",
            format!(
                "{} bytes; {slots} slots need {} (2 bytes a slot)",
                slot_bytes.len(),
                slots as usize * 2
            ),
        ));
    }
    let mut slot_table = Vec::with_capacity(slots as usize);
    for (slot, pair) in slot_bytes.chunks_exact(2).enumerate() {
        let index = match pair {
            [lo, hi] => u16::from_le_bytes([*lo, *hi]),
            _ => 0,
        };
        if usize::from(index) >= cells.len() {
            return Err(err(
                "slot_table",
                format!(
                    "slot {slot} points at cell index {index}, but there are {} cells",
                    cells.len()
                ),
            ));
        }
        slot_table.push(index);
    }

    let move_docs: Vec<crate::error::ObjectOnly<MoveDoc>> =
        crate::error::from_json_with_path(moves).map_err(|e| err("moves", e.to_string()))?;
    let moves = validate_moves(move_docs.into_iter().map(|m| m.0), &cells)?;

    if bucket_bytes.len() % 8 != 0 {
        return Err(err("tenant_buckets", "length is not a multiple of 8"));
    }
    let buckets: Vec<u64> = bucket_bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .collect();
    let mut move_entries = 0usize;
    let (cell_count, move_count) = (cells.len(), moves.len());
    let tenants = TenantTable::from_indexed_parts(
        arena.to_vec(),
        buckets,
        |t| key.hash(t),
        |kind, value| match kind {
            EntryKind::Override | EntryKind::Pin => usize::from(value) < cell_count,
            EntryKind::Move => {
                move_entries += 1;
                usize::from(value) < move_count
            }
        },
    )
    .map_err(|e| err("tenant_arena", e))?;
    if tenants.len() != entries as usize {
        return Err(err(
            "header",
            format!(
                "header says {entries} tenant entries, the table holds {}",
                tenants.len()
            ),
        ));
    }
    // Every move is in the table under its own index, and nothing else is a
    // move: the table and the moves section agree.
    if move_entries != moves.len() {
        return Err(err(
            "moves",
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
                "moves",
                format!(
                    "move {i} (tenant {:?}) is not in the tenant table as move {i}",
                    m.tenant
                ),
            ));
        }
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

fn validate_moves(
    docs: impl Iterator<Item = MoveDoc>,
    cells: &[Cell],
) -> Result<Vec<Move>, PathError> {
    let index: std::collections::HashMap<&str, u16> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i as u16))
        .collect();
    let index_of = |id: &str| index.get(id).copied();
    let mut moves = Vec::new();
    for (i, m) in docs.enumerate() {
        let path = |field: &str| format!("binary:moves[{i}].{field}");
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
