//! cgload: the parts of the load-test suite that wrk cannot do.
//!
//! - `open`: fixed-rate (open-loop) load with latency percentiles corrected
//!   for coordinated omission. Each of `--conns` keep-alive connections owns a
//!   fixed schedule (request k of connection i is due at
//!   `start + (k * conns + i) / rate`). A request is sent when it is due, or as
//!   soon as its connection is free if the previous response was late, and its
//!   latency is measured from the time it was *due*, not from when it went out.
//!   A stalled server therefore shows up as the queueing delay every scheduled
//!   request would have seen (the method of wrk2 / HdrHistogram), instead of
//!   silently lowering the request rate.
//! - `idle`: opens `--conns` keep-alive connections one after the other, sends
//!   one request on each and reads its response, then prints `READY` and keeps
//!   them all open and idle for `--hold` seconds (for memory per idle
//!   connection).
//!
//! - `tls`: `--conns` threads, each in a closed loop of: connect, TLS
//!   handshake, one request (`Connection: close`), read the response, close.
//!   With `--resume 1` the threads share one session store, so every
//!   handshake after the first few resumes (rustls `HandshakeKind::Resumed`
//!   is counted); with `--resume 0` every handshake is a full one. The
//!   server's certificate is not verified (like wrk): the point is the
//!   server's cost of a handshake, not the client's.
//! - `throttle`: the accuracy of a token-bucket limit across shards. It opens
//!   keep-alive connections (from each `--from` address), sends one GET
//!   `--probe` on each and groups them by the shard that answered (the first
//!   16 hex digits of `x-request-id` are a per-shard prefix, and SO_REUSEPORT
//!   keeps a connection on one shard). Then `--conns` connections per address
//!   send GET `--path`, `--rate` requests/s per address in all, paced, for
//!   `--duration` seconds, in one `--pattern`: `spread` (the connections
//!   alternate between the shards), `one` (all on the first shard), `move`
//!   (all on the first shard for the first half, all on the second for the
//!   second half). 200s are counted as admitted, 429s as refused, per
//!   address. A response from another shard than the probe's is counted as
//!   `moved` (the grouping would be wrong).
//!
//! - `soak`: a weighted mix of requests (small and large, uploads, headers)
//!   at a fixed rate or closed loop, every outcome counted by route, kind
//!   and second (`soak.rs`; loadtest/soak.sh).
//! - `ws-server`, `ws-echo`, `ws-idle`, `ws-push`: WebSocket scenarios
//!   (`ws.rs`, loadtest/ws.sh).
//!
//! Output is one `key=value` line so the suite's shell script can read it.
//! Only loopback addresses are accepted.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

mod sigv4;
mod soak;
mod ws;

const USAGE: &str = "usage:
  cgload open --addr 127.0.0.1:PORT --rate REQ_PER_S --duration SECS [--warmup SECS]
              [--conns N] [--path /p] [--host H]
  cgload idle --addr 127.0.0.1:PORT --conns N --hold SECS [--path /p] [--host H]
  cgload tls  --addr 127.0.0.1:PORT --duration SECS --resume 0|1 [--conns N]
              [--path /p] [--host H] [--tls 1.2|1.3]
  cgload throttle --addr 127.0.0.1:PORT --path /limited --probe /unlimited
              --duration SECS --rate REQ_PER_S_PER_ADDRESS --pattern spread|one|move
              [--conns N] [--from 127.0.0.1[,127.0.0.2...]] [--shards 2] [--host H]
  cgload soak --addr 127.0.0.1:PORT --mix FILE --duration SECS [--rate REQ_PER_S (0: closed loop)]
              [--conns N] [--timeout-ms MS] [--series FILE]
  cgload ws-server --addr 127.0.0.1:PORT
  cgload ws-echo --addr 127.0.0.1:PORT --duration SECS [--path /p] [--conns N]
              [--size BYTES] [--warmup SECS]
  cgload ws-idle --addr 127.0.0.1:PORT --conns N --hold SECS [--path /p] [--within SECS]
  cgload ws-push --addr 127.0.0.1:PORT --push-addr 127.0.0.1:PORT --duration SECS
              [--path /p] [--conns N] [--shard N] [--pushers N]
              [--push-prefix /@connections/] [--sigv4 AKID:SECRET:REGION]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        fail(USAGE)
    };
    let opts = Opts::parse(rest);
    match cmd.as_str() {
        "open" => open_loop(&opts),
        "idle" => idle(&opts),
        "tls" => tls::run(&opts),
        "throttle" => throttle::run(&opts),
        "soak" => soak::run(&opts),
        "ws-server" => ws::server(&opts),
        "ws-echo" => ws::echo(&opts),
        "ws-idle" => ws::idle(&opts),
        "ws-push" => ws::push(&opts),
        _ => fail(USAGE),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("cgload: {msg}");
    std::process::exit(2)
}

// === impl Opts ===

struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut m = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let Some(k) = k.strip_prefix("--") else {
                fail(&format!("unexpected argument {k:?}\n{USAGE}"))
            };
            let Some(v) = it.next() else {
                fail(&format!("--{k} needs a value"))
            };
            m.insert(k.to_string(), v.clone());
        }
        Opts(m)
    }
    fn get<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> T {
        match self.0.get(k) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{k}: cannot parse {v:?}"))),
            None => default.unwrap_or_else(|| fail(&format!("--{k} is required\n{USAGE}"))),
        }
    }
    fn addr(&self) -> SocketAddr {
        let a: SocketAddr = self.get("addr", None);
        if !a.ip().is_loopback() {
            fail("only loopback addresses are allowed");
        }
        a
    }
    fn request(&self) -> Vec<u8> {
        let path: String = self.get("path", Some("/".to_string()));
        let host: String = self.get("host", Some("localhost".to_string()));
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cgload\r\n\r\n").into_bytes()
    }
}

// === response framing ===

/// Where a response ends in `buf`, once its head and body are complete, and
/// whether its status was 2xx. `Err` on bytes that are not a response.
fn response_end(buf: &[u8]) -> Result<Option<(usize, bool)>, &'static str> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &buf[..head_end];
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return Err("not an HTTP/1.x response");
    }
    let status = &head[9..12];
    let ok = status[0] == b'2';
    let no_body = status == b"204" || status == b"304" || status[0] == b'1';
    let body_start = head_end + 4;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value.eq_ignore_ascii_case(b"chunked");
        }
    }
    if no_body {
        return Ok(Some((body_start, ok)));
    }
    if chunked {
        // Enough for the suite's backends: the last chunk and an empty trailer.
        return Ok(buf[body_start..]
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .map(|p| (body_start + p + 5, ok)));
    }
    let Some(len) = length else {
        return Err("response without content-length");
    };
    Ok((buf.len() >= body_start + len).then_some((body_start + len, ok)))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', r @ ..] = s {
        s = r;
    }
    while let [r @ .., b' ' | b'\t'] = s {
        s = r;
    }
    s
}

// === open loop ===

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
    busy: bool,
    /// When the request in flight was due.
    due: Instant,
    /// When this connection's next request is due.
    next: Instant,
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .unwrap_or_else(|e| fail(&format!("connect {addr}: {e}")));
    let _ = s.set_nodelay(true);
    s
}

fn epoll_add(ep: i32, stream: &TcpStream, token: u64) {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: plain syscall on valid descriptors with a valid event struct.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut ev) };
    if r != 0 {
        fail(&format!("epoll_ctl: {}", std::io::Error::last_os_error()));
    }
}

fn open_loop(o: &Opts) {
    let addr = o.addr();
    let rate: f64 = o.get("rate", None);
    let duration: f64 = o.get("duration", None);
    let warmup: f64 = o.get("warmup", Some(1.0));
    let nconns: usize = o.get("conns", Some(32));
    let req = o.request();
    if rate <= 0.0 || duration <= 0.0 || nconns == 0 {
        fail("--rate, --duration and --conns must be positive");
    }
    // SAFETY: creating an epoll instance has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        fail("epoll_create1 failed");
    }
    let interval = Duration::from_secs_f64(nconns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let record_from = start + Duration::from_secs_f64(warmup);
    let stop_at = record_from + Duration::from_secs_f64(duration);
    let mut conns: Vec<Conn> = (0..nconns)
        .map(|i| {
            let stream = connect(addr);
            stream.set_nonblocking(true).unwrap();
            epoll_add(ep, &stream, i as u64);
            Conn {
                stream,
                buf: vec![0; 64 * 1024],
                filled: 0,
                busy: false,
                due: start,
                next: start + interval.mul_f64(i as f64 / nconns as f64),
            }
        })
        .collect();
    let mut lat_ns: Vec<u64> = Vec::with_capacity((rate * duration * 1.1) as usize + 16);
    let (mut errors, mut non2xx, mut sent, mut unfinished) = (0u64, 0u64, 0u64, 0u64);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; nconns.max(16)];
    let drain_deadline = stop_at + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        let mut busy = 0;
        for c in conns.iter_mut() {
            if !c.busy && c.next < stop_at {
                if c.next <= now {
                    c.due = c.next;
                    c.next += interval;
                    c.filled = 0;
                    // A request is far smaller than the socket buffer of an idle
                    // keep-alive connection: one write takes it.
                    match c.stream.write(&req) {
                        Ok(n) if n == req.len() => {
                            c.busy = true;
                            sent += 1;
                        }
                        _ => {
                            errors += 1;
                            continue;
                        }
                    }
                } else {
                    earliest = Some(earliest.map_or(c.next, |e: Instant| e.min(c.next)));
                }
            }
            busy += c.busy as usize;
        }
        if busy == 0 && earliest.is_none() {
            break;
        }
        if now > drain_deadline {
            // Still unanswered 5 s after the last one was due: the server fell
            // far behind the schedule.
            // Their latency is at least this long: counted as such.
            unfinished = busy as u64;
            for c in conns.iter().filter(|c| c.busy && c.due >= record_from) {
                lat_ns.push(now.saturating_duration_since(c.due).as_nanos() as u64);
            }
            break;
        }
        // Sleep in epoll only when the next send is more than 2 ms away;
        // otherwise spin, so sends leave on time (the generator owns its CPU).
        let timeout = match earliest {
            Some(t) if busy == 0 || t > now => {
                let ms = t.saturating_duration_since(now).as_millis() as i32;
                if ms > 2 {
                    ms - 1
                } else {
                    0
                }
            }
            _ if busy > 0 => 0,
            _ => 0,
        };
        // SAFETY: `events` is a valid buffer of its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, timeout) };
        if n < 0 {
            continue;
        }
        let done_at = Instant::now();
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let c = &mut conns[i];
            loop {
                if c.filled == c.buf.len() {
                    let l = c.buf.len() * 2;
                    c.buf.resize(l, 0);
                }
                match c.stream.read(&mut c.buf[c.filled..]) {
                    Ok(0) => {
                        // Closed by the server: count the request, reconnect.
                        if c.busy {
                            errors += 1;
                            c.busy = false;
                        }
                        let fresh = connect(addr);
                        fresh.set_nonblocking(true).unwrap();
                        epoll_add(ep, &fresh, i as u64);
                        c.stream = fresh;
                        c.filled = 0;
                        break;
                    }
                    Ok(k) => c.filled += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        if c.busy {
                            errors += 1;
                            c.busy = false;
                        }
                        break;
                    }
                }
            }
            if !c.busy || c.filled == 0 {
                continue;
            }
            match response_end(&c.buf[..c.filled]) {
                Ok(Some((_, ok))) => {
                    c.busy = false;
                    if !ok {
                        non2xx += 1;
                    }
                    if c.due >= record_from {
                        lat_ns.push(done_at.saturating_duration_since(c.due).as_nanos() as u64);
                    }
                }
                Ok(None) => {}
                Err(why) => fail(why),
            }
        }
    }
    lat_ns.sort_unstable();
    let pct = |q: f64| -> f64 {
        if lat_ns.is_empty() {
            return f64::NAN;
        }
        let idx = ((q * lat_ns.len() as f64).ceil() as usize).clamp(1, lat_ns.len()) - 1;
        lat_ns[idx] as f64 / 1000.0
    };
    println!(
        "target_rate={rate:.0} achieved_rate={:.0} recorded={} sent={sent} errors={errors} non2xx={non2xx} unfinished={unfinished} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
        lat_ns.len() as f64 / duration,
        lat_ns.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    );
}

// === idle connections ===

fn idle(o: &Opts) {
    let addr = o.addr();
    let nconns: usize = o.get("conns", None);
    let hold: f64 = o.get("hold", None);
    let req = o.request();
    let started = Instant::now();
    let mut open: Vec<TcpStream> = Vec::with_capacity(nconns);
    let mut failed = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..nconns {
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(s) => s,
            Err(_) => {
                failed += 1;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(&req).is_err() {
            failed += 1;
            continue;
        }
        let mut filled = 0;
        let ok = loop {
            match s.read(&mut buf[filled..]) {
                Ok(0) | Err(_) => break false,
                Ok(k) => filled += k,
            }
            match response_end(&buf[..filled]) {
                Ok(Some((end, ok))) => break ok && end == filled,
                Ok(None) if filled < buf.len() => {}
                _ => break false,
            }
        };
        if ok {
            open.push(s);
        } else {
            failed += 1;
        }
    }
    println!(
        "READY conns={} failed={failed} open_secs={:.2}",
        open.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs_f64(hold));
    // Still open? A server that closed idle connections early shows here.
    let mut still_open = 0;
    for s in &open {
        let _ = s.set_nonblocking(true);
        let mut b = [0u8; 1];
        if let Err(e) = (&*s).read(&mut b) {
            if e.kind() == ErrorKind::WouldBlock {
                still_open += 1;
            }
        }
    }
    println!("DONE still_open={still_open}");
}

// === TLS handshakes ===

mod tls {
    use super::{fail, response_end, Opts};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, StreamOwned};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Accepts the server's certificate unverified (the signatures of the
    /// handshake are still checked).
    #[derive(Debug)]
    struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for NoVerify {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    #[derive(Default)]
    struct Counts {
        ok: AtomicU64,
        resumed: AtomicU64,
        errors: AtomicU64,
    }

    pub fn run(o: &Opts) {
        let addr = o.addr();
        let secs: f64 = o.get("duration", None);
        let threads: usize = o.get("conns", Some(8));
        let resume: u8 = o.get("resume", None);
        let version: String = o.get("tls", Some("1.3".to_string()));
        let host: String = o.get("host", Some("localhost".to_string()));
        let path: String = o.get("path", Some("/".to_string()));
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cgload\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match version.as_str() {
            "1.2" => &[&rustls::version::TLS12],
            "1.3" => &[&rustls::version::TLS13],
            _ => fail("--tls: 1.2 or 1.3"),
        };
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap_or_else(|e| fail(&format!("rustls: {e}")))
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if resume == 1 {
            rustls::client::Resumption::in_memory_sessions(1024)
        } else {
            rustls::client::Resumption::disabled()
        };
        let config = Arc::new(config);
        let name =
            ServerName::try_from(host.clone()).unwrap_or_else(|_| fail("--host: not a name"));
        let counts = Arc::new(Counts::default());
        let started = Instant::now();
        let end = started + Duration::from_secs_f64(secs);
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (config, name, counts, req) =
                    (config.clone(), name.clone(), counts.clone(), req.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while Instant::now() < end {
                        match once(addr, &config, &name, &req, &mut buf) {
                            Ok(resumed) => {
                                counts.ok.fetch_add(1, Ordering::Relaxed);
                                if resumed {
                                    counts.resumed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ok = counts.ok.load(Ordering::Relaxed);
        println!(
            "handshakes={ok} rate={:.1} resumed={} errors={} secs={elapsed:.2}",
            ok as f64 / elapsed,
            counts.resumed.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed)
        );
    }

    /// One connection: handshake, request, response. Returns whether the
    /// handshake resumed a session.
    fn once(
        addr: std::net::SocketAddr,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
        req: &[u8],
        buf: &mut [u8],
    ) -> Result<bool, String> {
        let sock =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        let _ = sock.set_nodelay(true);
        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
        let conn =
            ClientConnection::new(config.clone(), name.clone()).map_err(|e| e.to_string())?;
        let mut s = StreamOwned::new(conn, sock);
        s.write_all(req).map_err(|e| e.to_string())?;
        let mut filled = 0;
        loop {
            let n = s.read(&mut buf[filled..]).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the response ended".into());
            }
            filled += n;
            match response_end(&buf[..filled]) {
                Ok(Some((_, true))) => break,
                Ok(Some((_, false))) => return Err("non-2xx".into()),
                Ok(None) if filled < buf.len() => {}
                _ => return Err("bad response".into()),
            }
        }
        Ok(s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }
}

// === throttle accuracy ===

mod throttle {
    use super::{fail, response_end, Opts};
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    /// A keep-alive connection from a chosen local address.
    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
        filled: usize,
    }

    /// What one response said: status and the shard prefix of its request id.
    struct Answer {
        status: u16,
        shard: Option<String>,
    }

    impl Conn {
        fn open(from: IpAddr, to: SocketAddr) -> std::io::Result<Conn> {
            let domain = if to.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            // std has no bind-before-connect: a raw socket, bound, then
            // connected, handed to std.
            // SAFETY: plain syscalls on a descriptor this function owns; the
            // sockaddr structs are built by std's own conversions below.
            let stream = unsafe {
                use std::os::fd::FromRawFd;
                let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let stream = TcpStream::from_raw_fd(fd);
                let (local, llen) = sockaddr(SocketAddr::new(from, 0));
                if libc::bind(fd, &local as *const _ as *const libc::sockaddr, llen) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let (remote, rlen) = sockaddr(to);
                if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, rlen) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                stream
            };
            let _ = stream.set_nodelay(true);
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(Conn {
                stream,
                buf: vec![0; 16 * 1024],
                filled: 0,
            })
        }

        /// Sends `req` and reads one response.
        fn exchange(&mut self, req: &[u8]) -> Result<Answer, String> {
            self.stream.write_all(req).map_err(|e| e.to_string())?;
            loop {
                match response_end(&self.buf[..self.filled]) {
                    Ok(Some((end, _))) => {
                        let answer = parse_answer(&self.buf[..end]);
                        self.buf.copy_within(end..self.filled, 0);
                        self.filled -= end;
                        return answer;
                    }
                    Ok(None) => {}
                    Err(why) => return Err(why.to_string()),
                }
                if self.filled == self.buf.len() {
                    return Err("response larger than the buffer".into());
                }
                match self.stream.read(&mut self.buf[self.filled..]) {
                    Ok(0) => return Err("closed by the server".into()),
                    Ok(n) => self.filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }

    fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: an all-zero sockaddr_storage is a valid value; the casts
        // write the family-specific struct into its start, which it is sized
        // and aligned for.
        unsafe {
            let mut ss: libc::sockaddr_storage = std::mem::zeroed();
            match a {
                SocketAddr::V4(v4) => {
                    let sin = &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in);
                    sin.sin_family = libc::AF_INET as libc::sa_family_t;
                    sin.sin_port = v4.port().to_be();
                    sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                    (
                        ss,
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
                SocketAddr::V6(v6) => {
                    let sin6 = &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6);
                    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    sin6.sin6_port = v6.port().to_be();
                    sin6.sin6_addr.s6_addr = v6.ip().octets();
                    (
                        ss,
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
        }
    }

    fn parse_answer(resp: &[u8]) -> Result<Answer, String> {
        let status = std::str::from_utf8(&resp[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let mut shard = None;
        for line in resp.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                if line[..colon].eq_ignore_ascii_case(b"x-request-id") {
                    let v = super::trim(&line[colon + 1..]);
                    if v.len() >= 16 {
                        shard = Some(String::from_utf8_lossy(&v[..16]).into_owned());
                    }
                }
            }
        }
        Ok(Answer { status, shard })
    }

    #[cfg(test)]
    #[test]
    fn answers_give_status_and_shard() {
        let a = parse_answer(
            b"HTTP/1.1 429 Too Many Requests\r\nX-Request-Id: 0123456789abcdefffffffffffffffff\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(a.status, 429);
        assert_eq!(a.shard.as_deref(), Some("0123456789abcdef"));
        let b = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!((b.status, b.shard), (200, None));
    }

    #[derive(Default, Clone, Copy)]
    struct Tally {
        sent: u64,
        admitted: u64,
        refused: u64,
        other: u64,
        errors: u64,
        moved: u64,
    }

    impl Tally {
        fn add(&mut self, t: Tally) {
            self.sent += t.sent;
            self.admitted += t.admitted;
            self.refused += t.refused;
            self.other += t.other;
            self.errors += t.errors;
            self.moved += t.moved;
        }
    }

    /// One connection's share of the load: from `from` to `to` after `start`,
    /// one request every `interval`, the first `phase` after `from`.
    struct Part {
        address: usize,
        conn: Conn,
        shard: String,
        from: Duration,
        to: Duration,
        interval: Duration,
        phase: Duration,
    }

    fn drive(mut p: Part, req: &[u8], start: Instant) -> Tally {
        let mut t = Tally::default();
        let end = start + p.to;
        let mut next = start + p.from + p.phase;
        while next < end {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else if now - next > Duration::from_millis(20) {
                // Far behind (a stall on a shared machine): drop the missed
                // slots rather than send them back to back.
                next = now;
            }
            next += p.interval;
            t.sent += 1;
            match p.conn.exchange(req) {
                Ok(a) => {
                    match a.status {
                        200 => t.admitted += 1,
                        429 => t.refused += 1,
                        _ => t.other += 1,
                    }
                    if a.shard.as_deref() != Some(p.shard.as_str()) {
                        t.moved += 1;
                    }
                }
                Err(e) => {
                    eprintln!(
                        "cgload throttle: connection from address #{}: {e}",
                        p.address
                    );
                    t.errors += 1;
                    break;
                }
            }
        }
        t
    }

    pub fn run(o: &Opts) {
        let addr = o.addr();
        let path: String = o.get("path", None);
        let probe: String = o.get("probe", None);
        let secs: f64 = o.get("duration", None);
        let rate: f64 = o.get("rate", None);
        let pattern: String = o.get("pattern", None);
        let nconns: usize = o.get("conns", Some(8));
        let nshards: usize = o.get("shards", Some(2));
        let host: String = o.get("host", Some("localhost".to_string()));
        let from: String = o.get("from", Some("127.0.0.1".to_string()));
        let froms: Vec<IpAddr> = from
            .split(',')
            .map(|a| {
                let ip: IpAddr = a
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("--from: {a:?} is not an address")));
                if !ip.is_loopback() {
                    fail("--from: only loopback addresses are allowed");
                }
                ip
            })
            .collect();
        if secs <= 0.0 || rate <= 0.0 || nconns == 0 || nshards < 2 {
            fail("--duration, --rate and --conns must be positive, --shards at least 2");
        }
        if !matches!(pattern.as_str(), "spread" | "one" | "move") {
            fail("--pattern: spread, one or move");
        }
        let req = |p: &str| {
            format!("GET {p} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cgload\r\n\r\n").into_bytes()
        };
        let (probe_req, load_req) = (req(&probe), req(&path));

        // Group connections by shard, for each address, until every shard
        // has `nconns` of them (more than any pattern uses on one shard).
        let mut groups: Vec<BTreeMap<String, Vec<Conn>>> = Vec::new();
        for &ip in &froms {
            let mut by_shard: BTreeMap<String, Vec<Conn>> = BTreeMap::new();
            for _ in 0..(50 * nconns * nshards).max(400) {
                if by_shard.len() >= nshards && by_shard.values().all(|g| g.len() >= nconns) {
                    break;
                }
                let mut c = Conn::open(ip, addr)
                    .unwrap_or_else(|e| fail(&format!("connect {ip} -> {addr}: {e}")));
                let a = c
                    .exchange(&probe_req)
                    .unwrap_or_else(|e| fail(&format!("probe {probe}: {e}")));
                if a.status != 200 {
                    fail(&format!("probe {probe} answered {}", a.status));
                }
                let shard = a
                    .shard
                    .unwrap_or_else(|| fail("probe: no x-request-id to tell the shard by"));
                by_shard.entry(shard).or_default().push(c);
            }
            if by_shard.len() != nshards || by_shard.values().any(|g| g.len() < nconns) {
                fail(&format!(
                    "from {ip}: expected {nshards} shards with {nconns} connections each, got {:?}",
                    by_shard.values().map(Vec::len).collect::<Vec<_>>()
                ));
            }
            groups.push(by_shard);
        }
        // The same shard order for every address: the prefixes, sorted.
        let order: Vec<String> = groups[0].keys().cloned().collect();
        if groups.iter().any(|g| g.keys().ne(order.iter())) {
            fail("the addresses reached different shards");
        }

        // The load plan: every active connection of an address sends
        // rate / nconns requests per second; the phases stagger them.
        let total = Duration::from_secs_f64(secs);
        let half = total / 2;
        let interval = Duration::from_secs_f64(nconns as f64 / rate);
        let mut plan: Vec<Part> = Vec::new();
        let mut on_shard = vec![0usize; nshards];
        for (address, mut by_shard) in groups.into_iter().enumerate() {
            let mut take = |shard: usize, from: Duration, to: Duration, i: usize| {
                let key = &order[shard];
                let conn = by_shard.get_mut(key).and_then(Vec::pop).expect("grouped");
                on_shard[shard] += 1;
                Part {
                    address,
                    conn,
                    shard: key.clone(),
                    from,
                    to,
                    interval,
                    phase: interval.mul_f64(i as f64 / nconns as f64),
                }
            };
            for i in 0..nconns {
                match pattern.as_str() {
                    "spread" => plan.push(take(i % nshards, Duration::ZERO, total, i)),
                    "one" => plan.push(take(0, Duration::ZERO, total, i)),
                    _ => {
                        plan.push(take(0, Duration::ZERO, half, i));
                        plan.push(take(1, half, total, i));
                    }
                }
            }
            // The connections not in the plan close here.
        }

        let start = Instant::now() + Duration::from_millis(100);
        let workers: Vec<_> = plan
            .into_iter()
            .map(|p| {
                let req = load_req.clone();
                let address = p.address;
                (address, std::thread::spawn(move || drive(p, &req, start)))
            })
            .collect();
        let mut per_address = vec![Tally::default(); froms.len()];
        for (address, w) in workers {
            let t = w.join().unwrap_or_else(|_| fail("a load thread panicked"));
            per_address[address].add(t);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut all = Tally::default();
        for t in &per_address {
            all.add(*t);
        }
        let per: Vec<String> = froms
            .iter()
            .zip(&per_address)
            .map(|(ip, t)| format!("{ip}:{}:{}", t.admitted, t.refused))
            .collect();
        println!(
            "pattern={pattern} secs={elapsed:.3} sent={} offered_rate={:.0} admitted={} refused={} other={} errors={} moved={} conns_per_shard={} per_address={}",
            all.sent,
            all.sent as f64 / elapsed,
            all.admitted,
            all.refused,
            all.other,
            all.errors,
            all.moved,
            on_shard.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("+"),
            per.join(","),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::response_end;

    #[test]
    fn framing() {
        assert_eq!(
            response_end(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"),
            Ok(Some((40, true)))
        );
        assert_eq!(
            response_end(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nh"),
            Ok(None)
        );
        assert_eq!(
            response_end(b"HTTP/1.1 502 Bad\r\nContent-Length: 0\r\n\r\n"),
            Ok(Some((39, false)))
        );
        assert_eq!(
            response_end(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
            ),
            Ok(Some((59, true)))
        );
    }
}
