//! "Try it": the portal makes the request a route page's form describes
//! to the gateway's own traffic listener and hands back what came back.
//! The browser talks only to the portal (same origin: no CORS setting is
//! needed on the API), and the portal can reach nothing but the gateway's
//! listeners: never the admin listener, never another host. The gateway
//! sees the request as coming from the portal's host (its IP rules and
//! per-client throttles apply to that address).

use super::response::Response;
use crate::runtime::Running;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long the gateway may take to answer a "try it" request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a response shown (the rest is cut, and said to be).
const MAX_RESPONSE: usize = 1024 * 1024;
/// Headers a form may send.
const MAX_HEADERS: usize = 32;
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Headers the portal sets itself or that would change the framing.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-connection",
];

fn bad(m: &str) -> Response {
    Response::error(400, m)
}

fn valid_value(v: &str) -> bool {
    !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// A plain listener of the gateway, as the portal reaches it.
fn target(r: &Running) -> Option<SocketAddr> {
    let (a, _) = r.listeners.iter().find(|(_, tls)| !tls)?;
    let mut a = *a;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        });
    }
    Some(a)
}

/// `POST /try {"api", "method", "path", "query", "headers": [[n, v]], "body"}`.
pub(super) fn answer(r: &Running, body: &[u8]) -> Response {
    if !r.plan.portal.try_it {
        return Response::error(404, "\"try it\" is turned off on this portal");
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad(&format!("the body is not JSON: {e}")),
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let method = s("method").to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return bad(&format!("\"method\" must be one of {}", METHODS.join(", ")));
    }
    let path = s("path");
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'#' || b == b'?')
    {
        return bad("\"path\" must start with / and hold no spaces, controls, ? or #");
    }
    let query = s("query");
    if query.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return bad("\"query\" may not hold spaces, controls or #");
    }
    let api = s("api");
    let raw = match crate::config::parse(&r.text) {
        Ok(raw) => raw,
        Err(_) => return Response::error(500, "the running config does not parse"),
    };
    let Some(api) = raw.apis.iter().find(|a| a.name == api) else {
        return bad("\"api\" names no API of the gateway");
    };
    let listed = r
        .plan
        .portal
        .apis
        .as_ref()
        .is_none_or(|l| l.contains(&api.name));
    if !listed || api.kind.as_deref() == Some("websocket") {
        return bad("\"api\" names no API of this portal");
    }
    let Some(addr) = target(r) else {
        return Response::error(
            501,
            "the gateway has no plain HTTP listener for \"try it\" to use; call it with curl",
        );
    };
    let host = api
        .hosts
        .as_ref()
        .and_then(|h| h.iter().find(|h| !h.contains('*')))
        .cloned()
        .unwrap_or_else(|| addr.to_string());
    // The gateway routes by host and base path: the request must reach the
    // API it names, not another one (an API the portal does not list).
    let routed = r.plan.table.api_for(Some(host.as_bytes()), path);
    if routed
        .and_then(|i| r.plan.apis.get(i))
        .map(|a| a.name.as_str())
        != Some(api.name.as_str())
    {
        return bad(&format!(
            "\"path\" is not under the base path of {:?}",
            api.name
        ));
    }
    let mut head = format!("{method} {path}");
    if !query.is_empty() {
        head.push('?');
        head.push_str(query);
    }
    head.push_str(&format!(
        " HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\nuser-agent: coregate-portal\r\n"
    ));
    let headers = v
        .get("headers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if headers.len() > MAX_HEADERS {
        return bad(&format!("at most {MAX_HEADERS} headers"));
    }
    for h in &headers {
        let (Some(n), Some(val)) = (
            h.get(0).and_then(Value::as_str),
            h.get(1).and_then(Value::as_str),
        ) else {
            return bad("\"headers\" is a list of [name, value] pairs of strings");
        };
        if val.is_empty() {
            continue;
        }
        if !crate::http::parse::is_token(n.as_bytes()) || !valid_value(val) {
            return bad(&format!("header {n:?}: not a valid header name or value"));
        }
        if RESERVED.contains(&n.to_ascii_lowercase().as_str()) {
            return bad(&format!("header {n:?} is set by the portal"));
        }
        head.push_str(&format!("{n}: {val}\r\n"));
    }
    let req_body = s("body").as_bytes();
    if !req_body.is_empty() || matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("content-length: {}\r\n", req_body.len()));
    }
    head.push_str("\r\n");
    let started = Instant::now();
    let got = exchange(addr, head.as_bytes(), req_body);
    let ms = started.elapsed().as_millis() as u64;
    match got {
        Ok((status, headers, body, truncated)) => Response::json(
            200,
            &json!({
                "status": status,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
                "truncated": truncated,
                "time_ms": ms,
            }),
        ),
        Err(e) => Response::error(502, &format!("the gateway did not answer: {e}")),
    }
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>, bool);

fn exchange(addr: SocketAddr, head: &[u8], body: &[u8]) -> Result<Answer, String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    s.write_all(head).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        if Instant::now() > deadline {
            return Err("no whole response within 10 s".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE + 64 * 1024 {
                    truncated = true;
                    break;
                }
            }
            Err(e) if buf.is_empty() => return Err(e.to_string()),
            Err(_) => break,
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut hs);
    let len = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the response ended inside its head".into()),
        Err(e) => return Err(format!("an invalid response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut chunked = false;
    let mut length = None;
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            let v = String::from_utf8_lossy(h.value).into_owned();
            if h.name.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
            (h.name.to_string(), v)
        })
        .collect();
    let rest = &buf[len..];
    let mut body = if chunked {
        dechunk(rest)
    } else {
        match length {
            Some(n) => rest[..n.min(rest.len())].to_vec(),
            None => rest.to_vec(),
        }
    };
    if body.len() > MAX_RESPONSE {
        body.truncate(MAX_RESPONSE);
        truncated = true;
    }
    Ok((status, headers, body, truncated))
}

/// A chunked body's data (as much as arrived).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&b[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        b = &b[eol + 2..];
        if n == 0 {
            break;
        }
        let take = n.min(b.len());
        out.extend_from_slice(&b[..take]);
        b = &b[take..];
        if b.len() < 2 {
            break;
        }
        b = &b[2..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"5\r\nab"), b"ab");
        assert_eq!(dechunk(b"zz\r\n"), b"");
    }
}
