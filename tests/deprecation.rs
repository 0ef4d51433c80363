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

/// Three deployments of one API served by three stages at once: `v1`
/// deprecated (every response of its stage says so, with curl), `v0`
/// retired (410 without reaching the backend), `v2` active (no lifecycle
/// headers); a route's own lifecycle replaces its deployment's. A bad
/// deployment lifecycle is refused by `coregate check`, named at the
/// deployment's key.
#[test]
fn deployments_are_deprecated_and_retired_per_stage() {
    let echo = Backend::start(Reply::Echo);
    let config = fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "pets"
base_path = "/pets"

[[apis.deployments]]
name = "v0"
[apis.deployments.lifecycle]
status = "retired"
deprecated_at = "2025-01-01"
documentation = "https://example.com/docs/v0"
[[apis.deployments.routes]]
key = "GET /items"
integration = { type = "http_proxy", url = "http://@ECHO@" }

[[apis.deployments]]
name = "v1"
[apis.deployments.lifecycle]
status = "deprecated"
deprecated_at = "2026-01-01"
sunset = "2026-12-31T23:59:59Z"
documentation = "https://example.com/docs/v1-to-v2"
[[apis.deployments.routes]]
key = "GET /items"
integration = { type = "http_proxy", url = "http://@ECHO@" }
[[apis.deployments.routes]]
key = "GET /health"
integration = { type = "mock", body = "ok" }
[apis.deployments.routes.lifecycle]
status = "active"

[[apis.deployments]]
name = "v2"
[[apis.deployments.routes]]
key = "GET /items"
integration = { type = "http_proxy", url = "http://@ECHO@" }

[[apis.stages]]
name = "old"
deployment = "v0"

[[apis.stages]]
name = "prod"
deployment = "v1"

[[apis.stages]]
name = "beta"
deployment = "v2"
"#,
        &[("ECHO", echo.addr_str())],
    );
    let gw = Gateway::start(&config);
    // v1: deprecated, still answering through its backend.
    let text = curl(&gw.url("/pets/prod/items"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let h = headers(&text);
    assert_eq!(header(&h, "deprecation"), Some("@1767225600"), "{text}");
    assert_eq!(header(&h, "sunset"), Some("Thu, 31 Dec 2026 23:59:59 GMT"));
    assert_eq!(
        header(&h, "link"),
        Some(
            r#"<https://example.com/docs/v1-to-v2>; rel="deprecation", <https://example.com/docs/v1-to-v2>; rel="sunset""#
        )
    );
    assert_eq!(header(&h, "x-coregate-deployment"), Some("v1"));
    let hits = echo.hits();
    assert_eq!(hits, 1);
    // A route of v1 that says it is active has no lifecycle headers.
    let h = headers(&curl(&gw.url("/pets/prod/health")));
    assert_eq!(header(&h, "deprecation"), None, "{h:?}");
    // v0: retired, the backend never hears of it.
    let text = curl(&gw.url("/pets/old/items"));
    assert!(text.starts_with("HTTP/1.1 410 Gone"), "{text}");
    let h = headers(&text);
    assert_eq!(header(&h, "deprecation"), Some("@1735689600"), "{text}");
    assert_eq!(
        header(&h, "link"),
        Some(r#"<https://example.com/docs/v0>; rel="deprecation""#)
    );
    assert!(text.ends_with(r#"{"message":"Gone"}"#), "{text}");
    assert_eq!(echo.hits(), hits);
    // v2: active, no lifecycle headers.
    let text = curl(&gw.url("/pets/beta/items"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let h = headers(&text);
    assert_eq!(header(&h, "deprecation"), None, "{text}");
    assert_eq!(header(&h, "sunset"), None, "{text}");
    assert_eq!(echo.hits(), hits + 1);

    // A bad deployment lifecycle, named at the deployment.
    let bad = config.replace("status = \"retired\"", "status = \"gone\"");
    let path = write_config(&bad);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(
            |l| l.contains("apis[0].deployments[0].lifecycle.status") && l.contains("\"gone\"")
        ),
        "{stderr}"
    );
}
