//! `[admin]` as written in the config file: the admin listener that serves
//! `/metrics` and the dashboard. Shape and defaults only; `plan::admin`
//! checks it (a non-loopback address needs a token).

use serde::Deserialize;

/// Where the admin listener listens when `[admin]` does not say.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DEFAULT_ADMIN_ENABLED: bool = true;

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    /// `false` serves no admin listener at all.
    pub enabled: Option<bool>,
    /// `IP:port` of the admin listener; port 0 picks an ephemeral one.
    pub listen: Option<String>,
    /// A file holding the bearer token every admin request must carry.
    /// Required when `listen` is not a loopback address. A relative path
    /// is taken from the config file's directory.
    pub token_file: Option<String>,
    /// `[admin.tls]`: serve the admin listener over TLS, and with
    /// `client_ca`, only to clients with a certificate signed by it.
    pub tls: Option<RawAdminTls>,
}

/// `[admin.tls]`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct RawAdminTls {
    /// PEM certificate chain the admin listener presents.
    pub certificate: String,
    /// PEM private key of `certificate`.
    pub key: String,
    /// PEM CA bundle: when set, a client must present a certificate that
    /// chains to it (mutual TLS), and is named by its subject in the log.
    pub client_ca: Option<String>,
}
