//! The normative hash functions (see `SPEC.md`, "Routing function").
//!
//! Everything here must be reproducible in any language: SipHash-1-3 with a
//! 128-bit key, over raw bytes, read as a u64.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Basis points: the unit of shares (`shed_ratio`, `percent`) after parsing,
/// so that shares compare as integers in every language.
pub const BASIS_POINTS: u16 = 10_000;

/// Domain byte prepended to the split key when deciding a gradual move.
pub const DRAW_DOMAIN_MOVE: u8 = b'm';
/// Domain byte prepended to the split key when deciding whether a ramping
/// cell keeps a request.
pub const DRAW_DOMAIN_RAMP: u8 = b'r';
// No domain for shedding: the shed draw is not a hash of anything the
// client sends but random per request, chosen by the gateway
// ([`crate::Draws::shed`]). (`s` was its domain once; keep it unused.)

/// The 16-byte SipHash key of a snapshot (`hash.key`, 32 hex characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashKey {
    k0: u64,
    k1: u64,
}

impl HashKey {
    /// k0 is the little-endian u64 of bytes 0..8, k1 of bytes 8..16.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(bytes.get(..8).unwrap_or(&[0; 8]));
        k1.copy_from_slice(bytes.get(8..).unwrap_or(&[0; 8]));
        HashKey {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// Parses 32 hex characters (either case).
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let raw = hex.as_bytes();
        if raw.len() != 32 {
            return Err(format!(
                "must be 32 hex characters (16 bytes), got {} characters",
                hex.chars().count()
            ));
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(raw.chunks_exact(2)) {
            let digit = |c: u8| -> Result<u8, String> {
                (c as char)
                    .to_digit(16)
                    .map(|d| d as u8)
                    .ok_or_else(|| format!("{:?} is not a hex digit", c as char))
            };
            let (hi, lo) = match pair {
                [hi, lo] => (*hi, *lo),
                _ => return Err("odd number of hex digits".to_string()),
            };
            *byte = (digit(hi)? << 4) | digit(lo)?;
        }
        Ok(Self::from_bytes(bytes))
    }

    /// The key as 32 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        for byte in self
            .k0
            .to_le_bytes()
            .iter()
            .chain(self.k1.to_le_bytes().iter())
        {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// SipHash-1-3 of `bytes` under this key.
    #[inline]
    pub fn hash(&self, bytes: &[u8]) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write(bytes);
        hasher.finish()
    }

    /// SipHash-1-3 under this key over bytes given in pieces: the same as
    /// [`Self::hash`] of their concatenation.
    pub fn incremental(&self) -> IncrementalHash {
        IncrementalHash(SipHasher13::new_with_keys(self.k0, self.k1))
    }

    /// A keyed draw in `0..10_000`: SipHash-1-3 over the domain byte
    /// followed by the key (the split key for moves and ramps), modulo
    /// 10,000. Compared with a share in basis points: `draw < share` selects.
    #[inline]
    pub fn draw(&self, domain: u8, key: &[u8]) -> u16 {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write(&[domain]);
        hasher.write(key);
        (hasher.finish() % u64::from(BASIS_POINTS)) as u16
    }
}

/// [`HashKey::incremental`]: a hash fed in pieces.
#[derive(Clone, Debug)]
pub struct IncrementalHash(SipHasher13);

impl IncrementalHash {
    pub fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    pub fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// Converts a ratio in 0..=1 to basis points, rounding to nearest.
pub fn ratio_to_basis_points(ratio: f64) -> u16 {
    (ratio.clamp(0.0, 1.0) * f64::from(BASIS_POINTS)).round() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_key_layout() {
        let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(key.k0, 0x0706050403020100);
        assert_eq!(key.k1, 0x0f0e0d0c0b0a0908);
        assert_eq!(key.to_hex(), "000102030405060708090a0b0c0d0e0f");
    }

    #[test]
    fn hex_errors() {
        assert!(HashKey::from_hex("00").is_err());
        assert!(HashKey::from_hex("zz0102030405060708090a0b0c0d0e0f").is_err());
        assert!(HashKey::from_hex("é0102030405060708090a0b0c0d0e0").is_err());
    }

    /// Values computed by the independent Python SipHash-1-3 in
    /// `tests/vectors_check.py`; two implementations agreeing is the point.
    #[test]
    fn siphash13_matches_independent_python_reference() {
        let key = HashKey::from_bytes(core::array::from_fn(|i| i as u8));
        assert_eq!(key.hash(b""), 0xabac0158050fc4dc);
        let fifteen: Vec<u8> = (0..15).collect();
        assert_eq!(key.hash(&fifteen), 0xd320d86d2a519956);
        assert_eq!(key.hash(b"tenant-42"), 0x6dfb952b15628f6e);
    }

    #[test]
    fn draw_hashes_domain_then_key_as_one_message() {
        let key = HashKey::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let whole = key.hash(b"ruser-123456789") % 10_000;
        assert_eq!(
            u64::from(key.draw(DRAW_DOMAIN_RAMP, b"user-123456789")),
            whole
        );
    }

    #[test]
    fn draw_is_in_range_and_domain_separated() {
        let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        let mut differ = 0;
        for i in 0..1000u32 {
            let id = i.to_string();
            let m = key.draw(DRAW_DOMAIN_MOVE, id.as_bytes());
            let s = key.draw(DRAW_DOMAIN_RAMP, id.as_bytes());
            assert!(m < BASIS_POINTS && s < BASIS_POINTS);
            differ += usize::from(m != s);
        }
        assert!(differ > 990);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio_to_basis_points(0.0), 0);
        assert_eq!(ratio_to_basis_points(0.25), 2500);
        assert_eq!(ratio_to_basis_points(1.0), 10_000);
        assert_eq!(ratio_to_basis_points(0.00005), 1);
    }
}
