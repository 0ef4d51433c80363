//! Process lifecycle: listening lines, graceful shutdown on SIGTERM/SIGINT
//! with a request in flight, idle keep-alive connections closed on shutdown,
//! no request lost by busy keep-alive clients during the drain,
//! the drain timeout bounding how long shutdown may take, and a second
//! gateway refused on an address another one serves unless
//! `server.share_listen_addresses` asks for sharing, SIGHUP logged
//! without stopping the gateway, and a shard that cannot start (a low
//! RLIMIT_MEMLOCK) reported with glommio's error at once.

mod support;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;
use support::*;

fn config(backend: &Backend, drain_ms: u64) -> String {
    fill(
        &format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2
drain_timeout_ms = {drain_ms}

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /health"
integration = {{ type = "mock", body = 'ok' }}
[[apis.routes]]
key = "ANY /slow/{{proxy+}}"
integration = {{ type = "http_proxy", url = "http://@B@" }}
"#
        ),
        &[("B", backend.addr_str())],
    )
}

/// True once connecting to `addr` is refused.
fn refused_within(addr: std::net::SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            Ok(_) => false,
        }
    })
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() {
    let b = Backend::start(Reply::slow(1000, Reply::Echo));
    let mut gw = Gateway::start(&config(&b, 10_000));
    let addr = gw.addr();
    let in_flight = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"GET /slow/in-flight HTTP/1.1\r\nHost: t\r\n\r\n");
        c.try_read_response(false)
    });
    assert!(
        b.wait_heads(1, Duration::from_secs(5)),
        "the request never reached the backend"
    );
    gw.sigterm();
    // New connections are refused while the in-flight request drains.
    assert!(
        refused_within(addr, Duration::from_millis(700)),
        "still accepting connections after SIGTERM"
    );
    let r = in_flight
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("in-flight request failed during drain: {e:?}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo().target, "/slow/in-flight");
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .expect("coregate did not exit after draining");
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        gw.stderr()
    );
}

/// A request with a body is proxied in both directions at once; a drain
/// that begins while the backend works on it must still make its response
/// say `connection: close`, so that the client sends nothing more on it.
#[test]
fn a_response_to_a_body_request_after_the_drain_began_says_close() {
    let b = Backend::start(Reply::slow(1000, Reply::Echo));
    let mut gw = Gateway::start(&config(&b, 10_000));
    let addr = gw.addr();
    let in_flight = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"POST /slow/upload HTTP/1.1\r\nHost: t\r\ncontent-length: 5\r\n\r\nhello");
        c.try_read_response(false)
    });
    assert!(
        b.wait_heads(1, Duration::from_secs(5)),
        "the request never reached the backend"
    );
    gw.sigterm();
    let r = in_flight
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("in-flight request failed during drain: {e:?}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo().target, "/slow/upload");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "a response written after the drain began must say close: {r:?}"
    );
    assert!(gw.wait_exit(Duration::from_secs(8)).is_some());
}

#[test]
fn sigterm_closes_idle_keep_alive_connections() {
    let b = Backend::start(Reply::Echo);
    let mut gw = Gateway::start(&config(&b, 10_000));
    let mut idle: Vec<Client> = (0..4).map(|_| gw.client()).collect();
    for c in &mut idle {
        assert_eq!(c.get("/health").status, 200);
        assert_eq!(c.get("/slow/x").status, 200);
    }
    gw.sigterm();
    for c in &mut idle {
        c.expect_closed();
    }
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("coregate did not exit with only idle connections");
    assert!(status.success(), "exit status {status:?}");
}

/// Regression for parking (src/net, `Conn::park`): connections quiet for
/// over a second have no task any more, only a socket in the reactor; a
/// shutdown must still reach and close them.
#[test]
fn sigterm_closes_parked_keep_alive_connections() {
    let b = Backend::start(Reply::Echo);
    let mut gw = Gateway::start(&config(&b, 10_000));
    let mut idle: Vec<Client> = (0..4).map(|_| gw.client()).collect();
    for c in &mut idle {
        assert_eq!(c.get("/health").status, 200);
    }
    // Past the one second after which a quiet connection is parked.
    thread::sleep(Duration::from_millis(1600));
    gw.sigterm();
    for c in &mut idle {
        c.expect_closed();
    }
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("coregate did not exit with only parked connections");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigint_exits_zero() {
    let b = Backend::start(Reply::Echo);
    let mut gw = Gateway::start(&config(&b, 10_000));
    assert_eq!(gw.client().get("/health").status, 200);
    gw.sigint();
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("coregate did not exit on SIGINT");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let b = Backend::start(Reply::slow(20_000, Reply::Echo));
    let mut gw = Gateway::start(&config(&b, 500));
    let addr = gw.addr();
    let stuck = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"GET /slow/stuck HTTP/1.1\r\nHost: t\r\n\r\n");
        c.set_read_timeout(Duration::from_secs(15));
        c.try_read_response(false)
    });
    assert!(b.wait_heads(1, Duration::from_secs(5)));
    gw.sigterm();
    // 500 ms of drain, then the shards stop: 2.5 s leaves room for a busy
    // machine, and is far from the 20 s the request would take.
    let status = gw.wait_exit(Duration::from_millis(2500));
    let status = status.expect("coregate waited for a 20 s request despite drain_timeout_ms = 500");
    assert!(status.success(), "exit status {status:?}");
    // The stuck client is released (closed or answered), not left hanging.
    if let Err(ReadError::Timeout) = stuck.join().unwrap() {
        panic!("client still hanging after the gateway exited");
    }
}

#[test]
fn prints_one_listening_line_per_address_and_serves_each() {
    let gw = Gateway::start(
        r#"
[server]
listen = ["127.0.0.1:0", "127.0.0.2:0"]
shards = 2

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok' }
"#,
    );
    assert_eq!(gw.addrs().len(), 2);
    let lines = gw
        .stdout()
        .lines()
        .filter(|l| l.starts_with("coregate: listening on "))
        .count();
    assert_eq!(lines, 2, "stdout:\n{}", gw.stdout());
    for addr in gw.addrs() {
        assert_ne!(
            addr.port(),
            0,
            "the printed address must carry the real port"
        );
        let r = Client::connect(*addr).get("/health");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "via {addr}");
    }
}

#[test]
fn every_shard_serves_on_the_shared_port() {
    let b = Backend::start(Reply::Echo);
    let gw = Gateway::start(&config(&b, 10_000));
    // Many fresh connections: SO_REUSEPORT spreads them over both shards; all
    // must be answered whichever shard takes them. The generated request
    // id starts with the answering shard's prefix: both shards must have
    // answered (40 connections all hashed to one shard: about 2^-39).
    let mut shards = std::collections::BTreeSet::new();
    for i in 0..40 {
        let mut c = gw.client();
        let r = c.get(if i % 2 == 0 { "/health" } else { "/slow/x" });
        assert_eq!(r.status, 200, "connection {i}: {r:?}");
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no request id: {r:?}"));
        assert!(is_generated_request_id(id), "{r:?}");
        shards.insert(id[..16].to_string());
    }
    assert_eq!(b.hits(), 20);
    assert_eq!(shards.len(), 2, "answering shards: {shards:?}");
}

#[test]
fn second_signal_exits_at_once() {
    let b = Backend::start(Reply::slow(20_000, Reply::Echo));
    let mut gw = Gateway::start(&config(&b, 30_000));
    let mut c = gw.client();
    c.send(b"GET /slow/stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(b.wait_heads(1, Duration::from_secs(5)));
    gw.sigterm();
    assert!(
        gw.wait_exit(Duration::from_millis(300)).is_none(),
        "exited without draining the in-flight request"
    );
    gw.sigterm();
    assert!(
        gw.wait_exit(Duration::from_secs(5)).is_some(),
        "a second signal must end the drain at once"
    );
}

fn mock_config(listen: &str, body: &str, extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
shards = 2
{extra_server}

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /health"
integration = {{ type = "mock", body = '{body}' }}
"#
    )
}

/// Runs `coregate serve` on `toml`, expecting it to exit by itself.
fn serve_to_exit(toml: &str) -> (std::process::Output, String) {
    let path = write_config(toml);
    let out = run_coregate(&["serve", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// Regression: every shard socket has SO_REUSEPORT, so a second coregate
/// could bind an address the first one serves and the kernel split new
/// connections between two configs. Now it must refuse to start, naming
/// the address.
#[test]
fn a_second_gateway_on_a_served_address_exits_with_address_in_use() {
    let first = Gateway::start(&mock_config("127.0.0.1:0", "first", ""));
    let addr = first.addr();
    let (out, stderr) = serve_to_exit(&mock_config(&addr.to_string(), "second", ""));
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: address in use"))
            && stderr.contains("server.share_listen_addresses"),
        "stderr:\n{stderr}"
    );
    // The first gateway is unaffected and alone on the port.
    for _ in 0..20 {
        let r = first.client().get("/health");
        assert_eq!((r.status, r.text().as_str()), (200, "first"));
    }
}

/// As above, with the first gateway on the wildcard address: binding the
/// same port on a specific address would take that address's traffic.
#[test]
fn a_second_gateway_on_a_port_served_by_a_wildcard_listener_exits() {
    let first = Gateway::start(&mock_config("0.0.0.0:0", "first", ""));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], first.addr().port()));
    let (out, stderr) = serve_to_exit(&mock_config(&addr.to_string(), "second", ""));
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: address in use")),
        "stderr:\n{stderr}"
    );
}

/// `server.share_listen_addresses = true` is the way to share on purpose
/// (a zero-downtime upgrade): both gateways start and both get connections.
#[test]
fn share_listen_addresses_lets_a_second_gateway_share_the_port() {
    let first = Gateway::start(&mock_config("127.0.0.1:0", "first", ""));
    let addr = first.addr();
    let second = Gateway::start(&mock_config(
        &addr.to_string(),
        "second",
        "share_listen_addresses = true",
    ));
    assert_eq!(second.addr(), addr);
    let (mut seen_first, mut seen_second) = (0, 0);
    for _ in 0..60 {
        let r = Client::connect(addr).get("/health");
        assert_eq!(r.status, 200);
        match r.text().as_str() {
            "first" => seen_first += 1,
            "second" => seen_second += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    assert!(
        seen_first > 0 && seen_second > 0,
        "first {seen_first}, second {seen_second}: the kernel should spread connections over both"
    );
}

/// Regression: SIGHUP's default action killed the process at once, with no
/// log line, no drain and the usage not yet written lost. It is caught: it
/// reloads the config (tests/reload.rs has the rest), the gateway keeps
/// serving, and SIGTERM still drains and exits 0.
#[test]
fn sighup_reloads_and_the_gateway_keeps_serving() {
    let mut gw = Gateway::start(&mock_config("127.0.0.1:0", "ok", ""));
    let mut kept = gw.client();
    assert_eq!(kept.get("/health").status, 200);
    gw.signal(libc::SIGHUP);
    let line = gw.wait_stderr_line(Duration::from_secs(5), |l| l.contains("SIGHUP"));
    let line = line.unwrap_or_else(|| panic!("no SIGHUP log line; stderr:\n{}", gw.stderr()));
    assert!(
        line.contains("reload asked by SIGHUP: generation 2"),
        "{line}"
    );
    assert!(
        gw.wait_exit(Duration::from_millis(200)).is_none(),
        "the gateway exited on SIGHUP; stderr:\n{}",
        gw.stderr()
    );
    // Old connections and new ones are served.
    assert_eq!(kept.get("/health").status, 200);
    let r = gw.client().get("/health");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // Each SIGHUP gets its reload.
    gw.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .stderr()
            .contains("reload asked by SIGHUP: generation 3")),
        "stderr:\n{}",
        gw.stderr()
    );
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("coregate did not exit on SIGTERM after SIGHUP");
    assert!(status.success(), "exit status {status:?}");
}

/// Starts `coregate serve` on `toml` with the soft RLIMIT_MEMLOCK lowered
/// to `bytes`. Returns the child (stdout and stderr piped) and the config
/// file to remove.
fn spawn_with_memlock(toml: &str, bytes: u64) -> (std::process::Child, std::path::PathBuf) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let path = write_config(toml);
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: getrlimit and setrlimit are plain system calls, safe between
    // fork and exec; the closure touches only its own stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            rl.rlim_cur = bytes.min(rl.rlim_max);
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (cmd.spawn().expect("spawn coregate serve"), path)
}

/// Regression: glommio builds no executor under a locked-memory limit below
/// 512 KiB (`ulimit -l 64`), and the start-up said "a shard did not start
/// within 30 s" a few milliseconds in. It must give glommio's error and
/// what to change, and exit 1 at once.
#[test]
fn a_shard_that_cannot_start_is_reported_with_its_cause() {
    let started = std::time::Instant::now();
    let (mut child, path) = spawn_with_memlock(&mock_config("127.0.0.1:0", "ok", ""), 64 * 1024);
    let exited = wait_until(Duration::from_secs(10), || {
        child.try_wait().expect("try_wait").is_some()
    });
    let took = started.elapsed();
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("collect output");
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "still running after 10 s; stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("coregate: shard "))
        .unwrap_or_else(|| panic!("no shard error line; stderr:\n{stderr}"));
    for needle in [
        "could not start",
        "MemLockLimit(65536/524288)", // glommio's own error
        "RLIMIT_MEMLOCK",
        "this process has 64 KiB",
        "ulimit -l 512",
        "LimitMEMLOCK=512K",
    ] {
        assert!(line.contains(needle), "{needle:?} not in: {line}");
    }
    assert!(!stderr.contains("within 30 s"), "stderr:\n{stderr}");
    // Only one line for it, though both shards failed alike.
    assert_eq!(
        stderr.matches("MemLockLimit").count(),
        1,
        "stderr:\n{stderr}"
    );
}

/// The limit the message asks for is enough: at 512 KiB (glommio's
/// minimum) both shards start. glommio registers its io_uring buffers only
/// when the limit leaves room, and runs without them otherwise.
#[test]
fn the_memlock_limit_the_error_asks_for_is_enough() {
    use std::io::BufRead;
    let (mut child, path) = spawn_with_memlock(&mock_config("127.0.0.1:0", "ok", ""), 512 * 1024);
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let addr = rx
        .recv_timeout(START_TIMEOUT)
        .ok()
        .and_then(|l| l.strip_prefix("coregate: listening on ")?.parse().ok());
    let served = addr.map(|a: std::net::SocketAddr| Client::connect(a).get("/health").status);
    let _ = child.kill();
    let out = child.wait_with_output().expect("collect output");
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        served,
        Some(200),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What one keep-alive client of [`drain_loses_no_request_of_busy_keep_alive_clients`]
/// saw.
#[derive(Default, Debug)]
struct Tally {
    /// Requests answered whole, with the echo of the request sent.
    answered: usize,
    /// Of those, answered with `connection: close` (the drain's answers).
    said_close: usize,
    /// Requests sent that got no complete response: (request, why).
    lost: Vec<(String, String)>,
    /// Connects refused once the listener was closed: nothing was sent on
    /// them, so they lose no request.
    refused: usize,
    /// Connections found closed (EOF or reset) before a request was sent
    /// on them: nothing lost either; the client opens another.
    closed_before_send: usize,
}

/// True if the peer has closed (or reset) `s` and nothing is left to read:
/// what a client checks before reusing a connection.
fn closed_by_peer(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Clients whose backend answers after 100 ms, and clients whose backend
/// answers at once (their connections spend more of their time between a
/// response and the next request, where the drain used to close them).
const SLOW_CLIENTS: usize = 20;
const FAST_CLIENTS: usize = 10;

/// One client: sends its next request the moment a response arrives, and
/// opens a new connection when a response said close or the connection was
/// closed before it sent; stops at its first refused connect after `signalled`.
fn busy_client(
    addr: std::net::SocketAddr,
    id: usize,
    signalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    use std::sync::atomic::Ordering;
    let mut t = Tally::default();
    let mut conn: Option<Client> = None;
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        if std::time::Instant::now() > give_up {
            t.lost
                .push((format!("client {id}"), "still running after 20 s".into()));
            break;
        }
        if conn.as_ref().is_some_and(|c| closed_by_peer(&c.stream)) {
            t.closed_before_send += 1;
            conn = None;
        }
        let reused = conn.is_some();
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Client::try_connect(addr) {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    t.refused += 1;
                    if signalled.load(Ordering::SeqCst) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => panic!("connect {addr}: {e}"),
            },
        };
        let target = if id < SLOW_CLIENTS {
            format!("/slow/c{id}-{n}")
        } else {
            format!("/fast/c{id}-{n}")
        };
        let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
        if let Err(e) = c.stream.write_all(req.as_bytes()) {
            t.lost.push((target, format!("send failed: {e}")));
            continue;
        }
        match c.try_read_response(false) {
            Ok(r)
                if r.status == 200 && Echo::parse(&r.body).is_some_and(|e| e.target == target) =>
            {
                t.answered += 1;
                if r.says_close() {
                    t.said_close += 1;
                } else {
                    conn = Some(c);
                }
            }
            Ok(r) => t.lost.push((target, format!("wrong answer: {r:?}"))),
            Err(e) => {
                let on = if reused { "reused" } else { "new" };
                t.lost.push((target, format!("{e:?} on a {on} connection")))
            }
        }
    }
    t
}

/// Regression: after SIGTERM a connection whose response promised
/// keep-alive was closed under the request its client sent at once (a
/// reset), and connections accepted as the signal came were closed unread.
/// Now every request sent on a connection gets a whole response: those
/// answered after the drain began say `connection: close`, and the close
/// lingers.
#[test]
fn drain_loses_no_request_of_busy_keep_alive_clients() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let b = Backend::start(Reply::slow(100, Reply::Echo));
    let fast = Backend::start(Reply::Echo);
    let drain_ms = 5_000;
    let toml = config(&b, drain_ms).replace(
        "[[apis.routes]]\nkey = \"GET /health\"",
        &format!(
            "[[apis.routes]]\nkey = \"ANY /fast/{{proxy+}}\"\n\
             integration = {{ type = \"http_proxy\", url = \"http://{}\" }}\n\
             [[apis.routes]]\nkey = \"GET /health\"",
            fast.addr_str()
        ),
    );
    assert!(toml.contains("/fast/"), "{toml}");
    let mut gw = Gateway::start(&toml);
    let addr = gw.addr();
    let signalled = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..SLOW_CLIENTS + FAST_CLIENTS)
        .map(|id| {
            let s = signalled.clone();
            thread::spawn(move || busy_client(addr, id, s))
        })
        .collect();
    thread::sleep(Duration::from_millis(700));
    signalled.store(true, Ordering::SeqCst);
    gw.sigterm();
    let signal_at = std::time::Instant::now();
    let status = gw.wait_exit(Duration::from_millis(drain_ms + 1_000));
    let exited_in = signal_at.elapsed();
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let answered: usize = tallies.iter().map(|t| t.answered).sum();
    let said_close: usize = tallies.iter().map(|t| t.said_close).sum();
    let lost: Vec<_> = tallies.iter().flat_map(|t| t.lost.iter()).collect();
    let refused: usize = tallies.iter().map(|t| t.refused).sum();
    let before_send: usize = tallies.iter().map(|t| t.closed_before_send).sum();
    eprintln!(
        "answered {answered} ({said_close} saying close), lost {}, \
         refused connects {refused}, closed before sending {before_send}, exit after {exited_in:?}",
        lost.len()
    );
    assert!(answered > 100, "too few requests to tell: {answered}");
    assert!(
        said_close >= 10,
        "the drain did not meet busy connections: {said_close} closing answers"
    );
    assert!(
        lost.is_empty(),
        "requests without a whole response: {lost:?}"
    );
    let status = status.expect("coregate did not exit within the drain timeout");
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        gw.stderr()
    );
}

/// The CPUs each `coregate-shard-*` thread of `pid` may run on
/// (`Cpus_allowed_list` from /proc), by thread name.
fn shard_cpu_lists(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with("coregate-shard") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        out.push((name.trim().to_string(), cpus));
    }
    out.sort();
    out
}

#[test]
fn shards_are_pinned_unless_pin_shards_is_false() {
    let mine = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_string())
        })
        .unwrap();
    let config = |extra: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\n{extra}\n\n[[apis]]\nname = \"main\"\n[[apis.routes]]\nkey = \"GET /health\"\nintegration = {{ type = \"mock\", body = 'ok' }}\n"
        )
    };
    // Pinned (the default; `pin_shards = true` spelled out so the test
    // harness leaves it): each shard thread on one CPU.
    let gw = Gateway::start(&config("pin_shards = true"));
    // glommio gives each executor a helper thread of the same name.
    let lists = shard_cpu_lists(gw.pid());
    assert!(lists.len() >= 2, "{lists:?}");
    for (name, cpus) in &lists {
        assert!(
            cpus.parse::<usize>().is_ok(),
            "{name} should be pinned to one CPU, may run on {cpus:?}"
        );
    }
    drop(gw);
    // Unpinned: each shard thread keeps the whole mask the process had.
    let gw = Gateway::start(&config("pin_shards = false"));
    // glommio gives each executor a helper thread of the same name.
    let lists = shard_cpu_lists(gw.pid());
    assert!(lists.len() >= 2, "{lists:?}");
    for (name, cpus) in &lists {
        assert_eq!(cpus, &mine, "{name} should not be pinned");
    }
    drop(gw);
    // Both at once is refused by the config check.
    let cfg = write_config(&config("pin_shards = false\ncpus = [0, 0]"));
    let out = run_coregate(&["check", "--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.cpus") && err.contains("pin_shards = false"),
        "{err}"
    );
}
