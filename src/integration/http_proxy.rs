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
//! A request with a body is full duplex ([`duplex`]): the body goes up
//! while the response comes down, so an upstream that answers while it
//! still reads the body is never waited for.
//!
//! Over TLS (a client on an HTTPS listener, or an https:// upstream) the
//! same code runs on a [`crate::tls::stream::Stream`]; bodies are then
//! encrypted or decrypted on their way, so not zero-copy.
//!
//! Between plain TCP sockets, a Content-Length body of at least
//! `server.splice_min_bytes` that nothing has to see (not captured for the
//! cache; a request body the gateway read whole, for SigV4 or a mapping,
//! is all buffered already) does not pass through user space at all: the
//! bytes that came with the head go first from the buffer, the rest from
//! socket to socket through a pipe ([`crate::net::splice`]). A chunked body
//! is spliced chunk by chunk ([`splice_chunk`]): the data of each chunk of
//! at least that size, while its framing is parsed and re-framed in user
//! space as for a copied one. Close-delimited bodies are copied.

use crate::http::body::{check_start, ChunkedDecoder};
use crate::http::conn::{
    splice_chunk, BodyError, Conn, Connections, Flow, Split, AFTER_SPLICE_READ,
};
use crate::http::encode::{push_status_line, push_u64, DateCache};
use crate::http::method::Method;
use crate::http::parse::{Framing, RequestHead};
use crate::http::respond::push_connection;
use crate::http::response::{RespFraming, ResponseHead};
use crate::http::Limits;
use crate::integration::client::{read_head, Head, HeadError};
use crate::integration::upstream::{UpConn, UpstreamPlan, UpstreamState};
use crate::net::splice::{SpliceError, Toward};
use crate::tls::stream::{Io, Shared};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
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
    /// The shard's clock, for a response that arrives without a `Date`.
    pub date: &'a RefCell<DateCache>,
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
/// allocation per proxied request. The box is filled by copying the whole
/// future in, so the rarer parts (a new connection, a request with a body)
/// are boxed again inside it, where only their requests pay for them.
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
    capture: Option<&mut Capture>,
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
    let with_body = f.framing != Framing::None;
    let retry_safe = f.method.is_idempotent() && !with_body;
    let mut fresh_only = false;

    let mut resp = ResponseHead::default();
    let mut up = loop {
        let now = Instant::now();
        let (mut up, reused) = match (!fresh_only)
            .then(|| state.checkout(uplan, f.target, now, !retry_safe))
            .flatten()
        {
            Some(c) => {
                report.connected = Some(now);
                (c, true)
            }
            // Boxed, as is `duplex` below: a new connection (TCP, and TLS
            // for https://) is the pool's exception, and inline its state
            // would be copied into every proxied request's future.
            None => match Box::pin(state.connect(uplan, f.target)).await {
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
                    return fail(502, "Bad Gateway", !with_body);
                }
            },
        };
        if !reused {
            report.connected = Some(Instant::now());
        }
        // A Content-Length body's first bytes, read with the head, go up in
        // the same write as the head (one `sendmsg`, not two `sendto`s).
        // Not when the client waits for 100 Continue: what it sent ahead
        // of that still goes through the body pump's own rules.
        let start = match f.framing {
            Framing::Length(n) if !f.expect_continue => conn.body_start(n),
            _ => &[],
        };
        let ahead = start.len();
        let sent = if ahead > 0 {
            up.stream.send_two(&conn.xbuf, start).await
        } else {
            up.stream.send(&conn.xbuf).await
        };
        if ahead > 0 && sent.is_ok() {
            conn.sent_ahead(ahead);
        }
        if let Err(e) = sent {
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
            return fail(502, "Bad Gateway", !with_body);
        }
        if with_body {
            // The body goes up while the response comes down.
            break up;
        }
        let mut interim = false;
        match read_final_head(
            &mut conn.stream,
            &mut conn.wbuf,
            &mut up.stream,
            &mut up.buf,
            &mut up.filled,
            uplan,
            f,
            &mut interim,
            &mut resp,
        )
        .await
        {
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
            Err(e) => return head_failed(upstream, f, e, true),
        }
    };
    if with_body {
        // Boxed: the two directions' state is 3.5 KiB, most of this
        // future's size inline, and a request without a body never uses it.
        return Box::pin(duplex(conn, up, upstream, f, capture, report)).await;
    }
    state.record_success(f.target);
    report.first_byte = Some(Instant::now());
    report.status = Some(resp.status);
    let keep = f.keep_alive && !upstream.connections.draining();
    let sent = Cell::new(0);
    let r = respond(
        &mut conn.stream,
        &mut up.stream,
        &mut up.buf,
        up.filled,
        &resp,
        &mut conn.wbuf,
        &conn.ebuf,
        f,
        uplan,
        capture,
        keep,
        &sent,
        upstream.limits,
        upstream.date,
    )
    .await;
    report.bytes_out = sent.get();
    Proxied::Forwarded(finish(upstream, f, up, r, true))
}

/// Where the request body stands while the response comes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upload {
    Sending,
    Done,
    /// Writing to the upstream failed: it stopped reading, or closed.
    Cut,
    /// Reading the client failed (gone, silent, too large, bad framing).
    Failed,
}

/// What the response half of a full-duplex exchange did.
struct Down {
    status: u16,
    first_byte: Instant,
    responded: Responded,
    /// The response refused the request (3xx to 5xx) before the body was
    /// all sent: the rest of the body is not sent once the response is.
    cut_body: bool,
}

/// A request with a body: the body goes to the upstream while the
/// response comes back, as two futures of this task sharing both
/// connections ([`Shared`]), each through a buffer of fixed size. An
/// upstream that answers (or streams) while it still reads the body is
/// never waited for by the other direction.
///
/// - The upstream's silence counts toward `timeout_ms` only once the body
///   is all sent; before, the body's own limits bound the wait (the
///   client's `body_read_timeout_ms`, and each write to the upstream
///   within `timeout_ms`).
/// - A 3xx to 5xx response that comes before the body is all sent says
///   `connection: close`; once it is forwarded the rest of the body is
///   not sent, and the client connection lingers and closes. A 1xx or 2xx
///   one is forwarded as it comes, and the body goes on to its end.
/// - A body that fails on the client's side (gone, silent, too large, bad
///   framing) before any response head reached the client is answered by
///   the gateway as before; after one, the client connection closes.
async fn duplex(
    conn: &mut Conn,
    mut up: UpConn,
    upstream: Upstream<'_>,
    f: Forward<'_>,
    capture: Option<&mut Capture>,
    report: &mut Report,
) -> Proxied {
    let uplan = upstream.plan;
    let state = upstream.state;
    if conn.wants_continue(f.framing, f.expect_continue) {
        // Before either direction writes to the client.
        if let Err(e) = conn.send_continue().await {
            return Proxied::Body(e);
        }
    }
    let upload_state = Cell::new(Upload::Sending);
    let started = Cell::new(false);
    let status = Cell::new(None);
    let sent = Cell::new(0u64);
    let (body, down) = {
        let Split {
            body: mut body_in,
            stream,
            wbuf,
            ebuf,
        } = conn.split();
        let client = Shared::new(stream);
        let up_buf = &mut up.buf;
        let up_filled = &mut up.filled;
        let upio = Shared::new(&mut up.stream);
        upio.hold_read_timeout();
        let upload = async {
            let (mut c, mut u) = (&client, &upio);
            body_in
                .pump(&mut c, f.framing, upstream.limits, Some(&mut u))
                .await
        };
        let download = async {
            let (mut c, mut u) = (&client, &upio);
            let mut resp = ResponseHead::default();
            let mut interim = false;
            read_final_head(
                &mut c,
                wbuf,
                &mut u,
                up_buf,
                up_filled,
                uplan,
                f,
                &mut interim,
                &mut resp,
            )
            .await?;
            let first_byte = Instant::now();
            status.set(Some(resp.status));
            let pending = upload_state.get();
            let cut_body = pending == Upload::Sending && resp.status >= 300;
            // Asked when the head arrives: a drain that began while the
            // backend worked must make this response say `close`.
            let keep = f.keep_alive
                && !upstream.connections.draining()
                && !cut_body
                && pending != Upload::Cut;
            started.set(true);
            let responded = respond(
                &mut c,
                &mut u,
                up_buf,
                *up_filled,
                &resp,
                wbuf,
                ebuf,
                f,
                uplan,
                capture,
                keep,
                &sent,
                upstream.limits,
                upstream.date,
            )
            .await;
            Ok::<Down, UpErr>(Down {
                status: resp.status,
                first_byte,
                responded,
                cut_body,
            })
        };
        let mut upload = pin!(upload);
        let mut download = pin!(download);
        let mut body: Option<Result<u64, BodyError>> = None;
        let down = futures_lite::future::poll_fn(|cx| {
            if body.is_none() {
                if let Poll::Ready(r) = upload.as_mut().poll(cx) {
                    // From now on the upstream's silence counts.
                    upio.release_read_timeout();
                    upload_state.set(match &r {
                        Ok(_) => Upload::Done,
                        Err(BodyError::Sink(_)) => Upload::Cut,
                        Err(_) => Upload::Failed,
                    });
                    let client_fault = matches!(&r, Err(e) if !matches!(e, BodyError::Sink(_)));
                    body = Some(r);
                    if client_fault {
                        return Poll::Ready(None);
                    }
                }
            }
            download.as_mut().poll(cx).map(Some)
        })
        .await;
        if let (None, Some(Ok(d))) = (&body, &down) {
            // The response is forwarded and the body is still going up:
            // let it finish, unless the response refused it.
            if !d.cut_body && d.responded.streamed.is_ok() {
                body = Some(upload.as_mut().await);
            }
        }
        (body, down)
    };
    let body_done = matches!(body, Some(Ok(_)));
    if let Some(Ok(n)) = body {
        report.bytes_in = n;
    }
    match down {
        // The client's body failed first.
        None => {
            let e = match body {
                Some(Err(e)) => e,
                _ => BodyError::Client,
            };
            if !started.get() {
                // Nothing of a response reached the client: the gateway
                // answers (400, 408, 413) as it would without an upstream.
                return Proxied::Body(e);
            }
            report.status = status.get();
            report.bytes_out = sent.get();
            if !matches!(e, BodyError::Client) {
                crate::log_request!(
                    "warn",
                    f.request_id,
                    "upstream {:?}: the request body failed after the response began ({}); closing the client connection",
                    uplan.name,
                    body_error_text(&e)
                );
            }
            Proxied::Forwarded(Flow::Close)
        }
        Some(Err(e)) => head_failed(upstream, f, e, body_done),
        Some(Ok(d)) => {
            state.record_success(f.target);
            report.first_byte = Some(d.first_byte);
            report.status = Some(d.status);
            report.bytes_out = sent.get();
            let flow = match body {
                Some(Err(ref e)) if !matches!(e, BodyError::Sink(_)) => {
                    if !matches!(e, BodyError::Client) {
                        crate::log_request!(
                            "warn",
                            f.request_id,
                            "upstream {:?}: the request body failed after the response ({}); closing the client connection",
                            uplan.name,
                            body_error_text(e)
                        );
                    }
                    Flow::Close
                }
                _ => finish(upstream, f, up, d.responded, body_done),
            };
            Proxied::Forwarded(flow)
        }
    }
}

fn body_error_text(e: &BodyError) -> &'static str {
    match e {
        BodyError::Client => "the client closed the connection",
        BodyError::Timeout => "the client was silent for longer than body_read_timeout_ms",
        BodyError::TooLarge => "over max_body_bytes",
        BodyError::Bad(why) => why,
        BodyError::Sink(_) => "the upstream stopped reading it",
    }
}

/// What the connection does after a forwarded response, and whether the
/// upstream connection goes back to its pool. `body_done`: the client's
/// request body was read and sent whole.
fn finish(
    upstream: Upstream<'_>,
    f: Forward<'_>,
    up: UpConn,
    r: Responded,
    body_done: bool,
) -> Flow {
    let uplan = upstream.plan;
    match r.streamed {
        Ok(()) => {
            if r.reusable && body_done {
                upstream.state.checkin(uplan, up);
            }
            match (r.keep && body_done, body_done) {
                (true, _) => Flow::KeepAlive,
                (false, true) => Flow::Close,
                // The rest of the body may still be coming: read and drop
                // it for a while, so the response is not lost to a reset.
                (false, false) => Flow::Linger,
            }
        }
        Err(StreamErr::Client) => Flow::Close,
        Err(StreamErr::Upstream(why)) => {
            upstream
                .state
                .record_failure(uplan, f.target, Instant::now());
            crate::log_request!(
                "warn",
                f.request_id,
                "upstream {:?} target {}: response body cut short: {why}; closing the client connection",
                uplan.name,
                uplan.targets[f.target].addr
            );
            // A client still sending its body would turn a plain close
            // into a reset, and a reset can destroy the part of the
            // response it has not read yet: read and drop for a while.
            if body_done {
                Flow::Close
            } else {
                Flow::Linger
            }
        }
    }
}

/// Logs why no response head came, and says what the gateway answers.
fn head_failed(upstream: Upstream<'_>, f: Forward<'_>, e: UpErr, body_done: bool) -> Proxied {
    let uplan = upstream.plan;
    let target_addr = uplan.targets[f.target].addr;
    upstream
        .state
        .record_failure(uplan, f.target, Instant::now());
    match e {
        UpErr::Closed(e) => {
            crate::log_request!(
                "warn",
                f.request_id,
                "upstream {:?} target {target_addr}: closed before responding: {e}",
                uplan.name
            );
            fail(502, "Bad Gateway", body_done)
        }
        UpErr::Timeout => {
            crate::log_request!(
                "warn",
                f.request_id,
                "upstream {:?} target {target_addr}: no response within {} ms",
                uplan.name,
                uplan.timeout.as_millis()
            );
            fail(504, "Gateway Timeout", body_done)
        }
        UpErr::Bad(why) => {
            crate::log_request!(
                "warn",
                f.request_id,
                "upstream {:?} target {target_addr}: invalid response: {why}",
                uplan.name
            );
            fail(502, "Bad Gateway", body_done)
        }
    }
}

/// What [`respond`] did.
struct Responded {
    streamed: Result<(), StreamErr>,
    /// The upstream connection can carry another request, as far as the
    /// response goes.
    reusable: bool,
    /// The head promised the client keep-alive.
    keep: bool,
}

/// Writes the response head (`keep`: keep-alive may be promised) and
/// streams the body, from the upstream's buffer (`buf[..filled]` holds
/// the head and what came with it).
#[allow(clippy::too_many_arguments)]
async fn respond<C: Io, U: Io>(
    client: &mut C,
    io: &mut U,
    buf: &mut [u8],
    filled: usize,
    resp: &ResponseHead,
    wbuf: &mut Vec<u8>,
    ebuf: &[u8],
    f: Forward<'_>,
    uplan: &UpstreamPlan,
    mut capture: Option<&mut Capture>,
    keep: bool,
    sent: &Cell<u64>,
    limits: &Limits,
    date: &RefCell<DateCache>,
) -> Responded {
    let client_11 = f.minor_version == 1;
    let mut client_keep = keep;
    let dechunk = resp.framing == RespFraming::Chunked && !client_11;
    if dechunk || resp.framing == RespFraming::Close {
        client_keep = false;
    }
    write_response_head(wbuf, buf, resp, f, ebuf, client_keep, date);
    // Bytes written to the client, heads and body.
    sent.set(sent.get() + wbuf.len() as u64);

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
                        f.passes(h, buf) && !h.name.get(buf).eq_ignore_ascii_case(b"x-request-id")
                    };
                    m.write_headers(
                        &mut c.headers,
                        buf,
                        &resp.headers,
                        keep,
                        &map.ctx,
                        resp.status,
                    );
                    return Some(c);
                }
                for h in resp.headers.iter().filter(|h| f.passes(h, buf)) {
                    let name = h.name.get(buf);
                    if !name.eq_ignore_ascii_case(b"x-request-id") {
                        c.headers.extend_from_slice(name);
                        c.headers.extend_from_slice(b": ");
                        c.headers.extend_from_slice(h.value.get(buf));
                        c.headers.extend_from_slice(b"\r\n");
                    }
                }
                Some(c)
            }
            _ => None,
        }
    });
    let mut reusable = resp.keep_alive;
    let streamed: Result<(), StreamErr> = match resp.framing {
        RespFraming::None => {
            reusable &= leftover.is_empty();
            let r = client.send(wbuf).await.map_err(|_| StreamErr::Client);
            if let (Ok(()), Some(c)) = (&r, capture) {
                c.complete = true;
            }
            r
        }
        RespFraming::Length(n) => {
            let take = (leftover.len() as u64).min(n) as usize;
            reusable &= leftover.len() as u64 <= n;
            let first = resp.len..resp.len + take;
            match client.send_two(wbuf, &buf[first.clone()]).await {
                Err(_) => Err(StreamErr::Client),
                Ok(()) => {
                    if let Some(c) = capture.as_deref_mut() {
                        c.body.extend_from_slice(&buf[first]);
                    }
                    let body = capture.as_deref_mut().map(|c| &mut c.body);
                    sent.set(sent.get() + take as u64);
                    let rest = n - take as u64;
                    let r = match body {
                        // Nothing needs to see the bytes: splice them
                        // when that is on and both sides are plain TCP.
                        None => match splice_length(client, io, uplan, limits, n, rest, sent).await
                        {
                            Some(r) => r,
                            None => copy_length(client, io, buf, uplan, rest, None, sent).await,
                        },
                        Some(_) => copy_length(client, io, buf, uplan, rest, body, sent).await,
                    };
                    if let (Ok(()), Some(c)) = (&r, capture) {
                        c.complete = true;
                    }
                    r
                }
            }
        }
        RespFraming::Chunked => match client.send(wbuf).await {
            Err(_) => Err(StreamErr::Client),
            Ok(()) => {
                let r =
                    copy_chunked(client, io, buf, uplan, limits, leftover, !dechunk, sent).await;
                if let Ok(extra) = r {
                    reusable &= !extra;
                }
                r.map(|_| ())
            }
        },
        RespFraming::Close => match client.send_two(wbuf, &buf[leftover.clone()]).await {
            Err(_) => Err(StreamErr::Client),
            Ok(()) => {
                sent.set(sent.get() + leftover.len() as u64);
                copy_until_close(client, io, buf, uplan, sent).await
            }
        },
    };
    Responded {
        streamed,
        reusable,
        keep: client_keep,
    }
}

/// No response reached the client: the gateway answers with `status`.
fn fail(status: u16, message: &'static str, body_done: bool) -> Proxied {
    Proxied::Failed {
        status,
        message,
        body_done,
    }
}

/// Reads a final response head into `buf`, forwarding 1xx informational
/// responses to an HTTP/1.1 client (103) or dropping them (100), and its
/// parsed form into `resp`. `interim` is set once a 1xx response was read.
#[allow(clippy::too_many_arguments)]
async fn read_final_head<C: Io, U: Io>(
    client: &mut C,
    wbuf: &mut Vec<u8>,
    io: &mut U,
    buf: &mut Vec<u8>,
    filled: &mut usize,
    uplan: &UpstreamPlan,
    f: Forward<'_>,
    interim: &mut bool,
    resp: &mut ResponseHead,
) -> Result<(), UpErr> {
    *filled = 0;
    // One deadline for the final head and every 1xx before it.
    let mut deadline = None;
    loop {
        match read_head(
            io,
            buf,
            filled,
            uplan,
            f.method == Method::Head,
            resp,
            &mut deadline,
        )
        .await
        {
            Ok(Head::Final) => return Ok(()),
            Ok(Head::Interim) => {
                *interim = true;
                if resp.status != 100 && f.minor_version == 1 {
                    // 102/103: pass on; they carry no body.
                    wbuf.clear();
                    write_informational(wbuf, buf, resp);
                    client.send(wbuf).await.map_err(UpErr::Closed)?;
                }
                // Drop the interim head, keeping what followed it.
                let len = resp.len.min(*filled);
                buf.copy_within(len..*filled, 0);
                *filled -= len;
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

/// The client's response head: the upstream's status line and headers
/// (mapped, when the route maps this status) minus hop-by-hop ones, then
/// what the gateway adds: `date` when none passes on (RFC 9110 §6.6.1: a
/// proxy with a clock appends one, at the time it received the response),
/// `x-request-id` when the upstream sent none, the framing, the policies'
/// lines and `connection`.
#[allow(clippy::too_many_arguments)]
fn write_response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    resp: &ResponseHead,
    f: Forward<'_>,
    extra: &[u8],
    client_keep: bool,
    date: &RefCell<DateCache>,
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
    let has_date = if let Some((m, map)) = mapped(&f, resp.status) {
        m.write_headers(
            out,
            buf,
            &resp.headers,
            |h| f.passes(h, buf),
            &map.ctx,
            resp.status,
        )
    } else {
        for h in resp.headers.iter().filter(|h| f.passes(h, buf)) {
            out.extend_from_slice(h.name.get(buf));
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.get(buf));
            out.extend_from_slice(b"\r\n");
        }
        resp.has_date
    };
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date.borrow_mut().get());
        out.extend_from_slice(b"\r\n");
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

async fn read_upstream<U: Io>(io: &mut U, buf: &mut [u8]) -> Result<usize, StreamErr> {
    match io.recv(buf).await {
        Ok(0) => Err(StreamErr::Upstream("connection closed early")),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(StreamErr::Upstream("timed out")),
        Err(_) => Err(StreamErr::Upstream("connection reset")),
    }
}

async fn copy_length<C: Io, U: Io>(
    client: &mut C,
    io: &mut U,
    buf: &mut [u8],
    uplan: &UpstreamPlan,
    mut remaining: u64,
    mut capture: Option<&mut Vec<u8>>,
    sent: &Cell<u64>,
) -> Result<(), StreamErr> {
    io.set_read_timeout(Some(uplan.timeout));
    while remaining > 0 {
        let max = (buf.len() as u64).min(remaining) as usize;
        let n = read_upstream(io, &mut buf[..max]).await?;
        if let Some(c) = capture.as_deref_mut() {
            // The cache's copy; the client's bytes are still written from
            // the read buffer.
            c.extend_from_slice(&buf[..n]);
        }
        client
            .send(&buf[..n])
            .await
            .map_err(|_| StreamErr::Client)?;
        sent.set(sent.get() + n as u64);
        remaining -= n as u64;
    }
    Ok(())
}

/// Splices the `remaining` bytes of a response body of `len` bytes from
/// the upstream to the client ([`crate::net::splice`]) when
/// `server.splice_min_bytes` allows it, both connections are plain TCP
/// and a pipe can be had; None when the body is to be copied. The
/// upstream's `timeout_ms` bounds each wait for its bytes, as for a copy;
/// `sent` counts the bytes written to the client.
async fn splice_length<C: Io, U: Io>(
    client: &mut C,
    io: &mut U,
    uplan: &UpstreamPlan,
    limits: &Limits,
    len: u64,
    remaining: u64,
    sent: &Cell<u64>,
) -> Option<Result<(), StreamErr>> {
    use crate::net::splice::Transfer;
    if limits.splice_min_bytes == 0
        || len < limits.splice_min_bytes
        || remaining == 0
        || client.with_plain(|_| ()).is_none()
        || io.with_plain(|_| ()).is_none()
    {
        return None;
    }
    let mut t = Transfer::new(remaining, limits.splice_pipe_bytes, Toward::Client)?;
    io.set_read_timeout(Some(uplan.timeout));
    let r = crate::tls::stream::splice(io, client, &mut t, sent).await;
    Some(r.map_err(response_splice_error))
}

/// Streams a chunked body: re-framed with `keep_framing`, else its data
/// only. Returns whether the upstream sent bytes past the end of it (the
/// connection then cannot be reused).
///
/// Between plain TCP sockets, the data of a chunk of at least
/// `server.splice_min_bytes` that is not in the buffer yet goes from socket
/// to socket ([`splice_chunk`]); its size line (ours, or the upstream's
/// when already canonical) and whatever of its data came with it are
/// written from the buffer first, and the decoder parses every byte of
/// framing as for a copied chunk.
#[allow(clippy::too_many_arguments)]
async fn copy_chunked<C: Io, U: Io>(
    client: &mut C,
    io: &mut U,
    buf: &mut [u8],
    uplan: &UpstreamPlan,
    limits: &Limits,
    leftover: std::ops::Range<usize>,
    keep_framing: bool,
    sent: &Cell<u64>,
) -> Result<bool, StreamErr> {
    io.set_read_timeout(Some(uplan.timeout));
    let mut dec = ChunkedDecoder::new(keep_framing, uplan.max_response_header_bytes);
    let (mut pos, mut end) = (leftover.start, leftover.end);
    // The last chunk whose data came was spliced: reads stay short until
    // the next chunk's data (see AFTER_SPLICE_READ).
    let mut short = false;
    loop {
        while pos < end && !dec.is_done() {
            let step = dec
                .step(&buf[pos..end])
                .map_err(|e| StreamErr::Upstream(e.0))?;
            // The run itself, or our framing in place of what was dropped
            // (with keep_framing the body is re-framed).
            let out = step.out(&buf[pos..end]);
            if !out.is_empty() {
                client.send(out).await.map_err(|_| StreamErr::Client)?;
                sent.set(sent.get() + out.len() as u64);
            }
            pos += step.consumed;
        }
        if dec.is_done() {
            return Ok(pos < end);
        }
        // The buffer is empty: the rest of a big chunk's data can go from
        // socket to socket.
        match splice_chunk(io, client, &mut dec, limits, u64::MAX, Toward::Client, sent).await {
            Some(r) => {
                r.map_err(response_splice_error)?;
                short = true;
            }
            None => short &= dec.in_data().is_none(),
        }
        let max = if short {
            AFTER_SPLICE_READ.min(buf.len())
        } else {
            buf.len()
        };
        end = read_upstream(io, &mut buf[..max]).await?;
        pos = 0;
    }
}

/// A response body's splice that failed, as the copy path reports it.
fn response_splice_error(e: SpliceError) -> StreamErr {
    match e {
        SpliceError::Closed => StreamErr::Upstream("connection closed early"),
        SpliceError::Read(e) if e.kind() == io::ErrorKind::TimedOut => {
            StreamErr::Upstream("timed out")
        }
        SpliceError::Read(_) => StreamErr::Upstream("connection reset"),
        SpliceError::Write(_) => StreamErr::Client,
    }
}

async fn copy_until_close<C: Io, U: Io>(
    client: &mut C,
    io: &mut U,
    buf: &mut [u8],
    uplan: &UpstreamPlan,
    sent: &Cell<u64>,
) -> Result<(), StreamErr> {
    io.set_read_timeout(Some(uplan.timeout));
    loop {
        match io.recv(buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => {
                client
                    .send(&buf[..n])
                    .await
                    .map_err(|_| StreamErr::Client)?;
                sent.set(sent.get() + n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(StreamErr::Upstream("timed out"))
            }
            Err(_) => return Err(StreamErr::Upstream("connection reset")),
        }
    }
}
