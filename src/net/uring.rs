//! The shard's io_uring socket path (`io = "uring"`, docs/tuning.md): the
//! same [`Socket`] API as the epoll reactor, with the bytes moved by
//! io_uring operations on a ring of the shard's own, beside glommio's.
//!
//! - **Receives** go into a provided-buffer ring shared by the shard. A
//!   completion's bytes are copied at once into the socket's receive
//!   buffer (from a pool of the shard) and the ring buffer goes back, so a
//!   connection whose task does not read cannot hold the ring's buffers
//!   that the others need. A socket waits for a message with a one-shot
//!   `RECV`, which takes at most one buffer ([`BUF_SIZE`]): the body
//!   behind a head stays in the kernel until the task has parsed the head,
//!   so a large one is spliced from the socket, not copied into the pipe.
//!   A new socket does so for its first message, and keeps doing so for
//!   each next one once it has been the source of a spliced body. A
//!   socket whose first message was small (less than a buffer) gets a
//!   multishot `RECV` instead, which stays armed and takes whatever
//!   arrives: a one-shot receive per message costs more CPU. Once reads
//!   have taken what a one-shot receive brought, the reactor's next pass
//!   arms the next receive, so that an idle socket still hears of input
//!   and of its peer's close. A one-shot receive that filled its buffer
//!   means a body is streaming: the next read arms the multishot `RECV`.
//!   A socket holding [`RX_CAP`] unread bytes has the multishot receive
//!   cancelled, so the kernel's socket buffer, and TCP's window, hold the
//!   rest, as they do on the epoll path; it is armed again once reads
//!   took half of them.
//! - **Sends**: a write copies its bytes into the socket's own send buffer
//!   and returns; one `SEND` per socket is in flight at a time, and what is
//!   written meanwhile goes in the next. So every send of a pass of the
//!   reactor goes to the kernel in the one `io_uring_enter` that also
//!   collects the completions. A write waits (with its write timeout) only
//!   when [`TX_CAP`] bytes are not yet sent; a send's error is reported by
//!   the next write. `shutdown(Write)` is done once the bytes written
//!   before it are sent.
//! - **Connects** wait for writability with a one-shot `POLL_ADD`.
//! - **Listeners** stay on the epoll set (an accept per connection is not
//!   worth a ring), and the reactor's deadlines, parking and
//!   [`super::interrupt_read`] work as on the epoll path: a completion
//!   marks the socket readable or writable exactly where an epoll event
//!   would.
//! - **Spliced bodies** ([`super::splice`]): a socket that is a transfer's
//!   source has its receive cancelled, and nothing arms it again until the
//!   transfer ends (`rx_splice`); the transfer first moves what the receive
//!   had taken (and what its completions still bring, until the last one
//!   has come), then splices from the socket itself, waiting for input
//!   with a one-shot `POLL_ADD`. A destination is spliced into only while
//!   no byte written before waits to be sent, and waits for room with a
//!   one-shot `POLL_ADD` as a connect does. When the transfer ends or is
//!   dropped, the next read (or a park) arms the receive again.
//!
//! The ring is set up with `SINGLE_ISSUER`, `COOP_TASKRUN` and
//! `TASKRUN_FLAG`, so completions never interrupt the running shard: the
//! kernel finishes them at the shard's next syscall, and raises
//! `IORING_SQ_TASKRUN` while any wait. A pass of the reactor enters the
//! ring only to submit or when that flag is up ([`Uring::must_enter`]);
//! otherwise the completions are read from memory. To sleep, the shard
//! still waits in a blocking `epoll_wait` on its epoll set; a completion
//! due meanwhile ends that wait (the ring's task work interrupts it with
//! `EINTR`) and is in the queue when the call returns. glommio's park does
//! not return for that, so before it the ring's eventfd, in the epoll
//! set, is enabled (`IORING_CQ_EVENTFD_DISABLED` otherwise). A busy pass
//! asks the epoll set for events (listeners, the eventfds) only when a
//! one-shot poll of it on the ring completed ([`Uring::epoll_due`]).
//!
//! A closed socket's slot stays taken until every operation it started has
//! completed: a send in flight keeps its buffer until the kernel is done
//! with it, and the connection is closed by the kernel (FIN after the last
//! byte) once the receive is cancelled and the send done.

use super::{sys, Resume, Slab, When};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::cell::{Cell, RefCell};
use std::io;
use std::io::IoSlice;
use std::num::NonZeroI32;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::task::Waker;

/// Bytes received and not yet read that one socket may hold before its
/// receive is paused.
pub const RX_CAP: usize = 32 * 1024;
/// Bytes a socket may have written and not yet sent before a write waits.
pub const TX_CAP: usize = 256 * 1024;
/// Size of each receive buffer.
pub const BUF_SIZE: usize = 4096;
/// Receive buffers per shard by default (4 MiB).
pub const DEFAULT_BUFFERS: u32 = 1024;
/// Submission entries of the ring by default.
pub const DEFAULT_ENTRIES: u32 = 1024;
/// Sets of buffers ([`UrIo`]) a shard keeps for its sockets' next reads and
/// writes, and the bytes of allocations one set keeps: an idle connection
/// holds none, and a busy shard allocates none per request.
const POOL_BUFS: usize = 256;
const POOL_BUF_MAX: usize = 64 * 1024;

const BGID: u16 = 7;
/// `IORING_ENTER_GETEVENTS` (the crate does not export its flags).
const ENTER_GETEVENTS: u32 = 1;
/// `IORING_RECVSEND_POLL_FIRST`: a one-shot receive waits for input before
/// it tries, instead of trying once at submission. It is mostly armed
/// when the socket has just been drained, where that try would fail.
const RECVSEND_POLL_FIRST: u16 = 1;

const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_POLL: u64 = 3;
const K_CANCEL: u64 = 4;
const K_EPOLL: u64 = 5;
const K_POLL_IN: u64 = 6;

fn ud(kind: u64, idx: u32, gen: u32) -> u64 {
    (kind << 56) | (u64::from(gen & 0xff_ffff) << 32) | u64::from(idx)
}

/// How a shard's connected sockets move their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Readiness from the shard's epoll set, `recv`/`send` syscalls.
    Epoll,
    /// A ring of the shard's own (this module).
    Uring {
        /// Receive buffers of [`BUF_SIZE`] bytes in the shard's ring;
        /// a power of two up to 32768.
        buffers: u32,
        /// Submission entries.
        entries: u32,
    },
}

thread_local! {
    static MODE: Cell<IoMode> = const { Cell::new(IoMode::Epoll) };
}

/// Sets how this thread's reactor moves bytes; takes effect when the
/// reactor is made (call it first on the shard's thread).
pub fn set_io_mode(m: IoMode) {
    MODE.with(|c| c.set(m));
}

pub(super) fn io_mode() -> IoMode {
    MODE.with(Cell::get)
}

/// What [`Uring::splice_rx`] found.
pub(super) enum SpliceRx {
    /// This many bytes the receive had taken went to the caller.
    Took(usize),
    /// The receive's last completion has not come yet.
    Wait,
    /// Nothing held and no receive: the socket itself has the next bytes.
    Socket,
}

/// What one socket on the ring has going on. Kept small: every connection
/// slot of the shard has one, idle or not; the buffers are apart.
#[derive(Default)]
pub(super) struct UrSlot {
    fd: RawFd,
    /// The reactor slot's generation when this socket took it.
    gen: u32,
    /// Operations in flight (receive, send, poll).
    ops: u32,
    /// A receive error, reported by the next read.
    rx_err: Option<NonZeroI32>,
    /// A send error: every later write fails with it.
    tx_err: Option<NonZeroI32>,
    /// After its socket was dropped with bytes written and not yet sent: a
    /// duplicate of its descriptor, which the rest is sent on (`fd` is
    /// then this one) and which closes once they are sent.
    held_fd: Option<OwnedFd>,
    /// Its buffers, only while they hold bytes or a send is in flight:
    /// an idle connection holds none ([`UrSlot::settle`]).
    io: Option<Box<UrIo>>,
    /// Its socket was dropped: the slot is freed once `ops` is 0.
    closed: bool,
    recv_armed: bool,
    /// The receive armed last is a one-shot one: it takes at most one
    /// buffer, and its completion does not arm it again.
    rx_once: bool,
    /// The socket waits for its next message with a one-shot receive: a
    /// new socket until its first message turns out small, and one that
    /// has been the source of a spliced body from then on.
    rx_heads: bool,
    /// The socket has been the source of a spliced body.
    rx_spliced: bool,
    /// The last one-shot receive filled its buffer: more is on its way (a
    /// body streams), so the next read arms the multishot receive.
    rx_more: bool,
    /// The receive was cancelled because the socket holds enough.
    recv_paused: bool,
    sending: bool,
    /// `shutdown(Write)` once everything written is sent.
    shut_wr: bool,
    /// A connect, or a spliced body's destination, is waiting for
    /// writability.
    polling: bool,
    /// The source of a spliced body is waiting for input.
    polling_in: bool,
    /// The socket is the source of a spliced body ([`super::splice`]): its
    /// receive is stopped (cancelled if it was armed) and nothing arms it
    /// again until the transfer ends.
    rx_splice: bool,
}

/// A socket's buffers on the ring: taken from the shard's pool when bytes
/// come in or are written, given back once they are all read and sent.
#[derive(Default)]
struct UrIo {
    /// Received and not yet read.
    rx: Vec<u8>,
    /// How much of `rx` reads took.
    rx_off: usize,
    /// The bytes of the send in flight (untouched until it completes).
    inflight: Vec<u8>,
    /// How much of `inflight` the kernel has sent.
    sent: usize,
    /// Written while a send was in flight: the next send.
    queued: Vec<u8>,
}

/// The shard's sets of buffers that no socket holds ([`POOL_BUFS`]).
type Pool = RefCell<Vec<Box<UrIo>>>;

/// `EIO`, for an error that came without a number.
const EIO: NonZeroI32 = match NonZeroI32::new(libc::EIO) {
    Some(e) => e,
    None => NonZeroI32::MIN,
};

/// An error's number, kept as a slot's `rx_err` or `tx_err`.
fn errno(e: &io::Error) -> NonZeroI32 {
    e.raw_os_error().and_then(NonZeroI32::new).unwrap_or(EIO)
}

/// A failed completion's error number (`res` is negative).
fn res_errno(res: i32) -> NonZeroI32 {
    NonZeroI32::new(res.saturating_neg()).unwrap_or(EIO)
}

fn os_error(e: NonZeroI32) -> io::Error {
    io::Error::from_raw_os_error(e.get())
}

impl UrSlot {
    fn unsent(&self) -> usize {
        self.io
            .as_ref()
            .map_or(0, |b| b.inflight.len() - b.sent + b.queued.len())
    }

    fn unread(&self) -> usize {
        self.io.as_ref().map_or(0, |b| b.rx.len() - b.rx_off)
    }

    /// Its buffers, taken from the pool if it holds none.
    fn io(&mut self, pool: &Pool) -> &mut UrIo {
        self.io
            .get_or_insert_with(|| pool.borrow_mut().pop().unwrap_or_default())
    }

    /// Forgets the bytes reads took, and gives the buffers back to the pool
    /// (or frees them) once nothing is left in them and no send is in
    /// flight.
    fn settle(&mut self, pool: &Pool) {
        let Some(b) = &mut self.io else {
            return;
        };
        if b.rx_off == b.rx.len() {
            b.rx.clear();
            b.rx_off = 0;
        }
        if self.sending || !b.rx.is_empty() || !b.inflight.is_empty() || !b.queued.is_empty() {
            return;
        }
        let Some(mut b) = self.io.take() else {
            return;
        };
        let mut pool = pool.borrow_mut();
        if pool.len() >= POOL_BUFS {
            return;
        }
        // A pooled set keeps at most POOL_BUF_MAX bytes of allocations.
        let mut budget = POOL_BUF_MAX;
        for v in [&mut b.rx, &mut b.inflight, &mut b.queued] {
            v.clear();
            if v.capacity() > budget {
                *v = Vec::new();
            }
            budget -= v.capacity();
        }
        b.rx_off = 0;
        b.sent = 0;
        pool.push(b);
    }

    /// Drops the send in flight's bytes (it has completed).
    fn drop_inflight(&mut self) {
        if let Some(b) = &mut self.io {
            b.inflight.clear();
            b.sent = 0;
        }
    }

    /// Drops the bytes written while a send was in flight.
    fn drop_queued(&mut self) {
        if let Some(b) = &mut self.io {
            b.queued.clear();
        }
    }

    /// Drops the bytes received and not read.
    fn drop_rx(&mut self) {
        if let Some(b) = &mut self.io {
            b.rx.clear();
            b.rx_off = 0;
        }
    }

    /// Drops whatever its buffers hold (a slot taken by a new socket).
    fn discard(&mut self, pool: &Pool) {
        self.drop_rx();
        self.drop_inflight();
        self.drop_queued();
        self.settle(pool);
    }
}

/// The provided-buffer ring.
struct BufRing {
    entries: *mut types::BufRingEntry,
    mask: u16,
    count: u32,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring, count: u32) -> io::Result<BufRing> {
        let n = u16::try_from(count)
            .ok()
            .filter(|n| n.is_power_of_two())
            .ok_or_else(|| io::Error::other("io_uring buffers must be a power of two"))?;
        let bytes = usize::from(n) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping, page-aligned as the kernel
        // requires, unmapped only in `drop` after the ring unregistered it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = p as *mut types::BufRingEntry;
        // SAFETY: the mapping lives as long as the registration (above).
        if let Err(e) = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, n, BGID, 0)
        } {
            // SAFETY: the mapping made above, not registered.
            unsafe { libc::munmap(p, bytes) };
            return Err(e);
        }
        let mut r = BufRing {
            entries,
            mask: n - 1,
            count: u32::from(n),
            bufs: vec![0u8; usize::from(n) * BUF_SIZE],
            tail: 0,
        };
        for bid in 0..n {
            r.give(bid);
        }
        Ok(r)
    }

    /// Hands buffer `bid` back to the kernel.
    fn give(&mut self, bid: u16) {
        let addr = self.bufs[usize::from(bid) * BUF_SIZE..].as_mut_ptr() as u64;
        // SAFETY: the index is masked into the mapping's entries.
        unsafe {
            let e = &mut *self.entries.add(usize::from(self.tail & self.mask));
            e.set_addr(addr);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail lives in the first entry; the kernel reads it
        // with acquire semantics.
        unsafe {
            let t = types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*t).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    fn data(&self, bid: u16, from: u32, to: u32) -> &[u8] {
        let base = usize::from(bid) * BUF_SIZE;
        &self.bufs[base + from as usize..base + (to as usize).min(BUF_SIZE)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let bytes = (self.count as usize) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: the ring (dropped before this, see `Uring`'s field
        // order) no longer uses the mapping.
        unsafe { libc::munmap(self.entries as *mut libc::c_void, bytes) };
    }
}

/// One shard's ring and the state of the sockets on it.
pub(super) struct Uring {
    // Field order: the ring is closed before the buffer mapping goes.
    ring: RefCell<IoUring>,
    bufs: RefCell<BufRing>,
    slots: RefCell<Vec<UrSlot>>,
    /// Registered with the ring; in the epoll set under `URING_TOKEN`.
    pub(super) evfd: OwnedFd,
    /// Sockets whose receive ended for want of buffers: armed again at the
    /// next pass.
    rearm: RefCell<Vec<(u32, u32)>>,
    /// Wakes and resumes found outside the poller (see `take_ready`), run
    /// by its next pass.
    deferred: RefCell<(Vec<Waker>, Vec<Resume>)>,
    /// Whether the eventfd is enabled (the shard is about to sleep).
    signalling: Cell<bool>,
    /// Buffers no socket holds ([`POOL_BUFS`]).
    pool: Pool,
    /// The poller is parked in glommio: an entry queued now is submitted
    /// at once, since no pass of the reactor would submit it.
    pub(super) parked: Cell<bool>,
    /// The shard's epoll set (listeners, the nudge, this ring's eventfd):
    /// a one-shot poll of it on the ring says when it has events, so a
    /// busy pass does not ask it with a syscall ([`Uring::epoll_due`]).
    epfd: RawFd,
    epoll_armed: Cell<bool>,
    epoll_ready: Cell<bool>,
}

fn push(ring: &mut IoUring, sqe: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an entry points at outlives the operation:
        // the provided buffers live as long as the ring, a send's bytes
        // stay in its slot (untouched, the slot not freed) until its
        // completion.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

impl Uring {
    /// The shard's ring, or the kernel's error said in terms of the
    /// config: `io = "uring"` is the default, and the fix is `"epoll"`.
    pub(super) fn new(buffers: u32, entries: u32, epfd: RawFd) -> io::Result<Uring> {
        Self::set_up(buffers, entries, epfd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot set up the shard's io_uring socket path (io = \"uring\", the \
                     default; it needs Linux 6.0 or newer): {e}; io = \"epoll\" in [server] \
                     runs without it"
                ),
            )
        })
    }

    fn set_up(buffers: u32, entries: u32, epfd: RawFd) -> io::Result<Uring> {
        // `TASKRUN_FLAG`: the kernel raises a flag in the shared ring when
        // it has completions to finish, so a pass with nothing to submit
        // enters the ring only then (`must_enter`).
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(entries.saturating_mul(4))
            .build(entries)?;
        let bufs = BufRing::new(&ring, buffers)?;
        let evfd = sys::eventfd()?;
        ring.submitter().register_eventfd(evfd.as_raw_fd())?;
        let mut ring = ring;
        ring.completion().disable_eventfd();
        Ok(Uring {
            ring: RefCell::new(ring),
            bufs: RefCell::new(bufs),
            slots: RefCell::new(Vec::new()),
            evfd,
            rearm: RefCell::new(Vec::new()),
            deferred: RefCell::new((Vec::new(), Vec::new())),
            signalling: Cell::new(false),
            parked: Cell::new(false),
            pool: RefCell::new(Vec::new()),
            epfd,
            epoll_armed: Cell::new(false),
            epoll_ready: Cell::new(true),
        })
    }

    /// Whether a busy pass must ask the epoll set for events: the ring's
    /// poll of it completed (or it has not been armed yet).
    pub(super) fn epoll_due(&self) -> bool {
        self.epoll_ready.get()
    }

    /// The next pass asks the epoll set, whatever the ring's poll said.
    pub(super) fn epoll_wake(&self) {
        self.epoll_ready.set(true);
    }

    /// The pass asked the epoll set; `full`: it returned as many events as
    /// it had room for, so more may wait. Arms the poll of the set again
    /// (submitted with the pass's other entries).
    pub(super) fn epoll_taken(&self, full: bool) -> io::Result<()> {
        self.epoll_ready.set(full);
        if !self.epoll_armed.get() {
            // One-shot, not multishot: while the shard parks in glommio
            // the eventfd is enabled and in the set, and a multishot poll's
            // every completion would ring it and wake the poll again.
            let sqe = opcode::PollAdd::new(types::Fd(self.epfd), libc::POLLIN as u32)
                .build()
                .user_data(ud(K_EPOLL, 0, 0));
            push(&mut self.ring.borrow_mut(), &sqe)?;
            self.epoll_armed.set(true);
        }
        Ok(())
    }

    /// Takes slot `idx` for socket `fd`.
    pub(super) fn attach(&self, idx: u32, gen: u32, fd: RawFd) {
        let mut slots = self.slots.borrow_mut();
        let i = idx as usize;
        if slots.len() <= i {
            slots.resize_with(i + 1, UrSlot::default);
        }
        let u = &mut slots[i];
        u.fd = fd;
        u.gen = gen;
        u.closed = false;
        u.ops = 0;
        u.recv_armed = false;
        u.rx_once = false;
        u.rx_heads = true;
        u.rx_spliced = false;
        u.rx_more = false;
        u.recv_paused = false;
        u.rx_err = None;
        u.tx_err = None;
        u.sending = false;
        u.shut_wr = false;
        u.polling = false;
        u.polling_in = false;
        u.rx_splice = false;
        u.held_fd = None;
        u.discard(&self.pool);
    }

    /// The socket in slot `idx` is dropped (its descriptor closes right
    /// after): cancels what it has armed and submits what is queued now,
    /// before the descriptor number can be reused. What was written and
    /// not yet sent is still sent, as the kernel would send what a `send`
    /// took before a `close`: on a duplicate of the descriptor, closed once
    /// it is all sent (or fails, or [`Uring::abandon`] gives up on it).
    /// Returns whether the slot can be freed at once, and whether bytes are
    /// still to be sent.
    pub(super) fn detach(&self, idx: u32, gen: u32) -> (bool, bool) {
        let mut slots = self.slots.borrow_mut();
        let Some(u) = slots.get_mut(idx as usize) else {
            return (true, false);
        };
        u.closed = true;
        u.shut_wr = false;
        let lingering = u.tx_err.is_none() && u.unsent() > 0;
        if lingering {
            match sys::dup(u.fd) {
                Ok(d) => {
                    // SAFETY: `d` is a fresh descriptor only this slot owns.
                    let d = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(d) };
                    u.fd = d.as_raw_fd();
                    u.held_fd = Some(d);
                }
                // Out of descriptors: what is not in flight is lost, as
                // the connection's other bytes are when it fails.
                Err(_) => u.drop_queued(),
            }
        } else {
            u.drop_queued();
        }
        u.drop_rx();
        u.settle(&self.pool);
        let mut ring = self.ring.borrow_mut();
        if u.recv_armed {
            let c = opcode::AsyncCancel::new(ud(K_RECV, idx, gen))
                .build()
                .user_data(ud(K_CANCEL, idx, gen));
            let _ = push(&mut ring, &c);
        }
        if u.polling {
            let c = opcode::AsyncCancel::new(ud(K_POLL, idx, gen))
                .build()
                .user_data(ud(K_CANCEL, idx, gen));
            let _ = push(&mut ring, &c);
        }
        if u.polling_in {
            let c = opcode::AsyncCancel::new(ud(K_POLL_IN, idx, gen))
                .build()
                .user_data(ud(K_CANCEL, idx, gen));
            let _ = push(&mut ring, &c);
        }
        let free = u.ops == 0;
        let lingering = u.held_fd.is_some();
        if !ring.submission().is_empty() {
            // A failure here leaves entries for the next pass; the
            // descriptor number they carry may by then be another
            // socket's only if the submission failed, which the next
            // submit reports.
            let _ = ring.submit();
        }
        (free, lingering)
    }

    /// Gives up sending what a dropped socket in slot `idx` had left (its
    /// peer has not taken it within the socket's write timeout): the send
    /// in flight is cancelled, and the slot freed once that completes.
    pub(super) fn abandon(&self, idx: u32, gen: u32) {
        let mut slots = self.slots.borrow_mut();
        let Some(u) = slots
            .get_mut(idx as usize)
            .filter(|u| u.closed && u.sending)
        else {
            return;
        };
        u.drop_queued();
        let c = opcode::AsyncCancel::new(ud(K_SEND, idx, gen))
            .build()
            .user_data(ud(K_CANCEL, idx, gen));
        let mut ring = self.ring.borrow_mut();
        if push(&mut ring, &c).is_ok() {
            let _ = ring.submit();
        }
    }

    /// Arms slot `idx`'s receive: a multishot one (`once` false), which
    /// takes whatever arrives until it is cancelled, or a one-shot one,
    /// which takes at most one buffer, so that a large body behind a head
    /// stays in the socket and can be spliced from there (the module's
    /// comment says which socket gets which).
    fn arm_recv(
        ring: &mut IoUring,
        u: &mut UrSlot,
        idx: u32,
        gen: u32,
        once: bool,
    ) -> io::Result<()> {
        let sqe = if once {
            opcode::Recv::new(types::Fd(u.fd), std::ptr::null_mut(), BUF_SIZE as u32)
                .buf_group(BGID)
                .ioprio(RECVSEND_POLL_FIRST)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(types::Fd(u.fd), BGID).build()
        };
        push(ring, &sqe.user_data(ud(K_RECV, idx, gen)))?;
        u.recv_armed = true;
        u.rx_once = once;
        u.recv_paused = false;
        u.ops += 1;
        Ok(())
    }

    fn start_send(ring: &mut IoUring, u: &mut UrSlot, idx: u32, gen: u32) -> io::Result<()> {
        let Some(b) = &u.io else {
            return Ok(());
        };
        let rest = &b.inflight[b.sent..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let sqe = opcode::Send::new(types::Fd(u.fd), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(K_SEND, idx, gen));
        push(ring, &sqe)?;
        u.sending = true;
        u.ops += 1;
        Ok(())
    }

    /// Submits what is queued when no pass of the reactor will: while the
    /// poller is parked in glommio, another task (woken by a timer, say)
    /// may queue an entry.
    fn flush_if_parked(&self) -> io::Result<()> {
        if self.parked.get() {
            let mut ring = self.ring.borrow_mut();
            if !ring.submission().is_empty() {
                ring.submit()?;
            }
        }
        Ok(())
    }

    /// A connect in progress on slot `idx`, or a spliced body waiting for
    /// room in it: a one-shot poll whose completion marks the socket
    /// writable (none is added while one is armed).
    pub(super) fn poll_out(&self, idx: u32, gen: u32) -> io::Result<()> {
        self.poll_once(idx, gen, true)
    }

    /// One one-shot poll of slot `idx` for output (`out`) or input, unless
    /// one is armed already; its completion marks the socket ready.
    fn poll_once(&self, idx: u32, gen: u32, out: bool) -> io::Result<()> {
        {
            let mut slots = self.slots.borrow_mut();
            let u = &mut slots[idx as usize];
            let (armed, events, kind) = if out {
                (&mut u.polling, libc::POLLOUT, K_POLL)
            } else {
                (&mut u.polling_in, libc::POLLIN, K_POLL_IN)
            };
            if *armed {
                return Ok(());
            }
            let sqe = opcode::PollAdd::new(types::Fd(u.fd), events as u32)
                .build()
                .user_data(ud(kind, idx, gen));
            push(&mut self.ring.borrow_mut(), &sqe)?;
            *armed = true;
            u.ops += 1;
        }
        self.flush_if_parked()
    }

    /// A read of slot `idx`: `Ok(Some(n))` bytes copied into `buf`,
    /// `Ok(None)` when nothing is there yet (the receive is armed and the
    /// caller waits), an error once. `eof` is the slot's end of stream.
    /// Also returns whether nothing is left to read.
    pub(super) fn read(
        &self,
        idx: u32,
        gen: u32,
        buf: &mut [u8],
        eof: bool,
    ) -> (io::Result<Option<usize>>, bool) {
        let out = self.read_inner(idx, gen, buf, eof);
        if let Err(e) = self.flush_if_parked() {
            return (Err(e), false);
        }
        out
    }

    fn read_inner(
        &self,
        idx: u32,
        gen: u32,
        buf: &mut [u8],
        eof: bool,
    ) -> (io::Result<Option<usize>>, bool) {
        let mut slots = self.slots.borrow_mut();
        let u = &mut slots[idx as usize];
        if u.unread() > 0 {
            let n = u.unread().min(buf.len());
            if let Some(b) = &mut u.io {
                buf[..n].copy_from_slice(&b.rx[b.rx_off..b.rx_off + n]);
                b.rx_off += n;
            }
            // All taken: an idle connection holds no buffer.
            u.settle(&self.pool);
            if u.recv_paused && !u.recv_armed && !u.rx_splice && u.unread() < RX_CAP / 2 {
                let r = Self::arm_recv(&mut self.ring.borrow_mut(), u, idx, gen, false);
                if let Err(e) = r {
                    u.rx_err.get_or_insert(errno(&e));
                }
            }
            if u.rx_once && u.unread() == 0 && !u.recv_armed && !u.recv_paused && !u.rx_splice {
                // Drained, and a one-shot receive has ended: the reactor's
                // next pass arms the next receive, so that an idle socket
                // still hears of input and of its peer's close. Not at
                // once: a task that has just read a head and splices the
                // body behind it stops the receive before then. While the
                // poller is parked, no pass comes: armed now.
                if self.parked.get() {
                    let once = u.rx_heads;
                    let r = Self::arm_recv(&mut self.ring.borrow_mut(), u, idx, gen, once);
                    if let Err(e) = r {
                        u.rx_err.get_or_insert(errno(&e));
                    }
                } else {
                    self.rearm.borrow_mut().push((idx, gen));
                }
            }
            return (Ok(Some(n)), u.unread() == 0);
        }
        if let Some(e) = u.rx_err.take() {
            return (Err(os_error(e)), false);
        }
        if eof || buf.is_empty() {
            return (Ok(Some(0)), false);
        }
        if !u.recv_armed && !u.rx_splice {
            let once = u.rx_heads && !u.rx_more;
            if let Err(e) = Self::arm_recv(&mut self.ring.borrow_mut(), u, idx, gen, once) {
                return (Err(e), false);
            }
        }
        (Ok(None), true)
    }

    /// Makes sure input on slot `idx` will be noticed (for a parked
    /// socket).
    pub(super) fn watch(&self, idx: u32, gen: u32) {
        let mut slots = self.slots.borrow_mut();
        let u = &mut slots[idx as usize];
        if !u.recv_armed && !u.recv_paused && !u.rx_splice {
            // A parked socket waits for a new message.
            u.rx_more = false;
            let once = u.rx_heads;
            let armed = Self::arm_recv(&mut self.ring.borrow_mut(), u, idx, gen, once);
            if let Err(e) = armed.and_then(|()| self.flush_if_parked()) {
                u.rx_err.get_or_insert(errno(&e));
            }
        }
    }

    /// Whether slot `idx` holds buffers (from the pool).
    #[cfg(test)]
    pub(super) fn holds_buffers(&self, idx: u32) -> bool {
        self.slots.borrow()[idx as usize].io.is_some()
    }

    /// Whether slot `idx` holds nothing to read and no error.
    pub(super) fn holds_nothing(&self, idx: u32) -> bool {
        let slots = self.slots.borrow();
        let u = &slots[idx as usize];
        u.unread() == 0 && u.rx_err.is_none()
    }

    /// Slot `idx` becomes the source of a spliced body: its receive is
    /// cancelled (if armed) and stays stopped until
    /// [`Uring::splice_leave`]. Until its last completion has come
    /// ([`Uring::splice_rx`] says `Wait`), a receive may still add bytes.
    pub(super) fn splice_enter(&self, idx: u32, gen: u32) -> io::Result<()> {
        {
            let mut slots = self.slots.borrow_mut();
            let u = &mut slots[idx as usize];
            u.rx_splice = true;
            // It carries large bodies: from now on it reads each head
            // with a one-shot receive. Read after the transfer: the next
            // message's head.
            u.rx_heads = true;
            u.rx_spliced = true;
            u.rx_more = false;
            if u.recv_armed && !u.recv_paused {
                // `recv_paused`: no second cancel, and the receive's end
                // is not taken for one the kernel chose.
                u.recv_paused = true;
                let c = opcode::AsyncCancel::new(ud(K_RECV, idx, gen))
                    .build()
                    .user_data(ud(K_CANCEL, idx, gen));
                push(&mut self.ring.borrow_mut(), &c)?;
            }
        }
        self.flush_if_parked()
    }

    /// The transfer from slot `idx` ended (or was dropped): the next read
    /// (or a completion still to come) arms the receive again. Does
    /// nothing for a socket closed since (`gen`).
    pub(super) fn splice_leave(&self, idx: u32, gen: u32) {
        let mut slots = self.slots.borrow_mut();
        let Some(u) = slots
            .get_mut(idx as usize)
            .filter(|u| u.gen == gen && !u.closed && u.rx_splice)
        else {
            return;
        };
        u.rx_splice = false;
        // What comes next is the next message's head.
        u.rx_more = false;
        if !u.recv_armed {
            // Not left paused: a read or a park arms it as for any socket
            // (one still being cancelled is armed again by its last
            // completion, as after a pause).
            u.recv_paused = false;
        }
    }

    /// The next bytes of a spliced body from slot `idx` (in splice mode):
    /// those the receive took first, given to `take` (which returns how
    /// many it took); an error the receive had; `Socket` once none are left and no receive runs any
    /// more, so that the socket itself is next.
    pub(super) fn splice_rx(
        &self,
        idx: u32,
        take: impl FnOnce(&[u8]) -> usize,
    ) -> io::Result<SpliceRx> {
        let mut slots = self.slots.borrow_mut();
        let u = &mut slots[idx as usize];
        if u.unread() > 0 {
            let mut n = 0;
            if let Some(b) = &mut u.io {
                n = take(&b.rx[b.rx_off..]).min(b.rx.len() - b.rx_off);
                b.rx_off += n;
            }
            u.settle(&self.pool);
            return Ok(SpliceRx::Took(n));
        }
        if let Some(e) = u.rx_err.take() {
            return Err(os_error(e));
        }
        Ok(if u.recv_armed {
            SpliceRx::Wait
        } else {
            SpliceRx::Socket
        })
    }

    /// The source of a spliced body on slot `idx` has nothing: a one-shot
    /// poll whose completion marks it readable (none is added while one is
    /// armed).
    pub(super) fn poll_in(&self, idx: u32, gen: u32) -> io::Result<()> {
        self.poll_once(idx, gen, false)
    }

    /// Whether slot `idx` still has bytes written and not yet sent (a
    /// spliced byte must not overtake them); its send error if one failed.
    pub(super) fn sending(&self, idx: u32) -> io::Result<bool> {
        let slots = self.slots.borrow();
        let u = &slots[idx as usize];
        match u.tx_err {
            Some(e) => Err(os_error(e)),
            None => Ok(u.sending || u.unsent() > 0),
        }
    }

    /// A write to slot `idx`: `Ok(Some(n))` bytes taken, `Ok(None)` when
    /// [`TX_CAP`] bytes wait to be sent (the caller waits for room).
    pub(super) fn write(
        &self,
        idx: u32,
        gen: u32,
        bufs: &[IoSlice<'_>],
    ) -> io::Result<Option<usize>> {
        let out = self.write_inner(idx, gen, bufs)?;
        self.flush_if_parked()?;
        Ok(out)
    }

    fn write_inner(&self, idx: u32, gen: u32, bufs: &[IoSlice<'_>]) -> io::Result<Option<usize>> {
        let mut slots = self.slots.borrow_mut();
        let u = &mut slots[idx as usize];
        if let Some(e) = u.tx_err {
            return Err(os_error(e));
        }
        let used = u.unsent();
        if used >= TX_CAP {
            return Ok(None);
        }
        let mut room = TX_CAP - used;
        let mut n = 0;
        let sending = u.sending;
        let io = u.io(&self.pool);
        let dst = if sending {
            &mut io.queued
        } else {
            &mut io.inflight
        };
        for b in bufs {
            if room == 0 {
                break;
            }
            let take = b.len().min(room);
            dst.extend_from_slice(&b[..take]);
            room -= take;
            n += take;
        }
        if n > 0 && !u.sending {
            if let Err(e) = Self::start_send(&mut self.ring.borrow_mut(), u, idx, gen) {
                if let Some(b) = &mut u.io {
                    b.inflight.clear();
                    b.sent = 0;
                }
                u.settle(&self.pool);
                return Err(e);
            }
        }
        if n == 0 {
            u.settle(&self.pool);
        }
        Ok(Some(n))
    }

    /// `shutdown(Write)` of slot `idx`, once what was written is sent.
    pub(super) fn shutdown_write(&self, idx: u32) -> io::Result<()> {
        let mut slots = self.slots.borrow_mut();
        let u = &mut slots[idx as usize];
        if u.unsent() > 0 && u.tx_err.is_none() {
            u.shut_wr = true;
            return Ok(());
        }
        sys::shutdown(u.fd, std::net::Shutdown::Write)
    }

    /// Enables or disables the ring's eventfd: on only while the shard is
    /// about to sleep.
    pub(super) fn signal(&self, on: bool) {
        if self.signalling.get() == on {
            return;
        }
        self.signalling.set(on);
        // SAFETY: the flags word is shared with the kernel; the crate's
        // accessors write it atomically.
        let mut ring = self.ring.borrow_mut();
        if on {
            ring.completion().enable_eventfd();
        } else {
            ring.completion().disable_eventfd();
        }
    }

    /// Whether `io_uring_enter` has work: entries to submit, completions
    /// the kernel has yet to finish (`IORING_SQ_TASKRUN`), or completions
    /// that overflowed the queue. Otherwise the completions are all in the
    /// queue already, and reading them needs no syscall.
    fn must_enter(ring: &mut IoUring) -> bool {
        let sq = ring.submission();
        !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
    }

    /// Submits what the pass queued and takes the completions (`enter`:
    /// whether to ask the kernel first, which it does only when
    /// [`Uring::must_enter`]; without it, only completions already posted
    /// are taken). Wakes and resumes go to `wake` and `resume`; returns
    /// how many completions there were.
    pub(super) fn reap(
        &self,
        slab: &mut Slab,
        enter: bool,
        wake: &mut impl Extend<Waker>,
        resume: &mut impl Extend<Resume>,
    ) -> io::Result<usize> {
        let mut ring = self.ring.borrow_mut();
        {
            let mut slots = self.slots.borrow_mut();
            for (idx, gen) in self.rearm.borrow_mut().drain(..) {
                let Some(s) = slab.slots.get(idx as usize) else {
                    continue;
                };
                let u = &mut slots[idx as usize];
                if s.gen == gen && !u.closed && !u.recv_armed && !u.recv_paused && !u.rx_splice {
                    // One-shot, even after a full one: this one is armed
                    // by the reactor, not asked for by a read, and the
                    // bytes behind a head may be a body to splice.
                    let once = u.rx_heads;
                    Self::arm_recv(&mut ring, u, idx, gen, once)?;
                }
            }
        }
        if enter && Self::must_enter(&mut ring) {
            let to_submit = ring.submission().len() as u32;
            // SAFETY: no argument is passed.
            let r = unsafe {
                ring.submitter()
                    .enter::<libc::sigset_t>(to_submit, 0, ENTER_GETEVENTS, None)
            };
            match r {
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::EBUSY)
                        || e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) => return Err(e),
            }
        }
        let mut n = 0;
        let mut slots = self.slots.borrow_mut();
        let mut bufs = self.bufs.borrow_mut();
        loop {
            let Some(cqe) = ring.completion().next() else {
                break;
            };
            n += 1;
            let data = cqe.user_data();
            let (res, flags) = (cqe.result(), cqe.flags());
            let kind = data >> 56;
            let idx = (data & 0xffff_ffff) as u32;
            let gen = ((data >> 32) & 0xff_ffff) as u32;
            if kind == K_CANCEL {
                continue;
            }
            if kind == K_EPOLL {
                self.epoll_armed.set(false);
                self.epoll_ready.set(true);
                continue;
            }
            let Some(u) = slots.get_mut(idx as usize) else {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    bufs.give(bid);
                }
                continue;
            };
            let Some(s) = slab.slots.get_mut(idx as usize) else {
                continue;
            };
            let live = !u.closed && s.gen & 0xff_ffff == gen;
            match kind {
                K_RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if res > 0 && live {
                            // Copied out at once: the ring's buffers are
                            // shared by the shard's connections, and one
                            // that does not read must not hold them.
                            let b = u.io(&self.pool);
                            if b.rx_off > 0 {
                                // What reads took goes first: the buffer
                                // holds at most the unread bytes and this.
                                b.rx.drain(..b.rx_off);
                                b.rx_off = 0;
                            }
                            b.rx.extend_from_slice(bufs.data(bid, 0, res as u32));
                            if u.rx_once && !u.rx_splice {
                                u.rx_more = res as usize == BUF_SIZE;
                                if !u.rx_more && !u.rx_spliced {
                                    // A small message on a socket that
                                    // has carried no spliced body: it
                                    // keeps a multishot receive.
                                    u.rx_heads = false;
                                }
                            }
                        }
                        bufs.give(bid);
                    }
                    let ended = !cqueue::more(flags);
                    if ended {
                        u.recv_armed = false;
                        u.ops -= 1;
                    }
                    if live {
                        if res == 0 {
                            s.eof = true;
                        } else if res == -libc::ENOBUFS {
                            self.rearm.borrow_mut().push((idx, s.gen));
                        } else if res == -libc::ECANCELED {
                            // Paused (or closing): armed again by a read.
                        } else if res < 0 {
                            u.rx_err = Some(res_errno(res));
                            s.eof = true;
                        } else if ended && !u.rx_once && !u.recv_paused && !u.rx_splice {
                            // The kernel ended it (a full completion
                            // queue, say): arm it again.
                            self.rearm.borrow_mut().push((idx, s.gen));
                        }
                        if u.unread() >= RX_CAP && u.recv_armed && !u.rx_once && !u.recv_paused {
                            u.recv_paused = true;
                            let c = opcode::AsyncCancel::new(ud(K_RECV, idx, gen))
                                .build()
                                .user_data(ud(K_CANCEL, idx, gen));
                            push(&mut ring, &c)?;
                        }
                        if u.recv_paused && !u.recv_armed && !u.rx_splice && u.unread() < RX_CAP / 2
                        {
                            Self::arm_recv(&mut ring, u, idx, gen, false)?;
                        }
                        // A transfer waits for the receive's last
                        // completion before it splices from the socket.
                        if u.unread() > 0 || s.eof || (ended && u.rx_splice) {
                            s.readable = true;
                            wake.extend(s.read_waker.take());
                            if let Some(p) = s.parked.take() {
                                s.read_deadline = When::NONE;
                                resume.extend(Some(p));
                            }
                        }
                    }
                }
                K_SEND => {
                    u.ops -= 1;
                    u.sending = false;
                    if !live && u.held_fd.is_none() {
                        u.drop_inflight();
                    } else if res < 0 {
                        u.tx_err = Some(res_errno(res));
                        u.drop_inflight();
                        u.drop_queued();
                    } else {
                        let mut more = false;
                        if let Some(b) = &mut u.io {
                            b.sent += res as usize;
                            if b.sent >= b.inflight.len() {
                                b.inflight.clear();
                                b.sent = 0;
                                std::mem::swap(&mut b.inflight, &mut b.queued);
                            }
                            more = !b.inflight.is_empty();
                        }
                        if more {
                            Self::start_send(&mut ring, u, idx, gen)?;
                        }
                    }
                    if u.closed && !u.sending {
                        // All sent (or failed): the duplicate closes.
                        u.drop_inflight();
                        u.drop_queued();
                        u.held_fd = None;
                    }
                    // Nothing left to send (and nothing to read): the
                    // buffers go back.
                    u.settle(&self.pool);
                    if live {
                        if u.unsent() == 0 && u.shut_wr {
                            u.shut_wr = false;
                            let _ = sys::shutdown(u.fd, std::net::Shutdown::Write);
                        }
                        if u.unsent() < TX_CAP || u.tx_err.is_some() {
                            s.writable = true;
                            wake.extend(s.write_waker.take());
                        }
                    }
                }
                K_POLL => {
                    u.ops -= 1;
                    u.polling = false;
                    if live {
                        s.writable = true;
                        wake.extend(s.write_waker.take());
                    }
                }
                K_POLL_IN => {
                    u.ops -= 1;
                    u.polling_in = false;
                    if live {
                        s.readable = true;
                        wake.extend(s.read_waker.take());
                    }
                }
                _ => {}
            }
            if u.closed && u.ops == 0 {
                slab.closing -= 1;
                super::Reactor::free_slot(slab, idx);
            }
        }
        Ok(n)
    }

    /// Before the shard sleeps: takes every completion and runs the
    /// kernel's deferred work until none is left. The kernel runs at most
    /// a few dozen deferred items per `io_uring_enter` and keeps the rest
    /// without ringing the eventfd for them, so one look is not enough:
    /// the ring's `IORING_SQ_TASKRUN` flag stays up while deferred work
    /// waits ([`Uring::must_enter`]).
    pub(super) fn settle(
        &self,
        slab: &mut Slab,
        wake: &mut impl Extend<Waker>,
        resume: &mut impl Extend<Resume>,
    ) -> io::Result<usize> {
        let mut found = self.reap(slab, true, wake, resume)?;
        for _ in 0..64 {
            if !Self::must_enter(&mut self.ring.borrow_mut()) {
                break;
            }
            found += self.reap(slab, true, wake, resume)?;
        }
        Ok(found)
    }

    /// Takes the completions already posted, for a caller outside the
    /// poller: their wakes and resumes wait for the poller's next pass.
    pub(super) fn take_posted(&self, slab: &mut Slab) {
        let mut d = self.deferred.borrow_mut();
        let (w, r) = &mut *d;
        let _ = self.reap(slab, false, w, r);
    }

    /// The wakes and resumes [`Uring::take_posted`] put aside.
    pub(super) fn take_deferred(&self) -> (Vec<Waker>, Vec<Resume>) {
        let mut d = self.deferred.borrow_mut();
        (std::mem::take(&mut d.0), std::mem::take(&mut d.1))
    }
}
