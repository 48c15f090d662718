//! Token extraction, verification and the tenant claim.
//!
//! jwt-simple checks signatures and registered claims; around it, this module
//! decides which key may verify a token (by `kid` and by the header `alg`,
//! which must be allowed and must match the key), refuses `alg: none`,
//! unknown `crit`, oversized and malformed tokens, and turns every failure
//! into a [`Rejection`] with the status Envoy's `jwt_authn` would use.

use crate::config::{ClaimPath, JwtSettings, STRING_REGISTERED_CLAIMS, TokenSource};
use crate::envoy_verify::{HostVerdict, NoHost, SignatureHost, ecdsa_jws_to_der};
use crate::json;
use crate::jwks::Algorithm;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::JWTError;
use jwt_simple::prelude::*;
use serde::de::Deserializer;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// Why a request was refused before routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    MultipleTokens,
    TooLarge,
    Malformed,
    AlgNone,
    AlgNotAllowed,
    UnknownKid,
    KeyAlgMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    MissingExp,
    WrongIssuer,
    UnsupportedCrit,
    WrongAudience,
    TenantMissing,
    TenantInvalid,
}

impl Reason {
    pub const ALL: [Reason; 18] = [
        Reason::MissingToken,
        Reason::MultipleTokens,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::AlgNone,
        Reason::AlgNotAllowed,
        Reason::UnknownKid,
        Reason::KeyAlgMismatch,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::MissingExp,
        Reason::WrongIssuer,
        Reason::UnsupportedCrit,
        Reason::WrongAudience,
        Reason::TenantMissing,
        Reason::TenantInvalid,
    ];

    /// HTTP status, as Envoy's `jwt_authn` answers: 401 for a missing or
    /// invalid token, 403 for a valid token that may not pass.
    pub fn status(self) -> u32 {
        match self {
            Reason::WrongAudience | Reason::TenantMissing | Reason::TenantInvalid => 403,
            _ => 401,
        }
    }

    /// The `error` member of the JSON body.
    pub fn error_code(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::WrongAudience => "audience_not_allowed",
            Reason::TenantMissing => "tenant_missing",
            Reason::TenantInvalid => "tenant_invalid",
            _ => "invalid_token",
        }
    }

    /// The `error` parameter of `WWW-Authenticate` (RFC 6750 §3.1), if any.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Reason::MissingToken => None,
            Reason::WrongAudience => Some("insufficient_scope"),
            Reason::TenantMissing | Reason::TenantInvalid => None,
            _ => Some("invalid_token"),
        }
    }

    /// Whether the response carries `WWW-Authenticate`.
    pub fn challenges(self) -> bool {
        !matches!(self, Reason::TenantMissing | Reason::TenantInvalid)
    }

    /// Suffix of the `cell_router.rejected.<reason>` counter.
    pub fn metric_name(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MultipleTokens => "multiple_tokens",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::AlgNone => "alg_none",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::UnknownKid => "unknown_kid",
            Reason::KeyAlgMismatch => "key_alg_mismatch",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::MissingExp => "missing_exp",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::UnsupportedCrit => "unsupported_crit",
            Reason::WrongAudience => "wrong_audience",
            Reason::TenantMissing => "tenant_missing",
            Reason::TenantInvalid => "tenant_invalid",
        }
    }
}

/// A refused request: the reason and a detail for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.metric_name(), self.detail)
    }
}

// ---------------------------------------------------------------------------
// Extraction.

fn values<'h, 'n, K: AsRef<[u8]>, V: AsRef<[u8]>>(
    headers: &'h [(K, V)],
    name: &'n str,
) -> impl Iterator<Item = &'h [u8]> + use<'h, 'n, K, V> {
    headers
        .iter()
        .filter(move |(k, _)| k.as_ref().eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_ref())
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |p| p + 1);
    bytes.get(start..end).unwrap_or_default()
}

fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match tail {
                [hi, lo, after @ ..] => {
                    out.push(((hex(*hi)? << 4) | hex(*lo)?) as u8);
                    rest = after;
                }
                _ => return None,
            }
        } else {
            out.push(if b == b'+' { b' ' } else { b });
            rest = tail;
        }
    }
    Some(out)
}

/// Finds the token: the header first, then the query parameter, then the
/// cookie. Several copies in one place are refused (which one would count?).
pub fn extract<'h, K: AsRef<[u8]>, V: AsRef<[u8]>>(
    source: &TokenSource,
    headers: &'h [(K, V)],
) -> Result<Cow<'h, [u8]>, Rejection> {
    let mut wrong_scheme = false;
    let mut found = values(headers, &source.header);
    if let Some(first) = found.next() {
        if found.next().is_some() {
            return Err(Rejection::new(
                Reason::MultipleTokens,
                format!("more than one {} header", source.header),
            ));
        }
        let prefix = source.prefix.as_bytes();
        match first.get(..prefix.len()) {
            Some(head) if head.eq_ignore_ascii_case(prefix) => {
                let token = trim(first.get(prefix.len()..).unwrap_or_default());
                if token.is_empty() {
                    return Err(Rejection::new(Reason::Malformed, "the token is empty"));
                }
                return Ok(Cow::Borrowed(token));
            }
            _ => wrong_scheme = true,
        }
    }

    if let Some(param) = &source.query_param
        && let Some(path) = values(headers, ":path").next()
    {
        let query = path
            .splitn(2, |b| *b == b'?')
            .nth(1)
            .and_then(|q| q.split(|b| *b == b'#').next())
            .unwrap_or_default();
        let mut tokens = query.split(|b| *b == b'&').filter_map(|pair| {
            let mut kv = pair.splitn(2, |b| *b == b'=');
            let name = kv.next()?;
            (name == param.as_bytes()).then(|| kv.next().unwrap_or_default())
        });
        if let Some(raw) = tokens.next() {
            if tokens.next().is_some() {
                return Err(Rejection::new(
                    Reason::MultipleTokens,
                    format!("query parameter {param} appears more than once"),
                ));
            }
            let token = percent_decode(raw).ok_or_else(|| {
                Rejection::new(
                    Reason::Malformed,
                    format!("query parameter {param} is badly percent-encoded"),
                )
            })?;
            if token.is_empty() {
                return Err(Rejection::new(Reason::Malformed, "the token is empty"));
            }
            return Ok(Cow::Owned(token));
        }
    }

    if let Some(cookie) = &source.cookie {
        let mut tokens = values(headers, "cookie").flat_map(|header| {
            header.split(|b| *b == b';').filter_map(|pair| {
                let pair = trim(pair);
                let mut kv = pair.splitn(2, |b| *b == b'=');
                let name = kv.next()?;
                (name == cookie.as_bytes()).then(|| kv.next().unwrap_or_default())
            })
        });
        if let Some(raw) = tokens.next() {
            if tokens.next().is_some() {
                return Err(Rejection::new(
                    Reason::MultipleTokens,
                    format!("cookie {cookie} appears more than once"),
                ));
            }
            let token = match raw {
                [b'"', inner @ .., b'"'] => inner,
                _ => raw,
            };
            if token.is_empty() {
                return Err(Rejection::new(Reason::Malformed, "the token is empty"));
            }
            return Ok(Cow::Borrowed(token));
        }
    }

    let detail = if wrong_scheme {
        format!(
            "the {} header does not start with {:?}",
            source.header,
            source.prefix.trim_end()
        )
    } else {
        format!("no token in the {} header", source.header)
    };
    Err(Rejection::new(Reason::MissingToken, detail))
}

// ---------------------------------------------------------------------------
// Verification.

/// What a verified token says, kept by the token cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub tenant: String,
    /// The `split_claim` value (a string or an integer, non-empty, at most
    /// [`MAX_SPLIT_KEY_BYTES`]); `None` when absent or unusable: the tenant
    /// is the split key then.
    pub split_key: Option<String>,
    /// Earliest time the token is valid (max of nbf and iat), unix seconds.
    pub valid_from: Option<u64>,
    /// exp, unix seconds.
    pub expires_at: Option<u64>,
    /// Whether the host (Envoy's `verify_signature`) checked the signature.
    pub by_host: bool,
}

/// The JOSE header members the filter looks at, read from a JSON object
/// (never an array) without duplicate members. Unknown members are ignored;
/// `jku`, `x5u`, `jwk` and `x5c` are never used to find a key.
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    /// Any `crit` member: no extension is understood.
    crit: bool,
}

impl JoseHeader {
    fn parse(json: &[u8]) -> Result<JoseHeader, Rejection> {
        let malformed = |why: String| Rejection::new(Reason::Malformed, why);
        let mut header = json::parse_object(json)
            .map_err(|e| malformed(format!("the header is not valid: {e}")))?;
        let alg = match header.remove("alg") {
            Some(Value::String(alg)) => alg,
            Some(other) => {
                return Err(malformed(format!(
                    "the header's alg must be a string, not {}",
                    json::kind(&other)
                )));
            }
            None => return Err(malformed("the header has no alg".to_string())),
        };
        // RFC 7515 §4.1.4: a string when present (jwt_authn refuses null too).
        let kid = match header.remove("kid") {
            Some(Value::String(kid)) => Some(kid),
            Some(other) => {
                return Err(malformed(format!(
                    "the header's kid must be a string, not {}",
                    json::kind(&other)
                )));
            }
            None => None,
        };
        Ok(JoseHeader {
            alg,
            kid,
            crit: header.contains_key("crit"),
        })
    }
}

/// Claims beyond the registered ones, with duplicate names refused at every
/// level: parsers that disagree on `{"tenant":"a","tenant":"b"}` must not
/// disagree on where a request goes.
#[derive(Debug, Default)]
pub struct ExtraClaims(pub Map<String, Value>);

impl<'de> serde::Deserialize<'de> for ExtraClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        json::object_map(deserializer).map(ExtraClaims)
    }
}

/// The `iss` claim of a compact JWS, before any verification (to pick
/// the provider); `None` if the token is too large or `iss` cannot be read.
pub fn unverified_issuer(token: &[u8], max_token_bytes: usize) -> Option<String> {
    if token.len() > max_token_bytes {
        return None;
    }
    let mut parts = token.split(|b| *b == b'.');
    let claims_b64 = parts.nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(claims_b64).ok()?;
    let claims = json::parse_object(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// Registered claims holding a time (NumericDate).
const TIME_CLAIMS: [&str; 3] = ["exp", "nbf", "iat"];

/// The claims set before any signature work: a JSON object without
/// duplicate names whose `exp`, `nbf` and `iat` are integers that fit in 64
/// bits (as Envoy's `jwt_authn` reads them: `1e308`, `1.5` or `-1` would
/// otherwise be saturated or truncated into some time).
fn check_claims(claims_b64: &str) -> Result<(), Rejection> {
    let malformed = |why: String| Rejection::new(Reason::Malformed, why);
    let bytes = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .map_err(|_| malformed("the claims are not base64url".to_string()))?;
    let claims = json::parse_object(&bytes)
        .map_err(|e| malformed(format!("the claims are not valid: {e}")))?;
    for name in TIME_CLAIMS {
        if let Some(value) = claims.get(name)
            && !value.is_u64()
        {
            return Err(malformed(format!(
                "{name} must be an integer number of seconds from 0 to 2^64 - 1"
            )));
        }
    }
    Ok(())
}

fn is_b64url_or_dot(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// Verifies a token at `now_s` (unix seconds, the host clock) and reads its
/// tenant, all in the VM. `max_tenant_bytes` bounds the tenant id.
pub fn verify(
    settings: &JwtSettings,
    max_tenant_bytes: usize,
    token: &[u8],
    now_s: u64,
) -> Result<Verified, Rejection> {
    verify_with(settings, max_tenant_bytes, token, now_s, &mut NoHost)
}

/// Like [`verify`], letting `host` check RSA PKCS#1 and ECDSA signatures
/// when `settings.host_signatures` is on; whatever the host cannot check is
/// verified in the VM.
pub fn verify_with(
    settings: &JwtSettings,
    max_tenant_bytes: usize,
    token: &[u8],
    now_s: u64,
    host: &mut dyn SignatureHost,
) -> Result<Verified, Rejection> {
    if let Some(first) = settings.providers.first() {
        // Several identity providers: the token's (unverified) `iss` picks
        // the provider whose keys, algorithms and audiences apply. A token
        // whose `iss` cannot be read is checked by the first provider, which
        // names what is wrong with it.
        let provider = match unverified_issuer(token, settings.max_token_bytes) {
            Some(iss) => match settings
                .providers
                .iter()
                .find(|p| p.issuers.as_ref().is_some_and(|set| set.contains(&iss)))
            {
                Some(provider) => provider,
                None => {
                    return Err(Rejection::new(
                        Reason::WrongIssuer,
                        format!("issuer {:?} is not one of the providers", truncate(&iss)),
                    ));
                }
            },
            None => first,
        };
        return verify_with(provider, max_tenant_bytes, token, now_s, host);
    }
    if token.len() > settings.max_token_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!(
                "the token is larger than {} bytes",
                settings.max_token_bytes
            ),
        ));
    }
    if !token.iter().all(|b| is_b64url_or_dot(*b)) {
        return Err(Rejection::new(
            Reason::Malformed,
            "the token has characters outside base64url",
        ));
    }
    let Ok(token) = std::str::from_utf8(token) else {
        return Err(Rejection::new(Reason::Malformed, "the token is not ASCII"));
    };
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::new(
            Reason::Malformed,
            "not a compact JWS (three base64url parts separated by dots)",
        ));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| Rejection::new(Reason::Malformed, "the header is not base64url"))?;
    let header = JoseHeader::parse(&header_json)?;

    if header.alg.eq_ignore_ascii_case("none") {
        return Err(Rejection::new(
            Reason::AlgNone,
            "unsigned tokens (alg none) are refused",
        ));
    }
    let alg = Algorithm::from_name(&header.alg)
        .filter(|alg| settings.algorithms.contains(alg))
        .ok_or_else(|| {
            Rejection::new(
                Reason::AlgNotAllowed,
                format!("algorithm {:?} is not allowed", truncate(&header.alg)),
            )
        })?;
    if header.crit {
        return Err(Rejection::new(
            Reason::UnsupportedCrit,
            "the header lists critical extensions (crit) this filter does not understand",
        ));
    }
    // After the alg check, so `alg: none` tokens (empty signature) are named.
    if claims_b64.is_empty() || signature_b64.is_empty() {
        return Err(Rejection::new(
            Reason::Malformed,
            "not a compact JWS (a part is empty)",
        ));
    }
    check_claims(claims_b64)?;

    let kid = header.kid.as_deref();
    let candidates: Vec<_> = settings.keys.candidates(alg, kid).collect();
    if candidates.is_empty() {
        return Err(match kid {
            Some(kid) if settings.keys.has_kid(kid) => Rejection::new(
                Reason::KeyAlgMismatch,
                format!("key {:?} is not a {alg} key", truncate(kid)),
            ),
            Some(kid) => Rejection::new(
                Reason::UnknownKid,
                format!("unknown kid {:?}", truncate(kid)),
            ),
            None => Rejection::new(
                Reason::UnknownKid,
                format!("no {alg} key for a token without kid"),
            ),
        });
    }

    let options = VerificationOptions {
        time_tolerance: Some(Duration::from_secs(settings.clock_skew_s)),
        artificial_time: Some(UnixTimeStamp::from_secs(now_s)),
        max_token_length: Some(settings.max_token_bytes),
        allowed_issuers: settings.issuers.clone(),
        allowed_audiences: settings.audiences.clone(),
        ..VerificationOptions::default()
    };
    let parts = Parts {
        token,
        header_b64,
        claims_b64,
        signature_b64,
    };
    let mut last = Rejection::new(Reason::BadSignature, "the signature does not verify");
    let mut verified = None;
    for entry in candidates {
        if settings.host_signatures
            && let (Some(der), Some(hash)) = (&entry.spki_der, alg.host_hash())
        {
            match verify_on_host(host, alg, hash, der, &parts, settings, now_s) {
                HostCheck::Done(claims) => {
                    verified = Some((*claims, true));
                    break;
                }
                HostCheck::Refused(rejection) => {
                    last = rejection;
                    if last.reason != Reason::BadSignature {
                        return Err(last);
                    }
                    continue;
                }
                HostCheck::Unavailable => {}
            }
        }
        match entry.key.verify::<ExtraClaims>(token, options.clone()) {
            Ok(claims) => {
                verified = Some((claims, false));
                break;
            }
            Err(err) => {
                last = map_error(&err);
                // Only a bad signature may mean "another key of the same kid
                // set"; any other error came after the signature verified.
                if last.reason != Reason::BadSignature {
                    return Err(last);
                }
            }
        }
    }
    let Some((claims, by_host)) = verified else {
        return Err(last);
    };

    if settings.require_exp && claims.expires_at.is_none() {
        return Err(Rejection::new(
            Reason::MissingExp,
            "the token has no exp claim",
        ));
    }
    let tenant = tenant_from_claims(&claims, &settings.tenant_claim, max_tenant_bytes)?;
    let split_key = settings
        .split_claim
        .as_ref()
        .and_then(|path| split_key_from_claims(&claims, path));
    let valid_from = match (claims.invalid_before, claims.issued_at) {
        (Some(a), Some(b)) => Some(a.max(b).as_secs()),
        (a, b) => a.or(b).map(|t| t.as_secs()),
    };
    Ok(Verified {
        tenant,
        split_key,
        valid_from,
        expires_at: claims.expires_at.map(|t| t.as_secs()),
        by_host,
    })
}

struct Parts<'t> {
    token: &'t str,
    header_b64: &'t str,
    claims_b64: &'t str,
    signature_b64: &'t str,
}

enum HostCheck {
    Done(Box<JWTClaims<ExtraClaims>>),
    Refused(Rejection),
    Unavailable,
}

/// The host checks the signature; the rest of jwt-simple's checks are
/// repeated here, in its order, so both paths answer alike.
fn verify_on_host(
    host: &mut dyn SignatureHost,
    alg: Algorithm,
    hash: &str,
    der: &[u8],
    parts: &Parts<'_>,
    settings: &JwtSettings,
    now_s: u64,
) -> HostCheck {
    let refuse = |reason, detail: &str| HostCheck::Refused(Rejection::new(reason, detail));
    // jwt-simple's header rules: size, its header struct, `typ`.
    if parts.header_b64.len() > jwt_simple::token::MAX_HEADER_LENGTH {
        return refuse(Reason::TooLarge, "the token is too large");
    }
    let metadata = match jwt_simple::token::Token::decode_metadata(parts.token) {
        Ok(metadata) => metadata,
        Err(err) => return HostCheck::Refused(map_error(&err)),
    };
    if let Some(typ) = metadata.signature_type() {
        let typ = typ.to_uppercase();
        if typ != "JWT" && !typ.ends_with("+JWT") {
            return refuse(Reason::Malformed, "the typ header is not JWT");
        }
    }
    let Ok(signature) = URL_SAFE_NO_PAD.decode(parts.signature_b64) else {
        return refuse(Reason::Malformed, "the signature is not base64url");
    };
    let signature = match alg.ecdsa_scalar_bytes() {
        Some(size) => match ecdsa_jws_to_der(&signature, size) {
            Some(der) => der,
            None => return refuse(Reason::BadSignature, "the signature does not verify"),
        },
        None => signature,
    };
    let signed = parts.header_b64.len() + 1 + parts.claims_b64.len();
    let Some(text) = parts.token.get(..signed) else {
        return refuse(Reason::Malformed, "not a compact JWS");
    };
    match host.verify_signature(hash, der, &signature, text.as_bytes()) {
        HostVerdict::Valid => {}
        HostVerdict::Invalid => {
            return refuse(Reason::BadSignature, "the signature does not verify");
        }
        HostVerdict::Unavailable => return HostCheck::Unavailable,
    }
    let claims: JWTClaims<ExtraClaims> = match URL_SAFE_NO_PAD
        .decode(parts.claims_b64)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
    {
        Some(claims) => claims,
        None => return refuse(Reason::Malformed, "the token is not valid JSON/base64url"),
    };
    match validate_claims(&claims, settings, now_s) {
        Ok(()) => HostCheck::Done(Box::new(claims)),
        Err(rejection) => HostCheck::Refused(rejection),
    }
}

/// jwt-simple's registered-claim checks (`JWTClaims::validate`, crate
/// private there) for the options this filter uses, in the same order.
pub fn validate_claims(
    claims: &JWTClaims<ExtraClaims>,
    settings: &JwtSettings,
    now_s: u64,
) -> Result<(), Rejection> {
    let skew = settings.clock_skew_s;
    if let Some(iat) = claims.issued_at
        && iat.as_secs() > now_s.saturating_add(skew)
    {
        return Err(map_jwt(&JWTError::ClockDrift));
    }
    if let Some(nbf) = claims.invalid_before
        && now_s.saturating_add(skew) < nbf.as_secs()
    {
        return Err(map_jwt(&JWTError::TokenNotValidYet));
    }
    if let Some(exp) = claims.expires_at
        && (now_s < skew || now_s - skew > exp.as_secs())
    {
        return Err(map_jwt(&JWTError::TokenHasExpired));
    }
    if let Some(allowed) = &settings.issuers {
        match &claims.issuer {
            Some(issuer) if allowed.contains(issuer) => {}
            Some(_) => return Err(map_jwt(&JWTError::RequiredIssuerMismatch)),
            None => return Err(map_jwt(&JWTError::RequiredIssuerMissing)),
        }
    }
    if let Some(allowed) = &settings.audiences {
        match &claims.audiences {
            Some(audiences) if audiences.contains(allowed) => {}
            Some(_) => return Err(map_jwt(&JWTError::RequiredAudienceMismatch)),
            None => return Err(map_jwt(&JWTError::RequiredAudienceMissing)),
        }
    }
    Ok(())
}

/// Keeps client-controlled text in details short.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn map_error(err: &jwt_simple::Error) -> Rejection {
    match err.downcast_ref::<JWTError>() {
        Some(jwt) => map_jwt(jwt),
        None => Rejection::new(Reason::Malformed, "the token is not valid JSON/base64url"),
    }
}

fn map_jwt(jwt: &JWTError) -> Rejection {
    match jwt {
        JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag => {
            Rejection::new(Reason::BadSignature, "the signature does not verify")
        }
        JWTError::TokenHasExpired => Rejection::new(Reason::Expired, "the token has expired"),
        JWTError::TokenNotValidYet => {
            Rejection::new(Reason::NotYetValid, "the token is not valid yet (nbf)")
        }
        JWTError::ClockDrift => Rejection::new(
            Reason::IssuedInFuture,
            "the token was issued in the future (iat)",
        ),
        JWTError::RequiredIssuerMismatch => {
            Rejection::new(Reason::WrongIssuer, "the issuer is not allowed")
        }
        JWTError::RequiredIssuerMissing => {
            Rejection::new(Reason::WrongIssuer, "the token has no iss claim")
        }
        JWTError::RequiredAudienceMismatch => {
            Rejection::new(Reason::WrongAudience, "the audience is not allowed")
        }
        JWTError::RequiredAudienceMissing => {
            Rejection::new(Reason::WrongAudience, "the token has no aud claim")
        }
        JWTError::TokenTooLong | JWTError::HeaderTooLarge => {
            Rejection::new(Reason::TooLarge, "the token is too large")
        }
        JWTError::UnknownCriticalExtension => Rejection::new(
            Reason::UnsupportedCrit,
            "the header lists critical extensions (crit) this filter does not understand",
        ),
        JWTError::AlgorithmMismatch => Rejection::new(
            Reason::AlgNotAllowed,
            "the algorithm does not match the key",
        ),
        JWTError::NotJWT => Rejection::new(Reason::Malformed, "the typ header is not JWT"),
        _ => Rejection::new(Reason::Malformed, format!("the token is not valid: {jwt}")),
    }
}

/// Checks a tenant id: non-empty, bounded, no control characters.
pub fn check_tenant(tenant: &str, max_bytes: usize, what: &str) -> Result<(), Rejection> {
    if tenant.is_empty() {
        return Err(Rejection::new(
            Reason::TenantInvalid,
            format!("{what} is empty"),
        ));
    }
    if tenant.len() > max_bytes {
        return Err(Rejection::new(
            Reason::TenantInvalid,
            format!("{what} is longer than {max_bytes} bytes"),
        ));
    }
    if tenant.chars().any(char::is_control) {
        return Err(Rejection::new(
            Reason::TenantInvalid,
            format!("{what} has control characters"),
        ));
    }
    Ok(())
}

/// A claim's value as text.
enum ClaimText {
    Text(String),
    Missing,
    /// Present but neither a string nor an integer.
    WrongType,
}

fn claim_text(claims: &JWTClaims<ExtraClaims>, path: &ClaimPath) -> ClaimText {
    let Some((first, rest)) = path.segments.split_first() else {
        return ClaimText::Missing;
    };
    if rest.is_empty() && STRING_REGISTERED_CLAIMS.contains(&first.as_str()) {
        let value = match first.as_str() {
            "sub" => claims.subject.as_ref(),
            "iss" => claims.issuer.as_ref(),
            "jti" => claims.jwt_id.as_ref(),
            _ => claims.nonce.as_ref(),
        };
        return value.map_or(ClaimText::Missing, |v| ClaimText::Text(v.clone()));
    }
    let Some(mut value) = claims.custom.0.get(first.as_str()) else {
        return ClaimText::Missing;
    };
    for segment in rest {
        match value.as_object().and_then(|o| o.get(segment.as_str())) {
            Some(v) => value = v,
            None => return ClaimText::Missing,
        }
    }
    match value {
        Value::String(s) => ClaimText::Text(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => ClaimText::Text(n.to_string()),
        Value::Null => ClaimText::Missing,
        _ => ClaimText::WrongType,
    }
}

fn tenant_from_claims(
    claims: &JWTClaims<ExtraClaims>,
    path: &ClaimPath,
    max_bytes: usize,
) -> Result<String, Rejection> {
    let name = path.display();
    let what = format!("claim {name}");
    let tenant = match claim_text(claims, path) {
        ClaimText::Text(tenant) => tenant,
        ClaimText::Missing => {
            return Err(Rejection::new(
                Reason::TenantMissing,
                format!("the token has no {name} claim"),
            ));
        }
        ClaimText::WrongType => {
            return Err(Rejection::new(
                Reason::TenantInvalid,
                format!("{what} must be a string or an integer"),
            ));
        }
    };
    check_tenant(&tenant, max_bytes, &what)?;
    Ok(tenant)
}

/// Longest split key taken from a token; a longer one is not used (the
/// tenant is the split key then).
pub const MAX_SPLIT_KEY_BYTES: usize = 1024;

/// The split key of a verified token: the claim's text when it is a
/// non-empty string or integer of at most [`MAX_SPLIT_KEY_BYTES`].
fn split_key_from_claims(claims: &JWTClaims<ExtraClaims>, path: &ClaimPath) -> Option<String> {
    match claim_text(claims, path) {
        ClaimText::Text(key) if !key.is_empty() && key.len() <= MAX_SPLIT_KEY_BYTES => Some(key),
        _ => None,
    }
}

/// Trust-header mode: the tenant from a header `jwt_authn` set.
pub fn tenant_from_header<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    headers: &[(K, V)],
    name: &str,
    max_bytes: usize,
) -> Result<String, Rejection> {
    let mut found = values(headers, name);
    let Some(value) = found.next() else {
        return Err(Rejection::new(
            Reason::MissingToken,
            format!("no {name} header (set by jwt_authn from a verified token)"),
        ));
    };
    if found.next().is_some() {
        return Err(Rejection::new(
            Reason::TenantInvalid,
            format!("the {name} header appears more than once"),
        ));
    }
    let what = format!("header {name}");
    let tenant = std::str::from_utf8(value)
        .map_err(|_| Rejection::new(Reason::TenantInvalid, format!("{what} is not UTF-8")))?;
    check_tenant(tenant, max_bytes, &what)?;
    Ok(tenant.to_string())
}
