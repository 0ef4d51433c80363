//! The reactor over real loopback sockets, on a real glommio executor.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (loopback listeners and clients it opens,
//! executors, its own writes), so a failure is a failing test; nothing a
//! client or an operator's config controls reaches them.

use super::*;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::io::{Read, Write};

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 * 1024)
        .make()
        .unwrap()
        .run(f)
}

/// The ring's settings the tests use.
const URING: uring::IoMode = uring::IoMode::Uring {
    buffers: 64,
    entries: 64,
};

/// [`run`] with this thread's sockets moving their bytes by `io`.
fn run_on<T>(io: uring::IoMode, f: impl std::future::Future<Output = T>) -> T {
    uring::set_io_mode(io);
    let out = run(f);
    uring::set_io_mode(uring::IoMode::Epoll);
    out
}

/// One test, run on the epoll path and on the io_uring path: the test
/// `name::epoll` and the test `name::uring`.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn epoll() {
                super::$name(super::uring::IoMode::Epoll)
            }
            #[test]
            fn uring() {
                super::$name(super::URING)
            }
        }
    };
}

/// Waits for a client thread without blocking the executor: on the ring,
/// what a task wrote goes to the kernel when the reactor next runs.
async fn joined<T>(h: std::thread::JoinHandle<T>) -> T {
    while !h.is_finished() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    h.join().unwrap()
}

/// Everything `c` receives until the peer's end of stream, read on a
/// thread of its own (see [`joined`]).
async fn read_all(mut c: std::net::TcpStream) -> Vec<u8> {
    joined(std::thread::spawn(move || {
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        back
    }))
    .await
}

fn listener() -> (Listener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (Listener::from_fd(OwnedFd::from(l)).unwrap(), addr)
}

on_both!(accept_read_write_and_eof_over_loopback);
fn accept_read_write_and_eof_over_loopback(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            // Two writes with a pause: the second arrives after the server
            // drained the first and must still wake it (edge-triggered).
            c.write_all(b"hello ").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            c.write_all(b"world").unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            back
        });
        let (mut s, peer) = l.accept().await.unwrap();
        assert!(peer.ip().is_loopback());
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello world");
        // Head and body in one sendmsg, as the proxy sends them.
        let parts = [IoSlice::new(b"echo: "), IoSlice::new(&got)];
        assert_eq!(s.write_vectored(&parts).await.unwrap(), 17);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(joined(client).await, b"echo: hello world");
    });
}

on_both!(read_timeout_fires_and_a_later_read_still_works);
fn read_timeout_fires_and_a_later_read_still_works(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            rx.recv().unwrap();
            c.write_all(b"late").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let (mut s, _) = l.accept().await.unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)));
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
        tx.send(()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10)));
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"late");
        joined(client).await;
    });
}

#[test]
fn an_earlier_deadline_is_not_held_up_by_a_later_one() {
    // Socket A waits with a 10 s timeout, then B with 100 ms: B must time
    // out on time although the timer task was sleeping towards A's.
    run(async {
        let (l, addr) = listener();
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        let (a, _) = l.accept().await.unwrap();
        let (mut b, _) = l.accept().await.unwrap();
        a.set_read_timeout(Some(Duration::from_secs(10)));
        let slow = glommio::spawn_local(async move {
            let mut a = a;
            let mut buf = [0u8; 4];
            let _ = a.read(&mut buf).await;
        });
        glommio::timer::sleep(Duration::from_millis(20)).await;
        b.set_read_timeout(Some(Duration::from_millis(100)));
        let started = Instant::now();
        let mut buf = [0u8; 4];
        let e = b.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        slow.cancel().await;
    });
}

on_both!(connect_refused_and_connect_ok);
fn connect_refused_and_connect_ok(io: uring::IoMode) {
    run_on(io, async {
        // A port nobody listens on: bind, note it, close.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let e = Socket::connect(addr, Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);

        let srv = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = srv.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = srv.accept().unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            c.write_all(&b).unwrap();
        });
        let mut s = Socket::connect(addr, Duration::from_secs(2)).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        joined(t).await;
    });
}

on_both!(closed_sockets_free_their_slot_and_stale_events_are_ignored);
fn closed_sockets_free_their_slot_and_stale_events_are_ignored(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let before = Reactor::current().unwrap().registered();
        for _ in 0..50 {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            let (s, _) = l.accept().await.unwrap();
            drop(s);
            // Input for a closed socket: must reach no one.
            let _ = c.write_all(b"x");
        }
        let (mut s, _) = {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"live").unwrap();
            std::mem::forget(c);
            l.accept().await.unwrap()
        };
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"live");
        assert_eq!(Reactor::current().unwrap().registered(), before + 1);
    });
}

on_both!(a_large_write_waits_for_room_and_completes);
fn a_large_write_waits_for_room_and_completes(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let reader = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let mut all = Vec::new();
            c.read_to_end(&mut all).unwrap();
            all.len()
        });
        let (mut s, _) = l.accept().await.unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10)));
        let big = vec![7u8; 8 << 20];
        s.write_all(&big).await.unwrap();
        drop(s);
        assert_eq!(joined(reader).await, 8 << 20);
    });
}

thread_local! {
    static RESUMED: RefCell<Vec<(u32, Wake)>> = const { RefCell::new(Vec::new()) };
}

fn note_resumed(key: u32, w: Wake) {
    RESUMED.with(|r| r.borrow_mut().push((key, w)));
}

on_both!(parked_socket_resumes_on_input_times_out_and_declines_when_ready);
fn parked_socket_resumes_on_input_times_out_and_declines_when_ready(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let mut buf = [0u8; 8];

        // 1. Input after parking resumes it with Ready.
        let mut c1 = std::net::TcpStream::connect(addr).unwrap();
        let (mut s1, _) = l.accept().await.unwrap();
        // Spend the optimistic readiness so that park really waits.
        let drained = futures_lite::future::poll_fn(|cx| s1.poll_recv(cx, &mut buf));
        assert!(futures_lite::future::poll_once(drained).await.is_none());
        assert!(s1.park(Instant::now() + Duration::from_secs(10), note_resumed, 1));

        // 2. No input: the deadline resumes it with TimedOut.
        let _c2 = std::net::TcpStream::connect(addr).unwrap();
        let (s2, _) = l.accept().await.unwrap();
        let drained = futures_lite::future::poll_fn(|cx| s2.poll_recv(cx, &mut buf));
        assert!(futures_lite::future::poll_once(drained).await.is_none());
        assert!(s2.park(Instant::now() + Duration::from_millis(100), note_resumed, 2));

        glommio::timer::sleep(Duration::from_millis(50)).await;
        assert!(
            RESUMED.with(|r| r.borrow().is_empty()),
            "resumed with no input"
        );
        c1.write_all(b"wake").unwrap();

        // 3. Input already there: park declines. On the ring, input is
        // known only once its receive completed: parking arms it, and the
        // socket is resumed with Ready at once.
        let mut c3 = std::net::TcpStream::connect(addr).unwrap();
        c3.write_all(b"now").unwrap();
        let (s3, _) = l.accept().await.unwrap();
        let parked = s3.park(Instant::now() + Duration::from_secs(10), note_resumed, 3);
        assert!(!parked || io != uring::IoMode::Epoll);

        glommio::timer::sleep(Duration::from_millis(300)).await;
        let got = RESUMED.with(|r| r.borrow().clone());
        assert!(got.contains(&(1, Wake::Ready)), "{got:?}");
        assert!(got.contains(&(2, Wake::TimedOut)), "{got:?}");
        if parked {
            assert!(got.contains(&(3, Wake::Ready)), "{got:?}");
            assert_eq!(got.len(), 3, "{got:?}");
        } else {
            assert_eq!(got.len(), 2, "{got:?}");
        }
        // The resumed socket reads what woke it.
        let n = s1.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"wake");
    });
}

on_both!(timer_heap_does_not_grow_with_closed_sockets);
/// Regression (found in self-review): entries of closed sockets stayed in
/// the timer heap until their deadline, so many short connections with a
/// long timeout grew it without bound.
fn timer_heap_does_not_grow_with_closed_sockets(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        for _ in 0..5000 {
            let _c = std::net::TcpStream::connect(addr).unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3600)));
            // One wait, which schedules an hour-long deadline, then close.
            let mut b = [0u8; 1];
            let r = futures_lite::future::poll_once(s.read(&mut b)).await;
            assert!(r.is_none());
            drop(s);
        }
        let n = Reactor::current().unwrap().timer_entries();
        assert!(n <= 4 * 1024, "{n} timer entries for 5000 closed sockets");
    });
}

/// A socket that goes back to an upstream pool must not keep the last
/// waiting task's waker (and so that task) alive.
#[test]
fn forget_wakers_releases_the_last_waiter() {
    struct Count;
    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    run(async {
        let (l, addr) = listener();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().await.unwrap();
        let count = std::sync::Arc::new(Count);
        let waker = std::task::Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut buf = [0u8; 4];
        assert!(s.poll_recv(&cx, &mut buf).is_pending());
        drop(waker);
        assert_eq!(
            std::sync::Arc::strong_count(&count),
            2,
            "the slot holds the waker"
        );
        s.forget_wakers();
        assert_eq!(std::sync::Arc::strong_count(&count), 1, "forgotten");
    });
}

on_both!(is_quiet_peeks_without_taking);
fn is_quiet_peeks_without_taking(io: uring::IoMode) {
    run_on(io, async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = Socket::connect(addr, Duration::from_secs(5)).await.unwrap();
        let (mut peer, _) = l.accept().unwrap();
        // A mark of "now": the reactor has not polled since, so each
        // answer comes from a peek.
        assert!(s.is_quiet(s.polls()), "nothing sent yet");
        peer.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!s.is_quiet(s.polls()), "a byte waits");
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 1, "the peek took nothing");
        assert!(s.is_quiet(s.polls()), "drained");
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!s.is_quiet(s.polls()), "end of stream");
    });
}

/// Waits (letting the shard's poller run) until the reactor has polled
/// since `mark`.
async fn polled_since(s: &Socket, mark: u64) {
    for _ in 0..1000 {
        if s.polls() != mark {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    panic!("the reactor never polled");
}

on_both!(is_quiet_trusts_the_reactor_once_it_has_polled);
fn is_quiet_trusts_the_reactor_once_it_has_polled(io: uring::IoMode) {
    run_on(io, async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = Socket::connect(addr, Duration::from_secs(5)).await.unwrap();
        let (mut peer, _) = l.accept().unwrap();
        // A short read leaves the socket drained in the reactor's eyes.
        peer.write_all(b"y").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        let mark = s.polls();
        polled_since(&s, mark).await;
        assert!(
            s.is_quiet(mark),
            "drained, and the reactor heard nothing since"
        );
        // A byte that arrives after the mark: the reactor's next poll hears
        // of it, and the answer is no, without the byte being taken.
        let mark = s.polls();
        peer.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        polled_since(&s, mark).await;
        assert!(
            !s.is_quiet(mark),
            "a byte arrived after the connection went idle"
        );
        assert_eq!(s.read(&mut buf).await.unwrap(), 1, "nothing was taken");
        // The end of stream, the same way.
        let mark = s.polls();
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        polled_since(&s, mark).await;
        assert!(!s.is_quiet(mark), "end of stream");
    });
}

on_both!(is_quiet_now_sees_a_close_the_reactor_has_not_polled_yet);
/// The window `is_quiet_now` closes: an end of stream that arrives after
/// the reactor's last poll is not in the reactor's state yet, so the cheap
/// answer is still "quiet"; the peek sees it. A pooled connection carrying
/// a request that cannot be sent again is checked the strict way.
fn is_quiet_now_sees_a_close_the_reactor_has_not_polled_yet(io: uring::IoMode) {
    run_on(io, async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = Socket::connect(addr, Duration::from_secs(5)).await.unwrap();
        let (mut peer, _) = l.accept().unwrap();
        peer.write_all(b"y").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        let mark = s.polls();
        polled_since(&s, mark).await;
        // The peer closes while this task holds the shard: no poll runs
        // between the close and the checks below.
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            s.is_quiet(mark),
            "the reactor has not heard of the close yet (the cheap answer)"
        );
        assert!(!s.is_quiet_now(), "the peek sees the end of stream");
    });
}

on_both!(a_listener_that_refuses_new_connections_keeps_its_backlog);
/// The drain's listener close: a listener told to refuse new connections
/// keeps those already in its backlog (accepted and served after), lets no
/// connection join it any more (a connect does not complete: its SYN is
/// dropped), and closing it then resets nothing. Without it, the late
/// connect completed into the backlog and the close reset it.
fn a_listener_that_refuses_new_connections_keeps_its_backlog(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        // Completed by the kernel into the backlog, not accepted yet.
        let mut early = std::net::TcpStream::connect(addr).unwrap();
        early.write_all(b"early").unwrap();
        l.refuse_new().unwrap();
        let late = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(
            late.as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut),
            "a connect completed after refuse_new: {late:?}"
        );
        let (mut s, _) = l
            .try_accept()
            .unwrap()
            .expect("the early connection is kept");
        assert!(
            l.try_accept().unwrap().is_none(),
            "something joined the backlog"
        );
        drop(l);
        let mut got = [0u8; 5];
        let mut n = 0;
        while n < got.len() {
            n += s.read(&mut got[n..]).await.unwrap();
        }
        assert_eq!(&got, b"early");
        assert_eq!(
            s.write_vectored(&[IoSlice::new(b"answer")]).await.unwrap(),
            6
        );
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_all(early).await, b"answer");
    });
}

on_both!(a_handshake_under_way_when_the_listener_refuses_new_ones_completes);
/// The drain's other half: a handshake under way when the listener starts
/// refusing new connections still completes into the backlog, and is
/// accepted. `TCP_DEFER_ACCEPT` holds one under way here: the client's
/// connect returns, but the listener takes the connection only with its
/// first data, which the client sends after `refuse_new`. With a filter
/// that dropped every packet (the SYNs and the last packet of such a
/// handshake alike), that data was dropped, the connection never joined
/// the backlog, and closing the listener reset the client.
fn a_handshake_under_way_when_the_listener_refuses_new_ones_completes(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let secs: libc::c_int = 10;
        // SAFETY: a valid option value of the size given, on a socket the
        // test owns.
        let set = unsafe {
            libc::setsockopt(
                l.sock.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&secs as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "TCP_DEFER_ACCEPT: {}", io::Error::last_os_error());
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            l.try_accept().unwrap().is_none(),
            "the handshake is not held under way (TCP_DEFER_ACCEPT)"
        );
        l.refuse_new().unwrap();
        c.write_all(b"late").unwrap();
        let mut accepted = None;
        for _ in 0..100 {
            accepted = l.try_accept().unwrap();
            if accepted.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (mut s, _) = accepted.expect("the handshake under way never joined the backlog");
        let mut got = [0u8; 4];
        let mut n = 0;
        while n < got.len() {
            n += s.read(&mut got[n..]).await.unwrap();
        }
        assert_eq!(&got, b"late");
        // New connections are still refused.
        let new = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(
            new.as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut),
            "a new connect completed after refuse_new: {new:?}"
        );
        // The accepted socket inherited the filter and still works both ways.
        assert_eq!(s.write(b"answer").await.unwrap(), 6);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_all(c).await, b"answer");
    });
}

// === splice ===

/// Bytes `i` of a spliced test body: a counter per 8 bytes, so a lost,
/// repeated or reordered piece shows.
fn counter_body(len: usize) -> Vec<u8> {
    (0..len.div_ceil(8) as u64)
        .flat_map(|i| i.to_le_bytes())
        .take(len)
        .collect()
}

/// A source socket (accepted; its peer thread writes `body` then waits for
/// `hold` before closing) and a destination socket (connected; its peer
/// thread reads everything, after `delay`).
async fn splice_pair(
    body: Vec<u8>,
    delay: Duration,
) -> (
    Socket,
    Socket,
    std::thread::JoinHandle<()>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    let (l, addr) = listener();
    let writer = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(&body).unwrap();
        // Keep the connection open until the reader side is done.
        let mut b = [0u8; 1];
        let _ = c.read(&mut b);
    });
    let (src, _) = l.accept().await.unwrap();
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = sink.accept().unwrap();
        std::thread::sleep(delay);
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        all
    });
    let dst = Socket::connect(sink_addr, Duration::from_secs(5))
        .await
        .unwrap();
    src.set_read_timeout(Some(Duration::from_secs(10)));
    dst.set_write_timeout(Some(Duration::from_secs(10)));
    (src, dst, writer, reader)
}

async fn run_transfer(
    t: &mut splice::Transfer,
    src: &Socket,
    dst: &Socket,
) -> Result<(), splice::SpliceError> {
    futures_lite::future::poll_fn(|cx| t.poll(cx, src, dst)).await
}

on_both!(splice_moves_a_body_exactly_through_a_small_pipe_to_a_slow_reader);
fn splice_moves_a_body_exactly_through_a_small_pipe_to_a_slow_reader(io: uring::IoMode) {
    run_on(io, async {
        // 3 MiB through a 64 KiB pipe; the reader starts late, so the
        // destination fills and the transfer waits for room many times.
        let body = counter_body(3 << 20);
        let (src, dst, writer, reader) =
            splice_pair(body.clone(), Duration::from_millis(200)).await;
        let mut t = splice::Transfer::new(body.len() as u64, 64 * 1024, splice::Toward::Client)
            .expect("a pipe");
        let before = splice::spliced_bytes();
        run_transfer(&mut t, &src, &dst).await.unwrap();
        assert_eq!(t.moved(), body.len() as u64);
        assert_eq!(splice::spliced_bytes().0 - before.0, body.len() as u64);
        drop(t);
        drop(dst);
        drop(src);
        let got = joined(reader).await;
        joined(writer).await;
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the spliced bytes differ from the body sent");
        // The pipe went back to the pool, empty.
        assert_eq!(splice::idle_pipes(), vec![0]);
    });
}

on_both!(a_pipe_left_holding_bytes_is_never_reused);
fn a_pipe_left_holding_bytes_is_never_reused(io: uring::IoMode) {
    run_on(io, async {
        // One good transfer leaves one idle pipe.
        let body = counter_body(200_000);
        let (src, dst, writer, reader) = splice_pair(body.clone(), Duration::ZERO).await;
        let mut t =
            splice::Transfer::new(body.len() as u64, 64 * 1024, splice::Toward::Client).unwrap();
        run_transfer(&mut t, &src, &dst).await.unwrap();
        drop((t, src, dst));
        assert_eq!(joined(reader).await, body);
        joined(writer).await;
        assert_eq!(splice::idle_pipes(), vec![0]);

        // The next transfer takes that pipe; its destination was reset by
        // its peer, so the splice that filled the pipe cannot empty it.
        let stale = vec![0xEE; 100_000];
        let (l, addr) = listener();
        let stale_writer = {
            let stale = stale.clone();
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(&stale).unwrap();
                let mut b = [0u8; 1];
                let _ = c.read(&mut b);
            })
        };
        let (src, _) = l.accept().await.unwrap();
        let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let dst = Socket::connect(sink_addr, Duration::from_secs(5))
            .await
            .unwrap();
        let (peer, _) = sink.accept().unwrap();
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer); // RST
        glommio::timer::sleep(Duration::from_millis(50)).await;
        // Wait until the stale bytes are all there, so one splice takes
        // them into the pipe.
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let mut t =
            splice::Transfer::new(stale.len() as u64, 64 * 1024, splice::Toward::Client).unwrap();
        assert!(splice::idle_pipes().is_empty(), "the idle pipe was taken");
        match run_transfer(&mut t, &src, &dst).await {
            Err(splice::SpliceError::Write(_)) => {}
            other => panic!("expected a write failure, got {other:?}"),
        }
        assert_eq!(t.moved(), 0);
        drop((t, src, dst));
        joined(stale_writer).await;
        // The pipe held the stale bytes: closed, not pooled.
        assert!(
            splice::idle_pipes().is_empty(),
            "a pipe holding bytes went back to the pool: {:?}",
            splice::idle_pipes()
        );

        // The body after it is exact.
        let body = counter_body(300_000);
        let (src, dst, writer, reader) = splice_pair(body.clone(), Duration::ZERO).await;
        let mut t =
            splice::Transfer::new(body.len() as u64, 64 * 1024, splice::Toward::Client).unwrap();
        run_transfer(&mut t, &src, &dst).await.unwrap();
        drop((t, src, dst));
        let got = joined(reader).await;
        joined(writer).await;
        assert!(got == body, "stale bytes reached the next body");
        assert_eq!(splice::idle_pipes(), vec![0]);
    });
}

on_both!(splice_reports_a_source_that_ends_early_and_one_that_is_silent);
fn splice_reports_a_source_that_ends_early_and_one_that_is_silent(io: uring::IoMode) {
    run_on(io, async {
        // The source sends 1000 of 5000 bytes, then closes.
        let (l, addr) = listener();
        let w = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(&[1u8; 1000]).unwrap();
        });
        let (src, _) = l.accept().await.unwrap();
        let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let r = std::thread::spawn(move || {
            let (mut c, _) = sink.accept().unwrap();
            let mut all = Vec::new();
            let _ = c.read_to_end(&mut all);
            all.len()
        });
        let dst = Socket::connect(sink_addr, Duration::from_secs(5))
            .await
            .unwrap();
        src.set_read_timeout(Some(Duration::from_secs(10)));
        joined(w).await;
        let mut t = splice::Transfer::new(5000, 64 * 1024, splice::Toward::Upstream).unwrap();
        match run_transfer(&mut t, &src, &dst).await {
            Err(splice::SpliceError::Closed) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
        assert_eq!(t.moved(), 1000);
        drop((t, dst));
        assert_eq!(joined(r).await, 1000);

        // A silent source: the read timeout ends the wait.
        let (l, addr) = listener();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let w = std::thread::spawn(move || {
            let _c = std::net::TcpStream::connect(addr).unwrap();
            let _ = rx.recv();
        });
        let (src, _) = l.accept().await.unwrap();
        let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = Socket::connect(sink.local_addr().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        src.set_read_timeout(Some(Duration::from_millis(100)));
        let mut t = splice::Transfer::new(5000, 64 * 1024, splice::Toward::Upstream).unwrap();
        match run_transfer(&mut t, &src, &dst).await {
            Err(splice::SpliceError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("expected a read timeout, got {other:?}"),
        }
        tx.send(()).unwrap();
        joined(w).await;
    });
}

/// A destination socket whose peer thread reads everything until the end
/// of stream.
async fn splice_sink() -> (Socket, std::thread::JoinHandle<Vec<u8>>) {
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = sink.accept().unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        all
    });
    let dst = Socket::connect(sink_addr, Duration::from_secs(5))
        .await
        .unwrap();
    dst.set_write_timeout(Some(Duration::from_secs(10)));
    (dst, reader)
}

on_both!(a_splice_sends_bytes_already_received_first_and_takes_no_more);
/// The source had received the start of the body (for a small body, all
/// of it and what follows) before the transfer started: on the ring, its
/// receive took those bytes into the socket's buffer. They go first, in
/// order; exactly the body's bytes are taken, and what follows it (a
/// chunk's framing, the next request) is left for a normal read.
fn a_splice_sends_bytes_already_received_first_and_takes_no_more(io: uring::IoMode) {
    run_on(io, async {
        for len in [10_000usize, 300_000] {
            let body = counter_body(len);
            let mut sent = b"HEAD".to_vec();
            sent.extend_from_slice(&body);
            sent.extend_from_slice(b"TAIL");
            let (l, addr) = listener();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let writer = std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(&sent).unwrap();
                let _ = rx.recv();
            });
            let (mut src, _) = l.accept().await.unwrap();
            src.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = [0u8; 4];
            src.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HEAD");
            // Time for the ring's receive to take what came after.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let (dst, reader) = splice_sink().await;
            let mut t = splice::Transfer::new(len as u64, 64 * 1024, splice::Toward::Client)
                .expect("a pipe");
            let before = splice::spliced_bytes();
            run_transfer(&mut t, &src, &dst).await.unwrap();
            assert_eq!(t.moved(), len as u64);
            assert_eq!(splice::spliced_bytes().0 - before.0, len as u64);
            drop((t, dst));
            let got = joined(reader).await;
            assert_eq!(got.len(), body.len());
            assert!(got == body, "the spliced bytes differ from the body sent");
            let mut tail = [0u8; 4];
            src.read_exact(&mut tail).await.unwrap();
            assert_eq!(&tail, b"TAIL", "the bytes after the body");
            tx.send(()).unwrap();
            joined(writer).await;
        }
    });
}

#[test]
/// A ring the kernel refuses (here: no entries) fails with the kernel's
/// error and what to set instead.
fn a_ring_that_cannot_be_set_up_says_what_to_set() {
    let e = match uring::Uring::new(1024, 0, -1) {
        Ok(_) => panic!("a ring of 0 entries was set up"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("io_uring socket path"), "{e}");
    assert!(e.contains("io = \"epoll\""), "{e}");
    assert!(e.contains("Invalid argument"), "{e}");
}

on_both!(a_head_read_leaves_the_body_behind_it_in_the_socket);
/// A socket waiting for a message takes at most one receive buffer of it
/// into the gateway: reading the head must not pull the body behind it
/// into user space, or the transfer would have to copy those bytes into
/// its pipe instead of splicing them from the socket. On the ring a
/// receive that kept taking whatever arrived took it all (or 32 KiB at
/// least). Three messages on one connection: a receive that completed
/// during a transfer once made the next head's receive take whatever
/// arrived.
fn a_head_read_leaves_the_body_behind_it_in_the_socket(io: uring::IoMode) {
    run_on(io, async {
        let len = 60_000usize;
        let body = counter_body(len);
        let mut sent = b"HEAD".to_vec();
        sent.extend_from_slice(&body);
        let (l, addr) = listener();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let (written_tx, written_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            while go_rx.recv() == Ok(true) {
                c.write_all(&sent).unwrap();
                written_tx.send(()).unwrap();
            }
        });
        let (mut src, _) = l.accept().await.unwrap();
        src.set_read_timeout(Some(Duration::from_secs(5)));
        for round in 0..3 {
            go_tx.send(true).unwrap();
            // All of it is in the socket's queue before the first read.
            while written_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            // A head reader with a large buffer takes everything the
            // receive brought: the head and the start of the body.
            let mut first = vec![0u8; uring::BUF_SIZE];
            src.read_exact(&mut first).await.unwrap();
            assert_eq!(&first[..4], b"HEAD");
            let ahead = uring::BUF_SIZE - 4;
            assert!(first[4..] == body[..ahead], "the start of the body");
            // The reactor has had time to take more, as a task gives it
            // while it parses the head and connects.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            let r = unsafe { libc::ioctl(src.fd.as_raw_fd(), libc::FIONREAD, &mut queued) };
            assert_eq!(r, 0, "FIONREAD");
            let taken = (4 + len).saturating_sub(queued as usize);
            // What was read, and one more buffer at most: the receive the
            // reactor arms once the socket is drained.
            assert!(
                taken <= 2 * uring::BUF_SIZE,
                "message {round}: the gateway took {taken} bytes while only the head was read"
            );
            // The rest of the body arrives whole and in order by a
            // transfer.
            let (dst, reader) = splice_sink().await;
            let rest = (len - ahead) as u64;
            let mut t =
                splice::Transfer::new(rest, 64 * 1024, splice::Toward::Client).expect("a pipe");
            run_transfer(&mut t, &src, &dst).await.unwrap();
            drop((t, dst));
            let got = joined(reader).await;
            assert!(
                got == body[ahead..],
                "the spliced bytes differ from the body sent"
            );
        }
        go_tx.send(false).unwrap();
        joined(writer).await;
    });
}

on_both!(a_splice_follows_the_bytes_written_before_it);
/// The destination was written to just before the transfer (a response's
/// head): on the ring those bytes may not be sent yet when the transfer
/// starts, and no spliced byte may overtake them.
fn a_splice_follows_the_bytes_written_before_it(io: uring::IoMode) {
    run_on(io, async {
        let head = vec![0xAB; 200_000];
        let body = counter_body(300_000);
        let (src, mut dst, writer, reader) =
            splice_pair(body.clone(), Duration::from_millis(100)).await;
        dst.write_all(&head).await.unwrap();
        let mut t =
            splice::Transfer::new(body.len() as u64, 64 * 1024, splice::Toward::Client).unwrap();
        run_transfer(&mut t, &src, &dst).await.unwrap();
        assert_eq!(t.moved(), body.len() as u64);
        dst.write_all(b"END").await.unwrap();
        drop((t, src, dst));
        let got = joined(reader).await;
        joined(writer).await;
        let mut want = head;
        want.extend_from_slice(&body);
        want.extend_from_slice(b"END");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes arrived out of order");
    });
}

on_both!(a_transfer_dropped_mid_body_leaves_both_sockets_working);
/// A transfer given up mid-body (its task dropped it) leaves both sockets
/// as they were: the source reads what comes next, the destination takes
/// writes (on the ring: the source's receive is armed again). The source
/// was read from just before, so on the ring its receive is still armed
/// when the transfer starts, and the body comes only after that.
fn a_transfer_dropped_mid_body_leaves_both_sockets_working(io: uring::IoMode) {
    run_on(io, async {
        let body = counter_body(100_000);
        let (l, addr) = listener();
        let (go, went) = std::sync::mpsc::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let writer = {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(b"HEAD").unwrap();
                let _ = went.recv();
                // In two pieces: the transfer waits for the second.
                c.write_all(&body[..60_000]).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                c.write_all(&body[60_000..]).unwrap();
                let _ = rx.recv();
                c.write_all(b"AFTER").unwrap();
                let mut b = [0u8; 1];
                let _ = c.read(&mut b);
            })
        };
        let (mut src, _) = l.accept().await.unwrap();
        src.set_read_timeout(Some(Duration::from_secs(2)));
        let mut head = [0u8; 4];
        src.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HEAD");
        let (mut dst, reader) = splice_sink().await;
        // 300 000 bytes announced, 100 000 sent: it waits for the rest.
        let mut t = splice::Transfer::new(300_000, 64 * 1024, splice::Toward::Upstream).unwrap();
        let r = futures_lite::future::or(
            async { Some(run_transfer(&mut t, &src, &dst).await) },
            async {
                // The transfer has started: now the body.
                go.send(()).unwrap();
                glommio::timer::sleep(Duration::from_millis(300)).await;
                None
            },
        )
        .await;
        assert!(r.is_none(), "the transfer ended: {r:?}");
        assert_eq!(t.moved(), 100_000);
        drop(t);
        tx.send(()).unwrap();
        let mut after = [0u8; 5];
        src.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"AFTER");
        dst.write_all(b"END").await.unwrap();
        drop((src, dst));
        let got = joined(reader).await;
        joined(writer).await;
        let mut want = body;
        want.extend_from_slice(b"END");
        assert!(got == want, "the destination's bytes differ");
    });
}

/// A wake from another thread through [`RemoteWaker`] wakes the task and
/// rings the shard's nudge, which the shard's epoll set reports (ending a
/// sleep in `epoll_wait`) and the reactor takes and clears. The task here
/// is woken with a waker glommio does not know, so nothing but the nudge
/// reaches the shard: without the ring, the count stays 0.
#[test]
fn a_remote_wake_rings_the_shards_nudge() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    struct Flag(AtomicBool);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    run(async {
        set_epoll_sleep(Duration::from_secs(60));
        let reactor = Reactor::current().unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let remote = RemoteWaker::here(&Waker::from(flag.clone()));
        let before = reactor.nudges();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            remote.wake();
        });
        let started = Instant::now();
        while reactor.nudges() == before && started.elapsed() < Duration::from_secs(10) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        joined(t).await;
        set_epoll_sleep(DEFAULT_EPOLL_SLEEP);
        assert!(
            flag.0.load(Ordering::SeqCst),
            "the task's waker was not woken"
        );
        assert_eq!(
            reactor.nudges(),
            before + 1,
            "the nudge did not reach the shard"
        );
    });
}

on_both!(a_reply_during_an_epoll_sleep_does_not_park);
/// A shard that sleeps in `epoll_wait` between requests serves them from
/// there: on the ring, a completion ends that wait early (the ring's task
/// work interrupts it), which once sent every such wake on to glommio's
/// park, a dozen syscalls each.
fn a_reply_during_an_epoll_sleep_does_not_park(io: uring::IoMode) {
    run_on(io, async {
        set_epoll_sleep(Duration::from_secs(60));
        let reactor = Reactor::current().unwrap();
        let (l, addr) = listener();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(10));
                c.write_all(b"ping").unwrap();
                let mut b = [0u8; 4];
                c.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"pong");
            }
        });
        let (mut s, _) = l.accept().await.unwrap();
        let before = reactor.parks();
        for _ in 0..20 {
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(b"pong").await.unwrap();
        }
        let parks = reactor.parks() - before;
        joined(client).await;
        set_epoll_sleep(DEFAULT_EPOLL_SLEEP);
        assert!(parks <= 2, "{parks} parks in glommio for 20 requests");
    });
}

on_both!(input_during_an_epoll_sleep_is_read);
/// Input that arrives while the shard sleeps in `epoll_wait` is read: the
/// blocking wait takes the event as the non-blocking look does.
fn input_during_an_epoll_sleep_is_read(io: uring::IoMode) {
    run_on(io, async {
        set_epoll_sleep(Duration::from_secs(60));
        let (l, addr) = listener();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(100));
                c.write_all(b"ping").unwrap();
                let mut b = [0u8; 4];
                c.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"pong");
            }
        });
        let (mut s, _) = l.accept().await.unwrap();
        let started = Instant::now();
        for _ in 0..3 {
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            s.write_all(b"pong").await.unwrap();
        }
        joined(client).await;
        let took = started.elapsed();
        set_epoll_sleep(DEFAULT_EPOLL_SLEEP);
        assert!(took < Duration::from_secs(30), "took {took:?}");
    });
}

/// What an operator reads when the kernel refuses a congestion control:
/// for a missing one, what the host offers; for one this process may not
/// choose, the names it may.
#[test]
fn a_refused_congestion_control_is_explained() {
    let cc = CongestionControls {
        default: "bbr".into(),
        available: "reno bbr cubic".into(),
        allowed: "reno bbr".into(),
    };
    let missing =
        explain_congestion_refusal("htcp", &io::Error::from_raw_os_error(libc::ENOENT), &cc);
    assert!(
        missing.contains("no TCP congestion control \"htcp\"")
            && missing.contains("offers: reno bbr cubic"),
        "{missing}"
    );
    let denied =
        explain_congestion_refusal("cubic", &io::Error::from_raw_os_error(libc::EPERM), &cc);
    assert!(
        denied.contains("without CAP_NET_ADMIN") && denied.contains("(here: reno bbr)"),
        "{denied}"
    );
}

/// Connections to a backend on this host leave a pacing default (`bbr`)
/// for the first non-pacing algorithm this process may set, and keep any
/// other default; only loopback addresses count as this host.
#[test]
fn a_loopback_backend_is_not_paced_unless_asked() {
    let all = |_: &str| true;
    assert_eq!(
        choose_loopback_congestion_control("bbr", all),
        Some("cubic")
    );
    assert_eq!(
        choose_loopback_congestion_control("bbr3", all),
        Some("cubic")
    );
    assert_eq!(
        choose_loopback_congestion_control("bbr", |n: &str| n != "cubic"),
        Some("reno"),
        "without cubic in the allowed list, reno (always allowed)"
    );
    assert_eq!(
        choose_loopback_congestion_control("bbr", |_: &str| false),
        None
    );
    for kept in ["cubic", "reno", "dctcp", ""] {
        assert_eq!(
            choose_loopback_congestion_control(kept, all),
            None,
            "{kept:?}"
        );
    }
    for (addr, loopback) in [
        ("127.0.0.1:80", true),
        ("127.3.2.1:80", true),
        ("[::1]:80", true),
        ("[::ffff:127.0.0.1]:80", true),
        ("10.0.0.1:80", false),
        ("[::ffff:10.0.0.1]:80", false),
        ("[2001:db8::1]:80", false),
    ] {
        // The literals above are all valid addresses: a parse failure is a
        // typo in this test, never input from a client or a config file.
        let a: SocketAddr = addr.parse().expect("a literal address");
        assert_eq!(is_loopback(&a), loopback, "{addr}");
    }
}

on_both!(bytes_written_before_a_drop_all_arrive);
/// What a task wrote is all delivered though the socket is dropped at
/// once: on the ring a write only hands its bytes over, and the drop must
/// not lose those not yet sent (a close-delimited response lost all but its
/// first 4 KiB that way). The peer reads slowly, so most of the body is
/// still waiting when the socket goes.
fn bytes_written_before_a_drop_all_arrive(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let body = counter_body(3 << 20);
        let want = body.clone();
        let reader = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            got
        });
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(&body).await.unwrap();
        drop(s);
        let got = joined(reader).await;
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes differ");
        // Every slot is free again once the last bytes went.
        for _ in 0..1000 {
            if Reactor::current().unwrap().registered() == 1 {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        panic!("a slot is still taken");
    });
}

on_both!(a_dropped_sockets_unsent_bytes_are_given_up_after_its_write_timeout);
/// A dropped socket whose peer never reads: what it had left to send is
/// given up after its write timeout, and its slot freed (on the ring the
/// pending send would otherwise hold the connection open for good).
fn a_dropped_sockets_unsent_bytes_are_given_up_after_its_write_timeout(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        s.set_write_timeout(Some(Duration::from_millis(200)));
        // More than the kernel's buffers take: part of it stays unsent.
        let body = vec![7u8; 8 << 20];
        let mut sent = 0;
        while sent < body.len() {
            match futures_lite::future::poll_once(s.write(&body[sent..])).await {
                Some(Ok(n)) => sent += n,
                Some(Err(e)) => panic!("{e}"),
                None => break,
            }
        }
        assert!(sent < body.len(), "the peer took everything");
        let before = std::time::Instant::now();
        drop(s);
        loop {
            if Reactor::current().unwrap().registered() == 1 {
                break;
            }
            assert!(
                before.elapsed() < Duration::from_secs(5),
                "the slot is still taken"
            );
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        drop(c);
    });
}

on_both!(connections_that_never_read_do_not_starve_the_others);
/// Connections whose tasks never read cannot starve the others: on the
/// ring, received bytes are copied out of the shard's shared buffers at
/// once (up to a cap per socket, then the receive pauses), so a new
/// connection's bytes still arrive while forty connections hold far more
/// unread bytes than the ring has buffers (64 of 4 KiB here).
fn connections_that_never_read_do_not_starve_the_others(io: uring::IoMode) {
    run_on(io, async {
        let (l, addr) = listener();
        let mut idle = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..40 {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_nonblocking(true).unwrap();
            // Whatever the kernel takes of 256 KiB, without blocking.
            let junk = vec![b'j'; 256 * 1024];
            let _ = c.write(&junk);
            clients.push(c);
            let (mut s, _) = l.accept().await.unwrap();
            // One read, so that the receive is armed; then never again.
            let mut b = [0u8; 1];
            let _ = futures_lite::future::poll_once(s.read(&mut b)).await;
            idle.push(s);
        }
        // Let every pending receive complete.
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let mut fresh = std::net::TcpStream::connect(addr).unwrap();
        fresh.write_all(b"ping").unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut got = [0u8; 4];
        let mut n = 0;
        while n < 4 {
            n += s.read(&mut got[n..]).await.unwrap();
        }
        assert_eq!(&got, b"ping");
        drop(idle);
        drop(clients);
    });
}

#[test]
/// Every connection slot of a shard on the ring keeps the ring's state of
/// its socket, idle or not: that state stays small, and it holds buffers
/// only while they hold bytes received and not read, or written and not
/// sent. It once kept its three buffers inline, and ten thousand idle
/// connections cost 130 bytes more each on the ring than on epoll.
fn a_socket_on_the_ring_holds_buffers_only_while_they_hold_bytes() {
    assert!(
        size_of::<uring::UrSlot>() <= 48,
        "the ring's state per connection slot is {} bytes",
        size_of::<uring::UrSlot>()
    );
    // The reactor's own slot, on both paths: its three deadlines took 16
    // bytes each as `Option<Instant>`.
    assert!(
        size_of::<Slot>() <= 80,
        "the reactor's slot is {} bytes",
        size_of::<Slot>()
    );
    run_on(URING, async {
        let (l, addr) = listener();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"pingPING").unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back).unwrap();
            // Open until the server has looked.
            rx.recv().unwrap();
            back
        });
        let (mut s, _) = l.accept().await.unwrap();
        let held = |s: &Socket| {
            s.ring()
                .expect("the socket is on the ring")
                .holds_buffers(s.idx)
        };
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(held(&s), "4 bytes received, not read");
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PING");
        assert!(!held(&s), "all read, nothing written");
        s.write_all(b"pong").await.unwrap();
        assert!(held(&s), "a send in flight");
        for _ in 0..2000 {
            if !held(&s) {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert!(!held(&s), "all sent: the buffers went back");
        tx.send(()).unwrap();
        assert_eq!(&joined(client).await, b"pong");
    });
}

#[test]
/// A slot's deadlines are kept in 8 bytes: one comes back as the same
/// instant, none stays none, and one from before the thread's epoch comes
/// back as past, never as none or as a later time.
fn a_deadline_in_a_slot_comes_back_as_the_same_instant() {
    // The thread's epoch is set by its first deadline.
    let _ = When::at(Instant::now());
    let now = Instant::now();
    for t in [
        now,
        now + Duration::from_nanos(1),
        now + Duration::from_secs(86_400),
    ] {
        assert_eq!(When::at(t).get(), Some(t));
    }
    assert_eq!(When::NONE.get(), None);
    assert!(!When::NONE.is_some());
    if let Some(early) = now.checked_sub(Duration::from_secs(3600)) {
        let back = When::at(early).get().expect("a deadline, not none");
        assert!(
            back <= Instant::now(),
            "a past deadline came back as future"
        );
    }
}
