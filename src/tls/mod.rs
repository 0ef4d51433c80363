//! TLS (rustls, ring provider): where a TLS connection's journey starts and
//! ends.
//!
//! - On the client side, `[server.tls]` compiles into a [`ServerTlsPlan`]:
//!   certificates chosen by SNI ([`SniResolver`]), TLS 1.2 and 1.3, ALPN
//!   `http/1.1`, optional client certificates verified against a CA bundle.
//!   A shard accepts on the TLS listen addresses, runs the handshake within
//!   `header_read_timeout_ms`, then hands a [`stream::ClientStream`] to the
//!   same connection loop plain connections use.
//! - On the upstream side, an `https://` integration URL gives its upstream
//!   an [`UpstreamTls`]: roots (the system's, or the upstream's `tls_ca`)
//!   and the name each target is verified against and sent as SNI.
//!
//! Everything here is compiled once into the plan and is immutable. Each
//! shard takes its own copy of a rustls config with its own session cache
//! ([`ServerTlsPlan::shard_config`], [`UpstreamTls::shard_connector`]), so
//! shards share no session state. The one exception is the session-ticket
//! key: a client that resumes lands on any shard (SO_REUSEPORT spreads
//! connections), so every shard must decrypt every ticket. rustls' ticket
//! rotator is shared for that; it is touched once per handshake, never per
//! request.

pub mod stream;
pub mod x509;

pub use crate::config::raw::tls::{RawCertificate, RawServerTls};
use crate::config::ConfigError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const DEFAULT_TLS_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_MIN_VERSION: &str = "1.2";
pub const DEFAULT_CLIENT_AUTH: &str = "none";
/// TLS 1.2 session-id resumption cache per shard (TLS 1.3 and ticket-capable
/// TLS 1.2 clients resume with tickets, which need no cache).
pub const SESSION_CACHE_PER_SHARD: usize = 256;
/// Upstream sessions remembered per shard for resumption.
pub const UPSTREAM_SESSIONS_PER_SHARD: usize = 256;
/// The application protocol offered to upstreams and preferred from clients.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// Also accepted from clients of the traffic listeners, which serve
/// HTTP/1.0 requests too (`curl --http1.0` offers only this), after
/// `http/1.1`.
pub const ALPN_HTTP10: &[u8] = b"http/1.0";

// === raw config ===

// === compiled plan ===

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// The compiled `[server.tls]`.
#[derive(Debug, Clone)]
pub struct ServerTlsPlan {
    pub listen: Vec<SocketAddr>,
    pub client_auth: ClientAuth,
    /// Built once to check it; each shard serves a copy
    /// ([`Self::shard_config`]).
    config: Arc<ServerConfig>,
    /// The certificate choice inside `config`, kept to be inspected.
    pub resolver: Arc<SniResolver>,
}

impl ServerTlsPlan {
    /// A copy of the config with a session cache of the calling shard's
    /// own. The certificates, the verifier and the ticket key are shared
    /// (immutable, or in the ticket key's case meant to be shared).
    pub fn shard_config(&self) -> Arc<ServerConfig> {
        let mut c = (*self.config).clone();
        c.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_PER_SHARD);
        Arc::new(c)
    }
}

/// TLS towards an upstream reached with `https://`.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    /// Per target: the name its certificate must carry, sent as SNI.
    pub server_names: Vec<ServerName<'static>>,
}

impl UpstreamTls {
    /// A connector for one shard, with its own resumption store.
    pub fn shard_connector(&self) -> futures_rustls::TlsConnector {
        let mut c = (*self.config).clone();
        c.resumption = rustls::client::Resumption::in_memory_sessions(UPSTREAM_SESSIONS_PER_SHARD);
        futures_rustls::TlsConnector::from(Arc::new(c))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === certificate choice by SNI ===

/// Picks the certificate for a handshake: an exact server name, then a
/// `*.` wildcard one label deep, then the first certificate (also for a
/// client that sends no SNI).
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    /// Lower-case names (`api.example.com`, `*.example.com`) to an index
    /// into `certs`.
    names: HashMap<String, usize>,
}

impl SniResolver {
    /// The leaf certificate served for `sni` (DER).
    pub fn leaf_for(&self, sni: Option<&str>) -> Option<&[u8]> {
        self.certs
            .get(self.pick(sni))
            .and_then(|c| c.cert.first())
            .map(|c| c.as_ref())
    }

    /// The index of the certificate served for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else { return 0 };
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.names.get(&name) {
            return i;
        }
        match name.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => {
                self.names.get(&format!("*.{parent}")).copied().unwrap_or(0)
            }
            _ => 0,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.pick(hello.server_name())).cloned()
    }
}

// === PEM files ===

/// A config path: relative ones are taken from the config file's directory.
pub fn resolve_path(file: &str, base_dir: Option<&Path>) -> PathBuf {
    crate::config::resolve_path(file, base_dir)
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    crate::config::read_file(path).map_err(|e| {
        format!(
            "cannot read {} ({e}); a relative path is taken from the config file's directory",
            path.display()
        )
    })
}

/// Every certificate in a PEM file; an error if it holds none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)",
            path.display()
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no PEM private key (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
            path.display()
        ),
        e => format!("{}: invalid PEM ({e})", path.display()),
    })
}

/// A CA bundle as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (i, c) in load_certs(path)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            format!(
                "{}: certificate {} cannot be a trust anchor ({e})",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(roots)
}

/// A server name as `server_names` may list it: a DNS name, optionally
/// starting with `*.`.
fn valid_server_name(n: &str) -> bool {
    let body = n.strip_prefix("*.").unwrap_or(n);
    !body.is_empty()
        && !body.starts_with('.')
        && !body.ends_with('.')
        && !body.contains("..")
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

// === [server.tls] ===

/// Compiles `[server.tls]`. `plain` are the plain listen addresses, which
/// the TLS ones may not repeat.
pub fn compile_server(
    raw: &RawServerTls,
    base_dir: Option<&Path>,
    plain: &[SocketAddr],
    errors: &mut Vec<ConfigError>,
) -> Option<ServerTlsPlan> {
    let before = errors.len();
    let listen_raw = raw
        .listen
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_TLS_LISTEN.to_string()]);
    if listen_raw.is_empty() {
        errors.push(ConfigError::new(
            "server.tls.listen",
            "must name at least one address, or leave [server.tls] out",
        ));
    }
    let mut listen = Vec::new();
    for (i, a) in listen_raw.iter().enumerate() {
        let key = format!("server.tls.listen[{i}]");
        match a.parse::<SocketAddr>() {
            Ok(addr) => {
                if listen.contains(&addr) {
                    errors.push(ConfigError::new(key, format!("{a:?} is listed twice")));
                } else if addr.port() != 0 && plain.contains(&addr) {
                    errors.push(ConfigError::new(
                        key,
                        format!("{a:?} is also in server.listen; an address serves either plain HTTP or TLS"),
                    ));
                }
                listen.push(addr);
            }
            Err(_) => errors.push(ConfigError::new(
                key,
                format!(
                    "{a:?} is not an IP:port address (e.g. \"0.0.0.0:8443\" or \"[::1]:8443\")"
                ),
            )),
        }
    }

    let versions: &[&'static rustls::SupportedProtocolVersion] =
        match raw.min_version.as_deref().unwrap_or(DEFAULT_MIN_VERSION) {
            "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
            "1.3" => &[&rustls::version::TLS13],
            other => {
                errors.push(ConfigError::new(
                    "server.tls.min_version",
                    format!("{other:?} is not \"1.2\" or \"1.3\""),
                ));
                &[&rustls::version::TLS13]
            }
        };

    let client_auth = match raw.client_auth.as_deref().unwrap_or(DEFAULT_CLIENT_AUTH) {
        "none" => ClientAuth::None,
        "optional" => ClientAuth::Optional,
        "required" => ClientAuth::Required,
        other => {
            errors.push(ConfigError::new(
                "server.tls.client_auth",
                format!("{other:?} is not one of \"none\", \"optional\", \"required\""),
            ));
            ClientAuth::Required
        }
    };
    let client_roots = match (&raw.client_ca, client_auth) {
        (None, ClientAuth::None) => None,
        (None, mode) => {
            errors.push(ConfigError::new(
                "server.tls.client_ca",
                format!(
                    "client_auth = {:?} needs the CAs client certificates are checked against: set client_ca = \"path/to/ca.pem\"",
                    if mode == ClientAuth::Optional { "optional" } else { "required" }
                ),
            ));
            None
        }
        (Some(_), ClientAuth::None) => {
            errors.push(ConfigError::new(
                "server.tls.client_auth",
                "client_ca is set but client_auth is \"none\" (its default): set client_auth = \"required\" or \"optional\", or remove client_ca",
            ));
            None
        }
        (Some(file), _) => match load_roots(&resolve_path(file, base_dir)) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                errors.push(ConfigError::new("server.tls.client_ca", e));
                None
            }
        },
    };

    let provider = provider();
    if raw.certificates.is_empty() {
        errors.push(ConfigError::new(
            "server.tls.certificates",
            "must list at least one [[server.tls.certificates]] with cert and key",
        ));
    }
    let mut certs = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, c) in raw.certificates.iter().enumerate() {
        let key = format!("server.tls.certificates[{i}]");
        let cert_path = resolve_path(&c.cert, base_dir);
        let key_path = resolve_path(&c.key, base_dir);
        let chain = match load_certs(&cert_path) {
            Ok(chain) => chain,
            Err(e) => {
                errors.push(ConfigError::new(format!("{key}.cert"), e));
                continue;
            }
        };
        let private = match load_key(&key_path) {
            Ok(k) => k,
            Err(e) => {
                errors.push(ConfigError::new(format!("{key}.key"), e));
                continue;
            }
        };
        let leaf = chain[0].clone();
        let signing = match provider.key_provider.load_private_key(private) {
            Ok(s) => s,
            Err(e) => {
                errors.push(ConfigError::new(
                    format!("{key}.key"),
                    format!(
                        "{}: unsupported private key ({e}); RSA, ECDSA P-256/P-384 and Ed25519 keys are supported",
                        key_path.display()
                    ),
                ));
                continue;
            }
        };
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                errors.push(ConfigError::new(
                    format!("{key}.key"),
                    format!(
                        "{} does not match the certificate in {} (their public keys differ)",
                        key_path.display(),
                        cert_path.display()
                    ),
                ));
                continue;
            }
            Err(e) => {
                errors.push(ConfigError::new(
                    format!("{key}.cert"),
                    format!(
                        "{}: the certificate cannot be read ({e})",
                        cert_path.display()
                    ),
                ));
                continue;
            }
        }
        let index = certs.len();
        match &c.server_names {
            Some(list) => {
                if list.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{key}.server_names"),
                        "must list at least one name, or be left out to use the certificate's DNS names",
                    ));
                }
                for (j, n) in list.iter().enumerate() {
                    let lower = n.to_ascii_lowercase();
                    if !valid_server_name(&lower) {
                        errors.push(ConfigError::new(
                            format!("{key}.server_names[{j}]"),
                            format!("{n:?} is not a DNS name (letters, digits, '-', '.', optionally starting with \"*.\")"),
                        ));
                    } else if let Some(&other) = names.get(&lower) {
                        errors.push(ConfigError::new(
                            format!("{key}.server_names[{j}]"),
                            format!("{n:?} is already served by server.tls.certificates[{other}]"),
                        ));
                    } else {
                        names.insert(lower, index);
                    }
                }
            }
            None => {
                let sans = x509::dns_names(&leaf);
                if sans.is_empty() && index > 0 {
                    errors.push(ConfigError::new(
                        format!("{key}.server_names"),
                        format!(
                            "{} has no DNS names, so no SNI could choose it: list server_names",
                            cert_path.display()
                        ),
                    ));
                }
                for n in sans {
                    // A name another certificate already claims stays with
                    // the first one.
                    names.entry(n).or_insert(index);
                }
            }
        }
        certs.push(Arc::new(certified));
    }
    if errors.len() > before {
        return None;
    }

    let builder = match ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
    {
        Ok(b) => b,
        Err(e) => {
            errors.push(ConfigError::new(
                "server.tls",
                format!("rustls refused the configuration: {e}"),
            ));
            return None;
        }
    };
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let vb = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let vb = if client_auth == ClientAuth::Optional {
                vb.allow_unauthenticated()
            } else {
                vb
            };
            match vb.build() {
                Ok(v) => builder.with_client_cert_verifier(v),
                Err(e) => {
                    errors.push(ConfigError::new(
                        "server.tls.client_ca",
                        format!("cannot verify client certificates with it: {e}"),
                    ));
                    return None;
                }
            }
        }
    };
    let resolver = Arc::new(SniResolver { certs, names });
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec(), ALPN_HTTP10.to_vec()];
    match rustls::crypto::ring::Ticketer::new() {
        Ok(t) => config.ticketer = t,
        Err(e) => {
            errors.push(ConfigError::new(
                "server.tls",
                format!("cannot make a session ticket key: {e}"),
            ));
            return None;
        }
    }
    Some(ServerTlsPlan {
        listen,
        client_auth,
        config: Arc::new(config),
        resolver,
    })
}

// === [admin.tls] ===

/// Compiles `[admin.tls]` into the admin listener's rustls config: one
/// certificate, TLS 1.2 and 1.3, ALPN `http/1.1`, and with `client_ca`,
/// client certificates required and verified against it
/// (`WebPkiClientVerifier`). Errors are named at `admin.tls.KEY`.
pub fn compile_admin(
    raw: &crate::config::raw::admin::RawAdminTls,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<ServerConfig>> {
    let provider = provider();
    let before = errors.len();
    let certs = load_certs(&resolve_path(&raw.certificate, base_dir))
        .map_err(|e| errors.push(ConfigError::new("admin.tls.certificate", e)))
        .ok();
    let key = load_key(&resolve_path(&raw.key, base_dir))
        .map_err(|e| errors.push(ConfigError::new("admin.tls.key", e)))
        .ok();
    let roots = raw.client_ca.as_ref().and_then(|ca| {
        load_roots(&resolve_path(ca, base_dir))
            .map_err(|e| errors.push(ConfigError::new("admin.tls.client_ca", e)))
            .ok()
    });
    if errors.len() > before {
        return None;
    }
    let (certs, key) = (certs?, key?);
    let builder = match ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(b) => b,
        Err(e) => {
            errors.push(ConfigError::new(
                "admin.tls",
                format!("rustls refused the configuration: {e}"),
            ));
            return None;
        }
    };
    let builder = match roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            match WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build() {
                Ok(v) => builder.with_client_cert_verifier(v),
                Err(e) => {
                    errors.push(ConfigError::new(
                        "admin.tls.client_ca",
                        format!("cannot verify client certificates with it: {e}"),
                    ));
                    return None;
                }
            }
        }
    };
    match builder.with_single_cert(certs, key) {
        Ok(mut config) => {
            config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
            Some(Arc::new(config))
        }
        Err(e) => {
            errors.push(ConfigError::new(
                "admin.tls.key",
                format!("does not go with admin.tls.certificate: {e}"),
            ));
            None
        }
    }
}

// === https:// upstreams ===

/// The host part of `host[:port]`, `[v6]:port` or a bare name.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Builds upstream TLS while routes compile: the system roots are loaded
/// once, and only if some https:// upstream has no `tls_ca`; an upstream
/// is reached either with http:// or with https://, never both.
#[derive(Default)]
pub struct UpstreamTlsBuilder {
    system_roots: Option<Result<Arc<RootCertStore>, String>>,
    /// Per upstream index: reached with https (true) or http (false).
    reached: HashMap<usize, bool>,
}

impl UpstreamTlsBuilder {
    fn system_roots(&mut self) -> Result<Arc<RootCertStore>, String> {
        self.system_roots
            .get_or_insert_with(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                    return Err(format!(
                        "no system root certificates could be loaded{}; install the ca-certificates package, point SSL_CERT_FILE at a bundle, or declare the upstream with tls_ca",
                        if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
                    ));
                }
                Ok(Arc::new(roots))
            })
            .clone()
    }

    /// Notes that a route reaches `up` (index `index`) with `https` or not,
    /// and gives it its TLS settings the first time it is reached with
    /// https://. Errors go to `ukey` (the route's integration.url).
    pub fn reach(
        &mut self,
        up: ReachedUpstream<'_>,
        index: usize,
        https: bool,
        url: &str,
        ukey: &str,
        errors: &mut Vec<ConfigError>,
    ) {
        match self.reached.get(&index) {
            Some(&before) if before != https => {
                errors.push(ConfigError::new(
                    ukey,
                    format!(
                        "{url:?}: another route reaches upstream {:?} with {}; an upstream is either plain HTTP or TLS: declare two upstreams",
                        up.name,
                        if before { "https://" } else { "http://" }
                    ),
                ));
                return;
            }
            Some(_) => return,
            None => {
                self.reached.insert(index, https);
            }
        }
        if !https {
            if up.tls_ca.is_some() {
                errors.push(ConfigError::new(
                    ukey,
                    format!(
                        "{url:?}: upstream {:?} has tls_ca set, so it is reached with https://",
                        up.name
                    ),
                ));
            }
            return;
        }
        let roots = match &up.tls_ca {
            Some(r) => Arc::clone(r),
            None => match self.system_roots() {
                Ok(r) => r,
                Err(e) => {
                    errors.push(ConfigError::new(ukey, format!("{url:?}: {e}")));
                    return;
                }
            },
        };
        let mut server_names = Vec::new();
        for label in &up.target_labels {
            let name = host_part(up.host.unwrap_or(label));
            match ServerName::try_from(name.to_string()) {
                Ok(n) => server_names.push(n),
                Err(_) => {
                    errors.push(ConfigError::new(
                        ukey,
                        format!(
                            "{url:?}: {name:?} (the upstream's Host) is not a name TLS can verify: a DNS name or an IP address"
                        ),
                    ));
                    return;
                }
            }
        }
        let config = match ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        {
            Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
            Err(e) => {
                errors.push(ConfigError::new(
                    ukey,
                    format!("rustls refused the configuration: {e}"),
                ));
                return;
            }
        };
        let mut config = config;
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        *up.tls = Some(UpstreamTls {
            config: Arc::new(config),
            server_names,
        });
    }
}

/// What [`UpstreamTlsBuilder::reach`] reads and sets of an upstream's plan.
pub struct ReachedUpstream<'a> {
    pub name: &'a str,
    /// The Host header sent upstream, when set; else each target's label.
    pub host: Option<&'a str>,
    pub target_labels: Vec<&'a str>,
    pub tls_ca: Option<&'a Arc<RootCertStore>>,
    /// Set to the upstream's client config when it is reached with https://.
    pub tls: &'a mut Option<UpstreamTls>,
}

/// Loads a declared upstream's `tls_ca`.
pub fn compile_upstream_ca(
    file: Option<&str>,
    base_dir: Option<&Path>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<RootCertStore>> {
    let file = file?;
    match load_roots(&resolve_path(file, base_dir)) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            errors.push(ConfigError::new(format!("{key}.tls_ca"), e));
            None
        }
    }
}

#[cfg(test)]
mod tests;
