//! What metrics cost, on the shard and on the admin listener.
//!
//! Compares:
//! - per request, what the exit adds for metrics: a request recorded into
//!   its route's series (status slot, duration histogram, bytes) with
//!   `Instant` arithmetic, against the same plus a proxied request's
//!   integration histogram and its target's histogram; a clock read
//!   (`Instant::now`, which the exit makes anyway) for scale;
//! - per scrape, on the shard: the snapshot of 100 series, 10 targets
//!   ([`ShardMetrics::snapshot_series`]); on the admin thread: the merge of
//!   two shards' snapshots and the text exposition.

use coregate::observe::expo::{render, Info};
use coregate::observe::hist::micros;
use coregate::observe::process::ProcessInfo;
use coregate::observe::shard::ShardMetrics;
use coregate::observe::snapshot::{merge, ShardSnapshot};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

/// `apis` APIs with detailed metrics, `routes` mock routes each.
fn config(apis: usize, routes: usize) -> String {
    let mut c = String::from("[server]\nlisten = [\"127.0.0.1:0\"]\n");
    for a in 0..apis {
        c.push_str(&format!(
            "[[apis]]\nname = \"api{a}\"\nbase_path = \"/a{a}\"\ndetailed_metrics = true\n"
        ));
        for r in 0..routes {
            c.push_str(&format!(
                "[[apis.routes]]\nkey = \"GET /r{r}\"\nintegration = {{ type = \"mock\" }}\n"
            ));
        }
    }
    c
}

fn per_request(c: &mut Criterion) {
    let plan = coregate::plan::load_str(&config(10, 10)).expect("bench config");
    let shard = ShardMetrics::default();
    let g = shard.layout(&plan);
    let received = Instant::now();
    let end = received + Duration::from_micros(42);
    let mut group = c.benchmark_group("metrics per request");
    group.bench_function("Instant::now (for scale)", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    group.bench_function("record: status, duration, bytes", |b| {
        b.iter(|| {
            let s = g.series(black_box(Some(37)));
            s.record(
                200,
                80,
                120,
                micros(end.saturating_duration_since(received)),
            );
        })
    });
    group.bench_function("record + integration histogram", |b| {
        let ready = received + Duration::from_micros(5);
        let head = received + Duration::from_micros(30);
        b.iter(|| {
            let s = g.series(black_box(Some(37)));
            s.record(
                200,
                80,
                120,
                micros(end.saturating_duration_since(received)),
            );
            let us = micros(head.saturating_duration_since(ready));
            s.integration.observe_us(us);
            black_box(g.target(0, 0));
        })
    });
    group.finish();
}

fn per_scrape(c: &mut Criterion) {
    let plan = coregate::plan::load_str(&config(10, 10)).expect("bench config");
    let shard = ShardMetrics::default();
    let g = shard.layout(&plan);
    for r in 0..100 {
        for status in [200, 404, 503] {
            g.series(Some(r)).record(status, 10, 10, 40 + r as u64);
        }
    }
    let mut group = c.benchmark_group("metrics per scrape (101 series)");
    group.bench_function("shard: snapshot", |b| {
        b.iter(|| black_box(shard.snapshot_series()))
    });
    let snap = |id| ShardSnapshot {
        shard: id,
        generation: 1,
        series: shard.snapshot_series(),
        ..ShardSnapshot::default()
    };
    group.bench_function("admin: merge 2 shards", |b| {
        b.iter(|| black_box(merge(vec![snap(0), snap(1)], 2)))
    });
    let merged = merge(vec![snap(0), snap(1)], 2);
    let info = Info {
        version: "bench",
        process: ProcessInfo::default(),
    };
    group.bench_function("admin: text exposition", |b| {
        b.iter(|| black_box(render(&merged, &info, false).len()))
    });
    group.finish();
}

criterion_group!(benches, per_request, per_scrape);
criterion_main!(benches);
