//! Compiling raw config into the [`Plan`]: every check, every default, every
//! derived structure (route tables, upstream targets, pre-rendered mock
//! responses) is made here, once, before any shard starts.

use super::*;
use crate::config::raw::*;
use crate::config::ConfigError;
use crate::http::encode::{push_status_line, push_u64};
use crate::http::Limits;
use crate::integration::http_proxy::{PathPart, ProxyPlan};
use crate::integration::mock::MockPlan;
use crate::integration::upstream::{Balance, TargetPlan, UpstreamPlan};
use crate::route::{ApiSpec, RouteId, RouteKey, RouteTable};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The [`crate::policy::cache::CacheRule::scope`] of a route: a digest of
/// its API's name, its route key, its integration (with its upstream's
/// name, targets and TLS) and its cache rule, as compiled. The digest is
/// SipHash with fixed keys, the same in every shard and generation.
fn cache_scope(
    api: &str,
    route_key: &str,
    integration: &Integration,
    upstreams: &[UpstreamPlan],
    rule: &crate::policy::cache::CacheRule,
) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    api.hash(&mut h);
    route_key.hash(&mut h);
    format!("{integration:?}").hash(&mut h);
    if let Integration::Proxy(p) = integration {
        if let Some(u) = upstreams.get(p.upstream) {
            u.name.hash(&mut h);
            for t in &u.targets {
                t.addr.hash(&mut h);
            }
            u.tls.is_some().hash(&mut h);
        }
    }
    format!("{rule:?}").hash(&mut h);
    h.finish()
}

/// `ms` as a Duration, rejecting 0 where 0 makes no sense.
fn duration(
    errors: &mut Vec<ConfigError>,
    key: &str,
    value: Option<u64>,
    default: u64,
) -> Duration {
    let ms = value.unwrap_or(default);
    if ms == 0 {
        errors.push(ConfigError::new(key, "must be at least 1 (milliseconds)"));
    }
    Duration::from_millis(ms.max(1))
}

fn positive(
    errors: &mut Vec<ConfigError>,
    key: &str,
    value: Option<usize>,
    default: usize,
) -> usize {
    let v = value.unwrap_or(default);
    if v == 0 {
        errors.push(ConfigError::new(key, "must be at least 1"));
    }
    v.max(1)
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    match addr.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{addr:?} resolves to no address")),
        Err(e) => Err(format!("{addr:?} is not a host:port address ({e})")),
    }
}

/// Validates and compiles a raw config. Returns every error found.
pub fn compile(raw: &RawConfig) -> Result<Plan, Vec<ConfigError>> {
    if !super::stages::used(raw) {
        return compile_apis(raw, &raw.apis, None);
    }
    // One routed set per stage and canary (plan/stages.rs), compiled like
    // APIs; errors are given back under the keys as written.
    let x = super::stages::expand(raw);
    let mut compiled = compile_apis(raw, &x.apis, Some(&x));
    if let Ok(plan) = &mut compiled {
        // The buckets' keys (for logs) as written too.
        for d in &mut plan.policies.throttle.defs {
            d.key = x.key_as_written(&d.key);
        }
    }
    x.finish(compiled)
}

/// Compiles `raw` with `apis` in place of its own: the config's, or their
/// expansion into stages.
fn compile_apis(
    raw: &RawConfig,
    apis: &[RawApi],
    staged: Option<&super::stages::Expanded>,
) -> Result<Plan, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut server = compile_server(&raw.server, &mut errors);
    if let Some(tls) = &raw.server.tls {
        server.tls =
            crate::tls::compile_server(tls, raw.base_dir.as_deref(), &server.listen, &mut errors);
    }
    super::shards::compile(&raw.server, &mut server, &allowed_cpus(), &mut errors);
    let mut limits = compile_limits(&raw.server.limits, &mut errors);
    limits.splice_min_bytes = raw
        .server
        .splice_min_bytes
        .unwrap_or(DEFAULT_SPLICE_MIN_BYTES);
    limits.splice_pipe_bytes = raw
        .server
        .splice_pipe_bytes
        .unwrap_or(DEFAULT_SPLICE_PIPE_BYTES);
    if !(MIN_SPLICE_PIPE_BYTES..=MAX_SPLICE_PIPE_BYTES).contains(&limits.splice_pipe_bytes) {
        errors.push(ConfigError::new(
            "server.splice_pipe_bytes",
            format!(
                "must be between {MIN_SPLICE_PIPE_BYTES} and {MAX_SPLICE_PIPE_BYTES} (Linux's default pipe-max-size)"
            ),
        ));
    }
    let traffic: Vec<SocketAddr> = server
        .listen
        .iter()
        .chain(server.tls.iter().flat_map(|t| &t.listen))
        .copied()
        .collect();
    let admin = super::admin::compile(
        raw.admin.as_ref(),
        raw.base_dir.as_deref(),
        &traffic,
        &mut errors,
    );
    let portal_taken: Vec<SocketAddr> = traffic.iter().chain(&admin.listen).copied().collect();
    let portal = super::portal::compile(raw, &portal_taken, &mut errors);

    let mut upstreams = Vec::new();
    // Declared upstreams with errors of their own: routes naming them are not
    // reported again.
    let mut failed_upstreams: Vec<&str> = Vec::new();
    for (i, u) in raw.upstreams.iter().enumerate() {
        if let Some(mut up) = compile_upstream(u, &format!("upstreams[{i}]"), &mut errors) {
            up.tls_ca = crate::tls::compile_upstream_ca(
                u.tls_ca.as_deref(),
                raw.base_dir.as_deref(),
                &format!("upstreams[{i}]"),
                &mut errors,
            );
            if upstreams.iter().any(|x: &UpstreamPlan| x.name == up.name) {
                errors.push(ConfigError::new(
                    format!("upstreams[{i}].name"),
                    format!("upstream {:?} is defined twice", up.name),
                ));
            }
            upstreams.push(up);
        } else {
            failed_upstreams.push(u.name.as_str());
        }
    }

    let mut routes = Vec::new();
    let mut upstream_tls = crate::tls::UpstreamTlsBuilder::default();
    let mut policy_builder = crate::policy::PolicyBuilder::new(raw, &mut errors);
    policy_builder.api_keys_configured = crate::policy::api_key::configured(raw);
    let api_keys = crate::policy::api_key::compile_store(raw, &mut errors);
    policy_builder.key_names = (0..api_keys.len() as u32)
        .filter_map(|i| api_keys.name(i).map(str::to_string))
        .collect();
    policy_builder.authorizers = crate::policy::auth::compile_authorizers(
        &raw.authorizers,
        raw.base_dir.as_deref(),
        &mut errors,
    );
    // A request authorizer's URL names its endpoint the way an integration
    // URL does (a declared upstream or a host:port), so the call uses the
    // upstream machinery: pools, connect timeout, balancing, health.
    bind_endpoints(
        &mut policy_builder.authorizers,
        &mut |url, key, errors| match compile_proxy(
            url,
            &RouteKey::Default,
            key,
            &mut upstreams,
            &failed_upstreams,
            errors,
        ) {
            Some(Integration::Proxy(p)) => {
                // https:// authorizers get a TLS upstream like integrations.
                upstream_tls.reach(
                    reached(&mut upstreams[p.upstream]),
                    p.upstream,
                    url.starts_with("https://"),
                    url,
                    key,
                    errors,
                );
                Some(p)
            }
            _ => None,
        },
        &mut errors,
    );
    let mut api_plans = Vec::new();
    let mut specs = Vec::new();
    // (canary number, API index, its routes) of stages' canaries.
    let mut canary_specs = Vec::new();
    // Each route's API, by index.
    let mut route_api = Vec::new();
    let mut api_names = std::collections::BTreeSet::new();
    for (ai, api) in apis.iter().enumerate() {
        let akey = format!("apis[{ai}]");
        let variant = staged.and_then(|x| x.variants.get(ai));
        let first = variant.is_none_or(|v| v.first);
        if api.name.is_empty() {
            if first {
                errors.push(ConfigError::new(
                    format!("{akey}.name"),
                    "must not be empty",
                ));
            }
        } else if first && !api_names.insert(api.name.as_str()) {
            errors.push(ConfigError::new(
                format!("{akey}.name"),
                format!("api {:?} is defined twice", api.name),
            ));
        }
        let base_path = match compile_base_path(api.base_path.as_deref()) {
            Ok(b) => b,
            Err(e) => {
                errors.push(ConfigError::new(format!("{akey}.base_path"), e));
                "/".to_string()
            }
        };
        if let Some(hosts) = &api.hosts {
            if hosts.is_empty() {
                errors.push(ConfigError::new(
                    format!("{akey}.hosts"),
                    "must list at least one host, or be left out to match any host",
                ));
            }
            for (hi, h) in hosts.iter().enumerate() {
                let body = h.strip_prefix("*.").unwrap_or(h);
                if body.is_empty()
                    || !body
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
                {
                    errors.push(ConfigError::new(
                        format!("{akey}.hosts[{hi}]"),
                        format!("{h:?} is not a host name (letters, digits, '.', '-', '_', optionally starting with \"*.\"); ports are not part of it"),
                    ));
                }
            }
        }
        // A stage's deployment without routes is reported by the
        // expansion, and a stub has none on purpose.
        if api.routes.is_empty() && variant.is_none_or(|v| v.kind == super::stages::Kind::Plain) {
            errors.push(ConfigError::new(
                format!("{akey}.routes"),
                "an api needs at least one [[apis.routes]]",
            ));
        }
        let api_cors = crate::policy::cors::compile(api.cors.as_ref(), &akey, &mut errors);
        // Errors in the API's ip_rules are reported by the routes' compile.
        let mut reported_elsewhere = Vec::new();
        api_plans.push(ApiPlan {
            name: api.name.clone(),
            cors: api_cors.clone(),
            ip_rules: crate::policy::ip_rules::compile_api(
                api.ip_rules.as_ref(),
                &akey,
                &mut reported_elsewhere,
            ),
            detailed_metrics: api.detailed_metrics.unwrap_or(false),
            stage: variant.and_then(|v| v.tag.clone()).map(Box::new),
            canary: match variant.map(|v| v.kind) {
                Some(super::stages::Kind::Stage(c)) => c,
                _ => None,
            },
        });
        let canary_no = match variant.map(|v| v.kind) {
            Some(super::stages::Kind::Canary(c)) => Some(c),
            _ => None,
        };
        let mut spec_routes = Vec::new();
        // A WebSocket API's routes are its handshake's, compiled below.
        let websocket = super::websocket::kind(api, &akey, &mut errors);
        let ws_relay = super::websocket::relay_limits(api, &akey, websocket, &mut errors);
        let api_mapping = crate::integration::mapping::parse(
            api.mapping.as_ref(),
            None,
            &format!("{akey}.mapping"),
            &mut errors,
        );
        for (ri, r) in api.routes.iter().enumerate().filter(|_| !websocket) {
            let rkey = format!("{akey}.routes[{ri}]");
            let key = match RouteKey::parse(&r.key) {
                Ok(k) => Some(k),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{rkey}.key"), e));
                    None
                }
            };
            let route_mapping = super::mapping::route(r, key.as_ref(), &rkey, &mut errors);
            let integration = match &r.integration {
                RawIntegration::Mock {
                    status,
                    headers,
                    body,
                } => compile_mock(
                    status.unwrap_or(200),
                    headers,
                    body,
                    &format!("{rkey}.integration"),
                    &mut errors,
                ),
                // Reported by `websocket::kind`.
                RawIntegration::Http { .. } => None,
                RawIntegration::HttpProxy { url } => {
                    let ukey = format!("{rkey}.integration.url");
                    // With a bad key, the URL is still checked, taking the
                    // parameters it names as the key's.
                    let lenient;
                    let for_url = match &key {
                        Some(k) => k,
                        None => {
                            lenient = key_naming_params_of(url);
                            &lenient
                        }
                    };
                    let i = compile_proxy(
                        url,
                        for_url,
                        &ukey,
                        &mut upstreams,
                        &failed_upstreams,
                        &mut errors,
                    );
                    if let Some(Integration::Proxy(p)) = &i {
                        let https = url.starts_with("https://");
                        upstream_tls.reach(
                            reached(&mut upstreams[p.upstream]),
                            p.upstream,
                            https,
                            url,
                            &ukey,
                            &mut errors,
                        );
                    }
                    i
                }
            };
            let id = routes.len() as RouteId;
            let api_ctx = crate::policy::ApiContext {
                // A canary shares its stage's API-level buckets.
                index: variant.map_or(ai, |v| v.bucket_api),
                raw: api,
                key: &akey,
                cors: api_cors.clone(),
            };
            // A bad key or integration does not hide the route's policy
            // errors: the policies are compiled either way.
            let mut policies = policy_builder.route(&api_ctx, id as usize, r, &rkey, &mut errors);
            route_api.push(ai);
            let stage = variant.and_then(|v| v.tag.clone()).map(Box::new);
            if let (Some(rule), Some(tag)) = (&mut policies.auth, &stage) {
                // Each stage (and its canary) has routes of its own for a
                // request authorizer's cache_per_route.
                let canary = if tag.canary { "\ncanary" } else { "" };
                rule.route = format!("{}\n{}{canary}", rule.route, tag.stage).into();
            }
            let (Some(key), Some(mut integration)) = (key, integration) else {
                // Keeps later route ids in line; a plan with errors is not used.
                routes.push(RoutePlan {
                    api: api.name.clone(),
                    key: r.key.clone(),
                    integration: Integration::Mock(MockPlan {
                        status: 500,
                        head: Vec::new(),
                        body: Vec::new(),
                    }),
                    policies,
                    stage,
                });
                continue;
            };
            if let (Some(_), Integration::Proxy(p)) = (&policies.api_key, &mut integration) {
                // The key authenticates to the gateway; the backend gets no
                // copy of the secret (docs/api-keys.md).
                p.drop_api_key = true;
            }
            if let (Some(rule), Integration::Proxy(p)) = (&policies.auth, &mut integration) {
                p.strip_headers =
                    crate::policy::auth::upstream_header_names(rule, &policy_builder.authorizers);
            }
            if let Integration::Proxy(p) = &mut integration {
                p.mapping = crate::integration::mapping::build(&api_mapping, &route_mapping);
                p.ws_limits = ws_relay;
                // The JWT claims the mapping reads are kept by the
                // authorizer for it; none otherwise.
                if let (Some(rule), Some(req)) = (
                    &mut policies.auth,
                    p.mapping.as_ref().and_then(|m| m.request.as_ref()),
                ) {
                    rule.claims = req.claims.clone();
                }
            }
            if let Some(rule) = &mut policies.cache {
                // A stage's canary shares the stage's paths: its entries
                // are kept apart from the stage's.
                let owner = match canary_no {
                    Some(_) => std::borrow::Cow::Owned(format!("{}\ncanary", api.name)),
                    None => std::borrow::Cow::Borrowed(api.name.as_str()),
                };
                rule.scope = cache_scope(&owner, &r.key, &integration, &upstreams, rule);
            }
            routes.push(RoutePlan {
                api: api.name.clone(),
                key: r.key.clone(),
                integration,
                policies,
                stage,
            });
            spec_routes.push((key, id, r.key.as_str()));
        }
        if websocket {
            let id = routes.len() as RouteId;
            let stand_in;
            let (connect, rkey) = match super::websocket::connect_index(api) {
                Some(i) => (&api.routes[i], format!("{akey}.routes[{i}]")),
                None => {
                    stand_in = super::websocket::connect_stand_in();
                    (&stand_in, akey.clone())
                }
            };
            let api_ctx = crate::policy::ApiContext {
                index: ai,
                raw: api,
                key: &akey,
                cors: api_cors.clone(),
            };
            let policies = policy_builder.route(&api_ctx, id as usize, connect, &rkey, &mut errors);
            let ws = super::websocket::compile(
                api,
                &akey,
                &mut |url, key, errors| match compile_proxy(
                    url,
                    &RouteKey::Default,
                    key,
                    &mut upstreams,
                    &failed_upstreams,
                    errors,
                ) {
                    Some(Integration::Proxy(p)) => {
                        upstream_tls.reach(
                            reached(&mut upstreams[p.upstream]),
                            p.upstream,
                            url.starts_with("https://"),
                            url,
                            key,
                            errors,
                        );
                        Some((p.upstream, request_target(&p)))
                    }
                    _ => None,
                },
                &mut errors,
            );
            routes.push(RoutePlan {
                api: api.name.clone(),
                key: "$connect".to_string(),
                integration: match ws {
                    Some(w) => Integration::WebSocket(Box::new(w)),
                    // A plan with errors is not used.
                    None => Integration::Mock(MockPlan {
                        status: 500,
                        head: Vec::new(),
                        body: Vec::new(),
                    }),
                },
                policies,
                stage: None,
            });
            route_api.push(ai);
            if let Ok(k) = RouteKey::parse("GET /") {
                spec_routes.push((k, id, "$connect"));
            }
            // `@connections` on the API's own path, where the operator
            // names the SigV4 credentials that may use it.
            let max_message = match &routes[id as usize].integration {
                Integration::WebSocket(w) => Some(w.limits.max_message),
                _ => None,
            };
            if let (Some(authorizer), Some(max_message)) = (
                super::websocket::connections_authorizer(
                    api,
                    &akey,
                    &policy_builder.authorizers,
                    &mut errors,
                ),
                max_message,
            ) {
                let (bare, stand_in) = super::websocket::connections_policies(api, authorizer);
                let akey_ws = format!("{akey}.websocket.connections_authorizer");
                for key in super::websocket::CONNECTIONS_ROUTES {
                    let id = routes.len() as RouteId;
                    let api_ctx = crate::policy::ApiContext {
                        index: ai,
                        raw: &bare,
                        key: &akey,
                        cors: None,
                    };
                    let policies = policy_builder.route(
                        &api_ctx,
                        id as usize,
                        &stand_in,
                        &akey_ws,
                        &mut errors,
                    );
                    routes.push(RoutePlan {
                        api: api.name.clone(),
                        key: key.to_string(),
                        integration: Integration::WsConnections(Box::new(
                            crate::integration::websocket::WsConnectionsPlan {
                                api: api.name.clone(),
                                max_message,
                            },
                        )),
                        policies,
                        stage: None,
                    });
                    route_api.push(ai);
                    if let Ok(k) = RouteKey::parse(key) {
                        spec_routes.push((k, id, key));
                    }
                }
            }
        }
        let spec = ApiSpec {
            name: &api.name,
            hosts: api.hosts.clone(),
            base_path,
            routes: spec_routes,
        };
        match canary_no {
            // A canary shares its stage's path: it has a table of its own.
            Some(c) => canary_specs.push((c, ai, spec)),
            None => specs.push((ai, spec)),
        }
    }
    if raw.apis.is_empty() {
        errors.push(ConfigError::new(
            "apis",
            "no [[apis]] defined: the gateway would answer 404 to everything",
        ));
    }
    let policies = policy_builder.finish(&raw.server, api_keys, &mut errors);
    let mut access_log = crate::accesslog::compile(raw, apis, &mut errors);
    access_log.bind_routes(route_api.into_iter());
    let table = match RouteTable::build_indexed(&specs) {
        Ok(t) => t,
        Err(es) => {
            errors.extend(es.into_iter().map(|e| ConfigError::new("apis", e)));
            RouteTable::default()
        }
    };
    let mut stages = super::stages::StagesPlan::default();
    if let Some(x) = staged {
        canary_specs.sort_by_key(|(c, _, _)| *c);
        for (c, ai, spec) in canary_specs {
            let Some(split) = x.canaries.get(c as usize) else {
                continue;
            };
            let table = match RouteTable::build_indexed(&[(ai, spec)]) {
                Ok(t) => t,
                Err(es) => {
                    errors.extend(es.into_iter().map(|e| ConfigError::new("apis", e)));
                    RouteTable::default()
                }
            };
            stages.canaries.push(super::stages::CanaryPlan {
                table,
                threshold: split.threshold,
                sticky: split.sticky.clone(),
            });
        }
    }
    unpace_loopback_upstreams(&mut upstreams);
    if errors.is_empty() {
        Ok(Plan {
            server,
            policies,
            apis: api_plans,
            limits,
            upstreams,
            routes,
            table,
            admin,
            access_log,
            stages,
            portal,
        })
    } else {
        Err(errors)
    }
}

fn compile_server(s: &RawServer, errors: &mut Vec<ConfigError>) -> ServerPlan {
    let listen_raw = s
        .listen
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
    if listen_raw.is_empty() && s.tls.is_none() {
        errors.push(ConfigError::new(
            "server.listen",
            "must name at least one address",
        ));
    }
    let mut listen = Vec::new();
    for (i, a) in listen_raw.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(addr) => {
                if listen.contains(&addr) {
                    errors.push(ConfigError::new(
                        format!("server.listen[{i}]"),
                        format!("{a:?} is listed twice"),
                    ));
                }
                listen.push(addr)
            }
            Err(_) => errors.push(ConfigError::new(
                format!("server.listen[{i}]"),
                format!(
                    "{a:?} is not an IP:port address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"
                ),
            )),
        }
    }
    // The CPUs this process may run on (its affinity mask, e.g. under
    // taskset or a cpuset), which is what shards are placed on by default.
    let allowed = allowed_cpus();
    let ncpu = allowed.len();
    // A refused count stands in as 1: nothing more is said about it.
    let errors_before = errors.len();
    let shards = match s.shards {
        Some(0) => {
            errors.push(ConfigError::new("server.shards", "must be at least 1"));
            1
        }
        Some(n) if n > MAX_SHARDS => {
            errors.push(ConfigError::new(
                "server.shards",
                format!("must be at most {MAX_SHARDS}"),
            ));
            1
        }
        Some(n) => n,
        None => match s.cpus.as_ref().map(|c| c.len()).filter(|&n| n > 0) {
            Some(n) if n > MAX_SHARDS => {
                errors.push(ConfigError::new(
                    "server.cpus",
                    format!("lists {n} CPUs: one shard runs per entry, and at most {MAX_SHARDS} shards run"),
                ));
                1
            }
            Some(n) => n,
            None => ncpu,
        },
    };
    let shards_refused = errors.len() > errors_before;
    let cpus = match &s.cpus {
        Some(cpus) => {
            if cpus.len() != shards && !shards_refused {
                errors.push(ConfigError::new(
                    "server.cpus",
                    format!(
                        "lists {} CPU(s) for {shards} shard(s): give one CPU per shard, or leave cpus out",
                        cpus.len()
                    ),
                ));
            }
            for (i, &c) in cpus.iter().enumerate() {
                if !allowed.contains(&c) {
                    errors.push(ConfigError::new(
                        format!("server.cpus[{i}]"),
                        format!(
                            "CPU {c} is not one this process may run on (allowed: {})",
                            allowed
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            cpus.clone()
        }
        None => (0..shards).map(|i| allowed[i % ncpu]).collect(),
    };
    let pin_shards = s.pin_shards.unwrap_or(true);
    if !pin_shards && s.cpus.is_some() {
        errors.push(ConfigError::new(
            "server.cpus",
            "pins shards to CPUs, but server.pin_shards = false: remove one of the two",
        ));
    }
    let backlog = s.backlog.unwrap_or(DEFAULT_BACKLOG);
    if backlog == 0 {
        errors.push(ConfigError::new("server.backlog", "must be at least 1"));
    }
    ServerPlan {
        listen,
        shards,
        cpus,
        pin_shards,
        backlog,
        drain_timeout: duration(
            errors,
            "server.drain_timeout_ms",
            s.drain_timeout_ms,
            DEFAULT_DRAIN_TIMEOUT_MS,
        ),
        max_connections_per_shard: positive(
            errors,
            "server.max_connections_per_shard",
            s.max_connections_per_shard,
            DEFAULT_MAX_CONNECTIONS_PER_SHARD,
        ),
        share_listen_addresses: s
            .share_listen_addresses
            .unwrap_or(DEFAULT_SHARE_LISTEN_ADDRESSES),
        tls: None,
        shard: Vec::new(),
    }
}

#[cfg(test)]
pub(crate) fn allowed_cpus_for_tests() -> Vec<usize> {
    allowed_cpus()
}

/// The CPUs in this process's affinity mask, in order; never empty.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the
    // calling thread and CPU_ISSET only reads it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    let cpus: Vec<usize> = if ok {
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (0..n).collect()
    } else {
        cpus
    }
}

fn compile_limits(l: &RawLimits, errors: &mut Vec<ConfigError>) -> Limits {
    let k = |name: &str| format!("server.limits.{name}");
    let max_request_line_bytes = positive(
        errors,
        &k("max_request_line_bytes"),
        l.max_request_line_bytes,
        DEFAULT_MAX_REQUEST_LINE_BYTES,
    );
    let max_header_bytes = positive(
        errors,
        &k("max_header_bytes"),
        l.max_header_bytes,
        DEFAULT_MAX_HEADER_BYTES,
    );
    if max_request_line_bytes > max_header_bytes {
        errors.push(ConfigError::new(
            k("max_request_line_bytes"),
            format!("is larger than max_header_bytes ({max_header_bytes}), which includes the request line"),
        ));
    }
    if max_header_bytes > 1024 * 1024 {
        errors.push(ConfigError::new(
            k("max_header_bytes"),
            "must be at most 1048576 (1 MiB)",
        ));
    }
    let max_headers = positive(
        errors,
        &k("max_headers"),
        l.max_headers,
        DEFAULT_MAX_HEADERS,
    );
    if max_headers > crate::http::parse::MAX_HEADERS_CAP {
        errors.push(ConfigError::new(
            k("max_headers"),
            format!("must be at most {}", crate::http::parse::MAX_HEADERS_CAP),
        ));
    }
    Limits {
        max_request_line_bytes,
        max_header_bytes,
        max_headers,
        max_body_bytes: l.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        header_read_timeout: duration(
            errors,
            &k("header_read_timeout_ms"),
            l.header_read_timeout_ms,
            DEFAULT_HEADER_READ_TIMEOUT_MS,
        ),
        body_read_timeout: duration(
            errors,
            &k("body_read_timeout_ms"),
            l.body_read_timeout_ms,
            DEFAULT_BODY_READ_TIMEOUT_MS,
        ),
        idle_timeout: duration(
            errors,
            &k("idle_timeout_ms"),
            l.idle_timeout_ms,
            DEFAULT_IDLE_TIMEOUT_MS,
        ),
        write_timeout: duration(
            errors,
            &k("write_timeout_ms"),
            l.write_timeout_ms,
            DEFAULT_WRITE_TIMEOUT_MS,
        ),
        splice_min_bytes: DEFAULT_SPLICE_MIN_BYTES,
        splice_pipe_bytes: DEFAULT_SPLICE_PIPE_BYTES,
    }
}

fn compile_upstream(
    u: &RawUpstream,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<UpstreamPlan> {
    let before = errors.len();
    if u.name.is_empty()
        || !u
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        errors.push(ConfigError::new(
            format!("{key}.name"),
            "must be letters, digits, '-', '_' or '.' (it stands where a URL has its host)",
        ));
    }
    if u.targets.is_empty() {
        errors.push(ConfigError::new(
            format!("{key}.targets"),
            "must list at least one { address = \"host:port\" }",
        ));
    }
    let mut targets = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let weight = t.weight.unwrap_or(1);
        if weight == 0 || weight > 1000 {
            errors.push(ConfigError::new(
                format!("{key}.targets[{i}].weight"),
                "must be between 1 and 1000",
            ));
        }
        match resolve(&t.address) {
            Ok(addr) => targets.push(TargetPlan {
                addr,
                label: t.address.clone(),
                weight: weight.clamp(1, 1000),
            }),
            Err(e) => errors.push(ConfigError::new(format!("{key}.targets[{i}].address"), e)),
        }
    }
    let balance = match u.balance.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("weighted") => Balance::Weighted,
        Some("least_outstanding") => Balance::LeastOutstanding,
        Some(other) => {
            errors.push(ConfigError::new(
                format!("{key}.balance"),
                format!(
                    "{other:?} is not one of \"round_robin\", \"weighted\", \"least_outstanding\""
                ),
            ));
            Balance::RoundRobin
        }
    };
    if let Some(h) = &u.host {
        if h.is_empty() || h.bytes().any(|b| !b.is_ascii_graphic()) {
            errors.push(ConfigError::new(
                format!("{key}.host"),
                "must be a non-empty host[:port] without spaces",
            ));
        }
    }
    let max_response_header_bytes = positive(
        errors,
        &format!("{key}.max_response_header_bytes"),
        u.max_response_header_bytes,
        DEFAULT_MAX_RESPONSE_HEADER_BYTES,
    );
    let plan = UpstreamPlan {
        name: u.name.clone(),
        targets,
        balance,
        host: u.host.clone(),
        connect_timeout: duration(
            errors,
            &format!("{key}.connect_timeout_ms"),
            u.connect_timeout_ms,
            DEFAULT_CONNECT_TIMEOUT_MS,
        ),
        timeout: duration(
            errors,
            &format!("{key}.timeout_ms"),
            u.timeout_ms,
            DEFAULT_UPSTREAM_TIMEOUT_MS,
        ),
        max_response_header_bytes,
        pool_max_idle: u.pool.max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
        pool_idle_timeout: duration(
            errors,
            &format!("{key}.pool.idle_timeout_ms"),
            u.pool.idle_timeout_ms,
            DEFAULT_POOL_IDLE_TIMEOUT_MS,
        ),
        health_max_failures: u.health.max_failures.unwrap_or(DEFAULT_HEALTH_MAX_FAILURES),
        health_cooldown: duration(
            errors,
            &format!("{key}.health.cooldown_ms"),
            u.health.cooldown_ms,
            DEFAULT_HEALTH_COOLDOWN_MS,
        ),
        tls_ca: None,
        tls: None,
        congestion_control: u.congestion_control.as_deref().and_then(
            |name| match congestion_control(name) {
                Ok(()) => Some(name.into()),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{key}.congestion_control"), e));
                    None
                }
            },
        ),
        loopback_congestion_control: None,
    };
    (errors.len() == before).then_some(plan)
}

/// Upstreams, declared or implicit, that name no congestion control and
/// have a loopback target: their connections to it leave a pacing host
/// default ([`crate::net::loopback_congestion_control`], asked once per
/// compile, and only when some upstream needs it).
fn unpace_loopback_upstreams(upstreams: &mut [UpstreamPlan]) {
    let mut choice = None;
    for u in upstreams {
        if u.congestion_control.is_none()
            && u.targets.iter().any(|t| crate::net::is_loopback(&t.addr))
        {
            u.loopback_congestion_control =
                *choice.get_or_insert_with(crate::net::loopback_congestion_control);
        }
    }
}

/// `upstreams[i].congestion_control`: a name as the kernel spells one
/// (at most 15 lowercase letters, digits, `_` or `-`), which this process
/// may set on its sockets here, tried on a socket that never connects.
fn congestion_control(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{name:?} is not a congestion control name: 1 to 15 lowercase letters, digits, '_' or '-', as in \"cubic\" or \"bbr\""
        ));
    }
    crate::net::probe_congestion_control(name)
}

fn compile_base_path(bp: Option<&str>) -> Result<String, String> {
    let bp = bp.unwrap_or("/");
    if bp == "/" {
        return Ok("/".into());
    }
    let trimmed = bp.strip_suffix('/').unwrap_or(bp);
    let (_, params, _) =
        crate::route::parse_route_path(trimmed).map_err(|e| format!("{bp:?}: {e}"))?;
    if !params.is_empty() {
        return Err(format!("{bp:?}: a base path cannot have parameters"));
    }
    Ok(trimmed.to_string())
}

fn compile_mock(
    status: u16,
    headers: &std::collections::BTreeMap<String, String>,
    body: &str,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Integration> {
    let before = errors.len();
    if !(200..=599).contains(&status) {
        errors.push(ConfigError::new(
            format!("{key}.status"),
            format!("{status} is not a final status (200-599)"),
        ));
    }
    let mut head = Vec::new();
    push_status_line(&mut head, status);
    for (name, value) in headers {
        let lname = name.to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(crate::http::parse::is_token_byte) {
            errors.push(ConfigError::new(
                format!("{key}.headers.{name}"),
                "is not a valid header name",
            ));
        } else if matches!(
            lname.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "date" | "x-request-id"
        ) {
            errors.push(ConfigError::new(
                format!("{key}.headers.{name}"),
                "is set by the gateway and cannot be configured",
            ));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            errors.push(ConfigError::new(
                format!("{key}.headers.{name}"),
                "value has control characters",
            ));
        }
        head.extend_from_slice(lname.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if status == 204 || status == 304 {
        if !body.is_empty() {
            errors.push(ConfigError::new(
                format!("{key}.body"),
                format!("a {status} response has no body"),
            ));
        }
    } else {
        head.extend_from_slice(b"content-length: ");
        push_u64(&mut head, body.len() as u64);
        head.extend_from_slice(b"\r\n");
    }
    (errors.len() == before).then(|| {
        Integration::Mock(MockPlan {
            status,
            head,
            body: body.as_bytes().to_vec(),
        })
    })
}

/// Parses `http(s)://authority[/path][?query]`. The authority names a
/// declared upstream, or is a `host:port` that becomes an implicit
/// single-target one. Whether the upstream speaks TLS is settled by the
/// caller ([`crate::tls::UpstreamTlsBuilder`]).
fn compile_proxy(
    url: &str,
    key: &RouteKey,
    ukey: &str,
    upstreams: &mut Vec<UpstreamPlan>,
    failed_upstreams: &[&str],
    errors: &mut Vec<ConfigError>,
) -> Option<Integration> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => {
            errors.push(ConfigError::new(
                ukey,
                format!("{url:?}: must start with http:// or https://"),
            ));
            return None;
        }
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let after = &rest[end..];
    let (path, query) = match after.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (after, None),
    };
    if authority.is_empty() {
        errors.push(ConfigError::new(ukey, format!("{url:?} has no host")));
        return None;
    }
    if failed_upstreams.contains(&authority) {
        // Its own errors are reported under [[upstreams]].
        return None;
    }
    let upstream = match upstreams.iter().position(|u| u.name == authority) {
        Some(i) => i,
        None => {
            let with_port = if authority.contains(':') && !authority.ends_with(']') {
                authority.to_string()
            } else if https {
                format!("{authority}:443")
            } else {
                format!("{authority}:80")
            };
            let addr = match resolve(&with_port) {
                Ok(a) => a,
                Err(e) => {
                    // A host without a port that resolves to nothing is
                    // most likely a misspelt upstream name.
                    let hint = if authority.contains(':') {
                        None
                    } else {
                        crate::config::did_you_mean(
                            authority,
                            upstreams
                                .iter()
                                .map(|u| u.name.as_str())
                                .filter(|n| !n.contains(':'))
                                .chain(failed_upstreams.iter().copied()),
                        )
                    };
                    errors.push(ConfigError::new(
                        ukey,
                        match hint {
                            Some(name) => format!("{e}; the host of an integration URL is a declared [[upstreams]] name or a host:port: did you mean upstream {name:?}?"),
                            None => format!("{e}; the host of an integration URL is a declared [[upstreams]] name or a host:port"),
                        },
                    ));
                    return None;
                }
            };
            // Implicit upstreams with the same host:port share one pool
            // (`http://localhost` and `http://localhost:80` are one). An
            // https:// one is another upstream: its connections are TLS.
            let name = if https {
                format!("https://{with_port}")
            } else {
                with_port.clone()
            };
            match upstreams.iter().position(|u| u.name == name) {
                Some(i) => i,
                None => {
                    upstreams.push(UpstreamPlan {
                        name,
                        targets: vec![TargetPlan {
                            addr,
                            label: authority.to_string(),
                            weight: 1,
                        }],
                        balance: Balance::RoundRobin,
                        host: None,
                        connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
                        timeout: Duration::from_millis(DEFAULT_UPSTREAM_TIMEOUT_MS),
                        max_response_header_bytes: DEFAULT_MAX_RESPONSE_HEADER_BYTES,
                        pool_max_idle: DEFAULT_POOL_MAX_IDLE,
                        pool_idle_timeout: Duration::from_millis(DEFAULT_POOL_IDLE_TIMEOUT_MS),
                        health_max_failures: DEFAULT_HEALTH_MAX_FAILURES,
                        health_cooldown: Duration::from_millis(DEFAULT_HEALTH_COOLDOWN_MS),
                        tls_ca: None,
                        tls: None,
                        congestion_control: None,
                        loopback_congestion_control: None,
                    });
                    upstreams.len() - 1
                }
            }
        }
    };
    let params: &[String] = match key {
        RouteKey::Route { params, .. } => params,
        RouteKey::Default => &[],
    };
    let path = if path.is_empty() {
        None
    } else {
        match compile_path_template(path, params) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(ConfigError::new(ukey, format!("{url:?}: {e}")));
                return None;
            }
        }
    };
    if let Some(q) = &query {
        if q.bytes().any(|b| !b.is_ascii_graphic() || b == b'#') {
            errors.push(ConfigError::new(
                ukey,
                format!("{url:?}: the query has characters that are not allowed in a URL"),
            ));
            return None;
        }
    }
    Some(Integration::Proxy(ProxyPlan {
        upstream,
        path,
        query: query.filter(|q| !q.is_empty()),
        drop_api_key: false,
        strip_headers: Vec::new(),
        mapping: None,
        ws_limits: Default::default(),
    }))
}

/// A route key taking as parameters the `{name}`s an integration URL uses:
/// the URL of a route whose own key is bad is checked against it.
fn key_naming_params_of(url: &str) -> RouteKey {
    let params = url
        .split('{')
        .skip(1)
        .filter_map(|p| p.split_once('}'))
        .map(|(name, _)| name.strip_suffix('+').unwrap_or(name).to_string())
        .collect();
    RouteKey::Route {
        method: None,
        path: String::new(),
        pattern: String::new(),
        params,
        greedy: false,
    }
}

fn compile_path_template(path: &str, params: &[String]) -> Result<Vec<PathPart>, String> {
    let mut parts = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or("unclosed '{' in the path")? + open;
        if open > 0 {
            parts.push(PathPart::Literal(rest[..open].to_string()));
        }
        let name = &rest[open + 1..close];
        let name = name.strip_suffix('+').unwrap_or(name);
        if !params.iter().any(|p| p == name) {
            return Err(format!(
                "{{{name}}} is not a parameter of the route key (it has: {})",
                if params.is_empty() {
                    "none".to_string()
                } else {
                    params.join(", ")
                }
            ));
        }
        parts.push(PathPart::Param(name.to_string()));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched '}' in the path".into());
    }
    if !rest.is_empty() {
        parts.push(PathPart::Literal(rest.to_string()));
    }
    for p in &parts {
        if let PathPart::Literal(l) = p {
            if l.bytes().any(|b| !b.is_ascii_graphic() || b == b'#') {
                return Err("the path has characters that are not allowed in a URL".into());
            }
        }
    }
    Ok(parts)
}

/// The parts of an upstream's plan the TLS compiler reads and sets.
fn reached(up: &mut UpstreamPlan) -> crate::tls::ReachedUpstream<'_> {
    crate::tls::ReachedUpstream {
        name: &up.name,
        host: up.host.as_deref(),
        target_labels: up.targets.iter().map(|t| t.label.as_str()).collect(),
        tls_ca: up.tls_ca.as_ref(),
        tls: &mut up.tls,
    }
}

/// The integration URL compiler as `bind_endpoints` uses it: (url, config
/// key for errors, errors) → the upstream and path, or None after an error.
type ResolveUrl<'a> = dyn FnMut(&str, &str, &mut Vec<ConfigError>) -> Option<ProxyPlan> + 'a;

/// Resolves each request authorizer's URL to an upstream with `resolve`
/// (the integration URL compiler, which registers an implicit upstream for
/// a `host:port`) and keeps the request target.
fn bind_endpoints(
    authorizers: &mut [crate::policy::auth::AuthorizerPlan],
    resolve: &mut ResolveUrl<'_>,
    errors: &mut Vec<ConfigError>,
) {
    for a in authorizers.iter_mut() {
        // Other kinds join the enum on their own branches.
        #[allow(irrefutable_let_patterns)]
        let crate::policy::auth::AuthorizerKind::Request(r) = &mut a.kind
        else {
            continue;
        };
        if r.url.is_empty() {
            continue; // reported by compile
        }
        let key = format!("{}.url", r.config_key);
        let Some(p) = resolve(&r.url, &key, errors) else {
            continue;
        };
        r.upstream = p.upstream;
        r.target = request_target(&p);
    }
}

/// The request target (path and query) of an integration URL without
/// route parameters, for calls the gateway makes itself.
fn request_target(p: &ProxyPlan) -> String {
    let mut target = String::new();
    for part in p.path.iter().flatten() {
        if let PathPart::Literal(l) = part {
            target.push_str(l);
        }
    }
    if !target.starts_with('/') {
        target.insert(0, '/');
    }
    if let Some(q) = &p.query {
        target.push('?');
        target.push_str(q);
    }
    target
}
