//! `auth` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;

/// `[[authorizers]]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawAuthorizer {
    pub name: String,
    /// `[authorizers.jwt]`: a JWT authorizer (docs/jwt.md).
    pub jwt: Option<super::jwt::RawJwt>,
    /// `[authorizers.request]`: an authorizer service the gateway calls.
    pub request: Option<super::request_auth::RawRequestAuthorizer>,
    /// `[authorizers.sigv4]`: AWS Signature Version 4 (docs/sigv4.md).
    pub sigv4: Option<super::sigv4::RawSigv4>,
}
