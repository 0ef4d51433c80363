//! TLS test helpers, for tests/tls.rs (included there with `#[path]`, so the
//! other test binaries do not build it): a test PKI made with rcgen and
//! written to a temp dir ([`Pki`]), a real rustls client speaking raw
//! HTTP/1.1 over TLS ([`TlsClient`]), and an HTTPS backend ([`TlsBackend`],
//! an echo by default) for https:// upstreams.
#![allow(dead_code)]
#![allow(clippy::disallowed_types)]

use crate::support::{
    read_chunked, read_exact_to, read_head, read_response_from, BackendRequest, ReadError,
    Response, IO_TIMEOUT,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, StreamOwned};
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === impl Pki ===

/// A temp directory of PEM files, removed on drop.
pub struct Pki {
    pub dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate authority that can issue leaves.
pub struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pub der: CertificateDer<'static>,
    /// Path of its PEM certificate.
    pub path: String,
}

/// An issued certificate and its key, on disk and in memory.
pub struct Leaf {
    pub cert_path: String,
    pub key_path: String,
    pub der: CertificateDer<'static>,
    pub key_pem: String,
    /// The leaf then its issuer (for a CA-issued leaf).
    pub chain: Vec<CertificateDer<'static>>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("test key")
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = crate::support::temp_path("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        Pki { dir }
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p.to_string_lossy().into_owned()
    }

    pub fn ca(&self, cn: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("ca cert");
        let path = self.write(&format!("{}.pem", cn.replace(' ', "_")), &cert.pem());
        Ca {
            der: cert.der().clone(),
            params,
            key,
            path,
        }
    }

    /// A leaf signed by `ca`, valid for `names` (DNS names or IPs), with
    /// subject `dn` (e.g. `[(CommonName, "client one")]`); `client` picks
    /// the clientAuth key usage instead of serverAuth.
    pub fn leaf(
        &self,
        ca: &Ca,
        stem: &str,
        names: &[&str],
        dn: &[(rcgen::DnType, &str)],
        client: bool,
    ) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        let key_pem = key.serialize_pem();
        Leaf {
            cert_path: self.write(&format!("{stem}.crt"), &cert.pem()),
            key_path: self.write(&format!("{stem}.key"), &key_pem),
            der: cert.der().clone(),
            key_pem,
            chain: vec![cert.der().clone(), ca.der.clone()],
        }
    }

    /// A server leaf for `names`, subject CN = the first name.
    pub fn server(&self, ca: &Ca, stem: &str, names: &[&str]) -> Leaf {
        self.leaf(
            ca,
            stem,
            names,
            &[(rcgen::DnType::CommonName, names[0])],
            false,
        )
    }
}

// === impl client configs ===

/// What a test client offers.
pub struct ClientOpts<'a> {
    pub roots: Vec<&'a Ca>,
    /// `None`: TLS 1.2 and 1.3.
    pub version: Option<&'static rustls::SupportedProtocolVersion>,
    pub alpn: Vec<&'static [u8]>,
    pub cert: Option<&'a Leaf>,
    /// Accept any server certificate (to look at one that would not verify).
    pub accept_any: bool,
}

impl Default for ClientOpts<'_> {
    fn default() -> Self {
        ClientOpts {
            roots: Vec::new(),
            version: None,
            alpn: vec![b"http/1.1"],
            cert: None,
            accept_any: false,
        }
    }
}

/// A verifier that accepts every certificate, still checking signatures.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn client_config(o: &ClientOpts<'_>) -> Arc<ClientConfig> {
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match o.version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .expect("versions");
    let builder = if o.accept_any {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &o.roots {
            roots.add(ca.der.clone()).expect("root");
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match o.cert {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = o.alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

// === impl TlsClient ===

/// A raw HTTP/1.1 client over one rustls connection.
pub struct TlsClient {
    r: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects and completes the handshake. `server_name` is sent as SNI
    /// (an IP literal sends none).
    pub fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> io::Result<TlsClient> {
        let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        sock.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(config, name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut s = StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(TlsClient {
            r: BufReader::with_capacity(64 * 1024, s),
        })
    }

    pub fn conn(&self) -> &ClientConnection {
        &self.r.get_ref().conn
    }

    /// The leaf certificate the server presented.
    pub fn peer_leaf(&self) -> Vec<u8> {
        self.conn()
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .expect("a server certificate")
    }

    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let s = self.r.get_mut();
        s.write_all(data)?;
        s.flush()
    }

    pub fn try_request(&mut self, raw: &[u8]) -> Result<Response, ReadError> {
        self.send(raw)
            .map_err(|e| ReadError::Malformed(format!("send: {e}")))?;
        self.try_read_response()
    }

    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.try_request(raw)
            .unwrap_or_else(|e| panic!("request over TLS: {e:?}"))
    }

    /// `GET {path}` with `Host: api.test`, keep-alive.
    pub fn get(&mut self, path: &str) -> Response {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes())
    }

    pub fn try_read_response(&mut self) -> Result<Response, ReadError> {
        let mut body = Vec::new();
        let mut resp = read_response_from(&mut self.r, false, &mut |c| body.extend_from_slice(c))?;
        resp.body = body;
        Ok(resp)
    }

    /// Reads until the server closes: Ok(()) for a clean TLS close
    /// (close_notify), Err with what happened otherwise.
    pub fn read_to_close(&mut self) -> Result<Vec<u8>, io::Error> {
        let mut all = Vec::new();
        io::Read::read_to_end(&mut self.r, &mut all).map(|_| all)
    }
}

// === impl TlsBackend ===

/// Makes the raw HTTP/1.1 response to one request (its head and body). It
/// runs on the connection's own thread, so it may sleep to answer slowly.
pub type TlsHandler = Arc<dyn Fn(&BackendRequest, &[u8]) -> Vec<u8> + Send + Sync>;

/// An HTTPS backend: by default replies to every request with 200 and an
/// `Echo` body (request line, headers, blank line, body), like
/// `Reply::Echo`; [`TlsBackend::start_with`] takes another [`TlsHandler`].
/// It keeps connections alive and records the SNI of each handshake.
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub sni: Arc<Mutex<Vec<Option<String>>>>,
    /// Handshakes that failed (e.g. the gateway refused our certificate).
    pub failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TlsBackend {
    pub fn start(leaf: &Leaf) -> TlsBackend {
        TlsBackend::start_with(leaf, Arc::new(echo_response))
    }

    /// Like [`TlsBackend::start`], answering with `handler`.
    pub fn start_with(leaf: &Leaf, handler: TlsHandler) -> TlsBackend {
        let config = Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(leaf.chain.clone(), leaf.key())
                .expect("backend cert"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tls backend");
        let addr = listener.local_addr().expect("addr");
        let b = TlsBackend {
            addr,
            conns: Arc::default(),
            requests: Arc::default(),
            sni: Arc::default(),
            failed: Arc::default(),
            stop: Arc::default(),
        };
        let (conns, requests, sni, failed, stop) = (
            b.conns.clone(),
            b.requests.clone(),
            b.sni.clone(),
            b.failed.clone(),
            b.stop.clone(),
        );
        thread::spawn(move || {
            for sock in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(sock) = sock else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                let (config, requests, sni, failed, handler) = (
                    config.clone(),
                    requests.clone(),
                    sni.clone(),
                    failed.clone(),
                    handler.clone(),
                );
                thread::spawn(move || {
                    if serve_tls(sock, config, &requests, &sni, &*handler).is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        b
    }

    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn snis(&self) -> Vec<Option<String>> {
        self.sni.lock().unwrap().clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Serves one connection; an error means the handshake failed.
fn serve_tls(
    sock: TcpStream,
    config: Arc<ServerConfig>,
    requests: &AtomicUsize,
    sni: &Mutex<Vec<Option<String>>>,
    handler: &(dyn Fn(&BackendRequest, &[u8]) -> Vec<u8> + Send + Sync),
) -> io::Result<()> {
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let conn = rustls::ServerConnection::new(config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    sni.lock()
        .unwrap()
        .push(s.conn.server_name().map(str::to_string));
    let mut r = BufReader::new(s);
    loop {
        let Ok(head) = read_head(&mut r, 1 << 20) else {
            return Ok(());
        };
        let Some(req) = crate::support::parse_backend_request(&head) else {
            return Ok(());
        };
        let mut body = Vec::new();
        let framed = if req
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            read_chunked(&mut r, &mut |c| body.extend_from_slice(c)).map(|_| ())
        } else if let Some(n) = req.header("content-length").and_then(|v| v.parse().ok()) {
            read_exact_to(&mut r, n, &mut |c| body.extend_from_slice(c))
        } else {
            Ok(())
        };
        if framed.is_err() {
            return Ok(());
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let out = handler(&req, &body);
        let w = r.get_mut();
        if w.write_all(&out).and_then(|_| w.flush()).is_err() {
            return Ok(());
        }
    }
}

/// The default [`TlsHandler`]: 200 with an `Echo` body.
fn echo_response(req: &BackendRequest, body: &[u8]) -> Vec<u8> {
    let mut echo = format!("{} {} HTTP/1.{}\n", req.method, req.target, req.minor).into_bytes();
    for (n, v) in &req.headers {
        echo.extend_from_slice(format!("{n}: {v}\n").as_bytes());
    }
    echo.push(b'\n');
    echo.extend_from_slice(body);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-echo-body-len: {}\r\ncontent-length: {}\r\n\r\n",
        body.len(),
        echo.len()
    )
    .into_bytes();
    out.extend_from_slice(&echo);
    out
}

/// A one-shard gateway with a plain and a TLS listener (a leaf for
/// `localhost` from a fresh test CA) proxying every path to `backend`, and
/// a TLS client that trusts that CA, connected to the TLS listener. Keep
/// the `Pki` as long as the gateway runs: its files are the certificate.
pub fn tls_proxy(backend: &str) -> (crate::support::Gateway, TlsClient, Pki) {
    let pki = Pki::new();
    let ca = pki.ca("proxy ca");
    let leaf = pki.server(&ca, "proxy", &["localhost"]);
    let gw = crate::support::Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[server.tls]
listen = ["127.0.0.1:0"]

[[server.tls.certificates]]
cert = {:?}
key = {:?}

[[upstreams]]
name = "b"
targets = [{{ address = "{backend}" }}]

[[apis]]
name = "main"
[[apis.routes]]
key = "ANY /{{proxy+}}"
integration = {{ type = "http_proxy", url = "http://b" }}
"#,
        leaf.cert_path, leaf.key_path
    ));
    let cfg = client_config(&ClientOpts {
        roots: vec![&ca],
        ..ClientOpts::default()
    });
    let tls = TlsClient::connect(gw.tls_addr(), "localhost", cfg).unwrap();
    (gw, tls, pki)
}
