//! Envoy's `verify_signature` foreign function, re-done in pure Rust so the
//! test host answers as Envoy (BoringSSL `EVP_DigestVerify`) would:
//! arguments and result are the protobufs of
//! `source/extensions/common/wasm/ext/verify_signature.proto`
//! (`hash_function = 1`, DER `public_key = 2`, `signature = 3`, `text = 4`,
//! `public_key_pem = 5`; result `bool result = 1`, `string error = 2`).
//! Keys are SubjectPublicKeyInfo; RSA uses PKCS#1 v1.5 (BoringSSL's default
//! padding), ECDSA takes DER signatures over the digest of the text.

use base64::Engine as _;
use rsa::sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

#[derive(Default)]
struct Arguments {
    hash: String,
    der: Vec<u8>,
    pem: String,
    signature: Vec<u8>,
    text: Vec<u8>,
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
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

/// Parses the arguments like protobuf's `ParseFromString`: unknown fields
/// skipped, a known field of the wrong wire type or bad UTF-8 in a string
/// field is a parse failure.
fn parse(bytes: &[u8]) -> Option<Arguments> {
    let mut args = Arguments::default();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(bytes, &mut at)?;
                if (1..=5).contains(&field) {
                    return None;
                }
            }
            1 | 5 => {
                at += if wire == 1 { 8 } else { 4 };
                if at > bytes.len() || (1..=5).contains(&field) {
                    return None;
                }
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
                let value = bytes.get(at..at.checked_add(len)?)?.to_vec();
                at += len;
                match field {
                    1 => args.hash = String::from_utf8(value).ok()?,
                    2 => args.der = value,
                    3 => args.signature = value,
                    4 => args.text = value,
                    5 => args.pem = String::from_utf8(value).ok()?,
                    _ => {}
                }
            }
            _ => return None,
        }
    }
    Some(args)
}

fn encode_result(valid: bool, error: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if valid {
        out.extend_from_slice(&[0x08, 0x01]);
    }
    if !error.is_empty() {
        out.push(0x12);
        let mut len = error.len();
        while len >= 0x80 {
            out.push((len as u8) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(error.as_bytes());
    }
    out
}

/// The DER inside a `-----BEGIN PUBLIC KEY-----` block.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

fn import(der: &[u8]) -> Option<PublicKey> {
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::pkcs8::DecodePublicKey as _;
    if let Ok(key) = rsa::RsaPublicKey::from_public_key_der(der) {
        return Some(PublicKey::Rsa(key));
    }
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
        return Some(PublicKey::P256(key));
    }
    p384::ecdsa::VerifyingKey::from_public_key_der(der)
        .ok()
        .map(PublicKey::P384)
}

/// Envoy refuses arguments it cannot parse with `WasmResult::BadArgument`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadArgument;

/// Envoy's `verify_signature`: the serialized result, or `BadArgument` when
/// the arguments are not a `VerifySignatureArguments` it can use (no key, or
/// both a DER and a PEM key).
pub fn verify_signature(arguments: &[u8]) -> Result<Vec<u8>, BadArgument> {
    let args = parse(arguments).ok_or(BadArgument)?;
    let der = match (args.der.is_empty(), args.pem.is_empty()) {
        (false, true) => args.der.clone(),
        (true, false) => pem_to_der(&args.pem).unwrap_or_default(),
        _ => return Err(BadArgument),
    };
    Ok(
        match verify(&args.hash, &der, &args.signature, &args.text) {
            Ok(()) => encode_result(true, ""),
            Err(error) => encode_result(false, &error),
        },
    )
}

/// The check itself, as BoringSSL's `EVP_DigestVerify` does it: `Ok` when
/// `signature` is valid for `text` under the SubjectPublicKeyInfo `der`,
/// else the error text Envoy puts in its result.
pub fn verify(hash: &str, der: &[u8], signature: &[u8], text: &[u8]) -> Result<(), String> {
    let lower = hash.to_ascii_lowercase();
    let digest: Vec<u8> = match lower.as_str() {
        "sha224" => Sha224::digest(text).to_vec(),
        "sha256" => Sha256::digest(text).to_vec(),
        "sha384" => Sha384::digest(text).to_vec(),
        "sha512" => Sha512::digest(text).to_vec(),
        _ => return Err(format!("{hash} is not supported.")),
    };
    let Some(key) = import(der) else {
        return Err("Failed to initialize digest verify.".to_string());
    };
    let valid = match key {
        PublicKey::Rsa(key) => {
            let scheme = match lower.as_str() {
                "sha224" => rsa::Pkcs1v15Sign::new::<Sha224>(),
                "sha256" => rsa::Pkcs1v15Sign::new::<Sha256>(),
                "sha384" => rsa::Pkcs1v15Sign::new::<Sha384>(),
                _ => rsa::Pkcs1v15Sign::new::<Sha512>(),
            };
            key.verify(scheme, &digest, signature).is_ok()
        }
        PublicKey::P256(key) => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
            p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.verify_prehash(&digest, &sig).is_ok())
        }
        PublicKey::P384(key) => {
            use p384::ecdsa::signature::hazmat::PrehashVerifier as _;
            p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.verify_prehash(&digest, &sig).is_ok())
        }
    };
    if valid {
        Ok(())
    } else {
        Err("Failed to verify digest. Error code: 0".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{Alg, TokenBuilder, keys};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn put(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
        out.push(field << 3 | 2);
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push((len as u8) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(bytes);
    }

    fn args(hash: &str, der: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, 1, hash.as_bytes());
        put(&mut out, 2, der);
        put(&mut out, 3, signature);
        put(&mut out, 4, text);
        out
    }

    fn split(token: &str) -> (Vec<u8>, Vec<u8>) {
        let (input, sig) = token.rsplit_once('.').unwrap();
        (
            input.as_bytes().to_vec(),
            URL_SAFE_NO_PAD.decode(sig).unwrap(),
        )
    }

    /// JWS r‖s to DER, for ECDSA.
    fn der_signature(raw: &[u8]) -> Vec<u8> {
        let int = |b: &[u8]| {
            let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
            let mut v = if b.first().is_some_and(|x| *x >= 0x80) {
                vec![0]
            } else {
                vec![]
            };
            v.extend(b);
            let mut out = vec![2, v.len() as u8];
            out.extend(v);
            out
        };
        let (r, s) = raw.split_at(raw.len() / 2);
        let body = [int(r), int(s)].concat();
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    #[test]
    fn rsa_and_ecdsa_signatures_verify_like_boringssl() {
        let now = 1_700_000_000;
        let rsa_der = pem_to_der(&keys().rsa_public_pem).unwrap();
        let (text, sig) = split(&TokenBuilder::new(Alg::RS256, now).sign());
        assert_eq!(
            verify_signature(&args("sha256", &rsa_der, &sig, &text)),
            Ok(encode_result(true, ""))
        );
        let bad = verify_signature(&args("SHA256", &rsa_der, &sig, b"other")).unwrap();
        assert_eq!(bad.first(), Some(&0x12), "result false with an error");
        let (text, sig) = split(&TokenBuilder::new(Alg::RS512, now).sign());
        assert_eq!(
            verify_signature(&args("sha512", &rsa_der, &sig, &text)),
            Ok(encode_result(true, ""))
        );

        let ec_pem =
            std::fs::read_to_string(crate::tokens::keys_dir().join("ec256.pub.pem")).unwrap();
        let ec_der = pem_to_der(&ec_pem).unwrap();
        let (text, sig) = split(&TokenBuilder::new(Alg::ES256, now).sign());
        let sig = der_signature(&sig);
        assert_eq!(
            verify_signature(&args("sha256", &ec_der, &sig, &text)),
            Ok(encode_result(true, ""))
        );
        assert_ne!(
            verify_signature(&args("sha256", &ec_der, &sig, b"x")),
            Ok(encode_result(true, ""))
        );

        // PEM instead of DER; both or neither is refused.
        let mut pem_args = Vec::new();
        put(&mut pem_args, 1, b"sha256");
        put(&mut pem_args, 5, ec_pem.as_bytes());
        put(&mut pem_args, 3, &sig);
        put(&mut pem_args, 4, &text);
        assert_eq!(verify_signature(&pem_args), Ok(encode_result(true, "")));
        let mut both = pem_args.clone();
        put(&mut both, 2, &ec_der);
        assert_eq!(verify_signature(&both), Err(BadArgument));
        assert_eq!(verify_signature(&[0xff]), Err(BadArgument));
        let unknown_hash = verify_signature(&args("md5", &ec_der, &sig, &text)).unwrap();
        assert!(String::from_utf8_lossy(&unknown_hash).contains("md5 is not supported."));
        let no_key = verify_signature(&args("sha256", b"junk", &sig, &text)).unwrap();
        assert!(String::from_utf8_lossy(&no_key).contains("Failed to initialize"));
    }
}
