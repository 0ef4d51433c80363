//! A shard's side of the access logs: one buffer per destination, in shard
//! memory (`RefCell`, no lock). A line is formatted straight into its
//! destination's buffer; a buffer past [`FLUSH_AT`] bytes, and every buffer
//! at each tick of the shard's flush task ([`FLUSH_EVERY`]), is handed to
//! the destination's writer thread. A tick that finds nothing to hand over
//! sends the flush task to sleep until the next line ([`ShardLog::idle`]):
//! a shard with no traffic is not woken ten times a second for nothing. When the writer's queue is full the
//! buffer's lines are dropped, counted ([`ShardLog::dropped`]) and reported
//! in the error log at most once a second per shard.
//!
//! The buffers of one set of destinations are an [`Outs`]: each plan
//! generation holds the set it was installed with, so a request in flight
//! across a reload that changed the destinations writes its line to its own
//! generation's destination. A set a reload replaced is handed over by the
//! flush task while requests of its generation are in flight, and once for
//! all when the last of them ends (the set is dropped), which lets go of its
//! writers' sinks: a writer no set uses any more ends and closes its file.

use super::writer::Sink;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// A buffer this full is handed to the writer at once.
pub const FLUSH_AT: usize = 32 * 1024;
/// How often the shard's flush task hands over what its buffers hold.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// At most one line a second per shard about dropped lines.
const REPORT_EVERY: Duration = Duration::from_secs(1);

struct Out {
    sink: Sink,
    buf: Vec<u8>,
    lines: u64,
    /// Lines dropped because the writer was behind, since the start.
    dropped: u64,
    /// Of those, not yet in the error log.
    unreported: u64,
}

/// The shard's flush task while it sleeps until the next line: the first
/// line written into any set wakes it.
#[derive(Default)]
struct Idle {
    asleep: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Idle {
    fn line_written(&self) {
        if self.asleep.replace(false) {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

/// One set of destinations' buffers on one shard, in the order of the
/// plan's destinations. Dropped with the last generation holding it: what
/// it still holds is handed over then.
pub struct Outs {
    shard: usize,
    outs: RefCell<Vec<Out>>,
    /// The shard's count of lines dropped by sets that are gone.
    gone_dropped: Rc<Cell<u64>>,
    idle: Rc<Idle>,
}

impl Outs {
    fn new(shard: usize, sinks: Vec<Sink>, gone_dropped: Rc<Cell<u64>>, idle: Rc<Idle>) -> Outs {
        Outs {
            idle,
            shard,
            outs: RefCell::new(
                sinks
                    .into_iter()
                    .map(|sink| Out {
                        sink,
                        buf: Vec::new(),
                        lines: 0,
                        dropped: 0,
                        unreported: 0,
                    })
                    .collect(),
            ),
            gone_dropped,
        }
    }

    /// Appends one line to `destination`'s buffer: `write` formats it.
    pub fn line(&self, destination: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let mut outs = self.outs.borrow_mut();
        let Some(out) = outs.get_mut(destination) else {
            return;
        };
        if out.buf.capacity() == 0 {
            out.buf = out
                .sink
                .recycled()
                .unwrap_or_else(|| Vec::with_capacity(FLUSH_AT + FLUSH_AT / 4));
        }
        write(&mut out.buf);
        out.lines += 1;
        if out.buf.len() >= FLUSH_AT {
            hand_over(out);
        }
        self.idle.line_written();
    }

    /// Hands every non-empty buffer to its writer; whether there was one.
    fn hand_over_all(&self) -> bool {
        let mut any = false;
        for out in self.outs.borrow_mut().iter_mut() {
            if out.lines > 0 {
                hand_over(out);
                any = true;
            }
        }
        any
    }

    fn dropped(&self) -> u64 {
        self.outs.borrow().iter().map(|o| o.dropped).sum()
    }
}

/// The warning for lines `out` dropped since the last report.
fn report_dropped(out: &Out, shard: usize) {
    crate::log!(
        "warn",
        "access log {}: dropped {} line(s) because its writer is behind ({} dropped on shard {} in all)",
        out.sink.destination,
        out.unreported,
        out.dropped,
        shard
    );
}

impl Drop for Outs {
    fn drop(&mut self) {
        for out in self.outs.get_mut().iter_mut() {
            if out.lines > 0 {
                hand_over(out);
            }
            self.gone_dropped.set(self.gone_dropped.get() + out.dropped);
            if out.unreported > 0 {
                report_dropped(out, self.shard);
            }
        }
    }
}

/// One shard's access-log buffers.
pub struct ShardLog {
    shard: usize,
    /// The set generations installed now write to.
    current: RefCell<Rc<Outs>>,
    /// Sets a reload replaced, while a generation in flight holds them.
    retired: RefCell<Vec<Weak<Outs>>>,
    gone_dropped: Rc<Cell<u64>>,
    last_report: Cell<Option<Instant>>,
    /// The CLF time of `clock_secs`, formatted once a second.
    clock_secs: Cell<u64>,
    clock_text: Cell<[u8; 26]>,
    /// The wall clock (ms since the epoch) at an instant, re-read at each
    /// flush: a line's time is computed from its request's `Instant`
    /// without reading the clock again.
    wall_base: Cell<(u64, Instant)>,
    idle: Rc<Idle>,
}

fn wall_now() -> (u64, Instant) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (ms, Instant::now())
}

impl ShardLog {
    /// Buffers for `sinks` (the plan's destinations, in order).
    pub fn new(shard: usize, sinks: Vec<Sink>) -> ShardLog {
        let gone_dropped = Rc::new(Cell::new(0));
        let idle = Rc::new(Idle::default());
        ShardLog {
            shard,
            current: RefCell::new(Rc::new(Outs::new(
                shard,
                sinks,
                gone_dropped.clone(),
                idle.clone(),
            ))),
            retired: RefCell::new(Vec::new()),
            gone_dropped,
            last_report: Cell::new(None),
            clock_secs: Cell::new(u64::MAX),
            clock_text: Cell::new([0; 26]),
            wall_base: Cell::new(wall_now()),
            idle,
        }
    }

    /// The set of buffers a generation installed now writes to.
    pub fn current(&self) -> Rc<Outs> {
        self.current.borrow().clone()
    }

    /// Milliseconds since the epoch at `t`, from the base the last flush
    /// took (at most FLUSH_EVERY old while the flush task runs). While the
    /// flush task sleeps until the next line, the base is read again first:
    /// it may be from long ago.
    pub fn wall_ms(&self, t: Instant) -> u64 {
        if self.idle.asleep.get() {
            self.wall_base.set(wall_now());
        }
        let (ms, at) = self.wall_base.get();
        match t.checked_duration_since(at) {
            Some(d) => ms.saturating_add(d.as_millis() as u64),
            None => ms.saturating_sub(at.duration_since(t).as_millis() as u64),
        }
    }

    /// A new set of buffers for `sinks` (a reload changed the
    /// destinations): generations installed from now on write to it; the
    /// set before stays with the generations that hold it.
    pub fn attach(&self, sinks: Vec<Sink>) {
        let new = Rc::new(Outs::new(
            self.shard,
            sinks,
            self.gone_dropped.clone(),
            self.idle.clone(),
        ));
        let old = self.current.replace(new);
        self.retired.borrow_mut().push(Rc::downgrade(&old));
    }

    /// `dd/Mon/yyyy:HH:MM:SS +0000` for `secs` since the epoch, formatted
    /// at most once per second per shard.
    pub fn clf_time(&self, secs: u64) -> [u8; 26] {
        if self.clock_secs.get() != secs {
            self.clock_secs.set(secs);
            self.clock_text.set(super::format::clf_time(secs));
        }
        self.clock_text.get()
    }

    /// Hands every non-empty buffer to its writer (of the current set and
    /// of the replaced ones a generation in flight still holds), and
    /// reports dropped lines if a second has passed since the last report.
    /// False when there was nothing to hand over and no drop is left to
    /// report: the flush task may then wait for the next line ([`Self::idle`]).
    pub fn flush(&self, now: Instant) -> bool {
        self.wall_base.set(wall_now());
        let mut sets = vec![self.current()];
        self.retired.borrow_mut().retain(|w| match w.upgrade() {
            Some(set) => {
                sets.push(set);
                true
            }
            None => false,
        });
        let mut handed = false;
        for set in &sets {
            handed |= set.hand_over_all();
        }
        let unreported = |set: &Rc<Outs>| set.outs.borrow().iter().any(|o| o.unreported > 0);
        if !sets.iter().any(unreported) {
            return handed;
        }
        if self
            .last_report
            .get()
            .is_some_and(|t| now.duration_since(t) < REPORT_EVERY)
        {
            return true;
        }
        self.last_report.set(Some(now));
        for set in &sets {
            for out in set
                .outs
                .borrow_mut()
                .iter_mut()
                .filter(|o| o.unreported > 0)
            {
                report_dropped(out, self.shard);
                out.unreported = 0;
            }
        }
        handed
    }

    /// Ready once a line is written to any set (for the flush task, after a
    /// [`Self::flush`] that found nothing).
    pub fn idle(&self) -> impl Future<Output = ()> + '_ {
        self.idle.asleep.set(true);
        std::future::poll_fn(move |cx| {
            if !self.idle.asleep.get() {
                return Poll::Ready(());
            }
            self.idle.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
    }

    /// The shard stops: hands over what is left and reports every drop not
    /// yet reported.
    pub fn close(&self) {
        self.last_report.set(None);
        self.flush(Instant::now());
    }

    /// Lines this shard dropped because a writer was behind, since it
    /// started (all destinations, all sets).
    pub fn dropped(&self) -> u64 {
        let retired: u64 = self
            .retired
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.dropped())
            .sum();
        self.current.borrow().dropped() + retired + self.gone_dropped.get()
    }

    /// Lines lost to failed writes, per destination's writer (all shards).
    pub fn lost(&self) -> u64 {
        self.current
            .borrow()
            .outs
            .borrow()
            .iter()
            .map(|o| o.sink.lost())
            .sum()
    }
}

fn hand_over(out: &mut Out) {
    let buf = std::mem::take(&mut out.buf);
    let lines = std::mem::take(&mut out.lines);
    match out.sink.send(buf, lines) {
        Ok(()) => {
            if let Some(b) = out.sink.recycled() {
                out.buf = b;
            }
        }
        Err(mut buf) => {
            out.dropped += lines;
            out.unreported += lines;
            buf.clear();
            out.buf = buf;
        }
    }
}
