//! Bucket arithmetic: refill, leases, recalls, and the all-or-nothing check.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (configs, heads, links), so a failure is a
//! failing test; nothing a client or a config file controls reaches them.

use super::bucket::RECALL_GAP;
use super::*;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A report: spent, advanced, returned, want, busy (busy shards short of
/// tokens have refused requests: starving).
fn t(spent: u32, advanced: u32, returned: u32, want: u32, busy: bool) -> Tally {
    Tally {
        spent,
        advanced,
        returned,
        want,
        busy,
        starving: busy,
    }
}

#[test]
fn a_new_bucket_is_full_and_refills_only_up_to_its_burst() {
    let t0 = Instant::now();
    let mut g = Global::new(100.0, 10, 1, t0);
    assert_eq!(g.level(), 10.0);
    g.refill(t0 + ms(1000));
    assert_eq!(g.level(), 10.0, "a full bucket stays at its burst");
}

#[test]
fn refill_counts_tokens_the_shards_hold_against_the_burst() {
    let t0 = Instant::now();
    let mut g = Global::new(100.0, 10, 2, t0);
    // Both shards took their initial share (5 each) in advance.
    g.apply(t0, 0, &t(0, 5, 0, 0, false));
    g.apply(t0, 1, &t(0, 5, 0, 0, false));
    assert_eq!(g.level(), 0.0);
    g.refill(t0 + ms(1000));
    assert_eq!(g.level(), 0.0, "the shards hold the whole burst already");
    // Shard 0 spends 3: 3 tokens of room, refilled at 100/s.
    g.apply(t0 + ms(1000), 0, &t(3, 0, 0, 0, false));
    g.refill(t0 + ms(1010));
    assert!(
        (g.level() - 1.0).abs() < 1e-9,
        "10 ms at 100/s: {}",
        g.level()
    );
    g.refill(t0 + ms(2000));
    assert_eq!(g.level(), 3.0);
}

#[test]
fn a_shard_short_of_tokens_gets_leases_as_they_accrue() {
    let t0 = Instant::now();
    let mut g = Global::new(200.0, 4, 1, t0);
    g.apply(t0, 0, &t(4, 4, 0, 10, true)); // took 4 in advance, spent them, wants 10
    let out = g.distribute(t0);
    assert!(out.grants.is_empty(), "{out:?}");
    let retry = out.retry_at.expect("short: a retry time");
    assert!(retry >= t0 + ms(1), "{retry:?}");
    let out = g.distribute(t0 + ms(10)); // 2 tokens earned
    assert_eq!(out.grants.as_slice(), &[(0, 2)]);
    assert_eq!(g.outstanding(0), 2);
    assert!(g.level() < 1.0);
}

#[test]
fn scarce_tokens_rotate_between_shards() {
    let t0 = Instant::now();
    let mut g = Global::new(100.0, 2, 2, t0);
    g.apply(t0, 0, &t(1, 1, 0, 5, true));
    g.apply(t0, 1, &t(1, 1, 0, 5, true));
    let mut got = [0u32; 2];
    for i in 1..=20 {
        let out = g.distribute(t0 + ms(10 * i)); // one token each time
        for (s, n) in out.grants {
            got[s] += n;
            g.apply(t0 + ms(10 * i), s, &t(n, 0, 0, 5, true)); // spent at once
        }
    }
    assert_eq!(got[0] + got[1], 20, "{got:?}");
    assert!(got[0] >= 8 && got[1] >= 8, "unfair: {got:?}");
}

#[test]
fn idle_shards_are_recalled_when_another_is_short_and_not_topped_up_again() {
    let t0 = Instant::now();
    let mut g = Global::new(100.0, 100, 2, t0);
    g.apply(t0, 0, &t(50, 50, 0, 20, true)); // shard 0 busy, spent its share
    g.apply(t0, 1, &t(0, 50, 0, 0, false)); // shard 1 idle, holding 50
    let out = g.distribute(t0);
    assert_eq!(out.recalls.as_slice(), &[1], "{out:?}");
    // Shard 1 gives its 50 back.
    g.apply(t0, 1, &t(0, 0, 50, 0, false));
    let out = g.distribute(t0 + ms(1));
    assert_eq!(out.grants.as_slice(), &[(0, 20)], "{out:?}");
    assert_eq!(g.outstanding(1), 0, "no top-up right after a shortage");
}

#[test]
fn recalls_are_spaced() {
    let t0 = Instant::now();
    let mut g = Global::new(10.0, 10, 2, t0);
    g.apply(t0, 0, &t(5, 5, 0, 10, true));
    g.apply(t0, 1, &t(0, 5, 0, 0, false));
    assert_eq!(g.distribute(t0).recalls.len(), 1);
    assert!(g.distribute(t0 + ms(1)).recalls.is_empty());
    assert_eq!(g.distribute(t0 + RECALL_GAP + ms(1)).recalls.len(), 1);
}

#[test]
fn calm_buckets_top_idle_shards_up_to_their_share() {
    let t0 = Instant::now();
    let mut g = Global::new(100.0, 10, 2, t0);
    g.apply(t0, 0, &t(5, 5, 0, 0, false)); // spent its share, now idle
    g.apply(t0, 1, &t(0, 5, 0, 0, false));
    let out = g.distribute(t0 + ms(1000));
    assert_eq!(out.grants.as_slice(), &[(0, 5)], "{out:?}");
    assert_eq!(g.level(), 0.0);
}

#[test]
fn tokens_are_conserved_over_a_long_simulation() {
    // Shards spend whatever they get; over 10 s at 200/s with burst 50 the
    // process admits 50 + 2000 (less the leases still in flight).
    let t0 = Instant::now();
    let shards = 3;
    let mut g = Global::new(200.0, 50, shards, t0);
    let share = initial_share(50, shards);
    let mut admitted = 0u64;
    for s in 0..shards {
        g.apply(t0, s, &t(share, share, 0, 5, true));
        admitted += share as u64;
    }
    for tick in 1..=5000u64 {
        let now = t0 + ms(2 * tick);
        for (s, n) in g.distribute(now).grants {
            admitted += n as u64;
            g.apply(now, s, &t(n, 0, 0, 5, true));
        }
    }
    let expected = 50 + 200 * 10;
    assert!(
        admitted <= expected && admitted + 2 >= expected,
        "admitted {admitted}, exact bucket {expected}"
    );
}

#[test]
fn initial_share_is_at_least_one_token() {
    assert_eq!(initial_share(100, 2), 50);
    assert_eq!(initial_share(1, 4), 1);
    assert_eq!(initial_share(7, 0), 7);
}

fn compile(toml: &str) -> Result<crate::plan::Plan, Vec<crate::config::ConfigError>> {
    crate::plan::load_str(toml)
}

const ROUTES: &str = r#"
[[apis]]
name = "a"
@API@
[[apis.routes]]
key = "GET /x"
integration = { type = "mock" }
@ROUTE@
[[apis.routes]]
key = "GET /y"
integration = { type = "mock" }
"#;

fn config(server: &str, api: &str, route: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n{}",
        ROUTES.replace("@API@", api).replace("@ROUTE@", route)
    )
}

fn errors_of(toml: &str) -> Vec<String> {
    match compile(toml) {
        Ok(_) => Vec::new(),
        Err(es) => es
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect(),
    }
}

#[test]
fn limits_compile_in_checking_order() {
    let plan = compile(&config(
        "throttle = { rate = 1000, burst = 2000, per_client_ip = { rate = 5, burst = 10 } }",
        "throttle = { rate = 100.5, burst = 200 }",
        "throttle = { rate = 10, burst = 20 }",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let defs = &plan.policies.throttle.defs;
    let order = |route: usize| -> Vec<(Level, bool, f64)> {
        plan.routes[route]
            .policies
            .throttle
            .ids()
            .map(|i| {
                let d = &defs[i as usize];
                (d.level, d.per_client_ip, d.rate)
            })
            .collect()
    };
    assert_eq!(
        order(0),
        vec![
            (Level::Route, false, 10.0),
            (Level::Api, false, 100.5),
            (Level::Server, false, 1000.0),
            (Level::Server, true, 5.0)
        ]
    );
    // The API's bucket is one bucket shared by its routes.
    assert_eq!(order(1).len(), 3);
    assert_eq!(defs.len(), 4);
    assert!(!plan.routes[1].policies.throttle.is_empty());
}

#[test]
fn a_server_limit_alone_applies_to_every_route() {
    let plan = compile(&config("throttle = { rate = 1, burst = 1 }", "", ""))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!plan.routes[0].policies.throttle.is_empty());
    let plan = compile(&config("", "", "")).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(plan.routes[0].policies.throttle.is_empty());
}

#[test]
fn retry_after_is_the_time_for_one_token() {
    let d = BucketDef::new(Level::Route, "k".into(), 0.25, 1, false);
    assert_eq!(d.retry_after, 4);
    let d = BucketDef::new(Level::Route, "k".into(), 500.0, 1, false);
    assert_eq!(d.retry_after, 1);
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let cases = [
        (
            config("throttle = { rate = 0, burst = 1 }", "", ""),
            "server.throttle.rate: 0 is not a valid rate",
        ),
        (
            config("", "throttle = { rate = -3, burst = 1 }", ""),
            "apis[0].throttle.rate: -3 is not a valid rate",
        ),
        (
            config("", "", "throttle = { rate = 1, burst = 0 }"),
            "apis[0].routes[0].throttle.burst: 0 is not a valid burst",
        ),
        (
            config("", "", "throttle = { rate = 1e12, burst = 5 }"),
            "apis[0].routes[0].throttle.rate: 1000000000000 is not a valid rate",
        ),
        (
            config("", "", "throttle = { rate = nan, burst = 5 }"),
            "apis[0].routes[0].throttle.rate: NaN is not a valid rate",
        ),
        (
            config("throttle = { rate = 1 }", "", ""),
            "server.throttle.burst: is missing",
        ),
        (
            config("throttle = { burst = 1 }", "", ""),
            "server.throttle.rate: is missing",
        ),
        (config("throttle = {}", "", ""), "server.throttle: is empty"),
        (
            config(
                "",
                "throttle = { per_client_ip = { rate = 1, burst = 0 } }",
                "",
            ),
            "apis[0].throttle.per_client_ip.burst: 0 is not a valid burst",
        ),
        (
            config("", "throttle = { per_client_ip = {} }", ""),
            "apis[0].throttle.per_client_ip: needs `rate` and `burst`",
        ),
        (
            config("", "", "throttle = { rate = 1, burst = 1000000000 }"),
            "apis[0].routes[0].throttle.burst: 1000000000 is not a valid burst",
        ),
    ];
    for (toml, want) in cases {
        let errs = errors_of(&toml);
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "expected {want:?} in {errs:?}\n{toml}"
        );
    }
}

#[test]
fn unknown_keys_in_a_throttle_are_reported() {
    let errs = errors_of(&config(
        "throttle = { rate = 1, burst = 1, brust = 2 }",
        "",
        "",
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("server.throttle") && e.contains("brust")),
        "{errs:?}"
    );
}

#[test]
fn a_request_refused_by_one_level_spends_no_token_of_another() {
    let plan = compile(&config(
        "",
        "throttle = { rate = 0.001, burst = 1 }",
        "throttle = { rate = 0.001, burst = 3 }",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let link = links(&ThrottlePlan::default(), 1).pop().expect("one link");
    let t = ShardThrottle::new(&plan.policies.throttle, 0, link);
    let limits = &plan.routes[0].policies.throttle;
    let buf = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let head = crate::http::parse::parse_request_head(
        buf,
        &crate::http::parse::HeadLimits {
            max_request_line: 8192,
            max_head: 16384,
            max_headers: 100,
        },
    )
    .ok()
    .and_then(|r| r)
    .expect("a head");
    let view = RequestView {
        buf,
        head: &head,
        peer: "127.0.0.1:1".parse().expect("addr"),
        route: Some(0),
        now: Instant::now(),
        client_cert_subject: None,
    };
    let mut extra = Vec::new();
    assert!(matches!(
        t.check(limits, None, &view, &mut extra),
        Decision::Continue
    ));
    // The API's only token is gone: refused, and the route keeps its 2.
    for _ in 0..3 {
        match t.check(limits, None, &view, &mut extra) {
            Decision::Respond(r) => {
                assert_eq!(r.status, 429);
                assert_eq!(r.message, "Too Many Requests");
                assert_eq!(r.headers, b"retry-after: 1000\r\n");
            }
            other => panic!("admitted past the API's burst: {other:?}"),
        }
    }
    // One shard: the buckets are kept exactly on it (all checks ran at
    // the same `now`, so nothing came back).
    assert_eq!(t.inner.fixed.borrow()[0].tokens, 2.0);
    assert_eq!(t.inner.fixed.borrow()[1].tokens, 0.0);
}

#[test]
fn a_report_after_a_full_spell_earns_no_refill_for_it() {
    // Regression (rate 1, burst 1: "200 200" 0.2 s apart): the bucket sat
    // full for 4 s; the shard's report of its advance and spending was
    // applied first and the refill after it credited those 4 s against
    // the emptied bucket: a second token at once.
    let t0 = Instant::now();
    let mut g = Global::new(1.0, 1, 1, t0);
    g.apply(t0 + ms(4000), 0, &t(1, 1, 0, 1, true));
    assert!(g.level() < 1e-9, "level {}", g.level());
    let out = g.distribute(t0 + ms(4200));
    assert!(out.grants.is_empty(), "{out:?}");
}

#[test]
fn fixed_buckets_count_the_shards_initial_shares_from_the_start() {
    // Each shard holds its share from start-up: none of it is in the pool,
    // so a shard asking for more before the other reported gets nothing
    // that does not exist.
    let t0 = Instant::now();
    let mut g = Global::with_shares(0.001, 10, 2, t0);
    assert_eq!(g.level(), 0.0);
    assert_eq!((g.outstanding(0), g.outstanding(1)), (5, 5));
    g.apply(t0, 0, &t(5, 0, 0, 10, true));
    assert!(g.distribute(t0 + ms(10)).grants.is_empty());
}

#[test]
fn idle_shards_get_their_share_back_without_a_report() {
    // Regression (rate 1, burst 1, one shard: the first request after 4 s
    // idle was refused): the shard spent its token and went quiet; nothing
    // made the coordinator look at the bucket again, so the token that
    // came back stayed in the pool.
    let t0 = Instant::now();
    let mut g = Global::with_shares(1.0, 2, 2, t0);
    g.apply(t0, 0, &t(1, 0, 0, 0, false)); // spent its token, idle now
    let out = g.distribute(t0);
    let at = out.retry_at.expect("to look again when a token is back");
    assert!(at <= t0 + ms(1100), "{at:?}");
    let out = g.distribute(at.max(t0 + ms(1000)));
    assert_eq!(out.grants.as_slice(), &[(0, 1)], "{out:?}");
}

#[test]
fn idle_shards_keep_their_share_until_a_request_is_refused() {
    // Regression (rate 1, burst 2 on two shards, requests alternating:
    // four 429s after idle): a shard that spent its only token forecast
    // demand, the idle shard's token was recalled to it, and the idle
    // shard's own next request found nothing. A recall now needs a shard
    // that refused requests.
    let t0 = Instant::now();
    let mut g = Global::with_shares(1.0, 2, 2, t0);
    let forecast = Tally {
        starving: false,
        ..t(1, 0, 0, 2, true)
    };
    g.apply(t0, 0, &forecast);
    assert!(g.distribute(t0).recalls.is_empty());
    let refused = Tally {
        spent: 0,
        ..t(0, 0, 0, 2, true)
    };
    g.apply(t0 + ms(200), 0, &refused);
    assert_eq!(g.distribute(t0 + ms(200)).recalls.as_slice(), &[1]);
}
