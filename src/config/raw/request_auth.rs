//! `request_auth` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[authorizers.request]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawRequestAuthorizer {
    /// `http://upstream-or-host:port/path[?query]`. Required.
    pub url: Option<String>,
    /// `"header:NAME"` / `"query:NAME"`. Each must be present, or 401.
    pub identity_sources: Option<Vec<String>>,
    /// Seconds an answer is cached. Default 300, 0–3600; 0 turns caching off.
    pub ttl_seconds: Option<i64>,
    /// The whole call (connect, send, answer). Default 1000, 1–10000.
    pub timeout_ms: Option<u64>,
    /// Context key → upstream header name.
    pub context_headers: Option<BTreeMap<String, String>>,
    /// Upstream header carrying the `principalId`.
    pub principal_header: Option<String>,
    /// Cached answers per shard. Default 10000.
    pub cache_max_entries: Option<i64>,
    /// Make the route part of the cache key. Default false.
    pub cache_per_route: Option<bool>,
}
