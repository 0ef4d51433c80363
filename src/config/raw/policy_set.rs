//! `[[policies]]` as written in the config file: a named set of policy
//! settings that APIs, stages and routes attach by name (`policies = ["name"]`).
//! `plan::policy_sets` merges each set into what attaches it, before the
//! plan is compiled.

use super::{cache, cors, ip_rules, mapping, throttle};
use serde::Deserialize;

/// One `[[policies]]` entry. Every setting means what it means on an API
/// or a route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawPolicySet {
    pub name: String,
    /// An `[[authorizers]]` name, or "none".
    pub authorizer: Option<String>,
    /// Scopes a JWT must grant.
    pub authorization_scopes: Option<Vec<String>>,
    /// Require an `x-api-key`.
    pub api_key_required: Option<bool>,
    pub throttle: Option<throttle::RawThrottle>,
    pub cache: Option<cache::RawCacheRule>,
    /// API-level only: a set with `cors` attaches to APIs.
    pub cors: Option<cors::RawCors>,
    pub ip_rules: Option<ip_rules::RawIpRules>,
    pub mapping: Option<mapping::RawMapping>,
}
