//! Spliced bodies (`server.splice_min_bytes`, src/net/splice.rs): plain-TCP
//! Content-Length bodies at or above the threshold go from socket to socket
//! through a pipe (chunked bodies: tests/splice_chunked.rs). Over real sockets, through the real binary and real
//! backends: every body follows the stamped byte pattern (tests/support), so
//! loss, corruption, duplication or reordering fails; every test reads
//! `coregate_spliced_bytes_total` from `/metrics` with a parser we did not
//! write (Python's prometheus_client, tests/prom_parse.py; scripts/test
//! installs it) to prove which path the bytes took, so none can pass on
//! the copy path by accident.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;
use support::*;

const MIB: u64 = 1 << 20;

/// Spliced bytes so far, summed over the shards: (to clients, to
/// upstreams).
fn spliced(gw: &Gateway) -> (u64, u64) {
    spliced_bytes(gw)
}

/// A one-shard gateway: `/{proxy+}` to upstream `b`, plus one route per
/// extra upstream (`/NAME/...` to upstream NAME). `server` is added to
/// `[server]`.
fn gateway(b: &Backend, extra: &[(&str, &Backend)], server: &str, timeout_ms: u64) -> Gateway {
    let mut toml = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
{server}

[server.limits]
max_body_bytes = 268435456
body_read_timeout_ms = 5000

[[upstreams]]
name = "b"
targets = [{{ address = "{}" }}]
timeout_ms = {timeout_ms}
"#,
        b.addr_str()
    );
    for (name, e) in extra {
        toml.push_str(&format!(
            "\n[[upstreams]]\nname = \"{name}\"\ntargets = [{{ address = \"{}\" }}]\ntimeout_ms = {timeout_ms}\n",
            e.addr_str()
        ));
    }
    toml.push_str("\n[[apis]]\nname = \"main\"\n");
    for (name, _) in extra {
        toml.push_str(&format!(
            "[[apis.routes]]\nkey = \"ANY /{name}/{{proxy+}}\"\nintegration = {{ type = \"http_proxy\", url = \"http://{name}\" }}\n"
        ));
    }
    toml.push_str(
        "[[apis.routes]]\nkey = \"ANY /{proxy+}\"\nintegration = { type = \"http_proxy\", url = \"http://b\" }\n",
    );
    Gateway::start(&toml)
}

/// GETs `path` and checks the body is `len` bytes of the pattern.
fn download_exact(c: &mut Client, path: &str, len: u64) {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let mut check = PatternCheck::default();
    let r = c
        .read_response_with(false, &mut |d| check.feed(d))
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    assert_eq!(r.status, 200, "GET {path}");
    assert_eq!(
        (check.offset, check.mismatches),
        (len, 0),
        "GET {path}: every byte, in order"
    );
}

/// POSTs `len` bytes of the pattern (Content-Length) to a `Reply::Discard`
/// backend and checks it got them all, in order.
fn upload_exact(c: &mut Client, path: &str, len: u64) {
    c.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes());
    write_pattern(&mut c.stream, len, &pattern_block()).expect("upload");
    let r = c.read_response();
    assert_eq!(r.status, 200, "POST {path}: {r:?}");
    assert_eq!(
        r.text(),
        format!("count={len} mismatches=0"),
        "POST {path}: the backend must get every byte, in order"
    );
}

#[test]
fn large_downloads_and_uploads_are_spliced_exactly() {
    let down = Backend::start(Reply::Large {
        len: 8 * MIB,
        chunked: false,
    });
    let sink = Backend::start(Reply::Discard);
    let gw = gateway(&down, &[("up", &sink)], "", 30_000);
    let mut c = gw.client();
    let before = spliced(&gw);
    download_exact(&mut c, "/big", 8 * MIB);
    let after_down = spliced(&gw);
    // The bytes that came with the response head (at most the upstream
    // buffer, 32 KiB) were copied; the rest spliced.
    let d = after_down.0 - before.0;
    assert!(
        (8 * MIB - 32 * 1024..=8 * MIB).contains(&d),
        "spliced {d} bytes of an 8 MiB download"
    );
    upload_exact(&mut c, "/up/x", 8 * MIB);
    let after_up = spliced(&gw);
    let u = after_up.1 - after_down.1;
    assert!(
        (8 * MIB - 16 * 1024..=8 * MIB).contains(&u),
        "spliced {u} bytes of an 8 MiB upload"
    );
    assert_eq!(after_up.0, after_down.0, "the upload's response is small");
}

#[test]
fn bodies_below_the_threshold_are_copied_at_and_above_it_spliced() {
    let below = Backend::start(Reply::Large {
        len: 99_999,
        chunked: false,
    });
    let at = Backend::start(Reply::Large {
        len: 100_000,
        chunked: false,
    });
    let above = Backend::start(Reply::Large {
        len: 100_001,
        chunked: false,
    });
    let sink = Backend::start(Reply::Discard);
    let gw = gateway(
        &sink,
        &[("below", &below), ("at", &at), ("above", &above)],
        "splice_min_bytes = 100000",
        30_000,
    );
    let mut c = gw.client();
    for round in 0..2 {
        for (path, len, spliced_expected) in [
            ("/below/x", 99_999, false),
            ("/at/x", 100_000, true),
            ("/above/x", 100_001, true),
        ] {
            let before = spliced(&gw);
            download_exact(&mut c, path, len);
            let d = spliced(&gw).0 - before.0;
            assert_eq!(
                d > 0,
                spliced_expected,
                "round {round}: GET {path} ({len} bytes): {d} bytes spliced"
            );
            assert!(d <= len);
        }
        for (len, spliced_expected) in [(99_999, false), (100_000, true), (100_001, true)] {
            let before = spliced(&gw);
            upload_exact(&mut c, "/upload", len);
            let u = spliced(&gw).1 - before.1;
            assert_eq!(
                u > 0,
                spliced_expected,
                "round {round}: POST of {len} bytes: {u} bytes spliced"
            );
            assert!(u <= len);
        }
    }
}

#[test]
fn keep_alive_requests_after_spliced_bodies_are_exact() {
    let big = Backend::start(Reply::Large {
        len: 3 * MIB + 7,
        chunked: false,
    });
    let small = Backend::start(Reply::fixed(200, &[], "small and exact"));
    let sink = Backend::start(Reply::Discard);
    let gw = gateway(&big, &[("small", &small), ("up", &sink)], "", 30_000);
    let mut c = gw.client();
    let before = spliced(&gw);
    for _ in 0..4 {
        download_exact(&mut c, "/big", 3 * MIB + 7);
        let r = c.get("/small/a");
        assert_eq!((r.status, r.text().as_str()), (200, "small and exact"));
        upload_exact(&mut c, "/up/x", 2 * MIB + 3);
        let r = c.get("/small/b");
        assert_eq!((r.status, r.text().as_str()), (200, "small and exact"));
    }
    let after = spliced(&gw);
    assert!(after.0 - before.0 > 4 * 3 * MIB - 4 * 32 * 1024);
    assert!(after.1 - before.1 > 4 * 2 * MIB - 4 * 16 * 1024);
    // The upstream connections were reused across the spliced bodies.
    assert_eq!(big.conns(), 1, "one pooled connection to the big backend");
    assert_eq!(sink.conns(), 1, "one pooled connection to the upload sink");
}

#[test]
fn a_backend_that_closes_after_half_the_body_ends_the_client_connection() {
    let mut raw = b"HTTP/1.1 200 OK\r\ncontent-length: 4194304\r\n\r\n".to_vec();
    write_pattern(&mut raw, 2 * MIB, &pattern_block()).unwrap();
    let b = Backend::start(Reply::Raw(raw));
    let ok = Backend::start(Reply::Large {
        len: MIB,
        chunked: false,
    });
    let gw = gateway(&b, &[("ok", &ok)], "", 30_000);
    let before = spliced(&gw);
    let mut c = gw.client();
    c.send(b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut check = PatternCheck::default();
    match c.read_response_with(false, &mut |d| check.feed(d)) {
        Err(ReadError::Truncated(r)) => assert_eq!(r.status, 200),
        other => panic!("expected a truncated response, got {other:?}"),
    }
    assert_eq!(
        (check.offset, check.mismatches),
        (2 * MIB, 0),
        "the half that was sent, exactly"
    );
    assert!(spliced(&gw).0 - before.0 > MIB, "the half was spliced");
    // The gateway goes on serving.
    let mut c = gw.client();
    download_exact(&mut c, "/ok/x", MIB);
}

#[test]
fn a_backend_silent_mid_body_is_cut_off_after_its_timeout() {
    // Sends the head and 1 MiB of a 4 MiB body, then nothing for 20 s.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        while let Ok((mut s, _)) = l.accept() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                    head.push(b[0]);
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4194304\r\n\r\n");
                let _ = write_pattern(&mut s, MIB, &pattern_block());
                std::thread::sleep(Duration::from_secs(20));
            });
        }
    });
    let stub = Backend::start(Reply::Discard);
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[upstreams]]
name = "b"
targets = [{{ address = "{addr}" }}]
timeout_ms = 500

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{{proxy+}}"
integration = {{ type = "http_proxy", url = "http://b" }}
"#
    ));
    drop(stub);
    let before = spliced(&gw);
    let mut c = gw.client();
    c.send(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut check = PatternCheck::default();
    // The client's own read timeout is 10 s: a truncation before it means
    // the gateway's 500 ms timeout ended the body.
    match c.read_response_with(false, &mut |d| check.feed(d)) {
        Err(ReadError::Truncated(r)) => assert_eq!(r.status, 200),
        other => panic!("expected a truncated response, got {other:?}"),
    }
    assert_eq!((check.offset, check.mismatches), (MIB, 0));
    assert!(spliced(&gw).0 - before.0 > MIB / 2, "the body was spliced");
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .stderr()
            .contains("response body cut short: timed out")),
        "the gateway logs why: {}",
        gw.stderr()
    );
}

#[test]
fn a_client_that_resets_mid_download_leaves_the_gateway_serving_exact_bodies() {
    let b = Backend::start(Reply::Large {
        len: 64 * MIB,
        chunked: false,
    });
    let small = Backend::start(Reply::Large {
        len: 2 * MIB + 1,
        chunked: false,
    });
    let gw = gateway(&b, &[("small", &small)], "", 30_000);
    for _ in 0..3 {
        let mut c = gw.client();
        c.send(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut got = vec![0u8; 1 << 20];
        c.stream
            .read_exact(&mut got)
            .expect("the start of the body");
        socket2::SockRef::from(&c.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c); // RST, with bytes of the body still on their way
    }
    let before = spliced(&gw);
    let mut c = gw.client();
    for _ in 0..3 {
        download_exact(&mut c, "/small/x", 2 * MIB + 1);
    }
    assert!(spliced(&gw).0 - before.0 > 3 * (2 * MIB - 32 * 1024));
}

#[test]
fn a_slow_reader_gets_every_byte_and_memory_stays_bounded() {
    let len = 48 * MIB;
    let b = Backend::start(Reply::Large {
        len,
        chunked: false,
    });
    let gw = gateway(&b, &[], "", 60_000);
    let mut c = gw.client();
    c.send(b"HEAD /warm HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_head_response().status, 200);
    let baseline = gw.peak_rss_kib();
    let before = spliced(&gw);
    c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut check = PatternCheck::default();
    let mut fed = 0u64;
    let r = c
        .read_response_with(false, &mut |d| {
            check.feed(d);
            fed += d.len() as u64;
            // The reader falls behind: the client socket, then the pipe,
            // then the upstream socket fill up and wait.
            if fed >= MIB {
                fed = 0;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .unwrap_or_else(|e| panic!("slow download: {e:?}"));
    assert_eq!(r.status, 200);
    assert_eq!((check.offset, check.mismatches), (len, 0));
    assert!(spliced(&gw).0 - before.0 > len - 32 * 1024);
    let peak = gw.peak_rss_kib();
    assert!(
        peak < baseline + 16 * 1024,
        "gateway peak RSS {peak} KiB after a spliced 48 MiB body (start-up {baseline} KiB)"
    );
}

#[test]
fn request_body_limits_and_timeouts_hold_on_the_spliced_path() {
    let sink = Backend::start(Reply::Discard);
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[server.limits]
max_body_bytes = 1048576
body_read_timeout_ms = 400

[[upstreams]]
name = "b"
targets = [{{ address = "{}" }}]

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{{proxy+}}"
integration = {{ type = "http_proxy", url = "http://b" }}
"#,
        sink.addr_str()
    ));
    // Over the limit: refused before anything moves.
    let before = spliced(&gw);
    let mut c = gw.client();
    let r = c.request(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 2097152\r\n\r\n");
    assert_eq!(r.status, 413);
    assert_eq!(sink.heads(), 0, "nothing reached the backend");
    assert_eq!(spliced(&gw), before);

    // A client that stops halfway: 408 once body_read_timeout_ms passes.
    let mut c = gw.client();
    c.send(b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
    write_pattern(&mut c.stream, 500_000, &pattern_block()).unwrap();
    let r = c.read_response();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        spliced(&gw).1 - before.1 > 400_000,
        "the half that came was spliced"
    );
    // Within the limit it goes through whole.
    let mut c = gw.client();
    upload_exact(&mut c, "/ok", MIB);
}

#[test]
fn splice_min_bytes_0_copies_every_body() {
    let b = Backend::start(Reply::Large {
        len: 4 * MIB,
        chunked: false,
    });
    let sink = Backend::start(Reply::Discard);
    let gw = gateway(&b, &[("up", &sink)], "splice_min_bytes = 0", 30_000);
    let mut c = gw.client();
    download_exact(&mut c, "/big", 4 * MIB);
    upload_exact(&mut c, "/up/x", 4 * MIB);
    assert_eq!(spliced(&gw), (0, 0));
}

#[test]
fn a_tls_listener_copies_and_stays_exact() {
    use tls_support::*;
    let b = Backend::start(Reply::Large {
        len: 3 * MIB,
        chunked: false,
    });
    let (gw, mut tls, _pki) = tls_proxy(&b.addr_str());
    for _ in 0..2 {
        let r = tls.get("/big");
        assert_eq!(r.status, 200);
        let mut check = PatternCheck::default();
        check.feed(&r.body);
        assert_eq!((check.offset, check.mismatches), (3 * MIB, 0));
    }
    assert_eq!(spliced(&gw), (0, 0), "nothing spliced under TLS");
    // The plain listener of the same gateway splices.
    let mut c = gw.client();
    download_exact(&mut c, "/big", 3 * MIB);
    assert!(spliced(&gw).0 > 2 * MIB);
}

#[test]
fn a_spliced_download_under_way_finishes_during_the_drain() {
    let len = 32 * MIB;
    let b = Backend::start(Reply::Large {
        len,
        chunked: false,
    });
    let mut gw = gateway(&b, &[], "", 30_000);
    let (r, check, mid) = download_through_sigterm(&gw, 2 * MIB);
    assert_eq!(r.status, 200);
    assert_eq!((check.offset, check.mismatches), (len, 0));
    assert!(
        mid.is_some_and(|m| m > MIB),
        "spliced before the drain: {mid:?}"
    );
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "the gateway exits 0 once the body is done: {status:?}"
    );
}
