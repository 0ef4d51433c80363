//! The HTTP/1 client side shared by everything that calls an upstream:
//! [`read_response_head`] reads a response head (with its 1xx
//! interim responses) for the proxy and for [`call`]; [`call`] is a whole
//! buffered exchange, used for the request authorizer: one request over
//! the upstream machinery of [`crate::integration::upstream`] (target
//! choice, pooled keep-alive connections, connect timeout, passive health),
//! bounded as a whole by a timeout.
//!
//! Unlike the proxy, nothing streams in [`call`]: the request is one small
//! write, and the answer (at most `max_answer` bytes of body, framed by
//! Content-Length, chunked or close) is read whole into memory. A call
//! that fails on a pooled connection before any answer byte (the service
//! closed it while idle), or finds there something that is not a response
//! head, is sent once more on a new connection; callers use it for
//! requests free of side effects, so that is safe.

use crate::http::body::ChunkedDecoder;
use crate::http::encode::push_u64;
use crate::http::response::{parse_response_head_into, RespFraming, ResponseHead};
use crate::integration::upstream::UpstreamPlan;
use crate::integration::upstream::{UpConn, UpstreamState};
use crate::tls::stream::{Hold, Io};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

/// An answer, whatever its status.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// The answer's `Sec-WebSocket-Protocol` value (a WebSocket API's
    /// `$connect` integration picks the subprotocol with it).
    pub subprotocol: Option<Vec<u8>>,
}

/// Why a call failed.
pub enum Failure {
    Connect(io::Error),
    /// The connection failed or closed mid-exchange.
    Io(&'static str),
    Timeout,
    /// Not HTTP, or not HTTP we take.
    Malformed(&'static str),
    /// The answer's body is over the limit.
    TooLarge,
}

impl Failure {
    /// Whether the failure says something about the target's health (an
    /// oversized answer is the service's bug, not a sick target).
    fn target_fault(&self) -> bool {
        !matches!(self, Failure::TooLarge)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect failed: {e}"),
            Failure::Io(why) => f.write_str(why),
            Failure::Timeout => f.write_str("no answer within timeout_ms"),
            Failure::Malformed(why) => write!(f, "invalid response: {why}"),
            Failure::TooLarge => f.write_str("answer larger than allowed"),
        }
    }
}

/// A failure with the target it happened on, for the log.
pub struct CallError {
    pub failure: Failure,
    pub upstream: String,
    pub target: Option<SocketAddr>,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target {
            Some(t) => write!(
                f,
                "upstream {:?} target {t}: {}",
                self.upstream, self.failure
            ),
            None => write!(f, "upstream {:?}: {}", self.upstream, self.failure),
        }
    }
}

/// A buffered request: `POST` of a JSON body.
pub struct Request<'a> {
    /// The request target (path and query).
    pub target: &'a str,
    pub body: &'a [u8],
    pub request_id: &'a [u8],
    /// The whole exchange, connect included.
    pub timeout: Duration,
    /// Largest answer body read; a larger one is [`Failure::TooLarge`].
    pub max_answer: usize,
    /// Extra header lines, each ending in CRLF (may be empty).
    pub headers: &'a [u8],
}

/// Writes the request: head and body, sent with one write.
fn write_request(out: &mut Vec<u8>, req: &Request<'_>, uplan: &UpstreamPlan, target: usize) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    let label = uplan.targets.get(target).map_or("", |t| t.label.as_str());
    out.extend_from_slice(uplan.host.as_deref().unwrap_or(label).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\naccept: application/json\r\n");
    if !req.request_id.is_empty() {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(req.request_id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(req.headers);
    out.extend_from_slice(b"content-length: ");
    push_u64(out, req.body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(req.body);
}

/// Sends `req` to a target of the upstream and reads the answer within
/// `req.timeout`.
pub async fn call(
    uplan: &UpstreamPlan,
    state: &UpstreamState,
    req: &Request<'_>,
) -> Result<Answer, CallError> {
    let target = state.pick(uplan, Instant::now());
    let _in_flight = state.begin(target);
    let mut msg = Vec::with_capacity(256 + req.body.len());
    write_request(&mut msg, req, uplan, target);
    let exchange = exchange(uplan, state, target, &msg, req.max_answer);
    let timer = async {
        glommio::timer::sleep(req.timeout).await;
        Err(Failure::Timeout)
    };
    // Dropping the losing exchange closes its connection: a late answer
    // can never be read as the next call's.
    let result = futures_lite::future::or(exchange, timer).await;
    match &result {
        Ok(_) => state.record_success(target),
        Err(f) if f.target_fault() => {
            state.record_failure(uplan, target, Instant::now());
        }
        Err(_) => {}
    }
    result.map_err(|failure| CallError {
        failure,
        upstream: uplan.name.clone(),
        target: uplan.targets.get(target).map(|t| t.addr),
    })
}

enum ReadErr {
    /// Closed or reset before any byte of an answer.
    Closed,
    /// Bytes that are not a response head where the answer's head should
    /// be.
    BadHead(&'static str),
    Failed(Failure),
}

async fn exchange(
    uplan: &UpstreamPlan,
    state: &UpstreamState,
    target: usize,
    msg: &[u8],
    max_answer: usize,
) -> Result<Answer, Failure> {
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            state.checkout(uplan, target, Instant::now(), false)
        };
        let (mut up, reused) = match pooled {
            Some(c) => (c, true),
            None => {
                let c = state.connect(uplan, target).await;
                state.note_connect(target, c.is_ok());
                (c.map_err(Failure::Connect)?, false)
            }
        };
        if up.stream.write_all(msg).await.is_err() {
            if reused {
                fresh_only = true;
                continue;
            }
            return Err(Failure::Io("sending the call failed"));
        }
        // The upstream's own read timeout, not what a TLS connect left on
        // the socket (as little as 1 ms); timeout_ms bounds the whole call.
        up.stream.set_read_timeout(Some(uplan.timeout));
        match read_answer(&mut up, uplan, max_answer).await {
            Ok((answer, reusable)) => {
                if reusable {
                    state.checkin(uplan, up);
                }
                return Ok(answer);
            }
            // A pooled connection may also hold bytes its last answer left
            // behind that arrived after the pool's check.
            Err(ReadErr::Closed | ReadErr::BadHead(_)) if reused => fresh_only = true,
            Err(ReadErr::Closed) => return Err(Failure::Io("closed before answering")),
            Err(ReadErr::BadHead(why)) => return Err(Failure::Malformed(why)),
            Err(ReadErr::Failed(f)) => return Err(f),
        }
    }
}

/// Reads one final answer into memory. Returns it and whether the
/// connection can serve another call.
async fn read_answer(
    up: &mut UpConn,
    uplan: &UpstreamPlan,
    max_answer: usize,
) -> Result<(Answer, bool), ReadErr> {
    use ReadErr::Failed;
    up.filled = 0;
    let mut resp = ResponseHead::default();
    let mut deadline = None;
    loop {
        match read_response_head(up, uplan, false, &mut resp, &mut deadline).await {
            // 100 / 103: nothing for us.
            Ok(Head::Interim) => up.drop_head(resp.len),
            Ok(Head::Final) => break,
            Err(HeadError::Closed(_)) => return Err(ReadErr::Closed),
            Err(HeadError::Timeout) => return Err(Failed(Failure::Timeout)),
            Err(HeadError::Bad(why)) => return Err(ReadErr::BadHead(why)),
        }
    }
    // The body's reads wait up to timeout_ms each, as before the head's
    // deadline shortened the socket's timeout.
    up.stream.set_read_timeout(Some(uplan.timeout));
    // Before the body's reads reuse the buffer the head is in.
    let subprotocol = resp
        .headers
        .iter()
        .find(|h| {
            h.name
                .get(&up.buf)
                .eq_ignore_ascii_case(b"sec-websocket-protocol")
        })
        .map(|h| h.value.get(&up.buf).to_vec());
    let mut body = Vec::new();
    let (start, end) = (resp.len, up.filled);
    let reusable = match resp.framing {
        RespFraming::None => resp.keep_alive && start == end,
        RespFraming::Length(n) => {
            if n > max_answer as u64 {
                return Err(Failed(Failure::TooLarge));
            }
            let n = n as usize;
            let take = (end - start).min(n);
            body.extend_from_slice(&up.buf[start..start + take]);
            while body.len() < n {
                let max = up.buf.len().min(n - body.len());
                let got = read_some(up, max).await?;
                body.extend_from_slice(&up.buf[..got]);
            }
            resp.keep_alive && end - start <= n
        }
        RespFraming::Chunked => {
            let mut dec = ChunkedDecoder::new(false, uplan.max_response_header_bytes);
            let (mut pos, mut end) = (start, end);
            loop {
                while pos < end && !dec.is_done() {
                    let step = dec
                        .step(&up.buf[pos..end])
                        .map_err(|e| Failed(Failure::Malformed(e.0)))?;
                    if step.consumed == 0 {
                        return Err(Failed(Failure::Malformed("chunked body stuck")));
                    }
                    if step.forward {
                        if body.len() + step.consumed > max_answer {
                            return Err(Failed(Failure::TooLarge));
                        }
                        body.extend_from_slice(&up.buf[pos..pos + step.consumed]);
                    }
                    pos += step.consumed;
                }
                if dec.is_done() {
                    break resp.keep_alive && pos == end;
                }
                let max = up.buf.len();
                end = read_some(up, max).await?;
                pos = 0;
            }
        }
        RespFraming::Close => {
            body.extend_from_slice(&up.buf[start..end]);
            while body.len() <= max_answer {
                let max = up.buf.len();
                match up.stream.read(&mut up.buf[..max]).await {
                    Ok(0) => break,
                    Ok(n) => body.extend_from_slice(&up.buf[..n]),
                    Err(_) => {
                        return Err(Failed(Failure::Io("connection failed inside the answer")))
                    }
                }
            }
            if body.len() > max_answer {
                return Err(Failed(Failure::TooLarge));
            }
            false
        }
    };
    Ok((
        Answer {
            status: resp.status,
            body,
            subprotocol,
        },
        reusable,
    ))
}

/// Reads at most `max` body bytes into the start of `up.buf`.
async fn read_some(up: &mut UpConn, max: usize) -> Result<usize, ReadErr> {
    match up.stream.read(&mut up.buf[..max]).await {
        Ok(0) => Err(ReadErr::Failed(Failure::Io("closed inside the answer"))),
        Ok(n) => Ok(n),
        Err(_) => Err(ReadErr::Failed(Failure::Io(
            "connection failed inside the answer",
        ))),
    }
}

/// Which kind of response head [`read_response_head`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A 1xx interim response (never 101): the caller forwards or drops it,
    /// then calls [`UpConn::drop_head`] and reads again.
    Interim,
    /// The final response head; its bytes and whatever body bytes came with
    /// it are `up.buf[..up.filled]`.
    Final,
}

/// Why no response head could be read.
#[derive(Debug)]
pub enum HeadError {
    /// Closed or reset before any byte of a response.
    Closed(io::Error),
    /// No response within the upstream's `timeout_ms`.
    Timeout,
    Bad(&'static str),
}

/// Reads the next response head into `up.buf`, within the upstream's
/// timeout and `max_response_header_bytes`, and its parsed form into
/// `out` (in place: a parsed head is several hundred bytes, not worth
/// moving through every caller). A `101` is refused: no request of ours
/// asks to switch protocols. `deadline` is when the head must be in by,
/// set by the first read that needs it (see [`read_head`]); a caller
/// reading a final head after 1xx ones passes the same one each time.
pub async fn read_response_head(
    up: &mut UpConn,
    uplan: &UpstreamPlan,
    head_request: bool,
    out: &mut ResponseHead,
    deadline: &mut Option<Instant>,
) -> Result<Head, HeadError> {
    read_head(
        &mut up.stream,
        &mut up.buf,
        &mut up.filled,
        uplan,
        head_request,
        out,
        deadline,
    )
    .await
}

/// [`read_response_head`] on the parts of an upstream connection: its
/// stream (perhaps shared with a request body still going up), its buffer
/// and how much of it is filled.
///
/// The upstream's `timeout_ms` bounds the head as a whole, 1xx heads
/// before it included, not each read: a backend that trickles its head,
/// or sends 103 after 103, still gets its 504 in time. The clock starts
/// at the first read, or, on a stream whose read timeout is held (a
/// request body still going up: the backend is waiting for us), when the
/// hold ends; `deadline` keeps it across calls.
pub async fn read_head<U: Io>(
    stream: &mut U,
    buf: &mut Vec<u8>,
    filled: &mut usize,
    uplan: &UpstreamPlan,
    head_request: bool,
    out: &mut ResponseHead,
    deadline: &mut Option<Instant>,
) -> Result<Head, HeadError> {
    let mut received_any = *filled > 0;
    loop {
        if *filled > 0 {
            match parse_response_head_into(
                &buf[..*filled],
                head_request,
                uplan.max_response_header_bytes,
                out,
            ) {
                Err(e) => return Err(HeadError::Bad(e.0)),
                Ok(false) => {}
                Ok(true) if out.status == 101 => {
                    return Err(HeadError::Bad(
                        "101 Switching Protocols without an upgrade request",
                    ))
                }
                Ok(true) => {
                    return Ok(if (100..200).contains(&out.status) {
                        Head::Interim
                    } else {
                        Head::Final
                    });
                }
            }
        }
        if *filled == buf.len() {
            if buf.len() > uplan.max_response_header_bytes {
                return Err(HeadError::Bad("response head too large"));
            }
            let n = buf.len() * 2;
            buf.resize(n, 0);
        }
        let now = Instant::now();
        let start = match stream.read_timeout_hold() {
            // Applied when the hold ends: the clock starts then.
            Hold::Held => None,
            Hold::Released(at) => Some(at),
            Hold::Never => Some(now),
        };
        let wait = match start {
            None => {
                *deadline = None;
                uplan.timeout
            }
            Some(start) => {
                let end = *deadline.get_or_insert(start + uplan.timeout);
                match end.checked_duration_since(now) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Err(HeadError::Timeout),
                }
            }
        };
        stream.set_read_timeout(Some(wait));
        let at = *filled;
        match stream.recv(&mut buf[at..]).await {
            Ok(0) if !received_any => {
                return Err(HeadError::Closed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )))
            }
            Ok(0) => return Err(HeadError::Bad("connection closed inside the response head")),
            Ok(n) => {
                *filled += n;
                received_any = true;
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(HeadError::Timeout),
            Err(e) if !received_any => return Err(HeadError::Closed(e)),
            Err(_) => return Err(HeadError::Bad("connection failed inside the response head")),
        }
    }
}
