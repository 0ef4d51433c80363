//! Bodies stream through in both directions with bounded memory: at least
//! 1 GiB moves through ONE client connection while the gateway's peak
//! resident memory (VmHWM, read from /proc outside the process) stays small.
//! Every byte follows a pattern checked at the far end (a period of 251
//! bytes, stamped with its page number every 64 KiB), so loss, corruption,
//! duplication or reordering fails the test too. Meant for `cargo test --release`.

mod support;

use std::io::Write;
use support::*;

/// Peak resident memory allowed for a one-shard gateway moving these bodies.
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

const GIB: u64 = 1 << 30;

fn gateway(backend: &Backend) -> Gateway {
    Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[server.limits]
max_body_bytes = 4294967296
body_read_timeout_ms = 60000

[[upstreams]]
name = "sink"
targets = [{ address = "@B@" }]
timeout_ms = 300000

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://sink" }
"#,
        &[("B", backend.addr_str())],
    ))
}

fn check_peak(gw: &Gateway, what: &str, baseline_kib: u64) {
    let peak = gw.peak_rss_kib();
    eprintln!("{what}: gateway VmHWM {peak} KiB (after start-up: {baseline_kib} KiB)");
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "{what}: gateway peak RSS {peak} KiB exceeds {PEAK_RSS_LIMIT_KIB} KiB (start-up peak {baseline_kib} KiB)"
    );
}

fn upload(len: u64, chunked: bool) {
    let b = Backend::start(Reply::Discard);
    let gw = gateway(&b);
    let mut c = gw.client();
    // Warm up the connection and pool, then take the baseline.
    assert_eq!(
        c.request(b"POST /warm HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            .text(),
        "count=0 mismatches=0"
    );
    let baseline = gw.peak_rss_kib();
    let block = pattern_block();
    if chunked {
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        write_pattern_chunked(&mut c.stream, len, &block).expect("upload");
    } else {
        c.send(
            format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
        );
        write_pattern(&mut c.stream, len, &block).expect("upload");
    }
    c.stream.flush().unwrap();
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.text(),
        format!("count={len} mismatches=0"),
        "the backend must get every byte, in order"
    );
    check_peak(
        &gw,
        if chunked {
            "chunked upload"
        } else {
            "content-length upload"
        },
        baseline,
    );
    // Same connection still usable.
    assert_eq!(
        c.request(b"POST /after HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            .status,
        200
    );
}

fn download(len: u64, chunked: bool) {
    let b = Backend::start(Reply::Large { len, chunked });
    let gw = gateway(&b);
    let mut c = gw.client();
    c.send(b"HEAD /warm HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_head_response().status, 200);
    let baseline = gw.peak_rss_kib();
    c.send(b"GET /download HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut check = PatternCheck::default();
    let r = c
        .read_response_with(false, &mut |d| check.feed(d))
        .unwrap_or_else(|e| panic!("download failed: {e:?}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        (check.offset, check.mismatches),
        (len, 0),
        "the client must get every byte, in order"
    );
    check_peak(
        &gw,
        if chunked {
            "chunked download"
        } else {
            "content-length download"
        },
        baseline,
    );
    c.send(b"HEAD /after HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_head_response().status, 200);
}

#[test]
fn one_gib_content_length_upload_through_one_connection_with_bounded_memory() {
    upload(GIB, false);
}

#[test]
fn one_gib_chunked_upload_through_one_connection_with_bounded_memory() {
    upload(GIB, true);
}

#[test]
fn large_content_length_download_streams_with_bounded_memory() {
    download(GIB, false);
}

#[test]
fn large_chunked_download_streams_with_bounded_memory() {
    download(GIB + 12345, true);
}

/// The checker itself: the stamped pattern passes as written, and fails
/// when two pages swap places, a page repeats, or one byte changes.
#[test]
fn the_pattern_check_sees_reordered_repeated_and_changed_bytes() {
    let page = STAMP_EVERY as usize;
    let mut stream = Vec::new();
    write_pattern(&mut stream, 4 * STAMP_EVERY + 99, &pattern_block()).unwrap();
    let check = |data: &[u8]| {
        let mut c = PatternCheck::default();
        // Fed in uneven pieces, as a socket delivers them.
        for piece in data.chunks(7919) {
            c.feed(piece);
        }
        c.mismatches
    };
    assert_eq!(check(&stream), 0);
    let mut swapped = stream.clone();
    let (a, b) = swapped.split_at_mut(2 * page);
    a[page..].swap_with_slice(&mut b[..page]);
    assert!(check(&swapped) > 0, "two pages swapped");
    let mut repeated = stream.clone();
    repeated.copy_within(page..2 * page, 2 * page);
    assert!(check(&repeated) > 0, "a page repeated");
    let mut changed = stream.clone();
    changed[3 * page + 5] ^= 1;
    assert!(check(&changed) > 0, "one byte changed");
    // The chunked writer sends the same bytes.
    let mut chunked = Vec::new();
    write_pattern_chunked(&mut chunked, 4 * STAMP_EVERY + 99, &pattern_block()).unwrap();
    let mut body = Vec::new();
    read_chunked(&mut std::io::BufReader::new(&chunked[..]), &mut |c| {
        body.extend_from_slice(c)
    })
    .unwrap();
    assert_eq!(body, stream);
}
