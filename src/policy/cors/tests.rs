//! Byte-level tests for CORS config checks and header rendering.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on
//! input the test writes itself (config text, heads, keys, addresses), so a
//! failure is a failed test; nothing a client or a config file controls
//! reaches them.

use super::*;

fn strs(l: &[&str]) -> Option<Vec<String>> {
    Some(l.iter().map(|s| s.to_string()).collect())
}

fn cors(raw: RawCors) -> Cors {
    let mut errors = Vec::new();
    let c = compile(Some(&raw), "apis[0]", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    c.expect("compiled")
}

fn errors_of(raw: RawCors) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let c = compile(Some(&raw), "apis[1]", &mut errors);
    assert!(c.is_none(), "config with errors still compiled");
    errors.into_iter().map(|e| (e.key, e.message)).collect()
}

fn app() -> RawCors {
    RawCors {
        allow_origins: strs(&["https://app.example.com", "http://localhost:3000"]),
        allow_methods: strs(&["GET", "PUT"]),
        allow_headers: strs(&["Content-Type", "x-api-key"]),
        expose_headers: strs(&["x-request-id", "Date"]),
        max_age: Some(300),
        allow_credentials: Some(true),
    }
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("utf-8 headers")
}

// === preflight rendering ===

#[test]
fn allowed_preflight_renders_every_header() {
    let c = cors(app());
    let r = c.preflight_answer(
        b"https://app.example.com",
        b"PUT",
        Some(b"content-type,X-API-Key"),
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.body.as_deref(), Some(&b""[..]));
    assert_eq!(
        text(&r.headers),
        "access-control-allow-origin: https://app.example.com\r\n\
         access-control-allow-methods: GET, PUT\r\n\
         access-control-allow-headers: content-type, x-api-key\r\n\
         access-control-max-age: 300\r\n\
         access-control-allow-credentials: true\r\n\
         vary: Origin\r\n"
    );
}

#[test]
fn preflight_without_requested_headers_has_no_allow_headers() {
    let c = cors(app());
    let r = c.preflight_answer(b"http://localhost:3000", b"GET", None);
    assert_eq!(
        text(&r.headers),
        "access-control-allow-origin: http://localhost:3000\r\n\
         access-control-allow-methods: GET, PUT\r\n\
         access-control-max-age: 300\r\n\
         access-control-allow-credentials: true\r\n\
         vary: Origin\r\n"
    );
    // An empty list, or one of only commas and blanks, asks for nothing.
    let r2 = c.preflight_answer(b"http://localhost:3000", b"GET", Some(b" , ,"));
    assert_eq!(r.headers, r2.headers);
}

#[test]
fn refused_preflights_carry_no_cors_headers() {
    let c = cors(app());
    for (origin, method, hdrs) in [
        (&b"https://evil.example.com"[..], &b"GET"[..], None),
        (b"https://app.example.com.evil", b"GET", None),
        (b"http://app.example.com", b"GET", None),
        (b"https://app.example.com:8443", b"GET", None),
        (b"https://app.example.com", b"DELETE", None),
        (b"https://app.example.com", b"get", None),
        (b"https://app.example.com", b"", None),
        (b"https://app.example.com", b"PUT", Some(&b"x-other"[..])),
        (
            b"https://app.example.com",
            b"PUT",
            Some(b"content-type, x-other"),
        ),
        (b"https://app.example.com", b"PUT", Some(b"content type")),
        (b"", b"GET", None),
        (b"null", b"GET", None),
    ] {
        let r = c.preflight_answer(origin, method, hdrs);
        assert_eq!(r.status, 204);
        assert_eq!(r.body.as_deref(), Some(&b""[..]));
        assert_eq!(
            text(&r.headers),
            "vary: Origin\r\n",
            "origin {:?} method {:?} headers {:?}",
            text(origin),
            text(method),
            hdrs.map(text)
        );
    }
}

#[test]
fn origin_compare_ignores_case_and_echoes_the_request() {
    let c = cors(app());
    let r = c.preflight_answer(b"HTTPS://App.Example.com", b"GET", None);
    assert!(
        text(&r.headers).starts_with("access-control-allow-origin: HTTPS://App.Example.com\r\n")
    );
}

#[test]
fn wildcards_without_credentials() {
    let c = cors(RawCors {
        allow_origins: strs(&["*"]),
        allow_methods: strs(&["*"]),
        allow_headers: strs(&["*"]),
        expose_headers: strs(&["*"]),
        ..RawCors::default()
    });
    let r = c.preflight_answer(
        b"https://anyone.test",
        b"PROPFIND",
        Some(b"Authorization, X-Y"),
    );
    assert_eq!(
        text(&r.headers),
        "access-control-allow-origin: *\r\n\
         access-control-allow-methods: *\r\n\
         access-control-allow-headers: authorization, x-y\r\n"
    );
    let mut out = Vec::new();
    c.actual_headers(b"https://anyone.test", &mut out);
    assert_eq!(
        text(&out),
        "access-control-allow-origin: *\r\n\
         access-control-expose-headers: *\r\n"
    );
    // An invalid method token is still refused.
    let r = c.preflight_answer(b"https://anyone.test", b"GE T", None);
    assert!(r.headers.is_empty(), "{}", text(&r.headers));
}

#[test]
fn wildcard_methods_with_credentials_echo_the_method() {
    let c = cors(RawCors {
        allow_origins: strs(&["https://a.test"]),
        allow_methods: strs(&["*"]),
        allow_headers: strs(&["*"]),
        allow_credentials: Some(true),
        ..RawCors::default()
    });
    let r = c.preflight_answer(b"https://a.test", b"DELETE", Some(b"authorization"));
    assert_eq!(
        text(&r.headers),
        "access-control-allow-origin: https://a.test\r\n\
         access-control-allow-methods: DELETE\r\n\
         access-control-allow-headers: authorization\r\n\
         access-control-allow-credentials: true\r\n\
         vary: Origin\r\n"
    );
}

#[test]
fn scheme_wildcard_matches_well_formed_origins_of_that_scheme() {
    let c = cors(RawCors {
        allow_origins: strs(&["https://*"]),
        allow_methods: strs(&["GET"]),
        ..RawCors::default()
    });
    let ok = c.preflight_answer(b"https://x.example:8443", b"GET", None);
    assert!(
        text(&ok.headers).starts_with("access-control-allow-origin: https://x.example:8443\r\n")
    );
    for bad in [
        &b"http://x.example"[..],
        b"https://",
        b"https://x y",
        b"https://x.example/path",
        b"https://x.example:0",
        b"https://x.example:99999",
        b"https://[::1",
    ] {
        let r = c.preflight_answer(bad, b"GET", None);
        assert_eq!(text(&r.headers), "vary: Origin\r\n", "{:?}", text(bad));
    }
    let v6 = c.preflight_answer(b"https://[::1]:8443", b"GET", None);
    assert!(text(&v6.headers).starts_with("access-control-allow-origin: https://[::1]:8443\r\n"));
}

// === actual responses ===

#[test]
fn actual_response_headers_for_allowed_and_refused_origins() {
    let c = cors(app());
    let mut out = Vec::new();
    c.actual_headers(b"https://app.example.com", &mut out);
    assert_eq!(
        text(&out),
        "access-control-allow-origin: https://app.example.com\r\n\
         access-control-expose-headers: x-request-id, date\r\n\
         access-control-allow-credentials: true\r\n\
         vary: Origin\r\n"
    );
    let mut out = Vec::new();
    c.actual_headers(b"https://evil.example.com", &mut out);
    assert_eq!(text(&out), "vary: Origin\r\n");
}

#[test]
fn minimal_config_renders_only_the_origin() {
    let c = cors(RawCors {
        allow_origins: strs(&["https://a.test"]),
        ..RawCors::default()
    });
    let mut out = Vec::new();
    c.actual_headers(b"https://a.test", &mut out);
    assert_eq!(
        text(&out),
        "access-control-allow-origin: https://a.test\r\nvary: Origin\r\n"
    );
    // No method listed: every preflight is refused.
    let r = c.preflight_answer(b"https://a.test", b"GET", None);
    assert_eq!(text(&r.headers), "vary: Origin\r\n");
}

// === config ===

#[test]
fn origins_are_normalised_as_browsers_send_them() {
    for (cfg, sent) in [
        ("HTTPS://App.Example.COM", "https://app.example.com"),
        ("https://a.test:443", "https://a.test"),
        ("http://a.test:80", "http://a.test"),
        ("http://a.test:443", "http://a.test:443"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("capacitor://localhost", "capacitor://localhost"),
    ] {
        let c = cors(RawCors {
            allow_origins: strs(&[cfg]),
            allow_methods: strs(&["GET"]),
            ..RawCors::default()
        });
        let r = c.preflight_answer(sent.as_bytes(), b"GET", None);
        assert!(
            text(&r.headers).starts_with("access-control-allow-origin: "),
            "{cfg} should allow {sent}"
        );
    }
}

#[test]
fn origin_errors_name_the_entry_and_the_fix() {
    for (bad, want) in [
        ("https://a.test/", "write \"https://a.test\""),
        ("https://a.test/app", "has a path"),
        ("https://a.test?x", "has a path"),
        ("a.test", "is not an origin"),
        ("://a.test", "does not start with a scheme"),
        ("1http://a.test", "does not start with a scheme"),
        ("null", "\"null\" origin"),
        ("https://*.a.test", "wildcard only alone"),
        ("https://user@a.test", "user information"),
        ("https://a.test:0", "port"),
        ("https://a.test:65536", "port"),
        ("https://a.test:", "port"),
        ("https://a test", "host may hold only"),
        ("https://", "host may hold only"),
        ("https://[::1", "closing ']'"),
        ("https://[nope]", "not an IPv6 address"),
    ] {
        let errs = errors_of(RawCors {
            allow_origins: strs(&["https://ok.test", bad]),
            ..RawCors::default()
        });
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert_eq!(errs[0].0, "apis[1].cors.allow_origins[1]", "{bad}");
        assert!(errs[0].1.contains(want), "{bad}: {}", errs[0].1);
    }
}

#[test]
fn missing_or_empty_origins_are_an_error() {
    for origins in [None, strs(&[])] {
        let errs = errors_of(RawCors {
            allow_origins: origins,
            allow_methods: strs(&["GET"]),
            ..RawCors::default()
        });
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "apis[1].cors.allow_origins");
    }
}

#[test]
fn wildcard_origin_with_credentials_is_an_error() {
    let errs = errors_of(RawCors {
        allow_origins: strs(&["https://a.test", "*"]),
        allow_credentials: Some(true),
        ..RawCors::default()
    });
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "apis[1].cors.allow_origins[1]");
    assert!(errs[0].1.contains("allow_credentials"), "{}", errs[0].1);
    // Scheme wildcards echo the origin: allowed with credentials.
    cors(RawCors {
        allow_origins: strs(&["https://*"]),
        allow_credentials: Some(true),
        ..RawCors::default()
    });
}

#[test]
fn wildcard_expose_with_credentials_is_an_error() {
    let errs = errors_of(RawCors {
        allow_origins: strs(&["https://a.test"]),
        expose_headers: strs(&["x-a", "*"]),
        allow_credentials: Some(true),
        ..RawCors::default()
    });
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "apis[1].cors.expose_headers[1]");
}

#[test]
fn method_errors() {
    let errs = errors_of(RawCors {
        allow_origins: strs(&["*"]),
        allow_methods: strs(&["GET", "get", "FETCH", ""]),
        ..RawCors::default()
    });
    let keys: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "apis[1].cors.allow_methods[1]",
            "apis[1].cors.allow_methods[2]",
            "apis[1].cors.allow_methods[3]"
        ]
    );
    assert!(errs[0].1.contains("write \"GET\""), "{}", errs[0].1);
    assert!(errs[1].1.contains("is not a method"), "{}", errs[1].1);
}

#[test]
fn header_errors() {
    let errs = errors_of(RawCors {
        allow_origins: strs(&["*"]),
        allow_headers: strs(&["x-ok", "x bad", ""]),
        expose_headers: strs(&["x:y"]),
        ..RawCors::default()
    });
    let keys: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "apis[1].cors.allow_headers[1]",
            "apis[1].cors.allow_headers[2]",
            "apis[1].cors.expose_headers[0]"
        ]
    );
}

#[test]
fn max_age_bounds() {
    for ok in [0, 1, 86_400] {
        cors(RawCors {
            allow_origins: strs(&["*"]),
            max_age: Some(ok),
            ..RawCors::default()
        });
    }
    for bad in [-1, 86_401, i64::MAX] {
        let errs = errors_of(RawCors {
            allow_origins: strs(&["*"]),
            max_age: Some(bad),
            ..RawCors::default()
        });
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "apis[1].cors.max_age");
        assert!(errs[0].1.contains("0 to 86400"), "{}", errs[0].1);
    }
}

#[test]
fn no_cors_compiles_to_none() {
    let mut errors = Vec::new();
    assert!(compile(None, "apis[0]", &mut errors).is_none());
    assert!(errors.is_empty());
}

#[test]
fn duplicates_are_dropped() {
    let c = cors(RawCors {
        allow_origins: strs(&["https://a.test", "HTTPS://A.TEST:443"]),
        allow_methods: strs(&["GET", "GET"]),
        expose_headers: strs(&["X-A", "x-a"]),
        ..RawCors::default()
    });
    let r = c.preflight_answer(b"https://a.test", b"GET", None);
    assert!(text(&r.headers).contains("access-control-allow-methods: GET\r\n"));
    let mut out = Vec::new();
    c.actual_headers(b"https://a.test", &mut out);
    assert!(text(&out).contains("access-control-expose-headers: x-a\r\n"));
}
