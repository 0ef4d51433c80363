//! The `http_proxy` integration: forwards a request to an upstream target and
//! streams the answer back.
//!
//! The upstream request head is written fresh (hop-by-hop headers dropped,
//! `X-Forwarded-*` and the request id added, the path built from the route's
//! template); bodies in both directions move straight from one socket's read
//! buffer to the other socket, never copied. A request sent on a pooled
//! connection the upstream had already closed, or answered with something
//! that is not a response head (bytes left over from the connection's last
//! response), is sent once more on a new connection when that is safe: an
//! idempotent method without a body, and nothing forwarded to the client.
//!
//! Over TLS (a client on an HTTPS listener, or an https:// upstream) the
//! same code runs on a [`crate::tls::stream::Stream`]; bodies are then
//! encrypted or decrypted on their way, so not zero-copy.

use crate::http::body::{check_start, ChunkedDecoder};
use crate::http::conn::{write_two, BodyError, Conn, Connections, Flow};
use crate::http::encode::{push_status_line, push_u64};
use crate::http::method::Method;
use crate::http::parse::{Framing, RequestHead};
use crate::http::respond::push_connection;
use crate::http::response::{RespFraming, ResponseHead};
use crate::http::Limits;
use crate::integration::client::{read_response_head, Head, HeadError};
use crate::integration::upstream::{UpConn, UpstreamPlan, UpstreamState};
use futures_lite::AsyncReadExt;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Literal(String),
    /// A route parameter, substituted raw (still percent-encoded).
    Param(String),
}

#[derive(Debug, Clone)]
pub struct ProxyPlan {
    pub upstream: usize,
    /// `None`: pass the request path through unchanged.
    pub path: Option<Vec<PathPart>>,
    /// A query string fixed in the integration URL, sent before the client's.
    pub query: Option<String>,
    /// Drop the client's `x-api-key` header: the route checked it.
    pub drop_api_key: bool,
    /// Client headers never forwarded (lowercase): the gateway sets them
    /// itself (authorizer claims and context).
    pub strip_headers: Vec<String>,
    /// Parameter mapping ([`super::mapping`]); None for most routes.
    pub mapping: Option<Box<super::mapping::Mapping>>,
    /// A relayed WebSocket's idle timeout and lifetime (the API's
    /// `[apis.websocket]`).
    pub ws_limits: WsRelayLimits,
}

/// How long a WebSocket relayed by an `http_proxy` route may be silent
/// both ways, and may stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsRelayLimits {
    pub idle_timeout: std::time::Duration,
    pub max_lifetime: std::time::Duration,
}

impl Default for WsRelayLimits {
    fn default() -> WsRelayLimits {
        use crate::config::raw::websocket::{DEFAULT_MAX_LIFETIME_MS, DEFAULT_WS_IDLE_TIMEOUT_MS};
        WsRelayLimits {
            idle_timeout: std::time::Duration::from_millis(DEFAULT_WS_IDLE_TIMEOUT_MS),
            max_lifetime: std::time::Duration::from_millis(DEFAULT_MAX_LIFETIME_MS),
        }
    }
}

/// What a client's TLS connection adds to its requests. `None` in its
/// place means a plain connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTls<'a> {
    /// The subject of the client certificate mTLS verified.
    pub client_cert_subject: Option<&'a str>,
}

/// The request header carrying the verified mTLS client certificate's
/// subject to the upstream. A client's own header of this name is always
/// dropped, on every listener.
pub const CLIENT_CERT_SUBJECT: &str = "x-client-cert-subject";

/// Writes the upstream request head into `out`. `tls` is the client's
/// TLS connection, if any.
#[allow(clippy::too_many_arguments)]
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    params: &[(&str, &[u8])],
    plan: &ProxyPlan,
    up: &UpstreamPlan,
    target: usize,
    peer: SocketAddr,
    request_id: &[u8],
    tls: Option<ClientTls<'_>>,
    extra: &[u8],
) {
    out.clear();
    out.extend_from_slice(head.method_span.get(buf));
    out.push(b' ');
    match &plan.path {
        None => out.extend_from_slice(head.path(buf)),
        Some(parts) => {
            for part in parts {
                match part {
                    PathPart::Literal(l) => out.extend_from_slice(l.as_bytes()),
                    PathPart::Param(name) => {
                        if let Some((_, v)) = params.iter().find(|(k, _)| k == name) {
                            out.extend_from_slice(v);
                        }
                    }
                }
            }
        }
    }
    let client_query = head.query.map(|q| q.get(buf)).filter(|q| !q.is_empty());
    match (&plan.query, client_query) {
        (Some(fixed), Some(q)) => {
            out.push(b'?');
            out.extend_from_slice(fixed.as_bytes());
            out.push(b'&');
            out.extend_from_slice(q);
        }
        (Some(fixed), None) => {
            out.push(b'?');
            out.extend_from_slice(fixed.as_bytes());
        }
        (None, Some(q)) => {
            out.push(b'?');
            out.extend_from_slice(q);
        }
        (None, None) => {}
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(
        up.host
            .as_deref()
            .unwrap_or(&up.targets[target].label)
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let mut forwarded_for: smallvec::SmallVec<[&[u8]; 2]> = smallvec::SmallVec::new();
    for h in &head.headers {
        let name = h.name.get(buf);
        if h.hop {
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                forwarded_for.push(h.value.get(buf));
            }
            continue;
        }
        if plan.drop_api_key && name.eq_ignore_ascii_case(b"x-api-key") {
            continue;
        }
        if name.eq_ignore_ascii_case(CLIENT_CERT_SUBJECT.as_bytes()) {
            // Only the gateway says who a client certificate names.
            continue;
        }
        if !plan.strip_headers.is_empty()
            && plan
                .strip_headers
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s.as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for v in forwarded_for {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    crate::http::encode::push_ip(out, peer.ip());
    match tls {
        None => out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n"),
        Some(t) => {
            out.extend_from_slice(b"\r\nx-forwarded-proto: https\r\n");
            if let Some(subject) = t.client_cert_subject {
                // Printable ASCII by construction (tls::x509).
                out.extend_from_slice(CLIENT_CERT_SUBJECT.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(subject.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if let Some(host) = head.host {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id);
    out.extend_from_slice(b"\r\n");
    // Header lines from the authorizer (JWT claims, authorizer context).
    out.extend_from_slice(extra);
    match head.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::None if matches!(head.method, Method::Post | Method::Put | Method::Patch) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// The request facts the proxy needs once the head's bytes are gone.
#[derive(Clone, Copy)]
pub struct Forward<'a> {
    pub method: Method,
    pub framing: Framing,
    pub minor_version: u8,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub target: usize,
    pub request_id: &'a [u8],
    /// The API answers CORS itself: the backend's `Access-Control-*`
    /// headers are dropped (as API Gateway does), or the client would get
    /// them twice.
    pub strip_cors: bool,
    /// The route's response mapping, when it has one.
    pub mapping: Option<super::mapping::ResponseMap<'a>>,
}

impl Forward<'_> {
    /// Whether an upstream response header goes on to the client.
    fn passes(&self, h: &crate::http::parse::HeaderSpan, buf: &[u8]) -> bool {
        if h.hop {
            return false;
        }
        let name = h.name.get(buf);
        !(self.strip_cors && name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-"))
    }
}

/// A copy of a proxied response as the client received it, for the cache.
/// Only responses delimited by a Content-Length of at most `max_body` bytes
/// are captured (for a HEAD request: a declared Content-Length of at most
/// that, headers only); `complete` says the whole response arrived and was
/// forwarded.
#[derive(Debug, Default)]
pub struct Capture {
    pub max_body: usize,
    pub status: u16,
    /// The upstream's header lines (`name: value\r\n`) minus hop-by-hop ones
    /// and `x-request-id`.
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    /// The response's Content-Length: the body's length, or for a HEAD
    /// request the length the upstream declared (no body is captured).
    pub content_length: u64,
    pub complete: bool,
}

impl Capture {
    pub fn new(max_body: usize) -> Capture {
        Capture {
            max_body,
            ..Capture::default()
        }
    }
}

/// The upstream and shard state a forwarded request uses.
#[derive(Clone, Copy)]
pub struct Upstream<'a> {
    pub plan: &'a UpstreamPlan,
    pub state: &'a UpstreamState,
    pub limits: &'a Limits,
    /// Read when the response head is written: once the shard drains,
    /// every response says `connection: close`.
    pub connections: &'a Connections,
}

/// What forwarding did, for the gateway's record of the request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    /// The upstream's final status, when one arrived.
    pub status: Option<u16>,
    /// When the connection to the target was ready (pooled or new).
    pub connected: Option<Instant>,
    /// When the response head was complete.
    pub first_byte: Option<Instant>,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Bytes written to the client (heads and body).
    pub bytes_out: u64,
}

/// How a forwarded request ended.
#[derive(Debug)]
pub enum Proxied {
    /// The upstream's response went to the client (whole, or cut short and
    /// the connection closed).
    Forwarded(Flow),
    /// Nothing of a response reached the client: the gateway answers with
    /// `status`. `body_done`: the client's request body was read whole, so
    /// the connection may stay open.
    Failed {
        status: u16,
        message: &'static str,
        body_done: bool,
    },
    /// Reading the client's request body failed.
    Body(BodyError),
}

enum UpErr {
    /// Closed or reset before any byte of a response.
    Closed(io::Error),
    Timeout,
    Bad(&'static str),
}

/// Sends the request (head in `conn.xbuf`, body from the client) and streams
/// the response back.
///
/// The future is boxed: the proxy's state (request and response heads, the
/// upstream connection, the body loops) is large, and left inline it would
/// make every connection's task that large, idle ones included. That is one
/// allocation per proxied request.
pub fn forward<'a>(
    conn: &'a mut Conn,
    up: Upstream<'a>,
    f: Forward<'a>,
    capture: Option<&'a mut Capture>,
    report: &'a mut Report,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Proxied> + 'a>> {
    Box::pin(forward_inner(conn, up, f, capture, report))
}

async fn forward_inner(
    conn: &mut Conn,
    upstream: Upstream<'_>,
    f: Forward<'_>,
    mut capture: Option<&mut Capture>,
    report: &mut Report,
) -> Proxied {
    if f.framing == Framing::Chunked {
        // Bad framing among the body bytes that came with the head is
        // refused before the upstream hears of the request.
        if let Err(e) = check_start(conn.unread(), upstream.limits.max_header_bytes) {
            return Proxied::Body(BodyError::Bad(e.0));
        }
    }
    let uplan = upstream.plan;
    let state = upstream.state;
    let _in_flight = state.begin(f.target);
    let target_addr = uplan.targets[f.target].addr;
    let retry_safe = f.method.is_idempotent() && f.framing == Framing::None;
    let mut fresh_only = false;
    let mut body_done = f.framing == Framing::None;
    let mut body_cut = false;

    let mut resp = ResponseHead::default();
    let mut up = loop {
        let now = Instant::now();
        let (mut up, reused) = match (!fresh_only)
            .then(|| state.checkout(uplan, f.target, now))
            .flatten()
        {
            Some(c) => {
                report.connected = Some(now);
                (c, true)
            }
            None => match state.connect(uplan, f.target).await {
                Ok(c) => {
                    state.note_connect(f.target, true);
                    (c, false)
                }
                Err(e) => {
                    state.note_connect(f.target, false);
                    let cooled = state.record_failure(uplan, f.target, Instant::now());
                    crate::log_request!(
                        "warn",
                        f.request_id,
                        "upstream {:?} target {target_addr}: connect failed: {e}{}",
                        uplan.name,
                        if cooled { " (cooling down)" } else { "" }
                    );
                    return fail(502, "Bad Gateway", body_done);
                }
            },
        };
        if !reused {
            report.connected = Some(Instant::now());
        }
        if let Err(e) = up.stream.send(&conn.xbuf).await {
            if reused && retry_safe {
                fresh_only = true;
                continue;
            }
            state.record_failure(uplan, f.target, Instant::now());
            crate::log_request!(
                "warn",
                f.request_id,
                "upstream {:?} target {target_addr}: sending the request failed: {e}",
                uplan.name
            );
            return fail(502, "Bad Gateway", body_done);
        }
        if !body_done {
            match conn
                .pump_body(
                    f.framing,
                    upstream.limits,
                    Some(&mut up.stream),
                    f.expect_continue,
                )
                .await
            {
                Ok(n) => {
                    body_done = true;
                    report.bytes_in = n;
                }
                // The upstream stopped reading; it may have answered already.
                Err(BodyError::Sink(_)) => body_cut = true,
                Err(e) => return Proxied::Body(e),
            }
        }
        let mut interim = false;
        match read_final_head(conn, &mut up, uplan, f, &mut interim, &mut resp).await {
            Ok(()) => break up,
            Err(UpErr::Closed(_)) if reused && retry_safe => {
                fresh_only = true;
                continue;
            }
            // Not a response to this request: most likely bytes a previous
            // response left behind that arrived after the pool's check. The
            // client has seen nothing yet; the target is not blamed for it.
            Err(UpErr::Bad(_)) if reused && retry_safe && !interim => {
                fresh_only = true;
                continue;
            }
            Err(UpErr::Closed(e)) => {
                state.record_failure(uplan, f.target, Instant::now());
                crate::log_request!(
                    "warn",
                    f.request_id,
                    "upstream {:?} target {target_addr}: closed before responding: {e}",
                    uplan.name
                );
                return fail(502, "Bad Gateway", body_done && !body_cut);
            }
            Err(UpErr::Timeout) => {
                state.record_failure(uplan, f.target, Instant::now());
                crate::log_request!(
                    "warn",
                    f.request_id,
                    "upstream {:?} target {target_addr}: no response within {} ms",
                    uplan.name,
                    uplan.timeout.as_millis()
                );
                return fail(504, "Gateway Timeout", body_done && !body_cut);
            }
            Err(UpErr::Bad(why)) => {
                state.record_failure(uplan, f.target, Instant::now());
                crate::log_request!(
                    "warn",
                    f.request_id,
                    "upstream {:?} target {target_addr}: invalid response: {why}",
                    uplan.name
                );
                return fail(502, "Bad Gateway", body_done && !body_cut);
            }
        }
    };
    state.record_success(f.target);
    report.first_byte = Some(Instant::now());
    report.status = Some(resp.status);

    // === response head ===
    let client_11 = f.minor_version == 1;
    let mut client_keep =
        f.keep_alive && body_done && !body_cut && !upstream.connections.draining();
    let dechunk = resp.framing == RespFraming::Chunked && !client_11;
    if dechunk || resp.framing == RespFraming::Close {
        client_keep = false;
    }
    write_response_head(&mut conn.wbuf, &up.buf, &resp, f, &conn.ebuf, client_keep);
    // Bytes written to the client, heads and body.
    let mut sent = conn.wbuf.len() as u64;

    // === response body ===
    let filled = up.filled;
    let leftover = resp.len..filled;
    let mut capture = capture.take().and_then(|c| {
        c.complete = false;
        c.body.clear();
        c.headers.clear();
        c.status = status_for(f, resp.status);
        let length = match resp.framing {
            RespFraming::Length(n) => Some(n),
            // A HEAD response: headers only, with the length a GET would get.
            RespFraming::None if f.method == Method::Head => resp.content_length,
            _ => None,
        };
        match length {
            Some(n) if n <= c.max_body as u64 => {
                c.content_length = n;
                if let Some((m, map)) = mapped(&f, resp.status) {
                    let keep = |h: &crate::http::parse::HeaderSpan| {
                        f.passes(h, &up.buf)
                            && !h.name.get(&up.buf).eq_ignore_ascii_case(b"x-request-id")
                    };
                    m.write_headers(
                        &mut c.headers,
                        &up.buf,
                        &resp.headers,
                        keep,
                        &map.ctx,
                        resp.status,
                    );
                    return Some(c);
                }
                for h in resp.headers.iter().filter(|h| f.passes(h, &up.buf)) {
                    let name = h.name.get(&up.buf);
                    if !name.eq_ignore_ascii_case(b"x-request-id") {
                        c.headers.extend_from_slice(name);
                        c.headers.extend_from_slice(b": ");
                        c.headers.extend_from_slice(h.value.get(&up.buf));
                        c.headers.extend_from_slice(b"\r\n");
                    }
                }
                Some(c)
            }
            _ => None,
        }
    });
    let mut reusable = resp.keep_alive && !body_cut && body_done;
    let streamed: Result<(), StreamErr> = match resp.framing {
        RespFraming::None => {
            reusable &= leftover.is_empty();
            let r = conn
                .stream
                .send(&conn.wbuf)
                .await
                .map_err(|_| StreamErr::Client);
            if let (Ok(()), Some(c)) = (&r, capture) {
                c.complete = true;
            }
            r
        }
        RespFraming::Length(n) => {
            let take = (leftover.len() as u64).min(n) as usize;
            reusable &= leftover.len() as u64 <= n;
            match write_two(
                &mut conn.stream,
                &conn.wbuf,
                &up.buf[resp.len..resp.len + take],
            )
            .await
            {
                Err(_) => Err(StreamErr::Client),
                Ok(()) => {
                    if let Some(c) = capture.as_deref_mut() {
                        c.body.extend_from_slice(&up.buf[resp.len..resp.len + take]);
                    }
                    let body = capture.as_deref_mut().map(|c| &mut c.body);
                    sent += take as u64;
                    let r =
                        copy_length(conn, &mut up, uplan, n - take as u64, body, &mut sent).await;
                    if let (Ok(()), Some(c)) = (&r, capture) {
                        c.complete = true;
                    }
                    r
                }
            }
        }
        RespFraming::Chunked => match conn.stream.send(&conn.wbuf).await {
            Err(_) => Err(StreamErr::Client),
            Ok(()) => {
                let r =
                    copy_chunked(conn, &mut up, uplan, leftover.clone(), !dechunk, &mut sent).await;
                if let Ok(extra) = r {
                    reusable &= !extra;
                }
                r.map(|_| ())
            }
        },
        RespFraming::Close => {
            match write_two(&mut conn.stream, &conn.wbuf, &up.buf[leftover.clone()]).await {
                Err(_) => Err(StreamErr::Client),
                Ok(()) => {
                    sent += leftover.len() as u64;
                    copy_until_close(conn, &mut up, uplan, &mut sent).await
                }
            }
        }
    };
    report.bytes_out = sent;
    Proxied::Forwarded(match streamed {
        Ok(()) => {
            if reusable {
                state.checkin(uplan, up);
            }
            if client_keep {
                Flow::KeepAlive
            } else {
                Flow::Close
            }
        }
        Err(StreamErr::Client) => Flow::Close,
        Err(StreamErr::Upstream(why)) => {
            state.record_failure(uplan, f.target, Instant::now());
            crate::log_request!(
                "warn",
                f.request_id,
                "upstream {:?} target {target_addr}: response body cut short: {why}; closing the client connection",
                uplan.name
            );
            Flow::Close
        }
    })
}

/// No response reached the client: the gateway answers with `status`.
fn fail(status: u16, message: &'static str, body_done: bool) -> Proxied {
    Proxied::Failed {
        status,
        message,
        body_done,
    }
}

/// Reads a final response head into `up.buf`, forwarding 1xx informational
/// responses to an HTTP/1.1 client (103) or dropping them (100), and its
/// parsed form into `resp`. `interim` is set once a 1xx response was read.
async fn read_final_head(
    conn: &mut Conn,
    up: &mut UpConn,
    uplan: &UpstreamPlan,
    f: Forward<'_>,
    interim: &mut bool,
    resp: &mut ResponseHead,
) -> Result<(), UpErr> {
    up.filled = 0;
    loop {
        match read_response_head(up, uplan, f.method == Method::Head, resp).await {
            Ok(Head::Final) => return Ok(()),
            Ok(Head::Interim) => {
                *interim = true;
                if resp.status != 100 && f.minor_version == 1 {
                    // 102/103: pass on; they carry no body.
                    conn.wbuf.clear();
                    write_informational(&mut conn.wbuf, &up.buf, resp);
                    conn.stream.send(&conn.wbuf).await.map_err(UpErr::Closed)?;
                }
                up.drop_head(resp.len);
            }
            Err(HeadError::Closed(e)) => return Err(UpErr::Closed(e)),
            Err(HeadError::Timeout) => return Err(UpErr::Timeout),
            Err(HeadError::Bad(why)) => return Err(UpErr::Bad(why)),
        }
    }
}

fn write_informational(out: &mut Vec<u8>, buf: &[u8], resp: &ResponseHead) {
    push_status_line(out, resp.status);
    for h in resp.headers.iter().filter(|h| !h.hop) {
        out.extend_from_slice(h.name.get(buf));
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    resp: &ResponseHead,
    f: Forward<'_>,
    extra: &[u8],
    client_keep: bool,
) {
    out.clear();
    let status = status_for(f, resp.status);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, status as u64);
    out.push(b' ');
    if resp.reason.is_empty() || status != resp.status {
        out.extend_from_slice(crate::http::reason_phrase(status).as_bytes());
    } else {
        out.extend_from_slice(resp.reason.get(buf));
    }
    out.extend_from_slice(b"\r\n");
    if let Some((m, map)) = mapped(&f, resp.status) {
        m.write_headers(
            out,
            buf,
            &resp.headers,
            |h| f.passes(h, buf),
            &map.ctx,
            resp.status,
        );
    } else {
        for h in resp.headers.iter().filter(|h| f.passes(h, buf)) {
            out.extend_from_slice(h.name.get(buf));
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.get(buf));
            out.extend_from_slice(b"\r\n");
        }
    }
    if !resp.has_request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(f.request_id);
        out.extend_from_slice(b"\r\n");
    }
    match resp.framing {
        RespFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        RespFraming::Chunked if f.minor_version == 1 => {
            out.extend_from_slice(b"transfer-encoding: ");
            match resp.transfer_encoding {
                Some(te) => out.extend_from_slice(te.get(buf)),
                None => out.extend_from_slice(b"chunked"),
            }
            out.extend_from_slice(b"\r\n");
        }
        RespFraming::None if f.method == Method::Head => {
            if let Some(n) = resp.content_length {
                out.extend_from_slice(b"content-length: ");
                push_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        // A 204 or 304 mapped to a status that has a body: an empty one.
        RespFraming::None if status != resp.status => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(extra);
    push_connection(out, client_keep, f.minor_version);
    out.extend_from_slice(b"\r\n");
}

/// The route's response mapping for the integration's `status`, if any.
fn mapped<'f>(
    f: &Forward<'f>,
    status: u16,
) -> Option<(
    &'f super::mapping::StatusMapping,
    super::mapping::ResponseMap<'f>,
)> {
    let map = f.mapping?;
    Some((map.mapping.for_status(status)?, map))
}

/// The status the client gets for the integration's `status`.
fn status_for(f: Forward<'_>, status: u16) -> u16 {
    mapped(&f, status).map_or(status, |(m, _)| m.status(status))
}

enum StreamErr {
    /// The client went away; nothing to tell it.
    Client,
    Upstream(&'static str),
}

async fn read_upstream(up: &mut UpConn, max: usize) -> Result<usize, StreamErr> {
    match up.stream.read(&mut up.buf[..max]).await {
        Ok(0) => Err(StreamErr::Upstream("connection closed early")),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(StreamErr::Upstream("timed out")),
        Err(_) => Err(StreamErr::Upstream("connection reset")),
    }
}

async fn copy_length(
    conn: &mut Conn,
    up: &mut UpConn,
    uplan: &UpstreamPlan,
    mut remaining: u64,
    mut capture: Option<&mut Vec<u8>>,
    sent: &mut u64,
) -> Result<(), StreamErr> {
    up.stream.set_read_timeout(Some(uplan.timeout));
    while remaining > 0 {
        let max = (up.buf.len() as u64).min(remaining) as usize;
        let n = read_upstream(up, max).await?;
        if let Some(c) = capture.as_deref_mut() {
            // The cache's copy; the client's bytes are still written from
            // the read buffer.
            c.extend_from_slice(&up.buf[..n]);
        }
        conn.stream
            .send(&up.buf[..n])
            .await
            .map_err(|_| StreamErr::Client)?;
        *sent += n as u64;
        remaining -= n as u64;
    }
    Ok(())
}

/// Streams a chunked body: re-framed with `keep_framing`, else its data
/// only. Returns whether the upstream sent bytes past the end of it (the
/// connection then cannot be reused).
async fn copy_chunked(
    conn: &mut Conn,
    up: &mut UpConn,
    uplan: &UpstreamPlan,
    leftover: std::ops::Range<usize>,
    keep_framing: bool,
    sent: &mut u64,
) -> Result<bool, StreamErr> {
    up.stream.set_read_timeout(Some(uplan.timeout));
    let mut dec = ChunkedDecoder::new(keep_framing, uplan.max_response_header_bytes);
    let (mut pos, mut end) = (leftover.start, leftover.end);
    loop {
        while pos < end && !dec.is_done() {
            let step = dec
                .step(&up.buf[pos..end])
                .map_err(|e| StreamErr::Upstream(e.0))?;
            // The run itself, or our framing in place of what was dropped
            // (with keep_framing the body is re-framed).
            let out = step.out(&up.buf[pos..end]);
            if !out.is_empty() {
                conn.stream.send(out).await.map_err(|_| StreamErr::Client)?;
                *sent += out.len() as u64;
            }
            pos += step.consumed;
        }
        if dec.is_done() {
            return Ok(pos < end);
        }
        let max = up.buf.len();
        end = read_upstream(up, max).await?;
        pos = 0;
    }
}

async fn copy_until_close(
    conn: &mut Conn,
    up: &mut UpConn,
    uplan: &UpstreamPlan,
    sent: &mut u64,
) -> Result<(), StreamErr> {
    up.stream.set_read_timeout(Some(uplan.timeout));
    loop {
        let max = up.buf.len();
        match up.stream.read(&mut up.buf[..max]).await {
            Ok(0) => return Ok(()),
            Ok(n) => {
                conn.stream
                    .send(&up.buf[..n])
                    .await
                    .map_err(|_| StreamErr::Client)?;
                *sent += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(StreamErr::Upstream("timed out"))
            }
            Err(_) => return Err(StreamErr::Upstream("connection reset")),
        }
    }
}
