//! The global side of one token bucket, owned by the coordinator thread.
//! Pure arithmetic over an explicit `now`, so it is unit-tested (and
//! simulated) without threads or clocks.
//!
//! The pool (`level`) refills at the bucket's rate. Shards with requests
//! are **leased** whole tokens from it, as many as their measured demand
//! asks for (`want`); idle shards are topped up to their share of the
//! burst; tokens idle shards hold are recalled when another shard refuses
//! requests. A lease takes a round trip (a few ms), so a shard can spend at
//! most what it holds per round trip. For a bucket whose burst is smaller
//! than [`STREAM_HORIZON`] of its rate that is less than its rate, so
//! there shards with requests get a **stream** instead: a part of the rate
//! and a cap, and they refill their own tokens at that rate up to that cap,
//! with no round trip per token. The pool then refills at the rate no
//! stream takes.
//!
//! Invariants, with `capacity = max(burst, shards × share)`:
//! - `Σ rate[s] ≤ rate`, and the pool refills at `rate − Σ rate[s]`;
//! - `level + Σ reserve[s] ≤ capacity` (up to the per-client advances
//!   below), where `reserve[s]` bounds what shard `s` can hold: what it
//!   holds as far as the coordinator knows (`out`: its tokens, grants in
//!   transit, spending not yet reported), or its stream's cap if larger.
//!
//! A stream that grows counts at its new rate and cap from when it is
//! sent; one that shrinks counts at its old ones until the shard reports
//! it applied the change. So in any interval of `T` seconds the shards can
//! spend at most `capacity + rate × T`. Refill is computed before every
//! change to what it depends on, so no refill is credited for a time the
//! bucket was full.

use super::initial_share;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

/// The least time between two recalls of one bucket.
pub const RECALL_GAP: Duration = Duration::from_millis(5);
/// Idle shards are topped up to their share of the burst only when no shard
/// refused requests for this long.
pub const TOP_UP_CALM: Duration = Duration::from_millis(100);
/// While idle shards are below their share, the coordinator tops them up
/// as tokens come back, at most this often.
pub const TOP_UP_STEP: Duration = Duration::from_millis(10);
/// The coordinator looks at a short bucket again at least this often.
pub const MIN_RETRY: Duration = Duration::from_millis(1);
/// A shard's tokens are recalled for another only once it went this long
/// without a request: tokens chasing requests spread over the shards
/// would always arrive where the last one was refused, not the next.
pub const RECALL_IDLE: Duration = Duration::from_millis(100);
/// A new per-client bucket keeps the shares of the shards that have not
/// reported it out of the pool this long: a shard seeing the client at
/// about the same time takes its share in advance, and it must still be
/// there.
pub const NEW_CLIENT_GRACE: Duration = Duration::from_millis(100);
/// A bucket whose burst is less than this much of its rate is served by
/// streams (see the module doc).
pub const STREAM_HORIZON: f64 = 0.004;

/// Whether a bucket is served by streams.
fn streams_for(rate: f64, burst: u32) -> bool {
    #[cfg(test)]
    if let Some(force) = FORCE_STREAMS.with(|f| f.get()) {
        return force;
    }
    (burst as f64) < rate * STREAM_HORIZON
}

#[cfg(test)]
thread_local! {
    /// Tests compare the two ways by forcing one.
    pub static FORCE_STREAMS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Amounts of tokens below this are rounding, not tokens.
const EPSILON: f64 = 1e-9;

/// `x`, or the whole number it differs from only by rounding: sums of
/// fractions of tokens (a stream's, a returned rest) must not leave a
/// shard one rounding error short of a whole token.
pub fn snap(x: f64) -> f64 {
    let r = x.round();
    if (x - r).abs() < EPSILON {
        r
    } else {
        x
    }
}
/// A stream is re-sent when its rate would change by more than this
/// fraction (or its cap changes).
pub const RATE_STEP: f64 = 0.1;

/// What a shard reports about one bucket since its previous report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Tokens spent (requests admitted).
    pub spent: u32,
    /// Tokens the shard took without a lease when it created the bucket
    /// (a per-client bucket).
    pub advanced: u32,
    /// Tokens given back (a recall).
    pub returned: f64,
    /// Tokens the shard's stream made.
    pub accrued: f64,
    /// Requests per second, smoothed: 0 once the shard is idle.
    pub demand: f64,
    /// Tokens the shard wants to hold, from its demand (leases).
    pub want: u32,
    /// Requests arrived.
    pub busy: bool,
    /// Requests found this bucket empty on the shard (refused for lack of
    /// its tokens): the demand is real, not a forecast.
    pub starving: bool,
    /// The last stream setting the shard applied.
    pub seq: u32,
    /// The last recall it answered (gave back or not).
    pub recall_seq: u32,
}

/// A shard's stream: it refills its own tokens at `rate` up to `cap`.
/// Rate 0: no stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stream {
    pub rate: f64,
    pub cap: u32,
    /// Numbers the settings of one bucket's streams; the shard reports the
    /// last it applied.
    pub seq: u32,
}

/// What one distribution round decided. Streams are to be sent before
/// grants (a grant can need the cap a stream gives).
#[derive(Debug, Default, PartialEq)]
pub struct Grants {
    pub streams: SmallVec<[(usize, Stream); 4]>,
    /// (shard, tokens) leases to send. Tokens need not be whole: a shard
    /// whose stream ended can hold a fraction, and is topped up to a whole
    /// share.
    pub grants: SmallVec<[(usize, f64); 4]>,
    /// (shard, keep, seq): give back what you hold beyond `keep` if idle.
    pub recalls: SmallVec<[(usize, u32, u32); 4]>,
    /// Look at this bucket again at this time (a top-up is due).
    pub retry_at: Option<Instant>,
}

/// The coordinator's view of one shard's part of a bucket.
#[derive(Debug, Clone, Default)]
struct Part {
    /// Tokens it holds as far as known.
    out: f64,
    demand: f64,
    want: u32,
    busy: bool,
    /// When it last reported requests.
    last_busy: Option<Instant>,
    /// The last recall sent to it, and the last it answered: while one is
    /// on its way, the tokens it holds may be coming back, and its stream
    /// cannot grow over them.
    recall_sent: u32,
    recall_done: u32,
    /// It holds the bucket: it reported it (a per-client bucket) or has
    /// held it since start-up. A shard that has not would take its share
    /// in advance when it first sees the client: it gets no top-up.
    known: bool,
    starving: bool,
    /// When it last reported requests refused for lack of tokens: top-ups
    /// serve the shards that refused most recently first.
    starved_at: Option<Instant>,
    /// The stream it last said it applied, and the last one sent.
    applied: Stream,
    sent: Stream,
}

impl Part {
    fn pending(&self) -> bool {
        self.sent.seq != self.applied.seq
    }

    /// The stream rate it may be refilling at.
    fn rate(&self) -> f64 {
        if self.pending() {
            self.applied.rate.max(self.sent.rate)
        } else {
            self.applied.rate
        }
    }

    fn cap(&self) -> f64 {
        if self.pending() {
            self.applied.cap.max(self.sent.cap) as f64
        } else {
            self.applied.cap as f64
        }
    }

    /// The most it can hold.
    fn reserve(&self) -> f64 {
        if self.rate() > 0.0 {
            self.cap().max(self.out)
        } else {
            self.out
        }
    }

    fn active(&self) -> bool {
        self.demand > 0.0 || self.busy
    }
}

#[derive(Debug, Clone)]
pub struct Global {
    rate: f64,
    /// Served by streams, not leases (see the module doc).
    streaming: bool,
    capacity: f64,
    share: f64,
    /// Tokens in the pool (below 0 after per-client advances it had not
    /// expected, until the refill pays them back).
    level: f64,
    last: Instant,
    parts: Vec<Part>,
    seq: u32,
    last_recall: Option<Instant>,
    recall_seq: u32,
    last_short: Option<Instant>,
    rotation: usize,
    /// Until when the shares of shards that have not reported this bucket
    /// stay out of the pool ([`NEW_CLIENT_GRACE`]; per-client buckets).
    grace_until: Option<Instant>,
    /// What a round keeps out of `level` for that grace.
    held_back: f64,
}

impl Global {
    /// A full bucket that shards take their [`initial_share`] of when they
    /// first see it, and report as advanced (per-client buckets): until
    /// then the pool counts it.
    pub fn new(rate: f64, burst: u32, shards: usize, now: Instant) -> Global {
        let shards = shards.max(1);
        let share = initial_share(burst, shards) as f64;
        let capacity = (burst as f64).max(share * shards as f64);
        Global {
            rate,
            streaming: streams_for(rate, burst),
            capacity,
            share,
            level: capacity,
            last: now,
            parts: vec![Part::default(); shards],
            seq: 0,
            last_recall: None,
            recall_seq: 0,
            last_short: None,
            rotation: 0,
            grace_until: Some(now + NEW_CLIENT_GRACE),
            held_back: 0.0,
        }
    }

    /// A full bucket whose every shard starts holding its
    /// [`initial_share`] (the fixed buckets, from start-up): counted from
    /// the start, not reported as advances.
    pub fn with_shares(rate: f64, burst: u32, shards: usize, now: Instant) -> Global {
        let mut g = Global::new(rate, burst, shards, now);
        for p in &mut g.parts {
            p.out = g.share;
            p.known = true;
            g.level -= g.share;
        }
        g.grace_until = None;
        g
    }

    pub fn level(&self) -> f64 {
        self.level
    }

    /// What shard `shard` holds as far as the coordinator knows.
    pub fn outstanding(&self, shard: usize) -> f64 {
        self.parts.get(shard).map_or(0.0, |p| p.out)
    }

    /// The stream shard `shard` may be running (the larger of the applied
    /// and the sent one while a change is on its way).
    #[cfg(test)]
    pub fn stream_of(&self, shard: usize) -> (f64, f64) {
        self.parts
            .get(shard)
            .map_or((0.0, 0.0), |p| (p.rate(), p.cap()))
    }

    fn pool_rate(&self) -> f64 {
        (self.rate - self.parts.iter().map(Part::rate).sum::<f64>()).max(0.0)
    }

    fn reserved(&self) -> f64 {
        self.parts.iter().map(Part::reserve).sum()
    }

    /// Adds what the pool earned since the last refill, up to what the
    /// bucket can hold beside the shards' reserves.
    pub fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        let cap = self.capacity - self.reserved();
        if self.level < cap {
            self.level = (self.level + self.pool_rate() * dt).min(cap);
        }
    }

    /// Applies a shard's report, received at `now`. The refill up to `now`
    /// comes first: it is capped by what the shards held until this report.
    pub fn apply(&mut self, now: Instant, shard: usize, t: &Tally) {
        if shard >= self.parts.len() {
            return;
        }
        self.refill(now);
        let p = &mut self.parts[shard];
        p.out = snap(p.out + t.advanced as f64 + t.accrued - t.spent as f64 - t.returned);
        self.level = snap(self.level + t.returned - t.advanced as f64);
        p.known = true;
        p.demand = t.demand;
        p.want = t.want;
        p.busy = t.busy;
        if t.busy {
            p.last_busy = Some(now);
        }
        p.starving = t.starving;
        if t.starving {
            p.starved_at = Some(now);
        }
        if t.seq == p.sent.seq {
            p.applied = p.sent;
        }
        p.recall_done = t.recall_seq;
    }

    /// The shard forgot the bucket (reporting what it held as returned):
    /// it is idle and runs no stream, and a stream setting still on its way
    /// to it will be answered the same way. Grants on their way stay
    /// counted until it hands them back.
    pub fn forget(&mut self, now: Instant, shard: usize, t: &Tally) {
        self.apply(now, shard, t);
        if let Some(p) = self.parts.get_mut(shard) {
            p.known = false;
            // It holds nothing: no recall can bring anything back.
            p.recall_done = p.recall_sent;
            p.demand = 0.0;
            p.want = 0;
            p.busy = false;
            p.starving = false;
            if t.seq == p.sent.seq {
                p.sent = Stream {
                    rate: 0.0,
                    cap: 0,
                    seq: p.sent.seq,
                };
            }
            p.applied = Stream {
                rate: 0.0,
                cap: 0,
                seq: t.seq,
            };
        }
    }

    /// One round: streams for the shards with requests, recalls for a
    /// shard that refuses them, top-ups for idle shards.
    ///
    /// - **Streams.** The shards with demand share the rate in proportion
    ///   to it (all of it when they ask for at least half; otherwise twice
    ///   their demand, the rest refilling the pool), and the capacity idle
    ///   shards do not hold, at least one token each. A grown stream takes
    ///   its cap from free room first, then moves pool tokens to the shard
    ///   with it. A shrunk one is sent at once; what it frees is handed on
    ///   once the shard applied it.
    /// - **Recalls.** If a shard refused requests for lack of tokens
    ///   (starving: not just a forecast), idle shards without a stream are
    ///   asked for what they hold (at most once per [`RECALL_GAP`]). An idle
    ///   shard otherwise keeps its share, so its own next request is not
    ///   refused for a token moved away on a guess.
    /// - **Top-ups.** If no shard refused requests for [`TOP_UP_CALM`], idle
    ///   shards below their share of the burst are topped up to it from the
    ///   pool as tokens come back (looked at again every [`TOP_UP_STEP`] or
    ///   when the next token is due, whichever is later), and idle shards
    ///   holding more than their share give the excess back while another
    ///   is below it. So the first requests after a quiet spell are served
    ///   wherever they land. Shards that refused requests most recently are
    ///   topped up first: tokens recalled for one reach it.
    pub fn distribute(&mut self, now: Instant) -> Grants {
        self.refill(now);
        // A new per-client bucket: the shares of the shards that have not
        // reported it yet are not handed out.
        let held_back = match self.grace_until {
            Some(t) if now < t => {
                self.parts.iter().filter(|p| !p.known).count() as f64 * self.share
            }
            _ => 0.0,
        };
        self.level -= held_back;
        self.held_back = held_back;
        let mut g = self.round(now);
        self.level += held_back;
        self.held_back = 0.0;
        if let (Some(t), true) = (self.grace_until, held_back > 0.0) {
            g.retry_at = Some(g.retry_at.map_or(t, |r| r.min(t)));
        }
        g
    }

    fn round(&mut self, now: Instant) -> Grants {
        let mut g = Grants::default();
        let n = self.parts.len();
        if self.parts.iter().any(|p| p.starving) {
            self.last_short = Some(now);
        }
        let short = if self.streaming {
            self.streams(&mut g);
            false
        } else {
            self.leases(&mut g)
        };
        self.rotation = (self.rotation + 1) % n.max(1);
        let starving = self.parts.iter().any(|p| p.starving);
        let recall_due = self
            .last_recall
            .is_none_or(|t| now.saturating_duration_since(t) >= RECALL_GAP);
        let idle = |p: &Part| p.known && !p.active() && p.rate() == 0.0;
        if starving && recall_due {
            // Shards without a request for RECALL_IDLE and without a
            // stream: their tokens wait for requests that are not coming.
            let quiet = |p: &Part| {
                p.last_busy
                    .is_none_or(|t| now.saturating_duration_since(t) >= RECALL_IDLE)
            };
            for s in 0..self.parts.len() {
                let p = &self.parts[s];
                if !p.busy && quiet(p) && p.rate() == 0.0 && p.out > 0.0 {
                    self.recall(&mut g, s, 0);
                }
            }
            if !g.recalls.is_empty() {
                self.last_recall = Some(now);
            }
        }
        if short {
            // Look again when the next token is due.
            let missing = (1.0 - self.level.max(0.0)).max(0.0);
            let wait = Duration::from_secs_f64((missing / self.rate).min(3600.0));
            g.retry_at = Some(now + wait.max(MIN_RETRY));
            self.last_short = Some(now);
            return g;
        }
        if starving {
            return g;
        }
        let below = |g: &Global| g.parts.iter().any(|p| idle(p) && p.out < g.share - EPSILON);
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
        let above = self
            .parts
            .iter()
            .any(|p| idle(p) && p.out > self.share + EPSILON);
        if above && recall_due {
            for s in 0..self.parts.len() {
                let p = &self.parts[s];
                if idle(p) && p.out > self.share + EPSILON {
                    self.recall(&mut g, s, self.share as u32);
                }
            }
            self.last_recall = Some(now);
        }
        // The shards that refused requests most recently first, the others
        // in rotation: tokens recalled for a refusing shard go to it even
        // when its demand faded (within tens of ms) before the idle shards
        // answered the recall (up to an idle tick), instead of back to an
        // idle shard that has no request.
        let mut order: SmallVec<[usize; 8]> = (0..n).map(|i| (self.rotation + i) % n).collect();
        order.sort_by_key(|&s| std::cmp::Reverse(self.parts[s].starved_at));
        for s in order {
            if !idle(&self.parts[s]) {
                continue;
            }
            // Only a whole share: a fraction of a token waiting on a
            // shard serves no request.
            let give = self.share - self.parts[s].out;
            if give > EPSILON && give <= self.level + EPSILON {
                self.level = snap(self.level - give);
                self.parts[s].out = self.share;
                g.grants.push((s, give));
            }
        }
        let cap = self.capacity - self.reserved();
        let pool_rate = self.pool_rate();
        if below(self) && (self.level < cap && pool_rate > 0.0 || above) {
            // More tokens will come back: top up again when one has.
            let missing = (1.0 - self.level.max(0.0)).max(0.0);
            let wait = Duration::from_secs_f64((missing / pool_rate.max(1e-9)).min(3600.0));
            g.retry_at = Some(now + wait.max(TOP_UP_STEP));
        }
        g
    }

    fn recall(&mut self, g: &mut Grants, s: usize, keep: u32) {
        self.recall_seq = self.recall_seq.wrapping_add(1);
        self.parts[s].recall_sent = self.recall_seq;
        g.recalls.push((s, keep, self.recall_seq));
    }

    /// Leases whole tokens to shards below what they want, starting from a
    /// rotating shard so that scarce tokens are shared. True if a shard is
    /// left short.
    fn leases(&mut self, g: &mut Grants) -> bool {
        let n = self.parts.len();
        let mut short = false;
        for i in 0..n {
            let s = (self.rotation + i) % n;
            let deficit = (self.parts[s].want as f64 - self.parts[s].out).ceil();
            if deficit < 1.0 {
                continue;
            }
            let give = deficit.min(self.level.floor()).max(0.0);
            if give >= 1.0 {
                self.level -= give;
                self.parts[s].out += give;
                g.grants.push((s, give));
            }
            if give < deficit {
                short = true;
            }
        }
        short
    }

    /// Sets the streams of the shards with demand (see
    /// [`Global::distribute`]).
    fn streams(&mut self, g: &mut Grants) {
        let n = self.parts.len();
        let mut target = vec![(0.0f64, 0u32); n];
        let active: Vec<usize> = (0..n).filter(|&s| self.parts[s].active()).collect();
        if !active.is_empty() {
            let demand = |p: &Part| p.demand.max(1.0);
            let total: f64 = active.iter().map(|&s| demand(&self.parts[s])).sum();
            let scale = if total >= self.rate / 2.0 {
                self.rate / total
            } else {
                2.0
            };
            // Capacity idle shards do not hold: pool tokens included.
            let idle_out: f64 = (0..n)
                .filter(|s| !active.contains(s))
                .map(|s| self.parts[s].reserve())
                .sum();
            let mut room = (self.capacity - idle_out).floor().max(0.0) as u32;
            let mut by_demand = active.clone();
            by_demand.sort_by(|&a, &b| demand(&self.parts[b]).total_cmp(&demand(&self.parts[a])));
            let slots = room;
            for &s in &by_demand {
                let d = demand(&self.parts[s]);
                let want = ((slots as f64 * d / total).floor() as u32).max(1).min(room);
                room -= want;
                target[s] = if want > 0 {
                    (d * scale, want)
                } else {
                    (0.0, 0)
                };
            }
            if let Some(&top) = by_demand.first() {
                if target[top].1 > 0 {
                    target[top].1 += room;
                }
            }
        }
        let mut free_rate = self.pool_rate();
        let mut free_room =
            self.capacity - (self.level + self.held_back).max(0.0) - self.reserved();
        // Shrinking first (what they free is counted once applied), then
        // growing from what is free, in rotating order.
        for pass in 0..2 {
            for i in 0..n {
                let s = (self.rotation + i) % n;
                let (rate, cap) = target[s];
                let p = &self.parts[s];
                // One change at a time: the shard's reserve is known only
                // for the settings it confirmed and the one on its way.
                if p.pending() {
                    continue;
                }
                let shrinks = rate < p.sent.rate || cap < p.sent.cap;
                if (pass == 0) != shrinks {
                    continue;
                }
                let same_rate = (rate - p.sent.rate).abs() <= RATE_STEP * p.sent.rate.max(rate);
                let same = same_rate && cap == p.sent.cap && (rate == 0.0) == (p.sent.rate == 0.0);
                if same {
                    continue;
                }
                let mut next = Stream {
                    rate: rate.min(p.sent.rate),
                    cap: cap.min(p.sent.cap),
                    seq: 0,
                };
                if rate > p.sent.rate {
                    let have = p.rate();
                    let r = rate.min(have + free_rate.max(0.0)).max(next.rate);
                    free_rate -= (r - have).max(0.0);
                    next.rate = r;
                }
                let recalling = p.recall_sent != p.recall_done;
                if cap > p.sent.cap && next.rate > 0.0 && !recalling {
                    // A grown cap takes its room from free room, or moves
                    // pool tokens to the shard with it. Never more tokens
                    // than the cap grows by: the shard may have filled its
                    // old cap already (unreported), and what it holds must
                    // stay within what is counted for it.
                    let old = p.sent.cap;
                    let before = p.reserve();
                    let mut grown = None;
                    for c in (old + 1..=cap).rev() {
                        let moved = ((c - old) as f64).min(self.level.max(0.0));
                        let after = (c as f64).max(p.out + moved);
                        let room = after - before - moved;
                        if room <= free_room.max(0.0) + EPSILON {
                            grown = Some((c, moved, room.max(0.0)));
                            break;
                        }
                    }
                    if let Some((c, moved, room)) = grown {
                        free_room -= room;
                        if moved > EPSILON {
                            self.level -= moved;
                            self.parts[s].out += moved;
                            g.grants.push((s, moved));
                        }
                        next.cap = c;
                    }
                }
                if next.rate > 0.0 && next.cap == 0 {
                    next.rate = 0.0;
                }
                let p = &mut self.parts[s];
                if next.rate == p.sent.rate && next.cap == p.sent.cap {
                    continue;
                }
                self.seq = self.seq.wrapping_add(1);
                next.seq = self.seq;
                p.sent = next;
                g.streams.push((s, next));
            }
        }
    }

    /// `level + Σ reserve ≤ capacity` (tests: a bucket without per-client
    /// advances).
    #[cfg(test)]
    pub fn holds_its_invariant(&self) -> bool {
        self.level + self.reserved() <= self.capacity + 1e-6
            && self.parts.iter().map(Part::rate).sum::<f64>() <= self.rate * (1.0 + 1e-9)
    }

    /// Full, no shard holds tokens or runs a stream: indistinguishable
    /// from a new bucket, so it can be forgotten.
    pub fn is_full_and_unleased(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.parts
            .iter()
            .all(|p| p.out <= 0.0 && p.rate() == 0.0 && !p.pending())
            && self.level >= self.capacity
    }
}
