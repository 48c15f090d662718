//! A compact tenant → target table for millions of overrides.
//!
//! A `HashMap<String, _>` costs ~50 bytes per entry plus a heap allocation per
//! tenant. Here every entry is one record in a single arena (`len|kind` u16,
//! value u16, then the tenant bytes: 4 bytes + the id). After
//! [`TenantTable::build_index`] the records are grouped by hash bucket (about
//! four per bucket), and a bucket directory holds, per bucket, where its
//! records start and a 32-bit Bloom word of its tenants: 2 bytes per entry.
//! 1 M 15-byte ids take ~21 MB.
//!
//! Why this shape: with a table far larger than the CPU caches, each random
//! memory access costs a cache and TLB miss (~150 ns on a VM), so lookups are
//! counted in accesses. The directory is small enough to stay mostly cached; a
//! miss is almost always decided there (Bloom false positives ~5 %), and a hit
//! reads the directory word and then the bucket's records, which sit together
//! (one or two cache lines). It is looked up with the tenant's routing hash,
//! which the resolver has already computed, so an override lookup costs no
//! extra hashing.
//!
//! A table can also be keyed by that 64-bit hash alone ([`Keys::Hashes`]:
//! 10 bytes a record, the ids are not kept), for gateways that only route:
//! [`TenantTable::to_hashed`] refuses a table in which two tenants share a
//! hash, so every tenant in it is still found exactly, and a tenant that is
//! not in it matches only by a 64-bit collision under the snapshot's secret
//! key (SPEC, "Hashed keys").

use std::sync::Arc;

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
/// A hashed record: the tenant's hash (u64 LE), then `kind|value` (u16 LE:
/// the kind in the top 2 bits, the value in the low 14).
const HASHED_RECORD: usize = 10;
/// The largest value a hashed record holds (a cell or move index).
pub const MAX_HASHED_VALUE: u16 = (1 << LEN_BITS) - 1;

/// How a table's records name their tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keys {
    /// By the tenant's bytes: exact, and the table can list its tenants.
    #[default]
    Ids,
    /// By the tenant's 64-bit routing hash: 10 bytes a record, no ids kept
    /// (the table cannot list its tenants; lookups still need only the hash).
    Hashes,
}

/// How a record names its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key<'a> {
    Id(&'a [u8]),
    Hash(u64),
}

/// The tenant's bytes (none when keyed by hash).
fn tenant_of(key: Key<'_>) -> &[u8] {
    match key {
        Key::Id(tenant) => tenant,
        Key::Hash(_) => &[],
    }
}

/// Why a table could not be keyed by hashes ([`TenantTable::to_hashed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashingError {
    /// Two tenants have the same 64-bit hash under the snapshot's key.
    Collision(String, String),
    /// A cell or move index does not fit the record's 14 bits.
    ValueTooLarge(u16),
}

impl std::fmt::Display for HashingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashingError::Collision(a, b) => write!(
                f,
                "tenants {a:?} and {b:?} have the same 64-bit hash under this snapshot's key"
            ),
            HashingError::ValueTooLarge(v) => write!(
                f,
                "index {v} does not fit a hashed record (cells and moves up to {})",
                u32::from(MAX_HASHED_VALUE) + 1
            ),
        }
    }
}

/// Where a table's bytes live: a vector of its own (built here), or a range
/// of a received binary snapshot that the whole snapshot shares, so applying
/// one copies nothing (`binary::Apply`).
#[derive(Clone, Debug)]
struct Store {
    own: Vec<u8>,
    /// When set, the bytes are `body[start..end]` and `own` is empty.
    shared: Option<(Arc<Vec<u8>>, usize, usize)>,
}

impl Store {
    const fn owned_by(own: Vec<u8>) -> Self {
        Store { own, shared: None }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match &self.shared {
            None => &self.own,
            Some((body, start, end)) => body.get(*start..*end).unwrap_or(&[]),
        }
    }

    /// Its own vector (a shared range is copied first: only the builder
    /// writes, and it never holds a shared table).
    fn owned(&mut self) -> &mut Vec<u8> {
        if let Some((body, start, end)) = self.shared.take() {
            self.own = body.get(start..end).unwrap_or(&[]).to_vec();
        }
        &mut self.own
    }

    fn heap_bytes(&self) -> usize {
        match &self.shared {
            None => self.own.capacity(),
            Some((_, start, end)) => end.saturating_sub(*start),
        }
    }
}

/// Tenant ids with a kind and a 16-bit value each, in insertion order until
/// [`TenantTable::build_index`] groups them by bucket; call it before
/// [`TenantTable::get`].
#[derive(Clone, Debug)]
pub struct TenantTable {
    arena: Store,
    entries: usize,
    /// One little-endian u64 word per bucket plus a sentinel: the bucket's
    /// first record offset in the low 32 bits, its Bloom word in the high
    /// 32. A bucket's records end where the next bucket's start. Empty until
    /// indexed. Bytes, as in the binary form, so a received table is used
    /// in place.
    buckets: Store,
    keys: Keys,
}

impl Default for TenantTable {
    fn default() -> Self {
        TenantTable::EMPTY
    }
}

/// Little-endian u64 words.
fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Records per bucket, on average.
const BUCKET_LOAD: usize = 4;
/// Above this many records a bucket's duplicate check uses a hash set.
const PAIRWISE_LIMIT: usize = 32;

/// The two Bloom bits of a tenant hash (from bits the bucket does not use).
#[inline]
fn bloom_bits(h: u64) -> u32 {
    (1u32 << ((h >> 32) & 31)) | (1u32 << ((h >> 40) & 31))
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

/// The record at `offset` of a bucket ending at `end`, its header checked:
/// a known kind, a tenant of 1 … [`MAX_TENANT_BYTES`] (keyed by id), inside
/// the bucket.
fn record_in_bucket(
    arena: &[u8],
    offset: usize,
    end: usize,
    keys: Keys,
) -> Result<(Key<'_>, EntryKind, u16, usize), String> {
    if keys == Keys::Hashes {
        let (key, kind_value, next) = hashed_record_at(arena, offset)
            .filter(|r| r.2 <= end)
            .ok_or_else(|| format!("record at offset {offset} overruns its bucket"))?;
        if kind_value >> LEN_BITS > 2 {
            return Err(format!("record at offset {offset} has an unknown kind"));
        }
        return Ok((
            key,
            EntryKind::from_bits(kind_value >> LEN_BITS),
            kind_value & LEN_MASK,
            next,
        ));
    }
    let header = arena
        .get(offset..offset.saturating_add(HEADER))
        .ok_or_else(|| format!("record at offset {offset} is cut short"))?;
    let len_kind = match header {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    };
    if len_kind >> LEN_BITS > 2 {
        return Err(format!("record at offset {offset} has an unknown kind"));
    }
    let len = usize::from(len_kind & LEN_MASK);
    if len == 0 || len > MAX_TENANT_BYTES {
        return Err(format!(
            "record at offset {offset} has a tenant of {len} bytes (1 … {MAX_TENANT_BYTES})"
        ));
    }
    record_at(arena, offset, Keys::Ids)
        .filter(|r| r.3 <= end)
        .ok_or_else(|| format!("record at offset {offset} overruns its bucket"))
}

/// A hashed record at `offset`: its hash, `kind|value` and the next offset.
#[inline]
fn hashed_record_at(arena: &[u8], offset: usize) -> Option<(Key<'_>, u16, usize)> {
    let next = offset.checked_add(HASHED_RECORD)?;
    match arena.get(offset..next)? {
        [h @ .., lo, hi] => Some((
            Key::Hash(u64::from_le_bytes(h.try_into().ok()?)),
            u16::from_le_bytes([*lo, *hi]),
            next,
        )),
        _ => None,
    }
}

/// The record at `offset` of an arena: its key, kind, value and the next
/// offset.
#[inline]
fn record_at(arena: &[u8], offset: usize, keys: Keys) -> Option<(Key<'_>, EntryKind, u16, usize)> {
    if keys == Keys::Hashes {
        let (key, kind_value, next) = hashed_record_at(arena, offset)?;
        return Some((
            key,
            EntryKind::from_bits(kind_value >> LEN_BITS),
            kind_value & LEN_MASK,
            next,
        ));
    }
    let header = arena.get(offset..offset.checked_add(HEADER)?)?;
    let (len_kind, value) = match header {
        [a, b, c, d] => (u16::from_le_bytes([*a, *b]), u16::from_le_bytes([*c, *d])),
        _ => return None,
    };
    let len = usize::from(len_kind & LEN_MASK);
    let start = offset + HEADER;
    let tenant = arena.get(start..start + len)?;
    Some((
        Key::Id(tenant),
        EntryKind::from_bits(len_kind >> LEN_BITS),
        value,
        start + len,
    ))
}

/// The bucket of a hash: the low 32 bits scaled to the bucket count
/// (multiply-shift), so the count need not be a power of two.
#[inline]
fn bucket_of(h: u64, buckets: usize) -> usize {
    (((h & 0xffff_ffff) * buckets as u64) >> 32) as usize
}

impl TenantTable {
    /// An empty table (usable in statics).
    pub const EMPTY: TenantTable = TenantTable {
        arena: Store::owned_by(Vec::new()),
        entries: 0,
        buckets: Store::owned_by(Vec::new()),
        keys: Keys::Ids,
    };

    pub fn with_capacity(entries: usize, arena_bytes: usize) -> Self {
        TenantTable {
            arena: Store::owned_by(Vec::with_capacity(
                arena_bytes.saturating_add(entries.saturating_mul(HEADER)),
            )),
            entries: 0,
            buckets: Store::owned_by(Vec::new()),
            keys: Keys::Ids,
        }
    }

    /// Makes room for `entries` more tenants of about `arena_bytes` in all.
    pub fn reserve(&mut self, entries: usize, arena_bytes: usize) {
        self.arena
            .owned()
            .reserve(arena_bytes.saturating_add(entries.saturating_mul(HEADER)));
    }

    /// How the records name their tenant.
    pub fn keys(&self) -> Keys {
        self.keys
    }

    /// Directory word `i`.
    #[inline]
    fn word(&self, i: usize) -> Option<u64> {
        let at = i.checked_mul(8)?;
        let bytes = self.buckets.bytes().get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    /// Directory words (buckets plus the sentinel).
    fn word_count(&self) -> usize {
        self.buckets.bytes().len() / 8
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Appends a tenant. Duplicates are found by [`Self::build_index`].
    /// Only tables keyed by id take tenants.
    pub fn push(&mut self, tenant: &[u8], kind: EntryKind, value: u16) -> Result<(), InsertError> {
        if tenant.is_empty() {
            return Err(InsertError::Empty);
        }
        if tenant.len() > MAX_TENANT_BYTES {
            return Err(InsertError::TooLong(tenant.len()));
        }
        if self.keys == Keys::Hashes {
            return Err(InsertError::TooMany);
        }
        let arena = self.arena.owned();
        // Offsets are stored in 32 bits.
        if arena.len() + HEADER + tenant.len() >= u32::MAX as usize {
            return Err(InsertError::TooMany);
        }
        let len_kind = (tenant.len() as u16) | (kind.to_bits() << LEN_BITS);
        arena.extend_from_slice(&len_kind.to_le_bytes());
        arena.extend_from_slice(&value.to_le_bytes());
        arena.extend_from_slice(tenant);
        self.entries += 1;
        Ok(())
    }

    /// The record at `offset`: key, kind, value and the next offset.
    #[inline]
    fn record(&self, offset: usize) -> Option<(Key<'_>, EntryKind, u16, usize)> {
        record_at(self.arena.bytes(), offset, self.keys)
    }

    /// Offsets of every record, in arena order.
    fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let mut offset = 0;
        std::iter::from_fn(move || {
            let (_, _, _, next) = self.record(offset)?;
            let this = offset;
            offset = next;
            Some(this)
        })
    }

    /// The `i`-th tenant, its kind and value, in insertion order before
    /// [`Self::build_index`] and bucket order after (a scan: for error
    /// reports).
    pub fn entry(&self, i: usize) -> Option<(&[u8], EntryKind, u16)> {
        self.iter().nth(i)
    }

    /// Every tenant with its kind and value. A table keyed by hashes lists
    /// none: check [`Self::keys`] before listing.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], EntryKind, u16)> + '_ {
        self.offsets()
            .filter_map(|offset| match self.record(offset)? {
                (Key::Id(tenant), kind, value, _) => Some((tenant, kind, value)),
                (Key::Hash(_), ..) => None,
            })
    }

    /// Every record's kind and value, however the table is keyed (for
    /// counts).
    pub fn kinds(&self) -> impl Iterator<Item = (EntryKind, u16)> + '_ {
        self.offsets()
            .filter_map(|offset| self.record(offset).map(|(_, kind, value, _)| (kind, value)))
    }

    /// Rewrites every value (e.g. interned cell names → cell indexes) of a
    /// table keyed by id.
    pub fn map_values(&mut self, mut f: impl FnMut(EntryKind, u16) -> u16) {
        if self.keys == Keys::Hashes {
            return;
        }
        let arena = self.arena.owned();
        let mut offset = 0;
        while let Some((_, kind, value, next)) = record_at(arena, offset, Keys::Ids) {
            let new = f(kind, value).to_le_bytes();
            if let Some(slot) = arena.get_mut(offset + 2..offset + HEADER) {
                slot.copy_from_slice(&new);
            }
            offset = next;
        }
    }

    /// Groups the records by bucket and builds the directory, with `hash`
    /// (the snapshot's tenant hash). On a duplicate tenant, returns the
    /// insertion-order position of the first entry that repeats an earlier
    /// one, and leaves the table as it was. (A table keyed by hashes is
    /// indexed already.)
    pub fn build_index(&mut self, hash: impl Fn(&[u8]) -> u64) -> Result<(), usize> {
        if self.keys == Keys::Hashes {
            return Ok(());
        }
        let count = self.entries.div_ceil(BUCKET_LOAD).max(1);
        // Pass 1: bytes per bucket → start offsets.
        let mut starts = vec![0u32; count + 1];
        let mut offset = 0;
        while let Some((key, _, _, next)) = self.record(offset) {
            if let Some(n) = starts.get_mut(bucket_of(hash(tenant_of(key)), count) + 1) {
                *n += (next - offset) as u32;
            }
            offset = next;
        }
        for i in 1..starts.len() {
            let before = starts.get(i - 1).copied().unwrap_or(0);
            if let Some(n) = starts.get_mut(i) {
                *n += before;
            }
        }
        // Pass 2: copy each record to its bucket, in insertion order.
        let mut grouped = vec![0u8; self.arena.bytes().len()];
        let mut fill: Vec<u32> = starts.clone();
        let mut blooms = vec![0u32; count];
        let mut offset = 0;
        while let Some((key, _, _, next)) = self.record(offset) {
            let h = hash(tenant_of(key));
            let b = bucket_of(h, count);
            if let (Some(at), Some(bloom), Some(record)) = (
                fill.get_mut(b),
                blooms.get_mut(b),
                self.arena.bytes().get(offset..next),
            ) {
                let to = *at as usize;
                if let Some(slot) = grouped.get_mut(to..to + record.len()) {
                    slot.copy_from_slice(record);
                }
                *at += record.len() as u32;
                *bloom |= bloom_bits(h);
            }
            offset = next;
        }
        let indexed = TenantTable {
            arena: Store::owned_by(grouped),
            entries: self.entries,
            buckets: Store::owned_by(directory(&starts, &blooms)),
            keys: Keys::Ids,
        };
        if indexed.has_repeated_tenant() {
            return Err(self.first_repeat_position());
        }
        *self = indexed;
        Ok(())
    }

    /// The same table keyed by hashes (`hash`: the snapshot's tenant hash),
    /// indexed: records grouped by bucket as [`Self::build_index`] groups
    /// them and, within a bucket, in increasing hash order. Refused when two
    /// tenants share a hash (then a lookup could not tell them apart) or a
    /// value does not fit 14 bits.
    pub fn to_hashed(&self, hash: impl Fn(&[u8]) -> u64) -> Result<TenantTable, HashingError> {
        if self.keys == Keys::Hashes {
            return Ok(self.clone());
        }
        let count = self.entries.div_ceil(BUCKET_LOAD).max(1);
        // (bucket, hash, kind|value, arena offset): sorted, then written.
        let mut records: Vec<(u32, u64, u16, u32)> = Vec::with_capacity(self.entries);
        for offset in self.offsets() {
            let Some((Key::Id(tenant), kind, value, _)) = self.record(offset) else {
                continue;
            };
            if value > MAX_HASHED_VALUE {
                return Err(HashingError::ValueTooLarge(value));
            }
            let h = hash(tenant);
            records.push((
                bucket_of(h, count) as u32,
                h,
                value | (kind.to_bits() << LEN_BITS),
                offset as u32,
            ));
        }
        records.sort_unstable();
        let tenant_at = |offset: u32| match self.record(offset as usize) {
            Some((Key::Id(tenant), ..)) => String::from_utf8_lossy(tenant).into_owned(),
            _ => String::new(),
        };
        if let Some(pair) = records.windows(2).find(|w| match w {
            [a, b] => a.1 == b.1,
            _ => false,
        }) && let [a, b] = pair
        {
            return Err(HashingError::Collision(tenant_at(a.3), tenant_at(b.3)));
        }
        let mut arena = Vec::with_capacity(records.len() * HASHED_RECORD);
        let mut starts = vec![0u32; count + 1];
        let mut blooms = vec![0u32; count];
        for &(b, h, kind_value, _) in &records {
            let b = b as usize;
            if let (Some(end), Some(bloom)) = (starts.get_mut(b + 1), blooms.get_mut(b)) {
                *end += HASHED_RECORD as u32;
                *bloom |= bloom_bits(h);
            }
            arena.extend_from_slice(&h.to_le_bytes());
            arena.extend_from_slice(&kind_value.to_le_bytes());
        }
        for i in 1..starts.len() {
            let before = starts.get(i - 1).copied().unwrap_or(0);
            if let Some(n) = starts.get_mut(i) {
                *n += before;
            }
        }
        Ok(TenantTable {
            arena: Store::owned_by(arena),
            entries: records.len(),
            buckets: Store::owned_by(directory(&starts, &blooms)),
            keys: Keys::Hashes,
        })
    }

    /// Whether a tenant appears twice (duplicates share a bucket). Pairwise
    /// in small buckets, a hash set in large ones, so crafted ids that crowd
    /// one bucket cost O(n), not O(n²).
    fn has_repeated_tenant(&self) -> bool {
        let mut records: Vec<Key<'_>> = Vec::new();
        for b in 0..self.word_count().saturating_sub(1) {
            let (Some(start), Some(end)) = (self.word(b), self.word(b + 1)) else {
                continue;
            };
            records.clear();
            let (mut offset, end) = ((start as u32) as usize, (end as u32) as usize);
            while offset < end {
                let Some((key, _, _, next)) = self.record(offset) else {
                    break;
                };
                records.push(key);
                offset = next;
            }
            let repeated = if records.len() <= PAIRWISE_LIMIT {
                records
                    .iter()
                    .enumerate()
                    .any(|(i, a)| records.iter().skip(i + 1).any(|b| b == a))
            } else {
                let mut seen = std::collections::HashSet::with_capacity(records.len());
                records.iter().any(|t| !seen.insert(*t))
            };
            if repeated {
                return true;
            }
        }
        false
    }

    /// The insertion-order position of the first entry that repeats an
    /// earlier tenant (an error path: only run once a repeat is known).
    fn first_repeat_position(&self) -> usize {
        let mut seen = std::collections::HashSet::with_capacity(self.entries);
        self.iter()
            .position(|(tenant, _, _)| !seen.insert(tenant))
            .unwrap_or(0)
    }

    /// Looks a tenant up by its bytes and its hash (the one given to
    /// [`Self::build_index`]); a table keyed by hashes compares the hash.
    #[inline]
    pub fn get(&self, tenant: &[u8], h: u64) -> Option<(EntryKind, u16)> {
        let count = self.word_count().checked_sub(1)?;
        if count == 0 {
            return None;
        }
        let b = bucket_of(h, count);
        let word = self.word(b)?;
        let bits = bloom_bits(h);
        if ((word >> 32) as u32) & bits != bits {
            return None;
        }
        let mut offset = (word as u32) as usize;
        let end = (self.word(b + 1)? as u32) as usize;
        while offset < end {
            let (key, kind, value, next) = self.record(offset)?;
            let found = match key {
                Key::Id(bytes) => bytes == tenant,
                Key::Hash(stored) => stored == h,
            };
            if found {
                return Some((kind, value));
            }
            offset = next;
        }
        None
    }

    /// The indexed table's two parts as stored in the binary snapshot form:
    /// the record arena in bucket order and the bucket directory (one
    /// little-endian u64 word per bucket plus a sentinel). Empty directory if
    /// not indexed.
    pub fn indexed_parts(&self) -> (&[u8], &[u8]) {
        (self.arena.bytes(), self.buckets.bytes())
    }

    /// Adopts an arena and a bucket directory as written by
    /// [`Self::indexed_parts`] after [`Self::build_index`], checking
    /// everything a lookup relies on (see [`Self::check_buckets`]). A table
    /// that passes answers [`Self::get`] exactly as the table `build_index`
    /// builds from the same records.
    pub fn from_indexed_parts(
        arena: Vec<u8>,
        buckets: Vec<u64>,
        hash: impl Fn(&[u8]) -> u64,
        check: impl FnMut(&[u8], u64, EntryKind, u16) -> Result<(), String>,
    ) -> Result<Self, String> {
        let table = TenantTable {
            arena: Store::owned_by(arena),
            entries: 0,
            buckets: Store::owned_by(words_to_bytes(&buckets)),
            keys: Keys::Ids,
        }
        .checked_directory()?;
        let (records, _) = table.check_buckets(0..table.bucket_count(), hash, check)?;
        table.with_entries(records)
    }

    /// Adopts the arena and the directory that sit at `arena` and `buckets`
    /// in `body` (a received binary snapshot), in place: nothing is copied.
    /// Checks the directory's ends here (it starts at 0, its sentinel ends
    /// at the arena's end with no Bloom bits); the records are checked by
    /// [`Self::check_buckets`], in as many pieces as the caller likes, and
    /// the count by [`Self::with_entries`]. Not usable before both.
    pub fn adopt(
        body: Arc<Vec<u8>>,
        arena: std::ops::Range<usize>,
        buckets: std::ops::Range<usize>,
        keys: Keys,
    ) -> Result<Self, String> {
        if body.get(arena.clone()).is_none() || body.get(buckets.clone()).is_none() {
            return Err("the table runs past the end of the snapshot".into());
        }
        if !(buckets.end - buckets.start).is_multiple_of(8) {
            return Err("the bucket directory's length is not a multiple of 8".into());
        }
        TenantTable {
            arena: Store {
                own: Vec::new(),
                shared: Some((Arc::clone(&body), arena.start, arena.end)),
            },
            entries: 0,
            buckets: Store {
                own: Vec::new(),
                shared: Some((body, buckets.start, buckets.end)),
            },
            keys,
        }
        .checked_directory()
    }

    /// The directory's ends: at least one bucket, starting at offset 0, the
    /// sentinel at the arena's end with no Bloom bits.
    fn checked_directory(self) -> Result<Self, String> {
        let count = self.bucket_count();
        if count == 0 {
            return Err("the bucket directory needs at least two words".into());
        }
        let start_of = |i: usize| -> usize { self.word(i).map_or(0, |w| (w as u32) as usize) };
        if start_of(0) != 0 {
            return Err("the first bucket must start at offset 0".into());
        }
        let arena_len = self.arena.bytes().len();
        if start_of(count) != arena_len {
            return Err(format!(
                "the directory ends at offset {}, the arena has {arena_len} bytes",
                start_of(count)
            ));
        }
        if self.word(count).is_some_and(|w| (w >> 32) != 0) {
            return Err("the sentinel word must have no Bloom bits".into());
        }
        Ok(self)
    }

    /// Buckets in the directory (words less the sentinel).
    pub fn bucket_count(&self) -> usize {
        self.word_count().saturating_sub(1)
    }

    /// Where bucket `b`'s records start in the arena (the arena's length
    /// for the sentinel): how far a piecewise check has got.
    pub fn bucket_start(&self, b: usize) -> usize {
        self.word(b).map_or(0, |w| (w as u32) as usize)
    }

    /// Checks the records of buckets `range`, without a per-entry
    /// allocation: each bucket never goes back, every record fits its
    /// bucket, has a known kind and (keyed by id) a 1 … 1,024-byte tenant,
    /// its hash (`hash` of the tenant, or the stored hash) puts it in the
    /// bucket it sits in and has its Bloom bits set; `check` accepts it
    /// (given the tenant, empty when keyed by hash, its hash, kind and
    /// value: the caller's own checks, without hashing again); and no
    /// tenant appears twice (a tenant's copies share its bucket; hashed
    /// records must be in strictly increasing hash order). Returns the
    /// records checked and the arena bytes they span.
    pub fn check_buckets(
        &self,
        range: std::ops::Range<usize>,
        hash: impl Fn(&[u8]) -> u64,
        mut check: impl FnMut(&[u8], u64, EntryKind, u16) -> Result<(), String>,
    ) -> Result<(usize, usize), String> {
        let count = self.bucket_count();
        let arena = self.arena.bytes();
        let start_of = |i: usize| -> usize { self.word(i).map_or(0, |w| (w as u32) as usize) };
        let mut entries = 0usize;
        // The bucket's tenants so far, for the duplicate check (pairwise in
        // small buckets, a hash set in large ones, as in `build_index`);
        // done in this pass rather than a second walk over the arena.
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut seen_set: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
        for b in range.start..range.end.min(count) {
            let (mut offset, end) = (start_of(b), start_of(b + 1));
            if end < offset {
                return Err(format!("bucket {b} ends before it starts"));
            }
            seen.clear();
            seen_set.clear();
            let mut previous_hash: Option<u64> = None;
            let bloom = self.word(b).map_or(0, |w| (w >> 32) as u32);
            while offset < end {
                let (key, kind, value, next) = record_in_bucket(arena, offset, end, self.keys)?;
                let (tenant, h) = match key {
                    Key::Id(tenant) => (tenant, hash(tenant)),
                    Key::Hash(h) => (&[][..], h),
                };
                if bucket_of(h, count) != b {
                    return Err(format!(
                        "record at offset {offset} is not in its tenant's bucket"
                    ));
                }
                if bloom & bloom_bits(h) != bloom_bits(h) {
                    return Err(format!(
                        "bucket {b} lacks the Bloom bits of the record at offset {offset}"
                    ));
                }
                check(tenant, h, kind, value)
                    .map_err(|why| format!("record at offset {offset}: {why}"))?;
                let repeated = match key {
                    Key::Hash(_) => {
                        if previous_hash.is_some_and(|p| p > h) {
                            return Err(format!(
                                "record at offset {offset} is out of hash order in bucket {b}"
                            ));
                        }
                        let repeated = previous_hash == Some(h);
                        previous_hash = Some(h);
                        repeated
                    }
                    Key::Id(_) if seen.len() < PAIRWISE_LIMIT => {
                        let repeated = seen.contains(&tenant);
                        seen.push(tenant);
                        repeated
                    }
                    Key::Id(_) => {
                        if seen_set.is_empty() {
                            seen_set.extend(seen.iter().copied());
                        }
                        !seen_set.insert(tenant)
                    }
                };
                if repeated {
                    return Err("a tenant appears more than once".into());
                }
                entries += 1;
                offset = next;
            }
        }
        let bytes = start_of(range.end.min(count)).saturating_sub(start_of(range.start.min(count)));
        Ok((entries, bytes))
    }

    /// Buckets `range` walked without the per-record checks, for bytes
    /// whose records were already checked (the same bytes, by checksum, in
    /// another reader): each record is still parsed and kept inside its
    /// bucket, so the table's count and its moves are known. Keyed by hash,
    /// records have a fixed size: only the buckets are walked (each a whole
    /// number of records) and moves are not counted (`None`). Returns the
    /// records, the move records among them, and the arena bytes walked.
    pub fn count_buckets(
        &self,
        range: std::ops::Range<usize>,
    ) -> Result<(usize, Option<usize>, usize), String> {
        let count = self.bucket_count();
        let arena = self.arena.bytes();
        let start_of = |i: usize| -> usize { self.word(i).map_or(0, |w| (w as u32) as usize) };
        let (mut entries, mut moves) = (0usize, 0usize);
        for b in range.start..range.end.min(count) {
            let (mut offset, end) = (start_of(b), start_of(b + 1));
            if end < offset {
                return Err(format!("bucket {b} ends before it starts"));
            }
            if self.keys == Keys::Hashes {
                let span = end - offset;
                if !span.is_multiple_of(HASHED_RECORD) || end > arena.len() {
                    return Err(format!("bucket {b} is not a whole number of records"));
                }
                entries += span / HASHED_RECORD;
                continue;
            }
            while offset < end {
                let (_, kind, _, next) = record_in_bucket(arena, offset, end, self.keys)?;
                entries += 1;
                moves += usize::from(kind == EntryKind::Move);
                offset = next;
            }
        }
        let bytes = start_of(range.end.min(count)).saturating_sub(start_of(range.start.min(count)));
        let moves = (self.keys == Keys::Ids).then_some(moves);
        Ok((entries, moves, bytes))
    }

    /// The table once every bucket has been checked, holding `entries`
    /// records: the directory must have the bucket count `build_index`
    /// would choose for them.
    pub fn with_entries(mut self, entries: usize) -> Result<Self, String> {
        let want = entries.div_ceil(BUCKET_LOAD).max(1);
        if want != self.bucket_count() {
            return Err(format!(
                "{entries} records need {want} buckets, the directory has {}",
                self.bucket_count()
            ));
        }
        self.entries = entries;
        Ok(self)
    }

    /// Heap bytes held (for memory reports).
    pub fn heap_bytes(&self) -> usize {
        self.arena.heap_bytes() + self.buckets.heap_bytes()
    }
}

/// The directory's bytes from bucket starts (one more than buckets: the
/// sentinel) and Bloom words.
fn directory(starts: &[u32], blooms: &[u32]) -> Vec<u8> {
    let words: Vec<u64> = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            u64::from(start) | (u64::from(blooms.get(i).copied().unwrap_or(0)) << 32)
        })
        .collect();
    words_to_bytes(&words)
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
        let expected = vec![
            (b"zeta".to_vec(), EntryKind::Pin, 11),
            (
                "\u{79df}\u{6237}".as_bytes().to_vec(),
                EntryKind::Override,
                12,
            ),
            (b"alpha".to_vec(), EntryKind::Move, 0),
        ];
        let all =
            |t: &TenantTable| -> Vec<_> { t.iter().map(|(b, k, v)| (b.to_vec(), k, v)).collect() };
        assert_eq!(all(&t), expected);
        assert_eq!(t.entry(2).map(|e| e.0), Some(&b"alpha"[..]));
        t.build_index(|b| key.hash(b)).unwrap();
        // Indexed: grouped by bucket, same entries.
        let mut sorted = all(&t);
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = expected.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(sorted, want);
        assert_eq!(t.len(), 3);
        // A lookup with the right hash but different bytes misses.
        assert_eq!(t.get(b"alphb", key.hash(b"alpha")), None);
        assert_eq!(
            t.get(b"zeta", key.hash(b"zeta")),
            Some((EntryKind::Pin, 11))
        );
    }

    #[test]
    fn duplicates_are_reported_at_their_first_repeat_in_insertion_order() {
        let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        for hash in [&(|b: &[u8]| key.hash(b)) as &dyn Fn(&[u8]) -> u64, &|_| 7] {
            let mut t = TenantTable::default();
            for i in 0..100u16 {
                t.push(format!("t{i}").as_bytes(), EntryKind::Override, i)
                    .unwrap();
            }
            t.push(b"t70", EntryKind::Pin, 0).unwrap();
            t.push(b"t3", EntryKind::Pin, 0).unwrap();
            assert_eq!(t.build_index(hash), Err(100));
            // The table is left as it was, in insertion order.
            assert_eq!(t.entry(101).map(|e| e.0), Some(&b"t3"[..]));
        }
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
    fn hashed_tables_find_by_hash_and_refuse_collisions() {
        let key = HashKey::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let hash = |b: &[u8]| key.hash(b);
        let mut t = TenantTable::default();
        for i in 0..1_000u16 {
            t.push(format!("tenant-{i}").as_bytes(), EntryKind::Override, i)
                .unwrap();
        }
        t.push(b"moved", EntryKind::Move, 7).unwrap();
        t.push(b"pinned", EntryKind::Pin, MAX_HASHED_VALUE).unwrap();
        t.build_index(hash).unwrap();
        let hashed = t.to_hashed(hash).unwrap();
        assert_eq!(hashed.keys(), Keys::Hashes);
        assert_eq!(hashed.len(), t.len());
        assert_eq!(hashed.bucket_count(), t.bucket_count());
        assert_eq!(hashed.indexed_parts().0.len(), HASHED_RECORD * t.len());
        for (tenant, kind, value) in t.iter() {
            assert_eq!(hashed.get(tenant, hash(tenant)), Some((kind, value)));
            // Only the hash is compared: the bytes are not kept.
            assert_eq!(hashed.get(b"", hash(tenant)), Some((kind, value)));
        }
        assert_eq!(hashed.get(b"nobody", hash(b"nobody")), None);
        assert_eq!(hashed.iter().count(), 0);
        // Re-adopted from its parts, every check passes.
        let (arena, directory) = hashed.indexed_parts();
        let mut body = arena.to_vec();
        body.extend_from_slice(directory);
        let body = Arc::new(body);
        let adopted = TenantTable::adopt(
            Arc::clone(&body),
            0..arena.len(),
            arena.len()..body.len(),
            Keys::Hashes,
        )
        .unwrap();
        let (records, _) = adopted
            .check_buckets(0..adopted.bucket_count(), hash, |_, _, _, _| Ok(()))
            .unwrap();
        assert_eq!(records, t.len());

        // Two tenants with one hash cannot be told apart: refused, named.
        let weak = |b: &[u8]| {
            if b == b"tenant-9" {
                hash(b"tenant-3")
            } else {
                hash(b)
            }
        };
        let mut collide = TenantTable::default();
        for i in 0..10u16 {
            collide
                .push(format!("tenant-{i}").as_bytes(), EntryKind::Override, i)
                .unwrap();
        }
        let error = collide.to_hashed(weak).unwrap_err();
        assert_eq!(
            error,
            HashingError::Collision("tenant-3".into(), "tenant-9".into())
        );
        assert!(error.to_string().contains("same 64-bit hash"), "{error}");
        // An index above 14 bits does not fit.
        let mut big = TenantTable::default();
        big.push(b"x", EntryKind::Override, MAX_HASHED_VALUE + 1)
            .unwrap();
        assert_eq!(
            big.to_hashed(hash).unwrap_err(),
            HashingError::ValueTooLarge(MAX_HASHED_VALUE + 1)
        );
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

    #[test]
    fn adopted_parts_refuse_a_repeated_tenant_in_small_and_large_buckets() {
        // Every tenant hashes to 0: one bucket, Bloom bit 0.
        for (others, repeat) in [(1usize, true), (40, true), (40, false)] {
            let mut t = TenantTable::default();
            for i in 0..others {
                t.push(format!("t{i}").as_bytes(), EntryKind::Override, 0)
                    .unwrap();
            }
            if repeat {
                t.push(b"t0", EntryKind::Pin, 0).unwrap();
            }
            let entries = t.len();
            let count = entries.div_ceil(BUCKET_LOAD).max(1);
            // All in bucket 0: the first word holds the Bloom bit, the
            // others start (and end) at the arena's end.
            let mut words = vec![t.arena.bytes().len() as u64; count + 1];
            words[0] = 1u64 << 32;
            let got = TenantTable::from_indexed_parts(
                t.arena.bytes().to_vec(),
                words,
                |_| 0,
                |_, _, _, _| Ok(()),
            );
            if repeat {
                assert_eq!(got.unwrap_err(), "a tenant appears more than once");
            } else {
                // Only bucket 0 may hold them: with hash 0 they are all there.
                assert_eq!(got.unwrap().len(), entries);
            }
        }
    }

    proptest::proptest! {
        /// The table agrees with a plain map, also under a weak hash that
        /// crowds tenants into few buckets and collides Bloom bits.
        #[test]
        fn agrees_with_a_map(
            tenants in proptest::collection::vec("[a-c]{1,4}", 0..300),
            probes in proptest::collection::vec("[a-d]{1,5}", 0..100),
            weak in proptest::bool::ANY,
        ) {
            let key = HashKey::from_hex("00112233445566778899aabbccddeeff").unwrap();
            let hash = |b: &[u8]| if weak { key.hash(b) % 7 } else { key.hash(b) };
            let mut t = TenantTable::default();
            let mut model = std::collections::HashMap::new();
            let mut first_repeat = None;
            for (i, tenant) in tenants.iter().enumerate() {
                t.push(tenant.as_bytes(), EntryKind::Override, i as u16).unwrap();
                if model.insert(tenant.clone(), i as u16).is_some() && first_repeat.is_none() {
                    first_repeat = Some(i);
                }
            }
            match first_repeat {
                Some(i) => proptest::prop_assert_eq!(t.build_index(hash), Err(i)),
                None => {
                    t.build_index(hash).unwrap();
                    for probe in tenants.iter().chain(&probes) {
                        let want = model.get(probe).map(|&v| (EntryKind::Override, v));
                        proptest::prop_assert_eq!(t.get(probe.as_bytes(), hash(probe.as_bytes())), want);
                    }
                    proptest::prop_assert_eq!(t.iter().count(), tenants.len());
                }
            }
        }
    }
}
