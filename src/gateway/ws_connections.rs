//! `@connections` on a WebSocket API's own path (docs/websocket.md): the
//! integration of the `POST`, `GET` and `DELETE /@connections/{id}` routes
//! the compiler adds under the API's base path when `[apis.websocket]
//! connections_authorizer` names a SigV4 authorizer. The driver has run
//! that authorizer (and read and hashed the body its signature covers);
//! here the body is read if it was not, and the command is run on the
//! shard that holds the connection ([`super::websocket::manage`]): this
//! one, or another through its inbox, the answer coming back to this
//! request's task without holding up the shard.

use super::exchange::Exchange;
use super::reply::{self, Body};
use super::websocket::{manage, Op};
use super::Gateway;
use crate::http::conn::{BodyError, Conn, Flow};
use crate::http::method::Method;
use crate::http::parse::{Framing, RequestHead};
use crate::http::respond::{Reply, ReplyBody};
use crate::integration::websocket::WsConnectionsPlan;
use std::borrow::Cow;

/// Answers an `@connections` request; `consumed` is the head's length if
/// a phase consumed it (the signed-body phase, with the body buffered
/// behind it).
pub async fn serve(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    consumed: Option<usize>,
    plan: &WsConnectionsPlan,
) -> Flow {
    if consumed.is_none() {
        conn.consume(head.len);
    }
    // The route is `.../@connections/{connectionId}`: the id is the last
    // segment, percent-decoded (a connection id is hex digits).
    let id = match conn.with_head(head.len) {
        Some(buf) => {
            let path = head.path(buf);
            let last = path
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(path, |i| &path[i + 1..]);
            String::from_utf8_lossy(&crate::http::percent::percent_decode(last)).into_owned()
        }
        None => String::new(),
    };
    let (op, body) = match head.method {
        Method::Post => {
            if head.framing == Framing::Chunked {
                return error(gw, conn, head, x, 411, "Length Required").await;
            }
            let limits = x.generation.plan.limits;
            let read = conn
                .buffer_body(
                    head.framing,
                    plan.max_message as u64,
                    &limits,
                    head.expect_continue,
                )
                .await;
            match read {
                Ok(n) => {
                    let data = conn.unread()[..n].to_vec();
                    conn.consume(n);
                    x.outcome.bytes_in += n as u64;
                    (Op::Post(data), Body::Done(true))
                }
                Err(BodyError::TooLarge) => {
                    return error(gw, conn, head, x, 413, "Payload Too Large").await
                }
                Err(e) => return reply::body_error(gw, conn, x, e).await,
            }
        }
        // HEAD takes GET's route, and gets its head.
        Method::Get | Method::Head => (Op::Get, Body::Drain),
        Method::Delete => (Op::Delete, Body::Drain),
        // The compiler routes these methods only.
        _ => return error(gw, conn, head, x, 405, "Method Not Allowed").await,
    };
    let answer = manage(gw.id, &id, op, &plan.api).await;
    if !answer.body.is_empty() {
        conn.ebuf
            .extend_from_slice(b"content-type: application/json\r\n");
    }
    reply::send(
        gw,
        conn,
        head,
        x,
        body,
        Reply {
            status: answer.status,
            body: ReplyBody::Bytes(&answer.body),
            allow: None,
        },
    )
    .await
}

async fn error(
    gw: &Gateway,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
    status: u16,
    message: &'static str,
) -> Flow {
    reply::error(gw, conn, head, x, status, Cow::Borrowed(message), None).await
}
