//! Compiling `[server.tls]` and https:// upstreams: certificates made here
//! with rcgen, written to a temp dir, and configs pointing at them. Each
//! mistake is reported at its key with the file's path.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (configs, keys, temp files, vectors,
//! loopback sockets and the executor that drives them), so a
//! failure is a failing test; nothing a client or an operator's config
//! controls reaches them.

use super::*;
use crate::plan::{load_str, Integration, Plan};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory of PEM files for one test, removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "coregate-tls-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// A self-signed leaf for `names`: (cert path, key path, cert DER).
    fn leaf(&self, stem: &str, names: &[&str]) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (
            self.write(&format!("{stem}.crt"), &cert.pem()),
            self.write(&format!("{stem}.key"), &key.serialize_pem()),
            cert.der().to_vec(),
        )
    }

    /// A CA certificate (path).
    fn ca(&self, stem: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{stem} CA"));
        let cert = params.self_signed(&key).unwrap();
        self.write(&format!("{stem}.pem"), &cert.pem())
    }
}

const ROUTE: &str = r#"
[[apis]]
name = "a"
[[apis.routes]]
key = "GET /x"
integration = { type = "mock", body = "x" }
"#;

fn tls_config(tls: &str) -> String {
    format!("[server]\nlisten = [\"127.0.0.1:0\"]\n\n[server.tls]\n{tls}\n{ROUTE}")
}

fn plan(text: &str) -> Plan {
    load_str(text).unwrap_or_else(|e| panic!("config refused: {e:#?}\n{text}"))
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(text) {
        Ok(_) => panic!("config should be refused:\n{text}"),
        Err(e) => e,
    }
}

/// The one error at `key`; its message must contain every needle.
fn error_at(errs: &[ConfigError], key: &str, needles: &[&str]) {
    let found: Vec<_> = errs.iter().filter(|e| e.key == key).collect();
    assert_eq!(found.len(), 1, "want one error at {key:?}, got {errs:#?}");
    for n in needles {
        assert!(
            found[0].message.contains(n),
            "{key}: {:?} lacks {n:?}",
            found[0].message
        );
    }
}

fn resolver(p: &Plan) -> Arc<ServerConfig> {
    p.server.tls.as_ref().expect("tls plan").config.clone()
}

#[test]
fn certificates_listen_and_defaults_compile() {
    let pki = Pki::new();
    let (c1, k1, _) = pki.leaf("one", &["one.test"]);
    let (c2, k2, _) = pki.leaf("two", &["two.test", "*.two.test"]);
    let p = plan(&tls_config(&format!(
        "listen = [\"127.0.0.1:0\", \"[::1]:0\"]\n\
         [[server.tls.certificates]]\ncert = {c1:?}\nkey = {k1:?}\n\
         [[server.tls.certificates]]\ncert = {c2:?}\nkey = {k2:?}\nserver_names = [\"Api.Example.com\"]\n"
    )));
    let tls = p.server.tls.as_ref().unwrap();
    assert_eq!(tls.listen.len(), 2);
    assert_eq!(tls.client_auth, ClientAuth::None);
    let cfg = resolver(&p);
    assert_eq!(
        cfg.alpn_protocols,
        vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()]
    );
    assert!(cfg.ticketer.enabled(), "tickets let any shard resume");
    // Each shard's copy shares the ticket key but not the session cache.
    let a = tls.shard_config();
    let b = tls.shard_config();
    assert!(Arc::ptr_eq(&a.ticketer, &b.ticketer));
    assert!(!Arc::ptr_eq(&a.session_storage, &b.session_storage));
}

#[test]
fn sni_picks_exact_then_wildcard_then_the_first() {
    let pki = Pki::new();
    let (c1, k1, d1) = pki.leaf("one", &["one.test"]);
    let (c2, k2, d2) = pki.leaf("two", &["two.test", "*.two.test"]);
    let (c3, k3, d3) = pki.leaf("three", &["ignored.test"]);
    let raw = RawServerTls {
        listen: Some(vec!["127.0.0.1:0".into()]),
        certificates: vec![
            RawCertificate {
                cert: c1,
                key: k1,
                server_names: None,
            },
            RawCertificate {
                cert: c2,
                key: k2,
                server_names: None,
            },
            RawCertificate {
                cert: c3,
                key: k3,
                server_names: Some(vec!["API.three.test".into(), "*.x.three.test".into()]),
            },
        ],
        ..Default::default()
    };
    let mut errs = Vec::new();
    let plan = compile_server(&raw, None, &[], &mut errs).expect("compiles");
    assert!(errs.is_empty(), "{errs:#?}");
    let r = &plan.resolver;
    let leaves = [&d1, &d2, &d3];
    for (sni, want) in [
        (Some("one.test"), 0),
        (Some("ONE.test."), 0),
        (Some("two.test"), 1),
        (Some("a.two.test"), 1),
        (Some("a.b.two.test"), 0),
        (Some("api.three.test"), 2),
        (Some("ignored.test"), 0),
        (Some("q.x.three.test"), 2),
        (Some("unknown.test"), 0),
        (Some("test"), 0),
        (None, 0),
    ] {
        assert_eq!(r.pick(sni), want, "{sni:?}");
        assert_eq!(r.leaf_for(sni), Some(&leaves[want][..]), "{sni:?}");
    }
}

#[test]
fn names_come_from_the_certificate_unless_listed() {
    let pki = Pki::new();
    let (c1, k1, _) = pki.leaf("one", &["one.test"]);
    let (c2, k2, _) = pki.leaf("two", &["one.test", "two.test"]);
    // A name two certificates carry stays with the first.
    let raw = RawServerTls {
        certificates: vec![
            RawCertificate {
                cert: c1,
                key: k1,
                server_names: None,
            },
            RawCertificate {
                cert: c2,
                key: k2,
                server_names: None,
            },
        ],
        ..Default::default()
    };
    let mut errs = Vec::new();
    let plan = compile_server(&raw, None, &[], &mut errs).expect("compiles");
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(plan.resolver.pick(Some("one.test")), 0);
    assert_eq!(plan.resolver.pick(Some("two.test")), 1);
}

#[test]
fn file_errors_name_the_key_and_the_path() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("good", &["good.test"]);
    let (_, other_key, _) = pki.leaf("other", &["other.test"]);
    let garbage = pki.write("garbage.pem", "this is not PEM\n");
    let missing = pki.dir.join("missing.pem").to_string_lossy().into_owned();
    let truncated = pki.write("truncated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");

    let e = errors(&tls_config(&format!(
        "[[server.tls.certificates]]\ncert = {missing:?}\nkey = {key:?}\n"
    )));
    error_at(
        &e,
        "server.tls.certificates[0].cert",
        &["cannot read", &missing, "config file's directory"],
    );

    let e = errors(&tls_config(&format!(
        "[[server.tls.certificates]]\ncert = {garbage:?}\nkey = {key:?}\n"
    )));
    error_at(
        &e,
        "server.tls.certificates[0].cert",
        &[&garbage, "holds no PEM certificate"],
    );

    let e = errors(&tls_config(&format!(
        "[[server.tls.certificates]]\ncert = {truncated:?}\nkey = {key:?}\n"
    )));
    error_at(
        &e,
        "server.tls.certificates[0].cert",
        &[&truncated, "invalid PEM"],
    );

    let e = errors(&tls_config(&format!(
        "[[server.tls.certificates]]\ncert = {cert:?}\nkey = {cert:?}\n"
    )));
    error_at(
        &e,
        "server.tls.certificates[0].key",
        &[&cert, "holds no PEM private key"],
    );

    let e = errors(&tls_config(&format!(
        "[[server.tls.certificates]]\ncert = {cert:?}\nkey = {other_key:?}\n"
    )));
    error_at(
        &e,
        "server.tls.certificates[0].key",
        &[&other_key, "does not match the certificate in", &cert],
    );

    let e = errors(&tls_config(&format!(
        "client_auth = \"required\"\nclient_ca = {missing:?}\n\
         [[server.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n"
    )));
    error_at(&e, "server.tls.client_ca", &["cannot read", &missing]);
}

#[test]
fn setting_errors() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("good", &["good.test"]);
    let (nameless_cert, nameless_key, _) = pki.leaf("nameless", &[]);
    let ca = pki.ca("clients");
    let certs = format!("[[server.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n");

    let e = errors(&tls_config(&format!("min_version = \"1.1\"\n{certs}")));
    error_at(
        &e,
        "server.tls.min_version",
        &["\"1.1\" is not \"1.2\" or \"1.3\""],
    );

    let e = errors(&tls_config(&format!("client_auth = \"maybe\"\n{certs}")));
    error_at(&e, "server.tls.client_auth", &["\"maybe\" is not one of"]);

    let e = errors(&tls_config(&format!("client_auth = \"required\"\n{certs}")));
    error_at(
        &e,
        "server.tls.client_ca",
        &["needs the CAs", "client_ca ="],
    );

    let e = errors(&tls_config(&format!("client_ca = {ca:?}\n{certs}")));
    error_at(
        &e,
        "server.tls.client_auth",
        &["client_ca is set", "\"required\""],
    );

    let e = errors(&tls_config(""));
    error_at(&e, "server.tls.certificates", &["at least one"]);

    let e = errors(&tls_config(&format!(
        "listen = [\"127.0.0.1:8443\", \"127.0.0.1:8443\", \"nowhere\"]\n{certs}"
    )));
    error_at(&e, "server.tls.listen[1]", &["listed twice"]);
    error_at(&e, "server.tls.listen[2]", &["not an IP:port"]);

    let e = errors(&format!(
        "[server]\nlisten = [\"127.0.0.1:8443\"]\n[server.tls]\nlisten = [\"127.0.0.1:8443\"]\n{certs}{ROUTE}"
    ));
    error_at(&e, "server.tls.listen[0]", &["also in server.listen"]);

    let e = errors(&tls_config(&format!(
        "{certs}server_names = [\"bad name\", \"ok.test\", \"OK.test\"]\n"
    )));
    error_at(
        &e,
        "server.tls.certificates[0].server_names[0]",
        &["not a DNS name"],
    );
    error_at(
        &e,
        "server.tls.certificates[0].server_names[2]",
        &["already served by server.tls.certificates[0]"],
    );

    // A second certificate no SNI could choose.
    let e = errors(&tls_config(&format!(
        "{certs}[[server.tls.certificates]]\ncert = {nameless_cert:?}\nkey = {nameless_key:?}\n"
    )));
    error_at(
        &e,
        "server.tls.certificates[1].server_names",
        &["has no DNS names", "list server_names"],
    );

    let e = errors(&tls_config(&format!("listen = []\n{certs}")));
    error_at(&e, "server.tls.listen", &["at least one address"]);
}

#[test]
fn mtls_modes_compile() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("good", &["good.test"]);
    let ca = pki.ca("clients");
    for (mode, want) in [
        ("required", ClientAuth::Required),
        ("optional", ClientAuth::Optional),
    ] {
        let p = plan(&tls_config(&format!(
            "client_auth = {mode:?}\nclient_ca = {ca:?}\nmin_version = \"1.3\"\n\
             [[server.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n"
        )));
        assert_eq!(p.server.tls.as_ref().unwrap().client_auth, want);
    }
}

#[test]
fn tls_only_server_needs_no_plain_listener() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("good", &["good.test"]);
    let p = plan(&format!(
        "[server]\nlisten = []\n[server.tls]\nlisten = [\"127.0.0.1:0\"]\n\
         [[server.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\n{ROUTE}"
    ));
    assert!(p.server.listen.is_empty());
    assert_eq!(p.server.tls.unwrap().listen.len(), 1);
    // Without TLS an empty listen list is still refused.
    let e = errors(&format!("[server]\nlisten = []\n{ROUTE}"));
    assert!(e.iter().any(|e| e.key == "server.listen"), "{e:#?}");
}

#[test]
fn relative_paths_are_taken_from_the_config_directory() {
    let pki = Pki::new();
    pki.leaf("good", &["good.test"]);
    let text = tls_config("[[server.tls.certificates]]\ncert = \"good.crt\"\nkey = \"good.key\"\n");
    let file = pki.write("coregate.toml", &text);
    let p = crate::plan::load(Path::new(&file)).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(p.server.tls.is_some());
}

// === https:// upstreams ===

fn proxy_route(url: &str) -> String {
    format!(
        "[[apis]]\nname = \"a\"\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"http_proxy\", url = {url:?} }}\n"
    )
}

#[test]
fn https_url_makes_a_tls_upstream() {
    let p = plan(&proxy_route("https://127.0.0.1:9443/x"));
    let up = &p.upstreams[0];
    assert_eq!(up.name, "https://127.0.0.1:9443");
    let tls = up.tls.as_ref().expect("https upstream has TLS");
    assert_eq!(tls.server_names[0].to_str(), "127.0.0.1");
    // The default port is 443, and http:// to the same authority is
    // another upstream.
    let p = plan(&format!(
        "{}[[apis.routes]]\nkey = \"GET /y\"\nintegration = {{ type = \"http_proxy\", url = \"http://127.0.0.1:443/y\" }}\n",
        proxy_route("https://127.0.0.1/x")
    ));
    assert_eq!(p.upstreams.len(), 2);
    assert_eq!(p.upstreams[0].name, "https://127.0.0.1:443");
    assert!(p.upstreams[0].tls.is_some());
    assert!(p.upstreams[1].tls.is_none());
}

#[test]
fn declared_upstream_with_tls_ca_and_host() {
    let pki = Pki::new();
    let ca = pki.ca("backend");
    let p = plan(&format!(
        "[[upstreams]]\nname = \"secure\"\ntargets = [{{ address = \"127.0.0.1:9443\" }}, {{ address = \"127.0.0.2:9443\" }}]\nhost = \"backend.test:9443\"\ntls_ca = {ca:?}\n{}",
        proxy_route("https://secure/x")
    ));
    let up = &p.upstreams[0];
    assert!(up.tls_ca.is_some());
    let names: Vec<_> = up
        .tls
        .as_ref()
        .unwrap()
        .server_names
        .iter()
        .map(|n| n.to_str().into_owned())
        .collect();
    assert_eq!(names, ["backend.test", "backend.test"]);
    match &p.routes[0].integration {
        Integration::Proxy(pp) => assert_eq!(pp.upstream, 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn upstream_tls_errors() {
    let pki = Pki::new();
    let ca = pki.ca("backend");
    let missing = pki.dir.join("nope.pem").to_string_lossy().into_owned();
    let up = |extra: &str| {
        format!("[[upstreams]]\nname = \"u\"\ntargets = [{{ address = \"127.0.0.1:9443\" }}]\n{extra}\n")
    };

    let e = errors(&format!(
        "{}{}",
        up(&format!("tls_ca = {missing:?}")),
        proxy_route("https://u/x")
    ));
    error_at(&e, "upstreams[0].tls_ca", &["cannot read", &missing]);

    let e = errors(&format!(
        "{}{}",
        up(&format!("tls_ca = {ca:?}")),
        proxy_route("http://u/x")
    ));
    error_at(
        &e,
        "apis[0].routes[0].integration.url",
        &["has tls_ca set", "https://"],
    );

    let e = errors(&format!(
        "{}{}[[apis.routes]]\nkey = \"GET /y\"\nintegration = {{ type = \"http_proxy\", url = \"http://u/y\" }}\n",
        up(""),
        proxy_route("https://u/x")
    ));
    error_at(
        &e,
        "apis[0].routes[1].integration.url",
        &[
            "another route reaches upstream \"u\" with https://",
            "either plain HTTP or TLS",
        ],
    );

    let e = errors(&format!(
        "{}{}",
        up("host = \"bad_name!\""),
        proxy_route("https://u/x")
    ));
    error_at(
        &e,
        "apis[0].routes[0].integration.url",
        &["not a name TLS can verify"],
    );
}

#[test]
fn host_part_strips_ports_and_brackets() {
    assert_eq!(host_part("a.test:8443"), "a.test");
    assert_eq!(host_part("a.test"), "a.test");
    assert_eq!(host_part("[::1]:443"), "::1");
    assert_eq!(host_part("[::1]"), "::1");
    assert_eq!(host_part("10.0.0.1:1"), "10.0.0.1");
}

/// A head and body written through a stream's `AsyncWrite` (what a
/// [`stream::Shared`] stream does while a request body goes up) leave in one
/// vectored write on a plain socket: the default `poll_write_vectored`
/// would take only the first slice, and the two would be two `sendto`s.
#[test]
fn a_plain_stream_writes_head_and_body_in_one_vectored_write() {
    use futures_lite::AsyncWrite;
    use std::io::{IoSlice, Read};
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let sock = crate::net::Socket::connect(
                l.local_addr().unwrap(),
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap();
            let (mut peer, _) = l.accept().unwrap();
            let mut s: stream::UpstreamStream = stream::Stream::Plain(sock);
            let (a, b) = (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"[..],
                &b"ok\n"[..],
            );
            let n = futures_lite::future::poll_fn(|cx| {
                std::pin::Pin::new(&mut s)
                    .poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)])
            })
            .await
            .unwrap();
            assert_eq!(n, a.len() + b.len(), "both slices in one write");
            let mut got = vec![0u8; n];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(got, [a, b].concat());
        });
}
