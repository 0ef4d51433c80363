//! `tls` as written in the config file: shape and serde defaults only;
//! the layer above compiles and checks it.

use serde::Deserialize;

/// `[server.tls]`: HTTPS listeners.
#[derive(Debug, Default, Deserialize)]
pub struct RawServerTls {
    /// Addresses served with TLS (every shard binds each with SO_REUSEPORT).
    pub listen: Option<Vec<String>>,
    /// `[[server.tls.certificates]]`; the first is the default.
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// `"1.2"` or `"1.3"`.
    pub min_version: Option<String>,
    /// `"none"`, `"optional"` or `"required"`.
    pub client_auth: Option<String>,
    /// PEM bundle of the CAs client certificates must chain to.
    pub client_ca: Option<String>,
}

/// `[[server.tls.certificates]]`: a certificate chain and its key.
#[derive(Debug, Deserialize)]
pub struct RawCertificate {
    /// PEM: the leaf first, then intermediates.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
    /// SNI names this certificate answers; default: the certificate's DNS
    /// subjectAltNames.
    pub server_names: Option<Vec<String>>,
}
