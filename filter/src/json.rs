//! Strict JSON for everything untrusted the filter parses (plugin config,
//! `jwks`, `fallback_snapshot`, JOSE headers, claims): one mechanism, two
//! rules.
//!
//! * A key twice in one object is refused, at any depth. serde_json keeps
//!   the last value, other parsers the first: `{"tenant":"a","tenant":"b"}`
//!   or a snapshot `version` written twice must not mean one thing here and
//!   another to the control plane or Envoy's `jwt_authn`.
//! * Where an object is meant, only an object is read: serde's derived
//!   structs also accept an array (fields by position), so a JOSE header
//!   `["RS256","kid"]` would pass as `{"alg":"RS256","kid":"kid"}`. Parse to
//!   a [`Value`] with [`parse`] / [`parse_object`], and read structs through
//!   [`ObjectOnly`] (shared with the mapping crate, which parses snapshots
//!   the same way).

pub use cell_router_mapping::error::ObjectOnly;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Refused JSON: where (serde_path_to_error's path, `.` for the document)
/// and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A JSON value whose objects have no key twice, at any depth.
pub struct StrictValue(pub Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

/// Reads a JSON object (only an object), refusing duplicate keys at any
/// depth; for `deserialize_with` and hand-written `Deserialize` impls.
pub fn object_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Map<String, Value>, D::Error> {
    match deserializer.deserialize_map(StrictVisitor)? {
        Value::Object(map) => Ok(map),
        _ => Err(de::Error::custom("expected a JSON object")),
    }
}

/// Parses a whole document (no trailing data), duplicate keys refused.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(value) =
        serde_path_to_error::deserialize(&mut de).map_err(|err| JsonError {
            path: err.path().to_string(),
            message: err.into_inner().to_string(),
        })?;
    de.end().map_err(|e| JsonError {
        path: ".".to_string(),
        message: format!("trailing data: {e}"),
    })?;
    Ok(value)
}

/// Parses a document that must be a JSON object, duplicate keys refused.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match parse(bytes)? {
        Value::Object(map) => Ok(map),
        other => Err(JsonError {
            path: ".".to_string(),
            message: format!("expected a JSON object, got {}", kind(&other)),
        }),
    }
}

/// The JSON type of a value, for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct StrictVisitor;

/// Fails without reading the value, so the error path names the key.
struct Duplicate<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for Duplicate<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<Value, D::Error> {
        Err(de::Error::custom(format!("duplicate field `{}`", self.0)))
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return map.next_value_seed(Duplicate(&key));
            }
            let StrictValue(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}
