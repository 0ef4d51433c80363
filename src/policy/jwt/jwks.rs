//! JSON Web Key Sets (RFC 7517) turned into ready-to-verify keys.
//!
//! A JWKS is parsed once, when it is loaded (the file at start-up, the URL
//! on every refresh, in the fetcher thread), never on the request path. Each
//! usable key becomes a [`Key`]: its `kid`, the one algorithm it may verify
//! (fixed by its `kty`/`crv`, and by its `alg` if it names one), and the
//! decoded key material in the form ring verifies with. A token can never
//! pick an algorithm its key was not made for.
//!
//! Keys this gateway cannot use (other algorithms such as RS384 or PS256,
//! other curves, encryption keys) are skipped and counted; a key of a
//! supported kind whose members are malformed is skipped and reported.

use super::verify::Alg;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};
use std::fmt;

/// Largest JWKS document accepted, from a file or a URL.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys one JWKS may hold: a scan over them is the key lookup.
pub const MAX_KEYS: usize = 100;
/// Longest `kid` kept.
pub const MAX_KID_BYTES: usize = 256;
/// RSA moduli ring verifies with `RSA_PKCS1_2048_8192_SHA256`.
pub const RSA_MIN_BITS: usize = 2048;
pub const RSA_MAX_BITS: usize = 8192;
/// RFC 7518 §3.2: an HS256 key is at least as long as the hash output.
pub const HMAC_MIN_BYTES: usize = 32;

/// Key material, decoded and checked, ready for ring.
pub enum Verifier {
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
    /// `04 ‖ x ‖ y`, the uncompressed P-256 point.
    Es256(UnparsedPublicKey<Vec<u8>>),
    Ed25519(UnparsedPublicKey<Vec<u8>>),
    Hmac(ring::hmac::Key),
}

/// One usable key of a set.
pub struct Key {
    pub kid: Option<Box<str>>,
    /// The only algorithm this key verifies.
    pub alg: Alg,
    pub verifier: Verifier,
}

impl fmt::Debug for Key {
    // Never prints key material (an HMAC key is a secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

/// What loading a JWKS document found besides the usable keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys of a kind this gateway does not verify (skipped, no harm).
    pub unsupported: usize,
    /// Keys of a supported kind that are malformed: `index: reason`.
    pub malformed: Vec<String>,
}

/// Where the keys come from, which decides what is trusted: a JWKS URL is
/// public by convention, so a shared secret (`oct` key) published there
/// would let anyone mint tokens; such keys are only taken from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    File,
    Url,
}

/// Why a key of a supported kind was not used.
type KeyError = String;

fn b64(v: Option<&Value>, member: &str) -> Result<Vec<u8>, KeyError> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{member}` is missing or not a string"))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("`{member}` is not base64url without padding"))
}

fn strip_leading_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

fn bit_len(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(&top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// Parses one JWK. `Ok(None)`: a kind this gateway does not verify.
fn parse_key(obj: &Map<String, Value>, origin: Origin) -> Result<Option<Key>, KeyError> {
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("`kty` is missing or not a string")?;
    // RFC 7517 §4.2/4.3: a key meant for encryption, or for operations
    // other than verifying, is not a signature key.
    match obj.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Ok(None),
    }
    if let Some(ops) = obj.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Ok(None);
        }
    }
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= MAX_KID_BYTES => Some(k.as_str().into()),
        Some(Value::String(_)) => return Err(format!("`kid` is over {MAX_KID_BYTES} bytes")),
        Some(_) => return Err("`kid` is not a string".into()),
    };
    let crv = obj.get("crv").and_then(Value::as_str);
    let alg = match (kty, crv) {
        ("RSA", _) => Alg::Rs256,
        ("EC", Some("P-256")) => Alg::Es256,
        ("OKP", Some("Ed25519")) => Alg::EdDsa,
        ("oct", _) => Alg::Hs256,
        _ => return Ok(None),
    };
    // A key that names an algorithm verifies only that one: an RSA key
    // marked RS512 is not used for RS256 tokens.
    match obj.get("alg") {
        None => {}
        Some(Value::String(a)) if a == alg.name() => {}
        Some(_) => return Ok(None),
    }
    let verifier = match alg {
        Alg::Rs256 => {
            let n = b64(obj.get("n"), "n")?;
            let e = b64(obj.get("e"), "e")?;
            let (n, e) = (strip_leading_zeros(&n), strip_leading_zeros(&e));
            let bits = bit_len(n);
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits; {RSA_MIN_BITS} to {RSA_MAX_BITS} are verified"
                ));
            }
            // ring takes odd exponents from 3 to 2^33 - 1.
            let e_ok = !e.is_empty()
                && e.len() <= 5
                && e.last().is_some_and(|b| b & 1 == 1)
                && (e.len() > 1 || e[0] >= 3)
                && bit_len(e) <= 33;
            if !e_ok {
                return Err("RSA exponent `e` is not an odd number from 3 to 2^33 - 1".into());
            }
            Verifier::Rsa(RsaPublicKeyComponents {
                n: n.to_vec(),
                e: e.to_vec(),
            })
        }
        Alg::Es256 => {
            let x = b64(obj.get("x"), "x")?;
            let y = b64(obj.get("y"), "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 `x` and `y` must be 32 bytes each".into());
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Verifier::Es256(UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                point,
            ))
        }
        Alg::EdDsa => {
            let x = b64(obj.get("x"), "x")?;
            if x.len() != 32 {
                return Err("Ed25519 `x` must be 32 bytes".into());
            }
            Verifier::Ed25519(UnparsedPublicKey::new(&signature::ED25519, x))
        }
        Alg::Hs256 => {
            if origin == Origin::Url {
                return Err(
                    "an `oct` (shared secret) key from a JWKS URL is never used: anyone who can read the URL could mint tokens; put HS256 keys in a jwks_file".into(),
                );
            }
            let k = b64(obj.get("k"), "k")?;
            if k.len() < HMAC_MIN_BYTES {
                return Err(format!(
                    "HS256 key `k` of {} bytes; at least {HMAC_MIN_BYTES} are required",
                    k.len()
                ));
            }
            Verifier::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k))
        }
    };
    Ok(Some(Key { kid, alg, verifier }))
}

/// Parses a JWKS document (`{"keys":[...]}`). Errors only when the
/// document itself is unusable (not JSON, no `keys` array, too big, too
/// many keys); single keys that cannot be used are in the report.
pub fn parse(doc: &[u8], origin: Origin) -> Result<(KeySet, LoadReport), String> {
    if doc.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "the JWKS is {} bytes; at most {MAX_JWKS_BYTES} are read",
            doc.len()
        ));
    }
    let value: Value =
        serde_json::from_slice(doc).map_err(|e| format!("the JWKS is not valid JSON: {e}"))?;
    let keys = value
        .as_object()
        .and_then(|o| o.get("keys"))
        .and_then(Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    if keys.len() > MAX_KEYS {
        return Err(format!(
            "the JWKS has {} keys; at most {MAX_KEYS} are taken",
            keys.len()
        ));
    }
    let mut set = KeySet::default();
    let mut report = LoadReport::default();
    for (i, k) in keys.iter().enumerate() {
        let Some(obj) = k.as_object() else {
            report.malformed.push(format!("keys[{i}]: not an object"));
            continue;
        };
        match parse_key(obj, origin) {
            Ok(Some(key)) => set.keys.push(key),
            Ok(None) => report.unsupported += 1,
            Err(e) => report.malformed.push(format!("keys[{i}]: {e}")),
        }
    }
    Ok((set, report))
}

impl KeySet {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}
