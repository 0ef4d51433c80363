//! The one exit: every request the gateway answered, or tried to answer,
//! ends in [`finish`] with its finished [`Exchange`]: route, status, bytes
//! in and out, principal, upstream target and status, cache status and
//! timings together. This is where what a shard observes is recorded:
//! the metrics of the request's series ([`super::metrics::record`]), kept
//! in shard memory without a lock.

use super::exchange::Exchange;
use super::Gateway;
use std::time::Instant;

/// Ends a request: its exchange is complete.
pub fn finish(_gw: &Gateway, x: &mut Exchange) {
    let o = &mut x.outcome;
    let end = match o.timings.last_byte_sent {
        Some(t) => t,
        None => {
            let now = Instant::now();
            if o.status != 0 {
                o.timings.last_byte_sent = Some(now);
            }
            now
        }
    };
    super::metrics::record(x, end);
}
