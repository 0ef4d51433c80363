//! The admin listener: its own port, JSON errors, robustness against
//! malformed requests, the bearer token (and HTTP Basic for browsers),
//! `coregate check` refusing a reachable admin listener without a token,
//! `enabled = false`, and what happens when its address is taken.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

const MOCK: &str = r#"
[[apis]]
name = "main"

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok' }
"#;

fn config(admin: &str) -> String {
    format!("[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\n\n{admin}\n{MOCK}")
}

/// Sends raw bytes to the admin listener and reads until it closes.
fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_admin_listener_is_separate_and_answers_json_errors() {
    let gw = Gateway::start(&config(""));
    assert_ne!(gw.admin_addr(), gw.addr());
    // Traffic ports do not serve /metrics: it is a route like any other.
    assert_eq!(gw.client().get("/metrics").status, 404);
    let r = http_get(&gw.admin_url("/nothing-here"));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(parse_json_message(&r.body).as_deref(), Some("Not Found"));
    let r = call(agent().post(&gw.admin_url("/metrics")), Some(b""));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = http_get(&gw.admin_url("/dashboard"));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<title>coregate dashboard</title>"));
    let r = http_get(&gw.admin_url("/dashboard/data"));
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(v["shards_expected"], 1);
    // HEAD: the head only.
    let out = raw(
        gw.admin_addr(),
        b"HEAD /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "a body after HEAD: {out}");
}

#[test]
fn malformed_requests_get_a_400_and_the_listener_keeps_serving() {
    let gw = Gateway::start(&config(""));
    let admin = gw.admin_addr();
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let out = raw(admin, bad);
        assert!(
            out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.1 505"),
            "{:?} got {out:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A request with a body is refused, and the connection closed.
    let out = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // A head larger than the admin's limit.
    let big = format!("GET /metrics HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000));
    let out = raw(admin, big.as_bytes());
    assert!(
        out.starts_with("HTTP/1.1 431") || out.starts_with("HTTP/1.1 400"),
        "{out}"
    );
    // Keep-alive: two requests on one connection, then close.
    let out = raw(
        admin,
        b"GET /nope HTTP/1.1\r\nhost: a\r\n\r\nGET /nope HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(out.matches("HTTP/1.1 404").count(), 2, "{out}");
    // A client that connects and says nothing does not hold anything up.
    let _idle = TcpStream::connect(admin).unwrap();
    assert_eq!(http_get(&gw.admin_url("/metrics")).status, 200);
    assert_eq!(gw.client().get("/health").status, 200);
}

#[test]
fn a_token_is_required_when_configured() {
    let token = "s3cret-token-0123456789";
    let file = temp_path("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let gw = Gateway::start(&config(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        file.display()
    )));
    let r = http_get(&gw.admin_url("/metrics"));
    assert_eq!(r.status, 401);
    assert!(r
        .headers
        .iter()
        .any(|(n, v)| n == "www-authenticate" && v.starts_with("Basic")));
    let with = |v: &str| {
        call(
            agent()
                .get(&gw.admin_url("/metrics"))
                .set("authorization", v),
            None,
        )
    };
    assert_eq!(with(&format!("Bearer {token}")).status, 200);
    assert_eq!(with(&format!("Bearer {token}x")).status, 401);
    assert_eq!(with("Bearer s3cret").status, 401);
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{token}"));
    assert_eq!(with(&format!("Basic {basic}")).status, 200);
    // The dashboard's data too.
    let r = call(
        agent()
            .get(&gw.admin_url("/dashboard/data"))
            .set("authorization", &format!("Bearer {token}")),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(http_get(&gw.admin_url("/dashboard/data")).status, 401);
    // Without the token nothing is told about paths and methods: an unknown
    // path, and a known one with a method it does not take, are 401 too
    // (they were 404 and 405 with `allow`). With the token, 404 and 405.
    let unknown = gw.admin_url("/no-such-admin-path");
    assert_eq!(http_get(&unknown).status, 401);
    let delete_metrics = call(agent().delete(&gw.admin_url("/metrics")), None);
    assert_eq!(delete_metrics.status, 401);
    assert!(!delete_metrics.headers.iter().any(|(n, _)| n == "allow"));
    let bearer = format!("Bearer {token}");
    let r = call(agent().get(&unknown).set("authorization", &bearer), None);
    assert_eq!(r.status, 404);
    let r = call(
        agent()
            .delete(&gw.admin_url("/metrics"))
            .set("authorization", &bearer),
        None,
    );
    assert_eq!(r.status, 405);
    let _ = std::fs::remove_file(&file);
}

fn check(text: &str) -> (Option<i32>, String, String) {
    let path = write_config(text);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_a_reachable_admin_listener_without_a_token() {
    let (code, _, err) = check(&config("[admin]\nlisten = \"0.0.0.0:9901\"\n"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("error: admin.token_file: is required because admin.listen (\"0.0.0.0:9901\") is not a loopback address")),
        "{err}"
    );
    let (code, _, err) = check(&config("[admin]\nlisten = \"[::]:0\"\n"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("admin.token_file"), "{err}");

    let short = temp_path("token");
    std::fs::write(&short, "short\n").unwrap();
    let (code, _, err) = check(&config(&format!(
        "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = \"{}\"\n",
        short.display()
    )));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("admin.token_file") && err.contains("at least 16"),
        "{err}"
    );
    let _ = std::fs::remove_file(&short);

    let (code, _, err) = check(&config("[admin]\ntoken_file = \"/nonexistent/token\"\n"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("admin.token_file: cannot read /nonexistent/token"),
        "{err}"
    );

    let (code, _, err) = check(&config("[admin]\nlisten = \"localhost:9901\"\n"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("admin.listen: \"localhost:9901\" is not an IP:port address"),
        "{err}"
    );

    let (code, _, err) = check(&config("[admin]\nlisten = \"127.0.0.1:9901\"\nport = 3\n"));
    assert_eq!(code, Some(1));
    assert!(err.contains("admin.port: unknown key"), "{err}");

    let good = temp_path("token");
    std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
    let (code, out, err) = check(&config(&format!(
        "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = \"{}\"\n",
        good.display()
    )));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("admin on 0.0.0.0:9901"), "{out}");
    let _ = std::fs::remove_file(&good);

    let (code, out, _) = check(&config(""));
    assert_eq!(code, Some(0));
    assert!(out.contains("admin on 127.0.0.1:9901"), "{out}");
    let (code, out, _) = check(&config("[admin]\nenabled = false\n"));
    assert_eq!(code, Some(0));
    assert!(out.contains("no admin listener"), "{out}");
}

#[test]
fn enabled_false_serves_no_admin_listener() {
    let gw = Gateway::start(&config("[admin]\nenabled = false\n"));
    assert!(!gw.stdout().contains("admin listening"), "{}", gw.stdout());
    assert_eq!(gw.client().get("/health").status, 200);
}

#[test]
fn an_admin_address_in_use_stops_the_start_when_asked_for() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = write_config(&config(&format!("[admin]\nlisten = \"{addr}\"\n")));
    let out = run_coregate(&["serve", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "coregate: cannot listen on {addr} (admin): address in use"
        )),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

#[test]
fn the_default_admin_address_in_use_is_skipped_with_a_warning() {
    // Whoever holds 127.0.0.1:9901 (this test, or another gateway): a
    // config that does not name the admin address still starts.
    let mut held = None;
    let _ = wait_until(Duration::from_secs(10), || {
        held = std::net::TcpListener::bind("127.0.0.1:9901").ok();
        held.is_some()
    });
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:9901".parse().unwrap(),
        Duration::from_millis(200),
    )
    .is_err()
    {
        panic!("nothing listens on 127.0.0.1:9901 although this test bound it");
    }
    let text = config("");
    let path = write_config(&text);
    let gw = Gateway::spawn(
        &[
            "serve".into(),
            "--config".into(),
            path.clone().into_os_string(),
        ],
        None,
        1,
        path,
        &text,
    );
    assert_eq!(gw.client().get("/health").status, 200);
    assert!(wait_until(Duration::from_secs(5), || gw
        .stderr()
        .contains("serving without an admin listener")));
    assert!(!gw.stdout().contains("admin listening"), "{}", gw.stdout());
}

#[test]
fn share_listen_addresses_lets_an_upgrade_share_the_admin_address() {
    let admin = released_addr();
    let text = |share: bool| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\nshare_listen_addresses = {share}\n\n[admin]\nlisten = \"{admin}\"\n{MOCK}"
        )
    };
    let old = Gateway::start(&text(true));
    assert_eq!(old.admin_addr(), admin);
    // Without sharing, a second gateway is refused the address...
    let path = write_config(&text(false));
    let out = run_coregate(&["serve", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(admin): address in use"));
    // ...and with it, the new one shares it, and both answer scrapes.
    let new = Gateway::start(&text(true));
    assert_eq!(new.admin_addr(), admin);
    assert_eq!(http_get(&new.admin_url("/metrics")).status, 200);
    drop(old);
    assert_eq!(http_get(&new.admin_url("/metrics")).status, 200);
}
