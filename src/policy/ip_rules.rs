//! IP allow and deny lists by CIDR, per API or route: the first policy phase.
//! (Not implemented yet: configuring it is refused, never ignored.)

use crate::config::ConfigError;
use serde::Deserialize;
use std::net::IpAddr;

/// `ip_rules = { ... }` on an API or a route.
#[derive(Debug, Clone, Deserialize)]
pub struct RawIpRules {}

#[derive(Debug, Clone)]
pub struct IpRules {}

impl IpRules {
    pub fn allows(&self, _ip: IpAddr) -> bool {
        true
    }
}

pub fn compile(
    api: Option<&RawIpRules>,
    route: Option<&RawIpRules>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<IpRules> {
    if api.is_some() || route.is_some() {
        errors.push(ConfigError::new(
            format!("{key}.ip_rules"),
            "is not supported yet",
        ));
    }
    None
}
