//! A shard's cache of one request authorizer's answers, and the calls in
//! flight that concurrent requests for the same identity wait on.
//!
//! Entries are keyed by the SHA-256 of the identity ([`super::cache_key`]),
//! hold the answer (allow with its principal and header lines, or deny) and
//! expire `ttl` after they were stored. The store is the response cache's
//! LRU ([`crate::policy::cache::lru`]) with every entry counted as 1, so
//! it holds at most `cache_max_entries` answers and evicts the least
//! recently used first. An entry's size is bounded too (a 32-byte key, a
//! principal of at most [`super::MAX_PRINCIPAL_BYTES`] and header lines of
//! at most [`super::MAX_UPSTREAM_HEADER_BYTES`]), so memory is bounded.
//!
//! Single-threaded: one per authorizer per shard, `RefCell`/`Cell` only.

use crate::policy::auth::Principal;
use crate::policy::cache::lru::Lru;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// SHA-256 of an identity.
pub type Key = [u8; 32];

/// What an allow grants.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    /// The answer's `principalId`, if it gave one.
    pub principal: Option<Principal>,
    /// Complete header lines (`name: value\r\n`) for the upstream request.
    pub headers: Box<[u8]>,
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Rc<Allowed>),
    Deny,
}

/// The call failed (refused, timed out, non-200, invalid answer). Never
/// cached; the requests that shared the call all get 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed;

/// The result of a call.
pub type Outcome = Result<Verdict, Failed>;

struct Entry {
    verdict: Verdict,
    expires: Instant,
}

/// One authorizer's answers on one shard.
pub struct DecisionCache {
    ttl: Duration,
    lru: RefCell<Lru<Entry>>,
    inflight: RefCell<HashMap<Key, Rc<Flight>, ahash::RandomState>>,
}

impl DecisionCache {
    pub fn new(ttl: Duration, max_entries: usize) -> DecisionCache {
        DecisionCache {
            ttl,
            // Every entry counts 1: the LRU's budget is the entry count.
            lru: RefCell::new(Lru::new(max_entries.max(1))),
            inflight: RefCell::new(HashMap::default()),
        }
    }

    /// The live answer for `key` (marked most recently used); an expired
    /// one is dropped and reported as a miss.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Verdict> {
        let mut lru = self.lru.borrow_mut();
        if now >= lru.peek(key)?.expires {
            lru.remove(key);
            return None;
        }
        lru.get(key).map(|e| e.verdict.clone())
    }

    /// Stores an answer for `ttl` from `now`, evicting the least recently
    /// used answer when the cache is full.
    pub fn insert(&self, key: Key, verdict: Verdict, now: Instant) {
        let entry = Entry {
            verdict,
            expires: now + self.ttl,
        };
        self.lru.borrow_mut().insert(Rc::from(&key[..]), entry, 1);
    }

    /// Answers held (live or not yet noticed to be expired).
    pub fn len(&self) -> usize {
        self.lru.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers evicted to make room since the cache was made.
    pub fn evictions(&self) -> u64 {
        self.lru.borrow().evictions()
    }

    /// The call in flight for `key`, if any.
    pub fn flight(&self, key: &Key) -> Option<Rc<Flight>> {
        self.inflight.borrow().get(key).cloned()
    }

    /// Registers the caller's call for `key`: requests arriving meanwhile
    /// wait for it. The caller must not already have one in flight for the
    /// key (it looked with [`Self::flight`] first; nothing awaits between).
    pub fn begin(&self, key: Key) -> FlightGuard<'_> {
        let flight = Rc::new(Flight::default());
        self.inflight.borrow_mut().insert(key, flight.clone());
        FlightGuard {
            cache: self,
            key,
            flight,
        }
    }

    /// Calls in flight (for tests).
    pub fn flights(&self) -> usize {
        self.inflight.borrow().len()
    }
}

/// A call in flight, and the requests waiting for its outcome.
#[derive(Default)]
pub struct Flight {
    done: Cell<bool>,
    outcome: RefCell<Option<Outcome>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Flight {
    /// Resolves to the call's outcome, or None when the call ended without
    /// one (its task was dropped).
    pub fn wait(self: &Rc<Self>) -> FlightWait {
        FlightWait {
            flight: self.clone(),
        }
    }

    fn end(&self, outcome: Option<Outcome>) {
        if self.done.replace(true) {
            return;
        }
        *self.outcome.borrow_mut() = outcome;
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// The future of [`Flight::wait`].
pub struct FlightWait {
    flight: Rc<Flight>,
}

impl std::future::Future for FlightWait {
    type Output = Option<Outcome>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Outcome>> {
        if self.flight.done.get() {
            return std::task::Poll::Ready(self.flight.outcome.borrow().clone());
        }
        let mut wakers = self.flight.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    }
}

/// Ends a flight: [`FlightGuard::finish`] hands waiters the outcome; a
/// guard dropped without it (the calling task was dropped midway) wakes
/// them with none, and they ask themselves.
pub struct FlightGuard<'a> {
    cache: &'a DecisionCache,
    key: Key,
    flight: Rc<Flight>,
}

impl FlightGuard<'_> {
    pub fn finish(self, outcome: Outcome) {
        self.flight.end(Some(outcome));
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = self.cache.inflight.borrow_mut();
        if inflight
            .get(&self.key)
            .is_some_and(|f| Rc::ptr_eq(f, &self.flight))
        {
            inflight.remove(&self.key);
        }
        drop(inflight);
        self.flight.end(None);
    }
}
