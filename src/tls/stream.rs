//! A socket that may carry TLS: [`Stream::Plain`] is our TCP socket
//! itself, [`Stream::Tls`] drives a rustls session over it (through
//! futures-rustls). The connection loop and the proxy read and write a
//! `Stream` without caring which it is.
//!
//! The plain path is what it was before TLS existed: an enum match per read
//! or write call (not per byte), no allocation, no vtable, and
//! [`Stream::send_two`] keeps its one `sendmsg` for a head and body. Under
//! TLS every byte is encrypted into rustls' buffer before it reaches the
//! socket, so nothing is zero-copy there.
//!
//! Writes: [`Stream::send`] returns only when every byte is in the kernel.
//! A TLS write can otherwise leave records in rustls' buffer when the socket
//! is full, and a proxy that then waits for an answer to bytes still sitting
//! in that buffer waits forever.
//!
//! Full duplex: the proxy streams a request body upstream while it streams
//! the response back, as two futures of one task. Both use both
//! connections (one reads the client and writes the upstream, the other
//! the reverse), so each connection is lent to them as a [`Shared`]
//! stream, borrowed only for the length of one poll. The body loops are
//! written once against [`Io`], which a stream and a shared one both are.
//!
//! Plain TCP on both sides: a large body of known length may go from
//! socket to socket through a pipe instead ([`splice`]); the caller
//! decides (never under TLS, where every byte is encrypted or decrypted).

use crate::net::splice::{SpliceError, Transfer};
use crate::net::Socket;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The TLS sessions a [`Stream`] can carry: the server side (a client's
/// connection to an HTTPS listener) and the client side (an https://
/// upstream).
pub trait TlsSession: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &Socket;
    fn tcp_mut(&mut self) -> &mut Socket;
    /// Queues a close_notify alert; it leaves with the next flush.
    fn queue_close_notify(&mut self);
    /// Whether rustls holds input not yet read from it: decrypted bytes,
    /// or the peer's close_notify.
    fn has_buffered_input(&self) -> bool;
    /// Whether rustls holds records to send.
    fn wants_write(&self) -> bool;
}

/// A client's TLS connection to one of our listeners.
pub type ServerTls = futures_rustls::server::TlsStream<Socket>;
/// Our TLS connection to an https:// upstream.
pub type ClientTls = futures_rustls::client::TlsStream<Socket>;

impl TlsSession for ServerTls {
    fn tcp(&self) -> &Socket {
        self.get_ref().0
    }
    fn tcp_mut(&mut self) -> &mut Socket {
        self.get_mut().0
    }
    fn queue_close_notify(&mut self) {
        self.get_mut().1.send_close_notify();
    }
    fn has_buffered_input(&self) -> bool {
        // Past the handshake rustls wants to read unless plaintext is
        // waiting or the peer said close_notify.
        !self.get_ref().1.wants_read()
    }
    fn wants_write(&self) -> bool {
        self.get_ref().1.wants_write()
    }
}

impl TlsSession for ClientTls {
    fn tcp(&self) -> &Socket {
        self.get_ref().0
    }
    fn tcp_mut(&mut self) -> &mut Socket {
        self.get_mut().0
    }
    fn queue_close_notify(&mut self) {
        self.get_mut().1.send_close_notify();
    }
    fn has_buffered_input(&self) -> bool {
        // Past the handshake rustls wants to read unless plaintext is
        // waiting or the peer said close_notify.
        !self.get_ref().1.wants_read()
    }
    fn wants_write(&self) -> bool {
        self.get_ref().1.wants_write()
    }
}

/// A TCP stream, with or without TLS. The TLS session is boxed: it is
/// large (rustls' buffers and state), and a plain connection should not
/// carry its size.
pub enum Stream<T> {
    Plain(Socket),
    Tls(Box<T>),
}

/// A client's connection to the gateway.
pub type ClientStream = Stream<ServerTls>;
/// The gateway's connection to an upstream target.
pub type UpstreamStream = Stream<ClientTls>;

impl<T: TlsSession> Stream<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &Socket {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.tcp(),
        }
    }

    /// Whether nothing waits to be read on an idle connection: no byte or
    /// end of stream on the socket ([`Socket::is_quiet`], with `mark` from
    /// [`Socket::polls`] when it was set aside), and under TLS nothing held
    /// in rustls either.
    pub fn is_quiet(&self, mark: u64) -> bool {
        match self {
            Stream::Plain(s) => s.is_quiet(mark),
            Stream::Tls(t) => !t.has_buffered_input() && t.tcp().is_quiet(mark),
        }
    }

    /// As [`Stream::is_quiet`], always with a syscall
    /// ([`crate::net::Socket::is_quiet_now`]).
    pub fn is_quiet_now(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_quiet_now(),
            Stream::Tls(t) => !t.has_buffered_input() && t.tcp().is_quiet_now(),
        }
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) {
        self.tcp().set_read_timeout(d);
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) {
        self.tcp().set_write_timeout(d);
    }

    /// Writes all of `buf` and, under TLS, pushes every record to the
    /// socket before returning.
    pub async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(t) => {
                t.write_all(buf).await?;
                t.flush().await
            }
        }
    }

    /// Writes `a` then `b`: with one `sendmsg` on a plain socket when the
    /// socket takes it all (no copy of either), and as one batch of TLS
    /// records otherwise.
    pub async fn send_two(&mut self, a: &[u8], b: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => write_all_two(s, a, b).await,
            Stream::Tls(t) => {
                write_all_two(&mut **t, a, b).await?;
                t.flush().await
            }
        }
    }

    /// Ends our direction of the connection: a close_notify first under
    /// TLS, then a TCP half-close.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.close().await;
        self.tcp().shutdown(std::net::Shutdown::Write)
    }

    /// Says goodbye before the socket is dropped: under TLS a close_notify,
    /// so a client reading a close-delimited body can tell its end from a
    /// truncation. Best effort: sent only if the socket takes it at once
    /// (every earlier write has completed, so it is a few bytes); a client
    /// that stopped reading does not hold the connection open for it.
    /// Nothing to do on a plain socket.
    pub async fn close(&mut self) {
        if let Stream::Tls(t) = self {
            t.queue_close_notify();
            let _ = futures_lite::future::poll_once(t.flush()).await;
        }
    }

    /// Reads from the TCP socket itself, past any TLS: for draining what a
    /// client still sends before we close, which is never decrypted.
    pub async fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(t) => t.tcp_mut().read(buf).await,
        }
    }
}

impl<T: TlsSession> AsRawFd for Stream<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp().as_raw_fd()
    }
}

impl<T: TlsSession> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => {
                let read = Pin::new(&mut **t).poll_read(cx, buf);
                // What the peer sent can make rustls answer on its own: a
                // TLS 1.2 renegotiation (a ClientHello, or an upstream's
                // HelloRequest) gets a no_renegotiation warning alert.
                // futures-rustls sends such records only with the next
                // write, and a peer waiting for the answer would wait until
                // a timeout: they go now. A failed send is the read's
                // error when the read has nothing to give.
                if t.wants_write() {
                    if let Poll::Ready(Err(e)) = Pin::new(&mut **t).poll_flush(cx) {
                        if read.is_pending() {
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                read
            }
        }
    }
}

impl<T: TlsSession> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    /// Passed down, so that a head and body written through a [`Shared`]
    /// stream (a request with a body) are one `sendmsg` on a plain socket,
    /// as [`Stream::send_two`] is; the default would write only the first.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(t) => Pin::new(&mut **t).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(t) => Pin::new(&mut **t).poll_close(cx),
        }
    }
}

/// The reads and writes the body loops make: on a stream of their own
/// ([`Stream`]), or on one another future of the same task also uses
/// ([`Shared`]).
#[allow(async_fn_in_trait)] // one executor per thread: no Send bound wanted
pub trait Io {
    /// Reads what is there, up to `buf.len()` bytes; 0 is the end of the
    /// stream.
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// As [`Stream::send`].
    async fn send(&mut self, buf: &[u8]) -> io::Result<()>;
    /// As [`Stream::send_two`].
    async fn send_two(&mut self, a: &[u8], b: &[u8]) -> io::Result<()>;
    fn set_read_timeout(&mut self, d: Option<Duration>);
    /// Whether read timeouts are held ([`Shared::hold_read_timeout`]),
    /// so that a read waits without one for now, or since when they count.
    fn read_timeout_hold(&self) -> Hold {
        Hold::Never
    }
    /// Runs `f` on the TCP socket itself when no TLS is in the way (for
    /// [`splice`]); None under TLS.
    fn with_plain<R>(&mut self, f: impl FnOnce(&Socket) -> R) -> Option<R>;
}

/// Where an [`Io`]'s read timeouts stand ([`Io::read_timeout_hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Never held: they count from each read.
    Never,
    /// Held: a read waits without one.
    Held,
    /// Held until this instant, when [`Shared::release_read_timeout`]
    /// applied them.
    Released(Instant),
}

/// Moves the rest of a body of known length from `src` to `dst` through
/// `t`'s pipe ([`crate::net::splice`]), adding the bytes written to `dst`
/// to `moved` as they go. Both must be plain TCP (else `Write` fails with
/// `Unsupported` before anything moves).
pub async fn splice<S: Io, D: Io>(
    src: &mut S,
    dst: &mut D,
    t: &mut Transfer,
    moved: &Cell<u64>,
) -> Result<(), SpliceError> {
    futures_lite::future::poll_fn(|cx| {
        let before = t.moved();
        let r = src
            .with_plain(|s| dst.with_plain(|d| t.poll(cx, s, d)))
            .flatten()
            .unwrap_or_else(|| {
                Poll::Ready(Err(SpliceError::Write(io::ErrorKind::Unsupported.into())))
            });
        moved.set(moved.get() + (t.moved() - before));
        r
    })
    .await
}

impl<T: TlsSession> Io for Stream<T> {
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf).await
    }
    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        Stream::send(self, buf).await
    }
    async fn send_two(&mut self, a: &[u8], b: &[u8]) -> io::Result<()> {
        Stream::send_two(self, a, b).await
    }
    fn set_read_timeout(&mut self, d: Option<Duration>) {
        Stream::set_read_timeout(self, d)
    }
    fn with_plain<R>(&mut self, f: impl FnOnce(&Socket) -> R) -> Option<R> {
        match self {
            Stream::Plain(s) => Some(f(s)),
            Stream::Tls(_) => None,
        }
    }
}

/// A stream lent to two futures of one task, each using one direction of
/// it (see the module doc). Every read or write borrows it for one poll
/// only, so the two never hold it at once; a TLS session's reads and
/// writes interleave as they do on any stream.
///
/// Read timeouts can be held: while held, the timeout a reader asks for
/// is remembered but not applied (its reads wait without one), until
/// [`Shared::release_read_timeout`] applies it. The proxy holds the
/// upstream's while the request body is still going up: an upstream that
/// waits for the whole body before it answers is not silent, it is
/// waiting for us.
pub struct Shared<'a, T> {
    cell: RefCell<&'a mut Stream<T>>,
    held: Cell<bool>,
    released: Cell<Option<Instant>>,
    wanted: Cell<Option<Duration>>,
}

impl<'a, T: TlsSession> Shared<'a, T> {
    pub fn new(stream: &'a mut Stream<T>) -> Shared<'a, T> {
        Shared {
            cell: RefCell::new(stream),
            held: Cell::new(false),
            released: Cell::new(None),
            wanted: Cell::new(None),
        }
    }

    /// From now on, read timeouts wait for [`Shared::release_read_timeout`];
    /// reads wait without one meanwhile.
    pub fn hold_read_timeout(&self) {
        self.held.set(true);
        self.cell.borrow().tcp().set_read_timeout(None);
    }

    /// Applies the read timeout last asked for. A read waiting already
    /// takes it the next time it is polled.
    pub fn release_read_timeout(&self) {
        self.held.set(false);
        self.released.set(Some(Instant::now()));
        self.cell.borrow().tcp().set_read_timeout(self.wanted.get());
    }

    fn poll<R>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(Pin<&mut Stream<T>>, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        let mut s = self.cell.borrow_mut();
        f(Pin::new(&mut **s), cx)
    }

    async fn flush(&self) -> io::Result<()> {
        futures_lite::future::poll_fn(|cx| self.poll(cx, |s, cx| s.poll_flush(cx))).await
    }
}

impl<T: TlsSession> Io for &Shared<'_, T> {
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::future::poll_fn(|cx| self.poll(cx, |s, cx| s.poll_read(cx, buf))).await
    }

    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        while sent < buf.len() {
            let n = futures_lite::future::poll_fn(|cx| {
                self.poll(cx, |s, cx| s.poll_write(cx, &buf[sent..]))
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += n;
        }
        // Under TLS, every record to the socket (see the module doc).
        self.flush().await
    }

    async fn send_two(&mut self, a: &[u8], b: &[u8]) -> io::Result<()> {
        let mut parts = [IoSlice::new(a), IoSlice::new(b)];
        let mut bufs = &mut parts[..];
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let n = futures_lite::future::poll_fn(|cx| {
                self.poll(cx, |s, cx| s.poll_write_vectored(cx, bufs))
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        self.flush().await
    }

    fn set_read_timeout(&mut self, d: Option<Duration>) {
        self.wanted.set(d);
        if !self.held.get() {
            self.cell.borrow().tcp().set_read_timeout(d);
        }
    }

    fn read_timeout_hold(&self) -> Hold {
        match self.released.get() {
            _ if self.held.get() => Hold::Held,
            Some(at) => Hold::Released(at),
            None => Hold::Never,
        }
    }

    fn with_plain<R>(&mut self, f: impl FnOnce(&Socket) -> R) -> Option<R> {
        match &**self.cell.borrow() {
            Stream::Plain(s) => Some(f(s)),
            Stream::Tls(_) => None,
        }
    }
}

/// Writes all of `a` then all of `b` through vectored writes: on a plain
/// socket one `sendmsg` when the socket takes both (no copy of either).
async fn write_all_two<W: AsyncWrite + Unpin>(w: &mut W, a: &[u8], b: &[u8]) -> io::Result<()> {
    let mut parts = [IoSlice::new(a), IoSlice::new(b)];
    let mut bufs = &mut parts[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = futures_lite::future::poll_fn(|cx| Pin::new(&mut *w).poll_write_vectored(cx, bufs))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}
