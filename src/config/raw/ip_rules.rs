//! `ip_rules` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use serde::Deserialize;

/// `ip_rules = { ... }` on an API or a route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawIpRules {
    /// CIDRs (or single addresses) that may call. Absent: every address not
    /// denied may call.
    pub allow: Option<Vec<String>>,
    /// CIDRs (or single addresses) that may not call, whatever `allow` says.
    pub deny: Option<Vec<String>>,
}
