//! RFC 7517 JWKS → verification keys.
//!
//! Every key ends up bound to exactly one algorithm: the JWK's `alg` when it
//! has one, else each allowed algorithm its key type fits. A token is only
//! ever checked with a key of the algorithm its header names, so an HS256
//! token can never be "verified" with an RSA public key used as an HMAC
//! secret (algorithm/key-type confusion).

use crate::error::ConfigError;
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jwt_simple::JWTError;
use jwt_simple::prelude::*;
use serde_json::{Map, Value};
use std::fmt;

/// The JWS algorithms the filter can verify. `none` is not one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Key families, as named by a JWK's `kty` (and `crv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Oct,
    Rsa,
    EcP256,
    EcP384,
    OkpEd25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Exact, case-sensitive names (RFC 7518 names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The digest name Envoy's `verify_signature` takes, for the algorithms
    /// it can check (RSA PKCS#1 v1.5 and ECDSA).
    pub fn host_hash(self) -> Option<&'static str> {
        match self {
            Algorithm::RS256 | Algorithm::ES256 => Some("sha256"),
            Algorithm::RS384 | Algorithm::ES384 => Some("sha384"),
            Algorithm::RS512 => Some("sha512"),
            _ => None,
        }
    }

    /// Size of each of r and s in a JWS ECDSA signature.
    pub fn ecdsa_scalar_bytes(self) -> Option<usize> {
        match self {
            Algorithm::ES256 => Some(32),
            Algorithm::ES384 => Some(48),
            _ => None,
        }
    }

    /// The only key kind this algorithm may be used with.
    pub fn key_kind(self) -> KeyKind {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyKind::Oct,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyKind::Rsa,
            Algorithm::ES256 => KeyKind::EcP256,
            Algorithm::ES384 => KeyKind::EcP384,
            Algorithm::EdDSA => KeyKind::OkpEd25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl KeyKind {
    pub fn describe(self) -> &'static str {
        match self {
            KeyKind::Oct => "kty oct",
            KeyKind::Rsa => "kty RSA",
            KeyKind::EcP256 => "kty EC, crv P-256",
            KeyKind::EcP384 => "kty EC, crv P-384",
            KeyKind::OkpEd25519 => "kty OKP, crv Ed25519",
        }
    }
}

/// A public key (or HMAC secret) ready to verify tokens of one algorithm.
#[derive(Clone)]
pub enum VerifyingKey {
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (HMAC secrets live here).
        write!(f, "VerifyingKey({})", self.algorithm())
    }
}

impl VerifyingKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyingKey::HS256(_) => Algorithm::HS256,
            VerifyingKey::HS384(_) => Algorithm::HS384,
            VerifyingKey::HS512(_) => Algorithm::HS512,
            VerifyingKey::RS256(_) => Algorithm::RS256,
            VerifyingKey::RS384(_) => Algorithm::RS384,
            VerifyingKey::RS512(_) => Algorithm::RS512,
            VerifyingKey::PS256(_) => Algorithm::PS256,
            VerifyingKey::PS384(_) => Algorithm::PS384,
            VerifyingKey::PS512(_) => Algorithm::PS512,
            VerifyingKey::ES256(_) => Algorithm::ES256,
            VerifyingKey::ES384(_) => Algorithm::ES384,
            VerifyingKey::EdDSA(_) => Algorithm::EdDSA,
        }
    }

    /// Verifies signature and registered claims (jwt-simple does both).
    pub fn verify<C: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<C>, jwt_simple::Error> {
        let options = Some(options);
        match self {
            VerifyingKey::HS256(k) => k.verify_token(token, options),
            VerifyingKey::HS384(k) => k.verify_token(token, options),
            VerifyingKey::HS512(k) => k.verify_token(token, options),
            VerifyingKey::RS256(k) => k.verify_token(token, options),
            VerifyingKey::RS384(k) => k.verify_token(token, options),
            VerifyingKey::RS512(k) => k.verify_token(token, options),
            VerifyingKey::PS256(k) => k.verify_token(token, options),
            VerifyingKey::PS384(k) => k.verify_token(token, options),
            VerifyingKey::PS512(k) => k.verify_token(token, options),
            VerifyingKey::ES256(k) => k.verify_token(token, options),
            VerifyingKey::ES384(k) => k.verify_token(token, options),
            VerifyingKey::EdDSA(k) => k.verify_token(token, options),
        }
    }
}

/// One usable (kid, algorithm, key) triple.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub kid: Option<String>,
    pub key: VerifyingKey,
    /// SubjectPublicKeyInfo DER, for keys the host can check signatures of.
    pub spki_der: Option<Vec<u8>>,
}

impl KeyEntry {
    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// Same kid, algorithm and key material (compared through the DER
    /// public key where there is one; HMAC secrets by kid and algorithm).
    pub fn same_key(&self, other: &KeyEntry) -> bool {
        self.kid == other.kid
            && self.algorithm() == other.algorithm()
            && self.spki_der == other.spki_der
    }
}

/// The keys of a JWKS, expanded to one entry per usable algorithm.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    entries: Vec<KeyEntry>,
}

/// Shortest HMAC secret accepted. RFC 7518 §3.2 asks for the hash size
/// (32/48/64 bytes); 32 bytes is the floor here for every HS algorithm.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Longest `kid` accepted.
pub const MAX_KID_BYTES: usize = 256;
/// Most keys in one JWKS.
pub const MAX_KEYS: usize = 64;

/// Members that only private keys carry; a gateway needs public keys only.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

impl KeySet {
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses a JWKS (`{"keys": [...]}`) whose keys must fit `allowed`.
    /// `field` is the config field it came from, for error paths.
    pub fn from_jwks(
        jwks: &Value,
        allowed: &[Algorithm],
        field: &str,
    ) -> Result<KeySet, ConfigError> {
        let Some(object) = jwks.as_object() else {
            return Err(ConfigError::new(
                field,
                "must be a JWKS object: {\"keys\": [...]}",
            ));
        };
        let keys_field = format!("{field}.keys");
        let Some(keys) = object.get("keys") else {
            return Err(ConfigError::new(keys_field, "missing field"));
        };
        let Some(keys) = keys.as_array() else {
            return Err(ConfigError::new(keys_field, "must be an array of JWKs"));
        };
        if keys.is_empty() {
            return Err(ConfigError::new(keys_field, "must hold at least one key"));
        }
        if keys.len() > MAX_KEYS {
            return Err(ConfigError::new(
                keys_field,
                format!("at most {MAX_KEYS} keys, got {}", keys.len()),
            ));
        }
        let mut set = KeySet::default();
        for (i, jwk) in keys.iter().enumerate() {
            let path = format!("{keys_field}[{i}]");
            let entries = parse_jwk(jwk, allowed, &path)?;
            for entry in entries {
                let clash = set.entries.iter().any(|e| {
                    e.kid.is_some() && e.kid == entry.kid && e.algorithm() == entry.algorithm()
                });
                if clash {
                    return Err(ConfigError::new(
                        format!("{path}.kid"),
                        format!(
                            "another key already has kid {:?} for {}",
                            entry.kid.as_deref().unwrap_or_default(),
                            entry.algorithm()
                        ),
                    ));
                }
                set.entries.push(entry);
            }
        }
        Ok(set)
    }

    /// Keys for `alg`; with a `kid`, only keys carrying that kid.
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a KeyEntry> + 'a {
        self.entries.iter().filter(move |e| {
            e.algorithm() == alg
                && match kid {
                    Some(kid) => e.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    /// A key set of these entries, as they are (no clash check).
    pub fn from_entries(entries: Vec<KeyEntry>) -> KeySet {
        KeySet { entries }
    }

    /// Adds the entries of `other` that do not clash (same kid and
    /// algorithm) with one held; answers how many were left out.
    pub fn extend_unique(&mut self, other: &KeySet) -> usize {
        let mut skipped = 0;
        for entry in &other.entries {
            let clash = self.entries.iter().any(|e| {
                e.algorithm() == entry.algorithm()
                    && match (&e.kid, &entry.kid) {
                        (Some(a), Some(b)) => a == b,
                        (None, None) => e.same_key(entry),
                        _ => false,
                    }
            });
            if clash {
                skipped += 1;
            } else {
                self.entries.push(entry.clone());
            }
        }
        skipped
    }

    /// Parses a JWKS fetched at run time: the document must be a JWKS, but
    /// a key the filter cannot use (another `use`, a type or algorithm not
    /// allowed, bad material) is skipped, as identity providers publish
    /// such keys next to the signing ones. At most [`MAX_KEYS`] keys are
    /// read; the set must end up with at least one usable key. Answers the
    /// set and why each skipped key was skipped.
    pub fn from_jwks_lenient(
        jwks: &Value,
        allowed: &[Algorithm],
        field: &str,
    ) -> Result<(KeySet, Vec<ConfigError>), ConfigError> {
        let Some(object) = jwks.as_object() else {
            return Err(ConfigError::new(
                field,
                "must be a JWKS object: {\"keys\": [...]}",
            ));
        };
        let keys_field = format!("{field}.keys");
        let Some(keys) = object.get("keys").and_then(Value::as_array) else {
            return Err(ConfigError::new(keys_field, "missing, or not an array"));
        };
        if keys.len() > MAX_KEYS {
            return Err(ConfigError::new(
                keys_field,
                format!("at most {MAX_KEYS} keys, got {}", keys.len()),
            ));
        }
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, jwk) in keys.iter().enumerate() {
            let path = format!("{keys_field}[{i}]");
            match parse_jwk(jwk, allowed, &path) {
                Ok(entries) => {
                    let one = KeySet { entries };
                    if set.extend_unique(&one) > 0 {
                        skipped.push(ConfigError::new(
                            format!("{path}.kid"),
                            "another key already has this kid for the same algorithm",
                        ));
                    }
                }
                Err(error) => skipped.push(error),
            }
        }
        if set.is_empty() {
            return Err(ConfigError::new(
                keys_field,
                match skipped.first() {
                    Some(first) => format!("no usable key (first refusal: {first})"),
                    None => "no usable key".to_string(),
                },
            ));
        }
        Ok((set, skipped))
    }

    /// Whether any key carries `kid` (whatever its algorithm).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.entries.iter().any(|e| e.kid.as_deref() == Some(kid))
    }
}

fn string_member<'a>(
    jwk: &'a Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ConfigError::new(
            format!("{path}.{name}"),
            "must be a string",
        )),
    }
}

fn required<'a>(
    jwk: &'a Map<String, Value>,
    name: &str,
    path: &str,
    why: &str,
) -> Result<&'a str, ConfigError> {
    match string_member(jwk, name, path)? {
        Some(value) if !value.is_empty() => Ok(value),
        Some(_) => Err(ConfigError::new(
            format!("{path}.{name}"),
            "must not be empty",
        )),
        None => Err(ConfigError::new(
            format!("{path}.{name}"),
            format!("missing ({why})"),
        )),
    }
}

fn key_kind(jwk: &Map<String, Value>, path: &str) -> Result<KeyKind, ConfigError> {
    let kty = required(jwk, "kty", path, "every JWK names its key type")?;
    match kty {
        "oct" => Ok(KeyKind::Oct),
        "RSA" => Ok(KeyKind::Rsa),
        "EC" => match required(jwk, "crv", path, "an EC key names its curve")? {
            "P-256" => Ok(KeyKind::EcP256),
            "P-384" => Ok(KeyKind::EcP384),
            other => Err(ConfigError::new(
                format!("{path}.crv"),
                format!("unsupported curve {other:?}; supported: P-256 (ES256), P-384 (ES384)"),
            )),
        },
        "OKP" => match required(jwk, "crv", path, "an OKP key names its curve")? {
            "Ed25519" => Ok(KeyKind::OkpEd25519),
            other => Err(ConfigError::new(
                format!("{path}.crv"),
                format!("unsupported curve {other:?}; supported: Ed25519 (EdDSA)"),
            )),
        },
        other => Err(ConfigError::new(
            format!("{path}.kty"),
            format!("unsupported key type {other:?}; supported: RSA, EC, OKP, oct"),
        )),
    }
}

fn parse_jwk(jwk: &Value, allowed: &[Algorithm], path: &str) -> Result<Vec<KeyEntry>, ConfigError> {
    let Some(jwk) = jwk.as_object() else {
        return Err(ConfigError::new(path, "must be a JWK object"));
    };
    let kind = key_kind(jwk, path)?;

    if kind != KeyKind::Oct
        && let Some(private) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m))
    {
        return Err(ConfigError::new(
            format!("{path}.{private}"),
            "private key material does not belong in the filter config; give the public key only",
        ));
    }
    if let Some(key_use) = string_member(jwk, "use", path)?
        && key_use != "sig"
    {
        return Err(ConfigError::new(
            format!("{path}.use"),
            format!("is {key_use:?}; only signature keys (\"sig\") verify tokens"),
        ));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err(ConfigError::new(
                format!("{path}.key_ops"),
                "must be an array that includes \"verify\"",
            ));
        }
    }
    let kid = match string_member(jwk, "kid", path)? {
        None => None,
        Some("") => {
            return Err(ConfigError::new(
                format!("{path}.kid"),
                "must not be empty (leave it out instead)",
            ));
        }
        Some(kid) if kid.len() > MAX_KID_BYTES => {
            return Err(ConfigError::new(
                format!("{path}.kid"),
                format!("longer than {MAX_KID_BYTES} bytes"),
            ));
        }
        Some(kid) => Some(kid.to_string()),
    };

    // Which algorithms this key serves.
    let algorithms: Vec<Algorithm> = match string_member(jwk, "alg", path)? {
        Some(name) => {
            let Some(alg) = Algorithm::from_name(name) else {
                return Err(ConfigError::new(
                    format!("{path}.alg"),
                    format!("unsupported algorithm {name:?}"),
                ));
            };
            if alg.key_kind() != kind {
                return Err(ConfigError::new(
                    format!("{path}.alg"),
                    format!("{alg} does not fit {}", kind.describe()),
                ));
            }
            if !allowed.contains(&alg) {
                return Err(ConfigError::new(
                    format!("{path}.alg"),
                    format!("{alg} is not in `algorithms`"),
                ));
            }
            vec![alg]
        }
        None => {
            let fitting: Vec<Algorithm> = allowed
                .iter()
                .copied()
                .filter(|a| a.key_kind() == kind)
                .collect();
            if fitting.is_empty() {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "no algorithm in `algorithms` fits {}; add one or remove the key",
                        kind.describe()
                    ),
                ));
            }
            fitting
        }
    };

    let mut entries = Vec::with_capacity(algorithms.len());
    for alg in algorithms {
        let key = build_key(jwk, kind, alg, path)?;
        let spki_der = match &key {
            VerifyingKey::RS256(k) => k.to_der().ok(),
            VerifyingKey::RS384(k) => k.to_der().ok(),
            VerifyingKey::RS512(k) => k.to_der().ok(),
            VerifyingKey::ES256(k) => k.to_der().ok(),
            VerifyingKey::ES384(k) => k.to_der().ok(),
            _ => None,
        };
        entries.push(KeyEntry {
            kid: kid.clone(),
            key,
            spki_der,
        });
    }
    Ok(entries)
}

/// base64url with or without padding; JWKs in the wild use both.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn build_key(
    jwk: &Map<String, Value>,
    kind: KeyKind,
    alg: Algorithm,
    path: &str,
) -> Result<VerifyingKey, ConfigError> {
    match kind {
        KeyKind::Oct => {
            let k = required(jwk, "k", path, "an oct key carries its secret in k")?;
            let secret = B64URL.decode(k).map_err(|e| {
                ConfigError::new(format!("{path}.k"), format!("invalid base64url: {e}"))
            })?;
            if secret.len() < MIN_HMAC_SECRET_BYTES {
                return Err(ConfigError::new(
                    format!("{path}.k"),
                    format!(
                        "secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are required",
                        secret.len()
                    ),
                ));
            }
            Ok(match alg {
                Algorithm::HS384 => VerifyingKey::HS384(HS384Key::from_bytes(&secret)),
                Algorithm::HS512 => VerifyingKey::HS512(HS512Key::from_bytes(&secret)),
                _ => VerifyingKey::HS256(HS256Key::from_bytes(&secret)),
            })
        }
        KeyKind::Rsa => {
            let n = required(jwk, "n", path, "an RSA key carries its modulus in n")?;
            let e = required(jwk, "e", path, "an RSA key carries its exponent in e")?;
            // A minimal JWK without alg: jwt-simple's strict decoder checks the
            // encoding, size (2048–4096 bits) and exponent (65537).
            let minimal = serde_json::json!({"kty": "RSA", "n": n, "e": e}).to_string();
            let explain = |err: jwt_simple::Error| rsa_error(err, path);
            Ok(match alg {
                Algorithm::RS384 => {
                    VerifyingKey::RS384(RS384PublicKey::from_jwk(&minimal).map_err(explain)?)
                }
                Algorithm::RS512 => {
                    VerifyingKey::RS512(RS512PublicKey::from_jwk(&minimal).map_err(explain)?)
                }
                Algorithm::PS256 => {
                    VerifyingKey::PS256(PS256PublicKey::from_jwk(&minimal).map_err(explain)?)
                }
                Algorithm::PS384 => {
                    VerifyingKey::PS384(PS384PublicKey::from_jwk(&minimal).map_err(explain)?)
                }
                Algorithm::PS512 => {
                    VerifyingKey::PS512(PS512PublicKey::from_jwk(&minimal).map_err(explain)?)
                }
                _ => VerifyingKey::RS256(RS256PublicKey::from_jwk(&minimal).map_err(explain)?),
            })
        }
        KeyKind::EcP256 | KeyKind::EcP384 => {
            let x = required(jwk, "x", path, "an EC key carries x")?;
            let y = required(jwk, "y", path, "an EC key carries y")?;
            let crv = if kind == KeyKind::EcP256 {
                "P-256"
            } else {
                "P-384"
            };
            let minimal = serde_json::json!({"kty": "EC", "crv": crv, "x": x, "y": y}).to_string();
            let explain = |_| {
                ConfigError::new(
                    path,
                    format!(
                        "not a valid {crv} public key (x and y must be unpadded base64url coordinates of a point on the curve)"
                    ),
                )
            };
            Ok(if kind == KeyKind::EcP256 {
                VerifyingKey::ES256(ES256PublicKey::from_jwk(&minimal).map_err(explain)?)
            } else {
                VerifyingKey::ES384(ES384PublicKey::from_jwk(&minimal).map_err(explain)?)
            })
        }
        KeyKind::OkpEd25519 => {
            let x = required(jwk, "x", path, "an OKP key carries x")?;
            let minimal = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}).to_string();
            let key = Ed25519PublicKey::from_jwk(&minimal).map_err(|_| {
                ConfigError::new(
                    format!("{path}.x"),
                    "not a valid Ed25519 public key (32 bytes, unpadded base64url)",
                )
            })?;
            Ok(VerifyingKey::EdDSA(key))
        }
    }
}

fn rsa_error(err: jwt_simple::Error, path: &str) -> ConfigError {
    let why = match err.downcast_ref::<JWTError>() {
        Some(JWTError::WeakKey) => "modulus is shorter than 2048 bits".to_string(),
        Some(JWTError::UnsupportedRSAModulus) => "modulus is longer than 4096 bits".to_string(),
        _ => "not a valid RSA public key (n and e must be unpadded base64url; e must be AQAB = 65537)"
            .to_string(),
    };
    ConfigError::new(path, why)
}
