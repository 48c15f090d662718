//! A compact tenant → target table for millions of overrides.
//!
//! A `HashMap<String, _>` costs ~50 bytes per entry plus a heap allocation per
//! tenant. Here every entry is one record in a single arena (`len|kind` u16,
//! value u16, then the tenant bytes: 4 bytes + the id), found through an
//! open-addressing index of u64 slots (32-bit hash tag | arena offset + 1) at
//! load ≤ 0.5: 16 bytes of index per entry. 1 M 15-byte ids take ~35 MB.
//!
//! A lookup reads one index cache line and, only when the 32-bit tag matches,
//! the one record: a miss costs one random memory access and a hit two. It
//! is looked up with the tenant's routing hash, which the resolver has already
//! computed, so an override lookup costs no extra hashing.

/// Longest tenant id an override may name. Tokens carry short ids; this bounds
/// the arena and keeps the length in 14 bits.
pub const MAX_TENANT_BYTES: usize = 1024;

/// What a table entry points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An explicit override from the spec: value is a cell index.
    Override,
    /// A pin added by the builder to keep a known tenant in place: value is a
    /// cell index.
    Pin,
    /// A gradual move: value indexes the snapshot's moves.
    Move,
}

impl EntryKind {
    fn to_bits(self) -> u16 {
        match self {
            EntryKind::Override => 0,
            EntryKind::Pin => 1,
            EntryKind::Move => 2,
        }
    }

    fn from_bits(bits: u16) -> Self {
        match bits {
            0 => EntryKind::Override,
            1 => EntryKind::Pin,
            _ => EntryKind::Move,
        }
    }
}

const LEN_BITS: u16 = 14;
const LEN_MASK: u16 = (1 << LEN_BITS) - 1;
/// `len|kind` (u16 LE) and value (u16 LE) before the tenant bytes.
const HEADER: usize = 4;

/// Tenant ids in insertion order, with a kind and a 16-bit value each; call
/// [`TenantTable::build_index`] before [`TenantTable::get`].
#[derive(Clone, Debug, Default)]
pub struct TenantTable {
    /// Records in insertion (document) order.
    arena: Vec<u8>,
    entries: usize,
    /// 0 = empty; otherwise tag (high 32 bits of the tenant hash) << 32 |
    /// (record offset + 1).
    index: Vec<u64>,
}

/// Why a tenant could not be added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertError {
    Empty,
    TooLong(usize),
    TooMany,
}

impl std::fmt::Display for InsertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InsertError::Empty => write!(f, "tenant id must not be empty"),
            InsertError::TooLong(len) => write!(
                f,
                "tenant id is {len} bytes, more than the {MAX_TENANT_BYTES} allowed"
            ),
            InsertError::TooMany => write!(f, "too many tenants for one snapshot"),
        }
    }
}

/// The index slot a hash starts probing at: the low 32 bits scaled to the
/// capacity (multiply-shift), so the capacity need not be a power of two.
#[inline]
fn home_bucket(h: u64, capacity: usize) -> usize {
    (((h & 0xffff_ffff) * capacity as u64) >> 32) as usize
}

impl TenantTable {
    pub fn with_capacity(entries: usize, arena_bytes: usize) -> Self {
        TenantTable {
            arena: Vec::with_capacity(arena_bytes.saturating_add(entries.saturating_mul(HEADER))),
            entries: 0,
            index: Vec::new(),
        }
    }

    /// Makes room for `entries` more tenants of about `arena_bytes` in all.
    pub fn reserve(&mut self, entries: usize, arena_bytes: usize) {
        self.arena
            .reserve(arena_bytes.saturating_add(entries.saturating_mul(HEADER)));
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Appends a tenant. Duplicates are found by [`Self::build_index`].
    pub fn push(&mut self, tenant: &[u8], kind: EntryKind, value: u16) -> Result<(), InsertError> {
        if tenant.is_empty() {
            return Err(InsertError::Empty);
        }
        if tenant.len() > MAX_TENANT_BYTES {
            return Err(InsertError::TooLong(tenant.len()));
        }
        // Offsets + 1 are stored in 32 bits; the index holds 2 slots an entry.
        if self.arena.len() + HEADER + tenant.len() >= u32::MAX as usize
            || self.entries >= (u32::MAX / 4) as usize
        {
            return Err(InsertError::TooMany);
        }
        let len_kind = (tenant.len() as u16) | (kind.to_bits() << LEN_BITS);
        self.arena.extend_from_slice(&len_kind.to_le_bytes());
        self.arena.extend_from_slice(&value.to_le_bytes());
        self.arena.extend_from_slice(tenant);
        self.entries += 1;
        Ok(())
    }

    /// The record at `offset`: tenant, kind, value and the next offset.
    #[inline]
    fn record(&self, offset: usize) -> Option<(&[u8], EntryKind, u16, usize)> {
        let header = self.arena.get(offset..offset + HEADER)?;
        let (len_kind, value) = match header {
            [a, b, c, d] => (u16::from_le_bytes([*a, *b]), u16::from_le_bytes([*c, *d])),
            _ => return None,
        };
        let len = usize::from(len_kind & LEN_MASK);
        let start = offset + HEADER;
        let tenant = self.arena.get(start..start + len)?;
        Some((
            tenant,
            EntryKind::from_bits(len_kind >> LEN_BITS),
            value,
            start + len,
        ))
    }

    /// Offsets of every record, in insertion order.
    fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let mut offset = 0;
        std::iter::from_fn(move || {
            let (_, _, _, next) = self.record(offset)?;
            let this = offset;
            offset = next;
            Some(this)
        })
    }

    /// The `i`-th tenant, its kind and value (a scan: for error reports).
    pub fn entry(&self, i: usize) -> Option<(&[u8], EntryKind, u16)> {
        self.iter().nth(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], EntryKind, u16)> + '_ {
        self.offsets().filter_map(|offset| {
            let (tenant, kind, value, _) = self.record(offset)?;
            Some((tenant, kind, value))
        })
    }

    /// Rewrites every value (e.g. interned cell names → cell indexes).
    pub fn map_values(&mut self, mut f: impl FnMut(EntryKind, u16) -> u16) {
        let mut offset = 0;
        while let Some((_, kind, value, next)) = self.record(offset) {
            let new = f(kind, value).to_le_bytes();
            if let Some(slot) = self.arena.get_mut(offset + 2..offset + HEADER) {
                slot.copy_from_slice(&new);
            }
            offset = next;
        }
    }

    /// Builds the lookup index with `hash` (the snapshot's tenant hash).
    /// Returns the insertion-order position of the first entry that repeats
    /// an earlier tenant.
    pub fn build_index(&mut self, hash: impl Fn(&[u8]) -> u64) -> Result<(), usize> {
        self.arena.shrink_to_fit();
        let capacity = (self.entries * 2).max(2);
        let mut index = vec![0u64; capacity];
        let mut offset = 0;
        let mut position = 0;
        while let Some((tenant, _, _, next)) = self.record(offset) {
            let h = hash(tenant);
            let tag = h >> 32;
            let mut bucket = home_bucket(h, capacity);
            loop {
                let Some(slot) = index.get_mut(bucket) else {
                    return Err(position);
                };
                if *slot == 0 {
                    *slot = (tag << 32) | (offset as u64 + 1);
                    break;
                }
                if *slot >> 32 == tag {
                    let other = ((*slot & 0xffff_ffff) as usize).wrapping_sub(1);
                    if self.record(other).map(|r| r.0) == Some(tenant) {
                        return Err(position);
                    }
                }
                bucket += 1;
                if bucket == capacity {
                    bucket = 0;
                }
            }
            offset = next;
            position += 1;
        }
        self.index = index;
        Ok(())
    }

    /// Looks a tenant up by its bytes and its hash (the one given to
    /// [`Self::build_index`]).
    #[inline]
    pub fn get(&self, tenant: &[u8], h: u64) -> Option<(EntryKind, u16)> {
        let capacity = self.index.len();
        if capacity == 0 {
            return None;
        }
        let tag = h >> 32;
        let mut bucket = home_bucket(h, capacity);
        // Load ≤ 0.5 guarantees an empty slot; the bound only keeps a broken
        // table from spinning.
        for _ in 0..capacity {
            let slot = *self.index.get(bucket)?;
            if slot == 0 {
                return None;
            }
            if slot >> 32 == tag {
                let offset = ((slot & 0xffff_ffff) as usize).wrapping_sub(1);
                if let Some((bytes, kind, value, _)) = self.record(offset)
                    && bytes == tenant
                {
                    return Some((kind, value));
                }
            }
            bucket += 1;
            if bucket == capacity {
                bucket = 0;
            }
        }
        None
    }

    /// Heap bytes held (for memory reports).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.index.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashKey;

    #[test]
    fn insert_lookup_and_duplicates() {
        let key = HashKey::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let mut t = TenantTable::default();
        for i in 0..10_000u16 {
            t.push(format!("tenant-{i}").as_bytes(), EntryKind::Override, i)
                .unwrap();
        }
        t.push(b"moved", EntryKind::Move, 7).unwrap();
        t.build_index(|b| key.hash(b)).unwrap();
        for i in 0..10_000u16 {
            let name = format!("tenant-{i}");
            assert_eq!(
                t.get(name.as_bytes(), key.hash(name.as_bytes())),
                Some((EntryKind::Override, i))
            );
        }
        assert_eq!(
            t.get(b"moved", key.hash(b"moved")),
            Some((EntryKind::Move, 7))
        );
        assert_eq!(t.get(b"nobody", key.hash(b"nobody")), None);

        t.push(b"tenant-5", EntryKind::Pin, 1).unwrap();
        assert_eq!(t.build_index(|b| key.hash(b)), Err(10_001));
    }

    #[test]
    fn records_keep_document_order_and_values_can_be_rewritten() {
        let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        let mut t = TenantTable::default();
        t.push(b"zeta", EntryKind::Pin, 1).unwrap();
        t.push("\u{79df}\u{6237}".as_bytes(), EntryKind::Override, 2)
            .unwrap();
        t.push(b"alpha", EntryKind::Move, 0).unwrap();
        t.map_values(|kind, v| if kind == EntryKind::Move { v } else { v + 10 });
        t.build_index(|b| key.hash(b)).unwrap();
        let all: Vec<_> = t.iter().map(|(b, k, v)| (b.to_vec(), k, v)).collect();
        assert_eq!(
            all,
            vec![
                (b"zeta".to_vec(), EntryKind::Pin, 11),
                (
                    "\u{79df}\u{6237}".as_bytes().to_vec(),
                    EntryKind::Override,
                    12
                ),
                (b"alpha".to_vec(), EntryKind::Move, 0),
            ]
        );
        assert_eq!(t.entry(2).map(|e| e.0), Some(&b"alpha"[..]));
        assert_eq!(t.len(), 3);
        // A lookup with the right hash but different bytes misses.
        assert_eq!(t.get(b"alphb", key.hash(b"alpha")), None);
        assert_eq!(
            t.get(b"zeta", key.hash(b"zeta")),
            Some((EntryKind::Pin, 11))
        );
    }

    #[test]
    fn equal_tags_are_told_apart_by_bytes() {
        // A hash that collides everything: every probe matches the tag.
        let mut t = TenantTable::default();
        for i in 0..100u16 {
            t.push(format!("t{i}").as_bytes(), EntryKind::Override, i)
                .unwrap();
        }
        t.build_index(|_| 42).unwrap();
        for i in 0..100u16 {
            assert_eq!(
                t.get(format!("t{i}").as_bytes(), 42),
                Some((EntryKind::Override, i))
            );
        }
        assert_eq!(t.get(b"t100", 42), None);
    }

    #[test]
    fn empty_table_and_bad_tenants() {
        let t = TenantTable::default();
        assert_eq!(t.get(b"x", 1), None);
        let mut t = TenantTable::default();
        assert_eq!(t.push(b"", EntryKind::Override, 0), Err(InsertError::Empty));
        assert_eq!(
            t.push(&[b'a'; MAX_TENANT_BYTES + 1], EntryKind::Override, 0),
            Err(InsertError::TooLong(MAX_TENANT_BYTES + 1))
        );
        t.push(&[b'a'; MAX_TENANT_BYTES], EntryKind::Pin, 3)
            .unwrap();
        assert_eq!(
            t.entry(0).map(|(b, k, v)| (b.len(), k, v)),
            Some((MAX_TENANT_BYTES, EntryKind::Pin, 3))
        );
    }
}
