//! AWS Signature Version 4 (API Gateway's IAM authorization): the
//! authorizer kind `[authorizers.sigv4]`, run in the authentication phase
//! after IP rules, CORS and the API key (see [`super::auth`]).
//!
//! A request proves it was made by the holder of a configured secret
//! access key, either with an `Authorization: AWS4-HMAC-SHA256 ...` header
//! or with presigned `X-Amz-*` query parameters. The gateway rebuilds the
//! canonical request from what it received ([`canonical`]), derives the
//! signing key for the credential's day, region and service, and compares
//! the HMAC with the client's in constant time ([`ring::hmac::verify`]).
//! Every refusal is API Gateway's: 403 with its message (never the
//! expected signature or canonical request), except a body too large to
//! hash (413).
//!
//! The body: when the client declares its hash in `x-amz-content-sha256`
//! the signature is checked at once and the body must hash to it; when it
//! does not (botocore sends none for execute-api), the signature itself
//! covers the body's hash and cannot be checked before the body is read.
//! Either way [`check`] leaves a [`BodyCheck`] in the request state, and
//! the signed-body phase has the gateway run `gateway::signed_body::verify`
//! before anything is forwarded: it buffers the body in the connection's read buffer (up to
//! `max_body_bytes`), hashes it and finishes the check, and the proxy then
//! sends the buffered bytes unchanged. `UNSIGNED-PAYLOAD` skips all that.
//!
//! docs/sigv4.md describes the config, the answers and what is signed.

pub mod canonical;

use super::auth::{AuthorizerKind, AuthorizerPlan, Principal};
use super::{Decision, Refusal, RequestState, RequestView};
use crate::config::ConfigError;
use crate::http::parse::Framing;
use canonical::Parts;
use ring::hmac;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Amazon API Gateway's default and only service name for invoking APIs.
pub const DEFAULT_SERVICE: &str = "execute-api";
/// How far a request's `X-Amz-Date` may be from the gateway's clock:
/// API Gateway's 5 minutes.
pub const DEFAULT_MAX_SKEW_S: u64 = 300;
/// Largest `max_skew_s` accepted.
pub const MAX_MAX_SKEW_S: u64 = 3600;
/// Largest body buffered to be hashed. A request whose signature covers
/// its body is held in memory whole before it is forwarded, so this bounds
/// the memory one such request takes; 1 MiB covers API calls, and larger
/// uploads can be signed with `UNSIGNED-PAYLOAD`, which streams.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Largest `max_body_bytes` accepted (the server's own body limit applies
/// first).
pub const MAX_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Longest presigned URL lifetime, as AWS allows: 7 days.
pub const MAX_EXPIRES_S: u64 = 604_800;
/// Longest access key id, secret, principal accepted in config.
const MAX_FIELD_LEN: usize = 256;
/// Longest session token accepted in config (STS tokens run to ~1-2 KiB).
const MAX_TOKEN_LEN: usize = 4096;

// === impl raw config ===

/// Parses a credentials file's text, reporting unknown keys as errors.
pub fn parse_credentials_file(text: &str) -> Result<RawCredentialsFile, String> {
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(text);
    let raw: RawCredentialsFile = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()))
        .map_err(|e| e.to_string().trim().to_string())?;
    if !unknown.is_empty() {
        return Err(format!(
            "unknown key(s) {}; a credentials file holds only [[credentials]] with access_key_id, secret_access_key, principal, session_token",
            unknown.join(", ")
        ));
    }
    Ok(raw)
}

// === impl plan ===

/// One compiled credential.
#[derive(Clone)]
pub struct Credential {
    pub access_key_id: String,
    /// `"AWS4" + secret` as an HMAC key: the first link of the key chain.
    secret: hmac::Key,
    pub principal: Principal,
    session_token: Option<Box<[u8]>>,
    /// `principal_header: principal\r\n`, when a principal header is set.
    upstream_line: Vec<u8>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("principal", &self.principal)
            .field("temporary", &self.session_token.is_some())
            .finish_non_exhaustive()
    }
}

/// A compiled `[authorizers.sigv4]`.
#[derive(Debug, Clone)]
pub struct Sigv4Plan {
    pub region: String,
    pub service: String,
    pub max_skew_s: u64,
    pub max_body_bytes: u64,
    /// Lower case.
    pub principal_header: Option<String>,
    pub credentials: Vec<Credential>,
    by_id: ahash::HashMap<Box<[u8]>, u32>,
}

impl Sigv4Plan {
    /// Builds a plan from compiled parts (for tests and benches; config
    /// goes through [`compile`]). Credentials are (access key id, secret,
    /// principal, session token).
    pub fn new(
        region: &str,
        service: &str,
        credentials: &[(&str, &str, &str, Option<&str>)],
    ) -> Sigv4Plan {
        let mut plan = Sigv4Plan {
            region: region.to_string(),
            service: service.to_string(),
            max_skew_s: DEFAULT_MAX_SKEW_S,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            principal_header: None,
            credentials: Vec::new(),
            by_id: ahash::HashMap::default(),
        };
        for (id, secret, principal, token) in credentials {
            plan.push(id, secret, principal, *token);
        }
        plan
    }

    fn push(&mut self, id: &str, secret: &str, principal: &str, token: Option<&str>) {
        let upstream_line = match &self.principal_header {
            Some(h) => format!("{h}: {principal}\r\n").into_bytes(),
            None => Vec::new(),
        };
        self.by_id.insert(
            id.as_bytes().to_vec().into_boxed_slice(),
            self.credentials.len() as u32,
        );
        self.credentials.push(Credential {
            access_key_id: id.to_string(),
            secret: canonical::secret_key(secret),
            principal: Arc::from(principal),
            session_token: token.map(|t| t.as_bytes().to_vec().into_boxed_slice()),
            upstream_line,
        });
    }

    fn lookup(&self, id: &[u8]) -> Option<u32> {
        self.by_id.get(id).copied()
    }
}

fn valid_region_or_service(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub use crate::config::raw::sigv4::{RawCredential, RawCredentialsFile, RawSigv4};
use crate::http::parse::is_token_byte as is_tchar;

/// A header name: an RFC 9110 token, stored lower case.
fn valid_header_name(s: &str) -> bool {
    crate::http::parse::is_token(s.as_bytes())
}

/// Headers the gateway sets or handles itself, or that SigV4 reads: not
/// usable as the principal header.
fn reserved_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "authorization"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "x-request-id"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-api-key"
    ) || name.starts_with("x-amz-")
}

/// Compiles `[authorizers.sigv4]`; `key` is its config path
/// (`authorizers[i].sigv4`). None when there were errors.
pub fn compile(
    raw: &RawSigv4,
    key: &str,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<Sigv4Plan> {
    let before = errors.len();
    let region = match &raw.region {
        None => {
            errors.push(ConfigError::new(
                format!("{key}.region"),
                "required: the AWS region clients sign for, e.g. \"us-east-1\"",
            ));
            String::new()
        }
        Some(r) if !valid_region_or_service(r) => {
            errors.push(ConfigError::new(
                format!("{key}.region"),
                format!(
                    "{r:?} must be 1 to 64 lower-case letters, digits or '-', e.g. \"us-east-1\""
                ),
            ));
            String::new()
        }
        Some(r) => r.clone(),
    };
    let service = raw
        .service
        .clone()
        .unwrap_or_else(|| DEFAULT_SERVICE.to_string());
    if !valid_region_or_service(&service) {
        errors.push(ConfigError::new(
            format!("{key}.service"),
            format!("{service:?} must be 1 to 64 lower-case letters, digits or '-' (API Gateway's is \"execute-api\")"),
        ));
    }
    let max_skew_s = raw.max_skew_s.unwrap_or(DEFAULT_MAX_SKEW_S);
    if !(1..=MAX_MAX_SKEW_S).contains(&max_skew_s) {
        errors.push(ConfigError::new(
            format!("{key}.max_skew_s"),
            format!(
                "{max_skew_s} must be from 1 to {MAX_MAX_SKEW_S} seconds (API Gateway allows 300)"
            ),
        ));
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes > MAX_MAX_BODY_BYTES {
        errors.push(ConfigError::new(
            format!("{key}.max_body_bytes"),
            format!("{max_body_bytes} is more than {MAX_MAX_BODY_BYTES}; a signed body is held in memory whole: sign larger uploads with UNSIGNED-PAYLOAD"),
        ));
    }
    let principal_header = match &raw.principal_header {
        None => None,
        Some(h) => {
            let lower = h.to_ascii_lowercase();
            if !valid_header_name(&lower) || reserved_header(&lower) {
                errors.push(ConfigError::new(
                    format!("{key}.principal_header"),
                    format!("{h:?} must be a header name (letters, digits, '-'), not one the gateway or SigV4 uses (host, authorization, x-amz-*, x-forwarded-*, ...)"),
                ));
            }
            Some(lower)
        }
    };
    let mut plan = Sigv4Plan {
        region,
        service,
        max_skew_s,
        max_body_bytes,
        principal_header,
        credentials: Vec::new(),
        by_id: ahash::HashMap::default(),
    };
    let mut entries: Vec<(String, &RawCredential)> = Vec::new();
    let file_raw;
    if let Some(file) = &raw.credentials_file {
        let fkey = format!("{key}.credentials_file");
        let path = super::api_key::resolve_path(file, base_dir);
        match crate::config::read_text(&path) {
            Err(e) => errors.push(ConfigError::new(
                &fkey,
                format!(
                    "cannot read {} ({e}); a relative path is taken from the config file's directory",
                    path.display()
                ),
            )),
            Ok(text) => match parse_credentials_file(&text) {
                Err(e) => errors.push(ConfigError::new(&fkey, format!("{}: {e}", path.display()))),
                Ok(f) => {
                    file_raw = f;
                    for (i, c) in file_raw.credentials.iter().enumerate() {
                        entries.push((format!("{fkey}({}).credentials[{i}]", path.display()), c));
                    }
                }
            },
        }
    }
    for (i, c) in raw.credentials.iter().enumerate() {
        entries.push((format!("{key}.credentials[{i}]"), c));
    }
    if entries.is_empty() && raw.credentials_file.is_none() {
        errors.push(ConfigError::new(
            format!("{key}.credentials"),
            "no credentials: add [[authorizers.sigv4.credentials]] or set credentials_file, or every request would be refused",
        ));
    }
    for (ckey, c) in entries {
        if let Some((id, secret, principal, token)) = compile_credential(c, &ckey, errors) {
            if plan.lookup(id.as_bytes()).is_some() {
                errors.push(ConfigError::new(
                    format!("{ckey}.access_key_id"),
                    format!("{id:?} is defined twice in this authorizer"),
                ));
                continue;
            }
            plan.push(id, secret, principal, token);
        }
    }
    (errors.len() == before).then_some(plan)
}

/// Validates one credential: (access key id, secret, principal, token).
fn compile_credential<'a>(
    c: &'a RawCredential,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<(&'a str, &'a str, &'a str, Option<&'a str>)> {
    let before = errors.len();
    let id = c.access_key_id.as_deref().unwrap_or("");
    if c.access_key_id.is_none() {
        errors.push(ConfigError::new(
            format!("{key}.access_key_id"),
            "required (e.g. \"AKIAIOSFODNN7EXAMPLE\")",
        ));
    } else if id.is_empty()
        || id.len() > MAX_FIELD_LEN
        || !id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        errors.push(ConfigError::new(
            format!("{key}.access_key_id"),
            format!("{id:?} must be 1 to {MAX_FIELD_LEN} letters or digits"),
        ));
    }
    let secret = c.secret_access_key.as_deref().unwrap_or("");
    if c.secret_access_key.is_none() {
        errors.push(ConfigError::new(
            format!("{key}.secret_access_key"),
            format!("required for access key {id:?}"),
        ));
    } else if secret.is_empty()
        || secret.len() > MAX_FIELD_LEN
        || !secret.bytes().all(|b| b.is_ascii_graphic())
    {
        // Never echo a secret, not even a malformed one.
        errors.push(ConfigError::new(
            format!("{key}.secret_access_key"),
            format!("the secret of access key {id:?} must be 1 to {MAX_FIELD_LEN} printable ASCII characters without spaces"),
        ));
    }
    let principal = c.principal.as_deref().unwrap_or("");
    if c.principal.is_none() {
        errors.push(ConfigError::new(
            format!("{key}.principal"),
            format!("required for access key {id:?}: who the key stands for, e.g. \"arn:aws:iam::123456789012:user/alice\""),
        ));
    } else if principal.is_empty()
        || principal.len() > MAX_FIELD_LEN
        || !principal.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        || principal.starts_with(' ')
        || principal.ends_with(' ')
    {
        errors.push(ConfigError::new(
            format!("{key}.principal"),
            format!("{principal:?} must be 1 to {MAX_FIELD_LEN} printable ASCII characters, without leading or trailing spaces"),
        ));
    }
    let token = c.session_token.as_deref();
    if let Some(t) = token {
        if t.is_empty() || t.len() > MAX_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(ConfigError::new(
                format!("{key}.session_token"),
                format!("the session token of access key {id:?} must be 1 to {MAX_TOKEN_LEN} printable ASCII characters without spaces"),
            ));
        }
    }
    (errors.len() == before).then_some((id, secret, principal, token))
}

/// Header names the authorizer sends to the backend (the principal
/// header, if set): client-sent headers of these names are dropped.
pub fn upstream_header_names(plan: &Sigv4Plan) -> Vec<String> {
    plan.principal_header.iter().cloned().collect()
}

// === impl shard state ===

/// A derived signing key, cached for the day it was derived for.
#[derive(Clone)]
struct CachedKey {
    /// `YYYYMMDD` of the credential scope.
    date: [u8; 8],
    key: hmac::Key,
    bytes: [u8; 32],
}

/// Per shard: reused buffers for the canonical request, and the signing
/// keys derived today (one per credential and day; two days kept, for
/// clients either side of midnight UTC). Deriving a key is four HMACs; the
/// bench (benches/sigv4.rs) measures the saving.
#[derive(Default)]
pub struct ShardState {
    scratch: RefCell<Scratch>,
    /// Indexed by authorizer, then by credential.
    keys: RefCell<Vec<Vec<[Option<CachedKey>; 2]>>>,
}

#[derive(Default)]
struct Scratch {
    creq: Vec<u8>,
    query: Vec<u8>,
    sts: Vec<u8>,
}

impl ShardState {
    pub fn new(authorizers: &[AuthorizerPlan]) -> ShardState {
        let keys = authorizers
            .iter()
            .map(|a| match &a.kind {
                AuthorizerKind::Sigv4(p) => vec![[None, None]; p.credentials.len()],
                #[allow(unreachable_patterns)]
                _ => Vec::new(),
            })
            .collect();
        ShardState {
            scratch: RefCell::default(),
            keys: RefCell::new(keys),
        }
    }

    /// A state for one plan alone (tests and benches).
    pub fn for_plan(plan: &Sigv4Plan) -> ShardState {
        ShardState {
            scratch: RefCell::default(),
            keys: RefCell::new(vec![vec![[None, None]; plan.credentials.len()]]),
        }
    }

    /// The signing key of credential `cred` of authorizer `auth` for
    /// `date`, from the cache or derived (and cached).
    fn signing_key(
        &self,
        auth: usize,
        plan: &Sigv4Plan,
        cred: usize,
        date: &[u8; 8],
    ) -> Option<(hmac::Key, [u8; 32])> {
        let c = plan.credentials.get(cred)?;
        let mut keys = self.keys.try_borrow_mut().ok();
        if let Some(slots) = keys
            .as_mut()
            .and_then(|k| k.get_mut(auth))
            .and_then(|a| a.get_mut(cred))
        {
            for s in slots.iter().flatten() {
                if &s.date == date {
                    return Some((s.key.clone(), s.bytes));
                }
            }
            let (key, bytes) = derive(c, date, plan);
            slots[1] = slots[0].take();
            slots[0] = Some(CachedKey {
                date: *date,
                key: key.clone(),
                bytes,
            });
            return Some((key, bytes));
        }
        Some(derive(c, date, plan))
    }
}

fn derive(c: &Credential, date: &[u8; 8], plan: &Sigv4Plan) -> (hmac::Key, [u8; 32]) {
    let bytes = canonical::signing_key_bytes(
        &c.secret,
        date,
        plan.region.as_bytes(),
        plan.service.as_bytes(),
    );
    (hmac::Key::new(hmac::HMAC_SHA256, &bytes), bytes)
}

// === impl failures ===

/// Why a request was refused. Every variant is a 403 except
/// [`Failure::BodyTooLarge`] (413); the messages are API Gateway's where
/// it has one, and never contain the expected signature, the canonical
/// request or anything secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Neither an Authorization header nor X-Amz-* query parameters.
    Missing,
    /// Both forms at once.
    BothForms,
    /// The Authorization header lacks parts (or is not SigV4 at all).
    IncompleteHeader {
        credential: bool,
        signed_headers: bool,
        signature: bool,
        date: bool,
    },
    /// Presigned parameters missing.
    IncompleteQuery,
    /// Something malformed, with a fixed message.
    Malformed(&'static str),
    UnsupportedAlgorithm,
    BadDate,
    BadExpires,
    WrongTerminator(String),
    WrongRegion(String),
    /// The configured service (the message names it).
    WrongService(String),
    DateMismatch {
        scope: String,
        amz: String,
    },
    Expired {
        date: i64,
        now: i64,
        skew: u64,
    },
    NotYetCurrent {
        date: i64,
        now: i64,
        skew: u64,
    },
    PresignExpired {
        date: i64,
        expires: u64,
        now: i64,
    },
    /// Unknown access key, or a session token missing, wrong or not
    /// expected: AWS's one answer for all of them.
    InvalidToken,
    HostNotSigned,
    BadSignedHeaders,
    BadContentSha256,
    SignatureMismatch,
    BodyHashMismatch,
    BodyTooLarge,
}

/// Shows a client-sent value in a message: at most 64 printable ASCII
/// characters, anything else as '?'.
fn shown(b: &[u8]) -> String {
    b.iter()
        .take(64)
        .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
        .collect()
}

fn skew_text(s: u64) -> String {
    if s.is_multiple_of(60) {
        format!("{} min.", s / 60)
    } else {
        format!("{s} s.")
    }
}

impl Failure {
    pub fn status(&self) -> u16 {
        match self {
            Failure::BodyTooLarge => 413,
            _ => 403,
        }
    }

    /// The response message.
    pub fn message(&self) -> Cow<'static, str> {
        use canonical::format_amz_date as d;
        match self {
            Failure::Missing => "Missing Authentication Token".into(),
            Failure::BothForms => "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the Authorization header should be specified".into(),
            Failure::IncompleteHeader { credential, signed_headers, signature, date } => {
                let mut m = String::new();
                if *credential {
                    m.push_str("Authorization header requires 'Credential' parameter. ");
                }
                if *signature {
                    m.push_str("Authorization header requires 'Signature' parameter. ");
                }
                if *signed_headers {
                    m.push_str("Authorization header requires 'SignedHeaders' parameter. ");
                }
                if *date {
                    m.push_str("Authorization header requires existence of a 'X-Amz-Date' header. ");
                }
                m.truncate(m.trim_end().len());
                m.into()
            }
            Failure::IncompleteQuery => "AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', 'X-Amz-Expires'. Re-examine the query-string parameters.".into(),
            Failure::Malformed(m) => (*m).into(),
            Failure::UnsupportedAlgorithm => "Unsupported signing algorithm: only AWS4-HMAC-SHA256 is accepted".into(),
            Failure::BadDate => "X-Amz-Date must be in the ISO 8601 basic format yyyyMMdd'T'HHmmss'Z'".into(),
            Failure::BadExpires => format!("X-Amz-Expires must be a whole number of seconds from 1 to {MAX_EXPIRES_S} (7 days)").into(),
            Failure::WrongTerminator(t) => format!("Credential should be scoped with a valid terminator: 'aws4_request', not '{t}'.").into(),
            Failure::WrongRegion(r) => format!("Credential should be scoped to a valid region, not '{r}'.").into(),
            Failure::WrongService(s) => format!("Credential should be scoped to correct service: '{s}'.").into(),
            Failure::DateMismatch { scope, amz } => format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{scope}' != '{}', from '{amz}'.",
                amz.get(..8).unwrap_or(amz)
            ).into(),
            Failure::Expired { date, now, skew } => format!(
                "Signature expired: {} is now earlier than {} ({} - {})",
                d(*date), d(now - *skew as i64), d(*now), skew_text(*skew)
            ).into(),
            Failure::NotYetCurrent { date, now, skew } => format!(
                "Signature not yet current: {} is still later than {} ({} + {})",
                d(*date), d(now + *skew as i64), d(*now), skew_text(*skew)
            ).into(),
            Failure::PresignExpired { date, expires, now } => format!(
                "Request has expired: X-Amz-Date {} plus X-Amz-Expires {expires} s is earlier than {}",
                d(*date), d(*now)
            ).into(),
            Failure::InvalidToken => "The security token included in the request is invalid.".into(),
            Failure::HostNotSigned => "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
            Failure::BadSignedHeaders => "SignedHeaders must be lower-case header names, sorted, without repeats, separated by ';', and must not include authorization".into(),
            Failure::BadContentSha256 => "x-amz-content-sha256 must be UNSIGNED-PAYLOAD or the hex SHA-256 of the body".into(),
            Failure::SignatureMismatch => "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
            Failure::BodyHashMismatch => "The provided 'x-amz-content-sha256' header does not match what was computed.".into(),
            Failure::BodyTooLarge => "Request Entity Too Large".into(),
        }
    }

    pub fn refusal(&self) -> Refusal {
        Refusal::json(self.status(), self.message())
    }
}

// === impl verification ===

/// What the body must still prove once it is read (see `gateway::signed_body::verify`).
#[derive(Clone, PartialEq, Eq)]
pub struct BodyCheck {
    /// Bodies larger than this are refused with 413 before being hashed.
    pub max_body_bytes: u64,
    /// Recorded in the request state once the check passes (when the
    /// signature itself waited for the body).
    pub principal: Principal,
    pub expect: Expect,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Expect {
    /// The signature verified over this declared hash
    /// (`x-amz-content-sha256`); the body must hash to it.
    Sha256([u8; 32]),
    /// The signature covers the body's hash: finish the canonical request
    /// with it, and verify.
    Signature(Box<PendingSignature>),
}

/// A signature check waiting for the body's hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingSignature {
    /// The canonical request up to (not including) the payload hash.
    pub creq_prefix: Vec<u8>,
    pub amz_date: [u8; 16],
    /// `date/region/service/aws4_request`.
    pub scope: Vec<u8>,
    /// The day's signing key (secret-derived: never printed).
    pub signing_key: [u8; 32],
    pub signature: [u8; 32],
}

impl fmt::Debug for BodyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyCheck")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("principal", &self.principal)
            .field(
                "expect",
                &match self.expect {
                    Expect::Sha256(_) => "declared sha256",
                    Expect::Signature(_) => "signature over the body hash",
                },
            )
            .finish()
    }
}

impl BodyCheck {
    /// Finishes the check with the body's SHA-256.
    pub fn finish(&self, body_sha256: &[u8; 32]) -> Result<(), Failure> {
        match &self.expect {
            Expect::Sha256(declared) => {
                if ct_eq(declared, body_sha256) {
                    Ok(())
                } else {
                    Err(Failure::BodyHashMismatch)
                }
            }
            Expect::Signature(p) => {
                let mut creq = Vec::with_capacity(p.creq_prefix.len() + 64);
                creq.extend_from_slice(&p.creq_prefix);
                canonical::push_hex(&mut creq, body_sha256);
                let mut sts = Vec::with_capacity(160);
                canonical::string_to_sign(&mut sts, &p.amz_date, &p.scope, &creq);
                let key = hmac::Key::new(hmac::HMAC_SHA256, &p.signing_key);
                hmac::verify(&key, &sts, &p.signature).map_err(|_| Failure::SignatureMismatch)
            }
        }
    }
}

/// Compares in time that depends only on the lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    super::api_key::ct_eq(a, b)
}

/// A request as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub parts: Parts<'a>,
    /// A body follows the head (a non-zero Content-Length, or chunked).
    pub has_body: bool,
}

/// A verified (or provisionally verified) request.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// Index into [`Sigv4Plan::credentials`].
    pub credential: u32,
    /// What the body must still prove, if anything.
    pub body: Option<BodyCheck>,
}

/// The signature's parts, from either form.
struct Claim<'a> {
    /// `AKID/date/region/service/aws4_request`.
    credential: Cow<'a, [u8]>,
    signed_headers: Cow<'a, [u8]>,
    signature: &'a [u8],
    amz_date: &'a [u8],
    token: Option<Cow<'a, [u8]>>,
    /// Presigned: `X-Amz-Expires`.
    expires: Option<u64>,
}

/// Header lines SigV4 reads, found in one pass.
#[derive(Default)]
struct Seen<'a> {
    authorization: Option<&'a [u8]>,
    amz_date: Option<&'a [u8]>,
    token: Option<&'a [u8]>,
    content_sha256: Option<&'a [u8]>,
}

fn scan_headers<'a>(headers: &[(&'a [u8], &'a [u8])]) -> Result<Seen<'a>, Failure> {
    let mut s = Seen::default();
    for &(n, v) in headers {
        let slot = if n.eq_ignore_ascii_case(b"authorization") {
            &mut s.authorization
        } else if n.eq_ignore_ascii_case(b"x-amz-date") {
            &mut s.amz_date
        } else if n.eq_ignore_ascii_case(b"x-amz-security-token") {
            &mut s.token
        } else if n.eq_ignore_ascii_case(b"x-amz-content-sha256") {
            &mut s.content_sha256
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(Failure::Malformed(
                "Authorization, X-Amz-Date, X-Amz-Security-Token and X-Amz-Content-Sha256 may each appear only once",
            ));
        }
        *slot = Some(trim(v));
    }
    Ok(s)
}

fn trim(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Parses `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
fn parse_authorization<'a>(v: &'a [u8], amz_date: Option<&'a [u8]>) -> Result<Claim<'a>, Failure> {
    let alg = canonical::ALGORITHM.as_bytes();
    let rest = match v.strip_prefix(alg) {
        Some(r) if r.first() == Some(&b' ') => r,
        _ if v.starts_with(b"AWS4-") => return Err(Failure::UnsupportedAlgorithm),
        _ => {
            return Err(Failure::IncompleteHeader {
                credential: true,
                signed_headers: true,
                signature: true,
                date: amz_date.is_none(),
            })
        }
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(|&b| b == b',') {
        let part = trim(part);
        if part.is_empty() {
            continue;
        }
        let Some(eq) = part.iter().position(|&b| b == b'=') else {
            return Err(Failure::Malformed(
                "Authorization header has a part that is not key=value",
            ));
        };
        let (k, val) = (&part[..eq], &part[eq + 1..]);
        let slot = match k {
            b"Credential" => &mut credential,
            b"SignedHeaders" => &mut signed,
            b"Signature" => &mut signature,
            _ => {
                return Err(Failure::Malformed(
                    "Authorization header has a part other than Credential, SignedHeaders and Signature",
                ))
            }
        };
        if slot.is_some() {
            return Err(Failure::Malformed(
                "Authorization header repeats Credential, SignedHeaders or Signature",
            ));
        }
        *slot = Some(val);
    }
    match (credential, signed, signature, amz_date) {
        (Some(c), Some(sh), Some(sig), Some(d)) => Ok(Claim {
            credential: Cow::Borrowed(c),
            signed_headers: Cow::Borrowed(sh),
            signature: sig,
            amz_date: d,
            token: None,
            expires: None,
        }),
        (c, sh, sig, d) => Err(Failure::IncompleteHeader {
            credential: c.is_none(),
            signed_headers: sh.is_none(),
            signature: sig.is_none(),
            date: d.is_none(),
        }),
    }
}

/// The presigned `X-Amz-*` parameters of a query, if it has
/// `X-Amz-Algorithm`.
#[derive(Default)]
struct Presigned<'a> {
    algorithm: Option<&'a [u8]>,
    credential: Option<&'a [u8]>,
    date: Option<&'a [u8]>,
    expires: Option<&'a [u8]>,
    signed_headers: Option<&'a [u8]>,
    signature: Option<&'a [u8]>,
    token: Option<&'a [u8]>,
}

/// Finds the presigned parameters (raw, still encoded). Their names are
/// compared as sent: every signer writes them unencoded.
fn scan_query(query: Option<&[u8]>) -> Result<Presigned<'_>, Failure> {
    let mut p = Presigned::default();
    let Some(q) = query else {
        return Ok(p);
    };
    for pair in q.split(|&b| b == b'&') {
        // A name without '=' has an empty value, as the canonical query
        // reads it: a bare `X-Amz-Signature` is a second signature.
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        let slot = match k {
            b"X-Amz-Algorithm" => &mut p.algorithm,
            b"X-Amz-Credential" => &mut p.credential,
            b"X-Amz-Date" => &mut p.date,
            b"X-Amz-Expires" => &mut p.expires,
            b"X-Amz-SignedHeaders" => &mut p.signed_headers,
            b"X-Amz-Signature" => &mut p.signature,
            b"X-Amz-Security-Token" => &mut p.token,
            _ => continue,
        };
        if slot.is_some() {
            return Err(Failure::Malformed(
                "a presigned X-Amz-* query parameter appears more than once",
            ));
        }
        *slot = Some(v);
    }
    Ok(p)
}

fn decoded(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.iter().any(|&b| b == b'%' || b == b'+') {
        let mut out = Vec::with_capacity(raw.len());
        canonical::decode_query_into(raw, &mut out);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(raw)
    }
}

fn parse_presigned<'a>(p: &Presigned<'a>) -> Result<Claim<'a>, Failure> {
    let (Some(alg), Some(cred), Some(date), Some(exp), Some(sh), Some(sig)) = (
        p.algorithm,
        p.credential,
        p.date,
        p.expires,
        p.signed_headers,
        p.signature,
    ) else {
        return Err(Failure::IncompleteQuery);
    };
    if alg != canonical::ALGORITHM.as_bytes() {
        return Err(Failure::UnsupportedAlgorithm);
    }
    let expires = std::str::from_utf8(exp)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 7 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|e| (1..=MAX_EXPIRES_S).contains(e))
        .ok_or(Failure::BadExpires)?;
    Ok(Claim {
        credential: decoded(cred),
        signed_headers: decoded(sh),
        signature: sig,
        amz_date: date,
        token: p.token.map(decoded),
        expires: Some(expires),
    })
}

/// Checks SignedHeaders: lower-case token names, strictly ascending (so
/// sorted and without repeats), `host` among them, `authorization` not.
fn check_signed_headers(sh: &[u8]) -> Result<(), Failure> {
    let mut prev: Option<&[u8]> = None;
    let mut host = false;
    for name in sh.split(|&b| b == b';') {
        // A header name (an RFC 9110 token) in lower case.
        let ok = !name.is_empty()
            && name.iter().all(|&b| is_tchar(b) && !b.is_ascii_uppercase())
            && prev.is_none_or(|p| p < name)
            && name != b"authorization";
        if !ok {
            return Err(Failure::BadSignedHeaders);
        }
        host |= name == b"host";
        prev = Some(name);
    }
    if host {
        Ok(())
    } else {
        Err(Failure::HostNotSigned)
    }
}

fn signed_contains(sh: &[u8], name: &[u8]) -> bool {
    sh.split(|&b| b == b';').any(|n| n == name)
}

/// Verifies a request against an authorizer at Unix time `now`.
/// `auth` is the authorizer's index (for the shard's key cache).
pub fn verify(
    plan: &Sigv4Plan,
    state: &ShardState,
    auth: usize,
    req: &Request<'_>,
    now: i64,
) -> Result<Verified, Failure> {
    let seen = scan_headers(req.parts.headers)?;
    let pre = scan_query(req.parts.query)?;
    let presigned = pre.algorithm.is_some();
    let claim = match (seen.authorization, presigned) {
        (None, false) => return Err(Failure::Missing),
        (Some(_), true) => return Err(Failure::BothForms),
        (Some(a), false) => parse_authorization(a, seen.amz_date)?,
        (None, true) => parse_presigned(&pre)?,
    };

    // --- the time ---
    let t = canonical::parse_amz_date(claim.amz_date).ok_or(Failure::BadDate)?;
    let skew = plan.max_skew_s as i64;

    // --- the credential scope: AKID/date/region/service/aws4_request ---
    let cred = &claim.credential[..];
    let mut it = cred.split(|&b| b == b'/');
    let (Some(akid), Some(date), Some(region), Some(service), Some(term), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(Failure::Malformed(
            "Credential must have the form <access key id>/<yyyyMMdd>/<region>/<service>/aws4_request",
        ));
    };
    if term != canonical::TERMINATOR.as_bytes() {
        return Err(Failure::WrongTerminator(shown(term)));
    }
    if region != plan.region.as_bytes() {
        return Err(Failure::WrongRegion(shown(region)));
    }
    if service != plan.service.as_bytes() {
        return Err(Failure::WrongService(plan.service.clone()));
    }
    if date != &claim.amz_date[..8] {
        return Err(Failure::DateMismatch {
            scope: shown(date),
            amz: shown(claim.amz_date),
        });
    }
    let scope = &cred[akid.len() + 1..];
    match claim.expires {
        None if t < now - skew => {
            return Err(Failure::Expired {
                date: t,
                now,
                skew: plan.max_skew_s,
            })
        }
        Some(_) | None if t > now + skew => {
            return Err(Failure::NotYetCurrent {
                date: t,
                now,
                skew: plan.max_skew_s,
            })
        }
        Some(e) if now > t + e as i64 => {
            return Err(Failure::PresignExpired {
                date: t,
                expires: e,
                now,
            })
        }
        _ => {}
    }

    // --- who: the access key and, for temporary credentials, the token ---
    let ci = plan.lookup(akid).ok_or(Failure::InvalidToken)?;
    let c = plan
        .credentials
        .get(ci as usize)
        .ok_or(Failure::InvalidToken)?;
    check_signed_headers(&claim.signed_headers)?;
    let token: Option<&[u8]> = if presigned {
        claim.token.as_deref()
    } else {
        seen.token
    };
    match (&c.session_token, token) {
        (None, None) => {}
        (Some(expected), Some(got)) => {
            // Checked before the value, so the answer never tells a right
            // token from a wrong one that was not signed.
            if !presigned && !signed_contains(&claim.signed_headers, b"x-amz-security-token") {
                return Err(Failure::InvalidToken);
            }
            if !ct_eq(expected, got) {
                return Err(Failure::InvalidToken);
            }
        }
        _ => return Err(Failure::InvalidToken),
    }

    // --- the payload hash ---
    enum Payload<'p> {
        Given(&'p [u8]),
        Declared(&'p [u8], [u8; 32]),
        Body,
    }
    let payload = match seen.content_sha256 {
        Some(v) if v == canonical::UNSIGNED_PAYLOAD.as_bytes() => Payload::Given(v),
        Some(v) => Payload::Declared(
            v,
            canonical::decode_hex32(v).ok_or(Failure::BadContentSha256)?,
        ),
        None if req.has_body => Payload::Body,
        None => Payload::Given(canonical::EMPTY_SHA256.as_bytes()),
    };
    let signature =
        canonical::decode_lower_hex32(claim.signature).ok_or(Failure::SignatureMismatch)?;
    let mut day = [0u8; 8];
    day.copy_from_slice(date);
    let (key, key_bytes) = state
        .signing_key(auth, plan, ci as usize, &day)
        .ok_or(Failure::InvalidToken)?;

    // --- the canonical request ---
    let mut local = Scratch::default();
    let mut guard = state.scratch.try_borrow_mut().ok();
    let s: &mut Scratch = guard.as_deref_mut().unwrap_or(&mut local);
    s.creq.clear();
    canonical::canonical_request_prefix(
        &mut s.creq,
        &req.parts,
        &claim.signed_headers,
        presigned,
        &mut s.query,
    )
    .map_err(|_| Failure::SignatureMismatch)?;
    let principal = c.principal.clone();
    let mut body = None;
    match payload {
        Payload::Body => {
            let mut amz_date = [0u8; 16];
            amz_date.copy_from_slice(claim.amz_date);
            body = Some(BodyCheck {
                max_body_bytes: plan.max_body_bytes,
                principal,
                expect: Expect::Signature(Box::new(PendingSignature {
                    creq_prefix: s.creq.clone(),
                    amz_date,
                    scope: scope.to_vec(),
                    signing_key: key_bytes,
                    signature,
                })),
            });
        }
        Payload::Given(h) | Payload::Declared(h, _) => {
            s.creq.extend_from_slice(h);
            canonical::string_to_sign(&mut s.sts, claim.amz_date, scope, &s.creq);
            hmac::verify(&key, &s.sts, &signature).map_err(|_| Failure::SignatureMismatch)?;
            if let Payload::Declared(_, sha) = payload {
                if req.has_body {
                    body = Some(BodyCheck {
                        max_body_bytes: plan.max_body_bytes,
                        principal,
                        expect: Expect::Sha256(sha),
                    });
                } else if canonical::decode_hex32(canonical::EMPTY_SHA256.as_bytes()) != Some(sha) {
                    return Err(Failure::BodyHashMismatch);
                }
            }
        }
    }
    Ok(Verified {
        credential: ci,
        body,
    })
}

/// Seconds since the Unix epoch, by the system clock.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The authentication phase for a route whose authorizer is SigV4.
pub fn check(
    plan: &Sigv4Plan,
    state: &ShardState,
    auth: usize,
    view: &RequestView<'_>,
    req: &mut RequestState,
) -> Decision {
    let headers: SmallVec<[(&[u8], &[u8]); 24]> = view
        .head
        .headers
        .iter()
        .map(|h| (h.name.get(view.buf), h.value.get(view.buf)))
        .collect();
    let has_body = match view.head.framing {
        Framing::None | Framing::Length(0) => false,
        Framing::Length(_) | Framing::Chunked => true,
    };
    let request = Request {
        parts: Parts {
            method: view.head.method_span.get(view.buf),
            path: view.head.path(view.buf),
            query: view.head.query.map(|q| q.get(view.buf)),
            headers: &headers,
        },
        has_body,
    };
    match verify(plan, state, auth, &request, unix_now()) {
        Err(f) => Decision::Respond(f.refusal()),
        Ok(v) => {
            let Some(c) = plan.credentials.get(v.credential as usize) else {
                return Decision::Respond(Failure::InvalidToken.refusal());
            };
            // A signature that waits for the body records its principal
            // only once the body proved it (gateway::signed_body).
            let proven = !matches!(
                v.body,
                Some(BodyCheck {
                    expect: Expect::Signature(_),
                    ..
                })
            );
            if proven {
                req.principal = Some(c.principal.clone());
            }
            req.upstream_headers.extend_from_slice(&c.upstream_line);
            req.body_check = v.body.map(Box::new);
            Decision::Continue
        }
    }
}

#[cfg(test)]
mod tests;
