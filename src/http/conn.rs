//! The connection loop: reads request heads, hands each to the pipeline,
//! and keeps the connection for the next request while it is safe to.
//!
//! Requests on one connection are handled one after the other, so pipelined
//! requests are answered in order. Buffers are per connection and reused:
//! `rbuf` holds what the client sent (heads, then body bytes being streamed),
//! `wbuf` the response head being written, `xbuf` the upstream request head.
//!
//! On a TLS listener the handshake runs first ([`serve_tls`]), within
//! `header_read_timeout_ms`; the loop then reads and writes through the
//! same [`ClientStream`], whose plain variant is the bare TCP socket.

use super::body::ChunkedDecoder;
use super::encode::{push_error_response, ErrorExtras};
use super::parse::{parse_request_head, Framing, RequestHead};
use super::Reject;
use crate::config::Limits;
use crate::net::Socket;
use crate::pipeline::{self, Flow};
use crate::runtime::shard::ConnGuard;
use crate::runtime::Shard;
use crate::tls::stream::{ClientStream, Stream, UpstreamStream};
use futures_lite::AsyncReadExt;
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Read buffer for heads: most requests fit; a larger head grows it (up to
/// max_header_bytes).
pub const HEAD_BUF: usize = 2 * 1024;
/// Read buffer while a request body streams through: this much per read.
pub const READ_BUF: usize = 16 * 1024;
/// A keep-alive connection silent for this long gives its buffers back and
/// waits for its next request holding none: idle connections are most of a
/// busy gateway's connections, and most of their memory would be empty
/// buffers.
const IDLE_SHRINK_AFTER: Duration = Duration::from_secs(1);
/// What an idle connection keeps to read the start of its next request
/// into; the head buffer is taken again as soon as bytes arrive.
const IDLE_BUF: usize = 64;
/// After an error response, how long and how much we keep reading (and
/// discarding) so the client sees the response instead of a reset.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// Why a request body could not be streamed.
#[derive(Debug)]
pub enum BodyError {
    /// The client closed or reset the connection.
    Client,
    /// The client was silent for longer than body_read_timeout_ms.
    Timeout,
    /// More than max_body_bytes.
    TooLarge,
    /// Invalid chunked framing.
    Bad(&'static str),
    /// Writing to the upstream failed.
    Sink(io::Error),
}

/// One client connection.
pub struct Conn {
    pub stream: ClientStream,
    pub peer: SocketAddr,
    /// The subject of the client certificate mTLS verified (RFC 4514 DN),
    /// for the policies and the upstream's `x-client-cert-subject`.
    pub client_cert_subject: Option<Box<str>>,
    pub rbuf: Vec<u8>,
    /// Unconsumed client bytes are `rbuf[rpos..rend]`.
    pub rpos: usize,
    pub rend: usize,
    pub wbuf: Vec<u8>,
    pub xbuf: Vec<u8>,
    /// Header lines policies add to this request's response (CORS,
    /// rate-limit, cache status); empty for most requests.
    pub ebuf: Vec<u8>,
    guard: ConnGuard,
}

/// Serves one accepted connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: Socket, peer: SocketAddr, over_limit: bool) {
    let guard = shard.register(stream.as_raw_fd());
    prepare(&shard, &stream);
    let conn = Conn::new(Stream::Plain(stream), peer, None, guard);
    run(shard, conn, over_limit).await;
}

/// Serves one connection accepted on a TLS listener: the handshake within
/// `header_read_timeout_ms`, then the same loop as a plain connection. A
/// failed or slow handshake closes the connection without a word (there is
/// no channel to say one on); the shard counts and logs it.
pub async fn serve_tls(
    shard: Rc<Shard>,
    stream: Socket,
    peer: SocketAddr,
    over_limit: bool,
    acceptor: futures_rustls::TlsAcceptor,
) {
    if over_limit {
        // An answer would cost a full handshake while the shard is at its
        // limit; closing is what the client can take from us cheaply.
        return;
    }
    let guard = shard.register(stream.as_raw_fd());
    prepare(&shard, &stream);
    let limit = shard.plan.limits.header_read_timeout;
    stream.set_read_timeout(Some(limit));
    let handshake = async { Some(acceptor.accept(stream).await) };
    let timeout = async {
        glommio::timer::sleep(limit).await;
        None
    };
    let tls = match futures_lite::future::or(handshake, timeout).await {
        Some(Ok(tls)) => tls,
        Some(Err(e)) if e.kind() != io::ErrorKind::TimedOut => {
            shard.note_tls_failure(peer, &e.to_string());
            return;
        }
        // The read timeout and the deadline are the same limit.
        Some(Err(_)) | None => {
            shard.note_tls_failure(
                peer,
                &format!("no handshake within {} ms", limit.as_millis()),
            );
            return;
        }
    };
    let subject = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| crate::tls::x509::client_identity(leaf))
        .map(String::into_boxed_str);
    let conn = Conn::new(Stream::Tls(Box::new(tls)), peer, subject, guard);
    run(shard, conn, false).await;
}

/// Socket options every client connection gets.
fn prepare(shard: &Shard, stream: &Socket) {
    let _ = stream.set_nodelay(true);
    stream.set_write_timeout(Some(shard.plan.limits.write_timeout));
}

impl Conn {
    fn new(
        stream: ClientStream,
        peer: SocketAddr,
        client_cert_subject: Option<Box<str>>,
        guard: ConnGuard,
    ) -> Conn {
        Conn {
            stream,
            peer,
            client_cert_subject,
            rbuf: Vec::new(),
            rpos: 0,
            rend: 0,
            wbuf: Vec::with_capacity(512),
            xbuf: Vec::new(),
            ebuf: Vec::new(),
            guard,
        }
    }
}

/// The request loop, then a TLS close_notify when the connection ends; or,
/// for a plain connection gone quiet, parking it (see [`Conn::park`]).
async fn run(shard: Rc<Shard>, mut conn: Conn, mut over_limit: bool) {
    while let Some(idle_deadline) = serve_requests(&shard, &mut conn, over_limit).await {
        match conn.park(shard.clone(), idle_deadline) {
            Ok(()) => return,
            // Input came in meanwhile: serve it.
            Err(c) => {
                conn = *c;
                over_limit = false;
            }
        }
    }
    conn.stream.close().await;
}

/// A parked connection: what it needs to come back (see [`Conn::park`]).
struct Parked {
    sock: Socket,
    peer: SocketAddr,
    guard: ConnGuard,
    shard: Rc<Shard>,
}

#[derive(Default)]
struct ParkedTable {
    entries: Vec<Option<Parked>>,
    free: Vec<u32>,
}

thread_local! {
    /// This shard's parked connections, dense so that ten thousand idle
    /// connections are one allocation, not ten thousand.
    static PARKED: RefCell<ParkedTable> = RefCell::default();
}

/// The reactor's call for a parked connection: input brings it back as a
/// new task; a passed idle deadline closes it silently.
fn resume_parked(key: u32, wake: crate::net::Wake) {
    let taken = PARKED.with(|p| {
        let mut p = p.borrow_mut();
        let e = p.entries.get_mut(key as usize).and_then(Option::take);
        if e.is_some() {
            p.free.push(key);
        }
        e
    });
    // Dropped (on a timeout) outside the table's borrow.
    let Some(Parked {
        sock,
        peer,
        guard,
        shard,
    }) = taken
    else {
        return;
    };
    if wake == crate::net::Wake::Ready {
        guard.set_idle(false);
        let conn = Conn::new(Stream::Plain(sock), peer, None, guard);
        glommio::spawn_local(run(shard, conn, false)).detach();
    }
}

/// Returns the idle deadline when the connection went quiet and can be
/// parked, `None` when it is done.
async fn serve_requests(shard: &Rc<Shard>, conn: &mut Conn, over_limit: bool) -> Option<Instant> {
    let shard = &**shard;
    if over_limit {
        conn.send_error(shard, 503, "Service Unavailable", None, true, false)
            .await;
        conn.linger().await;
        return None;
    }
    conn.rbuf.resize(HEAD_BUF, 0);
    loop {
        let mut head = match conn.read_head(shard).await {
            Ok(h) => h,
            Err(ReadErr::Quiet(until)) => return Some(until),
            Err(ReadErr::Closed) => return None,
            Err(ReadErr::Timeout) => {
                conn.send_error(shard, 408, "Request Timeout", None, true, false)
                    .await;
                return None;
            }
            Err(ReadErr::Reject(r)) => {
                conn.send_error(shard, r.status, r.message, None, true, false)
                    .await;
                conn.linger().await;
                return None;
            }
        };
        if shard.draining() {
            // Tell the client this is the last response on this connection.
            head.keep_alive = false;
        }
        match pipeline::handle(conn, &head, shard).await {
            Flow::KeepAlive if !shard.draining() => conn.shrink_read_buffer(),
            Flow::KeepAlive | Flow::Close => return None,
            Flow::Linger => {
                conn.linger().await;
                return None;
            }
        }
    }
}

enum ReadErr {
    /// No request for [`IDLE_SHRINK_AFTER`]: the connection can be parked
    /// until its idle deadline.
    Quiet(Instant),
    Closed,
    Timeout,
    Reject(Reject),
}

impl Conn {
    /// Reads until a whole request head is buffered at `rbuf[rpos..]`.
    async fn read_head(&mut self, shard: &Shard) -> Result<RequestHead, ReadErr> {
        let limits = &shard.plan.limits;
        // One clock read per pass: before the first, then after each read.
        let mut now = Instant::now();
        let mut deadline = (self.rend > self.rpos).then(|| now + limits.header_read_timeout);
        let idle_deadline = now + limits.idle_timeout;
        loop {
            if self.rend > self.rpos {
                match parse_request_head(&self.rbuf[self.rpos..self.rend], &shard.head_limits) {
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) => {}
                    Err(r) => return Err(ReadErr::Reject(r)),
                }
            } else {
                self.rpos = 0;
                self.rend = 0;
            }
            let idle = self.rend == 0;
            if idle {
                if shard.draining() {
                    return Err(ReadErr::Closed);
                }
                if idle_deadline <= now {
                    return Err(ReadErr::Closed);
                }
            }
            if self.rend == self.rbuf.len() {
                if self.rpos > 0 {
                    self.compact();
                } else {
                    let grown = (self.rbuf.len() * 2).min(shard.head_limits.max_head + 1);
                    if grown <= self.rbuf.len() {
                        return Err(ReadErr::Reject(Reject::new(
                            431,
                            "Request Header Fields Too Large",
                        )));
                    }
                    self.rbuf.resize(grown, 0);
                }
            }
            let wait = if idle {
                let left = idle_deadline
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                if self.rbuf.len() > IDLE_BUF {
                    left.min(IDLE_SHRINK_AFTER)
                } else {
                    left
                }
            } else {
                let d = deadline.unwrap_or(now);
                match d.checked_duration_since(now) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Err(ReadErr::Timeout),
                }
            };
            self.stream.set_read_timeout(Some(wait));
            if idle {
                self.guard.set_idle(true);
            }
            let r = self.stream.read(&mut self.rbuf[self.rend..]).await;
            now = Instant::now();
            if idle {
                self.guard.set_idle(false);
            }
            match r {
                Ok(0) => return Err(ReadErr::Closed),
                Ok(n) => {
                    self.rend += n;
                    if self.rbuf.len() < HEAD_BUF {
                        // Woken from an idle wait: take a head buffer again.
                        self.rbuf.resize(HEAD_BUF, 0);
                    }
                    if deadline.is_none() {
                        deadline = Some(now + limits.header_read_timeout);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut && !idle => {
                    return Err(ReadErr::Timeout)
                }
                // Quiet for IDLE_SHRINK_AFTER: give the buffers back and keep
                // waiting (until the idle deadline) without them.
                Err(e) if e.kind() == io::ErrorKind::TimedOut && self.rbuf.len() > IDLE_BUF => {
                    if !self.stream.is_tls() {
                        return Err(ReadErr::Quiet(idle_deadline));
                    }
                    self.release_buffers();
                }
                Err(_) => return Err(ReadErr::Closed),
            }
        }
    }

    /// Parks a quiet plain connection: its task ends (and with it the
    /// connection's future and buffers), and what is left is an entry in
    /// this shard's table of parked connections (socket, peer address,
    /// drain registration) and the socket's slot in the reactor. Input
    /// brings it back as a new task with fresh buffers; the idle deadline
    /// closes it silently, as an idle timeout does. A TLS session must stay
    /// in memory anyway, so TLS connections are not parked (they wait
    /// holding a 64-byte buffer). A connection with input already waiting
    /// comes back as `Err`, to be served on.
    fn park(self, shard: Rc<Shard>, idle_deadline: Instant) -> Result<(), Box<Conn>> {
        let Conn {
            stream,
            peer,
            client_cert_subject,
            guard,
            ..
        } = self;
        let sock = match stream {
            Stream::Plain(s) => s,
            // Not reached (read_head says Quiet for plain connections only);
            // served on if it were.
            Stream::Tls(_) => {
                return Err(Box::new(Conn::new(
                    stream,
                    peer,
                    client_cert_subject,
                    guard,
                )));
            }
        };
        let key = PARKED.with(|p| {
            let mut p = p.borrow_mut();
            match p.free.pop() {
                Some(k) => k,
                None => {
                    p.entries.push(None);
                    (p.entries.len() - 1) as u32
                }
            }
        });
        if !sock.park(idle_deadline, resume_parked, key) {
            PARKED.with(|p| p.borrow_mut().free.push(key));
            let mut back = Conn::new(Stream::Plain(sock), peer, None, guard);
            back.rbuf.resize(HEAD_BUF, 0);
            return Err(Box::new(back));
        }
        note_released_buffers();
        guard.set_idle(true);
        PARKED.with(|p| {
            p.borrow_mut().entries[key as usize] = Some(Parked {
                sock,
                peer,
                guard,
                shard,
            })
        });
        Ok(())
    }

    /// Gives back the buffers of a connection that has gone quiet.
    fn release_buffers(&mut self) {
        self.rbuf = vec![0; IDLE_BUF];
        self.rpos = 0;
        self.rend = 0;
        self.wbuf = Vec::new();
        self.xbuf = Vec::new();
        self.ebuf = Vec::new();
        note_released_buffers();
    }

    fn compact(&mut self) {
        self.rbuf.copy_within(self.rpos..self.rend, 0);
        self.rend -= self.rpos;
        self.rpos = 0;
    }

    pub fn buffered(&self) -> usize {
        self.rend - self.rpos
    }

    /// Gives back a read buffer that grew past [`READ_BUF`] to hold a whole
    /// body (a SigV4 payload hash), once its request is done.
    fn shrink_read_buffer(&mut self) {
        if self.rbuf.len() > READ_BUF && self.buffered() <= READ_BUF {
            self.compact();
            self.rbuf.truncate(READ_BUF);
            self.rbuf.shrink_to_fit();
        }
    }

    /// Reads more of the request into `rbuf[rend..upto]`, for a body that
    /// is buffered whole before it is forwarded (a SigV4 payload hash).
    /// The caller sizes `rbuf` first. Returns the bytes read.
    pub async fn read_more(&mut self, limits: &Limits, upto: usize) -> Result<usize, BodyError> {
        self.stream.set_read_timeout(Some(limits.body_read_timeout));
        let Some(dst) = self.rbuf.get_mut(self.rend..upto).filter(|d| !d.is_empty()) else {
            return Err(BodyError::TooLarge);
        };
        match self.stream.read(dst).await {
            Ok(0) => Err(BodyError::Client),
            Ok(n) => {
                self.rend += n;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(BodyError::Timeout),
            Err(_) => Err(BodyError::Client),
        }
    }

    /// Writes a gateway-made JSON error response. Returns false if the
    /// write failed.
    pub async fn send_error(
        &mut self,
        shard: &Shard,
        status: u16,
        message: &str,
        allow: Option<crate::route::AllowSet>,
        close: bool,
        head_request: bool,
    ) -> bool {
        let id = shard.ids.borrow_mut().next_id();
        self.send_error_with_id(shard, status, message, allow, close, head_request, &id)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn send_error_with_id(
        &mut self,
        shard: &Shard,
        status: u16,
        message: &str,
        allow: Option<crate::route::AllowSet>,
        close: bool,
        head_request: bool,
        request_id: &[u8],
    ) -> bool {
        self.wbuf.clear();
        let date = *shard.date.borrow_mut().get();
        let x = ErrorExtras {
            date: &date,
            request_id,
            close,
            allow,
            head_request,
            extra: &self.ebuf,
        };
        push_error_response(&mut self.wbuf, status, message, &x);
        self.stream.send(&self.wbuf).await.is_ok()
    }

    /// Sends `100 Continue` (the client asked with `Expect`).
    pub async fn send_continue(&mut self) -> Result<(), BodyError> {
        self.stream
            .send(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| BodyError::Client)
    }

    async fn read_body_bytes(&mut self, limits: &Limits, max: usize) -> Result<usize, BodyError> {
        self.stream.set_read_timeout(Some(limits.body_read_timeout));
        match self.stream.read(&mut self.rbuf[..max]).await {
            Ok(0) => Err(BodyError::Client),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(BodyError::Timeout),
            Err(_) => Err(BodyError::Client),
        }
    }

    /// Streams the request body that follows the head (already consumed from
    /// `rbuf`) into `sink`, or discards it when `sink` is None. Bytes are
    /// written from the read buffer itself. On success only bytes after the
    /// body remain buffered. Returns the body length.
    pub async fn pump_body(
        &mut self,
        framing: Framing,
        limits: &Limits,
        mut sink: Option<&mut UpstreamStream>,
        expect_continue: bool,
    ) -> Result<u64, BodyError> {
        if framing != Framing::None && self.rbuf.len() < READ_BUF {
            // Bodies move through a larger buffer than heads.
            self.rbuf.resize(READ_BUF, 0);
        }
        match framing {
            Framing::None => Ok(0),
            Framing::Length(n) => {
                let mut remaining = n;
                let take = (self.buffered() as u64).min(remaining) as usize;
                if let Some(s) = sink.as_deref_mut() {
                    s.send(&self.rbuf[self.rpos..self.rpos + take])
                        .await
                        .map_err(BodyError::Sink)?;
                }
                self.rpos += take;
                remaining -= take as u64;
                if remaining > 0 {
                    // Everything buffered was body; the buffer is free.
                    self.rpos = 0;
                    self.rend = 0;
                    if expect_continue && take == 0 {
                        self.send_continue().await?;
                    }
                }
                while remaining > 0 {
                    let want = (self.rbuf.len() as u64).min(remaining) as usize;
                    let got = self.read_body_bytes(limits, want).await?;
                    if let Some(s) = sink.as_deref_mut() {
                        s.send(&self.rbuf[..got]).await.map_err(BodyError::Sink)?;
                    }
                    remaining -= got as u64;
                }
                Ok(n)
            }
            Framing::Chunked => {
                let mut dec = ChunkedDecoder::new(true, limits.max_header_bytes);
                if expect_continue && self.buffered() == 0 {
                    self.send_continue().await?;
                }
                loop {
                    while self.rpos < self.rend && !dec.is_done() {
                        let step = dec
                            .step(&self.rbuf[self.rpos..self.rend])
                            .map_err(|e| BodyError::Bad(e.0))?;
                        if dec.data_bytes > limits.max_body_bytes {
                            return Err(BodyError::TooLarge);
                        }
                        // The run itself, or our framing in place of
                        // what was dropped (the body is re-framed).
                        let out = step.out(&self.rbuf[self.rpos..self.rend]);
                        if let (Some(s), false) = (sink.as_deref_mut(), out.is_empty()) {
                            s.send(out).await.map_err(BodyError::Sink)?;
                        }
                        self.rpos += step.consumed;
                    }
                    if dec.is_done() {
                        return Ok(dec.data_bytes);
                    }
                    self.rpos = 0;
                    self.rend = 0;
                    let max = self.rbuf.len();
                    self.rend = self.read_body_bytes(limits, max).await?;
                }
            }
        }
    }

    /// Closes gracefully after an error: stop writing, then read and drop
    /// what the client still sends for a short while, so that our response is
    /// not destroyed by a reset caused by unread input.
    pub async fn linger(&mut self) {
        let _ = self.stream.shutdown_write().await;
        if self.rbuf.is_empty() {
            self.rbuf.resize(4096, 0);
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut total = 0;
        while total < LINGER_BYTES {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            self.stream.set_read_timeout(Some(left));
            // Raw reads: what a TLS client still sends is dropped
            // undecrypted.
            match self.stream.read_raw(&mut self.rbuf[..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    }
}

/// After this many connections released their buffers, the shard hands
/// free heap pages back to the kernel.
const TRIM_EVERY: u32 = 256;

thread_local! {
    /// Buffers released on this shard's thread since the last trim.
    static RELEASED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts a connection that gave its buffers back. glibc keeps freed
/// heap chunks in the process, so without a trim the memory idle
/// connections gave back would still count as resident; every
/// TRIM_EVERY releases `malloc_trim` returns the free pages.
fn note_released_buffers() {
    RELEASED.with(|n| {
        let v = n.get() + 1;
        if v >= TRIM_EVERY {
            n.set(0);
            // SAFETY: malloc_trim only releases free memory; it is safe to
            // call from any thread at any time.
            unsafe {
                libc::malloc_trim(0);
            }
        } else {
            n.set(v);
        }
    });
}

/// Writes `a` then `b` to the client: one `sendmsg` on a plain connection
/// (see [`Stream::send_two`]).
pub async fn write_two(stream: &mut ClientStream, a: &[u8], b: &[u8]) -> io::Result<()> {
    stream.send_two(a, b).await
}
