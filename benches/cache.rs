//! The response cache's hit path in memory, bytes in to response head out:
//! `parse_request_head` -> `CacheRule::write_key` -> `ShardCache::get`
//! (expiry check, LRU touch) -> `gateway::cache::render_hit` and the one
//! response writer (`http::respond::write_reply`). What the socket write
//! adds is the same as for a mock route (one `sendmsg` of head and body).
//!
//! Compares:
//! - each hit against two baselines on the same request: parsing alone
//!   (paid by every request) and parsing plus building the key;
//! - a key of method, host and path only, against a key that also takes two
//!   query parameters and two headers (the browser request's 20 headers are
//!   scanned for them);
//! - a shard cache holding one entry, against one holding 10,000 (the hash
//!   lookup and LRU relink on a large, cold-ish table);
//! - the miss-side store: `entry_from_capture` and `ShardCache::store` of a
//!   1 KiB response into a full cache, which evicts one entry per insert.
//!
//! Buffers are reused across iterations as a keep-alive connection reuses
//! them.

mod common;

use coregate::gateway::cache::{entry_from_capture, render_hit, HIT_HEADER};
use coregate::http::parse::{parse_request_head, RequestHead};
use coregate::http::respond::{write_reply, Envelope, Reply, ReplyBody};
use coregate::integration::http_proxy::Capture;
use coregate::policy::cache::{entry_size, CacheRule, CacheSettings, Entry, ShardCache};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::rc::Rc;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[[apis]]
name = "bench"
hosts = ["api.example.com", "127.0.0.1"]

[[apis.routes]]
key = "GET /plain/{id}"
integration = { type = "http_proxy", url = "http://127.0.0.1:9" }
cache = {}

[[apis.routes]]
key = "GET /keyed/{id}"
integration = { type = "http_proxy", url = "http://127.0.0.1:9" }
cache = { key_query_parameters = ["page", "lang"], rendereders = ["accept-language", "x-tenant"] }
"#;

fn rules() -> (CacheRule, CacheRule) {
    let plan = coregate::plan::load_str(CONFIG).expect("bench config");
    let rule = |i: usize| plan.routes[i].policies.cache.clone().expect("cached route");
    (rule(0), rule(1))
}

fn entry(body_len: usize) -> Entry {
    let now = Instant::now();
    Entry {
        status: 200,
        headers: Box::from(&b"content-type: application/json\r\netag: \"abc123\"\r\n"[..]),
        body: vec![b'x'; body_len].into_boxed_slice(),
        content_length: body_len as u64,
        stored: now,
        expires: now + Duration::from_secs(3600),
    }
}

fn parse(buf: &[u8]) -> RequestHead {
    parse_request_head(buf, &common::default_limits())
        .expect("valid")
        .expect("complete")
}

/// A cache holding `n` entries besides the one for `buf`'s key.
fn filled(rule: &CacheRule, buf: &[u8], n: usize) -> ShardCache {
    let cache = ShardCache::new(&CacheSettings {
        max_bytes_per_shard: 1 << 30,
    });
    let mut key = Vec::new();
    rule.write_key(&mut key, buf, &parse(buf));
    cache.store(Rc::from(key), entry(1024));
    for i in 0..n {
        let k = format!("GET\napi.example.com\n/plain/other-{i}\n");
        cache.store(Rc::from(k.as_bytes()), entry(1024));
    }
    cache
}

/// One hit: parse, key, lookup, render the head. Returns the head's length.
fn hit(
    rule: &CacheRule,
    cache: &ShardCache,
    buf: &[u8],
    key: &mut Vec<u8>,
    out: &mut Vec<u8>,
    rendered: &mut Vec<u8>,
) -> usize {
    let head = parse(buf);
    rule.write_key(key, buf, &head);
    let now = Instant::now();
    let e = cache.get(key, now).expect("hit");
    render_hit(rendered, &e, now);
    let reply = Reply {
        status: e.status,
        body: ReplyBody::Prerendered {
            head: rendered,
            body: &e.body,
        },
        allow: None,
    };
    let env = Envelope {
        date: b"Sun, 06 Nov 1994 08:49:37 GMT",
        request_id: b"0123456789abcdef0123456789abcdef",
        extra: HIT_HEADER,
        keep_alive: head.keep_alive,
        minor_version: head.minor_version,
        head_request: false,
    };
    let body = write_reply(out, &reply, &env);
    out.len() + body.len()
}

fn bench(c: &mut Criterion) {
    let (plain, keyed) = rules();
    let small = b"GET /plain/42 HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec();
    let mut browser = common::browser_request("/keyed/42?page=2&utm_source=x&lang=en");
    browser.truncate(browser.len() - 2);
    browser.extend_from_slice(b"X-Tenant: acme\r\n\r\n");

    let mut key = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(512);
    let mut g = c.benchmark_group("cache_hit");
    // Baselines: what every request pays anyway (parsing), and parsing plus
    // building the key; the rest of a hit is lookup and rendering.
    for (name, rule, buf) in [
        ("small_get_plain_key", &plain, &small),
        ("browser_keyed_2q_2h", &keyed, &browser),
    ] {
        g.bench_function(format!("{name}/parse_only"), |b| {
            b.iter(|| black_box(parse(black_box(buf)).len))
        });
        g.bench_function(format!("{name}/parse_and_key"), |b| {
            b.iter(|| {
                let head = parse(black_box(buf));
                rule.write_key(&mut key, buf, &head);
                black_box(key.len())
            })
        });
    }
    let mut rendered = Vec::new();
    for (name, rule, buf) in [
        ("small_get_plain_key", &plain, &small),
        ("browser_keyed_2q_2h", &keyed, &browser),
    ] {
        for n in [0usize, 10_000] {
            let cache = filled(rule, buf, n);
            g.bench_function(format!("{name}/entries_{}", n + 1), |b| {
                b.iter(|| {
                    black_box(hit(
                        rule,
                        &cache,
                        black_box(buf),
                        &mut key,
                        &mut out,
                        &mut rendered,
                    ))
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("cache_store");
    // A full cache: every insert evicts the least recently used entry.
    let each = entry_size(40, 48, 1024);
    let cache = ShardCache::new(&CacheSettings {
        max_bytes_per_shard: each * 1000,
    });
    let mut i = 0u64;
    g.bench_function("capture_to_entry_and_store_1KiB_evicting", |b| {
        b.iter(|| {
            i += 1;
            let mut cap = Capture::new(1 << 20);
            cap.status = 200;
            cap.headers
                .extend_from_slice(b"content-type: application/json\r\ndate: x\r\n");
            cap.body.resize(1024, b'x');
            cap.content_length = 1024;
            cap.complete = true;
            let e = entry_from_capture(&plain, &mut cap, Instant::now()).expect("cacheable");
            let k = format!("GET\napi.example.com\n/plain/{i}\n");
            black_box(cache.store(Rc::from(k.as_bytes()), e))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
