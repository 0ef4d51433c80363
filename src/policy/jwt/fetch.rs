//! The JWKS fetcher: one std thread per `jwks_url` authorizer, off the
//! request path, that owns the authorizer's current key set and gives it to
//! every shard over crossbeam channels.
//!
//! It fetches at start-up, then every `refresh_interval_s` (or, after a
//! failed fetch, every `unknown_kid_refresh_min_interval_s` until one
//! succeeds), and when a shard saw a token whose `kid` no key has. No two
//! fetches are ever closer than `unknown_kid_refresh_min_interval_s`, for
//! whatever reason and however many unknown kids arrive: an unknown kid
//! asked for inside that window is served by one fetch when it ends. A failed fetch (connection, timeout,
//! non-200, not a JWKS, no usable key) keeps the keys the shards have and is
//! logged.
//!
//! The HTTP client is deliberately small: blocking std sockets with a
//! deadline over the whole exchange, `GET` with `Connection: close`, a
//! `200` answer framed by Content-Length, chunked coding or the close,
//! at most [`super::jwks::MAX_JWKS_BYTES`] of body, no redirects.
//! `https://` goes through rustls, verified against `jwks_ca_file` or the
//! operating system's roots, with SNI.

use super::jwks::{self, KeySet, Origin};
use crate::http::body::ChunkedDecoder;
use crate::http::response::{parse_response_head, RespFraming};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Room for the status line and headers of a JWKS response.
const MAX_HEAD_BYTES: usize = 64 * 1024;

// === impl URL ===

/// A parsed `jwks_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `host[:port]` as the Host header says it.
    pub authority: String,
}

/// Parses `http://host[:port]/path` or `https://...`. No user info, no
/// fragment.
pub fn parse_url(s: &str) -> Result<Url, String> {
    let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{s:?} is not an http:// or https:// URL"));
    };
    if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("{s:?} contains a space or control character"));
    }
    if s.contains('#') {
        return Err(format!("{s:?} has a fragment; leave it out"));
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(format!(
            "{s:?} has user info; credentials in URLs are not supported"
        ));
    }
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed '[' in the host"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?}: {h:?} is not an IPv6 address"));
        }
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("{s:?}: unexpected {after:?} after the host")),
        };
        (h.to_string(), port)
    } else {
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?),
            None => (authority, default_port),
        };
        let valid = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid {
            return Err(format!("{s:?}: {h:?} is not a host name"));
        }
        (h.to_ascii_lowercase(), port)
    };
    if port == 0 {
        return Err(format!("{s:?}: port 0"));
    }
    Ok(Url {
        https,
        host,
        port,
        path,
        authority: authority.to_ascii_lowercase(),
    })
}

// === impl fetcher ===

/// What shards send the fetcher.
pub enum ToFetcher {
    /// A shard's inbox for key sets: the fetcher answers with the current
    /// set at once (after its first fetch attempt) and sends every new one.
    Subscribe(Subscriber),
    /// A token named a `kid` no key has.
    UnknownKid,
}

/// A shard's end as the fetcher holds it: where key sets go, and where
/// the shard's updater leaves its waker while it waits for one (the
/// fetcher wakes it after sending).
pub struct Subscriber {
    pub keys: Sender<Arc<KeySet>>,
    pub waker: Receiver<crate::net::RemoteWaker>,
}

impl Subscriber {
    /// Sends `set` and wakes the shard's updater if it waits; false when
    /// the shard has gone.
    fn send(&self, set: &Arc<KeySet>) -> bool {
        if self.keys.send(set.clone()).is_err() {
            return false;
        }
        while let Ok(w) = self.waker.try_recv() {
            w.wake();
        }
        true
    }
}

/// Everything a fetcher thread needs (it holds no reference to the plan,
/// so it ends when the plan's last copy, and with it the last sender, is
/// dropped).
#[derive(Clone)]
pub struct FetchConfig {
    /// The authorizer's name, for logs.
    pub name: String,
    pub url: Url,
    pub timeout: Duration,
    pub refresh: Duration,
    pub min_interval: Duration,
    /// Roots from `jwks_ca_file`; None: the operating system's.
    pub ca: Option<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for FetchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("refresh", &self.refresh)
            .field("min_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

/// Starts the fetcher thread.
pub fn spawn(cfg: FetchConfig, rx: Receiver<ToFetcher>) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("coregate-jwks-{}", cfg.name))
        .spawn(move || Fetcher::new(cfg).run(rx))
        .map(|_| ())
}

struct Fetcher {
    cfg: FetchConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    current: Arc<KeySet>,
    /// The body the current set came from: an identical one changes nothing.
    current_body: Vec<u8>,
    shards: Vec<Subscriber>,
    last_fetch: Option<Instant>,
    next_scheduled: Instant,
    /// An unknown kid was reported inside the rate-limit window.
    pending: bool,
}

impl Fetcher {
    fn new(cfg: FetchConfig) -> Fetcher {
        let tls = if cfg.url.https {
            match tls_config(cfg.ca.as_deref()) {
                Ok(c) => Some(c),
                Err(e) => {
                    crate::log!(
                        "error",
                        "jwt authorizer {:?}: no TLS roots for {}: {e}",
                        cfg.name,
                        cfg.url.authority
                    );
                    None
                }
            }
        } else {
            None
        };
        Fetcher {
            cfg,
            tls,
            current: Arc::new(KeySet::default()),
            current_body: Vec::new(),
            shards: Vec::new(),
            last_fetch: None,
            next_scheduled: Instant::now(),
            pending: false,
        }
    }

    fn run(mut self, rx: Receiver<ToFetcher>) {
        self.refresh("start-up");
        loop {
            let now = Instant::now();
            let mut wake = self.next_scheduled;
            if self.pending {
                wake = wake.min(self.earliest_fetch(now));
            }
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(ToFetcher::Subscribe(s)) => {
                    if s.send(&self.current) {
                        self.shards.push(s);
                    }
                }
                Ok(ToFetcher::UnknownKid) => self.pending = true,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if self.pending && self.earliest_fetch(now) <= now {
                self.refresh("unknown kid");
            } else if now >= self.next_scheduled {
                self.refresh("scheduled");
            }
        }
    }

    /// When the rate limit next allows a fetch.
    fn earliest_fetch(&self, now: Instant) -> Instant {
        match self.last_fetch {
            Some(t) => t + self.cfg.min_interval,
            None => now,
        }
    }

    fn refresh(&mut self, why: &str) {
        let now = Instant::now();
        self.last_fetch = Some(now);
        self.pending = false;
        match self.fetch_keys() {
            // The rate limit holds for scheduled fetches too.
            Ok(None) => self.next_scheduled = now + self.cfg.refresh.max(self.cfg.min_interval),
            Ok(Some((set, body))) => {
                self.next_scheduled = now + self.cfg.refresh.max(self.cfg.min_interval);
                crate::log!(
                    "info",
                    "jwt authorizer {:?}: {} key(s) loaded from {} ({why})",
                    self.cfg.name,
                    set.len(),
                    self.cfg.url.authority
                );
                self.current = Arc::new(set);
                self.current_body = body;
                let current = &self.current;
                // A shard that stopped has dropped its receiver.
                self.shards.retain(|s| s.send(current));
            }
            Err(e) => {
                // Keep the keys the shards have; try again sooner than the
                // refresh interval, as soon as the rate limit allows.
                self.next_scheduled = now + self.cfg.min_interval;
                crate::log!(
                    "warn",
                    "jwt authorizer {:?}: JWKS fetch from {} failed ({why}): {e}; keeping {} key(s)",
                    self.cfg.name,
                    self.cfg.url.authority,
                    self.current.len()
                );
            }
        }
    }

    /// Ok(None): the document did not change.
    #[allow(clippy::type_complexity)]
    fn fetch_keys(&self) -> Result<Option<(KeySet, Vec<u8>)>, String> {
        let body = get(&self.cfg.url, self.tls.as_ref(), self.cfg.timeout)?;
        if body == self.current_body && !self.current.is_empty() {
            return Ok(None);
        }
        let (set, report) = jwks::parse(&body, Origin::Url)?;
        for m in &report.malformed {
            crate::log!(
                "warn",
                "jwt authorizer {:?}: JWKS key skipped: {m}",
                self.cfg.name
            );
        }
        if set.is_empty() {
            return Err(format!(
                "the JWKS has no usable key ({} of an unsupported kind, {} malformed)",
                report.unsupported,
                report.malformed.len()
            ));
        }
        Ok(Some((set, body)))
    }
}

// === impl HTTP client ===

/// The rustls client config: the ring provider, TLS 1.2 and 1.3, the given
/// roots or the operating system's.
pub fn tls_config(
    ca: Option<&[CertificateDer<'static>]>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(certs) => {
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("a jwks_ca_file certificate is unusable: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A malformed system certificate is skipped, as curl does.
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted root certificates".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `GET url` and the body of its 200 answer, within `timeout` overall.
pub fn get(
    url: &Url,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    // Name resolution is the one step the deadline cannot bound (std has no
    // resolver timeout); an IP address or /etc/hosts name resolves at once.
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect();
    let mut last_err = format!("{} resolved to no address", url.host);
    let mut stream = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last_err = "timed out connecting".into();
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = format!("cannot connect to {a}: {e}"),
        }
    }
    let stream = stream.ok_or(last_err)?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json, application/jwk-set+json\r\nUser-Agent: coregate/{}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority,
        env!("CARGO_PKG_VERSION")
    );
    if url.https {
        let tls = tls.ok_or("no TLS configuration (see the earlier error)")?;
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| format!("{:?} is not a TLS server name: {e}", url.host))?;
        let conn =
            rustls::ClientConnection::new(tls.clone(), name).map_err(|e| format!("TLS: {e}"))?;
        let mut tls_stream = rustls::StreamOwned::new(conn, stream);
        exchange(&mut tls_stream, request.as_bytes(), deadline, true, |s| {
            &s.sock
        })
    } else {
        let mut plain = stream;
        exchange(&mut plain, request.as_bytes(), deadline, false, |s| s)
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    } else {
        Ok(left)
    }
}

/// Writes the request and reads the response until its body is complete.
fn exchange<S: Read + Write>(
    s: &mut S,
    request: &[u8],
    deadline: Instant,
    tls: bool,
    sock: impl Fn(&S) -> &TcpStream,
) -> Result<Vec<u8>, String> {
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_string(),
        _ => e.to_string(),
    };
    let set_timeouts = |s: &S| -> io::Result<()> {
        let left = remaining(deadline)?;
        sock(s).set_read_timeout(Some(left))?;
        sock(s).set_write_timeout(Some(left))
    };
    set_timeouts(s).map_err(io_err)?;
    s.write_all(request).map_err(io_err)?;
    s.flush().map_err(io_err)?;
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let limit = MAX_HEAD_BYTES + jwks::MAX_JWKS_BYTES;
    loop {
        set_timeouts(s).map_err(io_err)?;
        let (n, clean_eof) = match s.read(&mut chunk) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A TLS peer that closes without close_notify: fine when the
            // framing says the body is complete, a truncation otherwise.
            Err(e) if tls && e.kind() == io::ErrorKind::UnexpectedEof => (0, false),
            Err(e) => return Err(io_err(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > limit {
            return Err(format!("the response is over {limit} bytes"));
        }
        let eof = n == 0;
        if let Some(body) = parse_response(&buf, eof, clean_eof || !tls)? {
            return Ok(body);
        }
        if eof {
            return Err("the connection closed before the response was complete".into());
        }
    }
}

/// The body of a complete 200 response in `buf`; None while more is
/// needed. `eof`: nothing more will come; `trusted_close`: the close is an
/// authentic end (so a close-delimited body is complete). The head and the
/// chunked framing are read by the same parsers as the proxy's
/// ([`parse_response_head`], [`ChunkedDecoder`]).
pub fn parse_response(
    buf: &[u8],
    eof: bool,
    trusted_close: bool,
) -> Result<Option<Vec<u8>>, String> {
    let head = match parse_response_head(buf, false, MAX_HEAD_BYTES) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP response we take: {}", e.0)),
    };
    if (100..200).contains(&head.status) {
        // Interim responses (100 Continue) are not sent to a GET without
        // Expect; refuse rather than parse a second head.
        return Err(format!("unexpected interim response {}", head.status));
    }
    if head.status != 200 {
        return Err(format!("HTTP status {}", head.status));
    }
    let rest = &buf[head.len..];
    match head.framing {
        RespFraming::Chunked => {
            let mut dec = ChunkedDecoder::new(false, MAX_HEAD_BYTES);
            let mut out = Vec::new();
            let mut pos = 0;
            while pos < rest.len() && !dec.is_done() {
                let step = dec
                    .step(&rest[pos..])
                    .map_err(|e| format!("bad chunked body: {}", e.0))?;
                if step.forward {
                    if out.len() + step.consumed > jwks::MAX_JWKS_BYTES {
                        return Err("the chunked body is too large".into());
                    }
                    out.extend_from_slice(&rest[pos..pos + step.consumed]);
                }
                pos += step.consumed;
            }
            Ok(dec.is_done().then_some(out))
        }
        RespFraming::Length(l) if l > jwks::MAX_JWKS_BYTES as u64 => {
            Err(format!("a body of {l} bytes is too large"))
        }
        RespFraming::Length(l) => {
            let l = l as usize;
            Ok((rest.len() >= l).then(|| rest[..l].to_vec()))
        }
        RespFraming::None => Ok(Some(Vec::new())),
        RespFraming::Close if eof && trusted_close => Ok(Some(rest.to_vec())),
        RespFraming::Close if eof => Err("the TLS connection closed without close_notify".into()),
        RespFraming::Close => Ok(None),
    }
}
