//! The compiled plan: everything a shard needs to serve requests, built
//! once from the raw config by [`compile`] (every check, every default, the
//! route table, upstream targets, pre-rendered mock responses) and immutable
//! after. This layer sits above route, policy and integration because it
//! composes their compiled parts; nothing below it imports it.

pub mod admin;
pub mod compile;
mod mapping;
pub mod openapi;
pub mod policy_sets;
pub mod portal;
pub mod shards;
pub mod stages;
pub mod websocket;

use crate::config::{self, ConfigError};
use crate::http::Limits;
use crate::integration::http_proxy::ProxyPlan;
use crate::integration::mock::MockPlan;
use crate::integration::upstream::UpstreamPlan;
use crate::route::RouteTable;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Everything a shard needs, immutable once built. Each shard gets its own
/// clone, so nothing here is shared between cores at run time.
#[derive(Debug, Clone)]
pub struct Plan {
    pub server: ServerPlan,
    pub policies: crate::policy::ServerPolicies,
    /// Per API (config order): what applies to a request of the API before a
    /// route is known.
    pub apis: Vec<ApiPlan>,
    pub limits: Limits,
    pub upstreams: Vec<UpstreamPlan>,
    pub routes: Vec<RoutePlan>,
    pub table: RouteTable,
    /// `[admin]`: the admin listener.
    pub admin: admin::AdminPlan,
    /// Access logs and per-API debug switches.
    pub access_log: crate::accesslog::LogPlan,
    /// Stages' canaries (docs/stages.md); empty without canaries.
    pub stages: stages::StagesPlan,
    /// `[portal]`: the developer portal (docs/portal.md).
    pub portal: portal::PortalPlan,
}

impl Plan {
    /// How many APIs the route table holds, an API with stages counted
    /// once (its stages and canaries are entries of their own).
    pub fn table_api_count(&self) -> usize {
        if self
            .apis
            .iter()
            .all(|a| a.stage.is_none() && a.canary.is_none())
        {
            return self.table.api_count();
        }
        let mut names: Vec<&str> = self.apis.iter().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }
}

#[derive(Debug, Clone)]
pub struct ServerPlan {
    pub listen: Vec<SocketAddr>,
    pub shards: usize,
    /// CPU of each shard (same length as `shards`).
    pub cpus: Vec<usize>,
    /// Whether each shard is pinned to its CPU (`server.pin_shards`);
    /// `cpus` is unused when not.
    pub pin_shards: bool,
    pub backlog: u32,
    pub drain_timeout: Duration,
    pub max_connections_per_shard: usize,
    /// Start even when another process already listens on one of the
    /// listen addresses, and share it (`server.share_listen_addresses`).
    pub share_listen_addresses: bool,
    /// HTTPS listeners, when `[server.tls]` is set.
    pub tls: Option<crate::tls::ServerTlsPlan>,
    /// Each shard's own settings (`[[server.shard]]`), one per shard.
    pub shard: Vec<shards::ShardPlan>,
}

#[derive(Debug, Clone)]
pub struct ApiPlan {
    pub name: String,
    /// Answers preflights to paths that have no OPTIONS route.
    pub cors: Option<crate::policy::cors::Cors>,
    /// Applied to requests no route takes too (404, 405, preflights), so a
    /// refused client cannot map the API's paths.
    pub ip_rules: Option<crate::policy::ip_rules::IpRules>,
    /// Metrics per route, not only per API (`detailed_metrics`).
    pub detailed_metrics: bool,
    /// The stage and deployment this entry serves, for an API with stages
    /// (each stage, and each canary, is an entry of its own).
    pub stage: Option<Box<stages::StageTag>>,
    /// The stage's canary: an index into `Plan::stages.canaries`.
    pub canary: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct RoutePlan {
    pub api: String,
    pub key: String,
    pub integration: Integration,
    pub policies: crate::policy::RoutePolicies,
    /// The stage and deployment the route belongs to, for an API with
    /// stages: its responses name the deployment.
    pub stage: Option<Box<stages::StageTag>>,
}

#[derive(Debug, Clone)]
pub enum Integration {
    Proxy(ProxyPlan),
    Mock(MockPlan),
    /// A WebSocket API's handshake (`GET` at its base path): the API's
    /// whole plan, carried by its `$connect` route.
    WebSocket(Box<crate::integration::websocket::WsApiPlan>),
    /// `@connections` on a WebSocket API's own path: push to, describe or
    /// close a connection of the API, whichever shard holds it.
    WsConnections(Box<crate::integration::websocket::WsConnectionsPlan>),
}

/// Reads, parses and compiles a config file.
pub fn load(path: &Path) -> Result<Plan, Vec<ConfigError>> {
    load_file(path).map(|(_, plan)| plan)
}

/// As [`load`], with the file's text (what a reload keeps to show).
pub fn load_file(path: &Path) -> Result<(String, Plan), Vec<ConfigError>> {
    let text = crate::config::read_text(path).map_err(|e| {
        vec![ConfigError::new(
            "(file)",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    let plan = load_text(&text, path.parent())?;
    Ok((text, plan))
}

/// Parses and compiles config text.
pub fn load_str(text: &str) -> Result<Plan, Vec<ConfigError>> {
    load_text(text, None)
}

/// Parses and compiles config text as if it were a file in `base_dir`
/// (relative paths in it are taken from there).
pub fn load_text_in(text: &str, base_dir: Option<&Path>) -> Result<Plan, Vec<ConfigError>> {
    load_text(text, base_dir)
}

/// Parses and compiles, reporting every problem: values of the wrong type
/// are left out so the rest of the file is still compiled, and compile
/// errors get the line of the key they name.
fn load_text(text: &str, base_dir: Option<&Path>) -> Result<Plan, Vec<ConfigError>> {
    let parsed = config::parse_all(text);
    let mut errors = parsed.errors;
    if let Some(mut raw) = parsed.raw {
        raw.base_dir = base_dir.map(Path::to_path_buf);
        // APIs that name an OpenAPI document get its routes first; errors
        // about them are then told at `apis[N].openapi`, and its warnings
        // are logged (the config is served all the same).
        let mut warnings = Vec::new();
        let docs = openapi::apply(&mut raw, &mut errors, &mut warnings);
        for w in &warnings {
            crate::log!("warn", "config warning: {w}");
        }
        // `[[policies]]` sets are merged into what attaches them first;
        // errors in their settings are then told at the set.
        let mut set_errors = Vec::new();
        let sets = policy_sets::apply(&mut raw, &mut set_errors);
        errors.extend(docs.blame(set_errors));
        match compile::compile(&raw).map_err(|es| docs.blame(sets.blame(es))) {
            Ok(plan) if errors.is_empty() => return Ok(plan),
            Ok(_) => {}
            Err(es) => errors.extend(es.into_iter().filter(|e| {
                // A value left out is compiled as its default: what compile
                // says about that key is not about the file. Nor is what it
                // says about a table whose key was misspelt (the unknown key
                // is reported).
                !parsed.unknown_in.contains(&e.key)
                    && !parsed.left_out.iter().any(|l| {
                        e.key == *l
                            || e.key
                                .strip_prefix(l.as_str())
                                .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
                    })
            })),
        }
    }
    config::locate(text, &mut errors);
    Err(errors)
}

#[cfg(test)]
mod tests;
