//! Policies: the phases between routing and the integration.
//!
//! Each policy compiles its rule from the raw config and checks a request
//! against it; none sees a connection or a shard. A route's phases are an
//! ordered list compiled once ([`RoutePolicies::phases`], in the order of
//! [`Phase`]), and the gateway's driver runs them one by one through
//! [`run_phase`], which returns an explicit [`Decision`]: continue, respond
//! instead of the integration, or wait for something and then go on (a
//! quota lease, a request authorizer's answer, the body a SigV4 signature
//! covers). The cache is the exception: it wraps the integration, so the
//! driver runs it there.
//!
//! Each policy's config is compiled once (API-level settings merged with the
//! route's) into [`RoutePolicies`]; its run-time state is shard-local
//! ([`ShardPolicies`]). Checks are synchronous and take no lock.

pub mod api_key;
pub mod auth;
pub mod cache;
pub mod cors;
pub mod fanout;
pub mod ip_rules;
pub mod jwt;
pub mod lifecycle;
pub mod request_auth;
pub mod sigv4;
pub mod throttle;
pub mod usage;

use crate::config::raw::{RawApi, RawRoute, RawServer};
use crate::config::ConfigError;
use crate::http::parse::RequestHead;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// The phases a route's request goes through before its integration, in
/// the order they run. A route lists only those that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// [`ip_rules`]: is the client's address allowed? (403)
    IpRules,
    /// [`cors`]: answer a preflight; note headers for the actual response.
    Cors,
    /// [`lifecycle`]: a retired route is 410 Gone; a deprecated one's
    /// responses get `Deprecation`, `Sunset` and `Link` headers.
    Lifecycle,
    /// [`api_key`]: an enabled key in `x-api-key`? (403) After the
    /// preflight (a browser sends no key with it), before the phases that
    /// count per key.
    ApiKey,
    /// [`auth`]: the route's authorizer (SigV4, JWT, request authorizer):
    /// 401/403, or wait for a request authorizer's answer.
    Authorizer,
    /// A SigV4 signature that covers the body: wait for the body to be
    /// read and hashed ([`Decision::VerifyBody`]) before anything counts.
    SignedBody,
    /// The API key's usage plan: coverage (403), its quota (429), or wait
    /// for this shard's lease of it.
    UsagePlan,
    /// [`throttle`]: within the token buckets that apply, the key's first?
    /// (429)
    Throttle,
    /// The key's request is counted for its usage record and quota, once
    /// every check has passed.
    Admit,
}

/// The compiled policies of one route.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicies {
    pub ip_rules: Option<ip_rules::IpRules>,
    pub cors: Option<cors::Cors>,
    pub api_key: Option<api_key::ApiKeyRule>,
    pub auth: Option<auth::AuthRule>,
    pub throttle: throttle::RouteLimits,
    pub cache: Option<cache::CacheRule>,
    /// Deprecated or retired; None for an active route.
    pub lifecycle: Option<lifecycle::Lifecycle>,
    /// The phases that apply, in order; empty when none does.
    pub phases: Vec<Phase>,
}

impl RoutePolicies {
    /// The phases that apply to a route with these rules, in order.
    pub fn compile_phases(&self) -> Vec<Phase> {
        let keyed = self.api_key.is_some();
        [
            (Phase::IpRules, self.ip_rules.is_some()),
            (Phase::Cors, self.cors.is_some()),
            (Phase::Lifecycle, self.lifecycle.is_some()),
            (Phase::ApiKey, keyed),
            (Phase::Authorizer, self.auth.is_some()),
            (Phase::SignedBody, self.auth.is_some()),
            (Phase::UsagePlan, keyed),
            (Phase::Throttle, keyed || !self.throttle.is_empty()),
            (Phase::Admit, keyed),
        ]
        .into_iter()
        .filter_map(|(p, on)| on.then_some(p))
        .collect()
    }
}

/// Server-wide policy settings.
#[derive(Debug, Clone, Default)]
pub struct ServerPolicies {
    pub throttle: throttle::ThrottlePlan,
    pub cache: cache::CacheSettings,
    /// Every API key, from the keys file and the config.
    pub api_keys: api_key::KeyStore,
    /// `[[authorizers]]`, indexed by [`auth::AuthRule::authorizer`].
    pub authorizers: Vec<auth::AuthorizerPlan>,
    /// `[[usage_plans]]`, the keys' plans and the usage store settings.
    pub usage: usage::UsagePlans,
}

impl ServerPolicies {
    /// Whether throttle state made for `self` is right for `other`: the
    /// same buckets with the same settings, and the same API keys in the
    /// same order, or more added after them (per-key buckets are kept by
    /// key position, and a new key's are made when it is first used).
    /// Adding a key (`POST /keys`, a portal sign-up) must not refill every
    /// bucket.
    pub fn same_throttle_state(&self, other: &ServerPolicies) -> bool {
        let names = |k: &api_key::KeyStore| {
            (0..k.len() as u32)
                .map(|i| k.name(i).map(str::to_string))
                .collect::<Vec<_>>()
        };
        self.throttle == other.throttle
            && names(&other.api_keys).starts_with(&names(&self.api_keys))
    }
}

/// What a policy may read about a request.
pub struct RequestView<'a> {
    /// The buffer the head was parsed from.
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    pub peer: SocketAddr,
    /// The route, or None for a request no route takes (a CORS preflight to
    /// a path without an OPTIONS route).
    pub route: Option<usize>,
    pub now: Instant,
    /// The subject (RFC 4514 DN) of the client certificate mTLS verified on
    /// this connection; `None` on a plain connection or without one.
    pub client_cert_subject: Option<&'a str>,
}

impl RequestView<'_> {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head
            .headers
            .iter()
            .find(|h| h.name.get(self.buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value.get(self.buf))
    }
}

/// What the policy phases learned about a request, for the phases after
/// them (per-key throttling and usage plans, logs). The gateway keeps one
/// per request in its exchange; nothing in it allocates unless an
/// authorizer ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestState {
    /// The API key that authenticated the request: an index into
    /// [`ServerPolicies::api_keys`] (its name is the principal).
    pub api_key: Option<api_key::KeyId>,
    /// Who the route's authorizer says is calling (IAM principal, JWT
    /// subject, request authorizer's principalId).
    pub principal: Option<auth::Principal>,
    /// Complete header lines (`name: value\r\n`) for the upstream request,
    /// from the authorizer (JWT claims, authorizer context).
    pub upstream_headers: Vec<u8>,
    /// The claims of the verified JWT that the route's parameter mapping
    /// reads (`AuthRule::claims`), as text; empty (no allocation) when it
    /// reads none.
    pub claims: Vec<(Box<str>, Box<str>)>,
    /// A SigV4 check that needs the request body (its hash is signed):
    /// the signed-body phase has the driver read and hash it.
    pub body_check: Option<Box<sigv4::BodyCheck>>,
    /// The usage plan's bucket for the key (plan bucket, key), for the
    /// throttle phase.
    pub key_bucket: Option<(u32, api_key::KeyId)>,
}

/// A response a policy gives instead of the integration's.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    /// The JSON `message` (for gateway errors), ignored when `body` is set.
    pub message: Cow<'static, str>,
    /// Complete header lines (`name: value\r\n`) to add.
    pub headers: Vec<u8>,
    /// A body other than the JSON message (a preflight's empty body).
    pub body: Option<Vec<u8>>,
}

impl Refusal {
    pub fn json(status: u16, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            headers: Vec::new(),
            body: None,
        }
    }
}

/// A policy phase's decision.
#[derive(Debug)]
pub enum Decision {
    Continue,
    Respond(Refusal),
    /// The API key's quota has requests left, but not on this shard yet:
    /// wait for its lease ([`usage::shard::ShardUsage::wait`]), then run
    /// the phase again.
    WaitQuota(u32),
    /// The route's request authorizer has no cached answer for this
    /// identity: the driver must call it (gateway/authorize.rs) and apply
    /// its answer before going on (never treat this as `Continue`). Boxed
    /// so that the common decisions stay small.
    Authorize(Box<request_auth::Call>),
    /// The signature covers the body: read and hash it, then go on.
    VerifyBody(Box<sigv4::BodyCheck>),
}

/// The API a route belongs to, as route compilation needs it.
pub struct ApiContext<'a> {
    /// The API's index in the config.
    pub index: usize,
    pub raw: &'a RawApi,
    /// The API's config path (`apis[i]`), for errors.
    pub key: &'a str,
    /// CORS is an API-level setting, compiled once per API.
    pub cors: Option<cors::Cors>,
}

/// Collects what policies need across routes while the config compiles.
pub struct PolicyBuilder {
    pub throttle: throttle::Builder,
    /// A keys file or inline keys exist: a route may require a key.
    pub api_keys_configured: bool,
    /// `[[authorizers]]`, compiled before the routes that name them.
    pub authorizers: Vec<auth::AuthorizerPlan>,
    pub usage: usage::Builder,
    /// Names of every API key, for rules that name keys.
    pub key_names: Vec<String>,
}

impl PolicyBuilder {
    /// Server-level settings first: every route's limits include the
    /// server-wide buckets.
    pub fn new(
        raw: &crate::config::raw::RawConfig,
        errors: &mut Vec<ConfigError>,
    ) -> PolicyBuilder {
        let mut throttle = throttle::Builder::new(raw.server.throttle.as_ref(), errors);
        let usage = usage::Builder::new(raw, &mut throttle, errors);
        PolicyBuilder {
            throttle,
            api_keys_configured: false,
            authorizers: Vec::new(),
            usage,
            key_names: Vec::new(),
        }
    }

    /// Compiles the policies of one route from its API's and its own
    /// settings. `route_id` is the route's index in the plan.
    pub fn route(
        &mut self,
        api: &ApiContext<'_>,
        route_id: usize,
        route: &RawRoute,
        key: &str,
        errors: &mut Vec<ConfigError>,
    ) -> RoutePolicies {
        self.usage
            .route(route_id, api.index, &api.raw.name, &route.key);
        let mut policies = RoutePolicies {
            ip_rules: ip_rules::compile(
                api.raw.ip_rules.as_ref(),
                route.ip_rules.as_ref(),
                key,
                errors,
            ),
            cors: api.cors.clone(),
            api_key: api_key::compile_rule(
                api.raw.api_key_required,
                route.api_key_required,
                self.api_keys_configured,
                key,
                errors,
            ),
            auth: auth::compile_rule(
                api.raw.authorizer.as_deref(),
                route.authorizer.as_deref(),
                route.authorization_scopes.as_deref(),
                &self.authorizers,
                (&api.raw.name, &route.key),
                api.key,
                key,
                errors,
            ),
            throttle: self.throttle.route(
                api.index,
                api.raw.throttle.as_ref(),
                route_id,
                route.throttle.as_ref(),
                key,
                errors,
            ),
            cache: self.cache_rule(
                api,
                route,
                key,
                api_key::requires_key(api.raw.api_key_required, route.api_key_required),
                errors,
            ),
            lifecycle: lifecycle::compile(
                api.raw.lifecycle.as_ref(),
                route.lifecycle.as_ref(),
                api.key,
                key,
                errors,
            ),
            phases: Vec::new(),
        };
        policies.phases = policies.compile_phases();
        policies
    }

    /// The route's cache rule; the API keys it names must exist (once per
    /// name, reported at the route).
    fn cache_rule(
        &self,
        api: &ApiContext<'_>,
        route: &RawRoute,
        key: &str,
        requires_key: bool,
        errors: &mut Vec<ConfigError>,
    ) -> Option<cache::CacheRule> {
        let rule = cache::compile_rule(api.raw.cache.as_ref(), route.cache.as_ref(), key, errors)?;
        if let cache::Invalidation::Keys(names) = &rule.invalidation {
            if !requires_key {
                errors.push(ConfigError::new(
                    format!("{key}.cache.invalidation_keys"),
                    "names API keys, but the route does not require one (api_key_required), so no request could invalidate",
                ));
            }
            for n in names {
                if !self.key_names.contains(n) {
                    errors.push(ConfigError::new(
                        format!("{key}.cache.invalidation_keys"),
                        format!("no API key is named {n:?}"),
                    ));
                }
            }
        }
        Some(rule)
    }

    /// `keys` is the compiled key store: keys are resolved to their plans.
    pub fn finish(
        self,
        server: &RawServer,
        keys: api_key::KeyStore,
        errors: &mut Vec<ConfigError>,
    ) -> ServerPolicies {
        let usage = self.usage.finish(&keys, errors);
        ServerPolicies {
            throttle: self.throttle.finish(),
            cache: cache::compile_settings(server.cache.as_ref(), errors),
            api_keys: keys,
            authorizers: self.authorizers,
            usage,
        }
    }
}

/// Shard-local run-time state of the policies. Each part is shared by
/// reference count: a generation holds one `ShardPolicies`, and a reloaded
/// plan's generation takes over the parts whose settings did not change
/// ([`ShardPolicies::carry`]).
#[derive(Clone)]
pub struct ShardPolicies {
    pub throttle: Rc<throttle::ShardThrottle>,
    pub cache: Rc<cache::ShardCache>,
    /// This shard's copy of the key store.
    pub api_keys: Rc<api_key::KeyStore>,
    pub auth: Rc<auth::ShardAuth>,
    pub usage: Rc<usage::shard::ShardUsage>,
}

impl ShardPolicies {
    pub fn new(
        policies: &ServerPolicies,
        shard: usize,
        link: throttle::ShardLink,
        usage_link: usage::coordinator::ShardLink,
    ) -> ShardPolicies {
        ShardPolicies {
            throttle: Rc::new(throttle::ShardThrottle::new(
                &policies.throttle,
                shard,
                link,
            )),
            cache: Rc::new(cache::ShardCache::new(&policies.cache)),
            api_keys: Rc::new(policies.api_keys.clone()),
            auth: Rc::new(auth::ShardAuth::new(&policies.authorizers)),
            usage: Rc::new(usage::shard::ShardUsage::new(
                &policies.usage,
                shard,
                usage_link,
            )),
        }
    }

    /// The state for a reloaded plan's policies `now`, taking over from
    /// `self` (made for `before`):
    /// - the throttle buckets, unless `link` brings a new coordinator's
    ///   link (the runtime starts one when any bucket setting changed);
    /// - the response cache, when its size did not change (entries are
    ///   keyed by their route's settings, see [`cache::CacheRule::scope`]);
    /// - each authorizer's state whose name and settings did not change;
    /// - the usage counters and leases, taking in keys added at the end
    ///   ([`usage::UsagePlans::extends_to`]); the runtime refuses a reload
    ///   that changes them otherwise.
    ///
    /// The key store is the new plan's.
    pub fn carry(
        &self,
        before: &ServerPolicies,
        now: &ServerPolicies,
        shard: usize,
        link: Option<throttle::ShardLink>,
    ) -> ShardPolicies {
        ShardPolicies {
            throttle: match link {
                Some(link) => Rc::new(throttle::ShardThrottle::new(&now.throttle, shard, link)),
                None => self.throttle.clone(),
            },
            cache: if before.cache == now.cache {
                self.cache.clone()
            } else {
                Rc::new(cache::ShardCache::new(&now.cache))
            },
            api_keys: Rc::new(now.api_keys.clone()),
            auth: Rc::new(self.auth.carry(&before.authorizers, &now.authorizers)),
            usage: {
                if !before.usage.same_state(&now.usage) {
                    self.usage.adopt(&now.usage);
                }
                self.usage.clone()
            },
        }
    }
}

/// Runs one phase of a routed request. Header lines for the eventual
/// response (CORS, rate-limit headers) are appended to `extra`; what the
/// phases learn (the authenticated key, the principal, the key's bucket)
/// is written to `req` for the phases after.
pub fn run_phase(
    phase: Phase,
    policies: &RoutePolicies,
    server: &ServerPolicies,
    state: &ShardPolicies,
    view: &RequestView<'_>,
    extra: &mut Vec<u8>,
    req: &mut RequestState,
) -> Decision {
    match phase {
        Phase::IpRules => match &policies.ip_rules {
            Some(rules) if !rules.allows(view.peer.ip()) => {
                Decision::Respond(Refusal::json(403, "Forbidden"))
            }
            _ => Decision::Continue,
        },
        Phase::Cors => {
            if let Some(cors) = &policies.cors {
                if let Decision::Respond(r) = cors.preflight(view) {
                    return Decision::Respond(r);
                }
                cors.response_headers(view, extra);
            }
            Decision::Continue
        }
        Phase::Lifecycle => match &policies.lifecycle {
            Some(l) => l.check(extra),
            None => Decision::Continue,
        },
        Phase::ApiKey => match state.api_keys.verify_request(view.buf, view.head) {
            Some(id) => {
                req.api_key = Some(id);
                // The key's name, until an authorizer names the caller.
                req.principal = state.api_keys.principal(id);
                Decision::Continue
            }
            None => Decision::Respond(Refusal::json(403, "Forbidden")),
        },
        Phase::Authorizer => match &policies.auth {
            Some(rule) => auth::check(rule, &server.authorizers, &state.auth, view, req),
            None => Decision::Continue,
        },
        Phase::SignedBody => match req.body_check.take() {
            Some(check) => Decision::VerifyBody(check),
            None => Decision::Continue,
        },
        Phase::UsagePlan => {
            let (Some(key), Some(route)) = (req.api_key, view.route) else {
                return Decision::Continue;
            };
            match server.usage.coverage(key, route) {
                usage::Coverage::NoPlan => Decision::Continue,
                usage::Coverage::NotCovered => Decision::Respond(Refusal::json(403, "Forbidden")),
                usage::Coverage::Covered { bucket, .. } => {
                    req.key_bucket = bucket.map(|b| (b, key));
                    match state.usage.peek(key) {
                        usage::shard::QuotaCheck::None | usage::shard::QuotaCheck::Allowed => {
                            Decision::Continue
                        }
                        usage::shard::QuotaCheck::Wait => Decision::WaitQuota(key),
                        usage::shard::QuotaCheck::Exceeded => {
                            state.usage.note_refused(key);
                            Decision::Respond(Refusal::json(429, "Limit Exceeded"))
                        }
                    }
                }
            }
        }
        Phase::Throttle => {
            if policies.throttle.is_empty() && req.key_bucket.is_none() {
                return Decision::Continue;
            }
            match state
                .throttle
                .check(&policies.throttle, req.key_bucket, view, extra)
            {
                Decision::Respond(r) => Decision::Respond(r),
                _ => Decision::Continue,
            }
        }
        Phase::Admit => {
            if let Some(key) = req.api_key {
                state.usage.admit(key);
            }
            Decision::Continue
        }
    }
}
