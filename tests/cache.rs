//! The response cache over real sockets: the real binary, real backends that
//! count the requests they receive, and raw clients. Every gateway here runs
//! one shard, so all connections share one cache and the backend's hit count
//! says exactly how many requests the cache let through.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;
use support::*;

/// One `[[apis.routes]]`: a route key, the backend it proxies to, and its
/// `cache = { ... }` table ("" for none).
struct R<'a> {
    key: &'a str,
    backend: &'a Backend,
    cache: &'a str,
}

fn r<'a>(key: &'a str, backend: &'a Backend, cache: &'a str) -> R<'a> {
    R {
        key,
        backend,
        cache,
    }
}

/// A one-shard gateway with one API (whose `cache` table is `api_cache`)
/// and these routes. `server_extra` goes at the end of `[server]`.
fn gateway(server_extra: &str, api_cache: &str, routes: &[R<'_>]) -> Gateway {
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\n{server_extra}\n\n[[apis]]\nname = \"cached\"\n{api_cache}\n"
    );
    for route in routes {
        text.push_str(&format!(
            "\n[[apis.routes]]\nkey = \"{}\"\nintegration = {{ type = \"http_proxy\", url = \"http://{}\" }}\n",
            route.key,
            route.backend.addr_str()
        ));
        if !route.cache.is_empty() {
            text.push_str(&format!("cache = {}\n", route.cache));
        }
    }
    Gateway::start(&text)
}

/// `GET path` with extra header lines (each ending in CRLF).
fn get_with(c: &mut Client, path: &str, headers: &str) -> Response {
    c.request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").as_bytes())
}

#[track_caller]
fn assert_cache(resp: &Response, want: &str) {
    assert_eq!(
        resp.header("x-cache"),
        Some(want),
        "expected X-Cache: {want}: {resp:?}"
    );
}

/// Waits until the backend has received `n` requests whole, then checks it
/// received no more (the cache let exactly `n` through).
#[track_caller]
fn assert_hits(b: &Backend, n: usize) {
    wait_until(Duration::from_secs(5), || b.hits() >= n);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(b.hits(), n, "backend requests: {:?}", b.requests());
}

#[test]
fn miss_then_hit_with_the_same_body_and_a_fresh_request_id() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway("", "cache = {}", &[r("GET /items/{id}", &echo, "")]);
    let mut c = gw.client();
    let first = c.get("/items/1");
    assert_eq!(first.status, 200);
    assert_cache(&first, "Miss");
    let second = c.get("/items/1");
    assert_eq!(second.status, 200);
    assert_cache(&second, "Hit");
    assert_eq!(second.body, first.body, "served from the entry");
    assert_eq!(second.header("content-type"), Some("text/plain"));
    assert_eq!(second.header("age"), Some("0"));
    assert!(second.header("date").is_some());
    assert_eq!(second.headers_named("date").len(), 1);
    let (id1, id2) = (first.header("x-request-id"), second.header("x-request-id"));
    assert!(
        id1.is_some() && id2.is_some() && id1 != id2,
        "{id1:?} {id2:?}"
    );
    assert!(!second.says_close());
    // A client-supplied request id is echoed on a hit.
    let third = get_with(&mut c, "/items/1", "X-Request-Id: mine-123\r\n");
    assert_cache(&third, "Hit");
    assert_eq!(third.header("x-request-id"), Some("mine-123"));
    // Another path is another key.
    assert_cache(&c.get("/items/2"), "Miss");
    assert_hits(&echo, 2);
}

#[test]
fn head_is_cached_and_answered_without_a_body() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway("", "cache = {}", &[r("GET /h", &echo, "")]);
    let mut c = gw.client();
    let get = c.get("/h");
    assert_cache(&get, "Miss");
    // A HEAD finds the GET entry.
    c.send(b"HEAD /h HTTP/1.1\r\nHost: test\r\n\r\n");
    let head = c.read_head_response();
    assert_cache(&head, "Hit");
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    // The connection is still in step: the next response is whole.
    assert_cache(&c.get("/h"), "Hit");
    assert_hits(&echo, 1);

    // A HEAD with no GET entry is forwarded once, then cached on its own.
    let echo2 = Backend::start(Reply::Echo);
    let gw2 = gateway("", "cache = {}", &[r("GET /h", &echo2, "")]);
    let mut c2 = gw2.client();
    for want in ["Miss", "Hit"] {
        c2.send(b"HEAD /h HTTP/1.1\r\nHost: test\r\n\r\n");
        let h = c2.read_head_response();
        assert_eq!(h.status, 200);
        assert_cache(&h, want);
        assert!(h.header("content-length").is_some(), "{h:?}");
    }
    assert_hits(&echo2, 1);
}

#[test]
fn routes_without_a_cache_get_no_x_cache_and_always_reach_the_backend() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway(
        "",
        "",
        &[
            r("GET /plain", &echo, ""),
            r("GET /off", &echo, "{ enabled = false }"),
            r("GET /zero", &echo, "{ ttl_seconds = 0 }"),
        ],
    );
    let mut c = gw.client();
    for path in ["/plain", "/off", "/zero"] {
        for _ in 0..2 {
            let resp = c.get(path);
            assert_eq!(resp.status, 200);
            assert_eq!(resp.header("x-cache"), None, "{path}: {resp:?}");
        }
    }
    assert_hits(&echo, 6);
}

#[test]
fn route_overrides_the_api_setting() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway(
        "",
        "cache = { ttl_seconds = 300 }",
        &[
            r("GET /inherits", &echo, ""),
            r("GET /opted-out", &echo, "{ enabled = false }"),
        ],
    );
    let mut c = gw.client();
    assert_cache(&c.get("/inherits"), "Miss");
    assert_cache(&c.get("/inherits"), "Hit");
    assert_eq!(c.get("/opted-out").header("x-cache"), None);
    assert_eq!(c.get("/opted-out").header("x-cache"), None);
    assert_hits(&echo, 3);
}

#[test]
fn entries_expire_after_their_ttl() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway("", "", &[r("GET /t", &echo, "{ ttl_seconds = 1 }")]);
    let mut c = gw.client();
    let first = c.get("/t");
    assert_cache(&first, "Miss");
    assert_cache(&c.get("/t"), "Hit");
    thread::sleep(Duration::from_millis(1300));
    let after = c.get("/t");
    assert_cache(&after, "Miss");
    assert_ne!(after.body, first.body, "a fresh backend response");
    assert_cache(&c.get("/t"), "Hit");
    assert_hits(&echo, 2);
}

#[test]
fn least_recently_used_entry_is_evicted_under_a_small_budget() {
    // Each entry: key "GET\ntest\n/e/X\n" (14 bytes) + stored headers
    // ("content-type: text/plain\r\n", 26) + body (1000) + 160 overhead =
    // 1200 bytes. A 2600-byte budget holds two entries, not three.
    let body = "x".repeat(1000);
    let b = Backend::start(Reply::fixed(200, &[("content-type", "text/plain")], &body));
    let gw = gateway(
        "[server.cache]\nmax_bytes_per_shard = 2600",
        "cache = {}",
        &[r("GET /e/{id}", &b, "")],
    );
    let mut c = gw.client();
    assert_cache(&c.get("/e/A"), "Miss");
    assert_cache(&c.get("/e/B"), "Miss");
    // Touch A: B becomes the least recently used.
    assert_cache(&c.get("/e/A"), "Hit");
    // C needs room: B goes.
    assert_cache(&c.get("/e/C"), "Miss");
    assert_cache(&c.get("/e/A"), "Hit");
    assert_cache(&c.get("/e/C"), "Hit");
    assert_cache(&c.get("/e/B"), "Miss");
    assert_hits(&b, 4);
}

#[test]
fn an_entry_bigger_than_the_whole_budget_is_not_stored() {
    let body = "y".repeat(3000);
    let b = Backend::start(Reply::fixed(200, &[], &body));
    let gw = gateway(
        "[server.cache]\nmax_bytes_per_shard = 2000",
        "cache = {}",
        &[r("GET /big", &b, "")],
    );
    let mut c = gw.client();
    for _ in 0..2 {
        let resp = c.get("/big");
        assert_eq!(resp.body.len(), 3000);
        assert_cache(&resp, "Miss");
    }
    assert_hits(&b, 2);
}

#[test]
fn responses_over_the_size_limit_and_chunked_ones_are_not_cached() {
    let large = Backend::start(Reply::Large {
        len: 2000,
        chunked: false,
    });
    let exact = Backend::start(Reply::Large {
        len: 1000,
        chunked: false,
    });
    let chunked = Backend::start(Reply::Large {
        len: 500,
        chunked: true,
    });
    let gw = gateway(
        "",
        "cache = { max_response_body_bytes = 1000 }",
        &[
            r("GET /large", &large, ""),
            r("GET /exact", &exact, ""),
            r("GET /chunked", &chunked, ""),
        ],
    );
    let mut c = gw.client();
    for _ in 0..2 {
        let resp = c.get("/large");
        assert_eq!(resp.body, pattern_prefix(2000));
        assert_cache(&resp, "Miss");
        let resp = c.get("/chunked");
        assert_eq!(resp.body, pattern_prefix(500));
        assert_cache(&resp, "Miss");
    }
    assert_cache(&c.get("/exact"), "Miss");
    let hit = c.get("/exact");
    assert_cache(&hit, "Hit");
    assert_eq!(hit.body, pattern_prefix(1000));
    assert_hits(&large, 2);
    assert_hits(&chunked, 2);
    assert_hits(&exact, 1);
}

/// The first `len` bytes of the harness's body pattern.
fn pattern_prefix(len: usize) -> Vec<u8> {
    let mut p = pattern(len / 251 + 1);
    p.truncate(len);
    p
}

#[test]
fn only_listed_statuses_are_cached() {
    let missing = Backend::start(Reply::fixed(404, &[], "nope"));
    let created = Backend::start(Reply::fixed(201, &[], "made"));
    let gw = gateway(
        "",
        "",
        &[
            r("GET /missing", &missing, "{}"),
            r(
                "GET /created",
                &created,
                "{ cacheable_statuses = [200, 201] }",
            ),
        ],
    );
    let mut c = gw.client();
    for _ in 0..2 {
        let resp = c.get("/missing");
        assert_eq!(resp.status, 404);
        assert_cache(&resp, "Miss");
    }
    assert_hits(&missing, 2);
    assert_cache(&c.get("/created"), "Miss");
    let hit = c.get("/created");
    assert_eq!(hit.status, 201);
    assert_eq!(hit.text(), "made");
    assert_cache(&hit, "Hit");
    assert_hits(&created, 1);
}

#[test]
fn key_includes_configured_query_params_and_headers_only() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway(
        "",
        "",
        &[r(
            "GET /k",
            &echo,
            "{ key_query_parameters = [\"page\"], key_headers = [\"X-Tenant\"] }",
        )],
    );
    let mut c = gw.client();
    let first = get_with(
        &mut c,
        "/k?page=1&noise=a",
        "X-Tenant: t1\r\nX-Noise: 1\r\n",
    );
    assert_cache(&first, "Miss");
    // Unnamed param and header differ: same key.
    let same = get_with(
        &mut c,
        "/k?noise=b&page=1",
        "X-Noise: 2\r\nx-tenant: t1\r\n",
    );
    assert_cache(&same, "Hit");
    assert_eq!(same.body, first.body);
    // A named param differs.
    assert_cache(&get_with(&mut c, "/k?page=2", "X-Tenant: t1\r\n"), "Miss");
    // A named header differs.
    assert_cache(&get_with(&mut c, "/k?page=1", "X-Tenant: t2\r\n"), "Miss");
    // A named header absent.
    assert_cache(&get_with(&mut c, "/k?page=1", ""), "Miss");
    assert_cache(&get_with(&mut c, "/k?page=1", ""), "Hit");
    assert_hits(&echo, 4);
}

#[test]
fn a_key_parameter_sent_percent_encoded_is_still_part_of_the_key() {
    // A backend reads `%70age=2` as `page=2`. If the cache did not, that
    // response would be stored under the key of a request without `page`
    // and served to everyone who asks for the first page: cache poisoning.
    let echo = Backend::start(Reply::Echo);
    let gw = gateway(
        "",
        "",
        &[r("GET /k", &echo, "{ key_query_parameters = [\"page\"] }")],
    );
    let mut c = gw.client();
    let poisoned = get_with(&mut c, "/k?%70age=2", "");
    assert_cache(&poisoned, "Miss");
    assert_cache(&get_with(&mut c, "/k?p%61g%65=2", ""), "Miss");
    let plain = get_with(&mut c, "/k", "");
    assert_cache(&plain, "Miss");
    assert!(!plain.text().contains("age=2"), "{plain:?}");
    assert_cache(&get_with(&mut c, "/k", ""), "Hit");
    assert_cache(&get_with(&mut c, "/k?%70age=2", ""), "Hit");
    assert_hits(&echo, 3);
}

#[test]
fn post_is_not_cached_unless_opted_in() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway(
        "",
        "",
        &[
            r("POST /default", &echo, "{}"),
            r("POST /opted", &echo, "{ methods = [\"GET\", \"POST\"] }"),
        ],
    );
    let mut c = gw.client();
    let post = |c: &mut Client, path: &str, body: &str| {
        c.request(
            format!(
                "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    for _ in 0..2 {
        let resp = post(&mut c, "/default", "abc");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-cache"), None);
    }
    assert_hits(&echo, 2);
    assert_cache(&post(&mut c, "/opted", "first"), "Miss");
    // The hit reads and drops the request body; the connection stays usable.
    let hit = post(&mut c, "/opted", "second body");
    assert_cache(&hit, "Hit");
    assert!(hit.echo().body.ends_with(b"first"), "{hit:?}");
    assert_cache(&post(&mut c, "/opted", ""), "Hit");
    assert_hits(&echo, 3);
}

#[test]
fn concurrent_misses_make_one_backend_request() {
    const N: usize = 10;
    let slow = Backend::start(Reply::slow(500, Reply::Echo));
    let gw = gateway("", "cache = {}", &[r("GET /slow", &slow, "")]);
    let addr = gw.addr();
    let start = Arc::new(Barrier::new(N));
    let clients: Vec<_> = (0..N)
        .map(|_| {
            let start = start.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                start.wait();
                c.get("/slow")
            })
        })
        .collect();
    let responses: Vec<Response> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    assert_hits(&slow, 1);
    let body = &responses[0].body;
    assert!(!body.is_empty());
    let mut misses = 0;
    for resp in &responses {
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(&resp.body, body, "everyone got the one response");
        match resp.header("x-cache") {
            Some("Miss") => misses += 1,
            Some("Hit") => {}
            other => panic!("X-Cache {other:?}"),
        }
    }
    assert_eq!(misses, 1, "one request filled, the others waited");
}

#[test]
fn waiters_for_an_uncacheable_fill_each_go_to_the_backend() {
    const N: usize = 5;
    let slow = Backend::start(Reply::slow(300, Reply::fixed(503, &[], "busy")));
    let gw = gateway("", "cache = {}", &[r("GET /busy", &slow, "")]);
    let addr = gw.addr();
    let start = Arc::new(Barrier::new(N));
    let clients: Vec<_> = (0..N)
        .map(|_| {
            let start = start.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                start.wait();
                c.get("/busy")
            })
        })
        .collect();
    for t in clients {
        let resp = t.join().expect("client thread");
        assert_eq!(resp.status, 503);
        assert_cache(&resp, "Miss");
    }
    assert_hits(&slow, N);
}

#[test]
fn client_max_age_zero_is_ignored_by_default() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway("", "cache = {}", &[r("GET /i", &echo, "")]);
    let mut c = gw.client();
    let first = c.get("/i");
    assert_cache(&first, "Miss");
    let again = get_with(&mut c, "/i", "Cache-Control: max-age=0\r\n");
    assert_cache(&again, "Hit");
    assert_eq!(again.body, first.body);
    assert_hits(&echo, 1);
}

#[test]
fn client_max_age_zero_refreshes_when_allowed() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway(
        "",
        "cache = { allow_client_invalidation = true }",
        &[r("GET /i", &echo, "")],
    );
    let mut c = gw.client();
    let first = c.get("/i");
    assert_cache(&first, "Miss");
    assert_cache(&c.get("/i"), "Hit");
    let refreshed = get_with(&mut c, "/i", "Cache-Control: max-age=0\r\n");
    assert_cache(&refreshed, "Miss");
    assert_ne!(refreshed.body, first.body, "a fresh backend response");
    // The refreshed response is the new entry.
    let after = c.get("/i");
    assert_cache(&after, "Hit");
    assert_eq!(after.body, refreshed.body);
    // Other Cache-Control values do not invalidate.
    assert_cache(
        &get_with(&mut c, "/i", "Cache-Control: max-age=60\r\n"),
        "Hit",
    );
    assert_hits(&echo, 2);
}

#[test]
fn backend_no_store_and_private_are_honoured_unless_overridden() {
    let no_store = Backend::start(Reply::fixed(200, &[("cache-control", "no-store")], "a"));
    let private = Backend::start(Reply::fixed(
        200,
        &[("Cache-Control", "private, max-age=60")],
        "b",
    ));
    let overridden = Backend::start(Reply::fixed(200, &[("cache-control", "no-store")], "c"));
    let public = Backend::start(Reply::fixed(
        200,
        &[("cache-control", "public, max-age=60")],
        "d",
    ));
    let gw = gateway(
        "",
        "cache = {}",
        &[
            r("GET /no-store", &no_store, ""),
            r("GET /private", &private, ""),
            r(
                "GET /override",
                &overridden,
                "{ ignore_backend_no_store = true }",
            ),
            r("GET /public", &public, ""),
        ],
    );
    let mut c = gw.client();
    for _ in 0..2 {
        assert_cache(&c.get("/no-store"), "Miss");
        assert_cache(&c.get("/private"), "Miss");
    }
    assert_cache(&c.get("/override"), "Miss");
    let hit = c.get("/override");
    assert_cache(&hit, "Hit");
    assert_eq!(
        hit.header("cache-control"),
        Some("no-store"),
        "stored as sent"
    );
    assert_cache(&c.get("/public"), "Miss");
    assert_cache(&c.get("/public"), "Hit");
    assert_hits(&no_store, 2);
    assert_hits(&private, 2);
    assert_hits(&overridden, 1);
    assert_hits(&public, 1);
}

#[test]
fn http10_hit_keeps_alive_only_when_asked() {
    let echo = Backend::start(Reply::Echo);
    let gw = gateway("", "cache = {}", &[r("GET /v", &echo, "")]);
    let mut c = gw.client();
    assert_cache(&c.get("/v"), "Miss");
    let ka = c.request(b"GET /v HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n");
    assert_cache(&ka, "Hit");
    assert_eq!(ka.header("connection"), Some("keep-alive"));
    let close = c.request(b"GET /v HTTP/1.0\r\nHost: test\r\n\r\n");
    assert_cache(&close, "Hit");
    assert!(close.says_close(), "{close:?}");
    c.expect_closed();
    assert_hits(&echo, 1);
}

#[test]
fn bad_cache_config_is_refused_with_the_key_named() {
    let cfg = write_config(
        r#"
[server.cache]
max_bytes_per_shard = 0

[[apis]]
name = "a"
cache = { ttl_seconds = 4000, methods = ["FETCH"] }

[[apis.routes]]
key = "GET /x"
integration = { type = "http_proxy", url = "http://127.0.0.1:9" }
"#,
    );
    let out = run_coregate(&["check", "--config", cfg.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.cache.max_bytes_per_shard",
        "apis[0].cache.ttl_seconds",
        "apis[0].cache.methods[0]",
    ] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

#[test]
fn hits_are_throttled_like_misses() {
    // The cache phase runs after the policies: a request over the route's
    // token bucket is refused even though the cache could answer it.
    let echo = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[apis]]
name = "cached"
cache = {}

[[apis.routes]]
key = "GET /limited"
integration = { type = "http_proxy", url = "http://@ECHO@" }
throttle = { rate = 0.1, burst = 2 }
"#,
        &[("ECHO", echo.addr_str())],
    ));
    let mut c = gw.client();
    assert_cache(&c.get("/limited"), "Miss");
    assert_cache(&c.get("/limited"), "Hit");
    let refused = gw.client().get("/limited");
    assert_eq!(assert_json_error(&refused, 429), "Too Many Requests");
    assert_eq!(refused.header("x-cache"), None, "{refused:?}");
    assert_hits(&echo, 1);
}

#[test]
fn only_listed_api_keys_may_invalidate() {
    let echo = Backend::start(Reply::Echo);
    let keys = temp_path("keys.toml");
    let _ = std::fs::remove_file(&keys);
    let alice = create_key(&keys, "alice", None);
    let bob = create_key(&keys, "bob", None);
    let gw = gateway(
        &format!("api_keys_file = \"{}\"", keys.display()),
        "api_key_required = true\ncache = { allow_client_invalidation = true, invalidation_keys = [\"alice\"] }",
        &[r("GET /i", &echo, "")],
    );
    let mut c = gw.client();
    let first = get_with(&mut c, "/i", &format!("x-api-key: {bob}\r\n"));
    assert_cache(&first, "Miss");
    // bob may not invalidate: the cache answers.
    let by_bob = get_with(
        &mut c,
        "/i",
        &format!("x-api-key: {bob}\r\nCache-Control: max-age=0\r\n"),
    );
    assert_cache(&by_bob, "Hit");
    assert_eq!(by_bob.body, first.body);
    // alice may.
    let by_alice = get_with(
        &mut c,
        "/i",
        &format!("x-api-key: {alice}\r\nCache-Control: max-age=0\r\n"),
    );
    assert_cache(&by_alice, "Miss");
    assert_ne!(by_alice.body, first.body);
    assert_hits(&echo, 2);
    let _ = std::fs::remove_file(&keys);
}

#[test]
fn invalidation_keys_are_checked_and_inherited() {
    let keys = temp_path("keys.toml");
    let _ = std::fs::remove_file(&keys);
    create_key(&keys, "alice", None);
    let check = |api: &str, route: &str| {
        let text = format!(
            "[server]\napi_keys_file = \"{}\"\n\n[[apis]]\nname = \"a\"\n{api}\n\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"mock\" }}\n{route}\n",
            keys.display()
        );
        let cfg = write_config(&text);
        let out = run_coregate(&["check", "--config", cfg.to_str().unwrap()]);
        let _ = std::fs::remove_file(&cfg);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // An unknown key name, and a route that requires no key.
    let (code, err) = check(
        "cache = { allow_client_invalidation = true, invalidation_keys = [\"nobody\"] }",
        "",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("apis[0].routes[0].cache.invalidation_keys: no API key is named \"nobody\""),
        "{err}"
    );
    assert!(err.contains("the route does not require one"), "{err}");
    // Keys without the switch anywhere.
    let (code, err) = check(
        "api_key_required = true\ncache = { invalidation_keys = [\"alice\"] }",
        "",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("needs allow_client_invalidation = true"),
        "{err}"
    );
    // The switch on the route keeps the API's key list (not "anyone").
    let api = "api_key_required = true\ncache = { allow_client_invalidation = false, invalidation_keys = [\"alice\"] }";
    let route = "{ allow_client_invalidation = true }";
    let (code, err) = check(api, &format!("cache = {route}"));
    assert_eq!(code, Some(0), "{err}");
    // And a gateway running it lets alice invalidate, not bob.
    let _ = std::fs::remove_file(&keys);
    let alice = create_key(&keys, "alice", None);
    let bob = create_key(&keys, "bob", None);
    let echo = Backend::start(Reply::Echo);
    let gw = gateway(
        &format!("api_keys_file = \"{}\"", keys.display()),
        api,
        &[r("GET /x", &echo, route)],
    );
    let mut c = gw.client();
    let first = get_with(&mut c, "/x", &format!("x-api-key: {bob}\r\n"));
    assert_cache(&first, "Miss");
    let by_bob = get_with(
        &mut c,
        "/x",
        &format!("x-api-key: {bob}\r\nCache-Control: max-age=0\r\n"),
    );
    assert_cache(&by_bob, "Hit");
    let by_alice = get_with(
        &mut c,
        "/x",
        &format!("x-api-key: {alice}\r\nCache-Control: max-age=0\r\n"),
    );
    assert_cache(&by_alice, "Miss");
    assert_hits(&echo, 2);
    let _ = std::fs::remove_file(&keys);
}
