//! Route and API lifecycle (docs/lifecycle.md) over real sockets: a
//! deprecated route's responses carry `Deprecation` (RFC 9745), `Sunset`
//! (RFC 8594) and `Link` headers, read with curl; a retired route answers
//! 410 Gone without reaching its backend; a route's own lifecycle replaces
//! its API's; bad lifecycle settings are refused by `coregate check`.

mod support;

use std::process::Command;
use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "v1"
base_path = "/v1"
[apis.lifecycle]
status = "deprecated"
deprecated_at = "2026-01-01"
sunset = "2026-12-31T23:59:59Z"
documentation = "https://example.com/docs/v1-to-v2"

[[apis.routes]]
key = "GET /pets"
integration = { type = "http_proxy", url = "http://@ECHO@" }

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = "ok" }
[apis.routes.lifecycle]
status = "active"

[[apis.routes]]
key = "GET /old"
integration = { type = "http_proxy", url = "http://@ECHO@" }
[apis.routes.lifecycle]
status = "retired"
sunset = "2025-06-30"
documentation = "https://example.com/docs/old"

[[apis]]
name = "v2"
base_path = "/v2"

[[apis.routes]]
key = "GET /pets"
integration = { type = "mock", body = "v2 pets" }
"#;

fn curl(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-i", url])
        .output()
        .expect("curl is installed by scripts/test");
    assert!(out.status.success(), "curl {url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The header lines of a `curl -i` output, lower-cased names.
fn headers(text: &str) -> Vec<(String, String)> {
    text.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn deprecated_routes_say_so_and_still_answer() {
    let echo = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(CONFIG, &[("ECHO", echo.addr_str())]));
    let text = curl(&gw.url("/v1/pets"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let h = headers(&text);
    assert_eq!(header(&h, "deprecation"), Some("@1767225600"));
    assert_eq!(header(&h, "sunset"), Some("Thu, 31 Dec 2026 23:59:59 GMT"));
    assert_eq!(
        header(&h, "link"),
        Some(
            r#"<https://example.com/docs/v1-to-v2>; rel="deprecation", <https://example.com/docs/v1-to-v2>; rel="sunset""#
        )
    );
    assert_eq!(echo.hits(), 1);

    // An active route of the deprecated API, and the other API: no headers.
    for path in ["/v1/health", "/v2/pets"] {
        let h = headers(&curl(&gw.url(path)));
        assert!(header(&h, "deprecation").is_none(), "{path}: {h:?}");
        assert!(header(&h, "sunset").is_none(), "{path}: {h:?}");
    }
}

#[test]
fn retired_routes_are_gone_without_reaching_the_backend() {
    let echo = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(CONFIG, &[("ECHO", echo.addr_str())]));
    let mut c = gw.client();
    for _ in 0..3 {
        let r = c.get("/v1/old");
        assert_eq!(r.status, 410, "{r:?}");
        assert_eq!(r.json_message().as_deref(), Some("Gone"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("sunset"), Some("Mon, 30 Jun 2025 00:00:00 GMT"));
        assert_eq!(
            r.header("link"),
            Some(
                r#"<https://example.com/docs/old>; rel="deprecation", <https://example.com/docs/old>; rel="sunset""#
            )
        );
        assert!(!r.says_close(), "{r:?}");
    }
    let text = curl(&gw.url("/v1/old"));
    assert!(text.starts_with("HTTP/1.1 410 Gone"), "{text}");
    assert_eq!(echo.hits(), 0);
}

#[test]
fn bad_lifecycles_are_refused_by_check() {
    let config = r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "a"
[apis.lifecycle]
status = "sunsetting"

[[apis.routes]]
key = "GET /a"
integration = { type = "mock" }

[[apis.routes]]
key = "GET /c"
integration = { type = "mock" }

[[apis.routes]]
key = "GET /b"
integration = { type = "mock" }
[apis.routes.lifecycle]
status = "deprecated"
sunset = "2026-02-30"
documentation = "example.com/docs"
"#;
    let path = write_config(config);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    for (key, needle) in [
        ("apis[0].lifecycle.status", "\"sunsetting\""),
        ("apis[0].routes[2].lifecycle.sunset", "not a date"),
        ("apis[0].routes[2].lifecycle.deprecated_at", "required"),
        ("apis[0].routes[2].lifecycle.documentation", "http(s) URL"),
    ] {
        assert!(
            errors.iter().any(|l| l.contains(key) && l.contains(needle)),
            "no error naming {key}: {errors:#?}"
        );
    }
    // The API's table is reported once, not once per route.
    assert_eq!(errors.len(), 4, "{errors:#?}");
}
