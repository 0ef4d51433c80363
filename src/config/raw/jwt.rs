//! `jwt` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[authorizers.jwt]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawJwt {
    /// Exact value of the `iss` claim. Required.
    pub issuer: Option<String>,
    /// Accepted `aud` (or, without `aud`, `client_id`) values. Required.
    pub audience: Option<Vec<String>>,
    /// A JWKS file (relative to the config file's directory).
    pub jwks_file: Option<String>,
    /// A JWKS URL, fetched and refreshed in the background.
    pub jwks_url: Option<String>,
    /// PEM CA bundle trusted for an https:// `jwks_url` (default: the
    /// operating system's roots).
    pub jwks_ca_file: Option<String>,
    /// Default: RS256, ES256, HS256, EdDSA.
    pub algorithms: Option<Vec<String>>,
    pub leeway_s: Option<u64>,
    pub refresh_interval_s: Option<u64>,
    pub unknown_kid_refresh_min_interval_s: Option<u64>,
    pub fetch_timeout_ms: Option<u64>,
    /// Header name → claim name.
    pub claims_to_headers: Option<BTreeMap<String, String>>,
    /// A query parameter that carries the token when the request has no
    /// `Authorization` header (a browser's WebSocket handshake cannot set
    /// one).
    pub token_query: Option<String>,
}
