//! The HTTP/1.1 server side over raw sockets: keep-alive, pipelining,
//! HTTP/1.0, `Connection: close`, HEAD, `Expect: 100-continue`, and request
//! bodies (Content-Length and chunked, with trailers) to mock and proxy routes.

mod support;

use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /a"
integration = { type = "mock", body = 'A' }

[[apis.routes]]
key = "GET /b"
integration = { type = "mock", headers = { "x-which" = "b" }, body = 'BB' }

[[apis.routes]]
key = "POST /items"
integration = { type = "mock", status = 201, body = 'created' }

[[apis.routes]]
key = "ANY /echo/{proxy+}"
integration = { type = "http_proxy", url = "http://@ECHO@" }

[[apis.routes]]
key = "GET /chunked"
integration = { type = "http_proxy", url = "http://@CHUNKED@" }
"#;

fn setup() -> (Backend, Backend, Gateway) {
    let echo = Backend::start(Reply::Echo);
    let chunked = Backend::start(Reply::Chunked {
        chunks: vec![b"one ".to_vec(), b"two ".to_vec(), b"three".to_vec()],
        trailers: vec![("X-Trailer".into(), "t".into())],
    });
    let gw = Gateway::start(&fill(
        CONFIG,
        &[("ECHO", echo.addr_str()), ("CHUNKED", chunked.addr_str())],
    ));
    (echo, chunked, gw)
}

#[test]
fn keep_alive_serves_several_requests_on_one_socket() {
    let (echo, _c, gw) = setup();
    let mut c = gw.client();
    for i in 0..5 {
        assert_eq!(c.get("/a").text(), "A");
        let e = c.get(&format!("/echo/{i}")).echo();
        assert_eq!(e.target, format!("/echo/{i}"));
        let r = c.get("/b");
        assert_eq!((r.text().as_str(), r.header("x-which")), ("BB", Some("b")));
        assert!(!r.says_close(), "{r:?}");
    }
    assert_eq!(echo.hits(), 5);
}

#[test]
fn pipelined_mock_requests_are_answered_in_order() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    c.send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\nGET /a HTTP/1.1\r\nHost: t\r\n\r\n");
    let bodies: Vec<String> = (0..3).map(|_| c.read_response().text()).collect();
    assert_eq!(bodies, ["A", "BB", "A"]);
}

#[test]
fn pipelined_proxy_requests_are_answered_in_order() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    c.send(
        b"GET /echo/1 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /echo/2 HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody\
          GET /echo/3 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let echoes: Vec<Echo> = (0..3).map(|_| c.read_response().echo()).collect();
    let targets: Vec<&str> = echoes.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["/echo/1", "/echo/2", "/echo/3"]);
    assert_eq!(echoes[1].body, b"body");
}

#[test]
fn pipelined_mixed_mock_and_proxy_requests_are_answered_in_order() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    c.send(
        b"GET /echo/slow-ish HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /a HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(c.read_response().echo().target, "/echo/slow-ish");
    assert_eq!(c.read_response().text(), "A");
    assert_eq!(c.read_response().text(), "one two three");
    assert_eq!(c.read_response().status, 404);
    assert_eq!(c.read_response().text(), "BB");
}

#[test]
fn http10_request_closes_by_default() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    let r = c.request(b"GET /a HTTP/1.0\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "A"));
    c.expect_closed();

    let mut c = gw.client();
    let r = c.request(b"GET /echo/old HTTP/1.0\r\n\r\n");
    assert_eq!(r.echo().target, "/echo/old");
    c.expect_closed();
}

#[test]
fn http10_keep_alive_when_asked() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    for path in ["/a", "/b", "/echo/x"] {
        let r =
            c.request(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        let conn = r
            .header("connection")
            .unwrap_or_else(|| panic!("a 1.0 keep-alive response must say so: {r:?}"));
        assert!(conn.eq_ignore_ascii_case("keep-alive"), "{r:?}");
        assert!(
            matches!(r.framing, Framing::Length(_)),
            "a 1.0 client needs a Content-Length to keep alive: {r:?}"
        );
    }
}

#[test]
fn chunked_upstream_reaches_http10_client_dechunked_and_close_delimited() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    let r = c.request(b"GET /chunked HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(
        r.header("transfer-encoding").is_none(),
        "chunked sent to an HTTP/1.0 client: {r:?}"
    );
    assert_eq!(r.text(), "one two three");
    assert!(r.trailers.is_empty());
    // No length is known when the head goes out: the body ends with the
    // connection.
    assert!(r.header("content-length").is_none(), "{r:?}");
    assert_eq!(r.framing, Framing::Close, "{r:?}");
    assert!(!has_token(r.header("connection"), "keep-alive"), "{r:?}");

    // Even when the 1.0 client asked for keep-alive, a body of unknown length
    // can only be delimited by closing.
    let mut c = gw.client();
    let r = c.request(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert!(r.header("content-length").is_none(), "{r:?}");
    assert_eq!(r.text(), "one two three");
    assert_eq!(r.framing, Framing::Close, "{r:?}");
    assert!(!has_token(r.header("connection"), "keep-alive"), "{r:?}");
}

#[test]
fn connection_close_closes_after_the_response() {
    let (_e, _c, gw) = setup();
    for (path, status) in [("/a", 200), ("/echo/bye", 200), ("/nope", 404)] {
        let mut c = gw.client();
        let r = c.request(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, status, "{path}: {r:?}");
        assert!(
            r.says_close(),
            "the response should say Connection: close: {r:?}"
        );
        c.expect_closed();
    }
}

#[test]
fn head_on_mock_route_has_no_body() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    c.send(b"HEAD /b HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 200, "HEAD falls back to the GET route: {r:?}");
    assert_eq!(r.header("content-length"), Some("2"));
    assert_eq!(r.header("x-which"), Some("b"));
    // A stray body would be parsed as the next status line here.
    assert_eq!(c.get("/a").text(), "A");
    // HEAD to an unknown path: the error has no body either.
    c.send(b"HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 404);
    assert_eq!(c.get("/a").text(), "A");
}

#[test]
fn expect_100_continue_gets_interim_response_before_body() {
    let (echo, _c, gw) = setup();
    let mut c = gw.client();
    c.send(b"POST /echo/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.read_interim();
    assert_eq!(
        interim.status, 100,
        "expected `HTTP/1.1 100 Continue` before sending the body: {interim:?}"
    );
    assert_eq!(interim.minor, 1);
    c.send(b"hello world");
    let r = c.read_response();
    let e = r.echo();
    assert_eq!(e.body, b"hello world");
    assert!(
        !e.has("expect"),
        "Expect is hop-by-hop, handled by the gateway: {e:?}"
    );
    assert!(
        r.informational.is_empty(),
        "a second 100 reached the client: {r:?}"
    );
    assert_eq!(echo.hits(), 1);
    // Same for a mock route.
    c.send(b"POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.read_interim().status, 100);
    c.send(b"abc");
    assert_eq!(c.read_response().status, 201);
    assert_eq!(c.get("/a").text(), "A");
}

#[test]
fn chunked_request_body_reaches_backend_intact() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    let r = c.request(
        b"POST /echo/chunks HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n\
          6;name=value\r\n world\r\n\
          B\r\n 0123456789\r\n\
          0\r\nX-Trailer: dropped-or-forwarded\r\n\r\n",
    );
    let e = r.echo();
    assert_eq!(String::from_utf8_lossy(&e.body), "hello world 0123456789");
    assert_eq!(r.header("x-echo-body-len"), Some("22"));
    // Documented: the body stays chunked (re-framed), the trailer section is
    // dropped.
    assert_eq!(r.header("x-echo-chunked"), Some("1"), "{r:?}");
    assert_eq!(
        r.header("x-echo-trailers"),
        Some(""),
        "trailers reached the backend: {r:?}"
    );
    assert!(!e.has("x-trailer"), "{e:?}");
    assert!(
        !e.has("content-length") || e.header("content-length") == Some("22"),
        "{e:?}"
    );
    // Framing was consumed exactly: the next request on the socket works.
    assert_eq!(c.get("/a").text(), "A");
    // A large chunked body, split over many writes.
    c.send(b"PUT /echo/big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let block = pattern_block();
    write_pattern_chunked(&mut c.stream, 3 * 1024 * 1024 + 17, &block).unwrap();
    let r = c.read_response();
    assert_eq!(
        r.header("x-echo-body-len"),
        Some((3 * 1024 * 1024 + 17).to_string().as_str())
    );
    let mut check = PatternCheck::default();
    check.feed(&r.echo().body);
    assert_eq!((check.offset, check.mismatches), (3 * 1024 * 1024 + 17, 0));
}

#[test]
fn request_bodies_to_mock_routes_are_consumed() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    let inner = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut req = format!(
        "POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    req.extend_from_slice(inner);
    let r = c.request(&req);
    assert_eq!(r.status, 201);
    // The body above looked like a request; it must not have been run as one.
    let r = c.request(b"POST /items HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n");
    assert_eq!(r.status, 201);
    let r = c.get("/b");
    assert_eq!(r.text(), "BB", "responses out of step with requests: {r:?}");
}

#[test]
fn absolute_form_http_target_is_accepted() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    let r = c.request(b"GET http://example.test/a HTTP/1.1\r\nHost: example.test\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "A"));
    let e = c
        .request(b"GET http://example.test/echo/abs?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .echo();
    assert_eq!(e.target, "/echo/abs?q=1", "the upstream gets origin-form");
}

#[test]
fn unsupported_expectation_is_417() {
    let (echo, _c, gw) = setup();
    let mut c = gw.client();
    c.send_lossy(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: something-else\r\n\r\nabc");
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("no 417: {e:?}"));
    assert_json_error(&r, 417);
    assert_eq!(echo.heads(), 0);
}

#[test]
fn mock_responses_carry_a_request_id() {
    let (_e, _c, gw) = setup();
    let mut c = gw.client();
    let r = c.get("/a");
    assert!(
        is_generated_request_id(r.header("x-request-id").unwrap_or("")),
        "{r:?}"
    );
    let r = c.request(b"GET /a HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-1\r\n\r\n");
    assert_eq!(r.header("x-request-id"), Some("abc-1"));
    assert!(
        r.header("date").is_some(),
        "responses carry a Date header: {r:?}"
    );
}
