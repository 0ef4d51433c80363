//! The portal's HTTP/1.1: one thread per connection, keep-alive, request
//! heads parsed by the gateway's own parser under small limits, bodies up
//! to [`MAX_BODY`] with a Content-Length. Pages are HTML rendered on the
//! server ([`super::pages`]); the script and style sheet are files inside
//! the binary; the forms post JSON. Every response carries a content
//! security policy that allows scripts from the portal's own files only,
//! so no inline script runs whatever a page contains.

use super::response::Response;
use super::{keys, pages, try_it, Shared};
use crate::http::method::Method;
use crate::http::parse::{parse_request_head, Framing, HeadLimits, RequestHead};
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8 * 1024,
    max_head: 32 * 1024,
    max_headers: 100,
};
/// A connection quiet this long, or a request slower than this, is closed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (a "try it" request with its body).
pub const MAX_BODY: usize = 256 * 1024;

/// The script and style sheet, inside the binary.
const SCRIPT: &str = include_str!("portal.js");
const STYLE: &str = include_str!("portal.css");

const SECURITY_HEADERS: &str = "content-security-policy: default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
frame-ancestors 'none'\r\nx-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\n\
x-frame-options: DENY\r\ncache-control: no-store\r\n";

pub(super) fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut logged: Option<Instant> = None;
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    logged = Some(Instant::now());
                    crate::log!(
                        "warn",
                        "portal: accept failed: {e} (retrying every 50 ms, logged at most once a second)"
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= super::MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_response(
                &mut stream,
                &Response::error(503, "Too many portal connections"),
                false,
                false,
            );
            continue;
        }
        let Ok(peer) = stream.peer_addr() else {
            active.fetch_sub(1, Ordering::AcqRel);
            continue;
        };
        let shared = shared.clone();
        let count = active.clone();
        let spawned = std::thread::Builder::new()
            .name("coregate-portal-conn".into())
            .spawn(move || {
                serve_connection(stream, &shared, peer.ip());
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            crate::log!("warn", "portal: cannot start a connection thread: {e}");
        }
    }
}

fn write_response(
    stream: &mut TcpStream,
    r: &Response,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let mut out =
        format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n{SECURITY_HEADERS}{}{}\r\n",
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

fn refuse(stream: &mut TcpStream, status: u16, message: &str) {
    let _ = write_response(stream, &Response::error(status, message), false, false);
}

/// Reads more of a request into `buf`; false when the connection ended,
/// failed, or the request took longer than IO_TIMEOUT since `started`.
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, started: Instant) -> bool {
    if !buf.is_empty() && started.elapsed() > IO_TIMEOUT {
        refuse(stream, 408, "Request Timeout");
        return false;
    }
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn serve_connection(mut stream: TcpStream, shared: &Shared, peer: IpAddr) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
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
        let body_len = match head.framing {
            Framing::None => 0,
            Framing::Length(n) => n,
            Framing::Chunked => {
                return refuse(
                    &mut stream,
                    411,
                    "Portal requests with a body need a Content-Length",
                )
            }
        };
        if body_len > MAX_BODY as u64 {
            return refuse(&mut stream, 413, "A portal request body is at most 256 KiB");
        }
        let total = head.len + body_len as usize;
        while buf.len() < total {
            if !read_more(&mut stream, &mut buf, started) {
                return;
            }
        }
        let head_only = head.method == Method::Head;
        let response = answer(shared, &buf, &head, &buf[head.len..total], peer);
        let keep_alive = head.keep_alive;
        if write_response(&mut stream, &response, head_only, keep_alive).is_err() || !keep_alive {
            return;
        }
        buf.drain(..total);
    }
}

/// The value of the first header named `name`.
fn header<'a>(buf: &'a [u8], head: &RequestHead, name: &str) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.get(buf))
}

fn answer(shared: &Shared, buf: &[u8], head: &RequestHead, body: &[u8], peer: IpAddr) -> Response {
    let Ok(path) = std::str::from_utf8(head.path(buf)) else {
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
    let gets = [
        "/",
        "/api",
        "/openapi.json",
        "/keys",
        "/portal.js",
        "/portal.css",
    ];
    let posts = ["/try", "/signup", "/key", "/revoke"];
    let allow = if gets.contains(&path) {
        "GET, HEAD"
    } else if posts.contains(&path) {
        "POST"
    } else {
        return Response::html(404, pages::not_found());
    };
    let ok = match allow {
        "POST" => method == Method::Post,
        _ => method == Method::Get,
    };
    if !ok {
        let mut r = Response::error(405, "Method Not Allowed");
        r.headers.push_str(&format!("allow: {allow}\r\n"));
        return r;
    }
    match path {
        "/portal.js" => {
            return Response::ok("text/javascript; charset=utf-8", SCRIPT.as_bytes().to_vec())
        }
        "/portal.css" => return Response::ok("text/css; charset=utf-8", STYLE.as_bytes().to_vec()),
        _ => {}
    }
    if method == Method::Post {
        // Only a script of the portal's own pages sends JSON: a form on
        // another site cannot (that would need a CORS preflight, which the
        // portal never answers).
        let json_type = header(buf, head, "content-type").is_some_and(|v| {
            let v = String::from_utf8_lossy(v).to_ascii_lowercase();
            v.split(';').next().map(str::trim) == Some("application/json")
        });
        if !json_type {
            return Response::error(415, "send JSON (content-type: application/json)");
        }
    }
    let running = match super::running(&shared.main) {
        Ok(r) => r,
        Err((status, m)) => return Response::error(status, &m),
    };
    if running.plan.portal.listen.is_none() {
        // Turned off by a reload that kept the listener: say so.
        return Response::error(503, "The portal is turned off in the running config");
    }
    let who = format!("portal client {peer}");
    match path {
        "/" => pages::index(&running),
        "/api" => pages::api_page(&running, &query),
        "/openapi.json" => pages::download(&running, &query),
        "/keys" => pages::keys_page(&running),
        "/try" => try_it::answer(&running, body),
        "/signup" => keys::signup(&shared.desk, peer, body),
        "/key" => keys::show(&running, body),
        "/revoke" => keys::revoke(&shared.main, &running, body, &who),
        _ => Response::html(404, pages::not_found()),
    }
}
