//! WebSocket APIs over real sockets (docs/websocket.md): the handshake and
//! `$connect`'s integration, messages routed by the selection expression
//! to `http` and `mock` integrations, route responses, `$disconnect`, the
//! `@connections` API across shards, limits, and a hostile-frame set.
//! Clients we did not write: Rust's tungstenite, Python's `websockets`
//! library (installed by scripts/test) and headless Chromium; the hostile
//! frames come from a raw socket, since no client library sends them.

// Test threads (backends, the admin address they push to) share what
// they record under a Mutex; the gateway under test has none.
#![allow(clippy::disallowed_types)]

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

// === a backend that records events ===

/// One request the backend received.
#[derive(Debug, Clone)]
struct Event {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Event {
    fn h(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// An HTTP/1.1 backend answering with `answer(event)` and recording every
/// event.
struct EventBackend {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
}

impl EventBackend {
    fn start(answer: impl Fn(&Event) -> Answer + Send + Sync + 'static) -> EventBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let ev = events.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (ev, answer) = (ev.clone(), answer.clone());
                thread::spawn(move || serve_events(conn, &ev, &*answer));
            }
        });
        EventBackend { addr, events }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits for an event on `path` matching `f`.
    fn wait(&self, path: &str, f: impl Fn(&Event) -> bool) -> Event {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self.events().into_iter().find(|e| e.path == path && f(e));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {path} event; got {:#?}", self.events()))
    }
}

fn serve_events(conn: TcpStream, events: &Mutex<Vec<Event>>, answer: &dyn Fn(&Event) -> Answer) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let Ok(head) = read_head(&mut r, 1 << 20) else {
            return;
        };
        let Some(req) = parse_backend_request(&head) else {
            return;
        };
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let e = Event {
            path: req.target.clone(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect(),
            body,
        };
        events.lock().unwrap().push(e.clone());
        let (status, headers, body) = answer(&e);
        let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&body);
        if w.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// The usual answers: `/echo` returns `echo:` and the message, `/deny`
/// 403, everything else 200 with an empty body.
fn usual(e: &Event) -> Answer {
    match e.path.as_str() {
        "/echo" => {
            let mut b = b"echo:".to_vec();
            b.extend_from_slice(&e.body);
            (200, vec![], b)
        }
        "/deny" => (403, vec![], b"no".to_vec()),
        "/fail" => (500, vec![], vec![]),
        _ => (200, vec![], vec![]),
    }
}

// === the gateway under test ===

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "chat"
kind = "websocket"
base_path = "/chat"
route_selection_expression = "$request.body.action"

[apis.websocket]
max_frame_bytes = 1024
max_message_bytes = 4096
send_buffer_bytes = 16384
@LIMITS@

[[apis.routes]]
key = "$connect"
integration = { type = "http", url = "http://@B@/connect" }

[[apis.routes]]
key = "$disconnect"
integration = { type = "http", url = "http://@B@/disconnect" }

[[apis.routes]]
key = "echo"
route_response = true
integration = { type = "http", url = "http://@B@/echo" }

[[apis.routes]]
key = "fail"
route_response = true
integration = { type = "http", url = "http://@B@/fail" }

[[apis.routes]]
key = "oneway"
integration = { type = "http", url = "http://@B@/oneway" }

[[apis.routes]]
key = "$default"
route_response = true
integration = { type = "mock", body = "default route" }

[[apis]]
name = "nodefault"
kind = "websocket"
base_path = "/strict"

[[apis.routes]]
key = "echo"
route_response = true
integration = { type = "http", url = "http://@B@/echo" }

[[apis]]
name = "denied"
kind = "websocket"
base_path = "/denied"

[[apis.routes]]
key = "$connect"
integration = { type = "http", url = "http://@B@/deny" }

[[apis]]
name = "page"

[[apis.routes]]
key = "GET /page"
integration = { type = "mock", headers = { content-type = "text/html" }, body = '''@PAGE@''' }
"#;

fn start(b: &EventBackend, limits: &str) -> Gateway {
    Gateway::start(&fill(
        CONFIG,
        &[
            ("B", b.addr.to_string()),
            ("LIMITS", limits.to_string()),
            ("PAGE", PAGE.to_string()),
        ],
    ))
}

type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket with tungstenite over a socket with a read timeout.
fn ws_connect(gw: &Gateway, path: &str) -> Ws {
    let s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match tungstenite::client(format!("ws://{}{path}", gw.addr()), s) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            ws
        }
        Err(e) => panic!("websocket handshake: {e}"),
    }
}

fn text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            _ => continue,
        }
    }
}

/// A raw HTTP/1.1 exchange with the admin listener: (status, body).
fn admin(gw: &Gateway, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(gw.admin_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

// === tests ===

#[test]
fn connect_route_messages_and_disconnect_with_tungstenite() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "");
    let mut ws = ws_connect(&gw, "/chat");
    let connect = b.wait("/connect", |_| true);
    let id = connect.h("x-coregate-connection-id").to_string();
    assert_eq!(id.len(), 20, "{connect:?}");
    assert_eq!(connect.h("x-coregate-event-type"), "CONNECT");
    assert_eq!(connect.h("x-coregate-route-key"), "$connect");
    assert_eq!(connect.h("x-coregate-source-ip"), "127.0.0.1");
    assert!(!connect.h("x-request-id").is_empty());

    // A custom route with a route response.
    ws.send(Message::Text(r#"{"action":"echo","n":1}"#.into()))
        .unwrap();
    assert_eq!(text(&mut ws), r#"echo:{"action":"echo","n":1}"#);
    let m = b.wait("/echo", |_| true);
    assert_eq!(m.h("x-coregate-event-type"), "MESSAGE");
    assert_eq!(m.h("x-coregate-route-key"), "echo");
    assert_eq!(m.h("x-coregate-connection-id"), id);
    assert_eq!(m.h("x-coregate-message-id"), "1");
    assert_eq!(m.h("x-request-id"), format!("{id}-1"));

    // Not JSON, and a key no route has: $default (a mock).
    ws.send(Message::Text("hello there".into())).unwrap();
    assert_eq!(text(&mut ws), "default route");
    ws.send(Message::Text(r#"{"action":"nope"}"#.into()))
        .unwrap();
    assert_eq!(text(&mut ws), "default route");

    // A failing integration: AWS's error message.
    ws.send(Message::Text(r#"{"action":"fail"}"#.into()))
        .unwrap();
    let err: serde_json::Value = serde_json::from_str(&text(&mut ws)).unwrap();
    assert_eq!(err["message"], "Internal server error");
    assert_eq!(err["connectionId"], id.as_str());

    // A one-way route: the backend gets it, the client gets nothing
    // back (the echo after it is the next message the client sees).
    ws.send(Message::Text(r#"{"action":"oneway","x":2}"#.into()))
        .unwrap();
    ws.send(Message::Text(r#"{"action":"echo","n":2}"#.into()))
        .unwrap();
    assert_eq!(text(&mut ws), r#"echo:{"action":"echo","n":2}"#);
    assert_eq!(
        b.wait("/oneway", |_| true).body,
        br#"{"action":"oneway","x":2}"#
    );

    // Ping, pong.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("{other:?}"),
    }

    // The client closes: the close is echoed, then $disconnect runs.
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Library(4001),
        reason: "bye".into(),
    }))
    .unwrap();
    let mut echoed = None;
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => echoed = f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(echoed, Some(4001));
    let d = b.wait("/disconnect", |_| true);
    assert_eq!(d.h("x-coregate-event-type"), "DISCONNECT");
    assert_eq!(d.h("x-coregate-connection-id"), id);
    assert_eq!(d.h("x-coregate-close-code"), "4001");
    // Gone for @connections too.
    assert_eq!(
        admin(&gw, "POST", &format!("/@connections/{id}"), b"x").0,
        410
    );
    // The metrics, merged over both shards.
    let (status, metrics) = admin(&gw, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    for line in [
        r#"coregate_websocket_connects_total{api="chat",route="$connect"} 1"#,
        r#"coregate_websocket_messages_total{api="chat",route="echo"} 2"#,
        r#"coregate_websocket_messages_total{api="chat",route="$default"} 2"#,
        r#"coregate_websocket_messages_total{api="chat",route="oneway"} 1"#,
        r#"coregate_websocket_integration_errors_total{api="chat",route="fail"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            r#"coregate_websocket_integration_duration_seconds_count{api="chat",route="echo"} 2"#
        ),
        "{metrics}"
    );
}

#[test]
fn without_default_a_message_no_route_takes_gets_forbidden() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "");
    let mut ws = ws_connect(&gw, "/strict");
    ws.send(Message::Text("not json".into())).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text(&mut ws)).unwrap();
    assert_eq!(v["message"], "Forbidden");
    assert!(v["requestId"].as_str().is_some_and(|r| !r.is_empty()));
    // The connection goes on.
    ws.send(Message::Text(r#"{"action":"echo"}"#.into()))
        .unwrap();
    assert_eq!(text(&mut ws), r#"echo:{"action":"echo"}"#);
}

/// Sends `req` on a new connection and reads the response head (and what
/// came with it).
fn raw_request(gw: &Gateway, req: &str) -> String {
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let t = String::from_utf8_lossy(&out);
                if let Some((h, b)) = t.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if b.len() >= len {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[test]
fn bad_handshakes_are_refused_with_the_right_status() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "");
    let plain = raw_request(&gw, "GET /chat HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 400 "), "{plain}");
    assert!(plain.contains("{\"message\":"), "{plain}");
    let v8 = raw_request(
        &gw,
        &format!("GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 8\r\n\r\n"),
    );
    assert!(v8.starts_with("HTTP/1.1 426 "), "{v8}");
    assert!(v8.contains("sec-websocket-version: 13\r\n"), "{v8}");
    let no_key = raw_request(
        &gw,
        "GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\n\r\n",
    );
    assert!(no_key.starts_with("HTTP/1.1 400 "), "{no_key}");
    let post = raw_request(
        &gw,
        "POST /chat HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    // None of them reached $connect's integration.
    assert!(b.events().is_empty(), "{:?}", b.events());

    // $connect's integration says 403: no connection.
    let url = format!("ws://{}/denied", gw.addr());
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected although $connect's integration said 403"),
    }
    b.wait("/deny", |e| e.h("x-coregate-event-type") == "CONNECT");
}

#[test]
fn the_connect_integration_picks_the_subprotocol() {
    let b = EventBackend::start(|e| {
        if e.path == "/connect" {
            (
                200,
                vec![("sec-websocket-protocol".into(), "chat.v2".into())],
                vec![],
            )
        } else {
            usual(e)
        }
    });
    let gw = start(&b, "");
    let mut req = format!("ws://{}/chat", gw.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v1, chat.v2".parse().unwrap(),
    );
    let (_ws, resp) = tungstenite::connect(req).expect("handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat.v2")
    );
    // A protocol the client did not offer refuses the handshake.
    let url = format!("ws://{}/chat", gw.addr());
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 502),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected with a subprotocol the client did not offer"),
    }
}

#[test]
fn push_describe_and_close_through_connections_on_any_shard() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "");
    // Several connections, so that both shards hold some.
    let mut clients: Vec<(Ws, String)> = Vec::new();
    for i in 0..6 {
        let ws = ws_connect(&gw, "/chat");
        let n = i + 1;
        let mut ids = Vec::new();
        wait_until(Duration::from_secs(10), || {
            ids = b
                .events()
                .into_iter()
                .filter(|e| e.path == "/connect")
                .map(|e| e.h("x-coregate-connection-id").to_string())
                .collect();
            ids.len() >= n
        });
        let id = ids[n - 1].clone();
        clients.push((ws, id));
    }
    let shards: std::collections::BTreeSet<String> =
        clients.iter().map(|(_, id)| id[..4].to_string()).collect();
    for (ws, id) in clients.iter_mut() {
        let (status, body) = admin(&gw, "POST", &format!("/@connections/{id}"), b"pushed!");
        assert_eq!(status, 200, "{body}");
        assert_eq!(text(ws), "pushed!");
        let (status, body) = admin(&gw, "GET", &format!("/@connections/{id}"), b"");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["identity"]["sourceIp"], "127.0.0.1");
        assert!(v["identity"]["userAgent"].is_string(), "{v}");
        let at = v["connectedAt"].as_str().unwrap();
        assert!(
            at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
            "{at}"
        );
        assert!(v["lastActiveAt"].as_str().is_some_and(|t| t >= at), "{v}");
    }
    eprintln!("connections on shards {shards:?}");
    // Over the message limit (4096).
    let id = clients[0].1.clone();
    assert_eq!(
        admin(&gw, "POST", &format!("/@connections/{id}"), &[b'a'; 5000]).0,
        413
    );
    // DELETE closes with 1000; then the id is gone.
    assert_eq!(
        admin(&gw, "DELETE", &format!("/@connections/{id}"), b"").0,
        204
    );
    let ws = &mut clients[0].0;
    let mut code = None;
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => code = f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1000));
    assert_eq!(
        admin(&gw, "GET", &format!("/@connections/{id}"), b"").0,
        410
    );
    b.wait("/disconnect", |e| e.h("x-coregate-connection-id") == id);
    // Ids that name no connection.
    assert_eq!(
        admin(&gw, "GET", "/@connections/0000000000000000abcd", b"").0,
        410
    );
    assert_eq!(admin(&gw, "GET", "/@connections/nonsense", b"").0, 410);
    assert_eq!(
        admin(&gw, "PUT", &format!("/@connections/{id}"), b"").0,
        405
    );
}

#[test]
fn a_backend_can_push_as_soon_as_it_answered_connect() {
    // The backend answers $connect, then pushes at once from another
    // thread: the message reaches the client, after the 101.
    let admin_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let a = admin_addr.clone();
    let b = EventBackend::start(move |e| {
        if e.path == "/connect" {
            let id = e.h("x-coregate-connection-id").to_string();
            let addr = a.lock().unwrap().expect("admin address");
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(1));
                let mut s = TcpStream::connect(addr).unwrap();
                let body = "welcome";
                write!(
                    s,
                    "POST /@connections/{id} HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            });
        }
        usual(e)
    });
    let gw = start(&b, "");
    *admin_addr.lock().unwrap() = Some(gw.admin_addr());
    let mut ws = ws_connect(&gw, "/chat");
    assert_eq!(text(&mut ws), "welcome");
}

/// Opens a WebSocket on a raw socket; returns it after the 101.
fn raw_ws(gw: &Gateway, path: &str) -> TcpStream {
    raw_ws_on(TcpStream::connect(gw.addr()).unwrap(), path)
}

/// As [`raw_ws`], on a socket already connected.
fn raw_ws_on(mut s: TcpStream, path: &str) -> TcpStream {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let mut accept = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.strip_prefix("sec-websocket-accept: ") {
            accept = Some(v.trim().to_string());
        }
    }
    // RFC 6455's example key and accept value.
    assert_eq!(accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert!(r.buffer().is_empty());
    s
}

/// A masked client frame with the first byte `b0`.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![b0];
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads server frames until a close frame; returns its code (None: the
/// connection ended without one).
fn close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).ok()?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0; len];
        s.read_exact(&mut p).ok()?;
        if h[0] & 0x0f == 0x8 {
            return Some(u16::from_be_bytes([p[0], p[1]]));
        }
    }
}

#[test]
fn hostile_frames_close_with_the_right_code() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "");
    let mut two_to_63 = vec![0x82, 0x80 | 127];
    two_to_63.extend_from_slice(&(1u64 << 63).to_be_bytes());
    two_to_63.extend_from_slice(&[1, 2, 3, 4]);
    // RFC 6455 §5.2: a length in the fewest bytes only.
    let mut two_byte_five = vec![0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4];
    two_byte_five.extend_from_slice(b"hello");
    let mut eight_byte_200 = vec![0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 200, 1, 2, 3, 4];
    eight_byte_200.extend_from_slice(&[0; 200]);
    let mut interleaved = frame(0x01, b"{\"a\":");
    interleaved.extend(frame(0x81, b"new"));
    // Five frames of 1000 bytes: each under max_frame_bytes (1024), the
    // message over max_message_bytes (4096).
    let mut over_message = frame(0x01, &[b'a'; 1000]);
    for _ in 0..3 {
        over_message.extend(frame(0x00, &[b'a'; 1000]));
    }
    over_message.extend(frame(0x80, &[b'a'; 1000]));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved bits", frame(0xC1, b"x"), 1002),
        ("opcode 3", frame(0x83, b"x"), 1002),
        ("opcode 0xB", frame(0x8B, b"x"), 1002),
        ("a 126-byte ping", frame(0x89, &[0; 126]), 1002),
        ("a fragmented ping", frame(0x09, b"x"), 1002),
        ("a 2^63 length", two_to_63, 1002),
        ("a length of 5 in two bytes", two_byte_five, 1002),
        ("a length of 200 in eight bytes", eight_byte_200, 1002),
        (
            "a frame over max_frame_bytes",
            frame(0x81, &[b'a'; 1025]),
            1009,
        ),
        ("a message over max_message_bytes", over_message, 1009),
        (
            "close with code 1005",
            frame(0x88, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close with code 999",
            frame(0x88, &999u16.to_be_bytes()),
            1002,
        ),
        ("continuation first", frame(0x80, b"x"), 1002),
        ("a message inside a fragmented one", interleaved, 1002),
        ("invalid UTF-8", frame(0x81, b"\xc3\x28"), 1007),
        // The rest of the message never comes: the first fragment is
        // enough (RFC 6455 §8.1).
        (
            "invalid UTF-8 in a first fragment",
            frame(0x01, b"{\"a\":\"\xff"),
            1007,
        ),
        (
            "invalid UTF-8 across fragments",
            [frame(0x01, b"\xe2\x82"), frame(0x00, b"(")].concat(),
            1007,
        ),
        ("binary", frame(0x82, b"\x00\x01"), 1003),
    ];
    for (what, bytes, want) in cases {
        let mut s = raw_ws(&gw, "/chat");
        s.write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut s), Some(want), "{what}");
    }
    // Each ended the connection, and $disconnect heard of each.
    wait_until(Duration::from_secs(10), || {
        b.events()
            .iter()
            .filter(|e| e.path == "/disconnect")
            .count()
            >= 19
    });
    let codes: Vec<String> = b
        .events()
        .iter()
        .filter(|e| e.path == "/disconnect")
        .map(|e| e.h("x-coregate-close-code").to_string())
        .collect();
    assert_eq!(codes.len(), 19, "{codes:?}");
    assert!(codes.iter().any(|c| c == "1009"), "{codes:?}");
    // A valid fragmented message, with a ping between its fragments.
    let mut s = raw_ws(&gw, "/chat");
    let mut bytes = frame(0x01, b"{\"action\":");
    bytes.extend(frame(0x89, b"p"));
    bytes.extend(frame(0x80, b"\"echo\"}"));
    s.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("echo:{\"action\":\"echo\"}") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed; got {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    // The pong came first.
    assert_eq!(&got[..3], b"\x8a\x01p");
}

/// Messages a client sent before its close frame reach their
/// integration before `$disconnect` does, numbered before it; the
/// `$disconnect` event used to be sent while they still waited, and they
/// came after it.
#[test]
fn disconnect_comes_after_the_messages_sent_before_the_close() {
    let b = EventBackend::start(|e| {
        if e.path == "/echo" {
            thread::sleep(Duration::from_millis(200));
        }
        usual(e)
    });
    let gw = start(&b, "");
    let mut s = raw_ws(&gw, "/chat");
    let mut bytes = Vec::new();
    for _ in 0..3 {
        bytes.extend(frame(0x81, b"{\"action\":\"echo\"}"));
    }
    bytes.extend(frame(0x88, &1000u16.to_be_bytes()));
    s.write_all(&bytes).unwrap();
    assert_eq!(close_code(&mut s), Some(1000));
    let d = b.wait("/disconnect", |_| true);
    let events: Vec<(String, String)> = b
        .events()
        .iter()
        .filter(|e| e.path != "/connect")
        .map(|e| (e.path.clone(), e.h("x-request-id").to_string()))
        .collect();
    let id = d.h("x-coregate-connection-id");
    let want: Vec<(String, String)> =
        [(1, "/echo"), (2, "/echo"), (3, "/echo"), (4, "/disconnect")]
            .iter()
            .map(|(n, p)| (p.to_string(), format!("{id}-{n}")))
            .collect();
    assert_eq!(events, want);
}

#[test]
fn a_client_that_vanishes_still_gets_disconnect() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "");
    let s = raw_ws(&gw, "/chat");
    let id = b
        .wait("/connect", |_| true)
        .h("x-coregate-connection-id")
        .to_string();
    drop(s);
    let d = b.wait("/disconnect", |e| e.h("x-coregate-connection-id") == id);
    assert_eq!(d.h("x-coregate-close-code"), "1006");
    assert_eq!(
        admin(&gw, "GET", &format!("/@connections/{id}"), b"").0,
        410
    );
}

#[test]
fn a_slow_reader_gets_429_for_pushes_and_memory_stays_bounded() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "");
    // A small receive buffer, so that the kernel takes few pushes before
    // the gateway's send buffer fills.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.addr().into()).unwrap();
    let s = raw_ws_on(sock.into(), "/chat");
    // The client reads nothing from here on.
    let id = b
        .wait("/connect", |_| true)
        .h("x-coregate-connection-id")
        .to_string();
    let before = gw.rss_kib();
    let msg = vec![b'x'; 4000];
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..3000 {
        match admin(&gw, "POST", &format!("/@connections/{id}"), &msg).0 {
            200 => accepted += 1,
            429 => {
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
            other => panic!("status {other}"),
        }
    }
    eprintln!("{accepted} pushes accepted, then {refused} refused");
    // What was accepted is what the kernel's socket buffers (outside the
    // process) and the 16 KiB send buffer hold.
    assert!(refused >= 20, "never refused after {accepted} pushes");
    let grown = gw.rss_kib().saturating_sub(before);
    assert!(
        grown < 4096,
        "resident memory grew by {grown} KiB for {accepted} pushes of 4000 bytes"
    );
    drop(s);
}

/// A client that stops reading but keeps sending messages whose route
/// responses are large: at most `MAX_PENDING` (8) messages wait, and a
/// message's integration is called only while the outbox has room for
/// its answer within `send_buffer_bytes`, so the backend hears of the few
/// messages whose answers the kernel's buffers took. (The gateway used to
/// parse every message in its read buffer, 22 of these at a time, and
/// queue every answer whatever the send buffer held: 1 MiB each here.)
#[test]
fn a_client_that_stops_reading_stops_its_own_messages() {
    let b = EventBackend::start(|e| match e.path.as_str() {
        "/echo" => (200, vec![], vec![b'x'; 1 << 20]),
        _ => usual(e),
    });
    let big = CONFIG.replace(
        "max_frame_bytes = 1024\nmax_message_bytes = 4096\nsend_buffer_bytes = 16384",
        "max_frame_bytes = 1024\nmax_message_bytes = 1048576\nsend_buffer_bytes = 1048576",
    );
    assert_ne!(big, CONFIG);
    let gw = Gateway::start(&fill(
        &big,
        &[
            ("B", b.addr.to_string()),
            ("LIMITS", String::new()),
            ("PAGE", String::new()),
        ],
    ));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.addr().into()).unwrap();
    let mut s = raw_ws_on(sock.into(), "/chat");
    // 100 messages in one write; the client reads nothing.
    let one = frame(0x81, b"{\"action\":\"echo\"}");
    let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
    s.write_all(&burst).unwrap();
    // Until the backend has heard nothing new for a second.
    let echoes = || b.events().iter().filter(|e| e.path == "/echo").count();
    let mut last = (echoes(), Instant::now());
    wait_until(Duration::from_secs(20), || {
        let n = echoes();
        if n != last.0 {
            last = (n, Instant::now());
        }
        last.1.elapsed() > Duration::from_secs(1)
    });
    let called = last.0;
    eprintln!("{called} messages reached the backend");
    assert!(called >= 1, "no message reached the backend");
    assert!(called <= 12, "{called} messages reached the backend");
    drop(s);
}

#[test]
fn idle_connections_close_with_1001_and_connections_are_rate_limited() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "idle_timeout_ms = 300\nnew_connections_per_second = 4");
    let mut s = raw_ws(&gw, "/chat");
    assert_eq!(close_code(&mut s), Some(1001));
    // 4 a second over 2 shards: 2 per shard per second. Ten handshakes
    // at once cannot all pass.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = raw_request(
            &gw,
            &format!("GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\r\n"),
        );
        statuses.push(r.split(' ').nth(1).unwrap_or("").to_string());
    }
    assert!(statuses.iter().any(|s| s == "429"), "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "101"), "{statuses:?}");
}

/// After the gateway's close frame, the client's close frame ends the
/// closing handshake at once, even when the client keeps its end of the
/// TCP connection open (as browsers wait for the server to close first,
/// RFC 6455 §7.1.1); other frames before it are dropped. The gateway used
/// to read on until its 1 s wait ran out, and `$disconnect` came that
/// much later.
#[test]
fn the_client_close_frame_ends_the_close_wait() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "idle_timeout_ms = 300");
    for late_frames in [false, true] {
        let mut s = raw_ws(&gw, "/chat");
        let id = b
            .wait("/connect", |e| {
                !b.events().iter().any(|d| {
                    d.path == "/disconnect"
                        && d.h("x-coregate-connection-id") == e.h("x-coregate-connection-id")
                })
            })
            .h("x-coregate-connection-id")
            .to_string();
        assert_eq!(close_code(&mut s), Some(1001));
        let mut reply = Vec::new();
        if late_frames {
            reply.extend(frame(0x81, b"{\"action\":\"echo\"}"));
            reply.extend(frame(0x89, b"ping"));
        }
        reply.extend(frame(0x88, &1001u16.to_be_bytes()));
        let sent = Instant::now();
        s.write_all(&reply).unwrap();
        // The socket stays open on this side while $disconnect comes.
        b.wait("/disconnect", |e| e.h("x-coregate-connection-id") == id);
        let took = sent.elapsed();
        assert!(
            took < Duration::from_millis(700),
            "late frames {late_frames}: $disconnect {took:?} after the client's close"
        );
        drop(s);
    }
    // Messages sent after the gateway's close frame reach no integration.
    assert!(!b.events().iter().any(|e| e.path == "/echo"));
}

/// The idle timeout counts every frame: a message sent slowly in
/// fragments, or a client's unsolicited pongs (RFC 6455 §5.5.3's
/// heartbeat), keep the connection open; they used to be closed with
/// 1001 while frames were still coming.
#[test]
fn fragments_and_pongs_keep_a_connection_from_idling_out() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "idle_timeout_ms = 600");
    let read_echo = |s: &mut TcpStream| {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains("echo:") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed; got {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got[0], 0x81, "not a text message first: {got:?}");
    };
    // A message in fragments, one every 200 ms for 1.6 s.
    let mut s = raw_ws(&gw, "/chat");
    s.write_all(&frame(0x01, b"{\"action\":")).unwrap();
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(200));
        s.write_all(&frame(0x00, b" ")).unwrap();
    }
    s.write_all(&frame(0x80, b"\"echo\"}")).unwrap();
    read_echo(&mut s);
    // Pongs every 200 ms for 1.6 s, then a message.
    let mut s = raw_ws(&gw, "/chat");
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(200));
        s.write_all(&frame(0x8A, b"beat")).unwrap();
    }
    s.write_all(&frame(0x81, b"{\"action\":\"echo\"}")).unwrap();
    read_echo(&mut s);
    // Then silence: 1001.
    assert_eq!(close_code(&mut s), Some(1001));
}

#[test]
fn python_websockets_client() {
    let b = EventBackend::start(usual);
    let gw = start(&b, "");
    let script = r#"
import sys
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
with connect(sys.argv[1]) as ws:
    ws.send('{"action":"echo","from":"python"}')
    print(ws.recv(timeout=10))
    ws.send("plain text")
    print(ws.recv(timeout=10))
    ws.send("x" * 1000)
    print(len(ws.recv(timeout=10)))
    # Over max_frame_bytes (1024): the gateway closes with 1009.
    ws.send("x" * 3000)
    try:
        ws.recv(timeout=10)
        print("no close")
    except ConnectionClosed as e:
        print(e.rcvd.code)
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("ws://{}/chat", gw.addr())])
        .output()
        .expect("python3 (scripts/test installs it, with the websockets library)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python websockets client failed (scripts/test installs the library):\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            r#"echo:{"action":"echo","from":"python"}"#,
            "default route",
            "13",
            "1009"
        ]
    );
    let d = b.wait("/disconnect", |_| true);
    assert_eq!(d.h("x-coregate-close-code"), "1009");
}

/// The page Chromium loads: it opens a WebSocket to the chat API, asks
/// the backend to push to it (the `echo` route's backend pushes through
/// @connections), and reports what it received back over the socket.
const PAGE: &str = r#"<!doctype html><html><body><p id="out">waiting</p><script>
const ws = new WebSocket("ws://" + location.host + "/chat");
ws.onopen = () => ws.send(JSON.stringify({action: "oneway", say: "hello from chromium"}));
ws.onmessage = (e) => {
  document.getElementById("out").textContent = e.data;
  if (e.data.startsWith("push:")) ws.send(JSON.stringify({action: "oneway", got: e.data}));
};
</script></body></html>"#;

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!("headless Chromium is needed (Debian package `chromium`); run the tests with scripts/test, which installs it");
}

#[test]
fn chromium_opens_a_websocket_sends_and_receives_a_push() {
    let admin_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let a = admin_addr.clone();
    let b = EventBackend::start(move |e| {
        if e.path == "/oneway" && e.body.windows(19).any(|w| w == b"hello from chromium") {
            let id = e.h("x-coregate-connection-id").to_string();
            let addr = a.lock().unwrap().expect("admin address");
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let body = format!("push:{id}");
                write!(
                    s,
                    "POST /@connections/{id} HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
            });
        }
        usual(e)
    });
    let gw = start(&b, "");
    *admin_addr.lock().unwrap() = Some(gw.admin_addr());
    let profile = temp_path("chromium-profile");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
            &format!("--user-data-dir={}", profile.display()),
            &gw.url("/page"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = None;
    while Instant::now() < deadline && got.is_none() {
        got = b.events().into_iter().find(|e| {
            e.path == "/oneway" && String::from_utf8_lossy(&e.body).contains("\"got\":\"push:")
        });
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&profile);
    let got =
        got.unwrap_or_else(|| panic!("the page never reported a push; events {:#?}", b.events()));
    let id = got.h("x-coregate-connection-id");
    let body = String::from_utf8_lossy(&got.body);
    assert!(body.contains(&format!("push:{id}")), "{body}");
}

#[test]
fn a_connection_end_gets_an_access_log_line() {
    let b = EventBackend::start(usual);
    let log = temp_path("log");
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "chat"
kind = "websocket"
base_path = "/chat"
access_log = { format = '$context.requestId|$context.routeKey|$context.status|$context.responseLength|$context.integrationStatus|$context.error.message|$context.identity.userAgent|$context.apiId', destination = "@LOG@" }

[apis.websocket]
idle_timeout_ms = 500

[[apis.routes]]
key = "$disconnect"
integration = { type = "http", url = "http://@B@/disconnect" }

[[apis.routes]]
key = "$default"
route_response = true
integration = { type = "mock", body = "default route" }
"#,
        &[
            ("B", b.addr.to_string()),
            ("LOG", log.display().to_string()),
        ],
    ));
    let log_lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let find = |pred: &dyn Fn(&str) -> bool| -> String {
        let mut found = String::new();
        wait_until(Duration::from_secs(10), || {
            found = log_lines()
                .lines()
                .find(|l| pred(l))
                .unwrap_or_default()
                .to_string();
            !found.is_empty()
        });
        assert!(!found.is_empty(), "no such line in\n{}", log_lines());
        found
    };
    // A client closes with 4001 after one message and its answer.
    let mut req = format!("ws://{}/chat", gw.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("user-agent", "end-line-test/1".parse().unwrap());
    let s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, _) = tungstenite::client(req, s).expect("handshake");
    ws.send(Message::Text("hi".into())).unwrap();
    assert_eq!(text(&mut ws), "default route");
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Library(4001),
        reason: "bye".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
    let id = b
        .wait("/disconnect", |_| true)
        .h("x-coregate-connection-id")
        .to_string();
    let end = find(&|l: &str| l.contains("|$disconnect|4001|"));
    // The $disconnect event's id; "default route" (2 + 13 bytes) and the
    // echoed close frame (2 + 2 bytes) went to the client.
    assert_eq!(
        end,
        format!("{id}-2|$disconnect|4001|19|200|-|end-line-test/1|chat"),
        "{}",
        log_lines()
    );
    // The handshake's line is there too.
    find(&|l: &str| l.contains("|$connect|101|"));
    // The gateway closes an idle one: 1001 and why.
    let _idle = ws_connect(&gw, "/chat");
    let end = find(&|l: &str| l.contains("|$disconnect|1001|"));
    assert!(end.contains("|idle timeout|"), "{end}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn config_errors_name_their_key() {
    let path = write_config(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "ws"
kind = "websocket"
route_selection_expression = "$request.header.x"

[apis.websocket]
max_frame_bytes = 0

[[apis.routes]]
key = "$connect"
route_response = true
integration = { type = "mock" }

[[apis.routes]]
key = "$bogus"
integration = { type = "mock" }

[[apis.routes]]
key = "send"
throttle = { rate = 1, burst = 1 }
integration = { type = "http_proxy", url = "http://127.0.0.1:9/x" }

[[apis]]
name = "plain"
kind = "socket"
base_path = "/p"

[[apis.routes]]
key = "GET /x"
route_response = true
integration = { type = "http", url = "http://127.0.0.1:9/x" }

[[apis]]
name = "relaying"
base_path = "/r"

[apis.websocket]
idle_timeout_ms = 0
max_frame_bytes = 1000

[[apis.routes]]
key = "GET /x"
integration = { type = "http_proxy", url = "http://127.0.0.1:9/x" }
"#,
    );
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "apis[0].route_selection_expression",
        "apis[0].websocket.max_frame_bytes",
        "apis[0].routes[0].route_response",
        "apis[0].routes[1].key",
        "apis[0].routes[2].throttle",
        "apis[0].routes[2].integration.type",
        "apis[1].kind",
        "apis[1].routes[0].route_response",
        "apis[1].routes[0].integration.type",
        "apis[2].websocket.idle_timeout_ms",
        "apis[2].websocket.max_frame_bytes",
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("error: ") && l.contains(needle)),
            "no error naming {needle}:\n{err}"
        );
    }
}

#[test]
fn an_http_proxy_route_relays_a_websocket_to_a_backend_that_speaks_it() {
    // A WebSocket echo server we did not write: tungstenite's server side.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let seen_path = Arc::new(Mutex::new(String::new()));
    let seen = seen_path.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let seen = seen.clone();
            thread::spawn(move || {
                use tungstenite::handshake::server::{ErrorResponse, Request, Response};
                // The callback's type is tungstenite's.
                #[allow(clippy::result_large_err)]
                let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    *seen.lock().unwrap() = req.uri().to_string();
                    Ok(resp)
                };
                let Ok(mut ws) = tungstenite::accept_hdr(conn, cb) else {
                    return;
                };
                while let Ok(m) = ws.read() {
                    if m.is_text() || m.is_binary() {
                        if ws.send(m).is_err() {
                            break;
                        }
                    } else if m.is_close() {
                        break;
                    }
                }
            });
        }
    });
    let plain = Backend::start(Reply::fixed(200, &[], "not a websocket"));
    let log = temp_path("log");
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "proxied"
access_log = { format = '$context.requestId|$context.routeKey|$context.status|$context.responseLength|$context.error.message|$context.upstream.target', destination = "@LOG@" }

[[apis.routes]]
key = "GET /live/{room}"
integration = { type = "http_proxy", url = "http://@W@/echo/{room}" }

[[apis.routes]]
key = "GET /plain"
integration = { type = "http_proxy", url = "http://@P@/" }

[[apis]]
name = "brief"
base_path = "/brief"
access_log = { format = '$context.routeKey|$context.status|$context.error.message', destination = "@LOG@" }

[apis.websocket]
idle_timeout_ms = 400

[[apis.routes]]
key = "GET /live/{room}"
integration = { type = "http_proxy", url = "http://@W@/echo/{room}" }

[[apis]]
name = "short"
base_path = "/short"
access_log = { format = '$context.routeKey|$context.status|$context.error.message', destination = "@LOG@" }

[apis.websocket]
max_lifetime_ms = 1200

[[apis.routes]]
key = "GET /live/{room}"
integration = { type = "http_proxy", url = "http://@W@/echo/{room}" }
"#,
        &[
            ("W", backend.to_string()),
            ("P", plain.addr_str()),
            ("LOG", log.display().to_string()),
        ],
    ));
    let log_lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, resp) =
        tungstenite::client(format!("ws://{}/live/lobby", gw.addr()), s).expect("handshake");
    assert_eq!(resp.status(), 101);
    assert_eq!(*seen_path.lock().unwrap(), "/echo/lobby");
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into())).unwrap();
        assert_eq!(text(&mut ws), format!("hello {i}"));
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into()))
        .unwrap();
    match ws.read().unwrap() {
        Message::Binary(b) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("{other:?}"),
    }
    ws.close(None).unwrap();
    // The connection's end gets an access-log line: the close code (the
    // client's close frame had none: 1005), the bytes sent to the client.
    let mut end = String::new();
    wait_until(Duration::from_secs(10), || {
        end = log_lines()
            .lines()
            .find(|l| l.contains("|GET /live/{room}|1005|"))
            .unwrap_or_default()
            .to_string();
        !end.is_empty()
    });
    let fields: Vec<&str> = end.split('|').collect();
    assert_eq!(fields.len(), 6, "{end:?} in\n{}", log_lines());
    assert_eq!(fields[4], "-", "{end}");
    assert_eq!(fields[5], backend.to_string(), "{end}");
    // The handshake's own line, with the same request id.
    assert!(
        log_lines()
            .lines()
            .any(|l| l.starts_with(&format!("{}|GET /live/{{room}}|101|", fields[0]))),
        "{}",
        log_lines()
    );
    // Messages and bytes each way. Client frames of a short payload
    // are 2 header bytes, 4 of mask and the payload: 3 x (6 + 7) + (6 + 4)
    // + 6 for the close frame; the echoes are unmasked.
    let (_, metrics) = admin(&gw, "GET", "/metrics", b"");
    let sample = |name: &str, from: &str| -> u64 {
        let prefix =
            format!(r#"{name}{{api="proxied",route="GET /live/{{room}}",from="{from}"}} "#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{metrics}"))
    };
    assert_eq!(
        sample("coregate_websocket_proxy_messages_total", "client"),
        4
    );
    assert_eq!(
        sample("coregate_websocket_proxy_messages_total", "backend"),
        4
    );
    assert_eq!(sample("coregate_websocket_proxy_bytes_total", "client"), 55);
    let from_backend = sample("coregate_websocket_proxy_bytes_total", "backend");
    assert!(from_backend >= 33, "{metrics}");
    assert_eq!(fields[3], from_backend.to_string(), "{end}");
    assert!(
        metrics.lines().any(|l| l
            == r#"coregate_websocket_connects_total{api="proxied",route="GET /live/{room}"} 1"#),
        "{metrics}"
    );
    // The API's idle timeout and lifetime: a silent relayed WebSocket is
    // closed after 400 ms; a chatty one after 1200 ms of life.
    let s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (mut quiet, _) =
        tungstenite::client(format!("ws://{}/brief/live/a", gw.addr()), s).expect("handshake");
    assert!(quiet.read().is_err(), "the relay closes the connection");
    assert!(wait_until(Duration::from_secs(10), || log_lines()
        .contains("GET /live/{room}|1006|idle timeout")));
    let s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (mut chatty, _) =
        tungstenite::client(format!("ws://{}/short/live/b", gw.addr()), s).expect("handshake");
    let opened = Instant::now();
    let mut echoes = 0;
    loop {
        if chatty.send(Message::Text("still here".into())).is_err() {
            break;
        }
        match chatty.read() {
            Ok(_) => echoes += 1,
            Err(_) => break,
        }
        assert!(opened.elapsed() < Duration::from_secs(20), "never closed");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(opened.elapsed() >= Duration::from_millis(1200), "{echoes}");
    assert!(echoes >= 2, "the connection lived: {echoes} echoes");
    assert!(wait_until(Duration::from_secs(10), || log_lines()
        .contains("GET /live/{room}|1006|connection lifetime reached")));
    let _ = std::fs::remove_file(&log);
    // A backend that does not switch protocols: the client gets 502.
    let url = format!("ws://{}/plain", gw.addr());
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 502),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a plain HTTP backend cannot take a WebSocket"),
    }
    // Plain requests on the same route still work.
    assert_eq!(gw.client().get("/plain").status, 200);
}

#[test]
fn a_jwt_in_the_query_authorizes_a_browser_style_handshake() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let secret = b"a websocket test secret of more than 32 bytes";
    let key = EncodingKey::from_secret(secret);
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::HS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = temp_path("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let claims = serde_json::json!({
        "iss": "https://issuer", "aud": "chat", "sub": "alice", "exp": now + 600, "iat": now
    });
    let token = jsonwebtoken::encode(&h, &claims, &key).unwrap();
    let b = EventBackend::start(usual);
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[authorizers]]
name = "jwt"
[authorizers.jwt]
issuer = "https://issuer"
audience = ["chat"]
jwks_file = "@J@"
token_query = "token"
claims_to_headers = { "x-user-sub" = "sub" }

[[apis]]
name = "chat"
kind = "websocket"
base_path = "/chat"
authorizer = "jwt"

[[apis.routes]]
key = "$connect"
integration = { type = "http", url = "http://@B@/connect" }

[[apis.routes]]
key = "$default"
integration = { type = "http", url = "http://@B@/message" }
"#,
        &[("B", b.addr.to_string()), ("J", jwks.display().to_string())],
    ));
    // No token: 401, and $connect's integration never hears of it.
    match tungstenite::connect(format!("ws://{}/chat", gw.addr())) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected without a token"),
    }
    match tungstenite::connect(format!("ws://{}/chat?token=not.a.jwt", gw.addr())) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected with a bad token"),
    }
    assert!(b.events().is_empty());
    // The token in the query, as a browser would send it.
    let s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/chat?token={token}", gw.addr()), s)
        .expect("handshake with the token in the query");
    let c = b.wait("/connect", |_| true);
    assert_eq!(c.h("x-user-sub"), "alice");
    // The claims go with every event of the connection.
    ws.send(Message::Text("hi".into())).unwrap();
    let m = b.wait("/message", |_| true);
    assert_eq!(m.h("x-user-sub"), "alice");
    assert_eq!(m.body, b"hi");
    let _ = std::fs::remove_file(&jwks);
}

#[test]
fn an_idle_connection_costs_about_two_kib() {
    let b = EventBackend::start(usual);
    // On both socket paths. On the ring, the shard's receive buffers are
    // touched as it receives, a cost per shard (4 MiB by default,
    // docs/tuning.md) that this figure per connection must not count: the
    // ring here has 64 of them, and the warm-up's connections receive
    // into every one before the figure's start.
    for io in ["epoll", "uring"] {
        let toml = fill(
            CONFIG,
            &[
                ("B", b.addr.to_string()),
                ("LIMITS", "new_connections_per_second = 1000000".to_string()),
                ("PAGE", PAGE.to_string()),
            ],
        );
        let mut toml = toml.replace("[server]\n", &format!("[server]\nio = \"{io}\"\n"));
        if io == "uring" {
            for id in 0..2 {
                toml.push_str(&format!(
                    "\n[[server.shard]]\nid = {id}\nuring_buffers = 64\n"
                ));
            }
        }
        let gw = Gateway::start(&toml);
        // Warm up: the first connections allocate the shards' tables.
        let mut open: Vec<TcpStream> = (0..200).map(|_| raw_ws(&gw, "/chat")).collect();
        thread::sleep(Duration::from_millis(200));
        let before = gw.rss_kib();
        const N: usize = 1000;
        for _ in 0..N {
            open.push(raw_ws(&gw, "/chat"));
        }
        thread::sleep(Duration::from_millis(200));
        let per_conn = gw.rss_kib().saturating_sub(before) * 1024 / N as u64;
        eprintln!("io = {io}: {per_conn} bytes per idle WebSocket connection");
        // Measured at about 1.9 KiB (docs/websocket.md); the bound leaves
        // room for the allocator.
        assert!(
            per_conn < 3 * 1024,
            "io = {io}: {per_conn} bytes per idle connection"
        );
        drop(open);
    }
}
