//! Full-duplex proxying: the request body goes up while the response comes
//! down. The backends here answer at once and echo the request body back
//! as they read it, through small socket buffers, so a proxy that sends
//! the whole body before it reads the response stalls: the backend blocks
//! writing the echo nobody reads, stops reading, and the proxy's write of
//! the body waits forever. Such a stall shows as the client's 10 s read
//! timeout with a message that says so; nothing here times anything else.
//!
//! Each byte follows the stamped pattern of tests/support (loss,
//! duplication, reordering and corruption all fail), and the gateway's peak
//! resident memory is checked to stay bounded while 64 MiB go each way.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use support::*;

const MIB: u64 = 1 << 20;

/// Peak resident memory allowed for the one-shard gateway (as in
/// tests/streaming.rs).
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Socket buffers of the echo backend: small, so that a half-duplex proxy
/// stalls after a few hundred KiB instead of several MiB.
const BACKEND_SOCKET_BUF: usize = 64 * 1024;

/// What the echo backend does with each request.
#[derive(Clone, Copy)]
enum Echo {
    /// Answers 200 at once (Content-Length for a Content-Length request,
    /// chunked for a chunked one) and echoes the body as it reads it.
    Whole,
    /// As `Whole`, but closes the connection after echoing this many bytes.
    CloseAfter(u64),
}

/// What the backend saw, one message per connection it served.
#[derive(Debug)]
enum Seen {
    /// A request body read whole (its length).
    Body(u64),
    /// The connection ended inside a body after this many bytes.
    Cut(u64),
}

/// Starts an echo backend; its events come on the returned channel.
fn echo_backend(mode: Echo) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    // Accepted sockets inherit these.
    sock.set_recv_buffer_size(BACKEND_SOCKET_BUF)
        .expect("SO_RCVBUF");
    sock.set_send_buffer_size(BACKEND_SOCKET_BUF)
        .expect("SO_SNDBUF");
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .expect("bind");
    sock.listen(64).expect("listen");
    let listener: TcpListener = sock.into();
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let tx = tx.clone();
            thread::spawn(move || serve_echo(s, mode, tx));
        }
    });
    (addr, rx)
}

/// Serves requests on one connection until it ends.
fn serve_echo(s: TcpStream, mode: Echo, tx: mpsc::Sender<Seen>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::with_capacity(64 * 1024, s);
    loop {
        let Ok(head) = read_head(&mut r, 64 * 1024) else {
            return;
        };
        let Some(req) = parse_backend_request(&head) else {
            return;
        };
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let len: u64 = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let head_out = if chunked {
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
        } else {
            format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
        };
        if w.write_all(head_out.as_bytes()).is_err() {
            let _ = tx.send(Seen::Cut(0));
            return;
        }
        let limit = match mode {
            Echo::Whole => u64::MAX,
            Echo::CloseAfter(n) => n,
        };
        let result = if chunked {
            echo_chunked(&mut r, &mut w, limit)
        } else {
            echo_length(&mut r, &mut w, len, limit)
        };
        match result {
            Ok(n) => {
                let _ = tx.send(Seen::Body(n));
            }
            Err(n) => {
                if matches!(mode, Echo::CloseAfter(_)) {
                    // A clean close: everything echoed reaches the
                    // gateway, then the end of the stream. What the
                    // gateway still sends is read and dropped until it
                    // closes too.
                    let _ = w.shutdown(Shutdown::Write);
                    let _ = std::io::copy(&mut r, &mut std::io::sink());
                }
                let _ = tx.send(Seen::Cut(n));
                return;
            }
        }
    }
}

/// Echoes a Content-Length body. `Err(n)`: the connection ended (or
/// `limit` was reached) after `n` bytes.
fn echo_length(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    len: u64,
    limit: u64,
) -> Result<u64, u64> {
    let mut done = 0u64;
    while done < len {
        if done >= limit {
            return Err(done);
        }
        let buf = match r.fill_buf() {
            Ok([]) | Err(_) => return Err(done),
            Ok(b) => b,
        };
        let n = (buf.len() as u64).min(len - done).min(limit - done) as usize;
        if w.write_all(&buf[..n]).is_err() {
            return Err(done);
        }
        r.consume(n);
        done += n as u64;
    }
    Ok(done)
}

/// Echoes a chunked body as chunks of its own. `Err(n)` as for
/// [`echo_length`].
fn echo_chunked(r: &mut BufReader<TcpStream>, w: &mut TcpStream, limit: u64) -> Result<u64, u64> {
    let mut done = 0u64;
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return Err(done),
            Ok(_) => {}
        }
        let size = u64::from_str_radix(line.trim_end(), 16).map_err(|_| done)?;
        if size == 0 {
            // The gateway re-frames: no extensions, no trailers.
            let mut end = String::new();
            let _ = r.read_line(&mut end);
            if end != "\r\n" {
                return Err(done);
            }
            w.write_all(b"0\r\n\r\n").map_err(|_| done)?;
            return Ok(done);
        }
        let mut left = size;
        while left > 0 {
            if done >= limit {
                return Err(done);
            }
            let buf = match r.fill_buf() {
                Ok([]) | Err(_) => return Err(done),
                Ok(b) => b,
            };
            let n = (buf.len() as u64).min(left).min(limit - done) as usize;
            let mut out = format!("{n:x}\r\n").into_bytes();
            out.extend_from_slice(&buf[..n]);
            out.extend_from_slice(b"\r\n");
            r.consume(n);
            w.write_all(&out).map_err(|_| done)?;
            left -= n as u64;
            done += n as u64;
        }
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).map_err(|_| done)?;
    }
}

/// A one-shard gateway in front of `backend`, with these body limits.
fn gateway(backend: SocketAddr, max_body_bytes: u64, body_read_timeout_ms: u64) -> Gateway {
    Gateway::start(&unpinned(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[server.limits]
max_body_bytes = @M@
body_read_timeout_ms = @T@

[[upstreams]]
name = "echo"
targets = [{ address = "@B@" }]
timeout_ms = 60000

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://echo" }
"#,
        &[
            ("B", backend.to_string()),
            ("M", max_body_bytes.to_string()),
            ("T", body_read_timeout_ms.to_string()),
        ],
    )))
}

/// What a stall looks like to the client.
const STALLED: &str = "no response bytes for 10 s while the request body was still going up: \
     the gateway does not move the request body and the response at once (half-duplex deadlock)";

/// Sends `len` bytes of pattern as a request body from another thread
/// while this one reads the echo; checks every byte of it.
fn echo_through(gw: &Gateway, c: &mut Client, len: u64, chunked: bool) {
    let framing = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {len}")
    };
    c.send(format!("POST /echo HTTP/1.1\r\nhost: t\r\n{framing}\r\n\r\n").as_bytes());
    let mut w = c.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        let block = pattern_block();
        if chunked {
            write_pattern_chunked(&mut w, len, &block)
        } else {
            write_pattern(&mut w, len, &block)
        }
    });
    let mut check = PatternCheck::default();
    let r = c
        .read_response_with(false, &mut |d| check.feed(d))
        .unwrap_or_else(|e| match e {
            ReadError::Timeout => panic!("{STALLED} ({} of {len} bytes echoed)", check.offset),
            e => panic!(
                "the echo failed after {} of {len} bytes: {e:?}\n{}",
                check.offset,
                gw.stderr()
            ),
        });
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (check.offset, check.mismatches),
        (len, 0),
        "the echo must bring back every byte, in order"
    );
    sender
        .join()
        .expect("sender thread")
        .expect("the whole request body was taken");
}

fn echo_test(chunked: bool) {
    let (b, seen) = echo_backend(Echo::Whole);
    let gw = gateway(b, 1 << 30, 60_000);
    let mut c = gw.client();
    // Warm up: the connection, the pool and the buffers, then the baseline.
    echo_through(&gw, &mut c, 1024, chunked);
    let baseline = gw.peak_rss_kib();
    let len = 64 * MIB;
    echo_through(&gw, &mut c, len, chunked);
    let peak = gw.peak_rss_kib();
    eprintln!("gateway VmHWM {peak} KiB (after warm-up: {baseline} KiB)");
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "gateway peak RSS {peak} KiB exceeds {PEAK_RSS_LIMIT_KIB} KiB (warm-up peak {baseline} KiB)"
    );
    let got: Vec<_> = seen.try_iter().collect();
    assert!(
        matches!(got[..], [Seen::Body(1024), Seen::Body(n)] if n == len),
        "the backend must get both bodies whole: {got:?}"
    );
    // The same client connection goes on.
    echo_through(&gw, &mut c, 3, chunked);
}

#[test]
fn a_content_length_body_is_echoed_while_it_is_still_being_sent() {
    echo_test(false);
}

#[test]
fn a_chunked_body_is_echoed_as_chunks_while_it_is_still_being_sent() {
    echo_test(true);
}

/// The backend answers, echoes 8 MiB of a 64 MiB body and closes: the
/// client gets the backend's bytes in order, unchanged, and then a closed
/// connection (never a hang), and the gateway serves the next request.
/// The client is still sending its body when the gateway closes, so the
/// close can end in a reset, which may destroy the tail the client has not
/// read yet (the gateway lingers to make that rare): the client gets a
/// prefix of the 8 MiB, not always all of it.
fn backend_closes_mid_stream(chunked: bool) {
    let cut = 8 * MIB;
    let (b, seen) = echo_backend(Echo::CloseAfter(cut));
    let gw = gateway(b, 1 << 30, 60_000);
    let mut c = gw.client();
    let len = 64 * MIB;
    let framing = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {len}")
    };
    c.send(format!("POST /echo HTTP/1.1\r\nhost: t\r\n{framing}\r\n\r\n").as_bytes());
    let mut w = c.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        let block = pattern_block();
        let _ = if chunked {
            write_pattern_chunked(&mut w, len, &block)
        } else {
            write_pattern(&mut w, len, &block)
        };
    });
    let mut check = PatternCheck::default();
    let r = c.read_response_with(false, &mut |d| check.feed(d));
    match r {
        Err(ReadError::Timeout) => panic!("{STALLED} ({} bytes echoed)", check.offset),
        Err(ReadError::Truncated(r)) if r.status == 200 => {}
        other => panic!("the response must end cut short, not {other:?}"),
    }
    assert_eq!(
        check.mismatches, 0,
        "the bytes must come in order, unchanged"
    );
    assert!(
        check.offset > 0 && check.offset <= cut,
        "the client must get a prefix of what the backend sent before it closed: {} of {cut}",
        check.offset
    );
    sender.join().expect("sender thread");
    match seen.recv_timeout(Duration::from_secs(10)) {
        Ok(Seen::Cut(n)) => assert_eq!(n, cut),
        other => panic!("the backend must have closed after {cut} bytes: {other:?}"),
    }
    let line = gw.wait_stderr_line(Duration::from_secs(5), |l| {
        l.contains("response body cut short")
    });
    assert!(line.is_some(), "the cut is logged:\n{}", gw.stderr());
    // The gateway is fine afterwards.
    let mut c = gw.client();
    echo_through(&gw, &mut c, 1000, chunked);
}

#[test]
fn a_backend_closing_mid_stream_ends_the_client_connection() {
    backend_closes_mid_stream(false);
}

#[test]
fn a_backend_closing_mid_chunked_stream_ends_the_client_connection() {
    backend_closes_mid_stream(true);
}

/// A client that resets its connection halfway through its body while the
/// echo streams: the gateway closes the backend's connection too.
#[test]
fn a_client_reset_mid_stream_closes_the_backend_connection() {
    let (b, seen) = echo_backend(Echo::Whole);
    let gw = gateway(b, 1 << 30, 60_000);
    let mut c = gw.client();
    let len = 64 * MIB;
    c.send(format!("POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {len}\r\n\r\n").as_bytes());
    let sent = 4 * MIB;
    let mut w = c.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || write_pattern(&mut w, sent, &pattern_block()));
    // Read the echo of what was sent (the head, then 4 MiB of body).
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut body = 0u64;
    let mut head_end = None;
    while body < sent {
        let n = match c.stream.read(&mut buf) {
            Ok(0) => panic!("closed after {body} bytes of echo"),
            Ok(n) => n,
            Err(e) => panic!("{STALLED} ({body} bytes echoed): {e}"),
        };
        match head_end {
            Some(_) => body += n as u64,
            None => {
                got.extend_from_slice(&buf[..n]);
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    head_end = Some(i + 4);
                    body = (got.len() - i - 4) as u64;
                }
            }
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    sender.join().expect("sender thread").expect("4 MiB sent");
    // Close with SO_LINGER 0: a reset, with the body 60 MiB short.
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(c);
    match seen.recv_timeout(Duration::from_secs(20)) {
        Ok(Seen::Cut(n)) => assert!(n < len, "{n}"),
        other => panic!("the backend's connection must end with the client's: {other:?}"),
    }
    // The gateway is fine afterwards.
    let mut c = gw.client();
    echo_through(&gw, &mut c, 1000, false);
}

/// A client that stops sending its body while the echo streams: after
/// body_read_timeout_ms the gateway closes both connections (the response
/// had begun, so there is no 408 to send).
#[test]
fn a_client_silent_mid_body_is_closed_after_the_body_read_timeout() {
    let (b, seen) = echo_backend(Echo::Whole);
    let gw = gateway(b, 1 << 30, 300);
    let mut c = gw.client();
    let len = 4 * MIB;
    c.send(format!("POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {len}\r\n\r\n").as_bytes());
    write_pattern(&mut c.stream, MIB, &pattern_block()).expect("first MiB");
    let mut check = PatternCheck::default();
    let r = c.read_response_with(false, &mut |d| check.feed(d));
    match r {
        Err(ReadError::Truncated(r)) if r.status == 200 => {}
        Err(ReadError::Timeout) => {
            panic!("the gateway kept a connection whose client went silent mid-body")
        }
        other => panic!("the response must end cut short, not {other:?}"),
    }
    assert_eq!((check.offset, check.mismatches), (MIB, 0));
    match seen.recv_timeout(Duration::from_secs(10)) {
        Ok(Seen::Cut(n)) => assert_eq!(n, MIB),
        other => panic!("the backend's connection must be closed: {other:?}"),
    }
    let line = gw.wait_stderr_line(Duration::from_secs(5), |l| {
        l.contains("request body failed after the response began")
    });
    assert!(line.is_some(), "the cut is logged:\n{}", gw.stderr());
}

/// A chunked body that passes max_body_bytes after the echo has begun: the
/// client's connection closes, the backend's too, and the backend never
/// gets the end of a body the gateway refused.
#[test]
fn a_chunked_body_over_the_limit_mid_stream_is_cut_on_both_sides() {
    let (b, seen) = echo_backend(Echo::Whole);
    let gw = gateway(b, 2 * MIB, 60_000);
    let mut c = gw.client();
    c.send(b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n");
    let mut w = c.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        let _ = write_pattern_chunked(&mut w, 8 * MIB, &pattern_block());
    });
    let mut check = PatternCheck::default();
    let r = c.read_response_with(false, &mut |d| check.feed(d));
    match r {
        Err(ReadError::Truncated(r)) if r.status == 200 => assert_eq!(check.mismatches, 0),
        // The limit was passed before the backend's answer came: the
        // gateway answers instead.
        Ok(r) if r.status == 413 => {}
        Err(ReadError::Timeout) => panic!("{STALLED} ({} bytes echoed)", check.offset),
        other => panic!("the response must end cut short, not {other:?}"),
    }
    assert!(
        check.offset <= 2 * MIB,
        "echoed {} bytes of a body limited to 2 MiB",
        check.offset
    );
    sender.join().expect("sender thread");
    match seen.recv_timeout(Duration::from_secs(10)) {
        Ok(Seen::Cut(n)) => assert!(n <= 2 * MIB, "{n}"),
        other => panic!("the backend must not get a finished body: {other:?}"),
    }
}
