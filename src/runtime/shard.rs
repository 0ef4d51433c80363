//! One shard: its accept loops, its connections, its control inbox.
//! Everything here is `Rc`/`Cell`/`RefCell`: a shard is one thread, and its
//! state is never touched from another.

use crate::http::encode::{DateCache, RequestIds};
use crate::http::parse::HeadLimits;
use crate::integration::upstream::UpstreamState;
use crate::net::Listener;
use crate::plan::Plan;
use crate::runtime::Control;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often the control inbox is looked at. Control messages are rare
/// (shutdown, later reload); 25 ms bounds their latency at no measurable cost.
const INBOX_POLL: Duration = Duration::from_millis(25);
/// How often idle upstream connections past their idle timeout are closed.
const POOL_SWEEP: Duration = Duration::from_secs(1);
/// Connections accepted in a row before the accept loop yields.
const ACCEPT_BATCH: u32 = 32;
/// At most one log line per this long about failed TLS handshakes.
const TLS_LOG_EVERY: Duration = Duration::from_secs(1);

pub type ShardHandle = Rc<Shard>;

struct ConnSlot {
    fd: RawFd,
    idle: bool,
}

#[derive(Default)]
struct ConnRegistry {
    slots: Vec<Option<ConnSlot>>,
    free: Vec<usize>,
    live: usize,
}

/// Shard-local state shared by the tasks of one shard.
pub struct Shard {
    pub id: usize,
    pub plan: Plan,
    pub head_limits: HeadLimits,
    pub upstreams: Vec<UpstreamState>,
    pub policies: crate::policy::ShardPolicies,
    pub date: RefCell<DateCache>,
    pub ids: RefCell<RequestIds>,
    draining: Cell<bool>,
    /// Never has permits; closed when draining starts, which wakes every task
    /// waiting on it (the accept loops).
    drain_signal: Semaphore,
    conns: RefCell<ConnRegistry>,
    /// This shard's TLS acceptor (its own session cache), when
    /// `[server.tls]` is set.
    pub tls: Option<futures_rustls::TlsAcceptor>,
    tls_failures: Cell<u64>,
    tls_failure_logged: Cell<Option<Instant>>,
}

impl Shard {
    pub fn new(
        id: usize,
        plan: Plan,
        link: crate::policy::throttle::ShardLink,
        usage_link: crate::policy::usage::coordinator::ShardLink,
    ) -> Shard {
        let head_limits = HeadLimits {
            max_request_line: plan.limits.max_request_line_bytes,
            max_head: plan.limits.max_header_bytes,
            max_headers: plan.limits.max_headers,
        };
        let upstreams = plan.upstreams.iter().map(UpstreamState::new).collect();
        let policies = crate::policy::ShardPolicies::new(&plan, id, link, usage_link);
        let tls = plan
            .server
            .tls
            .as_ref()
            .map(|t| futures_rustls::TlsAcceptor::from(t.shard_config()));
        Shard {
            id,
            head_limits,
            upstreams,
            policies,
            date: RefCell::new(DateCache::default()),
            ids: RefCell::new(RequestIds::new(id)),
            draining: Cell::new(false),
            drain_signal: Semaphore::new(0),
            conns: RefCell::new(ConnRegistry::default()),
            tls,
            tls_failures: Cell::new(0),
            tls_failure_logged: Cell::new(None),
            plan,
        }
    }

    /// Counts a failed TLS handshake and logs it, at most once per
    /// TLS_LOG_EVERY per shard: scanners and plain-HTTP clients on a TLS
    /// port must not flood the log.
    pub fn note_tls_failure(&self, peer: std::net::SocketAddr, why: &str) {
        let n = self.tls_failures.get() + 1;
        self.tls_failures.set(n);
        let now = Instant::now();
        if self
            .tls_failure_logged
            .get()
            .is_none_or(|t| now.duration_since(t) >= TLS_LOG_EVERY)
        {
            self.tls_failure_logged.set(Some(now));
            crate::log!(
                "info",
                "shard {}: TLS handshake with {peer} failed: {why} ({n} failed handshake(s) on this shard so far)",
                self.id
            );
        }
    }

    /// Failed TLS handshakes on this shard since it started.
    pub fn tls_failures(&self) -> u64 {
        self.tls_failures.get()
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    pub fn live_connections(&self) -> usize {
        self.conns.borrow().live
    }

    /// Records a new connection; the slot is released by [`ConnGuard`].
    pub fn register(self: &Rc<Self>, fd: RawFd) -> ConnGuard {
        let mut reg = self.conns.borrow_mut();
        let slot = ConnSlot { fd, idle: false };
        let idx = match reg.free.pop() {
            Some(i) => {
                reg.slots[i] = Some(slot);
                i
            }
            None => {
                reg.slots.push(Some(slot));
                reg.slots.len() - 1
            }
        };
        reg.live += 1;
        ConnGuard {
            shard: self.clone(),
            idx,
        }
    }

    /// Starts draining: stop accepting, and close connections that are
    /// waiting for a next request. Busy ones notice `draining()` when their
    /// response is done.
    pub fn begin_drain(&self) {
        if self.draining.replace(true) {
            return;
        }
        self.drain_signal.close();
        for slot in self.conns.borrow().slots.iter().flatten() {
            if slot.idle {
                // SAFETY: the fd belongs to a live connection of this shard
                // (slots are cleared before their socket is closed); shutting
                // down its read side makes the pending read return 0.
                unsafe {
                    libc::shutdown(slot.fd, libc::SHUT_RD);
                }
            }
        }
    }

    /// Resolves when draining starts.
    pub async fn drained(&self) {
        let _ = self.drain_signal.acquire(1).await;
    }
}

/// A connection's place in the shard registry.
pub struct ConnGuard {
    shard: Rc<Shard>,
    idx: usize,
}

impl ConnGuard {
    /// Marks the connection as waiting for a request (closable on drain).
    pub fn set_idle(&self, idle: bool) {
        if let Some(Some(slot)) = self.shard.conns.borrow_mut().slots.get_mut(self.idx) {
            slot.idle = idle;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut reg = self.shard.conns.borrow_mut();
        if let Some(slot) = reg.slots.get_mut(self.idx) {
            if slot.take().is_some() {
                reg.live -= 1;
                reg.free.push(self.idx);
            }
        }
    }
}

/// The shard's main task: start accepting, then serve the control inbox
/// until told to stop, then drain.
pub(super) async fn run(
    id: usize,
    plan: Plan,
    fds: Vec<(RawFd, bool)>,
    inbox: Receiver<Control>,
    ready: Sender<Result<(), String>>,
    link: crate::policy::throttle::ShardLink,
    usage_link: crate::policy::usage::coordinator::ShardLink,
) {
    let shard = Rc::new(Shard::new(id, plan, link, usage_link));
    let mut accept_tasks = Vec::new();
    for (fd, tls) in fds {
        // SAFETY: `fd` is a bound, listening socket created for this shard by
        // `bind_all` and owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = match Listener::from_fd(owned) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: cannot watch listener: {e}")));
                return;
            }
        };
        let acceptor = if tls { shard.tls.clone() } else { None };
        accept_tasks.push(glommio::spawn_local(accept_loop(
            shard.clone(),
            listener,
            acceptor,
        )));
    }
    let sweeper = glommio::spawn_local(sweep_pools(shard.clone())).detach();
    let throttle = glommio::spawn_local(shard.policies.throttle.reconciler()).detach();
    let usage = glommio::spawn_local(shard.policies.usage.reconciler()).detach();
    let auth_keys = glommio::spawn_local(shard.policies.auth.updater()).detach();
    let _ = ready.send(Ok(()));

    loop {
        match inbox.try_recv() {
            Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => glommio::timer::sleep(INBOX_POLL).await,
        }
    }

    shard.begin_drain();
    for t in accept_tasks {
        t.await;
    }
    let deadline = Instant::now() + shard.plan.server.drain_timeout;
    while shard.live_connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let left = shard.live_connections();
    if left > 0 {
        crate::log!(
            "warn",
            "shard {id}: drain timeout passed with {left} connection(s) still open; closing them"
        );
    }
    sweeper.cancel();
    throttle.cancel();
    usage.cancel();
    // Usage admitted since the last tick reaches the store too.
    shard.policies.usage.final_report();
    auth_keys.cancel();
}

/// Accepts on one listener; `tls` is set on a TLS listener.
async fn accept_loop(
    shard: Rc<Shard>,
    listener: Listener,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    let mut in_a_row = 0u32;
    loop {
        // A burst of new connections must not hold up the shard's other
        // work: accepts do not wait while the backlog has entries, so give
        // the task queue a turn every ACCEPT_BATCH of them.
        in_a_row += 1;
        if in_a_row >= ACCEPT_BATCH {
            in_a_row = 0;
            futures_lite::future::yield_now().await;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drained().await;
            None
        })
        .await;
        let (stream, peer) = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                crate::log!("warn", "shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let over_limit = shard.live_connections() >= shard.plan.server.max_connections_per_shard;
        match &tls {
            None => glommio::spawn_local(crate::http::conn::serve(
                shard.clone(),
                stream,
                peer,
                over_limit,
            ))
            .detach(),
            Some(acceptor) => glommio::spawn_local(crate::http::conn::serve_tls(
                shard.clone(),
                stream,
                peer,
                over_limit,
                acceptor.clone(),
            ))
            .detach(),
        };
    }
}

async fn sweep_pools(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(POOL_SWEEP).await;
        let now = Instant::now();
        for (state, plan) in shard.upstreams.iter().zip(&shard.plan.upstreams) {
            state.sweep(plan, now);
        }
    }
}
