//! The throttle phase's bucket check, `ShardThrottle::check`, as the request
//! path runs it (no channel, no lock: shard-local `RefCell` state).
//!
//! Compares:
//! - one route bucket, admitting (the common case);
//! - route + API + server buckets, admitting (all checked, then all spent);
//! - a per-client-IP bucket, admitting (adds a hash lookup on the address);
//! - an API key's usage-plan bucket, admitting (a hash lookup on the key);
//! - a refusal (429 with `Retry-After`: builds the refusal's header line).
//!
//! The admitting benches give the shard a burst larger than the iterations
//! of each timed batch (`iter_custom` builds a fresh shard state per batch,
//! untimed), so every timed check admits; no reconciliation task runs.
//!
//! Needs `[[bench]] name = "throttle" harness = false` in Cargo.toml.

mod common;

use coregate::http::parse::{parse_request_head, RequestHead};
use coregate::plan::Plan;
use coregate::policy::throttle::{links, ShardThrottle, ThrottlePlan};
use coregate::policy::{Decision, RequestView};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";

fn plan(server: &str, api: &str, route: &str) -> Plan {
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\n{server}\n\
         [[apis]]\nname = \"a\"\n{api}\n\
         [[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"mock\" }}\n{route}\n"
    );
    match coregate::plan::load_str(&toml) {
        Ok(p) => p,
        Err(e) => panic!("bench config: {e:?}"),
    }
}

fn head() -> RequestHead {
    match parse_request_head(REQUEST, &common::default_limits()) {
        Ok(Some(h)) => h,
        other => panic!("bench request: {other:?}"),
    }
}

fn shard(plan: &Plan) -> ShardThrottle {
    let link = links(&ThrottlePlan::default(), 1)
        .pop()
        .expect("one unlinked shard link");
    ShardThrottle::new(&plan.policies.throttle, 0, link)
}

/// Times `iters` checks against fresh shard state built outside the timing.
fn timed_checks(plan: &Plan, head: &RequestHead, iters: u64, expect_admit: bool) -> Duration {
    timed_checks_with(plan, head, iters, expect_admit, None)
}

fn timed_checks_with(
    plan: &Plan,
    head: &RequestHead,
    iters: u64,
    expect_admit: bool,
    key_bucket: Option<(u32, u32)>,
) -> Duration {
    let limits = &plan.routes[0].policies.throttle;
    let t = shard(plan);
    let mut extra = Vec::with_capacity(256);
    let view = RequestView {
        buf: REQUEST,
        head,
        peer: "10.1.2.3:40000".parse().expect("peer"),
        route: Some(0),
        now: Instant::now(),
        client_cert_subject: None,
    };
    if !expect_admit {
        // Spend the only token first.
        let _ = t.check(limits, None, &view, &mut extra);
    }
    let start = Instant::now();
    for _ in 0..iters {
        let d = t.check(black_box(limits), key_bucket, black_box(&view), &mut extra);
        if matches!(d, Decision::Continue) != expect_admit {
            panic!("the bench's premise broke: admit = {expect_admit}");
        }
        black_box(d);
    }
    start.elapsed()
}

fn bench_check(c: &mut Criterion) {
    let head = head();
    let big = "throttle = { rate = 1000000, burst = 100000000 }";
    let one = plan("", "", big);
    let three = plan(big, big, big);
    let per_ip = plan(
        "throttle = { per_client_ip = { rate = 1000000, burst = 100000000 } }",
        "",
        "",
    );
    let tiny = plan("", "", "throttle = { rate = 0.001, burst = 1 }");
    let keyed = plan(
        "[[api_keys]]\nname = \"k\"\nid = \"aaaaaaaaaaaa\"\nusage_plan = \"p\"\n\
         hash = \"sha256$00112233445566778899aabbccddeeff$0000000000000000000000000000000000000000000000000000000000000000\"\n\
         [[usage_plans]]\nname = \"p\"\napis = [\"a\"]\n\
         throttle = { rate = 1000000, burst = 100000000 }\n",
        "api_key_required = true",
        "",
    );
    let key_bucket = match keyed.policies.usage.coverage(0, 0) {
        coregate::policy::usage::Coverage::Covered {
            bucket: Some(b), ..
        } => Some((b, 0)),
        other => panic!("bench plan: {other:?}"),
    };
    let mut g = c.benchmark_group("throttle_check");
    g.bench_function("route_admit", |b| {
        b.iter_custom(|n| timed_checks(&one, &head, n, true))
    });
    g.bench_function("route_api_server_admit", |b| {
        b.iter_custom(|n| timed_checks(&three, &head, n, true))
    });
    g.bench_function("per_client_ip_admit", |b| {
        b.iter_custom(|n| timed_checks(&per_ip, &head, n, true))
    });
    g.bench_function("api_key_plan_admit", |b| {
        b.iter_custom(|n| timed_checks_with(&keyed, &head, n, true, key_bucket))
    });
    g.bench_function("refuse_429", |b| {
        b.iter_custom(|n| timed_checks(&tiny, &head, n, false))
    });
    g.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
