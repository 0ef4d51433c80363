//! Usage plans: per-API-key throttling and durable request quotas, as in
//! Amazon API Gateway.
//!
//! A plan (`[[usage_plans]]`) names the APIs it covers, a token bucket per
//! API key (`throttle`, optionally per route in `[[usage_plans.routes]]`)
//! and a quota (`quota = { limit, period, offset }`). API keys name their
//! plan (`usage_plan`). A request authenticated by a key whose plan does not
//! cover the route's API is refused 403; over the key's bucket, 429 "Too
//! Many Requests" (the throttle module checks it before the route's
//! buckets); over its quota, 429 "Limit Exceeded".
//!
//! Quotas hold for the whole process with the same lease idea as throttling
//! ([`shard::ShardUsage`] spends what its shard holds, [`coordinator`]
//! leases), and are durable: the coordinator records every key's requests
//! per UTC day in [`store::Store`] and flushes each `usage_flush_interval_ms`.
//! docs/usage-plans.md has the algorithm and its bounds.

pub mod clock;
pub mod coordinator;
pub mod shard;
pub mod store;

#[cfg(test)]
mod tests;

pub use crate::config::raw::usage::{RawPlanRoute, RawQuota, RawUsagePlan};
use crate::config::ConfigError;
use crate::policy::throttle::{self};
use clock::Period;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1_000;
pub const MIN_FLUSH_INTERVAL_MS: u64 = 10;
pub const MAX_FLUSH_INTERVAL_MS: u64 = 60_000;
/// Largest quota `limit`.
pub const MAX_QUOTA: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub period: Period,
    /// Requests taken off `limit` in the plan's first period.
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct UsagePlan {
    pub name: String,
    /// Indices of the APIs covered.
    pub apis: Vec<usize>,
    /// The per-key bucket (throttle definition id).
    pub key_bucket: Option<u32>,
    /// (route id, bucket) for routes with a bucket of their own.
    pub route_buckets: Vec<(usize, u32)>,
    pub quota: Option<Quota>,
}

/// What a key's plan says about one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// The key has no plan: no limits (see docs/usage-plans.md).
    NoPlan,
    /// The plan does not cover the route's API: 403.
    NotCovered,
    Covered {
        plan: u32,
        bucket: Option<u32>,
    },
}

/// Everything about usage plans the shards share, compiled.
#[derive(Debug, Clone, Default)]
pub struct UsagePlans {
    pub plans: Vec<UsagePlan>,
    /// The API of each route, by route id.
    pub route_api: Vec<u32>,
    /// Each key's plan, by key id.
    pub key_plan: Vec<Option<u32>>,
    /// Each key's stable id and name (the store records usage by id).
    pub key_ids: Vec<String>,
    pub key_names: Vec<String>,
    /// Where the usage store lives; None: usage is not recorded.
    pub data_dir: Option<PathBuf>,
    pub flush_interval: Duration,
}

impl UsagePlans {
    /// Whether usage state made for `self` (shard counters and leases, the
    /// coordinator's) is right for `other`: the same keys in the same
    /// order, each on the same plan with the same name and quota, and the
    /// same store; or neither counts anything. Which APIs and routes a plan
    /// covers, and its buckets, may differ: the shards read those from the
    /// plan a request runs on.
    pub fn same_state(&self, other: &UsagePlans) -> bool {
        if !self.active() && !other.active() {
            // Nothing is counted on either side.
            return true;
        }
        self.key_ids.len() == other.key_ids.len() && self.extends_to(other)
    }

    /// Whether usage state made for `self` can take in `other`
    /// ([`shard::ShardUsage::adopt`]): the same state, or `other`'s keys
    /// are `self`'s followed by new ones (keys added at the end of the
    /// keys file or the config), with the same plans and store.
    pub fn extends_to(&self, other: &UsagePlans) -> bool {
        let n = self.key_ids.len();
        let quotas = |p: &UsagePlans| {
            p.plans
                .iter()
                .map(|u| (u.name.clone(), u.quota))
                .collect::<Vec<_>>()
        };
        other.key_ids.len() >= n
            && other.key_plan.len() == other.key_ids.len()
            && self.key_plan.len() == n
            && other.key_ids[..n] == self.key_ids[..]
            && other.key_plan[..n] == self.key_plan[..]
            && self.data_dir == other.data_dir
            && self.flush_interval == other.flush_interval
            && quotas(self) == quotas(other)
    }

    /// True when requests with keys need counting (a store, or plans).
    pub fn active(&self) -> bool {
        self.data_dir.is_some() || !self.plans.is_empty()
    }

    pub fn coverage(&self, key: u32, route: usize) -> Coverage {
        let Some(Some(p)) = self.key_plan.get(key as usize) else {
            return Coverage::NoPlan;
        };
        let Some(plan) = self.plans.get(*p as usize) else {
            return Coverage::NoPlan;
        };
        let Some(api) = self.route_api.get(route) else {
            return Coverage::NotCovered;
        };
        if !plan.apis.contains(&(*api as usize)) {
            return Coverage::NotCovered;
        }
        let bucket = plan
            .route_buckets
            .iter()
            .find(|(r, _)| *r == route)
            .map(|(_, b)| *b)
            .or(plan.key_bucket);
        Coverage::Covered { plan: *p, bucket }
    }

    /// The quota of a key's plan.
    pub fn quota_of(&self, key: u32) -> Option<Quota> {
        let p = (*self.key_plan.get(key as usize)?)?;
        self.plans.get(p as usize)?.quota
    }
}

/// A plan's per-route bucket while routes compile: (api name, route key,
/// bucket, config path, matched by a route).
type PendingRoute = (String, String, u32, String, bool);

/// Builds [`UsagePlans`] while the config compiles.
#[derive(Default)]
pub struct Builder {
    plans: Vec<UsagePlan>,
    /// Per plan: (api name, route key, bucket, config path, matched).
    pending_routes: Vec<Vec<PendingRoute>>,
    plan_apis: Vec<Vec<String>>,
    route_api: Vec<u32>,
    data_dir: Option<PathBuf>,
    flush_interval: Duration,
}

/// Route keys compare with runs of blanks collapsed: `GET  /x` is `GET /x`.
fn norm_key(k: &str) -> String {
    k.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Builder {
    /// Compiles `[[usage_plans]]` and the server's usage settings; bucket
    /// definitions go to the throttle builder.
    pub fn new(
        raw: &crate::config::raw::RawConfig,
        throttle: &mut throttle::Builder,
        errors: &mut Vec<ConfigError>,
    ) -> Builder {
        let mut b = Builder {
            flush_interval: Duration::from_millis(DEFAULT_FLUSH_INTERVAL_MS),
            ..Builder::default()
        };
        if let Some(ms) = raw.server.usage_flush_interval_ms {
            if (MIN_FLUSH_INTERVAL_MS..=MAX_FLUSH_INTERVAL_MS).contains(&ms) {
                b.flush_interval = Duration::from_millis(ms);
            } else {
                errors.push(ConfigError::new(
                    "server.usage_flush_interval_ms",
                    format!("{ms} is out of range: give {MIN_FLUSH_INTERVAL_MS} to {MAX_FLUSH_INTERVAL_MS} milliseconds"),
                ));
            }
        }
        if let Some(d) = &raw.server.data_dir {
            if d.is_empty() {
                errors.push(ConfigError::new(
                    "server.data_dir",
                    "must not be empty; leave it out to record no usage",
                ));
            } else {
                b.data_dir = Some(crate::policy::api_key::resolve_path(
                    d,
                    raw.base_dir.as_deref(),
                ));
            }
        }
        for (i, p) in raw.usage_plans.iter().enumerate() {
            let key = format!("usage_plans[{i}]");
            if !crate::policy::api_key::valid_name(&p.name) {
                errors.push(ConfigError::new(
                    format!("{key}.name"),
                    format!(
                        "{:?} must be 1 to {} letters, digits or '-', '_', '.', '@', ':'",
                        p.name,
                        crate::policy::api_key::MAX_NAME_LEN
                    ),
                ));
            } else if b.plans.iter().any(|o| o.name == p.name) {
                errors.push(ConfigError::new(
                    format!("{key}.name"),
                    format!("usage plan {:?} is defined twice", p.name),
                ));
            }
            let apis = match &p.apis {
                Some(a) if !a.is_empty() => a.clone(),
                _ => {
                    errors.push(ConfigError::new(
                        format!("{key}.apis"),
                        "must name at least one [[apis]] entry the plan covers",
                    ));
                    Vec::new()
                }
            };
            for (ai, a) in apis.iter().enumerate() {
                if !raw.apis.iter().any(|x| &x.name == a) {
                    errors.push(ConfigError::new(
                        format!("{key}.apis[{ai}]"),
                        format!("no [[apis]] entry is named {a:?}"),
                    ));
                }
            }
            let key_bucket = p.throttle.as_ref().and_then(|t| {
                let tkey = format!("{key}.throttle");
                throttle::Builder::plan_rate(t, &tkey, errors)
                    .map(|(rate, burst)| throttle.key_bucket(tkey, rate, burst))
            });
            let quota = p
                .quota
                .as_ref()
                .and_then(|q| compile_quota(q, &format!("{key}.quota"), errors));
            let mut routes = Vec::new();
            for (ri, r) in p.routes.iter().enumerate() {
                let rkey = format!("{key}.routes[{ri}]");
                if !apis.contains(&r.api) {
                    errors.push(ConfigError::new(
                        format!("{rkey}.api"),
                        format!("{:?} is not one of the plan's apis", r.api),
                    ));
                    continue;
                }
                let Some(t) = &r.throttle else {
                    errors.push(ConfigError::new(
                        format!("{rkey}.throttle"),
                        "is missing: give throttle = { rate, burst } for this route",
                    ));
                    continue;
                };
                let tkey = format!("{rkey}.throttle");
                if let Some((rate, burst)) = throttle::Builder::plan_rate(t, &tkey, errors) {
                    let id = throttle.key_bucket(tkey, rate, burst);
                    routes.push((r.api.clone(), norm_key(&r.route), id, rkey, false));
                }
            }
            b.plans.push(UsagePlan {
                name: p.name.clone(),
                apis: Vec::new(),
                key_bucket,
                route_buckets: Vec::new(),
                quota,
            });
            b.pending_routes.push(routes);
            b.plan_apis.push(apis);
        }
        if b.data_dir.is_none() && b.plans.iter().any(|p| p.quota.is_some()) {
            errors.push(ConfigError::new(
                "server.data_dir",
                "is required when a usage plan has a quota: quota counters are kept there",
            ));
        }
        b
    }

    /// Notes a compiled route: its API, and plan buckets naming it.
    pub fn route(&mut self, route_id: usize, api_index: usize, api_name: &str, route_key: &str) {
        if self.route_api.len() <= route_id {
            self.route_api.resize(route_id + 1, u32::MAX);
        }
        self.route_api[route_id] = api_index as u32;
        let k = norm_key(route_key);
        for (pi, plan) in self.plans.iter_mut().enumerate() {
            if self.plan_apis[pi].iter().any(|a| a == api_name) && !plan.apis.contains(&api_index) {
                plan.apis.push(api_index);
            }
            for r in &mut self.pending_routes[pi] {
                if r.0 == api_name && r.1 == k {
                    plan.route_buckets.push((route_id, r.2));
                    r.4 = true;
                }
            }
        }
    }

    /// Resolves keys to plans. Errors for plan routes that matched nothing
    /// and keys naming an undefined plan.
    pub fn finish(
        self,
        keys: &crate::policy::api_key::KeyStore,
        errors: &mut Vec<ConfigError>,
    ) -> UsagePlans {
        for routes in &self.pending_routes {
            for (api, route, _, rkey, matched) in routes {
                if !matched {
                    errors.push(ConfigError::new(
                        format!("{rkey}.route"),
                        format!("api {api:?} has no route with key {route:?}"),
                    ));
                }
            }
        }
        let mut key_plan = Vec::with_capacity(keys.len());
        let mut key_ids = Vec::with_capacity(keys.len());
        let mut key_names = Vec::with_capacity(keys.len());
        for id in 0..keys.len() as u32 {
            let Some(k) = keys.get(id) else { break };
            key_ids.push(k.id.clone());
            key_names.push(k.name.clone());
            let plan = match &k.usage_plan {
                None => None,
                Some(p) => match self.plans.iter().position(|x| &x.name == p) {
                    Some(i) => Some(i as u32),
                    None => {
                        errors.push(ConfigError::new(
                            "api_keys",
                            format!("key {:?} names usage plan {p:?}, which no [[usage_plans]] entry defines", k.name),
                        ));
                        None
                    }
                },
            };
            key_plan.push(plan);
        }
        UsagePlans {
            plans: self.plans,
            route_api: self.route_api,
            key_plan,
            key_ids,
            key_names,
            data_dir: self.data_dir,
            flush_interval: self.flush_interval,
        }
    }
}

fn compile_quota(q: &RawQuota, key: &str, errors: &mut Vec<ConfigError>) -> Option<Quota> {
    let before = errors.len();
    let limit = match q.limit {
        Some(l) if (1..=MAX_QUOTA).contains(&l) => l,
        Some(l) => {
            errors.push(ConfigError::new(
                format!("{key}.limit"),
                format!("{l} is not a valid limit: give a request count from 1 to {MAX_QUOTA}"),
            ));
            0
        }
        None => {
            errors.push(ConfigError::new(
                format!("{key}.limit"),
                "is missing: give the requests allowed per period",
            ));
            0
        }
    };
    let period = match q.period.as_deref().map(|p| (p, Period::parse(p))) {
        Some((_, Some(p))) => Some(p),
        Some((p, None)) => {
            errors.push(ConfigError::new(
                format!("{key}.period"),
                format!("{p:?} is not a period: give \"DAY\", \"WEEK\" or \"MONTH\""),
            ));
            None
        }
        None => {
            errors.push(ConfigError::new(
                format!("{key}.period"),
                "is missing: give \"DAY\", \"WEEK\" or \"MONTH\"",
            ));
            None
        }
    };
    let offset = q.offset.unwrap_or(0);
    if limit > 0 && offset >= limit {
        errors.push(ConfigError::new(
            format!("{key}.offset"),
            format!("{offset} must be less than the limit ({limit})"),
        ));
    }
    (errors.len() == before).then_some(Quota {
        limit,
        period: period?,
        offset,
    })
}
