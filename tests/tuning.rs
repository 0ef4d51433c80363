//! `[[server.shard]]` over real sockets against the real binary: a listener
//! served by one shard only is answered by that shard only, a shard's own
//! connection limit holds while another shard's does not apply to it, bad
//! keys are refused all at once with their names, a reload that changes
//! a shard's settings is refused naming each one, and each shard thread's
//! timer slack (how late the kernel may end its epoll sleep) is the
//! kernel's tick or the shard's own `timer_slack_us`.
//!
//! Which shard answered: every response's `x-request-id` starts with a
//! per-shard prefix (16 hex digits, fixed at shard start), and
//! `coregate_connections_accepted_total{shard="N",...}` on the admin
//! listener counts each shard's accepted connections.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

/// Two listeners, each served by one shard: 127.0.0.1 by shard 0,
/// 127.0.0.2 by shard 1 (with its own connection limit of 2).
const SPLIT: &str = r#"
[server]
listen = ["127.0.0.1:0", "127.0.0.2:0"]
shards = 2

[[server.shard]]
id = 0
listeners = ["127.0.0.1:0"]

[[server.shard]]
id = 1
listeners = ["127.0.0.2:0"]
max_connections = 2
ring_depth = 64
io_memory_kib = 256
preempt_timer_ms = 50
background_shares = 100

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /probe"
integration = { type = "mock", body = "probe" }
"#;

/// The shard prefix of a response's request id.
fn shard_prefix(r: &Response) -> String {
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no request id: {r:?}"));
    assert!(is_generated_request_id(id), "{r:?}");
    id[..16].to_string()
}

/// The prefixes of the shards that answered `n` fresh connections to
/// `addr`, one request each.
fn prefixes(addr: std::net::SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let mut c = Client::connect(addr);
            let r = c.get("/probe");
            assert_eq!(r.status, 200, "{r:?}");
            shard_prefix(&r)
        })
        .collect()
}

/// `coregate_connections_accepted_total` of plain listeners on `shard`.
fn accepted(gw: &Gateway, shard: usize) -> u64 {
    let r = http_get(&gw.admin_url("/metrics"));
    assert_eq!(r.status, 200, "{}", r.text());
    let want =
        format!("coregate_connections_accepted_total{{shard=\"{shard}\",listener=\"plain\"}} ");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .unwrap_or_else(|| panic!("no {want} in\n{}", r.text()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{want}: {e}"))
}

#[test]
fn a_listener_served_by_one_shard_is_answered_by_that_shard_only() {
    // Without shard 1's limit of 2: closed connections free their slots a
    // moment after the client closes them.
    let gw = Gateway::start(&SPLIT.replace("max_connections = 2\n", ""));
    let (a, b) = (gw.addrs()[0], gw.addrs()[1]);
    assert_eq!(a.ip().to_string(), "127.0.0.1");
    assert_eq!(b.ip().to_string(), "127.0.0.2");
    // With both shards serving a listener, SO_REUSEPORT would spread 24
    // connections over both (all on one: 2^-23).
    let on_b = prefixes(b, 24);
    assert_eq!(
        on_b.len(),
        1,
        "127.0.0.2 answered by several shards: {on_b:?}"
    );
    let on_a = prefixes(a, 24);
    assert_eq!(
        on_a.len(),
        1,
        "127.0.0.1 answered by several shards: {on_a:?}"
    );
    assert_ne!(on_a, on_b, "both listeners answered by one shard");
    // And it is shard 1 that serves 127.0.0.2: it accepted 24 (plus none
    // of 127.0.0.1's), shard 0 the other 24.
    assert!(
        wait_until(Duration::from_secs(5), || accepted(&gw, 1) == 24
            && accepted(&gw, 0) == 24),
        "accepted: shard 0 {}, shard 1 {}",
        accepted(&gw, 0),
        accepted(&gw, 1)
    );
    for _ in 0..5 {
        prefixes(b, 1);
    }
    assert!(wait_until(Duration::from_secs(5), || accepted(&gw, 1) == 29));
    assert_eq!(accepted(&gw, 0), 24);
}

#[test]
fn a_shards_own_connection_limit_holds_and_applies_to_it_only() {
    let gw = Gateway::start(SPLIT);
    let (a, b) = (gw.addrs()[0], gw.addrs()[1]);
    // Shard 1 (127.0.0.2) holds at most 2 connections.
    let mut first = Client::connect(b);
    let mut second = Client::connect(b);
    assert_eq!(first.get("/probe").status, 200);
    assert_eq!(second.get("/probe").status, 200);
    let mut third = Client::connect(b);
    third.send_lossy(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = third
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("third connection to shard 1 got no 503: {e:?}"));
    assert_json_error(&r, 503);
    third.expect_closed();
    // Shard 0 keeps the default limit: 10 connections at once are served.
    let mut held: Vec<Client> = (0..10).map(|_| Client::connect(a)).collect();
    for c in &mut held {
        assert_eq!(c.get("/probe").status, 200);
    }
    // Shard 1's two are unaffected; closing one frees a slot.
    assert_eq!(first.get("/probe").status, 200);
    drop(first);
    let ok = wait_until(Duration::from_secs(5), || {
        let mut d = Client::connect(b);
        d.send_lossy(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n");
        matches!(d.try_read_response(false), Ok(r) if r.status == 200)
    });
    assert!(
        ok,
        "a slot on shard 1 did not free up after a connection closed"
    );
    assert_eq!(second.get("/probe").status, 200);
}

#[test]
fn bad_shard_keys_are_refused_all_at_once_by_name() {
    let config = write_config(
        r#"
[server]
listen = ["127.0.0.1:0", "127.0.0.2:0"]
shards = 2
pin_shards = false

[[server.shard]]
listeners = ["127.0.0.1:0"]

[[server.shard]]
id = 2

[[server.shard]]
id = 0
listeners = ["127.0.0.9:0", "nowhere", "127.0.0.1:0"]
cpu = 0
max_connections = 0
ring_depth = 0
io_memory_kib = 1
spin_before_park_us = 5000000
preempt_timer_ms = 0
epoll_sleep_us = 100001
timer_slack_us = 100001
background_shares = 0
ring_size = 4

[[server.shard]]
id = 0

[[server.shard]]
id = 1
listeners = ["127.0.0.1:0"]

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /probe"
integration = { type = "mock", body = "probe" }
"#,
    );
    let out = run_coregate(&["check", "--config", config.to_str().unwrap()]);
    let _ = std::fs::remove_file(&config);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "server.shard[0].id: is required",
        "server.shard[1].id: shard 2 does not exist: server.shards is 2",
        "server.shard[2].listeners[0]: \"127.0.0.9:0\" is not a listen address",
        "server.shard[2].listeners[1]: \"nowhere\" is not an IP:port address",
        "server.shard[2].cpu: pins the shard to a CPU, but server.pin_shards = false",
        "server.shard[2].max_connections: must be at least 1",
        "server.shard[2].ring_depth: must be from 1 to 32768",
        "server.shard[2].io_memory_kib: must be from 64 to 1048576",
        "server.shard[2].spin_before_park_us: must be at most 1000000",
        "server.shard[2].preempt_timer_ms: must be from 1 to 10000",
        "server.shard[2].epoll_sleep_us: must be at most 100000",
        "server.shard[2].timer_slack_us: must be at most 100000",
        "server.shard[2].background_shares: must be from 1 to 1000000",
        "server.shard[2].ring_size",
        "server.shard[3].id: shard 0 already has an entry (server.shard[2])",
        "server.shard: no shard serves the listener 127.0.0.2:0",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn a_reload_that_changes_a_shards_settings_is_refused_naming_each() {
    let gw = Gateway::start(SPLIT);
    let changed = SPLIT
        .replace("ring_depth = 64", "ring_depth = 256")
        .replace(
            "listeners = [\"127.0.0.2:0\"]",
            "listeners = [\"127.0.0.2:0\", \"127.0.0.1:0\"]",
        )
        .replace("body = \"probe\"", "body = \"new\"");
    gw.rewrite_config(&changed);
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("server.shard[id = 1].ring_depth: changed from 64 to 256"),
        "{text}"
    );
    assert!(
        text.contains(
            "server.shard[id = 1].listeners: changed from [127.0.0.2:0] to [127.0.0.2:0, 127.0.0.1:0]"
        ),
        "{text}"
    );
    assert!(text.contains("restart coregate"), "{text}");
    // Nothing changed: the old body, and 127.0.0.1 still on one shard.
    let mut c = Client::connect(gw.addrs()[0]);
    assert_eq!(c.get("/probe").text(), "probe");
    assert_eq!(prefixes(gw.addrs()[0], 12).len(), 1);
    // A reload that leaves the shards alone is taken.
    gw.reload_with(&SPLIT.replace("body = \"probe\"", "body = \"new\""));
    assert_eq!(Client::connect(gw.addrs()[1]).get("/probe").text(), "new");
}

/// The timer slack (ns) of every thread of `pid` named `coregate-shard-`
/// (the name is cut to 15 bytes), and of every other thread.
fn slacks(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let (mut shards, mut others) = (Vec::new(), Vec::new());
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().to_string();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Ok(slack) = std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns")) else {
            continue;
        };
        let slack: u64 = slack
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("timerslack_ns of {tid}: {slack:?}: {e}"));
        if comm.starts_with("coregate-shard") {
            shards.push(slack);
        } else {
            others.push(slack);
        }
    }
    (shards, others)
}

/// The kernel's tick: the resolution of CLOCK_MONOTONIC_COARSE.
fn tick_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for a write of a timespec.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_getres: {}", std::io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn each_shards_epoll_sleep_takes_the_kernels_tick_or_its_own_timer_slack() {
    // Shard 0 keeps the default (the kernel's tick), shard 1 sets 250 µs.
    let gw = Gateway::start(&SPLIT.replace("max_connections = 2\n", "timer_slack_us = 250\n"));
    assert_eq!(Client::connect(gw.addrs()[0]).get("/probe").status, 200);
    let tick = tick_ns();
    // 50 µs is the kernel's default; a tick is at least 1 ms (HZ ≤ 1000).
    assert!(tick >= 1_000_000, "tick {tick} ns");
    let (shards, others) = slacks(gw.pid());
    assert!(
        shards.contains(&tick) && shards.contains(&250_000),
        "shard threads' slack {shards:?}, want {tick} (shard 0) and 250000 (shard 1)"
    );
    // The setting is the shards' own: no other thread of the process has it.
    assert!(
        !others.iter().any(|s| *s == tick || *s == 250_000),
        "other threads' slack {others:?}"
    );
    // The slack delays no answer: an idle shard still answers at once.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(Client::connect(gw.addrs()[1]).get("/probe").status, 200);
}
