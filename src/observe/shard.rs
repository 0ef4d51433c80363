//! One shard's counters. Everything is `Cell`s in fixed arrays, reached
//! through `Rc`s that a plan generation holds per route
//! ([`GenerationMetrics`]), so the exit records a request with a few
//! additions: no lock, no hash, no allocation.
//!
//! Series are kept by name (API and route key, upstream and target,
//! authorizer) in [`ShardMetrics`], which outlives generations: a new plan
//! that keeps a route keeps counting into the same series, and counters
//! never go back to zero while the process runs.

use super::bump;
use super::hist::Histogram;
use super::snapshot::{class_index, AuthorizerSnapshot, SeriesSnapshot, StatusLabel};
use crate::plan::Plan;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Distinct statuses one series counts exactly; further ones are counted
/// by class only (`status="other"`). Gateways answer with a handful.
pub const STATUS_SLOTS: usize = 16;
const EMPTY: u16 = u16::MAX;

/// Requests by exact status, in slots taken in order of first sight.
#[derive(Debug)]
pub struct StatusCounts {
    codes: [Cell<u16>; STATUS_SLOTS],
    counts: [Cell<u64>; STATUS_SLOTS],
    /// Statuses that found no free slot, by class.
    other: [Cell<u64>; 7],
}

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts {
            codes: std::array::from_fn(|_| Cell::new(EMPTY)),
            counts: Default::default(),
            other: Default::default(),
        }
    }
}

impl StatusCounts {
    #[inline]
    pub fn add(&self, status: u16) {
        for (code, count) in self.codes.iter().zip(&self.counts) {
            let c = code.get();
            if c == status {
                bump(count, 1);
                return;
            }
            if c == EMPTY {
                code.set(status);
                count.set(1);
                return;
            }
        }
        bump(&self.other[class_index(status)], 1);
    }

    pub fn snapshot(&self) -> Vec<(StatusLabel, u64)> {
        let mut out: Vec<(StatusLabel, u64)> = self
            .codes
            .iter()
            .zip(&self.counts)
            .take_while(|(c, _)| c.get() != EMPTY)
            .map(|(c, n)| (StatusLabel::Code(c.get()), n.get()))
            .collect();
        out.extend(
            self.other
                .iter()
                .enumerate()
                .filter(|(_, n)| n.get() > 0)
                .map(|(class, n)| (StatusLabel::Other(class as u8), n.get())),
        );
        out.sort_unstable_by_key(|(l, _)| *l);
        out
    }
}

/// What one API (or one route of an API with detailed metrics) counted.
#[derive(Debug, Default)]
pub struct RequestSeries {
    pub statuses: StatusCounts,
    /// From the parsed head to the last byte written (or the end, when the
    /// client went away).
    pub duration: Histogram,
    /// From the upstream connection being ready to the upstream's
    /// response head.
    pub integration: Histogram,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    cache_hits: Cell<u64>,
    cache_misses: Cell<u64>,
    throttled: Cell<u64>,
    quota_exceeded: Cell<u64>,
}

impl RequestSeries {
    /// Every finished request.
    #[inline]
    pub fn record(&self, status: u16, bytes_in: u64, bytes_out: u64, duration_us: u64) {
        self.statuses.add(status);
        self.duration.observe_us(duration_us);
        bump(&self.bytes_in, bytes_in);
        bump(&self.bytes_out, bytes_out);
    }

    #[inline]
    pub fn note_cache(&self, hit: bool) {
        bump(
            if hit {
                &self.cache_hits
            } else {
                &self.cache_misses
            },
            1,
        );
    }

    /// A 429 from the throttle phase.
    #[inline]
    pub fn note_throttled(&self) {
        bump(&self.throttled, 1);
    }

    /// A 429 from the API key's usage plan quota.
    #[inline]
    pub fn note_quota_exceeded(&self) {
        bump(&self.quota_exceeded, 1);
    }

    fn snapshot(&self, key: &SeriesKey) -> SeriesSnapshot {
        SeriesSnapshot {
            api: key.api.clone(),
            route: key.route.clone(),
            stage: key.stage.as_ref().map(|s| s.stage.clone()),
            deployment: key.stage.as_ref().map(|s| s.deployment.clone()),
            statuses: self.statuses.snapshot(),
            duration: self.duration.snapshot(),
            integration: self.integration.snapshot(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            cache_hits: self.cache_hits.get(),
            cache_misses: self.cache_misses.get(),
            throttled: self.throttled.get(),
            quota_exceeded: self.quota_exceeded.get(),
        }
    }
}

/// The labels of a request series: no API for requests no route took.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub api: Option<String>,
    pub route: Option<String>,
    /// The stage and deployment, for an API with stages: one series per
    /// stage and per canary, so their number is bounded by the config.
    pub stage: Option<StageLabels>,
}

/// A series' stage and deployment labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageLabels {
    pub stage: String,
    pub deployment: String,
}

impl StageLabels {
    fn of(tag: Option<&crate::plan::stages::StageTag>) -> Option<StageLabels> {
        tag.map(|t| StageLabels {
            stage: t.stage.clone(),
            deployment: t.deployment.clone(),
        })
    }
}

/// An upstream target's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetKey {
    upstream: String,
    target: String,
}

/// A shard's series by name, and what is counted outside requests.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    series: RefCell<Vec<(SeriesKey, Rc<RequestSeries>)>>,
    targets: RefCell<Vec<(TargetKey, Rc<Histogram>)>>,
    authorizers: RefCell<Vec<(String, Rc<StatusCounts>)>>,
    accepted: Cell<u64>,
    accepted_tls: Cell<u64>,
}

fn get_or_add<K: PartialEq + Clone, V: Default>(list: &mut Vec<(K, Rc<V>)>, key: &K) -> Rc<V> {
    if let Some((_, v)) = list.iter().find(|(k, _)| k == key) {
        return v.clone();
    }
    let v = Rc::new(V::default());
    list.push((key.clone(), v.clone()));
    v
}

impl ShardMetrics {
    /// The series a generation of `plan` records into, made where missing:
    /// one per route of an API with `detailed_metrics`, one per other API,
    /// one for requests no route took; a response-time histogram per
    /// upstream target; denial counts per authorizer.
    pub fn layout(&self, plan: &Plan) -> GenerationMetrics {
        let mut series = self.series.borrow_mut();
        let unrouted = get_or_add(
            &mut series,
            &SeriesKey {
                api: None,
                route: None,
                stage: None,
            },
        );
        let routes = plan
            .routes
            .iter()
            .map(|r| {
                let detailed = plan
                    .apis
                    .iter()
                    .find(|a| a.name == r.api)
                    .is_some_and(|a| a.detailed_metrics);
                let key = SeriesKey {
                    api: Some(r.api.clone()),
                    route: detailed.then(|| r.key.clone()),
                    stage: StageLabels::of(r.stage.as_deref()),
                };
                get_or_add(&mut series, &key)
            })
            .collect();
        // APIs with no route that compiled still get their series.
        for a in plan.apis.iter().filter(|a| !a.detailed_metrics) {
            get_or_add(
                &mut series,
                &SeriesKey {
                    api: Some(a.name.clone()),
                    route: None,
                    stage: StageLabels::of(a.stage.as_deref()),
                },
            );
        }
        let mut targets = self.targets.borrow_mut();
        let upstreams = plan
            .upstreams
            .iter()
            .map(|u| {
                u.targets
                    .iter()
                    .map(|t| {
                        let key = TargetKey {
                            upstream: u.name.clone(),
                            target: t.label.clone(),
                        };
                        get_or_add(&mut targets, &key)
                    })
                    .collect()
            })
            .collect();
        let mut authorizers = self.authorizers.borrow_mut();
        let by_authorizer: Vec<Rc<StatusCounts>> = plan
            .policies
            .authorizers
            .iter()
            .map(|a| get_or_add(&mut authorizers, &a.name))
            .collect();
        let route_authorizer = plan
            .routes
            .iter()
            .map(|r| {
                r.policies
                    .auth
                    .as_ref()
                    .and_then(|rule| by_authorizer.get(rule.authorizer).cloned())
            })
            .collect();
        GenerationMetrics {
            routes,
            unrouted,
            upstreams,
            route_authorizer,
        }
    }

    /// A connection was accepted (on a TLS listener when `tls`).
    #[inline]
    pub fn note_accepted(&self, tls: bool) {
        bump(
            if tls {
                &self.accepted_tls
            } else {
                &self.accepted
            },
            1,
        );
    }

    /// Connections accepted: (plain, TLS).
    pub fn accepted(&self) -> (u64, u64) {
        (self.accepted.get(), self.accepted_tls.get())
    }

    pub fn snapshot_series(&self) -> Vec<SeriesSnapshot> {
        self.series
            .borrow()
            .iter()
            .map(|(k, s)| s.snapshot(k))
            .collect()
    }

    pub fn snapshot_authorizers(&self) -> Vec<AuthorizerSnapshot> {
        self.authorizers
            .borrow()
            .iter()
            .map(|(name, s)| AuthorizerSnapshot {
                name: name.clone(),
                statuses: s.snapshot(),
            })
            .collect()
    }
}

/// Where a generation's requests are counted, by the plan's indices.
#[derive(Debug, Default)]
pub struct GenerationMetrics {
    /// By route index.
    routes: Vec<Rc<RequestSeries>>,
    unrouted: Rc<RequestSeries>,
    /// By upstream index, then target index.
    upstreams: Vec<Vec<Rc<Histogram>>>,
    /// The denial counts of each route's authorizer, by route index.
    route_authorizer: Vec<Option<Rc<StatusCounts>>>,
}

impl GenerationMetrics {
    /// The series of a request on `route` (`None`: no route took it).
    #[inline]
    pub fn series(&self, route: Option<usize>) -> &RequestSeries {
        route
            .and_then(|r| self.routes.get(r))
            .unwrap_or(&self.unrouted)
    }

    /// The response-time histogram of a target.
    #[inline]
    pub fn target(&self, upstream: usize, target: usize) -> Option<&Histogram> {
        self.upstreams.get(upstream)?.get(target).map(|h| &**h)
    }

    /// The denial counts of the route's authorizer.
    #[inline]
    pub fn authorizer(&self, route: Option<usize>) -> Option<&StatusCounts> {
        self.route_authorizer.get(route?)?.as_deref()
    }

    /// The response-time histograms of every target, by upstream index.
    pub fn target_histograms(&self) -> &[Vec<Rc<Histogram>>] {
        &self.upstreams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_take_slots_in_order_and_overflow_by_class() {
        let s = StatusCounts::default();
        for _ in 0..3 {
            s.add(200);
        }
        s.add(0);
        s.add(404);
        for code in 500..(500 + STATUS_SLOTS as u16) {
            s.add(code);
        }
        let snap = s.snapshot();
        assert!(snap.contains(&(StatusLabel::Code(200), 3)));
        assert!(snap.contains(&(StatusLabel::Code(0), 1)));
        assert!(snap.contains(&(StatusLabel::Code(404), 1)));
        // 3 slots were taken before the 5xx codes: 3 of them overflow.
        assert!(snap.contains(&(StatusLabel::Other(5), 3)), "{snap:?}");
        let total: u64 = snap.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 5 + STATUS_SLOTS as u64);
    }
}
