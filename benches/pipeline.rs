//! The whole in-memory request path, bytes in to bytes out, and the heap
//! allocations it makes.
//!
//! Compares, for the small GET a load generator sends and for a 20-header
//! browser request:
//! - a mock route: `parse_request_head` -> the route lookup and request id
//!   (as the gateway's driver does them) -> `http::respond::write_reply`
//!   (the response head; the body is the plan's bytes);
//! - a proxied route up to the upstream request head: `parse_request_head`
//!   -> the route lookup -> target choice and
//!   `http_proxy::write_upstream_head`.
//!
//! These are the synchronous steps of the driver without its sockets; the
//! allocations of the whole request over real sockets, connection loop and
//! driver included, are counted by `loadtest/allocs.sh` on the binary.
//!
//! Buffers are reused across iterations exactly as a keep-alive connection
//! reuses them. Before the timed benches, a counting global allocator reports
//! heap allocations per request after warm-up, per step, so the one that
//! allocates is named (set `COREGATE_ALLOC_BACKTRACE=1` to print a backtrace of
//! the first allocation seen in a measured window). The goal is zero for the
//! mock route.

mod common;

use coregate::http::encode::{DateCache, RequestIds};
use coregate::http::parse::{parse_request_head, HeadLimits};
use coregate::http::respond::{write_reply, Envelope, Reply, ReplyBody};
use coregate::integration::http_proxy::write_upstream_head;
use coregate::integration::upstream::UpstreamState;
use coregate::plan::{Integration, Plan};
use coregate::route::Lookup;
use criterion::{black_box, criterion_group, Criterion};
use smallvec::SmallVec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

// === impl CountingAlloc ===

/// Counts calls into the allocator; memory comes from `System`.
struct CountingAlloc;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static TRACE_NEXT: AtomicBool = AtomicBool::new(false);

thread_local! {
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn maybe_trace(what: &str, size: usize) {
    if TRACE_NEXT.load(Relaxed) && !IN_TRACE.with(|t| t.replace(true)) {
        TRACE_NEXT.store(false, Relaxed);
        eprintln!(
            "first {what} of {size} bytes in a measured window:\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        IN_TRACE.with(|t| t.set(false));
    }
}

// SAFETY: every call is forwarded unchanged to `System`.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        maybe_trace("alloc", layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        maybe_trace("alloc", layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Relaxed);
        maybe_trace("realloc", new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn counts() -> (u64, u64) {
    (ALLOCS.load(Relaxed), REALLOCS.load(Relaxed))
}

// === fixture ===

/// One shard's worth of state and one keep-alive connection's buffers.
struct Fixture {
    plan: Plan,
    upstreams: Vec<UpstreamState>,
    ids: RequestIds,
    date: DateCache,
    limits: HeadLimits,
    peer: SocketAddr,
    wbuf: Vec<u8>,
    xbuf: Vec<u8>,
    request_id: SmallVec<[u8; 64]>,
}

impl Fixture {
    fn new() -> Fixture {
        let plan = coregate::plan::load_str(common::PIPELINE_CONFIG).expect("bench config");
        let upstreams = plan.upstreams.iter().map(UpstreamState::new).collect();
        Fixture {
            plan,
            upstreams,
            ids: RequestIds::new(0),
            date: DateCache::default(),
            limits: common::default_limits(),
            peer: "203.0.113.9:51234".parse().unwrap(),
            // As a connection starts them: see http::conn::serve.
            wbuf: Vec::with_capacity(512),
            xbuf: Vec::new(),
            request_id: SmallVec::new(),
        }
    }

    fn parse(&self, buf: &[u8]) -> coregate::http::parse::RequestHead {
        parse_request_head(buf, &self.limits).unwrap().unwrap()
    }

    /// The route's index; for a proxied route also the target choice and
    /// the upstream request head in `xbuf`, as the driver makes them.
    fn route(&mut self, buf: &[u8], head: &coregate::http::parse::RequestHead) -> usize {
        self.request_id.clear();
        match head.request_id {
            Some(s) => self.request_id.extend_from_slice(s.get(buf)),
            None => self.request_id.extend_from_slice(&self.ids.next_id()),
        }
        let path = std::str::from_utf8(head.path(buf)).unwrap();
        let Lookup::Found { route, params } =
            self.plan
                .table
                .lookup(head.host.map(|h| h.get(buf)), head.method, path)
        else {
            panic!("not routed")
        };
        if let Integration::Proxy(p) = &self.plan.routes[route as usize].integration {
            let up = &self.plan.upstreams[p.upstream];
            let target = self.upstreams[p.upstream].pick(up, Instant::now());
            write_upstream_head(
                &mut self.xbuf,
                buf,
                head,
                &params_of(&params),
                p,
                up,
                target,
                self.peer,
                &self.request_id,
                None,
                b"",
            );
        }
        route as usize
    }

    /// Bytes in to bytes out for a mock route; returns the response length.
    fn mock(&mut self, buf: &[u8]) -> usize {
        let head = self.parse(buf);
        let route = self.route(buf, &head);
        let Integration::Mock(mock) = &self.plan.routes[route].integration else {
            panic!("not routed to a mock")
        };
        let date = *self.date.get();
        let env = Envelope {
            date: &date,
            request_id: &self.request_id,
            extra: b"",
            keep_alive: head.keep_alive,
            minor_version: head.minor_version,
            head_request: false,
        };
        let reply = Reply {
            status: mock.status,
            body: ReplyBody::Prerendered {
                head: &mock.head,
                body: &mock.body,
            },
            allow: None,
        };
        let body = write_reply(&mut self.wbuf, &reply, &env);
        self.wbuf.len() + body.len()
    }

    /// Bytes in to the upstream request head for a proxied route.
    fn proxy_head(&mut self, buf: &[u8]) -> usize {
        let head = self.parse(buf);
        let route = self.route(buf, &head);
        let Integration::Proxy(_) = &self.plan.routes[route].integration else {
            panic!("not routed to a proxy")
        };
        self.xbuf.len()
    }
}

fn small(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n").into_bytes()
}

// === allocations per request ===

const WARMUP: u64 = 1_000;
const MEASURED: u64 = 100_000;

/// Runs `f` `WARMUP` times, then `MEASURED` times while counting.
fn per_request(mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..WARMUP {
        f();
    }
    TRACE_NEXT.store(
        std::env::var_os("COREGATE_ALLOC_BACKTRACE").is_some(),
        Relaxed,
    );
    let (a0, r0) = counts();
    for _ in 0..MEASURED {
        f();
    }
    let (a1, r1) = counts();
    TRACE_NEXT.store(false, Relaxed);
    (
        (a1 - a0) as f64 / MEASURED as f64,
        (r1 - r0) as f64 / MEASURED as f64,
    )
}

fn alloc_report() {
    println!("allocations per request after {WARMUP} warm-up requests ({MEASURED} measured; alloc calls / realloc calls):");
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("mock, small GET", small("/health"), true),
        (
            "mock, browser 20 headers",
            common::browser_request("/health"),
            true,
        ),
        ("proxy head, small GET", small("/pets/42"), false),
        (
            "proxy head, browser 20 headers",
            common::browser_request("/pets/42?fields=name,tag"),
            false,
        ),
    ];
    for (name, buf, mock) in &cases {
        let mut fx = Fixture::new();
        let (a, r) = per_request(|| {
            black_box(fx.parse(black_box(buf)));
        });
        println!("  {name:32} {:27} {a:6.3} / {r:6.3}", "parse_request_head");
        let head = fx.parse(buf);
        let (a, r) = per_request(|| {
            black_box(fx.route(black_box(buf), &head));
        });
        println!(
            "  {name:32} {:27} {a:6.3} / {r:6.3}",
            "route (+ upstream head)"
        );
        let (a, r) = if *mock {
            per_request(|| {
                black_box(fx.mock(black_box(buf)));
            })
        } else {
            per_request(|| {
                black_box(fx.proxy_head(black_box(buf)));
            })
        };
        let what = if *mock {
            "whole mock path"
        } else {
            "whole path to upstream head"
        };
        println!("  {name:32} {what:27} {a:6.3} / {r:6.3}");
    }
    // A fresh connection: buffers start empty and grow once.
    let buf = small("/pets/42");
    let (a0, r0) = counts();
    let mut fx = Fixture::new();
    let (a1, r1) = counts();
    fx.proxy_head(&buf);
    let (a2, r2) = counts();
    println!(
        "  first request on a new connection (proxy head, small GET): {} / {} (fixture setup: {} / {})",
        a2 - a1,
        r2 - r1,
        a1 - a0,
        r1 - r0
    );
    println!();
}

// === timed benches ===

fn whole_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_path");
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("mock/small_get", small("/health"), true),
        (
            "mock/browser_20_headers",
            common::browser_request("/health"),
            true,
        ),
        ("proxy_head/small_get", small("/pets/42"), false),
        (
            "proxy_head/browser_20_headers",
            common::browser_request("/pets/42?fields=name,tag"),
            false,
        ),
    ];
    for (name, buf, mock) in &cases {
        let mut fx = Fixture::new();
        if *mock {
            g.bench_function(*name, |b| b.iter(|| black_box(fx.mock(black_box(buf)))));
        } else {
            g.bench_function(*name, |b| {
                b.iter(|| black_box(fx.proxy_head(black_box(buf))))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, whole_path);

fn main() {
    alloc_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// Route parameters as the proxy takes them: name and raw value.
/// A SmallVec, as the gateway's driver keeps them: no allocation.
fn params_of<'a>(
    params: &'a coregate::route::Params<'_, '_>,
) -> smallvec::SmallVec<[(&'a str, &'a [u8]); 4]> {
    params.iter().map(|(k, v)| (k, v.as_bytes())).collect()
}
