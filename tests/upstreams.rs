//! Upstreams against real backends: balancing (round robin, weighted, least
//! outstanding), passive health, the per-shard keep-alive pool and its retry
//! of a dead pooled connection, pooled connections left with stray bytes (a
//! body after a HEAD response, garbage after a response), and the failure
//! modes (refused, timeout, reset mid-body, garbage) with their status, JSON
//! body and log line.

mod support;

use std::thread;
use std::time::Duration;
use support::*;

const POOL: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[upstreams]]
name = "pool"
balance = "@BAL@"
targets = [{ address = "@B1@", weight = @W1@ }, { address = "@B2@", weight = @W2@ }]

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://pool" }
"#;

fn two_targets(balance: &str, b1: &Backend, w1: u32, b2: &Backend, w2: u32) -> Gateway {
    Gateway::start(&fill(
        POOL,
        &[
            ("BAL", balance.to_string()),
            ("B1", b1.addr_str()),
            ("W1", w1.to_string()),
            ("B2", b2.addr_str()),
            ("W2", w2.to_string()),
        ],
    ))
}

/// One upstream, one route `ANY /{proxy+}`, extra upstream keys in `extra`.
fn single(b: &str, extra: &str, shards: usize) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = {shards}

[[upstreams]]
name = "up"
targets = [{{ address = "{b}" }}]
{extra}

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{{proxy+}}"
integration = {{ type = "http_proxy", url = "http://up" }}
"#
    ))
}

#[test]
fn round_robin_spreads_requests_evenly() {
    let (b1, b2) = (Backend::start(Reply::Echo), Backend::start(Reply::Echo));
    let gw = two_targets("round_robin", &b1, 1, &b2, 1);
    let a = agent();
    for i in 0..20 {
        assert_eq!(call(a.get(&gw.url(&format!("/rr/{i}"))), None).status, 200);
    }
    assert_eq!(
        (b1.hits(), b2.hits()),
        (10, 10),
        "one shard, round robin: exactly even"
    );
    // Fresh client connections each time make no difference.
    let mut per_conn = Vec::new();
    for _ in 0..4 {
        per_conn.push(gw.client().get("/rr/x").status);
    }
    assert_eq!(per_conn, [200; 4]);
    assert_eq!((b1.hits(), b2.hits()), (12, 12));
}

#[test]
fn weighted_balance_follows_weights() {
    let (heavy, light) = (Backend::start(Reply::Echo), Backend::start(Reply::Echo));
    let gw = two_targets("weighted", &heavy, 3, &light, 1);
    let a = agent();
    for i in 0..80 {
        assert_eq!(call(a.get(&gw.url(&format!("/w/{i}"))), None).status, 200);
    }
    let (h, l) = (heavy.hits(), light.hits());
    eprintln!("weighted: heavy {h}, light {l}");
    assert_eq!(h + l, 80);
    assert!(
        (48..=72).contains(&h),
        "weights 3:1 over 80 requests gave {h}:{l}"
    );
    assert!(l >= 8, "the light target must still get traffic: {h}:{l}");
}

#[test]
fn least_outstanding_prefers_the_less_busy_target() {
    let slow = Backend::start(Reply::slow(300, Reply::Echo));
    let fast = Backend::start(Reply::Echo);
    let gw = two_targets("least_outstanding", &fast, 1, &slow, 1);
    let url = gw.url("/lo");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                let a = agent();
                (0..6)
                    .map(|_| call(a.get(&url), None).status)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), [200; 6]);
    }
    let (s, f) = (slow.hits(), fast.hits());
    eprintln!("least_outstanding: slow {s}, fast {f}");
    assert_eq!(s + f, 24);
    assert!(
        s < f,
        "least outstanding should send most requests to the fast target: slow {s}, fast {f}"
    );
    assert!(
        s <= 9,
        "slow target got {s} of 24 (round robin would give 12)"
    );
}

#[test]
fn passive_health_skips_a_failing_target_during_cooldown() {
    let dead = refused_addr();
    let live = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[upstreams]]
name = "pool"
targets = [{ address = "@DEAD@" }, { address = "@LIVE@" }]
health = { max_failures = 2, cooldown_ms = 60000 }

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://pool" }
"#,
        &[("DEAD", dead.to_string()), ("LIVE", live.addr_str())],
    ));
    let mut c = gw.client();
    for _ in 0..6 {
        let r = c.get("/h");
        if r.status != 200 {
            assert_json_error(&r, 502);
        }
    }
    let statuses: Vec<u16> = (0..20).map(|_| c.get("/h").status).collect();
    assert_eq!(
        statuses, [200; 20],
        "after max_failures the dead target must be skipped"
    );
    assert!(live.hits() >= 20);
}

#[test]
fn passive_health_tries_the_target_again_after_cooldown() {
    // Revived below, so not held like refused_addr().
    let dead = released_addr();
    let live = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[upstreams]]
name = "pool"
targets = [{ address = "@DEAD@" }, { address = "@LIVE@" }]
health = { max_failures = 1, cooldown_ms = 300 }

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://pool" }
"#,
        &[("DEAD", dead.to_string()), ("LIVE", live.addr_str())],
    ));
    let mut c = gw.client();
    // Round robin over [dead, live]: without the cool-down every other
    // request would go to the dead target (a 502 each, connects are not
    // retried). With max_failures = 1 only the first one does, and the
    // log names it once.
    let statuses: Vec<u16> = (0..4).map(|_| c.get("/h").status).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        1,
        "the dead target stays in the rotation: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        3,
        "{statuses:?}"
    );
    let dead_s = dead.to_string();
    let failures = gw
        .stderr()
        .lines()
        .filter(|l| l.contains(&dead_s) && l.contains("connect failed"))
        .count();
    assert_eq!(failures, 1, "stderr:\n{}", gw.stderr());
    // The target comes back; after the cool-down it gets traffic again.
    let revived = Backend::start_on(dead, Reply::Echo);
    thread::sleep(Duration::from_millis(600));
    let statuses: Vec<u16> = (0..10).map(|_| c.get("/h").status).collect();
    assert_eq!(statuses, [200; 10]);
    assert!(
        revived.hits() > 0,
        "the target was never tried again after its cool-down"
    );
}

#[test]
fn keep_alive_pool_reuses_upstream_connections() {
    let b = Backend::start(Reply::Echo);
    let gw = single(&b.addr_str(), "", 1);
    for i in 0..10 {
        // A new client connection each time: reuse is on the upstream side.
        let r = gw.client().get(&format!("/p/{i}"));
        assert_eq!(r.echo().target, format!("/p/{i}"));
    }
    assert_eq!(b.hits(), 10);
    assert!(
        b.conns() <= 2,
        "10 sequential requests opened {} upstream connections",
        b.conns()
    );
}

#[test]
fn pooled_connections_expire_after_pool_idle_timeout() {
    let b = Backend::start(Reply::Echo);
    let gw = single(&b.addr_str(), "pool = { idle_timeout_ms = 200 }", 1);
    let mut c = gw.client();
    assert_eq!(c.get("/a").status, 200);
    assert_eq!(c.get("/a").status, 200);
    assert_eq!(b.conns(), 1);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(c.get("/a").status, 200);
    assert_eq!(
        b.conns(),
        2,
        "an idle pooled connection outlived pool.idle_timeout_ms"
    );
}

#[test]
fn stale_pooled_connection_is_retried_for_get() {
    let b = Backend::start(Reply::CloseAfter(Duration::from_millis(50)));
    let gw = single(&b.addr_str(), "", 1);
    let mut c = gw.client();
    for i in 0..4 {
        let r = c.get(&format!("/stale/{i}"));
        assert_eq!(
            r.status, 200,
            "request {i} on a connection the backend closed: {r:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(b.hits(), 4);
}

#[test]
fn get_on_pooled_connection_dropped_after_read_is_retried_once() {
    let b = Backend::start(Reply::DropReused);
    let gw = single(&b.addr_str(), "", 1);
    let mut c = gw.client();
    assert_eq!(c.get("/first").status, 200);
    let r = c.get("/second");
    assert_eq!(
        r.status, 200,
        "an idempotent request on a dead pooled connection is retried: {r:?}"
    );
    assert_eq!(r.echo().target, "/second");
    assert_eq!(b.requests(), ["GET /first", "GET /second", "GET /second"]);
}

#[test]
fn post_on_pooled_connection_dropped_after_read_is_not_retried() {
    let b = Backend::start(Reply::DropReused);
    let gw = single(&b.addr_str(), "", 1);
    let mut c = gw.client();
    let post = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\npayload").into_bytes()
    };
    assert_eq!(c.request(&post("/pay/1")).status, 200);
    let r = c.request(&post("/pay/2"));
    assert_eq!(
        b.requests(),
        ["POST /pay/1", "POST /pay/2"],
        "a POST must never be sent twice"
    );
    assert_json_error(&r, 502);
}

#[test]
fn post_on_stale_pooled_connection_is_never_duplicated() {
    let b = Backend::start(Reply::CloseAfter(Duration::from_millis(50)));
    let gw = single(&b.addr_str(), "", 1);
    let mut c = gw.client();
    let post = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\npayload").into_bytes()
    };
    assert_eq!(c.request(&post("/pay/1")).status, 200);
    thread::sleep(Duration::from_millis(250));
    let r = c.request(&post("/pay/2"));
    match r.status {
        200 => assert_eq!(r.echo().body, b"payload"),
        502 => {
            assert_json_error(&r, 502);
        }
        other => panic!("expected 200 (fresh connection) or 502 (not retried), got {other}: {r:?}"),
    }
    let posts = b
        .requests()
        .iter()
        .filter(|l| l.as_str() == "POST /pay/2")
        .count();
    assert!(posts <= 1, "POST delivered {posts} times");
}

#[test]
fn connect_refused_is_502_with_a_log_line() {
    let dead = refused_addr();
    let gw = single(&dead.to_string(), "", 2);
    let mut c = gw.client();
    let r = c.get("/refused");
    let msg = assert_json_error(&r, 502);
    assert!(!msg.is_empty());
    let target = dead.to_string();
    let line = gw.wait_stderr_line(Duration::from_secs(3), |l| {
        l.contains(&target) && l.contains("connect failed")
    });
    assert!(
        line.is_some(),
        "no stderr log line for the refused connect; stderr:\n{}",
        gw.stderr()
    );
    // The client connection survives an upstream failure.
    assert_eq!(c.get("/refused").status, 502);
}

#[test]
fn upstream_timeout_is_504_with_a_log_line() {
    let b = Backend::start(Reply::slow(3000, Reply::Echo));
    let gw = single(&b.addr_str(), "timeout_ms = 300", 2);
    let mut c = gw.client();
    let r = c.get("/slow");
    assert_json_error(&r, 504);
    let target = b.addr_str();
    let line = gw.wait_stderr_line(Duration::from_secs(3), |l| {
        l.contains(&target) && l.contains("no response within 300 ms")
    });
    assert!(
        line.is_some(),
        "no stderr log line for the timeout; stderr:\n{}",
        gw.stderr()
    );
    assert_eq!(b.heads(), 1);
}

#[test]
fn upstream_reset_mid_body_closes_the_client_connection() {
    let b = Backend::start(Reply::ResetMidBody);
    let gw = single(&b.addr_str(), "", 2);
    let reset_once = |what: &str| {
        let mut c = gw.client();
        c.send(b"GET /reset HTTP/1.1\r\nHost: t\r\n\r\n");
        match c.try_read_response(false) {
            Err(ReadError::Truncated(r)) => {
                assert_eq!(r.status, 200, "{what}: {r:?}");
                assert!(r.body.len() < 1000, "{what}: {r:?}");
                c.expect_closed();
            }
            // The head had not been forwarded yet: a 502 is fine too.
            Ok(r) if r.status == 502 => {
                assert_json_error(&r, 502);
            }
            other => panic!(
                "{what}: expected a truncated 200 then a closed connection (or a 502): {other:?}"
            ),
        }
    };
    reset_once("first");
    // The gateway is fine afterwards: the next request is handled the same
    // way, not left hanging or reset before an answer.
    reset_once("afterwards");
}

#[test]
fn malformed_upstream_response_is_502() {
    let b = Backend::start(Reply::Raw(
        b"HELLO THERE\r\nthis is not http\r\n\r\n".to_vec(),
    ));
    let gw = single(&b.addr_str(), "", 2);
    let r = gw.client().get("/garbage");
    assert_json_error(&r, 502);

    let b = Backend::start(Reply::Raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
    ));
    let gw = single(&b.addr_str(), "", 2);
    let r = gw.client().get("/conflicting");
    assert_json_error(&r, 502);
}

#[test]
fn upstream_host_setting_overrides_the_host_header() {
    let b = Backend::start(Reply::Echo);
    let gw = single(&b.addr_str(), "host = \"internal.example\"", 2);
    let e = gw
        .client()
        .request(b"GET /h HTTP/1.1\r\nHost: public.example\r\n\r\n")
        .echo();
    assert_eq!(e.headers_named("host"), ["internal.example"]);
    assert_eq!(e.header("x-forwarded-host"), Some("public.example"));
}

#[test]
fn oversized_upstream_response_head_is_502() {
    let big = "h".repeat(4096);
    let b = Backend::start(Reply::fixed(200, &[("X-Big", big.as_str())], "body"));
    let gw = single(&b.addr_str(), "max_response_header_bytes = 1024", 2);
    assert_json_error(&gw.client().get("/big-head"), 502);
    // Under the limit is fine.
    let b = Backend::start(Reply::fixed(200, &[("X-Small", "s")], "body"));
    let gw = single(&b.addr_str(), "max_response_header_bytes = 1024", 2);
    assert_eq!(gw.client().get("/small-head").text(), "body");
}

#[test]
fn connect_timeout_is_502() {
    let hole = blackhole();
    let gw = single(
        &hole.addr.to_string(),
        "connect_timeout_ms = 200\ntimeout_ms = 20000",
        2,
    );
    let mut c = gw.client();
    let r = c.get("/unreachable");
    assert_json_error(&r, 502);
}

#[test]
fn upstream_stalling_mid_body_closes_the_client_connection() {
    let b = Backend::start(Reply::StallMidBody(Duration::from_secs(5)));
    let gw = single(&b.addr_str(), "timeout_ms = 300", 2);
    let mut c = gw.client();
    c.send(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n");
    match c.try_read_response(false) {
        Err(ReadError::Truncated(r)) => {
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), 100, "{r:?}");
        }
        other => {
            panic!("expected a truncated response after timeout_ms of upstream silence: {other:?}")
        }
    }
}

#[test]
fn pool_max_idle_zero_keeps_no_connections() {
    let b = Backend::start(Reply::Echo);
    let gw = single(&b.addr_str(), "pool = { max_idle = 0 }", 1);
    let mut c = gw.client();
    for _ in 0..5 {
        assert_eq!(c.get("/np").status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(2), || b.conns() == 5),
        "{} upstream connections for 5 requests",
        b.conns()
    );
}

// === bytes left on a pooled connection ===

/// What [`Sloppy`] sends around each response.
#[derive(Clone, Copy)]
enum Extra {
    /// `hello` after every response, HEAD included (Python's `http.server`
    /// with `do_HEAD = do_GET`): the head, a pause, then the body.
    HeadBody(Duration),
    /// After every response, a pause, then bytes that are not HTTP.
    Garbage(Duration),
    /// Before every response but a connection's first, `hello`: what the
    /// gateway sees when a late HEAD body arrives after its pool took the
    /// connection for the next request.
    Late,
}

/// A raw-socket backend that answers every request with
/// `200 Content-Length: 5` and `hello`, sending `extra` as well. Records
/// each request as `METHOD /path` and counts connections.
// A test fixture: the backend's threads share its log (not the gateway).
#[allow(clippy::disallowed_types)]
struct Sloppy {
    addr: std::net::SocketAddr,
    conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Sloppy {
    fn start(extra: Extra) -> Sloppy {
        use std::io::{BufReader, Write};
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = Sloppy {
            addr: l.local_addr().unwrap(),
            conns: Default::default(),
            requests: Default::default(),
        };
        let (conns, requests) = (s.conns.clone(), s.requests.clone());
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                conns.fetch_add(1, Ordering::SeqCst);
                let requests = requests.clone();
                thread::spawn(move || {
                    c.set_nodelay(true).unwrap();
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut n = 0;
                    while let Ok(head) = read_head(&mut r, 1 << 16) {
                        let line = String::from_utf8_lossy(&head).into_owned();
                        let mut words = line.split(' ');
                        let (method, path) = (words.next().unwrap(), words.next().unwrap());
                        requests.lock().unwrap().push(format!("{method} {path}"));
                        if n > 0 && matches!(extra, Extra::Late) {
                            let _ = c.write_all(b"hello");
                        }
                        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n";
                        let sent = match extra {
                            Extra::HeadBody(pause) => {
                                let _ = c.write_all(head);
                                thread::sleep(pause);
                                c.write_all(b"hello")
                            }
                            Extra::Garbage(pause) => {
                                let mut whole = head.to_vec();
                                if method != "HEAD" {
                                    whole.extend_from_slice(b"hello");
                                }
                                let _ = c.write_all(&whole);
                                thread::sleep(pause);
                                c.write_all(b"\x00\x01 not http \r\n\r\n")
                            }
                            Extra::Late => {
                                let mut whole = head.to_vec();
                                if method != "HEAD" {
                                    whole.extend_from_slice(b"hello");
                                }
                                c.write_all(&whole)
                            }
                        };
                        if sent.is_err() {
                            return;
                        }
                        n += 1;
                    }
                });
            }
        });
        s
    }

    fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    fn conns(&self) -> usize {
        self.conns.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn head(c: &mut Client, path: &str) -> Response {
    c.send(format!("HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    c.read_head_response()
}

#[test]
fn head_answered_with_a_body_never_poisons_the_next_request() {
    let b = Sloppy::start(Extra::HeadBody(Duration::from_millis(20)));
    let gw = single(&b.addr_str(), "", 1);
    let mut c = gw.client();
    for i in 0..30 {
        let r = head(&mut c, &format!("/same/{i}"));
        assert_eq!(r.status, 200, "HEAD {i} on one client connection: {r:?}");
        assert_eq!(r.header("content-length"), Some("5"));
        let r = c.get(&format!("/same/{i}"));
        assert_eq!(
            r.status, 200,
            "GET {i} after a HEAD answered with a body: {r:?}"
        );
        assert_eq!(r.text(), "hello");
    }
    for i in 0..10 {
        let r = head(&mut gw.client(), &format!("/new/{i}"));
        assert_eq!(r.status, 200, "HEAD {i} on a new client connection: {r:?}");
        let r = gw.client().get(&format!("/new/{i}"));
        assert_eq!(r.status, 200, "GET {i} on a new client connection: {r:?}");
        assert_eq!(r.text(), "hello");
    }
}

#[test]
fn idle_pooled_connection_with_bytes_waiting_is_closed_not_reused() {
    // The HEAD body arrives while the connection is idle in the pool: the
    // checkout finds it and the GET goes out once, on a new connection.
    let b = Sloppy::start(Extra::HeadBody(Duration::from_millis(10)));
    let gw = single(&b.addr_str(), "", 1);
    let mut c = gw.client();
    for i in 0..5 {
        assert_eq!(head(&mut c, &format!("/h/{i}")).status, 200);
        thread::sleep(Duration::from_millis(100));
        let r = c.get(&format!("/g/{i}"));
        assert_eq!(r.status, 200, "GET {i}: {r:?}");
        assert_eq!(r.text(), "hello");
        thread::sleep(Duration::from_millis(100));
    }
    let expected: Vec<String> = (0..5)
        .flat_map(|i| [format!("HEAD /h/{i}"), format!("GET /g/{i}")])
        .collect();
    assert_eq!(
        b.requests(),
        expected,
        "no request went out on a connection with bytes waiting"
    );
    // HEAD i goes out on the connection GET i-1 left clean.
    assert_eq!(b.conns(), 6, "every GET after a HEAD on a new connection");
}

#[test]
fn garbage_after_a_keep_alive_response_closes_the_pooled_connection() {
    let b = Sloppy::start(Extra::Garbage(Duration::from_millis(10)));
    let gw = single(&b.addr_str(), "", 1);
    let mut c = gw.client();
    for i in 0..5 {
        let r = c.get(&format!("/g/{i}"));
        assert_eq!(
            r.status, 200,
            "GET {i} after garbage on the pooled connection: {r:?}"
        );
        assert_eq!(r.text(), "hello");
        thread::sleep(Duration::from_millis(100));
    }
    let expected: Vec<String> = (0..5).map(|i| format!("GET /g/{i}")).collect();
    assert_eq!(b.requests(), expected, "each request sent once");
    assert_eq!(b.conns(), 5, "each request on a new connection");
}

#[test]
fn bad_response_head_on_a_reused_connection_is_retried_once_when_safe() {
    // Bytes ahead of the response on a reused connection (arrived after the
    // pool's check): an idempotent request without a body goes once more
    // on a new connection, and the target is not marked failed for it.
    let b = Sloppy::start(Extra::Late);
    let gw = single(
        &b.addr_str(),
        "health = { max_failures = 1, cooldown_ms = 60000 }",
        1,
    );
    let mut c = gw.client();
    assert_eq!(c.get("/first").status, 200);
    let r = c.get("/second");
    assert_eq!(
        r.status, 200,
        "GET on a reused connection with junk ahead: {r:?}"
    );
    assert_eq!(r.text(), "hello");
    let r = head(&mut c, "/third");
    assert_eq!(r.status, 200, "HEAD likewise: {r:?}");
    assert_eq!(
        b.requests(),
        [
            "GET /first",
            "GET /second",
            "GET /second",
            "HEAD /third",
            "HEAD /third"
        ]
    );
    assert!(
        !gw.stderr().contains("cooling down") && !gw.stderr().contains("invalid response"),
        "the retried failure is not the target's: {}",
        gw.stderr()
    );

    // A request with a body is never sent twice: the junk is a 502.
    let post = b"POST /pay HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\npayload";
    let r = c.request(post);
    assert_json_error(&r, 502);
    assert_eq!(
        b.requests().iter().filter(|r| *r == "POST /pay").count(),
        1,
        "a POST is never retried"
    );
}

/// A line of /proc/sys/net/ipv4/NAME, trimmed.
fn ipv4_sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .unwrap_or_else(|e| panic!("read /proc/sys/net/ipv4/{name}: {e}"))
        .trim()
        .to_string()
}

/// The congestion control of every established connection to `port` on
/// 127.0.0.1, seen from the connecting side (the gateway's), as `ss -ti`
/// reports it: the first word of a connection's info line that names one
/// of the kernel's algorithms.
fn congestion_controls_to(port: u16) -> Vec<String> {
    let available = ipv4_sysctl("tcp_available_congestion_control");
    let known: Vec<&str> = available.split_whitespace().collect();
    let out = std::process::Command::new("ss")
        .args(["-H", "-t", "-i", "-n", "state", "established", "dst"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        // A missing ss fails the test (never a silent pass).
        .expect("run ss (iproute2; scripts/test installs it)");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with([' ', '\t']))
        .map(|l| {
            l.split_whitespace()
                .find(|w| known.contains(w))
                .unwrap_or_else(|| panic!("no congestion control named in ss's line {l:?}"))
                .to_string()
        })
        .collect()
}

/// What a connection to a backend on this host gets without
/// `congestion_control`: the host's default, unless that default paces
/// (`bbr`); then the first of cubic and reno this process may set.
fn unpaced_loopback_choice(default: &str) -> String {
    if !default.starts_with("bbr") {
        return default.to_string();
    }
    let available = ipv4_sysctl("tcp_available_congestion_control");
    let allowed = ipv4_sysctl("tcp_allowed_congestion_control");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_cubic = available.split_whitespace().any(|n| n == "cubic");
    let may_cubic = root || allowed.split_whitespace().any(|n| n == "cubic");
    if has_cubic && may_cubic {
        "cubic"
    } else {
        "reno"
    }
    .to_string()
}

#[test]
fn congestion_control_is_set_on_each_upstream_connection_and_loopback_backends_are_not_paced() {
    let default = ipv4_sysctl("tcp_congestion_control");
    let available = ipv4_sysctl("tcp_available_congestion_control");
    // reno is built into every kernel; any other loaded one does when the
    // host's default is reno.
    let other = available
        .split_whitespace()
        .find(|n| *n != default)
        .unwrap_or_else(|| {
            panic!("this host offers only {available:?}; the test needs a congestion control besides the default {default:?}")
        })
        .to_string();

    let backends = [
        Backend::start(Reply::Echo),
        Backend::start(Reply::Echo),
        Backend::start(Reply::Echo),
    ];
    let gateways = [
        single(
            &backends[0].addr_str(),
            &format!("congestion_control = \"{other}\""),
            1,
        ),
        // The host's default named: kept, even where it paces.
        single(
            &backends[1].addr_str(),
            &format!("congestion_control = \"{default}\""),
            1,
        ),
        single(&backends[2].addr_str(), "", 1),
    ];
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/cc")).collect();
    // Several connections at once, so each pool holds more than one.
    let agents: Vec<ureq::Agent> = (0..3).map(|_| agent()).collect();
    let mut threads = Vec::new();
    for a in agents {
        let urls = urls.clone();
        threads.push(thread::spawn(move || {
            for _ in 0..5 {
                for u in &urls {
                    assert_eq!(call(a.post(u), Some(&[b'x'; 70_000])).status, 200);
                }
            }
        }));
    }
    for t in threads {
        // A client thread's failed assertion fails the test here.
        t.join().expect("client thread");
    }
    let expected = [
        other.clone(),
        default.clone(),
        unpaced_loopback_choice(&default),
    ];
    for ((b, want), what) in backends.iter().zip(&expected).zip([
        "congestion_control = the other one",
        "congestion_control = the host's default",
        "no congestion_control (a loopback backend)",
    ]) {
        let seen = congestion_controls_to(b.addr.port());
        assert!(
            !seen.is_empty() && seen.iter().all(|c| c == want),
            "{what}: want {want:?} on every connection, saw {seen:?} (host default {default:?})"
        );
    }
}

/// A backend that never finishes a response head in time, though it is
/// never silent for long: `GET /hints` (and a POST there, once its body is
/// read) gets `103 Early Hints` every 100 ms, `GET /trickle` its head one
/// byte every 100 ms.
fn never_done_backend() -> std::net::SocketAddr {
    use std::io::{BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the test backend");
    let addr = listener.local_addr().expect("the test backend's address");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let Ok(head) = read_head(&mut r, 65536) else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if std::io::copy(&mut r.by_ref().take(len), &mut std::io::sink()).is_err() {
                    return;
                }
                let w = r.get_mut();
                let step = Duration::from_millis(100);
                if head.contains(" /trickle ") {
                    for b in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
                        thread::sleep(step);
                        if w.write_all(&[*b]).is_err() {
                            return;
                        }
                    }
                } else {
                    for _ in 0..300 {
                        thread::sleep(step);
                        if w.write_all(b"HTTP/1.1 103 Early Hints\r\n\r\n").is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn timeout_ms_bounds_the_whole_response_head_not_each_read() {
    let addr = never_done_backend();
    let gw = single(&addr.to_string(), "timeout_ms = 500", 1);
    for (what, request) in [
        (
            "1xx after 1xx",
            &b"GET /hints HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        ),
        (
            "a trickled head",
            b"GET /trickle HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        (
            "1xx after 1xx once a body is sent",
            b"POST /hints HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        ),
    ] {
        let mut c = gw.client();
        c.set_read_timeout(Duration::from_secs(10));
        let started = std::time::Instant::now();
        c.send(request);
        let r = c.read_response();
        let took = started.elapsed();
        assert_eq!(r.status, 504, "{what}: {r:?}");
        assert!(
            took < Duration::from_millis(2500),
            "{what}: the 504 came after {took:?}, timeout_ms is 500"
        );
    }
}
