//! The gateway: what a shard does with a request once the connection loop
//! has its head. One [`Gateway`] per shard implements the connection
//! loop's [`Service`]: `driver::handle` opens an [`Exchange`] for the
//! request, routes it, runs its phases in order, runs its integration, and
//! hands the finished exchange to [`exit::finish`], the one place every
//! request ends, whatever answered it.
//!
//! The plan a shard serves is a [`Generation`]: immutable, shared by
//! reference count, and kept by each request from start to end, so that a
//! new generation can be installed ([`Gateway::install`]) while requests of
//! the old one are in flight. Run-time state that must outlive a
//! generation (upstream pools and health) is held by the gateway under the
//! upstream's name and lent to each generation that keeps the upstream's
//! settings.
//!
//! WebSocket APIs' handshakes and sessions are [`websocket`]'s, their
//! `@connections` routes `ws_connections`'s; a WebSocket upgrade on an
//! `http_proxy` route is relayed by `ws_proxy`.

pub mod access;
pub mod authorize;
pub mod cache;
mod driver;
pub mod exchange;
pub mod exit;
mod metrics;
mod reply;
pub mod signed_body;
mod stage;
pub mod websocket;
mod ws_connections;
mod ws_proxy;

use crate::http::conn::{Conn, Connections, Flow, Service};
use crate::http::encode::{DateCache, RequestIds};
use crate::http::parse::{HeadLimits, RequestHead};
use crate::http::Limits;
use crate::integration::upstream::{UpstreamPlan, UpstreamState};
use crate::plan::Plan;
use crate::policy::ShardPolicies;
pub use exchange::Exchange;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// At most one log line per this long about failed TLS handshakes.
const TLS_LOG_EVERY: Duration = Duration::from_secs(1);

/// One plan as a shard serves it, with the run-time state lent to it.
pub struct Generation {
    /// 1 for the plan a shard starts with, then one more per install.
    pub number: u64,
    pub plan: Plan,
    pub head_limits: HeadLimits,
    /// The state of `plan.upstreams[i]` is `upstreams[i]`.
    pub upstreams: Vec<Rc<UpstreamState>>,
    /// Where this generation's requests are counted.
    pub metrics: crate::observe::shard::GenerationMetrics,
    /// The policies' run-time state (buckets, cache, key store,
    /// authorizers, usage), parts of it taken over from the generation
    /// before ([`ShardPolicies::carry`]).
    pub policies: ShardPolicies,
    /// The access-log buffers of the destinations this generation was
    /// installed with: a request writes its line there, even when a reload
    /// has changed the destinations while it was in flight.
    pub log_outs: Rc<crate::accesslog::shard::Outs>,
}

/// A shard's gateway: its current generation, its run-time state and the
/// connection loop's service.
pub struct Gateway {
    pub id: usize,
    current: RefCell<Rc<Generation>>,
    /// Upstream state by upstream name, with the settings it was made for.
    upstream_states: RefCell<HashMap<String, (UpstreamKey, Rc<UpstreamState>)>>,
    pub date: RefCell<DateCache>,
    pub ids: RefCell<RequestIds>,
    pub connections: Rc<Connections>,
    /// This shard's TLS acceptor (its own session cache), when
    /// `[server.tls]` is set; replaced by each install, so a reload takes
    /// in renewed certificates.
    tls: RefCell<Option<futures_rustls::TlsAcceptor>>,
    tls_failures: Cell<u64>,
    tls_failure_logged: Cell<Option<Instant>>,
    /// What the exit has counted, by series name.
    pub metrics: crate::observe::shard::ShardMetrics,
    /// Access-log buffers and captures.
    pub access: access::Access,
}

/// The settings an upstream's run-time state depends on: a generation
/// whose upstream of the same name has the same key keeps the state
/// (pools, health, balancing position).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UpstreamKey {
    targets: Vec<(SocketAddr, u32)>,
    https: bool,
}

impl UpstreamKey {
    fn of(plan: &UpstreamPlan) -> UpstreamKey {
        UpstreamKey {
            targets: plan.targets.iter().map(|t| (t.addr, t.weight)).collect(),
            https: plan.tls.is_some(),
        }
    }
}

impl Gateway {
    pub fn new(
        id: usize,
        plan: Plan,
        link: crate::policy::throttle::ShardLink,
        usage_link: crate::policy::usage::coordinator::ShardLink,
        access_log: Vec<crate::accesslog::writer::Sink>,
    ) -> Gateway {
        let access = access::Access::new(id, access_log);
        let policies = ShardPolicies::new(&plan.policies, id, link, usage_link);
        let gw = Gateway {
            id,
            current: RefCell::new(Rc::new(Generation {
                number: 0,
                head_limits: head_limits(&plan),
                plan: plan.clone(),
                upstreams: Vec::new(),
                metrics: Default::default(),
                policies,
                log_outs: access.log.current(),
            })),
            upstream_states: RefCell::new(HashMap::new()),
            date: RefCell::new(DateCache::default()),
            ids: RefCell::new(RequestIds::new(id)),
            connections: Rc::new(Connections::default()),
            tls: RefCell::new(None),
            tls_failures: Cell::new(0),
            tls_failure_logged: Cell::new(None),
            metrics: Default::default(),
            access,
        };
        gw.install(plan, None);
        gw
    }

    /// The generation a request starting now runs on.
    pub fn generation(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }

    /// The TLS acceptor for a connection accepted now on a TLS listener.
    pub fn tls_acceptor(&self) -> Option<futures_rustls::TlsAcceptor> {
        self.tls.borrow().clone()
    }

    /// Makes `plan` the generation new requests start with; requests in
    /// flight finish on the one they started with. Upstreams whose name
    /// and targets are unchanged keep their pools and health; others start
    /// fresh, and state no generation names any more is dropped when the
    /// last request holding it ends. The policies' state is carried over
    /// as [`ShardPolicies::carry`] says; `throttle` is a new throttle
    /// coordinator's link when the runtime started one for this plan.
    /// Returns the new generation's number.
    pub fn install(&self, plan: Plan, throttle: Option<crate::policy::throttle::ShardLink>) -> u64 {
        let mut states = self.upstream_states.borrow_mut();
        let mut kept = HashMap::with_capacity(plan.upstreams.len());
        let upstreams = plan
            .upstreams
            .iter()
            .map(|u| {
                let key = UpstreamKey::of(u);
                let state = match states.remove(&u.name) {
                    Some((k, s)) if k == key => s,
                    _ => Rc::new(UpstreamState::new(u)),
                };
                kept.insert(u.name.clone(), (key, state.clone()));
                state
            })
            .collect();
        *states = kept;
        let before = self.generation();
        let policies = if before.number == 0 {
            // The first plan: the state `new` made for it.
            before.policies.clone()
        } else {
            before
                .policies
                .carry(&before.plan.policies, &plan.policies, self.id, throttle)
        };
        *self.tls.borrow_mut() = plan
            .server
            .tls
            .as_ref()
            .map(|t| futures_rustls::TlsAcceptor::from(t.shard_config()));
        let number = before.number + 1;
        let metrics = self.metrics.layout(&plan);
        *self.current.borrow_mut() = Rc::new(Generation {
            number,
            head_limits: head_limits(&plan),
            plan,
            upstreams,
            metrics,
            policies,
            log_outs: self.access.log.current(),
        });
        number
    }

    /// Counts a failed TLS handshake and logs it, at most once per
    /// TLS_LOG_EVERY per shard: scanners and plain-HTTP clients on a TLS
    /// port must not flood the log.
    pub fn note_tls_failure(&self, peer: SocketAddr, why: &str) {
        let n = self.tls_failures.get() + 1;
        self.tls_failures.set(n);
        let now = Instant::now();
        if self
            .tls_failure_logged
            .get()
            .is_none_or(|t| now.duration_since(t) >= TLS_LOG_EVERY)
        {
            self.tls_failure_logged.set(Some(now));
            crate::log!(
                "info",
                "shard {}: TLS handshake with {peer} failed: {why} ({n} failed handshake(s) on this shard so far)",
                self.id
            );
        }
    }

    /// Failed TLS handshakes on this shard since it started.
    pub fn tls_failures(&self) -> u64 {
        self.tls_failures.get()
    }

    /// Closes idle upstream connections past their idle timeout.
    pub fn sweep_pools(&self, now: Instant) {
        let generation = self.generation();
        for (state, plan) in generation.upstreams.iter().zip(&generation.plan.upstreams) {
            state.sweep(plan, now);
        }
    }
}

fn head_limits(plan: &Plan) -> HeadLimits {
    HeadLimits {
        max_request_line: plan.limits.max_request_line_bytes,
        max_head: plan.limits.max_header_bytes,
        max_headers: plan.limits.max_headers,
    }
}

impl Service for Gateway {
    fn limits(&self) -> Limits {
        self.current.borrow().plan.limits
    }

    fn head_limits(&self) -> HeadLimits {
        self.current.borrow().head_limits
    }

    fn connections(&self) -> &Rc<Connections> {
        &self.connections
    }

    async fn handle(&self, conn: &mut Conn, head: &RequestHead) -> Flow {
        driver::handle(self, conn, head).await
    }

    async fn refuse(&self, conn: &mut Conn, status: u16, message: &'static str) {
        driver::refuse(self, conn, status, message).await
    }

    fn note_tls_failure(&self, peer: SocketAddr, why: &str) {
        Gateway::note_tls_failure(self, peer, why)
    }
}

#[cfg(test)]
mod tests;
