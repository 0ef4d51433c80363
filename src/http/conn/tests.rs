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
        HeadLimits {
            max_request_line: 8192,
            max_head: 16384,
            max_headers: 100,
        }
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
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 * 1024)
        .make()
        .unwrap()
        .run(async {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = std_listener.local_addr().unwrap();
            let listener = Listener::from_fd(OwnedFd::from(std_listener)).unwrap();
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
            // The client's assertions run in its thread; wait for it
            // without blocking the executor that serves it.
            while !client.is_finished() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            client.join().unwrap();
            assert_eq!(svc.handed_over.get(), 1);
            // The client closed: the echo task ends and drops the guard.
            let started = Instant::now();
            while svc.connections.live() > 0 && started.elapsed() < Duration::from_secs(5) {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(svc.connections.live(), 0);
        });
}
