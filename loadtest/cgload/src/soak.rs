//! `cgload soak`: a mix of requests over keep-alive connections, for a long
//! run, counting every outcome by kind and by second.
//!
//! `--mix FILE` lists the requests, one per line, tab-separated:
//!
//! ```text
//! NAME  WEIGHT  METHOD  PATH  UPLOAD_BYTES  BODY_BYTES|-  OK_STATUSES  [HEADER: VALUE ...]
//! ```
//!
//! e.g. `upload 2 POST /plain/upload 1048576 2 200`. A request is picked at
//! random by weight (a fixed seed per connection). `UPLOAD_BYTES` of body
//! are sent with it (`Content-Length`); a 2xx response must carry
//! `BODY_BYTES` of body (`-`: any length). `OK_STATUSES` (comma-separated)
//! are the statuses the script expects. Every answer is counted by (route,
//! status); anything else
//! by (route, `err:KIND`): `connect-refused`, `connect`, `reset`, `eof`
//! (closed before a whole response), `timeout`, `bad-response`,
//! `body-length` (an OK status with the wrong body length), `send`.
//!
//! `--conns` threads each own one connection at a time (a new one after
//! `Connection: close` or an error). With `--rate R` (requests/s in all)
//! request k of connection i is due at `start + (k * conns + i) / R` and is
//! sent when due or as soon as the connection is free (closed loop when it
//! falls behind); `--rate 0` is a closed loop, for the maximum rate.
//!
//! `--series FILE` gets one line per (second, route, outcome) with a count;
//! stdout gets one `key=value` line: `secs`, `requests`, `rate`, and
//! `outcomes=route:outcome:count,...`.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{fail, Opts};

struct Req {
    name: String,
    weight: u32,
    head: Vec<u8>,
    upload: usize,
    body: Option<usize>,
    /// Read by the script (soak.sh), not here; parsed to reject a bad mix.
    #[allow(dead_code)]
    ok: Vec<u16>,
}

fn parse_mix(text: &str) -> Vec<Req> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 7 {
            fail(&format!(
                "--mix line {}: needs 7 tab-separated fields",
                n + 1
            ));
        }
        let num = |s: &str| -> usize {
            s.parse()
                .unwrap_or_else(|_| fail(&format!("--mix line {}: {s:?} is not a number", n + 1)))
        };
        let upload = num(f[4]);
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: soak\r\nUser-Agent: cgload-soak\r\n",
            f[2], f[3]
        );
        if upload > 0 || f[2] == "POST" || f[2] == "PUT" {
            head.push_str(&format!("Content-Length: {upload}\r\n"));
        }
        for h in &f[7..] {
            if !h.is_empty() {
                head.push_str(h);
                head.push_str("\r\n");
            }
        }
        head.push_str("\r\n");
        out.push(Req {
            name: f[0].to_string(),
            weight: num(f[1]) as u32,
            head: head.into_bytes(),
            upload,
            body: (f[5] != "-").then(|| num(f[5])),
            ok: f[6].split(',').map(|s| num(s) as u16).collect(),
        });
    }
    if out.is_empty() || out.iter().all(|r| r.weight == 0) {
        fail("--mix: no request with a weight above 0");
    }
    out
}

/// Counts per (second, route, outcome).
type Series = BTreeMap<(u64, String, String), u64>;

pub fn run(o: &Opts) {
    let addr = o.addr();
    let mix_path: String = o.get("mix", None);
    let text = std::fs::read_to_string(&mix_path)
        .unwrap_or_else(|e| fail(&format!("--mix {mix_path}: {e}")));
    let mix = Arc::new(parse_mix(&text));
    let conns: usize = o.get("conns", Some(16));
    let secs: f64 = o.get("duration", None);
    let rate: f64 = o.get("rate", Some(0.0));
    let timeout = Duration::from_millis(o.get("timeout-ms", Some(30_000)));
    let series_path: Option<String> = o.0.get("series").cloned();
    let series = Arc::new(Mutex::new(Series::new()));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let (mix, series) = (mix.clone(), series.clone());
            std::thread::spawn(move || {
                worker(addr, i, conns, rate, start, end, timeout, &mix, &series)
            })
        })
        .collect();
    let mut requests = 0u64;
    for t in threads {
        requests += t.join().unwrap_or(0);
    }
    let took = start.elapsed().as_secs_f64();
    let series = series.lock().unwrap_or_else(|e| e.into_inner());
    let mut totals: BTreeMap<(String, String), u64> = BTreeMap::new();
    for ((_, route, what), n) in series.iter() {
        *totals.entry((route.clone(), what.clone())).or_default() += n;
    }
    if let Some(p) = series_path {
        let mut s = String::new();
        for ((sec, route, what), n) in series.iter() {
            s.push_str(&format!("{sec}\t{route}\t{what}\t{n}\n"));
        }
        std::fs::write(&p, s).unwrap_or_else(|e| fail(&format!("--series {p}: {e}")));
    }
    let outcomes: Vec<String> = totals
        .iter()
        .map(|((r, w), n)| format!("{r}:{w}:{n}"))
        .collect();
    println!(
        "secs={took:.2} requests={requests} rate={:.1} outcomes={}",
        requests as f64 / took,
        outcomes.join(",")
    );
}

/// A small PRNG (xorshift64*), seeded per connection.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[allow(clippy::too_many_arguments)]
fn worker(
    addr: SocketAddr,
    i: usize,
    conns: usize,
    rate: f64,
    start: Instant,
    end: Instant,
    timeout: Duration,
    mix: &[Req],
    series: &Mutex<Series>,
) -> u64 {
    let total: u64 = mix.iter().map(|r| r.weight as u64).sum();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0001));
    let upload = vec![b'u'; mix.iter().map(|r| r.upload).max().unwrap_or(0)];
    let mut local: BTreeMap<(u64, usize, String), u64> = BTreeMap::new();
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let mut flush_at = Instant::now() + Duration::from_secs(1);
    for k in 0u64.. {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64((k * conns as u64 + i as u64) as f64 / rate);
            if due >= end {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        } else if Instant::now() >= end {
            break;
        }
        let mut pick = rng.next() % total;
        let ri = mix
            .iter()
            .position(|r| {
                let w = r.weight as u64;
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap_or(0);
        let req = &mix[ri];
        let outcome = match one(
            &mut conn,
            addr,
            timeout,
            req,
            &upload[..req.upload],
            &mut buf,
        ) {
            Ok(status) => status.to_string(),
            Err(kind) => {
                conn = None;
                format!("err:{kind}")
            }
        };
        sent += 1;
        let sec = start.elapsed().as_secs();
        *local.entry((sec, ri, outcome)).or_default() += 1;
        if Instant::now() >= flush_at {
            flush(&mut local, mix, series);
            flush_at = Instant::now() + Duration::from_secs(1);
        }
    }
    flush(&mut local, mix, series);
    sent
}

fn flush(local: &mut BTreeMap<(u64, usize, String), u64>, mix: &[Req], series: &Mutex<Series>) {
    let mut s = series.lock().unwrap_or_else(|e| e.into_inner());
    for ((sec, ri, what), n) in std::mem::take(local) {
        *s.entry((sec, mix[ri].name.clone(), what)).or_default() += n;
    }
}

fn io_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            "reset"
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timeout",
        ErrorKind::UnexpectedEof => "eof",
        _ => "io",
    }
}

/// One request and its response; `Ok(status)` when the response was whole
/// (and, for an OK status, of the expected length).
fn one(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    timeout: Duration,
    req: &Req,
    upload: &[u8],
    buf: &mut [u8],
) -> Result<u16, &'static str> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
            if e.kind() == ErrorKind::ConnectionRefused {
                "connect-refused"
            } else {
                "connect"
            }
        })?;
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(timeout));
        let _ = s.set_write_timeout(Some(timeout));
        *conn = Some(s);
    }
    let Some(s) = conn.as_mut() else {
        return Err("connect");
    };
    let send = |s: &mut TcpStream| -> std::io::Result<()> {
        s.write_all(&req.head)?;
        if !upload.is_empty() {
            s.write_all(upload)?;
        }
        Ok(())
    };
    if let Err(e) = send(s) {
        return Err(match io_kind(&e) {
            "reset" => "reset",
            "timeout" => "timeout",
            _ => "send",
        });
    }
    // The head.
    let mut have = 0usize;
    let head_end = loop {
        if let Some(p) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if have == buf.len() {
            return Err("bad-response");
        }
        match s.read(&mut buf[have..]) {
            Ok(0) => return Err("eof"),
            Ok(n) => have += n,
            Err(e) => return Err(io_kind(&e)),
        }
    };
    let head = &buf[..head_end];
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return Err("bad-response");
    }
    let status: u16 = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("bad-response")?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], crate::trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        }
    }
    let head_request = req.head.starts_with(b"HEAD ");
    let body_len = if head_request || status == 204 || status == 304 {
        0
    } else if chunked {
        // Rare here: read to the last chunk by scanning (the suite's
        // backends send lengths); the body's length is not checked.
        let mut tail = buf[head_end..have].to_vec();
        while !tail.windows(5).any(|w| w == b"0\r\n\r\n") {
            let mut b = [0u8; 16 * 1024];
            match s.read(&mut b) {
                Ok(0) => return Err("eof"),
                Ok(n) => tail.extend_from_slice(&b[..n]),
                Err(e) => return Err(io_kind(&e)),
            }
        }
        if close {
            *conn = None;
        }
        return Ok(status);
    } else {
        length.ok_or("bad-response")?
    };
    // The body: count it, keep nothing.
    let mut got = have - head_end;
    while got < body_len {
        match s.read(buf) {
            Ok(0) => return Err("eof"),
            Ok(n) => got += n,
            Err(e) => return Err(io_kind(&e)),
        }
    }
    if got > body_len {
        // Bytes past the response: we never pipeline.
        return Err("bad-response");
    }
    if (200..300).contains(&status) {
        if let Some(want) = req.body {
            if want != body_len {
                return Err("body-length");
            }
        }
    }
    if close {
        *conn = None;
    }
    Ok(status)
}
