//! Test harness shared by every integration test: the real `coregate` binary
//! started on an ephemeral port ([`Gateway`]), real backends written with std
//! threads ([`Backend`], one thread per connection, behaviour picked by
//! [`Reply`]), and a raw HTTP/1.1 client ([`Client`]) that sends exact bytes
//! and reads responses with a timeout, so a hang fails a test instead of
//! hanging it. Every test file includes this with `mod support;` and uses only
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]
// The Mutex ban in .clippy.toml is for the gateway's data path; this harness
// runs in the test process, where plain locks around counters and logs are fine.
#![allow(clippy::disallowed_types)]

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_coregate");
/// Hang guard for every socket read and write made by a test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the gateway may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

// === impl temp files ===

static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

/// A fresh path in the temp dir, unique per process and call.
pub fn temp_path(ext: &str) -> PathBuf {
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("coregate-test-{}-{n}.{ext}", std::process::id()))
}

/// Writes `text` to a fresh temp file and returns its path.
pub fn write_config(text: &str) -> PathBuf {
    let p = temp_path("toml");
    fs::write(&p, text).expect("write temp config");
    p
}

/// Replaces each `@NAME@` in `template` with its value.
pub fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("@{name}@"), value);
    }
    assert!(
        !out.contains("@B"),
        "unfilled placeholder in config:\n{out}"
    );
    out
}

/// Runs `coregate ARGS...` to completion (with a hang guard).
pub fn run_coregate(args: &[&str]) -> Output {
    run_coregate_env(args, &[])
}

/// As [`run_coregate`], with extra environment variables.
pub fn run_coregate_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coregate");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "coregate {args:?} did not exit within 20 s\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every 10 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// === impl Gateway ===

/// A running `coregate serve`, killed on drop.
pub struct Gateway {
    child: Child,
    addrs: Vec<SocketAddr>,
    /// `server.tls.listen` addresses, from `listening on ADDR (tls)` lines.
    tls_addrs: Vec<SocketAddr>,
    /// The admin listener, from the `admin listening on ADDR` line.
    admin_addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    config: PathBuf,
}

/// How many listening lines a config makes the gateway print: one per
/// `server.listen` address (1 when the key is left out) and one per
/// `server.tls.listen` address (1 when `[server.tls]` leaves it out).
fn listen_count(text: &str) -> usize {
    let v = toml::from_str::<toml::Value>(text).ok();
    let server = v.as_ref().and_then(|v| v.get("server"));
    let plain = server
        .and_then(|s| s.get("listen"))
        .map_or(1, |l| l.as_array().map_or(1, |a| a.len()));
    let tls = server.and_then(|s| s.get("tls")).map_or(0, |t| {
        t.get("listen")
            .map_or(1, |l| l.as_array().map_or(1, |a| a.len()))
    });
    (plain + tls).max(1)
}

/// The config a test gateway runs: `toml`, with an admin listener on an
/// ephemeral port when the test wrote no `[admin]`, so that gateways of
/// tests running at once do not compete for the default 127.0.0.1:9901.
pub fn with_test_admin(toml: &str) -> String {
    let has_admin = toml::from_str::<toml::Value>(toml)
        .ok()
        .is_some_and(|v| v.get("admin").is_some());
    if has_admin {
        toml.to_string()
    } else {
        format!("{toml}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
    }
}

/// Whether a config serves an admin listener (`[admin] enabled = false`
/// serves none).
fn admin_expected(text: &str) -> bool {
    toml::from_str::<toml::Value>(text)
        .ok()
        .and_then(|v| v.get("admin")?.get("enabled")?.as_bool())
        .unwrap_or(true)
}

fn collect_lines(
    pipe: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    into.lock().unwrap().push_str(&text);
                    if let Some(tx) = &tx {
                        let _ = tx.send(text);
                    }
                }
            }
        }
    })
}

/// Creates key `name` (on usage plan `plan`, if given) in the keys file
/// `file` with `coregate keys create`; returns the key.
pub fn create_key(file: &std::path::Path, name: &str, plan: Option<&str>) -> String {
    let mut args = vec![
        "keys",
        "create",
        "--file",
        file.to_str().unwrap(),
        "--name",
        name,
    ];
    if let Some(p) = plan {
        args.extend(["--usage-plan", p]);
    }
    let out = run_coregate(&args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `toml` with `pin_shards = false` added to its `[server]` table, unless
/// it places shards itself (`cpus` or `pin_shards`): the tests run many
/// gateways at once, and pinned ones would all share the first CPU. Every
/// config a test starts or reloads goes through here, so the socket path
/// the environment asks for is set here too ([`on_test_io`]).
pub fn unpinned(toml: &str) -> String {
    let toml = &on_test_io(toml);
    if toml.contains("cpus") || toml.contains("pin_shards") {
        return toml.to_string();
    }
    match toml.find("[server]\n") {
        Some(at) => {
            let end = at + "[server]\n".len();
            format!("{}pin_shards = false\n{}", &toml[..end], &toml[end..])
        }
        None => toml.to_string(),
    }
}

/// `toml` with `io = "<mode>"` in its `[server]` table when the
/// environment asks for it (`COREGATE_TEST_IO=epoll`, or `uring`, the
/// default): the whole suite can then run on the shards' epoll socket path
/// (scripts/test does so for a set of test files). A config that sets `io`
/// itself, or has no `[server]` table, is left as it is.
pub fn on_test_io(toml: &str) -> String {
    let Ok(io) = std::env::var("COREGATE_TEST_IO") else {
        return toml.to_string();
    };
    if io.is_empty() || toml.contains("\nio =") {
        return toml.to_string();
    }
    match toml.find("[server]\n") {
        Some(at) => {
            let end = at + "[server]\n".len();
            format!("{}io = {io:?}\n{}", &toml[..end], &toml[end..])
        }
        None => toml.to_string(),
    }
}

impl Gateway {
    /// Writes `toml` to a temp file, starts `coregate serve --config FILE` and
    /// waits until it printed `coregate: listening on ADDR` for every listen
    /// address. Panics with the child's output if it does not within 15 s.
    /// An admin listener on an ephemeral port is added when the config
    /// has no `[admin]` ([`with_test_admin`]); [`Gateway::admin_addr`]
    /// gives its address.
    pub fn start(toml: &str) -> Gateway {
        Self::start_with_env(toml, &[])
    }

    /// As [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Gateway {
        let toml = &with_test_admin(toml);
        let expected = listen_count(toml);
        let toml = &unpinned(toml);
        let config = write_config(toml);
        let args = [
            "serve".into(),
            "--config".into(),
            config.clone().into_os_string(),
        ];
        Self::spawn_env(
            &args,
            None,
            expected,
            admin_expected(toml),
            config,
            toml,
            env,
        )
    }

    /// Starts `coregate ARGS` in `cwd` and waits for `expected` listening
    /// lines. `config` is deleted on drop; `shown` is printed on failure.
    pub fn spawn(
        args: &[std::ffi::OsString],
        cwd: Option<&std::path::Path>,
        expected: usize,
        config: PathBuf,
        shown: &str,
    ) -> Gateway {
        Self::spawn_env(args, cwd, expected, false, config, shown, &[])
    }

    /// `expected` traffic listening lines, and an admin one when `admin`.
    #[allow(clippy::too_many_arguments)]
    fn spawn_env(
        args: &[std::ffi::OsString],
        cwd: Option<&std::path::Path>,
        expected: usize,
        admin: bool,
        config: PathBuf,
        shown: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let toml = shown;
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn coregate serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let err_thread = collect_lines(child.stderr.take().unwrap(), stderr.clone(), None);
        let (tx, rx) = mpsc::channel();
        let out_thread = collect_lines(child.stdout.take().unwrap(), stdout.clone(), Some(tx));
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addrs = Vec::new();
        let mut tls_addrs = Vec::new();
        let mut admin_addr = None;
        while addrs.len() + tls_addrs.len() < expected || (admin && admin_addr.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("coregate: admin listening on ") => {
                    let a = line.trim_end()["coregate: admin listening on ".len()..].trim();
                    match a.parse::<SocketAddr>() {
                        Ok(addr) => {
                            admin_addr = Some(addr);
                            continue;
                        }
                        Err(e) => format!("unparsable admin address {a:?}: {e}"),
                    }
                }
                Ok(line) => match line.trim_end().strip_prefix("coregate: listening on ") {
                    Some(a) => match a.trim_end_matches(" (tls)").trim().parse::<SocketAddr>() {
                        Ok(addr) if a.ends_with(" (tls)") => {
                            tls_addrs.push(addr);
                            continue;
                        }
                        Ok(addr) => {
                            addrs.push(addr);
                            continue;
                        }
                        Err(e) => format!("unparsable address {a:?}: {e}"),
                    },
                    None => continue,
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    format!("no listening line within {START_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    "stdout closed (the process exited?)".to_string()
                }
            };
            let _ = child.kill();
            let status = child.wait();
            let _ = err_thread.join();
            let _ = out_thread.join();
            let _ = fs::remove_file(&config);
            panic!(
                "coregate serve did not start: {why}; exit {status:?}\n--- config ---\n{toml}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                stdout.lock().unwrap(),
                stderr.lock().unwrap()
            );
        }
        Gateway {
            child,
            addrs,
            tls_addrs,
            admin_addr,
            stderr,
            stdout,
            config,
        }
    }

    /// The first listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first `server.tls.listen` address.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addrs[0]
    }

    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
            .expect("this gateway printed no admin listening line")
    }

    /// `http://ADMIN{path}`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// The config file the gateway runs (and reloads).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Replaces the config file the gateway runs with `toml`, with the
    /// test admin listener and `pin_shards` the start added (so that a
    /// reload does not see them change).
    pub fn rewrite_config(&self, toml: &str) {
        let toml = unpinned(&with_test_admin(toml));
        let tmp = self.config.with_extension("next");
        std::fs::write(&tmp, toml).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("replace config");
    }

    /// `POST /reload` on the admin listener.
    pub fn reload(&self) -> HttpResponse {
        call(agent().post(&self.admin_url("/reload")), Some(b""))
    }

    /// Rewrites the config and reloads it; panics unless the gateway
    /// answers 200. Returns the new generation.
    pub fn reload_with(&self, toml: &str) -> u64 {
        self.rewrite_config(toml);
        let r = self.reload();
        assert_eq!(
            r.status,
            200,
            "reload refused: {}\n{}",
            r.text(),
            self.stderr()
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON answer");
        v["generation"].as_u64().expect("generation")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM)
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT)
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything the gateway wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until some stderr line satisfies `pred`; returns that line.
    pub fn wait_stderr_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.stderr().lines().find(|l| pred(l)).map(str::to_string);
            found.is_some()
        });
        found
    }

    /// Peak resident memory of the gateway (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM").expect("VmHWM in /proc/PID/status")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS").expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.config);
        if thread::panicking() {
            thread::sleep(Duration::from_millis(50));
            eprintln!(
                "--- coregate stderr ---\n{}--- end of coregate stderr ---",
                self.stderr()
            );
        }
    }
}

/// A `kB` field of /proc/PID/status.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Downloads `GET /drain` (a body of the stamped pattern, `PatternCheck`)
/// on a new connection to `gw`, and sends the gateway SIGTERM once `at`
/// bytes of it have arrived, pausing 300 ms so the body is still under way
/// when the drain begins. Returns the response (its body checked into the
/// returned `PatternCheck`) and the bytes spliced toward clients by then.
pub fn download_through_sigterm(gw: &Gateway, at: u64) -> (Response, PatternCheck, Option<u64>) {
    let before = spliced_bytes(gw);
    let mut c = gw.client();
    c.send(b"GET /drain HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut check = PatternCheck::default();
    let mut mid = None;
    let r = c
        .read_response_with(false, &mut |d| {
            check.feed(d);
            if mid.is_none() && check.offset >= at {
                mid = Some(spliced_bytes(gw).0 - before.0);
                gw.sigterm();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
        .unwrap_or_else(|e| panic!("download during the drain: {e:?}"));
    (r, check, mid)
}

/// `coregate_spliced_bytes_total` so far, summed over the shards: (to
/// clients, to upstreams). Read with Python's prometheus_client
/// (tests/prom_parse.py; scripts/test installs it), a parser we did not
/// write.
pub fn spliced_bytes(gw: &Gateway) -> (u64, u64) {
    let r = http_get(&gw.admin_url("/metrics"));
    assert_eq!(r.status, 200, "{}", r.text());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prom_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg("text")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 is needed to read the metrics ({e}); scripts/test installs it")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(r.text().as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser's JSON");
    let (mut down, mut up, mut seen) = (0.0, 0.0, 0);
    for s in v["samples"].as_array().expect("samples") {
        if s[0].as_str() != Some("coregate_spliced_bytes_total") {
            continue;
        }
        seen += 1;
        let value = s[2].as_f64().expect("a number");
        match s[1]["direction"].as_str() {
            Some("to_client") => down += value,
            Some("to_upstream") => up += value,
            other => panic!("unexpected direction {other:?}"),
        }
    }
    assert!(seen > 0, "no coregate_spliced_bytes_total samples");
    (down as u64, up as u64)
}

// === impl body pattern ===

/// Large bodies carry byte `i % 251` at offset `i`, so corruption, loss or
/// reordering anywhere is seen by whoever checks them.
pub const PATTERN_PERIOD: usize = 251;

/// `periods * 251` bytes of the pattern, starting at offset 0.
pub fn pattern(periods: usize) -> Vec<u8> {
    (0..periods * PATTERN_PERIOD)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect()
}

/// About 1 MiB of pattern; written repeatedly it continues seamlessly.
pub fn pattern_block() -> Vec<u8> {
    pattern(4177)
}

/// The pattern is stamped every `STAMP_EVERY` bytes: the first 8 bytes of
/// page `p` (bytes `p * STAMP_EVERY ..`) are XOR-ed with `p`'s
/// little-endian bytes. Page 0's stamp is zero, so a stream shorter than a
/// page is the plain pattern; in a longer one, a page that arrives twice,
/// out of order or not at all no longer matches, whatever the period.
pub const STAMP_EVERY: u64 = 64 * 1024;

/// XORs the stamps of the pages that overlap `buf`, which holds the
/// stream's bytes from `start`.
fn apply_stamps(buf: &mut [u8], start: u64) {
    let end = start + buf.len() as u64;
    let mut page = start / STAMP_EVERY;
    loop {
        let at = page * STAMP_EVERY;
        if at >= end {
            return;
        }
        for (k, b) in page.to_le_bytes().iter().enumerate() {
            let pos = at + k as u64;
            if pos >= start && pos < end {
                buf[(pos - start) as usize] ^= b;
            }
        }
        page += 1;
    }
}

/// Checks a stream of bytes against the (stamped) pattern.
pub struct PatternCheck {
    pub offset: u64,
    pub mismatches: u64,
    pat: Vec<u8>,
    want: Vec<u8>,
}

impl Default for PatternCheck {
    fn default() -> Self {
        PatternCheck {
            offset: 0,
            mismatches: 0,
            pat: pattern(300),
            want: Vec::with_capacity(64 * 1024),
        }
    }
}

impl PatternCheck {
    pub fn feed(&mut self, data: &[u8]) {
        for piece in data.chunks(64 * 1024) {
            let start = (self.offset % PATTERN_PERIOD as u64) as usize;
            self.want.clear();
            self.want
                .extend_from_slice(&self.pat[start..start + piece.len()]);
            apply_stamps(&mut self.want, self.offset);
            if piece != &self.want[..] {
                self.mismatches += 1;
            }
            self.offset += piece.len() as u64;
        }
    }
}

/// Writes `len` bytes of the stamped pattern to `w`; `block` is
/// [`pattern_block`] (a whole number of periods).
pub fn write_pattern(w: &mut impl Write, len: u64, block: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(block.len());
    let mut off = 0;
    while off < len {
        let n = (len - off).min(block.len() as u64) as usize;
        buf.clear();
        buf.extend_from_slice(&block[..n]);
        apply_stamps(&mut buf, off);
        w.write_all(&buf)?;
        off += n as u64;
    }
    Ok(())
}

/// Writes `len` bytes of the stamped pattern as chunks of at most one
/// block each.
pub fn write_pattern_chunked(w: &mut impl Write, len: u64, block: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(block.len());
    let mut off = 0;
    while off < len {
        let n = (len - off).min(block.len() as u64) as usize;
        buf.clear();
        buf.extend_from_slice(&block[..n]);
        apply_stamps(&mut buf, off);
        w.write_all(format!("{n:x}\r\n").as_bytes())?;
        w.write_all(&buf)?;
        w.write_all(b"\r\n")?;
        off += n as u64;
    }
    w.write_all(b"0\r\n\r\n")
}

// === impl wire helpers (shared by backends and the client) ===

/// Reads up to and including the blank line ending a head. An EOF before
/// the first byte is `UnexpectedEof`; an EOF inside a head is `InvalidData`.
pub fn read_head<R: BufRead>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(if head.is_empty() {
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a head")
            } else {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("closed inside a head: {:?}", String::from_utf8_lossy(&head)),
                )
            });
        }
        let mut used = 0;
        let mut done = false;
        for &b in buf {
            head.push(b);
            used += 1;
            if head.ends_with(b"\r\n\r\n") {
                done = true;
                break;
            }
        }
        r.consume(used);
        if done {
            return Ok(head);
        }
        if head.len() > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
    }
}

/// Reads one line including its `\n`.
fn read_line<R: BufRead>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed inside a line",
            ));
        }
        match memchr_nl(buf) {
            Some(i) => {
                line.extend_from_slice(&buf[..=i]);
                r.consume(i + 1);
                return Ok(line);
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                r.consume(n);
                if line.len() > max {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
                }
            }
        }
    }
}

fn memchr_nl(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Passes exactly `n` bytes to `sink`.
pub fn read_exact_to<R: BufRead>(
    r: &mut R,
    mut n: u64,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed with {n} body bytes missing"),
            ));
        }
        let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        sink(&buf[..take]);
        r.consume(take);
        n -= take as u64;
    }
    Ok(())
}

/// Passes every byte until EOF to `sink`.
pub fn read_to_eof<R: BufRead>(r: &mut R, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        let n = buf.len();
        sink(buf);
        r.consume(n);
    }
}

fn parse_field_line(line: &[u8]) -> io::Result<(String, String)> {
    let text = String::from_utf8_lossy(line);
    let (n, v) = text
        .split_once(':')
        .ok_or_else(|| invalid(format!("bad field line {text:?}")))?;
    Ok((n.trim().to_string(), v.trim().to_string()))
}

/// Decodes a chunked body: data to `sink`, returns the trailer fields.
pub fn read_chunked<R: BufRead>(
    r: &mut R,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<Vec<(String, String)>> {
    loop {
        let line = read_line(r, 64 * 1024)?;
        let line = line
            .strip_suffix(b"\r\n")
            .ok_or_else(|| invalid("chunk size line without CRLF"))?;
        let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
        let size_text = std::str::from_utf8(size_part)
            .map_err(|_| invalid("chunk size not ASCII"))?
            .trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let l = read_line(r, 64 * 1024)?;
                let l = l
                    .strip_suffix(b"\r\n")
                    .ok_or_else(|| invalid("trailer line without CRLF"))?;
                if l.is_empty() {
                    return Ok(trailers);
                }
                trailers.push(parse_field_line(l)?);
            }
        }
        read_exact_to(r, size, sink)?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(invalid("chunk data not followed by CRLF"));
        }
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find_headers<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

pub fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

// === impl Backend ===

/// What a backend does with each request (after reading it whole).
#[derive(Clone)]
pub enum Reply {
    /// 200 with a body describing the request: the request line, every header
    /// as `name: value` lines, a blank line, then the request body. Headers
    /// `x-echo-body-len`, `x-echo-chunked` and `x-echo-trailers` describe the
    /// body framing as received.
    Echo,
    /// This status, these headers, this body (with Content-Length).
    Fixed {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// 200, Transfer-Encoding: chunked, these chunks, then these trailers.
    Chunked {
        chunks: Vec<Vec<u8>>,
        trailers: Vec<(String, String)>,
    },
    /// 200 with neither Content-Length nor Transfer-Encoding, then close.
    CloseDelimited(Vec<u8>),
    /// `HTTP/1.0 200 OK` without a length, then close.
    Http10(Vec<u8>),
    /// `103 Early Hints` (with a `link` header), then `200` with body `final`.
    EarlyHints,
    /// An unsolicited `100 Continue`, then `200` with body `final`.
    Unsolicited100,
    /// Sleeps, then replies like the inner reply.
    Slow(Duration, Box<Reply>),
    /// A 200 head with Content-Length 1000, 100 body bytes, then RST.
    ResetMidBody,
    /// Replies like `Echo` (keep-alive, no `Connection: close`), then closes
    /// the socket after this delay without saying so.
    CloseAfter(Duration),
    /// The first request on a connection gets `Echo`; later ones on the same
    /// connection are read whole and the connection is closed unanswered.
    DropReused,
    /// Every request is read whole and the connection closed unanswered.
    DropAlways,
    /// Counts the body (checking it against the byte pattern) without storing
    /// it and replies `count=N mismatches=M`.
    Discard,
    /// 200 with `len` bytes of the pattern, by Content-Length or chunked.
    Large { len: u64, chunked: bool },
    /// These bytes verbatim, then close.
    Raw(Vec<u8>),
    /// A 200 head with Content-Length 1000, 100 body bytes, then silence for
    /// this long (the connection stays open), then close.
    StallMidBody(Duration),
}

impl Reply {
    pub fn fixed(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::Fixed {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }
    pub fn slow(ms: u64, inner: Reply) -> Reply {
        Reply::Slow(Duration::from_millis(ms), Box::new(inner))
    }
}

/// A request as a backend received it.
#[derive(Debug, Clone)]
pub struct BackendRequest {
    pub method: String,
    pub target: String,
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

impl BackendRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    fn keep_alive(&self) -> bool {
        let conn = self.header("connection");
        if has_token(conn, "close") {
            return false;
        }
        self.minor == 1 || has_token(conn, "keep-alive")
    }
}

pub fn parse_backend_request(head: &[u8]) -> Option<BackendRequest> {
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    Some(BackendRequest {
        method: req.method?.to_string(),
        target: req.path?.to_string(),
        minor: req.version?,
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    })
}

/// A request body as a backend received it.
#[derive(Default)]
struct BodySink {
    store: bool,
    data: Vec<u8>,
    len: u64,
    check: Option<PatternCheck>,
}

impl BodySink {
    fn push(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        if self.store {
            self.data.extend_from_slice(chunk);
        }
        if let Some(c) = &mut self.check {
            c.feed(chunk);
        }
    }
}

/// Counters a backend keeps; readable from the test while it runs.
#[derive(Default)]
pub struct BackendStats {
    /// Connections accepted.
    pub conns: AtomicUsize,
    /// Request heads read.
    pub heads: AtomicUsize,
    /// Requests read whole (head and body).
    pub completed: AtomicUsize,
    /// `METHOD target` of every head read, in order.
    pub log: Mutex<Vec<String>>,
    /// Bytes read from the gateway, on every connection, before any
    /// parsing: what reached the backend at all.
    pub bytes: AtomicUsize,
    /// Connections that ended (closed by either side).
    pub ended: AtomicUsize,
    /// Keep the bytes themselves in `raw` ([`Backend::start_recording`]).
    pub record: AtomicBool,
    /// Every byte read from the gateway, in the order read (connections
    /// interleave), when `record` is set.
    pub raw: Mutex<Vec<u8>>,
}

/// A backend connection's read half: counts, and when recording keeps,
/// every byte the gateway sent, before the backend parses any of it.
struct Tap {
    stream: TcpStream,
    stats: Arc<BackendStats>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        if self.stats.record.load(Ordering::SeqCst) {
            self.stats.raw.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        self.stats.bytes.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
}

/// A real TCP server on 127.0.0.1:0, one thread per connection.
pub struct Backend {
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(reply: Reply) -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), reply)
    }

    /// Like [`Backend::start`], and keeps every byte it reads
    /// ([`Backend::raw`]); for small requests.
    pub fn start_recording(reply: Reply) -> Backend {
        let b = Self::start(reply);
        b.stats.record.store(true, Ordering::SeqCst);
        b
    }

    /// On a given address, e.g. one that was refused a moment ago.
    pub fn start_on(addr: SocketAddr, reply: Reply) -> Backend {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind backend on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(BackendStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                st.conns.fetch_add(1, Ordering::SeqCst);
                let (st, reply) = (st.clone(), reply.clone());
                thread::spawn(move || {
                    serve_conn(conn, reply, st.clone());
                    st.ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Backend { addr, stats, stop }
    }

    /// `127.0.0.1:PORT`, as written in a config.
    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }
    pub fn conns(&self) -> usize {
        self.stats.conns.load(Ordering::SeqCst)
    }
    pub fn heads(&self) -> usize {
        self.stats.heads.load(Ordering::SeqCst)
    }
    /// Requests received whole.
    pub fn hits(&self) -> usize {
        self.stats.completed.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> Vec<String> {
        self.stats.log.lock().unwrap().clone()
    }
    pub fn wait_heads(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.heads() >= n)
    }
    /// Bytes read from the gateway, before any parsing.
    pub fn bytes(&self) -> usize {
        self.stats.bytes.load(Ordering::SeqCst)
    }
    /// Connections that have ended.
    pub fn ended(&self) -> usize {
        self.stats.ended.load(Ordering::SeqCst)
    }
    /// Every byte read so far (a backend from [`Backend::start_recording`]).
    pub fn raw(&self) -> Vec<u8> {
        self.stats.raw.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// An address where connecting hangs: a listener that never accepts, with
/// its accept queue (backlog 0) already full, so the kernel drops new SYNs.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

pub fn blackhole() -> Blackhole {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .expect("bind");
    s.listen(0).expect("listen");
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    while fillers.len() < 16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => fillers.push(c),
            Err(_) => break,
        }
    }
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "could not make a connect-hangs address"
    );
    Blackhole {
        addr,
        _listener: s,
        _fillers: fillers,
    }
}

/// A port on 127.0.0.1 where connections are refused: a socket bound to it
/// (without SO_REUSEADDR) that never listens, kept for the rest of the test
/// process.
///
/// It used to be bound and then released, and the gateway started next
/// could be given that same free port for its own listener: a route meant to
/// hit a dead upstream then proxied to the gateway itself (seen once in CI
/// rehearsal: tests/cors.rs got a 200 "from backend" where a 502 was due).
/// Held bound, the port can be neither listened on nor handed out again.
pub fn refused_addr() -> SocketAddr {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address literal");
    s.bind(&any.into()).expect("bind");
    let a = s
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("an IP address");
    // Deliberately leaked: the port stays taken until the test process ends.
    std::mem::forget(s);
    a
}

/// A free port on 127.0.0.1, bound and released at once, for a test that
/// starts a backend on it later ("the target comes back"). Another socket
/// may take it in between (see [`refused_addr`]), so prefer that one.
pub fn released_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("local address");
    drop(l);
    a
}

fn serve_conn(stream: TcpStream, reply: Reply, stats: Arc<BackendStats>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let read_half = Tap {
        stream: read_half,
        stats: stats.clone(),
    };
    let mut r = BufReader::with_capacity(64 * 1024, read_half);
    let mut w = stream;
    let mut index_on_conn = 0usize;
    loop {
        let Ok(head) = read_head(&mut r, 1 << 20) else {
            return;
        };
        let Some(req) = parse_backend_request(&head) else {
            let _ = w.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            return;
        };
        stats.heads.fetch_add(1, Ordering::SeqCst);
        stats
            .log
            .lock()
            .unwrap()
            .push(format!("{} {}", req.method, req.target));
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let discard = matches!(reply, Reply::Discard);
        let mut body = BodySink {
            store: !discard,
            check: discard.then(PatternCheck::default),
            ..Default::default()
        };
        let mut chunked = false;
        let mut trailers = Vec::new();
        let read = if has_token(req.header("transfer-encoding"), "chunked") {
            chunked = true;
            read_chunked(&mut r, &mut |c| body.push(c)).map(|t| trailers = t)
        } else if let Some(cl) = req.header("content-length") {
            match cl.trim().parse::<u64>() {
                Ok(n) => read_exact_to(&mut r, n, &mut |c| body.push(c)),
                Err(_) => Err(invalid("bad content-length")),
            }
        } else {
            Ok(())
        };
        if read.is_err() {
            return;
        }
        stats.completed.fetch_add(1, Ordering::SeqCst);
        let info = RequestInfo {
            req: &req,
            body: &body,
            chunked,
            trailers: &trailers,
            index_on_conn,
        };
        let keep = match respond(&reply, &info, &mut w) {
            Ok(keep) => keep,
            // The reply ended the connection abruptly on purpose (or the
            // gateway went away): drop both halves now.
            Err(_) => return,
        };
        index_on_conn += 1;
        if !keep || !req.keep_alive() {
            let _ = w.flush();
            let _ = w.shutdown(Shutdown::Write);
            // Give the peer time to read before the socket is dropped.
            let mut sink = [0u8; 1024];
            let _ = w.set_read_timeout(Some(Duration::from_millis(500)));
            while matches!(r.get_mut().read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
    }
}

struct RequestInfo<'a> {
    req: &'a BackendRequest,
    body: &'a BodySink,
    chunked: bool,
    trailers: &'a [(String, String)],
    index_on_conn: usize,
}

fn echo_body(info: &RequestInfo<'_>) -> Vec<u8> {
    let req = info.req;
    let mut out = format!("{} {} HTTP/1.{}\n", req.method, req.target, req.minor).into_bytes();
    for (n, v) in &req.headers {
        out.extend_from_slice(format!("{n}: {v}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(&info.body.data);
    out
}

fn write_simple(
    w: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head_req: bool,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if status != 204 && status != 304 {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !head_req {
        out.extend_from_slice(body);
    }
    w.write_all(&out)
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// Writes the reply; `Ok(true)` keeps the connection for another request.
fn respond(reply: &Reply, info: &RequestInfo<'_>, w: &mut TcpStream) -> io::Result<bool> {
    let head_req = info.req.method == "HEAD";
    match reply {
        Reply::Echo => {
            let trailers: Vec<String> = info
                .trailers
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let headers = vec![
                ("content-type".to_string(), "text/plain".to_string()),
                ("x-echo-body-len".to_string(), info.body.len.to_string()),
                (
                    "x-echo-chunked".to_string(),
                    (info.chunked as u8).to_string(),
                ),
                ("x-echo-trailers".to_string(), trailers.join(";")),
            ];
            write_simple(w, 200, &headers, &echo_body(info), head_req)?;
            Ok(true)
        }
        Reply::Fixed {
            status,
            headers,
            body,
        } => {
            write_simple(w, *status, headers, body, head_req)?;
            Ok(true)
        }
        Reply::Chunked { chunks, trailers } => {
            let mut out =
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
                    .to_vec();
            if !trailers.is_empty() {
                let names: Vec<&str> = trailers.iter().map(|(n, _)| n.as_str()).collect();
                out.extend_from_slice(format!("trailer: {}\r\n", names.join(", ")).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            w.write_all(&out)?;
            if head_req {
                return Ok(true);
            }
            for c in chunks {
                w.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                w.write_all(c)?;
                w.write_all(b"\r\n")?;
                w.flush()?;
                thread::sleep(Duration::from_millis(5));
            }
            let mut end = b"0\r\n".to_vec();
            for (n, v) in trailers {
                end.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            end.extend_from_slice(b"\r\n");
            w.write_all(&end)?;
            Ok(true)
        }
        Reply::CloseDelimited(body) => {
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")?;
            w.flush()?;
            thread::sleep(Duration::from_millis(5));
            if !head_req {
                w.write_all(body)?;
            }
            Ok(false)
        }
        Reply::Http10(body) => {
            w.write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n")?;
            if !head_req {
                w.write_all(body)?;
            }
            Ok(false)
        }
        Reply::EarlyHints => {
            w.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")?;
            w.flush()?;
            thread::sleep(Duration::from_millis(20));
            write_simple(w, 200, &[], b"final", head_req)?;
            Ok(true)
        }
        Reply::Unsolicited100 => {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            w.flush()?;
            thread::sleep(Duration::from_millis(20));
            write_simple(w, 200, &[], b"final", head_req)?;
            Ok(true)
        }
        Reply::Slow(d, inner) => {
            thread::sleep(*d);
            respond(inner, info, w)
        }
        Reply::ResetMidBody => {
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\n")?;
            w.write_all(&[b'x'; 100])?;
            w.flush()?;
            thread::sleep(Duration::from_millis(100));
            // Closing both handles with linger 0 sends RST.
            socket2::SockRef::from(&*w).set_linger(Some(Duration::ZERO))?;
            Err(io::Error::other("reset"))
        }
        Reply::CloseAfter(d) => {
            respond(&Reply::Echo, info, w)?;
            thread::sleep(*d);
            // A plain close (FIN) as a backend with a short keep-alive timeout does.
            let _ = w.shutdown(Shutdown::Both);
            Err(io::Error::other("closed"))
        }
        Reply::DropReused => {
            if info.index_on_conn == 0 {
                respond(&Reply::Echo, info, w)
            } else {
                let _ = w.shutdown(Shutdown::Both);
                Err(io::Error::other("dropped"))
            }
        }
        Reply::DropAlways => {
            let _ = w.shutdown(Shutdown::Both);
            Err(io::Error::other("dropped"))
        }
        Reply::Discard => {
            let mismatches = info.body.check.as_ref().map_or(0, |c| c.mismatches);
            let text = format!("count={} mismatches={mismatches}", info.body.len);
            write_simple(
                w,
                200,
                &[("content-type".into(), "text/plain".into())],
                text.as_bytes(),
                head_req,
            )?;
            Ok(true)
        }
        Reply::Large { len, chunked } => {
            let block = pattern_block();
            if *chunked {
                w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")?;
                if !head_req {
                    write_pattern_chunked(w, *len, &block)?;
                }
            } else {
                w.write_all(
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n")
                        .as_bytes(),
                )?;
                if !head_req {
                    write_pattern(w, *len, &block)?;
                }
            }
            Ok(true)
        }
        Reply::StallMidBody(d) => {
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\n")?;
            w.write_all(&[b'x'; 100])?;
            w.flush()?;
            thread::sleep(*d);
            Err(io::Error::other("stalled"))
        }
        Reply::Raw(bytes) => {
            w.write_all(bytes)?;
            Ok(false)
        }
    }
}

// === impl Client ===

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    #[default]
    None,
    Length(u64),
    Chunked,
    Close,
}

/// A response as a client received it. Header names are lower-cased.
#[derive(Clone, Default)]
pub struct Response {
    pub minor: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub framing: Framing,
    /// 1xx responses received before this one, in order.
    pub informational: Vec<Response>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(600)]).into_owned();
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("minor", &self.minor)
            .field("headers", &self.headers)
            .field("framing", &self.framing)
            .field("body_len", &self.body.len())
            .field("body", &body)
            .field("trailers", &self.trailers)
            .field(
                "informational",
                &self
                    .informational
                    .iter()
                    .map(|r| r.status)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        find_headers(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `message` of a `{"message": "..."}` body.
    pub fn json_message(&self) -> Option<String> {
        parse_json_message(&self.body)
    }
    /// `Connection: close` was sent.
    pub fn says_close(&self) -> bool {
        has_token(self.header("connection"), "close")
    }
    /// The body of an `Echo` backend's reply.
    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "expected an echo reply: {self:?}");
        Echo::parse(&self.body).unwrap_or_else(|| panic!("not an echo body: {self:?}"))
    }
}

fn parse_response_head(head: &[u8]) -> io::Result<Response> {
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut storage);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("partial response head")),
        Err(e) => {
            return Err(invalid(format!(
                "bad response head ({e}): {:?}",
                String::from_utf8_lossy(head)
            )))
        }
    }
    Ok(Response {
        minor: resp.version.unwrap_or(1),
        status: resp.code.unwrap_or(0),
        reason: resp.reason.unwrap_or("").to_string(),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        ..Default::default()
    })
}

/// Why a response could not be read whole.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing (more) arrived within the read timeout: the hang guard.
    Timeout,
    /// The connection closed before a response started.
    Closed,
    /// The connection was reset before a response started.
    Reset,
    /// The head arrived but the body ended early (EOF or reset).
    Truncated(Box<Response>),
    Malformed(String),
}

fn classify(e: &io::Error) -> ReadError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::Timeout,
        io::ErrorKind::UnexpectedEof => ReadError::Closed,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ReadError::Reset,
        _ => ReadError::Malformed(e.to_string()),
    }
}

/// A raw HTTP/1.1 client over one TcpStream.
pub struct Client {
    pub stream: TcpStream,
    r: BufReader<Retrying>,
}

/// The client's socket for reading: a read interrupted by a signal
/// (`EINTR`) is tried again, as `Read` callers are expected to; the test
/// process was seen to get one now and then under load, and a bare
/// `read` would report it as a broken response.
struct Retrying(TcpStream);

impl Read for Retrying {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        let r = BufReader::with_capacity(64 * 1024, Retrying(s.try_clone()?));
        Ok(Client { stream: s, r })
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("send to gateway");
    }

    /// Sends, ignoring errors (for peers expected to close early).
    pub fn send_lossy(&mut self, data: &[u8]) {
        let _ = self.stream.write_all(data);
    }

    /// Sends `raw` and reads one response.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        self.read_response()
    }

    /// `GET {path}` with `Host: test`, keep-alive.
    pub fn get(&mut self, path: &str) -> Response {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|e| panic!("reading a response: {e:?}"))
    }

    /// Reads the response to a HEAD request (no body whatever it says).
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .unwrap_or_else(|e| panic!("reading a HEAD response: {e:?}"))
    }

    pub fn try_read_response(&mut self, head_req: bool) -> Result<Response, ReadError> {
        let mut body = Vec::new();
        let mut resp = self
            .read_response_with(head_req, &mut |c| body.extend_from_slice(c))
            .map_err(|e| match e {
                ReadError::Truncated(mut r) => {
                    r.body = std::mem::take(&mut body);
                    ReadError::Truncated(r)
                }
                other => other,
            })?;
        resp.body = body;
        Ok(resp)
    }

    /// Reads one final response (collecting 1xx ones), passing the body to
    /// `sink` instead of storing it.
    pub fn read_response_with(
        &mut self,
        head_req: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Response, ReadError> {
        read_response_from(&mut self.r, head_req, sink)
    }

    /// Reads exactly one head, which may be a 1xx (e.g. `100 Continue`).
    pub fn read_interim(&mut self) -> Response {
        let head = read_head(&mut self.r, 1 << 20)
            .unwrap_or_else(|e| panic!("reading a response head: {e}"));
        parse_response_head(&head).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Ok when the peer closes (EOF or reset) within `timeout` without
    /// sending anything more.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<(), String> {
        if !self.r.buffer().is_empty() {
            return Err(format!(
                "unread bytes after the response: {:?}",
                String::from_utf8_lossy(self.r.buffer())
            ));
        }
        self.set_read_timeout(timeout);
        let mut b = [0u8; 4096];
        let res = self.r.read(&mut b);
        self.set_read_timeout(IO_TIMEOUT);
        match res {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "received {n} more bytes: {:?}",
                String::from_utf8_lossy(&b[..n])
            )),
            Err(e) => match classify(&e) {
                ReadError::Reset | ReadError::Closed => Ok(()),
                ReadError::Timeout => Err(format!("still open after {timeout:?}")),
                other => Err(format!("{other:?}")),
            },
        }
    }

    /// Panics unless the gateway closes the connection within 5 s without
    /// sending anything more.
    pub fn expect_closed(&mut self) {
        if let Err(e) = self.wait_closed(Duration::from_secs(5)) {
            panic!("expected the gateway to close the connection: {e}");
        }
    }
}

/// Reads one final response (collecting 1xx ones) from any buffered
/// reader (a TCP or a TLS stream), passing the body to `sink`.
pub fn read_response_from<R: BufRead>(
    r: &mut R,
    head_req: bool,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<Response, ReadError> {
    let mut informational = Vec::new();
    loop {
        let head = read_head(r, 1 << 20).map_err(|e| classify(&e))?;
        let mut resp =
            parse_response_head(&head).map_err(|e| ReadError::Malformed(e.to_string()))?;
        if (100..200).contains(&resp.status) {
            informational.push(resp);
            continue;
        }
        resp.informational = informational;
        let te = resp.header("transfer-encoding").map(str::to_string);
        let cl = resp.header("content-length").map(str::to_string);
        resp.framing = if head_req || resp.status == 204 || resp.status == 304 {
            Framing::None
        } else if te.is_some() {
            Framing::Chunked
        } else if let Some(cl) = cl {
            Framing::Length(
                cl.trim()
                    .parse()
                    .map_err(|_| ReadError::Malformed(format!("content-length {cl:?}")))?,
            )
        } else {
            Framing::Close
        };
        let result = match resp.framing {
            Framing::None => Ok(()),
            Framing::Length(n) => read_exact_to(r, n, sink),
            Framing::Chunked => read_chunked(r, sink).map(|t| resp.trailers = t),
            Framing::Close => read_to_eof(r, sink),
        };
        return match result {
            Ok(()) => Ok(resp),
            Err(e) => Err(match classify(&e) {
                ReadError::Closed | ReadError::Reset => ReadError::Truncated(Box::new(resp)),
                ReadError::Timeout => ReadError::Timeout,
                _ => ReadError::Malformed(format!("{e} in the body of {resp:?}")),
            }),
        };
    }
}

/// Asserts a gateway-made error: this status, `application/json`, an
/// `x-request-id`, and a `{"message": "..."}` body. Returns the message.
pub fn assert_json_error(resp: &Response, status: u16) -> String {
    assert_eq!(
        resp.status, status,
        "expected a {status} from the gateway, got {resp:?}"
    );
    let ct = resp
        .header("content-type")
        .unwrap_or_else(|| panic!("no content-type: {resp:?}"));
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?}: {resp:?}"
    );
    let id = resp
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id: {resp:?}"));
    assert!(!id.trim().is_empty(), "empty x-request-id: {resp:?}");
    let msg = resp
        .json_message()
        .unwrap_or_else(|| panic!("body is not {{\"message\": ...}}: {resp:?}"));
    assert!(!msg.is_empty(), "empty message: {resp:?}");
    msg
}

/// Parses exactly `{"message": "..."}` (whitespace allowed) and returns the
/// unescaped message.
pub fn parse_json_message(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?.trim();
    let s = s.strip_prefix('{')?.strip_suffix('}')?.trim();
    let s = s
        .strip_prefix("\"message\"")?
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let mut chars = s.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => break,
            '\\' => match chars.next()? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                '/' => out.push('/'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = (0..4).map(|_| chars.next()).collect::<Option<String>>()?;
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                _ => return None,
            },
            c if (c as u32) < 0x20 => return None,
            c => out.push(c),
        }
    }
    chars.as_str().trim().is_empty().then_some(out)
}

/// The request as an `Echo` backend saw it.
#[derive(Debug, Clone)]
pub struct Echo {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Echo {
    pub fn parse(body: &[u8]) -> Option<Echo> {
        let split = body.windows(2).position(|w| w == b"\n\n")?;
        let head = std::str::from_utf8(&body[..split]).ok()?;
        let mut lines = head.split('\n');
        let mut first = lines.next()?.splitn(3, ' ');
        let (method, target, version) = (first.next()?, first.next()?, first.next()?);
        let headers = lines
            .map(|l| {
                l.split_once(": ")
                    .map(|(n, v)| (n.to_string(), v.to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Echo {
            method: method.into(),
            target: target.into(),
            version: version.into(),
            headers,
            body: body[split + 2..].to_vec(),
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        find_headers(&self.headers, name)
    }
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// True for a request id the gateway generated: 32 hex digits.
pub fn is_generated_request_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// === impl ureq helpers ===

/// A response read through ureq, whatever its status.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "expected an echo reply: {self:?}");
        Echo::parse(&self.body).unwrap_or_else(|| panic!("not an echo body: {}", self.text()))
    }
}

/// A ureq agent with the test hang guard as its timeout.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(IO_TIMEOUT).build()
}

/// Runs a ureq request; 4xx/5xx are returned, not errors.
pub fn call(req: ureq::Request, body: Option<&[u8]>) -> HttpResponse {
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP request failed: {e}"),
    };
    let status = resp.status();
    let mut headers = Vec::new();
    for name in resp.headers_names() {
        for v in resp.all(&name) {
            headers.push((name.to_ascii_lowercase(), v.to_string()));
        }
    }
    let mut body = Vec::new();
    resp.into_reader()
        .take(64 << 20)
        .read_to_end(&mut body)
        .expect("read body");
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// `GET url` through a fresh ureq agent.
pub fn http_get(url: &str) -> HttpResponse {
    call(agent().get(url), None)
}

/// Voluntary context switches of every thread of `pid`, by thread name
/// (the main thread is named `main`): each is a sleep the thread went to,
/// so each wake-up counts. Involuntary ones are left out: they count
/// preemptions (and `sched_yield`s on a busy machine), not wake-ups.
/// Voluntary context switches (sleeps) of `pid`'s shard threads over
/// `idle`, counted after `settle`; printed, and asserted to be counted at
/// all (the threads keep their `coregate-shard-N` names).
pub fn idle_shard_switches(pid: u32, settle: Duration, idle: Duration) -> u64 {
    thread::sleep(settle);
    let before = voluntary_switches(pid);
    thread::sleep(idle);
    let after = voluntary_switches(pid);
    let shard = "coregate-shard-";
    assert!(after.contains_key(shard), "no shard threads: {after:?}");
    let n = after.get(shard).unwrap_or(&0) - before.get(shard).unwrap_or(&0);
    eprintln!("shard threads' voluntary context switches in {idle:?} idle: {n}");
    n
}

pub fn voluntary_switches(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut by_name = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let tid = t.file_name().to_string_lossy().to_string();
        let name = if tid == pid.to_string() {
            "main".to_string()
        } else {
            std::fs::read_to_string(dir.join("comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        *by_name.entry(name).or_insert(0) += n;
    }
    by_name
}
