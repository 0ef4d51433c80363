//! uringlab: one thread answers keep-alive HTTP/1.1 requests (heads only,
//! no bodies) with a fixed response, through one of two socket mechanisms,
//! so that their cost can be compared under the same load with nothing else
//! in the way (loadtest/uring.sh):
//!
//! - `epoll`: an edge-triggered epoll set; a read until a short read, one
//!   `send` per readiness with everything owed: what coregate's `src/net`
//!   does.
//! - `uring`: one io_uring (`SINGLE_ISSUER` and `DEFER_TASKRUN`, falling back
//!   to `COOP_TASKRUN`): a multishot accept, a multishot receive per
//!   connection into a provided-buffer ring, and every send of a pass in the
//!   one `io_uring_enter` that also waits for the next completions.
//!
//! Both count requests the same way (each `\r\n\r\n` ends one) and answer
//! each with the same bytes, so a difference in CPU per request is the
//! mechanism's.
//!
//!   uringlab epoll|uring PORT

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n";
/// The response repeated: what a connection owes is always a suffix of a
/// run of responses, sent from here without building it.
const COPIES: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(port)) = (args.first(), args.get(1).and_then(|p| p.parse().ok())) else {
        eprintln!("usage: uringlab epoll|uring PORT");
        std::process::exit(2);
    };
    let all: &'static [u8] = RESPONSE.repeat(COPIES).leak();
    let r = listener(port).and_then(|lfd| match mode.as_str() {
        "epoll" => epoll_loop(lfd, all),
        "uring" => uring_loop(lfd, all),
        _ => Err(io::Error::other("mode must be epoll or uring")),
    });
    if let Err(e) = r {
        eprintln!("uringlab: {e}");
        std::process::exit(1);
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn listener(port: u16) -> io::Result<RawFd> {
    // SAFETY: plain socket syscalls on a descriptor this function owns, with
    // pointers to live locals of the right size.
    unsafe {
        let fd = cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let one: libc::c_int = 1;
        cvt(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        ))?;
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as u16;
        a.sin_port = port.to_be();
        a.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        cvt(libc::bind(
            fd,
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ))?;
        cvt(libc::listen(fd, 4096))?;
        Ok(fd)
    }
}

fn nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a setsockopt with a pointer to a live int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
}

/// Counts the request heads that end in `data`; `state` carries how much of
/// `\r\n\r\n` the previous data ended with.
fn count_heads(state: &mut u8, data: &[u8]) -> usize {
    const END: &[u8; 4] = b"\r\n\r\n";
    let mut n = 0;
    let mut s = *state as usize;
    for &b in data {
        if b == END[s] {
            s += 1;
            if s == 4 {
                n += 1;
                s = 0;
            }
        } else {
            s = usize::from(b == b'\r');
        }
    }
    *state = s as u8;
    n
}

/// The next bytes to send when `owed` bytes of responses are owed: a suffix
/// of `all` that is a suffix of the owed stream.
fn owed_slice(all: &[u8], owed: usize) -> &[u8] {
    let l = if owed <= all.len() {
        owed
    } else {
        match owed % RESPONSE.len() {
            0 => all.len(),
            part => part + (COPIES - 1) * RESPONSE.len(),
        }
    };
    &all[all.len() - l..]
}

#[derive(Default, Clone)]
struct Conn {
    open: bool,
    gen: u32,
    state: u8,
    owed: usize,
    /// uring: a send is in flight (one at a time keeps the order).
    sending: usize,
    /// uring: the peer ended; close once the last send completes.
    closing: bool,
}

fn slot(conns: &mut Vec<Conn>, fd: RawFd) -> &mut Conn {
    let i = fd as usize;
    if conns.len() <= i {
        conns.resize(i + 1, Conn::default());
    }
    &mut conns[i]
}

// ---------------------------------------------------------------- epoll --

fn epoll_loop(lfd: RawFd, all: &[u8]) -> io::Result<()> {
    const LISTENER: u64 = u64::MAX;
    // SAFETY: epoll and socket syscalls on descriptors this loop owns, with
    // buffers that outlive each call.
    unsafe {
        let ep = cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: LISTENER,
        };
        cvt(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd, &mut ev))?;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut conns: Vec<Conn> = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let (flags, data) = (ev.events, ev.u64);
                if data == LISTENER {
                    loop {
                        let fd = libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        );
                        if fd < 0 {
                            let e = io::Error::last_os_error();
                            if e.kind() == io::ErrorKind::Interrupted {
                                continue;
                            }
                            break;
                        }
                        nodelay(fd);
                        *slot(&mut conns, fd) = Conn {
                            open: true,
                            ..Conn::default()
                        };
                        let mut cev = libc::epoll_event {
                            events: (libc::EPOLLIN
                                | libc::EPOLLOUT
                                | libc::EPOLLRDHUP
                                | libc::EPOLLET) as u32,
                            u64: fd as u64,
                        };
                        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut cev);
                    }
                    continue;
                }
                let fd = data as RawFd;
                let c = slot(&mut conns, fd);
                if !c.open {
                    continue;
                }
                let mut dead = false;
                let ended =
                    flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
                if flags & libc::EPOLLIN as u32 != 0 || ended {
                    loop {
                        let r = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                        if r > 0 {
                            c.owed +=
                                count_heads(&mut c.state, &buf[..r as usize]) * RESPONSE.len();
                            // A short read drained the socket: the next
                            // arrival is a new edge.
                            if (r as usize) < buf.len() && !ended {
                                break;
                            }
                        } else if r == 0 {
                            dead = true;
                            break;
                        } else {
                            let e = io::Error::last_os_error();
                            match e.kind() {
                                io::ErrorKind::Interrupted => continue,
                                io::ErrorKind::WouldBlock => break,
                                _ => {
                                    dead = true;
                                    break;
                                }
                            }
                        }
                    }
                }
                while c.owed > 0 && !dead {
                    let s = owed_slice(all, c.owed);
                    let r = libc::send(
                        fd,
                        s.as_ptr() as *const libc::c_void,
                        s.len(),
                        libc::MSG_NOSIGNAL,
                    );
                    if r >= 0 {
                        c.owed -= r as usize;
                    } else {
                        let e = io::Error::last_os_error();
                        match e.kind() {
                            io::ErrorKind::Interrupted => continue,
                            // EPOLLOUT's next edge resumes it.
                            io::ErrorKind::WouldBlock => break,
                            _ => dead = true,
                        }
                    }
                }
                if dead {
                    c.open = false;
                    libc::close(fd);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- uring --

const ACCEPT: u64 = 1 << 56;
const RECV: u64 = 2 << 56;
const SEND: u64 = 3 << 56;
const KIND: u64 = 0xff << 56;
const BGID: u16 = 0;
const BUFS: u16 = 1024;
const BUF_SIZE: usize = 4096;

fn ud(kind: u64, gen: u32, fd: RawFd) -> u64 {
    kind | (u64::from(gen & 0xff_ffff) << 32) | u64::from(fd as u32)
}

/// The provided-buffer ring: `BUFS` buffers of `BUF_SIZE` that the kernel
/// fills as data arrives; each goes back once its bytes are counted.
struct BufRing {
    base: *mut types::BufRingEntry,
    bufs: *mut u8,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> io::Result<BufRing> {
        let bytes = usize::from(BUFS) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping (page-aligned, as the kernel
        // requires), registered with the ring and never unmapped while the
        // ring lives; the buffers are leaked for the same reason.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let base = p as *mut types::BufRingEntry;
            ring.submitter()
                .register_buf_ring_with_flags(base as u64, BUFS, BGID, 0)?;
            let bufs = vec![0u8; usize::from(BUFS) * BUF_SIZE].leak().as_mut_ptr();
            let mut r = BufRing {
                base,
                bufs,
                tail: 0,
            };
            for bid in 0..BUFS {
                r.give(bid);
            }
            r.publish();
            Ok(r)
        }
    }

    fn give(&mut self, bid: u16) {
        // SAFETY: the index is masked into the ring's entries; the buffer
        // address is inside the leaked allocation.
        unsafe {
            let e = &mut *self.base.add(usize::from(self.tail & (BUFS - 1)));
            e.set_addr(self.bufs.add(usize::from(bid) * BUF_SIZE) as u64);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail lives in the ring's first entry; the kernel reads
        // it with acquire semantics.
        unsafe {
            let t = types::BufRingEntry::tail(self.base) as *const std::sync::atomic::AtomicU16;
            (*t).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    fn data(&self, bid: u16, len: usize) -> &[u8] {
        // SAFETY: the kernel wrote `len` bytes into buffer `bid`.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.add(usize::from(bid) * BUF_SIZE),
                len.min(BUF_SIZE),
            )
        }
    }
}

fn push(ring: &mut IoUring, sqe: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an entry points at (the static responses, the
        // provided buffers) outlives the operation.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

fn uring_loop(lfd: RawFd, all: &'static [u8]) -> io::Result<()> {
    let defer = std::env::var_os("URINGLAB_COOP").is_none();
    let built = if defer {
        IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(16384)
            .build(4096)
    } else {
        Err(io::Error::other("URINGLAB_COOP is set"))
    };
    let mut ring = built.or_else(|e| {
        eprintln!("uringlab: DEFER_TASKRUN refused ({e}); using COOP_TASKRUN");
        IoUring::builder()
            .setup_coop_taskrun()
            .setup_cqsize(16384)
            .build(4096)
    })?;
    let mut bufs = BufRing::new(&ring)?;
    let accept = opcode::AcceptMulti::new(types::Fd(lfd))
        .build()
        .user_data(ACCEPT);
    push(&mut ring, &accept)?;
    let mut conns: Vec<Conn> = Vec::new();
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    loop {
        bufs.publish();
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &done {
            let fd = (data & 0xffff_ffff) as RawFd;
            let gen = ((data >> 32) & 0xff_ffff) as u32;
            match data & KIND {
                ACCEPT => {
                    if res >= 0 {
                        nodelay(res);
                        let c = slot(&mut conns, res);
                        let gen = c.gen.wrapping_add(1);
                        *c = Conn {
                            open: true,
                            gen,
                            ..Conn::default()
                        };
                        let recv = opcode::RecvMulti::new(types::Fd(res), BGID)
                            .build()
                            .user_data(ud(RECV, gen, res));
                        push(&mut ring, &recv)?;
                    }
                    if !cqueue::more(flags) {
                        push(&mut ring, &accept)?;
                    }
                }
                RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if res > 0 {
                            let c = slot(&mut conns, fd);
                            if c.open && c.gen & 0xff_ffff == gen {
                                c.owed += count_heads(&mut c.state, bufs.data(bid, res as usize))
                                    * RESPONSE.len();
                            }
                        }
                        bufs.give(bid);
                    }
                    let c = slot(&mut conns, fd);
                    if !c.open || c.gen & 0xff_ffff != gen {
                        continue;
                    }
                    if res > 0 || res == -libc::ENOBUFS {
                        if !cqueue::more(flags) {
                            let recv = opcode::RecvMulti::new(types::Fd(fd), BGID)
                                .build()
                                .user_data(ud(RECV, gen, fd));
                            push(&mut ring, &recv)?;
                        }
                    } else {
                        c.closing = true;
                    }
                    send_or_close(&mut ring, &mut conns, fd, all)?;
                }
                SEND => {
                    let c = slot(&mut conns, fd);
                    if !c.open || c.gen & 0xff_ffff != gen {
                        continue;
                    }
                    c.sending = 0;
                    if res >= 0 {
                        c.owed -= (res as usize).min(c.owed);
                    } else {
                        c.owed = 0;
                        c.closing = true;
                    }
                    send_or_close(&mut ring, &mut conns, fd, all)?;
                }
                _ => {}
            }
        }
    }
}

/// Queues the next send of what `fd` is owed (one in flight at a time), or
/// closes it once it ended and nothing is in flight.
fn send_or_close(
    ring: &mut IoUring,
    conns: &mut Vec<Conn>,
    fd: RawFd,
    all: &'static [u8],
) -> io::Result<()> {
    let c = slot(conns, fd);
    if c.sending > 0 {
        return Ok(());
    }
    if c.closing {
        c.open = false;
        // SAFETY: the descriptor is ours; its multishot receive has ended
        // (it reported the end) and no send is in flight.
        unsafe { libc::close(fd) };
        return Ok(());
    }
    if c.owed == 0 {
        return Ok(());
    }
    let s = owed_slice(all, c.owed);
    c.sending = s.len();
    let gen = c.gen;
    let send = opcode::Send::new(types::Fd(fd), s.as_ptr(), s.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(ud(SEND, gen, fd));
    push(ring, &send)
}
