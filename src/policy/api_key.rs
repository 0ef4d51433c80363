//! API keys: the authentication phase, run after the IP rules and the CORS
//! preflight and before throttling (as API Gateway authenticates a request
//! before it counts it against a usage plan).
//!
//! A route with `api_key_required = true` (set on the route, or on its API
//! as the default for its routes) takes a request only if its `x-api-key`
//! header holds an enabled key; anything else (no header, two headers, a
//! malformed, unknown or disabled key) is 403 `{"message":"Forbidden"}`, and
//! nothing reaches the integration. The key that matched is noted in
//! [`super::RequestState::api_key`] for the phases after this one
//! (per-key throttling and usage plans, logs).
//!
//! A key reads `cg_<id>_<secret>`: `id` is 12 lowercase hex digits, public,
//! and indexes the key; `secret` is 32 random bytes as 64 lowercase hex
//! digits. Only `sha256$<salt>$<hash>` is stored, SHA-256 over a random
//! 16-byte salt followed by the 32 secret bytes. The secret has 256 bits of
//! entropy, so a slow password KDF would add latency and nothing else: no
//! dictionary exists to search. A check is a hash-map lookup by id, one
//! SHA-256 of 48 bytes and a constant-time compare, all on the stack.
//!
//! docs/api-keys.md describes the keys file, the config keys and
//! `coregate keys`.

pub use crate::config::raw::api_key::{RawApiKey, RawKeysFile};
use crate::config::raw::RawConfig;
use crate::config::ConfigError;
use crate::http::parse::RequestHead;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// The request header that carries a key, as in API Gateway.
pub const HEADER: &str = "x-api-key";
/// What every key starts with, so a leaked one is easy to recognise (and to
/// find with a secret scanner).
pub const PREFIX: &str = "cg_";
/// Hex digits of a key id.
pub const ID_LEN: usize = 12;
/// Random bytes of a key's secret.
pub const SECRET_BYTES: usize = 32;
/// Random bytes of a stored hash's salt.
pub const SALT_BYTES: usize = 16;
/// `cg_` + id + `_` + secret in hex.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + 1 + 2 * SECRET_BYTES;
/// The scheme a stored hash names.
pub const HASH_SCHEME: &str = "sha256";
/// Longest key name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// A key's index in its [`KeyStore`]: what later phases keep per request.
pub type KeyId = u32;

// === impl key format ===

/// The parts of a presented key: id (as bytes) and secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey {
    pub id: [u8; ID_LEN],
    pub secret: [u8; SECRET_BYTES],
}

/// Parses `cg_<id>_<secret>`; None for anything else (wrong length, upper
/// case, a stray character). Never allocates.
pub fn parse_key(raw: &[u8]) -> Option<PresentedKey> {
    if raw.len() != KEY_LEN || !raw.starts_with(PREFIX.as_bytes()) {
        return None;
    }
    let rest = &raw[PREFIX.len()..];
    let (id, rest) = rest.split_at(ID_LEN);
    if rest[0] != b'_' || !id.iter().all(|&b| hex_val(b).is_some()) {
        return None;
    }
    let mut secret = [0u8; SECRET_BYTES];
    decode_hex(&rest[1..], &mut secret)?;
    let mut id_bytes = [0u8; ID_LEN];
    id_bytes.copy_from_slice(id);
    Some(PresentedKey {
        id: id_bytes,
        secret,
    })
}

/// Lowercase hex only: a key has exactly one spelling.
fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `2 * out.len()` lowercase hex digits.
fn decode_hex(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != 2 * out.len() {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(())
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
}

/// True when `id` is a well-formed key id.
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| hex_val(b).is_some())
}

/// True when `name` is a usable key name: letters, digits, `-_.@:`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'))
}

// === impl hashing ===

/// SHA-256 of salt ‖ secret.
pub fn hash_secret(salt: &[u8; SALT_BYTES], secret: &[u8; SECRET_BYTES]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret);
    h.finalize().into()
}

/// Compares two byte strings in time that depends only on their lengths
/// (which are public: always 32 here). `black_box` keeps the optimiser from
/// turning the fold into an early exit. A dependency (`subtle`) would give
/// the same guarantee for this one loop.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// A stored key hash: `sha256$<salt hex>$<hash hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StoredHash {
    pub salt: [u8; SALT_BYTES],
    pub hash: [u8; 32],
}

impl StoredHash {
    /// Hashes `secret` with `salt`.
    pub fn new(salt: [u8; SALT_BYTES], secret: &[u8; SECRET_BYTES]) -> StoredHash {
        StoredHash {
            salt,
            hash: hash_secret(&salt, secret),
        }
    }

    pub fn parse(s: &str) -> Result<StoredHash, String> {
        let expected = || {
            format!(
                "must be {HASH_SCHEME}$<{} hex digits of salt>$<64 hex digits of hash>, as `coregate keys create` writes it",
                2 * SALT_BYTES
            )
        };
        let mut parts = s.split('$');
        let (Some(scheme), Some(salt_hex), Some(hash_hex), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(expected());
        };
        if scheme != HASH_SCHEME {
            return Err(format!(
                "scheme {scheme:?} is not supported (only {HASH_SCHEME:?}); it {}",
                expected()
            ));
        }
        let mut salt = [0u8; SALT_BYTES];
        let mut hash = [0u8; 32];
        if decode_hex(salt_hex.as_bytes(), &mut salt).is_none()
            || decode_hex(hash_hex.as_bytes(), &mut hash).is_none()
        {
            return Err(expected());
        }
        Ok(StoredHash { salt, hash })
    }

    /// True when `secret` hashes to this, compared in constant time.
    pub fn verify(&self, secret: &[u8; SECRET_BYTES]) -> bool {
        ct_eq(&hash_secret(&self.salt, secret), &self.hash)
    }
}

impl fmt::Display for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(8 + 2 * (SALT_BYTES + 32));
        s.push_str(HASH_SCHEME);
        s.push('$');
        push_hex(&mut s, &self.salt);
        s.push('$');
        push_hex(&mut s, &self.hash);
        f.write_str(&s)
    }
}

impl fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but nothing reads a hash in a debug dump.
        f.write_str("StoredHash(..)")
    }
}

// === impl key store ===

/// One key as the gateway knows it.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The principal: what logs and later phases name the caller by.
    pub name: String,
    pub id: String,
    pub hash: StoredHash,
    pub enabled: bool,
    /// The key's `[[usage_plans]]` entry (see `policy::usage`).
    pub usage_plan: Option<String>,
    pub created: Option<String>,
    /// When the key was revoked (`revoked` in the keys file): refused for
    /// good, whatever `enabled` says; its entry keeps its position.
    pub revoked: Option<String>,
}

impl ApiKey {
    /// Whether a request may present this key.
    pub fn usable(&self) -> bool {
        self.enabled && self.revoked.is_none()
    }
}

/// Every key, indexed by id. Built once at compile time; each shard holds
/// its own clone (a few hundred bytes per key).
#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    keys: Vec<ApiKey>,
    by_id: ahash::HashMap<[u8; ID_LEN], KeyId>,
    /// Each key's name as a shared principal (no allocation per request).
    principals: Vec<super::auth::Principal>,
}

/// Hashed in place of a real key's salt when the id is unknown, so an
/// unknown id costs as much as a wrong secret.
const DUMMY_SALT: [u8; SALT_BYTES] = [0x5a; SALT_BYTES];

impl KeyStore {
    /// Builds a store; `keys` must have unique ids and names (the config
    /// compile checks that and reports duplicates).
    pub fn new(keys: Vec<ApiKey>) -> KeyStore {
        let mut by_id = ahash::HashMap::default();
        for (i, k) in keys.iter().enumerate() {
            let mut id = [0u8; ID_LEN];
            if k.id.len() == ID_LEN {
                id.copy_from_slice(k.id.as_bytes());
                by_id.insert(id, i as KeyId);
            }
        }
        let principals = keys.iter().map(|k| k.name.as_str().into()).collect();
        KeyStore {
            keys,
            by_id,
            principals,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, id: KeyId) -> Option<&ApiKey> {
        self.keys.get(id as usize)
    }

    /// The key's name as the request's principal.
    pub fn principal(&self, id: KeyId) -> Option<super::auth::Principal> {
        self.principals.get(id as usize).cloned()
    }

    /// The principal a key stands for.
    pub fn name(&self, id: KeyId) -> Option<&str> {
        self.get(id).map(|k| k.name.as_str())
    }

    /// The key a header value authenticates, if it is well formed, known,
    /// matches its stored hash and is enabled. The id lookup is not
    /// constant-time (ids are public), but an unknown id is hashed all the
    /// same, so timing does not tell a known id from an unknown one.
    pub fn verify(&self, value: &[u8]) -> Option<KeyId> {
        let presented = parse_key(value)?;
        let found = self.by_id.get(&presented.id).copied();
        let (salt, expected) = match found.and_then(|i| self.keys.get(i as usize)) {
            Some(k) => (k.hash.salt, k.hash.hash),
            None => (DUMMY_SALT, [0u8; 32]),
        };
        let matches = ct_eq(&hash_secret(&salt, &presented.secret), &expected);
        let i = found?;
        (matches && self.keys[i as usize].usable()).then_some(i)
    }

    /// Like [`KeyStore::verify`], for the `x-api-key` header of a request.
    /// Two `x-api-key` headers are refused: which one counts would depend on
    /// who reads them.
    pub fn verify_request(&self, buf: &[u8], head: &RequestHead) -> Option<KeyId> {
        let mut value = None;
        for h in &head.headers {
            if h.name.get(buf).eq_ignore_ascii_case(HEADER.as_bytes()) {
                if value.is_some() {
                    return None;
                }
                value = Some(h.value.get(buf));
            }
        }
        self.verify(value?)
    }
}

// === impl raw config ===

/// Parses a keys file's text, reporting unknown keys as errors.
pub fn parse_keys_file(text: &str) -> Result<RawKeysFile, String> {
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(text);
    let raw: RawKeysFile = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()))
        .map_err(|e| e.to_string().trim().to_string())?;
    if !unknown.is_empty() {
        return Err(format!(
            "unknown key(s) {}; a keys file holds only [[keys]] with name, id, hash, enabled, usage_plan, created, revoked",
            unknown.join(", ")
        ));
    }
    Ok(raw)
}

/// Where `server.api_keys_file` points: relative paths are taken from the
/// directory of the config file (or the working directory when the config
/// did not come from a file).
pub fn resolve_path(file: &str, base_dir: Option<&Path>) -> PathBuf {
    crate::config::resolve_path(file, base_dir)
}

/// Checks `created` loosely: `YYYY-MM-DD`, optionally followed by a time.
fn valid_created(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && (b.len() == 10 || b[10] == b'T' || b[10] == b't' || b[10] == b' ')
}

/// Validates one entry. `key` is its config path (e.g. `api_keys[2]`).
fn compile_key(raw: &RawApiKey, key: &str, errors: &mut Vec<ConfigError>) -> Option<ApiKey> {
    let before = errors.len();
    let who = format!("key {:?}", raw.name);
    if !valid_name(&raw.name) {
        errors.push(ConfigError::new(
            format!("{key}.name"),
            format!(
                "{:?} must be 1 to {MAX_NAME_LEN} letters, digits or '-', '_', '.', '@', ':'",
                raw.name
            ),
        ));
    }
    if !valid_id(&raw.id) {
        errors.push(ConfigError::new(
            format!("{key}.id"),
            format!(
                "{who}: id {:?} must be {ID_LEN} lowercase hex digits",
                raw.id
            ),
        ));
    }
    let hash = match StoredHash::parse(&raw.hash) {
        Ok(h) => Some(h),
        Err(e) => {
            errors.push(ConfigError::new(
                format!("{key}.hash"),
                format!("{who}: {e}"),
            ));
            None
        }
    };
    if let Some(plan) = &raw.usage_plan {
        if !valid_name(plan) {
            errors.push(ConfigError::new(
                format!("{key}.usage_plan"),
                format!("{who}: {plan:?} must be 1 to {MAX_NAME_LEN} letters, digits or '-', '_', '.', '@', ':'"),
            ));
        }
    }
    if let Some(c) = &raw.revoked {
        if !valid_created(c) {
            errors.push(ConfigError::new(
                format!("{key}.revoked"),
                format!("{who}: {c:?} is not an RFC 3339 date (e.g. \"2026-11-24T22:15:00Z\")"),
            ));
        }
    }
    if let Some(c) = &raw.created {
        if !valid_created(c) {
            errors.push(ConfigError::new(
                format!("{key}.created"),
                format!("{who}: {c:?} is not an RFC 3339 date (e.g. \"2026-11-24T22:15:00Z\")"),
            ));
        }
    }
    let hash = hash?;
    (errors.len() == before).then(|| ApiKey {
        name: raw.name.clone(),
        id: raw.id.clone(),
        hash,
        enabled: raw.enabled.unwrap_or(true),
        usage_plan: raw.usage_plan.clone(),
        created: raw.created.clone(),
        revoked: raw.revoked.clone(),
    })
}

/// True when the config names a source of keys (a file, or inline keys).
pub fn configured(raw: &RawConfig) -> bool {
    raw.server.api_keys_file.is_some() || !raw.api_keys.is_empty()
}

/// Reads `server.api_keys_file` (if set) and the inline `[[api_keys]]`, and
/// builds the store. Names and ids must be unique across both.
pub fn compile_store(raw: &RawConfig, errors: &mut Vec<ConfigError>) -> KeyStore {
    let mut entries: Vec<(String, &RawApiKey)> = Vec::new();
    let file_raw;
    if let Some(file) = &raw.server.api_keys_file {
        let path = resolve_path(file, raw.base_dir.as_deref());
        let fkey = "server.api_keys_file";
        match crate::config::read_text(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => errors.push(ConfigError::new(
                fkey,
                format!(
                    "cannot read {} ({e}); create it with `coregate keys create --file {}`; a relative path is taken from the config file's directory",
                    path.display(),
                    path.display()
                ),
            )),
            // There, but not a readable UTF-8 file (a directory, no
            // permission, binary data): creating it is not the fix.
            Err(e) => errors.push(ConfigError::new(
                fkey,
                format!(
                    "cannot read {} ({e}); it must be a readable TOML file of [[keys]] as `coregate keys` writes it",
                    path.display()
                ),
            )),
            Ok(text) => match parse_keys_file(&text) {
                Err(e) => errors.push(ConfigError::new(fkey, format!("{}: {e}", path.display()))),
                Ok(f) => {
                    file_raw = f;
                    for (i, k) in file_raw.keys.iter().enumerate() {
                        entries.push((format!("{fkey}({}).keys[{i}]", path.display()), k));
                    }
                }
            },
        }
    }
    for (i, k) in raw.api_keys.iter().enumerate() {
        entries.push((format!("api_keys[{i}]"), k));
    }
    let mut keys: Vec<ApiKey> = Vec::new();
    for (key, entry) in &entries {
        let Some(k) = compile_key(entry, key, errors) else {
            continue;
        };
        if keys.iter().any(|o| o.name == k.name) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!("key name {:?} is used twice; names must be unique", k.name),
            ));
            continue;
        }
        if keys.iter().any(|o| o.id == k.id) {
            errors.push(ConfigError::new(
                format!("{key}.id"),
                format!(
                    "key {:?}: id {:?} is used twice; ids must be unique",
                    k.name, k.id
                ),
            ));
            continue;
        }
        keys.push(k);
    }
    KeyStore::new(keys)
}

/// The compiled rule of a route that requires a key. Empty today; the usage
/// plans of the traffic-control issue may restrict which keys an API takes.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyRule {}

/// Merges the API's `api_key_required` (the default for its routes) with the
/// route's (which overrides it). A route that requires a key when no keys
/// are configured anywhere is an error: it could never be called.
/// Whether a route requires a key: its own setting, else its API's.
pub fn requires_key(api: Option<bool>, route: Option<bool>) -> bool {
    route.or(api).unwrap_or(false)
}

pub fn compile_rule(
    api: Option<bool>,
    route: Option<bool>,
    keys_configured: bool,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<ApiKeyRule> {
    if !requires_key(api, route) {
        return None;
    }
    if !keys_configured {
        errors.push(ConfigError::new(
            format!("{key}.api_key_required"),
            "this route requires an API key (api_key_required on the route or its API) but no keys are configured: set [server] api_keys_file or add [[api_keys]]",
        ));
    }
    Some(ApiKeyRule {})
}

#[cfg(test)]
mod tests;

pub mod cli;
