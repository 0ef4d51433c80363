//! `sigv4` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;
use std::fmt;

/// `[authorizers.sigv4]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawSigv4 {
    /// The region clients sign for (required), e.g. `us-east-1`.
    pub region: Option<String>,
    /// The service clients sign for. Default: `execute-api`.
    pub service: Option<String>,
    /// Allowed clock difference in seconds. Default: 300.
    pub max_skew_s: Option<u64>,
    /// Largest body hashed for a signed payload. Default: 1 MiB.
    pub max_body_bytes: Option<u64>,
    /// A request header that carries the principal to the backend. Default:
    /// none (the principal is only recorded for later phases).
    pub principal_header: Option<String>,
    /// A file of `[[credentials]]`; relative to the config file's directory.
    pub credentials_file: Option<String>,
    /// Inline credentials.
    #[serde(default)]
    pub credentials: Vec<RawCredential>,
}

/// One credential, inline (`[[authorizers.sigv4.credentials]]`) or in a
/// credentials file (`[[credentials]]`).
#[derive(Default, Deserialize)]
pub struct RawCredential {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Who the key stands for (e.g. an IAM ARN).
    pub principal: Option<String>,
    /// Temporary credentials: requests must carry this token, signed.
    pub session_token: Option<String>,
}

impl fmt::Debug for RawCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCredential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("principal", &self.principal)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A credentials file: `[[credentials]]` entries.
#[derive(Debug, Default, Deserialize)]
pub struct RawCredentialsFile {
    #[serde(default)]
    pub credentials: Vec<RawCredential>,
}
