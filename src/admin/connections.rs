//! `@connections` on the admin listener (docs/websocket.md): `POST`
//! (send the body to a WebSocket connection as one message), `GET`
//! (describe it) and `DELETE` (close it) at `/@connections/{id}`. The id
//! names the shard that holds the connection; the request goes to that
//! shard's control inbox ([`crate::runtime::Control::WebSocket`]) and this
//! thread waits for its answer.

use crate::config::raw::websocket::MAX_MESSAGE_LIMIT;
use crate::gateway::websocket::{parse_id, Answer, Command, Op};
use crate::http::encode::push_json_message;
use crate::http::method::Method;
use crate::runtime::{Control, Inbox};
use std::time::Duration;

/// The path prefix.
pub const PREFIX: &[u8] = b"/@connections/";
/// The largest body a `POST` may have; the API's `max_message_bytes`
/// decides below it (413 either way).
pub const MAX_BODY: usize = MAX_MESSAGE_LIMIT;
/// How long the admin thread waits for the shard (which takes the command
/// as soon as its inbox is rung).
const SHARD_TIMEOUT: Duration = Duration::from_secs(2);

fn error(status: u16, message: &str) -> Answer {
    let mut body = Vec::new();
    push_json_message(&mut body, message);
    Answer { status, body }
}

/// Answers an `@connections` request for `path` (which starts with
/// [`PREFIX`]); `body` is the request's body (empty but for `POST`).
pub fn answer(inboxes: &[Inbox], method: Method, path: &[u8], body: Vec<u8>) -> Answer {
    let Some(id) = path
        .strip_prefix(PREFIX)
        .and_then(|id| std::str::from_utf8(id).ok())
    else {
        return error(404, "Not Found");
    };
    let op = match method {
        Method::Post => Op::Post(body),
        Method::Get => Op::Get,
        Method::Delete => Op::Delete,
        _ => return error(405, "Method Not Allowed"),
    };
    // An id no shard of this process could have made names no connection.
    let Some(inbox) = parse_id(id).and_then(|(shard, _, _)| inboxes.get(shard)) else {
        return error(410, "Gone");
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    let cmd = Command {
        id: id.to_string(),
        op,
        api: None,
        reply: tx,
        wake: None,
    };
    if inbox.send(Control::WebSocket(cmd)).is_err() {
        return error(410, "Gone");
    }
    match rx.recv_timeout(SHARD_TIMEOUT) {
        Ok(a) => a,
        Err(_) => error(503, "The shard holding the connection did not answer"),
    }
}
