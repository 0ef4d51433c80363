//! The request authorizer: Amazon API Gateway's Lambda REQUEST authorizer,
//! done as an HTTP call to an authorizer service. It is an authorizer kind
//! ([`super::auth`]), so it runs after IP rules, CORS and the API key, and
//! before throttling.
//!
//! ```text
//! identity sources present? ─ no ──────────────────────────▶ 401 (no call)
//!    │ yes
//! cached answer for this identity on this shard? ─ yes ─▶ allow / 403
//!    │ no                          (synchronous: auth::check)
//!    ▼
//! Decision::Authorize ─▶ the gateway awaits the call (gateway/authorize.rs):
//!    a call for the same identity in flight on this shard? ─ yes ─ wait for it
//!    │ no
//!    POST the identity to the authorizer ─▶ 200 {"isAuthorized": ...}
//!       allow: principal + context headers, cached  ─▶ throttle ─▶ integration
//!       deny:  cached                               ─▶ 403
//!       anything else (refused, timeout, non-200, bad or too large JSON)
//!                                                   ─▶ 500, not cached
//! ```
//!
//! The authorizer's endpoint is an upstream ([`crate::integration::upstream`]):
//! its URL names a declared `[[upstreams]]` entry or a `host:port`, exactly
//! like an integration URL, and the plan compiler resolves it with the same
//! code. The call therefore shares the pools, connect timeout, balancing and
//! passive health of the proxy, and an `https://` URL goes through the
//! upstream's TLS (tests/tls.rs calls a TLS authorizer).
//!
//! Answers are cached per shard ([`cache`]), keyed by a SHA-256 of the
//! identity values (and the route, with `cache_per_route`); concurrent
//! misses for one identity on a shard share one call. Nothing is shared
//! between shards. The wire format is in [`protocol`]; docs/request-authorizer.md
//! describes every key, the protocol and the caching rules.

pub mod cache;
pub mod protocol;

use super::auth::{AuthRule, AuthorizerKind, AuthorizerPlan};
use super::{Decision, Refusal, RequestState, RequestView};
pub use crate::config::raw::request_auth::RawRequestAuthorizer;
use crate::config::ConfigError;
use crate::http::percent::percent_decode;
use cache::{DecisionCache, Key, Verdict};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

/// Amazon API Gateway's default authorizer result TTL.
pub const DEFAULT_TTL_SECONDS: i64 = 300;
/// Amazon API Gateway's largest authorizer result TTL.
pub const MAX_TTL_SECONDS: i64 = 3600;
/// How long the gateway waits for the authorizer's whole answer.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// The longest `timeout_ms`: a client's request waits this long at most.
pub const MAX_TIMEOUT_MS: u64 = 10_000;
/// Cached answers per authorizer per shard.
pub const DEFAULT_CACHE_MAX_ENTRIES: i64 = 10_000;
pub const MAX_CACHE_MAX_ENTRIES: i64 = 1_000_000;
/// Largest answer body read; a larger one is a failure (500).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest `principalId` accepted.
pub const MAX_PRINCIPAL_BYTES: usize = 1024;
/// Longest context value passed on as a header.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Most bytes of header lines one answer may add to the upstream request.
pub const MAX_UPSTREAM_HEADER_BYTES: usize = 8192;

// === impl raw config ===

// === impl compiled plan ===

/// Where an identity value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Header,
    Query,
}

/// One identity source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySource {
    /// As written in the config (`header:Authorization`): the key of the
    /// value in the call's `identity` object.
    pub label: String,
    pub kind: SourceKind,
    /// Lower-cased for a header; as written (matched raw, not
    /// percent-decoded) for a query parameter.
    pub name: Box<[u8]>,
}

/// A compiled request authorizer.
#[derive(Debug, Clone)]
pub struct RequestAuthorizer {
    /// The `[[authorizers]]` name, for logs and the call.
    pub name: String,
    /// `authorizers[i].request`, for errors found while binding the URL.
    pub config_key: String,
    pub url: String,
    /// Index into the plan's upstreams, set by [`bind_endpoints`].
    pub upstream: usize,
    /// Request target of the call: path and query.
    pub target: String,
    pub sources: Vec<IdentitySource>,
    /// Zero: no caching (and no coalescing).
    pub ttl: Duration,
    pub timeout: Duration,
    /// (context key, lower-case header name), sorted by context key.
    pub context_headers: Vec<(String, String)>,
    pub principal_header: Option<String>,
    pub cache_max_entries: usize,
    pub cache_per_route: bool,
}

impl RequestAuthorizer {
    /// The header names this authorizer sends upstream: client-sent headers
    /// of these names are dropped, so they cannot be forged.
    pub fn upstream_header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .context_headers
            .iter()
            .map(|(_, h)| h.clone())
            .chain(self.principal_header.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

// === impl compile ===

/// Headers the gateway writes itself, or that change how the upstream
/// request is framed or routed: an authorizer may not set them.
fn reserved_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "forwarded"
            | "x-request-id"
    ) || name.starts_with("proxy-")
        || name.starts_with("x-forwarded-")
}

/// Checks an upstream header name; returns it lower-cased.
fn header_name(name: &str, key: &str, errors: &mut Vec<ConfigError>) -> Option<String> {
    if name.is_empty() || !name.bytes().all(crate::http::parse::is_token_byte) {
        errors.push(ConfigError::new(
            key,
            format!("{name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"),
        ));
        return None;
    }
    let lower = name.to_ascii_lowercase();
    if reserved_header(&lower) {
        errors.push(ConfigError::new(
            key,
            format!(
                "{name:?} is set by the gateway or frames the request; pick another header name"
            ),
        ));
        return None;
    }
    Some(lower)
}

/// Parses `header:NAME` or `query:NAME`.
fn identity_source(s: &str, key: &str, errors: &mut Vec<ConfigError>) -> Option<IdentitySource> {
    let hint = "write \"header:NAME\" or \"query:NAME\"";
    if let Some(rest) = s.strip_prefix("$request.header.") {
        errors.push(ConfigError::new(
            key,
            format!("{s:?}: {hint} (here \"header:{rest}\")"),
        ));
        return None;
    }
    if let Some(rest) = s.strip_prefix("$request.querystring.") {
        errors.push(ConfigError::new(
            key,
            format!("{s:?}: {hint} (here \"query:{rest}\")"),
        ));
        return None;
    }
    let (kind, name) = match s.split_once(':') {
        Some(("header", n)) => (SourceKind::Header, n),
        Some(("query", n)) => (SourceKind::Query, n),
        _ => {
            errors.push(ConfigError::new(
                key,
                format!("{s:?} is not an identity source; {hint}"),
            ));
            return None;
        }
    };
    let name: Box<[u8]> = match kind {
        SourceKind::Header => {
            if name.is_empty() || !name.bytes().all(crate::http::parse::is_token_byte) {
                errors.push(ConfigError::new(
                    key,
                    format!("{s:?}: {name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"),
                ));
                return None;
            }
            name.to_ascii_lowercase().into_bytes().into()
        }
        SourceKind::Query => {
            if name.is_empty()
                || name
                    .bytes()
                    .any(|b| matches!(b, b'&' | b'=' | b'#' | b'?') || !b.is_ascii_graphic())
            {
                errors.push(ConfigError::new(
                    key,
                    format!("{s:?}: {name:?} is not a query parameter name: it must be non-empty, printable ASCII without spaces, '&', '=', '#' or '?' (names are matched as sent, not percent-decoded)"),
                ));
                return None;
            }
            name.as_bytes().into()
        }
    };
    Some(IdentitySource {
        label: s.to_string(),
        kind,
        name,
    })
}

/// Compiles `[authorizers.request]`. `key` is `authorizers[i].request`.
/// Always returns a plan; errors are pushed (and stop the config).
pub fn compile(
    raw: &RawRequestAuthorizer,
    name: &str,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> RequestAuthorizer {
    let url = match &raw.url {
        Some(u) => u.clone(),
        None => {
            errors.push(ConfigError::new(
                format!("{key}.url"),
                "is required: the authorizer service's http://host:port/path (or http://UPSTREAM/path)",
            ));
            String::new()
        }
    };
    let ttl_seconds = raw.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(0..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
        errors.push(ConfigError::new(
            format!("{key}.ttl_seconds"),
            format!("must be between 0 and {MAX_TTL_SECONDS} seconds (as in Amazon API Gateway; 0 turns caching off), not {ttl_seconds}"),
        ));
    }
    let ttl = Duration::from_secs(ttl_seconds.clamp(0, MAX_TTL_SECONDS) as u64);
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        errors.push(ConfigError::new(
            format!("{key}.timeout_ms"),
            format!("must be between 1 and {MAX_TIMEOUT_MS} (milliseconds), not {timeout_ms}"),
        ));
    }
    let timeout = Duration::from_millis(timeout_ms.clamp(1, MAX_TIMEOUT_MS));
    let max_entries = raw.cache_max_entries.unwrap_or(DEFAULT_CACHE_MAX_ENTRIES);
    if !(1..=MAX_CACHE_MAX_ENTRIES).contains(&max_entries) {
        errors.push(ConfigError::new(
            format!("{key}.cache_max_entries"),
            format!("must be between 1 and {MAX_CACHE_MAX_ENTRIES} (answers cached per shard), not {max_entries}; to turn caching off set ttl_seconds = 0"),
        ));
    }
    let mut sources = Vec::new();
    let raw_sources = raw.identity_sources.as_deref().unwrap_or(&[]);
    for (i, s) in raw_sources.iter().enumerate() {
        let skey = format!("{key}.identity_sources[{i}]");
        if let Some(src) = identity_source(s, &skey, errors) {
            if sources
                .iter()
                .any(|o: &IdentitySource| o.kind == src.kind && o.name == src.name)
            {
                errors.push(ConfigError::new(skey, format!("{s:?} is listed twice")));
            } else {
                sources.push(src);
            }
        }
    }
    if raw_sources.is_empty() && ttl_seconds != 0 {
        errors.push(ConfigError::new(
            format!("{key}.identity_sources"),
            "must list at least one source (\"header:NAME\" or \"query:NAME\") when answers are cached: the cache is keyed by them; with no sources set ttl_seconds = 0",
        ));
    }
    let mut context_headers = Vec::new();
    for (ctx, header) in raw.context_headers.iter().flatten() {
        let hkey = format!("{key}.context_headers.{ctx}");
        if ctx.is_empty() {
            errors.push(ConfigError::new(hkey, "the context key must not be empty"));
            continue;
        }
        if let Some(h) = header_name(header, &hkey, errors) {
            if context_headers.iter().any(|(_, o)| *o == h) {
                errors.push(ConfigError::new(
                    hkey,
                    format!("header {header:?} is already given to another context key"),
                ));
            } else {
                context_headers.push((ctx.clone(), h));
            }
        }
    }
    let principal_header = raw.principal_header.as_ref().and_then(|h| {
        let pkey = format!("{key}.principal_header");
        let lower = header_name(h, &pkey, errors)?;
        if context_headers.iter().any(|(_, o)| *o == lower) {
            errors.push(ConfigError::new(
                pkey,
                format!("header {h:?} is also a context header"),
            ));
            return None;
        }
        Some(lower)
    });
    RequestAuthorizer {
        name: name.to_string(),
        config_key: key.to_string(),
        url,
        upstream: 0,
        target: String::from("/"),
        sources,
        ttl,
        timeout,
        context_headers,
        principal_header,
        cache_max_entries: max_entries.clamp(1, MAX_CACHE_MAX_ENTRIES) as usize,
        cache_per_route: raw.cache_per_route.unwrap_or(false),
    }
}

// === impl ShardRequestAuth ===

/// A shard's decision caches, one per request authorizer with a TTL.
#[derive(Default)]
pub struct ShardRequestAuth {
    /// Indexed like the plan's authorizers.
    caches: Vec<Option<std::rc::Rc<DecisionCache>>>,
    /// Failed calls on this shard, and when one was last logged: a broken
    /// authorizer under load logs a line a second, not one per request.
    failures: std::cell::Cell<u64>,
    failure_logged: std::cell::Cell<Option<Instant>>,
}

/// At most one log line per shard this often for failed authorizer calls.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);

impl ShardRequestAuth {
    pub fn new(authorizers: &[AuthorizerPlan]) -> ShardRequestAuth {
        ShardRequestAuth {
            caches: authorizers
                .iter()
                .map(|a| {
                    #[allow(irrefutable_let_patterns)]
                    let AuthorizerKind::Request(r) = &a.kind
                    else {
                        return None;
                    };
                    (!r.ttl.is_zero())
                        .then(|| std::rc::Rc::new(DecisionCache::new(r.ttl, r.cache_max_entries)))
                })
                .collect(),
            failures: std::cell::Cell::new(0),
            failure_logged: std::cell::Cell::new(None),
        }
    }

    /// The caches for a reloaded plan's `authorizers`: `kept[i]` is the
    /// index, in the plan `self` was made for, of an authorizer with the
    /// same name and settings as `authorizers[i]`, whose cached answers
    /// stay; every other cache starts empty.
    pub fn carry(
        &self,
        authorizers: &[AuthorizerPlan],
        kept: &[Option<usize>],
    ) -> ShardRequestAuth {
        let mut fresh = ShardRequestAuth::new(authorizers);
        for (slot, before) in fresh.caches.iter_mut().zip(kept) {
            if let (Some(slot), Some(Some(old))) = (
                slot.as_mut(),
                before.map(|i| self.caches.get(i).cloned().flatten()),
            ) {
                *slot = old;
            }
        }
        fresh.failures.set(self.failures.get());
        fresh
    }

    /// Counts a failed call and logs it, at most once per
    /// [`FAILURE_LOG_EVERY`] (with the count so far); `why` is built only
    /// when a line is written.
    pub fn note_failure(&self, name: &str, why: impl FnOnce() -> String) {
        let n = self.failures.get() + 1;
        self.failures.set(n);
        let now = Instant::now();
        if self
            .failure_logged
            .get()
            .is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_EVERY)
        {
            self.failure_logged.set(Some(now));
            crate::log!(
                "warn",
                "request authorizer {name:?}: {}; answering 500 ({n} failed call(s) on this shard so far)",
                why()
            );
        }
    }

    /// The cache of authorizer `index`, if it caches.
    pub fn cache(&self, index: usize) -> Option<&DecisionCache> {
        self.caches.get(index).and_then(Option::as_deref)
    }
}

// === impl identity ===

/// The value of one identity source, or None when it is missing, empty or
/// not UTF-8 (all of which are 401). Several headers or parameters of the
/// name are joined with commas, as API Gateway does.
pub fn identity_value<'a>(src: &IdentitySource, view: &RequestView<'a>) -> Option<Cow<'a, str>> {
    let mut out: Option<Cow<'a, [u8]>> = None;
    let mut push = |v: Cow<'a, [u8]>| {
        if v.is_empty() {
            return;
        }
        out = Some(match out.take() {
            None => v,
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b',');
                joined.extend_from_slice(&v);
                Cow::Owned(joined)
            }
        });
    };
    match src.kind {
        SourceKind::Header => {
            for h in &view.head.headers {
                if h.name.get(view.buf).eq_ignore_ascii_case(&src.name) {
                    push(Cow::Borrowed(h.value.get(view.buf)));
                }
            }
        }
        SourceKind::Query => {
            let query = view.head.query.map(|q| q.get(view.buf)).unwrap_or(b"");
            for pair in query.split(|&b| b == b'&') {
                let (name, value) = match memchr::memchr(b'=', pair) {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &b""[..]),
                };
                if name == &src.name[..] {
                    push(percent_decode(value));
                }
            }
        }
    }
    match out? {
        Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
    }
}

/// The cache key of an identity: SHA-256 over the route (with
/// `cache_per_route`: its API's name and route key, [`AuthRule::route`],
/// which name the same route after a reload that moves it) and each
/// value, length-prefixed so that no two identities share a key by
/// concatenation. Only the digest is kept, so a cache entry is small
/// whatever the token's size, and tokens are not kept in memory by the
/// cache.
pub fn cache_key(az: &RequestAuthorizer, route: &str, identity: &[Cow<'_, str>]) -> Key {
    let mut h = Sha256::new();
    if az.cache_per_route {
        h.update((route.len() as u64).to_le_bytes());
        h.update(route.as_bytes());
    }
    for v in identity {
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().into()
}

// === impl check ===

fn refuse(status: u16) -> Decision {
    Decision::Respond(match status {
        401 => Refusal::json(401, "Unauthorized"),
        403 => Refusal::json(403, "Forbidden"),
        _ => Refusal::json(500, "Internal Server Error"),
    })
}

/// Applies an answer to the request: an allow records the principal (one
/// without a principal keeps the API key's, as a JWT without `sub` does)
/// and the context headers; a deny is 403.
pub fn apply(verdict: &Verdict, req: &mut RequestState) -> Decision {
    match verdict {
        Verdict::Allow(a) => {
            if let Some(p) = &a.principal {
                req.principal = Some(p.clone());
            }
            req.upstream_headers.extend_from_slice(&a.headers);
            Decision::Continue
        }
        Verdict::Deny => refuse(403),
    }
}

/// What the gateway needs to finish a request authorizer's check: the
/// identity (owned, since the call outlives the head's borrow) and the key
/// its answer is cached under.
pub struct Call {
    /// Index into the plan's authorizers.
    pub authorizer: usize,
    pub route: usize,
    /// None when the authorizer does not cache.
    pub key: Option<Key>,
    /// One value per identity source, in config order.
    pub identity: Vec<String>,
}

impl fmt::Debug for Call {
    // The identity holds credentials: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("authorizer", &self.authorizer)
            .field("route", &self.route)
            .field(
                "identity",
                &format_args!("[{} redacted]", self.identity.len()),
            )
            .finish()
    }
}

/// The synchronous half: 401 for a missing identity source, the cached
/// answer if there is one, else [`Decision::Authorize`].
pub fn check(
    az: &RequestAuthorizer,
    rule: &AuthRule,
    shard: &ShardRequestAuth,
    view: &RequestView<'_>,
    req: &mut RequestState,
) -> Decision {
    let Some(route) = view.route else {
        // Authorizers run on routed requests only; refuse rather than allow.
        return refuse(500);
    };
    let mut identity: SmallVec<[Cow<'_, str>; 2]> = SmallVec::new();
    for src in &az.sources {
        match identity_value(src, view) {
            Some(v) => identity.push(v),
            None => return refuse(401),
        }
    }
    let index = rule.authorizer;
    let cache = shard.cache(index);
    let key = cache.map(|_| cache_key(az, &rule.route, &identity));
    if let (Some(cache), Some(key)) = (cache, &key) {
        if let Some(v) = cache.get(key, view.now) {
            return apply(&v, req);
        }
    }
    Decision::Authorize(Box::new(Call {
        authorizer: index,
        route,
        key,
        identity: identity.into_iter().map(Cow::into_owned).collect(),
    }))
}

#[cfg(test)]
mod tests;
