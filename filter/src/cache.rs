//! Verified-token cache, one per VM: repeated tokens skip signature work.
//!
//! Keyed by a 128-bit SipHash-1-3 of the token under a random per-VM key, so
//! the cache holds no tokens, and nobody can aim collisions at it without the
//! key. Entries carry the token's validity window (with the clock skew) and
//! are only served inside it. Bounded: when full, expired entries are swept
//! (at most once a second), else an arbitrary entry makes room.

use crate::token::Verified;
use siphasher::sip128::{Hasher128, SipHasher13};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// The keys are already uniform keyed hashes: hashing them again is waste.
#[derive(Default)]
struct KeyAsHash(u64);

impl Hasher for KeyAsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

#[derive(Clone, Debug)]
struct Entry {
    tenant: Box<str>,
    split_key: Option<Box<str>>,
    /// Usable from (nbf/iat minus the skew), unix seconds.
    from: u64,
    /// Usable until (exp plus the skew), unix seconds; none = no exp.
    until: Option<u64>,
}

impl Entry {
    fn usable_at(&self, now_s: u64) -> bool {
        now_s >= self.from && self.until.is_none_or(|until| now_s <= until)
    }
}

/// A cache key: the token's keyed 128-bit hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey(u128);

pub struct TokenCache {
    k0: u64,
    k1: u64,
    capacity: usize,
    skew_s: u64,
    map: HashMap<TokenKey, Entry, BuildHasherDefault<KeyAsHash>>,
    next_sweep_s: u64,
}

impl TokenCache {
    /// `key` must be secret and random (per VM); `capacity` 0 disables.
    pub fn new(capacity: usize, skew_s: u64, key: [u8; 16]) -> Self {
        let (k0, k1) = key.split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        TokenCache {
            k0: word(k0),
            k1: word(k1),
            capacity,
            skew_s,
            map: HashMap::default(),
            next_sweep_s: 0,
        }
    }

    /// Forgets every entry (a verification key left the key set: tokens it
    /// verified must be checked again).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn key(&self, token: &[u8]) -> TokenKey {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write(token);
        TokenKey(hasher.finish128().as_u128())
    }

    /// The tenant and split key of a cached token still valid at `now_s`. An
    /// entry outside its window is dropped, so the token is verified (and
    /// refused) again.
    pub fn get(&mut self, key: TokenKey, now_s: u64) -> Option<(&str, Option<&str>)> {
        let usable = self.map.get(&key)?.usable_at(now_s);
        if !usable {
            self.map.remove(&key);
            return None;
        }
        self.map
            .get(&key)
            .map(|e| (&*e.tenant, e.split_key.as_deref()))
    }

    pub fn insert(&mut self, key: TokenKey, verified: &Verified, now_s: u64) {
        if self.capacity == 0 {
            return;
        }
        let entry = Entry {
            tenant: verified.tenant.clone().into_boxed_str(),
            split_key: verified.split_key.as_deref().map(Box::from),
            from: verified
                .valid_from
                .map_or(0, |t| t.saturating_sub(self.skew_s)),
            until: verified.expires_at.map(|t| t.saturating_add(self.skew_s)),
        };
        if !entry.usable_at(now_s) {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            if now_s >= self.next_sweep_s {
                self.map.retain(|_, e| e.usable_at(now_s));
                self.next_sweep_s = now_s + 1;
            }
            while self.map.len() >= self.capacity {
                let Some(victim) = self.map.keys().next().copied() else {
                    break;
                };
                self.map.remove(&victim);
            }
        }
        self.map.insert(key, entry);
    }
}
