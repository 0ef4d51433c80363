//! The admin listener's HTTP/1.1: one thread per connection, keep-alive,
//! request heads parsed by the gateway's own parser
//! ([`crate::http::parse::parse_request_head`]) under small limits,
//! the methods each path takes ([`super::api::allowed`]), request bodies up
//! to 1 MiB with a Content-Length (`@connections`, [`super::connections`]:
//! up to its own limit). Every error is JSON
//! (`{"message": ...}`), like the gateway's.

use super::{dashboard, Shared};
use crate::http::encode::push_json_message;
use crate::http::parse::{parse_request_head, Framing, HeadLimits, RequestHead};
use crate::observe::expo;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An admin request's head may be this large; admin clients send small ones.
const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 4 * 1024,
    max_head: 16 * 1024,
    max_headers: 64,
};
/// A connection quiet for this long (mid-request or between requests) is
/// closed, and so is one whose request head takes longer than this to
/// arrive, however it trickles in.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (a config file for `PUT /config`).
const MAX_BODY: usize = 1024 * 1024;

pub(super) fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let active = Arc::new(AtomicUsize::new(0));
    // Out of descriptors (EMFILE), accept fails at once for as long as it
    // lasts: retried every 50 ms, logged at most once a second.
    let mut logged: Option<std::time::Instant> = None;
    // The TLS settings connections start with: the newest a reload sent.
    let mut tls = shared.tls.clone();
    for stream in listener.incoming() {
        while let Ok(t) = shared.ctx.tls_updates.try_recv() {
            tls = Some(t);
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    logged = Some(std::time::Instant::now());
                    crate::log!(
                        "warn",
                        "admin: accept failed: {e} (retrying every 50 ms, logged at most once a second)"
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= super::MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            if tls.is_some() {
                // A plain-text answer means nothing to a TLS client.
                continue;
            }
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_response(
                &mut stream,
                &Response::error(503, "Too many admin connections"),
                false,
                false,
            );
            continue;
        }
        let shared = shared.clone();
        let tls = tls.clone();
        let count = active.clone();
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "unknown peer".to_string());
        let spawned = std::thread::Builder::new()
            .name("coregate-admin-conn".into())
            .spawn(move || {
                match &tls {
                    None => serve_plain(stream, &shared, &peer),
                    Some(tls) => serve_tls(stream, tls, &shared, &peer),
                }
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            crate::log!("warn", "admin: cannot start a connection thread: {e}");
        }
    }
}

/// A response to send.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// Extra header lines, each ending in CRLF.
    headers: String,
}

impl Response {
    fn ok(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type,
            body,
            headers: String::new(),
        }
    }

    fn error(status: u16, message: &str) -> Response {
        let mut body = Vec::new();
        push_json_message(&mut body, message);
        Response {
            status,
            content_type: "application/json",
            body,
            headers: String::new(),
        }
    }
}

fn write_response(
    stream: &mut impl Write,
    r: &Response,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n{}{}\r\n",
        r.status,
        crate::http::reason_phrase(r.status),
        r.content_type,
        r.body.len(),
        r.headers,
        if keep_alive { "" } else { "connection: close\r\n" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    stream.write_all(&out)
}

/// Answers `status` with `message` and closes (the caller returns).
fn refuse(stream: &mut impl Write, status: u16, message: &str) {
    let _ = write_response(stream, &Response::error(status, message), false, false);
}

/// Reads more of a request into `buf`; false when the connection ended,
/// failed, or the request took longer than IO_TIMEOUT since `started`
/// (answered 408 when something of it had come).
fn read_more(stream: &mut (impl Read + Write), buf: &mut Vec<u8>, started: Instant) -> bool {
    if !buf.is_empty() && started.elapsed() > IO_TIMEOUT {
        refuse(stream, 408, "Request Timeout");
        return false;
    }
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn prepare(stream: &TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
}

fn serve_plain(mut stream: TcpStream, shared: &Shared, peer: &str) {
    prepare(&stream);
    serve_connection(&mut stream, shared, peer);
}

/// A TLS connection: the handshake (within [`IO_TIMEOUT`]; with
/// `client_ca`, rustls refuses a client without a certificate that chains
/// to it), then the same requests as on a plain one. A verified client
/// certificate's subject is added to the client's name in the log.
fn serve_tls(stream: TcpStream, tls: &crate::plan::admin::AdminTls, shared: &Shared, peer: &str) {
    prepare(&stream);
    let mut conn = match rustls::ServerConnection::new(tls.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            crate::log!("warn", "admin: cannot start TLS for {peer}: {e}");
            return;
        }
    };
    let mut stream = stream;
    let started = Instant::now();
    while conn.is_handshaking() {
        if started.elapsed() > IO_TIMEOUT {
            return;
        }
        if let Err(e) = conn.complete_io(&mut stream) {
            crate::log!("info", "admin: TLS handshake with {peer} failed: {e}");
            // rustls queued its alert (an unknown CA, no certificate):
            // send it, so the client learns why.
            let _ = conn.write_tls(&mut stream);
            return;
        }
    }
    let subject = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::x509::client_identity(c.as_ref()));
    let peer = match subject {
        Some(s) => format!("{peer} (client certificate {s:?})"),
        None => peer.to_string(),
    };
    let mut stream = rustls::StreamOwned::new(conn, stream);
    serve_connection(&mut stream, shared, &peer);
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

fn serve_connection(stream: &mut (impl Read + Write), shared: &Shared, peer: &str) {
    let mut stream = stream;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // === read one head ===
        let started = Instant::now();
        let head = loop {
            if !buf.is_empty() {
                match parse_request_head(&buf, &LIMITS) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(reject) => return refuse(&mut stream, reject.status, reject.message),
                }
            }
            if !read_more(&mut stream, &mut buf, started) {
                return;
            }
        };
        // === @connections takes bodies and more methods ===
        if head.path(&buf).starts_with(super::connections::PREFIX) {
            if !connections_request(&mut stream, &mut buf, &head, shared) {
                return;
            }
            continue;
        }
        // === its body, if any ===
        let body_len = match head.framing {
            Framing::None => 0,
            Framing::Length(n) => n,
            Framing::Chunked => {
                return refuse(
                    &mut stream,
                    411,
                    "Admin requests with a body need a Content-Length",
                )
            }
        };
        if body_len > MAX_BODY as u64 {
            return refuse(&mut stream, 413, "An admin request body is at most 1 MiB");
        }
        let total = head.len + body_len as usize;
        while buf.len() < total {
            if !read_more(&mut stream, &mut buf, started) {
                return;
            }
        }
        // === answer it ===
        let head_only = head.method == crate::http::method::Method::Head;
        let body = &buf[head.len..total];
        let response = answer(shared, &buf, &head, body, peer);
        let keep_alive = head.keep_alive;
        if write_response(&mut stream, &response, head_only, keep_alive).is_err() || !keep_alive {
            return;
        }
        buf.drain(..total);
    }
}

/// An `@connections` request (`super::connections`): its body read (by
/// Content-Length, at most `connections::MAX_BODY`), answered by the
/// shard holding the connection. Returns whether the connection goes on.
fn connections_request(
    stream: &mut (impl Read + Write),
    buf: &mut Vec<u8>,
    head: &RequestHead,
    shared: &Shared,
) -> bool {
    use super::connections::{self, MAX_BODY};
    fn send(
        stream: &mut impl Write,
        status: u16,
        body: Vec<u8>,
        headers: &str,
        keep: bool,
    ) -> bool {
        let r = Response {
            status,
            content_type: "application/json",
            body,
            headers: headers.to_string(),
        };
        write_response(stream, &r, false, keep).is_ok() && keep
    }
    let message = |m: &str| {
        let mut b = Vec::new();
        push_json_message(&mut b, m);
        b
    };
    let body_len = match head.framing {
        Framing::None => 0,
        Framing::Length(n) if n <= MAX_BODY as u64 => n as usize,
        Framing::Length(_) => return send(stream, 413, message("Payload Too Large"), "", false),
        Framing::Chunked => {
            return send(
                stream,
                411,
                message("Length Required: send the message with Content-Length"),
                "",
                false,
            )
        }
    };
    if let Some(token) = &shared.token {
        if !authorized(&token.0, header(buf, head, "authorization")) {
            return send(
                stream,
                401,
                message("Unauthorized"),
                "www-authenticate: Bearer realm=\"coregate admin\"\r\n",
                false,
            );
        }
    }
    let total = head.len + body_len;
    let mut chunk = [0u8; 16 * 1024];
    let started = Instant::now();
    while buf.len() < total {
        if started.elapsed() > IO_TIMEOUT {
            return send(stream, 408, message("Request Timeout"), "", false);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head.len..total].to_vec();
    let path = head.path(buf).to_vec();
    let a = connections::answer(&shared.ctx.inboxes, head.method, &path, body);
    let keep = head.keep_alive;
    buf.drain(..total);
    let allow = if a.status == 405 {
        "allow: GET, POST, DELETE\r\n"
    } else {
        ""
    };
    send(stream, a.status, a.body, allow, keep)
}

/// The value of the first header named `name`.
fn header<'a>(buf: &'a [u8], head: &RequestHead, name: &str) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.get(buf))
}

fn answer(shared: &Shared, buf: &[u8], head: &RequestHead, body: &[u8], peer: &str) -> Response {
    use crate::http::method::Method;
    // Before anything about the path: a client without the token learns
    // nothing, not even which paths exist (404) or take which methods (405).
    if let Some(token) = &shared.token {
        if !authorized(&token.0, header(buf, head, "authorization")) {
            let mut r = Response::error(401, "Unauthorized");
            r.headers.push_str(
                "www-authenticate: Bearer realm=\"coregate admin\"\r\nwww-authenticate: Basic realm=\"coregate admin\", charset=\"UTF-8\"\r\n",
            );
            return r;
        }
    }
    let path = head.path(buf);
    let Ok(path) = std::str::from_utf8(path) else {
        return Response::error(404, "Not Found");
    };
    let query = head
        .query
        .map(|q| String::from_utf8_lossy(q.get(buf)).into_owned())
        .unwrap_or_default();
    let method = match head.method {
        Method::Head => Method::Get,
        m => m,
    };
    let Some(allowed) = super::api::allowed(path) else {
        return Response::error(404, "Not Found");
    };
    if !allowed.contains(&method) {
        let mut names: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
        if allowed.contains(&Method::Get) {
            names.push("HEAD");
        }
        let mut r = Response::error(405, "Method Not Allowed");
        r.headers
            .push_str(&format!("allow: {}\r\n", names.join(", ")));
        return r;
    }
    if !body.is_empty() && method == Method::Get {
        return Response::error(413, "GET requests take no body");
    }
    let who = || format!("admin client {peer}");
    match (method, path) {
        (Method::Get, "/metrics") => {
            let om = header(buf, head, "accept").is_some_and(expo::wants_openmetrics);
            let merged = super::scrape(&shared.ctx.inboxes);
            let info = expo::Info {
                version: shared.ctx.version,
                process: crate::observe::process::read(shared.ctx.started),
            };
            let body = expo::render(&merged, &info, om).into_bytes();
            let ctype = if om {
                expo::OPENMETRICS_CONTENT_TYPE
            } else {
                expo::TEXT_CONTENT_TYPE
            };
            Response::ok(ctype, body)
        }
        (Method::Get, "/dashboard" | "/dashboard/") => Response::ok(
            "text/html; charset=utf-8",
            dashboard::PAGE.as_bytes().to_vec(),
        ),
        (Method::Get, "/dashboard/data") => match dashboard::request_data(&shared.data) {
            Some(json) => Response::ok("application/json", json.into_bytes()),
            None => Response::error(503, "The dashboard's sampler is not running"),
        },
        (Method::Get, "/") => {
            let mut r = Response::error(302, "Found");
            r.headers.push_str("location: /dashboard\r\n");
            r
        }
        _ => match super::api::answer(&shared.ctx, method, path, &query, body, &who()) {
            Ok((status, json)) => {
                let mut r = Response::ok("application/json", json.to_string().into_bytes());
                r.status = status;
                r
            }
            Err((status, json)) => {
                let mut r = Response::error(status, "");
                r.body = json.to_string().into_bytes();
                r
            }
        },
    }
}

/// Whether an `Authorization` value carries `token`: `Bearer TOKEN`, or
/// `Basic` with TOKEN as the password (any user name). The comparison is
/// of SHA-256 digests in constant time, so neither the token's bytes nor
/// its length leak through timing.
pub(super) fn authorized(token: &[u8], value: Option<&[u8]>) -> bool {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let Some(value) = value else {
        return false;
    };
    let value = crate::http::parse::trim_ows(value);
    let Some(sp) = value.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (scheme, rest) = (&value[..sp], crate::http::parse::trim_ows(&value[sp..]));
    let presented: Vec<u8> = if scheme.eq_ignore_ascii_case(b"bearer") {
        rest.to_vec()
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        match decoded.iter().position(|&b| b == b':') {
            Some(i) => decoded[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    let a = Sha256::digest(token);
    let b = Sha256::digest(&presented);
    crate::policy::api_key::ct_eq(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::authorized;

    #[test]
    fn bearer_and_basic_carry_the_token() {
        let t = b"0123456789abcdef";
        assert!(authorized(t, Some(b"Bearer 0123456789abcdef")));
        assert!(authorized(t, Some(b"bearer  0123456789abcdef ")));
        // "prom:0123456789abcdef"
        assert!(authorized(t, Some(b"Basic cHJvbTowMTIzNDU2Nzg5YWJjZGVm")));
        assert!(!authorized(t, Some(b"Bearer 0123456789abcdeF")));
        assert!(!authorized(t, Some(b"Bearer 0123456789abcde")));
        assert!(!authorized(t, Some(b"Bearer")));
        assert!(!authorized(t, Some(b"Token 0123456789abcdef")));
        assert!(!authorized(t, Some(b"Basic !!!")));
        assert!(!authorized(t, None));
    }
}
