//! WebSocket APIs on a shard (docs/websocket.md): the handshake as the
//! integration of an API's `$connect` route ([`connect`]), then each
//! connection's session on a task of its own ([`run`]), and the
//! `@connections` commands the admin listener and other shards send
//! through the shard's control inbox ([`command`]; a shard's request on
//! an API's own `@connections` path awaits its answer in [`manage`]).
//!
//! The driver runs `$connect`'s phases (IP rules, API key, authorizer,
//! throttle) like any route's; [`connect`] then checks the handshake,
//! admits the connection under the API's new-connection rate, registers
//! it (so that a backend may push to it as soon as it answers `$connect`),
//! calls `$connect`'s integration, answers `101` and hands the socket over
//! ([`crate::http::conn::Flow::Handover`]).
//!
//! A session reads frames ([`crate::http::ws`]), answers pings, routes
//! each message by the API's route selection expression and sends it to
//! the route's integration, one message after the other in the order they
//! came (up to [`MAX_PENDING`] wait; reading stops while they do). What
//! the gateway sends (pongs, route responses, pushed messages) waits in
//! the session's outbox; pushes are refused with 429 when it holds more
//! than `send_buffer_bytes`, so a client that stops reading costs bounded
//! memory. After the close (either side's, or a vanished client),
//! `$disconnect`'s integration is called, best effort, with the close code.
//!
//! A connection id names its shard (its first four hex digits), the slot
//! of its session in the shard's registry, and a per-slot nonce, so an id
//! is never reused while the process runs. Sessions are shard-local
//! (`Rc`, `Cell`): the registry is a thread-local of the shard's thread.

use super::exchange::Exchange;
use super::{reply, Gateway, Generation};
use crate::http::conn::{Conn, Connections, Flow, Upgraded};
use crate::http::parse::RequestHead;
use crate::http::ws::{self, code, Assembler, Event};
use crate::integration::client;
use crate::integration::websocket::{self as plan, WsApiPlan, WsIntegration, WsRoute};
use crate::plan::Integration;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

/// Messages from a client that may wait for their integration; reading
/// stops while this many do.
pub const MAX_PENDING: usize = 8;
/// The read buffer a session starts with (and shrinks back to after a
/// large frame).
const READ_BUF: usize = 512;
/// After the gateway sends a close frame, how long it waits for the
/// client's before closing the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

// === impl Signal ===

/// Wakes the session's task: something is in its outbox, a message's
/// integration finished, or a close was asked for. One waiter.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

// === impl Session ===

/// One connection's state, shared by its task, its message worker and
/// the registry (for pushes).
pub struct Session {
    id: String,
    generation: Rc<Generation>,
    /// The `$connect` route carrying the API's plan.
    route: usize,
    connected_at: SystemTime,
    last_active: Cell<SystemTime>,
    /// Last frame either way (a message, a fragment, a ping or pong),
    /// for the idle timeout.
    last_io: Cell<Instant>,
    source_ip: IpAddr,
    user_agent: String,
    /// Header lines the authorizer gave (claims, context), sent with
    /// every event.
    auth_headers: Vec<u8>,
    /// Encoded frames waiting to be sent, and their bytes.
    outbox: RefCell<VecDeque<Vec<u8>>>,
    queued: Cell<usize>,
    /// A close asked for from outside the task (`DELETE`).
    close: Cell<Option<u16>>,
    /// Client messages waiting for their integration.
    pending: RefCell<VecDeque<(bool, Vec<u8>)>>,
    worker: Cell<bool>,
    messages: Cell<u64>,
    /// False once the connection is closed.
    open: Cell<bool>,
    wake: Signal,
    /// Wakes the message worker: the outbox shrank, or the connection
    /// closed.
    room: Signal,
}

impl Session {
    fn api(&self) -> Option<&WsApiPlan> {
        match &self.generation.plan.routes.get(self.route)?.integration {
            Integration::WebSocket(w) => Some(w),
            _ => None,
        }
    }

    fn touch(&self) {
        self.last_io.set(Instant::now());
        self.last_active.set(SystemTime::now());
    }

    /// Queues a frame whatever the outbox holds (pongs, close, answers to
    /// the client's own messages: bounded by reading, which stops while
    /// messages wait).
    fn queue(&self, frame: Vec<u8>) {
        self.queued.set(self.queued.get() + frame.len());
        self.outbox.borrow_mut().push_back(frame);
        self.wake.notify();
    }

    /// Queues a message as a text frame when it is UTF-8, else binary.
    fn queue_message(&self, data: &[u8]) {
        let mut f = Vec::with_capacity(data.len() + 10);
        let op = if std::str::from_utf8(data).is_ok() {
            ws::OP_TEXT
        } else {
            ws::OP_BINARY
        };
        ws::encode_frame(&mut f, op, data);
        self.queue(f);
    }

    fn pop(&self) -> Option<Vec<u8>> {
        let f = self.outbox.borrow_mut().pop_front()?;
        self.queued.set(self.queued.get().saturating_sub(f.len()));
        self.room.notify();
        Some(f)
    }

    /// The AWS-style error message sent to a client: `{"message":...,
    /// "connectionId":..., "requestId":...}`.
    fn queue_error(&self, message: &str, request_id: &str) {
        let body = serde_json::json!({
            "message": message,
            "connectionId": self.id,
            "requestId": request_id,
        })
        .to_string();
        self.queue_message(body.as_bytes());
    }
}

// === impl metrics ===

/// One route's counters (see `observe::snapshot::WsSnapshot`): a
/// WebSocket API's route, or an HTTP API's `http_proxy` route relaying
/// WebSockets (`super::ws_proxy`: its connects, messages from clients, and
/// the `proxy_` counters).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) connects: Cell<u64>,
    pub(super) messages: Cell<u64>,
    integration_errors: Cell<u64>,
    client_errors: Cell<u64>,
    execution_errors: Cell<u64>,
    integration: crate::observe::hist::Histogram,
    pub(super) proxy_messages_from_backend: Cell<u64>,
    pub(super) proxy_bytes_from_client: Cell<u64>,
    pub(super) proxy_bytes_from_backend: Cell<u64>,
}

/// The route label of frames that broke the protocol or a limit.
const FRAMES: &str = "(frames)";
/// The route label of pushed messages.
const PUSHED: &str = "@connections";

thread_local! {
    /// This shard's WebSocket counters by (API, route key), kept for the
    /// process's life like the request series.
    static METRICS: RefCell<Vec<(String, String, Rc<Counters>)>> = RefCell::default();
}

pub(super) fn counters(api: &str, route: &str) -> Rc<Counters> {
    METRICS.with(|m| {
        let mut m = m.borrow_mut();
        if let Some((_, _, c)) = m.iter().find(|(a, r, _)| a == api && r == route) {
            return c.clone();
        }
        let c = Rc::new(Counters::default());
        m.push((api.to_string(), route.to_string(), c.clone()));
        c
    })
}

fn count(api: &str, route: &str, f: impl FnOnce(&Counters) -> &Cell<u64>) {
    let c = counters(api, route);
    crate::observe::bump(f(&c), 1);
}

/// This shard's WebSocket counters, for a scrape.
pub fn snapshot() -> Vec<crate::observe::snapshot::WsSnapshot> {
    METRICS.with(|m| {
        m.borrow()
            .iter()
            .map(|(api, route, c)| crate::observe::snapshot::WsSnapshot {
                api: api.clone(),
                route: route.clone(),
                connects: c.connects.get(),
                messages: c.messages.get(),
                integration_errors: c.integration_errors.get(),
                client_errors: c.client_errors.get(),
                execution_errors: c.execution_errors.get(),
                integration: c.integration.snapshot(),
                proxy_messages_from_backend: c.proxy_messages_from_backend.get(),
                proxy_bytes_from_client: c.proxy_bytes_from_client.get(),
                proxy_bytes_from_backend: c.proxy_bytes_from_backend.get(),
            })
            .collect()
    })
}

// === impl Registry ===

#[derive(Default)]
struct Registry {
    slots: Vec<Option<(u32, Rc<Session>)>>,
    free: Vec<u32>,
    nonce: u32,
}

/// New connections admitted this second, per API name.
#[derive(Default)]
struct Admission {
    window: Option<Instant>,
    counts: Vec<(String, u32)>,
}

thread_local! {
    static SESSIONS: RefCell<Registry> = RefCell::default();
    static ADMISSION: RefCell<Admission> = RefCell::default();
}

/// Live sessions on this shard (the calling thread's).
pub fn live() -> usize {
    SESSIONS.with(|r| {
        let r = r.borrow();
        r.slots.len() - r.free.len()
    })
}

fn register(shard: usize, make: impl FnOnce(String) -> Session) -> Rc<Session> {
    SESSIONS.with(|r| {
        let mut r = r.borrow_mut();
        if r.nonce == 0 {
            // A different start per process, so ids of a restarted
            // gateway do not repeat the last one's.
            r.nonce = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.subsec_nanos() | 1);
        }
        r.nonce = r.nonce.wrapping_add(0x9E37_79B9);
        let nonce = r.nonce;
        let slot = match r.free.pop() {
            Some(s) => s,
            None => {
                r.slots.push(None);
                (r.slots.len() - 1) as u32
            }
        };
        let id = format!("{:04x}{slot:08x}{nonce:08x}", shard as u16);
        let s = Rc::new(make(id));
        r.slots[slot as usize] = Some((nonce, s.clone()));
        s
    })
}

/// (shard, slot, nonce) of a connection id.
pub fn parse_id(id: &str) -> Option<(usize, u32, u32)> {
    if id.len() != 20 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let shard = u16::from_str_radix(&id[..4], 16).ok()?;
    let slot = u32::from_str_radix(&id[4..12], 16).ok()?;
    let nonce = u32::from_str_radix(&id[12..], 16).ok()?;
    Some((shard as usize, slot, nonce))
}

fn lookup(id: &str) -> Option<Rc<Session>> {
    let (_, slot, nonce) = parse_id(id)?;
    SESSIONS.with(|r| match r.borrow().slots.get(slot as usize) {
        Some(Some((n, s))) if *n == nonce && s.id == id => Some(s.clone()),
        _ => None,
    })
}

fn unregister(s: &Session) {
    s.open.set(false);
    s.room.notify();
    let Some((_, slot, nonce)) = parse_id(&s.id) else {
        return;
    };
    let taken = SESSIONS.with(|r| {
        let mut r = r.borrow_mut();
        let hit = matches!(r.slots.get(slot as usize), Some(Some((n, _))) if *n == nonce);
        if hit {
            r.free.push(slot);
            r.slots[slot as usize].take()
        } else {
            None
        }
    });
    // Dropped outside the registry's borrow.
    drop(taken);
}

/// Whether the API may take one more connection this second on this
/// shard: its rate split evenly over the shards (rounded up).
fn admit(api: &str, per_second: u32, shards: usize) -> bool {
    let share = per_second.div_ceil(shards.max(1) as u32).max(1);
    ADMISSION.with(|a| {
        let mut a = a.borrow_mut();
        let now = Instant::now();
        if a.window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            a.window = Some(now);
            a.counts.clear();
        }
        match a.counts.iter_mut().find(|(n, _)| n == api) {
            Some((_, c)) if *c >= share => false,
            Some((_, c)) => {
                *c += 1;
                true
            }
            None => {
                a.counts.push((api.to_string(), 1));
                true
            }
        }
    })
}

// === impl connect ===

fn header<'a>(buf: &'a [u8], head: &RequestHead, name: &[u8]) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(buf))
}

/// The handshake: the integration of a WebSocket API's `$connect` route,
/// once its phases let the request through. `consumed` is the head's
/// length if a phase consumed it.
pub async fn connect(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    consumed: Option<usize>,
    api: &WsApiPlan,
) -> Flow {
    let Some(route) = x.route else {
        return refuse(gw, conn, head, x, consumed, 500, "Internal Server Error").await;
    };
    let (key, protocols, user_agent) = {
        let Some(parts) = conn.parts(consumed) else {
            return refuse(gw, conn, head, x, consumed, 500, "Internal Server Error").await;
        };
        match ws::check_handshake(parts.buf, head) {
            Ok(h) => (
                h.key.to_vec(),
                h.protocols.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
                header(parts.buf, head, b"user-agent")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            ),
            Err(e) => {
                if e.version {
                    parts
                        .extra
                        .extend_from_slice(b"sec-websocket-version: 13\r\n");
                }
                count(&api.name, "$connect", |c| &c.client_errors);
                return refuse(gw, conn, head, x, consumed, e.status, e.message).await;
            }
        }
    };
    if gw.connections.draining() {
        return refuse(gw, conn, head, x, consumed, 503, "Service Unavailable").await;
    }
    if !admit(
        &api.name,
        api.limits.new_per_second,
        x.generation.plan.server.shards,
    ) {
        count(&api.name, "$connect", |c| &c.client_errors);
        return refuse(gw, conn, head, x, consumed, 429, "Too Many Requests").await;
    }
    let request_id = String::from_utf8_lossy(&x.request_id).into_owned();
    let now = SystemTime::now();
    let session = register(gw.id, |id| Session {
        id,
        generation: x.generation.clone(),
        route,
        connected_at: now,
        last_active: Cell::new(now),
        last_io: Cell::new(Instant::now()),
        source_ip: x.peer.ip(),
        user_agent,
        auth_headers: x.state.upstream_headers.clone(),
        outbox: RefCell::default(),
        queued: Cell::new(0),
        close: Cell::new(None),
        pending: RefCell::default(),
        worker: Cell::new(false),
        messages: Cell::new(0),
        open: Cell::new(true),
        wake: Signal::default(),
        room: Signal::default(),
    });
    // === $connect's integration ===
    let mut protocol = None;
    if let Some(r) = &api.connect {
        match call(&session, r, plan::CONNECT, None, None, &request_id, b"").await {
            Called::Answer(status, _, sub) if (200..300).contains(&status) => protocol = sub,
            Called::Answer(status, _, _) => {
                unregister(&session);
                x.outcome.upstream_status = Some(status);
                let status = if (400..=599).contains(&status) {
                    status
                } else {
                    502
                };
                let message = crate::http::reason_phrase(status);
                return refuse(gw, conn, head, x, consumed, status, message).await;
            }
            Called::Failed(status, message) => {
                unregister(&session);
                return refuse(gw, conn, head, x, consumed, status, message).await;
            }
        }
    }
    if let Some(p) = &protocol {
        if !protocols.iter().any(|o| o == p) {
            unregister(&session);
            crate::log_request!(
                "warn",
                x.request_id,
                "api {}: $connect's integration chose subprotocol {:?}, which the client did not offer",
                api.name,
                String::from_utf8_lossy(p)
            );
            return refuse(gw, conn, head, x, consumed, 502, "Bad Gateway").await;
        }
    }
    // === 101 ===
    if consumed.is_none() {
        conn.consume(head.len);
    }
    let mut out = std::mem::take(&mut conn.wbuf);
    out.clear();
    ws::push_switching_head(&mut out, &key, protocol.as_deref());
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(&x.request_id);
    out.extend_from_slice(b"\r\n\r\n");
    let sent = conn.stream.send(&out).await;
    x.outcome.status = 101;
    if sent.is_ok() {
        x.outcome.bytes_out += out.len() as u64;
    }
    out.clear();
    conn.wbuf = out;
    if sent.is_err() {
        unregister(&session);
        return Flow::Close;
    }
    count(&api.name, "$connect", |c| &c.connects);
    let connections = gw.connections.clone();
    let log = gw.access.log.clone();
    conn.handover = Some(Box::new(move |up: Upgraded| {
        glommio::spawn_local(crate::http::conn::guarded(
            "a WebSocket connection",
            run(up, session, connections, log),
        ))
        .detach();
    }));
    Flow::Handover
}

/// A refused handshake: the status and JSON message; no connection exists.
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

// === impl integration calls ===

enum Called {
    /// The integration's status, body and chosen subprotocol.
    Answer(u16, Vec<u8>, Option<Vec<u8>>),
    /// No answer: the status a handshake is refused with, and why.
    Failed(u16, &'static str),
}

/// Calls a route's integration with an event.
async fn call(
    s: &Session,
    route: &WsRoute,
    event: &str,
    message_id: Option<u64>,
    close_code: Option<u16>,
    request_id: &str,
    body: &[u8],
) -> Called {
    let (upstream, target, timeout) = match &route.integration {
        WsIntegration::Mock { status, body } => return Called::Answer(*status, body.clone(), None),
        WsIntegration::Http {
            upstream,
            target,
            timeout,
        } => (*upstream, target, *timeout),
    };
    let g = &s.generation;
    let (Some(uplan), Some(state)) = (g.plan.upstreams.get(upstream), g.upstreams.get(upstream))
    else {
        return Called::Failed(500, "Internal Server Error");
    };
    let mut headers = Vec::with_capacity(256 + s.auth_headers.len());
    let mut line = |name: &str, value: &str| {
        headers.extend_from_slice(name.as_bytes());
        headers.extend_from_slice(b": ");
        headers.extend_from_slice(value.as_bytes());
        headers.extend_from_slice(b"\r\n");
    };
    line("x-coregate-connection-id", &s.id);
    line("x-coregate-route-key", &route.key);
    line("x-coregate-event-type", event);
    line("x-coregate-source-ip", &s.source_ip.to_string());
    if let Some(m) = message_id {
        line("x-coregate-message-id", &m.to_string());
    }
    if let Some(c) = close_code {
        line("x-coregate-close-code", &c.to_string());
    }
    headers.extend_from_slice(&s.auth_headers);
    let max_answer = s.api().map_or(0, |a| a.limits.max_message);
    let req = client::Request {
        target,
        body,
        request_id: request_id.as_bytes(),
        timeout,
        max_answer,
        headers: &headers,
    };
    let api = s.api().map_or("", |a| a.name.as_str());
    let c = counters(api, &route.key);
    let started = Instant::now();
    let called = client::call(uplan, state, &req).await;
    match called {
        Ok(a) => {
            c.integration
                .observe_us(crate::observe::hist::micros(started.elapsed()));
            if !(200..300).contains(&a.status) {
                crate::observe::bump(&c.integration_errors, 1);
            }
            Called::Answer(a.status, a.body, a.subprotocol)
        }
        Err(e) => {
            crate::observe::bump(&c.execution_errors, 1);
            crate::log!("warn", "websocket {} {event} ({}): {e}", s.id, route.key);
            match e.failure {
                client::Failure::Timeout => Called::Failed(504, "Gateway Timeout"),
                _ => Called::Failed(502, "Bad Gateway"),
            }
        }
    }
}

/// Handles the client's messages in order until none wait (its spawner
/// then clears `worker`). The next
/// message's integration is called only when the outbox has room for an
/// answer as large as a message may be: a client that stops reading
/// stops its own messages too (they wait in `pending`, then in the socket).
async fn work(s: Rc<Session>) {
    loop {
        while s.open.get()
            && s.api().is_some_and(|a| {
                s.queued.get().saturating_add(a.limits.max_message) > a.limits.send_buffer
            })
        {
            s.room.wait().await;
        }
        let next = s.pending.borrow_mut().pop_front();
        let Some((binary, data)) = next else {
            break;
        };
        // Reading may go on: there is room again.
        s.wake.notify();
        let Some(api) = s.api() else {
            break;
        };
        let n = s.messages.get() + 1;
        s.messages.set(n);
        let request_id = format!("{}-{n}", s.id);
        let key = if binary {
            None
        } else {
            api.selection.route_key(&data)
        };
        let Some(route) = api.route_for(key.as_deref()) else {
            count(&api.name, "$default", |c| &c.messages);
            count(&api.name, "$default", |c| &c.client_errors);
            s.queue_error("Forbidden", &request_id);
            continue;
        };
        count(&api.name, &route.key, |c| &c.messages);
        match call(&s, route, plan::MESSAGE, Some(n), None, &request_id, &data).await {
            Called::Answer(status, body, _) if (200..300).contains(&status) => {
                if route.route_response && !body.is_empty() && s.open.get() {
                    s.queue_message(&body);
                }
            }
            Called::Answer(..) | Called::Failed(..) => {
                if s.open.get() {
                    s.queue_error("Internal server error", &request_id);
                }
            }
        }
    }
}

// === impl the session's task ===

/// How a session ended.
struct Ended {
    /// The close code the connection ended with (1006: no close frame).
    code: u16,
    /// A close frame to send (the gateway closes, or echoes the client's).
    send: Option<(u16, &'static str)>,
    /// The client already sent its close frame (or is gone).
    peer_done: bool,
}

impl Ended {
    fn by_gateway(code: u16, reason: &'static str) -> Ended {
        Ended {
            code,
            send: Some((code, reason)),
            peer_done: false,
        }
    }
}

async fn run(
    up: Upgraded,
    s: Rc<Session>,
    connections: Rc<Connections>,
    log: Rc<crate::accesslog::shard::ShardLog>,
) {
    let Upgraded {
        mut stream,
        buffered,
        guard,
        ..
    } = up;
    let Some(api) = s.api() else {
        unregister(&s);
        return;
    };
    let limits = api.limits.clone();
    let started = Instant::now();
    let lifetime_end = started + limits.max_lifetime;
    let mut bytes_out = 0u64;
    let mut asm = Assembler::new(limits.max_message, limits.allow_binary);
    let mut filled = buffered.len();
    let mut rbuf = buffered;
    rbuf.resize(filled.max(READ_BUF), 0);
    let mut pos = 0;
    let ended: Ended = 'session: loop {
        // === the frames buffered ===
        loop {
            if s.pending.borrow().len() >= MAX_PENDING {
                // The rest stays in the buffer until a message's
                // integration is done.
                break;
            }
            let h = match ws::parse_header(&rbuf[pos..filled], limits.max_frame) {
                Err(v) => {
                    count(&api.name, FRAMES, |c| &c.client_errors);
                    break 'session Ended::by_gateway(v.code, v.reason);
                }
                Ok(None) => break,
                Ok(Some(h)) => h,
            };
            let end = pos + h.len + h.payload;
            if end > filled {
                // Room for the whole frame, from the buffer's start.
                if pos > 0 {
                    rbuf.copy_within(pos..filled, 0);
                    filled -= pos;
                    pos = 0;
                }
                let need = h.len + h.payload;
                if rbuf.len() < need {
                    rbuf.resize(need, 0);
                }
                break;
            }
            let start = pos + h.len;
            ws::unmask(&mut rbuf[start..end], h.mask);
            let ev = asm.push(&h, &rbuf[start..end]);
            pos = end;
            match ev {
                Err(v) => {
                    count(&api.name, FRAMES, |c| &c.client_errors);
                    break 'session Ended::by_gateway(v.code, v.reason);
                }
                // Data still, for the idle timeout: a fragment of a
                // message, or an unsolicited pong (a heartbeat).
                Ok(Event::Partial) | Ok(Event::Pong) => s.last_io.set(Instant::now()),
                Ok(Event::Ping(p)) => {
                    let mut f = Vec::with_capacity(p.len() + 2);
                    ws::encode_frame(&mut f, ws::OP_PONG, &p);
                    s.queue(f);
                }
                Ok(Event::Close { code: c }) => {
                    let echo = if c == code::NO_STATUS {
                        None
                    } else {
                        Some((c, ""))
                    };
                    break 'session Ended {
                        code: c,
                        send: echo.or(Some((code::NORMAL, ""))),
                        peer_done: true,
                    };
                }
                Ok(Event::Message { binary, data }) => {
                    s.touch();
                    s.pending.borrow_mut().push_back((binary, data));
                    if !s.worker.replace(true) {
                        let s = s.clone();
                        glommio::spawn_local(async move {
                            let what = "a WebSocket connection's message worker";
                            crate::http::conn::guarded(what, work(s.clone())).await;
                            // Even after a panic: the session waits for
                            // its worker before $disconnect.
                            s.worker.set(false);
                            s.wake.notify();
                        })
                        .detach();
                    }
                }
            }
        }
        if pos == filled {
            pos = 0;
            filled = 0;
            if rbuf.len() > READ_BUF {
                rbuf.truncate(READ_BUF);
                rbuf.shrink_to_fit();
            }
        } else if filled == rbuf.len() && pos > 0 {
            rbuf.copy_within(pos..filled, 0);
            filled -= pos;
            pos = 0;
        }
        // === what waits to be sent ===
        while let Some(frame) = s.pop() {
            if stream.send(&frame).await.is_err() {
                break 'session Ended {
                    code: code::ABNORMAL,
                    send: None,
                    peer_done: true,
                };
            }
            bytes_out += frame.len() as u64;
            s.touch();
        }
        if let Some(c) = s.close.take() {
            break 'session Ended::by_gateway(c, "");
        }
        // === wait ===
        let now = Instant::now();
        if connections.draining() {
            break 'session Ended::by_gateway(code::GOING_AWAY, "server shutting down");
        }
        if now >= lifetime_end {
            break 'session Ended::by_gateway(code::GOING_AWAY, "connection lifetime reached");
        }
        let idle_end = s.last_io.get() + limits.idle_timeout;
        if now >= idle_end {
            break 'session Ended::by_gateway(code::GOING_AWAY, "idle timeout");
        }
        let wait = idle_end.min(lifetime_end) - now;
        if s.pending.borrow().len() >= MAX_PENDING {
            // Read no more until a message's integration is done.
            let timer = async {
                glommio::timer::sleep(wait).await;
            };
            futures_lite::future::or(s.wake.wait(), timer).await;
            continue;
        }
        stream.set_read_timeout(Some(wait));
        guard.set_idle(true);
        let read = {
            let dst = &mut rbuf[filled..];
            let r = async { Some(futures_lite::AsyncReadExt::read(&mut stream, dst).await) };
            let w = async {
                s.wake.wait().await;
                None
            };
            futures_lite::future::or(r, w).await
        };
        guard.set_idle(false);
        match read {
            None => {}
            Some(Ok(0)) => {
                break 'session Ended {
                    code: code::ABNORMAL,
                    send: None,
                    peer_done: true,
                }
            }
            Some(Ok(n)) => filled += n,
            // A deadline (or the drain's interruption): looked at above.
            Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {}
            Some(Err(_)) => {
                break 'session Ended {
                    code: code::ABNORMAL,
                    send: None,
                    peer_done: true,
                }
            }
        }
    };
    // === close ===
    unregister(&s);
    if let Some((c, reason)) = ended.send {
        let mut f = Vec::with_capacity(8 + reason.len());
        ws::encode_close(&mut f, c, reason);
        let sent = stream.send(&f).await.is_ok();
        if sent {
            bytes_out += f.len() as u64;
        }
        if sent && !ended.peer_done {
            // Wait a moment for the client's close frame, dropping what
            // comes before it (from the frames already read on): its
            // header, or the client's end of the stream, ends the wait.
            // After bytes that are not frames, only the end or the
            // deadline does; closing with unread input would reset the
            // connection, and the client could lose the close frame.
            let _ = stream.shutdown_write().await;
            let deadline = Instant::now() + CLOSE_WAIT;
            let mut watch = ws::CloseWatch::default();
            let mut seen = watch.feed(&rbuf[pos..filled]);
            rbuf.resize(READ_BUF.max(rbuf.len()), 0);
            while seen != Ok(true) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                stream.set_read_timeout(Some(left));
                match futures_lite::AsyncReadExt::read(&mut stream, &mut rbuf[..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if seen.is_ok() => seen = watch.feed(&rbuf[..n]),
                    Ok(_) => {}
                }
            }
        }
    }
    stream.close().await;
    drop(guard);
    // The messages read before the close go to their integrations first
    // (their answers are dropped): $disconnect is the connection's last
    // event, and its number follows theirs.
    while s.worker.get() {
        s.wake.wait().await;
    }
    // === $disconnect, best effort ===
    let n = s.messages.get() + 1;
    s.messages.set(n);
    let request_id = format!("{}-{n}", s.id);
    let mut integration_status = None;
    if let Some(r) = api.disconnect.as_ref() {
        // Boxed: the call's state would otherwise sit in every idle
        // connection's task.
        let called = Box::pin(call(
            &s,
            r,
            plan::DISCONNECT,
            None,
            Some(ended.code),
            &request_id,
            b"",
        ))
        .await;
        if let Called::Answer(status, ..) = called {
            integration_status = Some(status);
        }
    }
    // === the access-log line of the connection's end ===
    let error = match ended.send {
        Some((_, reason)) if !ended.peer_done && !reason.is_empty() => Some(reason),
        _ => None,
    };
    super::access::record_ws_end(
        &log,
        &s.generation,
        &super::access::WsEnd {
            request_id: request_id.as_bytes(),
            source_ip: s.source_ip,
            user_agent: (!s.user_agent.is_empty()).then_some(s.user_agent.as_bytes()),
            route: s.route,
            route_key: "$disconnect",
            opened: started,
            code: ended.code,
            bytes_out,
            integration_status,
            error,
            upstream: None,
        },
    );
}

// === impl @connections ===

/// What the admin listener asks of a connection.
#[derive(Debug, Clone)]
pub enum Op {
    /// Send the body as one message.
    Post(Vec<u8>),
    /// Describe the connection.
    Get,
    /// Close it.
    Delete,
}

/// An `@connections` request for the shard that holds the connection.
#[derive(Debug, Clone)]
pub struct Command {
    pub id: String,
    pub op: Op,
    /// Only a connection of this API answers (the API on whose path the
    /// request came); `None` for the admin listener, which may reach any.
    pub api: Option<String>,
    pub reply: crossbeam_channel::Sender<Answer>,
    /// Woken once the answer is in `reply`: the task of another shard
    /// that awaits it ([`manage`]), with that shard's nudge. `None`: a
    /// thread blocks on `reply`.
    pub wake: Option<crate::net::RemoteWaker>,
}

/// The answer: an HTTP status and a JSON body (empty for 200 on POST and
/// 204 on DELETE).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

fn answer(status: u16, message: &str) -> Answer {
    let mut body = Vec::new();
    if !message.is_empty() {
        crate::http::encode::push_json_message(&mut body, message);
    }
    Answer { status, body }
}

/// Runs an `@connections` command on this shard and sends the answer.
pub fn command(cmd: Command) {
    let a = run_command(&cmd.id, cmd.op, cmd.api.as_deref());
    let _ = cmd.reply.send(a);
    if let Some(w) = cmd.wake {
        w.wake();
    }
}

fn run_command(id: &str, op: Op, only_api: Option<&str>) -> Answer {
    let Some(s) = lookup(id).filter(|s| s.open.get()) else {
        return answer(410, "Gone");
    };
    let Some(api) = s.api() else {
        return answer(410, "Gone");
    };
    if only_api.is_some_and(|a| a != api.name) {
        return answer(410, "Gone");
    }
    match op {
        Op::Post(data) => {
            if data.len() > api.limits.max_message {
                return answer(413, "Payload Too Large");
            }
            if s.queued.get() + data.len() > api.limits.send_buffer {
                return answer(429, "Limit Exceeded: the client's send buffer is full");
            }
            s.queue_message(&data);
            count(&api.name, PUSHED, |c| &c.messages);
            answer(200, "")
        }
        Op::Get => {
            let body = serde_json::json!({
                "connectedAt": iso8601(s.connected_at),
                "identity": {
                    "sourceIp": s.source_ip.to_string(),
                    "userAgent": s.user_agent,
                },
                "lastActiveAt": iso8601(s.last_active.get()),
            })
            .to_string();
            Answer {
                status: 200,
                body: body.into_bytes(),
            }
        }
        Op::Delete => {
            s.close.set(Some(code::NORMAL));
            s.wake.notify();
            answer(204, "")
        }
    }
}

// === impl cross-shard @connections ===

/// Wakes a shard's control loop from another thread, so that a message
/// put in its inbox is taken at once: the loop has no timer and waits for
/// this ring.
/// The loop leaves its task's waker here before it waits ([`Bell::arm`]);
/// a sender takes it and wakes it ([`Bell::ring`]), nudging the shard out
/// of an `epoll_wait` sleep. No lock: a one-slot channel of wakers.
#[derive(Clone)]
pub struct Bell {
    tx: crossbeam_channel::Sender<crate::net::RemoteWaker>,
    rx: crossbeam_channel::Receiver<crate::net::RemoteWaker>,
}

impl Default for Bell {
    fn default() -> Bell {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Bell { tx, rx }
    }
}

impl Bell {
    /// The control loop, before it waits: the next ring wakes `w`. A
    /// waker already left (the loop's own, from an earlier wait) stays.
    pub fn arm(&self, w: &Waker) {
        if self.tx.is_empty() {
            let _ = self.tx.try_send(crate::net::RemoteWaker::here(w));
        }
    }

    /// Wakes the loop if it left its waker (else it is awake, and looks at
    /// its inbox before it waits again).
    pub fn ring(&self) {
        if let Ok(w) = self.rx.try_recv() {
            w.wake();
        }
    }
}

/// One shard as the others reach it: a command into its control inbox,
/// and its bell.
pub struct Peer {
    /// Puts a command in the shard's control inbox; false when the shard
    /// is gone.
    pub send: Box<dyn Fn(Command) -> bool + Send>,
    pub bell: Bell,
}

thread_local! {
    /// Every shard, by id, as this shard reaches it ([`set_peers`]).
    static PEERS: std::cell::OnceCell<Vec<Peer>> = const { std::cell::OnceCell::new() };
}

/// Gives this shard (the calling thread) its way to every shard's inbox;
/// once, when the shard starts.
pub fn set_peers(peers: Vec<Peer>) {
    PEERS.with(|p| {
        let _ = p.set(peers);
    });
}

/// How long a request waits for the shard that holds the connection; it
/// is woken at once ([`Bell`]), so only a stuck or stopping shard takes
/// this long.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `op` for connection `id` of the API `api` and returns the answer,
/// for a request on shard `here`: at once when this shard holds the
/// connection; else the command goes to the owning shard's inbox and this
/// task waits for the answer, which wakes it, while the shard serves its
/// other connections.
pub async fn manage(here: usize, id: &str, op: Op, api: &str) -> Answer {
    let Some((shard, _, _)) = parse_id(id) else {
        return answer(410, "Gone");
    };
    if shard == here {
        return run_command(id, op, Some(api));
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut first = Some(Command {
        id: id.to_string(),
        op,
        api: Some(api.to_string()),
        reply: tx,
        wake: None,
    });
    let asked = std::future::poll_fn(move |cx| {
        if let Some(mut cmd) = first.take() {
            cmd.wake = Some(crate::net::RemoteWaker::here(cx.waker()));
            let sent = PEERS.with(|p| match p.get().and_then(|p| p.get(shard)) {
                Some(peer) if (peer.send)(cmd) => {
                    peer.bell.ring();
                    true
                }
                _ => false,
            });
            if !sent {
                // No such shard (an id no shard of this process made), or
                // it stopped.
                return Poll::Ready(answer(410, "Gone"));
            }
        }
        match rx.try_recv() {
            Ok(a) => Poll::Ready(a),
            Err(crossbeam_channel::TryRecvError::Empty) => Poll::Pending,
            // The shard dropped the command unanswered (it is stopping).
            Err(crossbeam_channel::TryRecvError::Disconnected) => Poll::Ready(answer(
                503,
                "The shard holding the connection did not answer",
            )),
        }
    });
    let late = async {
        glommio::timer::sleep(REMOTE_TIMEOUT).await;
        answer(503, "The shard holding the connection did not answer")
    };
    futures_lite::future::or(asked, late).await
}

/// `2026-12-06T07:01:02.345Z`.
fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = crate::log::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    //! Unwraps are fine: the inputs are literals of the test.
    use super::*;

    #[test]
    fn ids_name_their_shard_slot_and_nonce() {
        assert_eq!(parse_id("0003000000100000abcd"), Some((3, 0x10, 0xabcd)));
        assert_eq!(parse_id("0003"), None);
        assert_eq!(parse_id("zz03000000100000abcd"), None);
    }

    #[test]
    fn iso8601_is_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_004_462_345);
        assert_eq!(iso8601(t), "2025-12-06T07:01:02.345Z");
    }
}
