//! Throttling: the third policy phase, after IP rules and CORS. Token buckets
//! per route, per API and server-wide (each optionally per client IP) are
//! checked on the request's shard with shard-local state only; a coordinator
//! thread owns each bucket's global token count and leases tokens to the
//! shards over crossbeam channels, so a limit holds for the whole process.
//!
//! The request path ([`ShardThrottle::check`]) never touches a channel: it
//! spends tokens the shard already holds. A per-shard task
//! ([`ShardThrottle::reconciler`]) reports spending and demand to the
//! coordinator every [`TICK`] and takes in new leases. The algorithm and its
//! error bound are in docs/throttling.md.

mod bucket;

use bucket::snap;
pub use bucket::{Global, Grants, Stream, Tally};

use super::fanout::ToShards;
use super::{Decision, Refusal, RequestView};
pub use crate::config::raw::throttle::{RawRate, RawThrottle};
use crate::config::ConfigError;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Largest `rate` accepted (requests per second). Far above what one host
/// serves; it keeps the arithmetic far from float and integer limits.
pub const MAX_RATE: f64 = 10_000_000.0;
/// Largest `burst` accepted.
pub const MAX_BURST: i64 = 100_000_000;
/// How often a shard reconciles while it has throttling traffic.
pub const TICK: Duration = Duration::from_millis(2);
/// How often a shard reconciles when nothing happened for [`QUIET_AFTER`]
/// (it answers recalls then); the first throttled request wakes it at once.
pub const IDLE_TICK: Duration = Duration::from_millis(50);
/// How long without throttled requests before a shard slows to [`IDLE_TICK`].
pub const QUIET_AFTER: Duration = Duration::from_millis(50);
/// How long a quiet shard's reconciler sleeps at most after a step with
/// nothing to report and nothing taken in; a throttled request or a
/// message from the coordinator wakes it sooner. It then forgets idle
/// per-client buckets.
pub const IDLE_SLEEP: Duration = Duration::from_secs(1);
/// How many seconds of a shard's measured demand it asks to hold.
pub const HORIZON_SECS: f64 = 0.010;
/// A per-client bucket unused this long on a shard is returned and forgotten.
pub const CLIENT_IDLE_EVICT: Duration = Duration::from_secs(10);
/// Per-client buckets one shard tracks at most; a new client beyond that is
/// refused (429) until idle ones are evicted.
pub const MAX_CLIENTS_PER_SHARD: usize = 100_000;

// === impl config ===

/// Which level a bucket belongs to, in checking order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A usage plan's bucket for the request's API key (per route where
    /// the plan says so); one bucket per key.
    ApiKey,
    Route,
    Api,
    Server,
}

/// One configured token bucket (per client IP or not).
#[derive(Debug, Clone, PartialEq)]
pub struct BucketDef {
    pub level: Level,
    /// The config key it came from, for logs.
    pub key: String,
    pub rate: f64,
    pub burst: u32,
    pub per_client_ip: bool,
    /// One bucket per API key (a usage plan's limit).
    pub per_api_key: bool,
    /// `Retry-After` seconds when this bucket refuses: the time one token
    /// takes to come back, at least 1.
    pub retry_after: u64,
}

impl BucketDef {
    fn new(level: Level, key: String, rate: f64, burst: u32, per_client_ip: bool) -> BucketDef {
        let retry_after = (1.0 / rate).ceil().clamp(1.0, u32::MAX as f64) as u64;
        BucketDef {
            level,
            key,
            rate,
            burst,
            per_client_ip,
            per_api_key: false,
            retry_after,
        }
    }

    /// A bucket kept per client address or per API key, made on first use.
    fn dynamic(&self) -> bool {
        self.per_client_ip || self.per_api_key
    }
}

/// The buckets that apply to one route, in the order they are checked
/// (route, then API); the server-wide ones follow.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {
    /// Route, API, then server-wide bucket ids.
    defs: SmallVec<[u32; 4]>,
}

impl RouteLimits {
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// Bucket ids in checking order: route, API, then server-wide.
    fn ids(&self) -> impl Iterator<Item = u32> + Clone + '_ {
        self.defs.iter().copied()
    }
}

/// Everything about throttling the shards share, compiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThrottlePlan {
    /// Every bucket, indexed by the ids in [`RouteLimits`].
    pub defs: Vec<BucketDef>,
}

/// Collects bucket definitions while routes compile.
#[derive(Default)]
pub struct Builder {
    defs: Vec<BucketDef>,
    /// Bucket ids of each API's throttle, made once per API.
    api_defs: HashMap<usize, SmallVec<[u32; 2]>>,
    /// The server-wide buckets, compiled first so every route lists them.
    server: SmallVec<[u32; 2]>,
}

/// Validates a `rate`/`burst` pair; `key` names the table holding them.
fn rate_burst(
    rate: Option<f64>,
    burst: Option<i64>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<(f64, u32)> {
    let (rate, burst) = match (rate, burst) {
        (Some(r), Some(b)) => (r, b),
        (Some(_), None) => {
            errors.push(ConfigError::new(
                format!("{key}.burst"),
                "is missing: give `burst` (an integer >= 1) with `rate`",
            ));
            return None;
        }
        (None, Some(_)) => {
            errors.push(ConfigError::new(
                format!("{key}.rate"),
                "is missing: give `rate` (requests per second, > 0) with `burst`",
            ));
            return None;
        }
        (None, None) => return None,
    };
    let mut ok = true;
    if !rate.is_finite() || rate <= 0.0 || rate > MAX_RATE {
        errors.push(ConfigError::new(
            format!("{key}.rate"),
            format!(
                "{rate} is not a valid rate: give requests per second, more than 0 and at most {MAX_RATE}"
            ),
        ));
        ok = false;
    }
    if !(1..=MAX_BURST).contains(&burst) {
        errors.push(ConfigError::new(
            format!("{key}.burst"),
            format!("{burst} is not a valid burst: give an integer from 1 to {MAX_BURST}"),
        ));
        ok = false;
    }
    ok.then_some((rate, burst as u32))
}

impl Builder {
    /// Starts with the server-wide buckets (`[server] throttle`).
    pub fn new(server: Option<&RawThrottle>, errors: &mut Vec<ConfigError>) -> Builder {
        let mut b = Builder::default();
        if let Some(raw) = server {
            b.server = b.compile(Level::Server, raw, "server", errors);
        }
        b
    }

    /// Compiles the buckets of `key` (`server`, `apis[i]` or
    /// `apis[i].routes[j]`) and returns their ids.
    fn compile(
        &mut self,
        level: Level,
        raw: &RawThrottle,
        key: &str,
        errors: &mut Vec<ConfigError>,
    ) -> SmallVec<[u32; 2]> {
        let tkey = format!("{key}.throttle");
        let mut ids = SmallVec::new();
        let ip_key = format!("{tkey}.per_client_ip");
        let whole = rate_burst(raw.rate, raw.burst, &tkey, errors);
        let per_ip = raw.per_client_ip.as_ref().and_then(|p| {
            if p.rate.is_none() && p.burst.is_none() {
                errors.push(ConfigError::new(
                    ip_key.clone(),
                    "needs `rate` and `burst`, e.g. per_client_ip = { rate = 10, burst = 20 }",
                ));
            }
            rate_burst(p.rate, p.burst, &ip_key, errors)
        });
        if raw.rate.is_none() && raw.burst.is_none() && raw.per_client_ip.is_none() {
            errors.push(ConfigError::new(
                tkey.clone(),
                "is empty: give `rate` and `burst`, `per_client_ip = { rate, burst }`, or both",
            ));
        }
        for (pair, per_client_ip, k) in [(whole, false, &tkey), (per_ip, true, &ip_key)] {
            if let Some((rate, burst)) = pair {
                ids.push(self.defs.len() as u32);
                self.defs
                    .push(BucketDef::new(level, k.clone(), rate, burst, per_client_ip));
            }
        }
        ids
    }

    pub fn route(
        &mut self,
        api_index: usize,
        api: Option<&RawThrottle>,
        _route_id: usize,
        route: Option<&RawThrottle>,
        key: &str,
        errors: &mut Vec<ConfigError>,
    ) -> RouteLimits {
        let mut defs = SmallVec::new();
        if let Some(raw) = route {
            defs.extend(self.compile(Level::Route, raw, key, errors));
        }
        if let Some(raw) = api {
            let ids = match self.api_defs.get(&api_index) {
                Some(ids) => ids.clone(),
                None => {
                    // `key` is `apis[i].routes[j]`: the API's key is its prefix.
                    let akey = key.split(".routes[").next().unwrap_or(key).to_string();
                    let ids = self.compile(Level::Api, raw, &akey, errors);
                    self.api_defs.insert(api_index, ids.clone());
                    ids
                }
            };
            defs.extend(ids);
        }
        defs.extend(self.server.iter().copied());
        RouteLimits { defs }
    }

    /// A usage plan's bucket (one per API key): `key` is its config path.
    pub fn key_bucket(&mut self, key: String, rate: f64, burst: u32) -> u32 {
        let mut def = BucketDef::new(Level::ApiKey, key, rate, burst, false);
        def.per_api_key = true;
        self.defs.push(def);
        (self.defs.len() - 1) as u32
    }

    /// Validates a usage plan's `throttle = { rate, burst }`.
    pub fn plan_rate(
        raw: &RawRate,
        key: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<(f64, u32)> {
        if raw.rate.is_none() && raw.burst.is_none() {
            errors.push(ConfigError::new(
                key,
                "needs `rate` and `burst`, e.g. throttle = { rate = 10, burst = 20 }",
            ));
            return None;
        }
        rate_burst(raw.rate, raw.burst, key, errors)
    }

    pub fn finish(self) -> ThrottlePlan {
        ThrottlePlan { defs: self.defs }
    }
}

// === impl messages ===

/// Whose bucket a dynamic bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Client {
    Ip(IpAddr),
    /// An API key ([`crate::policy::api_key::KeyId`]).
    ApiKey(u32),
}

/// A bucket: its definition's id, and the client for per-client and
/// per-key buckets.
pub type Key = (u32, Option<Client>);

/// A shard's report for one bucket since its previous one.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub shard: usize,
    pub key: Key,
    pub tally: Tally,
    /// The shard forgot the bucket (an idle per-client bucket).
    pub forget: bool,
}

/// What the coordinator sends a shard.
#[derive(Debug, Clone, Copy)]
pub enum ToShard {
    Grant {
        key: Key,
        tokens: f64,
    },
    /// Give back what you hold beyond `keep` if you are idle: another
    /// shard refuses requests, or is below its share.
    Recall {
        key: Key,
        keep: u32,
        /// Numbers the recalls of one bucket; the shard reports the last it
        /// answered.
        seq: u32,
    },
    /// Refill your own tokens at this rate, up to this cap (rate 0: stop).
    Stream {
        key: Key,
        stream: Stream,
    },
}

/// A shard's end of the cross-shard reconciliation channels, made by
/// [`links`] before the shards start.
pub struct ShardLink {
    to_coordinator: Option<Sender<Report>>,
    from_coordinator: Option<Receiver<ToShard>>,
    /// Where the reconciler leaves its waker before an [`IDLE_SLEEP`]:
    /// the coordinator wakes it after sending this shard anything.
    idle_waker: Option<Sender<crate::net::RemoteWaker>>,
    shards: usize,
}

/// One link per shard. With two shards or more, when any bucket is
/// configured, this starts the coordinator thread, which stops when every
/// shard has dropped its link. A single shard keeps every bucket exactly on
/// its own: no coordinator.
pub fn links(plan: &ThrottlePlan, shards: usize) -> Vec<ShardLink> {
    match prepare(plan, shards) {
        None => unlinked(shards),
        Some((coordinator, report_rx, links)) => {
            let spawned = std::thread::Builder::new()
                .name("coregate-throttle".into())
                .spawn(move || coordinator.run(report_rx));
            if let Err(e) = spawned {
                // Shards then spend only their initial share of each burst
                // and refuse the rest: throttling fails closed, loudly.
                crate::log!("error", "cannot start the throttle coordinator thread: {e}");
            }
            links
        }
    }
}

fn unlinked(shards: usize) -> Vec<ShardLink> {
    (0..shards)
        .map(|_| ShardLink {
            to_coordinator: None,
            from_coordinator: None,
            idle_waker: None,
            shards,
        })
        .collect()
}

/// The coordinator, its report channel and the shards' links; None when
/// there is nothing to coordinate (no bucket, or one shard).
fn prepare(
    plan: &ThrottlePlan,
    shards: usize,
) -> Option<(Coordinator, Receiver<Report>, Vec<ShardLink>)> {
    prepare_at(plan, shards, Instant::now())
}

/// [`prepare`] with the coordinator's clock starting at `now`.
fn prepare_at(
    plan: &ThrottlePlan,
    shards: usize,
    now: Instant,
) -> Option<(Coordinator, Receiver<Report>, Vec<ShardLink>)> {
    if plan.defs.is_empty() || shards <= 1 {
        return None;
    }
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let (to_shards, from) = ToShards::new(shards);
    let coordinator = Coordinator::new(plan.defs.clone(), shards, to_shards, now);
    let links = from
        .into_iter()
        .map(|(rx, wtx)| ShardLink {
            to_coordinator: Some(report_tx.clone()),
            from_coordinator: Some(rx),
            idle_waker: Some(wtx),
            shards,
        })
        .collect();
    Some((coordinator, report_rx, links))
}

/// A shard's initial share of a bucket: what it may spend before its first
/// lease arrives.
pub fn initial_share(burst: u32, shards: usize) -> u32 {
    (burst / shards.max(1) as u32).max(1)
}

// === impl Coordinator ===

/// Owns the global token count of every bucket; runs on its own thread,
/// asleep on its channel unless a bucket needs looking at again.
struct Coordinator {
    defs: Vec<BucketDef>,
    shards: usize,
    to_shards: ToShards<ToShard>,
    buckets: HashMap<Key, Global, ahash::RandomState>,
    /// Buckets to look at again at a given time: a shard is short of
    /// tokens, or idle shards are to be topped up as tokens come back.
    due: HashMap<Key, Instant, ahash::RandomState>,
    next_sweep: Instant,
}

/// How often the coordinator forgets full, unleased per-client buckets.
const COORDINATOR_SWEEP: Duration = Duration::from_secs(1);

impl Coordinator {
    fn new(
        defs: Vec<BucketDef>,
        shards: usize,
        to_shards: ToShards<ToShard>,
        now: Instant,
    ) -> Coordinator {
        let mut buckets = HashMap::default();
        for (id, def) in defs.iter().enumerate() {
            if !def.dynamic() {
                // The shards start holding their share of it: counted here,
                // not reported as an advance.
                buckets.insert(
                    (id as u32, None),
                    Global::with_shares(def.rate, def.burst, shards, now),
                );
            }
        }
        Coordinator {
            defs,
            shards,
            to_shards,
            buckets,
            due: HashMap::default(),
            next_sweep: now + COORDINATOR_SWEEP,
        }
    }

    /// When the next pass is due if no report comes first.
    fn next_wake(&self) -> Instant {
        self.due
            .values()
            .copied()
            .min()
            .unwrap_or(self.next_sweep)
            .min(self.next_sweep)
    }

    fn run(mut self, rx: Receiver<Report>) {
        let mut reports: Vec<Report> = Vec::new();
        loop {
            let wait = self.next_wake().saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(r) => {
                    reports.push(r);
                    // Take everything already queued before distributing.
                    loop {
                        match rx.try_recv() {
                            Ok(r) => reports.push(r),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => return,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.pass(Instant::now(), &mut reports);
            self.to_shards.wake();
        }
    }

    /// One pass at `now`: applies `reports` (drained), distributes the
    /// buckets they touched and those due, forgets idle per-client ones.
    fn pass(&mut self, now: Instant, reports: &mut Vec<Report>) {
        let mut touched: Vec<Key> = Vec::with_capacity(reports.len());
        for r in reports.drain(..) {
            self.apply(r, now, &mut touched);
        }
        for (k, at) in &self.due {
            if *at <= now {
                touched.push(*k);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            self.distribute(key, now);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + COORDINATOR_SWEEP;
            self.buckets
                .retain(|k, g| k.1.is_none() || !g.is_full_and_unleased(now));
            let buckets = &self.buckets;
            self.due.retain(|k, _| buckets.contains_key(k));
        }
    }

    fn apply(&mut self, r: Report, now: Instant, touched: &mut Vec<Key>) {
        let Some(def) = self.defs.get(r.key.0 as usize) else {
            return;
        };
        if r.shard >= self.shards {
            return;
        }
        let shards = self.shards;
        let g = self
            .buckets
            .entry(r.key)
            .or_insert_with(|| Global::new(def.rate, def.burst, shards, now));
        if r.forget {
            g.forget(now, r.shard, &r.tally);
        } else {
            g.apply(now, r.shard, &r.tally);
        }
        touched.push(r.key);
    }

    fn distribute(&mut self, key: Key, now: Instant) {
        let Some(g) = self.buckets.get_mut(&key) else {
            self.due.remove(&key);
            return;
        };
        let out: Grants = g.distribute(now);
        // Streams first: a grant can need the cap a stream gives.
        for &(shard, stream) in &out.streams {
            self.to_shards.send(shard, ToShard::Stream { key, stream });
        }
        for &(shard, tokens) in &out.grants {
            self.to_shards.send(shard, ToShard::Grant { key, tokens });
        }
        for &(shard, keep, seq) in &out.recalls {
            self.to_shards
                .send(shard, ToShard::Recall { key, keep, seq });
        }
        match out.retry_at {
            Some(at) => {
                self.due.insert(key, at);
            }
            None => {
                self.due.remove(&key);
            }
        }
    }
}

// === impl ShardThrottle ===

/// A shard's view of one bucket.
#[derive(Debug, Clone)]
struct Local {
    /// Tokens this shard may spend now (whole ones; a stream adds
    /// fractions as time passes).
    held: f64,
    /// Its stream: it refills `held` at `rate` up to `cap` (rate 0: none).
    /// A single shard runs the whole bucket as its stream.
    rate: f64,
    cap: f64,
    /// The last stream setting applied.
    seq: u32,
    refilled: Instant,
    /// Since the last report: tokens spent, taken in advance, given back,
    /// made by the stream; requests seen and refused for lack of tokens.
    spent: u32,
    advanced: u32,
    returned: f64,
    accrued: f64,
    attempts: u32,
    refused: u32,
    /// Requests per second, smoothed over ticks.
    demand: f64,
    last_demand: f64,
    last_want: u32,
    last_busy: bool,
    last_starving: bool,
    last_seq: u32,
    last_recall_seq: u32,
    /// A recall to answer at the next report: keep this many; its number.
    recall: Option<(u32, u32)>,
    /// The last recall answered.
    recall_seq: u32,
    last_used: Instant,
    /// A per-client bucket listed in `Inner::active_clients`.
    active: bool,
}

impl Local {
    /// A bucket holding `held` tokens, `advanced` of them taken without a
    /// lease (to report), refilling at `rate` up to `cap`.
    fn new(held: f64, advanced: u32, rate: f64, cap: f64, now: Instant) -> Local {
        Local {
            held,
            rate,
            cap,
            seq: 0,
            refilled: now,
            spent: 0,
            advanced,
            returned: 0.0,
            accrued: 0.0,
            attempts: 0,
            refused: 0,
            demand: 0.0,
            last_demand: 0.0,
            last_want: 0,
            last_busy: false,
            last_starving: false,
            last_seq: 0,
            last_recall_seq: 0,
            recall: None,
            recall_seq: 0,
            last_used: now,
            active: false,
        }
    }

    /// Adds what the stream made since the last refill.
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        if self.rate > 0.0 && self.held < self.cap {
            let next = snap((self.held + self.rate * dt).min(self.cap));
            self.accrued += next - self.held;
            self.held = next;
        }
    }

    fn grant(&mut self, tokens: f64, now: Instant) {
        self.refill(now);
        self.held = snap(self.held + tokens);
    }

    /// A new stream from now. Tokens held beyond its cap stay (they are
    /// counted for the shard); the stream refills only below it.
    fn set_stream(&mut self, stream: Stream, now: Instant) {
        self.refill(now);
        self.rate = stream.rate;
        self.cap = stream.cap as f64;
        self.seq = stream.seq;
    }

    /// Builds this tick's report, if there is anything to say.
    fn report(&mut self, burst: u32, dt: f64, now: Instant) -> Option<Tally> {
        self.refill(now);
        let rate = self.attempts as f64 / dt.max(1e-3);
        // Rises at once, decays by 30% per TICK of time (an idle shard
        // ticks less often; its demand still fades in a few ms).
        let keep = 0.7f64.powf(dt / TICK.as_secs_f64());
        self.demand = if rate >= self.demand {
            rate
        } else {
            self.demand * keep + rate * (1.0 - keep)
        };
        if self.demand < 1.0 && self.attempts == 0 {
            self.demand = 0.0;
        }
        let want = if self.demand == 0.0 {
            0
        } else {
            ((self.demand * HORIZON_SECS).ceil() as u32)
                .saturating_add(1)
                .min(burst)
        };
        let busy = self.attempts > 0;
        let starving = self.refused > 0;
        if let Some((keep, seq)) = self.recall.take() {
            self.recall_seq = seq;
            // Not while a stream runs (one set after the recall was sent):
            // the coordinator counts its cap for it, tokens included.
            if !busy && self.rate == 0.0 && self.held > keep as f64 {
                self.returned += self.held - keep as f64;
                self.held = keep as f64;
            }
        }
        let changed = self.spent > 0
            || self.advanced > 0
            || self.returned > 0.0
            || self.accrued > 0.0
            || self.demand != self.last_demand
            || want != self.last_want
            || busy != self.last_busy
            || starving != self.last_starving
            || self.seq != self.last_seq
            || self.recall_seq != self.last_recall_seq;
        let out = Tally {
            spent: self.spent,
            advanced: self.advanced,
            returned: self.returned,
            accrued: self.accrued,
            demand: self.demand,
            want,
            busy,
            starving,
            seq: self.seq,
            recall_seq: self.recall_seq,
        };
        self.spent = 0;
        self.advanced = 0;
        self.returned = 0.0;
        self.accrued = 0.0;
        self.attempts = 0;
        self.refused = 0;
        self.last_demand = self.demand;
        self.last_want = want;
        self.last_busy = busy;
        self.last_starving = starving;
        self.last_seq = self.seq;
        self.last_recall_seq = self.recall_seq;
        changed.then_some(out)
    }
}

struct Inner {
    shard: usize,
    shards: usize,
    /// One shard: each bucket is an exact token bucket kept here, with no
    /// coordinator and no reconciliation.
    alone: bool,
    defs: Vec<BucketDef>,
    /// Indexed by bucket id; per-client definitions leave theirs unused.
    fixed: RefCell<Vec<Local>>,
    clients: RefCell<HashMap<(u32, Client), Local, ahash::RandomState>>,
    /// The per-client buckets with something to report: only these are
    /// visited each tick, however many clients are known.
    active_clients: RefCell<Vec<(u32, Client)>>,
    to_coordinator: Option<Sender<Report>>,
    from_coordinator: Option<Receiver<ToShard>>,
    /// When a throttled request last arrived.
    last_request: Cell<Instant>,
    /// The reconciler's waker while it sleeps an [`IDLE_TICK`] or an
    /// [`IDLE_SLEEP`]: the next request wakes it (same thread, no lock).
    idle_waker: Cell<Option<Waker>>,
    woken: Cell<bool>,
    /// For the coordinator, before an [`IDLE_SLEEP`] ([`ShardLink`]).
    remote_waker: Option<Sender<crate::net::RemoteWaker>>,
    /// The last reconciliation step had nothing to report and took
    /// nothing in.
    quiet: Cell<bool>,
}

/// A shard's buckets.
pub struct ShardThrottle {
    inner: Rc<Inner>,
}

/// IPv4-mapped IPv6 addresses count as the IPv4 client they are.
fn client_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How long the reconciler sleeps after a tick at `now`: [`TICK`] while
/// throttled requests arrive, [`IDLE_TICK`] once they stopped for
/// [`QUIET_AFTER`] (a request wakes it early then).
fn tick_after(last_request: Instant, now: Instant) -> Duration {
    if now.saturating_duration_since(last_request) >= QUIET_AFTER {
        IDLE_TICK
    } else {
        TICK
    }
}

impl ShardThrottle {
    pub fn new(plan: &ThrottlePlan, shard: usize, link: ShardLink) -> ShardThrottle {
        Self::new_at(plan, shard, link, Instant::now())
    }

    fn new_at(plan: &ThrottlePlan, shard: usize, link: ShardLink, now: Instant) -> ShardThrottle {
        let shards = link.shards.max(1);
        let alone = shards == 1;
        // Fixed buckets' initial shares are counted by the coordinator
        // already (`Global::with_shares`): not advances to report.
        let fixed = plan
            .defs
            .iter()
            .map(|d| {
                if alone {
                    Local::new(d.burst as f64, 0, d.rate, d.burst as f64, now)
                } else {
                    Local::new(initial_share(d.burst, shards) as f64, 0, 0.0, 0.0, now)
                }
            })
            .collect();
        ShardThrottle {
            inner: Rc::new(Inner {
                shard,
                shards,
                alone,
                defs: plan.defs.clone(),
                fixed: RefCell::new(fixed),
                clients: RefCell::new(HashMap::default()),
                active_clients: RefCell::new(Vec::new()),
                to_coordinator: link.to_coordinator,
                from_coordinator: link.from_coordinator,
                last_request: Cell::new(now),
                idle_waker: Cell::new(None),
                woken: Cell::new(false),
                remote_waker: link.idle_waker,
                quiet: Cell::new(false),
            }),
        }
    }

    /// Checks every bucket that applies and spends one token of each only
    /// if all of them have one: a refused request costs no level anything.
    /// `key_bucket` is the usage plan's bucket of the request's API key
    /// (definition id, key id), checked first.
    pub fn check(
        &self,
        limits: &RouteLimits,
        key_bucket: Option<(u32, u32)>,
        view: &RequestView<'_>,
        _extra: &mut Vec<u8>,
    ) -> Decision {
        match self.check_at(limits, key_bucket, view.peer.ip(), view.now) {
            Ok(()) => Decision::Continue,
            Err(retry_after) => {
                let mut r = Refusal::json(429, "Too Many Requests");
                r.headers.extend_from_slice(b"retry-after: ");
                r.headers
                    .extend_from_slice(retry_after.to_string().as_bytes());
                r.headers.extend_from_slice(b"\r\n");
                Decision::Respond(r)
            }
        }
    }

    /// [`ShardThrottle::check`] for a client address at `now`: Ok when
    /// admitted (tokens spent), else the `Retry-After` seconds.
    fn check_at(
        &self,
        limits: &RouteLimits,
        key_bucket: Option<(u32, u32)>,
        peer: IpAddr,
        now: Instant,
    ) -> Result<(), u64> {
        let inner = &*self.inner;
        inner.last_request.set(now);
        if let Some(w) = inner.idle_waker.take() {
            inner.woken.set(true);
            w.wake();
        }
        let ip = Client::Ip(client_ip(peer));
        let mut fixed = inner.fixed.borrow_mut();
        let mut clients = inner.clients.borrow_mut();
        let mut retry_after = 0u64;
        // The API key's bucket first, then the route's, API's, server's.
        let ids = key_bucket.map(|(d, _)| d).into_iter().chain(limits.ids());
        let whose = |def: &BucketDef| match key_bucket {
            Some((_, k)) if def.per_api_key => Client::ApiKey(k),
            _ => ip,
        };
        for id in ids.clone() {
            let Some(def) = inner.defs.get(id as usize) else {
                continue;
            };
            let who = whose(def);
            let local = if def.dynamic() {
                let len = clients.len();
                match clients.get_mut(&(id, who)) {
                    Some(l) => l,
                    None if len >= MAX_CLIENTS_PER_SHARD => {
                        retry_after = retry_after.max(def.retry_after);
                        continue;
                    }
                    None => clients.entry((id, who)).or_insert_with(|| {
                        // A new client's bucket is full. Leased, the shard
                        // takes its share in advance and reports it.
                        if inner.alone {
                            let b = def.burst as f64;
                            Local::new(b, 0, def.rate, b, now)
                        } else {
                            let share = initial_share(def.burst, inner.shards);
                            Local::new(share as f64, share, 0.0, 0.0, now)
                        }
                    }),
                }
            } else {
                match fixed.get_mut(id as usize) {
                    Some(l) => l,
                    None => continue,
                }
            };
            local.last_used = now;
            local.refill(now);
            let empty = local.held < 1.0;
            if !inner.alone {
                local.attempts = local.attempts.saturating_add(1);
                if def.dynamic() && !local.active {
                    local.active = true;
                    inner.active_clients.borrow_mut().push((id, who));
                }
                if empty {
                    local.refused = local.refused.saturating_add(1);
                }
            }
            if empty {
                retry_after = retry_after.max(def.retry_after);
            }
        }
        if retry_after > 0 {
            return Err(retry_after);
        }
        for id in ids {
            let Some(def) = inner.defs.get(id as usize) else {
                continue;
            };
            let local = if def.dynamic() {
                clients.get_mut(&(id, whose(def)))
            } else {
                fixed.get_mut(id as usize)
            };
            if let Some(l) = local {
                l.held -= 1.0;
                if !inner.alone {
                    l.spent += 1;
                }
            }
        }
        Ok(())
    }

    /// The shard's reconciliation task: every [`TICK`] (or [`IDLE_TICK`]
    /// when quiet) it takes in leases and recalls and reports spending and
    /// demand; when a quiet step had nothing to report or take in, it
    /// sleeps until a throttled request or the coordinator wakes it, or
    /// [`IDLE_SLEEP`] passes. A single shard has nothing to reconcile: its task only
    /// forgets idle per-client buckets once they are full again, once a
    /// second, and ends at once when there are none. It also ends at once
    /// when no bucket is configured.
    pub fn reconciler(&self) -> impl Future<Output = ()> + 'static {
        let inner = self.inner.clone();
        async move {
            if inner.alone {
                if !inner.defs.iter().any(BucketDef::dynamic) {
                    return;
                }
                loop {
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                    inner.evict_clients(Instant::now());
                }
            }
            if inner.to_coordinator.is_none() {
                return;
            }
            let mut last = Instant::now();
            let mut next_evict = last + Duration::from_secs(1);
            loop {
                let mut slept = false;
                if tick_after(inner.last_request.get(), Instant::now()) == IDLE_TICK {
                    slept = inner.quiet.get();
                    inner
                        .idle_wait(if slept { IDLE_SLEEP } else { IDLE_TICK }, slept)
                        .await;
                } else {
                    glommio::timer::sleep(TICK).await;
                }
                let now = Instant::now();
                let mut dt = now.duration_since(last).as_secs_f64();
                if slept {
                    // Rates are measured as an idle tick measured them:
                    // the requests that ended the sleep came within its
                    // last IDLE_TICK at most.
                    dt = dt.min(IDLE_TICK.as_secs_f64());
                }
                last = now;
                if !inner.reconcile(now, dt) {
                    return;
                }
                if now >= next_evict {
                    next_evict = now + Duration::from_secs(1);
                    inner.evict_clients(now);
                }
            }
        }
    }
}

impl Inner {
    /// Sleeps `d`, or less if a throttled request arrives; `remote`: also
    /// less if the coordinator sends anything (the task's waker is left
    /// for it, and it wakes the task after sending).
    async fn idle_wait(&self, d: Duration, remote: bool) {
        self.woken.set(false);
        let mut timer = std::pin::pin!(glommio::timer::sleep(d));
        let mut left = false;
        std::future::poll_fn(|cx| {
            if self.woken.get() || timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if remote {
                if !left {
                    left = true;
                    if let Some(tx) = &self.remote_waker {
                        // Full: a waker of this same task is still there.
                        let _ = tx.try_send(crate::net::RemoteWaker::here(cx.waker()));
                    }
                }
                // After the waker was left: a message sent before it was
                // there is seen here, one sent after it wakes this task.
                if self
                    .from_coordinator
                    .as_ref()
                    .is_some_and(|rx| !rx.is_empty())
                {
                    return Poll::Ready(());
                }
            }
            self.idle_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        self.idle_waker.set(None);
        self.woken.set(false);
    }

    fn send(&self, r: Report) -> bool {
        match &self.to_coordinator {
            Some(tx) => tx.send(r).is_ok(),
            None => false,
        }
    }

    /// One reconciliation step at `now`, `dt` seconds after the previous
    /// one. False when the coordinator is gone.
    /// Sets `quiet` when it reported nothing and took nothing in.
    fn reconcile(&self, now: Instant, dt: f64) -> bool {
        let mut fixed = self.fixed.borrow_mut();
        let mut clients = self.clients.borrow_mut();
        // Messages taken in and reports sent.
        let mut busy = false;
        if let Some(rx) = &self.from_coordinator {
            loop {
                let msg = match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return false,
                };
                busy = true;
                let key = match msg {
                    ToShard::Grant { key, .. }
                    | ToShard::Recall { key, .. }
                    | ToShard::Stream { key, .. } => key,
                };
                let local = match key.1 {
                    None => fixed.get_mut(key.0 as usize),
                    Some(ip) => clients.get_mut(&(key.0, ip)),
                };
                let Some(l) = local else {
                    // A client bucket already forgotten: hand a lease
                    // straight back, answer a stream as not running and a
                    // recall as answered.
                    let tally = match msg {
                        ToShard::Grant { tokens, .. } => Tally {
                            returned: tokens,
                            ..Tally::default()
                        },
                        ToShard::Stream { stream, .. } => Tally {
                            seq: stream.seq,
                            ..Tally::default()
                        },
                        ToShard::Recall { seq, .. } => Tally {
                            recall_seq: seq,
                            ..Tally::default()
                        },
                    };
                    self.send(Report {
                        shard: self.shard,
                        key,
                        tally,
                        forget: true,
                    });
                    continue;
                };
                match msg {
                    ToShard::Grant { tokens, .. } => l.grant(tokens, now),
                    ToShard::Stream { stream, .. } => l.set_stream(stream, now),
                    ToShard::Recall { keep, seq, .. } => l.recall = Some((keep, seq)),
                }
                if let (Some(ip), false) = (key.1, l.active) {
                    l.active = true;
                    self.active_clients.borrow_mut().push((key.0, ip));
                }
            }
        }
        for (id, local) in fixed.iter_mut().enumerate() {
            let def = &self.defs[id];
            if def.dynamic() {
                continue;
            }
            if let Some(tally) = local.report(def.burst, dt, now) {
                busy = true;
                if !self.send(Report {
                    shard: self.shard,
                    key: (id as u32, None),
                    tally,
                    forget: false,
                }) {
                    return false;
                }
            }
        }
        let mut connected = true;
        self.active_clients.borrow_mut().retain(|&(id, ip)| {
            let Some(local) = clients.get_mut(&(id, ip)) else {
                return false;
            };
            let burst = self.defs.get(id as usize).map_or(1, |d| d.burst);
            if let Some(tally) = local.report(burst, dt, now) {
                busy = true;
                connected &= self.send(Report {
                    shard: self.shard,
                    key: (id, Some(ip)),
                    tally,
                    forget: false,
                });
            }
            // Quiet now (its last report said so) and no stream: off the
            // list until its next request or message.
            local.active = local.demand > 0.0 || local.last_busy || local.rate > 0.0;
            local.active
        });
        self.quiet.set(!busy);
        connected
    }

    /// Forgets per-client buckets idle for [`CLIENT_IDLE_EVICT`]. Leased,
    /// their tokens go back to the coordinator (not while a stream runs:
    /// the coordinator ends it first); kept alone, a bucket is forgotten
    /// only once it is full again (a new one starts full).
    fn evict_clients(&self, now: Instant) {
        let mut clients = self.clients.borrow_mut();
        clients.retain(|&(id, ip), l| {
            if now.saturating_duration_since(l.last_used) < CLIENT_IDLE_EVICT {
                return true;
            }
            l.refill(now);
            if self.alone {
                return l.held < l.cap;
            }
            if l.rate > 0.0 {
                return true;
            }
            self.send(Report {
                shard: self.shard,
                key: (id, Some(ip)),
                tally: Tally {
                    spent: l.spent,
                    advanced: l.advanced,
                    returned: l.returned + l.held,
                    accrued: l.accrued,
                    seq: l.seq,
                    recall_seq: l.recall_seq,
                    ..Tally::default()
                },
                forget: true,
            });
            false
        });
    }
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
