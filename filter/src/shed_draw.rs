//! The shed draw (mapping/SPEC.md, "Routing function"): uniform in
//! `0..10_000`, independent per request, and not a function of anything the
//! client sends. A client that could predict or choose it could find requests
//! that are never shed, or be shed on every retry.
//!
//! One generator per VM: SipHash-1-3 of a counter under a 128-bit key taken
//! once from the host's random source (WASI `random_get`) when the VM is
//! configured. SipHash is a keyed PRF, so without the key the outputs cannot
//! be predicted from earlier ones; a draw costs one short hash and no host
//! call.

use cell_router_mapping::hash::BASIS_POINTS;
use siphasher::sip::SipHasher13;
use std::hash::Hasher;

pub struct ShedDraws {
    k0: u64,
    k1: u64,
    counter: u64,
}

impl ShedDraws {
    /// `key` must be secret and random per VM.
    pub fn new(key: [u8; 16]) -> Self {
        let (k0, k1) = key.split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        ShedDraws {
            k0: word(k0),
            k1: word(k1),
            counter: 0,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write_u64(self.counter);
        hasher.finish()
    }

    /// The next shed draw, in `0..10_000` (the high part of a 64×14-bit
    /// product: biased by less than 10⁻¹⁵).
    pub fn draw(&mut self) -> u16 {
        ((u128::from(self.next_u64()) * u128::from(BASIS_POINTS)) >> 64) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_in_range() {
        let mut draws = ShedDraws::new(*b"0123456789abcdef");
        let n = 200_000;
        let mut buckets = [0u32; 10];
        for _ in 0..n {
            let d = draws.draw();
            assert!(d < BASIS_POINTS);
            buckets[usize::from(d / 1000)] += 1;
        }
        // Each tenth holds 20,000 ± 5σ (σ ≈ 134).
        for (i, &count) in buckets.iter().enumerate() {
            assert!((19_330..=20_670).contains(&count), "bucket {i}: {count}");
        }
    }

    #[test]
    fn keys_give_different_sequences() {
        let mut a = ShedDraws::new([1; 16]);
        let mut b = ShedDraws::new([2; 16]);
        let same = (0..1000).filter(|_| a.draw() == b.draw()).count();
        assert!(same < 10, "{same}");
    }
}
