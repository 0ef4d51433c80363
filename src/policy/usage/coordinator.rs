//! The usage coordinator: one thread (`coregate-usage`) that owns the
//! usage store and every quota's global count, leases quota to the shards,
//! and writes the per-day usage the shards report.
//!
//! Per quota key it keeps `used` (requests in the current period, recorded
//! or reported) and `leased[s]` (what shard `s` may still spend as far as it
//! knows). It leases only from `limit − used − Σ leased`, so the shards can
//! together never spend more than the limit (docs/usage-plans.md).

use super::clock;
use super::store::Store;
use super::UsagePlans;
use crate::policy::fanout::ToShards;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A shard's report for one key since its previous one.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub shard: usize,
    pub key: u32,
    /// The UTC day the requests were made on, and how many.
    pub day: i64,
    pub requests: u64,
    /// The quota period (its first day) the quota fields are about.
    pub period: i64,
    /// Requests spent from a lease, and beyond it (overdraft).
    pub spent_leased: u64,
    pub spent_over: u64,
    /// Unused lease given back.
    pub returned: u64,
    /// What the shard wants to hold.
    pub want: u64,
    /// Requests waiting on the shard for a lease now: they are answered
    /// with a lease or "exhausted", never left to time out.
    pub waiting: u64,
}

/// What the coordinator receives: shards' reports, and from the runtime,
/// a reloaded plan whose keys extend the ones it has
/// ([`UsagePlans::extends`]).
#[derive(Debug)]
pub enum ToCoordinator {
    Report(Report),
    Adopt(Box<UsagePlans>),
    /// Every shard has stopped: write what they reported and stop, even
    /// though a link is still open (a shard a panic stopped leaves its
    /// link behind, with the rest of its tasks).
    Finish,
}

/// What the coordinator sends a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToShard {
    Grant {
        key: u32,
        period: i64,
        tokens: u64,
    },
    /// The key's quota for `period` is spent everywhere: refuse until the
    /// next period.
    Exhausted {
        key: u32,
        period: i64,
    },
    /// Give back what you hold: another shard is short.
    Recall {
        key: u32,
        period: i64,
    },
}

/// A shard's starting state for one quota key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initial {
    pub key: u32,
    pub period: i64,
    pub held: u64,
    pub exhausted: bool,
}

/// A shard's end of the channels.
pub struct ShardLink {
    pub to_coordinator: Option<Sender<ToCoordinator>>,
    pub from_coordinator: Option<Receiver<ToShard>>,
    /// Where the shard's reconciler leaves its waker before a long idle
    /// sleep; the coordinator wakes it after sending the shard anything.
    pub idle_waker: Option<Sender<crate::net::RemoteWaker>>,
    pub initial: Vec<Initial>,
    pub shards: usize,
}

/// The coordinator thread, to join after the shards stopped (its last
/// flush).
pub struct Running {
    pub thread: Option<std::thread::JoinHandle<()>>,
}

/// At most one recall round per key this often.
const RECALL_GAP: Duration = Duration::from_millis(10);
/// How often the coordinator looks for a new quota period.
const PERIOD_CHECK: Duration = Duration::from_millis(200);
/// At exit, a failing store is tried this many times, this far apart.
const FINAL_TRIES: u32 = 5;
const FINAL_RETRY_GAP: Duration = Duration::from_millis(200);

struct QuotaState {
    plan: usize,
    period: i64,
    limit: u64,
    used: u64,
    leased: Vec<u64>,
    want: Vec<u64>,
    waiting: Vec<u64>,
    exhausted: bool,
    last_recall: Option<Instant>,
    rotation: usize,
}

impl QuotaState {
    fn remaining(&self) -> u64 {
        self.limit
            .saturating_sub(self.used)
            .saturating_sub(self.leased.iter().sum::<u64>())
    }
}

pub struct Coordinator {
    plans: UsagePlans,
    shards: usize,
    store: Option<Store>,
    /// Each plan's first period (the quota offset applies to it).
    first_period: Vec<Option<i64>>,
    quotas: HashMap<u32, QuotaState, ahash::RandomState>,
    /// Requests not yet written: (key, day) → count.
    pending: HashMap<(u32, i64), u64, ahash::RandomState>,
    to_shards: ToShards<ToShard>,
    /// The time of the pass under way (recalls are spaced by it).
    now: Instant,
    /// Set while writes to the store fail: the failure was logged once,
    /// and the first write that works again says so.
    store_failing: bool,
}

/// A share of `remaining` for each of `shards` shards to start with: a
/// quarter of it spread evenly, so a busy shard soon asks for more and
/// idle shards park little.
fn shares(remaining: u64, shards: usize) -> Vec<u64> {
    let n = shards.max(1) as u64;
    let each = remaining / (4 * n);
    if each > 0 {
        return vec![each; shards];
    }
    // Fewer than 4 per shard: one each while they last.
    (0..n).map(|i| u64::from(i < remaining)).collect()
}

/// Opens the store, loads the current period's usage of every quota key,
/// starts the coordinator thread and returns one link per shard. Errors
/// (an unreadable store) stop the start-up.
pub fn start(plans: &UsagePlans, shards: usize) -> Result<(Vec<ShardLink>, Running), String> {
    let Some((c, report_rx, links)) = prepare(plans, shards)? else {
        return Ok((unlinked(shards), Running { thread: None }));
    };
    let thread = std::thread::Builder::new()
        .name("coregate-usage".into())
        .spawn(move || c.run(report_rx))
        .map_err(|e| format!("cannot start the usage thread: {e}"))?;
    Ok((
        links,
        Running {
            thread: Some(thread),
        },
    ))
}

/// A coordinator driven by hand, without its thread (tests).
#[cfg(test)]
pub struct Manual {
    c: Coordinator,
    rx: Receiver<ToCoordinator>,
}

#[cfg(test)]
impl Manual {
    /// Takes in every report sent so far and answers them, as one pass of
    /// the thread's loop does.
    /// Each pass is one shard tick (10 ms) after the previous one.
    pub fn pump(&mut self) {
        self.c.now += super::shard::TICK;
        let mut touched = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            self.c.take(m, &mut touched);
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            self.c.distribute(key);
        }
        self.c.to_shards.wake();
    }
}

/// As [`start`], with the coordinator driven by hand (tests).
#[cfg(test)]
pub fn start_manual(
    plans: &UsagePlans,
    shards: usize,
) -> Result<(Vec<ShardLink>, Option<Manual>), String> {
    Ok(match prepare(plans, shards)? {
        Some((c, rx, links)) => (links, Some(Manual { c, rx })),
        None => (unlinked(shards), None),
    })
}

fn unlinked(shards: usize) -> Vec<ShardLink> {
    (0..shards)
        .map(|_| ShardLink {
            to_coordinator: None,
            from_coordinator: None,
            idle_waker: None,
            initial: Vec::new(),
            shards,
        })
        .collect()
}

/// The coordinator, its report channel and the shards' links, or None when
/// usage is not recorded.
#[allow(clippy::type_complexity)]
fn prepare(
    plans: &UsagePlans,
    shards: usize,
) -> Result<Option<(Coordinator, Receiver<ToCoordinator>, Vec<ShardLink>)>, String> {
    if !plans.active() || shards == 0 {
        return Ok(None);
    }
    let store = match &plans.data_dir {
        Some(dir) => Some(Store::open(dir)?),
        None => None,
    };
    let (to_shards, from) = ToShards::new(shards);
    let mut c = Coordinator {
        plans: plans.clone(),
        shards,
        store,
        first_period: vec![None; plans.plans.len()],
        quotas: HashMap::default(),
        pending: HashMap::default(),
        to_shards,
        now: Instant::now(),
        store_failing: false,
    };
    let today = clock::today();
    let mut initial: Vec<Vec<Initial>> = vec![Vec::new(); shards];
    for key in 0..plans.key_plan.len() as u32 {
        let Some(Some(plan)) = plans.key_plan.get(key as usize).copied() else {
            continue;
        };
        let Some(quota) = plans.plans.get(plan as usize).and_then(|p| p.quota) else {
            continue;
        };
        let period = quota.period.start(today);
        let mut q = c.new_quota(key, plan as usize, period)?;
        let give = shares(q.remaining(), shards);
        for (s, g) in give.iter().enumerate() {
            q.leased[s] = *g;
        }
        for (s, init) in initial.iter_mut().enumerate() {
            init.push(Initial {
                key,
                period,
                held: give[s],
                exhausted: q.remaining() == 0 && q.leased.iter().all(|&l| l == 0),
            });
        }
        q.exhausted = q.remaining() == 0 && q.leased.iter().all(|&l| l == 0);
        c.quotas.insert(key, q);
    }
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let links = from
        .into_iter()
        .zip(initial)
        .map(|((rx, wtx), initial)| ShardLink {
            to_coordinator: Some(report_tx.clone()),
            from_coordinator: Some(rx),
            idle_waker: Some(wtx),
            initial,
            shards,
        })
        .collect();
    Ok(Some((c, report_rx, links)))
}

impl Coordinator {
    /// A key's quota state for `period`, its usage so far read from the
    /// store and what is pending.
    fn new_quota(&mut self, key: u32, plan: usize, period: i64) -> Result<QuotaState, String> {
        let Some(quota) = self.plans.plans.get(plan).and_then(|p| p.quota) else {
            return Err("usage plan without quota".into());
        };
        let end = quota.period.end(period);
        let key_id = self
            .plans
            .key_ids
            .get(key as usize)
            .cloned()
            .unwrap_or_default();
        let mut used = match &self.store {
            Some(s) => s.sum(&key_id, period, end)?,
            None => 0,
        };
        used += self
            .pending
            .iter()
            .filter(|((k, d), _)| *k == key && *d >= period && *d < end)
            .map(|(_, n)| *n)
            .sum::<u64>();
        let first = match self.first_period[plan] {
            Some(f) => f,
            None => {
                let name = self.plans.plans[plan].name.clone();
                let f = match &mut self.store {
                    Some(s) => s.first_period(&name, period)?,
                    None => period,
                };
                self.first_period[plan] = Some(f);
                f
            }
        };
        let limit = if first == period {
            quota.limit.saturating_sub(quota.offset)
        } else {
            quota.limit
        };
        Ok(QuotaState {
            plan,
            period,
            limit,
            used,
            leased: vec![0; self.shards],
            want: vec![0; self.shards],
            waiting: vec![0; self.shards],
            exhausted: false,
            last_recall: None,
            rotation: 0,
        })
    }

    fn run(mut self, rx: Receiver<ToCoordinator>) {
        let flush_every = self.plans.flush_interval;
        let mut next_flush = Instant::now() + flush_every;
        let mut next_period_check = Instant::now() + PERIOD_CHECK;
        let mut touched: Vec<u32> = Vec::new();
        loop {
            let wake = next_flush.min(next_period_check);
            let mut stop = false;
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(m) => {
                    stop = self.take(m, &mut touched);
                    while !stop {
                        match rx.try_recv() {
                            Ok(m) => stop = self.take(m, &mut touched),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                stop = true;
                                break;
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            if stop {
                // Every shard has stopped: write what they reported.
                self.final_flush();
                return;
            }
            self.now = Instant::now();
            touched.sort_unstable();
            touched.dedup();
            for key in touched.drain(..) {
                self.distribute(key);
            }
            let now = self.now;
            if now >= next_period_check {
                next_period_check = now + PERIOD_CHECK;
                self.roll_periods(clock::today());
            }
            if now >= next_flush {
                next_flush = now + flush_every;
                self.flush();
            }
            self.to_shards.wake();
        }
    }

    /// Writes pending usage. On failure it is kept and tried again.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(store) = &mut self.store else {
            self.pending.clear();
            return;
        };
        let rows: Vec<(String, String, i64, u64)> = self
            .pending
            .iter()
            .map(|(&(k, day), &n)| {
                (
                    self.plans
                        .key_ids
                        .get(k as usize)
                        .cloned()
                        .unwrap_or_default(),
                    self.plans
                        .key_names
                        .get(k as usize)
                        .cloned()
                        .unwrap_or_default(),
                    day,
                    n,
                )
            })
            .collect();
        match store.add(&rows) {
            Ok(()) => {
                if self.store_failing {
                    self.store_failing = false;
                    let n: u64 = self.pending.values().sum();
                    crate::log!(
                        "info",
                        "usage store {}: written again; the {n} request(s) counted while writes failed are recorded",
                        store.path().display()
                    );
                }
                self.pending.clear();
            }
            // Logged once per outage, not once per try: a full or read-only
            // disk fails every flush interval until someone acts.
            Err(e) if !self.store_failing => {
                self.store_failing = true;
                crate::log!(
                    "error",
                    "cannot record usage: {e}. The gateway goes on serving and enforcing quotas, keeps the counts in memory and tries again every {} ms; a line says when writing works again",
                    self.plans.flush_interval.as_millis()
                );
            }
            Err(_) => {}
        }
    }

    /// The last write before the process exits: tried a few times if the
    /// store fails, and what could not be written is logged as lost.
    fn final_flush(&mut self) {
        for attempt in 0..FINAL_TRIES {
            if attempt > 0 {
                std::thread::sleep(FINAL_RETRY_GAP);
            }
            self.flush();
            if self.pending.is_empty() || self.store.is_none() {
                return;
            }
        }
        let n: u64 = self.pending.values().sum();
        let path = self
            .store
            .as_ref()
            .map(|s| s.path().display().to_string())
            .unwrap_or_default();
        crate::log!(
            "error",
            "usage store {path}: the usage of {n} request(s) could not be written before exit and is lost"
        );
    }

    /// Moves every quota whose period ended into the current one, with
    /// fresh leases for every shard.
    fn roll_periods(&mut self, today: i64) {
        let keys: Vec<u32> = self.quotas.keys().copied().collect();
        for key in keys {
            let Some(q) = self.quotas.get(&key) else {
                continue;
            };
            let Some(quota) = self.plans.plans.get(q.plan).and_then(|p| p.quota) else {
                continue;
            };
            let period = quota.period.start(today);
            if period > q.period {
                self.roll(key, period, None);
            }
        }
    }

    /// `first`: a shard's report for the new period that caused the roll;
    /// its requests count before the new leases are cut.
    fn roll(&mut self, key: u32, period: i64, first: Option<&Report>) {
        let Some(plan) = self.quotas.get(&key).map(|q| q.plan) else {
            return;
        };
        // Usage already reported for the new period (a shard that rolled
        // first) is in `pending`; new_quota counts it.
        self.flush();
        let mut q = match self.new_quota(key, plan, period) {
            Ok(q) => q,
            Err(e) => {
                crate::log!("error", "usage: cannot start a new quota period: {e}");
                return;
            }
        };
        if let Some(r) = first {
            q.used += r.spent_leased + r.spent_over;
            q.want[r.shard] = r.want;
            q.waiting[r.shard] = r.waiting;
        }
        let give = shares(q.remaining(), self.shards);
        for (s, g) in give.iter().enumerate() {
            q.leased[s] = *g;
        }
        for (s, &tokens) in give.iter().enumerate() {
            // Sent even when 0: it tells the shard the period began.
            self.to_shards.send(
                s,
                ToShard::Grant {
                    key,
                    period,
                    tokens,
                },
            );
        }
        self.quotas.insert(key, q);
        self.distribute(key);
    }

    /// Takes in one message; true for [`ToCoordinator::Finish`].
    fn take(&mut self, m: ToCoordinator, touched: &mut Vec<u32>) -> bool {
        match m {
            ToCoordinator::Report(r) => self.apply(r, touched),
            ToCoordinator::Adopt(plans) => self.adopt(*plans),
            ToCoordinator::Finish => return true,
        }
        false
    }

    /// Takes in a reloaded plan whose keys extend the current ones: the new
    /// keys' quotas start from what the store recorded for them (nothing
    /// leased yet: a shard's first request for one asks for a lease).
    fn adopt(&mut self, plans: UsagePlans) {
        if !self.plans.extends_to(&plans) {
            crate::log!(
                "error",
                "usage: a reloaded plan that does not extend the running one was not taken in"
            );
            return;
        }
        let known = self.plans.key_plan.len();
        self.plans = plans;
        let today = clock::today();
        for key in known..self.plans.key_plan.len() {
            let Some(Some(plan)) = self.plans.key_plan.get(key).copied() else {
                continue;
            };
            let Some(quota) = self.plans.plans.get(plan as usize).and_then(|p| p.quota) else {
                continue;
            };
            match self.new_quota(key as u32, plan as usize, quota.period.start(today)) {
                Ok(q) => {
                    self.quotas.insert(key as u32, q);
                }
                Err(e) => crate::log!(
                    "error",
                    "usage: cannot read the usage of new key {}: {e}; its quota starts from zero",
                    self.plans.key_names.get(key).map_or("?", String::as_str)
                ),
            }
        }
    }

    fn apply(&mut self, r: Report, touched: &mut Vec<u32>) {
        if r.shard >= self.shards {
            return;
        }
        self.account(&r, touched);
        // After the quota accounting: a roll it caused reads `pending` and
        // must not count this report twice.
        if r.requests > 0 {
            *self.pending.entry((r.key, r.day)).or_insert(0) += r.requests;
        }
    }

    fn account(&mut self, r: &Report, touched: &mut Vec<u32>) {
        let Some(cur) = self.quotas.get(&r.key).map(|q| q.period) else {
            return;
        };
        if r.period > cur {
            // The shard saw the new period first; what it admitted there on
            // its fresh-period allowance counts before any new lease.
            self.roll(r.key, r.period, Some(r));
            touched.push(r.key);
            return;
        }
        let Some(q) = self.quotas.get_mut(&r.key) else {
            return;
        };
        if r.period < q.period {
            return;
        }
        q.used += r.spent_leased + r.spent_over;
        q.leased[r.shard] = q.leased[r.shard].saturating_sub(r.spent_leased + r.returned);
        q.want[r.shard] = r.want;
        q.waiting[r.shard] = r.waiting;
        touched.push(r.key);
    }

    fn distribute(&mut self, key: u32) {
        let Some(q) = self.quotas.get_mut(&key) else {
            return;
        };
        if q.exhausted {
            return;
        }
        let grants = q.share_out();
        for &(s, tokens) in &grants {
            self.to_shards.send(
                s,
                ToShard::Grant {
                    key,
                    period: q.period,
                    tokens,
                },
            );
        }
        let short = (0..self.shards).any(|s| q.want[s] > q.leased[s]);
        if !short {
            return;
        }
        if q.remaining() == 0 && q.leased.iter().all(|&l| l == 0) {
            q.exhausted = true;
            for s in 0..self.shards {
                self.to_shards.send(
                    s,
                    ToShard::Exhausted {
                        key,
                        period: q.period,
                    },
                );
            }
            return;
        }
        for s in q.recalls(self.now) {
            self.to_shards.send(
                s,
                ToShard::Recall {
                    key,
                    period: q.period,
                },
            );
        }
    }
}

impl QuotaState {
    /// Leases from the pool: first what waiting requests need (in rotation),
    /// then the shards' wants. When the pool cannot cover every want it is
    /// split evenly between the shards that want more, so one shard's burst
    /// does not take it all. Returns (shard, tokens) grants.
    fn share_out(&mut self) -> Vec<(usize, u64)> {
        let n = self.leased.len();
        let mut out: Vec<(usize, u64)> = Vec::new();
        let mut give = |q: &mut QuotaState, s: usize, t: u64| {
            if t == 0 {
                return;
            }
            q.leased[s] += t;
            match out.iter_mut().find(|(x, _)| *x == s) {
                Some((_, have)) => *have += t,
                None => out.push((s, t)),
            }
        };
        for i in 0..n {
            let s = (self.rotation + i) % n;
            let need = self.waiting[s].saturating_sub(self.leased[s]);
            let t = need.min(self.remaining());
            give(self, s, t);
        }
        let deficit = |q: &QuotaState, s: usize| q.want[s].saturating_sub(q.leased[s]);
        let total: u64 = (0..n).map(|s| deficit(self, s)).sum();
        let pool = self.remaining();
        let short = (0..n).filter(|&s| deficit(self, s) > 0).count() as u64;
        let cap = if total <= pool {
            u64::MAX
        } else {
            pool.div_ceil(short.max(1))
        };
        for i in 0..n {
            let s = (self.rotation + i) % n;
            let t = deficit(self, s).min(cap).min(self.remaining());
            give(self, s, t);
        }
        self.rotation = (self.rotation + 1) % n.max(1);
        out
    }

    /// Shards to ask for their lease back, at most once per
    /// [`RECALL_GAP`]: when a shard has requests waiting that its lease
    /// does not cover, every shard holding a lease without waiting
    /// requests of its own (its tokens are needed now, its want is only a
    /// forecast); otherwise the idle ones (holding more than they want).
    fn recalls(&mut self, now: Instant) -> Vec<usize> {
        if self
            .last_recall
            .is_some_and(|t| now.duration_since(t) < RECALL_GAP)
        {
            return Vec::new();
        }
        let n = self.leased.len();
        let needy = (0..n).any(|s| self.waiting[s] > self.leased[s]);
        let out: Vec<usize> = (0..n)
            .filter(|&s| {
                self.leased[s] > 0
                    && if needy {
                        self.waiting[s] == 0
                    } else {
                        self.want[s] <= self.leased[s]
                    }
            })
            .collect();
        if !out.is_empty() {
            self.last_recall = Some(now);
        }
        out
    }
}
