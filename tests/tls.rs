//! TLS over real sockets: the real binary with `[server.tls]`, certificates
//! made per test with rcgen, a real rustls client, real backends (the plain
//! harness `Backend`, and an HTTPS echo backend for https:// upstreams).
//! Covered: TLS 1.2 and 1.3 through to a backend and a mock, keep-alive,
//! bodies both ways, SNI selection and the default certificate, ALPN, mTLS
//! required and optional, resumption across shards, a plain-HTTP client
//! and a silent client on the TLS port, a TLS 1.2 renegotiation refused at
//! once (with openssl s_client), close_notify at close,
//! https:// upstreams (verified with tls_ca, pooled, refused when the
//! certificate does not verify), an https:// request authorizer that answers
//! slower than the connect timeout, and config errors from `coregate check`.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tls_support::*;

/// A PKI with a server CA and the gateway's certificate for `api.test`.
struct World {
    pki: Pki,
    ca: Ca,
    server: Leaf,
}

fn world() -> World {
    let pki = Pki::new();
    let ca = pki.ca("Test Server CA");
    let server = pki.server(&ca, "api", &["api.test", "*.api.test"]);
    World { pki, ca, server }
}

/// `[[server.tls.certificates]]` for a leaf.
fn cert_entry(leaf: &Leaf, extra: &str) -> String {
    format!(
        "[[server.tls.certificates]]\ncert = {:?}\nkey = {:?}\n{extra}\n",
        leaf.cert_path, leaf.key_path
    )
}

/// A gateway with a plain and a TLS listener (one shard unless `server`
/// says otherwise), a mock route and an echo route to `backend`.
/// `tls` goes into `[server.tls]` before the certificates.
fn gateway(server: &str, tls: &str, certs: &str, backend: &Backend, more: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
{server}

[server.tls]
listen = ["127.0.0.1:0"]
{tls}

{certs}

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /mock"
integration = {{ type = "mock", status = 200, headers = {{ "content-type" = "text/plain" }}, body = "mocked" }}

[[apis.routes]]
key = "ANY /echo/{{proxy+}}"
integration = {{ type = "http_proxy", url = "http://{}/{{proxy}}" }}

{more}
"#,
        backend.addr_str()
    ))
}

fn simple(w: &World, backend: &Backend) -> Gateway {
    gateway("shards = 1", "", &cert_entry(&w.server, ""), backend, "")
}

fn connect(gw: &Gateway, opts: &ClientOpts<'_>) -> TlsClient {
    TlsClient::connect(gw.tls_addr(), "api.test", client_config(opts))
        .unwrap_or_else(|e| panic!("TLS connect: {e}"))
}

fn trusting(w: &World) -> ClientOpts<'_> {
    ClientOpts {
        roots: vec![&w.ca],
        ..Default::default()
    }
}

#[test]
fn tls12_and_tls13_reach_the_backend_and_the_mock() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let gw = simple(&w, &b);
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut c = connect(
            &gw,
            &ClientOpts {
                version: Some(version),
                ..trusting(&w)
            },
        );
        assert_eq!(c.conn().protocol_version(), Some(want));
        let r = c.get("/mock");
        assert_eq!((r.status, r.text().as_str()), (200, "mocked"), "{want:?}");
        let r = c.get("/echo/pets/1?x=y");
        let echo = r.echo();
        assert_eq!(echo.target, "/pets/1?x=y");
        assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
        assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
        assert!(!echo.has("x-client-cert-subject"), "no mTLS, no subject");
    }
    // The plain listener still speaks plain HTTP, and says so upstream.
    let r = Client::connect(gw.addr()).get("/echo/plain");
    assert_eq!(r.echo().header("x-forwarded-proto"), Some("http"));
}

#[test]
fn keep_alive_serves_many_requests_on_one_tls_connection() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let gw = simple(&w, &b);
    let mut c = connect(&gw, &trusting(&w));
    for i in 0..10 {
        let r = if i % 2 == 0 {
            c.get(&format!("/echo/n/{i}"))
        } else {
            c.get("/mock")
        };
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(!r.says_close(), "request {i} closed the connection");
    }
    assert_eq!(b.conns(), 1, "the upstream connection was pooled");
}

#[test]
fn request_bodies_by_length_and_chunked_and_a_large_response() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let large = Backend::start(Reply::Large {
        len: 3 * 1024 * 1024 + 17,
        chunked: false,
    });
    let more = format!(
        "[[apis.routes]]\nkey = \"GET /large\"\nintegration = {{ type = \"http_proxy\", url = \"http://{}/large\" }}\n",
        large.addr_str()
    );
    let gw = gateway("shards = 1", "", &cert_entry(&w.server, ""), &b, &more);
    let mut c = connect(&gw, &trusting(&w));

    let body = pattern(800); // 200 KB: many TLS records, many reads
    let mut req = format!(
        "POST /echo/upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = c.request(&req);
    assert_eq!(r.header("x-echo-body-len"), Some("200800"));
    assert!(
        r.echo().body == body,
        "the length-framed body arrived intact"
    );

    let mut req =
        b"POST /echo/chunks HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for part in body.chunks(70_000) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = c.request(&req);
    assert_eq!(r.header("x-echo-chunked"), Some("1"));
    assert!(r.echo().body == body, "the chunked body arrived intact");

    let r = c.get("/large");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3 * 1024 * 1024 + 17);
    let mut check = PatternCheck::default();
    check.feed(&r.body);
    assert_eq!(check.mismatches, 0, "the response body arrived intact");
    // Still usable afterwards.
    assert_eq!(c.get("/mock").status, 200);
}

#[test]
fn sni_chooses_the_certificate_and_unknown_names_get_the_first() {
    let w = world();
    let other = w
        .pki
        .server(&w.ca, "other", &["other.test", "*.other.test"]);
    let named = w.pki.server(&w.ca, "named", &["named.test"]);
    let b = Backend::start(Reply::Echo);
    let certs = format!(
        "{}{}{}",
        cert_entry(&w.server, ""),
        cert_entry(&other, ""),
        cert_entry(&named, "server_names = [\"alias.test\"]")
    );
    let gw = gateway("shards = 1", "", &certs, &b, "");
    let any = ClientOpts {
        accept_any: true,
        ..Default::default()
    };
    for (sni, want) in [
        ("api.test", &w.server),
        ("x.api.test", &w.server),
        ("other.test", &other),
        ("deep.other.test", &other),
        ("alias.test", &named),
        // Listed server_names replace the certificate's own names.
        ("named.test", &w.server),
        ("unknown.test", &w.server),
        // An IP address sends no SNI at all.
        ("127.0.0.1", &w.server),
    ] {
        let mut c = TlsClient::connect(gw.tls_addr(), sni, client_config(&any))
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert!(
            c.peer_leaf() == want.der.to_vec(),
            "{sni}: wrong certificate"
        );
        assert_eq!(c.get("/mock").status, 200, "{sni}");
    }
    // The chosen certificate verifies for its own names.
    let mut c = TlsClient::connect(gw.tls_addr(), "x.other.test", client_config(&trusting(&w)))
        .expect("verified handshake for x.other.test");
    assert_eq!(c.get("/mock").status, 200);
}

#[test]
fn alpn_negotiates_http11_or_http10_only() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let gw = simple(&w, &b);
    let c = connect(
        &gw,
        &ClientOpts {
            alpn: vec![b"h2", b"http/1.1"],
            ..trusting(&w)
        },
    );
    assert_eq!(c.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut c = connect(
        &gw,
        &ClientOpts {
            alpn: vec![],
            ..trusting(&w)
        },
    );
    assert_eq!(
        c.conn().alpn_protocol(),
        None,
        "no ALPN offered, none chosen"
    );
    assert_eq!(c.get("/mock").status, 200);
    // Regression: an HTTP/1.0 client that names its protocol in ALPN (as
    // `curl --http1.0` does) failed the handshake, though the gateway
    // serves HTTP/1.0 on every listener.
    let mut c = connect(
        &gw,
        &ClientOpts {
            alpn: vec![b"http/1.0"],
            ..trusting(&w)
        },
    );
    assert_eq!(c.conn().alpn_protocol(), Some(&b"http/1.0"[..]));
    let r = c.request(b"GET /mock HTTP/1.0\r\nHost: api.test\r\n\r\n");
    assert_eq!(r.status, 200);
    // Both offered: http/1.1 is preferred.
    let c = connect(
        &gw,
        &ClientOpts {
            alpn: vec![b"http/1.0", b"http/1.1"],
            ..trusting(&w)
        },
    );
    assert_eq!(c.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client that speaks only h2 is refused in the handshake (RFC 7301).
    let refused = TlsClient::connect(
        gw.tls_addr(),
        "api.test",
        client_config(&ClientOpts {
            alpn: vec![b"h2"],
            ..trusting(&w)
        }),
    );
    assert!(refused.is_err(), "an h2-only client must not get a session");
}

/// A gateway requiring (or accepting) client certificates from `clients`.
fn mtls_gateway(w: &World, clients: &Ca, mode: &str, b: &Backend) -> Gateway {
    gateway(
        "shards = 1",
        &format!("client_auth = {mode:?}\nclient_ca = {:?}", clients.path),
        &cert_entry(&w.server, ""),
        b,
        "",
    )
}

/// Whether a request over a connection made with `opts` is served. Under
/// TLS 1.3 the client finishes its handshake before the server has checked
/// its certificate, so a refusal may show only on the first read.
fn served(gw: &Gateway, opts: &ClientOpts<'_>) -> Option<Response> {
    let mut c = TlsClient::connect(gw.tls_addr(), "api.test", client_config(opts)).ok()?;
    c.try_request(
        b"GET /echo/who HTTP/1.1\r\nHost: api.test\r\nx-client-cert-subject: CN=forged\r\n\r\n",
    )
    .ok()
}

#[test]
fn mtls_required_accepts_a_good_certificate_and_refuses_others() {
    let w = world();
    let clients = w.pki.ca("Test Client CA");
    let strangers = w.pki.ca("Stranger CA");
    let alice = w.pki.leaf(
        &clients,
        "alice",
        &["alice.clients.test"],
        &[
            (rcgen::DnType::OrganizationName, "Test Clients"),
            (rcgen::DnType::CommonName, "alice"),
        ],
        true,
    );
    let mallory = w.pki.leaf(
        &strangers,
        "mallory",
        &["mallory.test"],
        &[(rcgen::DnType::CommonName, "alice")],
        true,
    );
    let b = Backend::start(Reply::Echo);
    let gw = mtls_gateway(&w, &clients, "required", &b);

    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let good = ClientOpts {
            cert: Some(&alice),
            version: Some(version),
            ..trusting(&w)
        };
        let r = served(&gw, &good).expect("a client with a good certificate is served");
        let echo = r.echo();
        assert_eq!(
            echo.headers_named("x-client-cert-subject"),
            vec!["CN=alice,O=Test Clients"],
            "the verified subject replaces the client's own header"
        );
        let none = ClientOpts {
            version: Some(version),
            ..trusting(&w)
        };
        assert!(served(&gw, &none).is_none(), "no certificate: refused");
        let stranger = ClientOpts {
            cert: Some(&mallory),
            version: Some(version),
            ..trusting(&w)
        };
        assert!(
            served(&gw, &stranger).is_none(),
            "a certificate from another CA: refused"
        );
    }
    assert_eq!(b.hits(), 2, "only the good requests reached the backend");
    // The shard is unharmed.
    assert!(served(
        &gw,
        &ClientOpts {
            cert: Some(&alice),
            ..trusting(&w)
        }
    )
    .is_some());
    assert!(gw
        .wait_stderr_line(Duration::from_secs(5), |l| l.contains("TLS handshake with"))
        .is_some());
}

#[test]
fn mtls_optional_serves_clients_without_certificates() {
    let w = world();
    let clients = w.pki.ca("Test Client CA");
    let strangers = w.pki.ca("Stranger CA");
    let bob = w.pki.leaf(
        &clients,
        "bob",
        &["bob.test"],
        &[(rcgen::DnType::CommonName, "bob")],
        true,
    );
    let mallory = w.pki.leaf(
        &strangers,
        "mallory",
        &["mallory.test"],
        &[(rcgen::DnType::CommonName, "bob")],
        true,
    );
    let b = Backend::start(Reply::Echo);
    let gw = mtls_gateway(&w, &clients, "optional", &b);

    let r = served(&gw, &trusting(&w)).expect("served without a certificate");
    assert!(
        !r.echo().has("x-client-cert-subject"),
        "no certificate: the forged header is dropped and none added"
    );
    let r = served(
        &gw,
        &ClientOpts {
            cert: Some(&bob),
            ..trusting(&w)
        },
    )
    .expect("served with a good certificate");
    assert_eq!(r.echo().header("x-client-cert-subject"), Some("CN=bob"));
    assert!(
        served(
            &gw,
            &ClientOpts {
                cert: Some(&mallory),
                ..trusting(&w)
            }
        )
        .is_none(),
        "a certificate that does not verify is refused even when optional"
    );
}

#[test]
fn forged_subject_header_is_dropped_on_plain_listeners_too() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let gw = simple(&w, &b);
    let r = Client::connect(gw.addr())
        .request(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Client-Cert-Subject: CN=forged\r\n\r\n");
    assert!(!r.echo().has("x-client-cert-subject"), "{r:?}");
}

#[test]
fn resumed_handshakes_work_on_every_shard() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let gw = gateway("shards = 2", "", &cert_entry(&w.server, ""), &b, "");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        // One client config: its session store carries tickets between
        // connections, which SO_REUSEPORT spreads over both shards.
        let config = client_config(&ClientOpts {
            version: Some(version),
            ..trusting(&w)
        });
        let mut kinds = Vec::new();
        for _ in 0..8 {
            let mut c =
                TlsClient::connect(gw.tls_addr(), "api.test", config.clone()).expect("connect");
            assert_eq!(c.get("/mock").status, 200);
            kinds.push(c.conn().handshake_kind());
        }
        assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full), "{version:?}");
        assert!(
            kinds[1..]
                .iter()
                .all(|k| *k == Some(rustls::HandshakeKind::Resumed)),
            "{version:?}: every later handshake resumes, whichever shard takes it: {kinds:?}"
        );
    }
}

#[test]
fn plain_http_on_the_tls_port_is_closed_and_harms_nothing() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let gw = simple(&w, &b);
    let mut raw = std::net::TcpStream::connect(gw.tls_addr()).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET /mock HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    // The gateway closes (a reset counts: it may close with our bytes
    // unread); a read that times out means the connection was left open.
    match raw.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected the gateway to close the connection: {e} (read {got:?})"),
    }
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "no HTTP answer in the clear: {got:?}"
    );
    // At most a TLS alert record before the close.
    assert!(got.len() < 64, "{got:?}");
    let line = gw
        .wait_stderr_line(Duration::from_secs(5), |l| l.contains("TLS handshake with"))
        .expect("the failed handshake is logged");
    assert!(line.contains("failed"), "{line}");
    // Garbage of another kind, then a good client on the same shard.
    let mut raw = std::net::TcpStream::connect(gw.tls_addr()).expect("connect");
    let _ = raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0]);
    drop(raw);
    let mut c = connect(&gw, &trusting(&w));
    assert_eq!(c.get("/mock").status, 200);
}

#[test]
fn a_silent_client_is_closed_after_header_read_timeout() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let gw = gateway(
        "shards = 1\n[server.limits]\nheader_read_timeout_ms = 300",
        "",
        &cert_entry(&w.server, ""),
        &b,
        "",
    );
    let mut raw = std::net::TcpStream::connect(gw.tls_addr()).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = raw.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed by the handshake deadline, not the test's guard"
    );
    assert!(gw
        .wait_stderr_line(Duration::from_secs(5), |l| l
            .contains("no handshake within 300 ms"))
        .is_some());
}

/// A TLS 1.2 client that asks to renegotiate (openssl s_client's `R`
/// command sends a ClientHello on the established connection) is told no
/// at once: rustls queues a no_renegotiation warning alert, which used to
/// wait for our next write, so the client waited for an answer until the
/// idle timeout. openssl takes the alert as the end of the connection.
#[test]
fn a_tls12_renegotiation_is_refused_at_once() {
    use std::process::{Command, Stdio};
    let w = world();
    let b = Backend::start(Reply::Echo);
    let gw = gateway(
        "shards = 1\n[server.limits]\nidle_timeout_ms = 30000",
        "",
        &cert_entry(&w.server, ""),
        &b,
        "",
    );
    // A missing openssl is a test failure, not an input.
    let mut client = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-servername", "api.test", "-connect"])
        .arg(gw.tls_addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed to run this test");
    // Its output, line by line, from both pipes.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = client.stdout.take().expect("piped");
    let stderr = client.stderr.take().expect("piped");
    for pipe in [
        Box::new(stdout) as Box<dyn Read + Send>,
        Box::new(stderr) as Box<dyn Read + Send>,
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut seen = Vec::new();
    // The session's summary ends the handshake's output: "SSL-Session:",
    // its fields, then "---".
    let mut in_session = false;
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no handshake ({e}): {seen:?}"));
        in_session |= line.starts_with("SSL-Session:");
        let done = in_session && line == "---";
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("TLSv1.2")), "{seen:?}");
    let mut stdin = client.stdin.take().expect("piped");
    stdin.write_all(b"R\n").expect("to openssl");
    stdin.flush().expect("to openssl");
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = client.try_wait().expect("openssl runs") {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(10) {
            let _ = client.kill();
            let _ = client.wait();
            seen.extend(lines.try_iter());
            panic!("the connection was left waiting for an answer: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    seen.extend(lines.iter());
    assert!(seen.iter().any(|l| l.contains("RENEGOTIATING")), "{seen:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}: {seen:?}",
        asked.elapsed()
    );
    // The gateway serves on.
    let mut c = connect(&gw, &trusting(&w));
    assert_eq!(c.get("/mock").status, 200, "{status}");
}

#[test]
fn close_delimited_response_ends_with_close_notify() {
    let w = world();
    let b = Backend::start(Reply::CloseDelimited(b"until the end".to_vec()));
    let gw = simple(&w, &b);
    let mut c = connect(&gw, &trusting(&w));
    c.send(b"GET /echo/x HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .expect("send");
    let all = c
        .read_to_close()
        .expect("a clean TLS close (close_notify), not a truncation");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("until the end"), "{text}");
}

#[test]
fn sigterm_closes_idle_tls_connections_cleanly() {
    let w = world();
    let b = Backend::start(Reply::Echo);
    let mut gw = simple(&w, &b);
    let mut idle: Vec<TlsClient> = (0..3).map(|_| connect(&gw, &trusting(&w))).collect();
    for c in &mut idle {
        assert_eq!(c.get("/mock").status, 200);
        assert_eq!(c.get("/echo/x").status, 200);
    }
    gw.sigterm();
    for c in &mut idle {
        let rest = c
            .read_to_close()
            .expect("closed with a close_notify, not cut");
        assert!(rest.is_empty(), "{rest:?}");
    }
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("coregate did not exit with only idle TLS connections");
    assert!(status.success(), "exit status {status:?}");
}

// === https:// upstreams ===

fn https_upstream_gateway(w: &World, backend_port: u16, host: &str, tls_ca: &str) -> Gateway {
    let b = Backend::start(Reply::Echo);
    let more = format!(
        r#"
[[upstreams]]
name = "secure"
targets = [{{ address = "127.0.0.1:{backend_port}" }}]
host = "{host}"
tls_ca = {tls_ca:?}
connect_timeout_ms = 3000

[[apis.routes]]
key = "ANY /secure/{{proxy+}}"
integration = {{ type = "http_proxy", url = "https://secure/{{proxy}}" }}
"#
    );
    gateway("shards = 1", "", &cert_entry(&w.server, ""), &b, &more)
}

#[test]
fn https_upstream_is_verified_with_tls_ca_sends_sni_and_is_pooled() {
    let w = world();
    let backend_ca = w.pki.ca("Backend CA");
    let leaf = w.pki.server(&backend_ca, "backend", &["backend.test"]);
    let tb = TlsBackend::start(&leaf);
    let gw = https_upstream_gateway(&w, tb.addr.port(), "backend.test", &backend_ca.path);

    // Over the plain listener and over TLS, several requests.
    let mut plain = Client::connect(gw.addr());
    let mut tls = connect(&gw, &trusting(&w));
    for i in 0..3 {
        let r = plain.get(&format!("/secure/p/{i}"));
        let echo = r.echo();
        assert_eq!(echo.target, format!("/p/{i}"));
        assert_eq!(echo.header("host"), Some("backend.test"));
        let mut req = format!(
            "POST /secure/t/{i} HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello"
        )
        .into_bytes();
        req.extend_from_slice(b"");
        let r = tls.request(&req);
        let echo = r.echo();
        assert_eq!(echo.body, b"hello");
        assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    }
    assert_eq!(tb.requests(), 6);
    assert_eq!(
        tb.conns(),
        1,
        "one TLS connection upstream, kept alive and reused"
    );
    assert_eq!(tb.snis(), vec![Some("backend.test".to_string())]);
}

#[test]
fn https_upstream_with_an_unverifiable_certificate_is_a_502() {
    let w = world();
    let backend_ca = w.pki.ca("Backend CA");
    let rogue_ca = w.pki.ca("Rogue CA");
    // Signed by a CA the gateway does not trust.
    let rogue = w.pki.server(&rogue_ca, "rogue", &["backend.test"]);
    let tb = TlsBackend::start(&rogue);
    let gw = https_upstream_gateway(&w, tb.addr.port(), "backend.test", &backend_ca.path);
    let r = Client::connect(gw.addr()).get("/secure/x");
    assert_json_error(&r, 502);
    let line = gw
        .wait_stderr_line(Duration::from_secs(5), |l| {
            l.contains("upstream \"secure\"")
        })
        .expect("a log line names the upstream");
    assert!(
        line.contains("TLS handshake (server name \"backend.test\") failed")
            && line.contains("invalid peer certificate"),
        "{line}"
    );
    assert_eq!(tb.requests(), 0);

    // Trusted CA, wrong name.
    let wrong_name = w.pki.server(&backend_ca, "wrong", &["elsewhere.test"]);
    let tb = TlsBackend::start(&wrong_name);
    let gw = https_upstream_gateway(&w, tb.addr.port(), "backend.test", &backend_ca.path);
    let r = Client::connect(gw.addr()).get("/secure/x");
    assert_json_error(&r, 502);
    let line = gw
        .wait_stderr_line(Duration::from_secs(5), |l| {
            l.contains("upstream \"secure\"")
        })
        .expect("a log line names the upstream");
    assert!(line.contains("not valid for name"), "{line}");
}

#[test]
fn https_upstream_that_speaks_plain_http_is_a_502() {
    let w = world();
    let plain = Backend::start(Reply::Echo);
    let backend_ca = w.pki.ca("Backend CA");
    let gw = https_upstream_gateway(&w, plain.addr.port(), "backend.test", &backend_ca.path);
    let r = Client::connect(gw.addr()).get("/secure/x");
    assert_json_error(&r, 502);
}

// === an https:// request authorizer ===

/// Regression test for the request authorizer's reads inheriting the TLS
/// connect's leftover read timeout (fixed in bd2ba8c): on a fresh TLS
/// connection the answer was read with what was left of
/// `connect_timeout_ms` after the TCP connect, so an answer slower than
/// that was a 500 although the authorizer's `timeout_ms` had not passed.
/// Here the authorizer answers after 1 s, the connect timeout is 300 ms and
/// both `timeout_ms` are 3 s: the request must be allowed.
#[test]
fn https_request_authorizer_answer_is_awaited_past_the_connect_timeout() {
    const DELAY: Duration = Duration::from_millis(1000);
    let w = world();
    let authz_ca = w.pki.ca("Authorizer CA");
    let leaf = w.pki.server(&authz_ca, "authz", &["authz.test"]);
    let authz = TlsBackend::start_with(
        &leaf,
        Arc::new(|_req: &BackendRequest, _body: &[u8]| {
            std::thread::sleep(DELAY);
            let answer = r#"{"isAuthorized":true,"principalId":"ann","context":{"userId":"ann"}}"#;
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .into_bytes()
        }),
    );
    let b = Backend::start(Reply::Echo);
    let more = format!(
        r#"
[[apis.routes]]
key = "GET /authorized/{{proxy+}}"
authorizer = "slow"
integration = {{ type = "http_proxy", url = "http://{backend}/{{proxy}}" }}

[[upstreams]]
name = "authz"
targets = [{{ address = "127.0.0.1:{port}" }}]
host = "authz.test"
tls_ca = {ca:?}
connect_timeout_ms = 300
timeout_ms = 3000

[[authorizers]]
name = "slow"
[authorizers.request]
url = "https://authz/authorize"
identity_sources = ["header:Authorization"]
timeout_ms = 3000
context_headers = {{ userId = "x-user-id" }}
"#,
        backend = b.addr_str(),
        port = authz.addr.port(),
        ca = authz_ca.path,
    );
    let gw = gateway("shards = 1", "", &cert_entry(&w.server, ""), &b, &more);

    let started = Instant::now();
    let r = Client::connect(gw.addr()).request(
        b"GET /authorized/pets/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ann\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.stderr());
    let echo = r.echo();
    assert_eq!(echo.target, "/pets/1");
    assert_eq!(echo.header("x-user-id"), Some("ann"), "the allow's context");
    assert!(
        started.elapsed() >= DELAY,
        "the answer was awaited, not cached or skipped"
    );
    assert_eq!(authz.requests(), 1, "one call, not retried");
    assert_eq!(authz.conns(), 1, "over one fresh TLS connection");
    assert_eq!(authz.snis(), vec![Some("authz.test".to_string())]);
    assert_eq!(b.hits(), 1);
}

// === config errors ===

/// `error: line N: KEY: MESSAGE` as `error: KEY: MESSAGE`: these tests check
/// keys and messages (tests/config_check.rs checks the lines).
fn without_line(l: &str) -> String {
    match l
        .strip_prefix("error: line ")
        .and_then(|r| r.split_once(": "))
    {
        Some((n, rest)) if n.bytes().all(|b| b.is_ascii_digit()) => format!("error: {rest}"),
        _ => l.to_string(),
    }
}

fn check(text: &str) -> (Option<i32>, String) {
    let path = write_config(text);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn coregate_check_reports_tls_config_errors_with_paths() {
    let w = world();
    let other = w.pki.server(&w.ca, "other", &["other.test"]);
    let garbage = w.pki.write("garbage.pem", "not a certificate\n");
    let missing = w.pki.dir.join("missing.crt").to_string_lossy().into_owned();
    let base = |tls: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[server.tls]\nlisten = [\"127.0.0.1:0\"]\n{tls}\n[[apis]]\nname = \"a\"\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"mock\" }}\n"
        )
    };
    let good = base(&cert_entry(&w.server, ""));
    let (code, stderr) = check(&good);
    assert_eq!(code, Some(0), "{stderr}");

    for (tls, key, needles) in [
        (
            format!(
                "[[server.tls.certificates]]\ncert = {missing:?}\nkey = {:?}\n",
                w.server.key_path
            ),
            "server.tls.certificates[0].cert",
            vec!["cannot read", missing.as_str()],
        ),
        (
            format!(
                "[[server.tls.certificates]]\ncert = {garbage:?}\nkey = {:?}\n",
                w.server.key_path
            ),
            "server.tls.certificates[0].cert",
            vec![garbage.as_str(), "no PEM certificate"],
        ),
        (
            format!(
                "[[server.tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
                w.server.cert_path, other.key_path
            ),
            "server.tls.certificates[0].key",
            vec![other.key_path.as_str(), "does not match the certificate"],
        ),
        (
            format!("min_version = \"1.0\"\n{}", cert_entry(&w.server, "")),
            "server.tls.min_version",
            vec!["\"1.0\" is not \"1.2\" or \"1.3\""],
        ),
        (
            format!("client_auth = \"required\"\n{}", cert_entry(&w.server, "")),
            "server.tls.client_ca",
            vec!["client_ca ="],
        ),
    ] {
        let (code, stderr) = check(&base(&tls));
        assert_eq!(code, Some(1), "{tls}\n{stderr}");
        let line = stderr
            .lines()
            .map(without_line)
            .find(|l| l.starts_with(&format!("error: {key}: ")))
            .unwrap_or_else(|| panic!("no error at {key}: {stderr}"));
        for n in needles {
            assert!(line.contains(n), "{line:?} lacks {n:?}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // `serve` refuses the same config the same way, without starting.
    let bad = base(&format!(
        "[[server.tls.certificates]]\ncert = {missing:?}\nkey = {missing:?}\n"
    ));
    let path = write_config(&bad);
    let out = run_coregate(&["serve", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}
