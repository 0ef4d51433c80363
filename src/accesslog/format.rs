//! Access-log formats: a format string with AWS's `$context` variables,
//! compiled once into literal and variable segments, and written per
//! request into a byte buffer with each value escaped for the format's
//! syntax (JSON, XML, CSV or plain text), so that no value a client sends
//! can end a field, a record or a line.

use std::net::{IpAddr, SocketAddr};

/// A variable a format can name (`$context.NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    RequestId,
    SourceIp,
    UserAgent,
    RequestTime,
    RequestTimeEpoch,
    HttpMethod,
    RouteKey,
    Path,
    Status,
    Protocol,
    ResponseLength,
    ResponseLatency,
    IntegrationLatency,
    IntegrationStatus,
    ErrorMessage,
    PrincipalId,
    ApiKeyName,
    CacheStatus,
    ApiId,
    UpstreamName,
    UpstreamTarget,
    Stage,
    Deployment,
}

/// Every variable by its name after `$context.`.
pub const VARIABLES: &[(&str, Var)] = &[
    ("requestId", Var::RequestId),
    ("extendedRequestId", Var::RequestId),
    ("identity.sourceIp", Var::SourceIp),
    ("identity.userAgent", Var::UserAgent),
    ("requestTime", Var::RequestTime),
    ("requestTimeEpoch", Var::RequestTimeEpoch),
    ("httpMethod", Var::HttpMethod),
    ("routeKey", Var::RouteKey),
    ("path", Var::Path),
    ("status", Var::Status),
    ("protocol", Var::Protocol),
    ("responseLength", Var::ResponseLength),
    ("responseLatency", Var::ResponseLatency),
    ("integrationLatency", Var::IntegrationLatency),
    ("integrationStatus", Var::IntegrationStatus),
    ("integration.status", Var::IntegrationStatus),
    ("integration.latency", Var::IntegrationLatency),
    ("error.message", Var::ErrorMessage),
    ("authorizer.principalId", Var::PrincipalId),
    ("identity.apiKeyName", Var::ApiKeyName),
    ("cacheStatus", Var::CacheStatus),
    ("apiId", Var::ApiId),
    ("upstream.name", Var::UpstreamName),
    ("upstream.target", Var::UpstreamTarget),
    ("stage", Var::Stage),
    ("deploymentId", Var::Deployment),
];

/// How values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Escape {
    /// Inside a JSON string: `"`, `\` and control characters as JSON
    /// escapes, invalid UTF-8 as U+FFFD.
    Json,
    /// Inside XML text or an attribute: `<`, `>`, `&`, `"`, `'` as entities;
    /// characters XML 1.0 does not allow and invalid UTF-8 as U+FFFD.
    Xml,
    /// A CSV field (RFC 4180): quoted, with `"` doubled, when it holds a
    /// comma, a quote, a space or an escaped byte; control characters and
    /// bytes outside ASCII as `\xHH`.
    Csv,
    /// Plain text (CLF): `"`, `\`, control characters and bytes outside
    /// ASCII as `\xHH`, as nginx does.
    Text,
}

impl Escape {
    pub fn parse(s: &str) -> Option<Escape> {
        Some(match s {
            "json" => Escape::Json,
            "xml" => Escape::Xml,
            "csv" => Escape::Csv,
            "text" => Escape::Text,
            _ => return None,
        })
    }
}

/// The longest literal written with one fixed-size copy ([`Segment::Short`]).
const SHORT: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A literal of at most [`SHORT`] bytes (its length second), padded
    /// with zeros: written as all [`SHORT`] bytes, a copy of known size the
    /// compiler makes inline, then cut back to its length. Most literals of
    /// a format are this short, and a call to `memcpy` for each cost more
    /// than the copy.
    Short([u8; SHORT], u8),
    Literal(Box<[u8]>),
    Var(Var),
}

impl Segment {
    fn literal(bytes: Vec<u8>) -> Segment {
        if bytes.len() <= SHORT {
            let mut b = [0u8; SHORT];
            b[..bytes.len()].copy_from_slice(&bytes);
            Segment::Short(b, bytes.len() as u8)
        } else {
            Segment::Literal(bytes.into())
        }
    }
}

/// A compiled format.
#[derive(Debug, Clone)]
pub struct Format {
    segments: Vec<Segment>,
    escape: Escape,
    /// Bit `v as u32` for each variable `v` the format names.
    uses: u32,
    /// The literal bytes of a line, for reserving its room at once.
    literal_len: usize,
}

/// AWS's presets (API Gateway console, HTTP APIs).
pub fn preset(name: &str) -> Option<(&'static str, Escape)> {
    Some(match name {
        "clf" => (
            "$context.identity.sourceIp - - [$context.requestTime] \"$context.httpMethod $context.routeKey $context.protocol\" $context.status $context.responseLength $context.requestId",
            Escape::Text,
        ),
        "json" => (
            "{ \"requestId\":\"$context.requestId\", \"ip\": \"$context.identity.sourceIp\", \"requestTime\":\"$context.requestTime\", \"httpMethod\":\"$context.httpMethod\",\"routeKey\":\"$context.routeKey\", \"status\":\"$context.status\",\"protocol\":\"$context.protocol\", \"responseLength\":\"$context.responseLength\" }",
            Escape::Json,
        ),
        "xml" => (
            "<request id=\"$context.requestId\"> <ip>$context.identity.sourceIp</ip> <requestTime>$context.requestTime</requestTime> <httpMethod>$context.httpMethod</httpMethod> <routeKey>$context.routeKey</routeKey> <status>$context.status</status> <protocol>$context.protocol</protocol> <responseLength>$context.responseLength</responseLength> </request>",
            Escape::Xml,
        ),
        "csv" => (
            "$context.identity.sourceIp,$context.requestTime,$context.httpMethod,$context.routeKey,$context.protocol,$context.status,$context.responseLength,$context.requestId",
            Escape::Csv,
        ),
        _ => return None,
    })
}

const PREFIX: &str = "$context.";

impl Format {
    /// Compiles `text`. A `$context.` followed by a name that is not a
    /// variable is an error naming it; a `$` not followed by `context.` is
    /// a literal. A name ends at the first character that is not a letter,
    /// a digit or `.`, and a `.` it ends with is not part of it.
    pub fn compile(text: &str, escape: Escape) -> Result<Format, String> {
        if text.contains(['\n', '\r']) {
            return Err("must be one line (the line break is added)".to_string());
        }
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(PREFIX) {
            literal.push_str(&rest[..at]);
            let after = &rest[at + PREFIX.len()..];
            let mut len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
                .unwrap_or(after.len());
            while len > 0 && after.as_bytes()[len - 1] == b'.' {
                len -= 1;
            }
            let name = &after[..len];
            let Some(&(_, var)) = VARIABLES.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "unknown variable $context.{name} (known: {})",
                    VARIABLES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if !literal.is_empty() {
                segments.push(Segment::literal(std::mem::take(&mut literal).into_bytes()));
            }
            segments.push(Segment::Var(var));
            rest = &after[len..];
        }
        literal.push_str(rest);
        literal.push('\n');
        segments.push(Segment::literal(literal.into_bytes()));
        let mut uses = 0;
        let mut literal_len = 0;
        for s in &segments {
            match s {
                Segment::Var(v) => uses |= 1 << *v as u32,
                Segment::Short(_, n) => literal_len += usize::from(*n),
                Segment::Literal(b) => literal_len += b.len(),
            }
        }
        Ok(Format {
            segments,
            escape,
            uses,
            literal_len,
        })
    }

    pub fn escape(&self) -> Escape {
        self.escape
    }

    /// Whether the format names `v`: what it does not name need not be
    /// captured or computed.
    #[inline]
    pub fn uses(&self, v: Var) -> bool {
        self.uses & (1 << v as u32) != 0
    }

    /// Appends one line (with its `\n`) for `f` to `out`.
    pub fn write(&self, f: &Fields<'_>, out: &mut Vec<u8>) {
        // One reservation for the literals and typical values, rather than
        // a capacity check that may grow at every segment.
        out.reserve(self.literal_len + 160 + SHORT);
        for s in &self.segments {
            match s {
                Segment::Short(b, n) => {
                    let end = out.len() + usize::from(*n);
                    out.extend_from_slice(b);
                    out.truncate(end);
                }
                Segment::Literal(b) => out.extend_from_slice(b),
                Segment::Var(v) => self.write_var(*v, f, out),
            }
        }
    }

    fn write_var(&self, v: Var, f: &Fields<'_>, out: &mut Vec<u8>) {
        let e = self.escape;
        match v {
            Var::RequestId => text(e, f.request_id, out),
            Var::SourceIp => ip(f.source_ip, out),
            Var::UserAgent => opt_text(e, f.user_agent, out),
            // Digits, letters, `/`, `:`, `+` and a space: only CSV quotes
            // it (for the space).
            Var::RequestTime if e != Escape::Csv => out.extend_from_slice(f.request_time),
            Var::RequestTime => text(e, f.request_time, out),
            Var::RequestTimeEpoch => num(f.request_time_epoch_ms, out),
            Var::HttpMethod => opt_text(e, f.method, out),
            Var::RouteKey => opt_text(e, f.route_key.map(str::as_bytes), out),
            Var::Path => opt_text(e, f.path, out),
            Var::Status => num(u64::from(f.status), out),
            Var::Protocol => match f.minor_version {
                Some(0) => out.extend_from_slice(b"HTTP/1.0"),
                Some(_) => out.extend_from_slice(b"HTTP/1.1"),
                None => out.push(b'-'),
            },
            Var::ResponseLength => num(f.response_length, out),
            Var::ResponseLatency => opt_num(f.response_latency_ms, out),
            Var::IntegrationLatency => opt_num(f.integration_latency_ms, out),
            Var::IntegrationStatus => opt_num(f.integration_status.map(u64::from), out),
            Var::ErrorMessage => opt_text(e, f.error.map(str::as_bytes), out),
            Var::PrincipalId => opt_text(e, f.principal.map(str::as_bytes), out),
            Var::ApiKeyName => opt_text(e, f.api_key_name.map(str::as_bytes), out),
            Var::CacheStatus => opt_text(e, f.cache.map(str::as_bytes), out),
            Var::ApiId => opt_text(e, f.api.map(str::as_bytes), out),
            Var::UpstreamName => opt_text(e, f.upstream.map(str::as_bytes), out),
            Var::Stage => opt_text(e, f.stage.map(str::as_bytes), out),
            Var::Deployment => opt_text(e, f.deployment.map(str::as_bytes), out),
            Var::UpstreamTarget => match f.target {
                Some(a) => {
                    use std::io::Write;
                    let _ = write!(out, "{a}");
                }
                None => out.push(b'-'),
            },
        }
    }
}

/// The values of one request's line. Absent values are written as `-`.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub request_id: &'a [u8],
    pub source_ip: IpAddr,
    pub user_agent: Option<&'a [u8]>,
    /// `dd/Mon/yyyy:HH:MM:SS +0000`.
    pub request_time: &'a [u8],
    pub request_time_epoch_ms: u64,
    pub method: Option<&'a [u8]>,
    pub route_key: Option<&'a str>,
    pub path: Option<&'a [u8]>,
    /// 0 when no response was sent.
    pub status: u16,
    /// The request's HTTP minor version; `None` when no head was read.
    pub minor_version: Option<u8>,
    pub response_length: u64,
    pub response_latency_ms: Option<u64>,
    pub integration_latency_ms: Option<u64>,
    pub integration_status: Option<u16>,
    pub error: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub api_key_name: Option<&'a str>,
    pub cache: Option<&'static str>,
    pub api: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<SocketAddr>,
    /// The stage that served the request (an API with stages).
    pub stage: Option<&'a str>,
    /// The deployment that served the request (an API with stages).
    pub deployment: Option<&'a str>,
}

/// An IP address as text: IPv4 by hand, without the formatting machinery
/// (most lines have one, and every proxied request's X-Forwarded-For),
/// IPv6 through `Display` (RFC 5952 compression).
pub(crate) fn ip(a: IpAddr, out: &mut Vec<u8>) {
    match a {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            out.extend_from_slice(&buf[..n]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

pub(crate) fn num(mut n: u64, out: &mut Vec<u8>) {
    // Statuses and small lengths without a copy call.
    if n < 1000 {
        if n >= 100 {
            out.push(b'0' + (n / 100) as u8);
        }
        if n >= 10 {
            out.push(b'0' + (n / 10 % 10) as u8);
        }
        out.push(b'0' + (n % 10) as u8);
        return;
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn opt_num(n: Option<u64>, out: &mut Vec<u8>) {
    match n {
        Some(n) => num(n, out),
        None => out.push(b'-'),
    }
}

fn opt_text(e: Escape, v: Option<&[u8]>, out: &mut Vec<u8>) {
    match v {
        Some(v) if !v.is_empty() => text(e, v, out),
        _ => out.push(b'-'),
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_escape(b: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[
        b'\\',
        b'x',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 15)],
    ]);
}

/// Bytes written as they are, per escaping (`SAFE[e as usize][b]`):
/// printable ASCII, but `"` and `\` (JSON, text), `<>&"'` (XML) and
/// `," ` (CSV).
static SAFE: [[bool; 256]; 4] = {
    let mut t = [[false; 256]; 4];
    let mut b = 0x20;
    while b < 0x7f {
        let c = b as u8;
        t[Escape::Json as usize][b] = c != b'"' && c != b'\\';
        t[Escape::Text as usize][b] = c != b'"' && c != b'\\';
        t[Escape::Xml as usize][b] = !matches!(c, b'<' | b'>' | b'&' | b'"' | b'\'');
        t[Escape::Csv as usize][b] = !matches!(c, b',' | b'"' | b' ');
        b += 1;
    }
    t
};

/// Writes `v` escaped for `e`.
#[inline]
pub fn text(e: Escape, v: &[u8], out: &mut Vec<u8>) {
    let safe = &SAFE[e as usize];
    let fast = match e {
        Escape::Json | Escape::Text => json_text_safe(v),
        Escape::Xml | Escape::Csv => v.iter().all(|&b| safe[usize::from(b)]),
    };
    if fast {
        out.extend_from_slice(v);
        return;
    }
    escaped(e, v, out);
}

/// Whether every byte of `v` is printable ASCII other than `"` and `\`,
/// eight bytes at a time (the bit tricks are exact tests for "some byte
/// is"; see the unit test against the table).
fn json_text_safe(v: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let Ok(a) = <[u8; 8]>::try_from(c) else {
            return false;
        };
        let w = u64::from_le_bytes(a);
        // Some byte >= 0x80; then (all bytes < 0x80, so no carries) some
        // byte < 0x20, some byte 0x7f, some `"`, some `\`.
        if w & HIGH != 0
            || w.wrapping_sub(0x20 * ONES) & !w & HIGH != 0
            || w.wrapping_add(ONES) & HIGH != 0
            || has_zero(w ^ (u64::from(b'"') * ONES))
            || has_zero(w ^ (u64::from(b'\\') * ONES))
        {
            return false;
        }
    }
    let safe = &SAFE[Escape::Json as usize];
    chunks.remainder().iter().all(|&b| safe[usize::from(b)])
}

#[cold]
fn escaped(e: Escape, v: &[u8], out: &mut Vec<u8>) {
    match e {
        Escape::Json => json(v, out),
        Escape::Xml => xml(v, out),
        Escape::Csv => csv(v, out),
        Escape::Text => plain(v, out),
    }
}

/// Bytes written as they are in text and CSV: printable ASCII but `"`
/// and `\`.
fn plain_safe(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

fn plain(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        if plain_safe(b) {
            out.push(b);
        } else {
            hex_escape(b, out);
        }
    }
}

fn csv(v: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\"\""),
            0x20..=0x7e => out.push(b),
            _ => hex_escape(b, out),
        }
    }
    out.push(b'"');
}

fn json(v: &[u8], out: &mut Vec<u8>) {
    for chunk in v.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0..=0x1f | 0x7f => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]),
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
}

fn xml(v: &[u8], out: &mut Vec<u8>) {
    for chunk in v.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '<' => out.extend_from_slice(b"&lt;"),
                '>' => out.extend_from_slice(b"&gt;"),
                '&' => out.extend_from_slice(b"&amp;"),
                '"' => out.extend_from_slice(b"&quot;"),
                '\'' => out.extend_from_slice(b"&apos;"),
                '\t' => out.extend_from_slice(b"&#9;"),
                // Not allowed in an XML 1.0 document at all, even as a
                // character reference.
                '\0'..='\x1f' | '\u{fffe}' | '\u{ffff}' => {
                    out.extend_from_slice("\u{fffd}".as_bytes())
                }
                // Allowed, but a newline in a record would split it.
                '\u{7f}'..='\u{9f}' => {
                    use std::io::Write;
                    let _ = write!(out, "&#{};", c as u32);
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `dd/Mon/yyyy:HH:MM:SS +0000` for a time in seconds since the epoch.
pub fn clf_time(secs: u64) -> [u8; 26] {
    let (y, m, d) = crate::log::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let (hh, mm, ss) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = *b"01/Jan/1970:00:00:00 +0000";
    let two = |o: &mut [u8], n: u64| {
        o[0] = b'0' + (n / 10 % 10) as u8;
        o[1] = b'0' + (n % 10) as u8;
    };
    two(&mut out[0..2], u64::from(d));
    out[3..6].copy_from_slice(MONTHS[(m as usize).saturating_sub(1) % 12]);
    let y = y.clamp(0, 9999) as u64;
    two(&mut out[7..9], y / 100);
    two(&mut out[9..11], y % 100);
    two(&mut out[12..14], hh);
    two(&mut out[15..17], mm);
    two(&mut out[18..20], ss);
    out
}

#[cfg(test)]
mod tests {
    // Test code only: every `unwrap()`/`expect()` here is on a fixture the
    // test builds itself, so a failure is a failing test; nothing a client
    // or a config file controls reaches them.
    use super::*;

    fn fields() -> Fields<'static> {
        Fields {
            request_id: b"id-1",
            source_ip: "10.0.0.1".parse().unwrap(),
            user_agent: Some(b"curl/8"),
            request_time: b"06/Dec/2026:03:58:49 +0000",
            request_time_epoch_ms: 1_796_529_529_000,
            method: Some(b"GET"),
            route_key: Some("GET /pets/{id}"),
            path: Some(b"/pets/1"),
            status: 200,
            minor_version: Some(1),
            response_length: 42,
            response_latency_ms: Some(3),
            integration_latency_ms: None,
            integration_status: None,
            error: None,
            principal: None,
            api_key_name: None,
            cache: None,
            api: Some("pets"),
            upstream: None,
            target: None,
            stage: None,
            deployment: None,
        }
    }

    fn line(format: &str, e: Escape, f: &Fields<'_>) -> String {
        let mut out = Vec::new();
        Format::compile(format, e).unwrap().write(f, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn clf_preset_reads_like_aws() {
        let (p, e) = preset("clf").unwrap();
        assert_eq!(
            line(p, e, &fields()),
            "10.0.0.1 - - [06/Dec/2026:03:58:49 +0000] \"GET GET /pets/{id} HTTP/1.1\" 200 42 id-1\n"
        );
    }

    #[test]
    fn a_format_knows_which_variables_it_names() {
        let (text, e) = preset("json").unwrap();
        let f = Format::compile(text, e).unwrap();
        assert!(f.uses(Var::HttpMethod) && f.uses(Var::RequestTime));
        assert!(!f.uses(Var::UserAgent) && !f.uses(Var::Path) && !f.uses(Var::ResponseLatency));
        let f = Format::compile("$context.identity.userAgent $context.path", Escape::Text).unwrap();
        assert!(f.uses(Var::UserAgent) && f.uses(Var::Path) && !f.uses(Var::HttpMethod));
    }

    #[test]
    fn unknown_variables_are_named() {
        let e = Format::compile("$context.status $context.nope.x", Escape::Text).unwrap_err();
        assert!(e.starts_with("unknown variable $context.nope.x"), "{e}");
        assert!(Format::compile("a line\nand another", Escape::Text).is_err());
    }

    #[test]
    fn names_end_before_punctuation_and_a_final_dot() {
        assert_eq!(
            line("$context.status. $$context.path!", Escape::Text, &fields()),
            "200. $/pets/1!\n"
        );
    }

    #[test]
    fn stage_and_deployment_or_dashes() {
        let f = Fields {
            stage: Some("$default"),
            deployment: Some("v2"),
            ..fields()
        };
        let format = "$context.stage $context.deploymentId";
        assert_eq!(line(format, Escape::Text, &f), "$default v2\n");
        assert_eq!(line(format, Escape::Text, &fields()), "- -\n");
    }

    #[test]
    fn absent_values_are_dashes() {
        assert_eq!(
            line(
                "$context.integrationStatus $context.error.message $context.upstream.target",
                Escape::Text,
                &fields()
            ),
            "- - -\n"
        );
    }

    #[test]
    fn hostile_values_stay_inside_their_field() {
        let ua: &[u8] = b"a\"b\\c\td\x01<&>'x,y \xff\xc3\xa9";
        let f = Fields {
            user_agent: Some(ua),
            ..fields()
        };
        assert_eq!(
            line("$context.identity.userAgent", Escape::Text, &f),
            "a\\x22b\\x5cc\\x09d\\x01<&>'x,y \\xff\\xc3\\xa9\n"
        );
        assert_eq!(
            line("{\"ua\":\"$context.identity.userAgent\"}", Escape::Json, &f),
            "{\"ua\":\"a\\\"b\\\\c\\u0009d\\u0001<&>'x,y \\ufffd\u{e9}\"}\n"
        );
        assert_eq!(
            line("<r ua=\"$context.identity.userAgent\"/>", Escape::Xml, &f),
            "<r ua=\"a&quot;b\\c&#9;d\u{fffd}&lt;&amp;&gt;&apos;x,y \u{fffd}\u{e9}\"/>\n"
        );
        assert_eq!(
            line(
                "$context.identity.userAgent,$context.status",
                Escape::Csv,
                &f
            ),
            "\"a\"\"b\\c\\x09d\\x01<&>'x,y \\xff\\xc3\\xa9\",200\n"
        );
    }

    #[test]
    fn numbers_and_addresses_read_as_std_writes_them() {
        for n in [0, 7, 9, 10, 99, 100, 404, 999, 1000, 65_535, u64::MAX] {
            let mut out = Vec::new();
            num(n, &mut out);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "10.200.3.45",
            "::1",
            "2001:db8::7",
        ] {
            let a: IpAddr = a.parse().unwrap();
            let mut out = Vec::new();
            ip(a, &mut out);
            assert_eq!(out, a.to_string().as_bytes());
        }
    }

    #[test]
    fn the_eight_byte_check_agrees_with_the_table() {
        let table = |v: &[u8]| {
            v.iter()
                .all(|&b| SAFE[Escape::Json as usize][usize::from(b)])
        };
        // Every byte value at every position of a 17-byte value.
        for b in 0..=255u8 {
            for at in 0..17 {
                let mut v = *b"abcdefghijklmnopq";
                v[at] = b;
                assert_eq!(json_text_safe(&v), table(&v), "byte {b:#x} at {at}");
            }
        }
        assert!(json_text_safe(b""));
    }

    #[test]
    fn clf_time_matches_known_dates() {
        assert_eq!(&clf_time(0), b"01/Jan/1970:00:00:00 +0000");
        // 2000-02-29T23:59:59Z, a leap day.
        assert_eq!(&clf_time(951_868_799), b"29/Feb/2000:23:59:59 +0000");
        // 2026-12-06T03:58:49Z
        assert_eq!(&clf_time(1_796_529_529), b"06/Dec/2026:03:58:49 +0000");
    }
}
