//! Signature checks by the host: Envoy's `verify_signature` foreign function
//! (BoringSSL), several times faster than RSA and ECDSA in the Wasm VM.
//!
//! Envoy takes a serialized `VerifySignatureArguments` protobuf (hash name,
//! SubjectPublicKeyInfo DER, signature, signed text) and answers a
//! `VerifySignatureResult` (`bool result = 1; string error = 2;`). RSA
//! signatures are PKCS#1 v1.5 (RS256/384/512); ECDSA signatures must be DER,
//! so the JWS form (r‖s) is converted. PS* and EdDSA stay in the VM: Envoy
//! verifies with the key's default padding and always with a digest.

/// What the host said about a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostVerdict {
    Valid,
    Invalid,
    /// The host cannot check it (no such function, key refused, ...):
    /// verify in the VM instead.
    Unavailable,
}

/// A signature checker outside the VM.
pub trait SignatureHost {
    /// `hash` is `sha256`, `sha384` or `sha512`; `public_key_der` a
    /// SubjectPublicKeyInfo; `signature` in the host's form (DER for ECDSA).
    fn verify_signature(
        &mut self,
        hash: &str,
        public_key_der: &[u8],
        signature: &[u8],
        text: &[u8],
    ) -> HostVerdict;
}

/// No host: everything is verified in the VM.
pub struct NoHost;

impl SignatureHost for NoHost {
    fn verify_signature(&mut self, _: &str, _: &[u8], _: &[u8], _: &[u8]) -> HostVerdict {
        HostVerdict::Unavailable
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Serializes `VerifySignatureArguments` (public key as DER, field 2).
pub fn encode_arguments(
    hash: &str,
    public_key_der: &[u8],
    signature: &[u8],
    text: &[u8],
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + hash.len() + public_key_der.len() + signature.len() + text.len());
    put_bytes(&mut out, 1, hash.as_bytes());
    put_bytes(&mut out, 2, public_key_der);
    put_bytes(&mut out, 3, signature);
    put_bytes(&mut out, 4, text);
    out
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Parses `VerifySignatureResult`: (result, error). `None` if the bytes are
/// not a well-formed message.
pub fn decode_result(bytes: &[u8]) -> Option<(bool, String)> {
    let mut at = 0;
    let mut result = false;
    let mut error = String::new();
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let value = read_varint(bytes, &mut at)?;
                if field == 1 {
                    result = value != 0;
                }
            }
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                let value = bytes.get(at..end)?;
                if field == 2 {
                    error = String::from_utf8_lossy(value).into_owned();
                }
                at = end;
            }
            1 => at = at.checked_add(8).filter(|end| *end <= bytes.len())?,
            5 => at = at.checked_add(4).filter(|end| *end <= bytes.len())?,
            _ => return None,
        }
    }
    Some((result, error))
}

fn der_integer(out: &mut Vec<u8>, big_endian: &[u8]) {
    let first = big_endian
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(big_endian.len());
    let trimmed = big_endian.get(first..).unwrap_or_default();
    let pad = trimmed.first().is_none_or(|b| b & 0x80 != 0);
    out.push(0x02);
    out.push((trimmed.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

/// JWS ECDSA signature (r‖s, each `size` bytes) → DER `ECDSA-Sig-Value`.
/// `None` if the length is wrong (the signature cannot verify then).
pub fn ecdsa_jws_to_der(raw: &[u8], size: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * size || size > 60 {
        return None;
    }
    let (r, s) = raw.split_at(size);
    let mut body = Vec::with_capacity(2 * size + 6);
    der_integer(&mut body, r);
    der_integer(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(0x30);
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn arguments_are_protobuf_length_delimited_fields() {
        let bytes = encode_arguments("sha256", &[1, 2], &[3], b"hi");
        assert_eq!(
            bytes,
            vec![
                0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6', 0x12, 2, 1, 2, 0x1a, 1, 3, 0x22, 2,
                b'h', b'i'
            ]
        );
        // Long fields get multi-byte lengths.
        let long = encode_arguments("sha256", &[7; 300], &[], &[]);
        assert_eq!(&long[8..11], &[0x12, 0xac, 0x02]);
    }

    #[test]
    fn results_decode() {
        assert_eq!(decode_result(&[0x08, 1]), Some((true, String::new())));
        assert_eq!(decode_result(&[]), Some((false, String::new())));
        assert_eq!(
            decode_result(&[0x08, 0, 0x12, 3, b'b', b'a', b'd']),
            Some((false, "bad".to_string()))
        );
        // Unknown fields are skipped; truncation is refused.
        assert_eq!(
            decode_result(&[0x18, 5, 0x08, 1]),
            Some((true, String::new()))
        );
        assert_eq!(decode_result(&[0x12, 9, b'x']), None);
        assert_eq!(decode_result(&[0x08]), None);
        assert_eq!(decode_result(&[0x0b]), None);
    }

    #[test]
    fn ecdsa_signatures_become_minimal_der() {
        let mut raw = [0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its high bit set: needs a 0 pad
        let der = ecdsa_jws_to_der(&raw, 32).unwrap();
        assert_eq!(&der[..5], &[0x30, 3 + 35, 0x02, 1, 1]);
        assert_eq!(&der[5..8], &[0x02, 33, 0x00]);
        assert_eq!(der.len(), 2 + 3 + 35);
        assert_eq!(ecdsa_jws_to_der(&raw[..63], 32), None);
        // All-zero integers stay one byte long.
        let zero = ecdsa_jws_to_der(&[0; 96], 48).unwrap();
        assert_eq!(zero, vec![0x30, 6, 0x02, 1, 0, 0x02, 1, 0]);
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_result(&bytes);
        }

        #[test]
        fn der_lengths_are_consistent(raw in proptest::collection::vec(any::<u8>(), 96)) {
            let der = ecdsa_jws_to_der(&raw, 48).unwrap();
            prop_assert_eq!(usize::from(der[1]) + 2, der.len());
        }
    }
}
