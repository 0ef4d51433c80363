//! The syscalls under [`super`], each wrapped once: errno becomes
//! `io::Error`, descriptors come back owned.

use std::io::{self, IoSlice};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A data-path syscall through `syscall(2)` rather than its glibc wrapper.
///
/// glibc's `recv`, `send`, `sendmsg`, `epoll_wait` and `splice` are
/// cancellation points: before glibc 2.38 each brackets the call with two
/// atomic read-modify-writes of the thread's cancellation state
/// (`__pthread_enable_asynccancel` / `__pthread_disable_asynccancel`), about
/// 2.5% of a shard's CPU for a small proxied request (perf, glibc 2.36).
/// coregate never cancels a thread; `syscall(2)` makes the same call and
/// sets `errno` the same way, without them. Every argument is widened to a
/// `c_long`, the width `syscall(2)` reads.
macro_rules! raw_syscall {
    ($nr:expr $(, $arg:expr)* $(,)?) => {
        libc::syscall($nr $(, $arg as libc::c_long)*) as libc::ssize_t
    };
}

pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned from here on.
    let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn epoll_add(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    epoll_add_events(
        epfd,
        fd,
        token,
        (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
    )
}

/// Registers `fd` for input only, edge-triggered (an eventfd, always
/// writable, would otherwise report output at once).
pub fn epoll_add_input(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    epoll_add_events(epfd, fd, token, (libc::EPOLLIN | libc::EPOLLET) as u32)
}

fn epoll_add_events(epfd: RawFd, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid event for the duration of the call.
    check(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

/// `epoll_wait` with a zero timeout: what is ready now.
pub fn epoll_wait_now(epfd: RawFd, events: &mut [libc::epoll_event]) -> io::Result<usize> {
    let max = events.len().min(i32::MAX as usize) as libc::c_int;
    loop {
        // SAFETY: `events` has room for `max` entries.
        let r = unsafe { epoll_wait_raw(epfd, events.as_mut_ptr(), max, 0) };
        match check_size(r) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `epoll_wait(2)` through [`raw_syscall!`]; where the architecture has no
/// `epoll_wait` syscall (aarch64), `epoll_pwait` with no signal mask, which
/// the kernel treats as the same call.
///
/// # Safety
/// `events` has room for `max` entries.
unsafe fn epoll_wait_raw(
    epfd: RawFd,
    events: *mut libc::epoll_event,
    max: libc::c_int,
    timeout_ms: libc::c_int,
) -> libc::ssize_t {
    #[cfg(target_arch = "x86_64")]
    return raw_syscall!(libc::SYS_epoll_wait, epfd, events, max, timeout_ms);
    #[cfg(not(target_arch = "x86_64"))]
    return raw_syscall!(
        libc::SYS_epoll_pwait,
        epfd,
        events,
        max,
        timeout_ms,
        std::ptr::null::<libc::sigset_t>(),
        0usize,
    );
}

/// Whether `epoll_pwait2` (Linux 5.11) was found missing; then timed waits
/// round up to whole milliseconds with `epoll_wait`.
static NO_PWAIT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `epoll_wait` for at most `timeout` (to the microsecond where the kernel
/// has `epoll_pwait2`). An interrupted wait returns 0 events: the caller
/// looks again.
pub fn epoll_wait_for(
    epfd: RawFd,
    events: &mut [libc::epoll_event],
    timeout: Duration,
) -> io::Result<usize> {
    use std::sync::atomic::Ordering;
    let max = events.len().min(i32::MAX as usize) as libc::c_int;
    if !NO_PWAIT2.load(Ordering::Relaxed) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `events` has room for `max` entries; `ts` outlives the
        // call; a null signal mask leaves the thread's mask alone.
        let r = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                epfd,
                events.as_mut_ptr(),
                max,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => return Ok(0),
            Some(libc::ENOSYS) => NO_PWAIT2.store(true, Ordering::Relaxed),
            _ => return Err(e),
        }
    }
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `events` has room for `max` entries.
    let r = unsafe { epoll_wait_raw(epfd, events.as_mut_ptr(), max, ms) };
    match check_size(r) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// A non-blocking, close-on-exec eventfd with a count of 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned from here on.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd's count. A full count (`EAGAIN`, after 2^64 - 2
/// adds nobody read) already makes it readable, so that is not an error.
pub fn eventfd_add(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    unsafe { libc::write(fd, (&one as *const u64).cast(), size_of::<u64>()) };
}

/// Reads an eventfd's count back to 0 (nothing happens if it is 0).
pub fn eventfd_clear(fd: RawFd) {
    let mut n: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    unsafe { libc::read(fd, (&mut n as *mut u64).cast(), size_of::<u64>()) };
}

pub fn dup(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: plain syscall; the caller owns the result.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscalls on a descriptor the caller owns.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

/// Attaches a classic BPF socket filter that drops every pure SYN (SYN set,
/// ACK not) and lets every other packet through. On a listening TCP socket
/// the kernel runs it on what arrives for the listener and for its
/// handshakes under way: a new connection can no longer start, while one
/// whose SYN was answered before completes with its last ACK (or its first
/// data) and joins the backlog. Accepted sockets inherit the filter, which
/// never drops anything an established connection should take.
///
/// The program sees the packet from its TCP header on: byte 13 holds the
/// flags (SYN 0x02, ACK 0x10).
pub fn attach_drop_syn_filter(fd: RawFd) -> io::Result<()> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut code = [
        // A = flags byte
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13),
        // A &= SYN | ACK
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, 0x12),
        // A == SYN: drop (next), else keep (skip one)
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, 0x02),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` and the code it points to outlive the call (the
    // kernel copies the program).
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    check_size(unsafe {
        raw_syscall!(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            libc::MSG_DONTWAIT,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    })
}

/// Looks at the next byte without taking it: `Ok(1)` when one waits,
/// `Ok(0)` at end of stream, `WouldBlock` when nothing is there.
pub fn peek(fd: RawFd) -> io::Result<usize> {
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is writable for its length.
    check_size(unsafe {
        raw_syscall!(
            libc::SYS_recvfrom,
            fd,
            byte.as_mut_ptr(),
            1usize,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    })
}

pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length; MSG_NOSIGNAL: a closed peer
    // is an EPIPE error, not a signal.
    check_size(unsafe {
        raw_syscall!(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0usize,
        )
    })
}

pub fn sendmsg(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: the iovecs point into `bufs`, which outlive the call.
    check_size(unsafe {
        raw_syscall!(
            libc::SYS_sendmsg,
            fd,
            &msg as *const libc::msghdr,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

pub fn shutdown(fd: RawFd, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall.
    check(unsafe { libc::shutdown(fd, how) })?;
    Ok(())
}

pub fn set_nodelay(fd: RawFd, on: bool) -> io::Result<()> {
    let v: libc::c_int = on.into();
    // SAFETY: `v` lives across the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Sets a TCP socket's congestion control (`TCP_CONGESTION`) by name, as
/// the kernel knows it (`cubic`, `reno`, `bbr`). Before `connect` the
/// choice is made whole: the algorithm is set up when the connection is.
pub fn set_congestion_control(fd: RawFd, name: &str) -> io::Result<()> {
    // SAFETY: `name` lives across the call and its length is passed; the
    // kernel copies at most that many bytes.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The pending error of a socket (`SO_ERROR`), which also clears it.
pub fn socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of their sizes.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok((v != 0).then(|| io::Error::from_raw_os_error(v)))
}

/// A non-blocking, close-on-exec TCP socket for `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall.
    let fd = check(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts a connect: `true` when it completed at once, `false` when it is in
/// progress.
pub fn connect(fd: RawFd, addr: &SocketAddr) -> io::Result<bool> {
    let (storage, len) = to_sockaddr(addr);
    loop {
        // SAFETY: `storage` holds a valid address of `len` bytes.
        let r =
            unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINPROGRESS) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Accepts one connection: non-blocking, close-on-exec.
pub fn accept(fd: RawFd) -> io::Result<(OwnedFd, SocketAddr)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid for writes.
    let c = check(unsafe {
        libc::accept4(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: `c` is a fresh descriptor owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(c) };
    let peer = from_sockaddr(&storage).unwrap_or(SocketAddr::new(
        std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        0,
    ));
    Ok((owned, peer))
}

pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid for writes.
    check(unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    from_sockaddr(&storage).ok_or_else(|| io::Error::other("peer is not an IP address"))
}

fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The kernel's scheduler tick (1/`CONFIG_HZ`): the resolution of
/// `CLOCK_MONOTONIC_COARSE`, which advances once per tick. None if the
/// kernel does not say.
pub fn tick() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for a write of a timespec.
    check(unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) }).ok()?;
    let d = Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    );
    (!d.is_zero()).then_some(d)
}

/// Sets the calling thread's timer slack (`PR_SET_TIMERSLACK`): how much
/// later than asked the kernel may end its timed waits (`epoll_wait`,
/// `poll`, `nanosleep`; not io_uring timeouts). Zero asks for none (the
/// kernel's least, 1 ns: a zero would restore the thread's default).
pub fn set_timer_slack(d: Duration) -> io::Result<()> {
    let ns = libc::c_ulong::try_from(d.as_nanos())
        .unwrap_or(libc::c_ulong::MAX)
        .max(1);
    // SAFETY: plain prctl on the calling thread.
    check(unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) })?;
    Ok(())
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned by nobody
    // else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets a pipe's capacity (`F_SETPIPE_SZ`); returns the capacity the
/// kernel chose (at least `bytes`, rounded up to a power of two pages).
pub fn set_pipe_size(fd: RawFd, bytes: usize) -> io::Result<usize> {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: plain syscall on a descriptor the caller owns.
    let got = check(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, want) })?;
    Ok(got as usize)
}

/// Bytes waiting in a pipe (`FIONREAD`).
#[cfg(test)]
pub fn pipe_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `n` is valid for a write of an int.
    check(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) })?;
    Ok(n.max(0) as usize)
}

/// Moves up to `len` bytes from `from` to `to`, one of which is a pipe,
/// without copying them to user space: `SPLICE_F_MOVE | SPLICE_F_NONBLOCK`.
/// `WouldBlock` when the source has nothing or the destination no room.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall; no offsets (both ends are streams).
    check_size(unsafe {
        raw_syscall!(
            libc::SYS_splice,
            from,
            std::ptr::null_mut::<libc::loff_t>(),
            to,
            std::ptr::null_mut::<libc::loff_t>(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// `write(2)`: for a pipe.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    check_size(unsafe { raw_syscall!(libc::SYS_write, fd, buf.as_ptr(), buf.len()) })
}
