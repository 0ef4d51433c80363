//! Plain WebSocket proxying (docs/websocket.md, "Proxying a WebSocket
//! backend"): a request with `Upgrade: websocket` on a route with an
//! `http_proxy` integration is checked as a handshake, forwarded on a new
//! connection to the chosen target with its `Upgrade` and `Connection`
//! headers, and the target's `101` (whose `Sec-WebSocket-Accept` must match
//! the client's key) is relayed; then bytes are relayed both ways until
//! either side closes, the connection is idle for the idle timeout, or its
//! lifetime ends (the API's `[apis.websocket]`, AWS's defaults). The relay
//! follows the frame headers going by ([`Frames`]) to count messages and
//! bytes each way and to see the close code for the access-log line of
//! the connection's end. The driver sends a request here only when the
//! head parser saw an upgrade (`RequestHead::upgrade`), so other requests
//! pay one branch on a flag.

use super::exchange::Exchange;
use super::websocket::{counters, Counters};
use super::{reply, Gateway, Generation};
use crate::accesslog::shard::ShardLog;
use crate::http::conn::{Conn, Connections, Flow, Upgraded};
use crate::http::parse::{list_elements, RequestHead};
use crate::http::response::parse_response_head;
use crate::http::ws;
use crate::integration::http_proxy::{self, ClientTls, ProxyPlan, WsRelayLimits};
use crate::integration::upstream::UpConn;
use std::borrow::Cow;
use std::cell::Cell;
use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Each direction's relay buffer.
const RELAY_BUF: usize = 16 * 1024;

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
pub fn wants_websocket(buf: &[u8], head: &RequestHead) -> bool {
    head.upgrade
        && head
            .headers
            .iter()
            .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"upgrade"))
            .flat_map(|h| list_elements(h.value.get(buf)))
            .any(|t| t.eq_ignore_ascii_case(b"websocket"))
}

/// Proxies a WebSocket handshake to the route's upstream, then hands the
/// connection to a relay.
pub async fn proxy(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    consumed: Option<usize>,
    p: &ProxyPlan,
    params: &[(&str, (usize, usize))],
) -> Flow {
    let generation = x.generation.clone();
    let plan = &generation.plan;
    let (Some(uplan), Some(state)) = (
        plan.upstreams.get(p.upstream),
        generation.upstreams.get(p.upstream),
    ) else {
        return refuse(gw, conn, head, x, consumed, 500, "Internal Server Error").await;
    };
    let target = state.pick(uplan, x.outcome.timings.received);
    x.outcome.upstream = Some((p.upstream, target));
    let mut user_agent = None;
    let expected_accept = {
        let Some(parts) = conn.parts(consumed) else {
            return refuse(gw, conn, head, x, consumed, 500, "Internal Server Error").await;
        };
        let key = match ws::check_handshake(parts.buf, head) {
            Ok(h) => h.key.to_vec(),
            Err(e) => {
                if e.version {
                    parts
                        .extra
                        .extend_from_slice(b"sec-websocket-version: 13\r\n");
                }
                return refuse(gw, conn, head, x, consumed, e.status, e.message).await;
            }
        };
        if plan.access_log.any {
            // For the access-log line of the connection's end.
            user_agent = header(parts.buf, head, b"user-agent");
        }
        let bound: Vec<(&str, &[u8])> = params
            .iter()
            .filter_map(|&(k, (at, len))| Some((k, parts.buf.get(at..at + len)?)))
            .collect();
        http_proxy::write_upstream_head(
            parts.xbuf,
            parts.buf,
            head,
            &bound,
            p,
            uplan,
            target,
            x.peer,
            &x.request_id,
            parts.tls.then_some(ClientTls {
                client_cert_subject: parts.client_cert_subject,
            }),
            &x.state.upstream_headers,
        );
        // The head ends with its blank line: put the upgrade back before it.
        let xb = &mut *parts.xbuf;
        xb.truncate(xb.len().saturating_sub(2));
        xb.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
        ws::accept_key(&key)
    };
    if consumed.is_none() {
        conn.consume(head.len);
    }
    // === the upstream's answer ===
    let _in_flight = state.begin(target);
    let connected = state.connect(uplan, target).await;
    state.note_connect(target, connected.is_ok());
    let mut up = match connected {
        Ok(u) => u,
        Err(e) => {
            state.record_failure(uplan, target, Instant::now());
            crate::log_request!(
                "warn",
                x.request_id,
                "upstream {:?}: WebSocket connect failed: {e}",
                uplan.name
            );
            return refuse(gw, conn, head, x, Some(0), 502, "Bad Gateway").await;
        }
    };
    x.outcome.timings.upstream_connected = Some(Instant::now());
    if up.stream.send(&conn.xbuf).await.is_err() {
        return refuse(gw, conn, head, x, Some(0), 502, "Bad Gateway").await;
    }
    let resp = match read_head(&mut up, uplan.timeout, uplan.max_response_header_bytes).await {
        Ok(r) => r,
        Err(timeout) => {
            state.record_failure(uplan, target, Instant::now());
            let (status, message) = if timeout {
                (504, "Gateway Timeout")
            } else {
                (502, "Bad Gateway")
            };
            return refuse(gw, conn, head, x, Some(0), status, message).await;
        }
    };
    state.record_success(target);
    x.outcome.timings.upstream_first_byte = Some(Instant::now());
    x.outcome.upstream_status = Some(resp.status);
    let accept_ok = resp
        .headers
        .iter()
        .find(|h| {
            h.name
                .get(&up.buf)
                .eq_ignore_ascii_case(b"sec-websocket-accept")
        })
        .is_some_and(|h| h.value.get(&up.buf) == expected_accept.as_bytes());
    if resp.status != 101 || !accept_ok {
        // The upgrade was refused (or answered wrongly): the client gets
        // the upstream's error status, or 502.
        let status = if resp.status != 101 && (400..=599).contains(&resp.status) {
            resp.status
        } else {
            502
        };
        let message = crate::http::reason_phrase(status);
        return refuse(gw, conn, head, x, Some(0), status, message).await;
    }
    // === relay the 101, then hand over ===
    if conn.stream.send(&up.buf[..resp.len]).await.is_err() {
        return Flow::Close;
    }
    x.outcome.status = 101;
    x.outcome.bytes_out += resp.len as u64;
    let early = up.buf[resp.len..up.filled].to_vec();
    let Some(route) = x.route.and_then(|r| Some((r, plan.routes.get(r)?))) else {
        return Flow::Close;
    };
    let c = counters(&route.1.api, &route.1.key);
    crate::observe::bump(&c.connects, 1);
    let relay_state = Relay {
        counters: c,
        log: gw.access.log.clone(),
        generation: generation.clone(),
        route: route.0,
        limits: p.ws_limits,
        request_id: x.request_id.to_vec(),
        source_ip: x.peer.ip(),
        user_agent,
        upstream: (p.upstream, target),
    };
    let connections = gw.connections.clone();
    conn.handover = Some(Box::new(move |client: Upgraded| {
        glommio::spawn_local(crate::http::conn::guarded(
            "a proxied WebSocket connection",
            relay(client, up, early, connections, relay_state),
        ))
        .detach();
    }));
    Flow::Handover
}

/// A refusal with a JSON message. `consumed`: as the driver's (the head's
/// length if a phase consumed it; `Some(0)` once this module did).
async fn refuse(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    consumed: Option<usize>,
    status: u16,
    message: &'static str,
) -> Flow {
    if consumed.is_none() {
        conn.consume(head.len);
    }
    reply::error(gw, conn, head, x, status, Cow::Borrowed(message), None).await
}

/// Reads the upstream's response head into `up.buf`. Err(true): no head
/// within `timeout`; Err(false): closed or not a response head.
async fn read_head(
    up: &mut UpConn,
    timeout: Duration,
    max: usize,
) -> Result<crate::http::response::ResponseHead, bool> {
    up.filled = 0;
    let deadline = Instant::now() + timeout;
    loop {
        if up.filled > 0 {
            match parse_response_head(&up.buf[..up.filled], false, max) {
                Ok(Some(r)) if (100..200).contains(&r.status) && r.status != 101 => {
                    up.drop_head(r.len);
                    continue;
                }
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(_) => return Err(false),
            }
        }
        if up.filled == up.buf.len() {
            return Err(false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(true);
        }
        up.stream.set_read_timeout(Some(left));
        let filled = up.filled;
        match futures_lite::AsyncReadExt::read(&mut up.stream, &mut up.buf[filled..]).await {
            Ok(0) => return Err(false),
            Ok(n) => up.filled += n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(true),
            Err(_) => return Err(false),
        }
    }
}

fn header(buf: &[u8], head: &RequestHead, name: &[u8]) -> Option<Vec<u8>> {
    head.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(buf).to_vec())
}

/// What a relay counts and logs with.
struct Relay {
    counters: Rc<Counters>,
    log: Rc<ShardLog>,
    generation: Rc<Generation>,
    route: usize,
    limits: WsRelayLimits,
    request_id: Vec<u8>,
    source_ip: IpAddr,
    user_agent: Option<Vec<u8>>,
    upstream: (usize, usize),
}

/// Follows the frames of one direction of a relayed WebSocket through
/// the bytes going by, which pass unchanged: counts its messages (final
/// text, binary and continuation frames) and reads the code of its close
/// frame. What is not a valid frame is the two ends' business; the count
/// follows the lengths the headers declare.
#[derive(Default)]
pub(crate) struct Frames {
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// The current frame is a close frame: its mask, and how many of its
    /// code's two bytes were read.
    closing: bool,
    mask: [u8; 4],
    code_bytes: [u8; 2],
    code_have: usize,
    pub messages: u64,
    /// The first close frame's code (1005 for one without a code).
    pub code: Option<u16>,
}

impl Frames {
    fn head_len(b1: u8) -> usize {
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
    }

    /// Takes up to `need` header bytes; whether the header is complete.
    fn fill(&mut self, data: &mut &[u8], need: usize) -> bool {
        let n = need.saturating_sub(self.have).min(data.len());
        self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
        self.have += n;
        *data = &data[n..];
        self.have >= need
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64) as usize;
                if self.closing {
                    for &b in data[..n].iter().take(2 - self.code_have) {
                        self.code_bytes[self.code_have] = b ^ self.mask[self.code_have];
                        self.code_have += 1;
                    }
                    if self.code_have == 2 && self.code.is_none() {
                        self.code = Some(u16::from_be_bytes(self.code_bytes));
                    }
                }
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            if !self.fill(&mut data, 2) || !self.fill(&mut data, Self::head_len(self.head[1])) {
                return;
            }
            let h = &self.head;
            let (ext, len) = match h[1] & 0x7f {
                126 => (2, u64::from(u16::from_be_bytes([h[2], h[3]]))),
                127 => (
                    8,
                    u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                ),
                n => (0, u64::from(n)),
            };
            let op = h[0] & 0x0f;
            if op == ws::OP_CLOSE {
                self.closing = true;
                self.code_have = 0;
                self.mask = [0; 4];
                if h[1] & 0x80 != 0 {
                    self.mask.copy_from_slice(&h[2 + ext..6 + ext]);
                }
                if len < 2 && self.code.is_none() {
                    self.code = Some(ws::code::NO_STATUS);
                }
            } else {
                self.closing = false;
                if op < 8 && h[0] & 0x80 != 0 {
                    self.messages += 1;
                }
            }
            self.skip = len;
            self.have = 0;
        }
    }
}

/// Which side had something.
enum Side {
    Client(io::Result<usize>),
    Upstream(io::Result<usize>),
}

/// Relays bytes both ways until a side closes, the idle timeout or the
/// lifetime passes, or the shard drains.
async fn relay(
    client: Upgraded,
    mut up: UpConn,
    early: Vec<u8>,
    connections: Rc<Connections>,
    r: Relay,
) {
    let Upgraded {
        mut stream,
        buffered,
        guard,
        ..
    } = client;
    let started = Instant::now();
    let mut last = started;
    let c = &r.counters;
    // From the client, from the backend.
    let (mut from_client, mut from_backend) = (Frames::default(), Frames::default());
    let mut bytes_out = 0u64;
    let count = |f: &mut Frames, data: &[u8], messages: &Cell<u64>, bytes: &Cell<u64>| {
        let before = f.messages;
        f.feed(data);
        crate::observe::bump(messages, f.messages - before);
        crate::observe::bump(bytes, data.len() as u64);
    };
    let mut ended = None;
    let ok = (buffered.is_empty() || up.stream.send(&buffered).await.is_ok())
        && (early.is_empty() || stream.send(&early).await.is_ok());
    count(
        &mut from_client,
        &buffered,
        &c.messages,
        &c.proxy_bytes_from_client,
    );
    count(
        &mut from_backend,
        &early,
        &c.proxy_messages_from_backend,
        &c.proxy_bytes_from_backend,
    );
    bytes_out += early.len() as u64;
    let mut cbuf = vec![0u8; RELAY_BUF];
    up.buf.resize(RELAY_BUF, 0);
    if ok {
        loop {
            let now = Instant::now();
            if connections.draining() {
                ended = Some("server shutting down");
                break;
            }
            let lifetime_end = started + r.limits.max_lifetime;
            let end = (last + r.limits.idle_timeout).min(lifetime_end);
            let Some(wait) = end.checked_duration_since(now).filter(|d| !d.is_zero()) else {
                ended = Some(if now >= lifetime_end {
                    "connection lifetime reached"
                } else {
                    "idle timeout"
                });
                break;
            };
            stream.set_read_timeout(Some(wait));
            up.stream.set_read_timeout(Some(wait));
            guard.set_idle(true);
            let side = {
                let (ustream, ubuf) = (&mut up.stream, &mut up.buf);
                let (cstream, cb) = (&mut stream, &mut cbuf);
                let c = async { Side::Client(futures_lite::AsyncReadExt::read(cstream, cb).await) };
                let u =
                    async { Side::Upstream(futures_lite::AsyncReadExt::read(ustream, ubuf).await) };
                futures_lite::future::or(c, u).await
            };
            guard.set_idle(false);
            match side {
                Side::Client(Ok(n)) if n > 0 => {
                    count(
                        &mut from_client,
                        &cbuf[..n],
                        &c.messages,
                        &c.proxy_bytes_from_client,
                    );
                    if up.stream.send(&cbuf[..n]).await.is_err() {
                        break;
                    }
                    last = Instant::now();
                }
                Side::Upstream(Ok(n)) if n > 0 => {
                    count(
                        &mut from_backend,
                        &up.buf[..n],
                        &c.proxy_messages_from_backend,
                        &c.proxy_bytes_from_backend,
                    );
                    if stream.send(&up.buf[..n]).await.is_err() {
                        break;
                    }
                    bytes_out += n as u64;
                    last = Instant::now();
                }
                // A deadline or the drain's interruption: looked at above.
                Side::Client(Err(e)) | Side::Upstream(Err(e))
                    if e.kind() == io::ErrorKind::TimedOut => {}
                _ => break,
            }
        }
    }
    up.stream.close().await;
    stream.close().await;
    drop(guard);
    let route_key = r
        .generation
        .plan
        .routes
        .get(r.route)
        .map_or("", |route| route.key.as_str());
    super::access::record_ws_end(
        &r.log,
        &r.generation,
        &super::access::WsEnd {
            request_id: &r.request_id,
            source_ip: r.source_ip,
            user_agent: r.user_agent.as_deref(),
            route: r.route,
            route_key,
            opened: started,
            code: from_client
                .code
                .or(from_backend.code)
                .unwrap_or(ws::code::ABNORMAL),
            bytes_out,
            integration_status: None,
            error: ended,
            upstream: Some(r.upstream),
        },
    );
}

#[cfg(test)]
mod tests {
    //! Unwraps are fine: the inputs are literals of the test.
    use super::Frames;
    use crate::http::ws;

    fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![op | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn messages_and_the_close_code_are_followed_across_any_split() {
        let mut stream = masked(ws::OP_TEXT, true, b"hello");
        stream.extend(masked(ws::OP_BINARY, false, &[7; 300]));
        stream.extend(masked(ws::OP_PING, true, b"p"));
        stream.extend(masked(0, true, &[8; 200]));
        stream.extend(masked(ws::OP_CLOSE, true, &[0x0f, 0xa1, b'x']));
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let mut f = Frames::default();
            for c in stream.chunks(chunk) {
                f.feed(c);
            }
            assert_eq!(f.messages, 2, "chunks of {chunk}");
            assert_eq!(f.code, Some(4001), "chunks of {chunk}");
        }
    }

    #[test]
    fn a_close_without_a_code_and_a_huge_length_are_followed() {
        let mut f = Frames::default();
        f.feed(&[0x88, 0x00]);
        assert_eq!(f.code, Some(ws::code::NO_STATUS));
        let mut f = Frames::default();
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        f.feed(&huge);
        f.feed(&[0; 100]);
        assert_eq!(f.messages, 1);
        assert_eq!(f.skip, u64::MAX - 100);
    }
}
