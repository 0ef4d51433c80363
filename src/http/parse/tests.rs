//! Byte-level tests for request head parsing: framing, smuggling vectors,
//! limits and the spans handed to the rest of the gateway.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on
//! input the test writes itself (config text, heads, keys, addresses), so a
//! failure is a failed test; nothing a client or a config file controls
//! reaches them.

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8192,
    max_head: 16384,
    max_headers: 100,
};

/// Parses a complete, valid head.
fn ok(buf: &[u8]) -> RequestHead {
    match parse_request_head(buf, &LIMITS) {
        Ok(Some(h)) => h,
        Ok(None) => panic!("incomplete: {:?}", String::from_utf8_lossy(buf)),
        Err(r) => panic!("rejected {r:?}: {:?}", String::from_utf8_lossy(buf)),
    }
}

fn reject_with(buf: &[u8], limits: &HeadLimits) -> Reject {
    match parse_request_head(buf, limits) {
        Err(r) => r,
        Ok(h) => panic!("accepted {:?}: {h:?}", String::from_utf8_lossy(buf)),
    }
}

/// The status a head is refused with.
fn status(buf: &[u8]) -> u16 {
    reject_with(buf, &LIMITS).status
}

/// The value of the first header called `name`, and its hop flag.
fn header<'a>(head: &RequestHead, buf: &'a [u8], name: &str) -> Option<(&'a [u8], bool)> {
    head.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| (h.value.get(buf), h.hop))
}

fn is_hop(head: &RequestHead, buf: &[u8], name: &str) -> bool {
    header(head, buf, name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .1
}

/// `GET / HTTP/1.1` with the given extra header lines (each ending in CRLF).
fn get_with(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: a.example\r\n{headers}\r\n").into_bytes()
}

// ---- the basics ------------------------------------------------------------

#[test]
fn simple_get() {
    let buf =
        b"GET /pets/7?limit=10&x=%20 HTTP/1.1\r\nHost: api.example.com\r\nAccept: */*\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.len, buf.len());
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.method_span.get(buf), b"GET");
    assert_eq!(h.path.get(buf), b"/pets/7");
    assert_eq!(h.path(buf), b"/pets/7");
    assert_eq!(h.query.unwrap().get(buf), b"limit=10&x=%20");
    assert_eq!(h.minor_version, 1);
    assert_eq!(h.host.unwrap().get(buf), b"api.example.com");
    assert_eq!(h.framing, Framing::None);
    assert!(h.keep_alive);
    assert!(!h.expect_continue);
    assert!(!h.upgrade);
    assert_eq!(h.request_id, None);
    assert_eq!(h.headers.len(), 2);
    assert_eq!(h.headers[0].name.get(buf), b"Host");
    assert_eq!(h.headers[0].value.get(buf), b"api.example.com");
    assert!(h.headers[0].hop, "Host is set by the gateway");
    assert_eq!(h.headers[1].name.get(buf), b"Accept");
    assert_eq!(h.headers[1].value.get(buf), b"*/*");
    assert!(!h.headers[1].hop);
}

#[test]
fn named_and_other_methods() {
    for (m, want) in [
        ("GET", Method::Get),
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("PATCH", Method::Patch),
        ("DELETE", Method::Delete),
        ("OPTIONS", Method::Options),
        ("PURGE", Method::Other),
        // Methods are case-sensitive: a valid token, but not GET.
        ("get", Method::Other),
    ] {
        let buf = format!("{m} /x HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
        let h = ok(&buf);
        assert_eq!(h.method, want, "{m}");
        assert_eq!(h.method_span.get(&buf), m.as_bytes());
    }
}

#[test]
fn empty_query_and_no_query() {
    let buf = b"GET /a? HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.path(buf), b"/a");
    assert_eq!(h.query.unwrap().get(buf), b"");
    let buf = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    assert!(ok(buf).query.is_none());
    // Only the first '?' splits; the query keeps the rest as is.
    let buf = b"GET /a?b?c=/../d HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.path(buf), b"/a");
    assert_eq!(h.query.unwrap().get(buf), b"b?c=/../d");
}

#[test]
fn header_values_are_trimmed_spans_into_the_buffer() {
    let buf = b"GET / HTTP/1.1\r\nHost:a\r\nX-Pad: \t padded value \t \r\nX-Empty:\r\n\r\n";
    let h = ok(buf);
    assert_eq!(header(&h, buf, "host").unwrap().0, b"a");
    assert_eq!(header(&h, buf, "x-pad").unwrap().0, b"padded value");
    assert_eq!(header(&h, buf, "x-empty").unwrap().0, b"");
    for hs in &h.headers {
        // Every span is inside the head.
        assert!(hs.name.end as usize <= h.len && hs.value.end as usize <= h.len);
    }
}

#[test]
fn obs_text_in_header_values_is_kept() {
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\r\n\r\n";
    let h = ok(buf);
    assert_eq!(header(&h, buf, "x-name").unwrap().0, b"caf\xc3\xa9");
}

// ---- keep-alive --------------------------------------------------------------

#[test]
fn keep_alive_defaults_by_version() {
    assert!(ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
    let h = ok(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(h.minor_version, 0);
    assert!(!h.keep_alive);
}

#[test]
fn connection_close_and_keep_alive() {
    assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n").keep_alive);
    assert!(
        !ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo , close\r\nX-Foo: 1\r\n\r\n")
            .keep_alive
    );
    assert!(ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(!ok(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!ok(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
}

#[test]
fn connection_close_wins_over_a_later_keep_alive() {
    // Regression (bug fixed in parse.rs): on HTTP/1.0, a keep-alive token
    // that came after close turned keep_alive back on. RFC 9112 §9.3: when the
    // close option is present the connection does not persist, whatever else
    // is listed.
    assert!(!ok(b"GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n").keep_alive);
    assert!(
        !ok(b"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n").keep_alive
    );
    assert!(
        !ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
            .keep_alive
    );
}

// ---- incremental input -----------------------------------------------------

#[test]
fn every_proper_prefix_is_incomplete() {
    let reqs: [&[u8]; 4] = [
        b"GET /pets?x=1 HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        b"\r\nGET / HTTP/1.0\r\n\r\n",
        b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
    ];
    for req in reqs {
        for n in 0..req.len() {
            match parse_request_head(&req[..n], &LIMITS) {
                Ok(None) => {}
                other => panic!(
                    "prefix {:?} gave {other:?}",
                    String::from_utf8_lossy(&req[..n])
                ),
            }
        }
        assert_eq!(ok(req).len, req.len());
    }
}

#[test]
fn empty_input_is_incomplete() {
    assert!(matches!(parse_request_head(b"", &LIMITS), Ok(None)));
    assert!(matches!(parse_request_head(b"\r\n", &LIMITS), Ok(None)));
}

#[test]
fn leading_blank_lines_are_skipped() {
    let buf = b"\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.len, buf.len());
    assert_eq!(h.method_span, Span { start: 2, end: 5 });
    assert_eq!(h.path(buf), b"/x");

    let buf = b"\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.len, buf.len());
    assert_eq!(h.method_span.get(buf), b"GET");
}

#[test]
fn pipelined_request_is_left_after_len() {
    let first = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
    let second = b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n";
    let mut buf = first.to_vec();
    buf.extend_from_slice(b"hello");
    buf.extend_from_slice(second);
    let h = ok(&buf);
    assert_eq!(h.len, first.len());
    assert_eq!(h.framing, Framing::Length(5));
    assert_eq!(&buf[h.len..h.len + 5], b"hello");

    // Two heads back to back, no body.
    let mut buf = second.to_vec();
    buf.extend_from_slice(first);
    let h = ok(&buf);
    assert_eq!(h.len, second.len());
    assert_eq!(h.path(&buf), b"/b");
    let rest = &buf[h.len..];
    let h2 = ok(rest);
    assert_eq!(h2.len, first.len());
    assert_eq!(h2.method, Method::Post);
    assert_eq!(h2.path(rest), b"/a");
}

// ---- request targets -------------------------------------------------------

#[test]
fn absolute_form_takes_host_from_authority() {
    let buf = b"GET http://api.example.com:8080/pets/1?x=y HTTP/1.1\r\nHost: other.example\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.host.unwrap().get(buf), b"api.example.com:8080");
    assert_eq!(h.path(buf), b"/pets/1");
    assert_eq!(h.query.unwrap().get(buf), b"x=y");
    // The Host header is still there (and hop-by-hop).
    assert_eq!(
        header(&h, buf, "host").unwrap(),
        (&b"other.example"[..], true)
    );
}

#[test]
fn absolute_form_without_path_is_root() {
    let buf = b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let h = ok(buf);
    assert!(h.path.is_empty());
    assert_eq!(h.path(buf), b"/");
    assert!(h.query.is_none());
    assert_eq!(h.host.unwrap().get(buf), b"example.com");

    let buf = b"GET HTTP://Example.com?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.path(buf), b"/");
    assert_eq!(h.query.unwrap().get(buf), b"q=1");
    assert_eq!(h.host.unwrap().get(buf), b"Example.com");
}

#[test]
fn absolute_form_https_and_http10() {
    let buf = b"GET https://secure.example/a HTTP/1.1\r\nHost: secure.example\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.host.unwrap().get(buf), b"secure.example");
    assert_eq!(h.path(buf), b"/a");
    // HTTP/1.0 needs no Host header; the authority is the host.
    let buf = b"GET http://old.example/a HTTP/1.0\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.host.unwrap().get(buf), b"old.example");
}

#[test]
fn absolute_form_still_needs_host_header_in_http11() {
    // RFC 9112 §3.2: a 1.1 request without Host is a 400, whatever its target.
    assert_eq!(status(b"GET http://a.example/ HTTP/1.1\r\n\r\n"), 400);
}

#[test]
fn bad_absolute_form_authorities() {
    for buf in [
        &b"GET http://user@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a%2e.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http:// HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(status(buf), 400, "{:?}", String::from_utf8_lossy(buf));
    }
}

#[test]
fn unsupported_target_forms() {
    for buf in [
        // authority-form
        &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
        // asterisk-form
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        // other schemes
        b"GET ftp://a.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ws://a.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET file:///etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
        // relative
        b"GET pets HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let r = reject_with(buf, &LIMITS);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(buf));
    }
}

#[test]
fn fragments_are_rejected() {
    assert_eq!(status(b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET /a?x=1#frag HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(
        status(b"GET http://a.example/#x HTTP/1.1\r\nHost: a\r\n\r\n"),
        400
    );
}

#[test]
fn dot_segments_are_rejected() {
    for target in [
        "/a/../b",
        "/a/./b",
        "/%2e%2E/b",
        "/%2E%2e/b",
        "/.%2e/b",
        "/%2e./b",
        "/a/%2e/b",
        "/a/..",
        "/a/.",
        "/..",
        "/.",
        "/../",
        "/a/..?x=1",
        "http://a.example/../b",
        // Behind separators and parameters a backend may read as such.
        "/a/..%2fb",
        "/a/..%2Fb",
        "/a/%2e%2e%2Fb",
        "/a%2F..%2Fb",
        "/a/..%5cb",
        "/a/..%5Cb",
        "/a/..\\b",
        "/a\\..\\b",
        "/a\\.",
        "/a/..;/b",
        "/a/..;x=1/b",
        "/a/.;x/b",
        "/a/%2e%2e;x",
        "/a/..%3bx/b",
        "/a/..%2f",
    ] {
        let buf = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
        let r = reject_with(&buf, &LIMITS);
        assert_eq!(r.status, 400, "{target}");
    }
}

#[test]
fn dots_that_are_not_dot_segments_are_fine() {
    for target in [
        "/a..b",
        "/.well-known/x",
        "/...",
        "/a/b.",
        "/a/.b",
        "/%2e%2e%2e",
        "/%2ex",
        "/%2",
        "/a?x=/../y",
        "/a%2Fb",
        "/a/%2F/b",
        "/a%2F%2Fb",
        "/a;x/b",
        "/a;../b",
        "/a/...;x",
        "/a/x;..",
        "/a\\b",
        "/a\\...",
        "/a%5Cb",
        "/;/",
        "/a/%252e%252e/b",
        "/a/..x%2Fb",
        "//a//b//",
    ] {
        let buf = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
        let h = ok(&buf);
        let want = target.split('?').next().unwrap();
        assert_eq!(h.path(&buf), want.as_bytes());
    }
}

#[test]
fn invalid_target_bytes() {
    // Controls, DEL and whitespace end or break the request line. (Other
    // visible ASCII such as `"` or `{` is taken as is and forwarded raw.)
    for target in [
        &b"/a\x00b"[..],
        b"/a\x01",
        b"/a\x7f",
        b"/a\tb",
        b"/a b",
        b"/a\x1b",
    ] {
        let mut buf = b"GET ".to_vec();
        buf.extend_from_slice(target);
        buf.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(status(&buf), 400, "{:?}", String::from_utf8_lossy(target));
    }
}

// ---- request line ----------------------------------------------------------

#[test]
fn invalid_method_tokens() {
    for line in [
        &b"GE(T / HTTP/1.1"[..],
        b"GE\"T / HTTP/1.1",
        b"G,ET / HTTP/1.1",
        b"GE{T / HTTP/1.1",
        b"G\x01T / HTTP/1.1",
        b"G\x7fT / HTTP/1.1",
        b"GET\t/ HTTP/1.1",
        b" GET / HTTP/1.1",
        b"GET  / HTTP/1.1",
        b"/ HTTP/1.1",
    ] {
        let mut buf = line.to_vec();
        buf.extend_from_slice(b"\r\nHost: a\r\n\r\n");
        assert_eq!(status(&buf), 400, "{:?}", String::from_utf8_lossy(line));
    }
}

#[test]
fn invalid_versions() {
    for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/1", "http/1.1", "HTTP/1.1 x"] {
        let buf = format!("GET / {v}\r\nHost: a\r\n\r\n").into_bytes();
        assert_eq!(status(&buf), 400, "{v}");
    }
}

#[test]
fn request_line_too_long() {
    let limits = HeadLimits {
        max_request_line: 31,
        ..LIMITS
    };
    // The limit counts the line without its CRLF.
    let at_limit = b"GET /aaaaaaaaaaaaaaaaa HTTP/1.1\r";
    assert_eq!(at_limit.len(), 32);
    let mut buf = at_limit.to_vec();
    buf.extend_from_slice(b"\nHost: a\r\n\r\n");
    assert!(parse_request_head(&buf, &limits).unwrap().is_some());

    let buf = b"GET /aaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(reject_with(buf, &limits).status, 414);

    // An unfinished line already longer than the limit is refused at once.
    let partial = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert!(partial.len() > 32);
    assert_eq!(reject_with(partial, &limits).status, 414);
    // ...but one within the limit is waited for.
    assert!(matches!(
        parse_request_head(&partial[..32], &limits),
        Ok(None)
    ));

    // Leading blank lines are not counted.
    let mut buf = b"\r\n".to_vec();
    buf.extend_from_slice(at_limit);
    buf.extend_from_slice(b"\nHost: a\r\n\r\n");
    assert!(parse_request_head(&buf, &limits).unwrap().is_some());
}

// ---- size limits -------------------------------------------------------------

#[test]
fn head_larger_than_max_head() {
    let limits = HeadLimits {
        max_head: 64,
        ..LIMITS
    };
    let exact = get_with("X-Fill: aaaaaaaaaaaaaaaaaaa\r\n");
    assert_eq!(exact.len(), 64);
    assert_eq!(
        parse_request_head(&exact, &limits).unwrap().unwrap().len,
        64
    );

    let over = get_with("X-Fill: aaaaaaaaaaaaaaaaaaaa\r\n");
    assert_eq!(over.len(), 65);
    assert_eq!(reject_with(&over, &limits).status, 431);

    // Incomplete: refused as soon as the buffer outgrows the limit...
    let big = get_with(&format!("X-Fill: {}\r\n", "a".repeat(100)));
    assert_eq!(reject_with(&big[..65], &limits).status, 431);
    // ...and waited for while it does not.
    assert!(matches!(parse_request_head(&big[..64], &limits), Ok(None)));
    assert!(matches!(parse_request_head(&over[..64], &limits), Ok(None)));

    // Body bytes after a complete head do not count.
    let mut with_body = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n".to_vec();
    with_body.extend_from_slice(&[b'x'; 100]);
    let h = parse_request_head(&with_body, &limits).unwrap().unwrap();
    assert_eq!(h.framing, Framing::Length(100));
}

#[test]
fn too_many_headers() {
    let limits = HeadLimits {
        max_headers: 3,
        ..LIMITS
    };
    let three = get_with("A: 1\r\nB: 2\r\n");
    assert_eq!(
        parse_request_head(&three, &limits)
            .unwrap()
            .unwrap()
            .headers
            .len(),
        3
    );
    let four = get_with("A: 1\r\nB: 2\r\nC: 3\r\n");
    assert_eq!(reject_with(&four, &limits).status, 431);
    // Also when the head is not complete yet.
    assert_eq!(reject_with(&four[..four.len() - 2], &limits).status, 431);
}

#[test]
fn max_headers_above_the_cap_is_clamped() {
    let limits = HeadLimits {
        max_headers: usize::MAX,
        ..LIMITS
    };
    let many: String = (0..MAX_HEADERS_CAP - 1)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect();
    let buf = get_with(&many);
    assert_eq!(
        parse_request_head(&buf, &limits)
            .unwrap()
            .unwrap()
            .headers
            .len(),
        MAX_HEADERS_CAP
    );
    let too_many = get_with(&format!("{many}X-Last: v\r\n"));
    assert_eq!(reject_with(&too_many, &limits).status, 431);
}

// ---- body framing ----------------------------------------------------------

#[test]
fn content_length_framing() {
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(10));
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
    assert!(
        is_hop(&h, buf, "content-length"),
        "the gateway writes its own Content-Length"
    );
    // Zero is no body at all.
    assert_eq!(
        ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").framing,
        Framing::None
    );
    // Leading zeros are still digits.
    assert_eq!(
        ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n").framing,
        Framing::Length(7)
    );
    // The largest 19-digit value fits in a u64.
    assert_eq!(
        ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n").framing,
        Framing::Length(9_999_999_999_999_999_999)
    );
    assert_eq!(
        ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").framing,
        Framing::None
    );
}

#[test]
fn identical_duplicate_content_lengths_are_accepted() {
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\nContent-Length: 005\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
}

#[test]
fn differing_content_lengths_are_rejected() {
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n"),
        400
    );
}

#[test]
fn invalid_content_lengths() {
    for v in [
        "+5",
        "-1",
        "0x10",
        "",
        "12345678901234567890",
        "99999999999999999999",
        "1e3",
        "5 5",
        "5,",
        ",5",
        "5;",
        "five",
        "\u{663}",
    ] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n").into_bytes();
        assert_eq!(status(&buf), 400, "{v:?}");
    }
}

#[test]
fn chunked_framing() {
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let h = ok(buf);
    assert_eq!(h.framing, Framing::Chunked);
    // Forwarded as is: with the chunk framing kept, the next hop needs it.
    assert!(!is_hop(&h, buf, "transfer-encoding"));
    for te in [
        "CHUNKED",
        "Chunked",
        "gzip, chunked",
        "gzip,chunked",
        " chunked ",
        "deflate , gzip, chunked",
    ] {
        let buf =
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n").into_bytes();
        assert_eq!(ok(&buf).framing, Framing::Chunked, "{te:?}");
    }
    // Codings may be spread over several header lines.
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked);
}

#[test]
fn content_length_with_transfer_encoding_is_rejected() {
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
        400
    );
}

#[test]
fn transfer_encoding_must_end_in_a_single_chunked() {
    for te in [
        "gzip",
        "identity",
        "chunked, gzip",
        "chunked, chunked",
        "chunked,",
        ",chunked",
        "gzip,,chunked",
        "",
        "\"chunked\"",
        "chunked;q=1",
        "x chunked",
    ] {
        let buf =
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n").into_bytes();
        assert_eq!(status(&buf), 400, "{te:?}");
    }
    // chunked twice over two header lines, or not last over two lines.
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"),
        400
    );
}

#[test]
fn transfer_encoding_in_http10_is_rejected() {
    assert_eq!(
        status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
}

// ---- header syntax ---------------------------------------------------------

#[test]
fn obs_fold_is_rejected() {
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n"),
        400
    );
    // A fold could hide a framing header from a lenient parser.
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n"),
        400
    );
    // A first header line that starts with whitespace.
    assert_eq!(status(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 400);
}

#[test]
fn whitespace_before_colon_is_rejected() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n"),
        400
    );
}

#[test]
fn invalid_header_names() {
    for name in [&b"X(A"[..], b"X A", b"", b"X\x00A", b"X\"A", b"X/A"] {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        buf.extend_from_slice(name);
        buf.extend_from_slice(b": v\r\n\r\n");
        assert_eq!(status(&buf), 400, "{:?}", String::from_utf8_lossy(name));
    }
}

#[test]
fn control_bytes_in_header_values_are_rejected() {
    for value in [
        &b"b\x00c"[..],
        b"\x00",
        b"b\rc",
        b"b\x01c",
        b"b\x7fc",
        b"b\x1bc",
    ] {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: ".to_vec();
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&buf), 400, "{value:?}");
    }
    // A tab is fine.
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\tc\r\n\r\n";
    assert_eq!(header(&ok(buf), buf, "x-a").unwrap().0, b"b\tc");
}

#[test]
fn bare_lf_is_rejected() {
    for buf in [
        &b"GET / HTTP/1.1\nHost: a\n\n"[..],
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        // A bare LF inside a value splits it into a smuggled header.
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nContent-Length: 5\r\n\r\n",
        b"GET / HTTP/1.0\n\n",
    ] {
        assert_eq!(status(buf), 400, "{:?}", String::from_utf8_lossy(buf));
    }
}

#[test]
fn bare_cr_is_rejected() {
    for buf in [
        &b"GET / HTTP/1.1\rHost: a\r\n\r\n"[..],
        b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
    ] {
        assert_eq!(status(buf), 400, "{:?}", String::from_utf8_lossy(buf));
    }
}

// ---- Host ------------------------------------------------------------------

#[test]
fn host_is_required_in_http11_only() {
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nX-Host: a\r\n\r\n"), 400);
    let h = ok(b"GET / HTTP/1.0\r\n\r\n");
    assert!(h.host.is_none());
    let buf = b"GET / HTTP/1.0\r\nHost: old.example\r\n\r\n";
    assert_eq!(ok(buf).host.unwrap().get(buf), b"old.example");
}

#[test]
fn two_host_headers_are_rejected() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
}

#[test]
fn valid_host_values() {
    for host in [
        "a",
        "API.Example.COM",
        "api.example.com:8080",
        "[::1]:8080",
        "[2001:db8::1]",
        "10.0.0.1:80",
        "my_host-1.internal",
        "a:",
        "[::ffff:10.0.0.1]:65535",
    ] {
        let buf = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
        assert_eq!(ok(&buf).host.unwrap().get(&buf), host.as_bytes(), "{host}");
    }
}

#[test]
fn invalid_host_values() {
    for host in [
        "", "a b", "a/b", "a@b", "a?b", "a#b", "a\\b", "a%2fb", "a,b", "a\tb", "\"a\"",
        // Not host[:port] (these were accepted: only the bytes were checked).
        "a:b:c", "[x", "a]", "[x]", "[]", "[::1]x", ":80", "a:8o", "a:123456", "a[::1]",
    ] {
        let buf = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
        assert_eq!(status(&buf), 400, "{host:?}");
    }
    let long = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "a".repeat(256)).into_bytes();
    assert_eq!(status(&long), 400);
    let longest = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "a".repeat(255)).into_bytes();
    ok(&longest);
    // Also when the target carries the host: the header is still checked.
    assert_eq!(
        status(b"GET http://a.example/ HTTP/1.1\r\nHost: a b\r\n\r\n"),
        400
    );
}

// ---- Expect ----------------------------------------------------------------

#[test]
fn expect_other_than_100_continue_is_417() {
    let r = reject_with(&get_with("Expect: something-else\r\n"), &LIMITS);
    assert_eq!(r.status, 417);
    assert_eq!(
        status(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue-ish\r\n\r\n"
        ),
        417
    );
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: \r\n\r\n"),
        417
    );
}

#[test]
fn expect_100_continue_only_with_a_body() {
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    let h = ok(buf);
    assert!(h.expect_continue);
    assert!(is_hop(&h, buf, "expect"));
    assert!(ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
    // No body, nothing to wait for.
    assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    assert!(
        !ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n")
            .expect_continue
    );
    // An HTTP/1.0 client cannot take a 100 (RFC 9110 §10.1.1).
    assert!(
        !ok(b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .expect_continue
    );
}

// ---- hop-by-hop ------------------------------------------------------------

#[test]
fn hop_by_hop_headers_are_marked() {
    let buf = get_with(
        "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\n\
         Upgrade: h2c\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic x\r\n\
         X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\
         X-Request-Id: abc\r\nAccept: */*\r\nUser-Agent: t\r\nX-Proxy: 1\r\nAuthorization: Bearer t\r\n",
    );
    let h = ok(&buf);
    for name in [
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ] {
        assert!(is_hop(&h, &buf, name), "{name} should be hop-by-hop");
    }
    for name in ["accept", "user-agent", "x-proxy", "authorization"] {
        assert!(!is_hop(&h, &buf, name), "{name} should be forwarded");
    }
}

#[test]
fn connection_names_more_hop_by_hop_headers() {
    // X-Foo before the Connection header that names it, X-Bar after.
    let buf = get_with("X-Foo: 1\r\nConnection: X-foo, x-bar\r\nX-Bar: 2\r\nX-Baz: 3\r\n");
    let h = ok(&buf);
    assert!(is_hop(&h, &buf, "x-foo"));
    assert!(is_hop(&h, &buf, "x-bar"));
    assert!(!is_hop(&h, &buf, "x-baz"));
    assert!(h.keep_alive);
    // Over several Connection headers too.
    let buf = get_with("Connection: x-a\r\nConnection: x-b\r\nX-A: 1\r\nX-B: 2\r\n");
    let h = ok(&buf);
    assert!(is_hop(&h, &buf, "x-a") && is_hop(&h, &buf, "x-b"));
}

#[test]
fn connection_may_not_hide_framing_headers() {
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close, content-length\r\nContent-Length: 5\r\n\r\n"),
        400
    );
}

// ---- X-Request-Id and Upgrade -----------------------------------------------

#[test]
fn request_id_accepted_only_when_valid() {
    let buf = get_with("X-Request-Id: abc-123_XYZ.9\r\n");
    assert_eq!(ok(&buf).request_id.unwrap().get(&buf), b"abc-123_XYZ.9");

    let longest = "r".repeat(MAX_REQUEST_ID_LEN);
    let buf = get_with(&format!("x-request-id: {longest}\r\n"));
    assert_eq!(ok(&buf).request_id.unwrap().get(&buf), longest.as_bytes());

    for bad in ["", "a b", "caf\u{e9}", &"r".repeat(MAX_REQUEST_ID_LEN + 1)] {
        let buf = get_with(&format!("X-Request-Id: {bad}\r\n"));
        let h = ok(&buf);
        assert_eq!(h.request_id, None, "{bad:?}");
        // Not forwarded as is either: the gateway sets its own.
        assert!(is_hop(&h, &buf, "x-request-id"));
    }
}

#[test]
fn upgrade_needs_both_headers() {
    assert!(ok(&get_with("Connection: Upgrade\r\nUpgrade: websocket\r\n")).upgrade);
    assert!(
        ok(&get_with(
            "Upgrade: websocket\r\nConnection: keep-alive, upgrade\r\n"
        ))
        .upgrade
    );
    assert!(!ok(&get_with("Upgrade: websocket\r\n")).upgrade);
    assert!(!ok(&get_with("Connection: upgrade\r\n")).upgrade);
}

// ---- helpers ---------------------------------------------------------------

#[test]
fn list_elements_and_trim() {
    let v: Vec<&[u8]> = list_elements(b" a ,, b,\tc\t,").collect();
    assert_eq!(v, [&b"a"[..], b"b", b"c"]);
    assert_eq!(trim_ows(b" \t x y \t"), b"x y");
    assert_eq!(trim_ows(b"   "), b"");
    assert!(is_token_byte(b'!') && is_token_byte(b'~') && is_token_byte(b'Z'));
    assert!(
        !is_token_byte(b'(')
            && !is_token_byte(b' ')
            && !is_token_byte(b'/')
            && !is_token_byte(0x80)
    );
}

#[test]
fn underscore_lookalikes_of_framing_headers_are_refused() {
    // Regression: `Content_Length` was forwarded; servers that fold '_' into
    // '-' would frame the body differently from us.
    for name in ["Content_Length", "transfer_encoding", "HOST", "Connection"] {
        if !name.contains('_') {
            continue;
        }
        let req = format!("POST / HTTP/1.1\r\nHost: x\r\n{name}: 5\r\n\r\n");
        let r = parse_request_head(req.as_bytes(), &LIMITS).unwrap_err();
        assert_eq!(r.status, 400, "{name}");
    }
    // Other underscored names are ordinary headers.
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nX_Custom: 1\r\n\r\n";
    assert!(parse_request_head(req, &LIMITS).unwrap().is_some());
}

#[test]
fn request_line_limit_excludes_the_crlf() {
    // Regression: the CR counted toward max_request_line_bytes.
    let l = HeadLimits {
        max_request_line: 14,
        max_head: 1024,
        max_headers: 10,
    };
    // "GET / HTTP/1.1" is exactly 14 bytes.
    assert!(parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &l)
        .unwrap()
        .is_some());
    let r = parse_request_head(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", &l).unwrap_err();
    assert_eq!((r.status, r.message), (414, "URI Too Long"));
}
