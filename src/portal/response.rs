//! A portal response before it is written: status, content type, body and
//! extra header lines. Built by the page, key and try-it handlers and
//! written by [`super::serve`]; its own module so that the handlers and the
//! server do not import each other.

use serde_json::{json, Value};

/// A response to send.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines, each ending in CRLF.
    pub headers: String,
}

impl Response {
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type,
            body,
            headers: String::new(),
        }
    }

    pub fn html(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
            headers: String::new(),
        }
    }

    pub fn json(status: u16, v: &Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
            headers: String::new(),
        }
    }

    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &json!({ "message": message }))
    }
}
