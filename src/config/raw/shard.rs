//! `[[server.shard]]`: one shard's own settings, where one value for every
//! shard is not enough (docs/tuning.md): its CPU, the listeners it serves,
//! its connection limit, its glommio executor (io_uring ring depth,
//! registered I/O memory, spin before sleeping, preempt timer), how long it
//! sleeps in epoll before it parks in glommio and how much later than that
//! the kernel may end the sleep, and the share its background work gets.
//! Every key but `id` is optional; a shard
//! without an entry, and a key left out, keep the defaults below.

use serde::Deserialize;

/// glommio's submission ring depth (its `DEFAULT_RING_SUBMISSION_DEPTH`).
pub const DEFAULT_RING_DEPTH: usize = 128;
/// Locked memory glommio registers with io_uring per executor. coregate
/// does no file I/O, so the minimum glommio accepts is plenty.
pub const DEFAULT_IO_MEMORY_KIB: usize = 512;
/// How long an idle shard keeps looking for work before it sleeps.
pub const DEFAULT_SPIN_BEFORE_PARK_US: u64 = 0;
/// glommio's preempt timer (its default).
pub const DEFAULT_PREEMPT_TIMER_MS: u64 = 100;
/// How long an idle shard sleeps in `epoll_wait`, counted from its last
/// park in glommio, before it parks again (src/net).
pub const DEFAULT_EPOLL_SLEEP_US: u64 = 1_000;

/// The largest `timer_slack_us`: a longer slack is a longer epoll sleep.
/// (Its default, the kernel's scheduler tick, is read when the shard
/// starts: `net::sys::tick`.)
pub const MAX_TIMER_SLACK_US: u64 = 100_000;

/// The largest ring io_uring accepts (`IORING_MAX_ENTRIES`).
pub const MAX_RING_DEPTH: usize = 32_768;
/// glommio registers at least this much I/O memory.
pub const MIN_IO_MEMORY_KIB: usize = 64;
/// 1 GiB: more is a typo (it is locked memory).
pub const MAX_IO_MEMORY_KIB: usize = 1024 * 1024;
/// One second: a longer spin is a busy core, not a tuning.
pub const MAX_SPIN_BEFORE_PARK_US: u64 = 1_000_000;
pub const MAX_PREEMPT_TIMER_MS: u64 = 10_000;
/// 100 ms, glommio's default preempt timer: glommio's timers and other
/// task queues wait up to this long under a light load.
pub const MAX_EPOLL_SLEEP_US: u64 = 100_000;
/// With `io = "uring"`: receive buffers per shard by default (4 MiB).
pub const DEFAULT_URING_BUFFERS: u32 = 1024;
/// Bounds of `uring_buffers`: a power of two (the kernel's buffer ring).
pub const MIN_URING_BUFFERS: u32 = 64;
pub const MAX_URING_BUFFERS: u32 = 32_768;
/// The request path's task queue has glommio's default 1000 shares.
pub const MAX_BACKGROUND_SHARES: usize = 1_000_000;

#[derive(Debug, Default, Clone, Deserialize)]
pub struct RawShard {
    /// The shard this entry tunes: 0 to `server.shards` − 1. Required.
    pub id: Option<usize>,
    /// The CPU the shard is pinned to (instead of `server.cpus` or the
    /// default placement).
    pub cpu: Option<usize>,
    /// The listen addresses (`server.listen`, `server.tls.listen` entries)
    /// this shard serves. Default: all of them.
    pub listeners: Option<Vec<String>>,
    /// Connections this shard holds at once (instead of
    /// `server.max_connections_per_shard`).
    pub max_connections: Option<usize>,
    /// Submission entries of each of the shard's io_uring rings.
    pub ring_depth: Option<usize>,
    /// Memory glommio registers with io_uring for the shard, in KiB.
    pub io_memory_kib: Option<usize>,
    /// How long the shard keeps polling for work before it sleeps, in µs.
    pub spin_before_park_us: Option<u64>,
    /// How long a task queue runs before glommio lets another one run, ms.
    pub preempt_timer_ms: Option<u64>,
    /// How long an idle shard sleeps in `epoll_wait` (counted from its
    /// last park in glommio) before it parks in glommio, in µs; 0 parks
    /// at once.
    pub epoll_sleep_us: Option<u64>,
    /// How much later than asked the kernel may end the shard's epoll
    /// sleep (its thread's timer slack), in µs; 0 for none. Default: the
    /// kernel's scheduler tick.
    pub timer_slack_us: Option<u64>,
    /// Run the shard's background work (control inbox, policy
    /// reconciliation, access-log hand-off, pool sweeping) in a task queue
    /// of its own with these shares, against the request path's 1000.
    /// Default: one task queue for everything.
    pub background_shares: Option<usize>,
    /// How the shard's connected sockets move their bytes: `"uring"` (a
    /// ring of the shard's own, src/net/uring.rs; the default) or `"epoll"`
    /// (readiness and syscalls).
    pub io: Option<String>,
    /// With `io = "uring"`: receive buffers of 4 KiB in the shard's ring.
    pub uring_buffers: Option<u32>,
}
