//! The dashboard: a page inside the binary ([`PAGE`], no outside assets)
//! that polls `/dashboard/data` once a second, and the sampler thread that
//! answers it. The sampler scrapes the shards every second and keeps the
//! last ten minutes of requests per second, p50 and p99 latency and error
//! rates (from the difference of two consecutive scrapes; latency
//! quantiles are interpolated inside histogram buckets, as PromQL's
//! `histogram_quantile` does), and the last minute of each series for the
//! tables.

use super::Context;
use crate::observe::hist::HistSnapshot;
use crate::observe::snapshot::{Merged, SeriesSnapshot};
use crate::observe::usage_report::{top_keys, KeyUse};
use crate::policy::usage::clock::format_day;
use crate::policy::usage::UsagePlans;
use crate::runtime::MainRequest;
use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// The page, served as is.
pub const PAGE: &str = include_str!("dashboard.html");

/// How often the sampler scrapes.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Points of history kept: ten minutes at one a second.
pub const HISTORY_POINTS: usize = 600;
/// The tables' recent figures cover this many seconds.
pub const WINDOW_SECS: f64 = 60.0;

/// A connection thread's request for the dashboard's data.
pub struct DataRequest {
    reply: Sender<String>,
}

/// Asks the sampler for the dashboard's JSON.
pub(super) fn request_data(tx: &Sender<DataRequest>) -> Option<String> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    tx.send(DataRequest { reply }).ok()?;
    answer.recv_timeout(super::SCRAPE_TIMEOUT * 3).ok()
}

/// A series' labels: API, route, and stage and deployment (APIs with
/// stages have a series per stage and per canary).
type Key = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn key_of(s: &SeriesSnapshot) -> Key {
    (
        s.api.clone(),
        s.route.clone(),
        s.stage.clone(),
        s.deployment.clone(),
    )
}

/// Cumulative figures at one scrape.
#[derive(Debug, Clone, Default)]
struct Totals {
    t: f64,
    requests: u64,
    c4xx: u64,
    c5xx: u64,
    duration: HistSnapshot,
    series: Vec<(Key, u64, u64, u64, HistSnapshot)>,
}

fn totals(m: &Merged, t: f64) -> Totals {
    let mut out = Totals {
        t,
        ..Totals::default()
    };
    for s in &m.series {
        let (n, c4, c5) = (
            s.requests(),
            s.requests_of_class("4xx"),
            s.requests_of_class("5xx"),
        );
        out.requests += n;
        out.c4xx += c4;
        out.c5xx += c5;
        out.duration.add(&s.duration);
        out.series.push((key_of(s), n, c4, c5, s.duration));
    }
    out
}

/// One point of the charts.
#[derive(Debug, Clone, Copy)]
struct Point {
    t: f64,
    rps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Fractions of the interval's requests.
    err4xx: f64,
    err5xx: f64,
}

#[derive(Default)]
struct History {
    points: VecDeque<Point>,
    /// Scrapes of the last WINDOW_SECS, and one older as the baseline.
    window: VecDeque<Totals>,
}

fn ms(q: Option<f64>) -> Option<f64> {
    q.map(|s| (s * 1e6).round() / 1e3)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl History {
    fn push(&mut self, now: Totals) {
        if let Some(prev) = self.window.back() {
            let dt = (now.t - prev.t).max(1e-3);
            let n = now.requests.saturating_sub(prev.requests);
            let d = now.duration.since(&prev.duration);
            self.points.push_back(Point {
                t: now.t,
                rps: n as f64 / dt,
                p50_ms: ms(d.quantile(0.5)),
                p99_ms: ms(d.quantile(0.99)),
                err4xx: ratio(now.c4xx.saturating_sub(prev.c4xx), n),
                err5xx: ratio(now.c5xx.saturating_sub(prev.c5xx), n),
            });
            if self.points.len() > HISTORY_POINTS {
                self.points.pop_front();
            }
        }
        self.window.push_back(now);
        while self.window.len() > 2
            && self.window[1].t <= self.window.back().map_or(0.0, |b| b.t) - WINDOW_SECS
        {
            self.window.pop_front();
        }
    }

    fn json(&self, m: &Merged, ctx: &Context, now: f64, keys: Value) -> Value {
        let fresh = totals(m, now);
        let base = self.window.front();
        let span = base.map_or(0.0, |b| now - b.t);
        // A series' figures as of `base`: requests, 4xx, 5xx, latencies.
        let base_of = |key: &Key| {
            base.and_then(|b| b.series.iter().find(|s| &s.0 == key))
                .map(|s| (s.1, s.2, s.3, s.4))
                .unwrap_or_default()
        };
        // Per API: its routes added up (an API with detailed metrics has
        // one series per route; the others have one).
        let mut apis: Vec<(Option<String>, SeriesSnapshot, Totals)> = Vec::new();
        for x in &m.series {
            let i = match apis.iter().position(|(a, _, _)| *a == x.api) {
                Some(i) => i,
                None => {
                    let empty = SeriesSnapshot {
                        api: x.api.clone(),
                        ..SeriesSnapshot::default()
                    };
                    apis.push((x.api.clone(), empty, Totals::default()));
                    apis.len() - 1
                }
            };
            apis[i].1.add(x);
            if let Some(b) = base.and_then(|b| b.series.iter().find(|s| s.0 == key_of(x))) {
                let t = &mut apis[i].2;
                t.requests += b.1;
                t.c4xx += b.2;
                t.c5xx += b.3;
                t.duration.add(&b.4);
            }
        }
        let apis: Vec<Value> = apis
            .iter()
            .map(|(api, s, b)| {
                let mut row = row(s, (b.requests, b.c4xx, b.c5xx, &b.duration), span);
                row.insert("api".into(), json!(api));
                Value::Object(row)
            })
            .collect();
        let series: Vec<Value> = m
            .series
            .iter()
            .map(|s| {
                let (bn, b4, b5, bh) = base_of(&key_of(s));
                let mut row = row(s, (bn, b4, b5, &bh), span);
                row.insert("api".into(), json!(s.api));
                row.insert("route".into(), json!(s.route));
                Value::Object(row)
            })
            .collect();
        let upstreams: Vec<Value> = m
            .targets
            .iter()
            .map(|t| {
                json!({
                    "upstream": t.t.upstream,
                    "target": t.t.target,
                    "up": t.cooling_shards == 0,
                    "cooling_shards": t.cooling_shards,
                    "in_flight": t.t.in_flight,
                    "idle": t.t.idle,
                    "connects": t.t.connects,
                    "connect_failures": t.t.connect_failures,
                    "reuses": t.t.reuses,
                    "responses": t.t.response.count(),
                    "p50_ms": ms(t.t.response.quantile(0.5)),
                    "p99_ms": ms(t.t.response.quantile(0.99)),
                })
            })
            .collect();
        let shards: Vec<Value> = m
            .shards
            .iter()
            .map(|(id, c)| {
                json!({
                    "shard": id,
                    "open": c.open,
                    "idle": c.idle,
                    "parked": c.parked,
                    "tls_open": c.tls_open,
                    "accepted": c.accepted,
                    "accepted_tls": c.accepted_tls,
                    "tls_failures": c.tls_failures,
                })
            })
            .collect();
        let history: Vec<Value> = self
            .points
            .iter()
            .map(|p| {
                json!({
                    "t": p.t,
                    "rps": p.rps,
                    "p50_ms": p.p50_ms,
                    "p99_ms": p.p99_ms,
                    "err4xx": p.err4xx,
                    "err5xx": p.err5xx,
                })
            })
            .collect();
        let process = crate::observe::process::read(ctx.started);
        let b = base.cloned().unwrap_or_default();
        let dn = fresh.requests.saturating_sub(b.requests);
        let d = fresh.duration.since(&b.duration);
        json!({
            "version": ctx.version,
            "now": now,
            "started": process.start_time,
            "generation": m.generation,
            "shards_expected": m.shards_expected,
            "totals": {
                "requests": fresh.requests,
                "s4xx": fresh.c4xx,
                "s5xx": fresh.c5xx,
                "p50_ms": ms(fresh.duration.quantile(0.5)),
                "p99_ms": ms(fresh.duration.quantile(0.99)),
                "recent": {
                    "requests": dn,
                    "rps": if span > 0.0 { dn as f64 / span } else { 0.0 },
                    "err4xx": ratio(fresh.c4xx.saturating_sub(b.c4xx), dn),
                    "err5xx": ratio(fresh.c5xx.saturating_sub(b.c5xx), dn),
                    "p50_ms": ms(d.quantile(0.5)),
                    "p99_ms": ms(d.quantile(0.99)),
                },
            },
            "history": history,
            "apis": apis,
            "series": series,
            "upstreams": upstreams,
            "shards": shards,
            "keys": keys,
            "process": {
                "resident_bytes": process.resident_bytes,
                "open_fds": process.open_fds,
                "cpu_seconds": process.cpu_seconds,
                "threads": process.threads,
            },
        })
    }
}

fn epoch_now() -> f64 {
    crate::observe::process::epoch_seconds(SystemTime::now())
}

/// The sampler thread: a scrape every [`SAMPLE_EVERY`], and the
/// dashboard's data on request. Ends when every sender of `requests` is
/// gone.
pub(super) fn sampler(ctx: &Context, requests: Receiver<DataRequest>) {
    let ticker = crossbeam_channel::tick(SAMPLE_EVERY);
    let mut history = History::default();
    let mut usage = UsageCache::default();
    history.push(totals(&super::scrape(&ctx.inboxes), epoch_now()));
    loop {
        crossbeam_channel::select! {
            recv(ticker) -> _ => {
                let m = super::scrape(&ctx.inboxes);
                history.push(totals(&m, epoch_now()));
            }
            recv(requests) -> req => {
                let Ok(req) = req else { return };
                let m = super::scrape(&ctx.inboxes);
                let keys = usage.keys(ctx, m.generation);
                let body = history.json(&m, ctx, epoch_now(), keys).to_string();
                let _ = req.reply.send(body);
            }
        }
    }
}

/// Keys shown in the dashboard's key table.
pub const TOP_KEYS: usize = 20;
/// The running config's usage plans are asked for again after this long
/// even when the generation did not change (keys may change without one).
const USAGE_PLANS_TTL: Duration = Duration::from_secs(5);

/// The running config's keys and usage plans, asked of the main thread
/// when the generation changes or the copy is older than
/// [`USAGE_PLANS_TTL`], rather than at every poll.
#[derive(Default)]
struct UsageCache {
    plans: Option<(u64, std::time::Instant, UsagePlans)>,
}

impl UsageCache {
    /// The dashboard's `keys` object: `recorded` (whether the config
    /// records usage), the top keys, or the error reading the store.
    fn keys(&mut self, ctx: &Context, generation: u64) -> Value {
        let fresh = |p: &(u64, std::time::Instant, UsagePlans)| {
            p.0 == generation && p.1.elapsed() < USAGE_PLANS_TTL
        };
        if !self.plans.as_ref().is_some_and(fresh) {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let asked = ctx.main.send(MainRequest::Running { reply: tx }).is_ok();
            match asked
                .then(|| rx.recv_timeout(USAGE_PLANS_TTL).ok())
                .flatten()
            {
                Some(r) => {
                    self.plans = Some((
                        r.generation,
                        std::time::Instant::now(),
                        r.plan.policies.usage,
                    ))
                }
                None => return json!({ "recorded": false, "error": "the gateway did not answer" }),
            }
        }
        let Some((_, _, plans)) = &self.plans else {
            return json!({ "recorded": false });
        };
        match top_keys(plans, TOP_KEYS) {
            Ok(None) => json!({ "recorded": false, "keys": plans.key_names.len() }),
            Ok(Some(top)) => json!({
                "recorded": true,
                "keys": plans.key_names.len(),
                "top": top.iter().map(key_json).collect::<Vec<_>>(),
            }),
            Err(e) => json!({ "recorded": true, "error": e }),
        }
    }
}

fn key_json(k: &KeyUse) -> Value {
    json!({
        "key": k.key,
        "plan": k.plan,
        "today": k.today,
        "quota": k.quota.as_ref().map(|q| json!({
            "period": format!("{}..{}", format_day(q.start), format_day(q.end - 1)),
            "used": q.used,
            "limit": q.limit,
            "left": q.limit.saturating_sub(q.used),
        })),
    })
}

/// One row of the API or route table: `s`'s totals, and what changed
/// since `base` (requests, 4xx, 5xx, latencies then) over `span` seconds.
fn row(
    s: &SeriesSnapshot,
    base: (u64, u64, u64, &HistSnapshot),
    span: f64,
) -> serde_json::Map<String, Value> {
    let (bn, b4, b5, bh) = base;
    let (n, c4, c5) = (
        s.requests(),
        s.requests_of_class("4xx"),
        s.requests_of_class("5xx"),
    );
    let d = s.duration.since(bh);
    let dn = n.saturating_sub(bn);
    let v = json!({
        "requests": n,
        "s2xx": s.requests_of_class("2xx"),
        "s4xx": c4,
        "s5xx": c5,
        "p50_ms": ms(s.duration.quantile(0.5)),
        "p99_ms": ms(s.duration.quantile(0.99)),
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "cache_hits": s.cache_hits,
        "cache_misses": s.cache_misses,
        "throttled": s.throttled,
        "quota_exceeded": s.quota_exceeded,
        "recent": {
            "requests": dn,
            "rps": if span > 0.0 { dn as f64 / span } else { 0.0 },
            "err4xx": ratio(c4.saturating_sub(b4), dn),
            "err5xx": ratio(c5.saturating_sub(b5), dn),
            "p50_ms": ms(d.quantile(0.5)),
            "p99_ms": ms(d.quantile(0.99)),
        },
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    // Test code only: every `unwrap()`/`expect()` here is on a fixture the
    // test builds itself, so a failure is a failing test; nothing a client
    // or a config file controls reaches them.
    use super::*;
    use crate::observe::snapshot::{SeriesSnapshot, StatusLabel};

    fn merged(ok: u64, err: u64) -> Merged {
        let mut duration = HistSnapshot::default();
        duration.counts[2] = ok + err;
        Merged {
            series: vec![SeriesSnapshot {
                api: Some("a".into()),
                statuses: vec![(StatusLabel::Code(200), ok), (StatusLabel::Code(503), err)],
                duration,
                ..SeriesSnapshot::default()
            }],
            ..Merged::default()
        }
    }

    #[test]
    fn points_are_rates_between_two_scrapes() {
        let mut h = History::default();
        h.push(totals(&merged(10, 0), 100.0));
        h.push(totals(&merged(30, 20), 102.0));
        let p = h.points.back().copied().unwrap();
        assert_eq!(p.rps, 20.0);
        assert_eq!(p.err5xx, 0.5);
        assert_eq!(p.err4xx, 0.0);
        assert!(p.p50_ms.is_some_and(|v| v > 0.05 && v <= 0.1), "{p:?}");
    }

    #[test]
    fn the_window_keeps_one_baseline_older_than_a_minute() {
        let mut h = History::default();
        for i in 0..200 {
            h.push(totals(&merged(i, 0), f64::from(i as u32)));
        }
        assert!(h.window.front().is_some_and(|b| b.t <= 199.0 - WINDOW_SECS));
        assert!(h.window.len() <= 62, "{}", h.window.len());
        assert_eq!(h.points.len(), 199);
    }
}
