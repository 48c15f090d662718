//! The proxy-wasm wire format for header maps ("pairs"): a u32 count, then a
//! (name length, value length) u32 pair per entry, then every name and value,
//! each followed by a NUL byte. All integers little-endian.

/// Serializes pairs the way the host hands them to the guest.
pub fn encode(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let payload: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + payload);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses pairs sent by the guest. Like Envoy, a buffer too short for the
/// count it announces yields no pairs rather than an error.
pub fn decode(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(count) = read_u32(bytes, 0) else {
        return Vec::new();
    };
    let count = count as usize;
    let Some(mut data) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return Vec::new();
    };
    if data > bytes.len() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (Some(klen), Some(vlen)) = (read_u32(bytes, 4 + i * 8), read_u32(bytes, 8 + i * 8))
        else {
            return Vec::new();
        };
        let (klen, vlen) = (klen as usize, vlen as usize);
        let Some(key) = bytes.get(data..data + klen) else {
            return Vec::new();
        };
        data += klen + 1;
        let Some(value) = bytes.get(data..data + vlen) else {
            return Vec::new();
        };
        data += vlen + 1;
        out.push((key.to_vec(), value.to_vec()));
    }
    out
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_byte_values() {
        let pairs = vec![
            (b":path".to_vec(), b"/v1".to_vec()),
            (b"x-bin".to_vec(), vec![0xff, 0x00, 0xfe]),
            (b"empty".to_vec(), Vec::new()),
        ];
        assert_eq!(decode(&encode(&pairs)), pairs);
    }

    #[test]
    fn truncated_input_yields_nothing() {
        let bytes = encode(&[(b"a".to_vec(), b"b".to_vec())]);
        assert!(decode(&bytes[..bytes.len() - 2]).is_empty());
        assert!(decode(&[1, 0]).is_empty());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_empty());
    }
}
