//! The cache phase of a proxied request: lookup, answer a hit, coalesce
//! misses, forward with a capture and store what is cacheable. Called by
//! [`crate::pipeline::handle`] for a proxied route with a cache rule, after
//! the synchronous policies let the request through.

use super::{forbids_storing, header_lines, CacheRule, Entry, FillGuard};
use crate::http::conn::Conn;
use crate::http::encode::{push_status_line, push_u64};
use crate::http::method::Method;
use crate::http::parse::RequestHead;
use crate::integration::http_proxy::{self, Capture, Forward};
use crate::pipeline::Flow;
use crate::runtime::Shard;
use std::rc::Rc;
use std::time::Instant;

/// Added to a response the cache answered.
pub const HIT_HEADER: &[u8] = b"x-cache: Hit\r\n";
/// Added to a response the backend answered, for a request the cache takes.
pub const MISS_HEADER: &[u8] = b"x-cache: Miss\r\n";

/// Handles a proxied request on a route with a cache rule. `conn.rpos` is
/// just past the request head (its bytes are still in `conn.rbuf`, read
/// here before anything else touches the buffer), and the upstream request
/// head is in `conn.xbuf`.
pub async fn proxy_cached(
    conn: &mut Conn,
    head: &RequestHead,
    shard: &Shard,
    rule: &CacheRule,
    f: Forward<'_>,
    api_key: Option<&str>,
) -> Flow {
    if !rule.caches_method(head.method) {
        return http_proxy::forward(conn, shard, f, None).await;
    }
    let Some(base) = conn.rpos.checked_sub(head.len) else {
        return http_proxy::forward(conn, shard, f, None).await;
    };
    let buf = &conn.rbuf[base..conn.rend];
    let mut key = Vec::with_capacity(128);
    rule.write_key(&mut key, buf, head);
    let cache = &shard.policies.cache;
    if rule.may_invalidate(buf, head, api_key) {
        // Bypass and refresh: the old entry goes now, whatever the backend
        // answers; concurrent misses may coalesce on this request.
        cache.remove(&key);
        let key: Rc<[u8]> = key.into();
        let guard = cache.begin_fill(key.clone());
        return fill(conn, shard, rule, f, key, guard).await;
    }
    if let Some(e) = cache.get(&key, Instant::now()) {
        return respond_hit(conn, shard, head, &e, f.request_id).await;
    }
    if head.method == Method::Head && rule.caches_method(Method::Get) {
        // A GET entry answers a HEAD request (without its body).
        let mut get_key = Vec::with_capacity(key.len());
        rule.write_key_as(&mut get_key, b"GET", buf, head);
        if let Some(e) = cache.get(&get_key, Instant::now()) {
            return respond_hit(conn, shard, head, &e, f.request_id).await;
        }
    }
    if let Some(in_flight) = cache.fill_in_flight(&key) {
        // Wait for the request already filling this key, but no longer than
        // the upstream's own timeout: a filler stuck writing to a slow
        // client must not hold its waiters forever.
        let limit = shard.plan.upstreams[f.upstream].timeout;
        futures_lite::future::or(in_flight.wait(), glommio::timer::sleep(limit)).await;
        if let Some(e) = cache.get(&key, Instant::now()) {
            return respond_hit(conn, shard, head, &e, f.request_id).await;
        }
        // The filler's response was not stored: go to the backend without
        // registering a new fill, so the waiters proceed in parallel rather
        // than one after another.
        return fill(conn, shard, rule, f, key.into(), None).await;
    }
    let key: Rc<[u8]> = key.into();
    let guard = cache.begin_fill(key.clone());
    fill(conn, shard, rule, f, key, guard).await
}

/// Forwards with a capture, stores the response if the rule allows, then
/// (dropping `guard`) wakes the requests waiting for this fill.
async fn fill(
    conn: &mut Conn,
    shard: &Shard,
    rule: &CacheRule,
    f: Forward<'_>,
    key: Rc<[u8]>,
    guard: Option<FillGuard<'_>>,
) -> Flow {
    conn.ebuf.extend_from_slice(MISS_HEADER);
    let mut cap = Capture::new(rule.max_response_body_bytes);
    let flow = http_proxy::forward(conn, shard, f, Some(&mut cap)).await;
    if let Some(entry) = entry_from_capture(rule, &mut cap, Instant::now()) {
        shard.policies.cache.store(key, entry);
    }
    drop(guard);
    flow
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

/// Writes the head of a response answered from `e` into `out`: status line,
/// stored headers, content-length, age, date, the request's own id, the
/// policies' header lines (`extra`, which holds `x-cache: Hit`), and the
/// connection header as for a mock response.
#[allow(clippy::too_many_arguments)]
pub fn render_hit(
    out: &mut Vec<u8>,
    e: &Entry,
    now: Instant,
    date: &[u8; 29],
    request_id: &[u8],
    extra: &[u8],
    keep: bool,
    minor_version: u8,
) {
    out.clear();
    push_status_line(out, e.status);
    out.extend_from_slice(&e.headers);
    out.extend_from_slice(b"content-length: ");
    push_u64(out, e.content_length);
    out.extend_from_slice(b"\r\nage: ");
    push_u64(out, now.saturating_duration_since(e.stored).as_secs());
    out.extend_from_slice(b"\r\ndate: ");
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

/// Answers from the cache. A request body (a cached POST) is read and
/// dropped first, as for a mock route.
async fn respond_hit(
    conn: &mut Conn,
    shard: &Shard,
    head: &RequestHead,
    e: &Entry,
    request_id: &[u8],
) -> Flow {
    conn.ebuf.extend_from_slice(HIT_HEADER);
    let now = Instant::now();
    crate::pipeline::answer_from_memory(
        conn,
        shard,
        head,
        request_id,
        &e.body,
        |out, date, extra, keep| {
            render_hit(
                out,
                e,
                now,
                date,
                request_id,
                extra,
                keep,
                head.minor_version,
            )
        },
    )
    .await
}
