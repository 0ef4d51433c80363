//! The SigV4 authorizer's check as the request path runs it, on a typical
//! signed GET (signed by the `aws-sigv4` crate: Host, X-Amz-Date,
//! Authorization, plus User-Agent and Accept unsigned) with 100 credentials
//! configured.
//!
//! Compares:
//! - `check_get`: `sigv4::check` on the parsed head: collect the header
//!   slices, parse the Authorization header, check scope and time, build
//!   the canonical request in the shard's reused buffer, SHA-256, the
//!   string to sign, HMAC, constant-time compare; the day's signing key
//!   comes from the shard's cache;
//! - `verify_get_cached_key` vs `verify_get_derived_key`: the same verify
//!   with the key cached, and with a fresh shard state every time so the
//!   key (four more HMACs) is derived per request (a fresh state also
//!   grows its buffers once, so the gap overstates a little);
//!   `derive_signing_key` is the derivation alone: what the cache saves;
//! - `verify_presigned_get`: the query form (decode and sort the X-Amz-*
//!   parameters);
//! - `refuse_unknown_key`, `refuse_missing`: the cheap refusals (no HMAC).
//!
//! Needs `[[bench]] name = "sigv4" harness = false` in Cargo.toml.

mod common;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use coregate::http::parse::{parse_request_head, RequestHead};
use coregate::policy::sigv4::canonical::Parts;
use coregate::policy::sigv4::{self, Request, ShardState, Sigv4Plan};
use coregate::policy::{RequestState, RequestView};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn plan() -> Sigv4Plan {
    let ids: Vec<String> = (0..99).map(|i| format!("AKIABENCHKEY{i:08}")).collect();
    let mut creds: Vec<(&str, &str, &str, Option<&str>)> = ids
        .iter()
        .map(|id| {
            (
                id.as_str(),
                "other-secret",
                "arn:aws:iam::1:user/other",
                None,
            )
        })
        .collect();
    creds.push((ID, SECRET, "arn:aws:iam::123456789012:user/alice", None));
    Sigv4Plan::new("us-east-1", "execute-api", &creds)
}

/// A signed GET as raw bytes, signed at `time` by aws-sigv4.
fn signed_get(id: &str, time: SystemTime, presign: bool) -> Vec<u8> {
    let identity = Credentials::new(id, SECRET, None, None, "bench").into();
    let mut settings = SigningSettings::default();
    if presign {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(900));
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("execute-api")
        .time(time)
        .settings(settings)
        .build()
        .expect("params")
        .into();
    let uri = "https://abc123.execute-api.us-east-1.amazonaws.com/prod/pets/42?expand=owner";
    let headers = [("host", "abc123.execute-api.us-east-1.amazonaws.com")];
    let signable = SignableRequest::new(
        "GET",
        uri,
        headers.iter().copied(),
        SignableBody::Bytes(b""),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    let mut req = http::Request::builder()
        .method("GET")
        .uri(uri)
        .header("host", headers[0].1)
        .body(())
        .expect("request");
    instructions.apply_to_request_http1x(&mut req);
    let mut raw = format!(
        "GET {} HTTP/1.1\r\n",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    for (n, v) in req.headers() {
        raw.push_str(&format!("{}: {}\r\n", n, v.to_str().unwrap_or("")));
    }
    raw.push_str(
        "User-Agent: aws-sdk-rust/1.0 os/linux lang/rust\r\nAccept: application/json\r\n\r\n",
    );
    raw.into_bytes()
}

fn parse(raw: &[u8]) -> RequestHead {
    match parse_request_head(raw, &common::default_limits()) {
        Ok(Some(h)) => h,
        other => panic!("bench request does not parse: {other:?}"),
    }
}

fn now_unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn verify_raw(
    plan: &Sigv4Plan,
    state: &ShardState,
    raw: &[u8],
    head: &RequestHead,
    now: i64,
) -> bool {
    let headers: Vec<(&[u8], &[u8])> = head
        .headers
        .iter()
        .map(|h| (h.name.get(raw), h.value.get(raw)))
        .collect();
    let req = Request {
        parts: Parts {
            method: head.method_span.get(raw),
            path: head.path(raw),
            query: head.query.map(|q| q.get(raw)),
            headers: &headers,
        },
        has_body: false,
    };
    sigv4::verify(plan, state, 0, &req, now).is_ok()
}

fn bench(c: &mut Criterion) {
    let plan = plan();
    let state = ShardState::for_plan(&plan);
    let t = SystemTime::now();
    let now = now_unix(t);
    let raw = signed_get(ID, t, false);
    let head = parse(&raw);
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let mut g = c.benchmark_group("sigv4");

    g.bench_function("check_get", |b| {
        let view = RequestView {
            buf: &raw,
            head: &head,
            peer,
            route: Some(0),
            now: Instant::now(),
            client_cert_subject: None,
        };
        b.iter(|| {
            let mut req = RequestState::default();
            let d = sigv4::check(&plan, &state, 0, black_box(&view), &mut req);
            assert!(req.principal.is_some());
            black_box(d)
        })
    });
    assert!(verify_raw(&plan, &state, &raw, &head, now));
    g.bench_function("verify_get_cached_key", |b| {
        b.iter(|| black_box(verify_raw(&plan, &state, black_box(&raw), &head, now)))
    });
    g.bench_function("verify_get_derived_key", |b| {
        b.iter_batched(
            || ShardState::for_plan(&plan),
            |fresh| black_box(verify_raw(&plan, &fresh, black_box(&raw), &head, now)),
            BatchSize::SmallInput,
        )
    });
    let secret = sigv4::canonical::secret_key(SECRET);
    g.bench_function("derive_signing_key", |b| {
        b.iter(|| {
            black_box(sigv4::canonical::signing_key_bytes(
                &secret,
                black_box(b"20260101"),
                b"us-east-1",
                b"execute-api",
            ))
        })
    });
    let pre = signed_get(ID, t, true);
    let pre_head = parse(&pre);
    assert!(verify_raw(&plan, &state, &pre, &pre_head, now));
    g.bench_function("verify_presigned_get", |b| {
        b.iter(|| black_box(verify_raw(&plan, &state, black_box(&pre), &pre_head, now)))
    });
    let unknown = signed_get("AKIAUNKNOWN000000000", t, false);
    let unknown_head = parse(&unknown);
    assert!(!verify_raw(&plan, &state, &unknown, &unknown_head, now));
    g.bench_function("refuse_unknown_key", |b| {
        b.iter(|| {
            black_box(verify_raw(
                &plan,
                &state,
                black_box(&unknown),
                &unknown_head,
                now,
            ))
        })
    });
    let missing = b"GET /prod/pets/42 HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\n\r\n".to_vec();
    let missing_head = parse(&missing);
    g.bench_function("refuse_missing", |b| {
        b.iter(|| {
            black_box(verify_raw(
                &plan,
                &state,
                black_box(&missing),
                &missing_head,
                now,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
