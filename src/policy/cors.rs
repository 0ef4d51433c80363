//! CORS per API: preflights answered by the gateway, CORS headers added to
//! actual responses. (Not implemented yet: configuring it is refused.)

use super::{Decision, RequestView};
use crate::config::ConfigError;
use serde::Deserialize;

/// `cors = { ... }` on an API.
#[derive(Debug, Clone, Deserialize)]
pub struct RawCors {}

#[derive(Debug, Clone)]
pub struct Cors {}

impl Cors {
    /// A preflight (`OPTIONS` with `Access-Control-Request-Method`) is
    /// answered here; anything else continues.
    pub fn preflight(&self, _view: &RequestView<'_>) -> Decision {
        Decision::Continue
    }

    /// Appends the CORS header lines for an actual response.
    pub fn response_headers(&self, _view: &RequestView<'_>, _extra: &mut Vec<u8>) {}
}

pub fn compile(api: Option<&RawCors>, key: &str, errors: &mut Vec<ConfigError>) -> Option<Cors> {
    if api.is_some() {
        errors.push(ConfigError::new(
            format!("{key}.cors"),
            "is not supported yet",
        ));
    }
    None
}
