//! Authorizers: who is calling, proven by a signature, a token or another
//! service's answer.
//!
//! An operator defines named authorizers in `[[authorizers]]`, each with
//! exactly one sub-table saying its kind (`[authorizers.jwt]`,
//! `[authorizers.sigv4]`, `[authorizers.request]`). An API names a default
//! with `authorizer = "name"`; a route overrides it, or opts out with
//! `authorizer = "none"`. API keys (`api_key_required`) are separate and
//! checked before the authorizer, as in Amazon API Gateway.
//!
//! A successful check records the principal in
//! [`super::RequestState::principal`] and may add header lines for the
//! backend to [`super::RequestState::upstream_headers`]; the route's
//! integration then drops any client-sent header of those names
//! ([`upstream_header_names`]), so a client cannot forge them.

use super::{Decision, RequestState, RequestView};
pub use crate::config::raw::auth::RawAuthorizer;
use crate::config::ConfigError;
use std::sync::Arc;

/// The value of `authorizer` that turns an API's default off for a route.
pub const NONE: &str = "none";

/// One compiled authorizer.
#[derive(Debug, Clone)]
pub struct AuthorizerPlan {
    pub name: String,
    pub kind: AuthorizerKind,
}

/// What an authorizer checks. Each kind lives in its own module.
#[derive(Debug, Clone)]
pub enum AuthorizerKind {
    Jwt(super::jwt::JwtAuthorizer),
    /// An HTTP authorizer service (API Gateway's Lambda REQUEST authorizer).
    Request(Box<super::request_auth::RequestAuthorizer>),
    /// AWS Signature Version 4 (API Gateway's IAM authorization).
    Sigv4(Arc<super::sigv4::Sigv4Plan>),
}

/// A route's authorization: which authorizer, and what it must grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRule {
    /// Index into [`super::ServerPolicies::authorizers`].
    pub authorizer: usize,
    /// `authorization_scopes`: every scope listed must be granted (JWT).
    pub scopes: Vec<String>,
    /// The JWT claims the route's parameter mapping reads: a verified
    /// token's values of these are kept for it (set by the plan compiler).
    pub claims: Vec<Box<str>>,
    /// The route as a request authorizer's `cache_per_route` keys it: its
    /// API's name and its route key as written, which stay the route's
    /// over a reload (its index in the plan does not).
    pub route: Box<str>,
}

/// Compiles `[[authorizers]]`.
pub fn compile_authorizers(
    raw: &[RawAuthorizer],
    base_dir: Option<&std::path::Path>,
    errors: &mut Vec<ConfigError>,
) -> Vec<AuthorizerPlan> {
    let mut out: Vec<AuthorizerPlan> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let key = format!("authorizers[{i}]");
        if a.name.is_empty() || a.name == NONE {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!("must be a non-empty name other than {NONE:?}"),
            ));
            continue;
        }
        if out.iter().any(|p| p.name == a.name) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!("authorizer {:?} is defined twice", a.name),
            ));
            continue;
        }
        // Sub-tables written, and the kinds among them that compiled.
        let mut present = 0;
        let mut kinds: Vec<AuthorizerKind> = Vec::new();
        if let Some(raw) = &a.jwt {
            present += 1;
            let jwt_key = format!("{key}.jwt");
            kinds.extend(
                super::jwt::compile(raw, &a.name, &jwt_key, base_dir, errors)
                    .map(AuthorizerKind::Jwt),
            );
        }
        if let Some(r) = &a.request {
            present += 1;
            kinds.push(AuthorizerKind::Request(Box::new(
                super::request_auth::compile(r, &a.name, &format!("{key}.request"), errors),
            )));
        }
        if let Some(raw) = &a.sigv4 {
            present += 1;
            if let Some(p) = super::sigv4::compile(raw, &format!("{key}.sigv4"), base_dir, errors) {
                kinds.push(AuthorizerKind::Sigv4(Arc::new(p)));
            }
        }
        match present {
            1 => {
                if let Some(kind) = kinds.into_iter().next() {
                    out.push(AuthorizerPlan {
                        name: a.name.clone(),
                        kind,
                    });
                }
            }
            0 => errors.push(ConfigError::new(
                key,
                "needs a sub-table saying its kind: [authorizers.jwt], [authorizers.sigv4] or [authorizers.request]",
            )),
            _ => errors.push(ConfigError::new(
                key,
                "has more than one kind; give each kind its own [[authorizers]] entry",
            )),
        }
    }
    out
}

/// Compiles a route's authorization from its API's default and its own
/// setting. `route_key` is the route's config path for errors; `route` is
/// (the API's name, the route's key as written).
#[allow(clippy::too_many_arguments)]
pub fn compile_rule(
    api_default: Option<&str>,
    route_setting: Option<&str>,
    scopes: Option<&[String]>,
    authorizers: &[AuthorizerPlan],
    (api_name, route): (&str, &str),
    api_key: &str,
    route_key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<AuthRule> {
    let (name, from) = match (route_setting, api_default) {
        (Some(r), _) => (r, format!("{route_key}.authorizer")),
        (None, Some(a)) => (a, format!("{api_key}.authorizer")),
        (None, None) => {
            if scopes.is_some_and(|s| !s.is_empty()) {
                errors.push(ConfigError::new(
                    format!("{route_key}.authorization_scopes"),
                    "scopes need an authorizer on the route or its API",
                ));
            }
            return None;
        }
    };
    if name == NONE {
        if scopes.is_some_and(|s| !s.is_empty()) {
            errors.push(ConfigError::new(
                format!("{route_key}.authorization_scopes"),
                "scopes need an authorizer, but this route's is \"none\"",
            ));
        }
        return None;
    }
    let Some(index) = authorizers.iter().position(|a| a.name == name) else {
        // An error in the API's default is reported once per route that
        // inherits it; say where it came from.
        errors.push(ConfigError::new(
            from,
            format!("no [[authorizers]] entry is named {name:?}"),
        ));
        return None;
    };
    if let Some(AuthorizerKind::Request(_)) = authorizers.get(index).map(|a| &a.kind) {
        if scopes.is_some_and(|s| !s.is_empty()) {
            errors.push(ConfigError::new(
                format!("{route_key}.authorization_scopes"),
                format!("authorizer {name:?} is a request authorizer, which grants no scopes; scopes are checked by JWT authorizers"),
            ));
        }
    }
    Some(AuthRule {
        authorizer: index,
        scopes: scopes.map(<[String]>::to_vec).unwrap_or_default(),
        claims: Vec::new(),
        route: format!("{api_name}\n{route}").into(),
    })
}

/// Header names (lowercase) an authorizer may send to the backend: the
/// integration drops client-sent headers of these names.
pub fn upstream_header_names(rule: &AuthRule, authorizers: &[AuthorizerPlan]) -> Vec<String> {
    match authorizers.get(rule.authorizer).map(|a| &a.kind) {
        Some(AuthorizerKind::Jwt(j)) => j.header_names(),
        Some(AuthorizerKind::Request(r)) => r.upstream_header_names(),
        Some(AuthorizerKind::Sigv4(p)) => super::sigv4::upstream_header_names(p),
        None => Vec::new(),
    }
}

/// Shard-local run-time state of the authorizers (key sets, decision
/// caches). Built once per shard from the plan.
#[derive(Default)]
pub struct ShardAuth {
    /// Per authorizer index: the JWT key set this shard holds (shared with
    /// the shard's [`ShardAuth::updater`] task).
    jwt: std::rc::Rc<Vec<Option<std::rc::Rc<super::jwt::ShardJwt>>>>,
    /// Decision caches of the request authorizers.
    pub request: super::request_auth::ShardRequestAuth,
    /// SigV4: signing-key cache and canonical-request buffers.
    pub sigv4: super::sigv4::ShardState,
}

impl ShardAuth {
    pub fn new(authorizers: &[AuthorizerPlan]) -> ShardAuth {
        let jwt = authorizers
            .iter()
            .map(|a| match &a.kind {
                AuthorizerKind::Jwt(j) => Some(std::rc::Rc::new(super::jwt::ShardJwt::new(j))),
                _ => None,
            })
            .collect::<Vec<_>>();
        // Every JWKS URL's fetcher works on its first fetch in parallel;
        // wait for all of them within one bound.
        let bound = authorizers
            .iter()
            .filter_map(|a| match &a.kind {
                AuthorizerKind::Jwt(j) => super::jwt::ShardJwt::first_fetch_bound(j),
                _ => None,
            })
            .max();
        if let Some(bound) = bound {
            let deadline = std::time::Instant::now() + bound;
            for j in jwt.iter().flatten() {
                j.wait_first(deadline);
            }
        }
        ShardAuth {
            jwt: std::rc::Rc::new(jwt),
            request: super::request_auth::ShardRequestAuth::new(authorizers),
            sigv4: super::sigv4::ShardState::new(authorizers),
        }
    }

    /// The state for a reloaded plan's `authorizers`, taking over from
    /// `self` (made for `before`) what belongs to an authorizer of the same
    /// name and the same compiled settings: a JWKS URL's key set and its
    /// fetcher, and a request authorizer's decision cache. Others start
    /// fresh; a new JWKS URL is not waited for (its routes answer 401
    /// until its first key set arrives, as when the first fetch fails).
    pub fn carry(&self, before: &[AuthorizerPlan], authorizers: &[AuthorizerPlan]) -> ShardAuth {
        let same = |a: &AuthorizerPlan| {
            before
                .iter()
                .position(|b| b.name == a.name && same_settings(b, a))
        };
        let jwt = authorizers
            .iter()
            .map(|a| match &a.kind {
                AuthorizerKind::Jwt(j) => Some(
                    match same(a)
                        .filter(|_| j.is_fetched())
                        .and_then(|i| self.jwt.get(i))
                    {
                        Some(Some(kept)) => kept.clone(),
                        _ => std::rc::Rc::new(super::jwt::ShardJwt::new(j)),
                    },
                ),
                _ => None,
            })
            .collect::<Vec<_>>();
        let kept: Vec<Option<usize>> = authorizers.iter().map(same).collect();
        ShardAuth {
            jwt: std::rc::Rc::new(jwt),
            request: self.request.carry(authorizers, &kept),
            sigv4: super::sigv4::ShardState::new(authorizers),
        }
    }

    /// The shard's task that takes in new JWT key sets (fetched from a JWKS
    /// URL by another thread): it sleeps until a fetcher sends one and
    /// wakes it, or [`super::jwt::KEYS_WAIT`] passes. Ends at once when no
    /// authorizer gets updates.
    pub fn updater(&self) -> impl std::future::Future<Output = ()> + 'static {
        let jwt = self.jwt.clone();
        async move {
            loop {
                let mut live = false;
                for j in jwt.iter().flatten() {
                    live |= j.poll_updates();
                }
                if !live {
                    return;
                }
                let mut timer = std::pin::pin!(glommio::timer::sleep(super::jwt::KEYS_WAIT));
                let mut left = false;
                std::future::poll_fn(|cx| {
                    if std::future::Future::poll(timer.as_mut(), cx).is_ready() {
                        return std::task::Poll::Ready(());
                    }
                    let mut now = false;
                    for j in jwt.iter().flatten() {
                        now |= if left {
                            j.has_update()
                        } else {
                            j.wake_on_update(cx.waker())
                        };
                    }
                    left = true;
                    if now {
                        return std::task::Poll::Ready(());
                    }
                    std::task::Poll::Pending
                })
                .await;
            }
        }
    }
}

/// Whether two compiled authorizers have the same settings, so that the
/// run-time state of one serves the other: compiled authorizers print
/// every setting (a request authorizer its URL and its upstream's position
/// in the plan; a JWT authorizer from a file prints no keys, and is never
/// carried over).
fn same_settings(a: &AuthorizerPlan, b: &AuthorizerPlan) -> bool {
    format!("{:?}", a.kind) == format!("{:?}", b.kind)
}

/// Runs a route's authorizer on the request. Synchronous: an authorizer
/// that needs I/O keeps what it needs in [`ShardAuth`], refreshed off the
/// request path. The one exception is a request authorizer without a cached
/// answer: it returns [`Decision::Authorize`], and the gateway's driver
/// awaits the call (`gateway::authorize::call`).
pub fn check(
    rule: &AuthRule,
    authorizers: &[AuthorizerPlan],
    state: &ShardAuth,
    view: &RequestView<'_>,
    req: &mut RequestState,
) -> Decision {
    match authorizers.get(rule.authorizer).map(|a| &a.kind) {
        Some(AuthorizerKind::Jwt(j)) => match state.jwt.get(rule.authorizer) {
            Some(Some(shard)) => super::jwt::check(j, shard, rule, view, req),
            _ => Decision::Respond(super::Refusal::json(500, "Internal Server Error")),
        },
        Some(AuthorizerKind::Request(r)) => {
            super::request_auth::check(r, rule, &state.request, view, req)
        }
        Some(AuthorizerKind::Sigv4(p)) => {
            super::sigv4::check(p, &state.sigv4, rule.authorizer, view, req)
        }
        // Compile guarantees the index; refuse rather than allow if not.
        None => Decision::Respond(super::Refusal::json(500, "Internal Server Error")),
    }
}

/// The principal a request authenticated as, shared cheaply with logs and
/// the phases after authorization.
pub type Principal = Arc<str>;
