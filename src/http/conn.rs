//! The server side of an HTTP/1.1 connection: reads request heads, hands
//! each to a [`Service`], and keeps the connection for the next request
//! while it is safe to. Nothing here knows routes, policies or plans: the
//! service (the gateway) answers, and says with a [`Flow`] what the
//! connection does next, including handing its socket to another owner.
//!
//! Requests on one connection are handled one after the other, so pipelined
//! requests are answered in order. Buffers are per connection and reused:
//! `rbuf` holds what the client sent (heads, then body bytes being streamed),
//! `wbuf` the response head being written, `xbuf` the upstream request head.
//!
//! On a TLS listener the handshake runs first ([`serve_tls`]), within
//! `header_read_timeout_ms`; the loop then reads and writes through the
//! same [`ClientStream`], whose plain variant is the bare TCP socket.
//!
//! [`Connections`] is a shard's registry of its live connections: it knows
//! which wait for a request and how many are left, and runs the drain (see
//! [`Connections::begin_drain`]).

use super::body::ChunkedDecoder;
use super::parse::{parse_request_head_into, Framing, HeadLimits, RequestHead};
use super::{Limits, Reject};
use crate::net::{interrupt_read, ReadHandle, Socket};
use crate::tls::stream::{ClientStream, Io, Stream, UpstreamStream};
use futures_lite::AsyncReadExt;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;

use std::rc::Rc;
use std::time::{Duration, Instant};

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next request.
    KeepAlive,
    /// Close now.
    Close,
    /// Close after reading and dropping what the client still sends, so an
    /// error response is not lost to a reset.
    Linger,
    /// Give the socket, and any bytes already read past the request, to the
    /// owner the service put in [`Conn::handover`] (a protocol switched
    /// with `101`). Without one, the connection closes.
    Handover,
}

/// See [`Conn::parts`].
pub struct Parts<'a> {
    pub buf: &'a [u8],
    /// Header lines for the response (`conn.ebuf`).
    pub extra: &'a mut Vec<u8>,
    /// The upstream request head (`conn.xbuf`).
    pub xbuf: &'a mut Vec<u8>,
    pub client_cert_subject: Option<&'a str>,
    pub tls: bool,
}

/// Who takes a connection handed over (see [`Flow::Handover`]).
pub type NewOwner = Box<dyn FnOnce(Upgraded)>;

/// A connection handed over: what the new owner takes.
pub struct Upgraded {
    pub stream: ClientStream,
    pub peer: SocketAddr,
    /// Bytes the client sent after the request that switched protocols.
    pub buffered: Vec<u8>,
    /// Keeps the connection counted (and closable on drain) by its shard.
    pub guard: ConnGuard,
}

/// The gateway side of the connection loop.
#[allow(async_fn_in_trait)] // one executor per thread: no Send bound wanted
pub trait Service: Sized + 'static {
    /// The limits of the plan a new request starts with.
    fn limits(&self) -> Limits;
    fn head_limits(&self) -> HeadLimits;
    fn connections(&self) -> &Rc<Connections>;
    /// Answers the request whose head is at `conn.rbuf[conn.rpos..]`.
    async fn handle(&self, conn: &mut Conn, head: &RequestHead) -> Flow;
    /// Answers what the loop itself refuses (a malformed head, 408, 431, a
    /// shard over its connection limit) with `status` and a JSON message;
    /// the connection closes after it.
    async fn refuse(&self, conn: &mut Conn, status: u16, message: &'static str);
    /// A TLS handshake failed or timed out.
    fn note_tls_failure(&self, peer: SocketAddr, why: &str);
}

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
/// While draining, how long a connection whose last response promised
/// keep-alive (or that has not had a request yet) may take to send its
/// next request, counted from when draining started or from that
/// response, whichever is later, and cut short by the drain's deadline. A
/// request sent the moment a response arrived is then answered (with
/// `connection: close`) instead of being reset.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

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
    rbuf: Vec<u8>,
    /// Unconsumed client bytes are `rbuf[rpos..rend]`.
    rpos: usize,
    rend: usize,
    /// Body bytes of the current request already written upstream with its
    /// head ([`Conn::sent_ahead`]); the next [`BodyIn::pump`] skips them.
    sent_ahead: u64,
    pub wbuf: Vec<u8>,
    pub xbuf: Vec<u8>,
    /// Header lines policies add to this request's response (CORS,
    /// rate-limit, cache status); empty for most requests.
    pub ebuf: Vec<u8>,
    /// Who takes the connection when the service answers
    /// [`Flow::Handover`].
    pub handover: Option<NewOwner>,
    /// When the head `read_head` last returned was complete: the clock
    /// reading taken after the read that completed it (or on entry, for a
    /// head that was already buffered).
    pub head_at: Instant,
    /// A clock reading the service took as it finished the previous
    /// request; the next `read_head` starts from it instead of reading the
    /// clock again (a few microseconds apart on a keep-alive connection).
    pub clock: Option<Instant>,
    guard: ConnGuard,
}

/// Serves one accepted connection until it closes.
pub async fn serve<S: Service>(svc: Rc<S>, stream: Socket, peer: SocketAddr, over_limit: bool) {
    let guard = svc.connections().register(&stream, false);
    prepare(&svc.limits(), &stream);
    let conn = Conn::new(Stream::Plain(stream), peer, None, guard);
    run(svc, conn, over_limit).await;
}

/// Serves one connection accepted on a TLS listener: the handshake within
/// `header_read_timeout_ms`, then the same loop as a plain connection. A
/// failed or slow handshake closes the connection without a word (there is
/// no channel to say one on); the service counts and logs it.
pub async fn serve_tls<S: Service>(
    svc: Rc<S>,
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
    let guard = svc.connections().register(&stream, true);
    let limits = svc.limits();
    prepare(&limits, &stream);
    let limit = limits.header_read_timeout;
    stream.set_read_timeout(Some(limit));
    let handshake = async { Some(acceptor.accept(stream).await) };
    let timeout = async {
        glommio::timer::sleep(limit).await;
        None
    };
    let tls = match futures_lite::future::or(handshake, timeout).await {
        Some(Ok(tls)) => tls,
        Some(Err(e)) if e.kind() != io::ErrorKind::TimedOut => {
            svc.note_tls_failure(peer, &e.to_string());
            return;
        }
        // The read timeout and the deadline are the same limit.
        Some(Err(_)) | None => {
            svc.note_tls_failure(
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
    run(svc, conn, false).await;
}

/// Socket options every client connection gets.
fn prepare(limits: &Limits, stream: &Socket) {
    let _ = stream.set_nodelay(true);
    stream.set_write_timeout(Some(limits.write_timeout));
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
            sent_ahead: 0,
            wbuf: Vec::with_capacity(512),
            xbuf: Vec::new(),
            ebuf: Vec::new(),
            handover: None,
            head_at: Instant::now(),
            clock: None,
            guard,
        }
    }

    /// The client's bytes not consumed yet: the current request's head and
    /// whatever followed it.
    pub fn unread(&self) -> &[u8] {
        &self.rbuf[self.rpos..self.rend]
    }

    /// Marks `n` buffered bytes as consumed (a request head once the
    /// phases that read it are done).
    pub fn consume(&mut self, n: usize) {
        self.rpos = (self.rpos + n).min(self.rend);
    }

    /// The first bytes of a `Content-Length` body that are already
    /// buffered, at most `len` of them: what may go upstream in one write
    /// with the head ([`Conn::sent_ahead`]).
    pub fn body_start(&self, len: u64) -> &[u8] {
        let n = (self.buffered() as u64).min(len) as usize;
        &self.rbuf[self.rpos..self.rpos + n]
    }

    /// Says that the first `n` body bytes (from [`Conn::body_start`]) were
    /// written upstream with the head: they are consumed, and the next
    /// [`BodyIn::pump`] of a `Content-Length` body counts them as moved.
    pub fn sent_ahead(&mut self, n: usize) {
        self.consume(n);
        self.sent_ahead = n as u64;
    }

    /// The bytes of the request head just consumed with [`Conn::consume`]
    /// together with what follows it, for a phase that reads the head once
    /// the body is buffered behind it.
    pub fn with_head(&self, head_len: usize) -> Option<&[u8]> {
        let base = self.rpos.checked_sub(head_len)?;
        Some(&self.rbuf[base..self.rend])
    }

    /// The parts of the connection a request's phases use at once: the
    /// request's bytes (from its head on; `head_len` is the head's length
    /// once it has been consumed), and the buffers for the response's and
    /// the upstream request's header lines. None if `head_len` is more
    /// than was consumed.
    pub fn parts(&mut self, head_len: Option<usize>) -> Option<Parts<'_>> {
        let base = match head_len {
            None => self.rpos,
            Some(n) => self.rpos.checked_sub(n)?,
        };
        Some(Parts {
            buf: &self.rbuf[base..self.rend],
            extra: &mut self.ebuf,
            xbuf: &mut self.xbuf,
            client_cert_subject: self.client_cert_subject.as_deref(),
            tls: self.stream.is_tls(),
        })
    }

    /// Consumes a request body that is already wholly buffered. Returns
    /// false when some of it is still to come (the connection must then
    /// close, or linger).
    pub fn consume_buffered_body(&mut self, framing: Framing) -> bool {
        match framing {
            Framing::None => true,
            Framing::Length(n) if n <= self.buffered() as u64 => {
                self.rpos += n as usize;
                true
            }
            _ => false,
        }
    }

    /// Ends the connection's life here: its socket and buffered bytes go
    /// to a new owner.
    fn upgrade(self) -> (Option<NewOwner>, Upgraded) {
        let buffered = self.rbuf[self.rpos..self.rend].to_vec();
        (
            self.handover,
            Upgraded {
                stream: self.stream,
                peer: self.peer,
                buffered,
                guard: self.guard,
            },
        )
    }
}

/// The connection's task: [`connection_loop`], with a panic in it caught
/// (see [`guarded`]). (loadtest/instructions.sh counts what runs inside
/// `http::conn::run*`: the loop's name must not start with `run`.)
async fn run<S: Service>(svc: Rc<S>, conn: Conn, over_limit: bool) {
    guarded("a connection", connection_loop(svc, conn, over_limit)).await;
}

/// Runs a connection's task `fut` (`what` names it in the log), catching
/// a panic in it. A bug that panics while one connection is served then
/// closes that connection, whose socket and registration go with the
/// task's state as the panic unwinds, and is logged; uncaught, it would
/// unwind through the executor and stop the shard, with every connection
/// it holds and its listeners.
pub async fn guarded(what: &str, fut: impl std::future::Future<Output = ()>) {
    let served = futures_lite::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).await;
    if let Err(p) = served {
        crate::log!(
            "error",
            "{what} was closed after a panic while it was served ({}); the shard serves on",
            crate::log::panic_message(&*p).unwrap_or("no message")
        );
    }
}

/// The request loop, then a TLS close_notify when the connection ends; or,
/// for a plain connection gone quiet, parking it (see [`Conn::park`]).
async fn connection_loop<S: Service>(svc: Rc<S>, mut conn: Conn, mut over_limit: bool) {
    loop {
        match serve_requests(&svc, &mut conn, over_limit).await {
            End::Done => break,
            End::Quiet(idle_deadline) => match conn.park(svc.clone(), idle_deadline) {
                Ok(()) => return,
                // Input came in meanwhile: serve it.
                Err(c) => {
                    conn = *c;
                    over_limit = false;
                }
            },
            End::Handover => {
                let (owner, up) = conn.upgrade();
                match owner {
                    Some(take) => take(up),
                    None => {
                        let mut stream = up.stream;
                        stream.close().await;
                    }
                }
                return;
            }
        }
    }
    conn.stream.close().await;
}

/// A parked connection's way back: a new task on its service.
trait Resume {
    fn resume(self: Rc<Self>, conn: Conn);
}

impl<S: Service> Resume for S {
    fn resume(self: Rc<Self>, conn: Conn) {
        glommio::spawn_local(run(self, conn, false)).detach();
    }
}

/// A parked connection: what it needs to come back (see [`Conn::park`]).
struct Parked {
    sock: Socket,
    peer: SocketAddr,
    guard: ConnGuard,
    svc: Rc<dyn Resume>,
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

/// This shard's parked connections (the calling thread's).
pub fn parked() -> usize {
    PARKED.with(|p| {
        let p = p.borrow();
        p.entries.len() - p.free.len()
    })
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
        svc,
    }) = taken
    else {
        return;
    };
    if wake == crate::net::Wake::Ready {
        guard.set_idle(false);
        svc.resume(Conn::new(Stream::Plain(sock), peer, None, guard));
    }
}

/// How a run of requests on a connection ended.
enum End {
    Done,
    /// Quiet until this idle deadline: the connection can be parked.
    Quiet(Instant),
    Handover,
}

async fn serve_requests<S: Service>(svc: &Rc<S>, conn: &mut Conn, over_limit: bool) -> End {
    let svc = &**svc;
    if over_limit {
        svc.refuse(conn, 503, "Service Unavailable").await;
        conn.linger().await;
        return End::Done;
    }
    conn.rbuf.resize(HEAD_BUF, 0);
    // One head for the connection's life, each request parsed into it.
    let mut head = RequestHead::empty();
    loop {
        let limits = svc.limits();
        match conn.read_head(svc, &limits, &mut head).await {
            Ok(()) => {}
            Err(ReadErr::Quiet(until)) => return End::Quiet(until),
            Err(ReadErr::Closed) => return End::Done,
            Err(ReadErr::Drained) => {
                conn.linger().await;
                return End::Done;
            }
            Err(ReadErr::Timeout) => {
                svc.refuse(conn, 408, "Request Timeout").await;
                return End::Done;
            }
            Err(ReadErr::Reject(r)) => {
                svc.refuse(conn, r.status, r.message).await;
                conn.linger().await;
                return End::Done;
            }
        }
        let flow = svc.handle(conn, &head).await;
        match flow {
            // Also while draining: the response promised the connection
            // to the client, which may be sending its next request
            // already; `read_head` waits for it (the drain's grace) and
            // ends the connection after it.
            Flow::KeepAlive => conn.shrink_read_buffer(),
            Flow::Close => {
                // The response said `connection: close` because the drain
                // had started: a request the client sent meanwhile must
                // not turn the close into a reset.
                if svc.connections().draining() {
                    conn.linger().await;
                }
                return End::Done;
            }
            Flow::Linger => {
                conn.linger().await;
                return End::Done;
            }
            Flow::Handover => return End::Handover,
        }
    }
}

enum ReadErr {
    /// No request for [`IDLE_SHRINK_AFTER`]: the connection can be parked
    /// until its idle deadline.
    Quiet(Instant),
    Closed,
    /// Draining, and no request came within the grace.
    Drained,
    Timeout,
    Reject(Reject),
}

impl Conn {
    /// Reads until a whole request head is buffered at `rbuf[rpos..]`.
    async fn read_head<S: Service>(
        &mut self,
        svc: &S,
        limits: &Limits,
        head: &mut RequestHead,
    ) -> Result<(), ReadErr> {
        let head_limits = svc.head_limits();
        // One clock read per pass: before the first (unless the service
        // just took one), then after each read.
        let mut now = self.clock.take().unwrap_or_else(Instant::now);
        let entered = now;
        let mut deadline = (self.rend > self.rpos).then(|| now + limits.header_read_timeout);
        let idle_deadline = now + limits.idle_timeout;
        loop {
            if self.rend > self.rpos {
                match parse_request_head_into(&self.rbuf[self.rpos..self.rend], &head_limits, head)
                {
                    Ok(true) => {
                        self.head_at = now;
                        return Ok(());
                    }
                    Ok(false) => {}
                    Err(r) => return Err(ReadErr::Reject(r)),
                }
            } else {
                self.rpos = 0;
                self.rend = 0;
            }
            let idle = self.rend == 0;
            // Draining: the time left for a next request (DRAIN_GRACE).
            let mut grace_left = None;
            if idle {
                if let Some(end) = svc.connections().grace_end(entered) {
                    match end.checked_duration_since(now) {
                        Some(left) if !left.is_zero() => grace_left = Some(left),
                        _ => return Err(ReadErr::Drained),
                    }
                }
                if idle_deadline <= now {
                    return Err(ReadErr::Closed);
                }
            }
            if self.rend == self.rbuf.len() {
                if self.rpos > 0 {
                    self.compact();
                } else {
                    let grown = (self.rbuf.len() * 2).min(head_limits.max_head + 1);
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
                let mut left = idle_deadline
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                if let Some(g) = grace_left {
                    left = left.min(g);
                }
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
                // Draining (the wait was cut to the grace, or interrupted
                // when the drain began): the loop looks at the grace.
                Err(e) if e.kind() == io::ErrorKind::TimedOut && svc.connections().draining() => {}
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
    fn park<S: Service>(self, svc: Rc<S>, idle_deadline: Instant) -> Result<(), Box<Conn>> {
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
                svc,
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

    /// Reads the whole request body that follows the head (already
    /// consumed) into the read buffer without consuming it, for a phase
    /// that must see all of it before anything is forwarded (a SigV4
    /// payload hash). Returns its length in the buffer, framing included:
    /// the body is then `self.unread()[..len]`, and is forwarded or dropped
    /// from there as usual. `max` bounds that length.
    pub async fn buffer_body(
        &mut self,
        framing: Framing,
        max: u64,
        limits: &Limits,
        expect_continue: bool,
    ) -> Result<usize, BodyError> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        match framing {
            Framing::None => Ok(0),
            Framing::Length(n) => {
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| n <= max)
                    .ok_or(BodyError::TooLarge)?;
                let end = self.rpos + n;
                if self.buffered() == 0 && n > 0 && expect_continue {
                    self.send_continue().await?;
                }
                if self.rbuf.len() < end {
                    self.rbuf.resize(end, 0);
                }
                while self.rend < end {
                    self.read_more(limits, end).await?;
                }
                Ok(n)
            }
            Framing::Chunked => {
                let mut dec = ChunkedDecoder::new(false, limits.max_header_bytes);
                let mut pos = self.rpos;
                if self.buffered() == 0 && expect_continue {
                    self.send_continue().await?;
                }
                loop {
                    while pos < self.rend && !dec.is_done() {
                        let step = dec
                            .step(&self.rbuf[pos..self.rend])
                            .map_err(|e| BodyError::Bad(e.0))?;
                        pos += step.consumed;
                    }
                    if dec.is_done() {
                        return Ok(pos - self.rpos);
                    }
                    // The whole chunked body, framing included, must fit.
                    if self.rend - self.rpos >= max {
                        return Err(BodyError::TooLarge);
                    }
                    if self.rend == self.rbuf.len() {
                        let grown = (self.rbuf.len() * 2)
                            .max(self.rpos + READ_BUF)
                            .min(self.rpos.saturating_add(max));
                        self.rbuf.resize(grown, 0);
                    }
                    let upto = self.rbuf.len();
                    self.read_more(limits, upto).await?;
                }
            }
        }
    }

    /// Reads more of the request into `rbuf[rend..upto]`; the caller sizes
    /// `rbuf` first. Returns the bytes read.
    async fn read_more(&mut self, limits: &Limits, upto: usize) -> Result<usize, BodyError> {
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

    /// Sends `100 Continue` (the client asked with `Expect`).
    pub async fn send_continue(&mut self) -> Result<(), BodyError> {
        self.stream
            .send(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| BodyError::Client)
    }

    /// Whether `100 Continue` is due before the body: the client asked,
    /// and has sent none of a body it still has to send.
    pub fn wants_continue(&self, framing: Framing, expect_continue: bool) -> bool {
        expect_continue
            && self.buffered() == 0
            && match framing {
                Framing::None => false,
                Framing::Length(n) => n > 0,
                Framing::Chunked => true,
            }
    }

    /// The connection in the parts a full-duplex exchange uses at once:
    /// the request body still to come, the stream (lent to both
    /// directions), and the response-head buffers.
    pub fn split(&mut self) -> Split<'_> {
        Split {
            body: BodyIn {
                rbuf: &mut self.rbuf,
                rpos: &mut self.rpos,
                rend: &mut self.rend,
                sent_ahead: &mut self.sent_ahead,
            },
            stream: &mut self.stream,
            wbuf: &mut self.wbuf,
            ebuf: &self.ebuf,
        }
    }

    /// Streams the request body that follows the head (already consumed from
    /// `rbuf`) into `sink`, or discards it when `sink` is None (see
    /// [`BodyIn::pump`]), after `100 Continue` if the client waits for it.
    /// On success only bytes after the body remain buffered. Returns the
    /// body length.
    pub async fn pump_body(
        &mut self,
        framing: Framing,
        limits: &Limits,
        sink: Option<&mut UpstreamStream>,
        expect_continue: bool,
    ) -> Result<u64, BodyError> {
        if self.wants_continue(framing, expect_continue) {
            self.send_continue().await?;
        }
        let Split {
            mut body, stream, ..
        } = self.split();
        body.pump(stream, framing, limits, sink).await
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

/// Body bytes a pump moves before it lets the rest of its task (and the
/// shard) run: with both sockets always ready, a read never waits, and the
/// response going the other way would wait for the whole body.
const TURN_BYTES: usize = 256 * 1024;

/// Counts `n` bytes moved, and yields once every [`TURN_BYTES`].
async fn take_turns(moved: &mut usize, n: usize) {
    *moved += n;
    if *moved >= TURN_BYTES {
        *moved = 0;
        futures_lite::future::yield_now().await;
    }
}

/// See [`Conn::split`].
pub struct Split<'a> {
    pub body: BodyIn<'a>,
    pub stream: &'a mut ClientStream,
    pub wbuf: &'a mut Vec<u8>,
    pub ebuf: &'a [u8],
}

/// The request body still to come on a connection: its bytes already read
/// (behind the consumed head) and the read buffer the rest is read into.
pub struct BodyIn<'a> {
    rbuf: &'a mut Vec<u8>,
    rpos: &'a mut usize,
    rend: &'a mut usize,
    sent_ahead: &'a mut u64,
}

impl BodyIn<'_> {
    /// Streams the body from `client` into `sink`, or discards it when
    /// `sink` is None. Bytes are written from the read buffer itself, and
    /// at most [`READ_BUF`] of them are held at a time, whatever the
    /// body's length; a Content-Length body of at least
    /// `splice_min_bytes` between plain sockets goes, after what was
    /// buffered, from socket to socket without a buffer ([`splice_rest`]).
    /// A chunked body is re-framed; between plain sockets the data of its
    /// chunks of at least `splice_min_bytes` is spliced the same way
    /// ([`splice_chunk`]), its framing parsed here. On success only bytes
    /// after the body remain buffered. Returns the body length.
    ///
    /// `client` reads only, and `sink` writes only: the proxy runs this
    /// beside the response going the other way on the same two
    /// connections (`tls::stream::Shared`). `100 Continue` is the caller's
    /// to send first ([`Conn::wants_continue`]).
    pub async fn pump<C: Io, S: Io>(
        &mut self,
        client: &mut C,
        framing: Framing,
        limits: &Limits,
        mut sink: Option<&mut S>,
    ) -> Result<u64, BodyError> {
        if framing != Framing::None && self.rbuf.len() < READ_BUF {
            // Bodies move through a larger buffer than heads.
            self.rbuf.resize(READ_BUF, 0);
        }
        // Set for this request only, and only for a Content-Length body.
        let ahead = std::mem::take(self.sent_ahead);
        match framing {
            Framing::None => Ok(0),
            Framing::Length(n) => {
                let mut remaining = n - ahead.min(n);
                let (rpos, rend) = (*self.rpos, *self.rend);
                let take = ((rend - rpos) as u64).min(remaining) as usize;
                if let (Some(s), true) = (sink.as_deref_mut(), take > 0) {
                    s.send(&self.rbuf[rpos..rpos + take])
                        .await
                        .map_err(BodyError::Sink)?;
                }
                *self.rpos += take;
                remaining -= take as u64;
                if remaining > 0 {
                    // Everything buffered was body; the buffer is free.
                    *self.rpos = 0;
                    *self.rend = 0;
                    if let Some(s) = sink.as_deref_mut() {
                        if let Some(r) = splice_rest(client, s, limits, n, remaining).await {
                            return r.map(|()| n);
                        }
                    }
                }
                let mut turn = 0;
                while remaining > 0 {
                    let want = (self.rbuf.len() as u64).min(remaining) as usize;
                    let got = self.read(client, limits, want).await?;
                    if let Some(s) = sink.as_deref_mut() {
                        s.send(&self.rbuf[..got]).await.map_err(BodyError::Sink)?;
                    }
                    remaining -= got as u64;
                    take_turns(&mut turn, got).await;
                }
                Ok(n)
            }
            Framing::Chunked => {
                let mut dec = ChunkedDecoder::new(true, limits.max_header_bytes);
                let mut turn = 0;
                // The last chunk whose data came was spliced: reads stay
                // short until the next chunk's data.
                let mut short = false;
                loop {
                    while *self.rpos < *self.rend && !dec.is_done() {
                        let (rpos, rend) = (*self.rpos, *self.rend);
                        let step = dec
                            .step(&self.rbuf[rpos..rend])
                            .map_err(|e| BodyError::Bad(e.0))?;
                        if dec.data_bytes > limits.max_body_bytes {
                            return Err(BodyError::TooLarge);
                        }
                        // The run itself, or our framing in place of
                        // what was dropped (the body is re-framed).
                        let out = step.out(&self.rbuf[rpos..rend]);
                        if let (Some(s), false) = (sink.as_deref_mut(), out.is_empty()) {
                            s.send(out).await.map_err(BodyError::Sink)?;
                        }
                        *self.rpos += step.consumed;
                    }
                    if dec.is_done() {
                        return Ok(dec.data_bytes);
                    }
                    take_turns(&mut turn, *self.rend).await;
                    *self.rpos = 0;
                    *self.rend = 0;
                    // The buffer is empty: the rest of a big chunk's data
                    // can go from socket to socket.
                    if let Some(s) = sink.as_deref_mut() {
                        client.set_read_timeout(Some(limits.body_read_timeout));
                        let moved = Cell::new(0);
                        let r = splice_chunk(
                            client,
                            s,
                            &mut dec,
                            limits,
                            limits.max_body_bytes,
                            crate::net::splice::Toward::Upstream,
                            &moved,
                        )
                        .await;
                        match r {
                            Some(r) => {
                                r.map_err(body_splice_error)?;
                                short = true;
                            }
                            None => short &= dec.in_data().is_none(),
                        }
                    }
                    let max = if short {
                        AFTER_SPLICE_READ.min(self.rbuf.len())
                    } else {
                        self.rbuf.len()
                    };
                    *self.rend = self.read(client, limits, max).await?;
                }
            }
        }
    }

    /// Reads body bytes into the start of the buffer, within
    /// `body_read_timeout_ms`.
    async fn read<C: Io>(
        &mut self,
        client: &mut C,
        limits: &Limits,
        max: usize,
    ) -> Result<usize, BodyError> {
        client.set_read_timeout(Some(limits.body_read_timeout));
        match client.recv(&mut self.rbuf[..max]).await {
            Ok(0) => Err(BodyError::Client),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(BodyError::Timeout),
            Err(_) => Err(BodyError::Client),
        }
    }
}

/// Splices the `remaining` bytes of a request body of `len` bytes from
/// `client` to `sink` when that is on (`server.splice_min_bytes`, both
/// plain TCP, a pipe to be had); None when the body is to be copied. The
/// body's read timeout holds while it waits for the client, as for a copy.
async fn splice_rest<C: Io, S: Io>(
    client: &mut C,
    sink: &mut S,
    limits: &Limits,
    len: u64,
    remaining: u64,
) -> Option<Result<(), BodyError>> {
    use crate::net::splice::{Toward, Transfer};
    if limits.splice_min_bytes == 0
        || len < limits.splice_min_bytes
        || client.with_plain(|_| ()).is_none()
        || sink.with_plain(|_| ()).is_none()
    {
        return None;
    }
    let mut t = Transfer::new(remaining, limits.splice_pipe_bytes, Toward::Upstream)?;
    client.set_read_timeout(Some(limits.body_read_timeout));
    let moved = std::cell::Cell::new(0);
    let r = crate::tls::stream::splice(client, sink, &mut t, &moved).await;
    Some(r.map_err(body_splice_error))
}

/// A request body's splice that failed, as the copy path reports it.
fn body_splice_error(e: crate::net::splice::SpliceError) -> BodyError {
    use crate::net::splice::SpliceError;
    match e {
        SpliceError::Closed => BodyError::Client,
        SpliceError::Read(e) if e.kind() == io::ErrorKind::TimedOut => BodyError::Timeout,
        SpliceError::Read(_) => BodyError::Client,
        SpliceError::Write(e) => BodyError::Sink(e),
    }
}

/// The most a chunked body's read takes right after a chunk was spliced:
/// enough for the CRLF after its data, the next size line (with some
/// extensions) and, for a small chunk, its data. A full read there would
/// copy the start of a big next chunk through the buffer before its rest
/// could be spliced; a short one copies a few hundred bytes and costs no
/// extra syscall when a big chunk follows (one `recv` either way).
pub const AFTER_SPLICE_READ: usize = 1024;

/// Splices the rest of the current chunk's data from `src` to `dst`
/// ([`crate::net::splice`]) when the body is inside a chunk of at least
/// `server.splice_min_bytes` (the chunk's size, from its size line), both
/// connections are plain TCP, nothing of that chunk is still buffered
/// (the caller sends what was read first and asks only once its buffer is
/// empty), the chunk's data fits within `max_data` data bytes for the
/// body, and a pipe can be had; None when the chunk is to be copied.
///
/// Exactly the chunk's data bytes still due are spliced, never one more:
/// the CRLF after them, the next size line, the last chunk and the
/// trailers are read into the buffer and parsed by `dec` as before. On
/// success `dec` has counted the bytes ([`ChunkedDecoder::skip_data`]) and
/// expects the CRLF. The caller sets `src`'s read timeout; `moved` counts
/// the bytes written to `dst`.
pub async fn splice_chunk<S: Io, D: Io>(
    src: &mut S,
    dst: &mut D,
    dec: &mut ChunkedDecoder,
    limits: &Limits,
    max_data: u64,
    toward: crate::net::splice::Toward,
    moved: &Cell<u64>,
) -> Option<Result<(), crate::net::splice::SpliceError>> {
    use crate::net::splice::{SpliceError, Transfer};
    let (size, rest) = dec.in_data()?;
    if limits.splice_min_bytes == 0
        || size < limits.splice_min_bytes
        // Over the limit: the copy path forwards up to it and refuses the
        // body there, as for any chunk.
        || dec.data_bytes.saturating_add(rest) > max_data
        || src.with_plain(|_| ()).is_none()
        || dst.with_plain(|_| ()).is_none()
    {
        return None;
    }
    let mut t = Transfer::new(rest, limits.splice_pipe_bytes, toward)?;
    if let Err(e) = crate::tls::stream::splice(src, dst, &mut t, moved).await {
        return Some(Err(e));
    }
    Some(
        dec.skip_data(rest)
            .map_err(|e| SpliceError::Read(io::Error::new(io::ErrorKind::InvalidData, e.0))),
    )
}

/// After this many connections released their buffers, the shard hands
/// free heap pages back to the kernel.
const TRIM_EVERY: u32 = 256;

thread_local! {
    /// Buffers released on this shard's thread since the last trim.
    static RELEASED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// A connection released its buffers or ended on this shard's thread
    /// since the last trim ([`trim_if_freed`]).
    static FREED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Hands the free heap pages back to the kernel: glibc keeps freed chunks
/// in the process, and only those at the top of a heap go back on their
/// own.
fn trim() {
    RELEASED.with(|n| n.set(0));
    FREED.with(|f| f.set(false));
    // SAFETY: malloc_trim only releases free memory; it is safe to call
    // from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where glibc's malloc draws the line between heap and `mmap`, and how
/// much free memory a heap's top may keep: the defaults' 128 KiB, fixed.
const MALLOC_THRESHOLD: i32 = 128 * 1024;

/// Fixes glibc's malloc thresholds at their defaults for the life of the
/// process; `main` calls it before any shard starts. Left to move, they
/// rise to the size of any large block freed (a table that grew, a
/// buffered body): the `mmap` threshold up to 32 MiB and the trim
/// threshold to twice that. A shard's thread allocates from its own malloc
/// arena, whose top only shrinks when at least the trim threshold is free
/// there ([`trim`] cannot shrink it), so after one such free a burst's
/// memory stayed resident: 2 MiB and more in some load-test rounds. Fixed,
/// the top shrinks as soon as 128 KiB are free, and blocks from 128 KiB
/// up are always mapped and unmapped on their own. Returns whether glibc
/// took both.
pub fn fix_malloc_thresholds() -> bool {
    // SAFETY: mallopt only changes malloc's parameters; it is safe to call
    // at any time, and here no other thread is allocating yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_THRESHOLD) == 1
    }
}

/// Trims if a connection released its buffers or ended on this thread
/// since the last trim, or if the caller freed something itself
/// (`freed_elsewhere`: the upstream pools' spare buffers). The shard calls
/// it once a second from its background work, so that the memory a burst
/// of connections held goes back within a second of their end, not when
/// TRIM_EVERY more connections have gone idle.
pub fn trim_if_freed(freed_elsewhere: bool) {
    if freed_elsewhere || FREED.with(|f| f.get()) {
        trim();
    }
}

/// Counts a connection that gave its buffers back; every TRIM_EVERY
/// releases the shard trims at once, without waiting for the next
/// [`trim_if_freed`].
fn note_released_buffers() {
    FREED.with(|f| f.set(true));
    let v = RELEASED.with(|n| n.get()) + 1;
    if v >= TRIM_EVERY {
        trim();
    } else {
        RELEASED.with(|n| n.set(v));
    }
}

/// Writes `a` then `b` to the client: one `sendmsg` on a plain connection
/// (see [`Stream::send_two`]).
pub async fn write_two(stream: &mut ClientStream, a: &[u8], b: &[u8]) -> io::Result<()> {
    stream.send_two(a, b).await
}

// === impl Connections ===

struct ConnSlot {
    sock: ReadHandle,
    idle: bool,
    tls: bool,
}

#[derive(Default)]
struct Registry {
    slots: Vec<Option<ConnSlot>>,
    free: Vec<usize>,
    live: usize,
    /// Of `live`, connections accepted on a TLS listener.
    live_tls: usize,
}

/// A shard's live connections: counted for the drain, and those waiting
/// for a request woken when it starts.
pub struct Connections {
    reg: RefCell<Registry>,
    draining: Cell<bool>,
    /// When draining started, and the drain's deadline.
    drain: Cell<Option<(Instant, Instant)>>,
    /// Never has permits; closed when draining starts, which wakes every
    /// task waiting on it (the accept loops).
    drain_signal: Semaphore,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            reg: RefCell::default(),
            draining: Cell::new(false),
            drain: Cell::new(None),
            drain_signal: Semaphore::new(0),
        }
    }
}

impl Connections {
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    pub fn live(&self) -> usize {
        self.reg.borrow().live
    }

    /// Of [`Connections::live`], those accepted on a TLS listener.
    pub fn live_tls(&self) -> usize {
        self.reg.borrow().live_tls
    }

    /// Live connections waiting for a request (parked ones included).
    pub fn idle(&self) -> usize {
        self.reg
            .borrow()
            .slots
            .iter()
            .filter(|s| s.as_ref().is_some_and(|s| s.idle))
            .count()
    }

    /// Records a new connection; the slot is released by [`ConnGuard`].
    pub fn register(self: &Rc<Self>, sock: &Socket, tls: bool) -> ConnGuard {
        let mut reg = self.reg.borrow_mut();
        let slot = ConnSlot {
            sock: sock.read_handle(),
            idle: false,
            tls,
        };
        let idx = match reg.free.pop() {
            Some(i) => {
                reg.slots[i] = Some(slot);
                i
            }
            None => {
                reg.slots.push(Some(slot));
                reg.slots.len() - 1
            }
        };
        reg.live += 1;
        reg.live_tls += usize::from(tls);
        ConnGuard {
            conns: self.clone(),
            idx,
        }
    }

    /// Starts draining, to be done by `deadline`: the accept loops take
    /// what is in their backlog and stop, and every response from now on
    /// says `connection: close`. A connection is not closed under a
    /// request its client may be sending: one waiting for a request (idle,
    /// parked, or just past a response that promised keep-alive) gets
    /// [`DRAIN_GRACE`] to send it, is answered, and closes lingering. The
    /// waiting ones are woken now so that their wait is cut to the grace;
    /// their sockets are left as they are, so input already there is read.
    pub fn begin_drain(&self, deadline: Instant) {
        if self.draining.replace(true) {
            return;
        }
        self.drain.set(Some((Instant::now(), deadline)));
        self.drain_signal.close();
        let waiting: Vec<ReadHandle> = self
            .reg
            .borrow()
            .slots
            .iter()
            .flatten()
            .filter(|s| s.idle)
            .map(|s| s.sock)
            .collect();
        // Not under the registry's borrow: a parked connection resumes
        // (and marks itself busy) at once.
        for h in waiting {
            interrupt_read(h);
        }
    }

    /// While draining, until when a connection waiting for a request since
    /// `since` may still get one: [`DRAIN_GRACE`] after `since` or after
    /// the drain began, whichever is later, and no later than the drain's
    /// deadline. None when not draining.
    pub fn grace_end(&self, since: Instant) -> Option<Instant> {
        let (began, deadline) = self.drain.get()?;
        Some((since.max(began) + DRAIN_GRACE).min(deadline))
    }

    /// The drain's deadline; None when not draining.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain.get().map(|(_, deadline)| deadline)
    }

    /// Resolves when draining starts.
    pub async fn drained(&self) {
        let _ = self.drain_signal.acquire(1).await;
    }
}

/// A connection's place in its shard's [`Connections`].
pub struct ConnGuard {
    conns: Rc<Connections>,
    idx: usize,
}

impl ConnGuard {
    /// Marks the connection as waiting for a request (closable on drain).
    pub fn set_idle(&self, idle: bool) {
        if let Some(Some(slot)) = self.conns.reg.borrow_mut().slots.get_mut(self.idx) {
            slot.idle = idle;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        // The connection ends: what it held is freed.
        FREED.with(|f| f.set(true));
        let mut reg = self.conns.reg.borrow_mut();
        if let Some(slot) = reg.slots.get_mut(self.idx) {
            if let Some(s) = slot.take() {
                reg.live -= 1;
                reg.live_tls -= usize::from(s.tls);
                reg.free.push(self.idx);
            }
        }
    }
}

#[cfg(test)]
mod tests;
