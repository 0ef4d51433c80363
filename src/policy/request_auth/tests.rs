//! Unit tests of the request authorizer's pure parts: config compile and
//! binding, identity extraction, the cache key, the protocol (call body and
//! answer parsing, header sanitising), the decision cache and its flights,
//! and the synchronous check. The calls themselves are proven over real
//! sockets in tests/request_authorizer.rs.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (configs, keys, temp files, vectors), so a
//! failure is a failing test; nothing a client or an operator's config
//! controls reaches them.

use super::cache::{Allowed, DecisionCache, Failed, Verdict};
use super::protocol::{parse_answer, request_body, Facts};
use super::*;
use crate::http::parse::RequestHead;
use crate::http::parse::{parse_request_head, HeadLimits};
use crate::plan::{load_str, Integration, Plan};
use std::future::Future;
use std::rc::Rc;

// === helpers ===

fn config(authorizer: &str, route_extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "authz"
targets = [{{ address = "127.0.0.1:9" }}]

[[authorizers]]
name = "tokens"
[authorizers.request]
{authorizer}

[[apis]]
name = "pets"
authorizer = "tokens"

[[apis.routes]]
key = "GET /pets/{{id}}"
{route_extra}
integration = {{ type = "http_proxy", url = "http://127.0.0.1:9/pets/{{id}}" }}
"#
    )
}

const BASIC: &str = r#"url = "http://127.0.0.1:9/authorize"
identity_sources = ["header:Authorization"]"#;

fn plan(text: &str) -> Plan {
    load_str(text).unwrap_or_else(|e| panic!("{e:#?}\n{text}"))
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(text) {
        Ok(_) => panic!("expected errors:\n{text}"),
        Err(e) => e,
    }
}

fn error_at<'a>(errs: &'a [ConfigError], key: &str) -> &'a ConfigError {
    errs.iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error at {key}: {errs:#?}"))
}

fn az_of(p: &Plan) -> &RequestAuthorizer {
    match p.policies.authorizers.first().map(|a| &a.kind) {
        Some(AuthorizerKind::Request(r)) => r,
        #[allow(unreachable_patterns)]
        _ => panic!("no request authorizer"),
    }
}

/// The first route's authorization rule.
fn rule_of(p: &Plan) -> &AuthRule {
    p.routes
        .first()
        .and_then(|r| r.policies.auth.as_ref())
        // A test failure, not an input: the test config's route has one.
        .expect("the first route has an authorizer")
}

fn compiled(authorizer: &str) -> RequestAuthorizer {
    az_of(&plan(&config(authorizer, ""))).clone()
}

fn head(raw: &[u8]) -> RequestHead {
    parse_request_head(
        raw,
        &HeadLimits {
            max_request_line: 8192,
            max_head: 16384,
            max_headers: 100,
        },
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("not a head: {:?}", String::from_utf8_lossy(raw)))
}

fn view<'a>(buf: &'a [u8], head: &'a RequestHead) -> RequestView<'a> {
    RequestView {
        buf,
        head,
        peer: "203.0.113.9:4000".parse().expect("addr"),
        route: Some(0),
        now: Instant::now(),
        client_cert_subject: None,
    }
}

fn values(az: &RequestAuthorizer, raw: &[u8]) -> Option<Vec<String>> {
    let h = head(raw);
    let v = view(raw, &h);
    az.sources
        .iter()
        .map(|s| identity_value(s, &v).map(Cow::into_owned))
        .collect()
}

fn allow(principal: Option<&str>, headers: &str) -> Verdict {
    Verdict::Allow(Rc::new(Allowed {
        principal: principal.map(Into::into),
        headers: headers.as_bytes().into(),
    }))
}

// === config ===

#[test]
fn defaults() {
    let az = compiled(BASIC);
    assert_eq!(az.name, "tokens");
    assert_eq!(az.ttl, Duration::from_secs(300));
    assert_eq!(az.timeout, Duration::from_millis(1000));
    assert_eq!(az.cache_max_entries, 10_000);
    assert!(!az.cache_per_route);
    assert!(az.context_headers.is_empty());
    assert_eq!(az.principal_header, None);
    assert_eq!(az.target, "/authorize");
    assert_eq!(
        az.sources,
        vec![IdentitySource {
            label: "header:Authorization".into(),
            kind: SourceKind::Header,
            name: (*b"authorization").into(),
        }]
    );
}

#[test]
fn every_key() {
    let az = compiled(
        r#"url = "http://127.0.0.1:9/v1/auth?stage=prod"
identity_sources = ["header:X-Token", "query:token"]
ttl_seconds = 0
timeout_ms = 2500
context_headers = { userId = "X-User-Id", tenant = "x-tenant" }
principal_header = "X-Principal"
cache_max_entries = 7
cache_per_route = true"#,
    );
    assert_eq!(az.target, "/v1/auth?stage=prod");
    assert_eq!(az.ttl, Duration::ZERO);
    assert_eq!(az.timeout, Duration::from_millis(2500));
    assert_eq!(az.cache_max_entries, 7);
    assert!(az.cache_per_route);
    assert_eq!(
        az.context_headers,
        vec![
            ("tenant".to_string(), "x-tenant".to_string()),
            ("userId".to_string(), "x-user-id".to_string())
        ]
    );
    assert_eq!(az.principal_header.as_deref(), Some("x-principal"));
    assert_eq!(az.sources[1].kind, SourceKind::Query);
    assert_eq!(&*az.sources[1].name, b"token");
    assert_eq!(
        az.upstream_header_names(),
        ["x-principal", "x-tenant", "x-user-id"]
    );
}

#[test]
fn the_url_binds_to_a_declared_or_an_implicit_upstream() {
    let p = plan(&config(
        "url = \"http://authz/check\"\nidentity_sources = [\"header:a\"]",
        "",
    ));
    let az = az_of(&p);
    assert_eq!(p.upstreams[az.upstream].name, "authz");
    assert_eq!(az.target, "/check");
    // A host:port becomes an implicit upstream, shared with an integration
    // to the same address.
    let p = plan(&config(
        "url = \"http://127.0.0.1:9\"\nidentity_sources = [\"header:a\"]",
        "",
    ));
    let az = az_of(&p);
    assert_eq!(p.upstreams[az.upstream].name, "127.0.0.1:9");
    assert_eq!(az.target, "/");
    let Integration::Proxy(proxy) = &p.routes[0].integration else {
        panic!("a proxy route")
    };
    assert_eq!(proxy.upstream, az.upstream);
}

#[test]
fn url_errors_name_the_key() {
    let errs = errors(&config("identity_sources = [\"header:a\"]", ""));
    assert!(error_at(&errs, "authorizers[0].request.url")
        .message
        .contains("required"));
    // https:// endpoints go through a TLS upstream (the TLS branch).
    let p = plan(&config(
        "url = \"https://127.0.0.1:9/a\"\nidentity_sources = [\"header:a\"]",
        "",
    ));
    assert!(p.upstreams.iter().any(|u| u.tls.is_some()));
    let errs = errors(&config(
        "url = \"http://127.0.0.1:9/{id}\"\nidentity_sources = [\"header:a\"]",
        "",
    ));
    error_at(&errs, "authorizers[0].request.url");
    let errs = errors(&config(
        "url = \"ftp://x\"\nidentity_sources = [\"header:a\"]",
        "",
    ));
    error_at(&errs, "authorizers[0].request.url");
}

#[test]
fn range_errors() {
    let k = "authorizers[0].request";
    for (line, key, needle) in [
        ("ttl_seconds = 3601", "ttl_seconds", "between 0 and 3600"),
        ("ttl_seconds = -1", "ttl_seconds", "between 0 and 3600"),
        ("timeout_ms = 0", "timeout_ms", "between 1 and 10000"),
        ("timeout_ms = 10001", "timeout_ms", "between 1 and 10000"),
        ("cache_max_entries = 0", "cache_max_entries", "between 1"),
        (
            "cache_max_entries = 1000001",
            "cache_max_entries",
            "between 1",
        ),
    ] {
        let errs = errors(&config(&format!("{BASIC}\n{line}"), ""));
        let e = error_at(&errs, &format!("{k}.{key}"));
        assert!(e.message.contains(needle), "{line}: {e:?}");
    }
    // The edges are fine.
    for line in [
        "ttl_seconds = 3600",
        "ttl_seconds = 0",
        "timeout_ms = 1",
        "timeout_ms = 10000",
        "cache_max_entries = 1000000",
    ] {
        plan(&config(&format!("{BASIC}\n{line}"), ""));
    }
}

#[test]
fn identity_source_errors() {
    let k = "authorizers[0].request.identity_sources";
    let errs = errors(&config(
        r#"url = "http://127.0.0.1:9"
identity_sources = ["$request.header.Authorization", "$request.querystring.t", "cookie:x", "header:", "query:a&b", "header:bad name", "header:X", "header:x"]"#,
        "",
    ));
    assert!(error_at(&errs, &format!("{k}[0]"))
        .message
        .contains("\"header:Authorization\""));
    assert!(error_at(&errs, &format!("{k}[1]"))
        .message
        .contains("\"query:t\""));
    assert!(error_at(&errs, &format!("{k}[2]"))
        .message
        .contains("not an identity source"));
    error_at(&errs, &format!("{k}[3]"));
    error_at(&errs, &format!("{k}[4]"));
    error_at(&errs, &format!("{k}[5]"));
    assert!(error_at(&errs, &format!("{k}[7]"))
        .message
        .contains("twice"));
    // No sources: only without caching.
    let errs = errors(&config("url = \"http://127.0.0.1:9\"", ""));
    assert!(error_at(&errs, k).message.contains("ttl_seconds = 0"));
    let az = compiled("url = \"http://127.0.0.1:9\"\nttl_seconds = 0");
    assert!(az.sources.is_empty());
}

#[test]
fn header_name_errors() {
    let k = "authorizers[0].request";
    let errs = errors(&config(
        &format!(
            "{BASIC}\ncontext_headers = {{ a = \"x-forwarded-for\", b = \"Host\", c = \"bad name\", d = \"x-same\", e = \"X-Same\", f = \"x-request-id\", g = \"proxy-authorization\", \"\" = \"x-empty\" }}\nprincipal_header = \"x-same\""
        ),
        "",
    ));
    for key in ["a", "b", "c", "f", "g"] {
        error_at(&errs, &format!("{k}.context_headers.{key}"));
    }
    assert!(error_at(&errs, &format!("{k}.context_headers.e"))
        .message
        .contains("already"));
    assert!(error_at(&errs, &format!("{k}.context_headers."))
        .message
        .contains("empty"));
    assert!(error_at(&errs, &format!("{k}.principal_header"))
        .message
        .contains("also a context header"));
    let errs = errors(&config(
        &format!("{BASIC}\nprincipal_header = \"content-length\""),
        "",
    ));
    error_at(&errs, &format!("{k}.principal_header"));
}

#[test]
fn unknown_keys_are_reported() {
    let errs = errors(&config(&format!("{BASIC}\nttl_s = 5"), ""));
    error_at(&errs, "authorizers[0].request.ttl_s");
}

#[test]
fn scopes_are_refused_on_a_request_authorizer_route() {
    let errs = errors(&config(BASIC, "authorization_scopes = [\"read\"]"));
    assert!(error_at(&errs, "apis[0].routes[0].authorization_scopes")
        .message
        .contains("request authorizer"));
}

#[test]
fn the_proxy_strips_client_copies_of_the_authorizer_headers() {
    let p = plan(&config(
        &format!("{BASIC}\ncontext_headers = {{ userId = \"X-User-Id\" }}\nprincipal_header = \"x-principal\""),
        "",
    ));
    let Integration::Proxy(proxy) = &p.routes[0].integration else {
        panic!("a proxy route")
    };
    assert_eq!(proxy.strip_headers, ["x-principal", "x-user-id"]);
}

// === identity ===

#[test]
fn header_values() {
    let az = compiled("url = \"http://127.0.0.1:9\"\nidentity_sources = [\"header:Authorization\", \"header:x-tenant\"]");
    assert_eq!(
        values(
            &az,
            b"GET /pets/1 HTTP/1.1\r\nHost: a\r\nauthorization: Bearer t\r\nX-Tenant: acme\r\n\r\n"
        ),
        Some(vec!["Bearer t".into(), "acme".into()])
    );
    // Repeated: joined with commas, in request order.
    assert_eq!(
        values(
            &az,
            b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nx-tenant: t\r\nAUTHORIZATION: b\r\n\r\n"
        ),
        Some(vec!["a,b".into(), "t".into()])
    );
    // One missing, or empty: no identity.
    assert_eq!(
        values(
            &az,
            b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\n\r\n"
        ),
        None
    );
    assert_eq!(
        values(
            &az,
            b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization:\r\nx-tenant: t\r\n\r\n"
        ),
        None
    );
    assert_eq!(
        values(
            &az,
            b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization:   \r\nx-tenant: t\r\n\r\n"
        ),
        None
    );
}

#[test]
fn query_values() {
    let az = compiled(
        "url = \"http://127.0.0.1:9\"\nidentity_sources = [\"query:token\", \"query:a%20b\"]",
    );
    assert_eq!(
        values(
            &az,
            b"GET /p?x=1&token=abc%2Fd+e&a%20b=2 HTTP/1.1\r\nHost: a\r\n\r\n"
        ),
        Some(vec!["abc/d+e".into(), "2".into()])
    );
    assert_eq!(
        values(
            &az,
            b"GET /p?token=1&a%20b=x&token=2 HTTP/1.1\r\nHost: a\r\n\r\n"
        ),
        Some(vec!["1,2".into(), "x".into()])
    );
    // Missing, empty, valueless, or not UTF-8 once decoded.
    for target in [
        "/p?a%20b=1",
        "/p",
        "/p?token=&a%20b=1",
        "/p?token&a%20b=1",
        "/p?tokens=1&a%20b=1",
        "/p?token=%ff&a%20b=1",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(values(&az, raw.as_bytes()), None, "{target}");
    }
}

#[test]
fn cache_keys_separate_identities() {
    let az = compiled(BASIC);
    let k = |vals: &[&str], route: &str| {
        let v: Vec<Cow<'_, str>> = vals.iter().map(|s| Cow::Borrowed(*s)).collect();
        cache_key(&az, route, &v)
    };
    let (r0, r1) = ("pets\nGET /a", "pets\nGET /b");
    assert_eq!(k(&["a"], r0), k(&["a"], r0));
    assert_ne!(k(&["a"], r0), k(&["b"], r0));
    // Length-prefixed: no ambiguity by concatenation.
    assert_ne!(k(&["ab", "c"], r0), k(&["a", "bc"], r0));
    assert_ne!(k(&["", "a"], r0), k(&["a", ""], r0));
    // The route counts only with cache_per_route.
    assert_eq!(k(&["a"], r0), k(&["a"], r1));
    let mut per_route = az.clone();
    per_route.cache_per_route = true;
    let v = [Cow::Borrowed("a")];
    assert_ne!(cache_key(&per_route, r0, &v), cache_key(&per_route, r1, &v));
    // The route's text is length-prefixed too.
    let w = [Cow::Borrowed("b")];
    assert_ne!(
        cache_key(&per_route, "pets\nGET /a", &w),
        cache_key(&per_route, "pets\nGET /ab", &[Cow::Borrowed("")])
    );
}

// === protocol ===

fn with_context() -> RequestAuthorizer {
    compiled(&format!(
        "{BASIC}\ncontext_headers = {{ userId = \"x-user-id\", n = \"x-n\", b = \"x-b\", z = \"x-z\" }}\nprincipal_header = \"x-principal\""
    ))
}

#[test]
fn the_call_body() {
    let az = compiled(
        "url = \"http://127.0.0.1:9\"\nidentity_sources = [\"header:Authorization\", \"query:token\"]",
    );
    let facts = Facts {
        authorizer: "tokens",
        api: "pets",
        route_key: "GET /pets/{id}",
        method: "GET",
        path: "/pets/7",
        source_ip: "203.0.113.9".parse().expect("ip"),
        request_id: "rid-1",
    };
    let body = request_body(&az, &["Bearer \"x\"".into(), "t".into()], &facts);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "version": "1.0",
            "type": "REQUEST",
            "authorizer": "tokens",
            "routeKey": "GET /pets/{id}",
            "methodArn": "pets/GET/pets/7",
            "identity": {"header:Authorization": "Bearer \"x\"", "query:token": "t"},
            "requestContext": {
                "apiName": "pets",
                "routeKey": "GET /pets/{id}",
                "httpMethod": "GET",
                "path": "/pets/7",
                "sourceIp": "203.0.113.9",
                "requestId": "rid-1"
            }
        })
    );
}

#[test]
fn an_allow_with_principal_and_context() {
    let az = with_context();
    let v = parse_answer(
        &az,
        br#"{"isAuthorized":true,"principalId":"user-1","context":{"userId":"u 1","n":42,"b":false,"z":null,"unmapped":"x"},"extra":1}"#,
    )
    .expect("valid");
    assert_eq!(
        v,
        allow(
            Some("user-1"),
            "x-principal: user-1\r\nx-b: false\r\nx-n: 42\r\nx-user-id: u 1\r\n"
        )
    );
    // Neither principal nor context.
    let v = parse_answer(&az, br#"{"isAuthorized":true}"#).expect("valid");
    assert_eq!(v, allow(None, ""));
    let v = parse_answer(
        &az,
        br#"{"isAuthorized":true,"principalId":"","context":null}"#,
    )
    .expect("valid");
    assert_eq!(v, allow(None, ""));
}

#[test]
fn a_deny_ignores_the_rest() {
    let az = with_context();
    for body in [
        &br#"{"isAuthorized":false}"#[..],
        br#"{"isAuthorized":false,"principalId":"a\r\nb","context":{"userId":[1]}}"#,
    ] {
        assert_eq!(parse_answer(&az, body), Ok(Verdict::Deny));
    }
}

#[test]
fn invalid_answers() {
    let az = with_context();
    let long = "x".repeat(MAX_HEADER_VALUE_BYTES + 1);
    let long_principal = "p".repeat(MAX_PRINCIPAL_BYTES + 1);
    let cases: Vec<String> = vec![
        "".into(),
        "not json".into(),
        "[]".into(),
        "{}".into(),
        r#"{"isAuthorized":"true"}"#.into(),
        r#"{"isAuthorized":1}"#.into(),
        r#"{"isAuthorized":null}"#.into(),
        r#"{"isAuthorized":true,"isAuthorized":false}"#.into(),
        r#"{"isAuthorized":true,"principalId":7}"#.into(),
        r#"{"isAuthorized":true,"context":"x"}"#.into(),
        r#"{"isAuthorized":true} trailing"#.into(),
        // Header injection through the context or the principal.
        r#"{"isAuthorized":true,"context":{"userId":"u\r\nx-admin: 1"}}"#.into(),
        r#"{"isAuthorized":true,"context":{"userId":"u\nx"}}"#.into(),
        r#"{"isAuthorized":true,"context":{"userId":"a\u0000b"}}"#.into(),
        r#"{"isAuthorized":true,"context":{"userId":"a\tb"}}"#.into(),
        r#"{"isAuthorized":true,"context":{"userId":"a\u007fb"}}"#.into(),
        r#"{"isAuthorized":true,"principalId":"a\r\nb"}"#.into(),
        r#"{"isAuthorized":true,"context":{"userId":[1]}}"#.into(),
        r#"{"isAuthorized":true,"context":{"userId":{"a":1}}}"#.into(),
        format!(r#"{{"isAuthorized":true,"context":{{"userId":"{long}"}}}}"#),
        format!(r#"{{"isAuthorized":true,"principalId":"{long_principal}"}}"#),
    ];
    for body in &cases {
        assert!(
            parse_answer(&az, body.as_bytes()).is_err(),
            "accepted: {body}"
        );
    }
    // Unmapped keys are never looked at, whatever they hold.
    assert!(parse_answer(
        &az,
        br#"{"isAuthorized":true,"context":{"other":"a\r\nb","deep":{"x":[1]}}}"#
    )
    .is_ok());
}

#[test]
fn the_header_lines_of_one_answer_are_bounded() {
    let mut az = with_context();
    az.context_headers = (0..4)
        .map(|i| (format!("k{i}"), format!("x-k{i}")))
        .collect();
    let v = "v".repeat(MAX_HEADER_VALUE_BYTES - 100);
    let body = format!(r#"{{"isAuthorized":true,"context":{{"k0":"{v}","k1":"{v}","k2":"{v}"}}}}"#);
    let err = parse_answer(&az, body.as_bytes()).expect_err("too many bytes");
    assert!(err.contains("more than"), "{err}");
    let body = format!(r#"{{"isAuthorized":true,"context":{{"k0":"{v}"}}}}"#);
    assert!(parse_answer(&az, body.as_bytes()).is_ok());
}

// === cache ===

#[test]
fn cache_hit_expiry_and_replace() {
    let c = DecisionCache::new(Duration::from_secs(10), 100);
    let t0 = Instant::now();
    let k = [1u8; 32];
    assert_eq!(c.get(&k, t0), None);
    c.insert(k, Verdict::Deny, t0);
    assert_eq!(c.get(&k, t0 + Duration::from_secs(9)), Some(Verdict::Deny));
    // Expired: a miss, and the entry is gone.
    assert_eq!(c.get(&k, t0 + Duration::from_secs(10)), None);
    assert!(c.is_empty());
    c.insert(k, Verdict::Deny, t0);
    c.insert(k, allow(Some("p"), ""), t0);
    assert_eq!(c.len(), 1);
    assert_eq!(c.get(&k, t0), Some(allow(Some("p"), "")));
}

#[test]
fn the_cache_holds_at_most_its_bound_and_evicts_the_least_recently_used() {
    let c = DecisionCache::new(Duration::from_secs(60), 3);
    let now = Instant::now();
    let key = |i: u8| [i; 32];
    for i in 0..3 {
        c.insert(key(i), Verdict::Deny, now);
    }
    // Touch 0: 1 is now the least recently used.
    assert!(c.get(&key(0), now).is_some());
    c.insert(key(3), Verdict::Deny, now);
    assert_eq!(c.len(), 3);
    assert!(c.get(&key(1), now).is_none(), "1 was evicted");
    assert!(c.get(&key(0), now).is_some());
    for i in 10..=255u8 {
        c.insert(key(i), Verdict::Deny, now);
        assert!(c.len() <= 3);
    }
    assert_eq!(c.len(), 3);
    assert!(c.evictions() >= 246);
    // A one-entry cache still works.
    let one = DecisionCache::new(Duration::from_secs(60), 1);
    one.insert(key(1), Verdict::Deny, now);
    one.insert(key(2), Verdict::Deny, now);
    assert_eq!(one.len(), 1);
    assert!(one.get(&key(2), now).is_some());
}

#[test]
fn a_flight_hands_its_outcome_to_waiters() {
    let c = DecisionCache::new(Duration::from_secs(60), 10);
    let k = [7u8; 32];
    assert!(c.flight(&k).is_none());
    let guard = c.begin(k);
    let flight = c.flight(&k).expect("registered");
    let mut wait = Box::pin(flight.wait());
    let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
        std::task::Poll::Ready(cx.waker().clone())
    }));
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(wait.as_mut().poll(&mut cx).is_pending());
    guard.finish(Ok(Verdict::Deny));
    assert_eq!(c.flights(), 0);
    assert_eq!(
        wait.as_mut().poll(&mut cx),
        std::task::Poll::Ready(Some(Ok(Verdict::Deny)))
    );
    // A failure is handed on too (and never stored).
    let guard = c.begin(k);
    let flight = c.flight(&k).expect("registered");
    guard.finish(Err(Failed));
    assert_eq!(
        futures_lite::future::block_on(flight.wait()),
        Some(Err(Failed))
    );
    assert!(c.is_empty());
}

#[test]
fn a_dropped_flight_wakes_waiters_without_an_outcome() {
    let c = DecisionCache::new(Duration::from_secs(60), 10);
    let k = [9u8; 32];
    let guard = c.begin(k);
    let flight = c.flight(&k).expect("registered");
    drop(guard);
    assert_eq!(c.flights(), 0);
    assert_eq!(futures_lite::future::block_on(flight.wait()), None);
}

// === check ===

#[test]
fn check_refuses_a_missing_identity_and_asks_on_a_miss() {
    let p = plan(&config(BASIC, ""));
    let az = az_of(&p);
    let shard = ShardRequestAuth::new(&p.policies.authorizers);
    let mut req = RequestState::default();
    let raw = b"GET /pets/1 HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = head(raw);
    match check(az, rule_of(&p), &shard, &view(raw, &h), &mut req) {
        Decision::Respond(r) => {
            assert_eq!((r.status, &*r.message), (401, "Unauthorized"))
        }
        other => panic!("{other:?}"),
    }
    let raw = b"GET /pets/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n";
    let h = head(raw);
    let call = match check(az, rule_of(&p), &shard, &view(raw, &h), &mut req) {
        Decision::Authorize(call) => call,
        other => panic!("{other:?}"),
    };
    assert_eq!(call.identity, ["Bearer t"]);
    assert_eq!((call.authorizer, call.route), (0, 0));
    assert!(call.key.is_some());
    // The identity is never printed.
    assert!(!format!("{call:?}").contains("Bearer"));
    assert_eq!(req, RequestState::default());
}

#[test]
fn check_answers_from_the_cache() {
    let p = plan(&config(BASIC, ""));
    let az = az_of(&p);
    let shard = ShardRequestAuth::new(&p.policies.authorizers);
    let cache = shard.cache(0).expect("caches");
    let raw = b"GET /pets/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n";
    let h = head(raw);
    let key = cache_key(az, &rule_of(&p).route, &[Cow::Borrowed("Bearer t")]);
    cache.insert(
        key,
        allow(Some("user-1"), "x-user-id: 1\r\n"),
        Instant::now(),
    );
    let mut req = RequestState::default();
    assert!(matches!(
        check(az, rule_of(&p), &shard, &view(raw, &h), &mut req),
        Decision::Continue
    ));
    assert_eq!(req.principal.as_deref(), Some("user-1"));
    assert_eq!(req.upstream_headers, b"x-user-id: 1\r\n");
    cache.insert(key, Verdict::Deny, Instant::now());
    let mut req = RequestState::default();
    match check(az, rule_of(&p), &shard, &view(raw, &h), &mut req) {
        Decision::Respond(r) => assert_eq!((r.status, &*r.message), (403, "Forbidden")),
        other => panic!("{other:?}"),
    }
    assert_eq!(req, RequestState::default());
}

#[test]
fn without_a_ttl_nothing_is_cached() {
    let p = plan(&config(
        "url = \"http://127.0.0.1:9\"\nidentity_sources = [\"header:a\"]\nttl_seconds = 0",
        "",
    ));
    let shard = ShardRequestAuth::new(&p.policies.authorizers);
    assert!(shard.cache(0).is_none());
    let raw = b"GET /pets/1 HTTP/1.1\r\nHost: a\r\na: 1\r\n\r\n";
    let h = head(raw);
    let mut req = RequestState::default();
    match check(az_of(&p), rule_of(&p), &shard, &view(raw, &h), &mut req) {
        Decision::Authorize(call) => assert!(call.key.is_none()),
        other => panic!("{other:?}"),
    }
}
