//! The one writer of gateway-made response heads: errors, policy refusals,
//! preflights, mock answers and cache hits all leave through
//! [`write_reply`]. What differs between them is the [`Reply`]: a status
//! with a JSON message, a status with bytes, or a head rendered ahead of
//! time (a mock's configured headers, a cached entry's stored ones). What
//! every one of them carries is written here once: `date`, the request
//! id, `allow`, the policies' header lines, and the connection header.

use super::encode::{json_message_len, push_json_message, push_status_line, push_u64};
use super::method::AllowSet;

/// What a gateway-made response says.
#[derive(Debug, Clone, Copy)]
pub enum ReplyBody<'a> {
    /// `{"message": ...}` as `application/json`.
    Json(&'a str),
    /// These bytes, with a `content-length` (none for a 204 or 304).
    Bytes(&'a [u8]),
    /// A head rendered ahead of time (status line, fixed headers and
    /// `content-length`, without the blank line), then these body bytes.
    Prerendered { head: &'a [u8], body: &'a [u8] },
}

/// A gateway-made response.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub status: u16,
    pub body: ReplyBody<'a>,
    /// The `Allow` header of a 405.
    pub allow: Option<AllowSet>,
}

/// What the connection adds to every response.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub date: &'a [u8; 29],
    pub request_id: &'a [u8],
    /// Complete header lines (`name: value\r\n`) from the policies.
    pub extra: &'a [u8],
    /// The connection stays open after this response.
    pub keep_alive: bool,
    /// The client's HTTP minor version: an HTTP/1.0 client is told
    /// `keep-alive` explicitly.
    pub minor_version: u8,
    /// A HEAD request: the body is not sent (its length is).
    pub head_request: bool,
}

/// Writes the connection header that ends every response head the
/// gateway writes, proxied ones included.
pub fn push_connection(out: &mut Vec<u8>, keep_alive: bool, minor_version: u8) {
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor_version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// Writes the response head into `out` (cleared first), and for a JSON
/// reply its body too. Returns the body bytes still to be sent after `out`
/// (empty for JSON and HEAD requests).
pub fn write_reply<'a>(out: &mut Vec<u8>, reply: &Reply<'a>, env: &Envelope<'_>) -> &'a [u8] {
    out.clear();
    let body: &'a [u8] = match reply.body {
        ReplyBody::Json(message) => {
            push_status_line(out, reply.status);
            out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
            push_u64(out, json_message_len(message) as u64);
            out.extend_from_slice(b"\r\n");
            b""
        }
        ReplyBody::Bytes(body) => {
            push_status_line(out, reply.status);
            // RFC 9110 §8.6: a 204 carries no Content-Length.
            if reply.status != 204 && reply.status != 304 {
                out.extend_from_slice(b"content-length: ");
                push_u64(out, body.len() as u64);
                out.extend_from_slice(b"\r\n");
            }
            body
        }
        ReplyBody::Prerendered { head, body } => {
            out.extend_from_slice(head);
            body
        }
    };
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(env.date);
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(env.request_id);
    out.extend_from_slice(b"\r\n");
    if let Some(allow) = reply.allow {
        out.extend_from_slice(b"allow: ");
        allow.write_to(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(env.extra);
    push_connection(out, env.keep_alive, env.minor_version);
    out.extend_from_slice(b"\r\n");
    if env.head_request {
        return b"";
    }
    if let ReplyBody::Json(message) = reply.body {
        push_json_message(out, message);
    }
    body
}

// Test code only: the `unwrap()`s turn bytes this module wrote from ASCII
// literals into text; a failure is a failing test.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::encode::format_http_date;

    fn env<'a>(date: &'a [u8; 29], extra: &'a [u8], keep: bool, minor: u8) -> Envelope<'a> {
        Envelope {
            date,
            request_id: b"abc",
            extra,
            keep_alive: keep,
            minor_version: minor,
            head_request: false,
        }
    }

    #[test]
    fn json_error_is_aws_style_with_its_length() {
        let date = format_http_date(0);
        let mut out = Vec::new();
        let r = Reply {
            status: 404,
            body: ReplyBody::Json("Not Found"),
            allow: None,
        };
        let rest = write_reply(
            &mut out,
            &r,
            &env(&date, b"access-control-allow-origin: *\r\n", false, 1),
        );
        assert!(rest.is_empty());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("content-type: application/json\r\n"));
        assert!(text.contains("content-length: 23\r\n"), "{text}");
        assert!(text.contains("x-request-id: abc\r\n"));
        assert!(text.contains("\r\naccess-control-allow-origin: *\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(
            text.ends_with("\r\n\r\n{\"message\":\"Not Found\"}"),
            "{text}"
        );
    }

    #[test]
    fn head_requests_get_the_length_but_no_body() {
        let date = format_http_date(0);
        let mut out = Vec::new();
        let r = Reply {
            status: 405,
            body: ReplyBody::Json("Method Not Allowed"),
            allow: Some({
                let mut a = AllowSet::default();
                a.insert(crate::http::method::Method::Get);
                a
            }),
        };
        let mut e = env(&date, b"", true, 1);
        e.head_request = true;
        write_reply(&mut out, &r, &e);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("allow: GET\r\n"), "{text}");
        assert!(text.contains("content-length: 32\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(!text.contains("connection:"), "{text}");
    }

    #[test]
    fn bytes_and_prerendered_heads_leave_the_body_to_send() {
        let date = format_http_date(0);
        let mut out = Vec::new();
        let r = Reply {
            status: 204,
            body: ReplyBody::Bytes(b""),
            allow: None,
        };
        write_reply(&mut out, &r, &env(&date, b"", true, 0));
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        let r = Reply {
            status: 200,
            body: ReplyBody::Prerendered {
                head: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n",
                body: b"hi",
            },
            allow: None,
        };
        let rest = write_reply(&mut out, &r, &env(&date, b"", true, 1));
        assert_eq!(rest, b"hi");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: "));
        assert!(text.ends_with("x-request-id: abc\r\n\r\n"), "{text}");
    }
}
