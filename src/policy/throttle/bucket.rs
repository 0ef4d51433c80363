//! The global side of one token bucket, owned by the coordinator thread:
//! refill, leases to shards, recalls. Pure arithmetic over an explicit
//! `now`, so it is unit-tested without threads or clocks.
//!
//! Invariant: `level + Σ out[s] <= burst` (up to the shards' initial
//! advances when `burst < shards`), where `out[s]` is what shard `s` holds
//! as far as the coordinator knows (its tokens, leases in transit, and
//! spending it has not reported yet). Refill only tops `level` up to
//! `burst - Σ out`, so the whole process never holds more than one bucket's
//! worth of tokens.

use super::initial_share;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

/// The least time between two recalls of one bucket.
pub const RECALL_GAP: Duration = Duration::from_millis(5);
/// Idle shards are topped up to their share of the burst only when no shard
/// was short of tokens for this long.
pub const TOP_UP_CALM: Duration = Duration::from_millis(100);
/// The coordinator looks at a short bucket again at least this often.
pub const MIN_RETRY: Duration = Duration::from_millis(1);

/// What one distribution round decided.
#[derive(Debug, Default, PartialEq)]
pub struct Grants {
    /// (shard, tokens) leases to send.
    pub grants: SmallVec<[(usize, u32); 4]>,
    /// Shards asked to give back what they hold if idle.
    pub recalls: SmallVec<[usize; 4]>,
    /// A shard is still short: look again at this time.
    pub retry_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Global {
    rate: f64,
    burst: f64,
    share: i64,
    /// Tokens in the coordinator's hands (may dip below 0 by the shards'
    /// advances when `burst < shards`).
    level: f64,
    last: Instant,
    out: Vec<i64>,
    want: Vec<u32>,
    busy: Vec<bool>,
    last_recall: Option<Instant>,
    last_short: Option<Instant>,
    rotation: usize,
}

impl Global {
    /// A full bucket. Shards start holding [`initial_share`] each, which
    /// they report as advanced; until then `level` counts it.
    pub fn new(rate: f64, burst: u32, shards: usize, now: Instant) -> Global {
        let shards = shards.max(1);
        Global {
            rate,
            burst: burst as f64,
            share: initial_share(burst, shards) as i64,
            level: burst as f64,
            last: now,
            out: vec![0; shards],
            want: vec![0; shards],
            busy: vec![false; shards],
            last_recall: None,
            last_short: None,
            rotation: 0,
        }
    }

    pub fn level(&self) -> f64 {
        self.level
    }

    pub fn outstanding(&self, shard: usize) -> i64 {
        self.out.get(shard).copied().unwrap_or(0)
    }

    fn total_out(&self) -> i64 {
        self.out.iter().sum()
    }

    /// Adds the tokens earned since the last refill, up to what the bucket
    /// can hold beside the shards' leases.
    pub fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        let cap = self.burst - self.total_out() as f64;
        if self.level < cap {
            self.level = (self.level + self.rate * dt).min(cap);
        }
    }

    /// Applies a shard's report.
    pub fn apply(
        &mut self,
        shard: usize,
        spent: u32,
        advanced: u32,
        returned: u32,
        want: u32,
        busy: bool,
    ) {
        let Some(out) = self.out.get_mut(shard) else {
            return;
        };
        *out += advanced as i64 - spent as i64 - returned as i64;
        self.level += returned as f64 - advanced as f64;
        self.want[shard] = want;
        self.busy[shard] = busy;
    }

    /// Refills, then leases whole tokens to shards below what they want
    /// (starting from a rotating shard, so a scarce bucket is shared). If a
    /// shard is left short, idle shards holding tokens are asked for them;
    /// if none is short and the pool is at least half full, idle shards are
    /// topped up to their share of the burst, so a burst arriving anywhere
    /// is served without waiting for a lease.
    pub fn distribute(&mut self, now: Instant) -> Grants {
        self.refill(now);
        let n = self.out.len();
        let mut g = Grants::default();
        let mut short = false;
        for i in 0..n {
            let s = (self.rotation + i) % n;
            let deficit = self.want[s] as i64 - self.out[s];
            if deficit <= 0 {
                continue;
            }
            let give = deficit.min(self.level.floor().max(0.0) as i64);
            if give > 0 {
                self.level -= give as f64;
                self.out[s] += give;
                g.grants.push((s, give as u32));
            }
            if give < deficit {
                short = true;
            }
        }
        self.rotation = (self.rotation + 1) % n.max(1);
        if short {
            self.last_short = Some(now);
            let recall_due = self
                .last_recall
                .is_none_or(|t| now.saturating_duration_since(t) >= RECALL_GAP);
            if recall_due {
                for s in 0..n {
                    if !self.busy[s] && self.out[s] > 0 {
                        g.recalls.push(s);
                    }
                }
                if !g.recalls.is_empty() {
                    self.last_recall = Some(now);
                }
            }
            let missing = (1.0 - self.level).max(0.0);
            let wait = Duration::from_secs_f64((missing / self.rate).min(3600.0));
            g.retry_at = Some(now + wait.max(MIN_RETRY));
            return g;
        }
        let calm = self
            .last_short
            .is_none_or(|t| now.saturating_duration_since(t) >= TOP_UP_CALM);
        if calm && self.level >= self.burst / 2.0 {
            for i in 0..n {
                let s = (self.rotation + i) % n;
                let deficit = self.share - self.out[s];
                let give = deficit.min(self.level.floor().max(0.0) as i64);
                if give > 0 {
                    self.level -= give as f64;
                    self.out[s] += give;
                    g.grants.push((s, give as u32));
                }
            }
        }
        g
    }

    /// Full, and no shard holds a lease: indistinguishable from a new
    /// bucket, so it can be forgotten.
    pub fn is_full_and_unleased(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.out.iter().all(|&o| o == 0) && self.level >= self.burst
    }
}
