//! The call to the authorizer service: one `POST` over the upstream
//! machinery of [`crate::integration::upstream`] (target choice, pooled
//! keep-alive connections, connect timeout, passive health), bounded as a
//! whole by the authorizer's `timeout_ms`.
//!
//! Unlike the proxy, nothing streams: the request is one small write, and
//! the answer (at most [`super::MAX_ANSWER_BYTES`] of body, framed by
//! Content-Length, chunked or close) is read whole into memory. A call
//! that fails on a pooled connection before any answer byte (the service
//! closed it while idle) is sent once more on a new connection; the
//! protocol asks authorizers to be free of side effects, so that is safe.

use super::{RequestAuthorizer, MAX_ANSWER_BYTES};
use crate::http::body::ChunkedDecoder;
use crate::http::encode::push_u64;
use crate::http::response::{parse_response_head, RespFraming};
use crate::integration::upstream::UpstreamPlan;
use crate::integration::upstream::{UpConn, UpstreamState};
use crate::runtime::Shard;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// An answer, whatever its status.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
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
            Failure::TooLarge => write!(f, "answer larger than {MAX_ANSWER_BYTES} bytes"),
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

/// Writes the call: head and body, sent with one write.
fn write_request(
    out: &mut Vec<u8>,
    az: &RequestAuthorizer,
    uplan: &UpstreamPlan,
    target: usize,
    body: &[u8],
    request_id: &[u8],
) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(az.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    let label = uplan.targets.get(target).map_or("", |t| t.label.as_str());
    out.extend_from_slice(uplan.host.as_deref().unwrap_or(label).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\naccept: application/json\r\n");
    if !request_id.is_empty() {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(request_id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    push_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Calls the authorizer: sends `body` and reads the answer within
/// `az.timeout`.
pub async fn call(
    az: &RequestAuthorizer,
    shard: &Shard,
    body: &[u8],
    request_id: &[u8],
) -> Result<Answer, CallError> {
    let (Some(uplan), Some(state)) = (
        shard.plan.upstreams.get(az.upstream),
        shard.upstreams.get(az.upstream),
    ) else {
        return Err(CallError {
            failure: Failure::Malformed("no such upstream"),
            upstream: String::new(),
            target: None,
        });
    };
    let target = state.pick(uplan, Instant::now());
    let _in_flight = state.begin(target);
    let mut msg = Vec::with_capacity(256 + body.len());
    write_request(&mut msg, az, uplan, target, body, request_id);
    let exchange = exchange(uplan, state, target, &msg);
    let timer = async {
        glommio::timer::sleep(az.timeout).await;
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
    Failed(Failure),
}

async fn exchange(
    uplan: &UpstreamPlan,
    state: &UpstreamState,
    target: usize,
    msg: &[u8],
) -> Result<Answer, Failure> {
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            state.checkout(uplan, target, Instant::now())
        };
        let (mut up, reused) = match pooled {
            Some(c) => (c, true),
            None => (
                state
                    .connect(uplan, target)
                    .await
                    .map_err(Failure::Connect)?,
                false,
            ),
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
        match read_answer(&mut up, uplan).await {
            Ok((answer, reusable)) => {
                if reusable {
                    state.checkin(uplan, up);
                }
                return Ok(answer);
            }
            Err(ReadErr::Closed) if reused => fresh_only = true,
            Err(ReadErr::Closed) => return Err(Failure::Io("closed before answering")),
            Err(ReadErr::Failed(f)) => return Err(f),
        }
    }
}

/// Reads one final answer into memory. Returns it and whether the
/// connection can serve another call.
async fn read_answer(up: &mut UpConn, uplan: &UpstreamPlan) -> Result<(Answer, bool), ReadErr> {
    use ReadErr::Failed;
    up.filled = 0;
    let mut received_any = false;
    let resp = loop {
        if up.filled > 0 {
            match parse_response_head(&up.buf[..up.filled], false, uplan.max_response_header_bytes)
            {
                Err(e) => return Err(Failed(Failure::Malformed(e.0))),
                Ok(None) => {}
                Ok(Some(r)) if (100..200).contains(&r.status) => {
                    if r.status == 101 {
                        return Err(Failed(Failure::Malformed("101 Switching Protocols")));
                    }
                    // 100 / 103: nothing for us.
                    up.buf.copy_within(r.len..up.filled, 0);
                    up.filled -= r.len;
                    continue;
                }
                Ok(Some(r)) => break r,
            }
        }
        if up.filled == up.buf.len() {
            if up.buf.len() > uplan.max_response_header_bytes {
                return Err(Failed(Failure::Malformed("response head too large")));
            }
            let n = up.buf.len() * 2;
            up.buf.resize(n, 0);
        }
        let filled = up.filled;
        match up.stream.read(&mut up.buf[filled..]).await {
            Ok(0) | Err(_) if !received_any => return Err(ReadErr::Closed),
            Ok(0) => {
                return Err(Failed(Failure::Malformed(
                    "connection closed inside the response head",
                )))
            }
            Ok(n) => {
                up.filled += n;
                received_any = true;
            }
            Err(_) => {
                return Err(Failed(Failure::Io(
                    "connection failed inside the response head",
                )))
            }
        }
    };
    let mut body = Vec::new();
    let (start, end) = (resp.len, up.filled);
    let reusable = match resp.framing {
        RespFraming::None => resp.keep_alive && start == end,
        RespFraming::Length(n) => {
            if n > MAX_ANSWER_BYTES as u64 {
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
                        if body.len() + step.consumed > MAX_ANSWER_BYTES {
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
            while body.len() <= MAX_ANSWER_BYTES {
                let max = up.buf.len();
                match up.stream.read(&mut up.buf[..max]).await {
                    Ok(0) => break,
                    Ok(n) => body.extend_from_slice(&up.buf[..n]),
                    Err(_) => {
                        return Err(Failed(Failure::Io("connection failed inside the answer")))
                    }
                }
            }
            if body.len() > MAX_ANSWER_BYTES {
                return Err(Failed(Failure::TooLarge));
            }
            false
        }
    };
    Ok((
        Answer {
            status: resp.status,
            body,
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
