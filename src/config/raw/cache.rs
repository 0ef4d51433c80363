//! `cache` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;

/// `cache = { ... }` on an API (its stage) or a route. A route's table
/// overrides the API's key by key; keys neither sets take the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawCacheRule {
    /// Default true (a `cache` table turns caching on); a route sets false
    /// to opt out of its API's cache.
    pub enabled: Option<bool>,
    /// Seconds an entry is served. Default 300, allowed 0–3600; 0 turns
    /// caching off for the route.
    pub ttl_seconds: Option<i64>,
    /// Methods whose responses are cached. Default `["GET", "HEAD"]`.
    pub methods: Option<Vec<String>>,
    /// Query parameters that are part of the cache key. Default none.
    pub key_query_parameters: Option<Vec<String>>,
    /// Request headers that are part of the cache key. Default none.
    pub key_headers: Option<Vec<String>>,
    /// Responses whose body is larger are not cached. Default 1 MiB.
    pub max_response_body_bytes: Option<i64>,
    /// Statuses whose responses are cached. Default `[200]`.
    pub cacheable_statuses: Option<Vec<i64>>,
    /// Whether a client's `Cache-Control: max-age=0` bypasses and refreshes
    /// the entry. Default false: the header is ignored.
    pub allow_client_invalidation: Option<bool>,
    /// With `allow_client_invalidation = true`: only requests authenticated
    /// by one of these API keys (names) may invalidate.
    pub invalidation_keys: Option<Vec<String>>,
    /// Store responses even when the backend says `Cache-Control: no-store`
    /// or `private`. Default false: such responses are not stored.
    pub ignore_backend_no_store: Option<bool>,
}

/// `[server.cache]`: per-shard settings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawCacheSettings {
    /// Each shard's byte budget (keys, stored headers and bodies, plus a
    /// fixed overhead per entry). Default 64 MiB.
    pub max_bytes_per_shard: Option<i64>,
}
