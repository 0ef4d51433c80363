//! `[server.limits]` and connection limits over real sockets: 414, 431 (bytes
//! and count), 413 (Content-Length and chunked), 408 (slow head, stalled
//! body), the idle keep-alive timeout and max_connections_per_shard.

mod support;

use std::thread;
use std::time::Duration;
use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[server.limits]
max_request_line_bytes = 256
max_header_bytes = 1024
max_headers = 10
max_body_bytes = 1000
header_read_timeout_ms = 300
body_read_timeout_ms = 300

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok' }

[[apis.routes]]
key = "POST /items"
integration = { type = "mock", status = 201, body = 'created' }

[[apis.routes]]
key = "ANY /echo/{proxy+}"
integration = { type = "http_proxy", url = "http://@B@" }
"#;

fn setup() -> (Backend, Gateway) {
    let b = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(CONFIG, &[("B", b.addr_str())]));
    (b, gw)
}

/// Sends `data`, expects a JSON error with `status`, then the connection closed.
fn expect_error_and_close(gw: &Gateway, data: &[u8], status: u16) -> Response {
    let mut c = gw.client();
    c.send_lossy(data);
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("no {status} response: {e:?}"));
    assert_json_error(&r, status);
    c.expect_closed();
    r
}

#[test]
fn request_line_too_long_is_414() {
    let (b, gw) = setup();
    let path = format!("/echo/{}", "a".repeat(400));
    let r = expect_error_and_close(
        &gw,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        414,
    );
    assert_eq!(
        r.json_message().as_deref(),
        Some("URI Too Long"),
        "as documented"
    );
    // Also when the line has not even ended yet.
    expect_error_and_close(&gw, format!("GET {path}").as_bytes(), 414);
    // Just under the limit is fine.
    let path = format!("/echo/{}", "a".repeat(200));
    let r = gw.client().get(&path);
    assert_eq!(r.echo().target, path);
    assert_eq!(b.heads(), 1);
}

#[test]
fn header_bytes_too_large_is_431() {
    let (b, gw) = setup();
    let big = "v".repeat(500);
    let req = format!(
        "GET /echo/x HTTP/1.1\r\nHost: t\r\nX-A: {big}\r\nX-B: {big}\r\nX-C: {big}\r\n\r\n"
    );
    expect_error_and_close(&gw, req.as_bytes(), 431);
    // Without ever finishing the head.
    let req = format!("GET /echo/x HTTP/1.1\r\nHost: t\r\nX-A: {big}{big}{big}");
    expect_error_and_close(&gw, req.as_bytes(), 431);
    assert_eq!(b.heads(), 0);
    // Under the limit passes.
    let r = gw
        .client()
        .request(format!("GET /echo/x HTTP/1.1\r\nHost: t\r\nX-A: {big}\r\n\r\n").as_bytes());
    assert_eq!(r.echo().header("x-a"), Some(big.as_str()));
}

#[test]
fn too_many_headers_is_431() {
    let (b, gw) = setup();
    let mut req = String::from("GET /echo/x HTTP/1.1\r\nHost: t\r\n");
    for i in 0..15 {
        req.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    expect_error_and_close(&gw, req.as_bytes(), 431);
    assert_eq!(b.heads(), 0);
    let mut ok = String::from("GET /echo/x HTTP/1.1\r\nHost: t\r\n");
    for i in 0..5 {
        ok.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    ok.push_str("\r\n");
    assert_eq!(gw.client().request(ok.as_bytes()).status, 200);
}

#[test]
fn body_too_large_by_content_length_is_413() {
    let (b, gw) = setup();
    // Refused from the head alone, before any body byte is sent.
    expect_error_and_close(
        &gw,
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
        413,
    );
    // With Expect: 100-continue the client is told 413 instead of 100.
    let mut c = gw.client();
    c.send(
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    );
    let r = c.read_response();
    assert!(
        r.informational.is_empty(),
        "100 Continue sent for a body that will be refused: {r:?}"
    );
    assert_json_error(&r, 413);
    // Mock routes too.
    expect_error_and_close(
        &gw,
        b"POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n",
        413,
    );
    assert_eq!(b.heads(), 0, "the backend saw {:?}", b.requests());
    // Exactly at the limit is accepted.
    let body = vec![b'x'; 1000];
    let mut req = b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    assert_eq!(gw.client().request(&req).echo().body, body);
}

#[test]
fn chunked_body_too_large_is_413() {
    let (b, gw) = setup();
    let mut c = gw.client();
    c.send(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("190\r\n{}\r\n", "y".repeat(400));
    for _ in 0..5 {
        c.send_lossy(chunk.as_bytes());
    }
    c.send_lossy(b"0\r\n\r\n");
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("no 413: {e:?}"));
    assert_json_error(&r, 413);
    c.expect_closed();
    assert_eq!(b.hits(), 0, "an oversized body reached the backend whole");
    // 2 x 400 bytes is under the limit.
    let mut c = gw.client();
    let r = c.request(format!("POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n").as_bytes());
    assert_eq!(r.echo().body.len(), 800);
}

#[test]
fn slow_request_head_is_408() {
    let (b, gw) = setup();
    let mut c = gw.client();
    c.send(b"GET /echo/x HTTP/1.1\r\nHo");
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("expected 408 after header_read_timeout_ms: {e:?}"));
    assert_json_error(&r, 408);
    c.expect_closed();
    // Trickling bytes does not reset the head timer: one byte every 40 ms
    // (well inside the 300 ms timeout each) for far longer than the
    // timeout. The 408 must come while the trickle is still going; a timer
    // reset by each byte would answer only after the trickle ended.
    let mut c = gw.client();
    let trickle_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let mut s = c.stream.try_clone().unwrap();
        let done = trickle_done.clone();
        thread::spawn(move || {
            use std::io::Write;
            let mut head = b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Slow: ".to_vec();
            head.resize(head.len() + 100, b'x');
            for b in head {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(40));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("expected 408 for a trickled head: {e:?}"));
    assert!(
        !trickle_done.load(std::sync::atomic::Ordering::SeqCst),
        "the 408 came only after the trickle ended: each byte reset the head timer"
    );
    assert_json_error(&r, 408);
    c.expect_closed();
    sender.join().unwrap();
    assert_eq!(b.heads(), 0);
}

#[test]
fn stalled_request_body_is_408() {
    let (b, gw) = setup();
    // A proxied body that stops coming: 408, the connection closed, and no
    // whole request reaches the backend.
    let stalled = |raw: &[u8], what: &str| {
        let mut c = gw.client();
        c.send(raw);
        let r = c
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("{what}: expected 408 after body_read_timeout_ms: {e:?}"));
        assert_json_error(&r, 408);
        c.expect_closed();
        assert_eq!(b.hits(), 0, "{what}");
    };
    stalled(
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789",
        "by length",
    );
    // Chunked, stalled inside a chunk.
    stalled(
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
        "chunked",
    );
    // To a mock route: it may answer before reading the body, but the stall
    // must end with the connection closed, not held open.
    let mut c = gw.client();
    c.send(b"POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc");
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("expected 408 or 201: {e:?}"));
    if r.status != 201 {
        assert_json_error(&r, 408);
    }
    c.expect_closed();
}

/// A gateway with `shards` shards, the given `[server.limits]` lines, and
/// one mock route, `GET /health`, answering "ok".
fn health_gateway(shards: usize, limits: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = {shards}
[server.limits]
{limits}

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /health"
integration = {{ type = "mock", body = 'ok' }}
"#
    ))
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let gw = health_gateway(2, "idle_timeout_ms = 300\nheader_read_timeout_ms = 3000");
    let mut c = gw.client();
    assert_eq!(c.get("/health").text(), "ok");
    assert_eq!(
        c.get("/health").text(),
        "ok",
        "keep-alive works before the idle timeout"
    );
    // Well under header_read_timeout_ms: it is the idle timeout that closes.
    c.set_read_timeout(Duration::from_secs(2));
    // Documented: closed silently, without a response.
    match c.try_read_response(false) {
        Err(ReadError::Closed) | Err(ReadError::Reset) => {}
        other => panic!("idle connection not closed silently after idle_timeout_ms: {other:?}"),
    }
    // A connection that never sends anything is closed the same way.
    let mut c = gw.client();
    if let Err(e) = c.wait_closed(Duration::from_secs(2)) {
        panic!("a silent new connection was not closed after idle_timeout_ms: {e}");
    }
}

/// Regression for parking (src/net, `Conn::park`): a keep-alive connection
/// quiet for over a second is parked with no task; a request then, or two
/// pipelined in one write, must be answered on the same connection, and the
/// idle timeout must still close it silently.
#[test]
fn parked_connection_serves_again_and_still_idles_out() {
    let gw = health_gateway(1, "idle_timeout_ms = 2500");
    let mut c = gw.client();
    assert_eq!(c.get("/health").text(), "ok");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.get("/health").text(), "ok", "answered after being parked");
    std::thread::sleep(Duration::from_millis(1500));
    c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().text(), "ok");
    assert_eq!(c.read_response().text(), "ok", "second pipelined request");
    // Parked again; the idle timeout (2.5 s) closes it without a response.
    c.set_read_timeout(Duration::from_secs(6));
    match c.try_read_response(false) {
        Err(ReadError::Closed) | Err(ReadError::Reset) => {}
        other => panic!("parked connection not closed after idle_timeout_ms: {other:?}"),
    }
}

#[test]
fn client_that_stops_reading_is_closed_after_write_timeout() {
    let b = Backend::start(Reply::Large {
        len: 256 << 20,
        chunked: false,
    });
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
[server.limits]
write_timeout_ms = 300

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /big"
integration = { type = "http_proxy", url = "http://@B@" }
"#,
        &[("B", b.addr_str())],
    ));
    let mut c = gw.client();
    c.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    // Read nothing while the socket buffers fill and the write times out.
    std::thread::sleep(Duration::from_millis(2000));
    let mut got = 0u64;
    match c.read_response_with(false, &mut |d| got += d.len() as u64) {
        Err(ReadError::Truncated(r)) => assert_eq!(r.status, 200),
        other => panic!(
            "expected the download cut short by write_timeout_ms, got {other:?} after {got} bytes"
        ),
    }
    assert!(got < 256 << 20);
    // The gateway is still serving.
    let mut c2 = gw.client();
    c2.send(b"HEAD /big HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c2.read_head_response().status, 200);
}

#[test]
fn max_connections_per_shard_refuses_extra_connections_with_503() {
    let gw = Gateway::start(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
max_connections_per_shard = 2

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok' }
"#,
    );
    let mut a = gw.client();
    let mut b = gw.client();
    assert_eq!(a.get("/health").status, 200);
    assert_eq!(b.get("/health").status, 200);
    let mut c = gw.client();
    c.send_lossy(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("third connection got no 503: {e:?}"));
    assert_json_error(&r, 503);
    c.expect_closed();
    // The first two are unaffected.
    assert_eq!(a.get("/health").status, 200);
    assert_eq!(b.get("/health").status, 200);
    // Closing one frees a slot.
    drop(a);
    let ok = wait_until(Duration::from_secs(5), || {
        let mut d = gw.client();
        d.send_lossy(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        matches!(d.try_read_response(false), Ok(r) if r.status == 200)
    });
    assert!(ok, "a slot did not free up after a connection closed");
}
