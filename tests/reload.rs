//! Hot reload over real sockets: `POST /reload` on the admin listener,
//! `SIGHUP` and `coregate reload` against the real binary. Traffic goes on
//! through both shards while the config is replaced every 100 ms for 20 s
//! (no failed request, every answer from the generation it should come
//! from); a broken config, or one that changes a setting only a restart
//! applies, is refused while the old one keeps serving; listeners are
//! kept, added and removed; a renewed certificate is served; throttle
//! buckets, cached responses, upstream pools, request-authorizer answers
//! and usage quotas carry over exactly when their settings are unchanged;
//! a reload asked for while draining is refused.
//!
//! Unwraps and expects: a failed step fails the test, with its message.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// A gateway of two shards whose mock route `GET /v` answers `v{version}`
/// and whose `GET /p` is proxied to `backend`.
fn versioned(version: u64, backend: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /v"
integration = {{ type = "mock", body = "v{version}" }}

[[apis.routes]]
key = "GET /p"
integration = {{ type = "http_proxy", url = "http://{backend}/p" }}
"#
    )
}

/// One request on its own connection (`connection: close`); the body, or
/// why it failed.
fn fresh_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not a response: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((status, body.unwrap_or_default()))
}

/// `v17` -> 17.
fn version_of(body: &str) -> Option<u64> {
    body.strip_prefix('v')?.parse().ok()
}

/// What a client saw: when it sent, when the answer came, which version.
struct Seen {
    sent: Instant,
    done: Instant,
    version: u64,
}

#[test]
fn reloading_every_100ms_for_20s_under_traffic_fails_no_request() {
    let backend = Backend::start(Reply::fixed(200, &[], "backend"));
    let gw = Gateway::start(&versioned(1, &backend.addr_str()));
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let proxied = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, proxied) = (stop.clone(), proxied.clone());
        let url = gw.url("/v");
        let purl = gw.url("/p");
        // Each client returns what it saw and what failed.
        clients.push(std::thread::spawn(move || {
            let (mut seen, mut failures) = (Vec::<Seen>::new(), Vec::<String>::new());
            // Clients 0 and 1 keep their connections alive (ureq's pool);
            // 2 and 3 open one per request, so new connections reach both
            // shards' listeners throughout.
            let agent = agent();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = Instant::now();
                let got = if i < 2 {
                    if n.is_multiple_of(4) {
                        let r = call(agent.get(&purl), None);
                        if r.status == 200 && r.text() == "backend" {
                            proxied.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.push(format!("/p: {} {}", r.status, r.text()));
                        }
                        continue;
                    }
                    let r = call(agent.get(&url), None);
                    Ok((r.status, r.text()))
                } else {
                    fresh_get(addr, "/v")
                };
                let done = Instant::now();
                match got {
                    Ok((200, body)) => match version_of(&body) {
                        Some(version) => seen.push(Seen {
                            sent,
                            done,
                            version,
                        }),
                        None => failures.push(format!("body {body:?}")),
                    },
                    Ok((status, body)) => failures.push(format!("status {status}: {body}")),
                    Err(e) => failures.push(e),
                }
            }
            (seen, failures)
        }));
    }
    // written[v]: when version v's file was in place; installed[v]: when
    // the reload that made it current answered.
    let mut written = vec![Instant::now(), Instant::now()];
    let mut installed = vec![Instant::now(), Instant::now()];
    let start = Instant::now();
    let mut version = 1;
    while start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        version += 1;
        gw.rewrite_config(&versioned(version, &backend.addr_str()));
        written.push(Instant::now());
        let r = gw.reload();
        assert_eq!(r.status, 200, "reload {version}: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["generation"].as_u64(), Some(version), "{}", r.text());
        installed.push(Instant::now());
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (mut seen, mut failures) = (Vec::new(), Vec::new());
    for c in clients {
        let (s, f) = c.join().unwrap();
        seen.extend(s);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(version > 100, "only {version} reloads in 20 s");
    assert!(seen.len() > 1000, "only {} requests answered", seen.len());
    assert!(proxied.load(Ordering::Relaxed) > 100);
    let mut versions = std::collections::BTreeSet::new();
    for s in seen.iter() {
        // Not older than the last generation installed before it was sent,
        // not newer than the last file written before it was answered.
        let floor = installed.iter().rposition(|&t| t <= s.sent).unwrap_or(1) as u64;
        let ceiling = written.iter().rposition(|&t| t <= s.done).unwrap_or(1) as u64;
        assert!(
            s.version >= floor && s.version <= ceiling,
            "answered v{} for a request sent after v{floor} was installed and answered before v{} was written",
            s.version,
            ceiling + 1
        );
        versions.insert(s.version);
    }
    assert!(
        versions.len() > 50,
        "answers came from only {} generations",
        versions.len()
    );
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
}

const MOCK: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /v"
integration = { type = "mock", body = "old" }
"#;

#[test]
fn a_broken_config_is_refused_by_every_path_and_the_old_one_keeps_serving() {
    let gw = Gateway::start(MOCK);
    let mut c = gw.client();
    assert_eq!(c.get("/v").text(), "old");
    // Two errors at once: both are reported, nothing changes.
    let broken = MOCK
        .replace("shards = 2", "shards = 2\nbacklog = -1")
        .replace("\"old\" }", "\"new\", status = 99 }");
    gw.rewrite_config(&broken);
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let errors: Vec<String> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("server.backlog")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("apis[0].routes[0]")),
        "{errors:?}"
    );
    assert!(v["message"].as_str().unwrap().contains("not reloaded"));
    // Keep-alive and new connections still get the old generation.
    assert_eq!(c.get("/v").text(), "old");
    assert_eq!(fresh_get(gw.addr(), "/v").unwrap().1, "old");
    // `coregate reload` says the same and exits 1.
    let out = run_coregate(&["reload", "--config", gw.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.backlog"), "{err}");
    // SIGHUP: refused in the error log, with each error.
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_stderr_line(Duration::from_secs(5), |l| l
            .contains("reload asked by SIGHUP refused"))
            .is_some(),
        "{}",
        gw.stderr()
    );
    assert!(wait_until(Duration::from_secs(2), || {
        gw.stderr()
            .lines()
            .any(|l| l.contains("reload: ") && l.contains("server.backlog"))
    }));
    assert_eq!(c.get("/v").text(), "old");
    // A file that cannot be read at all.
    std::fs::remove_file(gw.config_path()).unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("cannot read"), "{}", r.text());
    assert_eq!(c.get("/v").text(), "old");
    // Fixed, it reloads: generation 2 (the refusals made none).
    assert_eq!(gw.reload_with(&MOCK.replace("\"old\"", "\"new\"")), 2);
    assert_eq!(c.get("/v").text(), "new");
}

#[test]
fn sighup_and_coregate_reload_install_the_file_on_every_shard() {
    // `coregate reload` reaches the admin listener at its configured port.
    let admin = format!("\n[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port());
    let gw = Gateway::start(&format!("{MOCK}{admin}"));
    // With port 0 it cannot know where to ask, and says so.
    let zero = write_config(&format!("{MOCK}\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    let out = run_coregate(&["reload", "--config", zero.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("port 0"),
        "{out:?}"
    );
    let _ = std::fs::remove_file(zero);
    gw.rewrite_config(&format!(
        "{}{admin}",
        MOCK.replace("\"old\"", "\"by-sighup\"")
    ));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_stderr_line(Duration::from_secs(5), |l| l
            .contains("reload asked by SIGHUP")
            && l.contains("generation 2"))
            .is_some(),
        "{}",
        gw.stderr()
    );
    // Every shard: new connections land on both.
    for _ in 0..20 {
        assert_eq!(fresh_get(gw.addr(), "/v").unwrap().1, "by-sighup");
    }
    gw.rewrite_config(&format!(
        "{}{admin}",
        MOCK.replace("\"old\"", "\"by-command\"")
    ));
    let out = run_coregate(&["reload", "--config", gw.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reloaded: generation 3 serves on every shard"
    );
    for _ in 0..20 {
        assert_eq!(fresh_get(gw.addr(), "/v").unwrap().1, "by-command");
    }
    // Who asked is logged.
    assert!(gw.stderr().lines().any(
        |l| l.contains("reload asked by admin client 127.0.0.1:") && l.contains("generation 3")
    ));
}

#[test]
fn settings_that_apply_at_start_refuse_the_reload_naming_each() {
    let gw = Gateway::start(MOCK);
    let changed = MOCK
        .replace("shards = 2", "shards = 1\ndrain_timeout_ms = 1234")
        .replace("\"old\"", "\"new\"");
    gw.rewrite_config(&changed);
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("server.shards: changed from 2 to 1"),
        "{text}"
    );
    // Named as the key is written, in its unit (it said
    // `server.drain_timeout: changed from 30s to 1.234s`).
    assert!(
        text.contains("server.drain_timeout_ms: changed from 30000 to 1234,"),
        "{text}"
    );
    assert!(text.contains("restart coregate"), "{text}");
    assert_eq!(gw.client().get("/v").text(), "old");
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn listeners_are_kept_added_and_removed() {
    let (a, b) = (free_port(), free_port());
    let config = |ports: &[u16], body: &str| {
        let listen: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        MOCK.replace("[\"127.0.0.1:0\"]", &format!("[{}]", listen.join(", ")))
            .replace("\"old\"", &format!("\"{body}\""))
    };
    let gw = Gateway::start(&config(&[a], "one"));
    let addr_a: SocketAddr = format!("127.0.0.1:{a}").parse().unwrap();
    let addr_b: SocketAddr = format!("127.0.0.1:{b}").parse().unwrap();
    // A keep-alive connection on A, open across every reload.
    let mut kept = Client::connect(addr_a);
    assert_eq!(kept.get("/v").text(), "one");
    assert!(TcpStream::connect(addr_b).is_err());
    // Add B.
    assert_eq!(gw.reload_with(&config(&[a, b], "two")), 2);
    assert_eq!(kept.get("/v").text(), "two");
    assert_eq!(fresh_get(addr_b, "/v").unwrap().1, "two");
    assert_eq!(fresh_get(addr_a, "/v").unwrap().1, "two");
    // Remove A: new connections are refused there; the open one is served
    // to its end.
    assert_eq!(gw.reload_with(&config(&[b], "three")), 3);
    assert!(
        wait_until(Duration::from_secs(2), || TcpStream::connect(addr_a)
            .is_err()),
        "A still accepts"
    );
    assert_eq!(kept.get("/v").text(), "three");
    assert_eq!(fresh_get(addr_b, "/v").unwrap().1, "three");
    // An address another process holds refuses the reload, naming it; the
    // listeners stay as they were.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    gw.rewrite_config(&config(&[b, taken], "four"));
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains(&format!("127.0.0.1:{taken}")),
        "{}",
        r.text()
    );
    assert!(r.text().contains("address in use"), "{}", r.text());
    assert_eq!(fresh_get(addr_b, "/v").unwrap().1, "three");
}

/// An address moved from plain HTTP to TLS, and back, by a reload: the
/// gateway binds the new socket beside its own old one, which closes. The
/// reload was refused with "address in use: another process already
/// listens on it", the other process being the gateway itself.
#[test]
fn an_address_moves_between_plain_and_tls_in_a_reload() {
    use tls_support::*;
    let pki = Pki::new();
    let ca = pki.ca("move ca");
    let leaf = pki.server(&ca, "moved", &["localhost"]);
    let (cert, key) = (&leaf.cert_path, pki.write("moved.key", &leaf.key_pem));
    let port = free_port();
    let moved: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let plain = MOCK.replace(
        "[\"127.0.0.1:0\"]",
        &format!("[\"127.0.0.1:0\", \"{moved}\"]"),
    );
    let tls = format!(
        "{}\n[server.tls]\nlisten = [\"{moved}\"]\n\n[[server.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n",
        MOCK.replace("\"old\"", "\"tls\"")
    );
    let gw = Gateway::start(&plain);
    assert_eq!(fresh_get(moved, "/v").unwrap(), (200, "old".to_string()));
    // Plain to TLS.
    assert_eq!(gw.reload_with(&tls), 2);
    let cfg = client_config(&ClientOpts {
        roots: vec![&ca],
        ..ClientOpts::default()
    });
    // The old plain socket takes connections until it has closed.
    assert!(
        wait_until(Duration::from_secs(3), || {
            TlsClient::connect(moved, "localhost", cfg.clone())
                .is_ok_and(|mut c| c.get("/v").text() == "tls")
        }),
        "no TLS on {moved}"
    );
    // And back to plain HTTP.
    assert_eq!(gw.reload_with(&plain), 3);
    assert!(
        wait_until(Duration::from_secs(3), || fresh_get(moved, "/v")
            .is_ok_and(|r| r == (200, "old".to_string()))),
        "no plain HTTP on {moved}"
    );
}

/// A throttled route with a bucket of `rate` and `burst`, and a second
/// route answering `other`.
fn throttled(rate: &str, other: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /t"
integration = {{ type = "mock", body = "t" }}
throttle = {{ rate = {rate}, burst = 2 }}

[[apis.routes]]
key = "GET /o"
integration = {{ type = "mock", body = "{other}" }}
"#
    )
}

#[test]
fn throttle_buckets_carry_over_unless_a_bucket_setting_changes() {
    let gw = Gateway::start(&throttled("0.01", "a"));
    let mut c = gw.client();
    let statuses =
        |c: &mut Client, n: usize| (0..n).map(|_| c.get("/t").status).collect::<Vec<_>>();
    assert_eq!(statuses(&mut c, 3), [200, 200, 429]);
    // Another route changed: the empty bucket stays empty.
    gw.reload_with(&throttled("0.01", "b"));
    assert_eq!(c.get("/o").text(), "b");
    assert_eq!(statuses(&mut c, 1), [429]);
    // The bucket's rate changed: a fresh bucket with its burst.
    gw.reload_with(&throttled("0.02", "b"));
    assert_eq!(statuses(&mut c, 3), [200, 200, 429]);
}

/// A cached route proxied to `backend` with `ttl`, and a mock answering
/// `other`.
fn cached(backend: &str, ttl: u32, other: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /c"
integration = {{ type = "http_proxy", url = "http://{backend}/c" }}
cache = {{ ttl_seconds = {ttl} }}

[[apis.routes]]
key = "GET /o"
integration = {{ type = "mock", body = "{other}" }}
"#
    )
}

#[test]
fn cached_responses_carry_over_unless_their_route_changes() {
    let backend = Backend::start(Reply::fixed(200, &[], "from backend"));
    let gw = Gateway::start(&cached(&backend.addr_str(), 300, "a"));
    let mut c = gw.client();
    assert_eq!(c.get("/c").header("x-cache"), Some("Miss"));
    assert_eq!(c.get("/c").header("x-cache"), Some("Hit"));
    assert_eq!(backend.heads(), 1);
    gw.reload_with(&cached(&backend.addr_str(), 300, "b"));
    assert_eq!(c.get("/o").text(), "b");
    let r = c.get("/c");
    assert_eq!(r.header("x-cache"), Some("Hit"));
    assert_eq!(r.text(), "from backend");
    assert_eq!(backend.heads(), 1);
    // The route's cache rule changed: its old entries are not served.
    gw.reload_with(&cached(&backend.addr_str(), 600, "b"));
    assert_eq!(c.get("/c").header("x-cache"), Some("Miss"));
    assert_eq!(backend.heads(), 2);
    // Its backend changed: neither.
    let other = Backend::start(Reply::fixed(200, &[], "from the other"));
    gw.reload_with(&cached(&other.addr_str(), 600, "b"));
    let r = c.get("/c");
    assert_eq!(r.header("x-cache"), Some("Miss"));
    assert_eq!(r.text(), "from the other");
}

#[test]
fn upstream_connections_carry_over_while_the_upstream_is_unchanged() {
    let backend = Backend::start(Reply::fixed(200, &[], "backend"));
    let gw = Gateway::start(
        &cached(&backend.addr_str(), 0, "a").replace("cache = { ttl_seconds = 0 }", ""),
    );
    let mut c = gw.client();
    assert_eq!(c.get("/c").text(), "backend");
    assert_eq!(backend.conns(), 1);
    for other in ["b", "c", "d"] {
        gw.reload_with(
            &cached(&backend.addr_str(), 0, other).replace("cache = { ttl_seconds = 0 }", ""),
        );
        assert_eq!(c.get("/c").text(), "backend");
    }
    // One upstream connection served every generation.
    assert_eq!(backend.conns(), 1);
    assert_eq!(backend.heads(), 4);
}

/// A route behind a request authorizer at `authz` (answers cached for
/// `ttl` seconds), and a mock answering `other`.
fn authorized(authz: &str, ttl: u32, other: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[authorizers]]
name = "tokens"
[authorizers.request]
url = "http://{authz}/authorize"
identity_sources = ["header:Authorization"]
ttl_seconds = {ttl}

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /a"
authorizer = "tokens"
integration = {{ type = "mock", body = "in" }}

[[apis.routes]]
key = "GET /o"
integration = {{ type = "mock", body = "{other}" }}
"#
    )
}

#[test]
fn request_authorizer_answers_carry_over_unless_the_authorizer_changes() {
    let authz = Backend::start(Reply::fixed(
        200,
        &[("content-type", "application/json")],
        r#"{"isAuthorized":true,"principalId":"u1"}"#,
    ));
    let gw = Gateway::start(&authorized(&authz.addr_str(), 300, "a"));
    let mut c = gw.client();
    let ask = |c: &mut Client| {
        c.request(b"GET /a HTTP/1.1\r\nhost: t\r\nauthorization: token-1\r\n\r\n")
            .status
    };
    assert_eq!(ask(&mut c), 200);
    assert_eq!(ask(&mut c), 200);
    assert_eq!(authz.heads(), 1);
    gw.reload_with(&authorized(&authz.addr_str(), 300, "b"));
    assert_eq!(c.get("/o").text(), "b");
    assert_eq!(ask(&mut c), 200);
    assert_eq!(authz.heads(), 1, "the cached answer was not kept");
    gw.reload_with(&authorized(&authz.addr_str(), 600, "b"));
    assert_eq!(ask(&mut c), 200);
    assert_eq!(
        authz.heads(),
        2,
        "a changed authorizer kept its old answers"
    );
}

#[test]
fn usage_quotas_carry_over_and_a_changed_quota_needs_a_restart() {
    let dir = temp_path("reload-usage");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys.toml");
    let key = create_key(&keys, "alice", Some("gold"));
    let config = |limit: u32, other: &str| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2
api_keys_file = "{keys}"
data_dir = "{data}"
usage_flush_interval_ms = 100

[[usage_plans]]
name = "gold"
apis = ["main"]
quota = {{ limit = {limit}, period = "DAY" }}

[[apis]]
name = "main"
api_key_required = true

[[apis.routes]]
key = "GET /q"
integration = {{ type = "mock", body = "q" }}

[[apis.routes]]
key = "GET /o"
integration = {{ type = "mock", body = "{other}" }}
"#,
            keys = keys.display(),
            data = dir.join("data").display()
        )
    };
    let gw = Gateway::start(&config(4, "a"));
    let get = |path: &str| {
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: t\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n"
        );
        Client::connect(gw.addr()).request(req.as_bytes()).status
    };
    assert_eq!(get("/q"), 200);
    assert_eq!(get("/q"), 200);
    assert_eq!(get("/q"), 200);
    gw.reload_with(&config(4, "b"));
    assert_eq!(get("/o"), 200);
    // The quota's count carried over: the 5th request is over the limit.
    let after: Vec<u16> = (0..2).map(|_| get("/q")).collect();
    assert_eq!(after, [429, 429], "the quota count did not carry over");
    // A changed quota is refused with the reason; the old limit stays.
    gw.rewrite_config(&config(10, "b"));
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("usage_plans"), "{}", r.text());
    assert_eq!(get("/q"), 429);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_renewed_certificate_is_served_after_a_reload() {
    use tls_support::*;
    let pki = Pki::new();
    let ca = pki.ca("reload ca");
    let first = pki.server(&ca, "first", &["localhost"]);
    let cert = pki.write(
        "live.crt",
        &std::fs::read_to_string(&first.cert_path).unwrap(),
    );
    let key = pki.write("live.key", &first.key_pem);
    let config = |body: &str| {
        format!(
            "{}\n[server.tls]\nlisten = [\"127.0.0.1:0\"]\n\n[[server.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n",
            MOCK.replace("\"old\"", &format!("\"{body}\""))
        )
    };
    let gw = Gateway::start(&config("one"));
    let opts = ClientOpts {
        roots: vec![&ca],
        ..ClientOpts::default()
    };
    let cfg = client_config(&opts);
    let mut tls = TlsClient::connect(gw.tls_addr(), "localhost", cfg.clone()).unwrap();
    assert_eq!(tls.get("/v").text(), "one");
    assert_eq!(tls.peer_leaf(), first.der.to_vec());
    // Renew: new certificate and key at the same paths.
    let second = pki.server(&ca, "second", &["localhost"]);
    pki.write(
        "live.crt",
        &std::fs::read_to_string(&second.cert_path).unwrap(),
    );
    pki.write("live.key", &second.key_pem);
    gw.reload_with(&config("two"));
    // The open connection goes on; new handshakes get the new certificate.
    assert_eq!(tls.get("/v").text(), "two");
    for _ in 0..4 {
        let mut fresh = TlsClient::connect(gw.tls_addr(), "localhost", cfg.clone()).unwrap();
        assert_eq!(fresh.peer_leaf(), second.der.to_vec());
        assert_eq!(fresh.get("/v").text(), "two");
    }
    // A key that does not match the certificate is refused; the renewed
    // pair keeps serving.
    pki.write("live.key", &first.key_pem);
    gw.rewrite_config(&config("three"));
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    let mut fresh = TlsClient::connect(gw.tls_addr(), "localhost", cfg).unwrap();
    assert_eq!(fresh.get("/v").text(), "two");
}

#[test]
fn a_reload_asked_for_while_draining_is_refused() {
    let backend = Backend::start(Reply::slow(1500, Reply::fixed(200, &[], "slow")));
    let gw = Gateway::start(&versioned(1, &backend.addr_str()).replace("shards = 2", "shards = 1"));
    let addr = gw.addr();
    let slow = std::thread::spawn(move || fresh_get(addr, "/p"));
    assert!(backend.wait_heads(1, Duration::from_secs(5)));
    gw.sigterm();
    assert!(gw
        .wait_stderr_line(Duration::from_secs(5), |l| l.contains("draining"))
        .is_some());
    let r = gw.reload();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("stopping"), "{}", r.text());
    // The request in flight still finishes.
    assert_eq!(slow.join().unwrap(), Ok((200, "slow".to_string())));
}

#[test]
fn the_admin_reload_endpoint_takes_post_only_and_the_token() {
    let dir = temp_path("reload-token");
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    let config = format!(
        "{MOCK}\n[admin]\nlisten = \"127.0.0.1:{}\"\ntoken_file = {:?}\n",
        free_port(),
        token.display().to_string()
    );
    let gw = Gateway::start(&config);
    let bearer = "Bearer 0123456789abcdef0123456789abcdef";
    // Without the token even the method is not discussed: 401.
    let r = call(agent().get(&gw.admin_url("/reload")), None);
    assert_eq!(r.status, 401);
    let r = call(
        agent()
            .get(&gw.admin_url("/reload"))
            .set("authorization", bearer),
        None,
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = gw.reload();
    assert_eq!(r.status, 401);
    let r = call(
        agent()
            .post(&gw.admin_url("/reload"))
            .set("authorization", bearer),
        Some(b""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // `coregate reload` reads the token from the config's token_file.
    let out = run_coregate(&["reload", "--config", gw.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
