//! Usage plans over real sockets, against the real binary: a key's plan
//! throttles it (429 "Too Many Requests"), limits it to the plan's APIs
//! (403), and counts it against a quota (429 "Limit Exceeded") that resets
//! at the period boundary (a test clock, `COREGATE_CLOCK_FILE`) and survives
//! a restart and a `kill -9` (the SQLite store in `data_dir`). `coregate
//! usage` reads what was recorded; a damaged store stops the start-up.

mod support;

use std::path::PathBuf;
use std::time::Duration;
use support::*;

/// 2026-11-24T12:00:00Z.
const NOON: i64 = 1_795_521_600;

fn tmp_dir(tag: &str) -> PathBuf {
    let d = temp_path(tag);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_file(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Setup {
    dir: PathBuf,
    clock: PathBuf,
    gold: String,
    basic: String,
    config: String,
}

impl Setup {
    fn new(tag: &str, shards: usize, plans: &str) -> Setup {
        let dir = tmp_dir(tag);
        let keys = dir.join("keys.toml");
        let gold = create_key(&keys, "alice", Some("gold"));
        let basic = create_key(&keys, "bob", Some("basic"));
        let clock = dir.join("clock");
        std::fs::write(&clock, NOON.to_string()).unwrap();
        let config = fill(
            r#"
[server]
listen = ["127.0.0.1:0"]
shards = @SHARDS@
api_keys_file = "@KEYS@"
data_dir = "@DATA@"
usage_flush_interval_ms = 100

@PLANS@

[[apis]]
name = "pets"
base_path = "/pets"
api_key_required = true

[[apis.routes]]
key = "GET /list"
integration = { type = "mock", body = "pets" }

[[apis.routes]]
key = "POST /buy"
integration = { type = "mock", body = "bought" }

[[apis]]
name = "admin"
base_path = "/admin"
api_key_required = true

[[apis.routes]]
key = "GET /stats"
integration = { type = "mock", body = "stats" }
"#,
            &[
                ("SHARDS", shards.to_string()),
                ("KEYS", keys.display().to_string()),
                ("DATA", dir.join("data").display().to_string()),
                ("PLANS", plans.to_string()),
            ],
        );
        Setup {
            dir,
            clock,
            gold,
            basic,
            config,
        }
    }

    fn start(&self) -> Gateway {
        Gateway::start_with_env(
            &self.config,
            &[("COREGATE_CLOCK_FILE", self.clock.to_str().unwrap())],
        )
    }

    fn set_clock(&self, t: i64) {
        let tmp = self.clock.with_extension("tmp");
        std::fs::write(&tmp, t.to_string()).unwrap();
        std::fs::rename(&tmp, &self.clock).unwrap();
    }

    fn usage(&self, extra: &[&str]) -> String {
        let cfg = write_config(&self.config);
        let mut args = vec!["usage", "--config", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        // The same clock as the gateway's: "this period" and the default
        // day range follow it.
        let out = run_coregate_env(
            &args,
            &[("COREGATE_CLOCK_FILE", self.clock.to_str().unwrap())],
        );
        let _ = std::fs::remove_file(&cfg);
        assert!(out.status.success(), "usage: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn get(c: &mut Client, path: &str, key: &str) -> Response {
    c.request(format!("GET {path} HTTP/1.1\r\nHost: t\r\nx-api-key: {key}\r\n\r\n").as_bytes())
}

/// Sends `n` requests on one connection; returns the statuses.
fn statuses(g: &Gateway, path: &str, key: &str, n: usize) -> Vec<u16> {
    let mut c = g.client();
    (0..n).map(|_| get(&mut c, path, key).status).collect()
}

const PLANS: &str = r#"
[[usage_plans]]
name = "gold"
apis = ["pets"]
quota = { limit = 5, period = "DAY" }

[[usage_plans]]
name = "basic"
apis = ["pets", "admin"]
throttle = { rate = 0.5, burst = 2 }
"#;

#[test]
fn quota_is_exhausted_then_resets_at_the_day_boundary() {
    let s = Setup::new("quota-day", 1, PLANS);
    let g = s.start();
    let got = statuses(&g, "/pets/list", &s.gold, 7);
    assert_eq!(got, [200, 200, 200, 200, 200, 429, 429], "{}", g.stderr());
    let mut c = g.client();
    let r = get(&mut c, "/pets/list", &s.gold);
    assert_eq!(r.json_message().as_deref(), Some("Limit Exceeded"));
    // Another key is not affected.
    assert_eq!(get(&mut c, "/pets/list", &s.basic).status, 200);
    // Still the same day one second before midnight...
    s.set_clock(NOON + 12 * 3600 - 1);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(get(&mut c, "/pets/list", &s.gold).status, 429);
    // ...and a fresh quota after it.
    s.set_clock(NOON + 12 * 3600 + 1);
    assert!(
        wait_until(Duration::from_secs(5), || get(
            &mut c,
            "/pets/list",
            &s.gold
        )
        .status
            == 200),
        "the quota resets on the next UTC day"
    );
    let after: Vec<u16> = (0..6)
        .map(|_| get(&mut c, "/pets/list", &s.gold).status)
        .collect();
    // One 200 was spent by the wait above: 4 more, then refused.
    assert_eq!(after, [200, 200, 200, 200, 429, 429]);
}

#[test]
fn a_plan_throttles_its_keys_and_limits_them_to_its_apis() {
    let s = Setup::new("plan-throttle", 1, PLANS);
    let g = s.start();
    // gold's plan does not cover "admin": 403 before anything else.
    let mut c = g.client();
    let r = get(&mut c, "/admin/stats", &s.gold);
    assert_eq!(r.status, 403);
    assert_eq!(r.json_message().as_deref(), Some("Forbidden"));
    // basic: burst 2 at 0.5/s, one bucket per key across its APIs.
    let got: Vec<u16> = vec![
        get(&mut c, "/pets/list", &s.basic).status,
        get(&mut c, "/admin/stats", &s.basic).status,
        get(&mut c, "/pets/list", &s.basic).status,
    ];
    assert_eq!(got, [200, 200, 429]);
    let r = get(&mut c, "/pets/list", &s.basic);
    assert_eq!(r.json_message().as_deref(), Some("Too Many Requests"));
    assert_eq!(r.header("retry-after"), Some("2"));
    // gold has no throttle: unaffected by basic's bucket.
    assert_eq!(get(&mut c, "/pets/list", &s.gold).status, 200);
}

#[test]
fn a_plan_route_bucket_replaces_the_plan_bucket_on_that_route() {
    let plans = r#"
[[usage_plans]]
name = "gold"
apis = ["pets"]
throttle = { rate = 1000, burst = 1000 }

[[usage_plans.routes]]
api = "pets"
route = "POST /buy"
throttle = { rate = 0.1, burst = 1 }

[[usage_plans]]
name = "basic"
apis = ["pets"]
"#;
    let s = Setup::new("plan-route", 2, plans);
    let g = s.start();
    let mut c = g.client();
    let buy = |c: &mut Client| {
        c.request(
            format!(
                "POST /pets/buy HTTP/1.1\r\nHost: t\r\nx-api-key: {}\r\ncontent-length: 0\r\n\r\n",
                s.gold
            )
            .as_bytes(),
        )
        .status
    };
    assert_eq!(buy(&mut c), 200);
    assert_eq!(buy(&mut c), 429);
    for _ in 0..20 {
        assert_eq!(get(&mut c, "/pets/list", &s.gold).status, 200);
    }
    // basic's plan has no limits at all.
    assert!(statuses(&g, "/pets/list", &s.basic, 30)
        .iter()
        .all(|&s| s == 200));
}

#[test]
fn quota_counters_survive_a_restart_and_kill_9() {
    let plans = PLANS.replace("limit = 5,", "limit = 40,");
    let s = Setup::new("quota-durable", 2, &plans);
    let mut g = s.start();
    assert!(statuses(&g, "/pets/list", &s.gold, 10)
        .iter()
        .all(|&x| x == 200));
    // A clean stop writes everything.
    g.sigterm();
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
    drop(g);
    let out = s.usage(&[
        "--key",
        "alice",
        "--from",
        "2026-11-24",
        "--to",
        "2026-11-24",
    ]);
    assert!(
        out.contains("alice\t") && out.contains("\t2026-11-24\t10\n"),
        "{out}"
    );

    let mut g = s.start();
    assert!(statuses(&g, "/pets/list", &s.gold, 20)
        .iter()
        .all(|&x| x == 200));
    // kill -9 after more than one flush interval (100 ms): nothing lost.
    std::thread::sleep(Duration::from_millis(600));
    g.signal(libc::SIGKILL);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
    drop(g);
    let out = s.usage(&["--key", "alice"]);
    assert!(out.contains("\t2026-11-24\t30\n"), "{out}");
    assert!(
        out.contains("alice\tgold\t2026-11-24..2026-11-24\t30\t40"),
        "{out}"
    );

    // 10 left of 40 after the restart, wherever the requests land.
    let g = s.start();
    let mut ok = 0;
    for _ in 0..4 {
        ok += statuses(&g, "/pets/list", &s.gold, 5)
            .iter()
            .filter(|&&x| x == 200)
            .count();
    }
    assert_eq!(ok, 10, "{}", g.stderr());
}

#[test]
fn a_damaged_store_stops_the_start_up_and_is_left_alone() {
    let s = Setup::new("quota-damaged", 1, PLANS);
    let data = s.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("usage.sqlite3");
    std::fs::write(&file, b"not a database, but someone's usage".repeat(200)).unwrap();
    let cfg = write_config(&s.config);
    let out = run_coregate(&["serve", "--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("usage store") && err.contains(file.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"not a database, but someone's usage".repeat(200)
    );
}

#[test]
fn config_mistakes_are_reported_by_check() {
    let s = Setup::new("quota-check", 1, &PLANS.replace("\"DAY\"", "\"FORTNIGHT\""));
    let cfg = write_config(&s.config);
    let out = run_coregate(&["check", "--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("usage_plans[0].quota.period"), "{err}");
}

/// Exhausts gold's quota, checks it still holds at `before` (Unix seconds)
/// and is fresh at `after`.
fn boundary(
    plans: &str,
    tag: &str,
    first_limit: usize,
    next_limit: usize,
    before: i64,
    after: i64,
) {
    let s = Setup::new(tag, 1, plans);
    let g = s.start();
    let mut c = g.client();
    let mut got: Vec<u16> = (0..first_limit + 1)
        .map(|_| get(&mut c, "/pets/list", &s.gold).status)
        .collect();
    let mut want = vec![200; first_limit];
    want.push(429);
    assert_eq!(got, want, "{}", g.stderr());
    s.set_clock(before);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        get(&mut c, "/pets/list", &s.gold).status,
        429,
        "still the same period"
    );
    s.set_clock(after);
    assert!(
        wait_until(Duration::from_secs(5), || get(
            &mut c,
            "/pets/list",
            &s.gold
        )
        .status
            == 200),
        "a fresh quota in the next period"
    );
    got = (0..next_limit)
        .map(|_| get(&mut c, "/pets/list", &s.gold).status)
        .collect();
    want = vec![200; next_limit - 1];
    want.push(429);
    assert_eq!(got, want);
}

const DAY: i64 = 86_400;

#[test]
fn a_weekly_quota_resets_on_monday_utc() {
    // NOON is Tuesday 2026-11-24; the week ends Sunday 2026-11-29.
    let plans = PLANS.replace("period = \"DAY\"", "period = \"WEEK\"");
    boundary(
        &plans,
        "quota-week",
        5,
        5,
        NOON + 5 * DAY + DAY / 2 - 1,
        NOON + 5 * DAY + DAY / 2 + 1,
    );
}

#[test]
fn a_monthly_quota_resets_on_the_first() {
    let plans = PLANS.replace("period = \"DAY\"", "period = \"MONTH\"");
    boundary(
        &plans,
        "quota-month",
        5,
        5,
        NOON + 6 * DAY + DAY / 2 - 1,
        NOON + 6 * DAY + DAY / 2 + 1,
    );
}

#[test]
fn the_offset_only_shrinks_the_first_period() {
    let plans = PLANS.replace(
        "limit = 5, period = \"DAY\"",
        "limit = 5, period = \"DAY\", offset = 2",
    );
    boundary(
        &plans,
        "quota-offset",
        3,
        5,
        NOON + DAY / 2 - 1,
        NOON + DAY / 2 + 1,
    );
}

// === no refusal while quota remains ===

/// One request of [`concurrent`]: its status, when it was sent and when its
/// answer was read.
#[derive(Debug, Clone, Copy)]
struct Sent {
    status: u16,
    sent: std::time::Instant,
    answered: std::time::Instant,
}

/// Runs `clients` keep-alive connections at once, each sending up to
/// `each` requests back to back, and stopping at its first refusal when
/// `until_refused`; returns every request, per client.
fn concurrent(
    g: &Gateway,
    key: &str,
    clients: usize,
    each: usize,
    until_refused: bool,
) -> Vec<Vec<Sent>> {
    let addr = g.addr();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let key = key.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                barrier.wait();
                let mut got = Vec::new();
                for _ in 0..each {
                    let sent = std::time::Instant::now();
                    let status = get(&mut c, "/pets/list", &key).status;
                    let answered = std::time::Instant::now();
                    got.push(Sent {
                        status,
                        sent,
                        answered,
                    });
                    if until_refused && status != 200 {
                        break;
                    }
                }
                got
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

fn statuses_of(got: &[Vec<Sent>]) -> Vec<Vec<u16>> {
    got.iter()
        .map(|c| c.iter().map(|r| r.status).collect())
        .collect()
}

#[test]
fn a_fresh_key_is_never_refused_while_its_quota_remains() {
    // The report: a fresh key on a 40-per-day plan, 4 keep-alive clients
    // sending 6 requests each at a fresh 2-shard gateway; 1-3 of the 24 were
    // refused "Limit Exceeded" (the shard that ran out waited 100 ms while
    // the other held the leases). 24 < 40: every one must be admitted. Each
    // round is a new gateway over a new store.
    let plans = PLANS.replace("limit = 5,", "limit = 40,");
    for round in 0..50 {
        let s = Setup::new(&format!("quota-fresh-{round}"), 2, &plans);
        let g = s.start();
        let got = concurrent(&g, &s.gold, 4, 6, false);
        assert!(
            got.iter().flatten().all(|r| r.status == 200),
            "round {round}: {:?}\n{}",
            statuses_of(&got),
            g.stderr()
        );
    }
}

#[test]
fn concurrent_clients_are_refused_only_once_the_quota_is_spent() {
    // More demand than quota, at once, over both shards; each client stops
    // at its first refusal. Exactly the limit is admitted, every client
    // ends on "Limit Exceeded", and no request is admitted that was sent
    // after some client had been refused (that refusal came while quota
    // remained).
    let plans = PLANS.replace("limit = 5,", "limit = 40,");
    for round in 0..20 {
        let s = Setup::new(&format!("quota-exact-{round}"), 2, &plans);
        let g = s.start();
        let got = concurrent(&g, &s.gold, 4, 41, true);
        let all: Vec<Sent> = got.iter().flatten().copied().collect();
        let ok = all.iter().filter(|r| r.status == 200).count();
        assert_eq!(ok, 40, "round {round}: {:?}", statuses_of(&got));
        assert!(
            got.iter()
                .all(|c| c.last().is_some_and(|r| r.status == 429)),
            "round {round}: {:?}",
            statuses_of(&got)
        );
        let first_refusal = all
            .iter()
            .filter(|r| r.status != 200)
            .map(|r| r.answered)
            .min();
        let late = all
            .iter()
            .filter(|r| r.status == 200 && first_refusal.is_some_and(|t| r.sent > t))
            .count();
        assert_eq!(
            late,
            0,
            "round {round}: {late} admitted after a refusal: {:?}",
            statuses_of(&got)
        );
        let mut c = g.client();
        let r = get(&mut c, "/pets/list", &s.gold);
        assert_eq!(r.json_message().as_deref(), Some("Limit Exceeded"));
    }
}

#[test]
fn an_idle_gateway_with_usage_plans_sleeps_and_its_quota_still_holds_across_shards() {
    // Before, each shard's usage reconciler ran every 10 ms whatever
    // happened: 100 wakes a second per shard. Now it sleeps with nothing
    // to report or take in, until a request or the coordinator wakes it.
    // PLANS without basic's throttle, so that the switches counted are the
    // usage reconciler's (tests/throttle.rs counts the throttle's).
    let quota_only = PLANS.replace("throttle = { rate = 0.5, burst = 2 }\n", "");
    assert!(!quota_only.contains("throttle"), "{quota_only}");
    const SHARDS: usize = 2;
    let s = Setup::new("idle", SHARDS, &quota_only);
    let g = s.start();
    // Both shards spend some of gold's 5: each holds a lease from the start.
    let first: Vec<u16> = (0..2)
        .map(|_| get(&mut g.client(), "/pets/list", &s.gold).status)
        .collect();
    assert_eq!(first, [200, 200], "{}", g.stderr());
    // Let the demand fade and every reconciler go to sleep.
    let idle = Duration::from_secs(3);
    let shards = idle_shard_switches(g.pid(), Duration::from_millis(1500), idle);
    // What is left: the reconciler's 1 s look at the date, the pool sweep
    // and the dashboard sample, a few switches each. Before: 300 or more.
    assert!(
        shards <= 25 * SHARDS as u64,
        "shards woke {shards} times in {idle:?}"
    );
    // The quota still holds exactly, across shards: a shard whose lease
    // ran out has the sleeping shard's lease recalled (the coordinator
    // wakes it), and the sixth request on is refused.
    let rest: Vec<u16> = (0..8)
        .map(|_| get(&mut g.client(), "/pets/list", &s.gold).status)
        .collect();
    assert_eq!(
        rest.iter().filter(|&&c| c == 200).count(),
        3,
        "{rest:?}\n{}",
        g.stderr()
    );
    assert!(
        rest.iter().all(|&c| c == 200 || c == 429),
        "{rest:?}\n{}",
        g.stderr()
    );
}
