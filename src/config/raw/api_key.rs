//! `api_key` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;

/// One `[[keys]]` entry of a keys file, or `[[api_keys]]` in the config.
#[derive(Debug, Clone, Deserialize)]
pub struct RawApiKey {
    /// Unique; the principal later phases and logs see.
    pub name: String,
    /// Unique, 12 lowercase hex digits; the public part of the key.
    pub id: String,
    /// `sha256$<salt hex>$<hash hex>`.
    pub hash: String,
    /// Default: true. A disabled key is refused like an unknown one.
    pub enabled: Option<bool>,
    pub usage_plan: Option<String>,
    /// RFC 3339 date-time the key was created (informational).
    pub created: Option<String>,
    /// RFC 3339 date-time the key was revoked: a tombstone. The entry stays
    /// (its position counts usage), and the key is refused for good.
    pub revoked: Option<String>,
}

/// A keys file: `[[keys]]` entries.
#[derive(Debug, Default, Deserialize)]
pub struct RawKeysFile {
    #[serde(default)]
    pub keys: Vec<RawApiKey>,
}
