//! The pipeline: what happens to a parsed request. Today its phases are
//! route → (body limit) → integrate; the authenticate, throttle and cache
//! phases of later issues slot in between routing and integration, each
//! returning a [`Flow`]-like decision.

use crate::http::conn::{write_two, BodyError, Conn};
use crate::http::encode::RequestIds;
use crate::http::encode::{push_status_line, push_u64};
use crate::http::method::Method;
use crate::http::parse::{Framing, RequestHead};
use crate::integration::http_proxy::{self, Forward};
use crate::integration::mock::MockPlan;
use crate::integration::upstream::UpstreamState;
use crate::plan::{Integration, Plan};
use crate::policy::{self, Decision, Refusal, RequestView};
use crate::route::{AllowSet, Lookup};
use crate::runtime::Shard;
use smallvec::SmallVec;
use std::net::SocketAddr;
use std::time::Instant;

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next request.
    KeepAlive,
    /// Close now.
    Close,
    /// Close after reading and dropping what the client still sends, so an
    /// error response is not lost to a reset.
    Linger,
}

/// Where routing sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Mock(usize),
    /// The upstream request head is in the `xbuf` given to [`route_request`].
    Proxy {
        route: usize,
        upstream: usize,
        target: usize,
    },
    Error {
        status: u16,
        message: &'static str,
        allow: Option<AllowSet>,
    },
}

/// The synchronous half of handling a request: picks the request id, routes,
/// and for a proxied route picks the target and writes the upstream request
/// head into `xbuf`. `buf` is the buffer the head was parsed from; `tls` is
/// the client's TLS connection, if any.
#[allow(clippy::too_many_arguments)]
pub fn route_request(
    plan: &Plan,
    upstreams: &[UpstreamState],
    ids: &mut RequestIds,
    buf: &[u8],
    head: &RequestHead,
    peer: SocketAddr,
    xbuf: &mut Vec<u8>,
    request_id: &mut SmallVec<[u8; 64]>,
    tls: Option<http_proxy::ClientTls<'_>>,
) -> Routed {
    request_id.clear();
    match head.request_id {
        Some(s) => request_id.extend_from_slice(s.get(buf)),
        None => request_id.extend_from_slice(&ids.next_id()),
    }
    let Ok(path) = std::str::from_utf8(head.path(buf)) else {
        return Routed::Error {
            status: 400,
            message: "Invalid request target",
            allow: None,
        };
    };
    let routed = match plan
        .table
        .lookup(head.host.map(|h| h.get(buf)), head.method, path)
    {
        Lookup::NotFound => Routed::Error {
            status: 404,
            message: "Not Found",
            allow: None,
        },
        Lookup::MethodNotAllowed { allow } => Routed::Error {
            status: 405,
            message: "Method Not Allowed",
            allow: Some(allow),
        },
        Lookup::Found { route, params } => match &plan.routes[route as usize].integration {
            Integration::Mock(_) => Routed::Mock(route as usize),
            Integration::Proxy(p) => {
                let uplan = &plan.upstreams[p.upstream];
                let target = upstreams[p.upstream].pick(uplan, Instant::now());
                http_proxy::write_upstream_head(
                    xbuf, buf, head, &params, p, uplan, target, peer, request_id, tls,
                );
                Routed::Proxy {
                    route: route as usize,
                    upstream: p.upstream,
                    target,
                }
            }
        },
    };
    if let (Framing::Length(n), Routed::Mock(_) | Routed::Proxy { .. }) = (head.framing, routed) {
        if n > plan.limits.max_body_bytes {
            return Routed::Error {
                status: 413,
                message: "Request Entity Too Large",
                allow: None,
            };
        }
    }
    routed
}

/// Writes a mock integration's response head into `out`; the body is
/// `mock.body` unless the request was HEAD. `extra` holds header lines from
/// the policies.
pub fn render_mock(
    out: &mut Vec<u8>,
    mock: &MockPlan,
    date: &[u8; 29],
    request_id: &[u8],
    extra: &[u8],
    keep: bool,
    minor_version: u8,
) {
    out.clear();
    out.extend_from_slice(&mock.head);
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(request_id);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor_version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Handles one request whose head is at `conn.rbuf[conn.rpos..]`.
pub async fn handle(conn: &mut Conn, head: &RequestHead, shard: &Shard) -> Flow {
    let mut request_id: SmallVec<[u8; 64]> = SmallVec::new();
    let routed = route_request(
        &shard.plan,
        &shard.upstreams,
        &mut shard.ids.borrow_mut(),
        &conn.rbuf[conn.rpos..conn.rend],
        head,
        conn.peer,
        &mut conn.xbuf,
        &mut request_id,
        conn.stream.is_tls().then_some(http_proxy::ClientTls {
            client_cert_subject: conn.client_cert_subject.as_deref(),
        }),
    );
    if !conn.ebuf.is_empty() {
        conn.ebuf.clear();
    }
    // === policy phases ===
    // What the phases learn (the authenticated key) for the later ones.
    let mut req_state = policy::RequestState::default();
    let mut waited = false;
    let decision = loop {
        let decision = match routed {
            Routed::Mock(route) | Routed::Proxy { route, .. } => {
                let policies = &shard.plan.routes[route].policies;
                if policies.is_empty() {
                    Decision::Continue
                } else {
                    let view = RequestView {
                        buf: &conn.rbuf[conn.rpos..conn.rend],
                        head,
                        peer: conn.peer,
                        route: Some(route),
                        now: Instant::now(),
                        client_cert_subject: conn.client_cert_subject.as_deref(),
                    };
                    policy::check(
                        policies,
                        &shard.plan.policies.authorizers,
                        &shard.policies,
                        &view,
                        &mut conn.ebuf,
                        &mut req_state,
                    )
                }
            }
            Routed::Error { .. } => api_level_policies(conn, head, shard),
        };
        match decision {
            // Once: wait for this shard's lease of the key's quota, then
            // run the phases again from a clean slate.
            Decision::WaitQuota(key) if !waited => {
                waited = true;
                Box::pin(shard.policies.usage.wait(key)).await;
                conn.ebuf.clear();
                req_state = policy::RequestState::default();
            }
            Decision::WaitQuota(_) => {
                break Decision::Respond(Refusal::json(429, "Limit Exceeded"));
            }
            d => break d,
        }
    };
    // === request authorizer: the one policy phase that awaits ===
    let decision = match decision {
        // Boxed like `http_proxy::forward`: the call's state stays out of
        // every connection's task. Runs the phases after the authorizer.
        Decision::Authorize(call) => {
            Box::pin(policy::request_auth::resume(
                call,
                conn,
                head,
                shard,
                &request_id,
                &mut req_state,
            ))
            .await
        }
        d => d,
    };
    // The key's quota, reached only after the request authorizer: wait for
    // the lease once, then run the phases after the authorizer again.
    let decision = match (decision, routed) {
        (Decision::WaitQuota(key), Routed::Mock(route) | Routed::Proxy { route, .. }) => {
            Box::pin(shard.policies.usage.wait(key)).await;
            let view = RequestView {
                buf: &conn.rbuf[conn.rpos..conn.rend],
                head,
                peer: conn.peer,
                route: Some(route),
                now: Instant::now(),
                client_cert_subject: conn.client_cert_subject.as_deref(),
            };
            policy::after_auth(
                &shard.plan.routes[route].policies,
                &shard.policies,
                &view,
                &mut conn.ebuf,
                &mut req_state,
            )
        }
        (d, _) => d,
    };
    match decision {
        Decision::Continue => {}
        Decision::Respond(r) => {
            conn.rpos += head.len;
            return respond_refusal(conn, shard, head, r, &request_id).await;
        }
        Decision::WaitQuota(_) => {
            conn.rpos += head.len;
            let r = Refusal::json(429, "Limit Exceeded");
            return respond_refusal(conn, shard, head, r, &request_id).await;
        }
        // Never left over (resume does not return it): refuse, never allow.
        Decision::Authorize(_) => {
            conn.rpos += head.len;
            let r = Refusal::json(500, "Internal Server Error");
            return respond_refusal(conn, shard, head, r, &request_id).await;
        }
    }
    // The head's bytes are no longer needed: everything after is body or the
    // next request.
    conn.rpos += head.len;
    // === SigV4 payload hash: the body is read and hashed before anything
    // is forwarded (policy/sigv4/body.rs) ===
    if let Some(check) = req_state.body_check.take() {
        use policy::sigv4::body::{self, BodyFailure};
        match body::verify(conn, head, &shard.plan.limits, &check).await {
            Ok(()) => {
                req_state.principal = Some(check.principal.clone());
                if let Routed::Mock(route) | Routed::Proxy { route, .. } = routed {
                    if let Some(r) =
                        after_body_signature(conn, head, shard, route, &mut req_state).await
                    {
                        return respond_refusal(conn, shard, head, r, &request_id).await;
                    }
                }
            }
            Err(BodyFailure::Refused(f)) => {
                return respond_refusal(conn, shard, head, f.refusal(), &request_id).await;
            }
            Err(BodyFailure::Body(e)) => return body_error(conn, shard, e, &request_id).await,
        }
    }
    if !req_state.upstream_headers.is_empty() && matches!(routed, Routed::Proxy { .. }) {
        add_upstream_headers(&mut conn.xbuf, &req_state.upstream_headers);
    }
    // === integration ===
    match routed {
        Routed::Error {
            status,
            message,
            allow,
        } => respond_error(conn, shard, head, status, message, allow, &request_id).await,
        Routed::Mock(route) => {
            let Integration::Mock(mock) = &shard.plan.routes[route].integration else {
                unreachable!("routed as mock")
            };
            respond_mock(conn, shard, head, mock, &request_id).await
        }
        Routed::Proxy {
            route,
            upstream,
            target,
        } => {
            let f = Forward {
                method: head.method,
                framing: head.framing,
                minor_version: head.minor_version,
                keep_alive: head.keep_alive,
                expect_continue: head.expect_continue,
                upstream,
                target,
                request_id: &request_id,
                strip_cors: shard.plan.routes[route].policies.cors.is_some(),
            };
            // === cache phase (lookup, coalesce, store) ===
            match &shard.plan.routes[route].policies.cache {
                // Boxed for the same reason as `http_proxy::forward`: its
                // state would otherwise sit in every connection's task.
                Some(rule) => {
                    let key_name = req_state
                        .api_key
                        .and_then(|k| shard.policies.api_keys.name(k));
                    Box::pin(policy::cache::serve::proxy_cached(
                        conn, head, shard, rule, f, key_name,
                    ))
                    .await
                }
                None => http_proxy::forward(conn, shard, f, None).await,
            }
        }
    }
}

/// The phases after the authorizer (usage plan, throttle) for a request
/// whose SigV4 signature covered its body, once the body checked out. The
/// head is at `conn.rbuf[conn.rpos - head.len..]`. Some(refusal) to answer.
async fn after_body_signature(
    conn: &mut Conn,
    head: &RequestHead,
    shard: &Shard,
    route: usize,
    req_state: &mut policy::RequestState,
) -> Option<Refusal> {
    let internal = || Some(Refusal::json(500, "Internal Server Error"));
    let Some(policies) = shard.plan.routes.get(route).map(|r| &r.policies) else {
        return internal();
    };
    let mut waited = false;
    loop {
        let Some(base) = conn.rpos.checked_sub(head.len) else {
            return internal();
        };
        let view = RequestView {
            buf: &conn.rbuf[base..conn.rend],
            head,
            peer: conn.peer,
            route: Some(route),
            now: Instant::now(),
            client_cert_subject: conn.client_cert_subject.as_deref(),
        };
        match policy::after_auth(policies, &shard.policies, &view, &mut conn.ebuf, req_state) {
            Decision::Continue => return None,
            Decision::Respond(r) => return Some(r),
            Decision::WaitQuota(key) if !waited => {
                waited = true;
                Box::pin(shard.policies.usage.wait(key)).await;
            }
            Decision::WaitQuota(_) => return Some(Refusal::json(429, "Limit Exceeded")),
            Decision::Authorize(_) => return internal(),
        }
    }
}

/// Adds header lines from the authorizer to the upstream request head in
/// `xbuf`, before the blank line that ends it.
fn add_upstream_headers(xbuf: &mut Vec<u8>, lines: &[u8]) {
    if xbuf.ends_with(b"\r\n\r\n") {
        xbuf.truncate(xbuf.len() - 2);
        xbuf.extend_from_slice(lines);
        xbuf.extend_from_slice(b"\r\n");
    }
}

/// For a request no route takes: the API's IP rules still refuse it (so a
/// refused client cannot map which paths exist); CORS still answers a
/// preflight (API Gateway does so whether or not an OPTIONS route exists) and
/// adds its headers to the error response, so a browser can read it.
fn api_level_policies(conn: &mut Conn, head: &RequestHead, shard: &Shard) -> Decision {
    if shard
        .plan
        .apis
        .iter()
        .all(|a| a.cors.is_none() && a.ip_rules.is_none())
    {
        return Decision::Continue;
    }
    let buf = &conn.rbuf[conn.rpos..conn.rend];
    let Ok(path) = std::str::from_utf8(head.path(buf)) else {
        return Decision::Continue;
    };
    let api = shard
        .plan
        .table
        .api_for(head.host.map(|h| h.get(buf)), path);
    let Some(api) = api.map(|a| &shard.plan.apis[a]) else {
        return Decision::Continue;
    };
    if let Some(rules) = &api.ip_rules {
        if !rules.allows(conn.peer.ip()) {
            return Decision::Respond(Refusal::json(403, "Forbidden"));
        }
    }
    let Some(cors) = &api.cors else {
        return Decision::Continue;
    };
    let view = RequestView {
        buf,
        head,
        peer: conn.peer,
        route: None,
        now: Instant::now(),
        client_cert_subject: conn.client_cert_subject.as_deref(),
    };
    if let Decision::Respond(r) = cors.preflight(&view) {
        return Decision::Respond(r);
    }
    cors.response_headers(&view, &mut conn.ebuf);
    Decision::Continue
}

/// Answers with a policy's response instead of the integration's. As with
/// gateway errors, the connection stays open only if no body is left unread.
async fn respond_refusal(
    conn: &mut Conn,
    shard: &Shard,
    head: &RequestHead,
    r: Refusal,
    request_id: &[u8],
) -> Flow {
    conn.ebuf.extend_from_slice(&r.headers);
    let Some(body) = r.body else {
        return respond_error(conn, shard, head, r.status, &r.message, None, request_id).await;
    };
    let body_buffered = consume_buffered_body(conn, head);
    let keep = body_buffered && head.keep_alive;
    conn.wbuf.clear();
    push_status_line(&mut conn.wbuf, r.status);
    conn.wbuf.extend_from_slice(b"date: ");
    conn.wbuf.extend_from_slice(shard.date.borrow_mut().get());
    conn.wbuf.extend_from_slice(b"\r\n");
    if r.status != 204 {
        // RFC 9110 §8.6: a 204 carries no Content-Length.
        conn.wbuf.extend_from_slice(b"content-length: ");
        push_u64(&mut conn.wbuf, body.len() as u64);
        conn.wbuf.extend_from_slice(b"\r\n");
    }
    conn.wbuf.extend_from_slice(b"x-request-id: ");
    conn.wbuf.extend_from_slice(request_id);
    conn.wbuf.extend_from_slice(b"\r\n");
    conn.wbuf.extend_from_slice(&conn.ebuf);
    if !keep {
        conn.wbuf.extend_from_slice(b"connection: close\r\n");
    }
    conn.wbuf.extend_from_slice(b"\r\n");
    let body: &[u8] = if head.method == Method::Head {
        b""
    } else {
        &body
    };
    if write_two(&mut conn.stream, &conn.wbuf, body).await.is_err() {
        return Flow::Close;
    }
    match (keep, body_buffered) {
        (true, _) => Flow::KeepAlive,
        (false, true) => Flow::Close,
        (false, false) => Flow::Linger,
    }
}

/// Consumes a request body that is already wholly buffered. Returns false
/// when some of it is still to come (the connection must then close).
fn consume_buffered_body(conn: &mut Conn, head: &RequestHead) -> bool {
    match head.framing {
        Framing::None => true,
        Framing::Length(n) if n <= conn.buffered() as u64 => {
            conn.rpos += n as usize;
            true
        }
        _ => false,
    }
}

/// Answers with a gateway error. The connection stays open only when the
/// request had no body left to read, or all of it is already buffered.
#[allow(clippy::too_many_arguments)]
async fn respond_error(
    conn: &mut Conn,
    shard: &Shard,
    head: &RequestHead,
    status: u16,
    message: &str,
    allow: Option<AllowSet>,
    request_id: &[u8],
) -> Flow {
    let body_buffered = consume_buffered_body(conn, head);
    let keep = body_buffered && head.keep_alive;
    let head_req = head.method == Method::Head;
    if !conn
        .send_error_with_id(shard, status, message, allow, !keep, head_req, request_id)
        .await
    {
        return Flow::Close;
    }
    if keep {
        Flow::KeepAlive
    } else if body_buffered {
        Flow::Close
    } else {
        Flow::Linger
    }
}

/// Maps a failure to read the request body to the client's answer.
pub async fn body_error(conn: &mut Conn, shard: &Shard, e: BodyError, request_id: &[u8]) -> Flow {
    let (status, message) = match e {
        BodyError::Client | BodyError::Sink(_) => return Flow::Close,
        BodyError::Timeout => (408, "Request Timeout"),
        BodyError::TooLarge => (413, "Request Entity Too Large"),
        BodyError::Bad(m) => (400, m),
    };
    conn.send_error_with_id(shard, status, message, None, true, false, request_id)
        .await;
    if status == 408 {
        Flow::Close
    } else {
        Flow::Linger
    }
}

async fn respond_mock(
    conn: &mut Conn,
    shard: &Shard,
    head: &RequestHead,
    mock: &MockPlan,
    request_id: &[u8],
) -> Flow {
    answer_from_memory(
        conn,
        shard,
        head,
        request_id,
        &mock.body,
        |out, date, extra, keep| {
            render_mock(out, mock, date, request_id, extra, keep, head.minor_version)
        },
    )
    .await
}

/// Answers a request from memory (a mock integration, a cache hit): reads
/// and drops any request body, writes the head `render` puts into the write
/// buffer (given the date, the policies' header lines and whether the
/// connection stays open), then `body` unless the request was HEAD, in one
/// `sendmsg`.
pub async fn answer_from_memory(
    conn: &mut Conn,
    shard: &Shard,
    head: &RequestHead,
    request_id: &[u8],
    body: &[u8],
    render: impl FnOnce(&mut Vec<u8>, &[u8; 29], &[u8], bool),
) -> Flow {
    if head.framing != Framing::None {
        if let Err(e) = conn
            .pump_body(head.framing, &shard.plan.limits, None, head.expect_continue)
            .await
        {
            return body_error(conn, shard, e, request_id).await;
        }
    }
    let keep = head.keep_alive;
    let date = *shard.date.borrow_mut().get();
    render(&mut conn.wbuf, &date, &conn.ebuf, keep);
    let body: &[u8] = if head.method == Method::Head {
        b""
    } else {
        body
    };
    if write_two(&mut conn.stream, &conn.wbuf, body).await.is_err() {
        return Flow::Close;
    }
    if keep {
        Flow::KeepAlive
    } else {
        Flow::Close
    }
}
