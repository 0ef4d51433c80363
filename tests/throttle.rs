//! Throttling over real sockets against the real binary: 429 with
//! `Retry-After` at each level (route, API, server, per client IP), a refused
//! request spending no other level's tokens, and the cross-shard accuracy
//! bound: over ~10 s at R = 200/s the process admits R·T + B ± 5%, with the
//! load spread over both shards, all on one shard, and moving from one shard
//! to the other mid-run.
//!
//! Which shard serves a connection: SO_REUSEPORT picks a shard per
//! connection (4-tuple hash), and every response carries an `x-request-id`
//! whose first 16 hex digits are a per-shard prefix fixed at shard start
//! (`RequestIds::new`). The accuracy tests open keep-alive connections, send
//! one request on an unthrottled route, and group the connections by that
//! prefix; the load then goes only to the connections of the chosen shard(s).
// The accuracy tests are serialised with a lock so that three 10-second load
// runs do not compete for the two CPUs of a CI machine; the lock is in the
// test process, not the gateway.
#![allow(clippy::disallowed_types)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const LIMITS: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
@SERVER@

[[apis]]
name = "main"
@API@

[[apis.routes]]
key = "GET /a"
integration = { type = "mock", body = 'a' }
@ROUTE@

[[apis.routes]]
key = "GET /b"
integration = { type = "mock", body = 'b' }

[[apis]]
name = "other"
base_path = "/other"

[[apis.routes]]
key = "GET /c"
integration = { type = "mock", body = 'c' }
"#;

fn limits(server: &str, api: &str, route: &str) -> Gateway {
    let toml = LIMITS
        .replace("@SERVER@", server)
        .replace("@API@", api)
        .replace("@ROUTE@", route);
    Gateway::start(&toml)
}

/// Expects the throttling answer: 429, the JSON message, `Retry-After`.
fn assert_throttled(r: &Response, retry_after: &str) {
    assert_eq!(assert_json_error(r, 429), "Too Many Requests", "{r:?}");
    assert_eq!(r.body, br#"{"message":"Too Many Requests"}"#, "{r:?}");
    assert_eq!(r.header("retry-after"), Some(retry_after), "{r:?}");
    assert!(!r.says_close(), "a 429 keeps the connection: {r:?}");
}

fn assert_ok(r: &Response, body: &str) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), body, "{r:?}");
}

// Rates below 1/s keep a token from coming back while a test runs, so the
// counts are exact; the shard holds the whole burst (one shard).

#[test]
fn a_route_limit_answers_429_with_retry_after() {
    let gw = limits("", "", "throttle = { rate = 0.5, burst = 3 }");
    let mut c = gw.client();
    for _ in 0..3 {
        assert_ok(&c.get("/a"), "a");
    }
    let r = c.get("/a");
    assert_throttled(&r, "2");
    // Another route of the same API is not limited by /a's bucket.
    for _ in 0..10 {
        assert_ok(&c.get("/b"), "b");
    }
    assert_throttled(&c.get("/a"), "2");
}

#[test]
fn an_api_limit_is_shared_by_its_routes_only() {
    let gw = limits("", "throttle = { rate = 0.1, burst = 3 }", "");
    let mut c = gw.client();
    assert_ok(&c.get("/a"), "a");
    assert_ok(&c.get("/b"), "b");
    assert_ok(&c.get("/a"), "a");
    assert_throttled(&c.get("/b"), "10");
    assert_throttled(&c.get("/a"), "10");
    for _ in 0..5 {
        assert_ok(&c.get("/other/c"), "c");
    }
}

#[test]
fn a_server_limit_covers_every_api() {
    let gw = limits("throttle = { rate = 0.2, burst = 4 }", "", "");
    let mut c = gw.client();
    assert_ok(&c.get("/a"), "a");
    assert_ok(&c.get("/other/c"), "c");
    assert_ok(&c.get("/b"), "b");
    assert_ok(&c.get("/other/c"), "c");
    assert_throttled(&c.get("/a"), "5");
    assert_throttled(&c.get("/other/c"), "5");
    // A path no route takes is not throttled: it is a 404.
    assert_eq!(c.get("/nothing").status, 404);
}

#[test]
fn a_refused_request_spends_no_token_of_the_other_levels() {
    // /a: route burst 1 and API burst 3. The second /a is refused by the
    // route; it must leave the API's tokens alone, so /b gets two more.
    let gw = limits(
        "",
        "throttle = { rate = 0.1, burst = 3 }",
        "throttle = { rate = 0.1, burst = 1 }",
    );
    let mut c = gw.client();
    assert_ok(&c.get("/a"), "a");
    for _ in 0..5 {
        assert_throttled(&c.get("/a"), "10");
    }
    assert_ok(&c.get("/b"), "b");
    assert_ok(&c.get("/b"), "b");
    assert_throttled(&c.get("/b"), "10");
}

#[test]
fn the_most_restrictive_level_sets_retry_after() {
    // Both the route (0.5/s → 2 s) and the server (0.25/s → 4 s) are empty
    // after one request: Retry-After is the longer wait.
    let gw = limits(
        "throttle = { rate = 0.25, burst = 1 }",
        "",
        "throttle = { rate = 0.5, burst = 1 }",
    );
    let mut c = gw.client();
    assert_ok(&c.get("/a"), "a");
    assert_throttled(&c.get("/a"), "4");
}

/// A keep-alive connection from a chosen local address.
struct IpClient {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl IpClient {
    fn connect(from: &str, to: SocketAddr) -> IpClient {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let local: SocketAddr = format!("{from}:0").parse().expect("local address");
        sock.bind(&local.into()).expect("bind the client address");
        sock.connect(&to.into()).expect("connect");
        let w: TcpStream = sock.into();
        w.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let r = BufReader::new(w.try_clone().expect("clone"));
        IpClient { w, r }
    }

    /// GETs `path`; returns the status, `Retry-After` and the body.
    fn get(&mut self, path: &str) -> (u16, Option<String>, String) {
        write!(self.w, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let (mut len, mut retry) = (0usize, None);
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("header line");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().expect("content-length"),
                    "retry-after" => retry = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).expect("body");
        (status, retry, String::from_utf8_lossy(&body).into_owned())
    }
}

#[test]
fn per_client_ip_limits_count_each_address_apart() {
    let gw = limits(
        "throttle = { per_client_ip = { rate = 0.5, burst = 2 } }",
        "",
        "",
    );
    let mut one = IpClient::connect("127.0.0.1", gw.addr());
    let mut two = IpClient::connect("127.0.0.2", gw.addr());
    assert_eq!(one.get("/a").0, 200);
    assert_eq!(one.get("/other/c").0, 200);
    let (status, retry, body) = one.get("/b");
    assert_eq!(status, 429);
    assert_eq!(retry.as_deref(), Some("2"));
    assert_eq!(body, r#"{"message":"Too Many Requests"}"#);
    // The second address has a bucket of its own...
    assert_eq!(two.get("/a").0, 200);
    assert_eq!(two.get("/a").0, 200);
    assert_eq!(two.get("/a").0, 429);
    // ...and a new connection from the first address shares the first's.
    let mut again = IpClient::connect("127.0.0.1", gw.addr());
    assert_eq!(again.get("/a").0, 429);
}

#[test]
fn per_client_ip_and_aggregate_limits_apply_together() {
    let gw = limits(
        "",
        "throttle = { rate = 0.1, burst = 3, per_client_ip = { rate = 0.1, burst = 2 } }",
        "",
    );
    let mut one = IpClient::connect("127.0.0.1", gw.addr());
    let mut two = IpClient::connect("127.0.0.2", gw.addr());
    assert_eq!(one.get("/a").0, 200);
    assert_eq!(one.get("/b").0, 200);
    assert_eq!(one.get("/a").0, 429, "per-IP burst 2");
    assert_eq!(two.get("/a").0, 200);
    assert_eq!(two.get("/a").0, 429, "API burst 3 across addresses");
}

#[test]
fn throttle_config_errors_name_the_key() {
    let toml = LIMITS
        .replace("@SERVER@", "throttle = { rate = 0, burst = 10 }")
        .replace("@API@", "throttle = { rate = 5 }")
        .replace("@ROUTE@", "throttle = { rate = 5, burst = -1 }");
    let path = write_config(&toml);
    let out = run_coregate(&["check", "--config", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for want in [
        "server.throttle.rate",
        "apis[0].throttle.burst",
        "apis[0].routes[0].throttle.burst",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    assert!(!err.contains("not supported"), "{err}");
}

// === accuracy across shards ===

const RATE: f64 = 200.0;
const BURST: f64 = 100.0;
/// Requests per second each load connection sends: 4 connections at 200/s
/// are 4 R, well above the limit, yet light for a 2-CPU machine.
const PER_CONN_RATE: f64 = 200.0;
const LOAD_CONNS: usize = 4;

const SPREAD: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /probe"
integration = { type = "mock", body = 'probe' }

[[apis.routes]]
key = "GET /limited"
integration = { type = "mock", body = 'ok' }
throttle = { rate = 200, burst = 100 }
"#;

static HEAVY: Mutex<()> = Mutex::new(());

/// The shard prefix of a response's request id.
fn shard_of(r: &Response) -> String {
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no request id: {r:?}"));
    assert!(is_generated_request_id(id), "{r:?}");
    id[..16].to_string()
}

/// Keep-alive connections grouped by the shard serving them, until both
/// shards have `want` of them.
fn connections_by_shard(gw: &Gateway, want: usize) -> Vec<Vec<Client>> {
    let mut groups: BTreeMap<String, Vec<Client>> = BTreeMap::new();
    for _ in 0..400 {
        if groups.len() == 2 && groups.values().all(|g| g.len() >= want) {
            break;
        }
        let mut c = gw.client();
        let r = c.get("/probe");
        assert_eq!(r.status, 200, "{r:?}");
        groups.entry(shard_of(&r)).or_default().push(c);
    }
    assert_eq!(groups.len(), 2, "expected connections on 2 shards");
    groups
        .into_values()
        .map(|mut g| {
            assert!(g.len() >= want, "too few connections on one shard");
            g.truncate(want);
            g
        })
        .collect()
}

/// Sends GET /limited on `c` at PER_CONN_RATE from `from` to `to` (offsets
/// from `start`); returns (admitted, refused).
fn drive(c: Client, start: Instant, from: Duration, to: Duration) -> (u64, u64) {
    drive_at(c, start, from, to, PER_CONN_RATE)
}

/// As [`drive`], at `per_second` requests per second.
fn drive_at(
    mut c: Client,
    start: Instant,
    from: Duration,
    to: Duration,
    per_second: f64,
) -> (u64, u64) {
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let (mut ok, mut refused) = (0, 0);
    let mut next = start + from;
    loop {
        let now = Instant::now();
        if now >= start + to {
            break;
        }
        if next > now {
            thread::sleep(next - now);
        }
        next += interval;
        let r = c.get("/limited");
        match r.status {
            200 => ok += 1,
            429 => refused += 1,
            _ => panic!("unexpected response {r:?}"),
        }
    }
    (ok, refused)
}

/// Runs the given (connection, from, to) load plan and checks the admitted
/// total against an exact bucket over the same time: R·T + B, ± 5%.
fn assert_within_bound(name: &str, plan: Vec<(Client, Duration, Duration)>) {
    let start = Instant::now();
    let workers: Vec<_> = plan
        .into_iter()
        .map(|(c, from, to)| thread::spawn(move || drive(c, start, from, to)))
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for w in workers {
        let (o, r) = w.join().expect("load thread");
        ok += o;
        refused += r;
    }
    let secs = start.elapsed().as_secs_f64();
    let exact = RATE * secs + BURST;
    let error = (ok as f64 - exact) / exact;
    eprintln!(
        "{name}: admitted {ok}, refused {refused} in {secs:.2} s; exact bucket {exact:.0}; error {:+.2}%",
        error * 100.0
    );
    assert!(
        refused as f64 > 0.5 * exact,
        "{name}: the load did not exceed the limit enough to test it ({refused} refused)"
    );
    assert!(
        error.abs() <= 0.05,
        "{name}: admitted {ok} in {secs:.2} s, an exact bucket admits {exact:.0}: {:+.2}%",
        error * 100.0
    );
}

const RUN: Duration = Duration::from_secs(10);

#[test]
fn accuracy_with_load_spread_over_both_shards() {
    let _guard = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let gw = Gateway::start(SPREAD);
    let mut groups = connections_by_shard(&gw, LOAD_CONNS / 2);
    let plan = groups
        .iter_mut()
        .flat_map(|g| g.drain(..))
        .map(|c| (c, Duration::ZERO, RUN))
        .collect();
    assert_within_bound("spread", plan);
}

#[test]
fn accuracy_with_all_load_on_one_shard() {
    let _guard = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let gw = Gateway::start(SPREAD);
    let mut groups = connections_by_shard(&gw, LOAD_CONNS);
    let plan = groups[0]
        .drain(..)
        .map(|c| (c, Duration::ZERO, RUN))
        .collect();
    assert_within_bound("one shard", plan);
}

#[test]
fn accuracy_with_load_moving_between_shards() {
    let _guard = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let gw = Gateway::start(SPREAD);
    let mut groups = connections_by_shard(&gw, LOAD_CONNS);
    let half = RUN / 2;
    let mut plan: Vec<_> = groups[0]
        .drain(..)
        .map(|c| (c, Duration::ZERO, half))
        .collect();
    plan.extend(groups[1].drain(..).map(|c| (c, half, RUN)));
    assert_within_bound("moving", plan);
}

// === a burst across shards ===

const TWO_SHARDS: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /probe"
integration = { type = "mock", body = 'probe' }

[[apis.routes]]
key = "GET /limited"
integration = { type = "mock", body = 'ok' }
throttle = { rate = 0.1, burst = 10 }

[[apis]]
name = "ip"
base_path = "/ip"
throttle = { per_client_ip = { rate = 0.1, burst = 10 } }

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", body = 'x' }
"#;

/// Sends `count` GETs of `path`, round-robin over `conns`, `gap` apart;
/// returns how many were admitted (any other answer than 200/429 fails).
fn admitted(conns: &mut [Client], path: &str, count: usize, gap: Duration) -> usize {
    let mut ok = 0;
    for i in 0..count {
        let n = conns.len();
        let r = conns[i % n].get(path);
        match r.status {
            200 => ok += 1,
            429 => assert_throttled(&r, "10"),
            _ => panic!("unexpected {r:?}"),
        }
        thread::sleep(gap);
    }
    ok
}

#[test]
fn a_burst_is_one_burst_for_the_whole_process() {
    // Rate 0.1/s: at most one token comes back during the test, so the
    // process must admit the burst (10), or 11, whichever shards serve it.
    //
    // Back to back (5 ms apart, alternating shards), a token can be in flight
    // between shards when the burst runs out, so the first pass may admit a
    // few less (docs/throttling.md, "Under-admission": at most
    // n·(ceil(D·10 ms) + 1) = 4 here). Those tokens are not lost: after a
    // pause for the lease round trips, the total is the burst. Regression:
    // the first version asserted 10..=11 for the first pass alone and failed
    // about one run in ten on a quiet machine.
    let gw = Gateway::start(TWO_SHARDS);
    let mut groups = connections_by_shard(&gw, 2);
    let mut both: Vec<Client> = groups.iter_mut().flat_map(|g| g.drain(..)).collect();
    for (path, what) in [
        ("/limited", "both shards"),
        ("/ip/x", "per client, both shards"),
    ] {
        let first = admitted(&mut both, path, 30, Duration::from_millis(5));
        assert!(
            (6..=11).contains(&first),
            "{what}: admitted {first} back to back; never a burst per shard (20)"
        );
        // 500 ms and 20 spaced requests (both shards, 400 ms): a CI rehearsal
        // once saw 7 + 2 with 300 ms and 10 requests, the last token still
        // on its way between shards on a loaded machine. At 0.1 token/s the
        // longer window still allows at most one refill, so 10..=11 holds.
        thread::sleep(Duration::from_millis(500));
        let later = admitted(&mut both, path, 20, Duration::from_millis(20));
        assert!(
            (10..=11).contains(&(first + later)),
            "{what}: admitted {first} + {later}; the process holds one burst of 10"
        );
    }
    // Another address still has its own bucket.
    let mut other = IpClient::connect("127.0.0.2", gw.addr());
    assert_eq!(other.get("/ip/x").0, 200);
}

#[test]
fn one_shard_gets_the_idle_shards_share_of_the_burst() {
    // All requests on one shard: it starts with half the burst, and the
    // other shard's half is recalled to it (within an idle tick, 50 ms).
    let gw = Gateway::start(TWO_SHARDS);
    let mut groups = connections_by_shard(&gw, 2);
    let n = admitted(&mut groups[0], "/limited", 40, Duration::from_millis(20));
    assert!((10..=11).contains(&n), "one shard: admitted {n}");
}

// === small limits: rate 1, burst 1 and 2 ===
//
// Requests 0.2 s apart against rate 1/s: an exact bucket has 0.2 or 0.4 of
// a token at the later ones, far from the 1 a request needs, so the
// expected answers do not depend on scheduling jitter.

const GAP: Duration = Duration::from_millis(200);

/// GETs `path` on a new connection; returns the status.
fn fresh_get(gw: &Gateway, path: &str) -> u16 {
    gw.client().get(path).status
}

#[test]
fn rate_1_burst_1_on_one_shard_is_an_exact_bucket() {
    let gw = limits("", "", "throttle = { rate = 1, burst = 1 }");
    // A fresh start: the bucket holds one token, back to back gets one.
    let mut c = gw.client();
    assert_eq!([c.get("/a").status, c.get("/a").status], [200, 429]);
    // 1.2 s later it holds one again; 0.2 s after spending it, 0.2.
    thread::sleep(Duration::from_millis(1200));
    let first = c.get("/a").status;
    thread::sleep(GAP);
    assert_eq!([first, c.get("/a").status], [200, 429], "keep-alive");
    // After 4 s idle the first request is admitted (new connections).
    thread::sleep(Duration::from_secs(4));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(fresh_get(&gw, "/a"));
        thread::sleep(GAP);
    }
    assert_eq!(got, [200, 429, 429], "after 4 s idle");
}

const SMALL_TWO_SHARDS: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /probe"
integration = { type = "mock", body = 'probe' }

[[apis.routes]]
key = "GET /limited"
integration = { type = "mock", body = 'ok' }
throttle = { rate = 1, burst = 2 }
"#;

#[test]
fn rate_1_burst_2_on_two_shards_after_idle() {
    // Each shard holds its share (1) of the burst once the bucket is full
    // again, so the first request after idle is admitted wherever it lands.
    let gw = Gateway::start(SMALL_TWO_SHARDS);
    let mut groups = connections_by_shard(&gw, 1);
    let (mut a, mut b) = {
        let mut it = groups.iter_mut().map(|g| g.remove(0));
        (it.next().unwrap(), it.next().unwrap())
    };
    // One round: 3 s of quiet, then the requests 0.2 s apart. The expected
    // answers hold for requests that keep to that schedule (an exact bucket
    // gains 0.2 or 0.4 of a token between them, far from the 1 a request
    // needs); a round sent late because the machine stalled the test or the
    // gateway (seen: answers taking 2.5 s while a load test ran) is sent
    // again, up to 5 times, so timing cannot turn into a wrong verdict.
    // Returns the answers and when each request went out and took.
    let mut round = |order: &[usize]| -> (Vec<u16>, String) {
        let slack = Duration::from_millis(50);
        let mut timing = String::new();
        for attempt in 1..=5 {
            thread::sleep(Duration::from_secs(3));
            let t0 = Instant::now();
            timing.clear();
            let mut on_time = true;
            let got: Vec<u16> = order
                .iter()
                .enumerate()
                .map(|(k, &s)| {
                    let sent = t0.elapsed();
                    let status = if s == 0 {
                        a.get("/limited")
                    } else {
                        b.get("/limited")
                    }
                    .status;
                    let took = t0.elapsed() - sent;
                    on_time &= sent <= GAP * k as u32 + slack && took <= slack;
                    timing.push_str(&format!(" [sent {sent:?} took {took:?}]"));
                    thread::sleep(GAP);
                    status
                })
                .collect();
            if on_time {
                return (got, timing);
            }
            eprintln!("round {order:?}, try {attempt}: off schedule, {got:?}:{timing}");
        }
        panic!("round {order:?}: no try kept to the schedule (a stalled machine):{timing}")
    };
    // Alternating shards: one token on each, as an exact bucket.
    let (got, timing) = round(&[0, 1, 0, 1]);
    assert_eq!(got, [200, 200, 429, 429], "alternating:{timing}");
    // All on one shard: its first request is admitted; the idle shard's
    // token is recalled once a request there found none, so the second
    // token is spent one request later than an exact bucket would
    // (docs/throttling.md, "Latency, not count"): 2 of 4 either way.
    for shard in [0, 1] {
        let (got, timing) = round(&[shard; 4]);
        let admitted = got.iter().filter(|&&s| s == 200).count();
        assert!(
            got[0] == 200 && admitted == 2 && got.iter().all(|&s| s == 200 || s == 429),
            "shard {shard} only: {got:?}:{timing}"
        );
    }
}

// === a burst smaller than a few ms of the rate ===

const SMALL_BURST: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /probe"
integration = { type = "mock", body = 'probe' }

[[apis.routes]]
key = "GET /limited"
integration = { type = "mock", body = 'ok' }
throttle = { rate = 1000, burst = 2 }
"#;

#[test]
fn a_burst_of_two_at_a_thousand_a_second_gets_the_rate() {
    // Burst 2, rate 1000/s, all load on one shard at twice the rate. A
    // shard can hold at most the burst, and a lease takes a round trip of
    // a few ms: with leases only, the shard spent about 2 tokens per round
    // trip, half the rate or less. Its stream refills its own tokens at
    // the rate instead.
    let _guard = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let gw = Gateway::start(SMALL_BURST);
    let mut groups = connections_by_shard(&gw, 2);
    let run = Duration::from_secs(4);
    let start = Instant::now();
    let workers: Vec<_> = groups[0]
        .drain(..)
        .map(|c| thread::spawn(move || drive_at(c, start, Duration::ZERO, run, 1000.0)))
        .collect();
    let (mut ok, mut refused) = (0u64, 0u64);
    for w in workers {
        let (o, r) = w.join().expect("load thread");
        ok += o;
        refused += r;
    }
    let secs = start.elapsed().as_secs_f64();
    let exact = 1000.0 * secs + 2.0;
    let error = (ok as f64 - exact) / exact;
    eprintln!(
        "small burst: admitted {ok}, refused {refused} in {secs:.2} s; exact bucket {exact:.0}; error {:+.2}%",
        error * 100.0
    );
    assert!(
        refused as f64 > 0.3 * exact,
        "the load did not exceed the limit enough to test it ({refused} refused)"
    );
    assert!(
        error.abs() <= 0.10,
        "admitted {ok} in {secs:.2} s, an exact bucket admits {exact:.0}: {:+.2}%",
        error * 100.0
    );
}

#[test]
fn an_idle_gateway_with_throttles_sleeps_and_a_sleeping_shards_tokens_are_recalled_at_once() {
    // Before, each shard's throttle reconciler ran every 50 ms while idle
    // (to answer the coordinator's recalls): 20 wakes a second per shard.
    // Now, after a step with nothing to report or take in, it sleeps until
    // a throttled request or the coordinator wakes it (or 1 s passes).
    const SHARDS: usize = 2;
    let gw = Gateway::start(TWO_SHARDS);
    let mut groups = connections_by_shard(&gw, 1);
    // connections_by_shard asserted two groups of one: these cannot fail.
    let (mut a, mut b) = {
        let mut it = groups.iter_mut().map(|g| g.remove(0));
        (it.next().unwrap(), it.next().unwrap())
    };
    // Each shard starts with 5 of the burst of 10 and spends 2.
    for c in [&mut a, &mut b] {
        for _ in 0..2 {
            assert_ok(&c.get("/limited"), "ok");
        }
    }
    // Let the demand fade and every reconciler go to sleep.
    let idle = Duration::from_secs(3);
    let shards = idle_shard_switches(gw.pid(), Duration::from_millis(1500), idle);
    // What is left: the reconciler's 1 s sleep, the pool sweep and the
    // dashboard sample, a few switches each. Before: 120 or more.
    assert!(
        shards <= 25 * SHARDS as u64,
        "shards woke {shards} times in {idle:?}"
    );
    // All on shard a now: its 3 tokens, then b's 3, recalled from a
    // sleeping reconciler that the coordinator wakes (with a 1 s sleep
    // and no wake they would mostly come after these 300 ms); at 0.1
    // token/s at most one more.
    let n = admitted(
        std::slice::from_mut(&mut a),
        "/limited",
        15,
        Duration::from_millis(20),
    );
    assert!(
        (6..=7).contains(&n),
        "admitted {n} on one shard after idle; the process had 6 tokens left"
    );
}
