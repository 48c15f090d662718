//! A compact tenant → target table for millions of overrides.
//!
//! A `HashMap<String, _>` costs ~50 bytes per entry plus a heap allocation per
//! tenant; this keeps all tenant bytes in one arena, 12 bytes of entry per
//! tenant and a power-of-two open-addressing index of `u32`s at load ≤ 0.5.
//! It is looked up with the tenant's routing hash, which the resolver has
//! already computed, so an override lookup costs no extra hashing.

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

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// High 32 bits of the tenant hash: most probes that miss stop here.
    tag: u32,
    start: u32,
    /// Tenant length in the low 14 bits, kind in the high 2.
    len_kind: u16,
    value: u16,
}

impl Entry {
    fn len(&self) -> usize {
        usize::from(self.len_kind & LEN_MASK)
    }

    fn kind(&self) -> EntryKind {
        EntryKind::from_bits(self.len_kind >> LEN_BITS)
    }
}

/// Tenant ids in insertion order, with a kind and a 16-bit value each; call
/// [`TenantTable::build_index`] before [`TenantTable::get`].
#[derive(Clone, Debug, Default)]
pub struct TenantTable {
    arena: Vec<u8>,
    entries: Vec<Entry>,
    /// 0 = empty; otherwise entry index + 1.
    index: Vec<u32>,
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

impl TenantTable {
    pub fn with_capacity(entries: usize, arena_bytes: usize) -> Self {
        TenantTable {
            arena: Vec::with_capacity(arena_bytes),
            entries: Vec::with_capacity(entries),
            index: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a tenant. Duplicates are found by [`Self::build_index`].
    pub fn push(&mut self, tenant: &[u8], kind: EntryKind, value: u16) -> Result<(), InsertError> {
        if tenant.is_empty() {
            return Err(InsertError::Empty);
        }
        if tenant.len() > MAX_TENANT_BYTES {
            return Err(InsertError::TooLong(tenant.len()));
        }
        let start = u32::try_from(self.arena.len()).map_err(|_| InsertError::TooMany)?;
        if self.entries.len() >= (u32::MAX / 2) as usize {
            return Err(InsertError::TooMany);
        }
        self.arena.extend_from_slice(tenant);
        self.entries.push(Entry {
            tag: 0,
            start,
            len_kind: (tenant.len() as u16) | (kind.to_bits() << LEN_BITS),
            value,
        });
        Ok(())
    }

    /// The `i`-th tenant, its kind and value.
    pub fn entry(&self, i: usize) -> Option<(&[u8], EntryKind, u16)> {
        let entry = self.entries.get(i)?;
        Some((self.tenant_bytes(entry), entry.kind(), entry.value))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], EntryKind, u16)> + '_ {
        self.entries
            .iter()
            .map(|e| (self.tenant_bytes(e), e.kind(), e.value))
    }

    /// Rewrites every value (e.g. interned cell names → cell indexes).
    pub fn map_values(&mut self, mut f: impl FnMut(EntryKind, u16) -> u16) {
        for entry in &mut self.entries {
            entry.value = f(entry.kind(), entry.value);
        }
    }

    fn tenant_bytes(&self, entry: &Entry) -> &[u8] {
        let start = entry.start as usize;
        self.arena.get(start..start + entry.len()).unwrap_or(&[])
    }

    /// Builds the lookup index with `hash` (the snapshot's tenant hash).
    /// Returns the index of the first entry that repeats an earlier tenant.
    pub fn build_index(&mut self, hash: impl Fn(&[u8]) -> u64) -> Result<(), usize> {
        self.arena.shrink_to_fit();
        self.entries.shrink_to_fit();
        let capacity = (self.entries.len() * 2).next_power_of_two().max(2);
        self.index = vec![0u32; capacity];
        let mask = capacity - 1;
        for i in 0..self.entries.len() {
            let Some(entry) = self.entries.get(i) else {
                break;
            };
            let h = hash(self.tenant_bytes(entry));
            let tag = (h >> 32) as u32;
            if let Some(e) = self.entries.get_mut(i) {
                e.tag = tag;
            }
            let mut bucket = (h as usize) & mask;
            loop {
                let Some(&occupant) = self.index.get(bucket) else {
                    return Err(i);
                };
                if occupant == 0 {
                    if let Some(b) = self.index.get_mut(bucket) {
                        *b = (i as u32) + 1;
                    }
                    break;
                }
                let other = occupant as usize - 1;
                if self.same_tenant(other, i) {
                    return Err(i);
                }
                bucket = (bucket + 1) & mask;
            }
        }
        Ok(())
    }

    fn same_tenant(&self, a: usize, b: usize) -> bool {
        match (self.entries.get(a), self.entries.get(b)) {
            (Some(x), Some(y)) => x.tag == y.tag && self.tenant_bytes(x) == self.tenant_bytes(y),
            _ => false,
        }
    }

    /// Looks a tenant up by its bytes and its hash (the one given to
    /// [`Self::build_index`]).
    #[inline]
    pub fn get(&self, tenant: &[u8], h: u64) -> Option<(EntryKind, u16)> {
        if self.index.is_empty() {
            return None;
        }
        let mask = self.index.len() - 1;
        let tag = (h >> 32) as u32;
        let mut bucket = (h as usize) & mask;
        loop {
            let occupant = *self.index.get(bucket)?;
            if occupant == 0 {
                return None;
            }
            let entry = self.entries.get(occupant as usize - 1)?;
            if entry.tag == tag && self.tenant_bytes(entry) == tenant {
                return Some((entry.kind(), entry.value));
            }
            bucket = (bucket + 1) & mask;
        }
    }

    /// Heap bytes held (for memory reports).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.index.capacity() * std::mem::size_of::<u32>()
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
