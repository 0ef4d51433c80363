//! The global side of one token bucket, owned by the coordinator thread:
//! refill, leases to shards, recalls. Pure arithmetic over an explicit
//! `now`, so it is unit-tested without threads or clocks.
//!
//! Invariant: `level + Σ out[s] <= burst` (up to the shards' initial
//! shares when `burst < shards`), where `out[s]` is what shard `s` holds
//! as far as the coordinator knows (its tokens, leases in transit, and
//! spending it has not reported yet). Refill only tops `level` up to
//! `burst - Σ out`, so the whole process never holds more than one bucket's
//! worth of tokens. Every change to `out` is preceded by a refill up to its
//! time under the old cap, so no refill is credited for a time when the
//! bucket was full.

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
/// While idle shards are below their share, the coordinator tops them up
/// as tokens come back, at most this often.
pub const TOP_UP_STEP: Duration = Duration::from_millis(10);

/// What a shard reports about one bucket since its previous report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Tokens spent (requests admitted).
    pub spent: u32,
    /// Tokens the shard took without a lease when it created the bucket.
    pub advanced: u32,
    /// Unused tokens given back.
    pub returned: u32,
    /// Tokens the shard wants to hold, from its measured demand.
    pub want: u32,
    /// Requests arrived for this bucket.
    pub busy: bool,
    /// Requests found this bucket empty on the shard (refused for lack of
    /// its tokens): the demand is real, not a forecast.
    pub starving: bool,
}

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
    /// Tokens in the coordinator's hands (below 0 by the shards' initial
    /// shares when `burst < shards`, until spending pays them back).
    level: f64,
    last: Instant,
    out: Vec<i64>,
    want: Vec<u32>,
    busy: Vec<bool>,
    starving: Vec<bool>,
    last_recall: Option<Instant>,
    last_short: Option<Instant>,
    rotation: usize,
}

impl Global {
    /// A full bucket that shards take their [`initial_share`] of when they
    /// first see it, and report as advanced (per-client buckets): until
    /// then `level` counts it.
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
            starving: vec![false; shards],
            last_recall: None,
            last_short: None,
            rotation: 0,
        }
    }

    /// A full bucket whose every shard starts holding its
    /// [`initial_share`] (the fixed buckets, from start-up): `out` counts
    /// it from the start, and the shards do not report it as advanced.
    pub fn with_shares(rate: f64, burst: u32, shards: usize, now: Instant) -> Global {
        let mut g = Global::new(rate, burst, shards, now);
        for s in 0..g.out.len() {
            g.out[s] = g.share;
            g.level -= g.share as f64;
        }
        g
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

    /// Applies a shard's report, received at `now`. The refill up to `now`
    /// comes first: it is capped by what the shards held until this report.
    pub fn apply(&mut self, now: Instant, shard: usize, t: &Tally) {
        if shard >= self.out.len() {
            return;
        }
        self.refill(now);
        let Some(out) = self.out.get_mut(shard) else {
            return;
        };
        *out += t.advanced as i64 - t.spent as i64 - t.returned as i64;
        self.level += t.returned as f64 - t.advanced as f64;
        self.want[shard] = t.want;
        self.busy[shard] = t.busy;
        self.starving[shard] = t.starving;
    }

    /// Refills, then leases whole tokens to shards below what they want
    /// (starting from a rotating shard, so a scarce bucket is shared). If a
    /// shard is left short and has refused requests for lack of tokens
    /// (starving: not just a forecast), idle shards holding tokens are
    /// asked for them; an idle shard keeps its share while the others only
    /// expect demand, so its own next request is not refused for a token
    /// moved away on a guess.
    /// If none was short for [`TOP_UP_CALM`], shards below their share of
    /// the burst are topped up to it as tokens come back (looked at again
    /// every [`TOP_UP_STEP`] or when the next token is due, whichever is
    /// later, until they hold it), so the first requests after a quiet
    /// spell are served wherever they land, without waiting for a lease.
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
            let starving = self.starving.iter().any(|&s| s);
            if recall_due && starving {
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
        let below = |g: &Global| g.out.iter().any(|&o| o < g.share);
        if !below(self) {
            return g;
        }
        if let Some(t) = self.last_short {
            let calm_at = t + TOP_UP_CALM;
            if now < calm_at {
                g.retry_at = Some(calm_at);
                return g;
            }
        }
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
        let cap = self.burst - self.total_out() as f64;
        if below(self) && self.level < cap {
            // More tokens will come back: top up again when one has.
            let missing = (1.0 - self.level).max(0.0);
            let wait = Duration::from_secs_f64((missing / self.rate).min(3600.0));
            g.retry_at = Some(now + wait.max(TOP_UP_STEP));
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
