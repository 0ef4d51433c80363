//! Plain WebSocket proxying (docs/websocket.md, "Proxying a WebSocket
//! backend"): a request with `Upgrade: websocket` on a route with an
//! `http_proxy` integration is checked as a handshake, forwarded on a new
//! connection to the chosen target with its `Upgrade` and `Connection`
//! headers, and the target's `101` (whose `Sec-WebSocket-Accept` must match
//! the client's key) is relayed; then bytes are relayed both ways until
//! either side closes, the connection is idle for the idle timeout, or its
//! lifetime ends. The driver sends a request here only when the head
//! parser saw an upgrade (`RequestHead::upgrade`), so other requests pay
//! one branch on a flag.

use super::exchange::Exchange;
use super::{reply, Gateway};
use crate::config::raw::websocket::{DEFAULT_MAX_LIFETIME_MS, DEFAULT_WS_IDLE_TIMEOUT_MS};
use crate::http::conn::{Conn, Connections, Flow, Upgraded};
use crate::http::parse::{list_elements, RequestHead};
use crate::http::response::parse_response_head;
use crate::http::ws;
use crate::integration::http_proxy::{self, ClientTls, ProxyPlan};
use crate::integration::upstream::UpConn;
use std::borrow::Cow;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a proxied WebSocket may be silent both ways.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(DEFAULT_WS_IDLE_TIMEOUT_MS);
/// How long a proxied WebSocket may stay open.
pub const LIFETIME: Duration = Duration::from_millis(DEFAULT_MAX_LIFETIME_MS);
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
    let connections = gw.connections.clone();
    conn.handover = Some(Box::new(move |client: Upgraded| {
        glommio::spawn_local(relay(client, up, early, connections)).detach();
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

/// Which side had something.
enum Side {
    Client(io::Result<usize>),
    Upstream(io::Result<usize>),
}

/// Relays bytes both ways until a side closes, the idle timeout or the
/// lifetime passes, or the shard drains.
async fn relay(client: Upgraded, mut up: UpConn, early: Vec<u8>, connections: Rc<Connections>) {
    let Upgraded {
        mut stream,
        buffered,
        guard,
        ..
    } = client;
    let started = Instant::now();
    let mut last = started;
    let ok = (buffered.is_empty() || up.stream.send(&buffered).await.is_ok())
        && (early.is_empty() || stream.send(&early).await.is_ok());
    let mut cbuf = vec![0u8; RELAY_BUF];
    up.buf.resize(RELAY_BUF, 0);
    if ok {
        loop {
            let now = Instant::now();
            if connections.draining() {
                break;
            }
            let end = (last + IDLE_TIMEOUT).min(started + LIFETIME);
            let Some(wait) = end.checked_duration_since(now).filter(|d| !d.is_zero()) else {
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
                    if up.stream.send(&cbuf[..n]).await.is_err() {
                        break;
                    }
                    last = Instant::now();
                }
                Side::Upstream(Ok(n)) if n > 0 => {
                    if stream.send(&up.buf[..n]).await.is_err() {
                        break;
                    }
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
}
