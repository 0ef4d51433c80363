//! The phase driver: the order in which a request is handled, in one
//! function ([`drive`]):
//!
//! 1. open the exchange on the current generation (request id, clock);
//! 2. route: host, base path, method and path pick a route, or answer
//!    404/405/400 after the API's IP rules and CORS
//!    ([`unrouted`]);
//! 3. the route's phases, in their compiled order ([`crate::policy::Phase`]),
//!    with a declared body over `max_body_bytes` answered 413 after the IP
//!    rules and before the others:
//!    each continues, answers instead of the integration, or names
//!    something to wait for (a quota lease, a request authorizer's answer,
//!    the body a signature covers), which the driver awaits before going
//!    on;
//! 4. the integration: a mock answer, the proxy (through the cache when
//!    the route has a cache rule), a WebSocket API's handshake, or its
//!    `@connections`;
//! 5. the exit ([`super::exit::finish`]) with the finished exchange.

use super::exchange::{CacheStatus, Exchange};
use super::reply::{self, Body};
use super::signed_body::{self, BodyFailure};
use super::{access, authorize, cache, exit, Gateway, Generation};
use crate::http::conn::{BodyError, Conn, Flow};
use crate::http::method::{AllowSet, Method};
use crate::http::parse::{Framing, RequestHead};
use crate::http::respond::{Reply, ReplyBody};
use crate::integration::http_proxy::{
    self, ClientTls, Forward, Proxied, ProxyPlan, Report, Upstream,
};
use crate::integration::mapping;
use crate::integration::mock::MockPlan;
use crate::plan::Integration;
use crate::policy::{self, Decision, Refusal, RequestView};
use crate::route::Lookup;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::rc::Rc;
use std::time::Instant;

/// Handles one request whose head is at the start of `conn.unread()`.
pub async fn handle(gw: &Gateway, conn: &mut Conn, head: &RequestHead) -> Flow {
    // The connection loop read the clock as the head came in.
    let now = conn.head_at;
    let mut x = Exchange::new(
        gw.generation(),
        conn.peer,
        head.method,
        head.minor_version,
        now,
    );
    x.outcome.bytes_in = head.len as u64;
    match head.request_id {
        Some(s) => x.request_id.extend_from_slice(s.get(conn.unread())),
        None => x
            .request_id
            .extend_from_slice(&gw.ids.borrow_mut().next_id()),
    }
    if !conn.ebuf.is_empty() {
        conn.ebuf.clear();
    }
    if x.generation.plan.access_log.any {
        access::capture(gw, &mut x, conn.unread(), head);
    }
    let flow = drive(gw, conn, head, &mut x, now).await;
    conn.clock = exit::finish(gw, &mut x);
    if x.route.is_some_and(|r| {
        x.generation
            .plan
            .access_log
            .routes
            .get(r)
            .is_some_and(|l| l.debug)
    }) {
        let o = &x.outcome;
        crate::log_request!(
            "debug",
            x.request_id,
            "finished: status {}, upstream status {:?}, cache {:?}, error {:?}, {} byte(s) in, {} out",
            o.status,
            o.upstream_status,
            o.cache,
            o.error,
            o.bytes_in,
            o.bytes_out
        );
    }
    access::record(gw, &mut x);
    flow
}

/// Answers what the connection loop refuses before a request exists (a
/// malformed head, 408, 431, a shard over its connection limit); the
/// connection closes after it.
pub async fn refuse(gw: &Gateway, conn: &mut Conn, status: u16, message: &'static str) {
    let mut x = Exchange::new(gw.generation(), conn.peer, Method::Get, 1, Instant::now());
    x.request_id
        .extend_from_slice(&gw.ids.borrow_mut().next_id());
    conn.ebuf.clear();
    reply::close_with(gw, conn, &mut x, status, message).await;
    exit::finish(gw, &mut x);
    access::record(gw, &mut x);
}

/// A route parameter: its name (borrowed from the route table) and where
/// its value is in the request's bytes (from the head's first byte).
type ParamSpans<'t> = SmallVec<[(&'t str, (usize, usize)); 4]>;

/// Why routing found no route for a request.
struct Unrouted {
    status: u16,
    message: &'static str,
    allow: Option<AllowSet>,
}

/// Routes the request: its route's index, with the route's parameters
/// written to `spans` (filled in place: the spans are too big to move
/// around on every request).
fn route<'t>(
    generation: &'t Generation,
    buf: &[u8],
    head: &RequestHead,
    spans: &mut ParamSpans<'t>,
) -> Result<usize, Unrouted> {
    let Ok(path) = std::str::from_utf8(head.path(buf)) else {
        return Err(Unrouted {
            status: 400,
            message: "Invalid request target",
            allow: None,
        });
    };
    let plan = &generation.plan;
    // A stage's canary has a table of its own (plan/stages.rs).
    let table = if plan.stages.canaries.is_empty() {
        &plan.table
    } else {
        super::stage::table(plan, buf, head, path)
    };
    match table.lookup(head.host.map(|h| h.get(buf)), head.method, path) {
        Lookup::NotFound => Err(Unrouted {
            status: 404,
            message: "Not Found",
            allow: None,
        }),
        Lookup::MethodNotAllowed { allow } => Err(Unrouted {
            status: 405,
            message: "Method Not Allowed",
            allow: Some(allow),
        }),
        Lookup::Found { route, params } => {
            // The values are slices of `buf`: kept as positions, so the
            // connection's buffer is free again until the proxy needs them.
            if !params.is_empty() {
                let base = buf.as_ptr() as usize;
                spans.extend(
                    params
                        .iter()
                        .map(|(k, v)| (k, (v.as_ptr() as usize - base, v.len()))),
                );
            }
            Ok(route as usize)
        }
    }
}

/// Steps 2 to 4 of the module's list.
async fn drive(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    now: Instant,
) -> Flow {
    let generation = x.generation.clone();
    let plan = &generation.plan;
    // === route ===
    let mut params = ParamSpans::new();
    let route_id = match route(&generation, conn.unread(), head, &mut params) {
        Ok(r) => r,
        Err(Unrouted {
            status,
            message,
            allow,
        }) => return unrouted(gw, conn, head, x, now, status, message, allow).await,
    };
    x.route = Some(route_id);
    let route = &plan.routes[route_id];
    if let Some(stage) = &route.stage {
        // Every response of a stage's route names its deployment.
        conn.ebuf.extend_from_slice(&stage.header);
    }
    let debug = plan
        .access_log
        .routes
        .get(route_id)
        .is_some_and(|l| l.debug);
    if debug {
        crate::log_request!(
            "debug",
            x.request_id,
            "api {}: routed to {:?}; phases {:?}",
            route.api,
            route.key,
            route.policies.phases
        );
    }
    // A declared body over the limit is 413 before any phase but the IP
    // rules: a client they refuse gets their 403 whatever it declares, as
    // on a path no route takes, so it cannot tell which paths exist.
    let too_large = matches!(head.framing, Framing::Length(n) if n > plan.limits.max_body_bytes);
    // === phases ===
    let phases = &route.policies.phases;
    // The head's bytes are consumed once a phase reads the body.
    let mut consumed = None;
    let mut waited_quota = false;
    let mut i = 0;
    loop {
        let phase = phases.get(i).copied();
        if too_large && phase != Some(policy::Phase::IpRules) {
            let r = Refusal::json(413, "Request Entity Too Large");
            return refuse_request(gw, conn, head, x, consumed, r).await;
        }
        let Some(phase) = phase else {
            break;
        };
        let Some(parts) = conn.parts(consumed) else {
            return internal_error(gw, conn, head, x, consumed).await;
        };
        let view = RequestView {
            buf: parts.buf,
            head,
            peer: x.peer,
            route: Some(route_id),
            now,
            client_cert_subject: parts.client_cert_subject,
        };
        let decision = policy::run_phase(
            phase,
            &route.policies,
            &plan.policies,
            &x.generation.policies,
            &view,
            parts.extra,
            &mut x.state,
        );
        if debug {
            debug_decision(x, phase, &decision);
        }
        match decision {
            Decision::Continue => i += 1,
            Decision::Respond(r) => {
                x.outcome.refused_by = Some(phase);
                return refuse_request(gw, conn, head, x, consumed, r).await;
            }
            // Once: wait for this shard's lease of the key's quota, then
            // run the phase again.
            Decision::WaitQuota(key) if !waited_quota => {
                waited_quota = true;
                Box::pin(x.generation.policies.usage.wait(key)).await;
            }
            Decision::WaitQuota(_) => {
                x.outcome.refused_by = Some(phase);
                let r = Refusal::json(429, "Limit Exceeded");
                return refuse_request(gw, conn, head, x, consumed, r).await;
            }
            // Boxed like the proxy: the call's state stays out of every
            // connection's task.
            Decision::Authorize(call) => {
                match Box::pin(authorize::call(call, conn, head, x)).await {
                    Decision::Continue => i += 1,
                    Decision::Respond(r) => {
                        x.outcome.refused_by = Some(phase);
                        return refuse_request(gw, conn, head, x, consumed, r).await;
                    }
                    // An answer is allow or deny; anything else is refused,
                    // never allowed.
                    _ => {
                        x.outcome.refused_by = Some(phase);
                        return internal_error(gw, conn, head, x, consumed).await;
                    }
                }
            }
            Decision::VerifyBody(check) => {
                if consumed.is_none() {
                    conn.consume(head.len);
                    consumed = Some(head.len);
                }
                match signed_body::verify(conn, head, &plan.limits, &check).await {
                    Ok(()) => {
                        x.state.principal = Some(check.principal.clone());
                        i += 1;
                    }
                    Err(BodyFailure::Refused(f)) => {
                        x.outcome.refused_by = Some(phase);
                        return refuse_request(gw, conn, head, x, consumed, f.refusal()).await;
                    }
                    Err(BodyFailure::Body(e)) => return reply::body_error(gw, conn, x, e).await,
                }
            }
        }
    }
    // === integration ===
    match &route.integration {
        Integration::Mock(mock) => {
            if consumed.is_none() {
                conn.consume(head.len);
            }
            respond_mock(gw, conn, head, x, mock).await
        }
        // A WebSocket upgrade is relayed to a backend that speaks it.
        Integration::Proxy(p)
            if head.upgrade
                && conn
                    .parts(consumed)
                    .is_some_and(|parts| super::ws_proxy::wants_websocket(parts.buf, head)) =>
        {
            Box::pin(super::ws_proxy::proxy(
                gw,
                conn,
                head,
                x,
                consumed,
                p,
                &params[..],
            ))
            .await
        }
        Integration::Proxy(p) => {
            let routed = RoutedProxy {
                generation: &generation,
                route: route_id,
                proxy: p,
                params: &params[..],
            };
            proxy(gw, conn, head, x, consumed, routed).await
        }
        // Boxed like the proxy: the handshake's state stays out of every
        // connection's task.
        Integration::WebSocket(ws) => {
            Box::pin(super::websocket::connect(gw, conn, head, x, consumed, ws)).await
        }
        Integration::WsConnections(c) => {
            Box::pin(super::ws_connections::serve(gw, conn, head, x, consumed, c)).await
        }
    }
}

/// The debug line of one phase's decision (`debug = true` on the API).
fn debug_decision(x: &Exchange, phase: policy::Phase, decision: &Decision) {
    let what: Cow<'_, str> = match decision {
        Decision::Continue => Cow::Borrowed("continue"),
        Decision::Respond(r) => Cow::Owned(format!("answer {} {:?}", r.status, r.message)),
        Decision::WaitQuota(_) => Cow::Borrowed("wait for this shard's lease of the key's quota"),
        Decision::Authorize(_) => Cow::Borrowed("call the request authorizer"),
        Decision::VerifyBody(_) => Cow::Borrowed("read and hash the body the signature covers"),
    };
    crate::log_request!("debug", x.request_id, "phase {phase:?}: {what}");
}

/// For a request no route takes: the API's IP rules still refuse it (so a
/// refused client cannot map which paths exist); CORS still answers a
/// preflight (API Gateway does so whether or not an OPTIONS route exists) and
/// adds its headers to the error response, so a browser can read it.
#[allow(clippy::too_many_arguments)]
async fn unrouted(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    now: Instant,
    status: u16,
    message: &'static str,
    allow: Option<AllowSet>,
) -> Flow {
    let generation = x.generation.clone();
    let plan = &generation.plan;
    if plan.access_log.any {
        // The access log of the API whose base path the request is under.
        let buf = conn.unread();
        x.access.api = std::str::from_utf8(head.path(buf))
            .ok()
            .and_then(|path| plan.table.api_for(head.host.map(|h| h.get(buf)), path));
    }
    if plan
        .apis
        .iter()
        .any(|a| a.cors.is_some() || a.ip_rules.is_some())
    {
        if let Some(parts) = conn.parts(None) {
            let api = std::str::from_utf8(head.path(parts.buf))
                .ok()
                .and_then(|path| {
                    plan.table
                        .api_for(head.host.map(|h| h.get(parts.buf)), path)
                })
                .and_then(|a| plan.apis.get(a));
            if let Some(api) = api {
                if api
                    .ip_rules
                    .as_ref()
                    .is_some_and(|r| !r.allows(x.peer.ip()))
                {
                    let r = Refusal::json(403, "Forbidden");
                    x.outcome.refused_by = Some(policy::Phase::IpRules);
                    return refuse_request(gw, conn, head, x, None, r).await;
                }
                if let Some(cors) = &api.cors {
                    let view = RequestView {
                        buf: parts.buf,
                        head,
                        peer: x.peer,
                        route: None,
                        now,
                        client_cert_subject: parts.client_cert_subject,
                    };
                    if let Decision::Respond(r) = cors.preflight(&view) {
                        x.outcome.refused_by = Some(policy::Phase::Cors);
                        return refuse_request(gw, conn, head, x, None, r).await;
                    }
                    cors.response_headers(&view, parts.extra);
                }
            }
        }
    }
    conn.consume(head.len);
    reply::error(gw, conn, head, x, status, Cow::Borrowed(message), allow).await
}

/// Answers with a policy's response instead of the integration's. As with
/// gateway errors, the connection stays open only if no body is left
/// unread.
async fn refuse_request(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    consumed: Option<usize>,
    r: Refusal,
) -> Flow {
    if consumed.is_none() {
        conn.consume(head.len);
    }
    conn.ebuf.extend_from_slice(&r.headers);
    let Some(body) = r.body else {
        return reply::error(gw, conn, head, x, r.status, r.message, None).await;
    };
    let flow = reply::send(
        gw,
        conn,
        head,
        x,
        Body::Refuse,
        Reply {
            status: r.status,
            body: ReplyBody::Bytes(&body),
            allow: None,
        },
    )
    .await;
    x.outcome.error = Some(r.message);
    flow
}

async fn internal_error(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    consumed: Option<usize>,
) -> Flow {
    let r = Refusal::json(500, "Internal Server Error");
    refuse_request(gw, conn, head, x, consumed, r).await
}

async fn respond_mock(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    mock: &MockPlan,
) -> Flow {
    reply::send(
        gw,
        conn,
        head,
        x,
        Body::Drain,
        Reply {
            status: mock.status,
            body: ReplyBody::Prerendered {
                head: &mock.head,
                body: &mock.body,
            },
            allow: None,
        },
    )
    .await
}

/// A routed request's proxy integration.
struct RoutedProxy<'a> {
    generation: &'a Rc<Generation>,
    route: usize,
    proxy: &'a ProxyPlan,
    params: &'a [(&'a str, (usize, usize))],
}

/// The proxy integration: the target is picked now that every phase has
/// let the request through, the upstream request head is written, and the
/// request goes to the upstream, through the cache when the route has a
/// cache rule.
async fn proxy(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    mut consumed: Option<usize>,
    routed: RoutedProxy<'_>,
) -> Flow {
    let plan = &routed.generation.plan;
    let p = routed.proxy;
    let (Some(uplan), Some(state)) = (
        plan.upstreams.get(p.upstream),
        routed.generation.upstreams.get(p.upstream),
    ) else {
        return internal_error(gw, conn, head, x, consumed).await;
    };
    // The clock read when the head arrived is recent enough for cool-downs.
    let target = state.pick(uplan, x.outcome.timings.received);
    x.outcome.upstream = Some((p.upstream, target));
    let route = &plan.routes[routed.route];
    // Parameter mapping reads the JSON body when a value names it.
    let request_map = p.mapping.as_deref().and_then(|m| m.request.as_ref());
    let mut json = None;
    if request_map.is_some_and(|m| m.needs_body) {
        if consumed.is_none() {
            conn.consume(head.len);
            consumed = Some(head.len);
        }
        match conn
            .buffer_body(
                head.framing,
                mapping::MAX_BODY_BYTES,
                &plan.limits,
                head.expect_continue,
            )
            .await
        {
            Ok(len) => {
                json = mapping::parse_body(
                    &conn.unread()[..len],
                    head.framing == Framing::Chunked,
                    plan.limits.max_header_bytes,
                )
            }
            // Longer than AWS reads: its values are empty.
            Err(BodyError::TooLarge) => {}
            Err(e) => return reply::body_error(gw, conn, x, e).await,
        }
    }
    let map_ctx = p.mapping.is_some().then(|| mapping::Context {
        request_id: &x.request_id,
        source_ip: x.peer.ip(),
        method: head.method,
        minor_version: head.minor_version,
        route_key: &route.key,
        api: &route.api,
        principal: x.state.principal.as_deref(),
        api_key_name: x
            .state
            .api_key
            .and_then(|k| x.generation.policies.api_keys.name(k)),
        stage: match &route.stage {
            Some(tag) => mapping::Stage {
                name: &tag.stage,
                variables: &tag.variables,
            },
            None => mapping::DEFAULT_STAGE,
        },
        claims: &x.state.claims,
    });
    let mut mapped_badly = None;
    {
        let Some(parts) = conn.parts(consumed) else {
            return internal_error(gw, conn, head, x, consumed).await;
        };
        let params: SmallVec<[(&str, &[u8]); 4]> = routed
            .params
            .iter()
            .filter_map(|&(k, (at, len))| Some((k, parts.buf.get(at..at + len)?)))
            .collect();
        http_proxy::write_upstream_head(
            parts.xbuf,
            parts.buf,
            head,
            &params,
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
        if let (Some(m), Some(ctx)) = (request_map, &map_ctx) {
            let inputs = mapping::RequestInputs {
                buf: parts.buf,
                head,
                params: &params,
                json: json.as_ref(),
                ctx,
            };
            mapped_badly = m.apply(parts.xbuf, &inputs).err();
        }
    }
    if let Some(mapping::BadValue(why)) = mapped_badly {
        crate::log_request!(
            "info",
            x.request_id,
            "parameter mapping refused the request: {why}"
        );
        let r = Refusal::json(400, "Bad Request");
        return refuse_request(gw, conn, head, x, consumed, r).await;
    }
    let f = Forward {
        method: head.method,
        framing: head.framing,
        minor_version: head.minor_version,
        keep_alive: head.keep_alive,
        expect_continue: head.expect_continue,
        target,
        request_id: &x.request_id,
        strip_cors: route.policies.cors.is_some(),
        mapping: p
            .mapping
            .as_deref()
            .and_then(|m| m.response.as_ref())
            .zip(map_ctx)
            .map(|(mapping, ctx)| mapping::ResponseMap { mapping, ctx }),
    };
    let up = Upstream {
        plan: uplan,
        state,
        limits: &plan.limits,
        connections: &gw.connections,
        date: &gw.date,
    };
    let mut report = Report::default();
    let proxied = match &route.policies.cache {
        // Boxed for the same reason as `http_proxy::forward`: its state
        // would otherwise sit in every connection's task.
        Some(rule) => {
            let key_name = x
                .state
                .api_key
                .and_then(|k| x.generation.policies.api_keys.name(k))
                .map(str::to_owned);
            if consumed.is_none() {
                // The cache reads the head behind the consumed bytes.
                conn.consume(head.len);
            }
            let mut status = CacheStatus::None;
            let shard_cache = x.generation.policies.cache.clone();
            let answered = Box::pin(cache::proxy_cached(
                &shard_cache,
                conn,
                head,
                rule,
                up,
                f,
                key_name.as_deref(),
                &mut report,
                &mut status,
            ))
            .await;
            x.outcome.cache = status;
            match answered {
                cache::Answered::Proxied(p) => p,
                cache::Answered::Hit(entry) => {
                    x.outcome.upstream = None;
                    return cache::respond_hit(gw, conn, head, x, &entry).await;
                }
            }
        }
        None => {
            if consumed.is_none() {
                conn.consume(head.len);
            }
            http_proxy::forward(conn, up, f, None, &mut report).await
        }
    };
    x.outcome.bytes_in += report.bytes_in;
    x.outcome.upstream_status = report.status;
    x.outcome.timings.upstream_connected = report.connected;
    x.outcome.timings.upstream_first_byte = report.first_byte;
    match proxied {
        Proxied::Forwarded(flow) => {
            x.outcome.status = report.status.unwrap_or(0);
            x.outcome.bytes_out += report.bytes_out;
            flow
        }
        Proxied::Failed {
            status,
            message,
            body_done,
        } => {
            let flow = reply::send(
                gw,
                conn,
                head,
                x,
                Body::Done(body_done),
                Reply {
                    status,
                    body: ReplyBody::Json(message),
                    allow: None,
                },
            )
            .await;
            x.outcome.error = Some(Cow::Borrowed(message));
            // A body not read whole leaves the stream position unknown.
            match flow {
                Flow::Close if !body_done => Flow::Linger,
                f => f,
            }
        }
        Proxied::Body(e) => reply::body_error(gw, conn, x, e).await,
    }
}
