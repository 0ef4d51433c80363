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
use crate::config::ConfigError;
use serde::Deserialize;
use std::sync::Arc;

/// `[[authorizers]]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawAuthorizer {
    pub name: String,
    /// `[authorizers.sigv4]`: AWS Signature Version 4 (docs/sigv4.md).
    pub sigv4: Option<super::sigv4::RawSigv4>,
}

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
        // Kinds written (a kind that failed to compile still counts, so its
        // errors are not followed by "needs a sub-table").
        let mut written = 0;
        let mut kinds: Vec<AuthorizerKind> = Vec::new();
        if let Some(raw) = &a.sigv4 {
            written += 1;
            if let Some(p) = super::sigv4::compile(raw, &format!("{key}.sigv4"), base_dir, errors) {
                kinds.push(AuthorizerKind::Sigv4(Arc::new(p)));
            }
        }
        match written {
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
/// setting. `route_key` is the route's config path for errors.
pub fn compile_rule(
    api_default: Option<&str>,
    route_setting: Option<&str>,
    scopes: Option<&[String]>,
    authorizers: &[AuthorizerPlan],
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
    Some(AuthRule {
        authorizer: index,
        scopes: scopes.map(<[String]>::to_vec).unwrap_or_default(),
    })
}

/// Header names (lowercase) an authorizer may send to the backend: the
/// integration drops client-sent headers of these names.
pub fn upstream_header_names(rule: &AuthRule, authorizers: &[AuthorizerPlan]) -> Vec<String> {
    match authorizers.get(rule.authorizer).map(|a| &a.kind) {
        Some(AuthorizerKind::Sigv4(p)) => super::sigv4::upstream_header_names(p),
        None => Vec::new(),
    }
}

/// Shard-local run-time state of the authorizers (key sets, decision
/// caches). Built once per shard from the plan.
#[derive(Default)]
pub struct ShardAuth {
    /// SigV4: signing-key cache and canonical-request buffers.
    pub sigv4: super::sigv4::ShardState,
}

impl ShardAuth {
    pub fn new(authorizers: &[AuthorizerPlan]) -> ShardAuth {
        ShardAuth {
            sigv4: super::sigv4::ShardState::new(authorizers),
        }
    }
}

/// Runs a route's authorizer on the request. Synchronous: an authorizer
/// that needs I/O keeps what it needs in [`ShardAuth`], refreshed off the
/// request path.
pub fn check(
    rule: &AuthRule,
    authorizers: &[AuthorizerPlan],
    state: &ShardAuth,
    view: &RequestView<'_>,
    req: &mut RequestState,
) -> Decision {
    match authorizers.get(rule.authorizer).map(|a| &a.kind) {
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
