//! Token verification: a pure function of the token's bytes, a key set,
//! the authorizer's rules and the clock. No I/O, no allocation beyond the
//! decoded segments and the claims' JSON.
//!
//! The order matters for safety: the header is read only to choose a key
//! (its `alg` must be allowed *and* be the one the key was made for), the
//! signature is checked before the claims are parsed, and the claims are
//! then checked for time, issuer and audience.

use super::jwks::{Key, KeySet, Verifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::RSA_PKCS1_2048_8192_SHA256;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Longest token accepted (the whole `header.payload.signature` text).
/// Larger than any identity provider's access or ID token we know of,
/// far smaller than the head limit.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

// === impl Alg ===

/// The signature algorithms verified (RFC 7518 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
    Hs256,
    EdDsa,
}

impl Alg {
    pub const ALL: [Alg; 4] = [Alg::Rs256, Alg::Es256, Alg::Hs256, Alg::EdDsa];

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::Hs256 => "HS256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// Exact, case-sensitive names only: `none` and every other name is None.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of allowed algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgSet(u8);

impl AlgSet {
    pub fn all() -> AlgSet {
        let mut s = AlgSet::default();
        for a in Alg::ALL {
            s.insert(a);
        }
        s
    }
    pub fn insert(&mut self, a: Alg) {
        self.0 |= a.bit();
    }
    pub fn contains(self, a: Alg) -> bool {
        self.0 & a.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

// === impl Reject ===

/// Why a token was refused. Every reason is a 401 to the client (which
/// learns nothing more); the reason is for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No `Authorization` header, two of them, or another scheme.
    Missing,
    TooLarge,
    /// Not three base64url segments of JSON objects.
    Malformed,
    /// The header has a `crit` member: extensions we do not implement.
    Critical,
    /// `alg` is missing, `none`, unknown, or not in `algorithms`.
    AlgNotAllowed,
    /// No key has the token's `kid`: the key set may be stale (a refresh is
    /// asked for).
    UnknownKid,
    /// The token names no `kid` and no key, or more than one, fits its alg.
    NoKey,
    /// The key with the token's `kid` is for another algorithm.
    AlgMismatch,
    BadSignature,
    MissingExp,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    /// A registered claim of the wrong JSON type.
    BadClaim,
    /// A claim passed on as a header holds a control character.
    UnsafeClaim,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// === impl JSON objects ===

/// A JSON object whose members are unique: a token with `"sub"` twice is
/// ambiguous (RFC 7519 §4 lets a parser reject it, and we do, rather than
/// guess which one another component would read).
pub struct UniqueObject(pub Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<UniqueObject, A::Error> {
                let mut out = Map::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v: Value = m.next_value()?;
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn decode_object(segment: &[u8]) -> Result<Map<String, Value>, Reject> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Reject::Malformed)?;
    serde_json::from_slice::<UniqueObject>(&bytes)
        .map(|o| o.0)
        .map_err(|_| Reject::Malformed)
}

// === impl verify ===

/// What a token must satisfy besides its signature.
pub struct Rules<'a> {
    pub issuer: &'a str,
    pub audience: &'a [String],
    pub algorithms: AlgSet,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: f64,
}

/// Finds the key for a token's header. `kid` given: the keys with that kid,
/// of which one must be for `alg`. No `kid`: the one key for `alg`.
fn select_key<'k>(keys: &'k KeySet, kid: Option<&str>, alg: Alg) -> Result<&'k Key, Reject> {
    match kid {
        Some(kid) => {
            let mut named = keys.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
            let first = named.next().ok_or(Reject::UnknownKid)?;
            if first.alg == alg {
                return Ok(first);
            }
            named.find(|k| k.alg == alg).ok_or(Reject::AlgMismatch)
        }
        None => {
            let mut fits = keys.keys.iter().filter(|k| k.alg == alg);
            match (fits.next(), fits.next()) {
                (Some(k), None) => Ok(k),
                _ => Err(Reject::NoKey),
            }
        }
    }
}

fn check_signature(key: &Key, signed: &[u8], sig: &[u8]) -> Result<(), Reject> {
    let ok = match &key.verifier {
        Verifier::Rsa(c) => c.verify(&RSA_PKCS1_2048_8192_SHA256, signed, sig).is_ok(),
        Verifier::Es256(k) | Verifier::Ed25519(k) => k.verify(signed, sig).is_ok(),
        // ring compares the tags in constant time.
        Verifier::Hmac(k) => ring::hmac::verify(k, signed, sig).is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(Reject::BadSignature)
    }
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Reject> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(Reject::BadClaim),
    }
}

/// Verifies `token` (the bare JWS compact serialization) and returns its
/// claims. `now` is seconds since the Unix epoch.
pub fn verify(
    token: &[u8],
    keys: &KeySet,
    rules: &Rules<'_>,
    now: f64,
) -> Result<Map<String, Value>, Reject> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Reject::TooLarge);
    }
    let mut dots = memchr::memchr_iter(b'.', token);
    let (Some(d1), Some(d2), None) = (dots.next(), dots.next(), dots.next()) else {
        return Err(Reject::Malformed);
    };
    let (header, payload, sig) = (&token[..d1], &token[d1 + 1..d2], &token[d2 + 1..]);
    if header.is_empty() || payload.is_empty() || sig.is_empty() {
        return Err(Reject::Malformed);
    }
    let header = decode_object(header)?;
    if header.contains_key("crit") {
        return Err(Reject::Critical);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::from_name)
        .filter(|a| rules.algorithms.contains(*a))
        .ok_or(Reject::AlgNotAllowed)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(Reject::Malformed),
    };
    let key = select_key(keys, kid, alg)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Reject::Malformed)?;
    check_signature(key, &token[..d2], &sig)?;

    let claims = decode_object(payload)?;
    let exp = number(&claims, "exp")?.ok_or(Reject::MissingExp)?;
    if now > exp + rules.leeway {
        return Err(Reject::Expired);
    }
    if let Some(nbf) = number(&claims, "nbf")? {
        if nbf > now + rules.leeway {
            return Err(Reject::NotYetValid);
        }
    }
    if let Some(iat) = number(&claims, "iat")? {
        if iat > now + rules.leeway {
            return Err(Reject::IssuedInFuture);
        }
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == rules.issuer => {}
        _ => return Err(Reject::WrongIssuer),
    }
    check_audience(&claims, rules.audience)?;
    Ok(claims)
}

/// API Gateway's rule: `aud` when the token has one (a string or an array,
/// one of whose entries is configured), else `client_id` (Cognito access
/// tokens carry no `aud`).
fn check_audience(claims: &Map<String, Value>, audience: &[String]) -> Result<(), Reject> {
    let ok = |s: &str| audience.iter().any(|a| a == s);
    let found = match claims.get("aud") {
        Some(Value::String(a)) => ok(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(ok),
        Some(_) => false,
        None => match claims.get("client_id") {
            Some(Value::String(c)) => ok(c),
            _ => false,
        },
    };
    if found {
        Ok(())
    } else {
        Err(Reject::WrongAudience)
    }
}

// === impl scopes and claim headers ===

/// True when every scope in `required` is granted by the token's `scope`
/// (a space-separated string, RFC 8693) or `scp` (an array of strings, as
/// Okta sends it, or a space-separated string, as Entra ID does); either
/// form is read from either claim.
pub fn grants_scopes(claims: &Map<String, Value>, required: &[String]) -> bool {
    if required.is_empty() {
        return true;
    }
    let granted = |want: &str| {
        ["scope", "scp"].iter().any(|name| match claims.get(*name) {
            Some(Value::String(s)) => s.split(' ').any(|g| g == want),
            Some(Value::Array(a)) => a.iter().any(|g| g.as_str() == Some(want)),
            _ => false,
        })
    };
    required.iter().all(|r| granted(r))
}

/// The header value for a claim: strings verbatim, numbers and booleans as
/// their JSON text, arrays and objects as compact JSON. `Ok(None)` when the
/// claim is absent or null. A value with a control character (CR, LF, NUL,
/// DEL, ... even TAB) is refused: it could split the upstream head.
/// A claim as text for parameter mapping: a string as it is (control
/// characters included: the mapping refuses them where they would break
/// a header), a number or boolean as written, an array or object as
/// JSON; None when absent or null.
pub fn claim_text(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => serde_json::to_string(other).ok(),
    }
}

pub fn claim_header_value(v: Option<&Value>) -> Result<Option<String>, Reject> {
    let text = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // serde_json escapes control characters inside strings.
        Some(other) => serde_json::to_string(other).map_err(|_| Reject::BadClaim)?,
    };
    if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(Reject::UnsafeClaim);
    }
    Ok(Some(text))
}
