//! The request authorizer's synchronous check, `request_auth::check`, as
//! the request path runs it on a cache hit: find the identity header,
//! SHA-256 of the identity, LRU lookup and expiry check, then apply the
//! answer (an allow clones the principal and copies the context header
//! lines into the request state).
//!
//! Compares:
//! - an allow hit with a short token (40 bytes) and with a JWT-sized one
//!   (1 KiB): the hash is the part that grows with the token;
//! - the same hit in a cache of 1 and of 10 000 entries (the lookup should
//!   not grow with the cache);
//! - a deny hit;
//! - a miss (the check hands the pipeline a `Decision::Authorize` with the
//!   identity copied out; the call itself is I/O and not measured here);
//! - a request without the identity header (401: the header scan alone).
//!
//! Needs `[[bench]] name = "request_auth" harness = false` in Cargo.toml.

mod common;

use coregate::http::parse::{parse_request_head, RequestHead};
use coregate::policy::auth::AuthorizerKind;
use coregate::policy::request_auth::cache::{Allowed, Verdict};
use coregate::policy::request_auth::{cache_key, check, RequestAuthorizer, ShardRequestAuth};
use coregate::policy::{Decision, RequestState, RequestView};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::borrow::Cow;
use std::rc::Rc;
use std::time::Instant;

const CONFIG: &str = r#"
[[authorizers]]
name = "tokens"
[authorizers.request]
url = "http://127.0.0.1:9/authorize"
identity_sources = ["header:Authorization"]
cache_max_entries = 100000
context_headers = { userId = "x-user-id", tenant = "x-tenant" }
principal_header = "x-principal"

[[apis]]
name = "pets"
authorizer = "tokens"

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://127.0.0.1:9/pets/{id}" }
"#;

fn request(token: Option<&str>) -> (Vec<u8>, RequestHead) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "GET /pets/7 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n{auth}\r\n"
    )
    .into_bytes();
    let head = match parse_request_head(&raw, &common::default_limits()) {
        Ok(Some(h)) => h,
        other => panic!("bench request does not parse: {other:?}"),
    };
    (raw, head)
}

fn view<'a>(buf: &'a [u8], head: &'a RequestHead) -> RequestView<'a> {
    RequestView {
        buf,
        head,
        peer: "10.1.2.3:40000".parse().expect("peer"),
        route: Some(0),
        now: Instant::now(),
        client_cert_subject: None,
    }
}

fn token(len: usize, n: usize) -> String {
    let mut t = format!("tok{n}-");
    while t.len() < len {
        t.push((b'a' + (t.len() % 26) as u8) as char);
    }
    t
}

/// A shard's state holding `entries` answers, among them one for
/// `Bearer {token}` with `verdict`.
fn filled(
    az: &RequestAuthorizer,
    p: &coregate::plan::Plan,
    rule: &str,
    entries: usize,
    token: &str,
    verdict: Verdict,
) -> ShardRequestAuth {
    let shard = ShardRequestAuth::new(&p.policies.authorizers);
    let cache = shard.cache(0).expect("caches");
    let now = Instant::now();
    for i in 1..entries {
        let v = format!("Bearer other-{i}");
        cache.insert(
            cache_key(az, rule, &[Cow::Borrowed(&v)]),
            Verdict::Deny,
            now,
        );
    }
    let v = format!("Bearer {token}");
    cache.insert(cache_key(az, rule, &[Cow::Borrowed(&v)]), verdict, now);
    shard
}

fn allow() -> Verdict {
    Verdict::Allow(Rc::new(Allowed {
        principal: Some("user-1234".into()),
        headers: (*b"x-principal: user-1234\r\nx-tenant: acme\r\nx-user-id: user-1234\r\n").into(),
    }))
}

fn bench(c: &mut Criterion) {
    let p = coregate::plan::load_str(CONFIG).expect("bench config");
    let az = match &p.policies.authorizers[0].kind {
        AuthorizerKind::Request(r) => r.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("a request authorizer"),
    };
    // The bench's own config, not an input: its one route has the authorizer.
    let rule = p.routes[0]
        .policies
        .auth
        .as_ref()
        .expect("the bench's route has an authorizer");
    let mut g = c.benchmark_group("request_auth");
    let run = |g: &mut criterion::BenchmarkGroup<'_, _>,
               name: &str,
               shard: &ShardRequestAuth,
               buf: &[u8],
               head: &RequestHead,
               want: fn(&Decision) -> bool| {
        let mut req = RequestState::default();
        let d = check(&az, rule, shard, &view(buf, head), &mut req);
        assert!(want(&d), "{name}: the bench's premise broke: {d:?}");
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut req = RequestState::default();
                let d = check(
                    black_box(&az),
                    rule,
                    black_box(shard),
                    &view(black_box(buf), black_box(head)),
                    &mut req,
                );
                black_box((d, req))
            })
        });
    };
    let continues = |d: &Decision| matches!(d, Decision::Continue);
    for (len, entries) in [(40, 1), (40, 10_000), (1024, 10_000)] {
        let t = token(len, 0);
        let shard = filled(&az, &p, &rule.route, entries, &t, allow());
        let (buf, head) = request(Some(&t));
        run(
            &mut g,
            &format!("hit_allow_token_{len}_cache_{entries}"),
            &shard,
            &buf,
            &head,
            continues,
        );
    }
    let t = token(40, 0);
    let shard = filled(&az, &p, &rule.route, 10_000, &t, Verdict::Deny);
    let (buf, head) = request(Some(&t));
    run(
        &mut g,
        "hit_deny",
        &shard,
        &buf,
        &head,
        |d| matches!(d, Decision::Respond(r) if r.status == 403),
    );
    let (buf, head) = request(Some(&token(40, 99)));
    run(&mut g, "miss", &shard, &buf, &head, |d| {
        matches!(d, Decision::Authorize(_))
    });
    let (buf, head) = request(None);
    run(
        &mut g,
        "no_identity",
        &shard,
        &buf,
        &head,
        |d| matches!(d, Decision::Respond(r) if r.status == 401),
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
