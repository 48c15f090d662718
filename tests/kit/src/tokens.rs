//! Tokens for tests, benchmarks and the demo, signed with the throwaway keys
//! in `tests/keys` (public: never use them anywhere else).
//!
//! * [`TokenBuilder`]: a correctly signed JWT of any supported algorithm with
//!   chosen claims and header (`kid`), via jwt-simple.
//! * [`raw_token`], [`alg_none_token`], [`hs256_signed_with_rsa_public_key`],
//!   [`tamper_payload`]: hand-built tokens for attacks.
//! * [`Jwks`]: the JWKS document (RFC 7517) publishing the keys.
//!
//! Every algorithm has a default `kid` (its lower-case name, e.g. `rs256`),
//! and the default JWKS publishes one key per algorithm under that kid with
//! its `alg`, so "kid picks the key" and "the key fixes the algorithm" both
//! hold.
//!
//! ```no_run
//! use cell_router_kit::tokens::{Alg, Jwks, TokenBuilder};
//! let jwks = Jwks::all().to_json();
//! let now = 1_700_000_000;
//! let token = TokenBuilder::new(Alg::RS256, now)
//!     .issuer("https://issuer.test")
//!     .audience("cell-router")
//!     .claim("tenant", "acme")
//!     .sign();
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jwt_simple::prelude::*;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The JWS algorithms the filter supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
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

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// The algorithm named `name` (`"RS256"`, …), if the filter supports it.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    /// The `kid` this algorithm's key has in [`Jwks::all`].
    pub fn default_kid(self) -> String {
        self.name().to_ascii_lowercase()
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
        )
    }
}

/// The test keys, read once from `tests/keys`.
pub struct TestKeys {
    /// The shared secret of HS256/384/512 (32 bytes).
    pub hmac_secret: Vec<u8>,
    pub rsa_private_pem: String,
    pub rsa_public_pem: String,
    /// A second RSA key, for "signed by the wrong key".
    pub rsa_other_private_pem: String,
    pub ec256_private_pem: String,
    pub ec384_private_pem: String,
    pub ed25519_private_pem: String,
}

/// Where the test keys live.
pub fn keys_dir() -> PathBuf {
    crate::repo_root().join("tests/keys")
}

/// The test keys (panics if `tests/keys` is incomplete: a broken checkout).
pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let read = |name: &str| {
            std::fs::read_to_string(keys_dir().join(name))
                .unwrap_or_else(|e| panic!("test key {name}: {e}"))
        };
        let secret = read("hs256.secret.b64");
        TestKeys {
            hmac_secret: STANDARD
                .decode(secret.trim())
                .unwrap_or_else(|e| panic!("hs256.secret.b64: {e}")),
            rsa_private_pem: read("rsa2048.pem"),
            rsa_public_pem: read("rsa2048.pub.pem"),
            rsa_other_private_pem: read("rsa2048-other.pem"),
            ec256_private_pem: read("ec256.pem"),
            ec384_private_pem: read("ec384.pem"),
            ed25519_private_pem: read("ed25519.pem"),
        }
    })
}

/// One audience (serialized as a string) or several (as an array).
#[derive(Clone, Debug)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A correctly signed JWT with chosen claims and header.
#[derive(Clone, Debug)]
pub struct TokenBuilder {
    alg: Alg,
    kid: Option<String>,
    other_key: bool,
    issuer: Option<String>,
    audience: Option<Audience>,
    subject: Option<String>,
    issued_at: Option<u64>,
    expires_at: Option<u64>,
    not_before: Option<u64>,
    claims: Map<String, Value>,
}

impl TokenBuilder {
    /// A token issued at `now` (unix seconds, e.g. `host.now_unix()`),
    /// expiring an hour later, with the algorithm's default `kid`.
    pub fn new(alg: Alg, now: u64) -> TokenBuilder {
        TokenBuilder {
            alg,
            kid: Some(alg.default_kid()),
            other_key: false,
            issuer: None,
            audience: None,
            subject: None,
            issued_at: Some(now),
            expires_at: Some(now + 3600),
            not_before: None,
            claims: Map::new(),
        }
    }

    pub fn kid(mut self, kid: &str) -> Self {
        self.kid = Some(kid.to_string());
        self
    }

    /// No `kid` in the header.
    pub fn no_kid(mut self) -> Self {
        self.kid = None;
        self
    }

    /// Signs with a different key of the same type (RSA: the second RSA key;
    /// HMAC: a different secret; EC/EdDSA: a freshly generated key), keeping
    /// the `kid`: a bad signature.
    pub fn signed_by_other_key(mut self) -> Self {
        self.other_key = true;
        self
    }

    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = Some(issuer.to_string());
        self
    }

    /// `aud` as a single string.
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = Some(Audience::One(audience.to_string()));
        self
    }

    /// `aud` as an array.
    pub fn audiences(mut self, audiences: &[&str]) -> Self {
        self.audience = Some(Audience::Many(
            audiences.iter().map(|a| a.to_string()).collect(),
        ));
        self
    }

    pub fn subject(mut self, subject: &str) -> Self {
        self.subject = Some(subject.to_string());
        self
    }

    pub fn issued_at(mut self, at: u64) -> Self {
        self.issued_at = Some(at);
        self
    }

    pub fn expires_at(mut self, at: u64) -> Self {
        self.expires_at = Some(at);
        self
    }

    pub fn no_exp(mut self) -> Self {
        self.expires_at = None;
        self
    }

    pub fn not_before(mut self, at: u64) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Any claim (e.g. the tenant, nested objects, integers).
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.to_string(), value.into());
        self
    }

    /// The claims as they will be serialized.
    pub fn claims_json(&self) -> Value {
        let mut claims = self.claims.clone();
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                claims.insert(k.to_string(), v);
            }
        };
        set("iss", self.issuer.clone().map(Value::from));
        set("sub", self.subject.clone().map(Value::from));
        set(
            "aud",
            self.audience.clone().map(|a| match a {
                Audience::One(a) => Value::from(a),
                Audience::Many(a) => Value::from(a),
            }),
        );
        set("iat", self.issued_at.map(Value::from));
        set("exp", self.expires_at.map(Value::from));
        set("nbf", self.not_before.map(Value::from));
        Value::Object(claims)
    }

    /// Signs the token (panics on a key error: the test keys are fixed).
    pub fn sign(&self) -> String {
        self.try_sign()
            .unwrap_or_else(|e| panic!("signing a {} token: {e}", self.alg.name()))
    }

    fn claims(&self) -> JWTClaims<Map<String, Value>> {
        let ts = |secs: u64| UnixTimeStamp::from_secs(secs);
        let mut claims = Claims::with_custom_claims(self.claims.clone(), Duration::from_secs(0));
        claims.issued_at = self.issued_at.map(ts);
        claims.expires_at = self.expires_at.map(ts);
        claims.invalid_before = self.not_before.map(ts);
        claims.issuer = self.issuer.clone();
        claims.subject = self.subject.clone();
        claims.audiences = self.audience.clone().map(|a| match a {
            Audience::One(a) => Audiences::AsString(a),
            Audience::Many(a) => Audiences::AsSet(a.into_iter().collect()),
        });
        claims
    }

    fn try_sign(&self) -> Result<String, jwt_simple::Error> {
        sign_with(self.alg, self.kid.as_deref(), self.other_key, self.claims())
    }
}

/// Signs `claims` with the test key of `alg` under `kid` (the one signing
/// routine of the kit: [`TokenBuilder`] and the filter's native tests use it).
pub fn sign_claims(alg: Alg, kid: Option<&str>, claims: JWTClaims<Map<String, Value>>) -> String {
    sign_with(alg, kid, false, claims)
        .unwrap_or_else(|e| panic!("signing a {} token: {e}", alg.name()))
}

fn sign_with(
    alg: Alg,
    kid: Option<&str>,
    other_key: bool,
    claims: JWTClaims<Map<String, Value>>,
) -> Result<String, jwt_simple::Error> {
    let keys = keys();
    macro_rules! with_kid {
        ($key:expr) => {{
            let key = $key;
            match kid {
                Some(kid) => key.with_key_id(kid),
                None => key,
            }
        }};
    }
    let rsa_pem = if other_key {
        &keys.rsa_other_private_pem
    } else {
        &keys.rsa_private_pem
    };
    let secret: Vec<u8> = if other_key {
        keys.hmac_secret.iter().map(|b| b ^ 0x5a).collect()
    } else {
        keys.hmac_secret.clone()
    };
    match alg {
        Alg::HS256 => with_kid!(HS256Key::from_bytes(&secret)).authenticate(claims),
        Alg::HS384 => with_kid!(HS384Key::from_bytes(&secret)).authenticate(claims),
        Alg::HS512 => with_kid!(HS512Key::from_bytes(&secret)).authenticate(claims),
        Alg::RS256 => with_kid!(RS256KeyPair::from_pem(rsa_pem)?).sign(claims),
        Alg::RS384 => with_kid!(RS384KeyPair::from_pem(rsa_pem)?).sign(claims),
        Alg::RS512 => with_kid!(RS512KeyPair::from_pem(rsa_pem)?).sign(claims),
        Alg::PS256 => with_kid!(PS256KeyPair::from_pem(rsa_pem)?).sign(claims),
        Alg::PS384 => with_kid!(PS384KeyPair::from_pem(rsa_pem)?).sign(claims),
        Alg::PS512 => with_kid!(PS512KeyPair::from_pem(rsa_pem)?).sign(claims),
        Alg::ES256 => {
            let key = if other_key {
                ES256KeyPair::generate()
            } else {
                ES256KeyPair::from_pem(&keys.ec256_private_pem)?
            };
            with_kid!(key).sign(claims)
        }
        Alg::ES384 => {
            let key = if other_key {
                ES384KeyPair::generate()
            } else {
                ES384KeyPair::from_pem(&keys.ec384_private_pem)?
            };
            with_kid!(key).sign(claims)
        }
        Alg::EdDSA => {
            let key = if other_key {
                Ed25519KeyPair::generate()
            } else {
                Ed25519KeyPair::from_pem(&keys.ed25519_private_pem)?
            };
            with_kid!(key).sign(claims)
        }
    }
}

/// base64url without padding, as JWS uses.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How a hand-built token is signed.
#[derive(Clone, Debug)]
pub enum RawSignature {
    /// An empty third segment (what `alg: none` tokens carry).
    Empty,
    /// HMAC over `header.payload` with this key.
    Hs256(Vec<u8>),
    Hs384(Vec<u8>),
    Hs512(Vec<u8>),
    /// RS256 (PKCS#1 v1.5, SHA-256) with the RSA test key: a valid
    /// signature over whatever header and payload were written by hand.
    Rs256,
    /// These bytes, whatever they are.
    Bytes(Vec<u8>),
}

/// A token from an arbitrary header and payload, signed as asked. The
/// header and payload are serialized exactly as given.
pub fn raw_token(header: &Value, payload: &Value, signature: RawSignature) -> String {
    raw_token_from_parts(
        header.to_string().as_bytes(),
        payload.to_string().as_bytes(),
        signature,
    )
}

/// Like [`raw_token`], from raw header and payload bytes (for duplicate
/// keys, invalid UTF-8, or anything serde_json would not produce).
fn rs256_sign(input: &[u8]) -> Vec<u8> {
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&keys().rsa_private_pem)
        .unwrap_or_else(|e| panic!("RSA test key: {e}"));
    rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(key)
        .sign(input)
        .to_vec()
}

pub fn raw_token_from_parts(header: &[u8], payload: &[u8], signature: RawSignature) -> String {
    let input = format!("{}.{}", b64url(header), b64url(payload));
    let sig = match signature {
        RawSignature::Empty => Vec::new(),
        RawSignature::Hs256(key) => hmac_sha256::HMAC::mac(input.as_bytes(), &key).to_vec(),
        RawSignature::Hs384(key) => hmac_sha512::sha384::HMAC::mac(input.as_bytes(), &key).to_vec(),
        RawSignature::Hs512(key) => hmac_sha512::HMAC::mac(input.as_bytes(), &key).to_vec(),
        RawSignature::Rs256 => rs256_sign(input.as_bytes()),
        RawSignature::Bytes(bytes) => bytes,
    };
    format!("{input}.{}", b64url(sig))
}

/// `{"alg":"none"}` (or another spelling, e.g. "None", "nOnE") with an
/// empty signature.
pub fn alg_none_token(alg: &str, payload: &Value) -> String {
    raw_token(
        &json!({"alg": alg, "typ": "JWT"}),
        payload,
        RawSignature::Empty,
    )
}

/// The classic key-confusion attack: an HS256 token whose HMAC key is the
/// RSA public key PEM, with the RSA key's `kid`. A verifier that lets the
/// token's `alg` choose how to use the key would accept it.
pub fn hs256_signed_with_rsa_public_key(kid: &str, payload: &Value) -> String {
    raw_token(
        &json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
        payload,
        RawSignature::Hs256(keys().rsa_public_pem.as_bytes().to_vec()),
    )
}

/// A correctly signed token whose payload is then changed (the signature no
/// longer matches).
pub fn tamper_payload(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("not a JWS compact token: {token}");
    };
    let mut claims = claims_of(token);
    change(&mut claims);
    format!("{header}.{}.{sig}", b64url(claims.to_string()))
}

/// The decoded payload of a token.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// The decoded header of a token.
pub fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(header).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// A JWKS document (RFC 7517) publishing test keys.
#[derive(Clone, Debug, Default)]
pub struct Jwks {
    keys: Vec<Value>,
}

impl Jwks {
    pub fn new() -> Jwks {
        Jwks::default()
    }

    /// Every algorithm's key under its default kid.
    pub fn all() -> Jwks {
        Alg::ALL
            .iter()
            .fold(Jwks::new(), |jwks, alg| jwks.with(*alg))
    }

    /// Adds the key of `alg` under its default kid, with `alg` set.
    pub fn with(self, alg: Alg) -> Jwks {
        self.with_key(alg, &alg.default_kid())
    }

    /// Adds the key of `alg` under `kid`, with `alg` set.
    pub fn with_key(mut self, alg: Alg, kid: &str) -> Jwks {
        let mut jwk = public_jwk(alg);
        if let Some(map) = jwk.as_object_mut() {
            map.insert("kid".into(), kid.into());
            map.insert("alg".into(), alg.name().into());
            map.insert("use".into(), "sig".into());
        }
        self.keys.push(jwk);
        self
    }

    /// Adds a JWK exactly as given (for malformed-key cases).
    pub fn with_raw(mut self, jwk: Value) -> Jwks {
        self.keys.push(jwk);
        self
    }

    pub fn keys(&self) -> &[Value] {
        &self.keys
    }

    pub fn to_json(&self) -> Value {
        json!({ "keys": self.keys })
    }
}

/// The public JWK (without kid/alg/use) of an algorithm's test key.
pub fn public_jwk(alg: Alg) -> Value {
    let keys = keys();
    let fail = |e: jwt_simple::Error| -> ! { panic!("test key for {}: {e}", alg.name()) };
    match alg {
        Alg::HS256 | Alg::HS384 | Alg::HS512 => {
            json!({"kty": "oct", "k": b64url(&keys.hmac_secret)})
        }
        Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
            let key = RS256KeyPair::from_pem(&keys.rsa_private_pem).unwrap_or_else(|e| fail(e));
            let parts = key.public_key().to_components();
            json!({"kty": "RSA", "n": b64url(parts.n), "e": b64url(parts.e)})
        }
        Alg::ES256 => {
            let key = ES256KeyPair::from_pem(&keys.ec256_private_pem).unwrap_or_else(|e| fail(e));
            ec_jwk("P-256", &key.public_key().to_jwk())
        }
        Alg::ES384 => {
            let key = ES384KeyPair::from_pem(&keys.ec384_private_pem).unwrap_or_else(|e| fail(e));
            ec_jwk("P-384", &key.public_key().to_jwk())
        }
        Alg::EdDSA => {
            let key =
                Ed25519KeyPair::from_pem(&keys.ed25519_private_pem).unwrap_or_else(|e| fail(e));
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(key.public_key().to_bytes())})
        }
    }
}

/// Keeps only the EC point of jwt-simple's JWK export.
fn ec_jwk(crv: &str, exported: &str) -> Value {
    let full: Value = serde_json::from_str(exported).unwrap_or(Value::Null);
    json!({"kty": "EC", "crv": crv, "x": full["x"], "y": full["y"]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::unix_now as now;

    #[test]
    fn every_algorithm_signs_and_verifies_against_its_jwk() {
        let jwks = Jwks::all();
        for alg in Alg::ALL {
            let token = TokenBuilder::new(alg, now()).claim("tenant", "acme").sign();
            let header = header_of(&token);
            assert_eq!(header["alg"], alg.name());
            assert_eq!(header["kid"], alg.default_kid());
            assert_eq!(claims_of(&token)["tenant"], "acme");
            let jwk = jwks
                .keys()
                .iter()
                .find(|k| k["kid"] == alg.default_kid())
                .unwrap();
            assert_eq!(jwk["alg"], alg.name());
            verify_with_jwk(alg, jwk, &token).unwrap();
            let forged = TokenBuilder::new(alg, now()).signed_by_other_key().sign();
            assert!(verify_with_jwk(alg, jwk, &forged).is_err(), "{alg:?}");
        }
    }

    /// Verifies with jwt-simple from the published JWK only.
    fn verify_with_jwk(alg: Alg, jwk: &Value, token: &str) -> Result<(), jwt_simple::Error> {
        let b = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
        let options = VerificationOptions::default();
        type C = Map<String, Value>;
        match alg {
            Alg::HS256 => HS256Key::from_bytes(&b("k"))
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::HS384 => HS384Key::from_bytes(&b("k"))
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::HS512 => HS512Key::from_bytes(&b("k"))
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::RS256 => RS256PublicKey::from_components(&b("n"), &b("e"))?
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::RS384 => RS384PublicKey::from_components(&b("n"), &b("e"))?
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::RS512 => RS512PublicKey::from_components(&b("n"), &b("e"))?
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::PS256 => PS256PublicKey::from_components(&b("n"), &b("e"))?
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::PS384 => PS384PublicKey::from_components(&b("n"), &b("e"))?
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::PS512 => PS512PublicKey::from_components(&b("n"), &b("e"))?
                .verify_token::<C>(token, Some(options))
                .map(drop),
            Alg::ES256 => {
                let mut point = vec![4];
                point.extend(b("x"));
                point.extend(b("y"));
                ES256PublicKey::from_bytes(&point)?
                    .verify_token::<C>(token, Some(options))
                    .map(drop)
            }
            Alg::ES384 => {
                let mut point = vec![4];
                point.extend(b("x"));
                point.extend(b("y"));
                ES384PublicKey::from_bytes(&point)?
                    .verify_token::<C>(token, Some(options))
                    .map(drop)
            }
            Alg::EdDSA => Ed25519PublicKey::from_bytes(&b("x"))?
                .verify_token::<C>(token, Some(options))
                .map(drop),
        }
    }

    #[test]
    fn claims_are_what_was_asked() {
        let token = TokenBuilder::new(Alg::HS256, now())
            .issuer("iss")
            .audiences(&["a", "b"])
            .subject("s")
            .not_before(now() + 5)
            .no_exp()
            .claim("org", json!({"id": 42}))
            .sign();
        let claims = claims_of(&token);
        assert_eq!(claims["iss"], "iss");
        assert_eq!(claims["sub"], "s");
        assert_eq!(claims["iat"], now());
        assert_eq!(claims["nbf"], now() + 5);
        assert!(claims.get("exp").is_none());
        assert_eq!(claims["org"]["id"], 42);
        let mut aud: Vec<_> = claims["aud"].as_array().unwrap().to_vec();
        aud.sort_by_key(|v| v.to_string());
        assert_eq!(aud, vec![json!("a"), json!("b")]);
        assert!(
            header_of(&TokenBuilder::new(Alg::HS256, now()).no_kid().sign())
                .get("kid")
                .is_none()
        );
    }

    #[test]
    fn attack_tokens_have_the_promised_shape() {
        let payload = json!({"tenant": "acme", "exp": now() + 60});
        let none = alg_none_token("nOnE", &payload);
        assert!(none.ends_with('.'));
        assert_eq!(header_of(&none)["alg"], "nOnE");

        let confused = hs256_signed_with_rsa_public_key("rs256", &payload);
        let key = HS256Key::from_bytes(keys().rsa_public_pem.as_bytes());
        let options = VerificationOptions::default();
        key.verify_token::<Map<String, Value>>(&confused, Some(options))
            .unwrap();

        let good = TokenBuilder::new(Alg::HS256, now())
            .claim("tenant", "acme")
            .sign();
        let bad = tamper_payload(&good, |c| c["tenant"] = json!("evil"));
        assert_eq!(claims_of(&bad)["tenant"], "evil");
        assert_eq!(good.rsplit('.').next(), bad.rsplit('.').next());

        let raw = raw_token(
            &json!({"alg": "HS512"}),
            &payload,
            RawSignature::Hs512(keys().hmac_secret.clone()),
        );
        let key = HS512Key::from_bytes(&keys().hmac_secret);
        key.verify_token::<Map<String, Value>>(&raw, None).unwrap();
    }
}
