//! A shard's side of usage plans: counts every keyed request for the
//! per-day record and spends quota from the lease the coordinator gave it.
//! The request path reads and writes shard-local cells only; a per-shard
//! task reports and takes in leases every [`TICK`] while there is anything
//! to report or take in. With nothing (no key active, nothing received),
//! it sleeps until a request makes a key active, the coordinator sends it
//! something (it wakes the task), or [`IDLE_SLEEP`] passes.

use super::coordinator::{Report, ShardLink, ToCoordinator, ToShard};
use super::UsagePlans;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often a shard reports usage and takes in leases.
pub const TICK: Duration = Duration::from_millis(10);
/// The longest the reconciler sleeps with nothing to do; it also wakes
/// just after each UTC midnight. It reads the UTC date when it runs (a new
/// day starts a new record, and may start a new quota period).
pub const IDLE_SLEEP: Duration = Duration::from_secs(1);
/// How long an idle reconciler sleeps, given how long until the next UTC
/// day begins (None when unknown): [`IDLE_SLEEP`], or until 1 ms into the
/// new day when that comes first.
pub(super) fn idle_sleep(until_next_day: Option<Duration>) -> Duration {
    until_next_day.map_or(IDLE_SLEEP, |d| {
        d.saturating_add(Duration::from_millis(1)).min(IDLE_SLEEP)
    })
}

/// Seconds of a shard's measured demand it asks to hold.
const HORIZON_SECS: f64 = 0.1;

/// A shard's view of one key's quota.
#[derive(Debug, Clone, Default)]
struct QuotaLocal {
    /// First day of the period.
    period: i64,
    held: u64,
    /// Since the last report.
    spent_leased: u64,
    spent_over: u64,
    attempts: u64,
    exhausted: bool,
    recall: bool,
    demand: f64,
    last_want: u64,
}

impl QuotaLocal {
    /// A new period, before the coordinator's first grant for it: the
    /// first request waits for it.
    fn fresh(period: i64) -> QuotaLocal {
        QuotaLocal {
            period,
            ..QuotaLocal::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
struct KeyLocal {
    /// Requests admitted on `Inner::day` not yet reported.
    requests: u64,
    quota: Option<QuotaLocal>,
    /// Requests of this key waiting on this shard for a lease now. Kept
    /// outside `quota`, which a new period replaces.
    waiting: u64,
    /// `waiting` as last reported.
    last_waiting: u64,
    active: bool,
}

struct Inner {
    shard: usize,
    plans: RefCell<UsagePlans>,
    keys: RefCell<Vec<KeyLocal>>,
    /// Keys with something to report.
    active: RefCell<Vec<u32>>,
    day: Cell<i64>,
    /// Requests waiting for a lease: the reconciler runs every
    /// [`URGENT_TICK`] while there are any.
    urgent: Cell<u32>,
    /// The reconciler's waker while it sleeps.
    waker: Cell<Option<std::task::Waker>>,
    /// The coordinator is gone (its channel closed): nothing will answer a
    /// waiting request.
    gone: Cell<bool>,
    /// The last reconciliation took in a message from the coordinator.
    took: Cell<bool>,
    to: Option<Sender<ToCoordinator>>,
    from: Option<Receiver<ToShard>>,
    /// Where the reconciler leaves its waker for the coordinator before it
    /// sleeps with nothing to do.
    idle_waker: Option<Sender<crate::net::RemoteWaker>>,
}

/// A shard's usage counters.
pub struct ShardUsage {
    inner: Rc<Inner>,
}

/// What the quota says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaCheck {
    /// No quota for this key.
    None,
    Allowed,
    /// Requests are left, but this shard holds none of them yet.
    Wait,
    /// 429 "Limit Exceeded".
    Exceeded,
}

/// The longest a request waits for its shard's next lease of a quota. The
/// coordinator answers a waiting shard within a few ticks, with a lease or
/// with "exhausted" (it recalls leases from other shards for it); this
/// limit only matters if the coordinator does not answer at all (a stalled
/// thread), and then the request is refused: fail closed.
pub const LEASE_WAIT: Duration = Duration::from_secs(2);
/// How often the reconciler runs while a request waits for a lease.
const URGENT_TICK: Duration = Duration::from_millis(1);

impl ShardUsage {
    pub fn new(plans: &UsagePlans, shard: usize, link: ShardLink) -> ShardUsage {
        let day = super::clock::today();
        let mut keys: Vec<KeyLocal> = vec![KeyLocal::default(); plans.key_plan.len()];
        for (k, local) in keys.iter_mut().enumerate() {
            if let Some(q) = plans.quota_of(k as u32) {
                // Replaced by the coordinator's initial state below.
                local.quota = Some(QuotaLocal::fresh(q.period.start(day)));
            }
        }
        for init in &link.initial {
            if let Some(Some(q)) = keys.get_mut(init.key as usize).map(|k| k.quota.as_mut()) {
                q.period = init.period;
                q.held = init.held;
                q.exhausted = init.exhausted;
            }
        }
        ShardUsage {
            inner: Rc::new(Inner {
                shard,
                plans: RefCell::new(plans.clone()),
                keys: RefCell::new(keys),
                active: RefCell::new(Vec::new()),
                day: Cell::new(day),
                urgent: Cell::new(0),
                waker: Cell::new(None),
                gone: Cell::new(false),
                took: Cell::new(false),
                to: link.to_coordinator,
                from: link.from_coordinator,
                idle_waker: link.idle_waker,
            }),
        }
    }

    /// Takes in a reloaded plan whose keys extend the ones this state was
    /// made for ([`UsagePlans::extends`]): each new key starts with no
    /// lease (its first request waits for one, as at start).
    pub fn adopt(&self, plans: &UsagePlans) {
        let day = self.inner.day.get();
        let mut keys = self.inner.keys.borrow_mut();
        for k in keys.len()..plans.key_plan.len() {
            let mut local = KeyLocal::default();
            if let Some(q) = plans.quota_of(k as u32) {
                local.quota = Some(QuotaLocal::fresh(q.period.start(day)));
            }
            keys.push(local);
        }
        *self.inner.plans.borrow_mut() = plans.clone();
    }

    /// May the key spend one request of its quota? Spends nothing.
    pub fn peek(&self, key: u32) -> QuotaCheck {
        let keys = self.inner.keys.borrow();
        let Some(q) = keys.get(key as usize).and_then(|k| k.quota.as_ref()) else {
            return QuotaCheck::None;
        };
        if q.held > 0 {
            QuotaCheck::Allowed
        } else if q.exhausted {
            QuotaCheck::Exceeded
        } else {
            QuotaCheck::Wait
        }
    }

    /// Waits until the key's quota can be checked again on this shard: a
    /// lease or an exhaustion notice arrived. The reconciler reports the
    /// waiting request at once and runs every millisecond meanwhile; the
    /// coordinator answers it with a lease (recalled from other shards if
    /// need be) or with "exhausted", so a request is refused only when the
    /// quota is spent. [`LEASE_WAIT`] bounds the wait if nothing answers.
    pub async fn wait(&self, key: u32) {
        self.note_refused(key);
        let _waiting = self.start_waiting(key);
        let deadline = Instant::now() + LEASE_WAIT;
        while self.peek(key) == QuotaCheck::Wait
            && !self.inner.gone.get()
            && Instant::now() < deadline
        {
            glommio::timer::sleep(URGENT_TICK).await;
        }
    }

    /// Counts a request of `key` as waiting for a lease until the guard is
    /// dropped (also when the waiting future is dropped: its connection
    /// closed), and wakes the reconciler.
    fn start_waiting(&self, key: u32) -> Waiting<'_> {
        let inner = &*self.inner;
        inner.urgent.set(inner.urgent.get() + 1);
        if let Some(k) = inner.keys.borrow_mut().get_mut(key as usize) {
            k.waiting += 1;
            if !k.active {
                k.active = true;
                inner.active.borrow_mut().push(key);
            }
        }
        inner.wake();
        Waiting { inner, key }
    }

    /// Notes a refused quota check (demand the coordinator should see).
    pub fn note_refused(&self, key: u32) {
        let mut keys = self.inner.keys.borrow_mut();
        if let Some(k) = keys.get_mut(key as usize) {
            if let Some(q) = k.quota.as_mut() {
                q.attempts += 1;
            }
            if !k.active {
                k.active = true;
                self.inner.active.borrow_mut().push(key);
                self.inner.wake();
            }
        }
    }

    /// Counts an admitted request of `key` (and spends its quota, if any;
    /// call [`ShardUsage::peek`] first).
    pub fn admit(&self, key: u32) {
        if self.inner.to.is_none() {
            return;
        }
        let mut keys = self.inner.keys.borrow_mut();
        let Some(k) = keys.get_mut(key as usize) else {
            return;
        };
        k.requests += 1;
        if let Some(q) = k.quota.as_mut() {
            q.attempts += 1;
            if q.held > 0 {
                q.held -= 1;
                q.spent_leased += 1;
            } else {
                // Not after a peek that said Allowed; counted all the same.
                q.spent_over += 1;
            }
        }
        if !k.active {
            k.active = true;
            self.inner.active.borrow_mut().push(key);
            self.inner.wake();
        }
    }

    /// Reports what is not reported yet: the shard is stopping.
    pub fn final_report(&self) {
        if self.inner.to.is_some() {
            self.inner.reconcile(0.0, self.inner.day.get());
        }
    }

    /// One reconciliation step, as the task runs it (tests drive shards by
    /// hand).
    #[cfg(test)]
    pub fn tick_for_tests(&self) {
        self.inner.reconcile(0.01, super::clock::today());
    }

    /// A request of `key` waiting for a lease while the guard lives, as
    /// [`ShardUsage::wait`] registers it (tests drive shards by hand).
    #[cfg(test)]
    pub fn waiting_for_tests(&self, key: u32) -> impl Drop + '_ {
        self.start_waiting(key)
    }

    /// Requests waiting for a lease on this shard.
    #[cfg(test)]
    pub fn urgent_for_tests(&self) -> u32 {
        self.inner.urgent.get()
    }

    /// The shard's usage task: every [`TICK`] it takes in leases and
    /// reports; with nothing to do it sleeps (see the module doc). Ends at
    /// once when usage is not recorded.
    pub fn reconciler(&self) -> impl Future<Output = ()> + 'static {
        let inner = self.inner.clone();
        async move {
            if inner.to.is_none() {
                return;
            }
            let mut last = Instant::now();
            let mut idle;
            loop {
                if inner.urgent.get() > 0 {
                    glommio::timer::sleep(URGENT_TICK).await;
                    idle = false;
                } else if !inner.took.get() && inner.active.borrow().is_empty() {
                    // Awake when the UTC day changes, as the 10 ms tick
                    // was: a request after midnight then finds the new
                    // day's period (and record) already in place.
                    let sleep = idle_sleep(super::clock::until_next_day());
                    inner.sleep(sleep, true).await;
                    idle = true;
                } else {
                    inner.sleep(TICK, false).await;
                    idle = false;
                }
                let now = Instant::now();
                let mut dt = now.duration_since(last).as_secs_f64();
                if idle {
                    // The requests that ended the sleep came within it:
                    // measure their rate over one tick, as before the
                    // reconciler slept (it ran every tick).
                    dt = dt.min(TICK.as_secs_f64());
                }
                last = now;
                if !inner.reconcile(dt, super::clock::today()) {
                    inner.gone.set(true);
                    return;
                }
            }
        }
    }
}

/// One request waiting for a lease (see [`ShardUsage::start_waiting`]).
struct Waiting<'a> {
    inner: &'a Inner,
    key: u32,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let inner = self.inner;
        inner.urgent.set(inner.urgent.get().saturating_sub(1));
        if let Some(k) = inner.keys.borrow_mut().get_mut(self.key as usize) {
            k.waiting = k.waiting.saturating_sub(1);
        }
    }
}

impl Inner {
    /// Sleeps `d`, or less if a request starts waiting for a lease. `idle`
    /// (nothing to report or take in): also less if a request makes a key
    /// active, or the coordinator sends anything; the task's waker is left
    /// for the coordinator, which wakes it after sending.
    async fn sleep(&self, d: Duration, idle: bool) {
        let mut timer = std::pin::pin!(glommio::timer::sleep(d));
        let mut left = false;
        std::future::poll_fn(|cx| {
            if self.urgent.get() > 0 || timer.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
            if idle {
                if !self.active.borrow().is_empty() {
                    return std::task::Poll::Ready(());
                }
                if !left {
                    left = true;
                    if let Some(tx) = &self.idle_waker {
                        // Full: a waker of this same task is still there.
                        let _ = tx.try_send(crate::net::RemoteWaker::here(cx.waker()));
                    }
                }
                // After the waker was left: a message sent before it was
                // there is seen here, one sent after it wakes this task.
                if self.from.as_ref().is_some_and(|rx| !rx.is_empty()) {
                    return std::task::Poll::Ready(());
                }
            }
            self.waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await;
        self.waker.set(None);
    }

    /// Wakes the reconciler if it sleeps (a key became active).
    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn send(&self, r: Report) -> bool {
        self.to
            .as_ref()
            .is_some_and(|tx| tx.send(ToCoordinator::Report(r)).is_ok())
    }

    /// One step: leases in, reports out, then the new day (and period) if
    /// the date changed. False when the coordinator is gone.
    fn reconcile(&self, dt: f64, today: i64) -> bool {
        let mut keys = self.keys.borrow_mut();
        self.took.set(false);
        if let Some(rx) = &self.from {
            loop {
                let msg = match rx.try_recv() {
                    Ok(m) => {
                        self.took.set(true);
                        m
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return false,
                };
                let (key, period) = match msg {
                    ToShard::Grant { key, period, .. }
                    | ToShard::Exhausted { key, period }
                    | ToShard::Recall { key, period } => (key, period),
                };
                let Some(k) = keys.get_mut(key as usize) else {
                    continue;
                };
                let Some(q) = k.quota.as_mut() else {
                    continue;
                };
                if period < q.period {
                    // About a period this shard has left; the coordinator
                    // dropped that period's leases when it moved on.
                    continue;
                }
                if period > q.period {
                    // The coordinator moved to a new period first. Report
                    // what this shard spent in the old one, then move.
                    self.send(report_of(self.shard, key, self.day.get(), k, 0.0));
                    k.quota = Some(QuotaLocal::fresh(period));
                }
                let Some(q) = k.quota.as_mut() else {
                    continue;
                };
                match msg {
                    ToShard::Grant { tokens, .. } => q.held += tokens,
                    ToShard::Exhausted { .. } => q.exhausted = true,
                    ToShard::Recall { .. } => q.recall = true,
                }
                if !k.active {
                    k.active = true;
                    self.active.borrow_mut().push(key);
                }
            }
        }
        let day = self.day.get();
        let mut ok = true;
        self.active.borrow_mut().retain(|&key| {
            let Some(k) = keys.get_mut(key as usize) else {
                return false;
            };
            let r = report_of(self.shard, key, day, k, dt);
            let quiet = r.requests == 0
                && r.spent_leased == 0
                && r.spent_over == 0
                && r.returned == 0
                && r.waiting == 0
                && k.quota.as_ref().is_none_or(|q| q.demand == 0.0);
            let changed = !quiet
                || k.last_waiting != r.waiting
                || k.quota.as_ref().is_some_and(|q| q.last_want != r.want);
            if changed {
                ok &= self.send(r);
            }
            k.last_waiting = r.waiting;
            if let Some(q) = k.quota.as_mut() {
                q.last_want = r.want;
            }
            k.active = !quiet;
            k.active
        });
        if today != day {
            self.day.set(today);
            let plans = self.plans.borrow();
            for (i, k) in keys.iter_mut().enumerate() {
                let Some(q) = k.quota.as_mut() else { continue };
                let Some(quota) = plans.quota_of(i as u32) else {
                    continue;
                };
                let period = quota.period.start(today);
                if period > q.period {
                    *q = QuotaLocal::fresh(period);
                }
            }
        }
        ok
    }
}

/// Builds a key's report and resets its counters.
fn report_of(shard: usize, key: u32, day: i64, k: &mut KeyLocal, dt: f64) -> Report {
    let requests = std::mem::take(&mut k.requests);
    let waiting = k.waiting;
    let mut r = Report {
        shard,
        key,
        day,
        requests,
        period: 0,
        spent_leased: 0,
        spent_over: 0,
        returned: 0,
        want: 0,
        waiting: 0,
    };
    if let Some(q) = k.quota.as_mut() {
        let rate = if dt > 0.0 {
            q.attempts as f64 / dt.max(1e-3)
        } else {
            0.0
        };
        q.demand = if rate >= q.demand {
            rate
        } else {
            q.demand * 0.7 + rate * 0.3
        };
        if q.demand < 1.0 && q.attempts == 0 {
            q.demand = 0.0;
        }
        q.attempts = 0;
        let want = if q.exhausted {
            0
        } else if q.demand == 0.0 {
            waiting
        } else {
            ((q.demand * HORIZON_SECS).ceil() as u64 + 1).max(waiting)
        };
        // A recall takes what the shard holds beyond its own waiting
        // requests: a lease that just arrived for them stays.
        let returned = if q.recall {
            q.held.saturating_sub(waiting)
        } else {
            0
        };
        q.held -= returned;
        q.recall = false;
        r.period = q.period;
        r.spent_leased = std::mem::take(&mut q.spent_leased);
        r.spent_over = std::mem::take(&mut q.spent_over);
        r.returned = returned;
        r.want = want;
        r.waiting = if q.exhausted { 0 } else { waiting };
    }
    r
}
