//! The admin listener over TLS with client certificates (`[admin.tls]`,
//! docs/admin-api.md), with curl as the client: a certificate signed by
//! the configured CA is served and its subject names the client in the
//! log of a change; no certificate, one from another CA, and plain HTTP
//! are refused at the handshake; with a token as well, both are needed;
//! `coregate check` refuses a reachable admin listener with neither, and
//! names unreadable files; `coregate reload` says it does not speak TLS.
//! Certificates are made per test (rcgen, as tests/tls.rs does).
//!
//! Unwraps and expects: a failed step fails the test, with its message.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::process::Command;
use support::*;
use tls_support::*;

struct World {
    pki: Pki,
    server_ca: Ca,
    server: Leaf,
    ops: Leaf,
    rogue: Leaf,
    clients_ca: Ca,
}

fn world() -> World {
    let pki = Pki::new();
    let server_ca = pki.ca("Admin Server CA");
    let server = pki.server(&server_ca, "admin", &["localhost"]);
    let clients_ca = pki.ca("Ops CA");
    let ops = pki.leaf(
        &clients_ca,
        "ops",
        &[],
        &[
            (rcgen::DnType::CommonName, "ops-alice"),
            (rcgen::DnType::OrganizationName, "Example"),
        ],
        true,
    );
    let rogue_ca = pki.ca("Rogue CA");
    let rogue = pki.leaf(
        &rogue_ca,
        "rogue",
        &[],
        &[(rcgen::DnType::CommonName, "ops-alice")],
        true,
    );
    World {
        pki,
        server_ca,
        server,
        ops,
        rogue,
        clients_ca,
    }
}

fn config(w: &World, listen: &str, token_file: Option<&str>) -> String {
    let token = token_file
        .map(|t| format!("token_file = {t:?}\n"))
        .unwrap_or_default();
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[admin]
listen = "{listen}"
{token}
[admin.tls]
certificate = {:?}
key = {:?}
client_ca = {:?}

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /v"
integration = {{ type = "mock", body = "one" }}
"#,
        w.server.cert_path, w.server.key_path, w.clients_ca.path
    )
}

/// curl to the admin listener at `path`, as `localhost` (the name in the
/// server's certificate) resolved to 127.0.0.1, trusting the server CA;
/// `extra` adds the client certificate, a method, a header. Returns curl's
/// exit code, the status (0 when none came), and the output.
fn curl(w: &World, gw: &Gateway, path: &str, extra: &[&str]) -> (i32, u16, String) {
    curl_trusting(&w.server_ca.path, gw, path, extra)
}

/// As [`curl`], trusting the CA at `ca` instead.
fn curl_trusting(ca: &str, gw: &Gateway, path: &str, extra: &[&str]) -> (i32, u16, String) {
    let port = gw.admin_addr().port();
    let out = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "10"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--cacert", ca])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl is installed by scripts/test");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (out.status.code().unwrap_or(-1), status, text)
}

fn with_cert<'a>(leaf: &'a Leaf, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--cert",
        leaf.cert_path.as_str(),
        "--key",
        leaf.key_path.as_str(),
    ];
    v.extend_from_slice(more);
    v
}

#[test]
fn a_client_certificate_from_the_ca_is_served_and_named_in_the_log() {
    let w = world();
    // Not loopback: client certificates alone are enough authentication.
    let gw = Gateway::start(&config(&w, "0.0.0.0:0", None));
    let (code, status, text) = curl(&w, &gw, "/status", &with_cert(&w.ops, &[]));
    assert_eq!((code, status), (0, 200), "{text}");
    assert!(text.contains("\"generation\":1"), "{text}");
    // A change, logged with the certificate's subject.
    let (code, status, text) = curl(&w, &gw, "/reload", &with_cert(&w.ops, &["-X", "POST"]));
    assert_eq!((code, status), (0, 200), "{text}");
    assert!(text.contains("\"generation\":2"), "{text}");
    let logged = gw.wait_stderr_line(std::time::Duration::from_secs(5), |l| {
        l.contains("admin client 127.0.0.1:")
            && l.contains("client certificate")
            && l.contains("CN=ops-alice")
            && l.contains("generation 2")
    });
    assert!(logged.is_some(), "{}", gw.stderr());
    // Keep-alive: two requests on one TLS connection.
    let port = gw.admin_addr().port();
    let url = format!("https://localhost:{port}/status");
    let (code, _, text) = curl(&w, &gw, "/status", &with_cert(&w.ops, &[url.as_str()]));
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    // The traffic listener is not affected.
    assert_eq!(gw.client().get("/v").status, 200);
}

#[test]
fn no_certificate_another_ca_and_plain_http_are_refused() {
    let w = world();
    let gw = Gateway::start(&config(&w, "127.0.0.1:0", None));
    let (code, status, text) = curl(&w, &gw, "/status", &[]);
    assert_ne!(code, 0, "served without a certificate: {text}");
    assert_eq!(status, 0, "{text}");
    let (code, status, text) = curl(&w, &gw, "/reload", &with_cert(&w.rogue, &["-X", "POST"]));
    assert_ne!(code, 0, "served with another CA's certificate: {text}");
    assert_eq!(status, 0, "{text}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "5"])
        .arg(format!(
            "http://127.0.0.1:{}/status",
            gw.admin_addr().port()
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("HTTP/1.1 200"), "{text}");
    // Nothing was reloaded; the log says why the handshakes failed.
    let (code, status, text) = curl(&w, &gw, "/status", &with_cert(&w.ops, &[]));
    assert_eq!((code, status), (0, 200), "{text}");
    assert!(text.contains("\"generation\":1"), "{text}");
    assert!(
        gw.stderr().contains("admin: TLS handshake with 127.0.0.1:"),
        "{}",
        gw.stderr()
    );
}

#[test]
fn with_a_token_as_well_both_are_needed() {
    let w = world();
    let token = w.pki.write("token", "0123456789abcdef0123\n");
    let gw = Gateway::start(&config(&w, "127.0.0.1:0", Some(&token)));
    let (code, status, text) = curl(&w, &gw, "/status", &with_cert(&w.ops, &[]));
    assert_eq!((code, status), (0, 401), "{text}");
    let (code, status, text) = curl(
        &w,
        &gw,
        "/status",
        &with_cert(
            &w.ops,
            &["-H", "authorization: Bearer 0123456789abcdef0123"],
        ),
    );
    assert_eq!((code, status), (0, 200), "{text}");
    let (code, status, text) = curl(
        &w,
        &gw,
        "/status",
        &["-H", "authorization: Bearer 0123456789abcdef0123"],
    );
    assert_ne!(code, 0, "{text}");
    assert_eq!(status, 0, "{text}");
}

#[test]
fn check_refuses_a_reachable_listener_without_authentication_and_bad_files() {
    let w = world();
    let run = |text: &str| {
        let path = write_config(text);
        let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // TLS without client certificates is not authentication.
    let no_ca = config(&w, "0.0.0.0:9901", None)
        .replace(&format!("client_ca = {:?}\n", w.clients_ca.path), "");
    assert!(!no_ca.contains("client_ca"));
    let (code, err) = run(&no_ca);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("admin.token_file: is required") && err.contains("client_ca"),
        "{err}"
    );
    // The same on loopback is fine (TLS, no authentication asked).
    let (code, err) = run(&no_ca.replace("0.0.0.0:9901", "127.0.0.1:0"));
    assert_eq!(code, Some(0), "{err}");
    // Unreadable files, each named at its key, all at once.
    let bad = config(&w, "127.0.0.1:0", None)
        .replace(&w.server.cert_path, "/nonexistent/admin.crt")
        .replace(&w.clients_ca.path, "/nonexistent/ca.pem");
    let (code, err) = run(&bad);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("admin.tls.certificate: cannot read /nonexistent/admin.crt"),
        "{err}"
    );
    assert!(
        err.contains("admin.tls.client_ca: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
    // A key that is not the certificate's.
    let bad = config(&w, "127.0.0.1:0", None).replace(&w.server.key_path, &w.ops.key_path);
    let (code, err) = run(&bad);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("admin.tls.key"), "{err}");
    // An unknown key in [admin.tls] is named.
    let bad =
        config(&w, "127.0.0.1:0", None).replace("[admin.tls]\n", "[admin.tls]\nciphers = 1\n");
    let (code, err) = run(&bad);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("admin.tls.ciphers"), "{err}");
}

#[test]
fn coregate_reload_says_it_does_not_speak_tls() {
    let w = world();
    let path = write_config(&config(&w, "127.0.0.1:9999", None));
    let out = run_coregate(&["reload", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("speaks TLS") && err.contains("SIGHUP"),
        "{err}"
    );
}

/// A renewed certificate (new files at the same paths, here from another
/// CA so that a client can tell which one it got) is served to new
/// connections after a reload, without a restart; until the reload the
/// old one is. A broken certificate file makes the reload fail, naming
/// the key, and the certificate served stays the last good one.
#[test]
fn a_renewed_certificate_is_served_after_a_reload_and_a_broken_one_is_refused() {
    let w = world();
    let gw = Gateway::start(&config(&w, "127.0.0.1:0", None));
    let ops = with_cert(&w.ops, &[]);
    let post = with_cert(&w.ops, &["-X", "POST"]);
    let (code, status, text) = curl(&w, &gw, "/status", &ops);
    assert_eq!((code, status), (0, 200), "{text}");

    let new_ca = w.pki.ca("Admin Server CA renewed");
    let renewed = w.pki.server(&new_ca, "admin-renewed", &["localhost"]);
    std::fs::copy(&renewed.cert_path, &w.server.cert_path).unwrap();
    std::fs::copy(&renewed.key_path, &w.server.key_path).unwrap();
    // Not before the reload.
    let (code, status, text) = curl(&w, &gw, "/status", &ops);
    assert_eq!(
        (code, status),
        (0, 200),
        "the old certificate before the reload: {text}"
    );
    let (code, status, text) = curl(&w, &gw, "/reload", &post);
    assert_eq!((code, status), (0, 200), "{text}");
    assert!(text.contains("\"generation\":2"), "{text}");

    // After it: the renewed certificate, which the old CA does not sign.
    let (code, _, text) = curl(&w, &gw, "/status", &ops);
    assert_ne!(code, 0, "the old certificate is still served: {text}");
    let (code, status, text) = curl_trusting(&new_ca.path, &gw, "/status", &ops);
    assert_eq!((code, status), (0, 200), "{text}");

    // A broken certificate file: refused, and the renewed one stays.
    std::fs::write(&w.server.cert_path, "not a certificate\n").unwrap();
    let (code, status, text) = curl_trusting(&new_ca.path, &gw, "/reload", &post);
    assert_eq!((code, status), (0, 400), "{text}");
    assert!(text.contains("admin.tls.certificate"), "{text}");
    let (code, status, text) = curl_trusting(&new_ca.path, &gw, "/status", &ops);
    assert_eq!((code, status), (0, 200), "{text}");
    assert!(text.contains("\"generation\":2"), "{text}");
}
