//! A shard's side of the access logs: one buffer per destination, in shard
//! memory (`RefCell`, no lock). A line is formatted straight into its
//! destination's buffer; a buffer past [`FLUSH_AT`] bytes, and every buffer
//! at each tick of the shard's flush task ([`FLUSH_EVERY`]), is handed to
//! the destination's writer thread. When the writer's queue is full the
//! buffer's lines are dropped, counted ([`ShardLog::dropped`]) and reported
//! in the error log at most once a second per shard.

use super::writer::Sink;
use std::cell::{Cell, RefCell};
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

/// One shard's access-log buffers.
pub struct ShardLog {
    shard: usize,
    outs: RefCell<Vec<Out>>,
    last_report: Cell<Option<Instant>>,
    /// The CLF time of `clock_secs`, formatted once a second.
    clock_secs: Cell<u64>,
    clock_text: Cell<[u8; 26]>,
    /// The wall clock (ms since the epoch) at an instant, re-read at each
    /// flush: a line's time is computed from its request's `Instant`
    /// without reading the clock again.
    wall_base: Cell<(u64, Instant)>,
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
        ShardLog {
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
            last_report: Cell::new(None),
            clock_secs: Cell::new(u64::MAX),
            clock_text: Cell::new([0; 26]),
            wall_base: Cell::new(wall_now()),
        }
    }

    /// Milliseconds since the epoch at `t`, from the base the last flush
    /// took (at most FLUSH_EVERY old while the flush task runs).
    pub fn wall_ms(&self, t: Instant) -> u64 {
        let (ms, at) = self.wall_base.get();
        match t.checked_duration_since(at) {
            Some(d) => ms.saturating_add(d.as_millis() as u64),
            None => ms.saturating_sub(at.duration_since(t).as_millis() as u64),
        }
    }

    /// Sets the writers' sinks (the shard's start, once the writers run).
    pub fn attach(&self, sinks: Vec<Sink>) {
        *self.outs.borrow_mut() = ShardLog::new(self.shard, sinks).outs.into_inner();
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
    }

    /// Hands every non-empty buffer to its writer, and reports dropped
    /// lines if a second has passed since the last report.
    pub fn flush(&self, now: Instant) {
        self.wall_base.set(wall_now());
        let mut outs = self.outs.borrow_mut();
        for out in outs.iter_mut() {
            if out.lines > 0 {
                hand_over(out);
            }
        }
        if outs.iter().all(|o| o.unreported == 0)
            || self
                .last_report
                .get()
                .is_some_and(|t| now.duration_since(t) < REPORT_EVERY)
        {
            return;
        }
        self.last_report.set(Some(now));
        for out in outs.iter_mut().filter(|o| o.unreported > 0) {
            crate::log!(
                "warn",
                "access log {}: dropped {} line(s) because its writer is behind ({} dropped on shard {} in all)",
                out.sink.destination,
                out.unreported,
                out.dropped,
                self.shard
            );
            out.unreported = 0;
        }
    }

    /// The shard stops: hands over what is left and reports every drop not
    /// yet reported.
    pub fn close(&self) {
        self.last_report.set(None);
        self.flush(Instant::now());
    }

    /// Lines this shard dropped because a writer was behind, since it
    /// started (all destinations).
    pub fn dropped(&self) -> u64 {
        self.outs.borrow().iter().map(|o| o.dropped).sum()
    }

    /// Lines lost to failed writes, per destination's writer (all shards).
    pub fn lost(&self) -> u64 {
        self.outs.borrow().iter().map(|o| o.sink.lost()).sum()
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
