//! The one exit: every request the gateway answered, or tried to answer,
//! ends in [`finish`] with its finished [`Exchange`]: route, status, bytes
//! in and out, principal, upstream target and status, cache status and
//! timings together. This is where what a shard observes is recorded:
//! the metrics of the request's series ([`super::metrics::record`]), kept
//! in shard memory without a lock. (The access log is written right after,
//! by the driver, from the same exchange.)

use super::exchange::Exchange;
use super::Gateway;
use std::time::Instant;

/// Ends a request: its exchange is complete. Returns the clock reading
/// it took, if it took one (the connection loop reuses it).
pub fn finish(_gw: &Gateway, x: &mut Exchange) -> Option<Instant> {
    let o = &mut x.outcome;
    let (end, read) = match o.timings.last_byte_sent {
        Some(t) => (t, None),
        None => {
            let now = Instant::now();
            if o.status != 0 {
                o.timings.last_byte_sent = Some(now);
            }
            (now, Some(now))
        }
    };
    super::metrics::record(x, end);
    read
}
