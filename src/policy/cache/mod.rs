//! The response cache: its rule, keys and the shard's store. Only proxied
//! routes are cached.
//!
//! After every other phase lets a request through (so IP rules and
//! throttling apply to hits as well), the gateway's driver hands a proxied
//! request on a route with a [`CacheRule`] to the cache phase
//! (`gateway::cache::proxy_cached`), which wraps the integration:
//!
//! ```text
//! lookup ─ hit ──────────────────────────────▶ answer from the entry (X-Cache: Hit)
//!    │
//!    └ miss ─ a fill in flight for the key? ─ yes ─ wait ─▶ hit, or forward itself
//!                │ no
//!                ▼
//!         forward with a Capture (X-Cache: Miss) ─▶ store if cacheable ─▶ wake waiters
//! ```
//!
//! Each shard has its own [`ShardCache`]: an LRU within a byte budget
//! ([`lru`]), plus the fills in flight. Everything is `Rc`/`RefCell`/`Cell`
//! on one executor; nothing is shared between shards. docs/cache.md
//! describes every key, the cache key format, coalescing and eviction.

pub mod lru;

use crate::config::ConfigError;
use crate::http::method::{Method, NAMED_METHODS};
use crate::http::parse::RequestHead;
use crate::http::percent::percent_decode;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// Amazon API Gateway's default cache TTL.
pub const DEFAULT_TTL_SECONDS: i64 = 300;
/// Amazon API Gateway's largest cache TTL.
pub const MAX_TTL_SECONDS: i64 = 3600;
/// Responses with a larger body are not cached.
pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: i64 = 1024 * 1024;
/// The byte budget of each shard's cache.
pub const DEFAULT_MAX_BYTES_PER_SHARD: i64 = 64 * 1024 * 1024;
pub const DEFAULT_METHODS: [&str; 2] = ["GET", "HEAD"];
pub const DEFAULT_CACHEABLE_STATUSES: [u16; 1] = [200];
/// Bytes counted for each entry on top of its key, headers and body: the
/// entry's bookkeeping (slab node, map slot, reference counts, boxes),
/// rounded up, so that many tiny entries cannot hold far more memory than
/// the budget says.
pub const ENTRY_OVERHEAD_BYTES: usize = 160;

// === impl raw config ===

// === impl compiled rule ===

/// Who may invalidate an entry with `Cache-Control: max-age=0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The header is ignored; the cache answers.
    Deny,
    /// Any client may.
    Allow,
    /// Only requests authenticated by one of these API keys (names).
    Keys(Vec<String>),
}

/// The compiled cache settings of one route.
#[derive(Debug, Clone)]
pub struct CacheRule {
    pub ttl: Duration,
    /// Bit `Method::slot()` set for each cached method.
    methods: u8,
    /// Raw (not percent-decoded) names, sorted and deduplicated.
    pub key_query_parameters: Vec<Box<[u8]>>,
    /// Lower-cased names, sorted and deduplicated.
    pub key_headers: Vec<Box<[u8]>>,
    pub max_response_body_bytes: usize,
    /// Sorted.
    pub cacheable_statuses: Vec<u16>,
    pub invalidation: Invalidation,
    pub ignore_backend_no_store: bool,
    /// Starts every key of this rule: a digest of the route's name and of
    /// every setting its responses depend on (integration, upstream
    /// targets, this rule), set when the plan is compiled. A reloaded plan
    /// keeps the shard's cache, and this is what makes a changed route
    /// miss the entries of its old settings, while an unchanged one still
    /// hits them.
    pub scope: u64,
}

impl CacheRule {
    /// Whether responses to `method` are cached by this rule.
    pub fn caches_method(&self, method: Method) -> bool {
        self.methods & (1 << method.slot()) != 0
    }

    pub fn caches_status(&self, status: u16) -> bool {
        self.cacheable_statuses.binary_search(&status).is_ok()
    }

    /// True when the request asks to invalidate (`Cache-Control: max-age=0`)
    /// and is allowed to. `api_key` is the name of the key that
    /// authenticated the request, if one did.
    pub fn may_invalidate(&self, buf: &[u8], head: &RequestHead, api_key: Option<&str>) -> bool {
        match &self.invalidation {
            Invalidation::Deny => false,
            Invalidation::Allow => asks_max_age_zero(buf, head),
            Invalidation::Keys(names) => {
                api_key.is_some_and(|k| names.iter().any(|n| n == k))
                    && asks_max_age_zero(buf, head)
            }
        }
    }

    /// Writes the cache key of a request into `out` (cleared first):
    ///
    /// ```text
    /// METHOD \n host \n path \n param=value&param=value \n name: value \n name: value ...
    /// ```
    ///
    /// The host is lower-cased; the path is as received. Only the configured
    /// query parameters (raw, in the order of the config's sorted names, each
    /// name's occurrences in request order, a name matched percent-decoded) and headers (sorted names, each
    /// name's values in request order) are included; an absent one adds
    /// nothing. No component can contain `\n` (the parser rejects CR, LF and
    /// NUL in targets and header values), so distinct requests never share a
    /// key by concatenation.
    pub fn write_key(&self, out: &mut Vec<u8>, buf: &[u8], head: &RequestHead) {
        self.write_key_as(out, head.method_span.get(buf), buf, head);
    }

    /// [`Self::write_key`] with another method (a HEAD request looks up the
    /// GET entry too).
    pub fn write_key_as(&self, out: &mut Vec<u8>, method: &[u8], buf: &[u8], head: &RequestHead) {
        out.clear();
        out.extend_from_slice(&self.scope.to_le_bytes());
        out.extend_from_slice(method);
        out.push(b'\n');
        if let Some(h) = head.host {
            out.extend(h.get(buf).iter().map(|b| b.to_ascii_lowercase()));
        }
        out.push(b'\n');
        out.extend_from_slice(head.path(buf));
        out.push(b'\n');
        if !self.key_query_parameters.is_empty() {
            let query = head.query.map(|q| q.get(buf)).unwrap_or(b"");
            let mut first = true;
            for name in &self.key_query_parameters {
                for pair in query.split(|&b| b == b'&') {
                    let pname = match memchr::memchr(b'=', pair) {
                        Some(i) => &pair[..i],
                        None => pair,
                    };
                    // Decoded, as the backend reads it: `%70age=2` is a
                    // `page`, and must not share the key of a request
                    // without one.
                    if percent_decode(pname)[..] == name[..] {
                        if !first {
                            out.push(b'&');
                        }
                        first = false;
                        out.extend_from_slice(pair);
                    }
                }
            }
        }
        for name in &self.key_headers {
            for h in &head.headers {
                if h.name.get(buf).eq_ignore_ascii_case(name) {
                    out.push(b'\n');
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value.get(buf));
                }
            }
        }
    }
}

/// `Cache-Control: max-age=0` among the request's cache directives.
fn asks_max_age_zero(buf: &[u8], head: &RequestHead) -> bool {
    head.headers
        .iter()
        .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"cache-control"))
        .any(|h| {
            directives(h.value.get(buf)).any(|d| {
                d.len() > 8
                    && d[..8].eq_ignore_ascii_case(b"max-age=")
                    && d[8..].iter().all(|&b| b == b'0' || b == b'"')
                    && d[8..].contains(&b'0')
            })
        })
}

/// The comma-separated directives of a `Cache-Control` value, trimmed.
fn directives(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|d| d.trim_ascii())
}

/// Whether stored response header lines say `Cache-Control: no-store` or
/// `private` (a bare `private` or `private="field"`).
pub fn forbids_storing(headers: &[u8]) -> bool {
    header_lines(headers)
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"cache-control"))
        .any(|(_, v)| {
            directives(v).any(|d| {
                let name = match memchr::memchr(b'=', d) {
                    Some(i) => &d[..i],
                    None => d,
                };
                let name = name.trim_ascii();
                name.eq_ignore_ascii_case(b"no-store") || name.eq_ignore_ascii_case(b"private")
            })
        })
}

/// `(name, value)` of each `name: value\r\n` line.
pub fn header_lines(headers: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let i = memchr::memchr(b':', line)?;
        Some((&line[..i], line[i + 1..].trim_ascii()))
    })
}

// === impl compile ===

/// Pushes an error unless the same one is already listed: an API's cache
/// table is compiled with each of its routes, and its errors should show once.
fn push_once(errors: &mut Vec<ConfigError>, key: String, message: String) {
    if !errors.iter().any(|e| e.key == key && e.message == message) {
        errors.push(ConfigError::new(key, message));
    }
}

/// `apis[0]` from `apis[0].routes[3]`.
fn api_key(route_key: &str) -> &str {
    match route_key.rfind(".routes[") {
        Some(i) => &route_key[..i],
        None => route_key,
    }
}

/// Compiles the rule of one route from its API's table and its own (the
/// route's keys win). None when neither has a table, `enabled` is false, or
/// `ttl_seconds` is 0.
pub fn compile_rule(
    api: Option<&RawCacheRule>,
    route: Option<&RawCacheRule>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<CacheRule> {
    if api.is_none() && route.is_none() {
        return None;
    }
    let akey = format!("{}.cache", api_key(key));
    let rkey = format!("{key}.cache");
    // Validate both tables fully, whichever wins, so a mistake in the API's
    // table is reported even where every route overrides it.
    let api_v = api.map(|a| Validated::of(a, &akey, errors));
    let route_v = route.map(|r| Validated::of(r, &rkey, errors));
    // The route's value of a key if it sets it, else the API's.
    macro_rules! merged {
        ($field:ident) => {
            route_v
                .as_ref()
                .and_then(|v| v.$field.clone())
                .or_else(|| api_v.as_ref().and_then(|v| v.$field.clone()))
        };
    }
    let enabled = merged!(enabled).unwrap_or(true);
    let ttl = merged!(ttl).unwrap_or(Duration::from_secs(DEFAULT_TTL_SECONDS as u64));
    let methods =
        merged!(methods).unwrap_or((1 << Method::Get.slot()) | (1 << Method::Head.slot()));
    let max_body = merged!(max_body).unwrap_or(DEFAULT_MAX_RESPONSE_BODY_BYTES as usize);
    // The switch and the key list merge separately: a route that only
    // turns the switch on keeps its API's key list.
    let invalidation = match (merged!(allow_invalidation), merged!(invalidation_keys)) {
        (Some(true), Some(keys)) => Invalidation::Keys(keys),
        (Some(true), None) => Invalidation::Allow,
        (_, Some(_)) => {
            errors.push(ConfigError::new(
                format!("{rkey}.invalidation_keys"),
                "needs allow_client_invalidation = true (on the route or its API)",
            ));
            Invalidation::Deny
        }
        _ => Invalidation::Deny,
    };
    let ignore_no_store = merged!(ignore_no_store).unwrap_or(false);
    let query = merged!(query).unwrap_or_default();
    let headers = merged!(headers).unwrap_or_default();
    let statuses = merged!(statuses).unwrap_or_else(|| DEFAULT_CACHEABLE_STATUSES.to_vec());
    if !enabled || ttl.is_zero() {
        return None;
    }
    Some(CacheRule {
        ttl,
        methods,
        key_query_parameters: query,
        key_headers: headers,
        max_response_body_bytes: max_body,
        cacheable_statuses: statuses,
        invalidation,
        ignore_backend_no_store: ignore_no_store,
        scope: 0,
    })
}

/// One table's keys, checked; a key with an error is left unset.
#[derive(Default)]
struct Validated {
    enabled: Option<bool>,
    ttl: Option<Duration>,
    methods: Option<u8>,
    query: Option<Vec<Box<[u8]>>>,
    headers: Option<Vec<Box<[u8]>>>,
    max_body: Option<usize>,
    statuses: Option<Vec<u16>>,
    allow_invalidation: Option<bool>,
    invalidation_keys: Option<Vec<String>>,
    ignore_no_store: Option<bool>,
}

impl Validated {
    fn of(raw: &RawCacheRule, key: &str, errors: &mut Vec<ConfigError>) -> Validated {
        let mut v = Validated {
            enabled: raw.enabled,
            ignore_no_store: raw.ignore_backend_no_store,
            allow_invalidation: raw.allow_client_invalidation,
            ..Validated::default()
        };
        if let Some(names) = &raw.invalidation_keys {
            if names.is_empty() {
                errors.push(ConfigError::new(
                    format!("{key}.invalidation_keys"),
                    "must name at least one API key; leave it out to let any client invalidate",
                ));
            } else {
                v.invalidation_keys = Some(names.clone());
            }
        }
        if let Some(t) = raw.ttl_seconds {
            if (0..=MAX_TTL_SECONDS).contains(&t) {
                v.ttl = Some(Duration::from_secs(t as u64));
            } else {
                push_once(
                    errors,
                    format!("{key}.ttl_seconds"),
                    format!("must be between 0 and {MAX_TTL_SECONDS} seconds (as in Amazon API Gateway; 0 turns caching off), not {t}"),
                );
            }
        }
        if let Some(ms) = &raw.methods {
            let mut bits = 0u8;
            let mut ok = true;
            if ms.is_empty() {
                ok = false;
                push_once(
                    errors,
                    format!("{key}.methods"),
                    "must name at least one method; to turn caching off set enabled = false".into(),
                );
            }
            for (i, m) in ms.iter().enumerate() {
                match NAMED_METHODS.iter().find(|n| n.as_str() == m) {
                    Some(n) => bits |= 1 << n.slot(),
                    None => {
                        ok = false;
                        push_once(
                            errors,
                            format!("{key}.methods[{i}]"),
                            format!("{m:?} is not a method the cache can take; use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS (upper case)"),
                        );
                    }
                }
            }
            if ok {
                v.methods = Some(bits);
            }
        }
        if let Some(qs) = &raw.key_query_parameters {
            let mut names = Vec::new();
            for (i, q) in qs.iter().enumerate() {
                let bad = q.is_empty()
                    || q.bytes()
                        .any(|b| matches!(b, b'&' | b'=' | b'#' | b'?') || !b.is_ascii_graphic());
                if bad {
                    push_once(
                        errors,
                        format!("{key}.key_query_parameters[{i}]"),
                        format!("{q:?} is not a query parameter name: it must be non-empty, printable ASCII without spaces, '&', '=', '#' or '?' (names are matched percent-decoded, as a backend reads them)"),
                    );
                } else {
                    // Compared decoded with the request's names decoded.
                    names.push(percent_decode(q.as_bytes()).into_owned().into_boxed_slice());
                }
            }
            names.sort();
            names.dedup();
            v.query = Some(names);
        }
        if let Some(hs) = &raw.key_headers {
            let mut names = Vec::new();
            for (i, h) in hs.iter().enumerate() {
                if h.is_empty() || !h.bytes().all(is_tchar) {
                    push_once(
                        errors,
                        format!("{key}.key_headers[{i}]"),
                        format!("{h:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"),
                    );
                } else {
                    names.push(Box::from(h.to_ascii_lowercase().as_bytes()));
                }
            }
            names.sort();
            names.dedup();
            v.headers = Some(names);
        }
        if let Some(n) = raw.max_response_body_bytes {
            if n >= 1 {
                v.max_body = Some(usize::try_from(n).unwrap_or(usize::MAX));
            } else {
                push_once(
                    errors,
                    format!("{key}.max_response_body_bytes"),
                    format!("must be at least 1 (bytes of response body; larger responses are not cached), not {n}"),
                );
            }
        }
        if let Some(ss) = &raw.cacheable_statuses {
            let mut out = Vec::new();
            if ss.is_empty() {
                push_once(
                    errors,
                    format!("{key}.cacheable_statuses"),
                    "must list at least one status; to turn caching off set enabled = false".into(),
                );
            }
            for (i, &s) in ss.iter().enumerate() {
                if (200..=599).contains(&s) {
                    out.push(s as u16);
                } else {
                    push_once(
                        errors,
                        format!("{key}.cacheable_statuses[{i}]"),
                        format!("{s} is not a final status code (200 to 599)"),
                    );
                }
            }
            out.sort_unstable();
            out.dedup();
            if !out.is_empty() {
                v.statuses = Some(out);
            }
        }
        v
    }
}

pub use crate::config::raw::cache::{RawCacheRule, RawCacheSettings};
use crate::http::parse::is_token_byte as is_tchar;

/// Compiled `[server.cache]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes_per_shard: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes_per_shard: DEFAULT_MAX_BYTES_PER_SHARD as usize,
        }
    }
}

pub fn compile_settings(
    settings: Option<&RawCacheSettings>,
    errors: &mut Vec<ConfigError>,
) -> CacheSettings {
    let mut out = CacheSettings::default();
    if let Some(n) = settings.and_then(|s| s.max_bytes_per_shard) {
        if n >= 1 {
            out.max_bytes_per_shard = usize::try_from(n).unwrap_or(usize::MAX);
        } else {
            errors.push(ConfigError::new(
                "server.cache.max_bytes_per_shard",
                format!("must be at least 1 (bytes per shard); not {n}"),
            ));
        }
    }
    out
}

// === impl ShardCache ===

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    pub status: u16,
    /// Header lines (`name: value\r\n`) as the backend sent them, minus
    /// hop-by-hop, framing, `date` and `x-request-id`.
    pub headers: Box<[u8]>,
    pub body: Box<[u8]>,
    /// The Content-Length to send (the body's length, or for a HEAD
    /// response the length the backend declared).
    pub content_length: u64,
    pub stored: Instant,
    pub expires: Instant,
}

/// Bytes an entry counts against the budget.
pub fn entry_size(key_len: usize, headers_len: usize, body_len: usize) -> usize {
    key_len
        .saturating_add(headers_len)
        .saturating_add(body_len)
        .saturating_add(ENTRY_OVERHEAD_BYTES)
}

/// A fill in flight: the one backend request for a key that other misses
/// for the same key wait for.
#[derive(Default)]
pub struct Fill {
    done: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Fill {
    /// Resolves when the fill is over (stored or not).
    pub fn wait(self: &Rc<Self>) -> FillWait {
        FillWait { fill: self.clone() }
    }

    fn finish(&self) {
        self.done.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// The future of [`Fill::wait`].
pub struct FillWait {
    fill: Rc<Fill>,
}

impl std::future::Future for FillWait {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.fill.done.get() {
            return std::task::Poll::Ready(());
        }
        let mut wakers = self.fill.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    }
}

/// Ends a fill when dropped (also when the filling request's task is
/// dropped midway): removes it from the shard's in-flight map and wakes its
/// waiters, who then look the key up again.
pub struct FillGuard<'a> {
    cache: &'a ShardCache,
    key: Rc<[u8]>,
    fill: Rc<Fill>,
}

impl FillGuard<'_> {
    pub fn key(&self) -> &Rc<[u8]> {
        &self.key
    }
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = self.cache.inflight.borrow_mut();
        if inflight
            .get(&self.key)
            .is_some_and(|f| Rc::ptr_eq(f, &self.fill))
        {
            inflight.remove(&self.key);
        }
        drop(inflight);
        self.fill.finish();
    }
}

/// What [`ShardCache::store`] did with a captured response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// Larger than the whole shard budget.
    TooLarge,
}

/// A shard's cache.
pub struct ShardCache {
    lru: RefCell<lru::Lru<Rc<Entry>>>,
    inflight: RefCell<HashMap<Rc<[u8]>, Rc<Fill>, ahash::RandomState>>,
}

impl ShardCache {
    pub fn new(settings: &CacheSettings) -> ShardCache {
        ShardCache {
            lru: RefCell::new(lru::Lru::new(settings.max_bytes_per_shard)),
            inflight: RefCell::new(HashMap::default()),
        }
    }

    /// The live entry for `key` (marked most recently used); an expired one
    /// is dropped and reported as a miss.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<Rc<Entry>> {
        let mut lru = self.lru.borrow_mut();
        let expired = now >= lru.peek(key)?.expires;
        if expired {
            lru.remove(key);
            return None;
        }
        lru.get(key).cloned()
    }

    pub fn remove(&self, key: &[u8]) {
        self.lru.borrow_mut().remove(key);
    }

    /// Stores an entry, evicting least recently used ones to stay within
    /// the budget.
    pub fn store(&self, key: Rc<[u8]>, entry: Entry) -> Stored {
        let size = entry_size(key.len(), entry.headers.len(), entry.body.len());
        match self.lru.borrow_mut().insert(key, Rc::new(entry), size) {
            lru::Inserted::Stored { .. } => Stored::Yes,
            lru::Inserted::TooLarge => Stored::TooLarge,
        }
    }

    /// The fill in flight for `key`, if any.
    pub fn fill_in_flight(&self, key: &[u8]) -> Option<Rc<Fill>> {
        self.inflight.borrow().get(key).cloned()
    }

    /// Registers this request as the one filling `key`; None when another
    /// fill for it is already in flight.
    pub fn begin_fill(&self, key: Rc<[u8]>) -> Option<FillGuard<'_>> {
        let mut inflight = self.inflight.borrow_mut();
        if inflight.contains_key(&key) {
            return None;
        }
        let fill = Rc::new(Fill::default());
        inflight.insert(key.clone(), fill.clone());
        Some(FillGuard {
            cache: self,
            key,
            fill,
        })
    }

    /// Bytes held and the budget.
    pub fn usage(&self) -> (usize, usize) {
        let lru = self.lru.borrow();
        (lru.used(), lru.budget())
    }

    pub fn len(&self) -> usize {
        self.lru.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
