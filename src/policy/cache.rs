//! The response cache: one LRU per shard within a byte budget, keyed by
//! method, host, path and the configured query parameters and headers.
//! (Not implemented yet: configuring it is refused.)

use crate::config::ConfigError;
use serde::Deserialize;

/// `cache = { ... }` on an API or a route.
#[derive(Debug, Clone, Deserialize)]
pub struct RawCacheRule {}

/// `[server.cache]`: per-shard settings.
#[derive(Debug, Clone, Deserialize)]
pub struct RawCacheSettings {}

#[derive(Debug, Clone)]
pub struct CacheRule {}

#[derive(Debug, Clone, Default)]
pub struct CacheSettings {}

pub fn compile_rule(
    api: Option<&RawCacheRule>,
    route: Option<&RawCacheRule>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<CacheRule> {
    if api.is_some() || route.is_some() {
        errors.push(ConfigError::new(
            format!("{key}.cache"),
            "is not supported yet",
        ));
    }
    None
}

pub fn compile_settings(
    settings: Option<&RawCacheSettings>,
    errors: &mut Vec<ConfigError>,
) -> CacheSettings {
    if settings.is_some() {
        errors.push(ConfigError::new("server.cache", "is not supported yet"));
    }
    CacheSettings::default()
}

/// A shard's cache.
pub struct ShardCache {}

impl ShardCache {
    pub fn new(_settings: &CacheSettings) -> ShardCache {
        ShardCache {}
    }
}
