//! Spliced chunked bodies (src/net/splice.rs, `splice_chunk` in
//! src/http/conn.rs): between plain-TCP connections, the data of a chunk of
//! at least `server.splice_min_bytes` goes from socket to socket through a
//! pipe, while every size line, the CRLF after each chunk's data, the last
//! chunk and the trailers are read and checked by the chunked decoder in
//! user space, as for a copied body.
//!
//! Over real sockets, through the real binary: every body follows the
//! stamped byte pattern (tests/support), and where the framing matters the
//! bytes on the wire are compared whole with the re-framed body the gateway
//! must write (each chunk as `size-in-lower-hex CRLF data CRLF`, extensions
//! and trailers dropped), so a spliced run that crosses a chunk boundary,
//! swallows a size line or loses a byte fails. Every test reads
//! `coregate_spliced_bytes_total` with a parser we did not write
//! (tests/prom_parse.py) to prove which path the bytes took. curl and
//! Python's h11 send and receive some of the bodies, as clients we did not
//! write.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;

const MIB: u64 = 1 << 20;

/// The upstream read buffer (bytes of a response body that come with its
/// head are copied from it) and the client's body buffer.
const UP_BUF: u64 = 32 * 1024;
/// What a read takes right after a spliced chunk (AFTER_SPLICE_READ).
const SHORT_READ: u64 = 1024;

/// `len` bytes of the stamped pattern, from offset 0.
fn pattern_bytes(len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize);
    write_pattern(&mut v, len, &pattern_block()).unwrap();
    v
}

/// One chunk as a test sends it: its data length and the size line's text
/// (without CRLF); `None` writes the canonical line.
struct Chunk {
    len: u64,
    line: Option<String>,
}

fn chunk(len: u64) -> Chunk {
    Chunk { len, line: None }
}

fn chunk_line(len: u64, line: &str) -> Chunk {
    Chunk {
        len,
        line: Some(line.to_string()),
    }
}

/// A chunked body whose data is the stamped pattern across all chunks,
/// with these size lines, ending with `last` (the last chunk and trailer
/// section, e.g. `0\r\n\r\n`). Returns it and its data length.
fn chunked_body(chunks: &[Chunk], last: &str) -> (Vec<u8>, u64) {
    let total: u64 = chunks.iter().map(|c| c.len).sum();
    let data = pattern_bytes(total);
    let mut out = Vec::with_capacity(total as usize + 64 * chunks.len());
    let mut off = 0usize;
    for c in chunks {
        let line = c.line.clone().unwrap_or_else(|| format!("{:x}", c.len));
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&data[off..off + c.len as usize]);
        out.extend_from_slice(b"\r\n");
        off += c.len as usize;
    }
    out.extend_from_slice(last.as_bytes());
    (out, total)
}

/// The same body as the gateway must forward it to an HTTP/1.1 peer:
/// canonical size lines, no extensions, no trailers.
fn reframed(chunks: &[Chunk]) -> Vec<u8> {
    let canonical: Vec<Chunk> = chunks.iter().map(|c| chunk(c.len)).collect();
    chunked_body(&canonical, "0\r\n\r\n").0
}

/// Spliced bytes so far, summed over the shards: (to clients, to
/// upstreams).
fn spliced(gw: &Gateway) -> (u64, u64) {
    spliced_bytes(gw)
}

/// A one-shard gateway: `/{proxy+}` to upstream `b`, plus `/NAME/...` to
/// each extra upstream. `server` is added to `[server]`, `limits` to
/// `[server.limits]`.
fn gateway(
    b: &str,
    extra: &[(&str, &str)],
    server: &str,
    limits: &str,
    timeout_ms: u64,
) -> Gateway {
    let limits = if limits.is_empty() {
        "max_body_bytes = 268435456\nbody_read_timeout_ms = 5000"
    } else {
        limits
    };
    let mut toml = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
{server}

[server.limits]
{limits}

[[upstreams]]
name = "b"
targets = [{{ address = "{b}" }}]
timeout_ms = {timeout_ms}
"#
    );
    for (name, addr) in extra {
        toml.push_str(&format!(
            "\n[[upstreams]]\nname = \"{name}\"\ntargets = [{{ address = \"{addr}\" }}]\ntimeout_ms = {timeout_ms}\n"
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

/// What a [`raw_backend`] does after writing its response.
#[derive(Clone, Copy)]
enum After {
    /// Waits for the next request on the connection.
    KeepAlive,
    /// Closes (FIN).
    Close,
    /// Resets (SO_LINGER 0).
    Reset,
    /// Keeps the connection open and silent this long, then closes.
    Stall(Duration),
}

/// A backend that answers every GET with exactly `response` (a head and a
/// body, or part of one), then does `after`. Counts its connections on the
/// returned channel.
fn raw_backend(response: Vec<u8>, after: After) -> (SocketAddr, mpsc::Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok((mut s, _)) = l.accept() {
            let response = response.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(());
                loop {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut b) {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    if s.write_all(&response).is_err() {
                        return;
                    }
                    match after {
                        After::KeepAlive => continue,
                        After::Close => return,
                        After::Reset => {
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                            return;
                        }
                        After::Stall(d) => {
                            std::thread::sleep(d);
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Reads a response head from a raw client stream; returns it and the
/// bytes read past it.
fn read_raw_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = got.split_off(i + 4);
            return (String::from_utf8_lossy(&got).into_owned(), rest);
        }
        let n = s.read(&mut buf).expect("a response head");
        assert!(
            n > 0,
            "closed before a head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Reads from a raw client stream until it closes (or resets), at most 10 s.
fn read_to_close(s: &mut TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("reading to the close after {} bytes: {e}", got.len()),
        }
    }
}

/// Reads exactly `len` bytes after `got` from a raw client stream.
fn read_exactly(s: &mut TcpStream, mut got: Vec<u8>, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 256 * 1024];
    while got.len() < len {
        let want = (len - got.len()).min(buf.len());
        let n = s
            .read(&mut buf[..want])
            .unwrap_or_else(|e| panic!("after {} of {len} bytes: {e}", got.len()));
        assert!(n > 0, "closed after {} of {len} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), len, "bytes past the body");
    got
}

fn raw_client(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Compares two byte strings, saying where they first differ.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| {
        String::from_utf8_lossy(&b[at.saturating_sub(16)..(at + 32).min(b.len())]).into_owned()
    };
    panic!(
        "{what}: {} bytes, {} expected; first difference at {at}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

/// POSTs a chunked body of the pattern (one chunk per `sizes` entry) to a
/// `Reply::Discard` backend and checks it got every byte, in order.
fn upload_chunks(c: &mut Client, path: &str, sizes: &[u64]) {
    let chunks: Vec<Chunk> = sizes.iter().map(|&n| chunk(n)).collect();
    let (body, total) = chunked_body(&chunks, "0\r\n\r\n");
    c.send(
        format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
    );
    c.send(&body);
    let r = c.read_response();
    assert_eq!(r.status, 200, "POST {path}: {r:?}");
    assert_eq!(
        r.text(),
        format!("count={total} mismatches=0"),
        "POST {path}: the backend must get every byte, in order"
    );
}

/// GETs a chunked body and checks it is `len` bytes of the pattern.
fn download_exact(c: &mut Client, path: &str, len: u64) -> Response {
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
    r
}

#[test]
fn big_chunks_are_spliced_both_ways_and_keep_alive_goes_on() {
    let len = 8 * MIB;
    // Chunks of pattern_block(), about 1 MiB each.
    let down = Backend::start(Reply::Large { len, chunked: true });
    let sink = Backend::start(Reply::Discard);
    let small = Backend::start(Reply::fixed(200, &[], "small and exact"));
    let gw = gateway(
        &down.addr_str(),
        &[("up", &sink.addr_str()), ("small", &small.addr_str())],
        "",
        "",
        30_000,
    );
    let mut c = gw.client();
    let chunks = len.div_ceil(pattern_block().len() as u64);
    for round in 0..3 {
        let before = spliced(&gw);
        let r = download_exact(&mut c, "/big", len);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let d = spliced(&gw).0 - before.0;
        // Copied: what came with the head, and a short read after each
        // spliced chunk.
        assert!(
            (len - UP_BUF - chunks * SHORT_READ..=len).contains(&d),
            "round {round}: spliced {d} bytes of an {len}-byte chunked download"
        );
        let r = c.get("/small/a");
        assert_eq!((r.status, r.text().as_str()), (200, "small and exact"));

        let before = spliced(&gw);
        c.send(b"POST /up/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        write_pattern_chunked(&mut c.stream, len, &pattern_block()).unwrap();
        let r = c.read_response();
        assert_eq!(r.text(), format!("count={len} mismatches=0"));
        let u = spliced(&gw).1 - before.1;
        assert!(
            (len - 16 * 1024 - chunks * SHORT_READ..=len).contains(&u),
            "round {round}: spliced {u} bytes of an {len}-byte chunked upload"
        );
        let r = c.get("/small/b");
        assert_eq!((r.status, r.text().as_str()), (200, "small and exact"));
    }
    // The framing ended exactly where it should: the upstream connections
    // were reused across the spliced bodies.
    assert_eq!(
        down.conns(),
        1,
        "one pooled connection to the chunked backend"
    );
    assert_eq!(sink.conns(), 1, "one pooled connection to the upload sink");
}

/// Big and small chunks, non-canonical size lines (upper-case hex, leading
/// zeros, extensions with quoted strings), a last chunk with an extension
/// and trailers: the bytes on the wire are exactly the re-framed body, both
/// ways, and only the big chunks' data was spliced.
#[test]
fn mixed_chunks_extensions_and_trailers_are_reframed_exactly() {
    let mut chunks = vec![
        chunk(MIB + 3),
        chunk_line(5, "5;x=1"),
        chunk_line(0x1ABCDE, "1ABCDE;name=\"a \\\"b\\\" c\"; flag"),
        chunk_line(MIB, "000100000"),
        chunk(17),
    ];
    for k in 1..=40 {
        chunks.push(chunk(k * 7));
    }
    chunks.push(chunk_line(700 * 1024, "AF000 ; ext"));
    chunks.push(chunk(65_536));
    chunks.push(chunk(65_535));
    let (body, total) = chunked_body(&chunks, "0;end=1\r\nx-trailer: yes\r\nx-more: 2\r\n\r\n");
    let want = reframed(&chunks);
    let big: u64 = chunks.iter().map(|c| c.len).filter(|&n| n >= 65_536).sum();

    // Download: the backend sends the body as above.
    let mut response =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    response.extend_from_slice(&body);
    let (down, conns) = raw_backend(response, After::KeepAlive);
    let sink = Backend::start_recording(Reply::Discard);
    let gw = gateway(
        &down.to_string(),
        &[("up", &sink.addr_str())],
        "",
        "",
        30_000,
    );
    let mut s = raw_client(&gw);
    for round in 0..2 {
        let before = spliced(&gw);
        s.write_all(b"GET /mixed HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let (head, rest) = read_raw_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let got = read_exactly(&mut s, rest, want.len());
        assert_same(
            &got,
            &want,
            &format!("round {round}: the re-framed download"),
        );
        let d = spliced(&gw).0 - before.0;
        // Chunks under 64 KiB are never spliced; of the big ones, what
        // came in a read with other framing was copied (at most a buffer
        // each).
        assert!(
            d <= big && d >= big - 5 * UP_BUF,
            "round {round}: spliced {d} of {big} bytes in big chunks ({total} in all)"
        );
    }
    assert_eq!(
        conns.try_iter().count(),
        1,
        "the upstream connection was reused"
    );

    // Upload: the client sends the same body; the backend must read the
    // re-framed one, byte for byte.
    let before = spliced(&gw);
    s.write_all(b"POST /up/mixed HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    s.write_all(&body).unwrap();
    let (head, rest) = read_raw_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let answer = format!("count={total} mismatches=0");
    let got = read_exactly(&mut s, rest, answer.len());
    assert_eq!(String::from_utf8_lossy(&got), answer);
    let u = spliced(&gw).1 - before.1;
    assert!(
        u <= big && u >= big - 5 * 16 * 1024,
        "spliced {u} of {big} bytes in big chunks ({total} in all)"
    );
    let raw = sink.raw();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_same(&raw[at..], &want, "the re-framed upload the backend read");
}

/// An HTTP/1.0 client gets a chunked response's data without framing
/// (close-delimited); the big chunks' data is spliced all the same.
#[test]
fn an_http10_client_gets_spliced_chunk_data_without_framing() {
    let chunks = [
        chunk(MIB),
        chunk(3),
        chunk_line(2 * MIB + 5, "200005;a=b"),
        chunk(70_000),
    ];
    let (body, total) = chunked_body(&chunks, "0\r\nx-t: 1\r\n\r\n");
    let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    response.extend_from_slice(&body);
    let (b, _) = raw_backend(response, After::KeepAlive);
    let gw = gateway(&b.to_string(), &[], "", "", 30_000);
    let before = spliced(&gw);
    let mut s = raw_client(&gw);
    s.write_all(b"GET /old HTTP/1.0\r\nHost: t\r\n\r\n")
        .unwrap();
    let (head, rest) = read_raw_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    let got = read_to_close(&mut s, rest);
    assert_same(&got, &pattern_bytes(total), "the data, unframed");
    let d = spliced(&gw).0 - before.0;
    assert!(
        d <= total && d >= total - 3 - 3 * UP_BUF,
        "spliced {d} of {total}"
    );
}

/// A request sent right behind a chunked body whose big chunk was spliced
/// (in the same write): the splice stops at the chunk's end, the rest is
/// parsed as before, and the next request is served from what was read.
#[test]
fn a_request_pipelined_behind_a_spliced_chunked_body_is_served() {
    let sink = Backend::start(Reply::Discard);
    let small = Backend::start(Reply::fixed(200, &[], "next"));
    let gw = gateway(
        &sink.addr_str(),
        &[("small", &small.addr_str())],
        "",
        "",
        30_000,
    );
    let mut c = gw.client();
    for last in ["0\r\n\r\n", "0\r\nx-t: 1\r\n\r\n"] {
        let before = spliced(&gw);
        let (body, total) = chunked_body(&[chunk(2 * MIB), chunk(9)], last);
        let mut all =
            b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        all.extend_from_slice(&body);
        all.extend_from_slice(b"GET /small/next HTTP/1.1\r\nHost: t\r\n\r\n");
        c.send(&all);
        let r = c.read_response();
        assert_eq!(r.text(), format!("count={total} mismatches=0"));
        let r = c.read_response();
        assert_eq!((r.status, r.text().as_str()), (200, "next"));
        assert!(spliced(&gw).1 - before.1 > 2 * MIB - 16 * 1024);
    }
}

#[test]
fn chunks_below_the_threshold_are_copied_at_and_above_it_spliced() {
    let sink = Backend::start(Reply::Discard);
    let mut backends = Vec::new();
    for len in [99_999u64, 100_000, 100_001] {
        let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        // Two chunks, so the second never comes with the head.
        response.extend_from_slice(&chunked_body(&[chunk(len), chunk(len)], "0\r\n\r\n").0);
        backends.push((len, raw_backend(response, After::KeepAlive).0.to_string()));
    }
    let names = ["below", "at", "above"];
    let extra: Vec<(&str, &str)> = names
        .iter()
        .zip(&backends)
        .map(|(n, (_, a))| (*n, a.as_str()))
        .collect();
    let gw = gateway(
        &sink.addr_str(),
        &extra,
        "splice_min_bytes = 100000",
        "",
        30_000,
    );
    let mut c = gw.client();
    for round in 0..2 {
        for (name, (len, _)) in names.iter().zip(&backends) {
            let before = spliced(&gw);
            download_exact(&mut c, &format!("/{name}/x"), 2 * len);
            let d = spliced(&gw).0 - before.0;
            assert_eq!(
                d > 0,
                *len >= 100_000,
                "round {round}: chunks of {len} bytes: {d} bytes spliced"
            );
            assert!(d <= 2 * len);
            // Of the second chunk, only the short read after the first was
            // copied.
            if *len >= 100_000 {
                assert!(d >= *len - SHORT_READ, "round {round}: {d}");
            }
        }
        for len in [99_999u64, 100_000, 100_001] {
            let before = spliced(&gw);
            upload_chunks(&mut c, "/upload", &[len, len]);
            let u = spliced(&gw).1 - before.1;
            assert_eq!(
                u > 0,
                len >= 100_000,
                "round {round}: upload in chunks of {len} bytes: {u} bytes spliced"
            );
            assert!(u <= 2 * len);
        }
    }
}

/// A size line that is not one, or chunk data longer than its size, right
/// after a spliced chunk: refused as on the copy path. Nothing past the
/// last valid byte reaches the other side.
#[test]
fn bad_framing_after_a_spliced_chunk_is_refused() {
    let data = pattern_bytes(MIB);
    // (what follows the 1 MiB chunk's data, what of it may go on)
    let cases: [(&[u8], &[u8]); 3] = [
        (b"\r\nzz\r\n", b"\r\n"),
        (b"\r\n5 \r\nhello\r\n0\r\n\r\n", b"\r\n"),
        // Five bytes too many: the data ends where its size says.
        (b"12345\r\n0\r\n\r\n", b""),
    ];
    let sink = Backend::start_recording(Reply::Discard);
    for (after, passes) in cases {
        let mut response =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n100000\r\n".to_vec();
        response.extend_from_slice(&data);
        response.extend_from_slice(after);
        let (down, _) = raw_backend(response, After::Stall(Duration::from_secs(5)));
        let gw = gateway(
            &down.to_string(),
            &[("up", &sink.addr_str())],
            "",
            "",
            30_000,
        );

        // Response: the client gets the head, the chunk, what passes, then
        // the connection closes.
        let before = spliced(&gw);
        let mut s = raw_client(&gw);
        s.write_all(b"GET /bad HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let (head, rest) = read_raw_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let got = read_to_close(&mut s, rest);
        let mut want = b"100000\r\n".to_vec();
        want.extend_from_slice(&data);
        want.extend_from_slice(passes);
        assert_same(
            &got,
            &want,
            &format!("the response before {:?}", String::from_utf8_lossy(after)),
        );
        assert!(
            spliced(&gw).0 - before.0 > MIB - UP_BUF,
            "the chunk was spliced"
        );
        assert!(
            gw.wait_stderr_line(Duration::from_secs(5), |l| l
                .contains("response body cut short: Invalid chunk size")
                || l.contains("response body cut short: Chunk data longer than its size"))
                .is_some(),
            "the refusal is logged: {}",
            gw.stderr()
        );

        // Request: 400, and the upstream gets the chunk and what passes,
        // never the bad bytes.
        let before = spliced(&gw);
        let already = sink.raw().len();
        let mut c = gw.client();
        c.send(b"POST /up/bad HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n");
        c.send(&data);
        c.send_lossy(after);
        let r = c.read_response();
        assert_eq!(r.status, 400, "{r:?}");
        c.expect_closed();
        assert!(
            spliced(&gw).1 - before.1 > MIB - 16 * 1024,
            "the chunk was spliced"
        );
        assert!(
            wait_until(Duration::from_secs(5), || sink.ended() >= sink.conns()),
            "the upstream connection was closed"
        );
        let raw = sink.raw()[already..].to_vec();
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_same(&raw[at..], &want, "what the upstream read");
    }
}

/// An upstream that closes or resets inside a spliced chunk: the client
/// gets the bytes that came and a closed connection, never a hang or a
/// finished body, and the gateway goes on serving.
#[test]
fn an_upstream_dying_mid_chunk_ends_the_client_connection() {
    let ok = Backend::start(Reply::Large {
        len: 3 * MIB,
        chunked: true,
    });
    for after in [After::Close, After::Reset] {
        // A 4 MiB chunk of which 1 MiB comes.
        let mut response =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n400000\r\n".to_vec();
        response.extend_from_slice(&pattern_bytes(MIB));
        let (dying, _) = raw_backend(response, after);
        let gw = gateway(
            &dying.to_string(),
            &[("ok", &ok.addr_str())],
            "",
            "",
            30_000,
        );
        let before = spliced(&gw);
        let mut c = gw.client();
        c.send(b"GET /dies HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut check = PatternCheck::default();
        let t0 = Instant::now();
        match c.read_response_with(false, &mut |d| check.feed(d)) {
            Err(ReadError::Truncated(r)) => assert_eq!(r.status, 200),
            other => panic!("expected a truncated response, got {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(check.mismatches, 0, "the bytes that came, in order");
        if matches!(after, After::Close) {
            assert_eq!(check.offset, MIB, "every byte sent before the close");
            assert!(spliced(&gw).0 - before.0 > MIB - UP_BUF);
        } else {
            // A reset may destroy what the backend had not sent yet, or
            // the gateway had not read: a prefix, no more.
            assert!(check.offset <= MIB, "{}", check.offset);
        }
        assert!(
            gw.wait_stderr_line(Duration::from_secs(5), |l| l
                .contains("response body cut short"))
                .is_some(),
            "{}",
            gw.stderr()
        );
        let mut c = gw.client();
        download_exact(&mut c, "/ok/x", 3 * MIB);
    }

    // Upload: the upstream reads the head and 1 MiB of a 4 MiB chunk, then
    // resets. The client gets 502 at once.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        while let Ok((mut s, _)) = l.accept() {
            std::thread::spawn(move || {
                let mut got = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                while got < MIB as usize {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            });
        }
    });
    let sink = Backend::start(Reply::Discard);
    let gw = gateway(
        &addr.to_string(),
        &[("up", &sink.addr_str())],
        "",
        "",
        30_000,
    );
    let before = spliced(&gw);
    let mut c = gw.client();
    c.send(b"POST /dies HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n400000\r\n");
    let mut w = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = write_pattern(&mut w, 4 * MIB, &pattern_block());
    });
    let t0 = Instant::now();
    let r = c.read_response();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(
        spliced(&gw).1 - before.1 > MIB / 2,
        "the chunk was being spliced"
    );
    drop(c);
    sender.join().unwrap();
    let mut c = gw.client();
    upload_chunks(&mut c, "/up/x", &[MIB, 5, 2 * MIB]);
}

#[test]
fn body_limits_and_timeouts_hold_for_spliced_chunks() {
    let sink = Backend::start(Reply::Discard);
    let gw = gateway(
        &sink.addr_str(),
        &[],
        "",
        "max_body_bytes = 2097152\nbody_read_timeout_ms = 400",
        30_000,
    );
    // Exactly the limit, in big chunks: through, spliced.
    let before = spliced(&gw);
    let mut c = gw.client();
    upload_chunks(&mut c, "/ok", &[MIB, MIB]);
    assert!(spliced(&gw).1 - before.1 > 2 * MIB - 16 * 1024 - SHORT_READ);
    // One data byte over, in a last small chunk, or in a big chunk that
    // would pass the limit: 413, and the backend never gets a whole body.
    for sizes in [&[MIB, MIB, 1][..], &[MIB, MIB + 1][..], &[3 * MIB][..]] {
        let hits = sink.hits();
        let mut c = gw.client();
        let chunks: Vec<Chunk> = sizes.iter().map(|&n| chunk(n)).collect();
        let (body, _) = chunked_body(&chunks, "0\r\n\r\n");
        c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        let mut w = c.stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let _ = w.write_all(&body);
        });
        let r = c.read_response();
        drop(c);
        sender.join().unwrap();
        assert_eq!(r.status, 413, "{sizes:?}: {r:?}");
        assert_eq!(
            sink.hits(),
            hits,
            "{sizes:?}: no whole body reached the backend"
        );
    }
    // A client silent mid-chunk: 408 after body_read_timeout_ms.
    let before = spliced(&gw);
    let mut c = gw.client();
    c.send(b"POST /stall HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n");
    write_pattern(&mut c.stream, 500_000, &pattern_block()).unwrap();
    let t0 = Instant::now();
    let r = c.read_response();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        spliced(&gw).1 - before.1 > 400_000,
        "the part that came was spliced"
    );

    // An upstream silent mid-chunk: cut off after its timeout_ms.
    let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n400000\r\n".to_vec();
    response.extend_from_slice(&pattern_bytes(MIB));
    let (silent, _) = raw_backend(response, After::Stall(Duration::from_secs(20)));
    let gw = gateway(&silent.to_string(), &[], "", "", 500);
    let before = spliced(&gw);
    let mut c = gw.client();
    c.send(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut check = PatternCheck::default();
    match c.read_response_with(false, &mut |d| check.feed(d)) {
        Err(ReadError::Truncated(r)) => assert_eq!(r.status, 200),
        other => panic!("expected a truncated response, got {other:?}"),
    }
    assert_eq!((check.offset, check.mismatches), (MIB, 0));
    assert!(spliced(&gw).0 - before.0 > MIB / 2);
    assert!(
        gw.wait_stderr_line(Duration::from_secs(5), |l| l
            .contains("response body cut short: timed out"))
            .is_some(),
        "{}",
        gw.stderr()
    );
}

#[test]
fn a_client_reset_mid_chunked_download_leaves_the_gateway_serving() {
    let b = Backend::start(Reply::Large {
        len: 64 * MIB,
        chunked: true,
    });
    let small = Backend::start(Reply::Large {
        len: 2 * MIB + 1,
        chunked: true,
    });
    let gw = gateway(
        &b.addr_str(),
        &[("small", &small.addr_str())],
        "",
        "",
        30_000,
    );
    for _ in 0..3 {
        let mut c = gw.client();
        c.send(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut got = vec![0u8; 3 << 20];
        c.stream.read_exact(&mut got).unwrap();
        socket2::SockRef::from(&c.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
    }
    let before = spliced(&gw);
    let mut c = gw.client();
    for _ in 0..3 {
        download_exact(&mut c, "/small/x", 2 * MIB + 1);
    }
    assert!(spliced(&gw).0 - before.0 > 3 * (2 * MIB - UP_BUF - 3 * SHORT_READ));
}

#[test]
fn a_spliced_chunked_download_under_way_finishes_during_the_drain() {
    let len = 32 * MIB;
    let b = Backend::start(Reply::Large { len, chunked: true });
    let mut gw = gateway(&b.addr_str(), &[], "", "", 30_000);
    let (r, check, mid) = download_through_sigterm(&gw, 4 * MIB);
    assert_eq!(r.status, 200);
    assert_eq!((check.offset, check.mismatches), (len, 0));
    assert!(
        mid.is_some_and(|m| m > 2 * MIB),
        "spliced before the drain: {mid:?}"
    );
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "the gateway exits 0 once the body is done: {status:?}"
    );
}

#[test]
fn chunked_bodies_are_copied_when_splicing_is_off_or_under_tls() {
    use tls_support::*;
    let b = Backend::start(Reply::Large {
        len: 4 * MIB,
        chunked: true,
    });
    let sink = Backend::start(Reply::Discard);
    let gw = gateway(
        &b.addr_str(),
        &[("up", &sink.addr_str())],
        "splice_min_bytes = 0",
        "",
        30_000,
    );
    let mut c = gw.client();
    download_exact(&mut c, "/big", 4 * MIB);
    upload_chunks(&mut c, "/up/x", &[MIB, 3 * MIB]);
    assert_eq!(spliced(&gw), (0, 0));

    let (gw, mut tls, _pki) = tls_proxy(&b.addr_str());
    let r = tls.get("/big");
    assert_eq!(r.status, 200);
    let mut check = PatternCheck::default();
    check.feed(&r.body);
    assert_eq!((check.offset, check.mismatches), (4 * MIB, 0));
    assert_eq!(spliced(&gw), (0, 0), "nothing spliced under TLS");
    let mut c = gw.client();
    download_exact(&mut c, "/big", 4 * MIB);
    assert!(spliced(&gw).0 > 3 * MIB, "the plain listener splices");
}

/// curl downloads a chunked body and uploads one (`--data-binary @file`
/// with `Transfer-Encoding: chunked`, which curl sends as chunks of
/// 65,524 bytes); Python's h11 uploads 1 MiB chunks with trailers.
#[test]
fn clients_we_did_not_write_send_and_get_spliced_chunked_bodies() {
    let len = 6 * MIB + 11;
    let down = Backend::start(Reply::Large { len, chunked: true });
    let sink = Backend::start(Reply::Discard);
    let gw = gateway(
        &down.addr_str(),
        &[("up", &sink.addr_str())],
        "splice_min_bytes = 32768",
        "",
        30_000,
    );
    let file = temp_path("bin");
    std::fs::write(&file, pattern_bytes(len)).unwrap();
    let out = temp_path("out");

    let before = spliced(&gw);
    let r = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code} %{size_download}"])
        .arg(gw.url("/big"))
        .output()
        .expect("curl must be installed (scripts/test installs it)");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("200 {len}"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let got = std::fs::read(&out).unwrap();
    let mut check = PatternCheck::default();
    check.feed(&got);
    assert_eq!(
        (check.offset, check.mismatches),
        (len, 0),
        "curl's download"
    );
    let d = spliced(&gw).0 - before.0;
    assert!(d > len - UP_BUF - 7 * SHORT_READ, "spliced {d} of {len}");

    let before = spliced(&gw);
    let r = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .args([
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
        ])
        .arg(gw.url("/up/curl"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("count={len} mismatches=0"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let u = spliced(&gw).1 - before.1;
    // 65,524-byte chunks, each but the first spliced after a short read.
    let chunks = len.div_ceil(65_524);
    assert!(
        u > len - 16 * 1024 - chunks * SHORT_READ,
        "spliced {u} of {len} bytes of curl's upload"
    );

    let before = spliced(&gw);
    let script = r#"
import socket, sys, h11
port, path, chunk = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
data = open(sys.argv[4], "rb").read()
s = socket.create_connection(("127.0.0.1", port), timeout=10)
c = h11.Connection(our_role=h11.CLIENT)
out = c.send(h11.Request(method="POST", target="/up/h11",
    headers=[("Host", "t"), ("Transfer-Encoding", "chunked")]))
s.sendall(out)
for i in range(0, len(data), chunk):
    s.sendall(c.send(h11.Data(data=data[i:i + chunk], chunk_start=True, chunk_end=True)))
s.sendall(c.send(h11.EndOfMessage(headers=[("x-trailer", "yes")])))
body = b""
while True:
    ev = c.next_event()
    if ev is h11.NEED_DATA:
        c.receive_data(s.recv(65536))
        continue
    if isinstance(ev, h11.Response):
        status = ev.status_code
    elif isinstance(ev, h11.Data):
        body += ev.data
    elif isinstance(ev, h11.EndOfMessage):
        break
print(status, body.decode())
"#;
    let r = Command::new("python3")
        .args(["-c", script])
        .arg(gw.addr().port().to_string())
        .arg("/up/h11")
        .arg(MIB.to_string())
        .arg(&file)
        .output()
        .expect("python3 with h11 (scripts/test installs it)");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        format!("200 count={len} mismatches=0"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let u = spliced(&gw).1 - before.1;
    assert!(
        u > len - 16 * 1024 - 7 * SHORT_READ,
        "spliced {u} of {len} bytes of h11's upload"
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&out);
}
