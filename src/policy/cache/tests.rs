//! Unit tests of the cache's compile step, key format, storing rules and
//! budget arithmetic. The LRU's own tests are in `lru.rs`; behaviour over
//! real sockets is in tests/cache.rs.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (configs, keys, temp files, vectors), so a
//! failure is a failing test; nothing a client or an operator's config
//! controls reaches them.

use super::*;
use crate::http::parse::{parse_request_head, HeadLimits};
use crate::plan::load_str;

fn config(api_cache: &str, route_cache: &str, server_cache: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
{server_cache}

[[apis]]
name = "a"
{api_cache}

[[apis.routes]]
key = "GET /x"
integration = {{ type = "http_proxy", url = "http://127.0.0.1:9" }}
{route_cache}
"#
    )
}

fn rule_of(api_cache: &str, route_cache: &str) -> Option<CacheRule> {
    let plan = load_str(&config(api_cache, route_cache, ""))
        .unwrap_or_else(|e| panic!("config rejected: {e:?}"));
    plan.routes[0].policies.cache.clone()
}

fn errors_of(api_cache: &str, route_cache: &str, server_cache: &str) -> Vec<String> {
    match load_str(&config(api_cache, route_cache, server_cache)) {
        Ok(_) => panic!("config accepted"),
        Err(es) => es
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect(),
    }
}

fn head(raw: &[u8]) -> RequestHead {
    let limits = HeadLimits {
        max_request_line: 8192,
        max_head: 16384,
        max_headers: 100,
    };
    match parse_request_head(raw, &limits) {
        Ok(Some(h)) => h,
        other => panic!("not a head: {other:?}"),
    }
}

fn key_of(rule: &CacheRule, raw: &[u8]) -> String {
    let h = head(raw);
    let mut out = Vec::new();
    rule.write_key(&mut out, raw, &h);
    // Every key starts with the rule's scope.
    assert_eq!(out[..8], rule.scope.to_le_bytes());
    String::from_utf8(out[8..].to_vec()).expect("utf-8 key")
}

// === compile ===

#[test]
fn defaults() {
    let r = rule_of("cache = {}", "").expect("a cache table turns caching on");
    assert_eq!(r.ttl, Duration::from_secs(300));
    assert!(r.caches_method(Method::Get));
    assert!(r.caches_method(Method::Head));
    assert!(!r.caches_method(Method::Post));
    assert_eq!(r.cacheable_statuses, [200]);
    assert_eq!(r.max_response_body_bytes, 1024 * 1024);
    assert_eq!(r.invalidation, Invalidation::Deny);
    assert!(!r.ignore_backend_no_store);
    assert!(r.key_query_parameters.is_empty() && r.key_headers.is_empty());
    let plan = load_str(&config("cache = {}", "", "")).expect("config");
    assert_eq!(
        plan.policies.cache.max_bytes_per_shard,
        64 * 1024 * 1024,
        "default budget"
    );
}

#[test]
fn no_table_means_no_cache() {
    assert!(rule_of("", "").is_none());
}

#[test]
fn route_overrides_api_key_by_key() {
    let r = rule_of(
        "cache = { ttl_seconds = 60, methods = [\"GET\", \"POST\"], key_headers = [\"Accept\"] }",
        "cache = { ttl_seconds = 10 }",
    )
    .expect("rule");
    assert_eq!(r.ttl, Duration::from_secs(10), "the route's ttl wins");
    assert!(r.caches_method(Method::Post), "the API's methods stay");
    assert_eq!(r.key_headers, [Box::from(&b"accept"[..])]);
}

#[test]
fn route_can_opt_out_and_ttl_zero_turns_off() {
    assert!(rule_of("cache = {}", "cache = { enabled = false }").is_none());
    assert!(rule_of("cache = { ttl_seconds = 0 }", "").is_none());
    assert!(rule_of("cache = { enabled = false }", "cache = { enabled = true }").is_some());
}

#[test]
fn every_bad_key_is_named() {
    let es = errors_of(
        "cache = { ttl_seconds = 3601, methods = [\"GET\", \"get\"], key_headers = [\"a b\"], key_query_parameters = [\"\", \"a=b\"], max_response_body_bytes = 0, cacheable_statuses = [200, 99, 600] }",
        "",
        "",
    );
    let want = [
        "apis[0].cache.ttl_seconds: must be between 0 and 3600",
        "apis[0].cache.methods[1]: \"get\" is not a method",
        "apis[0].cache.key_headers[0]: \"a b\" is not a header name",
        "apis[0].cache.key_query_parameters[0]: \"\" is not a query parameter name",
        "apis[0].cache.key_query_parameters[1]: \"a=b\" is not a query parameter name",
        "apis[0].cache.max_response_body_bytes: must be at least 1",
        "apis[0].cache.cacheable_statuses[1]: 99 is not a final status",
        "apis[0].cache.cacheable_statuses[2]: 600 is not a final status",
    ];
    for w in want {
        assert!(
            es.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {es:#?}"
        );
    }
    assert_eq!(es.len(), want.len(), "{es:#?}");
}

#[test]
fn negative_ttl_and_empty_lists_are_errors() {
    let es = errors_of(
        "",
        "cache = { ttl_seconds = -1, methods = [], cacheable_statuses = [] }",
        "",
    );
    for w in [
        "apis[0].routes[0].cache.ttl_seconds: must be between 0 and 3600",
        "apis[0].routes[0].cache.methods: must name at least one method",
        "apis[0].routes[0].cache.cacheable_statuses: must list at least one status",
    ] {
        assert!(
            es.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {es:#?}"
        );
    }
}

#[test]
fn server_settings() {
    let plan = load_str(&config(
        "cache = {}",
        "",
        "[server.cache]\nmax_bytes_per_shard = 4096",
    ))
    .expect("config");
    assert_eq!(plan.policies.cache.max_bytes_per_shard, 4096);
    let es = errors_of("", "", "[server.cache]\nmax_bytes_per_shard = 0");
    assert!(
        es.iter()
            .any(|e| e.starts_with("server.cache.max_bytes_per_shard: must be at least 1")),
        "{es:#?}"
    );
    let es = errors_of("", "", "[server.cache]\nbudget = 1");
    assert!(
        es.iter().any(|e| is_unknown(e, "server.cache.", "budget")),
        "{es:#?}"
    );
}

#[test]
fn unknown_rule_key_is_named() {
    let es = errors_of("cache = { ttl = 5 }", "", "");
    assert!(
        es.iter().any(|e| is_unknown(e, "apis[0].cache.", "ttl")),
        "{es:#?}"
    );
}

/// An unknown-key error for `{table}{name}`. Regression: serde_ignored's
/// `?` segment for an `Option` used to show (`apis[0].cache.?.ttl`).
fn is_unknown(e: &str, table: &str, name: &str) -> bool {
    let Some((key, message)) = e.split_once(": ") else {
        return false;
    };
    let rest = key.strip_prefix(table).unwrap_or("");
    rest == name && message.starts_with("unknown key")
}

#[test]
fn an_api_error_is_reported_once_for_many_routes() {
    let text = r#"
[[apis]]
name = "a"
cache = { ttl_seconds = 9999 }

[[apis.routes]]
key = "GET /x"
integration = { type = "http_proxy", url = "http://127.0.0.1:9" }

[[apis.routes]]
key = "GET /y"
integration = { type = "http_proxy", url = "http://127.0.0.1:9" }
"#;
    let es = load_str(text).expect_err("rejected");
    let n = es
        .iter()
        .filter(|e| e.key == "apis[0].cache.ttl_seconds")
        .count();
    assert_eq!(n, 1, "{es:?}");
}

// === key ===

#[test]
fn key_is_method_host_path_only_by_default() {
    let r = rule_of("cache = {}", "").expect("rule");
    assert_eq!(
        key_of(
            &r,
            b"GET /x?a=1&b=2 HTTP/1.1\r\nHost: Example.COM\r\nAccept: x\r\n\r\n"
        ),
        "GET\nexample.com\n/x\n"
    );
}

#[test]
fn key_takes_named_params_and_headers_in_canonical_order() {
    let r = rule_of(
        "cache = { key_query_parameters = [\"b\", \"a\"], key_headers = [\"X-Tenant\", \"accept\"] }",
        "",
    )
    .expect("rule");
    let one = key_of(
        &r,
        b"GET /x?z=9&b=2&a=1&a=3 HTTP/1.1\r\nHost: h\r\nX-Tenant: t1\r\nAccept: json\r\nOther: o\r\n\r\n",
    );
    assert_eq!(one, "GET\nh\n/x\na=1&a=3&b=2\naccept: json\nx-tenant: t1");
    // Other order of params and headers, unnamed ones different: same key.
    let two = key_of(
        &r,
        b"GET /x?a=1&b=2&a=3&z=0 HTTP/1.1\r\nAccept: json\r\nHost: h\r\nx-tenant: t1\r\n\r\n",
    );
    assert_eq!(one, two);
    // A named value differs: another key.
    let three = key_of(
        &r,
        b"GET /x?a=1&b=2&a=3 HTTP/1.1\r\nHost: h\r\nX-Tenant: t2\r\nAccept: json\r\n\r\n",
    );
    assert_ne!(one, three);
}

#[test]
fn key_tells_absent_from_empty_and_prefixes_apart() {
    let r = rule_of("cache = { key_query_parameters = [\"a\"] }", "").expect("rule");
    let absent = key_of(&r, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    let empty = key_of(&r, b"GET /x?a= HTTP/1.1\r\nHost: h\r\n\r\n");
    let bare = key_of(&r, b"GET /x?a HTTP/1.1\r\nHost: h\r\n\r\n");
    let prefix = key_of(&r, b"GET /x?ab=1 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_ne!(absent, empty);
    assert_ne!(empty, bare);
    assert_eq!(absent, prefix, "ab is not a");
}

#[test]
fn invalidation_needs_permission_and_max_age_zero() {
    let deny = rule_of("cache = {}", "").expect("rule");
    let allow = rule_of("cache = { allow_client_invalidation = true }", "").expect("rule");
    let ask = b"GET /x HTTP/1.1\r\nHost: h\r\nCache-Control: no-transform, MAX-AGE=0\r\n\r\n";
    let h = head(ask);
    assert!(!deny.may_invalidate(ask, &h, None));
    assert!(allow.may_invalidate(ask, &h, None));
    for other in [
        &b"GET /x HTTP/1.1\r\nHost: h\r\nCache-Control: max-age=10\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: h\r\nCache-Control: max-age=\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert!(!allow.may_invalidate(other, &head(other), None));
    }
}

// === storing rules ===

#[test]
fn backend_no_store_and_private_forbid_storing() {
    assert!(forbids_storing(b"cache-control: no-store\r\n"));
    assert!(forbids_storing(
        b"x: y\r\nCache-Control: max-age=5, Private=\"set-cookie\"\r\n"
    ));
    assert!(!forbids_storing(b"cache-control: public, max-age=60\r\n"));
    assert!(!forbids_storing(b"x-note: no-store\r\n"));
}

// === ShardCache ===

fn entry(body: usize, now: Instant, ttl: Duration) -> Entry {
    Entry {
        status: 200,
        headers: Box::from(&b"a: b\r\n"[..]),
        body: vec![7; body].into_boxed_slice(),
        content_length: body as u64,
        stored: now,
        expires: now + ttl,
    }
}

#[test]
fn budget_counts_key_headers_body_and_overhead() {
    assert_eq!(entry_size(10, 6, 100), 116 + ENTRY_OVERHEAD_BYTES);
    let each = entry_size(1, 6, 100);
    let cache = ShardCache::new(&CacheSettings {
        max_bytes_per_shard: 2 * each,
    });
    let now = Instant::now();
    let ttl = Duration::from_secs(60);
    assert_eq!(
        cache.store(Rc::from(&b"a"[..]), entry(100, now, ttl)),
        Stored::Yes
    );
    assert_eq!(
        cache.store(Rc::from(&b"b"[..]), entry(100, now, ttl)),
        Stored::Yes
    );
    assert_eq!(cache.usage(), (2 * each, 2 * each));
    // Touch A; inserting C evicts B.
    assert!(cache.get(b"a", now).is_some());
    assert_eq!(
        cache.store(Rc::from(&b"c"[..]), entry(100, now, ttl)),
        Stored::Yes
    );
    assert!(cache.get(b"b", now).is_none());
    assert!(cache.get(b"a", now).is_some());
    assert!(cache.get(b"c", now).is_some());
    // Bigger than the whole budget: refused, nothing evicted.
    assert_eq!(
        cache.store(Rc::from(&b"d"[..]), entry(3 * each, now, ttl)),
        Stored::TooLarge
    );
    assert_eq!(cache.len(), 2);
    assert!(cache.usage().0 <= cache.usage().1);
}

#[test]
fn expired_entries_are_misses_and_freed() {
    let cache = ShardCache::new(&CacheSettings::default());
    let now = Instant::now();
    cache.store(Rc::from(&b"k"[..]), entry(10, now, Duration::from_secs(1)));
    assert!(cache.get(b"k", now + Duration::from_millis(999)).is_some());
    assert!(cache.get(b"k", now + Duration::from_secs(1)).is_none());
    assert_eq!(cache.usage().0, 0, "the expired entry was dropped");
}

#[test]
fn fills_register_once_and_wake_waiters_when_dropped() {
    use std::future::Future;
    use std::task::{Context, Poll, Wake};
    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let cache = ShardCache::new(&CacheSettings::default());
    let key: Rc<[u8]> = Rc::from(&b"k"[..]);
    let guard = cache.begin_fill(key.clone()).expect("first fill");
    assert!(cache.begin_fill(key.clone()).is_none(), "one fill per key");
    let fill = cache.fill_in_flight(&key).expect("in flight");
    let counter = std::sync::Arc::new(Count(Default::default()));
    let waker = std::task::Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    let mut wait = Box::pin(fill.wait());
    assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
    drop(guard);
    assert_eq!(
        counter.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "woken once"
    );
    assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(()));
    assert!(cache.fill_in_flight(&key).is_none());
    assert!(
        cache.begin_fill(key).is_some(),
        "a new fill after the old one ended"
    );
}

#[test]
fn a_route_switching_invalidation_on_keeps_the_apis_key_list() {
    let api: RawCacheRule =
        toml::from_str("allow_client_invalidation = false\ninvalidation_keys = [\"alice\"]")
            .expect("toml");
    let route: RawCacheRule = toml::from_str("allow_client_invalidation = true").expect("toml");
    let mut errors = Vec::new();
    let rule = compile_rule(Some(&api), Some(&route), "apis[0].routes[0]", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let Some(rule) = rule else { panic!("rule") };
    assert_eq!(rule.invalidation, Invalidation::Keys(vec!["alice".into()]));
    let ask = b"GET /x HTTP/1.1\r\nHost: h\r\nCache-Control: max-age=0\r\n\r\n";
    let h = head(ask);
    assert!(rule.may_invalidate(ask, &h, Some("alice")));
    assert!(!rule.may_invalidate(ask, &h, Some("bob")));
    assert!(!rule.may_invalidate(ask, &h, None));
}
