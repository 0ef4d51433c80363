//! The connection loop over real loopback sockets on a glommio executor,
//! with a service of the test's own: a connection handed over after a
//! `101` keeps its socket and the bytes already read past the request.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (loopback listeners and clients it opens,
//! executors, its own writes), so a failure is a failing test.

use super::*;
use crate::net::Listener;
use futures_lite::AsyncWriteExt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;

fn limits() -> Limits {
    Limits {
        max_request_line_bytes: 8192,
        max_header_bytes: 16384,
        max_headers: 100,
        max_body_bytes: 1 << 20,
        header_read_timeout: Duration::from_secs(5),
        body_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        splice_min_bytes: 0,
        splice_pipe_bytes: 64 * 1024,
    }
}

/// Runs `test` on a glommio executor of its own.
fn on_executor(test: impl std::future::Future<Output = ()> + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 * 1024)
        .make()
        .unwrap()
        .run(test);
}

/// A loopback listener on a free port, and its address.
fn loopback() -> (Listener, SocketAddr) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    (
        Listener::from_fd(OwnedFd::from(std_listener)).unwrap(),
        addr,
    )
}

/// Waits for a client thread (whose assertions run in it) without
/// blocking the executor that serves it; a failed assertion there fails
/// the test here.
async fn joined<T>(t: std::thread::JoinHandle<T>) -> T {
    while !t.is_finished() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    t.join().unwrap()
}

/// Waits up to 5 s for every connection's registration to go; then
/// checks that none is left.
async fn no_connections_left(c: &Connections) {
    let started = Instant::now();
    while c.live() > 0 && started.elapsed() < Duration::from_secs(5) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.live(), 0);
}

fn head_limits() -> HeadLimits {
    HeadLimits {
        max_request_line: 8192,
        max_head: 16384,
        max_headers: 100,
    }
}

/// Answers every request with `101` and hands the connection to an echo
/// task, which first echoes what the client sent after the head.
#[derive(Default)]
struct Switcher {
    connections: Rc<Connections>,
    handed_over: Cell<u32>,
}

impl Service for Switcher {
    fn limits(&self) -> Limits {
        limits()
    }

    fn head_limits(&self) -> HeadLimits {
        head_limits()
    }

    fn connections(&self) -> &Rc<Connections> {
        &self.connections
    }

    async fn handle(&self, conn: &mut Conn, head: &RequestHead) -> Flow {
        conn.consume(head.len);
        conn.stream
            .send(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n",
            )
            .await
            .unwrap();
        self.handed_over.set(self.handed_over.get() + 1);
        conn.handover = Some(Box::new(|up: Upgraded| {
            glommio::spawn_local(echo(up)).detach();
        }));
        Flow::Handover
    }

    async fn refuse(&self, _conn: &mut Conn, status: u16, message: &'static str) {
        panic!("refused: {status} {message}");
    }

    fn note_tls_failure(&self, _peer: SocketAddr, _why: &str) {}
}

async fn echo(up: Upgraded) {
    let Upgraded {
        mut stream,
        buffered,
        guard,
        ..
    } = up;
    if !buffered.is_empty() {
        stream.send(&buffered).await.unwrap();
    }
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => stream.write_all(&buf[..n]).await.unwrap(),
        }
    }
    drop(guard);
}

#[test]
fn a_connection_is_handed_over_with_the_bytes_read_past_the_request() {
    on_executor(async {
        let (listener, addr) = loopback();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The head and the first bytes of the new protocol in one
            // write: "early" is read by the connection loop.
            c.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nearly")
                    .unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut status = String::new();
            r.read_line(&mut status).unwrap();
            assert_eq!(status, "HTTP/1.1 101 Switching Protocols\r\n");
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                r.read_line(&mut line).unwrap();
            }
            let mut got = [0u8; 5];
            r.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"early");
            c.write_all(b"later").unwrap();
            r.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"later");
        });
        let svc = Rc::new(Switcher::default());
        let (sock, peer) = listener.accept().await.unwrap();
        glommio::spawn_local(serve(svc.clone(), sock, peer, false)).detach();
        joined(client).await;
        assert_eq!(svc.handed_over.get(), 1);
        // The client closed: the echo task ends and drops the guard.
        no_connections_left(&svc.connections).await;
    });
}

/// Sends each request's head and the body bytes that came with it upstream
/// in one write ([`Conn::sent_ahead`]), then pumps the rest of the body,
/// and answers `ok <body length>`.
struct Ahead {
    connections: Rc<Connections>,
    upstream: SocketAddr,
}

impl Service for Ahead {
    fn limits(&self) -> Limits {
        limits()
    }

    fn head_limits(&self) -> HeadLimits {
        head_limits()
    }

    fn connections(&self) -> &Rc<Connections> {
        &self.connections
    }

    async fn handle(&self, conn: &mut Conn, head: &RequestHead) -> Flow {
        conn.consume(head.len);
        let sock = crate::net::Socket::connect(self.upstream, Duration::from_secs(5))
            .await
            .unwrap();
        let mut up: UpstreamStream = crate::tls::stream::Stream::Plain(sock);
        let n = match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let ahead = conn.body_start(n).to_vec();
        up.send_two(b"[head]", &ahead).await.unwrap();
        conn.sent_ahead(ahead.len());
        let moved = conn
            .pump_body(head.framing, &limits(), Some(&mut up), false)
            .await
            .unwrap();
        let body = format!("ok {moved}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.stream.send(resp.as_bytes()).await.unwrap();
        Flow::KeepAlive
    }

    async fn refuse(&self, _conn: &mut Conn, status: u16, message: &'static str) {
        panic!("refused: {status} {message}");
    }

    fn note_tls_failure(&self, _peer: SocketAddr, _why: &str) {}
}

/// Body bytes sent upstream with the head are not sent again, the rest of
/// the body follows them, and the request pipelined behind the body is
/// read as a request: once with the whole body read with the head, once
/// with only its first half.
#[test]
fn body_bytes_sent_ahead_with_the_head_are_skipped_by_the_pump() {
    on_executor(async {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up_addr = upstream.local_addr().unwrap();
        // Each upstream connection: everything it receives, until the
        // gateway side closes it.
        let up_thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = upstream.accept().unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).unwrap();
                got.push(String::from_utf8(all).unwrap());
            }
            got
        });
        let (listener, addr) = loopback();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let answer = |r: &mut BufReader<std::net::TcpStream>| {
                let mut line = String::new();
                let mut len = 0;
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    if let Some(v) = line.strip_prefix("content-length: ") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                String::from_utf8(body).unwrap()
            };
            // The whole body and the next request in one write.
            c.write_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
            assert_eq!(answer(&mut r), "ok 10");
            assert_eq!(answer(&mut r), "ok 0");
            // Half of the body with the head, the rest later.
            c.write_all(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcde")
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            c.write_all(b"fghij").unwrap();
            assert_eq!(answer(&mut r), "ok 10");
        });
        let svc = Rc::new(Ahead {
            connections: Rc::default(),
            upstream: up_addr,
        });
        let (sock, peer) = listener.accept().await.unwrap();
        glommio::spawn_local(serve(svc.clone(), sock, peer, false)).detach();
        joined(client).await;
        assert_eq!(
            joined(up_thread).await,
            ["[head]0123456789", "[head]", "[head]abcdefghij"]
        );
    });
}

/// Panics while it serves its first request; answers `200 ok` after.
#[derive(Default)]
struct Panicky {
    connections: Rc<Connections>,
    served: Cell<u32>,
}

impl Service for Panicky {
    fn limits(&self) -> Limits {
        limits()
    }

    fn head_limits(&self) -> HeadLimits {
        head_limits()
    }

    fn connections(&self) -> &Rc<Connections> {
        &self.connections
    }

    async fn handle(&self, conn: &mut Conn, head: &RequestHead) -> Flow {
        conn.consume(head.len);
        let n = self.served.get();
        self.served.set(n + 1);
        if n == 0 {
            panic!("a bug met while serving");
        }
        conn.stream
            .send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        Flow::KeepAlive
    }

    async fn refuse(&self, _conn: &mut Conn, status: u16, message: &'static str) {
        panic!("refused: {status} {message}");
    }

    fn note_tls_failure(&self, _peer: SocketAddr, _why: &str) {}
}

/// A panic while a connection is served closes that connection only: its
/// registration goes, and the executor (the shard) serves the next
/// connection. It used to unwind through the executor and stop it.
#[test]
fn a_panic_while_serving_closes_only_that_connection() {
    on_executor(async {
        let (listener, addr) = loopback();
        let client = std::thread::spawn(move || {
            let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
            // The first connection's request meets the panic: the
            // connection closes without an answer.
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(get).unwrap();
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            assert!(got.is_empty(), "{got:?}");
            // The next is served.
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(get).unwrap();
            let mut got = [0u8; 40];
            c.read_exact(&mut got).unwrap();
            assert!(got.ends_with(b"\r\n\r\nok"), "{got:?}");
        });
        let svc = Rc::new(Panicky::default());
        for _ in 0..2 {
            let (sock, peer) = listener.accept().await.unwrap();
            glommio::spawn_local(serve(svc.clone(), sock, peer, false)).detach();
        }
        joined(client).await;
        assert_eq!(svc.served.get(), 2);
        // The second client closed too; no registration is left.
        no_connections_left(&svc.connections).await;
    });
}
