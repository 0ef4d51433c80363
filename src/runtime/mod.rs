//! Shards: where a request's journey starts. One glommio executor per shard,
//! pinned to its CPU, each with its own listening socket on every configured
//! address (SO_REUSEPORT), its own copy of the plan, upstream pools and
//! counters, and a crossbeam control inbox. The main thread only starts shards,
//! forwards signals into their inboxes and waits for them to finish.

pub mod shard;

use crate::plan::Plan;
use crossbeam_channel::{Receiver, Select, Sender};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::time::{Duration, Instant};

/// Locked memory glommio registers per executor for io_uring buffers. We do
/// no file I/O, so the minimum is plenty (see shared/DESIGN.md).
const IO_MEMORY: usize = 512 * 1024;

/// Messages a shard accepts on its control inbox.
#[derive(Debug, Clone)]
pub enum Control {
    /// Stop accepting, close idle connections, let in-flight requests finish
    /// within the drain timeout, then stop.
    Shutdown,
    /// Send what the shard has counted (the admin listener's scrape).
    Snapshot(Sender<crate::observe::snapshot::ShardSnapshot>),
    /// An `@connections` request for a WebSocket connection this shard
    /// holds (the admin listener's push, describe or close).
    WebSocket(crate::gateway::websocket::Command),
}

/// A running gateway: its shards and their inboxes.
pub struct Server {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    inboxes: Vec<Sender<Control>>,
    /// The bound address for each `listen` entry (port 0 resolved).
    pub local_addrs: Vec<SocketAddr>,
    /// The bound address for each `server.tls.listen` entry.
    pub tls_addrs: Vec<SocketAddr>,
    /// The usage coordinator, joined after the shards for its last flush.
    usage: crate::policy::usage::coordinator::Running,
    /// The access-log writers, finished after the shards.
    access_log: Option<crate::accesslog::writer::Writers>,
}

fn domain_of(addr: SocketAddr) -> Domain {
    if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    }
}

fn listener_socket(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let sock = Socket::new(domain_of(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock)
}

/// Fails with `AddrInUse` when some socket already listens on `addr` (or
/// on a wildcard address with its port). With SO_REUSEPORT on every shard
/// socket, our own bind would succeed beside another coregate's listeners
/// (same user) and the kernel would split new connections between the two
/// processes. A probe without SO_REUSEPORT conflicts with any listener there;
/// SO_REUSEADDR keeps TIME_WAIT and closing connections of an earlier run
/// from counting. The probe is closed again before our sockets bind, so two
/// gateways started in the same instant could both pass.
fn probe_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(domain_of(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())
}

/// The error for a listen address `addr` that cannot be bound; `shared`
/// is `server.share_listen_addresses`.
fn listen_error(addr: SocketAddr, shared: bool, e: io::Error) -> io::Error {
    let why = match e.kind() {
        io::ErrorKind::AddrInUse if shared => "address in use: another process listens on it \
             and does not share it (sharing needs SO_REUSEPORT on both sockets and the same \
             user)"
            .to_string(),
        io::ErrorKind::AddrInUse => "address in use: another process already listens on it \
             (or on a wildcard address with the same port). Stop it or choose another address; \
             to share the address with another coregate on purpose (a zero-downtime upgrade), \
             set server.share_listen_addresses = true"
            .to_string(),
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {why}"))
}

/// Binds one socket per shard per address (plain, then TLS). Port 0 is
/// resolved by the first bind and reused by the others so every shard
/// serves the same port. Each shard gets `(fd, is_tls)` per address.
/// Unless `server.share_listen_addresses` is set, every address with a
/// fixed port is first checked to be free ([`probe_free`]), all of them
/// before any of ours is bound.
#[allow(clippy::type_complexity)]
fn bind_all(
    plan: &Plan,
) -> io::Result<(Vec<Vec<(RawFd, bool)>>, Vec<SocketAddr>, Vec<SocketAddr>)> {
    let mut per_shard: Vec<Vec<(Socket, bool)>> =
        (0..plan.server.shards).map(|_| Vec::new()).collect();
    let mut local_addrs = Vec::new();
    let mut tls_addrs = Vec::new();
    let tls_listen = plan.server.tls.iter().flat_map(|t| &t.listen);
    let all: Vec<(SocketAddr, bool)> = plan
        .server
        .listen
        .iter()
        .map(|&a| (a, false))
        .chain(tls_listen.map(|&a| (a, true)))
        .collect();
    if !plan.server.share_listen_addresses {
        // Port 0 needs no probe: the kernel picks a port nobody listens on.
        for &(addr, _) in all.iter().filter(|(a, _)| a.port() != 0) {
            probe_free(addr).map_err(|e| listen_error(addr, false, e))?;
        }
    }
    for (want, tls) in all {
        let mut addr = want;
        for (i, shard_socks) in per_shard.iter_mut().enumerate() {
            let sock = listener_socket(addr, plan.server.backlog)
                .map_err(|e| listen_error(addr, plan.server.share_listen_addresses, e))?;
            if i == 0 {
                addr = sock
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("listener has no IP address"))?;
                if tls {
                    tls_addrs.push(addr);
                } else {
                    local_addrs.push(addr);
                }
            }
            shard_socks.push((sock, tls));
        }
    }
    let fds = per_shard
        .into_iter()
        .map(|socks| {
            socks
                .into_iter()
                .map(|(s, tls)| (s.into_raw_fd(), tls))
                .collect()
        })
        .collect();
    Ok((fds, local_addrs, tls_addrs))
}

impl Server {
    /// Binds every listener and starts every shard. Returns once all shards
    /// are accepting, or with the first shard's reason for not starting.
    pub fn start(plan: Plan) -> io::Result<Server> {
        let (fds, local_addrs, tls_addrs) = bind_all(&plan)?;
        let mut handles = Vec::new();
        let mut inboxes = Vec::new();
        // One per shard: a disconnected one says which shard ended unready.
        let mut readies = Vec::new();
        let mut fds_iter = fds.into_iter();
        // Access-log files open before any shard runs: one that cannot be
        // opened stops the start.
        let writers = crate::accesslog::writer::Writers::start(&plan.access_log.destinations)?;
        // The usage store opens first: an unreadable one stops the start.
        let (usage_links, usage) =
            crate::policy::usage::coordinator::start(&plan.policies.usage, plan.server.shards)
                .map_err(io::Error::other)?;
        let mut usage_links = usage_links.into_iter();
        let mut links =
            crate::policy::throttle::links(&plan.policies.throttle, plan.server.shards).into_iter();
        for id in 0..plan.server.shards {
            let shard_fds = fds_iter.next().unwrap_or_default();
            let (Some(link), Some(usage_link)) = (links.next(), usage_links.next()) else {
                return Err(io::Error::other("throttle links: one per shard expected"));
            };
            let (tx, rx): (Sender<Control>, Receiver<Control>) = crossbeam_channel::unbounded();
            let shard_plan = plan.clone();
            let sinks = writers.sinks.clone();
            let (ready, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
            let cpu = plan.server.cpus[id];
            let placement = if plan.server.pin_shards {
                Placement::Fixed(cpu)
            } else {
                Placement::Unbound
            };
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("coregate-shard-{id}"))
                .io_memory(IO_MEMORY)
                .spawn(move || async move {
                    crate::log::set_shard(id);
                    let links = shard::Links {
                        throttle: link,
                        usage: usage_link,
                        access_log: sinks,
                    };
                    shard::run(id, shard_plan, shard_fds, rx, ready, links).await;
                });
            match spawned {
                Ok(h) => {
                    handles.push(h);
                    inboxes.push(tx);
                    readies.push(ready_rx);
                }
                Err(e) => {
                    drop(usage_links);
                    let server = Server {
                        handles,
                        inboxes,
                        local_addrs,
                        tls_addrs,
                        usage,
                        access_log: Some(writers),
                    };
                    server.shutdown();
                    server.join();
                    return Err(io::Error::other(format!(
                        "cannot start shard {id} on CPU {cpu}: {e}"
                    )));
                }
            }
        }
        let server = Server {
            handles,
            inboxes,
            local_addrs,
            tls_addrs,
            usage,
            access_log: Some(writers),
        };
        wait_ready(server, &readies, &plan.server.cpus)
    }

    /// A sender to each shard's control inbox, in shard order.
    pub fn inboxes(&self) -> Vec<Sender<Control>> {
        self.inboxes.clone()
    }

    /// Asks every shard to drain and stop.
    pub fn shutdown(&self) {
        for inbox in &self.inboxes {
            let _ = inbox.send(Control::Shutdown);
        }
    }

    /// Has every access-log file reopened (SIGUSR1, after logrotate
    /// renamed it).
    pub fn reopen_logs(&self) {
        if let Some(w) = &self.access_log {
            w.reopen();
        }
    }

    /// Waits for every shard to stop.
    pub fn join(self) {
        self.join_reporting(None);
    }

    /// As [`Server::join`]; a shard error worded exactly as `reported` (the
    /// error a failed start already returns) is not logged again: when the
    /// process's limits are the cause, every shard fails alike.
    fn join_reporting(mut self, reported: Option<&str>) {
        let access_log = self.access_log.take();
        for h in self.handles {
            if let Err(e) = h.join() {
                let e = describe(&e);
                if reported != Some(e.as_str()) {
                    crate::log!("error", "shard stopped with an error: {e}");
                }
            }
        }
        // Every shard's link is gone with its executor: the coordinator
        // writes what they reported and stops.
        if let Some(t) = self.usage.thread {
            if t.join().is_err() {
                crate::log!("error", "the usage thread panicked");
            }
        }
        // The shards have handed over their last lines.
        if let Some(w) = access_log {
            w.finish();
        }
    }
}

/// How long a shard may take from its spawn to accepting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until every shard has reported that it accepts (`readies[i]` is
/// shard i's channel). A shard that reports an error, or whose executor ends
/// without reporting (glommio could not build it, or it panicked), stops the
/// start at once with that shard's reason; the other shards are stopped.
fn wait_ready(
    mut server: Server,
    readies: &[Receiver<Result<(), String>>],
    cpus: &[usize],
) -> io::Result<Server> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pending: Vec<usize> = (0..readies.len()).collect();
    while !pending.is_empty() {
        let mut select = Select::new();
        for &id in &pending {
            select.recv(&readies[id]);
        }
        let Ok(op) = select.select_deadline(deadline) else {
            let ids: Vec<String> = pending.iter().map(|id| id.to_string()).collect();
            // Not joined: a shard stuck in its start would never return.
            server.shutdown();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "shard(s) {} did not start within {} s",
                    ids.join(", "),
                    START_TIMEOUT.as_secs()
                ),
            ));
        };
        let id = pending.swap_remove(op.index());
        let failure = match op.recv(&readies[id]) {
            Ok(Ok(())) => continue,
            // shard::run's own reason (it names the shard).
            Ok(Err(why)) => (why, None),
            // The sender went with the executor: its join handle has why.
            Err(_) => {
                let cpu = cpus.get(id).copied().unwrap_or_default();
                let handle = server.handles.remove(id);
                server.inboxes.remove(id);
                match handle.join() {
                    Err(e) => {
                        let what = describe(&e);
                        let why = match start_hint(&e) {
                            Some(hint) => {
                                format!("shard {id} (CPU {cpu}) could not start: {what}. {hint}")
                            }
                            None => format!("shard {id} (CPU {cpu}) could not start: {what}"),
                        };
                        (why, Some(what))
                    }
                    Ok(()) => (
                        format!("shard {id} (CPU {cpu}) stopped before it started accepting"),
                        None,
                    ),
                }
            }
        };
        let (why, glommio_error) = failure;
        server.shutdown();
        server.join_reporting(glommio_error.as_deref());
        return Err(io::Error::other(why));
    }
    Ok(server)
}

/// A shard's error from glommio, with a panic's message when it panicked.
fn describe(e: &glommio::GlommioError<()>) -> String {
    if let glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(p)) = e {
        let msg = p
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| p.downcast_ref::<String>().map(String::as_str));
        if let Some(msg) = msg {
            return format!("it panicked: {msg}");
        }
    }
    e.to_string()
}

/// glommio 0.9 builds no executor while the soft RLIMIT_MEMLOCK is below
/// this (`MIN_MEMLOCK_LIMIT` in its sys/uring.rs).
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// This process's soft RLIMIT_MEMLOCK in bytes; `None` when unlimited or
/// unknown.
fn memlock_limit() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    (rc == 0 && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}

/// What to change when an executor could not be built for a reason outside
/// coregate: the process's locked-memory limit, or io_uring being refused.
fn start_hint(e: &glommio::GlommioError<()>) -> Option<String> {
    use glommio::{GlommioError, ReactorErrorKind};
    let raise = |kib: u64| {
        format!(
            "raise it with `ulimit -l {kib}` (or more) in the shell that starts coregate, \
             LimitMEMLOCK={kib}K in its systemd unit, or a memlock line in \
             /etc/security/limits.conf"
        )
    };
    // glommio 0.9 hands its MemLockLimit error back as an io::Error that
    // only has the variant's name in its text.
    let memlock = match e {
        GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(have, need)) => {
            Some((Some(*have), *need))
        }
        _ if e.to_string().contains("MemLockLimit") => Some((memlock_limit(), GLOMMIO_MIN_MEMLOCK)),
        _ => None,
    };
    if let Some((have, need)) = memlock {
        let have = match have {
            Some(b) => format!("{} KiB", b / 1024),
            None => "an unknown limit".to_string(),
        };
        return Some(format!(
            "glommio needs a locked-memory limit (RLIMIT_MEMLOCK) of at least {} KiB and this \
             process has {have}: {}",
            need / 1024,
            raise(need / 1024)
        ));
    }
    match e.raw_os_error() {
        Some(libc::ENOMEM) => Some(format!(
            "before Linux 5.12, io_uring rings count against the locked-memory limit \
             (RLIMIT_MEMLOCK): {}",
            raise(8192)
        )),
        Some(libc::EPERM) => Some(
            "io_uring was refused: it may be disabled (sysctl kernel.io_uring_disabled) or \
             blocked by a seccomp profile (as in containers)"
                .to_string(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{describe, start_hint};
    use glommio::{BuilderErrorKind, GlommioError, ReactorErrorKind};
    use std::io;

    #[test]
    fn memlock_errors_get_the_limit_and_how_to_raise_it() {
        let typed = GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(65536, 524288));
        // The shape glommio 0.9 returns from a failed executor build.
        let as_io = GlommioError::IoError(io::Error::other("MemLockLimit(65536/524288)"));
        for e in [typed, as_io] {
            let hint = start_hint(&e).unwrap_or_default();
            assert!(hint.contains("at least 512 KiB"), "{hint}");
            assert!(hint.contains("ulimit -l 512"), "{hint}");
            assert!(hint.contains("LimitMEMLOCK=512K"), "{hint}");
        }
    }

    #[test]
    fn io_uring_refusals_get_a_hint_and_other_errors_none() {
        let eperm = GlommioError::IoError(io::Error::from_raw_os_error(libc::EPERM));
        assert!(start_hint(&eperm).is_some_and(|h| h.contains("io_uring_disabled")));
        let enomem = GlommioError::IoError(io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(start_hint(&enomem).is_some_and(|h| h.contains("RLIMIT_MEMLOCK")));
        let other = GlommioError::IoError(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(start_hint(&other), None);
    }

    #[test]
    fn a_panic_is_described_by_its_message() {
        let e: GlommioError<()> =
            GlommioError::BuilderError(BuilderErrorKind::ThreadPanic(Box::new("boom")));
        assert_eq!(describe(&e), "it panicked: boom");
        let e: GlommioError<()> = GlommioError::BuilderError(BuilderErrorKind::ThreadPanic(
            Box::new(String::from("boom")),
        ));
        assert_eq!(describe(&e), "it panicked: boom");
    }
}
