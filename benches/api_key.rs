//! The API key phase's check, `KeyStore::verify_request`, as the request
//! path runs it: find the `x-api-key` header, parse the key, look the id up
//! (ahash map), SHA-256 of salt ‖ secret, constant-time compare.
//!
//! Compares:
//! - a valid key in a store of 1, 1 000 and 100 000 keys (the lookup should
//!   not grow with the store; the hash dominates);
//! - an unknown id (hashed against a dummy salt: costs the same as a hit,
//!   by design, so timing does not reveal which ids exist);
//! - a malformed key (refused by the parser before any hash);
//! - a request without the header (the header scan alone).
//!
//! Needs `[[bench]] name = "api_key" harness = false` in Cargo.toml.

mod common;

use coregate::http::parse::{parse_request_head, RequestHead};
use coregate::policy::api_key::cli::make_key;
use coregate::policy::api_key::{ApiKey, KeyStore, ID_LEN, SALT_BYTES, SECRET_BYTES};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

/// Deterministic "random" bytes for key `n` (a bench needs no CSPRNG).
fn key_bytes(n: u32) -> [u8; ID_LEN / 2 + SECRET_BYTES + SALT_BYTES] {
    let mut r = [0u8; ID_LEN / 2 + SECRET_BYTES + SALT_BYTES];
    let mut x = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in r.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    r
}

/// A store of `n` keys and the full text of its last one.
fn store(n: u32) -> (KeyStore, String) {
    let mut keys = Vec::with_capacity(n as usize);
    let mut last = String::new();
    for i in 0..n {
        let k = make_key(&key_bytes(i));
        keys.push(ApiKey {
            name: format!("key-{i}"),
            id: k.id,
            hash: k.hash,
            enabled: true,
            usage_plan: None,
            created: None,
            revoked: None,
        });
        last = k.full;
    }
    (KeyStore::new(keys), last)
}

fn request(key: Option<&str>) -> (Vec<u8>, RequestHead) {
    let raw = match key {
        Some(k) => format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: bench\r\nAccept: */*\r\nx-api-key: {k}\r\n\r\n"
        ),
        None => "GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n".into(),
    }
    .into_bytes();
    let head = match parse_request_head(&raw, &common::default_limits()) {
        Ok(Some(h)) => h,
        other => panic!("bench request does not parse: {other:?}"),
    };
    (raw, head)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("api_key");
    for n in [1u32, 1_000, 100_000] {
        let (s, last) = store(n);
        let (buf, head) = request(Some(&last));
        assert!(s.verify_request(&buf, &head).is_some());
        g.bench_function(format!("valid_key_of_{n}"), |b| {
            b.iter(|| black_box(s.verify_request(black_box(&buf), black_box(&head))))
        });
    }
    let (s, _) = store(1_000);
    let unknown = make_key(&key_bytes(1_000_000)).full;
    let (buf, head) = request(Some(&unknown));
    assert!(s.verify_request(&buf, &head).is_none());
    g.bench_function("unknown_id", |b| {
        b.iter(|| black_box(s.verify_request(black_box(&buf), black_box(&head))))
    });
    let (buf, head) = request(Some("cg_not-a-key"));
    g.bench_function("malformed", |b| {
        b.iter(|| black_box(s.verify_request(black_box(&buf), black_box(&head))))
    });
    let (buf, head) = request(None);
    g.bench_function("no_header", |b| {
        b.iter(|| black_box(s.verify_request(black_box(&buf), black_box(&head))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
