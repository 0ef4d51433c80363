//! Header rewriting for the upstream request: `write_upstream_head`, which
//! drops hop-by-hop headers, adds `X-Forwarded-*` and the request id, and
//! rebuilds the path from the route's template.
//!
//! Compares the 20-header browser request (most headers copied, two dropped,
//! X-Forwarded-For appended to) with the small two-header GET, both routed
//! through `GET /pets/{id}` -> `http://petstore/pets/{id}` so the path is
//! rebuilt from a parameter. The route lookup is done once, outside the loop.
//!
//! `mapped_upstream_head` adds parameter mapping (docs/mapping.md) to the
//! browser request: the same head, then four operations (a header from a
//! path parameter, a header overwritten from the context, a header removed,
//! a query parameter from a header), to compare with `browser_20_headers`.

mod common;

use coregate::http::parse::parse_request_head;
use coregate::integration::http_proxy::write_upstream_head;
use coregate::plan::Integration;
use coregate::route::Lookup;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::net::SocketAddr;

fn rewrite(c: &mut Criterion) {
    let plan = coregate::plan::load_str(common::PIPELINE_CONFIG).expect("bench config");
    let limits = common::default_limits();
    let peer: SocketAddr = "203.0.113.9:51234".parse().unwrap();
    let request_id = b"0123456789abcdef0123456789abcdef";
    let browser = common::browser_request("/pets/42?fields=name,tag");
    let small = b"GET /pets/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".to_vec();
    let mut g = c.benchmark_group("upstream_head");
    for (name, buf) in [("browser_20_headers", &browser), ("small_get", &small)] {
        let head = parse_request_head(buf, &limits).unwrap().unwrap();
        let path = std::str::from_utf8(head.path(buf)).unwrap();
        let Lookup::Found { route, params } =
            plan.table
                .lookup(head.host.map(|h| h.get(buf)), head.method, path)
        else {
            panic!("route not found")
        };
        let Integration::Proxy(p) = &plan.routes[route as usize].integration else {
            panic!("not a proxy route")
        };
        let up = &plan.upstreams[p.upstream];
        let mut out = Vec::with_capacity(4096);
        write_upstream_head(
            &mut out,
            buf,
            &head,
            &params_of(&params),
            p,
            up,
            0,
            peer,
            request_id,
            None,
            b"",
        );
        assert!(
            out.starts_with(b"GET /pets/42"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                write_upstream_head(
                    &mut out,
                    black_box(buf),
                    &head,
                    &params_of(&params),
                    p,
                    up,
                    0,
                    peer,
                    request_id,
                    None,
                    b"",
                );
                black_box(out.len())
            })
        });
    }
    g.finish();
}

const MAPPED_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "pets"

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://127.0.0.1:9000/pets/{id}" }
[apis.routes.mapping.request]
"append:header.x-pet-id" = "$request.path.id"
"overwrite:header.x-caller" = "${context.identity.sourceIp}/${context.requestId}"
"remove:header.cookie" = ""
"append:querystring.lang" = "$request.header.accept-language"
"#;

fn mapped(c: &mut Criterion) {
    use coregate::integration::mapping::{Context, RequestInputs, DEFAULT_STAGE};
    let plan = coregate::plan::load_str(MAPPED_CONFIG).expect("bench config");
    let limits = common::default_limits();
    let peer: SocketAddr = "203.0.113.9:51234".parse().unwrap();
    let request_id = b"0123456789abcdef0123456789abcdef";
    let buf = common::browser_request("/pets/42?fields=name,tag");
    let head = parse_request_head(&buf, &limits).unwrap().unwrap();
    let path = std::str::from_utf8(head.path(&buf)).unwrap();
    let Lookup::Found { route, params } =
        plan.table
            .lookup(head.host.map(|h| h.get(&buf)), head.method, path)
    else {
        panic!("route not found")
    };
    let Integration::Proxy(p) = &plan.routes[route as usize].integration else {
        panic!("not a proxy route")
    };
    let m = p
        .mapping
        .as_ref()
        .and_then(|m| m.request.as_ref())
        .expect("a request mapping");
    let up = &plan.upstreams[p.upstream];
    let ctx = Context {
        request_id,
        source_ip: peer.ip(),
        method: head.method,
        minor_version: 1,
        route_key: "GET /pets/{id}",
        api: "pets",
        principal: None,
        api_key_name: None,
        stage: DEFAULT_STAGE,
        claims: &[],
    };
    let mut out = Vec::with_capacity(4096);
    c.bench_function("upstream_head/mapped_upstream_head", |b| {
        b.iter(|| {
            let params = params_of(&params);
            write_upstream_head(
                &mut out,
                black_box(&buf),
                &head,
                &params,
                p,
                up,
                0,
                peer,
                request_id,
                None,
                b"",
            );
            let inputs = RequestInputs {
                buf: &buf,
                head: &head,
                params: &params,
                json: None,
                ctx: &ctx,
            };
            m.apply(&mut out, &inputs).expect("mapped");
            black_box(out.len())
        })
    });
}

criterion_group!(benches, rewrite, mapped);
criterion_main!(benches);

/// Route parameters as the proxy takes them: name and raw value.
/// A SmallVec, as the gateway's driver keeps them: no allocation.
fn params_of<'a>(
    params: &'a coregate::route::Params<'_, '_>,
) -> smallvec::SmallVec<[(&'a str, &'a [u8]); 4]> {
    params.iter().map(|(k, v)| (k, v.as_bytes())).collect()
}
