//! Observation: what each shard counts about the requests it finished, and
//! how the shards' counts become one Prometheus exposition.
//!
//! A shard counts in its own memory, with plain `Cell`s and fixed arrays
//! found by index ([`shard`]): the gateway's one exit
//! (`gateway::exit::finish`) adds each finished exchange to the series of
//! its route (or of its API, when the API has no `detailed_metrics`), with
//! no lock, hash or allocation. A scrape asks every shard for a
//! [`snapshot::ShardSnapshot`] over its control inbox, and
//! [`snapshot::merge`] adds them up exactly (histograms bucket by bucket);
//! [`expo`] writes the merged figures as Prometheus text or OpenMetrics,
//! with the process's own figures read from `/proc` ([`process`]).
//!
//! [`usage_report`] reads what the usage store recorded per key and day
//! (`coregate usage` and the admin API's `GET /usage`).
//!
//! This layer sits above `plan` (series are laid out from a plan's APIs,
//! routes, upstreams and authorizers) and below `gateway`, which records
//! into it.

pub mod expo;
pub mod hist;
pub mod process;
pub mod shard;
pub mod snapshot;
pub mod usage_report;

use std::cell::Cell;

/// Adds `by` to a counter (wrapping, as Prometheus counters may).
#[inline]
pub fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}
