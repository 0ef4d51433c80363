//! `usage` as written in the config file: shape and serde defaults only;
//! the policy compiles and checks it.

use super::throttle::RawRate;
use serde::Deserialize;

/// `[[usage_plans]]` as written.
#[derive(Debug, Deserialize)]
pub struct RawUsagePlan {
    pub name: String,
    /// Names of the `[[apis]]` the plan covers (API Gateway's API stages).
    pub apis: Option<Vec<String>>,
    /// One bucket per API key: `{ rate, burst }`.
    pub throttle: Option<RawRate>,
    pub quota: Option<RawQuota>,
    /// Per-route buckets that replace `throttle` on those routes.
    #[serde(default)]
    pub routes: Vec<RawPlanRoute>,
}

/// `quota = { limit, period, offset }`.
#[derive(Debug, Deserialize)]
pub struct RawQuota {
    pub limit: Option<u64>,
    pub period: Option<String>,
    pub offset: Option<u64>,
}

/// `[[usage_plans.routes]]`.
#[derive(Debug, Deserialize)]
pub struct RawPlanRoute {
    pub api: String,
    /// The route's key as written in its `[[apis.routes]]` entry.
    pub route: String,
    pub throttle: Option<RawRate>,
}
