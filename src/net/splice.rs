//! Body bytes from socket to socket without entering user space: `splice`
//! from the source socket into a pipe, then from the pipe into the
//! destination socket (as HAProxy does). The kernel moves references to
//! the received pages; nothing is copied into or out of a user buffer.
//! Part of the net layer: it waits on the shard's reactor exactly as
//! [`Socket`]'s reads and writes do, with their timeouts.
//!
//! Pipes: each shard keeps a few idle pipes ([`IDLE_PIPES`]), created on
//! first use and sized with `F_SETPIPE_SZ`; a [`Transfer`] takes one for
//! its body and gives it back when the body is done. Two bodies in flight
//! on one shard (two connections, or both directions of one exchange)
//! therefore never share a pipe. A pipe is given back only empty: a
//! transfer that ends with bytes still in its pipe (the destination failed
//! after a splice filled it, or the transfer was dropped mid-body) closes
//! that pipe, so the next body can never receive a previous one's bytes.
//! The idle pipes are closed when the shard's thread exits.
//!
//! The loop alternates strictly: fill the empty pipe from the source (up to
//! the pipe's size and the bytes still due), then empty it into the
//! destination. An `EAGAIN` from a fill is then unambiguous (the pipe is
//! empty, so the socket has nothing) and the reactor's readiness stays
//! exact; the sockets' own buffers carry the data meanwhile. A fill that
//! returns less than asked says nothing certain (a pipe's capacity is
//! counted in pages, not bytes), so the socket stays marked readable and
//! the next fill finds out.
//!
//! A transfer never takes more than the bytes it was made for from its
//! source: a chunked body's caller makes one per chunk, for exactly the
//! chunk's data still due (`http::conn::splice_chunk`), so the framing
//! after it stays in the socket for the user-space decoder.
//!
//! Every byte a splice writes to its destination is counted per shard and
//! direction ([`spliced_bytes`]) for the metrics, so the spliced path can
//! be told from the copy path.
//!
//! On the shard's io_uring path ([`super::uring`]) a socket's bytes are
//! taken by a multishot receive, and its writes are sent later by the
//! ring. So a transfer from a socket on the ring stops that receive for
//! its duration (and has it armed again when it ends or is dropped), and
//! the bytes the receive had already taken go into the pipe first (with
//! `write(2)`, counted against the body's length like any other); only
//! once none are left and the receive's last completion has come does it
//! splice from the socket. Into a socket on the ring it splices only while
//! nothing written before waits to be sent. Waits on the ring are one-shot
//! polls of the ring, whose completions mark the socket ready as an
//! epoll event would.

use super::{sys, uring, Dir, Reactor, Socket};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::task::{Context, Poll};

/// Idle pipes one shard keeps for the next bodies. More in flight at once
/// are created as needed and closed when done.
pub const IDLE_PIPES: usize = 16;

/// Bytes a transfer moves before it lets the rest of its task (and the
/// shard) run: with both sockets always ready it would otherwise never
/// wait, and the other direction of a full-duplex exchange would wait for
/// the whole body.
const TURN_BYTES: u64 = 256 * 1024;

/// Which way a body goes, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// A response body, from the upstream to the client.
    Client = 0,
    /// A request body, from the client to the upstream.
    Upstream = 1,
}

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// The size asked for when it was made (pipes are reused only for the
    /// same size).
    asked: usize,
    /// The capacity the kernel gave it.
    size: usize,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    static SPLICED: Cell<[u64; 2]> = const { Cell::new([0; 2]) };
}

/// Bytes this shard has spliced so far: (to clients, to upstreams).
pub fn spliced_bytes() -> (u64, u64) {
    let s = SPLICED.with(Cell::get);
    (s[0], s[1])
}

fn count(toward: Toward, n: usize) {
    SPLICED.with(|c| {
        let mut s = c.get();
        s[toward as usize] = s[toward as usize].wrapping_add(n as u64);
        c.set(s);
    });
}

/// An idle pipe of `size` bytes, or a new one. None when none can be made
/// (out of descriptors, or over the per-user pipe memory limit): the
/// caller copies instead.
fn take_pipe(size: usize) -> Option<Pipe> {
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        // Pipes of another size (the setting changed on reload) go.
        p.retain(|pipe| pipe.asked == size);
        p.pop()
    });
    if pooled.is_some() {
        return pooled;
    }
    let (r, w) = sys::pipe().ok()?;
    // Refused past `/proc/sys/fs/pipe-user-pages-hard` (or above
    // pipe-max-size) without CAP_SYS_RESOURCE: then no pipe rather than a
    // small one.
    let got = sys::set_pipe_size(w.as_raw_fd(), size).ok()?;
    Some(Pipe {
        r,
        w,
        asked: size,
        size: got,
    })
}

fn give_back(pipe: Pipe) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < IDLE_PIPES {
            p.push(pipe);
        }
    });
}

/// Why a transfer stopped.
#[derive(Debug)]
pub enum SpliceError {
    /// The source ended (a read returned 0) before the body did.
    Closed,
    /// Reading the source failed (`TimedOut` after its read timeout).
    Read(io::Error),
    /// Writing the destination failed (`TimedOut` after its write timeout).
    Write(io::Error),
}

/// One body of a known length on its way from one socket to another
/// through a pipe of its own (see the module doc).
pub struct Transfer {
    /// Always Some until dropped.
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// Bytes still to take from the source.
    remaining: u64,
    /// Bytes written to the destination.
    moved: u64,
    turn: u64,
    toward: Toward,
    /// Polled once: the sockets are set up for it.
    started: bool,
    /// A source on the shard's ring: in splice mode until this drops.
    ring_src: Option<RingSource>,
}

/// A socket on the ring that is a transfer's source: its receive stays
/// stopped while this lives ([`uring::Uring::splice_enter`]), and the
/// socket reads as before once it is dropped, whether the body was done,
/// failed or given up.
struct RingSource {
    reactor: Rc<Reactor>,
    idx: u32,
    gen: u32,
}

impl Drop for RingSource {
    fn drop(&mut self) {
        if let Some(u) = &self.reactor.uring {
            u.splice_leave(self.idx, self.gen);
        }
    }
}

impl Transfer {
    /// A transfer of `len` bytes through a pipe of `pipe_bytes`; None when
    /// no pipe can be had (the caller copies instead).
    pub fn new(len: u64, pipe_bytes: usize, toward: Toward) -> Option<Transfer> {
        Some(Transfer {
            pipe: Some(take_pipe(pipe_bytes)?),
            in_pipe: 0,
            remaining: len,
            moved: 0,
            turn: 0,
            toward,
            started: false,
            ring_src: None,
        })
    }

    /// At the first poll: a source on the ring stops its receive; sockets
    /// on the ring are taken as ready (the first splice finds out).
    fn start(&mut self, src: &Socket, dst: &Socket) -> io::Result<()> {
        self.started = true;
        if let Some(u) = src.ring() {
            let gen = src.gen();
            u.splice_enter(src.idx, gen)?;
            self.ring_src = Some(RingSource {
                reactor: src.reactor.clone(),
                idx: src.idx,
                gen,
            });
            src.slot_mut(|s| s.readable = true);
        }
        if dst.on_ring {
            dst.slot_mut(|s| s.writable = true);
        }
        Ok(())
    }

    /// Bytes written to the destination so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// Moves the body on from `src` to `dst` until it is all written
    /// (`Ready(Ok)`), a socket fails, or both wait (`Pending`, with the
    /// socket it waits for holding this task's waker and its deadline).
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &Socket,
        dst: &Socket,
    ) -> Poll<Result<(), SpliceError>> {
        if !self.started {
            if let Err(e) = self.start(src, dst) {
                return Poll::Ready(Err(SpliceError::Read(e)));
            }
        }
        let Some(pipe) = self.pipe.as_ref() else {
            return Poll::Ready(Err(SpliceError::Write(io::ErrorKind::BrokenPipe.into())));
        };
        loop {
            if self.in_pipe == 0 {
                if self.remaining == 0 {
                    return Poll::Ready(Ok(()));
                }
                if self.turn >= TURN_BYTES {
                    self.turn = 0;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                // On the ring: what its receive took before the transfer
                // goes first, then (no receive running) the socket's.
                let mut from_socket = true;
                if let Some(u) = src.ring() {
                    let want = (pipe.size as u64).min(self.remaining) as usize;
                    let mut failed = None;
                    let step = u.splice_rx(src.idx, |b| {
                        match sys::write(pipe.w.as_raw_fd(), &b[..b.len().min(want)]) {
                            Ok(n) => n,
                            Err(e) => {
                                failed = Some(e);
                                0
                            }
                        }
                    });
                    match step {
                        Err(e) => return Poll::Ready(Err(SpliceError::Read(e))),
                        Ok(uring::SpliceRx::Took(n)) => {
                            if n == 0 {
                                // Into an empty pipe: only a failure.
                                let e = failed.unwrap_or_else(|| io::ErrorKind::WriteZero.into());
                                return Poll::Ready(Err(SpliceError::Write(e)));
                            }
                            src.done(Dir::Read, false);
                            self.in_pipe = n;
                            self.remaining -= n as u64;
                            continue;
                        }
                        Ok(uring::SpliceRx::Wait) => {
                            // Its last completion marks it readable.
                            src.slot_mut(|s| s.readable = false);
                            from_socket = false;
                        }
                        Ok(uring::SpliceRx::Socket) => {}
                    }
                }
                if from_socket && src.is_ready(Dir::Read) {
                    let want = (pipe.size as u64).min(self.remaining) as usize;
                    match sys::splice(src.fd.as_raw_fd(), pipe.w.as_raw_fd(), want) {
                        Ok(0) => {
                            src.done(Dir::Read, false);
                            return Poll::Ready(Err(SpliceError::Closed));
                        }
                        Ok(n) => {
                            src.done(Dir::Read, false);
                            self.in_pipe = n;
                            self.remaining -= n as u64;
                            continue;
                        }
                        // The pipe is empty: the socket has nothing.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            src.slot_mut(|s| s.readable = false);
                            if let Some(u) = src.ring() {
                                if let Err(e) = u.poll_in(src.idx, src.gen()) {
                                    return Poll::Ready(Err(SpliceError::Read(e)));
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            src.done(Dir::Read, false);
                            return Poll::Ready(Err(SpliceError::Read(e)));
                        }
                    }
                }
                match src.poll_ready(cx, Dir::Read) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Read(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // On the ring: what was written before goes first.
            let mut to_socket = true;
            if let Some(u) = dst.ring() {
                match u.sending(dst.idx) {
                    Err(e) => return Poll::Ready(Err(SpliceError::Write(e))),
                    Ok(true) => {
                        // A send's completion marks it writable.
                        dst.slot_mut(|s| s.writable = false);
                        to_socket = false;
                    }
                    Ok(false) => {}
                }
            }
            if to_socket && dst.is_ready(Dir::Write) {
                match sys::splice(pipe.r.as_raw_fd(), dst.fd.as_raw_fd(), self.in_pipe) {
                    Ok(0) => {
                        dst.done(Dir::Write, false);
                        return Poll::Ready(Err(SpliceError::Write(
                            io::ErrorKind::WriteZero.into(),
                        )));
                    }
                    Ok(n) => {
                        dst.done(Dir::Write, false);
                        self.in_pipe -= n;
                        self.moved += n as u64;
                        self.turn += n as u64;
                        count(self.toward, n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        dst.slot_mut(|s| s.writable = false);
                        if let Some(u) = dst.ring() {
                            if let Err(e) = u.poll_out(dst.idx, dst.gen()) {
                                return Poll::Ready(Err(SpliceError::Write(e)));
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        dst.done(Dir::Write, false);
                        return Poll::Ready(Err(SpliceError::Write(e)));
                    }
                }
            }
            match dst.poll_ready(cx, Dir::Write) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Write(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            // Bytes of this body still in the pipe close with it.
            if self.in_pipe == 0 {
                give_back(pipe);
            }
        }
    }
}

#[cfg(test)]
pub(super) fn idle_pipes() -> Vec<usize> {
    POOL.with(|p| {
        p.borrow()
            .iter()
            .map(|pipe| sys::pipe_bytes(pipe.r.as_raw_fd()).unwrap_or(usize::MAX))
            .collect()
    })
}
