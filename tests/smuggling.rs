//! Request smuggling and malformed input, over raw sockets. Each vector must
//! get a 400 with a JSON `{"message": ...}` body, and the connection must be
//! closed: a request pipelined behind the bad one gets no response. The
//! backend behind the route must never see a request. Chunked bodies go
//! upstream re-framed, so the backend never sees framing the gateway did
//! not write; the last tests check the same framing rules on chunked
//! responses.

mod support;

use std::io::Read;
use std::time::Duration;
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
    let backend = Backend::start_recording(Reply::Echo);
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

    /// Neither the bad request nor the follower reached the backend: no
    /// head parsed there, and no connection or byte either (garbage that
    /// the backend could not parse as a head would still count).
    fn backend_saw_nothing(&self) {
        assert_eq!(
            self.backend.heads(),
            0,
            "backend received: {:?}",
            self.backend.requests()
        );
        self.backend_got_nothing();
    }

    /// Nothing reached the backend at all: no connection, not one byte
    /// (counted as read, before the backend parses anything).
    fn backend_got_nothing(&self) {
        // A connection the gateway made would be in the accept queue
        // before the 400 was sent; give the accept thread time to count it.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            (self.backend.conns(), self.backend.bytes()),
            (0, 0),
            "the backend received: {:?}",
            String::from_utf8_lossy(&self.backend.raw())
        );
    }

    /// A chunked POST whose body begins with `first`, which the gateway
    /// forwards (and so contacts the backend) before `rest` arrives: the
    /// backend must have received exactly `forwarded` after the head when
    /// `rest` and the follower are sent. Asserts a 400 with `message` and a
    /// close, and that the backend then got nothing more and saw its
    /// connection end without a whole request.
    fn rejected_midway(&self, first: &str, forwarded: &str, rest: &str, message: &str) {
        let mut c = self.gw.client();
        c.send(format!("{CHUNKED}{first}").as_bytes());
        let got = || body_after_head(&self.backend.raw());
        assert!(
            wait_until(Duration::from_secs(5), || got().as_deref()
                == Some(forwarded.as_bytes())),
            "for {first:?}: the backend got {:?}, not {forwarded:?}",
            got().map(|b| String::from_utf8_lossy(&b).into_owned())
        );
        let mut data = rest.as_bytes().to_vec();
        data.extend_from_slice(FOLLOWER);
        c.send_lossy(&data);
        let r = c
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("no response to {first:?} {rest:?}: {e:?}"));
        assert_eq!(assert_json_error(&r, 400), message, "{first:?} {rest:?}");
        assert!(r.says_close(), "{r:?}");
        c.wait_closed(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("not closed after {first:?} {rest:?}: {e}"));
        assert!(
            wait_until(Duration::from_secs(5), || self.backend.ended() == 1),
            "the gateway kept the upstream connection of a refused body"
        );
        assert_eq!(
            got().map(|b| String::from_utf8_lossy(&b).into_owned()),
            Some(forwarded.to_string()),
            "for {first:?} {rest:?}"
        );
        assert_eq!((self.backend.conns(), self.backend.hits()), (1, 0));
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

/// The head of a chunked request to the proxy route.
const CHUNKED: &str = "POST /echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";

/// 42 (0x2a) bytes of chunk data.
const DATA42: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEF";

/// What follows the first blank line in `raw`, if it has one.
fn body_after_head(raw: &[u8]) -> Option<Vec<u8>> {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(raw[at + 4..].to_vec())
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

/// A `..` behind a separator or a parameter some backends read as such
/// (`%2F` or `%5C` decoded, `\` taken for `/`, `;...` stripped by Tomcat,
/// Spring, IIS) would leave the `{proxy+}` route's prefix there: refused
/// like a literal `..`. Encoded slashes and `;` elsewhere still go upstream
/// as sent.
#[test]
fn dot_segments_behind_encoded_separators_are_refused() {
    let rig = rig();
    for target in [
        "/echo/..%2fhealth",
        "/echo/..%2Fhealth",
        "/echo/x/%2e%2e%2F..%2Fhealth",
        "/echo/..%5chealth",
        "/echo/..%5Chealth",
        "/echo/..\\health",
        "/echo/..;/health",
        "/echo/..;jsessionid=1/health",
        "/echo/.;x/health",
        "/echo/a%2F..",
    ] {
        let msg = rig.rejected(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(
            msg, "Invalid path: dot segments are not allowed",
            "{target}"
        );
    }
    rig.backend_saw_nothing();
    let mut c = rig.gw.client();
    for target in [
        "/echo/a%2Fb",
        "/echo/a%2F%2Fb",
        "/echo/a%5Cb",
        "/echo/a;x=1/b",
        "/echo/...%2Fb",
        "/echo/..x%2Fb",
        "/echo//a",
    ] {
        let r = c.request(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.echo().target, target);
    }
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

#[test]
fn chunk_size_line_with_junk_after_the_digits() {
    // Regression: whitespace with no extension after it, ';' with no name,
    // '=' with no value and an unterminated quoted string were accepted,
    // and the line forwarded as it came.
    let rig = rig();
    for line in [
        "2a ",
        "2a\t",
        "2a ;",
        "2a;",
        "2a; ",
        "2a;;x",
        "2a;a=",
        "2a;a= ",
        "2a;a=\"b",
        "2a;a=\"b\\\"",
        "2a;a=b ",
        "2a;a b",
        "2a;a=\"b\"c",
    ] {
        let msg = rig.rejected(format!("{CHUNKED}{line}\r\n{DATA42}\r\n0\r\n\r\n").as_bytes());
        assert!(
            msg == "Invalid chunk size" || msg == "Invalid chunk extension",
            "{line:?}: {msg:?}"
        );
    }
    // The same on the last chunk, behind a valid one.
    for line in ["0 ", "0;", "0;a=", "0;a=\"b"] {
        rig.rejected(format!("{CHUNKED}5\r\nhello\r\n{line}\r\n\r\n").as_bytes());
    }
    rig.backend_got_nothing();
}

#[test]
fn trailer_lines_that_are_not_field_lines() {
    // Regression: a trailer line without a colon, or with whitespace before
    // it, was accepted and dropped.
    let rig = rig();
    for trailers in [
        "X\r\n",
        "X-Checksum abc\r\n",
        "X : y\r\n",
        "X\t: y\r\n",
        ": y\r\n",
        "X(y): z\r\n",
        "X-Ok: 1\r\nX : 2\r\n",
        "X: a\x01b\r\n",
    ] {
        let msg = rig.rejected(format!("{CHUNKED}5\r\nhello\r\n0\r\n{trailers}\r\n").as_bytes());
        assert_eq!(msg, "Invalid trailer line", "{trailers:?}");
    }
    rig.backend_got_nothing();
}

#[test]
fn last_chunk_without_the_final_crlf_does_not_swallow_the_next_request() {
    // Regression (a desync of the kind behind CVE-2023-40175): the body
    // stops at "0\r\n", and the pipelined follower's request line and
    // headers were read as its trailer section. A front end that ends the
    // body at "0\r\n" then sends "GET /echo/smuggled" as a request of its
    // own, which we never answered as one.
    let rig = rig();
    for body in ["5\r\nhello\r\n0\r\n", "0\r\n", "0\r\nX-Ok: 1\r\n"] {
        let msg = rig.rejected(format!("{CHUNKED}{body}").as_bytes());
        assert_eq!(msg, "Invalid trailer line", "{body:?}");
    }
    rig.backend_got_nothing();
}

#[test]
fn bad_framing_arriving_after_the_upstream_was_contacted() {
    // What the backend received before the bad bytes arrived is all it
    // gets: our framing for the chunks before them (the extension on the
    // first chunk dropped), never the bad line, never the end of the body.
    rig().rejected_midway(
        "5;ext=1\r\nhello\r\n",
        "5\r\nhello\r\n",
        &format!("2a \r\n{DATA42}\r\n0\r\n\r\n"),
        "Invalid chunk size",
    );
    rig().rejected_midway(
        "5\r\nhello\r\n0\r\nX-Ok: 1\r\n",
        "5\r\nhello\r\n",
        "X : y\r\n\r\n",
        "Invalid trailer line",
    );
    // The follower arriving on its own behind "0\r\n".
    rig().rejected_midway(
        "5\r\nhello\r\n0\r\n",
        "5\r\nhello\r\n",
        "",
        "Invalid trailer line",
    );
}

#[test]
fn trailer_section_over_max_header_bytes() {
    // The trailer section is capped by max_header_bytes (16 KiB here).
    let rig = rig();
    let long = "a".repeat(20 * 1024);
    let msg =
        rig.rejected(format!("{CHUNKED}5\r\nhello\r\n0\r\nX-Long: {long}\r\n\r\n").as_bytes());
    assert_eq!(msg, "Trailer section too large");
    rig.backend_got_no_whole_request();
    assert!(
        wait_until(Duration::from_secs(5), || rig.backend.ended() == 1),
        "the gateway kept the upstream connection of a refused body"
    );
    assert_eq!(rig.backend.conns(), 1);
    // Too long to be seen before the upstream is contacted: the backend got
    // the chunk before the trailer section, and not the end of the body.
    let body = body_after_head(&rig.backend.raw()).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&body), "5\r\nhello\r\n");
}

#[test]
fn chunked_request_arrives_reframed_without_extensions() {
    let rig = rig();
    let mut c = rig.gw.client();
    let data26 = &DATA42[..26];
    let r = c.request(
        format!(
            "{CHUNKED}5;a=b\r\nhello\r\n6 ; c=\"d e\" ;f\r\n world\r\n1A\r\n{data26}\r\n\
             0;last=1\r\nX-T: 1\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        String::from_utf8_lossy(&r.echo().body),
        format!("hello world{data26}")
    );
    assert_eq!(
        String::from_utf8_lossy(&body_after_head(&rig.backend.raw()).unwrap()),
        format!("5\r\nhello\r\n6\r\n world\r\n1a\r\n{data26}\r\n0\r\n\r\n")
    );
    // The framing was consumed exactly: the connection goes on.
    assert_eq!(c.get("/health").status, 200);
    assert_eq!(rig.backend.hits(), 1);
}

const UPSTREAM_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /up"
integration = { type = "http_proxy", url = "http://@B@" }
"#;

/// The body part of what a client receives, up to the close, for a
/// `GET /up` answered by an upstream that sends a chunked 200 head, then
/// `body`, then closes.
fn chunked_response_through_gateway(body: &str) -> String {
    let mut raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(body.as_bytes());
    let backend = Backend::start(Reply::Raw(raw));
    let gw = Gateway::start(&fill(UPSTREAM_CONFIG, &[("B", backend.addr_str())]));
    let mut c = gw.client();
    c.send(b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut got = Vec::new();
    // EOF, or a reset after a cut-short body: either way, what came first.
    let _ = c.stream.read_to_end(&mut got);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
    let head_end = head_end.unwrap_or_else(|| panic!("no head in {got:?}"));
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    String::from_utf8_lossy(&got[head_end + 4..]).into_owned()
}

#[test]
fn chunked_response_is_reframed_without_extensions() {
    assert_eq!(
        chunked_response_through_gateway(
            "5;a=b\r\nhello\r\n6 ; c=\"d\"\r\n world\r\n0;x\r\nX-T: 1\r\n\r\n"
        ),
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
}

#[test]
fn bad_framing_from_the_upstream_cuts_the_response_short() {
    // The client gets the chunks before the bad line and then the close,
    // never a complete body: the end is written only once the upstream's
    // trailer section was read and found valid.
    for body in [
        format!("5\r\nhello\r\n2a \r\n{DATA42}\r\n0\r\n\r\n"),
        format!("5\r\nhello\r\n2a;a=\r\n{DATA42}\r\n0\r\n\r\n"),
        "5\r\nhello\r\n0\r\nX : y\r\n\r\n".to_string(),
        "5\r\nhello\r\n0\r\nX\r\n\r\n".to_string(),
    ] {
        assert_eq!(
            chunked_response_through_gateway(&body),
            "5\r\nhello\r\n",
            "{body:?}"
        );
    }
}

#[test]
fn response_transfer_coding_other_than_one_chunked_is_a_502() {
    // Read until close, the body would still be transfer-coded, and the
    // coding is not passed on: the client would take the coded bytes for
    // the content. The gateway sends no TE upstream, so no coding but
    // chunked was allowed (RFC 9112 §6.1).
    for te in [
        "gzip",
        "chunked, gzip",
        "chunked\r\nTransfer-Encoding: gzip",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\nCODED BYTES");
        let backend = Backend::start(Reply::Raw(raw.into_bytes()));
        let gw = Gateway::start(&fill(UPSTREAM_CONFIG, &[("B", backend.addr_str())]));
        let r = gw.client().get("/up");
        assert_eq!(r.status, 502, "{te:?}: {r:?}");
        assert!(!r.text().contains("CODED"), "{te:?}: {r:?}");
    }
    // Chunked last, but another coding too: over two header lines the
    // gateway passed on only the last (`chunked`), and the client took the
    // gzip-coded bytes for the content (200 and "CODED" before); on one
    // line an HTTP/1.0 client got them de-chunked, with no coding named.
    for te in ["gzip\r\nTransfer-Encoding: chunked", "gzip, chunked"] {
        let raw =
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nCODED\r\n0\r\n\r\n");
        let backend = Backend::start(Reply::Raw(raw.into_bytes()));
        let gw = Gateway::start(&fill(UPSTREAM_CONFIG, &[("B", backend.addr_str())]));
        let r = gw.client().get("/up");
        assert_eq!(r.status, 502, "{te:?}: {r:?}");
        assert!(!r.text().contains("CODED"), "{te:?}: {r:?}");
        let r = gw.client().request(b"GET /up HTTP/1.0\r\n\r\n");
        assert_eq!(r.status, 502, "HTTP/1.0, {te:?}: {r:?}");
        assert!(!r.text().contains("CODED"), "HTTP/1.0, {te:?}: {r:?}");
    }
}

#[test]
fn upstream_connection_is_not_reused_after_content_length_with_transfer_encoding() {
    // A backend that answers every request on a connection with both
    // framing headers. The chunked framing wins for the body, but bytes
    // such a sender writes next may be framed by the other header: the
    // connection must not carry another request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(stream);
                while read_head(&mut r, 65536).is_ok() {
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\
Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
                    if std::io::Write::write_all(r.get_mut(), reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&fill(UPSTREAM_CONFIG, &[("B", addr.to_string())]));
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.get("/up");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
        assert_eq!(r.header("content-length"), None, "{r:?}");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the upstream connection was reused after a response with both framing headers"
    );
}
