//! WebSocket scenarios (loadtest/ws.sh). Blocking sockets, one thread per
//! connection: the counts are what matters, and the CPU the gateway spends
//! is read from /proc by the script, not from here.
//!
//! - `ws-server`: a WebSocket echo backend (the direct reference): answers
//!   every handshake with `101`, echoes every text or binary message
//!   unmasked, answers a close.
//! - `ws-echo`: `--conns` connections, each in a closed loop of one text
//!   message of `--size` bytes and its answer, for `--duration` seconds
//!   after `--warmup`; prints `messages=N rate=R`.
//! - `ws-idle`: opens `--conns` WebSocket connections one after the other
//!   (for at most `--within` seconds), prints `READY N` (how many are
//!   open), holds them for `--hold` seconds.
//! - `ws-push`: opens `--conns` WebSocket connections to a WebSocket API
//!   with no `$default` (each learns its connection id from the
//!   `Forbidden` answer to one message), keeps those whose id names shard
//!   `--shard`, and pushes to them with `POST {--push-prefix}{id}` (the
//!   admin listener's `/@connections/` by default, or a WebSocket API's
//!   own `/api/@connections/`, signed with `--sigv4`) to `--push-addr`
//!   from `--pushers` keep-alive connections for `--duration` seconds;
//!   prints `pushes=N received=M rate=R`.

use crate::Opts;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

// === SHA-1 and base64, for Sec-WebSocket-Accept ===

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64) * 8;
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn accept(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

// === frames ===

/// A frame: masked (a client's) or not.
fn frame(op: u8, payload: &[u8], masked: bool, out: &mut Vec<u8>) {
    out.clear();
    out.push(0x80 | op);
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        // A zero mask: the bytes are the payload, and the server's
        // unmasking is the same work.
        out.extend_from_slice(&[0; 4]);
    }
    out.extend_from_slice(payload);
}

/// Reads one frame: (opcode, payload), unmasked.
fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut e = [0u8; 2];
        s.read_exact(&mut e)?;
        len = u64::from(u16::from_be_bytes(e));
    } else if len == 127 {
        let mut e = [0u8; 8];
        s.read_exact(&mut e)?;
        len = u64::from_be_bytes(e);
    }
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        s.read_exact(&mut mask)?;
    }
    buf.resize(len as usize, 0);
    s.read_exact(buf)?;
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((h[0] & 0x0f, buf.clone()))
}

/// Reads an HTTP head (up to the blank line).
fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
        if head.len() > 16384 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Opens a WebSocket (the handshake's `101` checked).
fn open(addr: SocketAddr, path: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\r\n"
    )?;
    let head = read_head(&mut s)?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!(
            "no 101: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(s)
}

// === ws-server ===

pub fn server(o: &Opts) {
    let addr = o.addr();
    let listener =
        TcpListener::bind(addr).unwrap_or_else(|e| crate::fail(&format!("bind {addr}: {e}")));
    println!("READY");
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let Ok(head) = read_head(&mut s) else { return };
            let key = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                accept(&key)
            );
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
            let (mut buf, mut out) = (Vec::new(), Vec::new());
            while let Ok((op, payload)) = read_frame(&mut s, &mut buf) {
                match op {
                    1 | 2 => frame(op, &payload, false, &mut out),
                    8 => {
                        frame(8, &payload[..payload.len().min(2)], false, &mut out);
                        let _ = s.write_all(&out);
                        return;
                    }
                    9 => frame(10, &payload, false, &mut out),
                    _ => continue,
                }
                if s.write_all(&out).is_err() {
                    return;
                }
            }
        });
    }
}

// === ws-echo ===

pub fn echo(o: &Opts) {
    let addr = o.addr();
    let path = o.get::<String>("path", Some("/".to_string()));
    let conns = o.get::<u64>("conns", Some(16)) as usize;
    let size = o.get::<u64>("size", Some(64)) as usize;
    let duration = Duration::from_secs_f64(o.get::<f64>("duration", None));
    let warmup = Duration::from_secs_f64(o.get::<f64>("warmup", Some(1.0)));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..conns {
        let mut s = open(addr, &path).unwrap_or_else(|e| crate::fail(&format!("ws-echo: {e}")));
        let (counting, stop, count) = (counting.clone(), stop.clone(), count.clone());
        threads.push(std::thread::spawn(move || {
            let payload = vec![b'x'; size];
            let (mut out, mut buf) = (Vec::new(), Vec::new());
            frame(1, &payload, true, &mut out);
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&out).is_err() {
                    crate::fail("ws-echo: send failed");
                }
                match read_frame(&mut s, &mut buf) {
                    Ok((1, p)) if p.len() == size => {}
                    Ok((op, p)) => crate::fail(&format!(
                        "ws-echo: unexpected frame {op} of {} bytes",
                        p.len()
                    )),
                    Err(e) => crate::fail(&format!("ws-echo: {e}")),
                }
                if counting.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    std::thread::sleep(warmup);
    counting.store(true, Ordering::Relaxed);
    // The script reads the gateway's CPU time at these two lines.
    println!("START");
    let started = Instant::now();
    std::thread::sleep(duration);
    counting.store(false, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!("END");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    println!("messages={n} rate={:.0}", n as f64 / secs);
}

// === ws-idle ===

pub fn idle(o: &Opts) {
    let addr = o.addr();
    let path = o.get::<String>("path", Some("/".to_string()));
    let conns = o.get::<u64>("conns", None) as usize;
    let hold = Duration::from_secs_f64(o.get::<f64>("hold", None));
    // Opening stops after `--within` seconds, with what is open by then.
    let within = Duration::from_secs_f64(o.get::<f64>("within", Some(f64::MAX / 4.0)));
    let started = Instant::now();
    let mut open_ones = Vec::with_capacity(conns);
    for i in 0..conns {
        if started.elapsed() > within {
            break;
        }
        match open(addr, &path) {
            Ok(s) => open_ones.push(s),
            Err(e) => crate::fail(&format!("ws-idle: connection {i}: {e}")),
        }
    }
    println!("READY {}", open_ones.len());
    std::thread::sleep(hold);
}

// === ws-push ===

pub fn push(o: &Opts) {
    let addr = o.addr();
    // Where pushes go: the admin listener's `/@connections/`, or a
    // WebSocket API's own path (`--push-prefix /api/@connections/`, signed
    // with `--sigv4 AKID:SECRET:REGION`).
    let push_addr: SocketAddr = o.get("push-addr", None);
    let prefix = o.get::<String>("push-prefix", Some("/@connections/".to_string()));
    let creds = o.0.get("sigv4").map(|c| {
        crate::sigv4::Credentials::parse(c)
            .unwrap_or_else(|| crate::fail("--sigv4: AKID:SECRET:REGION"))
    });
    let path = o.get::<String>("path", Some("/".to_string()));
    let conns = o.get::<u64>("conns", Some(8)) as usize;
    let want_shard = o.get::<u64>("shard", Some(0));
    let pushers = o.get::<u64>("pushers", Some(4)) as usize;
    let duration = Duration::from_secs_f64(o.get::<f64>("duration", None));
    // Connections on the wanted shard, with their ids.
    let mut targets = Vec::new();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..conns * 8 {
        if targets.len() == conns {
            break;
        }
        let mut s = open(addr, &path).unwrap_or_else(|e| crate::fail(&format!("ws-push: {e}")));
        frame(1, b"{\"action\":\"none\"}", true, &mut out);
        if s.write_all(&out).is_err() {
            crate::fail("ws-push: send failed");
        }
        let (_, p) =
            read_frame(&mut s, &mut buf).unwrap_or_else(|e| crate::fail(&format!("ws-push: {e}")));
        let text = String::from_utf8_lossy(&p).into_owned();
        let Some(id) = text
            .split("\"connectionId\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(str::to_string)
        else {
            crate::fail(&format!("ws-push: no connection id in {text:?}"))
        };
        if u64::from_str_radix(&id[..4.min(id.len())], 16).ok() == Some(want_shard) {
            targets.push((id, s));
        }
    }
    if targets.len() < conns {
        crate::fail(&format!(
            "ws-push: only {} connection(s) landed on shard {want_shard}",
            targets.len()
        ));
    }
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    let mut readers = Vec::new();
    for (id, mut s) in targets {
        ids.push(id);
        let received = received.clone();
        readers.push(std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            while let Ok((op, _)) = read_frame(&mut s, &mut buf) {
                if op == 1 || op == 2 {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let pushes = Arc::new(AtomicU64::new(0));
    // Each push's request, made (and signed) once per connection.
    let host = push_addr.to_string();
    let ids: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            let target = format!("{prefix}{id}");
            match &creds {
                Some(c) => c.signed_post(&host, &target, b"hello"),
                None => format!(
                    "POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 5\r\n\r\nhello"
                )
                .into_bytes(),
            }
        })
        .collect();
    let ids = Arc::new(ids);
    let mut threads = Vec::new();
    println!("START");
    let started = Instant::now();
    for p in 0..pushers {
        let (ids, stop, pushes) = (ids.clone(), stop.clone(), pushes.clone());
        threads.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(push_addr)
                .unwrap_or_else(|e| crate::fail(&format!("ws-push: {push_addr}: {e}")));
            let _ = s.set_nodelay(true);
            let mut i = p;
            let mut resp = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let req = &ids[i % ids.len()];
                i += 1;
                if s.write_all(req).is_err() {
                    crate::fail("ws-push: send failed");
                }
                // The answer: a head with content-length 0 (200) or a JSON error.
                let mut got = Vec::new();
                loop {
                    let n = s.read(&mut resp).unwrap_or(0);
                    if n == 0 {
                        crate::fail("ws-push: the push connection closed");
                    }
                    got.extend_from_slice(&resp[..n]);
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            if !head.starts_with("http/1.1 200") {
                                crate::fail(&format!(
                                    "ws-push: {}",
                                    head.lines().next().unwrap_or("")
                                ));
                            }
                            break;
                        }
                    }
                }
                pushes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("END");
    let n = pushes.load(Ordering::Relaxed);
    // What was pushed arrives (the readers stop 5 s after the last one).
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "pushes={n} received={} rate={:.0}",
        received.load(Ordering::Relaxed),
        n as f64 / secs
    );
    std::process::exit(0);
}
