//! JWT authorizer (API Gateway's JWT authorizer, Cognito): part of the
//! authorization phase ([`super::auth`]), after the API key check and before
//! throttling.
//!
//! A route whose authorizer is `[authorizers.jwt]` takes a request only with
//! a token in `Authorization` (`Bearer <jwt>`, or the bare token as API
//! Gateway also takes it) that is signed by a key of the authorizer's JWKS
//! with an allowed algorithm, not expired, already valid, from the
//! configured issuer and for a configured audience: else 401
//! `{"message":"Unauthorized"}`. A valid token without every scope the route
//! requires is 403 `{"message":"Forbidden"}`. On success the token's `sub`
//! becomes the principal and the configured claims become headers for the
//! backend (a client-sent header of those names is dropped).
//!
//! The request path only decodes, parses and verifies ([`verify`]): keys
//! are parsed when loaded ([`jwks`]), and a JWKS URL is fetched by a thread
//! of its own ([`fetch`]) that hands every shard new key sets over crossbeam
//! channels. A token with an unknown `kid` is refused at once and asks that
//! thread for a (rate-limited) refresh; no request ever waits on a fetch.
//!
//! docs/jwt.md describes every key, default and answer.

pub mod fetch;
pub mod jwks;
pub mod verify;

#[cfg(test)]
mod tests;

use super::{Decision, Refusal, RequestState, RequestView};
pub use crate::config::raw::jwt::RawJwt;
use crate::config::ConfigError;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use fetch::ToFetcher;
use jwks::{KeySet, Origin};
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verify::{Alg, AlgSet, Reject, Rules};

pub const DEFAULT_LEEWAY_S: u64 = 60;
pub const MAX_LEEWAY_S: u64 = 3600;
pub const DEFAULT_REFRESH_INTERVAL_S: u64 = 300;
pub const MAX_REFRESH_INTERVAL_S: u64 = 7 * 24 * 3600;
pub const DEFAULT_UNKNOWN_KID_REFRESH_MIN_INTERVAL_S: u64 = 30;
pub const MAX_UNKNOWN_KID_REFRESH_MIN_INTERVAL_S: u64 = 24 * 3600;
pub const DEFAULT_FETCH_TIMEOUT_MS: u64 = 5_000;
pub const MIN_FETCH_TIMEOUT_MS: u64 = 100;
/// Start-up waits for the first fetch at most this long plus a second.
pub const MAX_FETCH_TIMEOUT_MS: u64 = 10_000;
/// The longest a shard's updater waits between looks for new key sets;
/// the fetcher wakes it sooner when it sends one.
pub const KEYS_WAIT: Duration = Duration::from_secs(10);
/// A shard asks the fetcher for an unknown-kid refresh at most this often
/// (the fetcher's own limit is `unknown_kid_refresh_min_interval_s`); this
/// keeps a flood of bad kids off the channel.
pub const SHARD_ASK_INTERVAL: Duration = Duration::from_secs(1);

/// Header names `claims_to_headers` may not use: the gateway or HTTP itself
/// owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
    "x-api-key",
];

// === impl config ===

/// A compiled JWT authorizer; cheap to clone (one `Arc`), immutable.
#[derive(Clone)]
pub struct JwtAuthorizer(Arc<Inner>);

struct Inner {
    issuer: String,
    audience: Vec<String>,
    algorithms: AlgSet,
    leeway: f64,
    /// (lowercase header name, claim name)
    claims_to_headers: Vec<(String, String)>,
    /// `token_query`: the query parameter a token may come in.
    token_query: Option<Vec<u8>>,
    source: Source,
}

enum Source {
    /// Keys loaded at start-up (and by `coregate check`), never changed.
    File(Arc<KeySet>),
    /// Boxed: built once, and much larger than a file's `Arc`.
    Url(Box<UrlSource>),
}

struct UrlSource {
    fetch: fetch::FetchConfig,
    /// Shards' end of the fetcher's inbox.
    to_fetcher: Sender<ToFetcher>,
    /// The fetcher's end, taken by the thread when the first shard starts.
    from_shards: Receiver<ToFetcher>,
    started: AtomicBool,
}

impl JwtAuthorizer {
    /// Whether its key set is fetched from a JWKS URL (rather than read
    /// from a file when the config is compiled).
    pub fn is_fetched(&self) -> bool {
        matches!(self.0.source, Source::Url(_))
    }
}

impl std::fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.0.source {
            Source::File(k) => format!("file ({} keys)", k.len()),
            Source::Url(u) => format!("url {:?}", u.fetch.url),
        };
        f.debug_struct("JwtAuthorizer")
            .field("issuer", &self.0.issuer)
            .field("audience", &self.0.audience)
            .field("algorithms", &self.0.algorithms)
            .field("leeway", &self.0.leeway)
            .field("claims_to_headers", &self.0.claims_to_headers)
            .field("source", &source)
            .finish()
    }
}

fn resolve(base_dir: Option<&Path>, p: &str) -> std::path::PathBuf {
    let path = Path::new(p);
    match base_dir {
        Some(d) if path.is_relative() => d.join(path),
        _ => path.to_path_buf(),
    }
}

/// A bounded integer setting with its default.
fn bounded(
    v: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    key: String,
    unit: &str,
    errors: &mut Vec<ConfigError>,
) -> u64 {
    match v {
        None => default,
        Some(x) if range.contains(&x) => x,
        Some(x) => {
            errors.push(ConfigError::new(
                key,
                format!(
                    "{x} is out of range: give {unit} from {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
            default
        }
    }
}

fn valid_header_name(n: &str) -> bool {
    crate::http::parse::is_token(n.as_bytes())
}

/// Compiles `[authorizers.jwt]` of the authorizer `name`; `key` is
/// `authorizers[i].jwt`. A JWKS file is read and parsed here, so
/// `coregate check` reports a bad one.
pub fn compile(
    raw: &RawJwt,
    name: &str,
    key: &str,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<JwtAuthorizer> {
    let before = errors.len();
    let issuer = match raw.issuer.as_deref() {
        Some(i) if !i.is_empty() => i.to_string(),
        Some(_) => {
            errors.push(ConfigError::new(
                format!("{key}.issuer"),
                "must not be empty",
            ));
            String::new()
        }
        None => {
            errors.push(ConfigError::new(
                format!("{key}.issuer"),
                "is required: the exact `iss` of accepted tokens, e.g. \"https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbC123\"",
            ));
            String::new()
        }
    };
    let audience = match &raw.audience {
        Some(a) if !a.is_empty() && a.iter().all(|s| !s.is_empty()) => a.clone(),
        Some(_) => {
            errors.push(ConfigError::new(
                format!("{key}.audience"),
                "must list at least one non-empty audience (an `aud`, or a Cognito app client id)",
            ));
            Vec::new()
        }
        None => {
            errors.push(ConfigError::new(
                format!("{key}.audience"),
                "is required: the accepted `aud` values (or Cognito app client ids), e.g. [\"my-api\"]",
            ));
            Vec::new()
        }
    };
    let mut algorithms = AlgSet::default();
    match &raw.algorithms {
        None => algorithms = AlgSet::all(),
        Some(list) => {
            for (i, a) in list.iter().enumerate() {
                match Alg::from_name(a) {
                    Some(alg) => algorithms.insert(alg),
                    None => errors.push(ConfigError::new(
                        format!("{key}.algorithms[{i}]"),
                        format!("{a:?} is not supported: use RS256, ES256, HS256 or EdDSA (\"none\" never is)"),
                    )),
                }
            }
            if list.is_empty() {
                errors.push(ConfigError::new(
                    format!("{key}.algorithms"),
                    "must list at least one of RS256, ES256, HS256, EdDSA (or be left out for all four)",
                ));
            }
        }
    }
    let leeway = bounded(
        raw.leeway_s,
        DEFAULT_LEEWAY_S,
        0..=MAX_LEEWAY_S,
        format!("{key}.leeway_s"),
        "seconds",
        errors,
    );
    let mut claims_to_headers = Vec::new();
    for (name, claim) in raw.claims_to_headers.iter().flatten() {
        let lower = name.to_ascii_lowercase();
        let hkey = format!("{key}.claims_to_headers.{name}");
        if !valid_header_name(name) {
            errors.push(ConfigError::new(
                hkey,
                "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)",
            ));
        } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
            errors.push(ConfigError::new(
                hkey,
                "is a header the gateway or HTTP itself sets; choose another name, e.g. x-user-sub",
            ));
        } else if claims_to_headers.iter().any(|(n, _)| *n == lower) {
            errors.push(ConfigError::new(
                hkey,
                "is listed twice (header names are case-insensitive)",
            ));
        } else if claim.is_empty() {
            errors.push(ConfigError::new(hkey, "names an empty claim"));
        } else {
            claims_to_headers.push((lower, claim.clone()));
        }
    }
    claims_to_headers.sort();
    if let Some(q) = &raw.token_query {
        if q.is_empty()
            || !q
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            errors.push(ConfigError::new(
                format!("{key}.token_query"),
                format!("{q:?} is not a query parameter name (letters, digits, '_', '-', '.')"),
            ));
        }
    }

    let source = match (&raw.jwks_file, &raw.jwks_url) {
        (Some(_), Some(_)) | (None, None) => {
            errors.push(ConfigError::new(
                key,
                "needs exactly one of jwks_file (a JWKS file) and jwks_url (an http:// or https:// JWKS URL)",
            ));
            None
        }
        (Some(file), None) => {
            for (set, name) in [
                (raw.refresh_interval_s.is_some(), "refresh_interval_s"),
                (
                    raw.unknown_kid_refresh_min_interval_s.is_some(),
                    "unknown_kid_refresh_min_interval_s",
                ),
                (raw.fetch_timeout_ms.is_some(), "fetch_timeout_ms"),
                (raw.jwks_ca_file.is_some(), "jwks_ca_file"),
            ] {
                if set {
                    errors.push(ConfigError::new(
                        format!("{key}.{name}"),
                        "applies only to jwks_url; a jwks_file is read once at start-up",
                    ));
                }
            }
            load_file(file, &format!("{key}.jwks_file"), base_dir, errors).map(Source::File)
        }
        (None, Some(url)) => {
            compile_url(raw, name, url, key, base_dir, errors).map(|u| Source::Url(Box::new(u)))
        }
    };
    if errors.len() > before {
        return None;
    }
    Some(JwtAuthorizer(Arc::new(Inner {
        issuer,
        audience,
        algorithms,
        leeway: leeway as f64,
        claims_to_headers,
        token_query: raw.token_query.as_ref().map(|q| q.as_bytes().to_vec()),
        source: source?,
    })))
}

fn load_file(
    file: &str,
    key: &str,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<KeySet>> {
    let path = resolve(base_dir, file);
    let text = match crate::config::read_file(&path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::new(
                key,
                format!("cannot read {}: {e}", path.display()),
            ));
            return None;
        }
    };
    match jwks::parse(&text, Origin::File) {
        Err(e) => {
            errors.push(ConfigError::new(key, format!("{}: {e}", path.display())));
            None
        }
        Ok((_, report)) if !report.malformed.is_empty() => {
            errors.push(ConfigError::new(
                key,
                format!("{}: {}", path.display(), report.malformed.join("; ")),
            ));
            None
        }
        Ok((set, _)) if set.is_empty() => {
            errors.push(ConfigError::new(
                key,
                format!(
                    "{}: no usable key (RSA for RS256, EC P-256 for ES256, OKP Ed25519 for EdDSA, oct for HS256)",
                    path.display()
                ),
            ));
            None
        }
        Ok((set, _)) => Some(Arc::new(set)),
    }
}

fn compile_url(
    raw: &RawJwt,
    name: &str,
    url: &str,
    key: &str,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<UrlSource> {
    let parsed = fetch::parse_url(url)
        .map_err(|e| errors.push(ConfigError::new(format!("{key}.jwks_url"), e)))
        .ok();
    let refresh = bounded(
        raw.refresh_interval_s,
        DEFAULT_REFRESH_INTERVAL_S,
        1..=MAX_REFRESH_INTERVAL_S,
        format!("{key}.refresh_interval_s"),
        "seconds",
        errors,
    );
    let min_interval = bounded(
        raw.unknown_kid_refresh_min_interval_s,
        DEFAULT_UNKNOWN_KID_REFRESH_MIN_INTERVAL_S,
        1..=MAX_UNKNOWN_KID_REFRESH_MIN_INTERVAL_S,
        format!("{key}.unknown_kid_refresh_min_interval_s"),
        "seconds",
        errors,
    );
    let timeout = bounded(
        raw.fetch_timeout_ms,
        DEFAULT_FETCH_TIMEOUT_MS,
        MIN_FETCH_TIMEOUT_MS..=MAX_FETCH_TIMEOUT_MS,
        format!("{key}.fetch_timeout_ms"),
        "milliseconds",
        errors,
    );
    let ca = match &raw.jwks_ca_file {
        None => None,
        Some(_) if parsed.as_ref().is_some_and(|u| !u.https) => {
            errors.push(ConfigError::new(
                format!("{key}.jwks_ca_file"),
                "applies only to an https:// jwks_url",
            ));
            None
        }
        Some(f) => {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let path = resolve(base_dir, f);
            let certs: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_file_iter(&path).and_then(|it| it.collect());
            match certs {
                Ok(c) if !c.is_empty() => Some(c),
                Ok(_) => {
                    errors.push(ConfigError::new(
                        format!("{key}.jwks_ca_file"),
                        format!("{}: no PEM certificate in it", path.display()),
                    ));
                    None
                }
                Err(e) => {
                    errors.push(ConfigError::new(
                        format!("{key}.jwks_ca_file"),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    None
                }
            }
        }
    };
    let (to_fetcher, from_shards) = crossbeam_channel::unbounded();
    Some(UrlSource {
        fetch: fetch::FetchConfig {
            name: name.to_string(),
            url: parsed?,
            timeout: Duration::from_millis(timeout),
            refresh: Duration::from_secs(refresh),
            min_interval: Duration::from_secs(min_interval),
            ca,
        },
        to_fetcher,
        from_shards,
        started: AtomicBool::new(false),
    })
}

impl JwtAuthorizer {
    /// Header names (lowercase) this authorizer sends to the backend.
    pub fn header_names(&self) -> Vec<String> {
        self.0
            .claims_to_headers
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            issuer: &self.0.issuer,
            audience: &self.0.audience,
            algorithms: self.0.algorithms,
            leeway: self.0.leeway,
        }
    }
}

// === impl ShardJwt ===

/// One shard's view of a JWT authorizer: its current key set, and for a
/// JWKS URL its inbox of new sets and its line to the fetcher.
pub struct ShardJwt {
    keys: RefCell<Arc<KeySet>>,
    updates: Option<Receiver<Arc<KeySet>>>,
    /// Where the updater leaves its waker for the fetcher (one at a time).
    waker: Option<crossbeam_channel::Sender<crate::net::RemoteWaker>>,
    to_fetcher: Option<Sender<ToFetcher>>,
    last_ask: Cell<Option<Instant>>,
}

impl ShardJwt {
    /// This shard's state for `auth`. For a JWKS URL, the first shard
    /// starts the fetcher thread and every shard subscribes to it; the
    /// shard then has no keys until [`ShardJwt::wait_first`] or the first
    /// poll.
    pub fn new(auth: &JwtAuthorizer) -> ShardJwt {
        let url = match &auth.0.source {
            Source::File(keys) => {
                return ShardJwt {
                    keys: RefCell::new(keys.clone()),
                    updates: None,
                    waker: None,
                    to_fetcher: None,
                    last_ask: Cell::new(None),
                }
            }
            Source::Url(u) => u,
        };
        if !url.started.swap(true, Ordering::SeqCst) {
            if let Err(e) = fetch::spawn(url.fetch.clone(), url.from_shards.clone()) {
                crate::log!(
                    "error",
                    "jwt authorizer {:?}: cannot start the JWKS fetcher thread: {e}; its routes answer 401",
                    url.fetch.name
                );
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wtx, wrx) = crossbeam_channel::bounded(1);
        let subscribed = url
            .to_fetcher
            .send(ToFetcher::Subscribe(fetch::Subscriber {
                keys: tx,
                waker: wrx,
            }))
            .is_ok();
        ShardJwt {
            keys: RefCell::new(Arc::new(KeySet::default())),
            updates: subscribed.then_some(rx),
            waker: subscribed.then_some(wtx),
            to_fetcher: Some(url.to_fetcher.clone()),
            last_ask: Cell::new(None),
        }
    }

    /// How long start-up may wait for this authorizer's first fetch.
    pub fn first_fetch_bound(auth: &JwtAuthorizer) -> Option<Duration> {
        match &auth.0.source {
            Source::File(_) => None,
            Source::Url(u) => Some(u.fetch.timeout + Duration::from_secs(1)),
        }
    }

    /// Waits until `deadline` for the fetcher's answer to the subscription,
    /// which comes after its first fetch attempt, so a gateway whose
    /// identity provider answers starts with its keys. Start-up only.
    pub fn wait_first(&self, deadline: Instant) {
        if let Some(rx) = &self.updates {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(k) = rx.recv_timeout(left) {
                *self.keys.borrow_mut() = k;
            }
        }
    }

    /// Takes in the newest key set the fetcher sent, if any. False when
    /// this shard gets no updates (a file, or the fetcher is gone).
    pub fn poll_updates(&self) -> bool {
        let Some(rx) = &self.updates else {
            return false;
        };
        let mut newest = None;
        loop {
            match rx.try_recv() {
                Ok(k) => newest = Some(k),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if let Some(k) = newest {
                        *self.keys.borrow_mut() = k;
                    }
                    return false;
                }
            }
        }
        if let Some(k) = newest {
            *self.keys.borrow_mut() = k;
        }
        true
    }

    /// Leaves `waker` for the fetcher, which wakes it after sending a key
    /// set; then whether a set (or the fetcher's end) is already there, in
    /// which case the caller looks now rather than wait.
    pub fn wake_on_update(&self, waker: &std::task::Waker) -> bool {
        let (Some(rx), Some(tx)) = (&self.updates, &self.waker) else {
            return false;
        };
        // Full: a waker of the same task is still there.
        if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
            tx.try_send(crate::net::RemoteWaker::here(waker))
        {
            return true;
        }
        // After the waker was left: a set sent before it was there is
        // seen here, one sent after it wakes the task.
        !rx.is_empty()
    }

    /// Whether a key set waits to be taken in.
    pub fn has_update(&self) -> bool {
        self.updates.as_ref().is_some_and(|rx| !rx.is_empty())
    }

    /// How many keys the shard holds (tests, logs).
    pub fn key_count(&self) -> usize {
        self.keys.borrow().len()
    }

    fn ask_refresh(&self, now: Instant) {
        let Some(tx) = &self.to_fetcher else {
            return;
        };
        if self
            .last_ask
            .get()
            .is_some_and(|t| now.saturating_duration_since(t) < SHARD_ASK_INTERVAL)
        {
            return;
        }
        self.last_ask.set(Some(now));
        let _ = tx.send(ToFetcher::UnknownKid);
    }
}

// === impl check ===

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 401: no token, or a token that does not verify.
    Unauthorized(Reject),
    /// 403: a valid token without a required scope.
    Forbidden,
}

/// The token in the request's `Authorization` header: `Bearer <jwt>`
/// (scheme case-insensitive) or the bare token. None for no header, two
/// headers, or another scheme.
pub fn token_from_header<'a>(values: &mut dyn Iterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let v = v.trim_ascii();
    if v.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = match v.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii_start(),
        _ => v,
    };
    if token.is_empty() || token.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    Some(token)
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Verifies a bare token with the shard's current keys and the
/// authorizer's rules; `now` is the Unix time in seconds.
pub fn verify_with(
    auth: &JwtAuthorizer,
    shard: &ShardJwt,
    token: &[u8],
    now: f64,
) -> Result<serde_json::Map<String, serde_json::Value>, Reject> {
    // Held only for this synchronous check: the poll task, on the same
    // thread, cannot run meanwhile.
    let keys = shard.keys.borrow();
    verify::verify(token, &keys, &auth.rules(), now)
}

/// Verifies the request's token and, on success, fills `req` (principal
/// and header lines). `now` is the Unix time in seconds.
pub fn authorize(
    auth: &JwtAuthorizer,
    shard: &ShardJwt,
    scopes: &[String],
    wanted: &[Box<str>],
    token: Option<&[u8]>,
    now: f64,
    req: &mut RequestState,
) -> Result<(), Denied> {
    let token = token.ok_or(Denied::Unauthorized(Reject::Missing))?;
    let claims = verify_with(auth, shard, token, now).map_err(Denied::Unauthorized)?;
    if !verify::grants_scopes(&claims, scopes) {
        return Err(Denied::Forbidden);
    }
    let mut lines = Vec::new();
    for (name, claim) in &auth.0.claims_to_headers {
        if let Some(v) =
            verify::claim_header_value(claims.get(claim.as_str())).map_err(Denied::Unauthorized)?
        {
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(v.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
    }
    if let Some(serde_json::Value::String(sub)) = claims.get("sub") {
        req.principal = Some(sub.as_str().into());
    }
    req.upstream_headers.extend_from_slice(&lines);
    // The claims the route's mapping reads, as text (absent and null ones
    // are left out: their values are empty).
    for name in wanted {
        if let Some(v) = verify::claim_text(claims.get(&**name)) {
            req.claims.push((name.clone(), v.into()));
        }
    }
    Ok(())
}

/// The value of the first query parameter `name`, as sent (a JWT's
/// alphabet needs no percent-encoding); None when absent or empty.
fn token_from_query<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query
        .split(|&b| b == b'&')
        .filter_map(|pair| {
            let i = memchr::memchr(b'=', pair)?;
            (&pair[..i] == name).then(|| &pair[i + 1..])
        })
        .next()
        .filter(|v| !v.is_empty())
}

/// The authorization phase for a JWT authorizer.
pub fn check(
    auth: &JwtAuthorizer,
    shard: &ShardJwt,
    rule: &super::auth::AuthRule,
    view: &RequestView<'_>,
    req: &mut RequestState,
) -> Decision {
    let mut values = view
        .head
        .headers
        .iter()
        .filter(|h| h.name.get(view.buf).eq_ignore_ascii_case(b"authorization"))
        .map(|h| h.value.get(view.buf))
        .peekable();
    // The query's token only when there is no Authorization header at
    // all: one that holds no usable token (two of them, another scheme)
    // is a 401, not a reason to look elsewhere, since it is passed on to
    // the backend unverified.
    let token = match values.peek() {
        Some(_) => token_from_header(&mut values),
        None => auth
            .0
            .token_query
            .as_deref()
            .and_then(|name| token_from_query(view.head.query.map(|q| q.get(view.buf))?, name)),
    };
    match authorize(
        auth,
        shard,
        &rule.scopes,
        &rule.claims,
        token,
        unix_now(),
        req,
    ) {
        Ok(()) => Decision::Continue,
        Err(Denied::Unauthorized(reason)) => {
            if reason == Reject::UnknownKid {
                shard.ask_refresh(view.now);
            }
            let mut r = Refusal::json(401, "Unauthorized");
            r.headers.extend_from_slice(b"www-authenticate: Bearer\r\n");
            Decision::Respond(r)
        }
        Err(Denied::Forbidden) => {
            let mut r = Refusal::json(403, "Forbidden");
            r.headers
                .extend_from_slice(b"www-authenticate: Bearer error=\"insufficient_scope\"\r\n");
            Decision::Respond(r)
        }
    }
}
