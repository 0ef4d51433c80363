//! The canary split, in the driver's routing step (docs/stages.md): a
//! request under a stage that has a canary is routed in the canary's table
//! or the stage's, by a hash of its sticky value or a draw from this
//! shard's xorshift generator (no syscall, no lock). Plans without canaries
//! never get here: the driver checks that first.

use crate::http::parse::RequestHead;
use crate::plan::Plan;
use crate::route::RouteTable;
use std::cell::Cell;

thread_local! {
    /// This shard's xorshift64* state (a shard is one thread). Seeded once
    /// per thread from std's per-thread random keys; never 0.
    static DRAW: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}

/// The next 64 random bits of this shard.
fn draw() -> u64 {
    DRAW.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// The route table a request is looked up in: the canary's, when the
/// request falls under a stage with a canary and the split sends it there;
/// else the plan's.
pub fn table<'p>(plan: &'p Plan, buf: &[u8], head: &RequestHead, path: &str) -> &'p RouteTable {
    let canary = plan
        .table
        .api_for(head.host.map(|h| h.get(buf)), path)
        .and_then(|a| plan.apis.get(a))
        .and_then(|a| a.canary)
        .and_then(|c| plan.stages.canaries.get(c as usize));
    match canary {
        Some(c) if c.takes(buf, head, draw) => &c.table,
        _ => &plan.table,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_spread_over_the_top_bits() {
        // 100,000 draws: each quarter of the top-32-bit range gets close to
        // a quarter of them.
        let mut quarters = [0u32; 4];
        for _ in 0..100_000 {
            quarters[(draw() >> 62) as usize] += 1;
        }
        for q in quarters {
            assert!((24_000..26_000).contains(&q), "{quarters:?}");
        }
    }
}
