//! Routing over real sockets: mock answers, 404/405, `$default`, base paths,
//! host-specific APIs, and how a matched route's parameters and the query
//! string become the upstream request target.

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
integration = { type = "mock", status = 200, headers = { "content-type" = "application/json", "x-mock" = "health" }, body = '{"ok":true}' }

[[apis.routes]]
key = "POST /items"
integration = { type = "mock", status = 201, headers = { "location" = "/items/1" }, body = 'created' }

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://@B@/animals/{id}" }

[[apis.routes]]
key = "GET /pets/special"
integration = { type = "mock", body = 'exact' }

[[apis.routes]]
key = "ANY /files/{proxy+}"
integration = { type = "http_proxy", url = "http://@B@/static/{proxy}" }

[[apis.routes]]
key = "GET /owners/{owner}/pets/{pet}"
integration = { type = "http_proxy", url = "http://@B@/o/{owner}/p/{pet}" }

[[apis.routes]]
key = "GET /search"
integration = { type = "http_proxy", url = "http://@B@/find?fixed=1" }

[[apis.routes]]
key = "ANY /raw/{proxy+}"
integration = { type = "http_proxy", url = "http://@B@" }

[[apis]]
name = "v2"
base_path = "/v2"

[[apis.routes]]
key = "GET /thing"
integration = { type = "mock", body = 'v2 thing' }

[[apis]]
name = "catchall"
base_path = "/catchall"

[[apis.routes]]
key = "GET /known"
integration = { type = "mock", body = 'known' }

[[apis.routes]]
key = "$default"
integration = { type = "mock", status = 202, body = 'default route' }

[[apis]]
name = "hosted"
hosts = ["api.example.com"]

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'host-specific' }
"#;

fn setup() -> (Backend, Gateway) {
    let b = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(CONFIG, &[("B", b.addr_str())]));
    (b, gw)
}

#[test]
fn mock_route_answers_with_configured_status_headers_and_body() {
    let (_b, gw) = setup();
    let r = http_get(&gw.url("/health"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-mock"), Some("health"));
    assert_eq!(r.header("content-length"), Some("11"));
    assert_eq!(r.text(), r#"{"ok":true}"#);

    let r = call(agent().post(&gw.url("/items")), Some(b"ignored body"));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("location"), Some("/items/1"));
    assert_eq!(r.text(), "created");
}

#[test]
fn unknown_path_is_404_not_found_json() {
    let (b, gw) = setup();
    let mut c = gw.client();
    let r = c.get("/nope");
    assert_eq!(assert_json_error(&r, 404), "Not Found");
    assert_eq!(r.body, br#"{"message":"Not Found"}"#);
    // Not a connection-level error: the connection stays usable.
    assert_eq!(c.get("/health").status, 200);
    let r = http_get(&gw.url("/pets"));
    assert_eq!(r.status, 404, "a prefix of a route is not a match: {r:?}");
    assert_eq!(b.heads(), 0);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let (_b, gw) = setup();
    let mut c = gw.client();
    let r = c.request(b"DELETE /items HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(assert_json_error(&r, 405), "Method Not Allowed");
    let allow = r
        .header("allow")
        .unwrap_or_else(|| panic!("405 without Allow: {r:?}"));
    let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    assert_eq!(methods, ["POST"], "Allow: {allow}");

    let r = c.request(b"POST /health HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n");
    assert_json_error(&r, 405);
    let allow = r
        .header("allow")
        .unwrap_or_else(|| panic!("405 without Allow: {r:?}"));
    assert!(
        allow.split(',').any(|m| m.trim() == "GET"),
        "Allow: {allow}"
    );
    assert!(!allow.contains("POST"), "Allow: {allow}");
}

#[test]
fn exact_route_beats_parameter() {
    let (b, gw) = setup();
    let r = http_get(&gw.url("/pets/special"));
    assert_eq!(r.text(), "exact");
    assert_eq!(b.heads(), 0);
    let r = http_get(&gw.url("/pets/7"));
    assert_eq!(r.echo().target, "/animals/7");
}

#[test]
fn default_route_catches_what_nothing_else_matches() {
    let (_b, gw) = setup();
    let r = http_get(&gw.url("/catchall/known"));
    assert_eq!((r.status, r.text().as_str()), (200, "known"));
    let r = http_get(&gw.url("/catchall/anything/else"));
    assert_eq!((r.status, r.text().as_str()), (202, "default route"));
    // A method with no route on a known path also falls to $default, not 405.
    let r = call(agent().delete(&gw.url("/catchall/known")), None);
    assert_eq!((r.status, r.text().as_str()), (202, "default route"));
}

#[test]
fn base_path_prefixes_an_apis_routes() {
    let (_b, gw) = setup();
    let r = http_get(&gw.url("/v2/thing"));
    assert_eq!((r.status, r.text().as_str()), (200, "v2 thing"));
    assert_eq!(http_get(&gw.url("/thing")).status, 404);
    assert_eq!(
        http_get(&gw.url("/v2thing")).status,
        404,
        "base path must end on a segment boundary"
    );
    assert_eq!(http_get(&gw.url("/v2/health")).status, 404);
}

#[test]
fn host_specific_api_is_chosen_by_host_header() {
    let (_b, gw) = setup();
    let mut c = gw.client();
    let r = c.request(b"GET /health HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "host-specific"));
    let r = c.request(b"GET /health HTTP/1.1\r\nHost: API.Example.COM:8080\r\n\r\n");
    assert_eq!(
        r.text(),
        "host-specific",
        "host match ignores case and port"
    );
    let r = c.request(b"GET /health HTTP/1.1\r\nHost: other.example.com\r\n\r\n");
    assert_eq!(r.text(), r#"{"ok":true}"#);
    // Absolute-form target: its authority is the host.
    let r =
        c.request(b"GET http://api.example.com/health HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    assert_eq!(r.text(), "host-specific");
}

#[test]
fn path_parameter_is_substituted_into_upstream_path() {
    let (b, gw) = setup();
    assert_eq!(http_get(&gw.url("/pets/42")).echo().target, "/animals/42");
    // Parameters are substituted raw, still percent-encoded.
    assert_eq!(
        http_get(&gw.url("/pets/a%20b")).echo().target,
        "/animals/a%20b"
    );
    assert_eq!(
        http_get(&gw.url("/owners/ann/pets/rex")).echo().target,
        "/o/ann/p/rex"
    );
    assert_eq!(b.hits(), 3);
}

#[test]
fn greedy_parameter_is_substituted_into_upstream_path() {
    let (_b, gw) = setup();
    let e = http_get(&gw.url("/files/a/b/c.txt")).echo();
    assert_eq!(
        (e.method.as_str(), e.target.as_str()),
        ("GET", "/static/a/b/c.txt")
    );
    let e = call(agent().post(&gw.url("/files/up/load")), Some(b"data")).echo();
    assert_eq!(
        (e.method.as_str(), e.target.as_str()),
        ("POST", "/static/up/load")
    );
    assert_eq!(e.body, b"data");
}

#[test]
fn query_string_is_preserved() {
    let (_b, gw) = setup();
    let e = http_get(&gw.url("/pets/42?x=1&y=two%20words")).echo();
    assert_eq!(e.target, "/animals/42?x=1&y=two%20words");
    let e = http_get(&gw.url("/files/f.txt?download=1")).echo();
    assert_eq!(e.target, "/static/f.txt?download=1");
}

#[test]
fn query_is_merged_after_a_query_fixed_in_the_url() {
    let (_b, gw) = setup();
    assert_eq!(
        http_get(&gw.url("/search?q=cat")).echo().target,
        "/find?fixed=1&q=cat"
    );
    assert_eq!(http_get(&gw.url("/search")).echo().target, "/find?fixed=1");
}

#[test]
fn url_without_path_passes_the_request_path_through() {
    let (_b, gw) = setup();
    let e = http_get(&gw.url("/raw/some/thing?z=1")).echo();
    assert_eq!(e.target, "/raw/some/thing?z=1");
}
