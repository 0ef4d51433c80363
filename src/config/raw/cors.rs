//! `cors` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;

/// `cors = { ... }` on an API. Every list defaults to empty, `max_age` to
/// absent (no `Access-Control-Max-Age`: the browser's own default, 5 s) and
/// `allow_credentials` to false.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawCors {
    /// Origins allowed to call: `scheme://host[:port]` exactly, `scheme://*`
    /// (any origin of that scheme), or `*` (any origin). Required.
    pub allow_origins: Option<Vec<String>>,
    /// Methods a preflight may ask for, or `*`.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for (case-insensitive), or `*`.
    pub allow_headers: Option<Vec<String>>,
    /// Response headers the browser lets scripts read, or `*`.
    pub expose_headers: Option<Vec<String>>,
    /// Seconds a browser may cache a preflight answer, 0 to 86400.
    pub max_age: Option<i64>,
    /// Whether credentialed requests (cookies, `Authorization`) are allowed.
    pub allow_credentials: Option<bool>,
}
