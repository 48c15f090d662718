//! Errors that name the JSON path of the first problem, so an operator can
//! find it in a snapshot of a million lines.

use std::fmt;

/// A refused snapshot or spec: where (a JSON path such as
/// `$.cells[2].weight`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathError {
    pub path: String,
    pub message: String,
}

impl PathError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        PathError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for PathError {}

/// Appends `.name` or `["name"]` (when `name` is not a plain identifier).
pub fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes().first().is_some_and(u8::is_ascii_digit);
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&serde_json::Value::String(key.to_string()).to_string());
        path.push(']');
    }
}

/// `$.a.b["c d"]` for a key sequence.
pub fn key_path<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    let mut path = String::from("$");
    for key in keys {
        push_key(&mut path, key);
    }
    path
}

/// `$.field[index]`.
pub fn index_path(field: &str, index: usize) -> String {
    format!("{}[{index}]", key_path([field]))
}

/// `T` read from a JSON object only. serde's derived `Deserialize` also
/// accepts a sequence for a struct (`["siphash-1-3", "…", 1024]` as a
/// `hash`, fields by position), which a JSON document must not: wrap the
/// struct in this where it is parsed from untrusted JSON (snapshots, the
/// filter's configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

/// Parses JSON into `T`, turning a serde error into a [`PathError`] at the
/// path where it happened.
pub fn from_json_with_path<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PathError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let mut path = String::from("$");
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => push_key(&mut path, key),
                serde_path_to_error::Segment::Enum { variant } => push_key(&mut path, variant),
                serde_path_to_error::Segment::Unknown => path.push_str(".?"),
            }
        }
        let message = err.into_inner().to_string();
        // serde reports a missing field at its parent; point at the field.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            push_key(&mut path, field);
        }
        PathError::new(path, message)
    })?;
    de.end()
        .map_err(|err| PathError::new("$", format!("trailing data after the document: {err}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(key_path(["cells"]), "$.cells");
        assert_eq!(
            key_path(["overrides", "acme corp"]),
            "$.overrides[\"acme corp\"]"
        );
        assert_eq!(key_path(["overrides", "9lives"]), "$.overrides[\"9lives\"]");
        assert_eq!(index_path("cells", 3), "$.cells[3]");
    }
}
