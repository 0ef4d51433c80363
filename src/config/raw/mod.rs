//! Raw configuration: the TOML file exactly as an operator writes it.
//!
//! These structs only describe shape and defaults; nothing here is validated
//! beyond types. The plan compiler (`crate::plan::compile`) turns them into
//! the immutable `Plan` the shards run, and every semantic check lives
//! there. Every default is a
//! `DEFAULT_*` constant so that docs/configuration.md and the code agree.
//!
//! Unknown keys are errors. The structs do not use `deny_unknown_fields`
//! because it stops at the first one; [`super::parse`] wraps the
//! deserializer in serde_ignored instead and reports every unknown key. The
//! integration enum keeps `deny_unknown_fields`: an internally tagged enum is
//! buffered before it is read, so serde_ignored cannot see into it.

pub mod access_log;
pub mod admin;
pub mod api_key;
pub mod auth;
pub mod cache;
pub mod cors;
pub mod ip_rules;
pub mod jwt;
pub mod lifecycle;
pub mod mapping;
pub mod openapi;
pub mod policy_set;
pub mod portal;
pub mod request_auth;
pub mod shard;
pub mod sigv4;
pub mod stages;
pub mod throttle;
pub mod tls;
pub mod usage;
pub mod websocket;

use serde::Deserialize;
use std::collections::BTreeMap;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_BACKLOG: u32 = 1024;
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_SHARD: usize = 16_384;
/// The most shards a gateway runs (`server.shards`, or the length of
/// `server.cpus`): as many CPUs as an affinity mask can name
/// (`CPU_SETSIZE`). Each shard is a thread with its own io_uring rings and
/// locked memory, and state is kept per shard, so a larger count is a typo.
pub const MAX_SHARDS: usize = 1024;
pub const DEFAULT_SHARE_LISTEN_ADDRESSES: bool = false;
pub const DEFAULT_MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Amazon API Gateway's payload limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Bodies (and chunks of chunked bodies) of at least this many bytes go
/// from socket to socket with splice (docs/tuning.md, "Spliced bodies").
pub const DEFAULT_SPLICE_MIN_BYTES: u64 = 64 * 1024;
/// The capacity of each splice pipe.
pub const DEFAULT_SPLICE_PIPE_BYTES: usize = 256 * 1024;
/// The range `server.splice_pipe_bytes` accepts: one page, and Linux's
/// default `/proc/sys/fs/pipe-max-size`.
pub const MIN_SPLICE_PIPE_BYTES: usize = 4096;
pub const MAX_SPLICE_PIPE_BYTES: usize = 1024 * 1024;

pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Amazon API Gateway's default integration timeout.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 29_000;
pub const DEFAULT_POOL_MAX_IDLE: usize = 64;
pub const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_HEALTH_MAX_FAILURES: u32 = 3;
pub const DEFAULT_HEALTH_COOLDOWN_MS: u64 = 10_000;
pub const DEFAULT_MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub apis: Vec<RawApi>,
    /// `[[api_keys]]`: keys defined inline, besides `server.api_keys_file`.
    #[serde(default)]
    pub api_keys: Vec<api_key::RawApiKey>,
    /// `[[usage_plans]]`: per-key throttling and quotas.
    #[serde(default)]
    pub usage_plans: Vec<usage::RawUsagePlan>,
    /// `[[authorizers]]`: named SigV4, JWT and request authorizers.
    #[serde(default)]
    pub authorizers: Vec<auth::RawAuthorizer>,
    /// `[admin]`: the admin listener (metrics, dashboard).
    pub admin: Option<admin::RawAdmin>,
    /// `[[policies]]`: named policy sets that APIs, stages and routes attach.
    #[serde(default)]
    pub policies: Vec<policy_set::RawPolicySet>,
    /// `[portal]`: the developer portal (docs/portal.md).
    pub portal: Option<portal::RawPortal>,
    /// The directory of the config file, set by `plan::load`: relative
    /// paths in the config (`server.api_keys_file`) are taken from it.
    #[serde(skip)]
    pub base_dir: Option<std::path::PathBuf>,
}

/// `[server]`: listeners, shards and connection limits.
#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    /// Addresses to listen on; every shard binds each one with SO_REUSEPORT.
    pub listen: Option<Vec<String>>,
    /// Number of shards (executors). Default: one per available CPU.
    pub shards: Option<usize>,
    /// Explicit CPU for each shard. Default: shard i on CPU i modulo the CPU count.
    pub cpus: Option<Vec<usize>>,
    /// Pin each shard to its CPU (default true); false leaves placement to
    /// the kernel's scheduler.
    pub pin_shards: Option<bool>,
    /// Listen backlog per shard socket.
    pub backlog: Option<u32>,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub drain_timeout_ms: Option<u64>,
    /// Connections one shard holds at once; further ones get a 503 and are closed.
    pub max_connections_per_shard: Option<usize>,
    /// Start even when another process already listens on a listen address,
    /// sharing it through SO_REUSEPORT (a zero-downtime binary upgrade).
    /// Default: false, and such an address is refused as in use.
    pub share_listen_addresses: Option<bool>,
    #[serde(default)]
    pub limits: RawLimits,
    /// Server-wide token bucket.
    pub throttle: Option<throttle::RawThrottle>,
    /// Per-shard response cache settings.
    pub cache: Option<cache::RawCacheSettings>,
    /// A keys file (`[[keys]]` entries, managed by `coregate keys`). A
    /// relative path is taken from the config file's directory.
    pub api_keys_file: Option<String>,
    /// `[server.tls]`: HTTPS listeners (docs/configuration.md).
    pub tls: Option<tls::RawServerTls>,
    /// Where durable state (the usage store) lives. A relative path is
    /// taken from the config file's directory.
    pub data_dir: Option<String>,
    /// How often recorded usage is written to the store.
    pub usage_flush_interval_ms: Option<u64>,
    /// `[server.access_log]`: the access log of requests no API takes, and
    /// of those refused before their head was read.
    pub access_log: Option<access_log::RawAccessLog>,
    /// `[[server.shard]]`: one shard's own settings (docs/tuning.md).
    #[serde(default)]
    pub shard: Vec<shard::RawShard>,
    /// How every shard's connected sockets move their bytes (`"uring"`, the
    /// default, or `"epoll"`), unless its `[[server.shard]]` entry says.
    pub io: Option<String>,
    /// Plain-TCP Content-Length bodies, and the data of chunks, of at
    /// least this many bytes move from socket to socket with splice; 0
    /// turns that off.
    pub splice_min_bytes: Option<u64>,
    /// The capacity of each splice pipe.
    pub splice_pipe_bytes: Option<usize>,
}

/// `[server.limits]`: what a client may send, and how slowly.
#[derive(Debug, Default, Deserialize)]
pub struct RawLimits {
    pub max_request_line_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
}

/// `[[upstreams]]`: a named group of backend targets.
#[derive(Debug, Deserialize)]
pub struct RawUpstream {
    pub name: String,
    pub targets: Vec<RawTarget>,
    pub balance: Option<String>,
    /// Host header sent upstream. Default: the chosen target's address.
    pub host: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_response_header_bytes: Option<usize>,
    #[serde(default)]
    pub pool: RawPool,
    #[serde(default)]
    pub health: RawHealth,
    /// PEM bundle of the CAs an https:// upstream's certificate must chain
    /// to. Default: the system's roots.
    pub tls_ca: Option<String>,
    /// TCP congestion control of new connections to the targets, by the
    /// kernel's name. Default: the host's.
    pub congestion_control: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawTarget {
    pub address: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawPool {
    pub max_idle: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHealth {
    pub max_failures: Option<u32>,
    pub cooldown_ms: Option<u64>,
}

/// `[[apis]]`: a set of routes under an optional host list and base path.
#[derive(Debug, Clone, Deserialize)]
pub struct RawApi {
    pub name: String,
    pub base_path: Option<String>,
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Token bucket for the whole API.
    pub throttle: Option<throttle::RawThrottle>,
    /// Response cache for every route of the API.
    pub cache: Option<cache::RawCacheRule>,
    pub cors: Option<cors::RawCors>,
    pub ip_rules: Option<ip_rules::RawIpRules>,
    /// Default for the API's routes: require an `x-api-key`. Default: false.
    pub api_key_required: Option<bool>,
    /// Default authorizer of the API's routes (a `[[authorizers]]` name).
    pub authorizer: Option<String>,
    /// Metrics per route (label `route`), not only per API. Default: false.
    pub detailed_metrics: Option<bool>,
    /// `[apis.access_log]`: one line per request of this API.
    pub access_log: Option<access_log::RawAccessLog>,
    /// Log each phase's decision for this API's requests at level debug.
    /// Default: false.
    pub debug: Option<bool>,
    /// `[[apis.deployments]]`: named snapshots of the API's routes
    /// (docs/stages.md). An API with deployments serves them through its
    /// stages, and has no `routes` of its own.
    #[serde(default)]
    pub deployments: Vec<stages::RawDeployment>,
    /// `[[apis.stages]]`: where deployments are served.
    #[serde(default)]
    pub stages: Vec<stages::RawStage>,
    /// `"http"` (the default) or `"websocket"` (docs/websocket.md).
    pub kind: Option<String>,
    /// A WebSocket API's route selection expression
    /// (`$request.body.action`, or `${request.body.a}/${request.body.b}`).
    pub route_selection_expression: Option<String>,
    /// `[apis.websocket]`: a WebSocket API's limits.
    pub websocket: Option<websocket::RawWebsocket>,
    /// Parameter mapping for the API's http_proxy routes.
    pub mapping: Option<mapping::RawMapping>,
    /// Deprecated or retired (docs/lifecycle.md).
    pub lifecycle: Option<lifecycle::RawLifecycle>,
    /// `[[policies]]` sets attached, by name; later ones win.
    pub policies: Option<Vec<String>>,
    /// An OpenAPI document whose routes the API serves (docs/openapi.md).
    pub openapi: Option<openapi::RawOpenApi>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawRoute {
    pub key: String,
    pub integration: RawIntegration,
    /// Token bucket for this route.
    pub throttle: Option<throttle::RawThrottle>,
    /// Response cache for this route (overrides the API's).
    pub cache: Option<cache::RawCacheRule>,
    pub ip_rules: Option<ip_rules::RawIpRules>,
    /// Require an `x-api-key` (overrides the API's setting).
    pub api_key_required: Option<bool>,
    /// The route's authorizer (overrides the API's); "none" for none.
    pub authorizer: Option<String>,
    /// Scopes a JWT must grant for this route.
    pub authorization_scopes: Option<Vec<String>>,
    /// A WebSocket route's integration answer is sent back to the client
    /// as a message (a two-way route). Default: false.
    pub route_response: Option<bool>,
    /// Parameter mapping (http_proxy routes), merged over the API's.
    pub mapping: Option<mapping::RawMapping>,
    /// Deprecated or retired; replaces the API's setting.
    pub lifecycle: Option<lifecycle::RawLifecycle>,
    /// `[[policies]]` sets attached, by name; later ones win.
    pub policies: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawIntegration {
    HttpProxy {
        url: String,
    },
    /// A WebSocket route's: each event is POSTed to this URL.
    Http {
        url: String,
        timeout_ms: Option<u64>,
    },
    Mock {
        status: Option<u16>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        body: String,
    },
}

/// The keys the table at `path` takes (`"server.limits"`, `"apis.routes"`,
/// `""` for the top level; array indices left out), read from the structs
/// themselves, for did-you-mean on unknown keys. None for a table not listed.
pub fn known_keys(path: &str) -> Option<&'static [&'static str]> {
    Some(match path {
        "" => fields_of::<RawConfig>(),
        "server" => fields_of::<RawServer>(),
        "server.limits" => fields_of::<RawLimits>(),
        "server.throttle"
        | "apis.throttle"
        | "apis.routes.throttle"
        | "apis.stages.throttle"
        | "apis.deployments.routes.throttle" => fields_of::<throttle::RawThrottle>(),
        "server.throttle.per_client_ip"
        | "usage_plans.throttle"
        | "usage_plans.routes.throttle" => fields_of::<throttle::RawRate>(),
        "server.cache" => fields_of::<cache::RawCacheSettings>(),
        "apis.cache"
        | "apis.routes.cache"
        | "apis.stages.cache"
        | "apis.deployments.routes.cache" => fields_of::<cache::RawCacheRule>(),
        "server.tls" => fields_of::<tls::RawServerTls>(),
        "server.tls.certificates" => fields_of::<tls::RawCertificate>(),
        "upstreams" => fields_of::<RawUpstream>(),
        "upstreams.targets" => fields_of::<RawTarget>(),
        "upstreams.pool" => fields_of::<RawPool>(),
        "upstreams.health" => fields_of::<RawHealth>(),
        "apis" => fields_of::<RawApi>(),
        "apis.routes" | "apis.deployments.routes" => fields_of::<RawRoute>(),
        "apis.cors" | "apis.deployments.cors" => fields_of::<cors::RawCors>(),
        "apis.ip_rules"
        | "apis.routes.ip_rules"
        | "apis.deployments.ip_rules"
        | "apis.deployments.routes.ip_rules" => fields_of::<ip_rules::RawIpRules>(),
        "apis.deployments" => fields_of::<stages::RawDeployment>(),
        "apis.stages" => fields_of::<stages::RawStage>(),
        "apis.stages.canary" => fields_of::<stages::RawCanary>(),
        "apis.stages.canary.sticky" => fields_of::<stages::RawSticky>(),
        "apis.websocket" => fields_of::<websocket::RawWebsocket>(),
        "api_keys" => fields_of::<api_key::RawApiKey>(),
        "usage_plans" => fields_of::<usage::RawUsagePlan>(),
        "usage_plans.quota" => fields_of::<usage::RawQuota>(),
        "usage_plans.routes" => fields_of::<usage::RawPlanRoute>(),
        "authorizers" => fields_of::<auth::RawAuthorizer>(),
        "authorizers.jwt" => fields_of::<jwt::RawJwt>(),
        "authorizers.sigv4" => fields_of::<sigv4::RawSigv4>(),
        "authorizers.sigv4.credentials" => fields_of::<sigv4::RawCredential>(),
        "authorizers.request" => fields_of::<request_auth::RawRequestAuthorizer>(),
        "admin" => fields_of::<admin::RawAdmin>(),
        "admin.tls" => fields_of::<admin::RawAdminTls>(),
        "apis.mapping" | "apis.routes.mapping" | "policies.mapping" => {
            fields_of::<mapping::RawMapping>()
        }
        "apis.lifecycle"
        | "apis.routes.lifecycle"
        | "apis.deployments.lifecycle"
        | "apis.deployments.routes.lifecycle" => fields_of::<lifecycle::RawLifecycle>(),
        "policies" => fields_of::<policy_set::RawPolicySet>(),
        "policies.throttle" => fields_of::<throttle::RawThrottle>(),
        "policies.throttle.per_client_ip" => fields_of::<throttle::RawRate>(),
        "policies.cache" => fields_of::<cache::RawCacheRule>(),
        "policies.cors" => fields_of::<cors::RawCors>(),
        "policies.ip_rules" => fields_of::<ip_rules::RawIpRules>(),
        "portal" => fields_of::<portal::RawPortal>(),
        "portal.signup" => fields_of::<portal::RawSignup>(),
        "server.shard" => fields_of::<shard::RawShard>(),
        _ => return None,
    })
}

/// The field names a derived `Deserialize` struct asks for: a deserializer
/// that records them from `deserialize_struct` and reads nothing.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}
