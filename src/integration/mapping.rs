//! Parameter mapping for the `http_proxy` integration, with Amazon API
//! Gateway's HTTP API semantics (docs/mapping.md): the request's headers,
//! query string and path are changed before it goes upstream, and the
//! integration's response headers and status before they reach the client.
//!
//! A route's `mapping` (merged over its API's, key by key) is compiled with
//! the plan into a small program: each operation with its target and its
//! value as literal bytes and variables. Per request the program runs on
//! the bytes the gateway already has: the request side rewrites the
//! upstream head `http_proxy::write_upstream_head` wrote (one new buffer,
//! only for a route that maps), reading its values from the client's head,
//! the route's parameters, the body (read up to [`MAX_BODY_BYTES`], only
//! when a value names it) and the exchange's context; the response side
//! writes the response's header lines in place of the upstream's. A route
//! without a mapping pays a test of an `Option`.

use crate::config::raw::mapping::RawMapping;
use crate::config::ConfigError;
use crate::http::method::Method;
use crate::http::parse::{has_dot_segment, HeaderSpan, RequestHead};
use crate::http::percent::percent_decode;
use std::net::IpAddr;

/// How much of a request body `$request.body.*` reads: a longer body is
/// not buffered, and values from it are empty (AWS cuts the body at 100 KB
/// before applying the JSON path).
pub const MAX_BODY_BYTES: u64 = 100 * 1024;

/// Headers no mapping may name (Amazon API Gateway's reserved list, plus
/// the header the gateway sets from a verified client certificate).
/// Entries ending in `-` are prefixes.
pub const RESERVED_HEADERS: &[&str] = &[
    "access-control-",
    "apigw-",
    "authorization",
    "connection",
    "content-encoding",
    "content-length",
    "content-location",
    "forwarded",
    "keep-alive",
    "origin",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "x-amz-",
    "x-amzn-",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "via",
    "x-client-cert-subject",
];

/// Whether `name` (lowercase) is on [`RESERVED_HEADERS`].
pub fn is_reserved(name: &str) -> bool {
    RESERVED_HEADERS.iter().any(|r| match r.strip_suffix('-') {
        Some(_) => name.starts_with(r),
        None => name == *r,
    })
}

/// A route's compiled mapping.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub request: Option<RequestMapping>,
    pub response: Option<ResponseMapping>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Remove,
    Overwrite,
    Append,
}

#[derive(Debug, Clone)]
struct Op {
    action: Action,
    /// Header names lowercase; query names as written.
    name: Box<str>,
    value: Value,
}

/// Literal bytes and variables, in order.
#[derive(Debug, Clone, Default)]
struct Value(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(Box<[u8]>),
    Var(Var),
}

#[derive(Debug, Clone)]
enum Var {
    Header(Box<str>),
    Query(Box<str>),
    Path,
    PathParam(Box<str>),
    Body(Box<[Step]>),
    Context(Ctx),
    StageVariable(Box<str>),
    ResponseHeader(Box<str>),
    /// `$context.authorizer.claims.NAME`: a claim of the verified JWT.
    Claim(Box<str>),
}

#[derive(Debug, Clone)]
enum Step {
    Key(Box<str>),
    Index(usize),
}

/// A `$context.NAME` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    RequestId,
    SourceIp,
    UserAgent,
    HttpMethod,
    RouteKey,
    Path,
    Stage,
    ApiId,
    DomainName,
    RequestTimeEpoch,
    PrincipalId,
    ApiKeyName,
    Protocol,
    IntegrationStatus,
}

/// Every `$context` variable: its name, and whether a response mapping
/// can read it (the client's head is gone by then).
const CONTEXT: &[(&str, Ctx, bool)] = &[
    ("requestId", Ctx::RequestId, true),
    ("extendedRequestId", Ctx::RequestId, true),
    ("identity.sourceIp", Ctx::SourceIp, true),
    ("identity.userAgent", Ctx::UserAgent, false),
    ("identity.apiKeyName", Ctx::ApiKeyName, true),
    ("httpMethod", Ctx::HttpMethod, true),
    ("routeKey", Ctx::RouteKey, true),
    ("path", Ctx::Path, false),
    ("stage", Ctx::Stage, true),
    ("apiId", Ctx::ApiId, true),
    ("domainName", Ctx::DomainName, false),
    ("requestTimeEpoch", Ctx::RequestTimeEpoch, true),
    ("authorizer.principalId", Ctx::PrincipalId, true),
    ("protocol", Ctx::Protocol, true),
    ("integrationStatus", Ctx::IntegrationStatus, true),
    ("integration.status", Ctx::IntegrationStatus, true),
];

/// The request side: operations on the path, the query string and the
/// headers.
#[derive(Debug, Clone, Default)]
pub struct RequestMapping {
    path: Option<Value>,
    query: Vec<Op>,
    /// Sorted: removals, overwrites, appends.
    headers: Vec<Op>,
    /// A value reads `$request.body.*`: the driver reads the body first.
    pub needs_body: bool,
    /// The JWT claims its values read (`$context.authorizer.claims.NAME`),
    /// each once: the authorizer keeps these only.
    pub claims: Vec<Box<str>>,
}

/// The response side, by the integration's status.
#[derive(Debug, Clone, Default)]
pub struct ResponseMapping {
    by_status: Vec<(u16, StatusMapping)>,
}

#[derive(Debug, Clone, Default)]
pub struct StatusMapping {
    /// `overwrite:statuscode`.
    status: Option<u16>,
    /// Sorted: removals, overwrites, appends.
    headers: Vec<Op>,
}

/// A stage's name and variables, for `$context.stage` and
/// `$stageVariables.NAME`.
#[derive(Debug, Clone, Copy)]
pub struct Stage<'a> {
    pub name: &'a str,
    pub variables: &'a [(String, String)],
}

/// The stage of a request served without stages: `$default`, no variables
/// (every `$stageVariables.NAME` is empty).
pub const DEFAULT_STAGE: Stage<'static> = Stage {
    name: "$default",
    variables: &[],
};

/// The one place a stage variable is looked up.
pub fn stage_variable<'a>(stage: &Stage<'a>, name: &str) -> Option<&'a str> {
    stage
        .variables
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// What `$context` reads: the exchange's facts, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub request_id: &'a [u8],
    pub source_ip: IpAddr,
    pub method: Method,
    pub minor_version: u8,
    pub route_key: &'a str,
    pub api: &'a str,
    pub principal: Option<&'a str>,
    pub api_key_name: Option<&'a str>,
    pub stage: Stage<'a>,
    /// The claims of the verified JWT a request mapping reads, by name
    /// (only those: `RequestMapping::claims`), as text.
    pub claims: &'a [(Box<str>, Box<str>)],
}

/// What a request mapping reads.
pub struct RequestInputs<'a> {
    /// The client's bytes, from the head's first byte.
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    /// Route parameters, raw (still percent-encoded).
    pub params: &'a [(&'a str, &'a [u8])],
    /// The body parsed as JSON, when a value reads it and it is JSON.
    pub json: Option<&'a serde_json::Value>,
    pub ctx: &'a Context<'a>,
}

/// A response mapping, as the proxy applies it.
#[derive(Debug, Clone, Copy)]
pub struct ResponseMap<'a> {
    pub mapping: &'a ResponseMapping,
    pub ctx: Context<'a>,
}

/// A mapped request value that cannot be sent: the request is refused
/// (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadValue(pub &'static str);

// === compile ===

/// One API's or route's entries, parsed and checked, before merging.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    request: Vec<(String, Entry)>,
    response: Vec<(u16, Vec<(String, Entry)>)>,
}

#[derive(Debug, Clone)]
enum Entry {
    Path(Value),
    Header(Op),
    Query(Op),
    Status(u16),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// Parses and checks a `mapping` table. `key` is its config path
/// (`apis[0].routes[1].mapping`). `params` are the route key's parameters
/// (`$request.path.NAME` must name one); None for an API's mapping, whose
/// routes differ (a parameter a route lacks is empty there).
pub fn parse(
    raw: Option<&RawMapping>,
    params: Option<&[String]>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Entries {
    let mut out = Entries::default();
    let Some(raw) = raw else {
        return out;
    };
    for (k, v) in raw.request.iter().flatten() {
        let ekey = format!("{key}.request.{k:?}");
        match parse_request_entry(k, v, params) {
            Ok(e) => out.request.push((k.clone(), e)),
            Err(msg) => errors.push(ConfigError::new(ekey, msg)),
        }
    }
    for (status, entries) in raw.response.iter().flatten() {
        let skey = format!("{key}.response.{status}");
        let code = match status.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => c,
            _ => {
                errors.push(ConfigError::new(
                    skey,
                    format!("{status:?} is not an integration status code (200-599)"),
                ));
                continue;
            }
        };
        let mut list = Vec::new();
        for (k, v) in entries {
            match parse_response_entry(k, v) {
                Ok(e) => list.push((k.clone(), e)),
                Err(msg) => errors.push(ConfigError::new(format!("{skey}.{k:?}"), msg)),
            }
        }
        out.response.push((code, list));
    }
    out
}

/// Merges an API's entries with a route's (the route's win, key by key)
/// into the program, or None when nothing maps.
pub fn build(api: &Entries, route: &Entries) -> Option<Box<Mapping>> {
    let mut req: Vec<&(String, Entry)> = route.request.iter().collect();
    for e in &api.request {
        if !route.request.iter().any(|(k, _)| *k == e.0) {
            req.push(e);
        }
    }
    let request = (!req.is_empty()).then(|| {
        let mut m = RequestMapping::default();
        for (_, e) in req {
            match e {
                Entry::Path(v) => m.path = Some(v.clone()),
                Entry::Header(op) => m.headers.push(op.clone()),
                Entry::Query(op) => m.query.push(op.clone()),
                Entry::Status(_) => {}
            }
        }
        m.headers.sort_by_key(|o| o.action);
        m.query.sort_by_key(|o| o.action);
        m.needs_body = m
            .path
            .iter()
            .chain(m.headers.iter().map(|o| &o.value))
            .chain(m.query.iter().map(|o| &o.value))
            .any(|v| v.0.iter().any(|p| matches!(p, Piece::Var(Var::Body(_)))));
        for v in m
            .path
            .iter()
            .chain(m.headers.iter().map(|o| &o.value))
            .chain(m.query.iter().map(|o| &o.value))
        {
            for p in &v.0 {
                if let Piece::Var(Var::Claim(n)) = p {
                    if !m.claims.contains(n) {
                        m.claims.push(n.clone());
                    }
                }
            }
        }
        m
    });
    let mut statuses: Vec<u16> = route
        .response
        .iter()
        .chain(&api.response)
        .map(|(s, _)| *s)
        .collect();
    statuses.sort_unstable();
    statuses.dedup();
    let response = (!statuses.is_empty()).then(|| {
        let mut r = ResponseMapping::default();
        for s in statuses {
            let of = |e: &Entries| {
                e.response
                    .iter()
                    .filter(|(c, _)| *c == s)
                    .flat_map(|(_, l)| l.iter())
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let (own, inherited) = (of(route), of(api));
            let mut m = StatusMapping::default();
            let merged = own.iter().chain(
                inherited
                    .iter()
                    .filter(|(k, _)| !own.iter().any(|(o, _)| o == k)),
            );
            for (_, e) in merged {
                match e {
                    Entry::Status(c) => m.status = Some(*c),
                    Entry::Header(op) => m.headers.push(op.clone()),
                    Entry::Path(_) | Entry::Query(_) => {}
                }
            }
            m.headers.sort_by_key(|o| o.action);
            r.by_status.push((s, m));
        }
        r
    });
    if request.is_none() && response.is_none() {
        return None;
    }
    Some(Box::new(Mapping { request, response }))
}

fn parse_action(k: &str) -> Result<(Action, &str), String> {
    let (action, target) = k.split_once(':').ok_or_else(|| {
        format!("{k:?} is not ACTION:TARGET (e.g. \"append:header.x-name\"); ACTION is append, overwrite or remove")
    })?;
    let action = match action {
        "append" => Action::Append,
        "overwrite" => Action::Overwrite,
        "remove" => Action::Remove,
        other => {
            return Err(format!(
                "{other:?} is not an action: use append, overwrite or remove"
            ))
        }
    };
    Ok((action, target))
}

fn header_op(
    action: Action,
    name: &str,
    v: &str,
    side: Side,
    params: Option<&[String]>,
) -> Result<Op, String> {
    if name.is_empty() || !name.bytes().all(crate::http::parse::is_token_byte) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let lower = name.to_ascii_lowercase();
    if is_reserved(&lower) {
        return Err(format!(
            "header {name:?} is reserved and cannot be mapped (docs/mapping.md lists the reserved headers)"
        ));
    }
    if side == Side::Request && lower == "host" && action != Action::Overwrite {
        return Err(
            "an HTTP/1.1 request has exactly one Host header: it can only be overwritten".into(),
        );
    }
    let value = if action == Action::Remove {
        Value::default()
    } else {
        parse_value(v, side, params)?
    };
    Ok(Op {
        action,
        name: lower.into(),
        value,
    })
}

fn parse_request_entry(k: &str, v: &str, params: Option<&[String]>) -> Result<Entry, String> {
    let (action, target) = parse_action(k)?;
    if target == "path" {
        if action != Action::Overwrite {
            return Err("the path can only be overwritten (\"overwrite:path\")".into());
        }
        return Ok(Entry::Path(parse_value(v, Side::Request, params)?));
    }
    if let Some(name) = target.strip_prefix("header.") {
        return Ok(Entry::Header(header_op(
            action,
            name,
            v,
            Side::Request,
            params,
        )?));
    }
    if let Some(name) = target.strip_prefix("querystring.") {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~[]".contains(&b))
        {
            return Err(format!(
                "{name:?} is not a query parameter name this gateway maps (letters, digits, '-', '.', '_', '~', '[', ']')"
            ));
        }
        let value = if action == Action::Remove {
            Value::default()
        } else {
            parse_value(v, Side::Request, params)?
        };
        return Ok(Entry::Query(Op {
            action,
            name: name.into(),
            value,
        }));
    }
    Err(format!(
        "{target:?} is not a request target: use header.NAME, querystring.NAME or path"
    ))
}

fn parse_response_entry(k: &str, v: &str) -> Result<Entry, String> {
    let (action, target) = parse_action(k)?;
    if target == "statuscode" {
        if action != Action::Overwrite {
            return Err(
                "the status code can only be overwritten (\"overwrite:statuscode\")".into(),
            );
        }
        return match v.trim().parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) && c != 204 && c != 304 => Ok(Entry::Status(c)),
            _ => Err(format!(
                "{v:?} is not a status this gateway maps to: a number from 200 to 599, not 204 or 304 (they have no body), and not a variable"
            )),
        };
    }
    if let Some(name) = target.strip_prefix("header.") {
        return Ok(Entry::Header(header_op(
            action,
            name,
            v,
            Side::Response,
            None,
        )?));
    }
    Err(format!(
        "{target:?} is not a response target: use header.NAME or statuscode"
    ))
}

/// A value: `$source` alone, or text with `${source}` in it.
fn parse_value(v: &str, side: Side, params: Option<&[String]>) -> Result<Value, String> {
    if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("the value has control characters".into());
    }
    if let Some(expr) = v.strip_prefix('$').filter(|e| !e.starts_with('{')) {
        return Ok(Value(vec![Piece::Var(parse_var(expr, side, params)?)]));
    }
    let mut pieces = Vec::new();
    let mut rest = v;
    while let Some(open) = rest.find("${") {
        if open > 0 {
            pieces.push(Piece::Text(rest.as_bytes()[..open].into()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{v:?}: \"${{\" without its closing \"}}\""))?;
        pieces.push(Piece::Var(parse_var(&after[..close], side, params)?));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.as_bytes().into()));
    }
    Ok(Value(pieces))
}

const SOURCES: &str = "sources are $request.header.NAME, $request.querystring.NAME, $request.path, $request.path.NAME, $request.body.PATH, $context.NAME, $stageVariables.NAME (request) and $response.header.NAME, $context.NAME, $stageVariables.NAME (response)";

fn parse_var(expr: &str, side: Side, params: Option<&[String]>) -> Result<Var, String> {
    let var = if let Some(r) = expr.strip_prefix("request.") {
        if side == Side::Response {
            return Err(format!(
                "${expr}: $request values are not available in a response mapping"
            ));
        }
        if r == "path" {
            Var::Path
        } else if let Some(p) = r.strip_prefix("path.") {
            if let Some(params) = params {
                if !params.iter().any(|x| x == p) {
                    return Err(format!(
                        "${expr}: {p:?} is not a parameter of the route key (it has: {})",
                        if params.is_empty() {
                            "none".to_string()
                        } else {
                            params.join(", ")
                        }
                    ));
                }
            }
            Var::PathParam(p.into())
        } else if let Some(h) = r.strip_prefix("header.") {
            if h.is_empty() || !h.bytes().all(crate::http::parse::is_token_byte) {
                return Err(format!("${expr}: {h:?} is not a valid header name"));
            }
            Var::Header(h.to_ascii_lowercase().into())
        } else if let Some(q) = r.strip_prefix("querystring.") {
            if q.is_empty() {
                return Err(format!("${expr}: the query parameter's name is missing"));
            }
            Var::Query(q.into())
        } else if let Some(path) = r.strip_prefix("body.") {
            Var::Body(parse_json_path(path).map_err(|e| format!("${expr}: {e}"))?)
        } else if r == "body" {
            return Err(format!(
                "${expr}: name a member of the JSON body ($request.body.NAME); the whole body is not a value"
            ));
        } else {
            return Err(format!("${expr} is not a source; {SOURCES}"));
        }
    } else if let Some(claim) = expr
        .strip_prefix("context.authorizer.claims.")
        .or_else(|| expr.strip_prefix("context.authorizer.jwt.claims."))
    {
        if side == Side::Response {
            return Err(format!(
                "${expr} is not available in a response mapping (the request's head is gone by then)"
            ));
        }
        if claim.is_empty() {
            return Err(format!("${expr}: the claim's name is missing"));
        }
        Var::Claim(claim.into())
    } else if let Some(c) = expr.strip_prefix("context.") {
        let Some(&(_, ctx, in_response)) = CONTEXT.iter().find(|(n, _, _)| *n == c) else {
            return Err(format!(
                "${expr}: unknown $context variable; known: {}",
                CONTEXT
                    .iter()
                    .map(|(n, _, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if side == Side::Response && !in_response {
            return Err(format!(
                "${expr} is not available in a response mapping (the request's head is gone by then)"
            ));
        }
        if side == Side::Request && ctx == Ctx::IntegrationStatus {
            return Err(format!("${expr} is only available in a response mapping"));
        }
        Var::Context(ctx)
    } else if let Some(n) = expr.strip_prefix("stageVariables.") {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "${expr}: a stage variable's name is letters, digits and '_'"
            ));
        }
        Var::StageVariable(n.into())
    } else if let Some(r) = expr.strip_prefix("response.") {
        if side == Side::Request {
            return Err(format!(
                "${expr}: $response values are only available in a response mapping"
            ));
        }
        if let Some(h) = r.strip_prefix("header.") {
            if h.is_empty() || !h.bytes().all(crate::http::parse::is_token_byte) {
                return Err(format!("${expr}: {h:?} is not a valid header name"));
            }
            Var::ResponseHeader(h.to_ascii_lowercase().into())
        } else if r == "body" || r.starts_with("body.") {
            return Err(format!(
                "${expr}: $response.body is not supported: response bodies stream through the gateway without being read"
            ));
        } else {
            return Err(format!("${expr} is not a source; {SOURCES}"));
        }
    } else {
        return Err(format!("${expr} is not a source; {SOURCES}"));
    };
    Ok(var)
}

/// `a.b[0].c`: member names and array indices.
fn parse_json_path(path: &str) -> Result<Box<[Step]>, String> {
    let mut steps = Vec::new();
    for seg in path.split('.') {
        let (name, mut rest) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if name.is_empty() && (steps.is_empty() || rest.is_empty()) && !seg.starts_with('[') {
            return Err(format!("{path:?} has an empty member name"));
        }
        if !name.is_empty() {
            steps.push(Step::Key(name.into()));
        }
        while !rest.is_empty() {
            let close = rest
                .find(']')
                .ok_or_else(|| format!("{path:?}: '[' without ']'"))?;
            let idx = rest[1..close].parse::<usize>().map_err(|_| {
                format!(
                    "{path:?}: [{}] is not an array index (recursive descent and filters are not supported)",
                    &rest[1..close]
                )
            })?;
            steps.push(Step::Index(idx));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(format!("{path:?}: unexpected {rest:?} after ']'"));
            }
        }
    }
    if steps.is_empty() {
        return Err(format!("{path:?} names nothing"));
    }
    Ok(steps.into())
}

// === run: the request side ===

/// Parses a body read for `$request.body.*` (its framing included, as
/// `Conn::buffer_body` leaves it). None when it is not JSON.
pub fn parse_body(raw: &[u8], chunked: bool, max_header_bytes: usize) -> Option<serde_json::Value> {
    if !chunked {
        return serde_json::from_slice(raw).ok();
    }
    let mut dec = crate::http::body::ChunkedDecoder::new(false, max_header_bytes);
    let mut data = Vec::with_capacity(raw.len());
    let mut pos = 0;
    while pos < raw.len() && !dec.is_done() {
        let step = dec.step(&raw[pos..]).ok()?;
        if step.forward {
            data.extend_from_slice(&raw[pos..pos + step.consumed]);
        }
        pos += step.consumed;
    }
    serde_json::from_slice(&data).ok()
}

impl RequestMapping {
    /// Rewrites the upstream request head in `xbuf` (as
    /// `write_upstream_head` wrote it). Values are read from the client's
    /// request, never from what an earlier operation wrote.
    pub fn apply(&self, xbuf: &mut Vec<u8>, inp: &RequestInputs<'_>) -> Result<(), BadValue> {
        let bad = BadValue("the upstream head is not as written");
        let line_end = memchr::memmem::find(xbuf, b"\r\n").ok_or(bad)?;
        let sp1 = xbuf[..line_end]
            .iter()
            .position(|&b| b == b' ')
            .ok_or(bad)?;
        let sp2 = xbuf[..line_end]
            .iter()
            .rposition(|&b| b == b' ')
            .ok_or(bad)?;
        if sp2 <= sp1 || xbuf.len() < line_end + 4 {
            return Err(bad);
        }
        let mut out = Vec::with_capacity(xbuf.len() + 256);
        let mut val = Vec::new();
        let old = &xbuf[..];
        let target = &old[sp1 + 1..sp2];
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(i) => (&target[..i], &target[i + 1..]),
            None => (target, &target[target.len()..]),
        };
        out.extend_from_slice(&old[..=sp1]);
        match &self.path {
            None => out.extend_from_slice(path),
            Some(v) => {
                val.clear();
                eval_request(v, inp, &mut val);
                let start = out.len();
                if val.first() != Some(&b'/') {
                    out.push(b'/');
                }
                push_encoded(&mut out, &val, PATH_SAFE);
                // The parser's rule for request paths (`/..%2F`, `..\`,
                // `..;x` too): a backend would resolve the segment and the
                // path would leave the place the mapping put it in.
                if has_dot_segment(&out[start..]) {
                    return Err(BadValue("a mapped path has a dot segment"));
                }
            }
        }
        if self.query.is_empty() {
            if !query.is_empty() {
                out.push(b'?');
                out.extend_from_slice(query);
            }
        } else {
            let mut first = true;
            let mut sep = |out: &mut Vec<u8>| {
                out.push(if first { b'?' } else { b'&' });
                first = false;
            };
            for pair in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
                let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
                // Compared decoded: a backend reads `%6cimit` as `limit`, and
                // the client's own value must not pass that way.
                let name = percent_decode(name);
                let dropped = self
                    .query
                    .iter()
                    .any(|o| o.action != Action::Append && o.name.as_bytes() == &name[..]);
                if !dropped {
                    sep(&mut out);
                    out.extend_from_slice(pair);
                }
            }
            for op in self.query.iter().filter(|o| o.action != Action::Remove) {
                val.clear();
                eval_request(&op.value, inp, &mut val);
                if val.is_empty() {
                    continue;
                }
                sep(&mut out);
                out.extend_from_slice(op.name.as_bytes());
                out.push(b'=');
                push_encoded(&mut out, &val, QUERY_SAFE);
            }
        }
        out.extend_from_slice(&old[sp2..line_end + 2]);
        // Header lines, up to the blank line that ends the head.
        let headers_end = old.len() - 2;
        let mut pos = line_end + 2;
        while pos < headers_end {
            let end = memchr::memmem::find(&old[pos..headers_end], b"\r\n")
                .map_or(headers_end, |i| pos + i + 2);
            let line = &old[pos..end];
            let name = line.split(|&b| b == b':').next().unwrap_or(line);
            // `X_User` too where `X-User` is overwritten or removed: CGI-style
            // backends (PHP, WSGI) read both as `HTTP_X_USER`, and the
            // client's own value must not reach them that way.
            let dropped = self
                .headers
                .iter()
                .any(|o| o.action != Action::Append && same_cgi_name(name, o.name.as_bytes()));
            if !dropped {
                out.extend_from_slice(line);
            }
            pos = end;
        }
        for op in self.headers.iter().filter(|o| o.action != Action::Remove) {
            val.clear();
            eval_request(&op.value, inp, &mut val);
            let v = trim_ows(&val);
            if v.is_empty() {
                continue;
            }
            if !is_header_value(v) {
                return Err(BadValue("a mapped header value has control characters"));
            }
            out.extend_from_slice(op.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        *xbuf = out;
        Ok(())
    }
}

/// Header names equal ignoring ASCII case, with `-` and `_` taken alike
/// (as a CGI variable `HTTP_X_USER` takes them).
fn same_cgi_name(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// Bytes kept as they are in a mapped path; others are percent-encoded.
/// `%` stays when it starts a valid escape.
const PATH_SAFE: &[u8] = b"-._~!$&'()*+,;=:@/";
/// Bytes kept as they are in a mapped query value.
const QUERY_SAFE: &[u8] = b"-._~!$'()*,;:@/";

fn push_encoded(out: &mut Vec<u8>, v: &[u8], safe: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (i, &b) in v.iter().enumerate() {
        let escape = b == b'%'
            && v.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && v.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if b.is_ascii_alphanumeric() || safe.contains(&b) || escape {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// Without leading and trailing spaces and tabs, which HTTP does not count
/// as part of a header value (RFC 9110 §5.5).
fn trim_ows(v: &[u8]) -> &[u8] {
    &v[ows_range(v)]
}

/// Where `v` is without leading and trailing spaces and tabs.
fn ows_range(v: &[u8]) -> std::ops::Range<usize> {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    start..end
}

fn is_header_value(v: &[u8]) -> bool {
    !v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

fn eval_request(v: &Value, inp: &RequestInputs<'_>, out: &mut Vec<u8>) {
    for p in &v.0 {
        match p {
            Piece::Text(t) => out.extend_from_slice(t),
            Piece::Var(var) => match var {
                Var::Header(name) => {
                    join_values(
                        out,
                        inp.head
                            .headers
                            .iter()
                            .filter(|h| h.name.get(inp.buf).eq_ignore_ascii_case(name.as_bytes()))
                            .map(|h| h.value.get(inp.buf)),
                    );
                }
                Var::Query(name) => {
                    let q = inp.head.query.map(|q| q.get(inp.buf)).unwrap_or(&[]);
                    join_values(
                        out,
                        q.split(|&b| b == b'&').filter_map(|pair| {
                            let mut kv = pair.splitn(2, |&b| b == b'=');
                            let k = kv.next()?;
                            (k == name.as_bytes()).then(|| kv.next().unwrap_or(&[]))
                        }),
                    );
                }
                Var::Path => out.extend_from_slice(inp.head.path(inp.buf)),
                Var::PathParam(name) => {
                    if let Some((_, v)) = inp.params.iter().find(|(k, _)| *k == &**name) {
                        out.extend_from_slice(v);
                    }
                }
                Var::Body(steps) => {
                    if let Some(v) = inp.json.and_then(|j| json_at(j, steps)) {
                        push_json(out, v);
                    }
                }
                Var::Context(c) => push_context(out, *c, inp.ctx, Some(inp), None),
                Var::Claim(n) => {
                    if let Some((_, v)) = inp.ctx.claims.iter().find(|(k, _)| k == n) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Var::StageVariable(n) => {
                    if let Some(v) = stage_variable(&inp.ctx.stage, n) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Var::ResponseHeader(_) => {}
            },
        }
    }
}

/// Several values of one name, joined with commas (AWS's rule).
fn join_values<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = &'a [u8]>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(v);
    }
}

fn json_at<'j>(mut v: &'j serde_json::Value, steps: &[Step]) -> Option<&'j serde_json::Value> {
    for s in steps {
        v = match s {
            Step::Key(k) => v.get(&**k)?,
            Step::Index(i) => v.get(*i)?,
        };
    }
    Some(v)
}

/// A string as its text; null as nothing; anything else as its JSON.
fn push_json(out: &mut Vec<u8>, v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => out.extend_from_slice(s.as_bytes()),
        serde_json::Value::Null => {}
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn push_context(
    out: &mut Vec<u8>,
    c: Ctx,
    ctx: &Context<'_>,
    req: Option<&RequestInputs<'_>>,
    status: Option<u16>,
) {
    match c {
        Ctx::RequestId => out.extend_from_slice(ctx.request_id),
        Ctx::SourceIp => crate::http::encode::push_ip(out, ctx.source_ip),
        Ctx::UserAgent => {
            if let Some(r) = req {
                if let Some(h) = r
                    .head
                    .headers
                    .iter()
                    .find(|h| h.name.get(r.buf).eq_ignore_ascii_case(b"user-agent"))
                {
                    out.extend_from_slice(h.value.get(r.buf));
                }
            }
        }
        Ctx::HttpMethod => match req {
            Some(r) => out.extend_from_slice(r.head.method_span.get(r.buf)),
            None => out.extend_from_slice(ctx.method.as_str().as_bytes()),
        },
        Ctx::RouteKey => out.extend_from_slice(ctx.route_key.as_bytes()),
        Ctx::Path => {
            if let Some(r) = req {
                out.extend_from_slice(r.head.path(r.buf));
            }
        }
        Ctx::Stage => out.extend_from_slice(ctx.stage.name.as_bytes()),
        Ctx::ApiId => out.extend_from_slice(ctx.api.as_bytes()),
        Ctx::DomainName => {
            if let Some(host) = req.and_then(|r| r.head.host.map(|h| h.get(r.buf))) {
                // Without the port; an IPv6 literal keeps its brackets.
                let end = match host.iter().rposition(|&b| b == b':') {
                    Some(i) if !host[i..].contains(&b']') => i,
                    _ => host.len(),
                };
                out.extend_from_slice(&host[..end]);
            }
        }
        Ctx::RequestTimeEpoch => {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            crate::http::encode::push_u64(out, ms);
        }
        Ctx::PrincipalId => {
            if let Some(p) = ctx.principal {
                out.extend_from_slice(p.as_bytes());
            }
        }
        Ctx::ApiKeyName => {
            if let Some(k) = ctx.api_key_name {
                out.extend_from_slice(k.as_bytes());
            }
        }
        Ctx::Protocol => out.extend_from_slice(if ctx.minor_version == 0 {
            b"HTTP/1.0"
        } else {
            b"HTTP/1.1"
        }),
        Ctx::IntegrationStatus => {
            if let Some(s) = status {
                crate::http::encode::push_u64(out, s as u64);
            }
        }
    }
}

// === run: the response side ===

impl ResponseMapping {
    /// The operations for an integration status, if any.
    pub fn for_status(&self, status: u16) -> Option<&StatusMapping> {
        self.by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, m)| m)
    }
}

impl StatusMapping {
    /// The status the client gets for the integration's `status`.
    pub fn status(&self, status: u16) -> u16 {
        self.status.unwrap_or(status)
    }

    /// Writes the response's header lines: the upstream's (`headers`
    /// whose `keep` holds) minus those removed or overwritten, then the
    /// mapped ones. A mapped value that is empty or has control characters
    /// is left out. Returns whether a `date` line was written.
    pub fn write_headers(
        &self,
        out: &mut Vec<u8>,
        buf: &[u8],
        headers: &[HeaderSpan],
        keep: impl Fn(&HeaderSpan) -> bool,
        ctx: &Context<'_>,
        status: u16,
    ) -> bool {
        let mut has_date = false;
        for h in headers.iter().filter(|h| keep(h)) {
            let name = h.name.get(buf);
            if self
                .headers
                .iter()
                .any(|o| o.action != Action::Append && name.eq_ignore_ascii_case(o.name.as_bytes()))
            {
                continue;
            }
            has_date |= name.eq_ignore_ascii_case(b"date");
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.get(buf));
            out.extend_from_slice(b"\r\n");
        }
        for op in self.headers.iter().filter(|o| o.action != Action::Remove) {
            let start = out.len();
            out.extend_from_slice(op.name.as_bytes());
            out.extend_from_slice(b": ");
            let value_at = out.len();
            for p in &op.value.0 {
                match p {
                    Piece::Text(t) => out.extend_from_slice(t),
                    Piece::Var(Var::ResponseHeader(n)) => join_values(
                        out,
                        headers
                            .iter()
                            .filter(|h| h.name.get(buf).eq_ignore_ascii_case(n.as_bytes()))
                            .map(|h| h.value.get(buf)),
                    ),
                    Piece::Var(Var::Context(c)) => push_context(out, *c, ctx, None, Some(status)),
                    Piece::Var(Var::StageVariable(n)) => {
                        if let Some(v) = stage_variable(&ctx.stage, n) {
                            out.extend_from_slice(v.as_bytes());
                        }
                    }
                    Piece::Var(_) => {}
                }
            }
            let r = ows_range(&out[value_at..]);
            let (from, to) = (value_at + r.start, value_at + r.end);
            if from == to || !is_header_value(&out[from..to]) {
                out.truncate(start);
            } else {
                out.copy_within(from..to, value_at);
                out.truncate(value_at + (to - from));
                out.extend_from_slice(b"\r\n");
                has_date |= op.name.eq_ignore_ascii_case("date");
            }
        }
        has_date
    }
}

#[cfg(test)]
mod tests;
