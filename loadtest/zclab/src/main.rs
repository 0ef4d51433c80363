//! zclab: does a zero-copy send pay for a large body held in memory (a cached
//! response, a large mock body)? One thread sends the same body again and
//! again to a peer that reads and discards it, each of these ways:
//!
//! - `send`: plain `send(2)`, the kernel copies the body into its buffers
//!   (what coregate does today: `sendmsg` of the head and the body);
//! - `msg_zerocopy`: `send(MSG_ZEROCOPY)` on an `SO_ZEROCOPY` socket; the
//!   completions are read from the error queue (`recvmsg(MSG_ERRQUEUE)`),
//!   and each says whether the kernel copied after all
//!   (`SO_EE_CODE_ZEROCOPY_COPIED`);
//! - `uring_send`: io_uring `SEND` (the io_uring baseline: what `SEND_ZC`
//!   changes, apart from the ring);
//! - `uring_send_zc`: io_uring `SEND_ZC` with `IORING_SEND_ZC_REPORT_USAGE`,
//!   whose notifications say `IORING_NOTIF_USAGE_ZC_COPIED` when the kernel
//!   copied;
//! - `uring_send_zc_fixed`: the same from a registered (fixed) buffer, so
//!   the pages are pinned once, not per send.
//!
//! The body is immutable, so a send never waits for the previous one's
//! completion (as a gateway holding a cached body by reference would not);
//! the completions are drained as they come and all of them before the
//! measurement ends. Per case: wall time, throughput, the sending thread's
//! CPU, the receiving thread's, the whole process's (`getrusage`, which
//! includes io_uring's worker threads), and the busy time of the CPUs the
//! two threads are pinned to (`/proc/stat`: also catches softirq work done
//! outside both threads, and other sessions' work on a shared machine).
//! The receiver checks the byte count of every case (`check` also checks
//! every byte).
//!
//!   zclab run [--path NAME] [--sizes 65536,262144,...] [--modes send,...]
//!             [--secs 1.5] [--warmup 0.3] [--reps 3]
//!             [--send-ns NETNS] [--recv-ns NETNS] [--addr 127.0.0.1]
//!             [--send-cpu N] [--recv-cpu N] [--verify] [--udp [--port 9]]
//!             [--remote --port N]
//!       one TSV row per case on stdout (a header first)
//!   zclab recv --addr 0.0.0.0 --port N
//!       a reader for `run --remote --addr HOST --port N` from another host
//!       (the path through a real NIC, which this lab's machine lacks)
//!   zclab check
//!       a tiny loopback case of every mode with every byte checked, and
//!       the same in UDP datagrams to a local socket nobody reads; exits
//!       non-zero unless each ran (an io_uring mode the kernel lacks counts
//!       as ran, reported unsupported)
//!   zclab summarize FILE...
//!       Markdown tables from `run`'s rows: medians, and ratios against
//!       plain `send` in the same repetition
//!
//! A network namespace is entered by name (`ip netns add`): the sending
//! thread joins `--send-ns`, the receiving thread `--recv-ns`
//! (loadtest/zc.sh sets up a veth pair between two).
//!
//! `--udp` sends each body as one datagram to `--addr`:`--port` (at most
//! 65,507 bytes) and starts no reader: loadtest/zc.sh points it at a device
//! that frees what it is given (its `sink` path), the one place on a
//! machine without a NIC to spare where the kernel has no reason to copy a
//! zero-copy send, so what the mechanism itself costs shows.

use io_uring::{cqueue, opcode, types, IoUring, Probe};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Not in the libc crate for Linux (asm-generic/socket.h; the same on x86
/// and arm64).
const SO_ZEROCOPY: libc::c_int = 60;
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;
/// include/uapi/linux/io_uring.h (Linux 6.2).
const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Send,
    MsgZerocopy,
    UringSend,
    UringSendZc,
    UringSendZcFixed,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Send,
        Mode::MsgZerocopy,
        Mode::UringSend,
        Mode::UringSendZc,
        Mode::UringSendZcFixed,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Send => "send",
            Mode::MsgZerocopy => "msg_zerocopy",
            Mode::UringSend => "uring_send",
            Mode::UringSendZc => "uring_send_zc",
            Mode::UringSendZcFixed => "uring_send_zc_fixed",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

#[derive(Clone)]
struct Opts {
    path: String,
    sizes: Vec<usize>,
    modes: Vec<Mode>,
    secs: f64,
    warmup: f64,
    reps: usize,
    send_ns: Option<String>,
    recv_ns: Option<String>,
    addr: Ipv4Addr,
    send_cpu: Option<usize>,
    recv_cpu: Option<usize>,
    verify: bool,
    /// UDP datagrams to `addr`:`port` instead of a TCP stream, with no
    /// reader (the `sink` path: a device that drops what it is given).
    udp: bool,
    /// A TCP reader elsewhere (`zclab recv` on another host, behind a
    /// NIC) at `addr`:`port`, instead of the reading thread here.
    remote: bool,
    port: u16,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            path: "loopback".into(),
            sizes: vec![64 << 10, 256 << 10, 1 << 20, 4 << 20],
            modes: Mode::ALL.to_vec(),
            secs: 1.5,
            warmup: 0.3,
            reps: 3,
            send_ns: None,
            recv_ns: None,
            addr: Ipv4Addr::LOCALHOST,
            send_cpu: None,
            recv_cpu: None,
            verify: false,
            udp: false,
            remote: false,
            port: 9,
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: zclab run [--path NAME] [--sizes N,...] [--modes {}] [--secs S] [--warmup S] \
         [--reps N] [--send-ns NS] [--recv-ns NS] [--addr IPV4] [--send-cpu N] [--recv-cpu N] [--verify] [--udp [--port N]] [--remote --port N]\n\
         \x20      zclab recv --addr IPV4 --port N\n\
         \x20      zclab check\n\
         \x20      zclab summarize FILE...",
        Mode::ALL.map(Mode::name).join(",")
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => {
            let opts = parse_opts(&args[1..]);
            let rows = run(&opts).unwrap_or_else(|e| {
                eprintln!("zclab: {e}");
                std::process::exit(1);
            });
            if rows.iter().any(|r| r.status.starts_with("error")) {
                std::process::exit(1);
            }
        }
        Some("check") => check(),
        Some("recv") => recv(&parse_opts(&args[1..])),
        Some("summarize") if args.len() > 1 => summarize(&args[1..]),
        _ => usage(),
    }
}

fn parse_opts(args: &[String]) -> Opts {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--path" => o.path = val(),
            "--sizes" => {
                o.sizes = val()
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--modes" => {
                o.modes = val()
                    .split(',')
                    .map(|s| Mode::parse(s).unwrap_or_else(|| usage()))
                    .collect()
            }
            "--secs" => o.secs = val().parse().unwrap_or_else(|_| usage()),
            "--warmup" => o.warmup = val().parse().unwrap_or_else(|_| usage()),
            "--reps" => o.reps = val().parse().unwrap_or_else(|_| usage()),
            "--send-ns" => o.send_ns = Some(val()),
            "--recv-ns" => o.recv_ns = Some(val()),
            "--addr" => o.addr = val().parse().unwrap_or_else(|_| usage()),
            "--send-cpu" => o.send_cpu = Some(val().parse().unwrap_or_else(|_| usage())),
            "--recv-cpu" => o.recv_cpu = Some(val().parse().unwrap_or_else(|_| usage())),
            "--verify" => o.verify = true,
            "--udp" => o.udp = true,
            "--remote" => o.remote = true,
            "--port" => o.port = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    // 65,507: the largest UDP payload over IPv4.
    if o.sizes.is_empty()
        || o.modes.is_empty()
        || o.sizes.contains(&0)
        || (o.udp && o.sizes.iter().any(|&n| n > 65_507))
    {
        usage();
    }
    o
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The body's byte at offset `i`: not constant, so a checked copy that
/// lands at the wrong offset is seen.
fn pattern(i: usize) -> u8 {
    ((i as u64).wrapping_mul(2_654_435_761) >> 13) as u8
}

// ------------------------------------------------------------- threads --

fn pin(cpu: Option<usize>) -> io::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        cvt(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// Moves the calling thread (only it) into the named network namespace.
fn enter_netns(name: Option<&str>) -> io::Result<()> {
    let Some(name) = name else { return Ok(()) };
    let path = std::ffi::CString::new(format!("/run/netns/{name}")).map_err(io::Error::other)?;
    // SAFETY: open, setns and close on a descriptor this function owns.
    unsafe {
        let fd = cvt(libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC))?;
        let r = libc::setns(fd, libc::CLONE_NEWNET);
        libc::close(fd);
        cvt(r)?;
    }
    Ok(())
}

fn thread_clock() -> libc::clockid_t {
    let mut c: libc::clockid_t = 0;
    // SAFETY: the calling thread's own handle, a pointer to a live local.
    unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut c) };
    c
}

fn clock_ns(c: libc::clockid_t) -> u64 {
    // SAFETY: a pointer to a live timespec.
    unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(c, &mut t);
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }
}

/// The process's CPU, every thread's, also those that have exited (io_uring
/// workers).
fn process_ns() -> u64 {
    // SAFETY: a pointer to a live rusage.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
        tv(r.ru_utime) + tv(r.ru_stime)
    }
}

/// Busy time (user, nice, system, irq, softirq) of the given CPUs from
/// /proc/stat, in ns; 0 when no CPU is given.
fn cpus_busy_ns(cpus: &[usize]) -> u64 {
    if cpus.is_empty() {
        return 0;
    }
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut ticks = 0u64;
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(n) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&n) {
            continue;
        }
        let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
        // user nice system idle iowait irq softirq steal ...
        ticks += [0, 1, 2, 5, 6]
            .iter()
            .map(|&i| v.get(i).copied().unwrap_or(0))
            .sum::<u64>();
    }
    ticks * (1_000_000_000 / hz)
}

// ------------------------------------------------------------- receiver --

struct Peer {
    port: u16,
    clock: libc::clockid_t,
    /// The body size to check every byte against (0: count only); set
    /// before each connection.
    verify: Arc<AtomicUsize>,
    /// Per connection, once it ended: the bytes read, or what went wrong.
    done: mpsc::Receiver<Result<u64, String>>,
}

/// A thread (in `ns`, on `cpu`) that accepts one connection at a time and
/// reads it to its end.
fn spawn_receiver(ns: Option<String>, cpu: Option<usize>, addr: Ipv4Addr) -> io::Result<Peer> {
    let (setup_tx, setup_rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let verify = Arc::new(AtomicUsize::new(0));
    let v = verify.clone();
    std::thread::Builder::new()
        .name("zclab-recv".into())
        .spawn(move || {
            let r = pin(cpu)
                .and_then(|()| enter_netns(ns.as_deref()))
                .and_then(|()| listener(addr, 0));
            let (lfd, port) = match r {
                Ok(x) => x,
                Err(e) => {
                    let _ = setup_tx.send(Err(e));
                    return;
                }
            };
            let _ = setup_tx.send(Ok((port, thread_clock())));
            let mut buf = vec![0u8; 256 << 10];
            loop {
                // SAFETY: accept on our listener; the null address pointers
                // are allowed.
                let fd = unsafe {
                    libc::accept4(
                        lfd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if fd < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    let _ = done_tx.send(Err(format!("accept: {}", io::Error::last_os_error())));
                    return;
                }
                let size = v.load(Ordering::SeqCst);
                let r = read_all(fd, &mut buf, size);
                // SAFETY: the accepted descriptor is ours.
                unsafe { libc::close(fd) };
                if done_tx.send(r).is_err() {
                    return;
                }
            }
        })?;
    let (port, clock) = setup_rx
        .recv()
        .map_err(|_| io::Error::other("the receiver thread died"))??;
    Ok(Peer {
        port,
        clock,
        verify,
        done,
    })
}

fn listener(addr: Ipv4Addr, port: u16) -> io::Result<(RawFd, u16)> {
    // SAFETY: plain socket syscalls on a descriptor this function owns, with
    // pointers to live locals of the right size.
    unsafe {
        let fd = cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let one: libc::c_int = 1;
        cvt(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            4,
        ))?;
        let mut a = sockaddr(addr, port);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        cvt(libc::bind(fd, &a as *const _ as *const libc::sockaddr, len))?;
        cvt(libc::listen(fd, 16))?;
        cvt(libc::getsockname(
            fd,
            &mut a as *mut _ as *mut libc::sockaddr,
            &mut len,
        ))?;
        Ok((fd, u16::from_be(a.sin_port)))
    }
}

fn sockaddr(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; zero is a valid value.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as u16;
    a.sin_port = port.to_be();
    a.sin_addr.s_addr = u32::from(addr).to_be();
    a
}

/// Reads `fd` to its end; with `size` > 0, checks every byte against the
/// body of that size sent again and again.
fn read_all(fd: RawFd, buf: &mut [u8], size: usize) -> Result<u64, String> {
    let mut total = 0u64;
    let mut pos = 0usize;
    loop {
        // SAFETY: reads into a live buffer of its length.
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("recv: {e}"));
        }
        if r == 0 {
            return Ok(total);
        }
        if size > 0 {
            for (k, &b) in buf[..r as usize].iter().enumerate() {
                if b != pattern(pos) {
                    return Err(format!(
                        "byte {} of the stream is {b}, not {}",
                        total + k as u64,
                        pattern(pos)
                    ));
                }
                pos += 1;
                if pos == size {
                    pos = 0;
                }
            }
        }
        total += r as u64;
    }
}

// --------------------------------------------------------------- sender --

/// Counters of one sender; differenced over the measured window.
#[derive(Clone, Copy, Default)]
struct Stats {
    /// Send calls (syscalls, or io_uring operations).
    calls: u64,
    /// Completion notifications read (error-queue messages or notification
    /// CQEs).
    notifs: u64,
    /// Sends those notifications covered.
    completed: u64,
    /// ... of which the kernel says it copied after all.
    copied: u64,
    /// Waits for the socket to take more (`poll`), in the syscall modes.
    waits: u64,
}

impl Stats {
    fn minus(self, o: Stats) -> Stats {
        Stats {
            calls: self.calls - o.calls,
            notifs: self.notifs - o.notifs,
            completed: self.completed - o.completed,
            copied: self.copied - o.copied,
            waits: self.waits - o.waits,
        }
    }
}

enum CaseErr {
    Unsupported(String),
    Failed(String),
}

impl From<io::Error> for CaseErr {
    fn from(e: io::Error) -> CaseErr {
        CaseErr::Failed(e.to_string())
    }
}

struct Uring {
    ring: IoUring,
    zc: bool,
    fixed: bool,
    report: bool,
    /// Notifications still to come.
    outstanding: i64,
    setup: &'static str,
}

enum Kind {
    Plain,
    MsgZc { issued: u64 },
    Uring(Box<Uring>),
}

struct Sender<'a> {
    fd: RawFd,
    body: &'a [u8],
    kind: Kind,
    st: Stats,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl<'a> Sender<'a> {
    fn new(mode: Mode, fd: RawFd, body: &'a [u8]) -> Result<Sender<'a>, CaseErr> {
        if matches!(mode, Mode::Send | Mode::MsgZerocopy) {
            // Non-blocking, as a reactor's sockets are: send until EAGAIN,
            // then wait.
            // SAFETY: fcntl on our descriptor.
            unsafe {
                let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
                cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
            }
        }
        let kind = match mode {
            Mode::Send => Kind::Plain,
            Mode::MsgZerocopy => {
                let one: libc::c_int = 1;
                // SAFETY: a setsockopt with a pointer to a live int.
                let r = unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        SO_ZEROCOPY,
                        &one as *const _ as *const libc::c_void,
                        4,
                    )
                };
                if r < 0 {
                    return Err(CaseErr::Unsupported(format!(
                        "SO_ZEROCOPY: {}",
                        io::Error::last_os_error()
                    )));
                }
                Kind::MsgZc { issued: 0 }
            }
            Mode::UringSend | Mode::UringSendZc | Mode::UringSendZcFixed => {
                let zc = mode != Mode::UringSend;
                let (ring, setup) = match IoUring::builder()
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .build(64)
                {
                    Ok(r) => (r, "defer_taskrun"),
                    Err(_) => match IoUring::new(64) {
                        Ok(r) => (r, "plain_ring"),
                        Err(e) => return Err(CaseErr::Unsupported(format!("io_uring_setup: {e}"))),
                    },
                };
                let mut probe = Probe::new();
                if let Err(e) = ring.submitter().register_probe(&mut probe) {
                    return Err(CaseErr::Unsupported(format!("io_uring probe: {e}")));
                }
                let code = if zc {
                    opcode::SendZc::CODE
                } else {
                    opcode::Send::CODE
                };
                if !probe.is_supported(code) {
                    return Err(CaseErr::Unsupported(format!(
                        "the kernel has no io_uring opcode {code}"
                    )));
                }
                let fixed = mode == Mode::UringSendZcFixed;
                if fixed {
                    let iov = libc::iovec {
                        iov_base: body.as_ptr() as *mut libc::c_void,
                        iov_len: body.len(),
                    };
                    // SAFETY: the body outlives the ring (both live for the
                    // case; the ring is dropped first, with the sender).
                    if let Err(e) = unsafe { ring.submitter().register_buffers(&[iov]) } {
                        return Err(CaseErr::Unsupported(format!("register_buffers: {e}")));
                    }
                }
                Kind::Uring(Box::new(Uring {
                    ring,
                    zc,
                    fixed,
                    report: true,
                    outstanding: 0,
                    setup,
                }))
            }
        };
        Ok(Sender {
            fd,
            body,
            kind,
            st: Stats::default(),
        })
    }

    fn note(&self) -> &'static str {
        match &self.kind {
            Kind::Uring(u) if u.zc && !u.report => "no_report_usage",
            Kind::Uring(u) => u.setup,
            _ => "",
        }
    }

    /// Sends the whole body once.
    fn body(&mut self) -> Result<(), CaseErr> {
        let len = self.body.len();
        let mut off = 0;
        while off < len {
            let p = self.body[off..].as_ptr() as *const libc::c_void;
            match &mut self.kind {
                Kind::Plain => {
                    // SAFETY: sends from the live body.
                    let r = unsafe { libc::send(self.fd, p, len - off, libc::MSG_NOSIGNAL) };
                    if r < 0 {
                        match errno() {
                            libc::EINTR => continue,
                            // ENOBUFS: a UDP datagram the device queue
                            // refused; again, as for a full socket.
                            libc::EAGAIN | libc::ENOBUFS => {
                                self.st.waits += 1;
                                wait_fd(self.fd, libc::POLLOUT, 1000)?;
                                continue;
                            }
                            _ => return Err(io::Error::last_os_error().into()),
                        }
                    }
                    self.st.calls += 1;
                    off += r as usize;
                }
                Kind::MsgZc { issued } => {
                    // SAFETY: sends from the body, which is neither changed
                    // nor freed before every completion was read (finish).
                    let r = unsafe {
                        libc::send(
                            self.fd,
                            p,
                            len - off,
                            libc::MSG_NOSIGNAL | libc::MSG_ZEROCOPY,
                        )
                    };
                    if r < 0 {
                        match errno() {
                            libc::EINTR => continue,
                            // The socket buffer is full: wait until it takes
                            // more (or completions are queued), as a
                            // reactor would.
                            libc::EAGAIN => {
                                self.st.waits += 1;
                                wait_fd(self.fd, libc::POLLOUT, 1000)?;
                                drain_errqueue(self.fd, &mut self.st)?;
                                continue;
                            }
                            // The socket's option memory is full of
                            // notifications: read them, then again.
                            libc::ENOBUFS => {
                                self.st.waits += 1;
                                wait_fd(self.fd, 0, 100)?;
                                drain_errqueue(self.fd, &mut self.st)?;
                                continue;
                            }
                            _ => return Err(io::Error::last_os_error().into()),
                        }
                    }
                    self.st.calls += 1;
                    *issued += 1;
                    off += r as usize;
                    drain_errqueue(self.fd, &mut self.st)?;
                }
                Kind::Uring(u) => {
                    let n = (len - off) as u32;
                    let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
                    let sqe = if u.zc {
                        let mut o =
                            opcode::SendZc::new(types::Fd(self.fd), p as *const u8, n).flags(flags);
                        if u.report {
                            o = o.zc_flags(IORING_SEND_ZC_REPORT_USAGE);
                        }
                        if u.fixed {
                            o = o.buf_index(Some(0));
                        }
                        o.build()
                    } else {
                        opcode::Send::new(types::Fd(self.fd), p as *const u8, n)
                            .flags(flags)
                            .build()
                    };
                    // SAFETY: the body outlives the operation and every
                    // notification (finish waits for them).
                    unsafe { u.ring.submission().push(&sqe.user_data(1)) }
                        .map_err(|_| CaseErr::Failed("submission queue full".into()))?;
                    self.st.calls += 1;
                    let mut res = None;
                    while res.is_none() {
                        match u.ring.submit_and_wait(1) {
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                            Err(e) => return Err(e.into()),
                        }
                        reap(u, &mut self.st, &mut res);
                    }
                    let r = res.unwrap_or(0);
                    if r == -libc::EINVAL && u.zc && u.report && self.st.calls == 1 {
                        // A kernel before 6.2 refuses REPORT_USAGE; the
                        // COPIED flags are then unknown.
                        u.report = false;
                        self.st.calls = 0;
                        continue;
                    }
                    if r == -libc::EOPNOTSUPP && self.st.calls == 1 {
                        return Err(CaseErr::Unsupported("SEND_ZC: EOPNOTSUPP".into()));
                    }
                    if r < 0 {
                        return Err(io::Error::from_raw_os_error(-r).into());
                    }
                    off += r as usize;
                }
            }
        }
        Ok(())
    }

    /// Waits (at most 5 s) until every zero-copy send has been reported
    /// complete, so that the body could be freed.
    fn finish(&mut self) -> Result<(), CaseErr> {
        let deadline = Instant::now() + Duration::from_secs(5);
        match &mut self.kind {
            Kind::Plain => Ok(()),
            Kind::MsgZc { issued } => {
                while self.st.completed < *issued {
                    if Instant::now() > deadline {
                        return Err(CaseErr::Failed(format!(
                            "{} of {} MSG_ZEROCOPY completions after 5 s",
                            self.st.completed, issued
                        )));
                    }
                    wait_fd(self.fd, 0, 100)?;
                    drain_errqueue(self.fd, &mut self.st)?;
                }
                Ok(())
            }
            Kind::Uring(u) => {
                while u.outstanding > 0 {
                    if Instant::now() > deadline {
                        return Err(CaseErr::Failed(format!(
                            "{} SEND_ZC notifications missing after 5 s",
                            u.outstanding
                        )));
                    }
                    let ts = types::Timespec::new().nsec(100_000_000);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    match u.ring.submitter().submit_with_args(1, &args) {
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                            ) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let mut none = None;
                    reap(u, &mut self.st, &mut none);
                }
                Ok(())
            }
        }
    }
}

/// Reads every completion queued on the ring: the send's result into `res`,
/// notifications into the counters.
fn reap(u: &mut Uring, st: &mut Stats, res: &mut Option<i32>) {
    let report = u.report;
    let mut out = 0i64;
    for c in u.ring.completion() {
        if cqueue::notif(c.flags()) {
            out -= 1;
            st.notifs += 1;
            st.completed += 1;
            if report && (c.result() as u32) & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                st.copied += 1;
            }
        } else {
            *res = Some(c.result());
            if cqueue::more(c.flags()) {
                out += 1;
            }
        }
    }
    u.outstanding += out;
}

/// Waits at most `ms` for `events` on `fd`, or for its error queue to hold
/// something (`POLLERR` is always reported).
fn wait_fd(fd: RawFd, events: libc::c_short, ms: i32) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 && errno() != libc::EINTR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads every MSG_ZEROCOPY completion queued on `fd`'s error queue.
fn drain_errqueue(fd: RawFd, st: &mut Stats) -> io::Result<()> {
    loop {
        let mut ctrl = [0u64; 16];
        // SAFETY: msghdr is plain data; zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&ctrl);
        // SAFETY: the control buffer is live and of the stated length.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if r < 0 {
            match errno() {
                libc::EAGAIN => return Ok(()),
                libc::EINTR => continue,
                _ => return Err(io::Error::last_os_error()),
            }
        }
        // SAFETY: walking the control messages the kernel wrote into
        // `ctrl`, with the libc macros; the error record is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
                if (level == libc::SOL_IP && ty == libc::IP_RECVERR)
                    || (level == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR)
                {
                    let e = std::ptr::read_unaligned(
                        libc::CMSG_DATA(c) as *const libc::sock_extended_err
                    );
                    if e.ee_origin == SO_EE_ORIGIN_ZEROCOPY && e.ee_errno == 0 {
                        let n = u64::from(e.ee_data.wrapping_sub(e.ee_info).wrapping_add(1));
                        st.notifs += 1;
                        st.completed += n;
                        if e.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0 {
                            st.copied += n;
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
}

// ----------------------------------------------------------------- run --

struct Row {
    path: String,
    rep: usize,
    size: usize,
    mode: Mode,
    status: String,
    note: String,
    bodies: u64,
    bytes: u64,
    secs: f64,
    send_cpu: u64,
    recv_cpu: u64,
    proc_cpu: u64,
    cpus_busy: u64,
    st: Stats,
}

const HEADER: &str = "path\trep\tsize\tmode\tstatus\tnote\tbodies\tbytes\tsecs\tsend_cpu_ns\trecv_cpu_ns\tproc_cpu_ns\tcpus_busy_ns\tcalls\tnotifs\tcompleted\tcopied\twaits";

impl Row {
    fn tsv(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.4}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.path,
            self.rep,
            self.size,
            self.mode.name(),
            self.status,
            if self.note.is_empty() {
                "-"
            } else {
                &self.note
            },
            self.bodies,
            self.bytes,
            self.secs,
            self.send_cpu,
            self.recv_cpu,
            self.proc_cpu,
            self.cpus_busy,
            self.st.calls,
            self.st.notifs,
            self.st.completed,
            self.st.copied,
            self.st.waits
        )
    }
}

#[derive(Clone, Copy)]
struct Snap {
    wall: Instant,
    send: u64,
    recv: u64,
    proc_: u64,
    cpus: u64,
}

fn snap(peer_clock: Option<libc::clockid_t>, cpus: &[usize]) -> Snap {
    Snap {
        wall: Instant::now(),
        send: clock_ns(libc::CLOCK_THREAD_CPUTIME_ID),
        recv: peer_clock.map_or(0, clock_ns),
        proc_: process_ns(),
        cpus: cpus_busy_ns(cpus),
    }
}

fn run(opts: &Opts) -> io::Result<Vec<Row>> {
    let peer = if opts.udp || opts.remote {
        None
    } else {
        Some(spawn_receiver(
            opts.recv_ns.clone(),
            opts.recv_cpu,
            opts.addr,
        )?)
    };
    let o = opts.clone();
    let h = std::thread::Builder::new()
        .name("zclab-send".into())
        .spawn(move || -> io::Result<Vec<Row>> {
            pin(o.send_cpu)?;
            enter_netns(o.send_ns.as_deref())?;
            let cpus: Vec<usize> = o.send_cpu.into_iter().chain(o.recv_cpu).collect();
            let mut rows = Vec::new();
            let mut out = io::stdout();
            writeln!(out, "{HEADER}")?;
            out.flush()?;
            for rep in 1..=o.reps {
                for &size in &o.sizes {
                    let body: Vec<u8> = (0..size).map(pattern).collect();
                    // The modes' order turns with each repetition, so that
                    // none is always first after a new body.
                    let k = (rep - 1) % o.modes.len();
                    let modes = o.modes[k..].iter().chain(&o.modes[..k]);
                    for &mode in modes {
                        let row = case(&o, peer.as_ref(), &cpus, rep, mode, &body);
                        writeln!(out, "{}", row.tsv())?;
                        out.flush()?;
                        rows.push(row);
                    }
                }
            }
            Ok(rows)
        })?;
    h.join()
        .map_err(|_| io::Error::other("the sender thread panicked"))?
}

fn connect(addr: Ipv4Addr, port: u16, udp: bool) -> io::Result<RawFd> {
    let ty = if udp {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: plain socket syscalls on a descriptor this function owns.
    unsafe {
        let fd = cvt(libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0))?;
        let a = sockaddr(addr, port);
        if libc::connect(
            fd,
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) < 0
        {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        if !udp {
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                4,
            );
        }
        Ok(fd)
    }
}

fn case(o: &Opts, peer: Option<&Peer>, cpus: &[usize], rep: usize, mode: Mode, body: &[u8]) -> Row {
    let mut row = Row {
        path: o.path.clone(),
        rep,
        size: body.len(),
        mode,
        status: "ok".into(),
        note: String::new(),
        bodies: 0,
        bytes: 0,
        secs: 0.0,
        send_cpu: 0,
        recv_cpu: 0,
        proc_cpu: 0,
        cpus_busy: 0,
        st: Stats::default(),
    };
    if let Some(p) = peer {
        p.verify
            .store(if o.verify { body.len() } else { 0 }, Ordering::SeqCst);
    }
    let port = peer.map_or(o.port, |p| p.port);
    let clock = peer.map(|p| p.clock);
    let fd = match connect(o.addr, port, o.udp) {
        Ok(fd) => fd,
        Err(e) => {
            row.status = format!("error:connect {e}");
            return row;
        }
    };
    let mut sent = 0u64;
    let r = (|| -> Result<(), CaseErr> {
        let mut s = Sender::new(mode, fd, body)?;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < o.warmup {
            s.body()?;
            sent += body.len() as u64;
        }
        let st0 = s.st;
        let t0 = snap(clock, cpus);
        loop {
            s.body()?;
            sent += body.len() as u64;
            row.bodies += 1;
            if t0.wall.elapsed().as_secs_f64() >= o.secs {
                break;
            }
        }
        s.finish()?;
        let t1 = snap(clock, cpus);
        row.bytes = row.bodies * body.len() as u64;
        row.secs = (t1.wall - t0.wall).as_secs_f64();
        row.send_cpu = t1.send - t0.send;
        row.recv_cpu = t1.recv - t0.recv;
        row.proc_cpu = t1.proc_ - t0.proc_;
        row.cpus_busy = t1.cpus.saturating_sub(t0.cpus);
        row.st = s.st.minus(st0);
        row.note = s.note().into();
        Ok(())
    })();
    let got = peer.map(|p| {
        // SAFETY: our descriptor; the receiver sees the end of the stream.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
        p.done.recv_timeout(Duration::from_secs(20))
    });
    // SAFETY: our descriptor, no operation in flight (the sender is gone).
    unsafe { libc::close(fd) };
    match r {
        Err(CaseErr::Unsupported(why)) => row.status = format!("unsupported:{why}"),
        Err(CaseErr::Failed(why)) => row.status = format!("error:{why}"),
        Ok(()) => {}
    }
    match got {
        // UDP: no reader; every datagram was taken whole (a send returns
        // the datagram's length or fails).
        None => {}
        Some(Ok(Ok(n))) if n == sent => {}
        Some(Ok(Ok(n))) if row.status == "ok" => {
            row.status = format!("error:sent {sent} bytes, the peer read {n}");
        }
        // The case failed already; that is the error to report.
        Some(Ok(Ok(_))) => {}
        Some(Ok(Err(e))) => row.status = format!("error:receiver: {e}"),
        Some(Err(_)) => row.status = "error:the receiver did not finish in 20 s".into(),
    }
    row.status = row.status.replace(['\t', '\n'], " ");
    row
}

// ---------------------------------------------------------------- recv --

/// `zclab recv --addr A --port N`: the reader for `run --remote` on another
/// host; reads each connection to its end and says how many bytes came.
fn recv(o: &Opts) {
    let (lfd, port) = listener(o.addr, o.port).unwrap_or_else(|e| {
        eprintln!("zclab recv: {e}");
        std::process::exit(1);
    });
    eprintln!("zclab recv: listening on {}:{port}", o.addr);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        // SAFETY: accept on our listener; the null address pointers are
        // allowed.
        let fd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            continue;
        }
        let r = read_all(fd, &mut buf, 0);
        // SAFETY: the accepted descriptor is ours.
        unsafe { libc::close(fd) };
        eprintln!("zclab recv: {r:?} bytes");
    }
}

// --------------------------------------------------------------- check --

fn check() {
    let tcp = Opts {
        path: "check".into(),
        // A body that ends inside a page as well as a whole number of them.
        sizes: vec![64 << 10, 300_001],
        secs: 0.1,
        warmup: 0.02,
        reps: 1,
        verify: true,
        ..Opts::default()
    };
    // The UDP code of the `sink` path, against a local socket that is never
    // read (datagrams past its buffer are dropped, and none is refused).
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| {
        eprintln!("zclab check: udp bind: {e}");
        std::process::exit(1);
    });
    let udp = Opts {
        path: "check-udp".into(),
        sizes: vec![4096, 65_000],
        secs: 0.05,
        warmup: 0.01,
        reps: 1,
        udp: true,
        port: hole.local_addr().map(|a| a.port()).unwrap_or(9),
        ..Opts::default()
    };
    let mut rows = Vec::new();
    for o in [&tcp, &udp] {
        rows.extend(run(o).unwrap_or_else(|e| {
            eprintln!("zclab check: {e}");
            std::process::exit(1);
        }));
    }
    let mut bad = 0;
    for r in &rows {
        let ok = r.status == "ok" && r.bodies > 0 && r.send_cpu > 0;
        // Only the zero-copy and io_uring modes may be missing from a kernel
        // (or a container that forbids io_uring).
        let missing = r.status.starts_with("unsupported") && r.mode != Mode::Send;
        if !ok && !missing {
            eprintln!(
                "zclab check: {} {} {}: {}",
                r.path,
                r.mode.name(),
                r.size,
                r.status
            );
            bad += 1;
        }
    }
    let want = (tcp.sizes.len() + udp.sizes.len()) * Mode::ALL.len();
    if rows.len() != want || bad > 0 {
        std::process::exit(1);
    }
    drop(hole);
    eprintln!(
        "zclab check: {} cases, every TCP byte as sent, every datagram taken",
        rows.len()
    );
}

// ----------------------------------------------------------- summarize --

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Parsed {
    path: String,
    rep: usize,
    size: usize,
    mode: Mode,
    status: String,
    secs: f64,
    bytes: f64,
    send: f64,
    total: f64,
    completed: u64,
    copied: u64,
    calls: u64,
}

/// One mode's figures in one repetition: bytes/s, sender and total CPU ns
/// per KiB.
type Figs = (f64, f64, f64);

fn summarize(files: &[String]) {
    let mut rows = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| {
            eprintln!("zclab summarize: {f}: {e}");
            std::process::exit(1);
        });
        for line in text.lines() {
            let c: Vec<&str> = line.split('\t').collect();
            if c.len() < 18 || c[0] == "path" {
                continue;
            }
            let Some(mode) = Mode::parse(c[3]) else {
                continue;
            };
            let num = |i: usize| c[i].parse::<f64>().unwrap_or(f64::NAN);
            rows.push(Parsed {
                path: c[0].into(),
                rep: c[1].parse().unwrap_or(0),
                size: c[2].parse().unwrap_or(0),
                mode,
                status: c[4].into(),
                secs: num(8),
                bytes: num(7),
                send: num(9),
                total: num(11),
                calls: c[13].parse().unwrap_or(0),
                completed: c[15].parse().unwrap_or(0),
                copied: c[16].parse().unwrap_or(0),
            });
        }
    }
    // CPU ns per KiB sent.
    let figs = |r: &Parsed| -> Figs {
        let kib = r.bytes / 1024.0;
        (r.bytes / r.secs, r.send / kib, r.total / kib)
    };
    let by_rep: BTreeMap<(String, usize, usize, Mode), Figs> = rows
        .iter()
        .filter(|r| r.status == "ok")
        .map(|r| ((r.path.clone(), r.rep, r.size, r.mode), figs(r)))
        .collect();
    // In the order they were run.
    let mut paths: Vec<String> = Vec::new();
    for r in &rows {
        if !paths.contains(&r.path) {
            paths.push(r.path.clone());
        }
    }
    for path in paths {
        println!(
            "Path `{path}`. Medians over the repetitions. A ratio is the median of the \
             per-repetition ratios against the named mode measured in the same repetition \
             (their min–max in brackets): ×send against plain `send`, ×twin against the \
             same mechanism copying (`send` for `msg_zerocopy`, `uring_send` for \
             `uring_send_zc*`). Below 1 is less CPU per byte, or more throughput."
        );
        println!();
        println!(
            "| body | mode | MB/s | sender CPU ns/KiB | total CPU ns/KiB | throughput ×send \
             | sender CPU/byte ×send | total CPU/byte ×send | throughput ×twin \
             | total CPU/byte ×twin | sends/body | completions reported COPIED |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut keys: Vec<(usize, Mode)> = rows
            .iter()
            .filter(|r| r.path == path)
            .map(|r| (r.size, r.mode))
            .collect();
        keys.sort();
        keys.dedup();
        for (size, mode) in keys {
            let rs: Vec<&Parsed> = rows
                .iter()
                .filter(|r| r.path == path && r.size == size && r.mode == mode)
                .collect();
            let ok: Vec<&Parsed> = rs.iter().copied().filter(|r| r.status == "ok").collect();
            let body = if size % 1024 == 0 {
                format!("{} KiB", size / 1024)
            } else {
                format!("{size} B")
            };
            if ok.is_empty() {
                let why = rs.first().map(|r| r.status.as_str()).unwrap_or("?");
                println!("| {body} | {} | {why} | | | | | | | | | |", mode.name());
                continue;
            }
            let med = |f: &dyn Fn(&Figs) -> f64| {
                median(&mut ok.iter().map(|r| f(&figs(r))).collect::<Vec<_>>())
            };
            let ratio = |against: Mode, f: &dyn Fn(&Figs, &Figs) -> f64| -> String {
                if against == mode {
                    return "1".into();
                }
                let mut v: Vec<f64> = ok
                    .iter()
                    .filter_map(|r| {
                        by_rep
                            .get(&(r.path.clone(), r.rep, r.size, against))
                            .map(|b| f(&figs(r), b))
                    })
                    .collect();
                if v.is_empty() {
                    return "?".into();
                }
                let m = median(&mut v);
                format!("{m:.2} [{:.2}–{:.2}]", v[0], v[v.len() - 1])
            };
            let twin = match mode {
                Mode::Send | Mode::MsgZerocopy => Mode::Send,
                _ => Mode::UringSend,
            };
            let bodies: f64 = ok.iter().map(|r| r.bytes / r.size as f64).sum();
            let calls: u64 = ok.iter().map(|r| r.calls).sum();
            let completed: u64 = ok.iter().map(|r| r.completed).sum();
            let copied: u64 = ok.iter().map(|r| r.copied).sum();
            let copied_s = match mode {
                Mode::Send | Mode::UringSend => "–".to_string(),
                _ if completed == 0 => "none reported".to_string(),
                _ => format!(
                    "{copied} of {completed} ({:.0}%)",
                    100.0 * copied as f64 / completed as f64
                ),
            };
            println!(
                "| {body} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {:.2} | {} |",
                mode.name(),
                med(&|f| f.0 / 1e6),
                med(&|f| f.1),
                med(&|f| f.2),
                ratio(Mode::Send, &|f, b| f.0 / b.0),
                ratio(Mode::Send, &|f, b| f.1 / b.1),
                ratio(Mode::Send, &|f, b| f.2 / b.2),
                ratio(twin, &|f, b| f.0 / b.0),
                ratio(twin, &|f, b| f.2 / b.2),
                calls as f64 / bodies,
                copied_s
            );
        }
        println!();
    }
}
