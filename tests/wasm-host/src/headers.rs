//! An ordered header map with byte values, modelled on Envoy's: names are
//! lower-cased on the way in, duplicates are kept in order, `get` returns the
//! first value, `replace` removes every copy and appends one.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Self {
        let mut map = Self::new();
        for (k, v) in pairs {
            map.add(k.as_ref(), v.as_ref());
        }
        map
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Envoy's `byteSize()`: the sum of name and value lengths.
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    pub fn entries(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.entries
    }

    /// The first value for `name`, as bytes.
    pub fn get_bytes(&self, name: impl AsRef<[u8]>) -> Option<&[u8]> {
        let name = lower(name.as_ref());
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value for `name`, if it is UTF-8.
    pub fn get(&self, name: impl AsRef<[u8]>) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value for `name`, in order.
    pub fn get_all(&self, name: impl AsRef<[u8]>) -> Vec<&[u8]> {
        let name = lower(name.as_ref());
        self.entries
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    pub fn contains(&self, name: impl AsRef<[u8]>) -> bool {
        self.get_bytes(name).is_some()
    }

    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.entries
            .push((lower(name.as_ref()), value.as_ref().to_vec()));
    }

    pub fn remove(&mut self, name: impl AsRef<[u8]>) {
        let name = lower(name.as_ref());
        self.entries.retain(|(k, _)| *k != name);
    }

    pub fn replace(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.remove(name.as_ref());
        self.add(name, value);
    }

    /// Replaces the whole map, as `proxy_set_header_map_pairs` does.
    pub fn set_all(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) {
        self.entries.clear();
        for (k, v) in pairs {
            self.add(k, v);
        }
    }
}

fn lower(name: &[u8]) -> Vec<u8> {
    name.to_ascii_lowercase()
}

impl fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_envoy() {
        let mut map = HeaderMap::from_pairs(&[("X-Cell-Id", "a"), ("x-cell-id", "b"), ("k", "v")]);
        assert_eq!(map.get("x-cell-id"), Some("a"));
        assert_eq!(map.get_all("X-CELL-ID").len(), 2);
        map.replace("x-cell-id", "c");
        assert_eq!(map.get_all("x-cell-id"), vec![b"c".as_slice()]);
        assert_eq!(map.entries().last().unwrap().0, b"x-cell-id");
        map.remove("K");
        assert_eq!(map.len(), 1);
        map.add("bin", [0xffu8, 0x00]);
        assert_eq!(map.get("bin"), None);
        assert_eq!(map.get_bytes("bin"), Some([0xffu8, 0x00].as_slice()));
    }
}
