//! Request smuggling and malformed input, over raw sockets. Each vector must
//! get a 400 with a JSON `{"message": ...}` body, and the connection must be
//! closed: a request pipelined behind the bad one gets no response. The
//! backend behind the route must never see a request.

mod support;

use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok' }

[[apis.routes]]
key = "ANY /echo/{proxy+}"
integration = { type = "http_proxy", url = "http://@B@" }
"#;

/// A well-formed request sent right behind each bad one, in the same write.
const FOLLOWER: &[u8] = b"GET /echo/smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

struct Rig {
    backend: Backend,
    gw: Gateway,
}

fn rig() -> Rig {
    let backend = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(CONFIG, &[("B", backend.addr_str())]));
    Rig { backend, gw }
}

impl Rig {
    /// Sends `bad` plus a pipelined follower; asserts 400 JSON, `Connection:
    /// close`, then EOF; returns the message.
    fn rejected(&self, bad: &[u8]) -> String {
        let mut c = self.gw.client();
        let mut data = bad.to_vec();
        data.extend_from_slice(FOLLOWER);
        c.send_lossy(&data);
        let r = match c.try_read_response(false) {
            Ok(r) => r,
            Err(e) => panic!("no response to {:?}: {e:?}", String::from_utf8_lossy(bad)),
        };
        assert_eq!(
            r.status,
            400,
            "for {:?}: {r:?}",
            String::from_utf8_lossy(bad)
        );
        let msg = assert_json_error(&r, 400);
        assert!(
            r.says_close(),
            "a 400 that closes the connection should say Connection: close: {r:?}"
        );
        if let Err(e) = c.wait_closed(std::time::Duration::from_secs(5)) {
            panic!(
                "connection not closed after a 400 for {:?}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
        msg
    }

    /// Neither the bad request nor the follower reached the backend.
    fn backend_saw_nothing(&self) {
        assert_eq!(
            self.backend.heads(),
            0,
            "backend received: {:?}",
            self.backend.requests()
        );
    }

    /// For errors found in the body: the backend may have seen a head, but
    /// never a whole request, and never the follower.
    fn backend_got_no_whole_request(&self) {
        assert_eq!(
            self.backend.hits(),
            0,
            "backend received whole requests: {:?}",
            self.backend.requests()
        );
        assert!(
            !self
                .backend
                .requests()
                .iter()
                .any(|r| r.contains("smuggled")),
            "the pipelined follower reached the backend: {:?}",
            self.backend.requests()
        );
    }
}

#[test]
fn content_length_with_transfer_encoding() {
    let rig = rig();
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n");
    rig.rejected(b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n");
    rig.backend_saw_nothing();
}

#[test]
fn differing_duplicate_content_length() {
    let rig = rig();
    rig.rejected(
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    );
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!");
    rig.backend_saw_nothing();
}

#[test]
fn invalid_content_length() {
    let rig = rig();
    for cl in [
        "+5",
        "-1",
        "5x",
        "0x5",
        "5.0",
        "",
        "99999999999999999999999",
        "5 5",
    ] {
        rig.rejected(
            format!("POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: {cl}\r\n\r\nhello")
                .as_bytes(),
        );
    }
    rig.backend_saw_nothing();
}

#[test]
fn transfer_encoding_other_than_final_chunked() {
    let rig = rig();
    for te in [
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked;q=1",
        "Transfer-Encoding: ,",
    ] {
        rig.rejected(
            format!("POST /echo/x HTTP/1.1\r\nHost: t\r\n{te}\r\n\r\n0\r\n\r\n").as_bytes(),
        );
    }
    // Chunked from an HTTP/1.0 client cannot be trusted either.
    rig.rejected(b"POST /echo/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    rig.backend_saw_nothing();
}

#[test]
fn obs_fold() {
    let rig = rig();
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n");
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n\tb\r\n\r\n");
    rig.rejected(
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    );
    rig.backend_saw_nothing();
}

#[test]
fn whitespace_before_colon() {
    let rig = rig();
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost : t\r\n\r\n");
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello");
    rig.rejected(
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
    );
    rig.backend_saw_nothing();
}

#[test]
fn invalid_chunk_size() {
    let rig = rig();
    for size in ["zz", "-1", "0x5", " 5", "fffffffffffffffff", ""] {
        rig.rejected(format!("POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n").as_bytes());
    }
    // Chunk data longer than its size line says.
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n");
    // A bare LF as the chunk line end.
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n");
    rig.backend_got_no_whole_request();
}

#[test]
fn chunk_extension_abuse() {
    let rig = rig();
    let huge = "a".repeat(64 * 1024);
    rig.rejected(format!("POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;{huge}\r\nhello\r\n0\r\n\r\n").as_bytes());
    let long_value = format!("5;name=\"{}\"", "v".repeat(8 * 1024));
    rig.rejected(format!("POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{long_value}\r\nhello\r\n0\r\n\r\n").as_bytes());
    // Control characters in an extension.
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x00b\r\nhello\r\n0\r\n\r\n");
    rig.backend_got_no_whole_request();
    // A short, well-formed extension is fine.
    let r = rig.gw.client().request(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n");
    assert_eq!(r.echo().body, b"hello");
}

#[test]
fn nul_cr_lf_in_header_values() {
    let rig = rig();
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Bad: a\x00b\r\n\r\n");
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Bad: a\rb\r\n\r\n");
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Bad: a\nContent-Length: 5\r\n\r\nhello");
    rig.rejected(b"GET /echo/x HTTP/1.1\nHost: t\n\n");
    rig.backend_saw_nothing();
}

#[test]
fn unsupported_request_targets() {
    let rig = rig();
    for target in [
        "ftp://example.com/echo/x",
        "example.com:80",
        "*",
        "echo/x",
        "/echo/x#frag",
        "/echo/../health",
    ] {
        rig.rejected(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    rig.backend_saw_nothing();
}

#[test]
fn invalid_method_token() {
    let rig = rig();
    for method in ["G(T", "GE\"T", "G@T", "GET\x7f", "GE{T}"] {
        rig.rejected(format!("{method} /echo/x HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    rig.backend_saw_nothing();
}

#[test]
fn missing_or_bad_host_in_http11() {
    let rig = rig();
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nX-Other: 1\r\n\r\n");
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n");
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost: a b\r\n\r\n");
    rig.rejected(b"GET /echo/x HTTP/1.1\r\nHost: a/b\r\n\r\n");
    rig.backend_saw_nothing();
}

#[test]
fn connection_header_cannot_hide_framing_headers() {
    let rig = rig();
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello");
    rig.rejected(b"POST /echo/x HTTP/1.1\r\nHost: t\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    rig.backend_saw_nothing();
}

#[test]
fn valid_requests_still_pass_on_the_same_gateway() {
    // The counter-check: the rig itself does not turn everything into 400.
    let rig = rig();
    let mut c = rig.gw.client();
    assert_eq!(c.get("/health").status, 200);
    let r = c.request(
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(
        r.echo().body,
        b"hello",
        "identical duplicate Content-Length is allowed (RFC 9110 8.6)"
    );
    let r = c.request(
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "chunked as the final coding is valid: {r:?}");
    assert_eq!(rig.backend.hits(), 2);
}
