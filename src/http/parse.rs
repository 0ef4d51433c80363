//! Request head parsing: the first step of a request's journey.
//!
//! A pure function over the bytes read so far. httparse does the tokenising
//! into a stack array of headers; this module adds the framing and security
//! rules a proxy needs (RFC 9112 §6, the request-smuggling vectors), and keeps
//! every position as a [`Span`] into the read buffer so nothing is copied.

use super::method::Method;
use super::names::{classify, Name};
use super::Reject;
use smallvec::SmallVec;

/// Hard cap on headers per request: the size of the stack array handed to
/// httparse. `max_headers` in config may only be lower.
pub const MAX_HEADERS_CAP: usize = 512;

/// The longest request id we accept from a client; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 200;

/// A byte range inside the head buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One header, as positions in the head buffer.
#[derive(Debug, Clone, Copy)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
    /// Hop-by-hop or otherwise handled by the gateway: not forwarded as is.
    pub hop: bool,
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Limits applied while parsing; see `[server.limits]`.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_request_line: usize,
    pub max_head: usize,
    pub max_headers: usize,
}

/// A parsed request head. All spans index the buffer it was parsed from.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub method: Method,
    pub method_span: Span,
    /// The path (origin-form, or the path part of an absolute-form target).
    /// Empty means `/` (an absolute-form target with no path).
    pub path: Span,
    /// The query without its '?'.
    pub query: Option<Span>,
    pub minor_version: u8,
    /// Inline room for 24 headers: a browser sends about 20, and more spill
    /// to the heap (an allocation per request; the request-path bench showed it
    /// when this was 16). The head lives in every connection task's state.
    pub headers: SmallVec<[HeaderSpan; 24]>,
    /// The authority of an absolute-form target, else the Host header.
    pub host: Option<Span>,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// A usable client-supplied X-Request-Id.
    pub request_id: Option<Span>,
    /// `Connection: upgrade` with an `Upgrade` header (not yet proxied).
    pub upgrade: bool,
}

impl RequestHead {
    /// A head with nothing parsed into it yet
    /// ([`parse_request_head_into`] sets every field).
    pub fn empty() -> RequestHead {
        RequestHead {
            len: 0,
            method: Method::Get,
            method_span: Span::default(),
            path: Span::default(),
            query: None,
            minor_version: 1,
            headers: SmallVec::new(),
            host: None,
            framing: Framing::None,
            keep_alive: false,
            expect_continue: false,
            request_id: None,
            upgrade: false,
        }
    }

    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        if self.path.is_empty() {
            b"/"
        } else {
            self.path.get(buf)
        }
    }
}

/// Hop-by-hop by RFC 9110 §7.6.1, plus the obsolete `Proxy-Connection` and
/// every `Proxy-*`: never forwarded in either direction.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    classify(name).is_hop_by_hop()
}

/// Marks the headers named in `Connection` as hop-by-hop (RFC 9110 §7.6.1).
/// Returns false if one of them is a framing header, which no peer may
/// hide that way.
pub fn mark_connection_listed(headers: &mut [HeaderSpan], buf: &[u8], listed: &[&[u8]]) -> bool {
    let mut ok = true;
    if listed.is_empty() {
        return ok;
    }
    for h in headers.iter_mut() {
        let name = h.name.get(buf);
        if listed.iter().any(|c| c.eq_ignore_ascii_case(name)) {
            if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"content-length")
            {
                ok = false;
            }
            h.hop = true;
        }
    }
    ok
}

/// A name that reads as a framing or routing header once '_' becomes '-'.
fn is_framing_lookalike(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 4] = [
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
    ];
    NAMES.iter().any(|n| {
        n.len() == name.len()
            && n.iter().zip(name).all(|(&a, &b)| {
                let b = if b == b'_' { b'-' } else { b };
                a == b.to_ascii_lowercase()
            })
    })
}

/// Splits a comma-separated header value into trimmed, non-empty elements.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

/// A Host value (or an absolute-form authority) is `host[:port]`: a
/// name of letters, digits, `.`, `-` and `_` (RFC 3986 reg-name and IPv4,
/// without the escapes and sub-delims no client puts in a host name), or
/// an IPv6 literal in brackets; the port is at most 5 digits (it may be
/// empty, RFC 3986 §3.2.3).
fn valid_host(host: &[u8]) -> bool {
    if host.is_empty() || host.len() > 255 {
        return false;
    }
    let (name_ok, port) = match host.strip_prefix(b"[") {
        Some(rest) => match rest.iter().position(|&b| b == b']') {
            Some(end) => (
                end > 0
                    && rest[..end]
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')),
                &rest[end + 1..],
            ),
            None => return false,
        },
        None => {
            let end = host.iter().position(|&b| b == b':').unwrap_or(host.len());
            let name = &host[..end];
            (
                !name.is_empty()
                    && name
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
                &host[end..],
            )
        }
    };
    name_ok
        && match port.split_first() {
            None => true,
            Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

/// True when a segment of `path` is `.` or `..` as a backend may read it:
/// segments are split on `/`, `\`, `%2F` and `%5C` (some backends decode
/// an encoded slash, some take a backslash for one), a segment's `;...`
/// parameters are left out (Tomcat, Spring and IIS strip them), and `%XX`
/// escapes are decoded. `/a/..%2Fb`, `/a/..\b`, `/a/..;x/b` and
/// `/a/%2e%2E/b` all have one; `/a%2Fb` and `/...` do not. One pass over
/// the bytes, nothing allocated.
pub fn has_dot_segment(path: &[u8]) -> bool {
    fn hex(b: Option<&u8>) -> Option<u8> {
        b.and_then(|&b| (b as char).to_digit(16)).map(|d| d as u8)
    }
    // In the segment so far: 0, 1 or 2 dots and nothing else, or 3 (some
    // other byte, or three dots): not a dot segment.
    let mut dots = 0u8;
    let mut params = false;
    let mut i = 0;
    while i < path.len() {
        let mut b = path[i];
        i += 1;
        if b == b'%' {
            if let (Some(h), Some(l)) = (hex(path.get(i)), hex(path.get(i + 1))) {
                b = h << 4 | l;
                i += 2;
            }
        }
        match b {
            b'/' | b'\\' => {
                if dots == 1 || dots == 2 {
                    return true;
                }
                dots = 0;
                params = false;
            }
            _ if params => {}
            b';' => params = true,
            b'.' => dots = (dots + 1).min(3),
            _ => dots = 3,
        }
    }
    dots == 1 || dots == 2
}

/// A request target split into path, query and (absolute-form) authority.
type TargetParts<'a> = (&'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);

/// Splits and checks the request target.
fn split_target(target: &[u8]) -> Result<TargetParts<'_>, Reject> {
    if memchr::memchr(b'#', target).is_some() {
        return Err(Reject::bad_request("Invalid request target"));
    }
    let (origin, authority) = if target.first() == Some(&b'/') {
        (target, None)
    } else {
        let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
            &target[7..]
        } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
            &target[8..]
        } else {
            // authority-form (CONNECT), asterisk-form and other schemes
            return Err(Reject::bad_request("Unsupported request target"));
        };
        let end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if !valid_host(authority) {
            return Err(Reject::bad_request("Invalid request target"));
        }
        (&rest[end..], Some(authority))
    };
    let (path, query) = match memchr::memchr(b'?', origin) {
        Some(q) => (&origin[..q], Some(&origin[q + 1..])),
        None => (origin, None),
    };
    if !path.is_empty() && path[0] != b'/' {
        return Err(Reject::bad_request("Invalid request target"));
    }
    if has_dot_segment(path) {
        return Err(Reject::bad_request(
            "Invalid path: dot segments are not allowed",
        ));
    }
    Ok((path, query, authority))
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed (and the limits allow waiting for
/// them). A `Reject` is always answered with its status and the connection
/// closed.
pub fn parse_request_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, Reject> {
    let mut head = RequestHead::empty();
    Ok(parse_request_head_into(buf, limits, &mut head)?.then_some(head))
}

/// As [`parse_request_head`], into `out` (`Ok(true)`: a head is there;
/// `Ok(false)`: more bytes are needed; on `Ok(false)` and `Err` `out` holds
/// nothing of use). The connection loop keeps one head for the
/// connection's life and parses each request into it: a head is some 450
/// bytes, and returning it by value through the loop's layers cost about
/// four copies of it per request.
pub fn parse_request_head_into(
    buf: &[u8],
    limits: &HeadLimits,
    out: &mut RequestHead,
) -> Result<bool, Reject> {
    // RFC 9112 §2.2: ignore blank lines before the request line.
    let mut skip = 0;
    while skip < buf.len() && (buf[skip] == b'\r' || buf[skip] == b'\n') && skip < 4 {
        skip += 1;
    }
    // The request line's length excludes its CRLF.
    let line_end = memchr::memchr(b'\n', &buf[skip..]);
    match line_end {
        None if buf.len() - skip > limits.max_request_line + 1 => {
            return Err(Reject::new(414, "URI Too Long"))
        }
        Some(n)
            if n - usize::from(n > 0 && buf[skip + n - 1] == b'\r') > limits.max_request_line =>
        {
            return Err(Reject::new(414, "URI Too Long"))
        }
        _ => {}
    }

    // Uninitialised: filling 512 empty headers on every call cost more than
    // parsing a small request (callgrind on benches/parse: ~1,450 of 3,653
    // instructions for a 46-byte GET).
    let mut storage =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, &mut storage[..max_headers]) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::new(431, "Request Header Fields Too Large"))
        }
        Err(httparse::Error::Token) => return Err(Reject::bad_request("Invalid request line")),
        Err(httparse::Error::Version) => return Err(Reject::bad_request("Invalid HTTP version")),
        Err(httparse::Error::HeaderName) => return Err(Reject::bad_request("Invalid header name")),
        Err(httparse::Error::HeaderValue) => {
            return Err(Reject::bad_request("Invalid header value"))
        }
        Err(_) => return Err(Reject::bad_request("Malformed request")),
    };
    let len = match status {
        httparse::Status::Partial => {
            if buf.len() > limits.max_head {
                return Err(Reject::new(431, "Request Header Fields Too Large"));
            }
            return Ok(false);
        }
        httparse::Status::Complete(len) => len,
    };
    if len > limits.max_head {
        return Err(Reject::new(431, "Request Header Fields Too Large"));
    }
    // httparse accepts a bare LF as a line end; a proxy must not, because the
    // next hop may read the same bytes differently (RFC 9112 §2.2).
    let head = &buf[..len];
    for i in memchr::memchr2_iter(b'\r', b'\n', &head[skip..]).map(|i| i + skip) {
        if head[i] == b'\n' {
            if i == skip || head[i - 1] != b'\r' {
                return Err(Reject::bad_request("Bare LF in request head"));
            }
        } else if head.get(i + 1) != Some(&b'\n') {
            return Err(Reject::bad_request("Bare CR in request head"));
        }
    }

    let method_str = req.method.unwrap_or("");
    let method_span = Span::of(buf, method_str.as_bytes());
    let method = Method::from_bytes(method_str.as_bytes());
    let minor_version = req.version.unwrap_or(1);
    let target = req.path.unwrap_or("").as_bytes();
    let (path, query, authority) = split_target(target)?;

    // Field by field: building a whole head and assigning it would copy it.
    out.len = len;
    out.method = method;
    out.method_span = method_span;
    out.path = Span::of(buf, path);
    out.query = query.map(|q| Span::of(buf, q));
    out.minor_version = minor_version;
    if out.headers.spilled() {
        // Not kept: a connection's one request with many headers does not
        // hold their room for the rest of its life.
        out.headers = SmallVec::new();
    } else {
        out.headers.clear();
    }
    out.host = authority.map(|a| Span::of(buf, a));
    out.framing = Framing::None;
    out.keep_alive = minor_version == 1;
    out.expect_continue = false;
    out.request_id = None;
    out.upgrade = false;
    if path.is_empty() {
        out.path = Span::default();
    }

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding_seen = false;
    let mut host_seen = 0usize;
    let mut has_upgrade_header = false;
    let mut connection_upgrade = false;
    // `close` wins over any `keep-alive`, in whatever order they come.
    let mut connection_close = false;
    // Names listed in Connection are hop-by-hop too; remember them to mark
    // their headers after the first pass.
    let mut connection_names: SmallVec<[&[u8]; 4]> = SmallVec::new();

    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if value.contains(&0) {
            return Err(Reject::bad_request("Invalid header value"));
        }
        if memchr::memchr(b'_', name).is_some() && is_framing_lookalike(name) {
            // `Content_Length` and friends: some servers fold '_' into '-'.
            return Err(Reject::bad_request("Invalid header name"));
        }
        let kind = classify(name);
        let mut hop = kind.is_hop_by_hop() || kind.is_set_by_gateway();
        match kind {
            Name::ContentLength => {
                for elem in value.split(|&b| b == b',').map(trim_ows) {
                    let n = parse_content_length(elem)
                        .ok_or(Reject::bad_request("Invalid Content-Length"))?;
                    if content_length.is_some_and(|prev| prev != n) {
                        return Err(Reject::bad_request("Conflicting Content-Length"));
                    }
                    content_length = Some(n);
                }
                hop = true;
            }
            Name::TransferEncoding => {
                transfer_encoding_seen = true;
                for coding in value.split(|&b| b == b',').map(trim_ows) {
                    if coding.is_empty() {
                        return Err(Reject::bad_request("Invalid Transfer-Encoding"));
                    }
                    if chunked {
                        // chunked must be the final coding, applied once
                        return Err(Reject::bad_request("Invalid Transfer-Encoding"));
                    }
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        chunked = true;
                    } else if !coding.iter().all(|&b| is_token_byte(b)) {
                        return Err(Reject::bad_request("Invalid Transfer-Encoding"));
                    }
                }
            }
            Name::Host => {
                host_seen += 1;
                if authority.is_none() {
                    out.host = Some(Span::of(buf, value));
                }
                if !valid_host(value) {
                    return Err(Reject::bad_request("Invalid Host header"));
                }
            }
            Name::Connection => {
                for token in list_elements(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        connection_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if minor_version == 0 {
                            out.keep_alive = true;
                        }
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    } else {
                        connection_names.push(token);
                    }
                }
            }
            Name::Expect => {
                if trim_ows(value).eq_ignore_ascii_case(b"100-continue") {
                    out.expect_continue = minor_version == 1;
                } else {
                    return Err(Reject::new(417, "Expectation Failed"));
                }
            }
            Name::XRequestId if valid_request_id(value) => {
                out.request_id = Some(Span::of(buf, value));
            }
            Name::Upgrade => has_upgrade_header = true,
            _ => {}
        }
        out.headers.push(HeaderSpan {
            name: Span::of(buf, name),
            value: Span::of(buf, value),
            hop,
        });
    }

    if !mark_connection_listed(&mut out.headers, buf, &connection_names) {
        return Err(Reject::bad_request("Invalid Connection header"));
    }

    if minor_version == 1 && host_seen == 0 {
        return Err(Reject::bad_request("Missing Host header"));
    }
    if host_seen > 1 {
        return Err(Reject::bad_request("Multiple Host headers"));
    }
    if transfer_encoding_seen {
        if content_length.is_some() {
            return Err(Reject::bad_request(
                "Both Content-Length and Transfer-Encoding",
            ));
        }
        if minor_version == 0 {
            return Err(Reject::bad_request(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !chunked {
            return Err(Reject::bad_request(
                "Transfer-Encoding must end with chunked",
            ));
        }
        out.framing = Framing::Chunked;
    } else if let Some(n) = content_length {
        out.framing = if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        };
    }
    if out.framing == Framing::None {
        // Nothing to wait for.
        out.expect_continue = false;
    }
    if connection_close {
        out.keep_alive = false;
    }
    out.upgrade = connection_upgrade && has_upgrade_header;
    Ok(true)
}

/// RFC 9110 `tchar`.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An RFC 9110 token (a header name, a method): one or more `tchar`s.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_byte(b))
}

#[cfg(test)]
mod tests;
