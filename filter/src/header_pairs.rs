//! Parsing of proxy-wasm serialized header maps, without panics and without
//! requiring UTF-8 names (the SDK's getters unwrap both).
//!
//! Layout (ABI 0.2.1): u32 LE pair count N; N × (u32 LE name length, u32 LE
//! value length); then each name and each value, each followed by a NUL.

/// Name/value pairs borrowed from the serialized map, or `None` if the bytes
/// do not follow the layout.
pub fn parse_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = read_u32(0)?;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    if sizes_end > bytes.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut at = sizes_end;
    for i in 0..count {
        let name_len = read_u32(4 + i * 8)?;
        let value_len = read_u32(8 + i * 8)?;
        let name_end = at.checked_add(name_len)?;
        let name = bytes.get(at..name_end)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let value = bytes.get(value_start..value_end)?;
        at = value_end.checked_add(1)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

/// Serializes pairs in the same layout (for tests and hosts).
pub fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_with_binary_names_and_values() {
        let pairs: Vec<(&[u8], &[u8])> =
            vec![(b":path", b"/v1"), (b"x-\xff", b"\x00\xfe"), (b"", b"")];
        let bytes = serialize_pairs(&pairs);
        assert_eq!(parse_pairs(&bytes), Some(pairs));
        assert_eq!(parse_pairs(&[]), Some(vec![]));
    }

    #[test]
    fn truncated_or_lying_maps_are_refused() {
        let bytes = serialize_pairs(&[(b"name", b"value")]);
        for cut in 1..bytes.len() - 1 {
            assert_eq!(parse_pairs(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse_pairs(&[0xff, 0xff, 0xff, 0xff]), None);
        let mut lying = bytes.clone();
        lying[4] = 200;
        assert_eq!(parse_pairs(&lying), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_pairs(&bytes);
        }

        #[test]
        fn serialized_pairs_parse_back(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..40)), 0..10)
        ) {
            let bytes = serialize_pairs(&pairs);
            let parsed = parse_pairs(&bytes).unwrap();
            let expected: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            prop_assert_eq!(parsed, expected);
        }
    }
}
