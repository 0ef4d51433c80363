//! `coregate keys create|list|revoke`: edits a keys file off the request
//! path. The file is edited as a TOML document (toml_edit), so comments and
//! the other entries stay as they were, and replaced atomically (a temp file
//! in the same directory, fsync, rename), so a gateway starting meanwhile
//! reads the old file or the new one, never half of one.

use super::{
    parse_keys_file, push_hex, ApiKey, StoredHash, ID_LEN, PREFIX, SALT_BYTES, SECRET_BYTES,
};
use crate::config::{write_atomic, ConfigError};
use std::io::Read;
use std::path::Path;

/// A key just made: the full key (shown once) and what is stored.
pub struct NewKey {
    pub full: String,
    pub id: String,
    pub hash: StoredHash,
}

/// Makes a key from 6 + 32 + 16 random bytes (id, secret, salt).
pub fn make_key(random: &[u8; ID_LEN / 2 + SECRET_BYTES + SALT_BYTES]) -> NewKey {
    let (id_bytes, rest) = random.split_at(ID_LEN / 2);
    let (secret_bytes, salt_bytes) = rest.split_at(SECRET_BYTES);
    let mut secret = [0u8; SECRET_BYTES];
    secret.copy_from_slice(secret_bytes);
    let mut salt = [0u8; SALT_BYTES];
    salt.copy_from_slice(salt_bytes);
    let mut id = String::with_capacity(ID_LEN);
    push_hex(&mut id, id_bytes);
    let mut full = String::with_capacity(super::KEY_LEN);
    full.push_str(PREFIX);
    full.push_str(&id);
    full.push('_');
    push_hex(&mut full, &secret);
    NewKey {
        full,
        id,
        hash: StoredHash::new(salt, &secret),
    }
}

/// Random bytes from the kernel's CSPRNG.
fn random_bytes(out: &mut [u8]) -> Result<(), String> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))
}

/// Now as RFC 3339 UTC, to the second.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date by
/// Howard Hinnant's algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Reads a keys file as text; a missing file is empty when `missing_ok`.
fn read(path: &Path, missing_ok: bool) -> Result<String, String> {
    match crate::config::read_text(path) {
        Ok(t) => Ok(t),
        Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Parses and validates a keys file the way the gateway will, so a command
/// never builds on (or produces) a file `coregate check` would refuse.
fn validate(path: &Path, text: &str) -> Result<Vec<ApiKey>, String> {
    let raw = parse_keys_file(text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, k) in raw.keys.iter().enumerate() {
        let key = format!("keys[{i}]");
        if let Some(k) = super::compile_key(k, &key, &mut errors) {
            if keys.iter().any(|o| o.name == k.name || o.id == k.id) {
                errors.push(ConfigError::new(
                    key,
                    format!("key {:?}: name or id is used twice", k.name),
                ));
            }
            keys.push(k);
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        Err(format!("{}: {}", path.display(), lines.join("; ")))
    }
}

fn parse_doc(path: &Path, text: &str) -> Result<toml_edit::DocumentMut, String> {
    text.parse::<toml_edit::DocumentMut>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

const NEW_FILE_HEADER: &str = "# coregate API keys: managed by `coregate keys create|list|revoke`.
# Only salted SHA-256 hashes are stored here; a key itself is shown once,
# when it is created. See docs/api-keys.md.
";

/// Appends a new key named `name` to `path` (created if missing) and returns
/// it; the caller shows `full` once.
pub fn create(path: &Path, name: &str, usage_plan: Option<&str>) -> Result<NewKey, String> {
    if !super::valid_name(name) {
        return Err(format!(
            "{name:?} is not a valid key name (1 to {} letters, digits or '-', '_', '.', '@', ':')",
            super::MAX_NAME_LEN
        ));
    }
    if let Some(p) = usage_plan {
        if !super::valid_name(p) {
            return Err(format!("{p:?} is not a valid usage plan name"));
        }
    }
    let text = read(path, true)?;
    let existing = validate(path, &text)?;
    if existing.iter().any(|k| k.name == name) {
        return Err(format!(
            "{}: a key named {name:?} already exists",
            path.display()
        ));
    }
    let mut new = None;
    for _ in 0..8 {
        let mut random = [0u8; ID_LEN / 2 + SECRET_BYTES + SALT_BYTES];
        random_bytes(&mut random)?;
        let k = make_key(&random);
        if !existing.iter().any(|e| e.id == k.id) {
            new = Some(k);
            break;
        }
    }
    let new = new.ok_or("could not draw an unused key id")?;
    let new_file = text.trim().is_empty();
    let mut doc = parse_doc(path, &text)?;
    let keys = doc
        .entry("keys")
        .or_insert_with(|| toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
    let Some(keys) = keys.as_array_of_tables_mut() else {
        return Err(format!(
            "{}: `keys` is not an array of [[keys]] tables",
            path.display()
        ));
    };
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(name);
    t["id"] = toml_edit::value(new.id.as_str());
    t["hash"] = toml_edit::value(new.hash.to_string());
    t["enabled"] = toml_edit::value(true);
    if let Some(p) = usage_plan {
        t["usage_plan"] = toml_edit::value(p);
    }
    t["created"] = toml_edit::value(now_rfc3339());
    keys.push(t);
    let out = if new_file {
        format!("{NEW_FILE_HEADER}\n{doc}")
    } else {
        doc.to_string()
    };
    // Never write what the gateway would refuse.
    validate(path, &out)?;
    write_atomic(path, &out)?;
    Ok(new)
}

/// The keys of `path`, without their hashes.
pub fn list(path: &Path) -> Result<Vec<ApiKey>, String> {
    let text = read(path, false)?;
    validate(path, &text)
}

/// Revokes the key named `name`: a tombstone. The entry stays where it is
/// (usage is counted by a key's position, so the other keys keep theirs
/// and its own history stays readable), gets `revoked = NOW` and
/// `enabled = false`, and is refused for good: it cannot be enabled
/// again. Revoking a revoked key changes nothing (its first revocation
/// time stays).
pub fn revoke(path: &Path, name: &str) -> Result<(), String> {
    let now = now_rfc3339();
    edit_key(path, name, |tables| {
        let mut found = false;
        for t in tables.iter_mut() {
            if t.get("name").and_then(|v| v.as_str()) == Some(name) {
                found = true;
                if t.get("revoked").is_none() {
                    t["enabled"] = toml_edit::value(false);
                    t["revoked"] = toml_edit::value(now.as_str());
                }
            }
        }
        found
    })
}

/// Sets `enabled` on the key named `name`; a revoked key cannot be
/// enabled again.
pub fn set_enabled(path: &Path, name: &str, enabled: bool) -> Result<(), String> {
    if enabled {
        let text = read(path, false)?;
        if let Some(k) = validate(path, &text)?.iter().find(|k| k.name == name) {
            if let Some(when) = &k.revoked {
                return Err(format!(
                    "{}: key {name:?} was revoked ({when}); a revoked key cannot be enabled again: create a new key",
                    path.display()
                ));
            }
        }
    }
    edit_key(path, name, |tables| {
        let mut found = false;
        for t in tables.iter_mut() {
            if t.get("name").and_then(|v| v.as_str()) == Some(name) {
                t["enabled"] = toml_edit::value(enabled);
                found = true;
            }
        }
        found
    })
}

/// Applies `edit` to the `[[keys]]` tables of `path`, which must hold a key
/// named `name`; `edit` says whether it found the key's table. The result
/// is validated before it is written.
fn edit_key(
    path: &Path,
    name: &str,
    edit: impl FnOnce(&mut toml_edit::ArrayOfTables) -> bool,
) -> Result<(), String> {
    let text = read(path, false)?;
    let keys = validate(path, &text)?;
    if !keys.iter().any(|k| k.name == name) {
        return Err(format!("{}: no key named {name:?}", path.display()));
    }
    let mut doc = parse_doc(path, &text)?;
    let tables = doc
        .get_mut("keys")
        .and_then(|k| k.as_array_of_tables_mut())
        .ok_or_else(|| format!("{}: no [[keys]] tables", path.display()))?;
    if !edit(tables) {
        // Validation saw the key, so it is written in another form (e.g. an
        // inline array of tables): refuse rather than guess.
        return Err(format!(
            "{}: key {name:?} is not a [[keys]] table this command can edit",
            path.display()
        ));
    }
    let out = doc.to_string();
    validate(path, &out)?;
    write_atomic(path, &out)
}
