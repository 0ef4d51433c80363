//! Gateway-made responses leave here: [`send`] writes an error, a policy's
//! refusal, a preflight, a mock answer or a cache hit through the one head
//! writer ([`crate::http::respond`]), records status and bytes in the
//! exchange, and says what the connection does next.

use super::exchange::Exchange;
use super::Gateway;
use crate::http::conn::{write_two, BodyError, Conn, Flow};
use crate::http::method::{AllowSet, Method};
use crate::http::parse::{Framing, RequestHead};
use crate::http::respond::{write_reply, Envelope, Reply, ReplyBody};
use std::borrow::Cow;

/// What happens to a request body the integration does not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Read and dropped before answering (a mock or a cache hit answers a
    /// request that was let through).
    Drain,
    /// Not read: the connection stays open only if the body is already
    /// buffered whole (an error or a refusal).
    Refuse,
    /// Already dealt with: `true` when it was read whole (an upstream
    /// error after the body was forwarded).
    Done(bool),
}

/// Answers with a JSON `{"message": ...}` error.
pub async fn error(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    status: u16,
    message: Cow<'static, str>,
    allow: Option<AllowSet>,
) -> Flow {
    let flow = send(
        gw,
        conn,
        head,
        x,
        Body::Refuse,
        Reply {
            status,
            body: ReplyBody::Json(&message),
            allow,
        },
    )
    .await;
    x.outcome.error = Some(message);
    flow
}

/// Writes `reply` with the request's envelope: date, request id, the
/// policies' header lines, and `connection: close` when the connection
/// does not stay open (the request's wish, a body left unread, or a shard
/// that has started to drain).
pub async fn send(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    body: Body,
    reply: Reply<'_>,
) -> Flow {
    write(
        gw,
        conn,
        head.framing,
        head.keep_alive,
        head.expect_continue,
        x,
        body,
        reply,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn write(
    gw: &Gateway,
    conn: &mut Conn,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    x: &mut Exchange,
    body: Body,
    reply: Reply<'_>,
) -> Flow {
    let body_read = match body {
        Body::Drain => {
            if framing != Framing::None {
                let limits = x.generation.plan.limits;
                match conn
                    .pump_body(framing, &limits, None, expect_continue)
                    .await
                {
                    Ok(n) => x.outcome.bytes_in += n,
                    Err(e) => return body_error(gw, conn, x, e).await,
                }
            }
            true
        }
        Body::Refuse => conn.consume_buffered_body(framing),
        Body::Done(read) => read,
    };
    let keep = keep_alive && body_read && !gw.connections.draining();
    let date = *gw.date.borrow_mut().get();
    let env = Envelope {
        date: &date,
        request_id: &x.request_id,
        extra: &conn.ebuf,
        keep_alive: keep,
        minor_version: x.minor_version,
        head_request: x.method == Method::Head,
    };
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    let rest = write_reply(&mut wbuf, &reply, &env);
    let written = write_two(&mut conn.stream, &wbuf, rest).await;
    x.outcome.status = reply.status;
    if written.is_ok() {
        x.outcome.bytes_out += (wbuf.len() + rest.len()) as u64;
    }
    conn.wbuf = wbuf;
    match (written, keep, body_read) {
        (Err(_), _, _) => Flow::Close,
        (Ok(()), true, _) => Flow::KeepAlive,
        (Ok(()), false, true) => Flow::Close,
        (Ok(()), false, false) => Flow::Linger,
    }
}

/// Answers a request whose body could not be read: 408 or 413 or 400, or
/// nothing when the client went away.
pub fn body_error<'a>(
    gw: &'a Gateway,
    conn: &'a mut Conn,
    x: &'a mut Exchange,
    e: BodyError,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Flow> + 'a>> {
    // Boxed: `write` awaits it, so it cannot be part of `write`'s own state.
    Box::pin(body_error_inner(gw, conn, x, e))
}

async fn body_error_inner(gw: &Gateway, conn: &mut Conn, x: &mut Exchange, e: BodyError) -> Flow {
    let (status, message) = match e {
        BodyError::Client => {
            x.outcome.error = Some(Cow::Borrowed("client closed the connection"));
            return Flow::Close;
        }
        BodyError::Sink(_) => return Flow::Close,
        BodyError::Timeout => (408, "Request Timeout"),
        BodyError::TooLarge => (413, "Request Entity Too Large"),
        BodyError::Bad(m) => (400, m),
    };
    // The body's end is unknown: the connection closes after this.
    write(
        gw,
        conn,
        Framing::Chunked,
        false,
        false,
        x,
        Body::Refuse,
        Reply {
            status,
            body: ReplyBody::Json(message),
            allow: None,
        },
    )
    .await;
    x.outcome.error = Some(Cow::Borrowed(message));
    if status == 408 {
        Flow::Close
    } else {
        Flow::Linger
    }
}

/// Answers what the connection loop refuses before a request exists; the
/// connection closes after it.
pub async fn close_with(
    gw: &Gateway,
    conn: &mut Conn,
    x: &mut Exchange,
    status: u16,
    message: &'static str,
) {
    write(
        gw,
        conn,
        Framing::None,
        false,
        false,
        x,
        Body::Refuse,
        Reply {
            status,
            body: ReplyBody::Json(message),
            allow: None,
        },
    )
    .await;
    x.outcome.error = Some(Cow::Borrowed(message));
}
