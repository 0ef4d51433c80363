//! The one exit: every request the gateway answered, or tried to answer,
//! ends in [`finish`] with its finished [`Exchange`]: route, status, bytes
//! in and out, principal, upstream target and status, cache status and
//! timings together. This is where what a shard observes is recorded;
//! today that is the shard's own counters ([`Observed`]), kept in shard
//! memory without a lock.

use super::exchange::{CacheStatus, Exchange};
use std::cell::Cell;
use std::time::Instant;

/// What one shard's exit has counted since the shard started.
#[derive(Debug, Default)]
pub struct Observed {
    /// Finished requests by status class: index 0 for no response sent
    /// (the client went away), 1 to 5 for 1xx to 5xx.
    by_class: [Cell<u64>; 6],
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    cache_hits: Cell<u64>,
    cache_misses: Cell<u64>,
    proxied: Cell<u64>,
}

/// A copy of [`Observed`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_class: [u64; 6],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub proxied: u64,
}

impl Observed {
    pub fn counts(&self) -> Counts {
        Counts {
            by_class: std::array::from_fn(|i| self.by_class[i].get()),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            cache_hits: self.cache_hits.get(),
            cache_misses: self.cache_misses.get(),
            proxied: self.proxied.get(),
        }
    }
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

/// Ends a request: its exchange is complete. Returns the clock reading
/// it took, if it took one (the connection loop reuses it).
pub fn finish(observed: &Observed, x: &mut Exchange) -> Option<Instant> {
    let o = &mut x.outcome;
    let mut read = None;
    if o.timings.last_byte_sent.is_none() && o.status != 0 {
        read = Some(Instant::now());
        o.timings.last_byte_sent = read;
    }
    let class = match o.status {
        100..=599 => usize::from(o.status / 100),
        _ => 0,
    };
    bump(&observed.by_class[class], 1);
    bump(&observed.bytes_in, o.bytes_in);
    bump(&observed.bytes_out, o.bytes_out);
    match o.cache {
        CacheStatus::Hit => bump(&observed.cache_hits, 1),
        CacheStatus::Miss => bump(&observed.cache_misses, 1),
        CacheStatus::None => {}
    }
    if o.upstream.is_some() {
        bump(&observed.proxied, 1);
    }
    read
}
