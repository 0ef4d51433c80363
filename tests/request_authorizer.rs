//! The request authorizer over real sockets, against the real binary: a
//! real authorizer service (a std HTTP/1.1 server in this file that counts
//! its calls, reads the JSON the gateway sends, and answers per token:
//! allow with a context, deny, slowly, 500, bad JSON, too large, chunked,
//! or by closing) and a real backend that echoes what it received.
//!
//! Proves: allow (the backend sees the principal and context headers, not
//! the client's forged copies), deny (403, nothing reaches the backend),
//! a missing identity source (401, no call), the cache (one call for many
//! requests on one shard, at most one per shard on two, a new identity is
//! a new call, entries expire after the TTL), coalescing of concurrent
//! misses, every failure (timeout, refused, non-200, bad/oversized JSON,
//! closed, header injection) is 500 and is not cached, query-string
//! identity sources, `ttl_seconds = 0`, the throttle running after the
//! authorizer, request bodies, the call's JSON, and config errors through
//! `coregate check`.
// The Mutex ban in .clippy.toml is for the gateway's data path; the test's
// authorizer service keeps its call log behind a plain lock.
#![allow(clippy::disallowed_types)]

mod support;

use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use support::*;

// === impl the authorizer service ===

/// A real authorizer service on 127.0.0.1:0. The first identity value
/// (without a `Bearer ` prefix) picks the answer:
///
/// - `allow-NAME`: allow, principal NAME, context userId=NAME, n=7
///   (tenant is never given);
/// - `deny`: deny;
/// - `public-only`: allow on the route `GET /public`, deny elsewhere;
/// - `anonymous`: allow, without a principal or a context;
/// - `slow-MS-NAME`: waits MS ms, then like `allow-NAME`;
/// - `status500`: 500 with a JSON body;
/// - `badjson`: 200 with a body that is not JSON;
/// - `huge`: 200 with a 100 KiB JSON answer;
/// - `inject`: allow with CR LF in a context value;
/// - `chunked-NAME`: like `allow-NAME`, chunked;
/// - `eof-NAME`: like `allow-NAME`, without a length, ended by closing;
/// - `interim-NAME`: `100` and `103` first, then like `allow-NAME`;
/// - `hugechunked` / `hugeeof`: 100 KiB answers, chunked / until close;
/// - `close`: closes the connection without answering.
struct Authorizer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Authorizer {
    fn start() -> Authorizer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind authorizer");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (c, n, b) = (calls.clone(), conns.clone(), bodies.clone());
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let (c, b) = (c.clone(), b.clone());
                thread::spawn(move || serve(s, c, b));
            }
        });
        Authorizer {
            addr,
            calls,
            conns,
            bodies,
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    fn last_body(&self) -> Value {
        self.bodies
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a call was made")
    }
}

fn allow_answer(name: &str) -> String {
    json!({
        "isAuthorized": true,
        "principalId": name,
        "context": {"userId": name, "n": 7, "ignored": {"deep": [1]}}
    })
    .to_string()
}

fn serve(s: TcpStream, calls: Arc<AtomicUsize>, bodies: Arc<Mutex<Vec<Value>>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    loop {
        let Ok(head) = read_head(&mut r, 1 << 20) else {
            return;
        };
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(text.starts_with("post "), "not a POST: {text}");
        assert!(
            text.contains("content-type: application/json"),
            "no JSON content type: {text}"
        );
        let len: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        let mut body = Vec::new();
        if read_exact_to(&mut r, len, &mut |c| body.extend_from_slice(c)).is_err() {
            return;
        }
        let v: Value = serde_json::from_slice(&body).expect("the call is JSON");
        calls.fetch_add(1, Ordering::SeqCst);
        bodies.lock().unwrap().push(v.clone());
        let first = v["identity"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let token = first.strip_prefix("Bearer ").unwrap_or(&first).to_string();
        let reply = |w: &mut TcpStream, status: u16, body: &str| {
            let out = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            w.write_all(out.as_bytes())
        };
        let sent = if let Some(name) = token.strip_prefix("allow-") {
            reply(&mut w, 200, &allow_answer(name))
        } else if token == "deny" {
            reply(&mut w, 200, r#"{"isAuthorized":false}"#)
        } else if token == "anonymous" {
            reply(&mut w, 200, r#"{"isAuthorized":true}"#)
        } else if token == "public-only" {
            let allowed = v["routeKey"] == "GET /public";
            reply(&mut w, 200, &json!({ "isAuthorized": allowed }).to_string())
        } else if let Some(rest) = token.strip_prefix("slow-") {
            let (ms, name) = rest.split_once('-').expect("slow-MS-NAME");
            thread::sleep(Duration::from_millis(ms.parse().expect("ms")));
            reply(&mut w, 200, &allow_answer(name))
        } else if token == "status500" {
            reply(&mut w, 500, r#"{"message":"boom"}"#)
        } else if token == "badjson" {
            reply(&mut w, 200, "<html>not json</html>")
        } else if token == "huge" {
            let pad = "x".repeat(100 * 1024);
            reply(
                &mut w,
                200,
                &json!({"isAuthorized": true, "pad": pad}).to_string(),
            )
        } else if token == "inject" {
            reply(
                &mut w,
                200,
                &json!({"isAuthorized": true, "context": {"userId": "a\r\nx-admin: 1"}})
                    .to_string(),
            )
        } else if let Some(name) = token.strip_prefix("eof-") {
            // No length: the answer ends when the connection closes.
            let out = format!(
                "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{}",
                allow_answer(name)
            );
            let _ = w.write_all(out.as_bytes());
            return;
        } else if let Some(name) = token.strip_prefix("interim-") {
            let a = allow_answer(name);
            let out = format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{a}",
                a.len()
            );
            w.write_all(out.as_bytes())
        } else if token == "hugechunked" || token == "hugeeof" {
            let pad = "x".repeat(100 * 1024);
            let a = json!({"isAuthorized": true, "pad": pad}).to_string();
            let out = if token == "hugechunked" {
                format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n0\r\n\r\n",
                    a.len()
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{a}")
            };
            let _ = w.write_all(out.as_bytes());
            return;
        } else if let Some(name) = token.strip_prefix("chunked-") {
            let a = allow_answer(name);
            let (x, y) = a.split_at(a.len() / 2);
            let out = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n",
                x.len(),
                y.len()
            );
            w.write_all(out.as_bytes())
        } else {
            // "close" and anything unknown.
            return;
        };
        if sent.is_err() {
            return;
        }
    }
}

// === impl the gateway ===

struct Setup {
    gw: Gateway,
    authz: Authorizer,
    backend: Backend,
}

/// A gateway with the request authorizer `tokens` (Authorization header)
/// as the default of API `pets`, and `bytoken` (query `token`) on API `q`.
/// `authz_keys` are extra `[authorizers.request]` keys of `tokens`.
fn setup(shards: usize, authz_keys: &str, extra: &str) -> Setup {
    setup_at(shards, authz_keys, extra, None)
}

fn setup_at(shards: usize, authz_keys: &str, extra: &str, url: Option<String>) -> Setup {
    let authz = Authorizer::start();
    let backend = Backend::start(Reply::Echo);
    let url = url.unwrap_or_else(|| format!("http://{}/authorize", authz.addr));
    let text = fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = @SHARDS@

[[authorizers]]
name = "tokens"
[authorizers.request]
url = "@URL@"
identity_sources = ["header:Authorization"]
context_headers = { userId = "x-user-id", tenant = "x-tenant" }
principal_header = "x-principal"
@KEYS@

[[authorizers]]
name = "bytoken"
[authorizers.request]
url = "@URL@"
identity_sources = ["query:token"]
context_headers = { userId = "x-user-id" }

[[apis]]
name = "pets"
base_path = "/pets"
authorizer = "tokens"

[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://@B@/seen/{proxy}" }

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", body = 'mock ok' }

[[apis.routes]]
key = "GET /open"
authorizer = "none"
integration = { type = "http_proxy", url = "http://@B@/open" }

@EXTRA@

[[apis]]
name = "q"
base_path = "/q"
authorizer = "bytoken"

[[apis.routes]]
key = "GET /{proxy+}"
integration = { type = "http_proxy", url = "http://@B@/q/{proxy}" }
"#,
        &[
            ("SHARDS", shards.to_string()),
            ("URL", url),
            ("KEYS", authz_keys.to_string()),
            ("EXTRA", extra.to_string()),
            ("B", backend.addr_str()),
        ],
    );
    let gw = Gateway::start(&text);
    Setup { gw, authz, backend }
}

fn get(c: &mut Client, path: &str, auth: Option<&str>, extra: &str) -> Response {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    c.request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}{extra}\r\n").as_bytes())
}

/// One request on a fresh connection.
fn get_once(s: &Setup, path: &str, auth: Option<&str>) -> Response {
    get(&mut s.gw.client(), path, auth, "")
}

// === allow, deny, missing ===

#[test]
fn an_allow_reaches_the_backend_with_the_authorizers_headers_only() {
    let s = setup(1, "", "");
    let mut c = s.gw.client();
    let r = get(
        &mut c,
        "/pets/1",
        Some("Bearer allow-ann"),
        // Forged copies of every header the authorizer may set, including
        // one (x-tenant) this answer does not give.
        "x-user-id: forged\r\nX-Principal: root\r\nx-tenant: evil\r\nx-other: kept\r\n",
    );
    let e = r.echo();
    assert_eq!(e.target, "/seen/1");
    assert_eq!(e.headers_named("x-user-id"), ["ann"], "{e:?}");
    assert_eq!(e.headers_named("x-principal"), ["ann"], "{e:?}");
    assert!(e.headers_named("x-tenant").is_empty(), "{e:?}");
    assert_eq!(e.header("x-other"), Some("kept"));
    // The credential itself goes on, as API Gateway does.
    assert_eq!(e.header("authorization"), Some("Bearer allow-ann"));
    assert_eq!(s.authz.calls(), 1);
    // A mock route behind the authorizer.
    let r = get(&mut c, "/pets/mock", Some("Bearer allow-ann"), "");
    assert_eq!((r.status, r.text().as_str()), (200, "mock ok"));
    let r = get(&mut c, "/pets/mock", Some("Bearer deny"), "");
    assert_json_error(&r, 403);
    // A route that opts out calls nobody, and forwards client headers.
    let before = s.authz.calls();
    let r = get(&mut c, "/pets/open", None, "x-user-id: mine\r\n");
    assert_eq!(r.echo().header("x-user-id"), Some("mine"));
    assert_eq!(s.authz.calls(), before);
}

#[test]
fn a_deny_is_403_and_nothing_reaches_the_backend() {
    let s = setup(1, "", "");
    let mut c = s.gw.client();
    let r = get(&mut c, "/pets/1", Some("Bearer deny"), "");
    assert_eq!(assert_json_error(&r, 403), "Forbidden");
    assert_eq!(r.text(), r#"{"message":"Forbidden"}"#);
    assert!(!r.says_close(), "the connection stays open: {r:?}");
    // Cached: the same caller again is refused without a call.
    let r = get(&mut c, "/pets/2", Some("Bearer deny"), "");
    assert_json_error(&r, 403);
    assert_eq!(s.authz.calls(), 1);
    assert_eq!(s.backend.heads(), 0);
}

#[test]
fn a_missing_identity_source_is_401_without_a_call() {
    let s = setup(1, "", "");
    let mut c = s.gw.client();
    for extra in [
        "",
        "Authorization:\r\n",
        "Authorization:    \r\n",
        "authorisation: x\r\n",
    ] {
        let r = get(&mut c, "/pets/1", None, extra);
        assert_eq!(assert_json_error(&r, 401), "Unauthorized", "{extra:?}");
    }
    let r = get(&mut c, "/q/a", Some("allow-x"), "");
    assert_json_error(&r, 401);
    let r = get(&mut c, "/q/a?token=", None, "");
    assert_json_error(&r, 401);
    let r = get(&mut c, "/q/a?other=allow-x", None, "");
    assert_json_error(&r, 401);
    assert_eq!(s.authz.calls(), 0);
    assert_eq!(s.backend.heads(), 0);
}

#[test]
fn the_call_carries_the_identity_and_the_request_context() {
    let s = setup(1, "", "");
    let mut c = s.gw.client();
    let r = get(
        &mut c,
        "/pets/dogs/7",
        Some("Bearer allow-ann"),
        "x-request-id: req-42\r\n",
    );
    assert_eq!(r.status, 200);
    let v = s.authz.last_body();
    assert_eq!(v["type"], "REQUEST");
    assert_eq!(v["version"], "1.0");
    assert_eq!(v["authorizer"], "tokens");
    assert_eq!(v["routeKey"], "ANY /{proxy+}");
    assert_eq!(v["methodArn"], "pets/GET/pets/dogs/7");
    assert_eq!(
        v["identity"],
        json!({"header:Authorization": "Bearer allow-ann"})
    );
    let ctx = &v["requestContext"];
    assert_eq!(ctx["apiName"], "pets");
    assert_eq!(ctx["httpMethod"], "GET");
    assert_eq!(ctx["path"], "/pets/dogs/7");
    assert_eq!(ctx["sourceIp"], "127.0.0.1");
    assert_eq!(ctx["requestId"], "req-42");
    assert_eq!(r.header("x-request-id"), Some("req-42"));
}

#[test]
fn a_query_string_identity_source() {
    let s = setup(1, "", "");
    let mut c = s.gw.client();
    let r = get(&mut c, "/q/a?x=1&token=allow-q%2Dbob", None, "");
    let e = r.echo();
    assert_eq!(e.target, "/q/a?x=1&token=allow-q%2Dbob");
    // Percent-decoded before it is sent.
    assert_eq!(e.header("x-user-id"), Some("q-bob"));
    assert_eq!(
        s.authz.last_body()["identity"],
        json!({"query:token": "allow-q-bob"})
    );
    // The same decoded identity: a cache hit.
    let r = get(&mut c, "/q/b?token=allow-q-bob", None, "");
    assert_eq!(r.echo().header("x-user-id"), Some("q-bob"));
    assert_eq!(s.authz.calls(), 1);
    let r = get(&mut c, "/q/a?token=deny", None, "");
    assert_json_error(&r, 403);
    assert_eq!(s.authz.calls(), 2);
}

// === cache ===

#[test]
fn one_call_for_many_requests_of_one_identity_on_one_shard() {
    let s = setup(1, "", "");
    for i in 0..10 {
        // New connections, different paths: the answer is per identity.
        let r = get_once(&s, &format!("/pets/{i}"), Some("Bearer allow-ann"));
        assert_eq!(r.echo().header("x-user-id"), Some("ann"));
    }
    assert_eq!(s.authz.calls(), 1);
    // A new identity is a new call; the old one is still cached.
    let r = get_once(&s, "/pets/1", Some("Bearer allow-bob"));
    assert_eq!(r.echo().header("x-user-id"), Some("bob"));
    let r = get_once(&s, "/pets/1", Some("Bearer allow-ann"));
    assert_eq!(r.echo().header("x-user-id"), Some("ann"));
    assert_eq!(s.authz.calls(), 2);
}

#[test]
fn with_two_shards_at_most_one_call_per_shard() {
    let s = setup(2, "", "");
    for i in 0..20 {
        let r = get_once(&s, &format!("/pets/{i}"), Some("Bearer allow-ann"));
        assert_eq!(r.status, 200);
    }
    let calls = s.authz.calls();
    assert!((1..=2).contains(&calls), "{calls} calls for 2 shards");
}

#[test]
fn answers_expire_after_the_ttl() {
    let s = setup(1, "ttl_seconds = 1", "");
    let mut c = s.gw.client();
    for _ in 0..3 {
        assert_eq!(
            get(&mut c, "/pets/1", Some("Bearer allow-ann"), "").status,
            200
        );
    }
    assert_eq!(s.authz.calls(), 1);
    thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        get(&mut c, "/pets/1", Some("Bearer allow-ann"), "").status,
        200
    );
    assert!(s.authz.calls() >= 2, "the answer outlived its TTL");
}

#[test]
fn ttl_zero_calls_every_time() {
    let s = setup(1, "ttl_seconds = 0", "");
    let mut c = s.gw.client();
    for _ in 0..4 {
        assert_eq!(
            get(&mut c, "/pets/1", Some("Bearer allow-ann"), "").status,
            200
        );
    }
    assert_eq!(s.authz.calls(), 4);
    // Calls go over kept-alive connections.
    assert!(s.authz.conns() < 4, "{} connections", s.authz.conns());
}

#[test]
fn concurrent_misses_for_one_identity_share_one_call() {
    let s = setup(1, "timeout_ms = 5000", "");
    let addr = s.gw.addr();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let r = get(&mut c, "/pets/1", Some("Bearer slow-600-ann"), "");
                (r.status, r.echo().header("x-user-id").map(str::to_string))
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("client"), (200, Some("ann".to_string())));
    }
    assert_eq!(s.authz.calls(), 1, "the waiting requests made calls");
}

// === failures ===

#[test]
fn a_timeout_is_500_and_is_not_cached() {
    let s = setup(1, "timeout_ms = 300", "");
    let mut c = s.gw.client();
    for n in 1..=2 {
        let r = get(&mut c, "/pets/1", Some("Bearer slow-1500-ann"), "");
        assert_eq!(assert_json_error(&r, 500), "Internal Server Error");
        assert_eq!(s.authz.calls(), n, "the failure was cached");
    }
    assert_eq!(s.backend.heads(), 0);
    // The gateway is fine, and so is a fast identity.
    let r = get(&mut c, "/pets/1", Some("Bearer allow-ann"), "");
    assert_eq!(r.status, 200);
    assert!(s
        .gw
        .wait_stderr_line(Duration::from_secs(5), |l| l
            .contains("request authorizer \"tokens\"")
            && l.contains("no answer within"))
        .is_some());
}

#[test]
fn an_authorizer_that_is_down_is_500() {
    let s = setup_at(1, "", "", Some(format!("http://{}/a", refused_addr())));
    let mut c = s.gw.client();
    for _ in 0..2 {
        let r = get(&mut c, "/pets/1", Some("Bearer allow-ann"), "");
        assert_json_error(&r, 500);
    }
    assert_eq!(s.backend.heads(), 0);
    assert!(s
        .gw
        .wait_stderr_line(Duration::from_secs(5), |l| l.contains("connect failed"))
        .is_some());
}

#[test]
fn broken_answers_are_500_and_are_not_cached() {
    let s = setup(1, "", "");
    let mut c = s.gw.client();
    for token in [
        "status500",
        "badjson",
        "huge",
        "hugechunked",
        "hugeeof",
        "inject",
        "close",
    ] {
        for _ in 0..2 {
            let before = s.authz.calls();
            let r = get(&mut c, "/pets/1", Some(&format!("Bearer {token}")), "");
            assert_eq!(
                assert_json_error(&r, 500),
                "Internal Server Error",
                "{token}"
            );
            // At least one call each time (a connection closed unanswered
            // is retried once on a new one if it came from the pool).
            assert!(s.authz.calls() > before, "{token}: the failure was cached");
        }
    }
    assert_eq!(s.backend.heads(), 0, "a failure let a request through");
    // Chunked, close-delimited and after interim responses: read like any
    // other answer.
    for (token, user) in [
        ("chunked-cat", "cat"),
        ("eof-dog", "dog"),
        ("interim-eel", "eel"),
    ] {
        let r = get(&mut c, "/pets/1", Some(&format!("Bearer {token}")), "");
        assert_eq!(r.echo().header("x-user-id"), Some(user), "{token}");
    }
}

// === order and bodies ===

#[test]
fn a_refused_caller_costs_no_throttle_tokens() {
    let s = setup(
        1,
        "",
        r#"[[apis.routes]]
key = "GET /limited"
throttle = { rate = 0.001, burst = 1 }
integration = { type = "http_proxy", url = "http://@B@/limited" }"#,
    );
    let mut c = s.gw.client();
    for _ in 0..3 {
        assert_json_error(&get(&mut c, "/pets/limited", Some("Bearer deny"), ""), 403);
        assert_json_error(&get(&mut c, "/pets/limited", None, ""), 401);
    }
    // The one token is still there for an allowed caller (after a call).
    assert_eq!(
        get(&mut c, "/pets/limited", Some("Bearer allow-ann"), "").status,
        200
    );
    assert_json_error(
        &get(&mut c, "/pets/limited", Some("Bearer allow-ann"), ""),
        429,
    );
}

#[test]
fn request_bodies_wait_for_the_answer() {
    let s = setup(1, "", "");
    let mut c = s.gw.client();
    let r = c.request(
        b"POST /pets/new HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer slow-200-ann\r\ncontent-length: 5\r\n\r\nhello",
    );
    let e = r.echo();
    assert_eq!((e.method.as_str(), &e.body[..]), ("POST", &b"hello"[..]));
    assert_eq!(e.header("x-user-id"), Some("ann"));
    // Refused with a body: answered, and the connection still works.
    let r = c.request(
        b"POST /pets/new HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer deny\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert_json_error(&r, 403);
    let r = get(&mut c, "/pets/1", Some("Bearer allow-ann"), "");
    assert_eq!(r.status, 200);
    assert_eq!(s.backend.heads(), 2);
}

// === config ===

#[test]
fn coregate_check_reports_every_error_with_its_key() {
    let path = write_config(
        r#"
[[authorizers]]
name = "tokens"
[authorizers.request]
url = "ftp://127.0.0.1:9/a"
identity_sources = ["$request.header.Authorization"]
ttl_seconds = 4000
timeout_ms = 0
context_headers = { userId = "x-forwarded-for" }

[[apis]]
name = "a"
authorizer = "tokens"

[[apis.routes]]
key = "GET /x"
authorization_scopes = ["read"]
integration = { type = "mock" }
"#,
    );
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for (key, needle) in [
        ("authorizers[0].request.url", "https://"),
        (
            "authorizers[0].request.identity_sources[0]",
            "\"header:Authorization\"",
        ),
        ("authorizers[0].request.ttl_seconds", "3600"),
        ("authorizers[0].request.timeout_ms", "10000"),
        (
            "authorizers[0].request.context_headers.userId",
            "pick another",
        ),
        (
            "apis[0].routes[0].authorization_scopes",
            "request authorizer",
        ),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains(key) && l.contains(needle)),
            "no error for {key} ({needle}):\n{stderr}"
        );
    }
}

/// An API key on a usage plan with a quota, plus a request authorizer
/// called for every request (`ttl_seconds = 0`), on two shards: denied
/// callers cost no quota, and every admitted request counts exactly once,
/// whichever path (authorizer call, then the quota's lease wait) it took.
#[test]
fn a_key_quota_behind_a_request_authorizer_counts_each_request_once() {
    let authz = Authorizer::start();
    let dir = temp_path("ra-quota");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = dir.join("keys.toml");
    let out = run_coregate(&[
        "keys",
        "create",
        "--file",
        keys.to_str().unwrap(),
        "--name",
        "alice",
        "--usage-plan",
        "gold",
    ]);
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let clock = dir.join("clock");
    // 2026-11-24T12:00:00Z, far from a day boundary.
    std::fs::write(&clock, "1795521600").expect("clock");
    let text = fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2
api_keys_file = "@KEYS@"
data_dir = "@DATA@"
usage_flush_interval_ms = 100

[[usage_plans]]
name = "gold"
apis = ["pets"]
quota = { limit = 40, period = "DAY" }

[[authorizers]]
name = "tokens"
[authorizers.request]
url = "http://@AZ@/authorize"
identity_sources = ["header:Authorization"]
ttl_seconds = 0

[[apis]]
name = "pets"
base_path = "/pets"
api_key_required = true
authorizer = "tokens"

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", body = 'ok' }
"#,
        &[
            ("KEYS", keys.display().to_string()),
            ("DATA", dir.join("data").display().to_string()),
            ("AZ", authz.addr.to_string()),
        ],
    );
    let gw = Gateway::start_with_env(&text, &[("COREGATE_CLOCK_FILE", clock.to_str().unwrap())]);
    let with_key = format!("x-api-key: {key}\r\n");
    // Denied by the authorizer: 403, no quota spent.
    for _ in 0..10 {
        let r = get(&mut gw.client(), "/pets/x", Some("Bearer deny"), &with_key);
        assert_json_error(&r, 403);
    }
    // Fresh connections, so requests land on both shards.
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..60 {
        let r = get(
            &mut gw.client(),
            "/pets/x",
            Some("Bearer allow-ann"),
            &with_key,
        );
        match r.status {
            200 => ok += 1,
            429 => {
                assert_eq!(r.json_message().as_deref(), Some("Limit Exceeded"));
                limited += 1;
            }
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    assert_eq!((ok, limited), (40, 20), "{}", gw.stderr());
    assert!(authz.calls() >= 70, "every request was authorized first");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A broken authorizer under load logs about a line a second per shard,
/// not one per request (regression: every failed call was logged).
#[test]
fn failed_calls_are_logged_at_a_bounded_rate() {
    let s = setup_at(1, "", "", Some(format!("http://{}/a", refused_addr())));
    let mut c = s.gw.client();
    for _ in 0..40 {
        assert_json_error(&get(&mut c, "/pets/1", Some("Bearer allow-ann"), ""), 500);
    }
    assert!(s
        .gw
        .wait_stderr_line(Duration::from_secs(5), |l| l.contains("connect failed"))
        .is_some());
    let lines =
        s.gw.stderr()
            .lines()
            .filter(|l| l.contains("request authorizer"))
            .count();
    // One line per second at most: far fewer than the 40 failures, however
    // slowly the machine ran them, unless it took 40 s.
    assert!(
        (1..40).contains(&lines),
        "{lines} log lines for 40 failed calls"
    );
    assert!(s
        .gw
        .stderr()
        .contains("failed call(s) on this shard so far"));
}

/// With `cache_per_route`, an answer cached for one route is never used
/// for another, also after a reload that keeps the authorizer but moves
/// the routes (regression: the cache key held the route's index in the
/// plan, and the cache was carried over a reload that reordered the
/// routes, so an allow for `GET /public` let the same caller into
/// `GET /admin` without a call).
#[test]
fn a_per_route_answer_is_not_used_for_another_route_after_a_reload() {
    let authz = Authorizer::start();
    let config = |first: &str, second: &str| {
        fill(
            r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[authorizers]]
name = "tokens"
[authorizers.request]
url = "http://@AZ@/authorize"
identity_sources = ["header:Authorization"]
cache_per_route = true

[[apis]]
name = "r"
base_path = "/r"
authorizer = "tokens"

[[apis.routes]]
key = "GET /@FIRST@"
integration = { type = "mock", body = '@FIRST@' }

[[apis.routes]]
key = "GET /@SECOND@"
integration = { type = "mock", body = '@SECOND@' }
"#,
            &[
                ("AZ", authz.addr.to_string()),
                ("FIRST", first.to_string()),
                ("SECOND", second.to_string()),
            ],
        )
    };
    let gw = Gateway::start(&config("public", "admin"));
    let token = Some("Bearer public-only");
    let r = get(&mut gw.client(), "/r/public", token, "");
    assert_eq!((r.status, r.text()), (200, "public".to_string()));
    assert_json_error(&get(&mut gw.client(), "/r/admin", token, ""), 403);
    assert_eq!(authz.calls(), 2);
    // The same authorizer, the routes in the other order.
    gw.reload_with(&config("admin", "public"));
    assert_json_error(&get(&mut gw.client(), "/r/admin", token, ""), 403);
    let r = get(&mut gw.client(), "/r/public", token, "");
    assert_eq!((r.status, r.text()), (200, "public".to_string()));
    // Both answers were kept over the reload, each for its own route.
    assert_eq!(authz.calls(), 2);
}

/// An allow without a `principalId` leaves the principal the API key gave
/// (its name), as a JWT without `sub` does (regression: the request
/// authorizer cleared it, so `$context.authorizer.principalId` was empty
/// on a keyed route).
#[test]
fn an_allow_without_a_principal_keeps_the_api_keys_name() {
    let authz = Authorizer::start();
    let backend = Backend::start(Reply::Echo);
    let dir = temp_path("ra-principal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let keys = dir.join("keys.toml");
    let key = create_key(&keys, "alice", None);
    let text = fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
api_keys_file = "@KEYS@"

[[authorizers]]
name = "tokens"
[authorizers.request]
url = "http://@AZ@/authorize"
identity_sources = ["header:Authorization"]

[[apis]]
name = "pets"
base_path = "/pets"
api_key_required = true
authorizer = "tokens"

[[apis.routes]]
key = "GET /x"
integration = { type = "http_proxy", url = "http://@B@/x" }

[apis.routes.mapping.request]
"overwrite:header.x-caller" = "$context.authorizer.principalId"
"#,
        &[
            ("KEYS", keys.display().to_string()),
            ("AZ", authz.addr.to_string()),
            ("B", backend.addr_str()),
        ],
    );
    let gw = Gateway::start(&text);
    let with_key = format!("x-api-key: {key}\r\n");
    let r = get(
        &mut gw.client(),
        "/pets/x",
        Some("Bearer anonymous"),
        &with_key,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo().header("x-caller"), Some("alice"));
    // A principal the authorizer gives wins.
    let r = get(
        &mut gw.client(),
        "/pets/x",
        Some("Bearer allow-ann"),
        &with_key,
    );
    assert_eq!(r.echo().header("x-caller"), Some("ann"));
    let _ = std::fs::remove_dir_all(&dir);
}
