//! Throttling: token buckets per route, per API and server-wide, checked on
//! each shard without locks and reconciled across shards through crossbeam
//! channels. (Not implemented yet: configuring it is refused.)

use super::{Decision, RequestView};
use crate::config::ConfigError;
use serde::Deserialize;

/// `throttle = { ... }` on the server, an API or a route.
#[derive(Debug, Clone, Deserialize)]
pub struct RawThrottle {}

/// The buckets that apply to one route, in the order they are checked.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {}

impl RouteLimits {
    pub fn is_empty(&self) -> bool {
        true
    }
}

/// Everything about throttling the shards share, compiled.
#[derive(Debug, Clone, Default)]
pub struct ThrottlePlan {}

/// Collects bucket definitions while routes compile.
#[derive(Default)]
pub struct Builder {}

impl Builder {
    pub fn route(
        &mut self,
        _api_index: usize,
        api: Option<&RawThrottle>,
        _route_id: usize,
        route: Option<&RawThrottle>,
        key: &str,
        errors: &mut Vec<ConfigError>,
    ) -> RouteLimits {
        if api.is_some() || route.is_some() {
            errors.push(ConfigError::new(
                format!("{key}.throttle"),
                "is not supported yet",
            ));
        }
        RouteLimits::default()
    }

    pub fn finish(
        self,
        server: Option<&RawThrottle>,
        errors: &mut Vec<ConfigError>,
    ) -> ThrottlePlan {
        if server.is_some() {
            errors.push(ConfigError::new("server.throttle", "is not supported yet"));
        }
        ThrottlePlan::default()
    }
}

/// A shard's end of the cross-shard reconciliation channels, made by
/// [`links`] before the shards start.
pub struct ShardLink {}

/// One link per shard.
pub fn links(_plan: &ThrottlePlan, shards: usize) -> Vec<ShardLink> {
    (0..shards).map(|_| ShardLink {}).collect()
}

/// A shard's buckets.
pub struct ShardThrottle {}

impl ShardThrottle {
    pub fn new(_plan: &ThrottlePlan, _shard: usize, _link: ShardLink) -> ShardThrottle {
        ShardThrottle {}
    }

    pub fn check(
        &self,
        _limits: &RouteLimits,
        _view: &RequestView<'_>,
        _extra: &mut Vec<u8>,
    ) -> Decision {
        Decision::Continue
    }
}
