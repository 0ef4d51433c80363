//! CORS per API, as Amazon API Gateway HTTP APIs do it: the second policy
//! phase, after the IP rules.
//!
//! With `cors = { ... }` on an `[[apis]]` entry, the gateway owns CORS for
//! that API:
//!
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   is answered here with 204 and an empty body, whatever route the path has
//!   (none, an `ANY` route, even an `OPTIONS` route): the integration never
//!   sees it. When the origin, the method and every requested header are
//!   allowed, the answer carries the `Access-Control-Allow-*` headers;
//!   otherwise it carries none of them, and the browser refuses the actual
//!   request. (The gateway sends preflights to paths no route takes here
//!   too, through `driver::unrouted`.)
//! - an actual request with an allowed `Origin` gets
//!   `Access-Control-Allow-Origin`, `-Allow-Credentials` and
//!   `-Expose-Headers` on whatever answers it: the mock, the upstream, or a
//!   gateway error such as 404, so a browser can read the error.
//!
//! Everything that does not depend on the request is rendered to header
//! bytes once, at config compile time. Per request the work is a few byte
//! comparisons and copying the origin when it is echoed.

use super::{Decision, Refusal, RequestView};
use crate::config::ConfigError;
use crate::http::method::Method;

/// The largest `max_age`: a day. Browsers cap it lower anyway (Chromium at
/// two hours, Firefox at a day).
pub const MAX_MAX_AGE: i64 = 86_400;

/// The methods `allow_methods` may name, as API Gateway accepts them.
pub const CORS_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// A compiled CORS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// `*` is listed (never with credentials: refused at compile time).
    any_origin: bool,
    /// Exact origins, normalised (lower-case scheme and host, no default
    /// port), as browsers serialise them.
    origins: Vec<Box<[u8]>>,
    /// `scheme://` prefixes from `scheme://*` entries.
    origin_schemes: Vec<Box<[u8]>>,
    any_method: bool,
    /// `access-control-allow-methods: GET, POST\r\n`, or empty when no
    /// method is listed or `*` is.
    methods_line: Vec<u8>,
    methods: Vec<Box<[u8]>>,
    any_header: bool,
    /// Lower-case.
    headers: Vec<Box<[u8]>>,
    credentials: bool,
    /// The answer depends on the request's `Origin`: add `Vary: Origin`.
    vary: bool,
    /// Max-age and credentials lines of a preflight answer.
    preflight_lines: Vec<u8>,
    /// Expose-headers and credentials lines of an actual response.
    actual_lines: Vec<u8>,
}

const VARY_ORIGIN: &[u8] = b"vary: Origin\r\n";

/// How an allowed origin is written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AllowOrigin<'a> {
    Star,
    Echo(&'a [u8]),
}

impl Cors {
    /// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
    /// is answered here; anything else continues.
    pub fn preflight(&self, view: &RequestView<'_>) -> Decision {
        if view.head.method != Method::Options {
            return Decision::Continue;
        }
        let (Some(origin), Some(method)) = (
            view.header("origin"),
            view.header("access-control-request-method"),
        ) else {
            return Decision::Continue;
        };
        let requested = view.header("access-control-request-headers");
        Decision::Respond(self.preflight_answer(origin, method, requested))
    }

    /// Appends the CORS header lines for an actual response.
    pub fn response_headers(&self, view: &RequestView<'_>, extra: &mut Vec<u8>) {
        if let Some(origin) = view.header("origin") {
            self.actual_headers(origin, extra);
        }
    }

    /// The gateway's answer to a preflight: 204, empty body, and the CORS
    /// headers only when everything asked for is allowed.
    pub fn preflight_answer(
        &self,
        origin: &[u8],
        method: &[u8],
        requested_headers: Option<&[u8]>,
    ) -> Refusal {
        let mut headers = Vec::new();
        if let Some(allow) = self.allow_origin(origin) {
            if self.method_allowed(method) && self.headers_allowed(requested_headers) {
                push_allow_origin(&mut headers, allow);
                if self.any_method {
                    headers.extend_from_slice(b"access-control-allow-methods: ");
                    // With credentials a browser reads `*` as a method name.
                    if self.credentials {
                        headers.extend_from_slice(method);
                    } else {
                        headers.push(b'*');
                    }
                    headers.extend_from_slice(b"\r\n");
                } else {
                    headers.extend_from_slice(&self.methods_line);
                }
                // Echoing the names asked for (all allowed) is right with or
                // without credentials, and covers `Authorization`, which a
                // browser never lets `*` stand for.
                if let Some(list) = requested_headers {
                    let mut first = true;
                    for name in list_items(list) {
                        headers.extend_from_slice(if first {
                            &b"access-control-allow-headers: "[..]
                        } else {
                            b", "
                        });
                        headers.extend(name.iter().map(u8::to_ascii_lowercase));
                        first = false;
                    }
                    if !first {
                        headers.extend_from_slice(b"\r\n");
                    }
                }
                headers.extend_from_slice(&self.preflight_lines);
            }
        }
        if self.vary {
            headers.extend_from_slice(VARY_ORIGIN);
        }
        Refusal {
            status: 204,
            message: "".into(),
            headers,
            body: Some(Vec::new()),
        }
    }

    /// The header lines for an actual response to a request from `origin`:
    /// the CORS headers when it is allowed, and `Vary: Origin` whenever the
    /// answer depends on the origin (so a cache does not hand one origin's
    /// answer to another).
    pub fn actual_headers(&self, origin: &[u8], out: &mut Vec<u8>) {
        if let Some(allow) = self.allow_origin(origin) {
            push_allow_origin(out, allow);
            out.extend_from_slice(&self.actual_lines);
        }
        if self.vary {
            out.extend_from_slice(VARY_ORIGIN);
        }
    }

    fn allow_origin<'a>(&self, origin: &'a [u8]) -> Option<AllowOrigin<'a>> {
        if self.any_origin {
            return Some(AllowOrigin::Star);
        }
        if self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Some(AllowOrigin::Echo(origin));
        }
        // `scheme://*`: any well-formed origin of that scheme. The rest is
        // checked because it is echoed into the response.
        self.origin_schemes
            .iter()
            .any(|s| {
                origin.len() > s.len()
                    && origin[..s.len()].eq_ignore_ascii_case(s)
                    && host_port(&origin[s.len()..]).is_ok()
            })
            .then_some(AllowOrigin::Echo(origin))
    }

    fn method_allowed(&self, method: &[u8]) -> bool {
        is_token(method) && (self.any_method || self.methods.iter().any(|m| **m == *method))
    }

    fn headers_allowed(&self, requested: Option<&[u8]>) -> bool {
        let Some(list) = requested else {
            return true;
        };
        list_items(list).all(|name| {
            is_token(name)
                && (self.any_header || self.headers.iter().any(|h| h.eq_ignore_ascii_case(name)))
        })
    }
}

fn push_allow_origin(out: &mut Vec<u8>, allow: AllowOrigin<'_>) {
    out.extend_from_slice(b"access-control-allow-origin: ");
    match allow {
        AllowOrigin::Star => out.push(b'*'),
        AllowOrigin::Echo(o) => out.extend_from_slice(o),
    }
    out.extend_from_slice(b"\r\n");
}

/// The elements of a comma-separated header list (RFC 9110 §5.6.1), with
/// surrounding whitespace trimmed and empty elements skipped.
fn list_items(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == b',')
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
}

// Method and header names are RFC 9110 tokens.
pub use crate::config::raw::cors::RawCors;
use crate::http::parse::is_token;

/// Checks the `host[:port]` part of an origin; returns the host (lower-case
/// later) and the port, if any.
fn host_port(s: &[u8]) -> Result<(&[u8], Option<u16>), &'static str> {
    let (host, port) = if s.first() == Some(&b'[') {
        let Some(end) = s.iter().position(|&b| b == b']') else {
            return Err("an IPv6 host needs its closing ']'");
        };
        if super::ip_rules::parse_ipv6(&s[1..end]).is_none() {
            return Err("the host in [...] is not an IPv6 address");
        }
        match &s[end + 1..] {
            [] => (&s[..=end], None),
            [b':', port @ ..] => (&s[..=end], Some(port)),
            _ => return Err("only \":port\" may follow an IPv6 host"),
        }
    } else {
        match s.iter().rposition(|&b| b == b':') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        }
    };
    let bracketed = host.first() == Some(&b'[');
    if !bracketed
        && (host.is_empty()
            || !host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
    {
        return Err("the host may hold only letters, digits, '.', '-' and '_'");
    }
    let port = match port {
        None => None,
        Some(p) => {
            let ok =
                !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit) && p[0] != b'0';
            let n = std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u16>().ok());
            match n {
                Some(n) if ok => Some(n),
                _ => return Err("the port must be a number from 1 to 65535"),
            }
        }
    };
    Ok((host, port))
}

/// One parsed `allow_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginSpec {
    Any,
    /// `https://*`: the prefix `https://`.
    Scheme(String),
    /// Normalised as a browser serialises it.
    Exact(String),
}

/// Parses an `allow_origins` entry.
fn parse_origin(s: &str) -> Result<OriginSpec, String> {
    const FORM: &str = "write scheme://host[:port], e.g. \"https://app.example.com\", or \"*\"";
    if s == "*" {
        return Ok(OriginSpec::Any);
    }
    if s.eq_ignore_ascii_case("null") {
        return Err("the \"null\" origin is what sandboxed pages and local files send: allowing it lets any of them in; list real origins".into());
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("{s:?} is not an origin: {FORM}"));
    };
    let scheme_ok = scheme
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
    if !scheme_ok {
        return Err(format!("{s:?} does not start with a scheme: {FORM}"));
    }
    let scheme = scheme.to_ascii_lowercase();
    if rest == "*" {
        return Ok(OriginSpec::Scheme(format!("{scheme}://")));
    }
    if let Some(bare) = rest
        .strip_suffix('/')
        .filter(|r| !r.contains(['/', '?', '#']))
    {
        return Err(format!(
            "{s:?} ends with '/': an origin has no path; write \"{scheme}://{bare}\""
        ));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "{s:?} has a path, query or fragment: an origin is only scheme://host[:port]"
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "{s:?} has user information: an origin is only scheme://host[:port]"
        ));
    }
    if rest.contains('*') {
        return Err(format!(
            "{s:?}: \"*\" is a wildcard only alone or as \"scheme://*\"; list each origin"
        ));
    }
    let (host, port) = host_port(rest.as_bytes()).map_err(|why| format!("{s:?}: {why}"))?;
    let host = String::from_utf8_lossy(host).to_ascii_lowercase();
    let default_port = matches!(
        (scheme.as_str(), port),
        ("http", Some(80)) | ("https", Some(443))
    );
    Ok(OriginSpec::Exact(match port {
        Some(p) if !default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    }))
}

/// Compiles an API's CORS settings; `key` is the API's (`apis[0]`).
pub fn compile(api: Option<&RawCors>, key: &str, errors: &mut Vec<ConfigError>) -> Option<Cors> {
    let raw = api?;
    let key = format!("{key}.cors");
    let before = errors.len();
    let credentials = raw.allow_credentials.unwrap_or(false);

    let mut any_origin = false;
    let mut origins: Vec<Box<[u8]>> = Vec::new();
    let mut origin_schemes: Vec<Box<[u8]>> = Vec::new();
    match raw.allow_origins.as_deref() {
        None | Some([]) => errors.push(ConfigError::new(
            format!("{key}.allow_origins"),
            "must list at least one origin (e.g. \"https://app.example.com\") or \"*\": without one, CORS allows nothing",
        )),
        Some(list) => {
            for (i, s) in list.iter().enumerate() {
                let k = format!("{key}.allow_origins[{i}]");
                match parse_origin(s) {
                    Ok(OriginSpec::Any) if credentials => errors.push(ConfigError::new(
                        k,
                        "\"*\" cannot be used with allow_credentials = true: browsers refuse a wildcard origin on credentialed requests; list the origins",
                    )),
                    Ok(OriginSpec::Any) => any_origin = true,
                    Ok(OriginSpec::Scheme(p)) => push_unique(&mut origin_schemes, p.into_bytes()),
                    Ok(OriginSpec::Exact(o)) => push_unique(&mut origins, o.into_bytes()),
                    Err(m) => errors.push(ConfigError::new(k, m)),
                }
            }
        }
    }

    let mut any_method = false;
    let mut methods: Vec<Box<[u8]>> = Vec::new();
    for (i, m) in raw.allow_methods.iter().flatten().enumerate() {
        if m == "*" {
            any_method = true;
        } else if CORS_METHODS.contains(&m.as_str()) {
            push_unique(&mut methods, m.as_bytes().to_vec());
        } else {
            let upper = m.to_ascii_uppercase();
            let message = if CORS_METHODS.contains(&upper.as_str()) {
                format!("methods are case-sensitive: write {upper:?}")
            } else {
                format!(
                    "{m:?} is not a method CORS can allow here: use {} or \"*\"",
                    CORS_METHODS.join(", ")
                )
            };
            errors.push(ConfigError::new(
                format!("{key}.allow_methods[{i}]"),
                message,
            ));
        }
    }

    let (any_header, headers) = header_list(
        raw.allow_headers.as_deref(),
        &format!("{key}.allow_headers"),
        errors,
    );
    let (any_expose, expose) = header_list(
        raw.expose_headers.as_deref(),
        &format!("{key}.expose_headers"),
        errors,
    );
    if any_expose && credentials {
        let i = raw
            .expose_headers
            .iter()
            .flatten()
            .position(|h| h == "*")
            .unwrap_or(0);
        errors.push(ConfigError::new(
            format!("{key}.expose_headers[{i}]"),
            "browsers read \"*\" as a header name on credentialed requests, so with allow_credentials = true it exposes nothing: list the headers to expose",
        ));
    }

    if let Some(age) = raw.max_age {
        if !(0..=MAX_MAX_AGE).contains(&age) {
            errors.push(ConfigError::new(
                format!("{key}.max_age"),
                format!("{age} is out of range: give 0 to {MAX_MAX_AGE} seconds (a day), or leave max_age out for the browser's default (5 s)"),
            ));
        }
    }
    if errors.len() > before {
        return None;
    }

    let mut methods_line = Vec::new();
    if !any_method && !methods.is_empty() {
        methods_line.extend_from_slice(b"access-control-allow-methods: ");
        methods_line.extend_from_slice(&methods.join(&b", "[..]));
        methods_line.extend_from_slice(b"\r\n");
    }
    let mut preflight_lines = Vec::new();
    if let Some(age) = raw.max_age {
        preflight_lines.extend_from_slice(format!("access-control-max-age: {age}\r\n").as_bytes());
    }
    let mut actual_lines = Vec::new();
    if any_expose {
        actual_lines.extend_from_slice(b"access-control-expose-headers: *\r\n");
    } else if !expose.is_empty() {
        actual_lines.extend_from_slice(b"access-control-expose-headers: ");
        actual_lines.extend_from_slice(&expose.join(&b", "[..]));
        actual_lines.extend_from_slice(b"\r\n");
    }
    if credentials {
        preflight_lines.extend_from_slice(b"access-control-allow-credentials: true\r\n");
        actual_lines.extend_from_slice(b"access-control-allow-credentials: true\r\n");
    }
    Some(Cors {
        any_origin,
        origins,
        origin_schemes,
        any_method,
        methods_line,
        methods,
        any_header,
        headers,
        credentials,
        vary: !any_origin,
        preflight_lines,
        actual_lines,
    })
}

fn push_unique(list: &mut Vec<Box<[u8]>>, item: Vec<u8>) {
    if !list.iter().any(|x| **x == *item) {
        list.push(item.into_boxed_slice());
    }
}

/// A list of header names, or `*`: lower-cased, duplicates dropped.
fn header_list(
    list: Option<&[String]>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> (bool, Vec<Box<[u8]>>) {
    let mut any = false;
    let mut out = Vec::new();
    for (i, h) in list.into_iter().flatten().enumerate() {
        if h == "*" {
            any = true;
        } else if is_token(h.as_bytes()) {
            push_unique(&mut out, h.to_ascii_lowercase().into_bytes());
        } else {
            errors.push(ConfigError::new(
                format!("{key}[{i}]"),
                format!(
                    "{h:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~), or \"*\""
                ),
            ));
        }
    }
    (any, out)
}

#[cfg(test)]
mod tests;
