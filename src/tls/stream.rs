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

use crate::net::{Answer, Socket};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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
}

/// A TCP stream, with or without TLS. The TLS session is boxed: it is
/// large (rustls' buffers and state), and a plain connection should not
/// carry its size.
pub enum Stream<T> {
    Plain(Socket),
    Tls(Box<T>),
}

/// The error [`Stream::send_body`] ends with when the upstream answered
/// before it had the whole request body.
pub const EARLY_ANSWER: &str = "the upstream answered before it had the whole request body";

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

    /// As [`Stream::send`], for a request body going to an upstream,
    /// except that a write that has to wait also watches for the upstream
    /// answering meanwhile ([`Socket::poll_answer`]): an upstream that
    /// refuses a request early (413, 401, a redirect) and stops reading
    /// would otherwise hold the write, and the client, until the write
    /// timeout. Such a refusal ends the write with [`EARLY_ANSWER`] (an
    /// `Other` error), and the caller reads the answer. A 1xx or 2xx answer
    /// turns the watch off for the rest of the body (`*watch = false`): the
    /// upstream may still be reading, and the body goes on as without the
    /// watch. Writes that do not wait cost what `send` costs. Under TLS the
    /// socket's input may be the session's own records, so there is no
    /// watch.
    pub async fn send_body(&mut self, buf: &[u8], watch: &mut bool) -> io::Result<()> {
        let s = match self {
            Stream::Plain(s) if *watch => s,
            _ => return self.send(buf).await,
        };
        let mut sent = 0;
        futures_lite::future::poll_fn(|cx| loop {
            if sent == buf.len() {
                return Poll::Ready(Ok(()));
            }
            match s.poll_send(cx, &buf[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if !*watch => return Poll::Pending,
                Poll::Pending => {
                    return match s.poll_answer(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Answer::Refused) => {
                            Poll::Ready(Err(io::Error::other(EARLY_ANSWER)))
                        }
                        Poll::Ready(Answer::Continue) => {
                            *watch = false;
                            Poll::Pending
                        }
                    }
                }
            }
        })
        .await
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
            Stream::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
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
