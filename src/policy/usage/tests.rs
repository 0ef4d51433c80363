//! Usage plans: calendar arithmetic, config compile, the store, and the
//! shard/coordinator lease exchange driven by hand.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (configs, keys, temp files, vectors), so a
//! failure is a failing test; nothing a client or an operator's config
//! controls reaches them.

use super::clock::{civil_from_days, days_from_civil, format_day, parse_day, Period};
use super::coordinator;
use super::shard::{QuotaCheck, ShardUsage};
use super::store::Store;
use super::Coverage;
use crate::plan::load_str;

#[test]
fn civil_dates_round_trip() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    for d in [-800_000, -1, 0, 59, 60, 10_956, 20_000, 2_000_000] {
        let (y, m, dd) = civil_from_days(d);
        assert_eq!(days_from_civil(y, m, dd), d);
    }
    assert_eq!(format_day(20_781), "2026-11-24");
    assert_eq!(parse_day("2026-11-24"), Some(20_781));
    for bad in [
        "2026-02-30",
        "2026-13-01",
        "2026-1-01",
        "26-11-24",
        "2026-11-24x",
        "",
    ] {
        assert_eq!(parse_day(bad), None, "{bad}");
    }
}

#[test]
fn periods_start_and_end_on_utc_boundaries() {
    let tue = parse_day("2026-11-24").unwrap();
    assert_eq!(Period::Day.start(tue), tue);
    assert_eq!(Period::Day.end(tue), tue + 1);
    // ISO weeks: Monday 2026-11-23.
    assert_eq!(format_day(Period::Week.start(tue)), "2026-11-23");
    assert_eq!(
        Period::Week.start(parse_day("2026-11-23").unwrap()),
        tue - 1
    );
    assert_eq!(
        format_day(Period::Week.start(parse_day("2026-11-22").unwrap())),
        "2026-11-16"
    );
    assert_eq!(format_day(Period::Month.start(tue)), "2026-11-01");
    assert_eq!(
        format_day(Period::Month.end(Period::Month.start(tue))),
        "2026-12-01"
    );
    let dec = parse_day("2026-12-31").unwrap();
    assert_eq!(
        format_day(Period::Month.end(Period::Month.start(dec))),
        "2027-01-01"
    );
    assert_eq!(Period::parse("DAY"), Some(Period::Day));
    assert_eq!(Period::parse("day"), None);
}

const KEYS: &str = r#"
[[api_keys]]
name = "alice"
id = "aaaaaaaaaaaa"
hash = "sha256$00112233445566778899aabbccddeeff$0000000000000000000000000000000000000000000000000000000000000000"
usage_plan = "gold"

[[api_keys]]
name = "bob"
id = "bbbbbbbbbbbb"
hash = "sha256$00112233445566778899aabbccddeeff$0000000000000000000000000000000000000000000000000000000000000000"
"#;

#[test]
fn an_idle_reconciler_wakes_just_after_utc_midnight() {
    use super::shard::{idle_sleep, IDLE_SLEEP};
    use std::time::Duration;
    // Far from midnight, or the day unknown (a test clock): the longest sleep.
    assert_eq!(idle_sleep(None), IDLE_SLEEP);
    assert_eq!(idle_sleep(Some(Duration::from_secs(3_600))), IDLE_SLEEP);
    // Closer than that: 1 ms into the new day, so the day has turned when it runs.
    assert_eq!(
        idle_sleep(Some(Duration::from_millis(250))),
        Duration::from_millis(251)
    );
    assert_eq!(idle_sleep(Some(Duration::ZERO)), Duration::from_millis(1));
    assert_eq!(idle_sleep(Some(Duration::MAX)), IDLE_SLEEP);
}

fn config(plans: &str) -> String {
    format!(
        r#"
[server]
data_dir = "/nonexistent-coregate-test"
{KEYS}
{plans}

[[apis]]
name = "pets"
api_key_required = true

[[apis.routes]]
key = "GET /pets"
integration = {{ type = "mock" }}

[[apis.routes]]
key = "POST /pets"
integration = {{ type = "mock" }}

[[apis]]
name = "admin"
base_path = "/admin"
api_key_required = true

[[apis.routes]]
key = "GET /x"
integration = {{ type = "mock" }}
"#
    )
}

#[test]
fn a_plan_compiles_into_coverage_buckets_and_quota() {
    let text = config(
        r#"
[[usage_plans]]
name = "gold"
apis = ["pets"]
throttle = { rate = 10, burst = 20 }
quota = { limit = 1000, period = "WEEK", offset = 100 }

[[usage_plans.routes]]
api = "pets"
route = "POST  /pets"
throttle = { rate = 1, burst = 2 }
"#,
    );
    let p = match load_str(&text) {
        Ok(p) => p,
        Err(e) => panic!("{e:#?}"),
    };
    let u = &p.policies.usage;
    assert_eq!(u.plans.len(), 1);
    let q = u.plans[0].quota.unwrap();
    assert_eq!((q.limit, q.period, q.offset), (1000, Period::Week, 100));
    let defs = &p.policies.throttle.defs;
    // alice (key 0) has gold; bob (key 1) has no plan.
    let Coverage::Covered {
        bucket: Some(get_b),
        ..
    } = u.coverage(0, 0)
    else {
        panic!("{:?}", u.coverage(0, 0))
    };
    let Coverage::Covered {
        bucket: Some(post_b),
        ..
    } = u.coverage(0, 1)
    else {
        panic!()
    };
    assert_eq!(defs[get_b as usize].rate, 10.0);
    assert_eq!(defs[post_b as usize].rate, 1.0);
    assert!(defs[get_b as usize].per_api_key);
    assert_eq!(u.coverage(0, 2), Coverage::NotCovered);
    assert_eq!(u.coverage(1, 0), Coverage::NoPlan);
}

fn errors_of(text: &str) -> Vec<String> {
    match load_str(text) {
        Ok(_) => panic!("should be refused"),
        Err(e) => e
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect(),
    }
}

#[test]
fn plan_mistakes_are_reported_with_their_key() {
    let errs = errors_of(&config(
        r#"
[[usage_plans]]
name = "gold"
apis = ["pets", "nope"]
throttle = { rate = 0, burst = 2 }
quota = { limit = 10, period = "YEAR", offset = 10 }

[[usage_plans.routes]]
api = "pets"
route = "GET /missing"
throttle = { rate = 1, burst = 1 }

[[usage_plans.routes]]
api = "admin"
route = "GET /x"
throttle = { rate = 1, burst = 1 }

[[usage_plans]]
name = "gold"
"#,
    ));
    let want = [
        "usage_plans[0].apis[1]: no [[apis]] entry is named \"nope\"",
        "usage_plans[0].throttle.rate: 0 is not a valid rate",
        "usage_plans[0].quota.period: \"YEAR\" is not a period",
        "usage_plans[0].quota.offset: 10 must be less than the limit (10)",
        "usage_plans[0].routes[1].api: \"admin\" is not one of the plan's apis",
        "usage_plans[1].name: usage plan \"gold\" is defined twice",
        "usage_plans[1].apis: must name at least one",
        "usage_plans[0].routes[0].route: api \"pets\" has no route with key \"GET /missing\"",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errs:#?}"
        );
    }
}

#[test]
fn keys_must_name_defined_plans_and_quotas_need_a_data_dir() {
    let errs = errors_of(&config(""));
    assert!(
        errs.iter().any(
            |e| e.contains("names usage plan \"gold\", which no [[usage_plans]] entry defines")
        ),
        "{errs:#?}"
    );
    let text = config("[[usage_plans]]\nname = \"gold\"\napis = [\"pets\"]\nquota = { limit = 5, period = \"DAY\" }\n")
        .replace("data_dir = \"/nonexistent-coregate-test\"", "");
    let errs = errors_of(&text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("server.data_dir: is required")),
        "{errs:#?}"
    );
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("coregate-usage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn store_adds_sums_and_survives_reopen() {
    let dir = temp_dir("store");
    {
        let mut s = Store::open(&dir).unwrap();
        s.add(&[
            ("id1".into(), "alice".into(), 100, 5),
            ("id1".into(), "alice".into(), 101, 7),
        ])
        .unwrap();
        s.add(&[("id1".into(), "alice".into(), 100, 1)]).unwrap();
        assert_eq!(s.first_period("gold", 100).unwrap(), 100);
        assert_eq!(s.first_period("gold", 107).unwrap(), 100);
    }
    let s = Store::open_read_only(&dir).unwrap();
    assert_eq!(s.sum("id1", 100, 101).unwrap(), 6);
    assert_eq!(s.sum("id1", 100, 102).unwrap(), 13);
    let rows = s.rows(Some("alice"), 0, 1000).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].day, rows[0].count), (100, 6));
    assert!(s.rows(Some("nobody"), 0, 1000).unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_store_is_refused_never_reset() {
    let dir = temp_dir("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(super::store::FILE_NAME);
    std::fs::write(&file, vec![0x5a; 8192]).unwrap();
    let e = Store::open(&dir).err().expect("must refuse");
    assert!(
        e.contains("usage store") && e.contains("move it away"),
        "{e}"
    );
    // Untouched.
    assert_eq!(std::fs::read(&file).unwrap(), vec![0x5a; 8192]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Drives two shards and the coordinator's lease logic through real
/// channels, without threads: a quota of 50 is never exceeded however the
/// requests spread, and the last shard learns it is exhausted.
#[test]
fn leases_hold_a_quota_across_shards() {
    let dir = temp_dir("leases");
    let text = config(
        "[[usage_plans]]\nname = \"gold\"\napis = [\"pets\"]\nquota = { limit = 50, period = \"MONTH\" }\n",
    )
    .replace("/nonexistent-coregate-test", dir.to_str().unwrap());
    let plan = load_str(&text).unwrap();
    let (links, running) = coordinator::start(&plan.policies.usage, 2).unwrap();
    let shards: Vec<ShardUsage> = links
        .into_iter()
        .enumerate()
        .map(|(i, l)| ShardUsage::new(&plan.policies.usage, i, l))
        .collect();
    let mut admitted = 0;
    // Uneven load: shard 0 gets three requests for each of shard 1's. A
    // request that must wait for a lease is retried after the next ticks,
    // as the gateway does.
    for round in 0..400 {
        let s = if round % 4 == 3 { 1 } else { 0 };
        for _ in 0..20 {
            match shards[s].peek(0) {
                QuotaCheck::Allowed => {
                    shards[s].admit(0);
                    admitted += 1;
                    break;
                }
                QuotaCheck::Wait => {
                    shards[s].note_refused(0);
                    for sh in &shards {
                        sh.tick_for_tests();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                _ => break,
            }
        }
        if round % 5 == 0 {
            for sh in &shards {
                sh.tick_for_tests();
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    for _ in 0..20 {
        for sh in &shards {
            sh.tick_for_tests();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(admitted, 50, "exactly the quota, never more");
    assert_eq!(shards[0].peek(0), QuotaCheck::Exceeded);
    assert_eq!(shards[1].peek(0), QuotaCheck::Exceeded);
    drop(shards);
    if let Some(t) = running.thread {
        t.join().unwrap();
    }
    let s = Store::open_read_only(&dir).unwrap();
    assert_eq!(s.sum("aaaaaaaaaaaa", 0, 1_000_000).unwrap(), admitted);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two shards and a coordinator driven by hand: a quota of 40 with the
/// plan's "gold" key (key 0).
fn manual_shards(tag: &str) -> (Vec<ShardUsage>, coordinator::Manual, std::path::PathBuf) {
    let dir = temp_dir(tag);
    let text = config(
        "[[usage_plans]]\nname = \"gold\"\napis = [\"pets\"]\nquota = { limit = 40, period = \"MONTH\" }\n",
    )
    .replace("/nonexistent-coregate-test", dir.to_str().unwrap());
    let plan = load_str(&text).unwrap();
    let (links, manual) = coordinator::start_manual(&plan.policies.usage, 2).unwrap();
    let shards = links
        .into_iter()
        .enumerate()
        .map(|(i, l)| ShardUsage::new(&plan.policies.usage, i, l))
        .collect();
    (shards, manual.unwrap(), dir)
}

/// One reconciliation round: every shard ticks, the coordinator answers,
/// every shard takes the answers in.
fn round(shards: &[ShardUsage], c: &mut coordinator::Manual) {
    for s in shards {
        s.tick_for_tests();
    }
    c.pump();
    for s in shards {
        s.tick_for_tests();
    }
    c.pump();
}

/// Spends `n` requests of key 0 on `s`, which must hold them.
fn spend(s: &ShardUsage, n: usize) {
    for _ in 0..n {
        assert_eq!(s.peek(0), QuotaCheck::Allowed);
        s.admit(0);
    }
}

#[test]
fn a_waiting_request_gets_quota_another_busy_shard_holds() {
    // Regression (the 2-shard, 40-a-day report): shard 0's burst made it
    // want far more than the pool (it measures demand over 1 ms ticks while
    // a request waits), so it took the pool and the idle shard 1's lease.
    // When shard 1's requests came, shard 0 was not recalled (it "wanted"
    // more than it held) and they were refused after 100 ms with 30 of 40
    // left.
    let (shards, mut c, dir) = manual_shards("waiting-recall");
    spend(&shards[0], 5); // its initial lease (40 / (4 x 2))
    assert_eq!(shards[0].peek(0), QuotaCheck::Wait);
    for _ in 0..30 {
        shards[0].note_refused(0); // a burst of demand
    }
    {
        let _w = shards[0].waiting_for_tests(0);
        round(&shards, &mut c);
        round(&shards, &mut c);
        assert_eq!(shards[0].peek(0), QuotaCheck::Allowed);
        spend(&shards[0], 1);
    }
    // Shard 1 now has requests and nothing in hand.
    while shards[1].peek(0) == QuotaCheck::Allowed {
        spend(&shards[1], 1);
    }
    assert_eq!(shards[1].peek(0), QuotaCheck::Wait);
    let w = shards[1].waiting_for_tests(0);
    shards[1].note_refused(0);
    for _ in 0..3 {
        // Shard 0 stays busy (its clients keep sending): its demand, and
        // so its want, stays above what it holds.
        if shards[0].peek(0) == QuotaCheck::Allowed {
            shards[0].admit(0);
        }
        for _ in 0..30 {
            shards[0].note_refused(0);
        }
        round(&shards, &mut c);
    }
    assert_eq!(
        shards[1].peek(0),
        QuotaCheck::Allowed,
        "a waiting request must get the lease shard 0 holds but does not use"
    );
    drop(w);
    drop(shards);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_waiting_request_learns_the_quota_is_spent() {
    // The other answer to a waiting request: when the last lease is spent
    // elsewhere, "exhausted", never a lease that does not exist.
    let (shards, mut c, dir) = manual_shards("waiting-exhausted");
    let mut admitted = 0;
    for _ in 0..40 {
        round(&shards, &mut c);
        if shards[0].peek(0) == QuotaCheck::Allowed {
            shards[0].admit(0);
            admitted += 1;
        } else {
            shards[0].note_refused(0);
            let _w = shards[0].waiting_for_tests(0);
            round(&shards, &mut c);
            round(&shards, &mut c);
            round(&shards, &mut c);
            if shards[0].peek(0) == QuotaCheck::Allowed {
                shards[0].admit(0);
                admitted += 1;
            }
        }
    }
    assert_eq!(admitted, 40, "every request of the quota, on one shard");
    let w = shards[1].waiting_for_tests(0);
    shards[1].note_refused(0);
    round(&shards, &mut c);
    round(&shards, &mut c);
    assert_eq!(shards[0].peek(0), QuotaCheck::Exceeded);
    assert_eq!(shards[1].peek(0), QuotaCheck::Exceeded);
    drop(w);
    drop(shards);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wait_dropped_midway_is_no_longer_counted() {
    // A connection that closes while its request waits for a lease drops
    // the waiting future: the shard must stop counting it (it used to stay
    // "urgent" forever, its reconciler ticking every millisecond).
    let (shards, _c, dir) = manual_shards("waiting-dropped");
    spend(&shards[0], 5);
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async {
            let wait = shards[0].wait(0);
            let polled = futures_lite::future::poll_once(Box::pin(wait)).await;
            assert!(polled.is_none(), "no lease yet: it waits");
        });
    assert_eq!(shards[0].urgent_for_tests(), 0);
    drop(shards);
    let _ = std::fs::remove_dir_all(&dir);
}
