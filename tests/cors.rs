//! CORS over real sockets: preflights answered by the gateway (allowed and
//! refused origins, methods and headers; credentials; max-age; wildcards;
//! paths with no OPTIONS route, an `ANY` route or an `OPTIONS` route), and
//! CORS headers on mock, proxied and gateway-error responses — none without
//! an `Origin`. Config errors through `coregate check`.

mod support;

use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "web"
cors = { allow_origins = ["https://app.example.com", "http://localhost:3000"], allow_methods = ["GET", "POST", "PUT"], allow_headers = ["Content-Type", "x-api-key"], expose_headers = ["x-request-id", "X-Backend"], max_age = 600, allow_credentials = true }

[[apis.routes]]
key = "GET /items"
integration = { type = "mock", status = 200, headers = { "content-type" = "text/plain" }, body = 'items' }

[[apis.routes]]
key = "PUT /items/{id}"
integration = { type = "http_proxy", url = "http://@B@/items/{id}" }

[[apis.routes]]
key = "ANY /any/{proxy+}"
integration = { type = "http_proxy", url = "http://@B@" }

[[apis.routes]]
key = "OPTIONS /opt"
integration = { type = "mock", status = 200, body = 'options route' }

[[apis.routes]]
key = "GET /down"
integration = { type = "http_proxy", url = "http://@DOWN@/x" }

[[apis]]
name = "open"
base_path = "/open"
cors = { allow_origins = ["*"], allow_methods = ["*"], allow_headers = ["*"], expose_headers = ["*"] }

[[apis.routes]]
key = "GET /thing"
integration = { type = "mock", body = 'open thing' }

[[apis]]
name = "plain"
base_path = "/plain"

[[apis.routes]]
key = "GET /thing"
integration = { type = "mock", body = 'plain thing' }
"#;

const APP: &str = "https://app.example.com";

struct Fixture {
    gw: Gateway,
    backend: Backend,
}

fn start() -> Fixture {
    let backend = Backend::start(Reply::fixed(
        200,
        &[("x-backend", "yes"), ("content-type", "text/plain")],
        "from backend",
    ));
    let toml = fill(
        CONFIG,
        &[
            ("B", backend.addr_str()),
            ("DOWN", refused_addr().to_string()),
        ],
    );
    Fixture {
        gw: Gateway::start(&toml),
        backend,
    }
}

/// `OPTIONS path` with these extra header lines (each ending in CRLF).
fn options(path: &str, headers: &str) -> Vec<u8> {
    format!("OPTIONS {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").into_bytes()
}

/// A browser's preflight.
fn preflight(path: &str, origin: &str, method: &str, req_headers: Option<&str>) -> Vec<u8> {
    let mut h = format!("Origin: {origin}\r\nAccess-Control-Request-Method: {method}\r\n");
    if let Some(rh) = req_headers {
        h.push_str(&format!("Access-Control-Request-Headers: {rh}\r\n"));
    }
    options(path, &h)
}

fn request(method: &str, path: &str, origin: Option<&str>) -> Vec<u8> {
    let o = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{o}\r\n").into_bytes()
}

/// Every `access-control-*` header of a response.
fn cors_headers(r: &Response) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(n, _)| n.starts_with("access-control-"))
        .cloned()
        .collect()
}

fn one(r: &Response, name: &str) -> String {
    let v = r.headers_named(name);
    assert_eq!(v.len(), 1, "want exactly one {name}: {r:?}");
    v[0].to_string()
}

/// A gateway-answered preflight: 204, no body, a request id.
fn assert_preflight_answer(r: &Response) {
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert!(r.header("x-request-id").is_some(), "{r:?}");
}

// === preflights ===

#[test]
fn allowed_preflight_gets_every_cors_header() {
    let f = start();
    let mut c = f.gw.client();
    let r = c.request(&preflight(
        "/items",
        APP,
        "GET",
        Some("content-type, X-Api-Key"),
    ));
    assert_preflight_answer(&r);
    assert_eq!(one(&r, "access-control-allow-origin"), APP);
    assert_eq!(one(&r, "access-control-allow-methods"), "GET, POST, PUT");
    assert_eq!(
        one(&r, "access-control-allow-headers"),
        "content-type, x-api-key"
    );
    assert_eq!(one(&r, "access-control-max-age"), "600");
    assert_eq!(one(&r, "access-control-allow-credentials"), "true");
    assert_eq!(one(&r, "vary"), "Origin");
    assert!(
        r.header("access-control-expose-headers").is_none(),
        "expose-headers is for actual responses: {r:?}"
    );
    assert!(!r.says_close(), "{r:?}");
    // The connection stays usable.
    let r2 = c.request(&request("GET", "/items", Some("http://localhost:3000")));
    assert_eq!(r2.status, 200, "{r2:?}");
    assert_eq!(r2.text(), "items");
    assert_eq!(
        one(&r2, "access-control-allow-origin"),
        "http://localhost:3000"
    );
    assert_eq!(f.backend.heads(), 0);
}

#[test]
fn refused_preflights_get_204_without_cors_headers() {
    let f = start();
    let mut c = f.gw.client();
    for (what, raw) in [
        (
            "origin",
            preflight("/items", "https://evil.example.com", "GET", None),
        ),
        (
            "origin scheme",
            preflight("/items", "http://app.example.com", "GET", None),
        ),
        (
            "origin port",
            preflight("/items", "https://app.example.com:444", "GET", None),
        ),
        ("method", preflight("/items", APP, "DELETE", None)),
        (
            "header",
            preflight("/items", APP, "GET", Some("content-type, x-secret")),
        ),
    ] {
        let r = c.request(&raw);
        assert_preflight_answer(&r);
        assert_eq!(cors_headers(&r), Vec::new(), "refused {what}: {r:?}");
        assert_eq!(one(&r, "vary"), "Origin", "{what}: {r:?}");
    }
    assert_eq!(f.backend.heads(), 0);
}

#[test]
fn preflight_to_paths_without_an_options_route() {
    let f = start();
    let mut c = f.gw.client();
    // /items has only GET (an OPTIONS there would be 405); /nowhere has no
    // route at all (404): the gateway answers the preflight either way.
    for path in ["/items", "/items/42", "/nowhere"] {
        let r = c.request(&preflight(path, APP, "PUT", Some("content-type")));
        assert_preflight_answer(&r);
        assert_eq!(one(&r, "access-control-allow-origin"), APP, "{path}");
        assert_eq!(one(&r, "access-control-allow-methods"), "GET, POST, PUT");
    }
    // Without Access-Control-Request-Method it is no preflight: routing
    // answers as usual.
    let r = c.request(&options("/items", &format!("Origin: {APP}\r\n")));
    assert_json_error(&r, 405);
    let r = c.request(&options("/nowhere", ""));
    assert_json_error(&r, 404);
    assert_eq!(f.backend.heads(), 0);
}

#[test]
fn preflight_is_answered_even_where_a_route_would_take_options() {
    let f = start();
    let mut c = f.gw.client();
    // An ANY route would proxy OPTIONS; an OPTIONS route would answer with
    // its mock. A preflight reaches neither.
    for path in ["/any/thing", "/opt"] {
        let r = c.request(&preflight(path, APP, "POST", None));
        assert_preflight_answer(&r);
        assert_eq!(one(&r, "access-control-allow-origin"), APP, "{path}");
    }
    assert_eq!(f.backend.heads(), 0);
    // Plain OPTIONS requests still reach the routes.
    let r = c.request(&options("/opt", ""));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "options route");
    let r = c.request(&options("/any/thing", &format!("Origin: {APP}\r\n")));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "from backend");
    assert_eq!(one(&r, "access-control-allow-origin"), APP);
    assert_eq!(f.backend.heads(), 1);
}

#[test]
fn wildcard_api_answers_with_stars_and_no_vary() {
    let f = start();
    let mut c = f.gw.client();
    let r = c.request(&preflight(
        "/open/thing",
        "https://whoever.test",
        "PATCH",
        Some("Authorization,X-Custom"),
    ));
    assert_preflight_answer(&r);
    assert_eq!(one(&r, "access-control-allow-origin"), "*");
    assert_eq!(one(&r, "access-control-allow-methods"), "*");
    // Echoed, so `Authorization` (which `*` never covers) is allowed too.
    assert_eq!(
        one(&r, "access-control-allow-headers"),
        "authorization, x-custom"
    );
    assert!(r.header("access-control-max-age").is_none(), "{r:?}");
    assert!(r.header("access-control-allow-credentials").is_none());
    assert!(r.header("vary").is_none(), "{r:?}");
    let r = c.request(&request("GET", "/open/thing", Some("https://whoever.test")));
    assert_eq!(r.text(), "open thing");
    assert_eq!(one(&r, "access-control-allow-origin"), "*");
    assert_eq!(one(&r, "access-control-expose-headers"), "*");
    assert!(r.header("vary").is_none(), "{r:?}");
}

#[test]
fn api_without_cors_does_not_answer_preflights() {
    let f = start();
    let mut c = f.gw.client();
    let r = c.request(&preflight("/plain/thing", APP, "GET", None));
    assert_json_error(&r, 405);
    assert_eq!(cors_headers(&r), Vec::new(), "{r:?}");
    let r = c.request(&request("GET", "/plain/thing", Some(APP)));
    assert_eq!(r.text(), "plain thing");
    assert_eq!(cors_headers(&r), Vec::new(), "{r:?}");
    assert!(r.header("vary").is_none(), "{r:?}");
}

#[test]
fn preflight_with_a_body_keeps_the_connection_in_step() {
    let f = start();
    let mut c = f.gw.client();
    let mut raw = format!(
        "OPTIONS /items HTTP/1.1\r\nHost: test\r\nOrigin: {APP}\r\nAccess-Control-Request-Method: GET\r\nContent-Length: 5\r\n\r\nhello"
    )
    .into_bytes();
    raw.extend_from_slice(&request("GET", "/items", None));
    c.send(&raw);
    let r = c.read_response();
    assert_preflight_answer(&r);
    let r = c.read_response();
    assert_eq!(r.text(), "items", "{r:?}");
}

// === actual responses ===

#[test]
fn mock_response_gets_cors_headers_for_an_allowed_origin() {
    let f = start();
    let mut c = f.gw.client();
    let r = c.request(&request("GET", "/items", Some(APP)));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "items");
    assert_eq!(one(&r, "access-control-allow-origin"), APP);
    assert_eq!(
        one(&r, "access-control-expose-headers"),
        "x-request-id, x-backend"
    );
    assert_eq!(one(&r, "access-control-allow-credentials"), "true");
    assert_eq!(one(&r, "vary"), "Origin");
    assert!(r.header("access-control-allow-methods").is_none());
    assert!(r.header("access-control-max-age").is_none());
}

#[test]
fn no_origin_no_cors_headers() {
    let f = start();
    let mut c = f.gw.client();
    for (method, path) in [
        ("GET", "/items"),
        ("PUT", "/items/1"),
        ("GET", "/nowhere"),
        ("DELETE", "/items"),
    ] {
        let r = c.request(&request(method, path, None));
        assert_eq!(cors_headers(&r), Vec::new(), "{method} {path}: {r:?}");
        assert!(r.header("vary").is_none(), "{method} {path}: {r:?}");
    }
}

#[test]
fn refused_origin_gets_only_vary() {
    let f = start();
    let mut c = f.gw.client();
    let r = c.request(&request("GET", "/items", Some("https://evil.example.com")));
    assert_eq!(r.status, 200);
    assert_eq!(cors_headers(&r), Vec::new(), "{r:?}");
    assert_eq!(one(&r, "vary"), "Origin");
}

#[test]
fn proxied_response_gets_cors_headers() {
    let f = start();
    let mut c = f.gw.client();
    let r = c.request(&request("PUT", "/items/7", Some(APP)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "from backend");
    assert_eq!(one(&r, "x-backend"), "yes");
    assert_eq!(one(&r, "access-control-allow-origin"), APP);
    assert_eq!(one(&r, "access-control-allow-credentials"), "true");
    assert_eq!(
        one(&r, "access-control-expose-headers"),
        "x-request-id, x-backend"
    );
    assert_eq!(one(&r, "vary"), "Origin");
    assert_eq!(f.backend.requests(), ["PUT /items/7"]);
}

#[test]
fn gateway_errors_get_cors_headers() {
    let f = start();
    let mut c = f.gw.client();
    // 404: no route; 405: a route for another method; 502: upstream down.
    for (method, path, status) in [
        ("GET", "/nowhere", 404),
        ("DELETE", "/items", 405),
        ("GET", "/down", 502),
    ] {
        let r = c.request(&request(method, path, Some(APP)));
        assert_json_error(&r, status);
        assert_eq!(
            one(&r, "access-control-allow-origin"),
            APP,
            "{method} {path}: {r:?}"
        );
        assert_eq!(one(&r, "access-control-allow-credentials"), "true");
        assert_eq!(one(&r, "vary"), "Origin");
        if r.says_close() {
            c = f.gw.client();
        }
    }
}

// === config errors ===

fn check_errors(cors: &str) -> Vec<String> {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[apis]]\nname = \"a\"\ncors = {cors}\n\n[[apis.routes]]\nkey = \"GET /\"\nintegration = {{ type = \"mock\" }}\n"
    );
    let path = write_config(&text);
    let out = run_coregate(&["check", "--config", path.to_str().expect("utf-8 temp path")]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Vec::new();
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(without_line)
        .collect()
}

/// `error: line N: KEY: MESSAGE` as `error: KEY: MESSAGE`: these tests check
/// keys and messages (tests/config_check.rs checks the lines).
fn without_line(l: &str) -> String {
    match l
        .strip_prefix("error: line ")
        .and_then(|r| r.split_once(": "))
    {
        Some((n, rest)) if n.bytes().all(|b| b.is_ascii_digit()) => format!("error: {rest}"),
        _ => l.to_string(),
    }
}

#[test]
fn check_accepts_a_full_cors_config() {
    let errors = check_errors(
        r#"{ allow_origins = ["https://a.test", "http://*"], allow_methods = ["*"], allow_headers = ["*"], expose_headers = ["x-a"], max_age = 0, allow_credentials = true }"#,
    );
    assert_eq!(errors, Vec::<String>::new());
}

#[test]
fn check_reports_unknown_cors_keys() {
    let errors = check_errors(r#"{ allow_origins = ["*"], allow_origin = ["https://a.test"] }"#);
    assert_eq!(errors.len(), 1, "{errors:?}");
    // Regression: serde_ignored's `?` segment for an Option field used to
    // show (`apis[0].cors.?.allow_origin`).
    assert!(
        errors[0].contains(": apis[0].cors.allow_origin: unknown key"),
        "{errors:?}"
    );
}

#[test]
fn check_names_each_bad_cors_key() {
    let errors = check_errors(
        r#"{ allow_origins = ["*", "https://a.test/"], allow_methods = ["GET", "BREW"], allow_headers = ["bad header"], max_age = 86401, allow_credentials = true }"#,
    );
    let joined = errors.join("\n");
    for line in [
        "error: apis[0].cors.allow_origins[0]: \"*\" cannot be used with allow_credentials",
        "error: apis[0].cors.allow_origins[1]: \"https://a.test/\" ends with '/'",
        "error: apis[0].cors.allow_methods[1]: \"BREW\" is not a method",
        "error: apis[0].cors.allow_headers[0]: \"bad header\" is not a header name",
        "error: apis[0].cors.max_age: 86401 is out of range",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(line)),
            "no error {line:?}:\n{joined}"
        );
    }
    assert_eq!(errors.len(), 5, "{joined}");
}

#[test]
fn check_requires_origins() {
    let errors = check_errors(r#"{ allow_methods = ["GET"] }"#);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("apis[0].cors.allow_origins: must list at least one origin"),
        "{errors:?}"
    );
}

// === regressions ===

#[test]
fn backend_cors_headers_are_dropped_when_the_api_does_cors() {
    // Regression: a backend's own Access-Control-Allow-Origin was forwarded
    // beside the gateway's, and browsers refuse a doubled header. As in API
    // Gateway, the API's CORS settings win.
    let backend = Backend::start(Reply::fixed(
        200,
        &[
            ("access-control-allow-origin", "https://evil.example"),
            ("Access-Control-Expose-Headers", "x-secret"),
            ("x-backend", "yes"),
        ],
        "from backend",
    ));
    let toml = fill(
        CONFIG,
        &[
            ("B", backend.addr_str()),
            ("DOWN", refused_addr().to_string()),
        ],
    );
    let gw = Gateway::start(&toml);
    let mut c = gw.client();
    let r = c.request(&request("PUT", "/items/1", Some(APP)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(one(&r, "access-control-allow-origin"), APP);
    assert_eq!(
        one(&r, "access-control-expose-headers"),
        "x-request-id, x-backend"
    );
    assert_eq!(
        r.header("x-backend"),
        Some("yes"),
        "other headers pass: {r:?}"
    );

    // Without CORS on the API, the backend's headers pass through untouched.
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\n[[apis]]\nname = \"p\"\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"http_proxy\", url = \"http://{}/x\" }}\n",
        backend.addr_str()
    );
    let gw = Gateway::start(&toml);
    let r = gw.client().get("/x");
    assert_eq!(
        one(&r, "access-control-allow-origin"),
        "https://evil.example"
    );
}
