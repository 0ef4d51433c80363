//! The gateway's side of the metrics: recording a finished exchange into
//! its generation's series (called by the one exit), and the shard's
//! snapshot a scrape asks for over the control inbox.

use super::exchange::{CacheStatus, Exchange};
use super::Gateway;
use crate::observe::hist::micros;
use crate::observe::snapshot::{ConnSnapshot, ShardSnapshot, TargetSnapshot};
use crate::policy::Phase;
use std::time::Instant;

/// Counts a finished exchange that ended at `end`.
#[inline]
pub(super) fn record(x: &Exchange, end: Instant) {
    let m = &x.generation.metrics;
    let o = &x.outcome;
    let s = m.series(x.route);
    s.record(
        o.status,
        o.bytes_in,
        o.bytes_out,
        micros(end.saturating_duration_since(o.timings.received)),
    );
    match o.cache {
        CacheStatus::None => {}
        CacheStatus::Hit => s.note_cache(true),
        CacheStatus::Miss => s.note_cache(false),
    }
    if let (Some(ready), Some(head)) = (o.timings.upstream_connected, o.timings.upstream_first_byte)
    {
        let us = micros(head.saturating_duration_since(ready));
        s.integration.observe_us(us);
        if let Some(h) = o.upstream.and_then(|(u, t)| m.target(u, t)) {
            h.observe_us(us);
        }
    }
    match o.refused_by {
        None => {}
        Some(Phase::Throttle) => s.note_throttled(),
        Some(Phase::UsagePlan) if o.status == 429 => s.note_quota_exceeded(),
        Some(Phase::Authorizer | Phase::SignedBody) => {
            if let Some(a) = m.authorizer(x.route) {
                a.add(o.status);
            }
        }
        Some(_) => {}
    }
}

impl Gateway {
    /// Everything this shard has counted, for a scrape.
    pub fn snapshot(&self) -> ShardSnapshot {
        let generation = self.generation();
        let now = Instant::now();
        let hists = generation.metrics.target_histograms();
        let mut targets = Vec::new();
        for (u, (plan, state)) in generation
            .plan
            .upstreams
            .iter()
            .zip(&generation.upstreams)
            .enumerate()
        {
            for (t, target) in plan.targets.iter().enumerate() {
                let stats = state.target_stats(t, now);
                targets.push(TargetSnapshot {
                    upstream: plan.name.clone(),
                    target: target.label.clone(),
                    connects: stats.connects,
                    connect_failures: stats.connect_failures,
                    reuses: stats.reuses,
                    in_flight: stats.in_flight,
                    idle: stats.idle,
                    cooling: stats.cooling,
                    response: hists
                        .get(u)
                        .and_then(|h| h.get(t))
                        .map(|h| h.snapshot())
                        .unwrap_or_default(),
                });
            }
        }
        let (accepted, accepted_tls) = self.metrics.accepted();
        let (reactor_passes, reactor_busy_ns) = crate::net::loop_stats();
        let (spliced_to_client, spliced_to_upstream) = crate::net::splice::spliced_bytes();
        ShardSnapshot {
            shard: self.id,
            generation: generation.number,
            series: self.metrics.snapshot_series(),
            targets,
            authorizers: self.metrics.snapshot_authorizers(),
            conns: ConnSnapshot {
                open: self.connections.live() as u64,
                idle: self.connections.idle() as u64,
                parked: crate::http::conn::parked() as u64,
                tls_open: self.connections.live_tls() as u64,
                reactor_passes,
                reactor_busy_ns,
                accepted,
                accepted_tls,
                tls_failures: self.tls_failures(),
                spliced_to_client,
                spliced_to_upstream,
            },
            websocket: super::websocket::snapshot(),
        }
    }
}
