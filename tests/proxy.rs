//! The http_proxy integration against real backends: what is forwarded, what
//! is removed, what is added, and how each kind of upstream response reaches
//! the client (status, headers, chunked, close-delimited, HTTP/1.0, HEAD, 1xx).

mod support;

use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "proxy"

[[apis.routes]]
key = "ANY /echo/{proxy+}"
integration = { type = "http_proxy", url = "http://@ECHO@" }

[[apis.routes]]
key = "ANY /special/{proxy+}"
integration = { type = "http_proxy", url = "http://@SPECIAL@" }
"#;

/// An echo backend on `/echo/...` and `special` on `/special/...`.
fn setup(special: Reply) -> (Backend, Backend, Gateway) {
    let echo = Backend::start(Reply::Echo);
    let sp = Backend::start(special);
    let gw = Gateway::start(&fill(
        CONFIG,
        &[("ECHO", echo.addr_str()), ("SPECIAL", sp.addr_str())],
    ));
    (echo, sp, gw)
}

#[test]
fn method_and_body_pass_through() {
    let (echo, _s, gw) = setup(Reply::Echo);
    let a = agent();
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let body = format!("{method} body \u{1F980} with bytes");
        let e = call(
            a.request(method, &gw.url("/echo/thing")),
            Some(body.as_bytes()),
        )
        .echo();
        assert_eq!(e.method, method);
        assert_eq!(e.target, "/echo/thing");
        assert_eq!(e.body, body.as_bytes());
        assert_eq!(
            e.header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }
    // A method no route key can name still goes through an ANY route.
    let mut c = gw.client();
    let r = c.request(b"PURGE /echo/x HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc");
    let e = r.echo();
    assert_eq!(
        (e.method.as_str(), e.body.as_slice()),
        ("PURGE", &b"abc"[..])
    );
    assert_eq!(echo.hits(), 5);
}

#[test]
fn hop_by_hop_request_headers_are_removed() {
    let (_e, _s, gw) = setup(Reply::Echo);
    let mut c = gw.client();
    let r = c.request(
        b"GET /echo/hop HTTP/1.1\r\n\
          Host: test\r\n\
          Connection: keep-alive, X-Drop-Me\r\n\
          X-Drop-Me: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Trailer: X-Checksum\r\n\
          Upgrade: websocket\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          Proxy-Connection: keep-alive\r\n\
          X-Keep-Me: yes\r\n\
          Authorization: Bearer token\r\n\
          \r\n",
    );
    let e = r.echo();
    for gone in [
        "x-drop-me",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(!e.has(gone), "{gone} must not be forwarded: {e:?}");
    }
    if let Some(conn) = e.header("connection") {
        assert!(
            !conn.to_ascii_lowercase().contains("x-drop-me"),
            "client's Connection forwarded: {conn}"
        );
    }
    assert_eq!(e.header("x-keep-me"), Some("yes"));
    assert_eq!(
        e.header("authorization"),
        Some("Bearer token"),
        "end-to-end headers are forwarded"
    );
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let reply = Reply::fixed(
        200,
        &[
            ("Connection", "X-Secret"),
            ("X-Secret", "internal"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authenticate", "Basic"),
            ("X-Pass", "yes"),
        ],
        "body",
    );
    let (_e, _s, gw) = setup(reply);
    let mut c = gw.client();
    let r = c.get("/special/x");
    assert_eq!(r.status, 200, "{r:?}");
    for gone in ["x-secret", "keep-alive", "proxy-authenticate"] {
        assert!(
            r.header(gone).is_none(),
            "{gone} must not reach the client: {r:?}"
        );
    }
    assert_eq!(r.header("x-pass"), Some("yes"));
    assert_eq!(r.text(), "body");
}

#[test]
fn forwarded_headers_are_set() {
    let (_e, _s, gw) = setup(Reply::Echo);
    let mut c = gw.client();
    let e = c
        .request(b"GET /echo/fwd HTTP/1.1\r\nHost: example.test:8080\r\n\r\n")
        .echo();
    assert_eq!(e.header("x-forwarded-for"), Some("127.0.0.1"), "{e:?}");
    assert_eq!(e.header("x-forwarded-proto"), Some("http"), "{e:?}");
    assert_eq!(
        e.header("x-forwarded-host"),
        Some("example.test:8080"),
        "{e:?}"
    );

    // A client-sent chain: the gateway's hop is the last one, once.
    let e = c
        .request(
            b"GET /echo/fwd HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 10.1.2.3\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n",
        )
        .echo();
    let xff = e.headers_named("x-forwarded-for");
    assert_eq!(xff.len(), 1, "exactly one X-Forwarded-For upstream: {e:?}");
    let hops: Vec<&str> = xff[0].split(',').map(str::trim).collect();
    assert_eq!(
        hops,
        ["10.1.2.3", "127.0.0.1"],
        "the client IP is appended to the client's chain"
    );
    assert_eq!(e.headers_named("x-forwarded-proto"), ["http"], "{e:?}");
    assert_eq!(
        e.headers_named("x-forwarded-host"),
        ["example.test"],
        "{e:?}"
    );
}

#[test]
fn request_id_is_generated_returned_and_forwarded() {
    let (_e, _s, gw) = setup(Reply::Echo);
    let mut c = gw.client();
    let r = c.get("/echo/id");
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id: {r:?}"))
        .to_string();
    assert!(is_generated_request_id(&id), "not 32 hex digits: {id:?}");
    assert_eq!(r.echo().headers_named("x-request-id"), [id.as_str()]);
    let r2 = c.get("/echo/id");
    let id2 = r2.header("x-request-id").unwrap();
    assert!(is_generated_request_id(id2));
    assert_ne!(id, id2, "request ids must differ per request");
    // Gateway-made responses carry one too.
    let r = c.get("/nowhere");
    assert!(
        is_generated_request_id(r.header("x-request-id").unwrap_or("")),
        "{r:?}"
    );
}

#[test]
fn client_request_id_is_kept() {
    let (_e, _s, gw) = setup(Reply::Echo);
    let mut c = gw.client();
    let r = c.request(b"GET /echo/id HTTP/1.1\r\nHost: test\r\nX-Request-Id: my-trace-123\r\n\r\n");
    assert_eq!(r.header("x-request-id"), Some("my-trace-123"), "{r:?}");
    assert_eq!(r.headers_named("x-request-id").len(), 1, "{r:?}");
    assert_eq!(r.echo().headers_named("x-request-id"), ["my-trace-123"]);
    let r = c.request(b"GET /nowhere HTTP/1.1\r\nHost: test\r\nX-Request-Id: my-trace-456\r\n\r\n");
    assert_eq!(r.header("x-request-id"), Some("my-trace-456"), "{r:?}");
}

#[test]
fn invalid_client_request_id_is_replaced() {
    let (_e, _s, gw) = setup(Reply::Echo);
    let mut c = gw.client();
    let long = "x".repeat(201);
    for bad in [long.as_str(), "has space", "tab\there"] {
        let r = c.request(
            format!("GET /echo/id HTTP/1.1\r\nHost: test\r\nX-Request-Id: {bad}\r\n\r\n")
                .as_bytes(),
        );
        let id = r.header("x-request-id").unwrap_or("").to_string();
        assert!(
            is_generated_request_id(&id),
            "client id {bad:?} should be replaced, got {id:?}"
        );
        assert_eq!(
            r.echo().headers_named("x-request-id"),
            [id.as_str()],
            "only the new id goes upstream"
        );
    }
    let ok = "y".repeat(200);
    let r = c.request(
        format!("GET /echo/id HTTP/1.1\r\nHost: test\r\nX-Request-Id: {ok}\r\n\r\n").as_bytes(),
    );
    assert_eq!(
        r.header("x-request-id"),
        Some(ok.as_str()),
        "200 visible characters are valid"
    );
}

#[test]
fn bodyless_post_gets_content_length_zero_upstream() {
    let (_e, _s, gw) = setup(Reply::Echo);
    let mut c = gw.client();
    for method in ["POST", "PUT", "PATCH"] {
        let e = c
            .request(format!("{method} /echo/empty HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .echo();
        assert_eq!(e.headers_named("content-length"), ["0"], "{method}: {e:?}");
        assert!(!e.has("transfer-encoding"));
    }
    let e = c.get("/echo/get").echo();
    assert!(
        !e.has("content-length") || e.header("content-length") == Some("0"),
        "{e:?}"
    );
}

/// Seconds since the epoch of an HTTP date, read by Python's
/// `email.utils` (a parser we did not write).
fn http_date_secs(value: &str) -> i64 {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, email.utils; print(int(email.utils.parsedate_to_datetime(sys.argv[1]).timestamp()))",
            value,
        ])
        .output()
        // python3 is installed by scripts/test: a test failure, not an input.
        .expect("python3");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an HTTP date: {value:?}"))
}

/// RFC 9110 §6.6.1: a proxy with a clock appends a `Date` to a response
/// that arrives without one; an upstream's own `Date` is kept as it is.
#[test]
fn a_response_without_date_gets_one_and_an_upstreams_is_kept() {
    let (_e, _s, gw) = setup(Reply::fixed(
        200,
        &[("Date", "Sun, 06 Nov 1994 08:49:37 GMT")],
        "dated",
    ));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    // The echo backend sends no Date; nor do chunked, close-delimited,
    // HTTP/1.0 or HEAD responses of it.
    for req in [
        &b"GET /echo/a HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"HEAD /echo/a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /echo/a HTTP/1.0\r\nHost: t\r\n\r\n",
    ] {
        let mut c = gw.client();
        let before = now();
        c.send(req);
        let r = if req.starts_with(b"HEAD") {
            c.read_head_response()
        } else {
            c.read_response()
        };
        let after = now();
        let dates = r.headers_named("date");
        assert_eq!(dates.len(), 1, "{r:?}");
        let at = http_date_secs(dates[0]);
        assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
    }
    let r = gw.client().get("/special/x");
    assert_eq!(
        r.headers_named("date"),
        ["Sun, 06 Nov 1994 08:49:37 GMT"],
        "{r:?}"
    );
    // One listed in Connection is not passed on: the gateway's replaces it.
    for reply in [
        Reply::fixed(
            200,
            &[
                ("Connection", "date"),
                ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
            "x",
        ),
        Reply::Chunked {
            chunks: vec![b"abc".to_vec()],
            trailers: vec![],
        },
        Reply::CloseDelimited(b"until close".to_vec()),
        Reply::fixed(204, &[], ""),
        Reply::fixed(503, &[], "down"),
    ] {
        let (_e, _s, gw) = setup(reply);
        let r = gw.client().get("/special/x");
        let dates = r.headers_named("date");
        assert_eq!(dates.len(), 1, "{r:?}");
        assert!((http_date_secs(dates[0]) - now()).abs() <= 2, "{r:?}");
    }
    // The gateway's own responses carry one too (a 404, a 502).
    let r = gw.client().get("/nowhere");
    assert_eq!((r.status, r.headers_named("date").len()), (404, 1), "{r:?}");
    let (_e, _s, gw) = setup(Reply::DropAlways);
    let r = gw.client().get("/special/x");
    assert_eq!((r.status, r.headers_named("date").len()), (502, 1), "{r:?}");
}

#[test]
fn upstream_status_and_headers_pass_through() {
    let reply = Reply::fixed(
        201,
        &[
            ("X-Custom", "abc"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Cache-Control", "no-store"),
        ],
        "created!",
    );
    let (_e, _s, gw) = setup(reply);
    let r = gw.client().get("/special/new");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("x-custom"), Some("abc"));
    assert_eq!(
        r.headers_named("set-cookie"),
        ["a=1", "b=2"],
        "repeated headers keep their order"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.text(), "created!");

    for status in [204u16, 404, 500, 503] {
        let body = if status == 204 {
            ""
        } else {
            "upstream says so"
        };
        let (_e, _s, gw) = setup(Reply::fixed(status, &[("X-Status", "kept")], body));
        let r = gw.client().get("/special/s");
        assert_eq!(r.status, status, "{r:?}");
        assert_eq!(r.header("x-status"), Some("kept"));
        assert_eq!(
            r.text(),
            body,
            "an upstream error body is passed through, not replaced"
        );
    }
}

#[test]
fn chunked_upstream_response_reaches_client() {
    let chunks: Vec<Vec<u8>> = vec![
        b"hello ".to_vec(),
        b"chunked ".to_vec(),
        vec![b'z'; 70_000],
        b"end".to_vec(),
    ];
    let expected: Vec<u8> = chunks.concat();
    let reply = Reply::Chunked {
        chunks,
        trailers: vec![("X-Checksum".into(), "42".into())],
    };
    let (_e, _s, gw) = setup(reply);
    let mut c = gw.client();
    let r = c.get("/special/chunks");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected, "body differs: {r:?}");
    assert!(
        r.header("content-length").is_none() || r.framing == Framing::Length(expected.len() as u64)
    );
    // The connection is still in sync for the next request.
    let r = c.get("/special/chunks");
    assert_eq!(r.body, expected);
}

#[test]
fn close_delimited_upstream_response_reaches_client() {
    let body: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let (_e, sp, gw) = setup(Reply::CloseDelimited(body.clone()));
    let mut c = gw.client();
    let r = c.get("/special/close");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "body differs");
    if r.framing == Framing::Close || r.says_close() {
        c.expect_closed();
    } else {
        // Re-framed for the client (chunked): the connection goes on.
        let r = c.get("/special/close");
        assert_eq!(r.body.len(), body.len());
        assert_eq!(
            sp.conns(),
            2,
            "a close-delimited upstream connection cannot be reused"
        );
    }
}

#[test]
fn http10_upstream_response_reaches_client() {
    let (_e, _s, gw) = setup(Reply::Http10(b"from an old server".to_vec()));
    let mut c = gw.client();
    let r = c.get("/special/old");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "from an old server");
    assert_eq!(r.minor, 1, "the gateway speaks HTTP/1.1 to its client");
}

#[test]
fn head_request_through_proxy_has_no_body() {
    let (_e, _s, gw) = setup(Reply::fixed(200, &[("X-Head", "1")], "twelve bytes"));
    let mut c = gw.client();
    c.send(b"HEAD /special/h HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-head"), Some("1"));
    assert_eq!(
        r.header("content-length"),
        Some("12"),
        "HEAD keeps the upstream's Content-Length: {r:?}"
    );
    // No body bytes may follow: the next response must parse cleanly.
    let r = c.get("/special/h");
    assert_eq!((r.status, r.text().as_str()), (200, "twelve bytes"));
}

#[test]
fn early_hints_are_forwarded_to_http11_client() {
    let (_e, _s, gw) = setup(Reply::EarlyHints);
    let mut c = gw.client();
    let r = c.get("/special/hints");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "final");
    assert_eq!(
        r.informational.len(),
        1,
        "one 103 before the final response: {r:?}"
    );
    let hint = &r.informational[0];
    assert_eq!(hint.status, 103);
    assert_eq!(hint.header("link"), Some("</style.css>; rel=preload"));
    assert_eq!(c.get("/special/hints").text(), "final");
}

#[test]
fn early_hints_are_not_sent_to_http10_client() {
    let (_e, _s, gw) = setup(Reply::EarlyHints);
    let mut c = gw.client();
    let r = c.request(b"GET /special/hints HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(
        r.informational.is_empty(),
        "1xx sent to an HTTP/1.0 client: {r:?}"
    );
    assert_eq!(r.text(), "final");
}

#[test]
fn unsolicited_100_continue_is_swallowed() {
    let (_e, _s, gw) = setup(Reply::Unsolicited100);
    let mut c = gw.client();
    let r = c.get("/special/u100");
    assert_eq!(r.status, 200);
    assert!(
        r.informational.is_empty(),
        "an unsolicited 100 reached the client: {r:?}"
    );
    assert_eq!(r.text(), "final");
    assert_eq!(c.get("/special/u100").text(), "final");
}

#[test]
fn upstream_host_header_is_the_target_address() {
    let (echo, _s, gw) = setup(Reply::Echo);
    let e = gw
        .client()
        .request(b"GET /echo/h HTTP/1.1\r\nHost: client.example\r\n\r\n")
        .echo();
    assert_eq!(e.headers_named("host"), [echo.addr_str().as_str()], "{e:?}");
}
