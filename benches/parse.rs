//! Request head parsing and body framing, the first work done on every request.
//!
//! Compares `parse_request_head` on the smallest realistic request (what a load
//! generator sends) with a 20-header browser navigation, which shows what each
//! extra header costs; and `ChunkedDecoder` over a 64 KiB body in 4 KiB chunks
//! when proxying to HTTP/1.1 (`keep_framing = true`: the size lines, already in
//! the form the gateway writes, forwarded in place) and to
//! an HTTP/1.0 client (`keep_framing = false`: size lines dropped, so the data
//! comes out as more, shorter runs). Throughput is reported in input bytes.

mod common;

use coregate::http::body::ChunkedDecoder;
use coregate::http::parse::parse_request_head;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn head(c: &mut Criterion) {
    let limits = common::default_limits();
    let browser = common::browser_request("/pets/42?fields=name,tag");
    let mut g = c.benchmark_group("parse_head");
    g.throughput(Throughput::Elements(1));
    g.bench_function("small_get", |b| {
        b.iter(|| {
            let h = parse_request_head(black_box(common::SMALL_GET), &limits)
                .unwrap()
                .unwrap();
            black_box(h.len)
        })
    });
    g.bench_function("browser_20_headers", |b| {
        b.iter(|| {
            let h = parse_request_head(black_box(&browser), &limits)
                .unwrap()
                .unwrap();
            black_box(h.len)
        })
    });
    g.finish();
}

/// `total` bytes of chunk data in chunks of `chunk`, chunked-encoded, with a
/// trailer line so the trailer path is exercised too.
fn chunked_body(total: usize, chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + total / chunk * 16 + 64);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'x', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\nx-checksum: abc\r\n\r\n");
    out
}

/// Steps through `body` as the connection loop does (one read buffer of 16 KiB
/// at a time) and returns the bytes that would be forwarded.
fn frame(body: &[u8], keep_framing: bool) -> usize {
    let mut dec = ChunkedDecoder::new(keep_framing, 16 * 1024);
    let mut forwarded = 0;
    for read in body.chunks(16 * 1024) {
        let mut pos = 0;
        while pos < read.len() && !dec.is_done() {
            let step = dec.step(&read[pos..]).unwrap();
            if step.forward {
                forwarded += step.consumed;
            }
            pos += step.consumed;
        }
    }
    assert!(dec.is_done());
    forwarded
}

fn chunked(c: &mut Criterion) {
    let body = chunked_body(64 * 1024, 4 * 1024);
    let mut g = c.benchmark_group("chunked_64KiB_in_4KiB_chunks");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for keep in [true, false] {
        let name = if keep {
            "keep_framing"
        } else {
            "strip_framing"
        };
        g.bench_function(name, |b| {
            b.iter(|| black_box(frame(black_box(&body), keep)))
        });
    }
    g.finish();
}

criterion_group!(benches, head, chunked);
criterion_main!(benches);
