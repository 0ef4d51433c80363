//! One writer thread per destination. Shards hand it buffers of whole lines
//! over a bounded channel ([`Sink`]); it writes each with one `write_all`
//! (the file is opened with O_APPEND) and gives the emptied buffer back on
//! a second channel, so that in steady state no buffer is allocated. A
//! failed write (a full disk) loses that buffer's lines: they are counted
//! and reported at most once a second, and the thread goes on. A reopen
//! request (SIGUSR1) opens the path again, so a file renamed by logrotate
//! is let go and a new one is created. A reload keeps the writer of every
//! destination the new plan still names ([`Writers::start_reusing`]); a
//! writer it no longer names ends, closing its file, when the last shard
//! drops its sink ([`Writers::replacing`]).

use super::Destination;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Buffers that may wait for a writer, per destination. With buffers of
/// [`super::shard::FLUSH_AT`] bytes that is at most 1 MiB of lines in
/// flight; beyond it, shards drop lines (and count them).
pub const QUEUE: usize = 32;
/// How often a writer with lost lines not yet reported looks whether it is
/// time to report them. Otherwise it blocks until the next buffer, or a
/// reopen's wake ([`Writers::reopen`]).
const REPORT_LOOK: Duration = Duration::from_millis(100);
/// At most one error line a second about failed writes.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long the shutdown waits for a writer to write what it has.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// A shard's handle on one destination's writer.
#[derive(Debug, Clone)]
pub struct Sink {
    pub destination: Arc<str>,
    tx: Sender<Filled>,
    recycled: Receiver<Vec<u8>>,
    /// Lines lost to failed writes (counted by the writer).
    lost: Arc<AtomicU64>,
}

/// A buffer of whole lines.
#[derive(Debug)]
struct Filled {
    buf: Vec<u8>,
    lines: u64,
}

impl Sink {
    /// Hands `buf` (holding `lines` lines) to the writer; on `Err` the
    /// writer is behind (or gone) and the buffer comes back unsent.
    pub fn send(&self, buf: Vec<u8>, lines: u64) -> Result<(), Vec<u8>> {
        match self.tx.try_send(Filled { buf, lines }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) => Err(f.buf),
        }
    }

    /// An emptied buffer the writer gave back, if any.
    pub fn recycled(&self) -> Option<Vec<u8>> {
        self.recycled.try_recv().ok()
    }

    /// Lines lost to failed writes since the start.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// A sink with no writer: for a gateway built without one (unit tests),
    /// where every line is dropped.
    pub fn detached(destination: &str) -> Sink {
        let (tx, _) = crossbeam_channel::bounded(0);
        let (_, recycled) = crossbeam_channel::bounded(0);
        Sink {
            destination: destination.into(),
            tx,
            recycled,
            lost: Arc::default(),
        }
    }
}

/// One running writer: its destination, the shards' handle on it, its
/// reopen flag and the signal its thread sends when it has ended.
#[derive(Clone)]
struct Entry {
    destination: Destination,
    sink: Sink,
    reopen: Arc<AtomicBool>,
    /// Set by [`Writers::finish`]: the writer ends once its queue is
    /// empty, even if a sink is still held (by a shard a panic stopped).
    finish: Arc<AtomicBool>,
    done: Receiver<()>,
}

/// The running writers, one per destination, in the plan's order.
pub struct Writers {
    pub sinks: Vec<Sink>,
    entries: Vec<Entry>,
    /// Writers a reload no longer uses, whose threads may still be
    /// writing the lines of requests that started before it: each thread
    /// ends, and closes its file, once the last shard lets go of its sink.
    retired: Vec<(Destination, Receiver<()>)>,
}

impl Writers {
    /// Opens every destination and starts its thread. A file that cannot
    /// be opened stops the start with its path and the reason.
    pub fn start(destinations: &[Destination]) -> io::Result<Writers> {
        Writers::start_reusing(destinations, None)
    }

    /// As [`Writers::start`], but a destination `running` already writes
    /// keeps that writer (its thread and its open file) instead of a new
    /// one: a reload that adds or removes a destination leaves the others
    /// alone. Nothing of `running` changes: on an error the new files
    /// opened so far are closed again.
    pub fn start_reusing(
        destinations: &[Destination],
        running: Option<&Writers>,
    ) -> io::Result<Writers> {
        let mut w = Writers {
            sinks: Vec::new(),
            entries: Vec::new(),
            retired: Vec::new(),
        };
        for d in destinations {
            let kept = running.and_then(|r| r.entries.iter().find(|e| e.destination == *d));
            let entry = match kept {
                Some(e) => e.clone(),
                None => Entry::start(d)?,
            };
            w.sinks.push(entry.sink.clone());
            w.entries.push(entry);
        }
        Ok(w)
    }

    /// Takes over from `old` (the writers this set replaces): `old`'s
    /// writers that this set does not reuse become retired, and end on
    /// their own once the shards drop their last sink. Retired writers
    /// that have ended already are forgotten.
    pub fn replacing(&mut self, old: Writers) {
        let Writers {
            entries, retired, ..
        } = old;
        for e in entries {
            if !self.entries.iter().any(|n| n.destination == e.destination) {
                self.retired.push((e.destination, e.done));
            }
        }
        for r in retired {
            self.retired.push(r);
        }
        self.retired
            .retain(|(_, done)| matches!(done.try_recv(), Err(TryRecvError::Empty)));
    }

    /// Asks every file writer to reopen its path (SIGUSR1): sets its flag,
    /// then wakes it with an empty buffer. When its queue is full it is busy
    /// and sees the flag before its next write.
    pub fn reopen(&self) {
        for e in &self.entries {
            e.reopen.store(true, Ordering::Relaxed);
            let _ = e.sink.send(Vec::new(), 0);
        }
    }

    /// Once every shard has let go of its sinks: waits for each writer to
    /// write what it was handed, up to a few seconds (a destination nobody
    /// reads, such as a stalled pipe, does not hold the exit up).
    pub fn finish(self) {
        drop(self.sinks);
        // Woken as for a reopen: a sink a stopped shard never dropped must
        // not keep a writer waiting for more.
        for e in &self.entries {
            e.finish.store(true, Ordering::Relaxed);
            let _ = e.sink.send(Vec::new(), 0);
        }
        let deadline = Instant::now() + FINISH_WAIT;
        let dones = self
            .entries
            .into_iter()
            .map(|e| e.done)
            .chain(self.retired.into_iter().map(|(_, d)| d));
        for done in dones {
            if let Err(RecvTimeoutError::Timeout) = done.recv_deadline(deadline) {
                crate::log!(
                    "warn",
                    "an access-log writer did not finish within {} s; its last lines are lost",
                    FINISH_WAIT.as_secs()
                );
            }
        }
    }
}

impl Entry {
    fn start(d: &Destination) -> io::Result<Entry> {
        let out = Out::open(d).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open the access log {d}: {e}"))
        })?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (back_tx, recycled) = crossbeam_channel::bounded(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let finish = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let thread = Thread {
            destination: d.clone(),
            out,
            rx,
            back: back_tx,
            lost: lost.clone(),
            reopen: reopen.clone(),
            finish: finish.clone(),
            unreported: 0,
            last_report: None,
        };
        std::thread::Builder::new()
            .name("coregate-accesslog".to_string())
            .spawn(move || {
                thread.run();
                let _ = done_tx.send(());
            })?;
        Ok(Entry {
            destination: d.clone(),
            sink: Sink {
                destination: d.to_string().into(),
                tx,
                recycled,
                lost,
            },
            reopen,
            finish,
            done,
        })
    }
}

enum Out {
    Stdout,
    File(File),
}

impl Out {
    fn open(d: &Destination) -> io::Result<Out> {
        match d {
            Destination::Stdout => Ok(Out::Stdout),
            Destination::File(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o644)
                    .open(p)
                    .map(Out::File)
            }
        }
    }

    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Out::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(b)?;
                out.flush()
            }
            Out::File(f) => f.write_all(b),
        }
    }
}

struct Thread {
    destination: Destination,
    out: Out,
    rx: Receiver<Filled>,
    back: Sender<Vec<u8>>,
    lost: Arc<AtomicU64>,
    reopen: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    unreported: u64,
    last_report: Option<Instant>,
}

impl Thread {
    fn run(mut self) {
        loop {
            if self.reopen.swap(false, Ordering::Relaxed) {
                self.do_reopen();
            }
            if self.finish.load(Ordering::Relaxed) && self.rx.is_empty() {
                self.last_report = None;
                self.report(None);
                return;
            }
            // Only lost lines not yet reported need a timer: an idle writer
            // otherwise sleeps until a shard hands it a buffer.
            let got = if self.unreported == 0 {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.rx.recv_timeout(REPORT_LOOK)
            };
            match got {
                // A reopen's wake: the flag is looked at above.
                Ok(Filled { lines: 0, .. }) => {}
                Ok(Filled { mut buf, lines }) => {
                    if let Err(e) = self.out.write_all(&buf) {
                        self.lost.fetch_add(lines, Ordering::Relaxed);
                        self.unreported += lines;
                        self.report(Some(&e));
                    }
                    buf.clear();
                    let _ = self.back.try_send(buf);
                }
                Err(RecvTimeoutError::Timeout) => self.report(None),
                Err(RecvTimeoutError::Disconnected) => {
                    self.last_report = None;
                    self.report(None);
                    return;
                }
            }
        }
    }

    fn do_reopen(&mut self) {
        if let Destination::File(p) = &self.destination {
            match Out::open(&self.destination) {
                Ok(out) => {
                    self.out = out;
                    crate::log!("info", "access log {} reopened", p.display());
                }
                Err(e) => crate::log!(
                    "error",
                    "access log {}: cannot reopen ({e}); still writing to the file open before",
                    p.display()
                ),
            }
        }
    }

    /// Reports lost lines, at most once per REPORT_EVERY.
    fn report(&mut self, error: Option<&io::Error>) {
        if self.unreported == 0 {
            return;
        }
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|t| now.duration_since(t) < REPORT_EVERY)
        {
            return;
        }
        self.last_report = Some(now);
        let why = error.map(|e| format!(": {e}")).unwrap_or_default();
        crate::log!(
            "error",
            "access log {}: write failed{why}; {} line(s) lost ({} lost in all)",
            self.destination,
            self.unreported,
            self.lost.load(Ordering::Relaxed)
        );
        self.unreported = 0;
    }
}
