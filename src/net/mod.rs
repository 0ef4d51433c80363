//! Sockets for the data path: every client and upstream connection and every
//! listener of a shard waits for readiness here, on one edge-triggered epoll
//! instance per shard, instead of on glommio's per-read io_uring polls.
//!
//! Why (measured, docs/benchmarks.md "Where the time goes"): glommio 0.9's
//! `TcpStream` submits a one-shot io_uring `POLL_ADD` for every read that
//! waits, about 2.4 per proxied request, and each completion raised from the
//! other CPU runs as io_uring task work that interrupts the running shard with
//! a reschedule IPI (its rings are created without `COOP_TASKRUN`, and glommio
//! must not be forked). Those IPIs alone were ~14% of the shard's CPU. Its read
//! timeouts also insert and remove a reactor timer per waiting read.
//!
//! Here a socket is registered once, edge-triggered, for input and output.
//! One poller task per shard collects events with a non-blocking
//! `epoll_wait` whenever the shard has run what was ready; only when that
//! finds nothing does the shard go to sleep. A busy shard therefore takes no
//! interrupts from the network and submits nothing to io_uring per request.
//!
//! Sleeping comes in two depths. A shard that went through glommio's park
//! less than [`set_epoll_sleep`]'s time ago (1 ms by default) sleeps in a
//! blocking `epoll_wait` for the rest of that time: one syscall, where
//! glommio's park costs about a dozen (a `membarrier`, several
//! `io_uring_enter`s) plus the doorbell's three. Only when that wait ends
//! with nothing does it park in glommio, through one io_uring poll on the
//! epoll descriptor itself (see [`doorbell`]), which also lets glommio run
//! its timers, wakes from other threads and other task queues. So under a
//! light, steady load the shard parks about once per epoll-sleep time, not
//! once per request; glommio's timers and task queues wait at most that
//! long. A task woken from another thread is not left waiting: such a wake
//! goes through [`RemoteWaker`], which also writes the shard's eventfd
//! ([`Nudge`]), registered in its epoll set, and that ends the wait at
//! once and sends the shard to glommio's park, where the wake is taken.
//! A task woken by another task of the shard runs before the blocking wait
//! when the chain of such wakes is at most two long (the poller yields
//! twice first); a longer chain waits for the next event, at most the
//! epoll-sleep time.
//!
//! The blocking wait's timeout is short (at most the epoll-sleep time), so
//! it would usually be the CPU's earliest timer: the kernel would program
//! the timer hardware for it at each sleep, and again when an event ends
//! the sleep first. In a VM each such write is a trap to the hypervisor
//! (measured: 1.1 per request at half of nginx's maximum rate, about 15%
//! of the shard's CPU there; docs/benchmarks.md "Light load"). The shard
//! thread's timer slack ([`set_sleep_slack`], by default the scheduler
//! tick) lets the kernel end the wait at its next tick instead, which is
//! already programmed while the CPU is busy. So the blocking wait lasts up
//! to the epoll-sleep time plus one tick, and glommio's timers and task
//! queues wait at most that long. glommio's own sleep (its io_uring
//! timeouts) is not affected by the slack.
//!
//! Reads follow nginx: a read that returns less than the buffer it was given
//! drained the socket, so the next read waits for the next edge instead of
//! spending a syscall on `EAGAIN`. Edge-triggered epoll queues an event for
//! every arrival after that read, so nothing is missed; at worst a read finds
//! an event for bytes it already took and gets one `EAGAIN`.
//!
//! Timeouts have glommio's meaning (the longest one read or write may wait),
//! kept as a deadline in the socket's slot. A shard-wide heap holds at most
//! one live entry per socket, re-armed lazily when it fires: a keep-alive
//! connection that reads a request every millisecond touches the heap once
//! per timeout period, not once per read.
//!
//! Everything is shard-local (`Rc`, `RefCell`, `Cell`): a reactor is created
//! on first use on a glommio executor's thread and lives as long as it.
//! It is kept per thread, and its tasks belong to the executor that made
//! it: one executor per thread, as every shard (a thread of its own) and
//! every test has.
//!
//! Known limit, shared with nginx: a peer that sends urgent (`MSG_OOB`)
//! data makes a read stop short at the mark with data still queued, and
//! no new edge announces it; that connection waits until its read timeout.
//! Only the sender of the urgent byte is affected.

pub mod splice;
mod sys;
#[cfg(test)]
mod tests;
pub mod uring;

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Events taken per `epoll_wait`. More wait for the poller's next turn, one
/// task-queue round later.
const EVENTS_PER_WAIT: usize = 256;

/// Timer-heap entries tolerated before stale ones are swept out, however
/// few sockets are open.
const HEAP_SLACK: usize = 1024;

// === impl Reactor ===

/// What one registered socket is waiting for.
struct Slot {
    /// Bumped when the slot is freed, so that an event or a heap entry for a
    /// closed socket cannot reach the socket that reuses the slot.
    gen: u32,
    readable: bool,
    writable: bool,
    /// The peer closed its side or the socket failed: reads never wait
    /// again, since no further edge will come for an end of stream that a
    /// short read did not see.
    eof: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    read_deadline: When,
    write_deadline: When,
    /// The time of this slot's live entry in the timer heap, if any.
    scheduled: When,
    /// A parked socket's continuation and its key (see [`Socket::park`]).
    parked: Option<Resume>,
}

/// A parked socket's continuation: the function to call and the caller's
/// key for the socket.
type Resume = (fn(u32, Wake), u32);

/// Why a parked socket's continuation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Input arrived, or the peer closed: there is something to read.
    Ready,
    /// The deadline given to [`Socket::park`] passed first.
    TimedOut,
}

thread_local! {
    /// What [`When`]s count from on this thread (every slot of a reactor
    /// is on its shard's thread): a second before its reactor was made,
    /// so that no deadline taken since is before it.
    static EPOCH: Instant = {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
    };
}

/// A deadline, or none, in 8 bytes where an `Option<Instant>` takes 16:
/// every connection slot of a shard has three, idle or not. Nanoseconds
/// since this thread's [`EPOCH`]; a time before it is kept as just after
/// it, which is past as well.
#[derive(Clone, Copy, PartialEq, Eq)]
struct When(Option<NonZeroU64>);

impl When {
    const NONE: When = When(None);

    fn at(t: Instant) -> When {
        let n = EPOCH.with(|e| t.saturating_duration_since(*e).as_nanos());
        When(NonZeroU64::new(u64::try_from(n).unwrap_or(u64::MAX).max(1)))
    }

    fn get(self) -> Option<Instant> {
        let n = self.0?;
        Some(EPOCH.with(|e| *e + Duration::from_nanos(n.get())))
    }

    fn is_some(self) -> bool {
        self.0.is_some()
    }
}

impl Slot {
    fn earliest_deadline(&self) -> Option<Instant> {
        match (self.read_deadline.get(), self.write_deadline.get()) {
            (Some(r), Some(w)) => Some(r.min(w)),
            (r, w) => r.or(w),
        }
    }
}

#[derive(Default)]
struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots of closed sockets whose ring operations have not all
    /// completed yet ([`uring`]).
    closing: usize,
}

/// One shard's readiness reactor.
pub struct Reactor {
    epfd: OwnedFd,
    slab: RefCell<Slab>,
    timers: RefCell<BinaryHeap<Reverse<(Instant, u32, u32)>>>,
    /// When the timer task will next look at the heap (None: it waits to
    /// be kicked).
    timer_target: Cell<Option<Instant>>,
    timer_kicked: Cell<bool>,
    timer_waker: RefCell<Option<Waker>>,
    /// `epoll_wait` calls so far (see [`Socket::polls`]).
    polls: Cell<u64>,
    /// The poller's busy passes so far, and their time added up (see
    /// [`loop_stats`]).
    passes: Cell<u64>,
    pass_ns: Cell<u64>,
    /// This shard's eventfd, in its epoll set under [`NUDGE_TOKEN`].
    nudge: Nudge,
    /// The last events taken held the nudge.
    nudged: Cell<bool>,
    /// Nudges taken so far.
    nudges: Cell<u64>,
    /// How many times the poller parked in glommio (for tests).
    parks: Cell<u64>,
    /// The shard's own io_uring, when its connected sockets use one
    /// ([`uring`]).
    uring: Option<uring::Uring>,
}

/// The epoll token of the shard's [`Nudge`] (no socket slot has it: slot
/// indexes stay far below `u32::MAX`).
const NUDGE_TOKEN: u64 = u64::MAX;

/// How long the bytes a dropped socket on the ring had written and not yet
/// sent may take to go, when the socket had no write timeout.
const LINGER_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The epoll token of the shard's io_uring eventfd ([`uring`]).
const URING_TOKEN: u64 = u64::MAX - 1;

/// How long an idle shard sleeps in `epoll_wait`, counted from its last
/// park in glommio, before it parks again (see the module's comment).
pub const DEFAULT_EPOLL_SLEEP: Duration = Duration::from_millis(1);

thread_local! {
    static EPOLL_SLEEP: Cell<Duration> = const { Cell::new(DEFAULT_EPOLL_SLEEP) };
}

/// Sets this thread's epoll-sleep time (see the module's comment); zero
/// parks in glommio whenever the shard is idle. Call it on the shard's
/// thread; it applies from the poller's next idle moment.
pub fn set_epoll_sleep(d: Duration) {
    EPOLL_SLEEP.with(|e| e.set(d));
}

thread_local! {
    /// Congestion-control refusals since the last log line, and when that
    /// line was written.
    static CC_REFUSED: Cell<(u64, Option<Instant>)> = const { Cell::new((0, None)) };
}

fn note_congestion_refused(name: &str, e: &io::Error) {
    let now = Instant::now();
    let (count, logged) = CC_REFUSED.with(|c| c.get());
    let count = count + 1;
    if logged.is_some_and(|t| now.duration_since(t) < Duration::from_secs(60)) {
        CC_REFUSED.with(|c| c.set((count, logged)));
        return;
    }
    CC_REFUSED.with(|c| c.set((0, Some(now))));
    crate::log!(
        "warn",
        "the kernel refused congestion control {name:?} on a new upstream connection ({e}; {count} refusal(s) since the last such line); those connections use the host's default ({})",
        congestion_controls().default
    );
}

/// What this host's kernel offers for `TCP_CONGESTION`, from
/// /proc/sys/net/ipv4 (empty strings where a file cannot be read).
struct CongestionControls {
    /// `tcp_congestion_control`: new sockets' default.
    default: String,
    /// `tcp_available_congestion_control`: loaded, any process with
    /// `CAP_NET_ADMIN` may choose them.
    available: String,
    /// `tcp_allowed_congestion_control`: any process may choose them.
    allowed: String,
}

fn congestion_controls() -> CongestionControls {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    CongestionControls {
        default: read("tcp_congestion_control"),
        available: read("tcp_available_congestion_control"),
        allowed: read("tcp_allowed_congestion_control"),
    }
}

/// Whether this process may set congestion control `name` on its TCP
/// sockets: tried on a socket that is never connected. The error says
/// why not, in words an operator can act on.
pub fn probe_congestion_control(name: &str) -> Result<(), String> {
    let probe = || -> io::Result<()> {
        let fd = sys::tcp_socket(&SocketAddr::from(([127, 0, 0, 1], 0)))?;
        sys::set_congestion_control(fd.as_raw_fd(), name)
    };
    match probe() {
        Ok(()) => Ok(()),
        Err(e) => Err(explain_congestion_refusal(name, &e, &congestion_controls())),
    }
}

/// The congestion control for connections to a backend on this host when
/// the upstream names none: `None` keeps the host's default, which is what
/// happens unless that default paces its sends (`bbr` and its variants).
/// A pacing algorithm on loopback, where there is no queue to spare and
/// the round trip is microseconds, only spends a timer and a softirq per
/// burst of segments: measured, twice the proxy's CPU per uploaded byte
/// and two thirds of the throughput of `cubic`. Then the first of `cubic`
/// and `reno` this process may set is chosen. Read from the host (and
/// probed on a socket that never connects) each time a config is compiled.
pub fn loopback_congestion_control() -> Option<&'static str> {
    choose_loopback_congestion_control(&congestion_controls().default, |name| {
        probe_congestion_control(name).is_ok()
    })
}

fn choose_loopback_congestion_control(
    default: &str,
    may_set: impl Fn(&str) -> bool,
) -> Option<&'static str> {
    if !default.starts_with("bbr") {
        return None;
    }
    ["cubic", "reno"].into_iter().find(|name| may_set(name))
}

/// Whether `addr` is this host's loopback (`127.0.0.0/8`, `::1`, or
/// `::ffff:127.x.y.z`): where [`loopback_congestion_control`] applies.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

fn explain_congestion_refusal(name: &str, e: &io::Error, cc: &CongestionControls) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "the kernel has no TCP congestion control {name:?} (this host offers: {}; a module such as tcp_{name} must be loaded first)",
            cc.available
        ),
        Some(libc::EPERM) => format!(
            "this process may not choose {name:?}: without CAP_NET_ADMIN only the names in net.ipv4.tcp_allowed_congestion_control may be chosen (here: {})",
            cc.allowed
        ),
        _ => format!("the kernel refused {name:?} as TCP congestion control ({e})"),
    }
}

/// Sets this thread's timer slack: how much later than asked the kernel
/// may end its blocking `epoll_wait` (see the module's comment); `None`
/// for the kernel's scheduler tick (if the kernel does not tell its tick,
/// the thread keeps the kernel's default slack). Call it on the shard's
/// thread.
pub fn set_sleep_slack(slack: Option<Duration>) -> io::Result<()> {
    match slack.or_else(sys::tick) {
        Some(d) => sys::set_timer_slack(d),
        None => Ok(()),
    }
}

/// Wakes a shard out of its blocking `epoll_wait`: an eventfd in its epoll
/// set. Any thread may ring it; a ring while the shard is parked in glommio
/// only costs it one more look.
#[derive(Clone, Debug)]
pub struct Nudge(std::sync::Arc<OwnedFd>);

impl Nudge {
    /// The calling thread's shard's nudge (its reactor is made if needed).
    pub fn current() -> io::Result<Nudge> {
        Ok(Reactor::current()?.nudge.clone())
    }

    pub fn ring(&self) {
        sys::eventfd_add(self.0.as_raw_fd());
    }
}

/// A waker for a task of some shard, to be woken from another thread:
/// wakes the task, then rings its shard's [`Nudge`] so that a shard asleep
/// in `epoll_wait` takes the wake at once.
#[derive(Clone, Debug)]
pub struct RemoteWaker {
    waker: Waker,
    nudge: Option<Nudge>,
}

impl RemoteWaker {
    /// `waker`, of a task on the calling thread. On a thread without a
    /// reactor the wake is a plain one.
    pub fn here(waker: &Waker) -> RemoteWaker {
        RemoteWaker {
            waker: waker.clone(),
            nudge: CURRENT.with(|c| c.borrow().as_ref().map(|r| r.nudge.clone())),
        }
    }

    pub fn wake(self) {
        self.waker.wake();
        if let Some(n) = self.nudge {
            n.ring();
        }
    }
}

/// This shard's reactor loop: (passes, nanoseconds) — how many times the
/// poller found events, yielded to the tasks they woke and came back, and
/// how long those passes took together (the events taken, the woken
/// tasks' run, everything else the shard ran meanwhile). Their ratio is
/// the mean loop time under load; time asleep waiting for events is not
/// in it. (0, 0) on a thread without a reactor.
/// A blocking listener for the admin and portal threads: `SO_REUSEADDR`
/// and `SO_REUSEPORT` (so that a gateway started later with `share` can
/// bind the same address, for a zero-downtime upgrade); without `share`,
/// an address someone already listens on is refused first by a probe bind
/// without `SO_REUSEPORT`, as the traffic listeners are.
pub fn bind_blocking(
    addr: SocketAddr,
    share: bool,
    backlog: i32,
) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = |reuse_port: bool| -> io::Result<Socket> {
        let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(reuse_port)?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.bind(&addr.into())?;
        Ok(sock)
    };
    if !share && addr.port() != 0 {
        drop(socket(false)?);
    }
    let sock = socket(true)?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

pub fn loop_stats() -> (u64, u64) {
    CURRENT.with(|c| match c.borrow().as_ref() {
        Some(r) => (r.passes.get(), r.pass_ns.get()),
        None => (0, 0),
    })
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

impl Reactor {
    /// This thread's reactor, created (with its poller and timer tasks) on
    /// first use. Must be called on a glommio executor's thread.
    pub fn current() -> io::Result<Rc<Reactor>> {
        if let Some(r) = CURRENT.with(|c| c.borrow().clone()) {
            return Ok(r);
        }
        // The thread's deadlines count from here (see `When`).
        EPOCH.with(|_| ());
        let epfd = sys::epoll_create()?;
        let nudge = sys::eventfd()?;
        sys::epoll_add_input(epfd.as_raw_fd(), nudge.as_raw_fd(), NUDGE_TOKEN)?;
        let uring = match uring::io_mode() {
            uring::IoMode::Epoll => None,
            uring::IoMode::Uring { buffers, entries } => {
                let u = uring::Uring::new(buffers, entries, epfd.as_raw_fd())?;
                sys::epoll_add_input(epfd.as_raw_fd(), u.evfd.as_raw_fd(), URING_TOKEN)?;
                Some(u)
            }
        };
        let reactor = Rc::new(Reactor {
            epfd,
            slab: RefCell::new(Slab::default()),
            timers: RefCell::new(BinaryHeap::new()),
            timer_target: Cell::new(None),
            timer_kicked: Cell::new(false),
            timer_waker: RefCell::new(None),
            polls: Cell::new(0),
            passes: Cell::new(0),
            pass_ns: Cell::new(0),
            nudge: Nudge(std::sync::Arc::new(nudge)),
            nudged: Cell::new(false),
            nudges: Cell::new(0),
            parks: Cell::new(0),
            uring,
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(reactor.clone()));
        glommio::spawn_local(poller(reactor.clone())).detach();
        glommio::spawn_local(timer_task(reactor.clone())).detach();
        Ok(reactor)
    }

    fn register(&self, fd: RawFd, on_ring: bool) -> io::Result<(u32, u32)> {
        let (idx, gen) = {
            let mut slab = self.slab.borrow_mut();
            let idx = match slab.free.pop() {
                Some(i) => i,
                None => {
                    let i = u32::try_from(slab.slots.len())
                        .map_err(|_| io::Error::other("too many sockets on one shard"))?;
                    slab.slots.push(Slot {
                        gen: 0,
                        readable: false,
                        writable: false,
                        eof: false,
                        read_waker: None,
                        write_waker: None,
                        read_deadline: When::NONE,
                        write_deadline: When::NONE,
                        scheduled: When::NONE,
                        parked: None,
                    });
                    i
                }
            };
            let s = &mut slab.slots[idx as usize];
            // Optimistic: a new socket may already hold input (a request
            // that came with the handshake), and has room to write.
            s.readable = true;
            s.writable = true;
            s.eof = false;
            (idx, s.gen)
        };
        if let (true, Some(u)) = (on_ring, &self.uring) {
            u.attach(idx, gen, fd);
            return Ok((idx, gen));
        }
        let token = (u64::from(gen) << 32) | u64::from(idx);
        if let Err(e) = sys::epoll_add(self.epfd.as_raw_fd(), fd, token) {
            self.release(idx, false, None);
            return Err(e);
        }
        Ok((idx, gen))
    }

    /// Frees a slot; the socket's descriptor is closed right after, which
    /// removes it from the epoll set. A socket on the ring keeps its slot
    /// until the operations it started have completed ([`uring`]).
    fn release(&self, idx: u32, on_ring: bool, write_timeout: Option<Duration>) {
        let wakers = {
            let mut slab = self.slab.borrow_mut();
            let s = &mut slab.slots[idx as usize];
            let (free, lingering) = match (on_ring, &self.uring) {
                (true, Some(u)) => u.detach(idx, s.gen),
                _ => (true, false),
            };
            s.read_deadline = When::NONE;
            s.write_deadline = When::NONE;
            s.scheduled = When::NONE;
            s.parked = None;
            let out = (s.read_waker.take(), s.write_waker.take());
            if free {
                Reactor::free_slot(&mut slab, idx);
            } else {
                slab.closing += 1;
                if lingering {
                    // The rest of what was written must be taken within the
                    // socket's write timeout ([`uring::Uring::abandon`]).
                    let d = Instant::now() + write_timeout.unwrap_or(LINGER_SEND_TIMEOUT);
                    slab.slots[idx as usize].write_deadline = When::at(d);
                    self.schedule(&mut slab, idx, d);
                }
            }
            out
        };
        // Dropped with no borrow held: a waker may own other sockets, whose
        // drop comes back here.
        drop(wakers);
    }

    /// Puts slot `idx` back on the free list, so that nothing said about
    /// it before (events, heap entries, read handles) reaches the next
    /// socket there.
    fn free_slot(slab: &mut Slab, idx: u32) {
        let s = &mut slab.slots[idx as usize];
        s.gen = s.gen.wrapping_add(1);
        s.read_deadline = When::NONE;
        s.write_deadline = When::NONE;
        s.scheduled = When::NONE;
        slab.free.push(idx);
    }

    /// Makes sure the timer heap will look at slot `idx` by `deadline`.
    fn schedule(&self, slab: &mut Slab, idx: u32, deadline: Instant) {
        let s = &mut slab.slots[idx as usize];
        if s.scheduled.get().is_some_and(|t| t <= deadline) {
            return;
        }
        s.scheduled = When::at(deadline);
        let mut heap = self.timers.borrow_mut();
        heap.push(Reverse((deadline, idx, s.gen)));
        // Entries of closed sockets stay until their time comes; with many
        // short connections and long timeouts they would pile up (a rate
        // times the longest timeout). Sweep them out once they outnumber
        // the live sockets: O(n) every O(n) pushes.
        let live = slab.slots.len() - slab.free.len() - slab.closing;
        if heap.len() > HEAP_SLACK.max(4 * live) {
            heap.retain(|&Reverse((t, i, g))| {
                slab.slots
                    .get(i as usize)
                    .is_some_and(|s| s.gen == g && s.scheduled == When::at(t))
            });
        }
        drop(heap);
        if self.timer_target.get().is_none_or(|t| deadline < t) {
            self.timer_kicked.set(true);
            if let Some(w) = self.timer_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Wakes the sockets whose deadline passed; returns the next time the
    /// heap needs a look.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut wake = Vec::new();
        let mut expired: Vec<Resume> = Vec::new();
        let next = {
            let mut slab = self.slab.borrow_mut();
            let mut heap = self.timers.borrow_mut();
            while let Some(&Reverse((t, idx, gen))) = heap.peek() {
                if t > now {
                    break;
                }
                heap.pop();
                let Some(s) = slab.slots.get_mut(idx as usize) else {
                    continue;
                };
                if s.gen != gen || s.scheduled != When::at(t) {
                    continue; // stale: closed, or moved earlier
                }
                s.scheduled = When::NONE;
                match s.earliest_deadline() {
                    None => {}
                    Some(d) if d <= now => {
                        // The waiting read or write sees its deadline
                        // passed and fails with TimedOut.
                        if s.read_deadline.get().is_some_and(|d| d <= now) {
                            wake.extend(s.read_waker.take());
                            if let Some(p) = s.parked.take() {
                                s.read_deadline = When::NONE;
                                expired.push(p);
                            }
                        }
                        if s.write_deadline.get().is_some_and(|d| d <= now) {
                            wake.extend(s.write_waker.take());
                            if let Some(u) = &self.uring {
                                // A dropped socket's last bytes, not taken
                                // in time (a no-op for any other slot).
                                u.abandon(idx, gen);
                            }
                        }
                        // Whatever deadline is left gets its own entry.
                        let later = [s.read_deadline.get(), s.write_deadline.get()]
                            .into_iter()
                            .flatten()
                            .filter(|&d| d > now)
                            .min();
                        if let Some(l) = later {
                            s.scheduled = When::at(l);
                            heap.push(Reverse((l, idx, gen)));
                        }
                    }
                    Some(d) => {
                        s.scheduled = When::at(d);
                        heap.push(Reverse((d, idx, gen)));
                    }
                }
            }
            heap.peek().map(|Reverse((t, _, _))| *t)
        };
        for w in wake {
            w.wake();
        }
        // Each may drop its socket, which frees the slot: no borrow is held.
        for (f, key) in expired {
            f(key, Wake::TimedOut);
        }
        next
    }

    /// Takes what epoll has ready, waiting at most `wait` for something
    /// (not at all when zero), and wakes the waiters; returns how many
    /// events there were. The nudge's event clears its count and sets
    /// `nudged`.
    fn dispatch(&self, events: &mut [libc::epoll_event], wait: Duration) -> io::Result<usize> {
        let mut wake: smallvec::SmallVec<[Waker; 32]> = smallvec::SmallVec::new();
        let mut resume: smallvec::SmallVec<[Resume; 8]> = smallvec::SmallVec::new();
        // The ring first: submit what the tasks queued, take completions.
        let mut found = 0;
        if let Some(u) = &self.uring {
            let (w, r) = u.take_deferred();
            found += w.len() + r.len();
            wake.extend(w);
            resume.extend(r);
            let mut slab = self.slab.borrow_mut();
            found += u.settle(&mut slab, &mut wake, &mut resume)?;
        }
        let wait = if found > 0 { Duration::ZERO } else { wait };
        // With a ring, a busy pass asks the epoll set (listeners and
        // eventfds only) just when the ring's poll of it said it has events.
        let ask = found == 0 || self.uring.as_ref().is_none_or(uring::Uring::epoll_due);
        let n = if !ask {
            0
        } else if wait.is_zero() {
            sys::epoll_wait_now(self.epfd.as_raw_fd(), events)?
        } else {
            sys::epoll_wait_for(self.epfd.as_raw_fd(), events, wait)?
        };
        if let (true, Some(u)) = (ask, &self.uring) {
            u.epoll_taken(n == events.len())?;
        }
        self.polls.set(self.polls.get().wrapping_add(1));
        let mut slab = self.slab.borrow_mut();
        for ev in &events[..n] {
            let token = ev.u64;
            if token == URING_TOKEN {
                // Not read: it is in the set edge-triggered, so each ring
                // reports again whatever its count, and the completions
                // are taken below in any case.
                continue;
            }
            if token == NUDGE_TOKEN {
                sys::eventfd_clear(self.nudge.0.as_raw_fd());
                self.nudged.set(true);
                self.nudges.set(self.nudges.get() + 1);
                continue;
            }
            let idx = (token & 0xffff_ffff) as u32;
            let gen = (token >> 32) as u32;
            let Some(s) = slab.slots.get_mut(idx as usize) else {
                continue;
            };
            if s.gen != gen {
                continue;
            }
            let bits = ev.events;
            let err = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            if err || bits & libc::EPOLLRDHUP as u32 != 0 {
                s.eof = true;
            }
            if err || bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 {
                s.readable = true;
                wake.extend(s.read_waker.take());
                if let Some(p) = s.parked.take() {
                    s.read_deadline = When::NONE;
                    resume.push(p);
                }
            }
            if err || bits & libc::EPOLLOUT as u32 != 0 {
                s.writable = true;
                wake.extend(s.write_waker.take());
            }
        }
        if let Some(u) = &self.uring {
            // Whatever the wait returned: a completion's task work ends a
            // blocking wait early (with EINTR, counted as no events) and
            // runs as the syscall returns, so its completion is in the
            // queue now even when the eventfd was not reported. Reading
            // the queue costs no syscall unless the kernel has work left.
            found += u.reap(&mut slab, true, &mut wake, &mut resume)?;
        }
        drop(slab);
        for w in wake {
            w.wake();
        }
        for (f, key) in resume {
            f(key, Wake::Ready);
        }
        Ok(n + found)
    }

    /// Before the shard parks in glommio, where only the ring's eventfd
    /// tells it about completions: enables the eventfd and takes what came
    /// before it was enabled (which did not ring). Returns how many wakes
    /// and resumes that found; with any, the poller does not park.
    fn ring_before_park(&self) -> io::Result<usize> {
        let Some(u) = &self.uring else {
            return Ok(0);
        };
        let mut wake: smallvec::SmallVec<[Waker; 32]> = smallvec::SmallVec::new();
        let mut resume: smallvec::SmallVec<[Resume; 8]> = smallvec::SmallVec::new();
        u.signal(true);
        let found = u.settle(&mut self.slab.borrow_mut(), &mut wake, &mut resume)?;
        for w in wake {
            w.wake();
        }
        for (f, key) in resume {
            f(key, Wake::Ready);
        }
        Ok(found)
    }

    /// How many times the poller parked in glommio (for tests).
    pub fn parks(&self) -> u64 {
        self.parks.get()
    }

    /// How many times a [`Nudge`] woke this shard's poller (for tests).
    pub fn nudges(&self) -> u64 {
        self.nudges.get()
    }

    /// Entries in the timer heap, live and stale (for tests).
    pub fn timer_entries(&self) -> usize {
        self.timers.borrow().len()
    }

    /// How many sockets are registered (for tests and diagnostics).
    pub fn registered(&self) -> usize {
        let slab = self.slab.borrow();
        slab.slots.len() - slab.free.len() - slab.closing
    }
}

/// The poller: collects events while there are any, yielding to the woken
/// tasks between batches; when a look finds nothing, sleeps in
/// `epoll_wait` if glommio's park was recent enough, else parks there
/// through the doorbell (see the module's comment).
async fn poller(reactor: Rc<Reactor>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    let mut failures = FailureLog::default();
    // When the pass under way started, if the last one yielded to tasks.
    let mut pass_started: Option<Instant> = None;
    // When the poller last came back from glommio's park.
    let mut parked = Instant::now();
    loop {
        let now = Instant::now();
        if let Some(t) = pass_started.take() {
            let ns = now.saturating_duration_since(t).as_nanos();
            reactor.passes.set(reactor.passes.get() + 1);
            reactor.pass_ns.set(
                reactor
                    .pass_ns
                    .get()
                    .wrapping_add(ns.min(u128::from(u64::MAX)) as u64),
            );
        }
        let sleep = EPOLL_SLEEP.with(Cell::get);
        let wait = sleep.saturating_sub(now.saturating_duration_since(parked));
        match reactor.dispatch(&mut events, wait) {
            Ok(n) if n > 0 && !reactor.nudged.get() => {
                // A wait that blocked ends its time asleep here.
                pass_started = Some(if wait.is_zero() { now } else { Instant::now() });
                futures_lite::future::yield_now().await;
                if !sleep.is_zero() {
                    // Once more, so that tasks those woke run before the
                    // next look, which may block.
                    futures_lite::future::yield_now().await;
                }
            }
            Ok(_) => {
                reactor.nudged.set(false);
                match reactor.ring_before_park() {
                    Ok(0) => {}
                    Ok(_) => {
                        // Completions came meanwhile: run them, no park.
                        if let Some(u) = &reactor.uring {
                            u.signal(false);
                        }
                        futures_lite::future::yield_now().await;
                        continue;
                    }
                    Err(e) => {
                        failures.failed("io_uring_enter failed", &e).await;
                        continue;
                    }
                }
                reactor.parks.set(reactor.parks.get() + 1);
                if let Some(u) = &reactor.uring {
                    u.parked.set(true);
                }
                let rang = doorbell(reactor.epfd.as_raw_fd()).await;
                if let Some(u) = &reactor.uring {
                    u.parked.set(false);
                    u.signal(false);
                    // The park ended on an event of the set, most likely.
                    u.epoll_wake();
                }
                match rang {
                    Ok(()) => failures.ok(),
                    // Out of descriptors (EMFILE) is the likely cause: look
                    // again every millisecond until it passes.
                    Err(e) => failures.failed("cannot wait for events", &e).await,
                }
                parked = Instant::now();
            }
            Err(e) => failures.failed("epoll_wait failed", &e).await,
        }
    }
}

/// The poller's failures: retried after 1 ms, logged at most once a second
/// with how many there were.
#[derive(Default)]
struct FailureLog {
    count: u64,
    logged: Option<Instant>,
}

impl FailureLog {
    fn ok(&mut self) {
        self.count = 0;
    }

    async fn failed(&mut self, what: &str, e: &io::Error) {
        self.count += 1;
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.logged = Some(now);
            crate::log!(
                "error",
                "socket reactor: {what}: {e} ({} failure(s) in a row; retrying every 1 ms)",
                self.count
            );
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the epoll set has an event, through the shard's io_uring.
///
/// glommio 0.9 has no public "wait until this descriptor is readable". Its
/// stream types do one thing close to it: a stream made from a descriptor
/// starts an io_uring poll for input at once, and a read of it waits for that
/// poll before touching the descriptor. A glommio `UnixStream` over a
/// duplicate of the epoll descriptor therefore sleeps in the shard's own ring
/// until an event is queued; the read that follows is a `recv` on a
/// non-socket, fails with `ENOTSOCK`, and that failure is the signal. The
/// duplicate is closed when the stream drops. This costs a `dup`, a `close`
/// and one io_uring poll each time the shard goes idle, not per request.
async fn doorbell(epfd: RawFd) -> io::Result<()> {
    use futures_lite::AsyncReadExt;
    let dup = sys::dup(epfd)?;
    // SAFETY: `dup` is a fresh descriptor that only this stream owns.
    let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(dup) };
    let mut b = [0u8; 1];
    match bell.read(&mut b).await {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Err(io::Error::other("epoll descriptor read as a socket")),
    }
}

/// Runs the socket timeouts: sleeps until the earliest deadline, or until a
/// socket asks for an earlier one.
async fn timer_task(reactor: Rc<Reactor>) {
    loop {
        let now = Instant::now();
        let next = reactor.expire(now);
        reactor.timer_target.set(next);
        reactor.timer_kicked.set(false);
        let kicked = Kicked(&reactor);
        match next {
            None => kicked.await,
            Some(t) => {
                let sleep = async {
                    glommio::timer::sleep(t.saturating_duration_since(now)).await;
                };
                futures_lite::future::or(sleep, kicked).await
            }
        }
    }
}

/// Ready once [`Reactor::schedule`] asked for an earlier look.
struct Kicked<'a>(&'a Reactor);

impl Future for Kicked<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.timer_kicked.get() {
            return Poll::Ready(());
        }
        *self.0.timer_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Names a registered socket for [`interrupt_read`] without owning it.
#[derive(Debug, Clone, Copy)]
pub struct ReadHandle {
    idx: u32,
    gen: u32,
}

/// Ends the wait for input of the socket `h` names, leaving the socket and
/// what it holds untouched: a task waiting in a read gets `TimedOut` at
/// once (it may read again), and a parked socket is resumed
/// ([`Wake::Ready`]) as if input had come. Does nothing for a socket
/// closed since, or not waiting. Call it on the socket's shard, with no
/// borrow held that a resumed socket's continuation takes.
pub fn interrupt_read(h: ReadHandle) {
    let Some(reactor) = CURRENT.with(|c| c.borrow().clone()) else {
        return;
    };
    let (waker, parked) = {
        let mut slab = reactor.slab.borrow_mut();
        let Some(s) = slab
            .slots
            .get_mut(h.idx as usize)
            .filter(|s| s.gen == h.gen)
        else {
            return;
        };
        if let Some(p) = s.parked.take() {
            s.read_deadline = When::NONE;
            (None, Some(p))
        } else if s.read_deadline.is_some() {
            // A read is waiting (reads wait with a deadline set): make its
            // deadline now, so that its next poll fails with TimedOut.
            s.read_deadline = When::at(Instant::now());
            (s.read_waker.take(), None)
        } else {
            (None, None)
        }
    };
    if let Some(w) = waker {
        w.wake();
    }
    if let Some((f, key)) = parked {
        f(key, Wake::Ready);
    }
}

// === impl Socket ===

/// A non-blocking socket registered with this shard's reactor. Closed when
/// dropped.
pub struct Socket {
    fd: OwnedFd,
    reactor: Rc<Reactor>,
    idx: u32,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
    /// Its bytes move through the shard's ring ([`uring`]), not syscalls.
    on_ring: bool,
}

#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write,
}

impl Socket {
    /// Registers `fd`, which must be a non-blocking socket this call now
    /// owns.
    fn new(fd: OwnedFd) -> io::Result<Socket> {
        Socket::new_as(fd, true)
    }

    /// As [`Socket::new`]; `ring`: on the shard's ring if it has one (a
    /// listener never is).
    fn new_as(fd: OwnedFd, ring: bool) -> io::Result<Socket> {
        let reactor = Reactor::current()?;
        let on_ring = ring && reactor.uring.is_some();
        let (idx, _) = reactor.register(fd.as_raw_fd(), on_ring)?;
        Ok(Socket {
            fd,
            reactor,
            idx,
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
            on_ring,
        })
    }

    fn ring(&self) -> Option<&uring::Uring> {
        if self.on_ring {
            self.reactor.uring.as_ref()
        } else {
            None
        }
    }

    fn gen(&self) -> u32 {
        self.slot_mut(|s| s.gen)
    }

    /// Opens a TCP connection to `addr`, failing with `TimedOut` if it is
    /// not established within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Socket> {
        Socket::connect_with(addr, timeout, None).await
    }

    /// [`Socket::connect`] with the socket's congestion control set first
    /// (`TCP_CONGESTION`, by the kernel's name for it). When the kernel
    /// refuses it, the connection is still made, with the host's default,
    /// and the refusal is logged (at most once a minute per shard).
    pub async fn connect_with(
        addr: SocketAddr,
        timeout: Duration,
        congestion_control: Option<&str>,
    ) -> io::Result<Socket> {
        let fd = sys::tcp_socket(&addr)?;
        if let Some(name) = congestion_control {
            if let Err(e) = sys::set_congestion_control(fd.as_raw_fd(), name) {
                note_congestion_refused(name, &e);
            }
        }
        let sock = Socket::new(fd)?;
        if sys::connect(sock.fd.as_raw_fd(), &addr)? {
            return Ok(sock);
        }
        // In progress: writable means done, one way or the other.
        sock.slot_mut(|s| s.writable = false);
        if let Some(u) = sock.ring() {
            u.poll_out(sock.idx, sock.gen())?;
        }
        sock.write_timeout.set(Some(timeout));
        let waited = futures_lite::future::poll_fn(|cx| sock.poll_ready(cx, Dir::Write)).await;
        sock.write_timeout.set(None);
        sock.slot_mut(|s| {
            s.write_deadline = When::NONE;
            s.write_waker = None;
        });
        match waited {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connection to {addr} not established within {timeout:?}"),
                ))
            }
            Err(e) => return Err(e),
        }
        match sys::socket_error(sock.fd.as_raw_fd())? {
            None => Ok(sock),
            Some(e) => Err(e),
        }
    }

    /// Drops the wakers of the last task that waited here. For a socket
    /// that goes back to an upstream pool: a waker left behind would keep
    /// that task alive, future and all, until the socket's next use.
    pub fn forget_wakers(&self) {
        let (r, w) = self.slot_mut(|s| (s.read_waker.take(), s.write_waker.take()));
        drop((r, w));
    }

    /// A handle for [`interrupt_read`].
    pub fn read_handle(&self) -> ReadHandle {
        ReadHandle {
            idx: self.idx,
            gen: self.slot_mut(|s| s.gen),
        }
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) {
        self.read_timeout.set(d);
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) {
        self.write_timeout.set(d);
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        sys::set_nodelay(self.fd.as_raw_fd(), on)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        sys::peer_addr(self.fd.as_raw_fd())
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match (self.ring(), how) {
            (Some(u), std::net::Shutdown::Write) => u.shutdown_write(self.idx),
            (Some(u), std::net::Shutdown::Both) => {
                u.shutdown_write(self.idx)?;
                sys::shutdown(self.fd.as_raw_fd(), std::net::Shutdown::Read)
            }
            _ => sys::shutdown(self.fd.as_raw_fd(), how),
        }
    }

    /// How many times the shard's reactor has asked epoll for events so
    /// far: a mark for [`Socket::is_quiet`].
    pub fn polls(&self) -> u64 {
        self.reactor.polls.get()
    }

    /// Whether nothing waits to be read: no byte, no end of stream, no
    /// error. Used on an idle pooled upstream connection before it carries
    /// a request: anything there means it must not be reused. `mark` is
    /// [`Socket::polls`] when the connection was set aside.
    ///
    /// When the reactor has asked epoll for events since `mark` and still
    /// holds the socket drained (its last read was short, and no event came
    /// after it), the answer needs no syscall: edge-triggered epoll reports
    /// every arrival after a read, so anything that arrived before that
    /// poll would have marked it readable. This is what nginx relies on for
    /// its idle upstream connections. Otherwise (the reactor has not polled
    /// since, or the socket may hold input) one non-blocking
    /// `recv(MSG_PEEK)` that takes nothing decides.
    pub fn is_quiet(&self, mark: u64) -> bool {
        let (readable, eof) = self.slot_mut(|s| (s.readable, s.eof));
        if !readable && !eof && self.reactor.polls.get() != mark {
            return true;
        }
        self.is_quiet_now()
    }

    /// As [`Socket::is_quiet`], but always asks the kernel (one
    /// `recv(MSG_PEEK)` that takes nothing): an end of stream that arrived
    /// after the reactor's last poll is seen too. For a pooled connection
    /// about to carry a request that cannot be sent again if the peer turns
    /// out to have closed it (a method that is not idempotent, or a body),
    /// where a syscall is cheaper than a 502.
    pub fn is_quiet_now(&self) -> bool {
        if let Some(u) = self.ring() {
            // What the ring already took counts too.
            u.take_posted(&mut self.reactor.slab.borrow_mut());
            if self.slot_mut(|s| s.eof) || !u.holds_nothing(self.idx) {
                return false;
            }
        }
        loop {
            match sys::peek(self.fd.as_raw_fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drained as of now: the next read waits for the next
                    // edge instead of spending a syscall on `EAGAIN`.
                    self.slot_mut(|s| {
                        if !s.eof {
                            s.readable = false;
                        }
                    });
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => return false,
            }
        }
    }

    fn slot_mut<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        let mut slab = self.reactor.slab.borrow_mut();
        f(&mut slab.slots[self.idx as usize])
    }

    /// Pending until the socket is (probably) ready in `dir`, or an error
    /// once its timeout passed. Marks it not ready first: call this only
    /// after a syscall said `EAGAIN`, or to wait for a connect.
    fn poll_ready(&self, cx: &Context<'_>, dir: Dir) -> Poll<io::Result<()>> {
        let timeout = match dir {
            Dir::Read => self.read_timeout.get(),
            Dir::Write => self.write_timeout.get(),
        };
        let mut slab = self.reactor.slab.borrow_mut();
        let s = &mut slab.slots[self.idx as usize];
        let (ready, deadline, waker) = match dir {
            Dir::Read => (&mut s.readable, &mut s.read_deadline, &mut s.read_waker),
            Dir::Write => (&mut s.writable, &mut s.write_deadline, &mut s.write_waker),
        };
        if *ready {
            return Poll::Ready(Ok(()));
        }
        let mut arm = None;
        match deadline.get() {
            Some(d) => {
                if Instant::now() >= d {
                    *deadline = When::NONE;
                    *waker = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "Operation timed out",
                    )));
                }
            }
            None => {
                if let Some(t) = timeout {
                    let d = Instant::now() + t;
                    *deadline = When::at(d);
                    arm = Some(d);
                }
            }
        }
        match waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        if let Some(d) = arm {
            self.reactor.schedule(&mut slab, self.idx, d);
        }
        Poll::Pending
    }

    /// Marks the socket drained in `dir` and clears its deadline: a syscall
    /// just finished without waiting. The waker stays, so that the same task
    /// waiting again costs no clone (`will_wake`); a socket that changes
    /// hands drops it with [`Socket::forget_wakers`].
    fn done(&self, dir: Dir, drained: bool) {
        self.slot_mut(|s| match dir {
            Dir::Read => {
                s.read_deadline = When::NONE;
                s.parked = None;
                if drained && !s.eof {
                    s.readable = false;
                }
            }
            Dir::Write => {
                s.write_deadline = When::NONE;
                if drained {
                    s.writable = false;
                }
            }
        })
    }

    fn is_ready(&self, dir: Dir) -> bool {
        self.slot_mut(|s| match dir {
            Dir::Read => s.readable,
            Dir::Write => s.writable,
        })
    }

    /// One non-blocking syscall in `dir` when the socket may be ready, else
    /// (or after `EAGAIN`) a wait for the next edge. `drained` says from
    /// the syscall's result whether the socket is now known to be empty.
    fn poll_op(
        &self,
        cx: &Context<'_>,
        dir: Dir,
        mut op: impl FnMut(RawFd) -> io::Result<usize>,
        drained: impl Fn(usize) -> bool,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.is_ready(dir) {
                match op(self.fd.as_raw_fd()) {
                    Ok(n) => {
                        self.done(dir, drained(n));
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.slot_mut(|s| match dir {
                            Dir::Read => s.readable = false,
                            Dir::Write => s.writable = false,
                        })
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.done(dir, false);
                        return Poll::Ready(Err(e));
                    }
                }
            }
            match self.poll_ready(cx, dir) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    pub fn poll_recv(&self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if let Some(u) = self.ring() {
            return self.poll_recv_ring(u, cx, buf);
        }
        let len = buf.len();
        // Short read: the socket is drained (see the module doc). End of
        // stream stays readable.
        self.poll_op(cx, Dir::Read, |fd| sys::recv(fd, buf), |n| n > 0 && n < len)
    }

    pub fn poll_send_vectored(
        &self,
        cx: &Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(u) = self.ring() {
            return self.poll_send_ring(u, cx, bufs);
        }
        // A short write says nothing certain: the next write finds out.
        self.poll_op(cx, Dir::Write, |fd| sys::sendmsg(fd, bufs), |_| false)
    }

    pub fn poll_send(&self, cx: &Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(u) = self.ring() {
            return self.poll_send_ring(u, cx, &[IoSlice::new(buf)]);
        }
        self.poll_op(cx, Dir::Write, |fd| sys::send(fd, buf), |_| false)
    }

    /// [`Socket::poll_recv`] on the ring: bytes its receive already took,
    /// else a wait for the next completion.
    fn poll_recv_ring(
        &self,
        u: &uring::Uring,
        cx: &Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let (gen, eof) = self.slot_mut(|s| (s.gen, s.eof));
            match u.read(self.idx, gen, buf, eof) {
                (Ok(Some(n)), drained) => {
                    self.done(Dir::Read, drained);
                    return Poll::Ready(Ok(n));
                }
                (Err(e), _) => {
                    self.done(Dir::Read, false);
                    return Poll::Ready(Err(e));
                }
                (Ok(None), _) => self.slot_mut(|s| {
                    if !s.eof {
                        s.readable = false
                    }
                }),
            }
            match self.poll_ready(cx, Dir::Read) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// [`Socket::poll_send_vectored`] on the ring: the bytes are taken into
    /// the socket's send buffer, or the write waits for room.
    fn poll_send_ring(
        &self,
        u: &uring::Uring,
        cx: &Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            match u.write(self.idx, self.gen(), bufs) {
                Ok(Some(n)) => {
                    self.done(Dir::Write, false);
                    return Poll::Ready(Ok(n));
                }
                Err(e) => {
                    self.done(Dir::Write, false);
                    return Poll::Ready(Err(e));
                }
                Ok(None) => self.slot_mut(|s| s.writable = false),
            }
            match self.poll_ready(cx, Dir::Write) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Sets the socket aside with no task waiting on it. Returns `false`,
    /// doing nothing, when input (or an end of stream) is already there.
    /// Otherwise `resume(key, Wake::Ready)` is called once input arrives,
    /// or `resume(key, Wake::TimedOut)` once `deadline` passes, whichever
    /// comes first, from the shard's poller or timer task; a read or write
    /// on the socket in between ends the parking.
    ///
    /// The caller keeps the socket (and whatever else the connection needs)
    /// under `key` in a dense table of its own: a parked socket costs its
    /// slot and that entry, no task and no allocation of its own. This is
    /// how an idle keep-alive connection waits without keeping a task (and
    /// the task's future, a few KiB) alive.
    pub fn park(&self, deadline: Instant, resume: fn(u32, Wake), key: u32) -> bool {
        if let Some(u) = self.ring() {
            u.watch(self.idx, self.gen());
        }
        let mut slab = self.reactor.slab.borrow_mut();
        let s = &mut slab.slots[self.idx as usize];
        if s.readable || s.eof {
            return false;
        }
        s.read_waker = None;
        s.read_deadline = When::at(deadline);
        s.parked = Some((resume, key));
        self.reactor.schedule(&mut slab, self.idx, deadline);
        true
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.reactor
            .release(self.idx, self.on_ring, self.write_timeout.get());
        // `fd` closes after this, which takes it out of the epoll set.
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl futures_lite::AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_recv(cx, buf)
    }
}

impl futures_lite::AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_send_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown(std::net::Shutdown::Write))
    }
}

// === impl Listener ===

/// A listening socket whose accepts wait on the reactor.
pub struct Listener {
    sock: Socket,
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Listener {
    /// Takes over `fd`, a bound and listening socket.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Listener> {
        sys::set_nonblocking(fd.as_raw_fd())?;
        Ok(Listener {
            sock: Socket::new_as(fd, false)?,
        })
    }

    /// Stops new connections from starting, while the ones already in the
    /// backlog stay and can be accepted, and handshakes under way still
    /// complete into it: the kernel drops the SYNs sent to this socket
    /// and nothing else (`sys::attach_drop_syn_filter`). A client whose
    /// SYN was dropped sends it again about a second later, and then finds
    /// the listener closed (refused) or, if another socket of its
    /// SO_REUSEPORT group still listens, that one. Closing a listener
    /// resets the connections left in its backlog and the handshakes still
    /// under way; called first, and followed by accepts for as long as a
    /// handshake's last packet may take to come (the drain's linger), it
    /// leaves none to reset but a handshake slower than that.
    pub fn refuse_new(&self) -> io::Result<()> {
        sys::attach_drop_syn_filter(self.sock.fd.as_raw_fd())
    }

    /// A connection already waiting in the backlog, without waiting for
    /// one: `Ok(None)` when there is none.
    pub fn try_accept(&self) -> io::Result<Option<(Socket, SocketAddr)>> {
        loop {
            match sys::accept(self.sock.fd.as_raw_fd()) {
                Ok((fd, peer)) => return Ok(Some((Socket::new(fd)?, peer))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::ECONNABORTED) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next connection, non-blocking and registered, with its peer's
    /// address.
    pub async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        loop {
            if self.sock.is_ready(Dir::Read) {
                match sys::accept(self.sock.fd.as_raw_fd()) {
                    Ok((fd, peer)) => return Ok((Socket::new(fd)?, peer)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.sock.slot_mut(|s| s.readable = false)
                    }
                    // The peer gave up before we took it: next.
                    Err(e)
                        if e.kind() == io::ErrorKind::Interrupted
                            || e.raw_os_error() == Some(libc::ECONNABORTED) =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                }
            }
            futures_lite::future::poll_fn(|cx| self.sock.poll_ready(cx, Dir::Read)).await?;
        }
    }
}
