//! The cache phase of a proxied request: it wraps the integration. Lookup,
//! answer a hit, coalesce misses, forward with a capture and store what is
//! cacheable. The driver calls [`proxy_cached`] for a proxied route with a
//! cache rule, after every other phase let the request through.

use super::exchange::{CacheStatus, Exchange};
use super::reply::{self, Body};
use super::Gateway;
use crate::http::conn::{Conn, Flow};
use crate::http::encode::{push_status_line, push_u64};
use crate::http::method::Method;
use crate::http::parse::RequestHead;
use crate::http::respond::{Reply, ReplyBody};
use crate::integration::http_proxy::{self, Capture, Forward, Proxied, Report, Upstream};
use crate::policy::cache::{
    forbids_storing, header_lines, CacheRule, Entry, FillGuard, ShardCache,
};
use std::rc::Rc;
use std::time::Instant;

/// Added to a response the cache answered.
pub const HIT_HEADER: &[u8] = b"x-cache: Hit\r\n";
/// Added to a response the backend answered, for a request the cache takes.
pub const MISS_HEADER: &[u8] = b"x-cache: Miss\r\n";

/// What the cache phase did.
pub enum Answered {
    /// The request went to the upstream.
    Proxied(Proxied),
    /// A stored entry answers it: the driver writes it ([`respond_hit`]).
    Hit(Rc<Entry>),
}

/// Handles a proxied request on a route with a cache rule. The request
/// head has been consumed from the connection's buffer (its bytes are
/// still there, read here before anything else touches the buffer), and
/// the upstream request head is in `conn.xbuf`.
#[allow(clippy::too_many_arguments)]
pub async fn proxy_cached(
    cache: &ShardCache,
    conn: &mut Conn,
    head: &RequestHead,
    rule: &CacheRule,
    up: Upstream<'_>,
    f: Forward<'_>,
    api_key: Option<&str>,
    report: &mut Report,
    status: &mut CacheStatus,
) -> Answered {
    if !rule.caches_method(head.method) {
        return Answered::Proxied(http_proxy::forward(conn, up, f, None, report).await);
    }
    let Some(buf) = conn.with_head(head.len) else {
        return Answered::Proxied(http_proxy::forward(conn, up, f, None, report).await);
    };
    let mut key = Vec::with_capacity(128);
    rule.write_key(&mut key, buf, head);
    if rule.may_invalidate(buf, head, api_key) {
        // Bypass and refresh: the old entry goes now, whatever the backend
        // answers; concurrent misses may coalesce on this request.
        cache.remove(&key);
        let key: Rc<[u8]> = key.into();
        let guard = cache.begin_fill(key.clone());
        *status = CacheStatus::Miss;
        return Answered::Proxied(fill(cache, conn, rule, up, f, key, guard, report).await);
    }
    if let Some(e) = cache.get(&key, Instant::now()) {
        *status = CacheStatus::Hit;
        return Answered::Hit(e);
    }
    if head.method == Method::Head && rule.caches_method(Method::Get) {
        // A GET entry answers a HEAD request (without its body).
        let mut get_key = Vec::with_capacity(key.len());
        rule.write_key_as(&mut get_key, b"GET", buf, head);
        if let Some(e) = cache.get(&get_key, Instant::now()) {
            *status = CacheStatus::Hit;
            return Answered::Hit(e);
        }
    }
    *status = CacheStatus::Miss;
    if let Some(in_flight) = cache.fill_in_flight(&key) {
        // Wait for the request already filling this key, but no longer than
        // the upstream's own timeout: a filler stuck writing to a slow
        // client must not hold its waiters forever.
        let limit = up.plan.timeout;
        futures_lite::future::or(in_flight.wait(), glommio::timer::sleep(limit)).await;
        if let Some(e) = cache.get(&key, Instant::now()) {
            *status = CacheStatus::Hit;
            return Answered::Hit(e);
        }
        // The filler's response was not stored: go to the backend without
        // registering a new fill, so the waiters proceed in parallel rather
        // than one after another.
        return Answered::Proxied(fill(cache, conn, rule, up, f, key.into(), None, report).await);
    }
    let key: Rc<[u8]> = key.into();
    let guard = cache.begin_fill(key.clone());
    Answered::Proxied(fill(cache, conn, rule, up, f, key, guard, report).await)
}

/// Forwards with a capture, stores the response if the rule allows, then
/// (dropping `guard`) wakes the requests waiting for this fill.
#[allow(clippy::too_many_arguments)]
async fn fill(
    cache: &ShardCache,
    conn: &mut Conn,
    rule: &CacheRule,
    up: Upstream<'_>,
    f: Forward<'_>,
    key: Rc<[u8]>,
    guard: Option<FillGuard<'_>>,
    report: &mut Report,
) -> Proxied {
    conn.ebuf.extend_from_slice(MISS_HEADER);
    let mut cap = Capture::new(rule.max_response_body_bytes);
    let proxied = http_proxy::forward(conn, up, f, Some(&mut cap), report).await;
    if let Some(entry) = entry_from_capture(rule, &mut cap, Instant::now()) {
        cache.store(key, entry);
    }
    drop(guard);
    proxied
}

/// The entry to store for a captured response, or None when the rule says
/// it is not cacheable: incomplete (not Content-Length delimited, over
/// `max_response_body_bytes`, or cut short), a status not listed, or
/// `Cache-Control: no-store`/`private` from the backend unless the rule
/// ignores them.
pub fn entry_from_capture(rule: &CacheRule, cap: &mut Capture, now: Instant) -> Option<Entry> {
    if !cap.complete
        || !rule.caches_status(cap.status)
        || cap.body.len() > rule.max_response_body_bytes
        || (!rule.ignore_backend_no_store && forbids_storing(&cap.headers))
    {
        return None;
    }
    // The gateway writes its own `date` and `age` on every hit.
    let mut headers = Vec::with_capacity(cap.headers.len());
    for (name, value) in header_lines(&cap.headers) {
        if name.eq_ignore_ascii_case(b"date") || name.eq_ignore_ascii_case(b"age") {
            continue;
        }
        headers.extend_from_slice(name);
        headers.extend_from_slice(b": ");
        headers.extend_from_slice(value);
        headers.extend_from_slice(b"\r\n");
    }
    Some(Entry {
        status: cap.status,
        headers: headers.into_boxed_slice(),
        body: std::mem::take(&mut cap.body).into_boxed_slice(),
        content_length: cap.content_length,
        stored: now,
        expires: now + rule.ttl,
    })
}

/// Writes the head an entry answers with, before the envelope every
/// gateway-made response gets: status line, stored headers,
/// content-length and age.
pub fn render_hit(out: &mut Vec<u8>, e: &Entry, now: Instant) {
    out.clear();
    push_status_line(out, e.status);
    out.extend_from_slice(&e.headers);
    out.extend_from_slice(b"content-length: ");
    push_u64(out, e.content_length);
    out.extend_from_slice(b"\r\nage: ");
    push_u64(out, now.saturating_duration_since(e.stored).as_secs());
    out.extend_from_slice(b"\r\n");
}

/// Answers from the cache. A request body (a cached POST) is read and
/// dropped first, as for a mock route.
pub async fn respond_hit(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    e: &Entry,
) -> Flow {
    conn.ebuf.extend_from_slice(HIT_HEADER);
    // The upstream request head is not needed any more: its buffer holds
    // the entry's head.
    let mut rendered = std::mem::take(&mut conn.xbuf);
    render_hit(&mut rendered, e, Instant::now());
    let flow = reply::send(
        gw,
        conn,
        head,
        x,
        Body::Drain,
        Reply {
            status: e.status,
            body: ReplyBody::Prerendered {
                head: &rendered,
                body: &e.body,
            },
            allow: None,
        },
    )
    .await;
    conn.xbuf = rendered;
    flow
}
