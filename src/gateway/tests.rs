//! Unit tests of the gateway: generations keep upstream state by name,
//! and the cache phase's storing rules and hit heads.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds, so a failure is a failing test.

use super::cache::{entry_from_capture, render_hit, HIT_HEADER};
use super::*;
use crate::http::respond::{write_reply, Envelope, Reply, ReplyBody};
use crate::integration::http_proxy::Capture;
use crate::plan::load_str;
use crate::policy::cache::{CacheRule, Entry};
use std::time::Duration;

fn rule_of(cache: &str) -> CacheRule {
    let plan = load_str(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "a"
{cache}

[[apis.routes]]
key = "GET /x"
integration = {{ type = "mock" }}
"#
    ))
    .expect("config");
    plan.routes[0].policies.cache.clone().expect("cache rule")
}

fn plan_with(upstreams: &str) -> Plan {
    load_str(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
{upstreams}

[[apis]]
name = "a"

[[apis.routes]]
key = "GET /x"
integration = {{ type = "mock" }}
"#
    ))
    .expect("config")
}

fn links() -> (
    crate::policy::throttle::ShardLink,
    crate::policy::usage::coordinator::ShardLink,
    crate::policy::usage::coordinator::Running,
) {
    let plan = plan_with("");
    let throttle = crate::policy::throttle::links(&plan.policies.throttle, 1)
        .pop()
        .expect("one link");
    let (mut usage, running) =
        crate::policy::usage::coordinator::start(&plan.policies.usage, 1).expect("coordinator");
    (throttle, usage.pop().expect("one link"), running)
}

#[test]
fn a_generation_keeps_unchanged_upstreams_and_renews_changed_ones() {
    let a = r#"
[[upstreams]]
name = "a"
targets = [{ address = "127.0.0.1:9001" }]

[[upstreams]]
name = "b"
targets = [{ address = "127.0.0.1:9002" }]
"#;
    let (throttle, usage, _running) = links();
    let gw = Gateway::new(0, plan_with(a), throttle, usage, Vec::new());
    let first = gw.generation();
    assert_eq!(first.number, 1);
    let (a1, b1) = (first.upstreams[0].clone(), first.upstreams[1].clone());
    // b moves to another target; a stays; c is new.
    let next = r#"
[[upstreams]]
name = "c"
targets = [{ address = "127.0.0.1:9003" }]

[[upstreams]]
name = "a"
targets = [{ address = "127.0.0.1:9001" }]

[[upstreams]]
name = "b"
targets = [{ address = "127.0.0.1:9004" }]
"#;
    assert_eq!(gw.install(plan_with(next), None), 2);
    let second = gw.generation();
    assert_eq!(second.number, 2);
    assert!(Rc::ptr_eq(&second.upstreams[1], &a1), "a carried over");
    assert!(!Rc::ptr_eq(&second.upstreams[2], &b1), "b renewed");
    // A request that started on the first generation still holds it whole.
    assert_eq!(first.plan.upstreams[1].name, "b");
    assert!(Rc::ptr_eq(&first.upstreams[1], &b1));
    drop(first);
    assert_eq!(Rc::strong_count(&b1), 1, "only the test holds the old b");
}

fn capture(status: u16, headers: &[u8], body: &[u8], complete: bool) -> Capture {
    let mut c = Capture::new(1024);
    c.status = status;
    c.headers = headers.to_vec();
    c.body = body.to_vec();
    c.content_length = body.len() as u64;
    c.complete = complete;
    c
}

#[test]
fn what_is_stored() {
    let r = rule_of("cache = {}");
    let over = rule_of("cache = { ignore_backend_no_store = true }");
    let now = Instant::now();
    let e = entry_from_capture(
        &r,
        &mut capture(
            200,
            b"content-type: text/plain\r\ndate: x\r\nAge: 3\r\n",
            b"hi",
            true,
        ),
        now,
    )
    .expect("stored");
    assert_eq!(&e.headers[..], b"content-type: text/plain\r\n");
    assert_eq!(&e.body[..], b"hi");
    assert_eq!(e.expires, now + Duration::from_secs(300));
    let mut incomplete = capture(200, b"", b"hi", false);
    assert!(entry_from_capture(&r, &mut incomplete, now).is_none());
    let mut not_found = capture(404, b"", b"hi", true);
    assert!(entry_from_capture(&r, &mut not_found, now).is_none());
    let mut private = capture(200, b"cache-control: private\r\n", b"hi", true);
    assert!(entry_from_capture(&r, &mut private, now).is_none());
    let mut private = capture(200, b"cache-control: private\r\n", b"hi", true);
    assert!(entry_from_capture(&over, &mut private, now).is_some());
}

#[test]
fn hit_head_bytes() {
    let now = Instant::now();
    let e = Entry {
        status: 200,
        headers: Box::from(&b"content-type: text/plain\r\n"[..]),
        body: Box::from(&b"hello"[..]),
        content_length: 5,
        stored: now - Duration::from_millis(2500),
        expires: now + Duration::from_secs(60),
    };
    let date = *b"Sun, 06 Nov 1994 08:49:37 GMT";
    let mut rendered = Vec::new();
    render_hit(&mut rendered, &e, now);
    let reply = Reply {
        status: 200,
        body: ReplyBody::Prerendered {
            head: &rendered,
            body: &e.body,
        },
        allow: None,
    };
    let env = |extra: &'static [u8], keep: bool, minor: u8| Envelope {
        date: &date,
        request_id: b"rid",
        extra,
        keep_alive: keep,
        minor_version: minor,
        head_request: false,
    };
    let mut out = Vec::new();
    let body = write_reply(&mut out, &reply, &env(HIT_HEADER, true, 1));
    assert_eq!(body, b"hello");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nage: 2\r\n\
         date: Sun, 06 Nov 1994 08:49:37 GMT\r\nx-request-id: rid\r\nx-cache: Hit\r\n\r\n"
    );
    write_reply(&mut out, &reply, &env(b"", false, 1));
    assert!(out.ends_with(b"x-request-id: rid\r\nconnection: close\r\n\r\n"));
    write_reply(&mut out, &reply, &env(b"", true, 0));
    assert!(out.ends_with(b"connection: keep-alive\r\n\r\n"));
}
