//! `throttle` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;

/// `throttle = { rate = R, burst = B, per_client_ip = { rate, burst } }` on
/// the server, an API or a route. `rate` and `burst` come together; either
/// pair may be left out, not both.
#[derive(Debug, Clone, Deserialize)]
pub struct RawThrottle {
    /// Steady rate, requests per second (integer or float).
    pub rate: Option<f64>,
    /// Bucket size: requests admitted at once after a quiet period.
    pub burst: Option<i64>,
    /// A bucket of its own for each client IP address.
    pub per_client_ip: Option<RawRate>,
}

/// `per_client_ip = { rate = R, burst = B }`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawRate {
    pub rate: Option<f64>,
    pub burst: Option<i64>,
}
