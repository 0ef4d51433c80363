//! The access-log line of a finished exchange (docs/access-logs.md). What a
//! line needs from the request head (method, path, User-Agent) is copied
//! when the head is parsed ([`capture`]), because the connection's buffer is
//! reused by the time the exchange ends; the copy goes into a buffer taken
//! from a per-shard free list, so a shard in steady state allocates none.
//! Nothing is copied when the plan has no access log.

use super::exchange::{CacheStatus, Exchange};
use super::Gateway;
use crate::accesslog::shard::ShardLog;
use crate::accesslog::{Fields, Var};
use crate::http::parse::RequestHead;
use std::cell::RefCell;
use std::time::Instant;

/// Free buffers kept for captures (one per request in flight is needed).
const FREE_KEPT: usize = 1024;
/// A captured head larger than this is not given back to the free list.
const KEEP_CAPACITY: usize = 4096;

/// A shard's access-log state.
pub struct Access {
    /// Shared with WebSocket sessions, which log their connection's end.
    pub log: std::rc::Rc<ShardLog>,
    free: RefCell<Vec<Vec<u8>>>,
}

impl Access {
    pub fn new(shard: usize, sinks: Vec<crate::accesslog::writer::Sink>) -> Access {
        Access {
            log: std::rc::Rc::new(ShardLog::new(shard, sinks)),
            free: RefCell::new(Vec::new()),
        }
    }
}

/// Copies what the plan's log formats need from `head` (bytes of `buf`):
/// the method, the path and the User-Agent, each only if some format
/// names it.
pub fn capture(gw: &Gateway, x: &mut Exchange, buf: &[u8], head: &RequestHead) {
    let wants = x.generation.plan.access_log.captures;
    let c = &mut x.access;
    c.has_head = true;
    if wants == Default::default() {
        return;
    }
    c.text = gw.access.free.borrow_mut().pop().unwrap_or_default();
    if wants.method {
        let method = head.method_span.get(buf);
        let method = &method[..method.len().min(usize::from(u16::MAX))];
        c.text.extend_from_slice(method);
        c.method_len = method.len() as u16;
    }
    if wants.path {
        let path = head.path(buf);
        c.text.extend_from_slice(path);
        c.path_len = path.len() as u32;
    }
    if wants.user_agent {
        if let Some(h) = head
            .headers
            .iter()
            .find(|h| h.name.get(buf).eq_ignore_ascii_case(b"user-agent"))
        {
            c.text.extend_from_slice(h.value.get(buf));
            c.has_agent = true;
        }
    }
}

/// Writes the exchange's line to its access log, if it has one, and gives
/// the captured buffer back.
pub fn record(gw: &Gateway, x: &mut Exchange) {
    let text = std::mem::take(&mut x.access.text);
    write_line(gw, x, &text);
    if text.capacity() > 0 && text.capacity() <= KEEP_CAPACITY {
        let mut free = gw.access.free.borrow_mut();
        if free.len() < FREE_KEPT {
            let mut text = text;
            text.clear();
            free.push(text);
        }
    }
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn write_line(gw: &Gateway, x: &Exchange, text: &[u8]) {
    let generation = &x.generation;
    let plan = &generation.plan;
    let logs = &plan.access_log;
    if !logs.any {
        return;
    }
    let Some(log) = logs
        .logged(x.route, x.access.api)
        .log
        .and_then(|i| logs.logs.get(usize::from(i)))
    else {
        return;
    };
    let c = &x.access;
    let o = &x.outcome;
    let uses = |v| log.format.uses(v);
    let received_ms = if uses(Var::RequestTime) || uses(Var::RequestTimeEpoch) {
        gw.access.log.wall_ms(o.timings.received)
    } else {
        0
    };
    let time = if uses(Var::RequestTime) {
        gw.access.log.clf_time(received_ms / 1000)
    } else {
        [b'-'; 26]
    };
    let (method, rest) = text.split_at(usize::from(c.method_len).min(text.len()));
    let (path, agent) = rest.split_at((c.path_len as usize).min(rest.len()));
    let route = x.route.and_then(|r| plan.routes.get(r));
    let unrouted_api = || c.api.and_then(|a| plan.apis.get(a));
    let api = match route {
        Some(r) => Some(r.api.as_str()),
        None => unrouted_api().map(|a| a.name.as_str()),
    };
    let stage = match route {
        Some(r) => r.stage.as_deref(),
        None => unrouted_api().and_then(|a| a.stage.as_deref()),
    };
    let upstream = o.upstream.and_then(|(u, t)| {
        let u = plan.upstreams.get(u)?;
        Some((u.name.as_str(), u.targets.get(t).map(|t| t.addr)))
    });
    let principal = x.state.principal.as_deref();
    let f = Fields {
        request_id: &x.request_id,
        source_ip: x.peer.ip(),
        user_agent: c.has_agent.then_some(agent),
        request_time: &time,
        request_time_epoch_ms: received_ms,
        method: c.has_head.then_some(method),
        route_key: route.map(|r| r.key.as_str()),
        path: c.has_head.then_some(path),
        status: o.status,
        minor_version: c.has_head.then_some(x.minor_version),
        response_length: o.bytes_out,
        response_latency_ms: uses(Var::ResponseLatency).then(|| {
            ms(o.timings
                .last_byte_sent
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(o.timings.received))
        }),
        integration_latency_ms: match (o.timings.upstream_connected, o.timings.upstream_first_byte)
        {
            (Some(a), Some(b)) if uses(Var::IntegrationLatency) => {
                Some(ms(b.saturating_duration_since(a)))
            }
            _ => None,
        },
        integration_status: o.upstream_status,
        error: o.error.as_deref(),
        principal,
        api_key_name: x
            .state
            .api_key
            .and_then(|k| x.generation.policies.api_keys.name(k)),
        cache: match o.cache {
            CacheStatus::Hit => Some("hit"),
            CacheStatus::Miss => Some("miss"),
            CacheStatus::None => None,
        },
        api,
        upstream: upstream.map(|u| u.0),
        target: upstream.and_then(|u| u.1),
        stage: stage.map(|s| s.stage.as_str()),
        deployment: stage.map(|s| s.deployment.as_str()),
    };
    // The generation's own destinations: a reload that changed them while
    // the request was in flight does not move its line.
    generation
        .log_outs
        .line(log.destination, |buf| log.format.write(&f, buf));
}

/// The end of a WebSocket connection, for its access-log line
/// (docs/websocket.md, "Access logs").
pub struct WsEnd<'a> {
    /// A WebSocket API's: its `$disconnect` event's id; a proxied
    /// WebSocket's: its handshake's.
    pub request_id: &'a [u8],
    pub source_ip: std::net::IpAddr,
    pub user_agent: Option<&'a [u8]>,
    /// The handshake's route (its API's log applies).
    pub route: usize,
    /// `$disconnect`, or a proxied WebSocket's route key.
    pub route_key: &'a str,
    /// When the connection was opened (`101` sent).
    pub opened: Instant,
    /// The close code the connection ended with (1006: no close frame).
    pub code: u16,
    /// Bytes sent to the client over the connection's life.
    pub bytes_out: u64,
    /// `$disconnect`'s integration's status.
    pub integration_status: Option<u16>,
    /// Why the gateway closed it, if it did.
    pub error: Option<&'a str>,
    /// A proxied WebSocket's upstream and target.
    pub upstream: Option<(usize, usize)>,
}

/// Writes the line of a WebSocket connection's end to its API's access
/// log, if it has one: the time the connection ended, the close code as
/// the status, the connection's duration as the latency.
pub fn record_ws_end(log: &ShardLog, generation: &super::Generation, e: &WsEnd<'_>) {
    let plan = &generation.plan;
    let logs = &plan.access_log;
    if !logs.any {
        return;
    }
    let Some(l) = logs
        .logged(Some(e.route), None)
        .log
        .and_then(|i| logs.logs.get(usize::from(i)))
    else {
        return;
    };
    let now = Instant::now();
    let ended_ms = log.wall_ms(now);
    let time = if l.format.uses(Var::RequestTime) {
        log.clf_time(ended_ms / 1000)
    } else {
        [b'-'; 26]
    };
    let route = plan.routes.get(e.route);
    let stage = route.and_then(|r| r.stage.as_ref());
    let upstream = e.upstream.and_then(|(u, t)| {
        let u = plan.upstreams.get(u)?;
        Some((u.name.as_str(), u.targets.get(t).map(|t| t.addr)))
    });
    let f = Fields {
        request_id: e.request_id,
        source_ip: e.source_ip,
        user_agent: e.user_agent,
        request_time: &time,
        request_time_epoch_ms: ended_ms,
        method: None,
        route_key: Some(e.route_key),
        path: None,
        status: e.code,
        minor_version: None,
        response_length: e.bytes_out,
        response_latency_ms: Some(ms(now.saturating_duration_since(e.opened))),
        integration_latency_ms: None,
        integration_status: e.integration_status,
        error: e.error,
        principal: None,
        api_key_name: None,
        cache: None,
        api: route.map(|r| r.api.as_str()),
        upstream: upstream.map(|u| u.0),
        target: upstream.and_then(|u| u.1),
        stage: stage.map(|s| s.stage.as_str()),
        deployment: stage.map(|s| s.deployment.as_str()),
    };
    generation
        .log_outs
        .line(l.destination, |buf| l.format.write(&f, buf));
}
