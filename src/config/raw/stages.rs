//! `[[apis.deployments]]` and `[[apis.stages]]` as written in the config
//! file: shape only. `plan::stages` checks them and expands each stage into
//! the routed set it serves (docs/stages.md).

use super::{access_log, cache, cors, ip_rules, lifecycle, throttle, RawRoute};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[[apis.deployments]]`: a named snapshot of an API's routes (with their
/// integrations and policies), and optionally of the API-level access
/// policies, which then replace the API's for this deployment.
#[derive(Debug, Clone, Deserialize)]
pub struct RawDeployment {
    pub name: String,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Replaces the API's `cors` for this deployment.
    pub cors: Option<cors::RawCors>,
    /// Replaces the API's `ip_rules` for this deployment.
    pub ip_rules: Option<ip_rules::RawIpRules>,
    /// Replaces the API's `api_key_required` for this deployment.
    pub api_key_required: Option<bool>,
    /// Replaces the API's `authorizer` for this deployment.
    pub authorizer: Option<String>,
    /// Replaces the API's `lifecycle` for this deployment: deprecated or
    /// retired (docs/lifecycle.md).
    pub lifecycle: Option<lifecycle::RawLifecycle>,
}

/// `[[apis.stages]]`: where a deployment is served (`<base path>/<name>`,
/// or the base path itself for `$default`), with its variables and its own
/// throttle, cache and access log.
#[derive(Debug, Clone, Deserialize)]
pub struct RawStage {
    pub name: String,
    /// The `[[apis.deployments]]` name this stage serves.
    pub deployment: String,
    /// Stage variables, `${stageVariables.NAME}` in integration URLs and
    /// mock bodies.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Replaces the API's `throttle` for this stage.
    pub throttle: Option<throttle::RawThrottle>,
    /// Replaces the API's `cache` for this stage.
    pub cache: Option<cache::RawCacheRule>,
    /// Replaces the API's `access_log` for this stage.
    pub access_log: Option<access_log::RawAccessLog>,
    /// `[apis.stages.canary]`: a second deployment taking part of the
    /// stage's traffic.
    pub canary: Option<RawCanary>,
    /// `[[policies]]` sets attached to the stage, by name; later ones win.
    pub policies: Option<Vec<String>>,
    /// What the stage's sets give it beyond `throttle` and `cache` (which
    /// they fill in the fields above), merged by `plan::policy_sets`
    /// before the stages are expanded: API-level settings that replace the
    /// API's and the deployment's, the API's mapping with the sets'
    /// entries over it, and the scopes routes without their own take.
    #[serde(skip)]
    pub from_sets: Option<Box<super::policy_set::RawPolicySet>>,
}

/// `[apis.stages.canary]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawCanary {
    pub deployment: String,
    /// Share of the stage's requests, 0 to 100 (fractions allowed).
    pub percent: f64,
    /// Stage variables that differ for the canary (added to or replacing
    /// the stage's).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Keep one client on one deployment. Default: none (each request is
    /// drawn at random).
    pub sticky: Option<RawSticky>,
}

/// `sticky = { header = "x-user" }`, `{ cookie = "session" }` or
/// `{ api_key = true }`: exactly one.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawSticky {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub api_key: Option<bool>,
}
